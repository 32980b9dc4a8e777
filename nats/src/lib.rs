//! The one crate that knows quizflow's NATS side: subjects, stream and consumer
//! configurations, message headers, client set-up and the shared JetStream helpers.
//!
//! No other crate spells a subject, a stream name or a consumer name: they call
//! [`subjects`] and [`topology`]. Stream replicas, ages and limits are configuration
//! ([`TopologyConfig`]): 1 replica on a single server, 3 on a cluster.

mod client;
mod depths;
mod erase;
mod history;
mod pack;
mod publish;
pub mod subjects;
pub mod topology;

pub use client::{connect, jetstream, redact_url, seed_list, NatsSettings};
pub use depths::{depths, ConsumerDepth, Depths, StreamDepth};
pub use erase::{erase_person, Person, StreamErasure};
pub use history::{read_submissions, submissions_history, History, HistoryMessage, StartAt};
pub use pack::{
    accepted_before, member_trace, members, replaced_sequences, trace_header, Packer, PackerConfig,
    PACK_HEADER, REPLACES_HEADER,
};
pub use publish::{
    dead_letter_delivery, dead_letter_job_message, dead_letter_submission, delete_dead_letter,
    poison_id, publish_jobs, publish_redrives, publish_submission, republish_job, PublishOutcome,
    Redrive, DELIVERIES_HEADER, JOB_CHUNK, NOT_BEFORE_HEADER,
};
pub use topology::{ensure_topology, TopologyConfig};

/// Errors of the NATS layer.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("invalid NATS client setting: {0}")]
    Settings(String),
    #[error(
        "cannot create stream {stream}: the streams' max_bytes caps add up to more than the \
         server's JetStream storage (max_file_store; by default 75% of the disk's free space): \
         free disk, raise max_file_store, or lower QUIZFLOW_DELIVERIES_MAX_BYTES ({source})"
    )]
    StreamStorage {
        stream: &'static str,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("cannot create or update stream {stream}: {source}")]
    Stream {
        stream: &'static str,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("cannot create or update consumer {consumer} on {stream}: {source}")]
    Consumer {
        stream: &'static str,
        consumer: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    #[error("JetStream did not acknowledge the publish: {0}")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("JetStream API request failed: {0}")]
    Api(#[source] async_nats::Error),
    #[error("submission not published: {0}")]
    Pack(String),
    #[error("server {found} is too old: quizflow needs nats-server >= 2.10")]
    ServerTooOld { found: String },
}
