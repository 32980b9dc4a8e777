//! Publishing submissions: one publish, one PubAck, de-duplicated by `Nats-Msg-Id`.

use crate::{subjects, NatsError};
use async_nats::jetstream::{self, message::PublishMessage};
use quizflow_core::SubmissionEnvelope;

/// What JetStream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub sequence: u64,
    /// JetStream had already stored a message with this id inside its duplicate window.
    pub duplicate: bool,
}

/// Publishes the envelope to `quiz.submissions.<quiz_id>` with the submission id as
/// `Nats-Msg-Id`, and waits for the PubAck: only then is the submission durable.
///
/// The wait for the ack does not hold up other publishes: the context pipelines them, so
/// concurrent callers share one round trip's worth of latency.
pub async fn publish_submission(
    js: &jetstream::Context,
    envelope: &SubmissionEnvelope,
) -> Result<PublishOutcome, NatsError> {
    let payload = serde_json::to_vec(envelope)?;
    let msg = PublishMessage::build()
        .payload(payload.into())
        .message_id(envelope.submission_id.to_string())
        .expected_stream(subjects::SUBMISSIONS_STREAM);
    let ack = js
        .send_publish(subjects::submission(&envelope.quiz_id), msg)
        .await?
        .await?;
    Ok(PublishOutcome {
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}
