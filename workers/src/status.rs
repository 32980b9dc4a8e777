//! Batched delivery-status writes: every worker task of a process hands its updates to one
//! writer, which applies them with one statement per flush (≤ 50 ms or 500 updates;
//! `quizflow_store::deliveries::write`). A task that must not ack before its update is durable
//! awaits the flush and learns whether its write applied (it does not when the row was
//! finished or claimed by someone else meanwhile: statuses only move forward).

use chrono::Utc;
pub use quizflow_store::deliveries::Update;
use quizflow_store::deliveries::{self, Key};
use quizflow_store::Pool;
use std::collections::{HashMap, HashSet};
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
}

impl StatusWriter {
    /// Starts the writer task; it flushes what it holds and ends when every clone of the
    /// writer is dropped (await the handle on shutdown).
    pub fn start(pool: Pool) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let handle = tokio::spawn(run(pool, rx));
        (Self { tx }, handle)
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

async fn run(pool: Pool, mut rx: mpsc::Receiver<(Update, Option<Done>)>) {
    let mut batch: Vec<(Update, Option<Done>)> = Vec::with_capacity(512);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while batch.len() < 500 {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(u) => batch.push(u),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let merged = merge(batch.iter().map(|(u, _)| u));
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
