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
    let mut headers = async_nats::HeaderMap::new();
    // The request's trace continues in the batcher (nothing is added when tracing is off).
    quizflow_telemetry::inject_current(&mut headers);
    let msg = PublishMessage::build()
        .headers(headers)
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

/// Publishes delivery jobs pipelined (all sends first, then all acks), each with its
/// `Nats-Msg-Id` so that a re-publish after a crash is dropped by JetStream. `trace` gives a
/// job's trace-context headers (the submission's trace continues in the worker).
pub async fn publish_jobs(
    js: &jetstream::Context,
    jobs: &[quizflow_core::DeliveryJob],
    trace: impl Fn(&quizflow_core::DeliveryJob) -> Option<async_nats::HeaderMap>,
) -> Result<(), NatsError> {
    let mut acks = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut msg = PublishMessage::build();
        if let Some(h) = trace(job) {
            msg = msg.headers(h);
        }
        let msg = msg
            .payload(serde_json::to_vec(job)?.into())
            .message_id(job.msg_id())
            .expected_stream(subjects::DELIVERIES_STREAM);
        acks.push(
            js.send_publish(subjects::delivery(job.channel, job.priority), msg)
                .await?,
        );
    }
    for r in
        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
    {
        r?;
    }
    Ok(())
}

/// Publishes an undecodable submission to `dead.submissions.<token>` with its reason, and
/// waits for the ack: only then may the original be acked.
pub async fn dead_letter_submission(
    js: &jetstream::Context,
    token: &str,
    payload: bytes::Bytes,
    reason: &str,
    stream_seq: u64,
) -> Result<(), NatsError> {
    publish_poison(
        js,
        subjects::dead_letter(subjects::DeadKind::Submission, token),
        payload,
        reason,
        "submission",
        stream_seq,
    )
    .await
}

/// The one shape of a poison dead letter: the original bytes, the reason and class in
/// headers, de-duplicated by the original's stream sequence (`Nats-Msg-Id =
/// <scheme>-seq:<n>`), so poisoning the same message twice stores it once.
async fn publish_poison(
    js: &jetstream::Context,
    subject: String,
    payload: bytes::Bytes,
    reason: &str,
    scheme: &str,
    stream_seq: u64,
) -> Result<(), NatsError> {
    let mut headers = async_nats::HeaderMap::new();
    // Header values cannot hold newlines.
    headers.insert(
        "Quizflow-Reason",
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    headers.insert("Quizflow-Class", "poison");
    headers.insert("Quizflow-Stream-Seq", stream_seq.to_string().as_str());
    let msg = PublishMessage::build()
        .payload(payload)
        .headers(headers)
        .message_id(format!("{scheme}-seq:{stream_seq}"))
        .expected_stream(subjects::DEAD_LETTERS_STREAM);
    js.send_publish(subject, msg).await?.await?;
    Ok(())
}

/// Publishes redriven jobs pipelined. Each `Nats-Msg-Id` names the redrive
/// (`redrive:<dead letter id>`), so JetStream's duplicate window cannot swallow it as a copy
/// of the original job, and publishing the same redrive again (the outbox relay after a
/// crash) inside the window stores it once. Returns, per job, whether JetStream acked it.
pub async fn publish_redrives(
    js: &jetstream::Context,
    jobs: &[(quizflow_core::DeliveryJob, String)],
) -> Vec<bool> {
    let mut acks = Vec::with_capacity(jobs.len());
    for (job, dead_letter) in jobs {
        let payload = match serde_json::to_vec(job) {
            Ok(p) => p,
            Err(_) => {
                acks.push(None);
                continue;
            }
        };
        let msg = PublishMessage::build()
            .payload(payload.into())
            .message_id(format!("redrive:{dead_letter}"))
            .expected_stream(subjects::DELIVERIES_STREAM);
        acks.push(
            js.send_publish(subjects::delivery(job.channel, job.priority), msg)
                .await
                .ok(),
        );
    }
    futures::future::join_all(acks.into_iter().map(|a| async move {
        match a {
            Some(ack) => ack.await.is_ok(),
            None => false,
        }
    }))
    .await
}

/// Publishes a delivery dead letter (the JSON letter with its job) to
/// `dead.deliveries.<channel>`, de-duplicated by the letter's id, and waits for the ack.
pub async fn dead_letter_delivery(
    js: &jetstream::Context,
    channel: &str,
    letter_id: &str,
    letter: bytes::Bytes,
) -> Result<(), NatsError> {
    let msg = PublishMessage::build()
        .payload(letter)
        .message_id(letter_id)
        .expected_stream(subjects::DEAD_LETTERS_STREAM);
    js.send_publish(
        subjects::dead_letter(subjects::DeadKind::Delivery, channel),
        msg,
    )
    .await?
    .await?;
    Ok(())
}

/// Publishes a job message that cannot be handled as it is (undecodable, unknown version, or
/// a stream copy the sweeper rescued) to `dead.deliveries.<channel>` with its reason in
/// headers, de-duplicated by its stream sequence (`<scheme>-seq:<n>`).
pub async fn dead_letter_job_message(
    js: &jetstream::Context,
    channel: &str,
    payload: bytes::Bytes,
    reason: &str,
    scheme: &str,
    stream_seq: u64,
) -> Result<(), NatsError> {
    publish_poison(
        js,
        subjects::dead_letter(subjects::DeadKind::Delivery, channel),
        payload,
        reason,
        scheme,
        stream_seq,
    )
    .await
}
