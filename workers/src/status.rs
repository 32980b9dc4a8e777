//! Batched delivery-status writes: every worker task of a process hands its updates to one
//! writer, which applies them with one `UPDATE … FROM UNNEST` per flush (≤ 50 ms or 500
//! updates). A task that must not ack before its update is durable awaits the flush.

use chrono::Utc;
use diesel::sql_types::{Array, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use quizflow_migrations::Pool;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Update {
    pub submission_id: Uuid,
    pub campaign_id: Uuid,
    pub channel: String,
    pub status: &'static str,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// `{at, outcome, detail}` entries to append.
    pub history: Vec<serde_json::Value>,
}

pub fn history_entry(outcome: &str, detail: &str) -> serde_json::Value {
    serde_json::json!({"at": Utc::now(), "outcome": outcome, "detail": detail})
}

type Done = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct StatusWriter {
    tx: mpsc::Sender<(Update, Option<Done>)>,
}

impl StatusWriter {
    /// Starts the writer task; it ends when every clone of the writer is dropped.
    pub fn start(pool: Pool) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(pool, rx));
        Self { tx }
    }

    /// Queues an update without waiting for it.
    pub async fn send(&self, u: Update) {
        let _ = self.tx.send((u, None)).await;
    }

    /// Queues an update and waits until it is committed.
    pub async fn write(&self, u: Update) -> Result<(), String> {
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
        let updates: Vec<Update> = batch.iter().map(|(u, _)| u.clone()).collect();
        let mut result = flush(&pool, &updates).await;
        // The database may be briefly away: retry a few times before failing the waiters.
        for wait in [200u64, 1000, 3000] {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
            result = flush(&pool, &updates).await;
        }
        if let Err(e) = &result {
            tracing::warn!(error = %e, updates = updates.len(), "delivery status not written");
        }
        for (_, done) in batch.drain(..) {
            if let Some(done) = done {
                let _ = done.send(result.clone());
            }
        }
    }
}

async fn flush(pool: &Pool, updates: &[Update]) -> Result<(), String> {
    // One row per ledger key: the last status wins, histories are concatenated in order.
    let mut merged: HashMap<(Uuid, Uuid, String), Update> = HashMap::new();
    let mut order = Vec::new();
    for u in updates {
        let key = (u.submission_id, u.campaign_id, u.channel.clone());
        match merged.get_mut(&key) {
            Some(m) => {
                m.status = u.status;
                m.attempts = u.attempts;
                m.last_error = u.last_error.clone();
                m.history.extend(u.history.iter().cloned());
            }
            None => {
                order.push(key.clone());
                merged.insert(key, u.clone());
            }
        }
    }
    let rows: Vec<&Update> = order.iter().filter_map(|k| merged.get(k)).collect();
    let subs: Vec<Uuid> = rows.iter().map(|u| u.submission_id).collect();
    let camps: Vec<Uuid> = rows.iter().map(|u| u.campaign_id).collect();
    let channels: Vec<String> = rows.iter().map(|u| u.channel.clone()).collect();
    let statuses: Vec<String> = rows.iter().map(|u| u.status.to_owned()).collect();
    let attempts: Vec<i32> = rows.iter().map(|u| u.attempts).collect();
    let errors: Vec<Option<String>> = rows.iter().map(|u| u.last_error.clone()).collect();
    let history: Vec<String> = rows
        .iter()
        .map(|u| serde_json::Value::Array(u.history.clone()).to_string())
        .collect();
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    diesel::sql_query(
        "UPDATE deliveries d SET status = u.status, attempts = u.attempts, last_error = u.err, \
                history = d.history || u.hist::jsonb, updated_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[]) \
              AS u(sub, camp, channel, status, attempts, err, hist) \
         WHERE d.submission_id = u.sub AND d.campaign_id = u.camp AND d.channel = u.channel",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<Text>, _>(&statuses)
    .bind::<Array<Integer>, _>(&attempts)
    .bind::<Array<Nullable<Text>>, _>(&errors)
    .bind::<Array<Text>, _>(&history)
    .execute(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}
