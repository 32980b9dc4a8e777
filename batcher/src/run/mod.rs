//! The batcher loop: pull, batch, store, match, publish jobs, then ack.

mod flush;

use crate::matcher::Matcher;
use crate::metrics::BatcherMetrics;
use crate::BatcherSettings;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use quizflow_core::SubmissionEnvelope;
use quizflow_nats::subjects;
use quizflow_store::Pool;
use quizflow_store::{Retry, StoreError};
use std::collections::HashSet;
use std::future::Future;
#[cfg(feature = "test-hooks")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum BatcherError {
    #[error("nats: {0}")]
    Nats(#[source] async_nats::Error),
    #[error("the consumer's message stream ended")]
    StreamEnded,
    #[error("jobs not published: {0}")]
    Publish(#[from] quizflow_nats::NatsError),
    #[error("database: {0}")]
    Db(#[from] StoreError),
    #[error("matcher task failed: {0}")]
    Matcher(#[from] tokio::task::JoinError),
    #[cfg(feature = "test-hooks")]
    #[error("simulated crash after commit (tests)")]
    SimulatedCrash,
}

impl BatcherError {
    /// What to do with the messages of a batch that failed this way.
    fn retry(&self) -> Retry {
        match self {
            BatcherError::Db(e) => e.retry(),
            _ => Retry::Later,
        }
    }
}

/// A batcher instance. Any number may run against the same consumer.
pub struct Batcher {
    settings: BatcherSettings,
    js: jetstream::Context,
    nats: async_nats::Client,
    pool: Pool,
    matcher: RwLock<Arc<Matcher>>,
    partitions: Mutex<HashSet<(i32, u32)>>,
    /// How many times campaigns were (re)loaded: start, announcements, periodic refresh.
    loads: std::sync::atomic::AtomicU64,
    metrics: BatcherMetrics,
    /// Tests: stop dead right after the commit, before any publish or ack.
    #[cfg(feature = "test-hooks")]
    crash_after_commit: AtomicBool,
}

/// One submission of a fetched message (a message packs one or more, see `quizflow_nats::Packer`).
struct Decoded {
    /// Index of its message in the batch.
    msg: usize,
    seq: u64,
    /// Sequences its message replaces (a pack published again by an erasure).
    replaces: Arc<[u64]>,
    /// Its place in the message.
    member: usize,
    envelope: SubmissionEnvelope,
}

/// Decodes every member of a `SUBMISSIONS` message (one per line); each error is the reason
/// recorded with that member's dead letter (or counted as skipped by a replay).
pub fn decode_members(payload: &[u8]) -> Vec<Result<SubmissionEnvelope, String>> {
    let members: Vec<Result<SubmissionEnvelope, String>> =
        quizflow_nats::members(payload).map(decode).collect();
    if members.is_empty() {
        return vec![Err("empty submission message".into())];
    }
    members
}

/// Decodes one submission envelope; the error is the reason recorded with the dead letter.
pub fn decode(payload: &[u8]) -> Result<SubmissionEnvelope, String> {
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
            loads: std::sync::atomic::AtomicU64::new(0),
            metrics: BatcherMetrics::new().expect("static metric definitions are valid"),
            #[cfg(feature = "test-hooks")]
            crash_after_commit: AtomicBool::new(false),
        })
    }

    /// Test hook: make the next flush die between the commit and the publishes/acks.
    #[cfg(feature = "test-hooks")]
    pub fn crash_after_next_commit(&self) {
        self.crash_after_commit.store(true, Ordering::SeqCst);
    }

    /// Campaigns the matcher holds now (active ones).
    pub fn active_campaigns(&self) -> usize {
        self.matcher.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether the matcher holds this version of a campaign now (tests wait on it instead of
    /// sleeping past a reload).
    pub fn knows_campaign(&self, id: uuid::Uuid, version: i32) -> bool {
        let m = self.snapshot();
        (0..m.len()).any(|i| {
            let c = m.campaign(i);
            c.id == id && c.version == version
        })
    }

    /// The batcher's metrics; register them where they should be served.
    pub fn metrics(&self) -> &BatcherMetrics {
        &self.metrics
    }

    /// How many campaign loads completed (observability and tests).
    pub fn campaign_loads(&self) -> u64 {
        self.loads.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn snapshot(&self) -> Arc<Matcher> {
        self.matcher.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Reloads campaigns from PostgreSQL into a fresh matcher.
    pub async fn reload_campaigns(&self) -> Result<(), BatcherError> {
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let campaigns = quizflow_store::campaigns::list(&mut conn).await?;
        let matcher = Arc::new(Matcher::new(campaigns.into_iter().map(Arc::new)));
        tracing::info!(active = matcher.len(), "campaigns loaded");
        if let Ok(mut m) = self.matcher.write() {
            *m = matcher;
        }
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
            let retention = i32::try_from(self.settings.retention_months).unwrap_or(i32::MAX);
            if let Err(e) = quizflow_store::maintain_partitions(&mut conn, 3, retention).await {
                tracing::warn!(error = %e, "partition upkeep failed; will retry");
            }
            // Consent bookkeeping past any use (counted sends, window slots).
            if let Err(e) = quizflow_store::consent::prune(&mut conn).await {
                tracing::warn!(error = %e, "consent upkeep failed; will retry");
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
        let nats = |e| BatcherError::Nats(Box::new(e));
        let consumer: jetstream::consumer::Consumer<pull::Config> = self
            .js
            .get_stream(subjects::SUBMISSIONS_STREAM)
            .await
            .map_err(nats)?
            .get_consumer(subjects::BATCHER_CONSUMER)
            .await
            .map_err(BatcherError::Nats)?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.settings.batch_max)
            .messages()
            .await
            .map_err(|e| BatcherError::Nats(Box::new(e)))?;
        let mut backoff = Duration::ZERO;
        let mut stopping = false;
        while !stopping {
            let first = tokio::select! {
                m = messages.next() => m,
                _ = &mut shutdown => break,
            };
            let batch = match first {
                Some(Ok(m)) => vec![m],
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pull consumer error");
                    continue;
                }
                None => return Err(BatcherError::StreamEnded),
            };
            let batch = self
                .gather(batch, &mut messages, &mut shutdown, &mut stopping)
                .await;
            match self.flush_timed(batch, backoff).await {
                Ok(()) => backoff = Duration::ZERO,
                #[cfg(feature = "test-hooks")]
                Err(BatcherError::SimulatedCrash) => return Err(BatcherError::SimulatedCrash),
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(250), Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in = ?backoff, "batch not stored; naked for redelivery");
                    if !stopping {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = &mut shutdown => stopping = true,
                        }
                    }
                }
            }
        }
        self.hand_back(&mut messages).await;
        Ok(())
    }

    /// Fills a batch begun with its first message: up to `batch_max` messages, or until
    /// `batch_wait` after the first (never reset by later ones), or the shutdown.
    async fn gather(
        &self,
        mut batch: Vec<jetstream::Message>,
        messages: &mut pull::Stream,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
        stopping: &mut bool,
    ) -> Vec<jetstream::Message> {
        let deadline = Instant::now() + self.settings.batch_wait;
        while batch.len() < self.settings.batch_max {
            tokio::select! {
                m = messages.next() => match m {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) => tracing::warn!(error = %e, "pull consumer error"),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.as_mut() => { *stopping = true; break; }
            }
        }
        batch
    }

    /// [`Batcher::flush`], measured.
    async fn flush_timed(
        &self,
        batch: Vec<jetstream::Message>,
        backoff: Duration,
    ) -> Result<(), BatcherError> {
        let size = batch.len();
        let started = std::time::Instant::now();
        let span = tracing::info_span!("batcher.flush", size);
        let result = tracing::Instrument::instrument(self.flush(batch, backoff), span).await;
        self.metrics.batch_size.observe(size as f64);
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "stored" } else { "retried" };
        self.metrics.batches.with_label_values(&[outcome]).inc();
        result
    }

    /// Messages the pull stream fetched ahead but no batch took: handed back now instead of
    /// waiting out the ack wait. Bounded in count and time.
    async fn hand_back(&self, messages: &mut pull::Stream) {
        let drain_until = Instant::now() + Duration::from_secs(2);
        let mut naked = 0usize;
        while naked < self.settings.batch_max * 2 && Instant::now() < drain_until {
            match tokio::time::timeout(Duration::from_millis(50), messages.next()).await {
                Ok(Some(Ok(m))) => {
                    let _ = m.ack_with(AckKind::Nak(None)).await;
                    naked += 1;
                }
                _ => break,
            }
        }
        tracing::info!(naked, "batcher stopped");
    }
}
