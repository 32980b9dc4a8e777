//! Batched delivery-status writes: every worker task of a process hands its updates to one
//! writer, which applies them with one statement per flush (group commit: what queued while
//! the previous statement ran, up to 500 updates; `quizflow_store::deliveries::write`). A
//! task that must not ack before its update is durable awaits the flush and learns whether its
//! write applied (it does not when the row was finished or claimed by someone else meanwhile:
//! statuses only move forward).

use chrono::Utc;
pub use quizflow_store::deliveries::Update;
use quizflow_store::deliveries::{self, Key};
use quizflow_store::Pool;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub fn history_entry(outcome: &str, detail: &str) -> serde_json::Value {
    serde_json::json!({"at": Utc::now(), "outcome": outcome, "detail": detail})
}

/// `Ok(true)`: applied; `Ok(false)`: superseded (the row is final or held by another claim).
pub type Written = Result<bool, String>;
type Done = oneshot::Sender<Written>;

#[derive(Clone)]
pub struct StatusWriter {
    tx: mpsc::Sender<(Update, Option<Done>)>,
    flushes: Arc<AtomicU64>,
}

impl StatusWriter {
    /// Starts the writer task; it flushes what it holds and ends when every clone of the
    /// writer is dropped (await the handle on shutdown).
    pub fn start(pool: Pool) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let flushes = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn(run(pool, rx, flushes.clone()));
        (Self { tx, flushes }, handle)
    }

    /// Statements written so far (each holds one or many updates).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Queues an update and waits until it is committed.
    pub async fn write(&self, u: Update) -> Written {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((u, Some(done)))
            .await
            .map_err(|_| "status writer stopped".to_owned())?;
        wait.await.map_err(|_| "status writer stopped".to_owned())?
    }
}

/// Updates written by one statement at most.
const MAX_BATCH: usize = 500;

async fn run(pool: Pool, mut rx: mpsc::Receiver<(Update, Option<Done>)>, flushes: Arc<AtomicU64>) {
    let mut batch: Vec<(Update, Option<Done>)> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Group commit: take whatever is queued now (up to MAX_BATCH) and write it at once.
        // While that statement runs, the next updates queue up and become the next batch, so
        // batches grow with the load and nobody waits for a timer: a worker holds its slot
        // until its outcome is written, so every millisecond spent waiting here is throughput.
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(u) => batch.push(u),
                Err(_) => break,
            }
        }
        let merged = merge(batch.iter().map(|(u, _)| u));
        flushes.fetch_add(1, Ordering::Relaxed);
        let mut result = flush(&pool, &merged).await;
        // The database may be away for a while: an outcome not recorded means a resend once
        // the claim's lease runs out, so keep trying (~30 s) before failing the waiters.
        let mut wait = Duration::from_millis(200);
        for _ in 0..8 {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(8));
            result = flush(&pool, &merged).await;
        }
        if let Err(e) = &result {
            tracing::warn!(error = %e, updates = merged.len(), "delivery status not written");
        }
        for (u, done) in batch.drain(..) {
            if let Some(done) = done {
                let r = match &result {
                    Ok(applied) => Ok(applied.contains(&(u.key(), u.claim))),
                    Err(e) => Err(e.clone()),
                };
                let _ = done.send(r);
            }
        }
    }
}

/// One row per ledger key and claim: the last status wins, histories are concatenated.
fn merge<'a>(updates: impl Iterator<Item = &'a Update>) -> Vec<Update> {
    let mut merged: HashMap<(Key, Option<Uuid>), usize> = HashMap::new();
    let mut out: Vec<Update> = Vec::new();
    for u in updates {
        match merged.get(&(u.key(), u.claim)) {
            Some(&i) => {
                let m = &mut out[i];
                m.status = u.status;
                m.attempts = u.attempts;
                m.last_error = u.last_error.clone();
                m.history.extend(u.history.iter().cloned());
            }
            None => {
                merged.insert((u.key(), u.claim), out.len());
                out.push(u.clone());
            }
        }
    }
    out
}

async fn flush(pool: &Pool, updates: &[Update]) -> Result<HashSet<(Key, Option<Uuid>)>, String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    // Updates of one key under different claims go in separate statements: one UPDATE
    // touches a row once.
    let mut applied = HashSet::new();
    let mut rest: Vec<Update> = updates.to_vec();
    while !rest.is_empty() {
        let mut seen = HashSet::new();
        let (now, later): (Vec<Update>, Vec<Update>) =
            rest.into_iter().partition(|u| seen.insert(u.key()));
        let keys = deliveries::write(&mut conn, &now)
            .await
            .map_err(|e| e.to_string())?;
        let keys: HashSet<Key> = keys.into_iter().collect();
        for u in &now {
            if keys.contains(&u.key()) {
                applied.insert((u.key(), u.claim));
            }
        }
        rest = later;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(n: usize) -> Update {
        Update {
            submission_id: Uuid::new_v4(),
            campaign_id: Uuid::new_v4(),
            channel: "sms".into(),
            step: 0,
            status: "sent",
            attempts: 1,
            last_error: None,
            history: vec![history_entry("sent", &format!("n{n}"))],
            retry_in: None,
            claim: Some(Uuid::new_v4()),
        }
    }

    #[tokio::test]
    async fn concurrent_updates_share_statements_and_each_learns_its_fate() {
        let db = quizflow_testkit::TestDb::create().await;
        quizflow_migrations::run_migrations(&db.url)
            .await
            .expect("migrate");
        let (writer, handle) = StatusWriter::start(quizflow_store::pool(&db.url, 2));
        // 64 tasks at once, as a pool's slots finish together: no row exists, so none applies.
        let results = futures::future::join_all((0..64).map(|n| {
            let w = writer.clone();
            async move { w.write(update(n)).await }
        }))
        .await;
        assert!(
            results.iter().all(|r| matches!(r, Ok(false))),
            "{results:?}"
        );
        let flushes = writer.flushes();
        assert!(
            (1..=8).contains(&flushes),
            "64 concurrent updates in {flushes} statements"
        );
        // One at a time still works: a lone update is written without waiting for company.
        assert!(matches!(writer.write(update(99)).await, Ok(false)));
        assert_eq!(writer.flushes(), flushes + 1);
        drop(writer);
        handle.await.expect("writer ends when its handles are gone");
    }
}
