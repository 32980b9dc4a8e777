//! The stream topology as code (contract §1), created or updated idempotently.

use crate::subjects::{
    self, BATCHER_CONSUMER, DEAD_LETTERS_STREAM, DELIVERIES_STREAM, SUBMISSIONS_STREAM,
};
use crate::NatsError;
use async_nats::jetstream::{self, consumer, stream};
use quizflow_core::{Channel, Priority};
use std::time::Duration;

/// Tunables of the topology. Names and subjects are fixed; these are not.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// Stream replicas: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    pub submissions_max_age: Duration,
    /// JetStream de-duplication window of `SUBMISSIONS` (contract: at least 2 minutes).
    pub duplicate_window: Duration,
    pub dead_letters_max_age: Duration,
    /// Un-acked submissions all batcher instances together may hold.
    pub batcher_max_ack_pending: i64,
    pub batcher_ack_wait: Duration,
    /// Un-acked jobs per worker consumer (channel and priority).
    pub worker_max_ack_pending: i64,
    pub worker_ack_wait: Duration,
    /// Deliveries after which JetStream gives a job up; -1 (the default): never. Waiting
    /// (throttles, breakers, claims held elsewhere) redelivers a job without spending its
    /// attempt budget, which the ledger keeps; a limit here would turn a long wait into a
    /// dead letter.
    pub worker_max_deliver: i64,
    /// Bounds of the `DELIVERIES` work queue (-1: none). When full, publishes are refused and
    /// the batcher naks its batch and retries: backpressure, never a dropped job.
    pub deliveries_max_msgs: i64,
    pub deliveries_max_bytes: i64,
    /// Memory the duplicate marks may take (`SUBMISSION_IDS`).
    pub submission_ids_max_bytes: i64,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            submissions_max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            dead_letters_max_age: Duration::from_secs(30 * 24 * 3600),
            batcher_max_ack_pending: 50_000,
            batcher_ack_wait: Duration::from_secs(60),
            worker_max_ack_pending: 10_000,
            worker_ack_wait: Duration::from_secs(60),
            worker_max_deliver: -1,
            deliveries_max_msgs: 10_000_000,
            deliveries_max_bytes: 8 * 1024 * 1024 * 1024,
            submission_ids_max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl TopologyConfig {
    pub fn submissions(&self) -> stream::Config {
        stream::Config {
            name: SUBMISSIONS_STREAM.into(),
            description: Some("quizflow intake: every accepted submission, replayable".into()),
            subjects: vec![subjects::SUBMISSIONS_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_age: self.submissions_max_age,
            duplicate_window: self.duplicate_window,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// Duplicate marks (see `pack`): in memory, each kept for the duplicate window.
    pub fn submission_ids(&self) -> stream::Config {
        stream::Config {
            name: subjects::SUBMISSION_IDS_STREAM.into(),
            description: Some(
                "quizflow duplicate marks: one empty message per accepted submission".into(),
            ),
            // Marks are per id (`.<id>`); the bare subject is kept for marks of older builds.
            subjects: vec![
                subjects::SUBMISSION_IDS.into(),
                format!("{}.>", subjects::SUBMISSION_IDS),
            ],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::Memory,
            num_replicas: self.replicas,
            max_age: self.duplicate_window,
            duplicate_window: self.duplicate_window,
            // Bounded: past it the oldest marks go (a late retry then answers
            // `duplicate: false`, and is still stored once).
            max_bytes: self.submission_ids_max_bytes,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    pub fn deliveries(&self) -> stream::Config {
        stream::Config {
            name: DELIVERIES_STREAM.into(),
            description: Some(
                "quizflow delivery jobs, one consumer per channel and priority".into(),
            ),
            subjects: vec![subjects::DELIVERIES_ALL.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_messages: self.deliveries_max_msgs,
            max_bytes: self.deliveries_max_bytes,
            // A full work queue must refuse new jobs (the batcher then retries), never
            // silently drop old ones.
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }
    }

    pub fn dead_letters(&self) -> stream::Config {
        stream::Config {
            name: DEAD_LETTERS_STREAM.into(),
            description: Some(
                "quizflow dead letters: jobs and submissions that could not be processed".into(),
            ),
            // Also the max-deliveries advisories of DELIVERIES: captured durably, so a job
            // JetStream gave up on is dead-lettered even if no worker was listening then.
            subjects: vec![
                subjects::DEAD_LETTERS_ALL.into(),
                subjects::MAX_DELIVERIES_ADVISORIES.into(),
            ],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_age: self.dead_letters_max_age,
            ..Default::default()
        }
    }

    /// The workers' shared limits (see `quizflow_workers::cluster`): small, in memory,
    /// replicated like the streams, one value per key, gone a minute after its last write.
    pub fn workers_bucket(&self) -> async_nats::jetstream::kv::Config {
        async_nats::jetstream::kv::Config {
            bucket: subjects::WORKERS_BUCKET.into(),
            description: "quizflow workers: heartbeats and breaker verdicts".into(),
            history: 1,
            max_age: Duration::from_secs(60),
            max_bytes: 16 * 1024 * 1024,
            max_value_size: 4096,
            storage: stream::StorageType::Memory,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub fn batcher_consumer(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(BATCHER_CONSUMER.into()),
            description: Some("shared by every batcher instance".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.batcher_ack_wait,
            // Never give a submission up: while PostgreSQL is down the batcher naks and the
            // message must come back however long the outage lasts. Undecodable messages
            // are dead-lettered by the batcher itself.
            max_deliver: -1,
            max_ack_pending: self.batcher_max_ack_pending,
            deliver_policy: consumer::DeliverPolicy::All,
            num_replicas: 0,
            ..Default::default()
        }
    }

    pub fn sweeper_consumer(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(subjects::MAX_DELIVERIES_SWEEPER.into()),
            filter_subject: subjects::MAX_DELIVERIES_ADVISORIES.into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            ..Default::default()
        }
    }

    pub fn worker_consumer(&self, channel: Channel, priority: Priority) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(subjects::worker_consumer(channel, priority)),
            filter_subject: subjects::delivery(channel, priority),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.worker_ack_wait,
            max_deliver: self.worker_max_deliver,
            max_ack_pending: self.worker_max_ack_pending,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        }
    }
}

/// Creates or updates the three streams and their consumers. Safe to run from every
/// instance at every start: a create-or-update with the same config changes nothing.
pub async fn ensure_topology(
    js: &jetstream::Context,
    cfg: &TopologyConfig,
) -> Result<(), NatsError> {
    // A JetStream API round trip first: it waits for the (possibly retrying) connection and
    // fails clearly when the server has no JetStream.
    js.query_account()
        .await
        .map_err(|e| NatsError::Settings(format!("JetStream is not available: {e}")))?;
    check_server_version(js)?;
    let submissions = create_or_update(js, SUBMISSIONS_STREAM, cfg.submissions()).await?;
    create_or_update(js, subjects::SUBMISSION_IDS_STREAM, cfg.submission_ids()).await?;
    let deliveries = create_or_update(js, DELIVERIES_STREAM, cfg.deliveries()).await?;
    let dead = create_or_update(js, DEAD_LETTERS_STREAM, cfg.dead_letters()).await?;
    js.create_or_update_key_value(cfg.workers_bucket())
        .await
        .map_err(|e| NatsError::Settings(format!("bucket {}: {e}", subjects::WORKERS_BUCKET)))?;
    dead.create_consumer(cfg.sweeper_consumer())
        .await
        .map_err(|source| NatsError::Consumer {
            stream: DEAD_LETTERS_STREAM,
            consumer: subjects::MAX_DELIVERIES_SWEEPER.into(),
            source,
        })?;

    submissions
        .create_consumer(cfg.batcher_consumer())
        .await
        .map_err(|source| NatsError::Consumer {
            stream: SUBMISSIONS_STREAM,
            consumer: BATCHER_CONSUMER.into(),
            source,
        })?;
    for channel in Channel::ALL {
        for priority in Priority::ALL {
            let config = cfg.worker_consumer(channel, priority);
            deliveries
                .create_consumer(config)
                .await
                .map_err(|source| NatsError::Consumer {
                    stream: DELIVERIES_STREAM,
                    consumer: subjects::worker_consumer(channel, priority),
                    source,
                })?;
        }
    }
    tracing::info!(replicas = cfg.replicas, "stream topology is in place");
    Ok(())
}

async fn create_or_update(
    js: &jetstream::Context,
    name: &'static str,
    config: stream::Config,
) -> Result<stream::Stream, NatsError> {
    js.create_or_update_stream(config).await.map_err(|source| {
        // 10047: "insufficient storage resources available".
        let storage = matches!(
            source.kind(),
            jetstream::context::CreateStreamErrorKind::JetStream(ref e)
                if e.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED
        );
        if storage {
            NatsError::StreamStorage {
                stream: name,
                source,
            }
        } else {
            NatsError::Stream {
                stream: name,
                source,
            }
        }
    })?;
    js.get_stream(name)
        .await
        .map_err(|e| NatsError::Settings(format!("stream {name} vanished: {e}")))
}

/// Servers before 2.10 ignore settings quizflow relies on; refuse them loudly.
fn check_server_version(js: &jetstream::Context) -> Result<(), NatsError> {
    let version = js.client().server_info().version;
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 10) {
        return Err(NatsError::ServerTooOld { found: version });
    }
    Ok(())
}
