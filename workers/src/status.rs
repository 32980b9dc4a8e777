//! Batched delivery-status writes: every worker task of a process hands its updates to one
//! writer, which applies them with one statement per flush (group commit: what queued while
//! the previous statement ran, up to 500 updates; `quizflow_store::deliveries::write`). A
//! task that must not ack before its update is durable awaits the flush and learns whether its
//! write applied (it does not when the row was finished or claimed by someone else meanwhile:
//! statuses only move forward). An update the database does not take is kept and tried again
//! until it is written (or the process stops): one refused row is isolated from its batch,
//! and an outage only delays outcomes, it never turns them into naks and second sends.

use chrono::Utc;
pub use quizflow_store::deliveries::Update;
use quizflow_store::deliveries::{self, Key};
use quizflow_store::{ErrorKind, Pool, Retry, StoreError};
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
/// Longest wait between two tries of an outcome the database did not take.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// An update and whoever waits for it; `tries` and `due` once a write of it has failed.
struct Pending {
    update: Update,
    done: Option<Done>,
    tries: u32,
    due: tokio::time::Instant,
}

async fn run(pool: Pool, mut rx: mpsc::Receiver<(Update, Option<Done>)>, flushes: Arc<AtomicU64>) {
    // Outcomes the database has not taken yet. They are kept and tried again, with backoff,
    // until written: an outcome dropped would be a nak, and a nak a second send once the
    // claim's lease ran out. They leave only when every handle is gone (the process stops).
    let mut retry: Vec<Pending> = Vec::new();
    loop {
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        let next_due = retry.iter().map(|p| p.due).min();
        // Wait for work: a new update, or the next retry falling due.
        tokio::select! {
            m = rx.recv() => match m {
                Some((update, done)) => batch.push(Pending::new(update, done)),
                None => {
                    if !retry.is_empty() {
                        tracing::warn!(updates = retry.len(), "stopping with delivery statuses not written");
                    }
                    return;
                }
            },
            _ = async {
                match next_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        // Group commit: take whatever is queued now (up to MAX_BATCH) and write it at once.
        // While that statement runs, the next updates queue up and become the next batch, so
        // batches grow with the load and nobody waits for a timer: a worker holds its slot
        // until its outcome is written, so every millisecond spent waiting here is throughput.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((update, done)) => batch.push(Pending::new(update, done)),
                Err(_) => break,
            }
        }
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut retry)
            .into_iter()
            .partition(|p| p.due <= now);
        retry = later;
        batch.extend(due);
        let merged = merge(batch.iter().map(|p| &p.update));
        flushes.fetch_add(1, Ordering::Relaxed);
        let written = write_isolating(&pool, merged).await;
        for mut p in batch {
            let id = (p.update.key(), p.update.claim);
            match written.failed.get(&id) {
                None => {
                    if let Some(done) = p.done.take() {
                        let _ = done.send(Ok(written.applied.contains(&id)));
                    }
                }
                Some(failure) => {
                    p.tries += 1;
                    if failure.data {
                        // The server took the others and refused this one for its text: the
                        // status still goes in, without the provider's free text.
                        strip_free_text(&mut p.update);
                    }
                    if p.tries == 1 || p.tries % 10 == 0 {
                        tracing::warn!(error = %failure.error, tries = p.tries, "delivery status not written yet; kept and retried");
                    }
                    let backoff = Duration::from_millis(200)
                        .saturating_mul(1u32 << p.tries.min(6))
                        .min(MAX_BACKOFF);
                    p.due = tokio::time::Instant::now() + backoff;
                    retry.push(p);
                }
            }
        }
    }
}

impl Pending {
    fn new(update: Update, done: Option<Done>) -> Self {
        Self {
            update,
            done,
            tries: 0,
            due: tokio::time::Instant::now(),
        }
    }
}

/// Replaces what a provider wrote (error texts, history details) with a fixed note.
fn strip_free_text(u: &mut Update) {
    const NOTE: &str = "(detail not storable)";
    if u.last_error.is_some() {
        u.last_error = Some(NOTE.into());
    }
    for h in &mut u.history {
        if let Some(d) = h.get_mut("detail") {
            *d = NOTE.into();
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

/// What a write of many updates did: those applied, and those that failed with why.
#[derive(Default)]
struct Flushed {
    applied: HashSet<(Key, Option<Uuid>)>,
    failed: HashMap<(Key, Option<Uuid>), Failure>,
}

struct Failure {
    error: String,
    /// Refused for its data while the server took other writes.
    data: bool,
}

/// Writes `updates`; when the server answers with an error (it is up, something in the batch
/// is refused), the batch is split in halves down to the update that fails, so one bad row
/// never holds up the others. When the server is away, everything failed together.
async fn write_isolating(pool: &Pool, updates: Vec<Update>) -> Flushed {
    let mut out = Flushed::default();
    let mut groups = vec![updates];
    while let Some(group) = groups.pop() {
        if group.is_empty() {
            continue;
        }
        match flush(pool, &group).await {
            Ok(applied) => out.applied.extend(applied),
            Err(e) if group.len() > 1 && answered(&e) => {
                let mut group = group;
                let tail = group.split_off(group.len() / 2);
                groups.push(tail);
                groups.push(group);
            }
            Err(e) => {
                let data = e.retry() == Retry::Isolate;
                for u in &group {
                    out.failed.insert(
                        (u.key(), u.claim),
                        Failure {
                            error: e.to_string(),
                            data,
                        },
                    );
                }
            }
        }
    }
    out
}

/// The server answered (it is up): the statement, not the connection, failed.
fn answered(e: &StoreError) -> bool {
    !matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout)
}

async fn flush(
    pool: &Pool,
    updates: &[Update],
) -> Result<HashSet<(Key, Option<Uuid>)>, StoreError> {
    let mut conn = pool.get().await?;
    // Updates of one key under different claims go in separate statements: one UPDATE
    // touches a row once.
    let mut applied = HashSet::new();
    let mut rest: Vec<Update> = updates.to_vec();
    while !rest.is_empty() {
        let mut seen = HashSet::new();
        let (now, later): (Vec<Update>, Vec<Update>) =
            rest.into_iter().partition(|u| seen.insert(u.key()));
        let keys = deliveries::write(&mut conn, &now).await?;
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
            status: quizflow_core::DeliveryStatus::Sent,
            attempts: 1,
            last_error: None,
            history: vec![history_entry("sent", &format!("n{n}"))],
            retry_in: None,
            provider_message_id: None,
            fallback: None,
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

    /// The database is away longer than the writer used to keep an outcome (about 47 s): the
    /// outcome is kept and written once it is back, never answered as failed (a failure
    /// meant a nak, and a second send once the claim's lease ran out).
    #[tokio::test]
    async fn an_outcome_is_kept_through_an_outage_longer_than_any_retry_window() {
        use diesel_async::RunQueryDsl;
        let db = quizflow_testkit::TestDb::create().await;
        quizflow_migrations::run_migrations(&db.url)
            .await
            .expect("migrate");
        let direct = quizflow_store::pool(&db.url, 1);
        let mut u = update(1);
        u.claim = Some(Uuid::new_v4());
        {
            let mut conn = direct.get().await.expect("conn");
            diesel::sql_query(
                "INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status, claim, lease_until) \
                 VALUES ($1, $2, 'sms', 1, 'normal', 'sending', $3, now() + interval '10 minutes')",
            )
            .bind::<diesel::sql_types::Uuid, _>(u.submission_id)
            .bind::<diesel::sql_types::Uuid, _>(u.campaign_id)
            .bind::<diesel::sql_types::Uuid, _>(u.claim.expect("claim"))
            .execute(&mut conn)
            .await
            .expect("row");
        }
        let proxy = quizflow_testkit::CutProxy::start(db.host_port()).await;
        let (writer, handle) =
            StatusWriter::start(quizflow_store::pool(&db.url_via_port(proxy.port), 2));
        proxy.cut();
        let pending = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write(u).await }
        });
        // Longer than the old writer's whole retry window (eight backoffs of up to 8 s, each
        // try waiting 2 s for a connection: about 47 s).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !pending.is_finished(),
            "the outcome was answered during the outage"
        );
        proxy.restore();
        let written = tokio::time::timeout(Duration::from_secs(30), pending)
            .await
            .expect("written once the database is back")
            .expect("task");
        assert_eq!(written, Ok(true));
        drop(writer);
        handle.await.expect("writer ends");
    }
}
