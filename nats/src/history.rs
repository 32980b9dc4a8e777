//! Reading `SUBMISSIONS` as history (replay): where the stream starts and ends, and an
//! ordered, ephemeral consumer over a range of it.
//!
//! An ordered consumer has no acks, no durable state and one replica whatever the stream's;
//! the client recreates it on a gap. Nothing a replay reads changes the live batcher's
//! consumer.

use crate::{subjects, NatsError};
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use quizflow_core::QuizId;

/// What `SUBMISSIONS` holds now.
#[derive(Debug, Clone, Copy)]
pub struct History {
    /// The oldest sequence still held (1 when nothing was ever removed).
    pub first_seq: u64,
    /// Receipt time of the oldest message held (None when empty).
    pub first_time: Option<DateTime<Utc>>,
    /// The newest sequence ever assigned.
    pub last_seq: u64,
    pub messages: u64,
}

/// The state of `SUBMISSIONS`.
pub async fn submissions_history(js: &jetstream::Context) -> Result<History, NatsError> {
    let mut stream = js
        .get_stream(subjects::SUBMISSIONS_STREAM)
        .await
        .map_err(|e| NatsError::Api(e.into()))?;
    let state = &stream
        .info()
        .await
        .map_err(|e| NatsError::Api(e.into()))?
        .state;
    Ok(History {
        first_seq: state.first_sequence,
        first_time: (state.messages > 0).then_some(state.first_timestamp),
        last_seq: state.last_sequence,
        messages: state.messages,
    })
}

/// Where a read of the stream starts.
#[derive(Debug, Clone, Copy)]
pub enum StartAt {
    Seq(u64),
    Time(DateTime<Utc>),
}

/// One message of the stream, as a replay needs it.
#[derive(Debug, Clone)]
pub struct HistoryMessage {
    pub seq: u64,
    /// When JetStream stored it.
    pub stored_at: DateTime<Utc>,
    /// Messages of the filter after this one, as of its delivery.
    pub pending: u64,
    pub subject: String,
    pub payload: Bytes,
}

/// An ordered, ephemeral consumer over `SUBMISSIONS` from `start`, limited to the subjects of
/// `quizzes` (all when empty). Returns the messages and how many the filter held from `start`
/// when the consumer was created (a progress total; 0 means there is nothing to read: do not
/// wait on the stream then, it would wait for new messages).
pub async fn read_submissions(
    js: &jetstream::Context,
    start: StartAt,
    quizzes: &[QuizId],
) -> Result<
    (
        impl Stream<Item = Result<HistoryMessage, NatsError>> + Unpin,
        u64,
    ),
    NatsError,
> {
    let deliver_policy = match start {
        StartAt::Seq(s) => DeliverPolicy::ByStartSequence {
            start_sequence: s.max(1),
        },
        StartAt::Time(t) => DeliverPolicy::ByStartTime { start_time: t },
    };
    let filter_subjects: Vec<String> = quizzes.iter().map(subjects::submission).collect();
    let stream = js
        .get_stream(subjects::SUBMISSIONS_STREAM)
        .await
        .map_err(|e| NatsError::Api(e.into()))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy,
            filter_subjects,
            description: Some("quizflow replay".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::Api(e.into()))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| NatsError::Api(e.into()))?;
    let mapped = messages.map(|m| {
        let m = m.map_err(|e| NatsError::Api(e.into()))?;
        let info = m.info().map_err(NatsError::Api)?;
        Ok(HistoryMessage {
            seq: info.stream_sequence,
            stored_at: info.published,
            pending: info.pending,
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
        })
    });
    Ok((Box::pin(mapped), pending))
}
