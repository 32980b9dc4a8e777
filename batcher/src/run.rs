//! The batcher loop: pull, batch, store, match, publish jobs, then ack.

use crate::matcher::Matcher;
use crate::store::{self, Row};
use crate::BatcherSettings;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use quizflow_core::{SubmissionEnvelope, SubmissionId};
use quizflow_migrations::Pool;
use quizflow_nats::subjects;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum BatcherError {
    #[error("nats: {0}")]
    Nats(String),
    #[error("database: {0}")]
    Db(String),
    #[error("simulated crash after commit (tests)")]
    SimulatedCrash,
}

/// A batcher instance. Any number may run against the same consumer.
pub struct Batcher {
    settings: BatcherSettings,
    js: jetstream::Context,
    nats: async_nats::Client,
    pool: Pool,
    matcher: RwLock<Arc<Matcher>>,
    partitions: Mutex<HashSet<(i32, u32)>>,
    /// Tests: stop dead right after the commit, before any publish or ack.
    crash_after_commit: AtomicBool,
}

struct Decoded {
    msg: jetstream::Message,
    seq: u64,
}

/// Decodes an envelope; the error is the reason recorded with the dead letter.
fn decode(payload: &[u8]) -> Result<SubmissionEnvelope, String> {
    #[derive(serde::Deserialize)]
    struct Version {
        v: Option<u16>,
    }
    match serde_json::from_slice::<Version>(payload) {
        Ok(Version {
            v: Some(SubmissionEnvelope::VERSION),
        }) => {}
        Ok(Version { v: Some(v) }) => return Err(format!("unsupported envelope version {v}")),
        Ok(Version { v: None }) => return Err("not a submission envelope (no version)".into()),
        Err(e) => return Err(format!("undecodable submission: {e}")),
    }
    serde_json::from_slice(payload).map_err(|e| format!("invalid submission envelope: {e}"))
}

impl Batcher {
    pub fn new(
        settings: BatcherSettings,
        nats: async_nats::Client,
        js: jetstream::Context,
        pool: Pool,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            js,
            nats,
            pool,
            matcher: RwLock::new(Arc::new(Matcher::default())),
            partitions: Mutex::new(HashSet::new()),
            crash_after_commit: AtomicBool::new(false),
        })
    }

    /// Test hook: make the next flush die between the commit and the publishes/acks.
    pub fn crash_after_next_commit(&self) {
        self.crash_after_commit.store(true, Ordering::SeqCst);
    }

    /// Campaigns the matcher holds now (active ones).
    pub fn active_campaigns(&self) -> usize {
        self.matcher.read().map(|m| m.len()).unwrap_or(0)
    }

    fn snapshot(&self) -> Arc<Matcher> {
        self.matcher.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Reloads campaigns from PostgreSQL into a fresh matcher.
    pub async fn reload_campaigns(&self) -> Result<(), BatcherError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| BatcherError::Db(e.to_string()))?;
        let campaigns = quizflow_migrations::campaigns::list(&mut conn)
            .await
            .map_err(|e| BatcherError::Db(e.to_string()))?;
        let matcher = Arc::new(Matcher::new(campaigns.into_iter().map(Arc::new)));
        tracing::info!(active = matcher.len(), "campaigns loaded");
        if let Ok(mut m) = self.matcher.write() {
            *m = matcher;
        }
        Ok(())
    }

    /// Keeps the matcher current: on every change announcement, and every `campaign_refresh`.
    async fn watch_campaigns(self: Arc<Self>) {
        let mut sub = match self.nats.subscribe(subjects::CAMPAIGNS_CHANGED).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to campaign changes; polling only");
                None
            }
        };
        let mut tick = tokio::time::interval(self.settings.campaign_refresh);
        loop {
            tokio::select! {
                m = async { match &mut sub { Some(s) => s.next().await, None => futures::future::pending().await } } => {
                    if m.is_none() { sub = None; }
                }
                _ = tick.tick() => {}
            }
            if let Err(e) = self.reload_campaigns().await {
                tracing::warn!(error = %e, "campaign reload failed; keeping the previous set");
            }
        }
    }

    /// Partition upkeep: create ahead, drop what is past retention. Hourly.
    async fn maintain_partitions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let Ok(mut conn) = self.pool.get().await else {
                continue;
            };
            use diesel_async::RunQueryDsl;
            let ahead = diesel::sql_query("SELECT quizflow_ensure_submission_partitions(now(), 3)")
                .execute(&mut conn)
                .await;
            let dropped = diesel::sql_query(format!(
                "SELECT quizflow_drop_old_submission_partitions({})",
                self.settings.retention_months
            ))
            .execute(&mut conn)
            .await;
            if let Err(e) = ahead.and(dropped) {
                tracing::warn!(error = %e, "partition upkeep failed; will retry");
            }
        }
    }

    /// Runs until `shutdown` resolves; the batch in hand is flushed first.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), BatcherError> {
        let mut delay = Duration::from_millis(200);
        while let Err(e) = self.reload_campaigns().await {
            tracing::warn!(error = %e, "cannot load campaigns yet; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let watcher = tokio::spawn(self.clone().watch_campaigns());
        let upkeep = tokio::spawn(self.clone().maintain_partitions());
        let result = self.consume(shutdown).await;
        watcher.abort();
        upkeep.abort();
        result
    }

    async fn consume(&self, shutdown: impl Future<Output = ()>) -> Result<(), BatcherError> {
        tokio::pin!(shutdown);
        let consumer: jetstream::consumer::Consumer<pull::Config> = self
            .js
            .get_stream(subjects::SUBMISSIONS_STREAM)
            .await
            .map_err(|e| BatcherError::Nats(e.to_string()))?
            .get_consumer(subjects::BATCHER_CONSUMER)
            .await
            .map_err(|e| BatcherError::Nats(e.to_string()))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.settings.batch_max)
            .messages()
            .await
            .map_err(|e| BatcherError::Nats(e.to_string()))?;
        let mut backoff = Duration::ZERO;
        let mut stopping = false;
        while !stopping {
            let first = tokio::select! {
                m = messages.next() => m,
                _ = &mut shutdown => break,
            };
            let mut batch = match first {
                Some(Ok(m)) => vec![m],
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pull consumer error");
                    continue;
                }
                None => {
                    return Err(BatcherError::Nats(
                        "the consumer's message stream ended".into(),
                    ))
                }
            };
            // The flush timer starts with the batch's first message, never reset by later ones.
            let deadline = Instant::now() + self.settings.batch_wait;
            while batch.len() < self.settings.batch_max {
                tokio::select! {
                    m = messages.next() => match m {
                        Some(Ok(m)) => batch.push(m),
                        Some(Err(e)) => tracing::warn!(error = %e, "pull consumer error"),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = &mut shutdown => { stopping = true; break; }
                }
            }
            match self.flush(batch, backoff).await {
                Ok(()) => backoff = Duration::ZERO,
                Err(BatcherError::SimulatedCrash) => return Err(BatcherError::SimulatedCrash),
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(250), Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in = ?backoff, "batch not stored; naked for redelivery");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        Ok(())
    }

    /// Stores, matches and publishes one batch, then acks it. On error every message of
    /// the batch is naked (with the backoff as delay) and nothing is acked.
    async fn flush(
        &self,
        batch: Vec<jetstream::Message>,
        backoff: Duration,
    ) -> Result<(), BatcherError> {
        let mut good: Vec<Decoded> = Vec::with_capacity(batch.len());
        let mut envelopes: Vec<SubmissionEnvelope> = Vec::with_capacity(batch.len());
        for msg in batch {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            match decode(&msg.payload) {
                Ok(env) => {
                    envelopes.push(env);
                    good.push(Decoded { msg, seq });
                }
                Err(reason) => self.poison(msg, seq, &reason).await,
            }
        }
        if good.is_empty() {
            return Ok(());
        }
        let result = self.store_and_publish(&good, envelopes).await;
        match result {
            Ok(()) => {
                futures::future::join_all(good.iter().map(|d| d.msg.ack())).await;
                Ok(())
            }
            Err(BatcherError::SimulatedCrash) => Err(BatcherError::SimulatedCrash),
            Err(e) => {
                let delay = backoff.max(Duration::from_millis(500));
                futures::future::join_all(
                    good.iter()
                        .map(|d| d.msg.ack_with(AckKind::Nak(Some(delay)))),
                )
                .await;
                Err(e)
            }
        }
    }

    async fn store_and_publish(
        &self,
        good: &[Decoded],
        envelopes: Vec<SubmissionEnvelope>,
    ) -> Result<(), BatcherError> {
        // Matching is CPU work: off the async runtime, on rayon.
        let matcher = self.snapshot();
        let span = tracing::Span::current();
        let (envelopes, matches) = tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            let m = matcher.match_batch(&envelopes);
            (envelopes, (matcher, m))
        })
        .await
        .map_err(|e| BatcherError::Db(format!("matcher task: {e}")))?;
        let (matcher, matches) = matches;
        let rows: Vec<Row<'_>> = envelopes
            .iter()
            .zip(good)
            .map(|(e, d)| Row {
                envelope: e,
                stream_seq: d.seq,
            })
            .collect();
        let now = chrono::Utc::now();
        let jobs_for =
            |new_rows: &HashSet<usize>| matcher.jobs(&matches, &envelopes, new_rows, now);
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| BatcherError::Db(e.to_string()))?;
        {
            let mut known = self
                .partitions
                .lock()
                .map(|k| k.clone())
                .unwrap_or_default();
            store::ensure_partitions(
                &mut conn,
                &mut known,
                envelopes.iter().map(|e| e.received_at),
            )
            .await
            .map_err(|e| BatcherError::Db(e.to_string()))?;
            if let Ok(mut k) = self.partitions.lock() {
                *k = known;
            }
        }
        let (new_rows, mut jobs) = store::store_batch(&mut conn, &rows, jobs_for)
            .await
            .map_err(|e| BatcherError::Db(e.to_string()))?;
        if self.crash_after_commit.swap(false, Ordering::SeqCst) {
            return Err(BatcherError::SimulatedCrash);
        }
        // Rows stored by an earlier, interrupted attempt: publish their queued jobs again.
        let seen: Vec<SubmissionId> = (0..envelopes.len())
            .filter(|i| !new_rows.contains(i))
            .map(|i| envelopes[i].submission_id)
            .collect();
        if !seen.is_empty() {
            jobs.extend(
                store::queued_jobs(&mut conn, &seen)
                    .await
                    .map_err(|e| BatcherError::Db(e.to_string()))?,
            );
        }
        drop(conn);
        quizflow_nats::publish_jobs(&self.js, &jobs)
            .await
            .map_err(|e| BatcherError::Nats(e.to_string()))?;
        tracing::debug!(
            stored = new_rows.len(),
            redelivered = seen.len(),
            jobs = jobs.len(),
            "batch flushed"
        );
        Ok(())
    }

    /// Moves an undecodable message to DEAD_LETTERS, then acks it: it never blocks the consumer.
    async fn poison(&self, msg: jetstream::Message, seq: u64, reason: &str) {
        let token = msg
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or("_")
            .to_owned();
        tracing::warn!(seq, reason, "poison message moved to dead letters");
        match quizflow_nats::dead_letter_submission(
            &self.js,
            &token,
            msg.payload.clone(),
            reason,
            seq,
        )
        .await
        {
            Ok(()) => {
                // Mirror for `GET /v1/dead-letters`; the stream copy is the durable one.
                if let Ok(mut conn) = self.pool.get().await {
                    let id = uuid::Uuid::new_v4();
                    if let Err(e) = quizflow_migrations::dead_letters::insert_poison_submission(
                        &mut conn,
                        id,
                        reason,
                        &msg.payload,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "poison submission not mirrored to dead_letters");
                    }
                }
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not published; message naked");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }
}
