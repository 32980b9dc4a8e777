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

/// Most jobs in one `DELIVERIES` message.
pub const JOB_CHUNK: usize = 128;

/// Header of a re-published job: not to be sent before this time (Unix milliseconds). A
/// worker that fetches it earlier naks it for the rest of the wait.
pub const NOT_BEFORE_HEADER: &str = "Quizflow-Not-Before";
/// Header of a re-published job: how often it was delivered before.
pub const DELIVERIES_HEADER: &str = "Quizflow-Deliveries";

/// Publishes delivery jobs in chunks, pipelined (all sends first, then all acks): the jobs of
/// one channel and priority go out up to [`JOB_CHUNK`] to a message, one JSON job per line, so one
/// stored message (one fsync, one ack later) carries many jobs. A chunk of one keeps the
/// job's own `Nats-Msg-Id` (`<submission>:<campaign>:<channel>`); a larger chunk is named by
/// its members, so the same chunk published again after a crash is dropped by JetStream
/// (and any other copy is sent once: the worker claims the ledger row). `trace` gives a
/// job's trace-context headers; member `i`'s rides as `Quizflow-Trace-<i>`.
pub async fn publish_jobs(
    js: &jetstream::Context,
    jobs: &[quizflow_core::DeliveryJob],
    trace: impl Fn(&quizflow_core::DeliveryJob) -> Option<async_nats::HeaderMap>,
) -> Result<(), NatsError> {
    let mut groups: Vec<(
        (quizflow_core::Channel, quizflow_core::Priority),
        Vec<&quizflow_core::DeliveryJob>,
    )> = Vec::new();
    for job in jobs {
        let key = (job.channel, job.priority);
        match groups
            .iter_mut()
            .rev()
            .find(|(k, g)| *k == key && g.len() < JOB_CHUNK)
        {
            Some((_, g)) => g.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    let mut acks = Vec::with_capacity(groups.len());
    for ((channel, priority), chunk) in groups {
        let mut headers = async_nats::HeaderMap::new();
        let mut payload = Vec::new();
        for (i, job) in chunk.iter().enumerate() {
            if i > 0 {
                payload.push(b'\n');
            }
            serde_json::to_writer(&mut payload, job)?;
            if let Some(parent) = trace(job).and_then(|h| h.get("traceparent").cloned()) {
                headers.insert(crate::pack::trace_header(i).as_str(), parent.as_str());
            }
        }
        let msg_id = match chunk.as_slice() {
            [one] => one.msg_id(),
            many => {
                let names: Vec<String> = many.iter().map(|j| j.msg_id()).collect();
                let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, names.join(",").as_bytes());
                format!("chunk:{id}")
            }
        };
        let msg = PublishMessage::build()
            .headers(headers)
            .payload(payload.into())
            .message_id(msg_id)
            .expected_stream(subjects::DELIVERIES_STREAM);
        acks.push(
            js.send_publish(subjects::delivery(channel, priority), msg)
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

/// Publishes one job of a chunk again on its own, to wait `not_before` there: the rest of
/// its chunk is done and the chunk is acked. A fresh `Nats-Msg-Id` each time, so the
/// duplicate window never swallows it.
pub async fn republish_job(
    js: &jetstream::Context,
    job: &quizflow_core::DeliveryJob,
    payload: bytes::Bytes,
    trace: Option<&str>,
    not_before: chrono::DateTime<chrono::Utc>,
    delivered: u64,
) -> Result<(), NatsError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        NOT_BEFORE_HEADER,
        not_before.timestamp_millis().to_string().as_str(),
    );
    headers.insert(DELIVERIES_HEADER, delivered.to_string().as_str());
    if let Some(t) = trace {
        headers.insert("traceparent", t);
    }
    let msg = PublishMessage::build()
        .headers(headers)
        .payload(payload)
        .message_id(format!("retry:{}:{}", job.msg_id(), uuid::Uuid::new_v4()))
        .expected_stream(subjects::DELIVERIES_STREAM);
    js.send_publish(subjects::delivery(job.channel, job.priority), msg)
        .await?
        .await?;
    Ok(())
}

/// Publishes an undecodable submission (member `member` of the message at `stream_seq`) to
/// `dead.submissions.<token>` with its reason, and waits for the ack: only then may the
/// original be acked.
pub async fn dead_letter_submission(
    js: &jetstream::Context,
    token: &str,
    payload: bytes::Bytes,
    reason: &str,
    stream_seq: u64,
    member: usize,
) -> Result<(), NatsError> {
    publish_poison(
        js,
        subjects::dead_letter(subjects::DeadKind::Submission, token),
        payload,
        reason,
        poison_id("submission", stream_seq, member),
        stream_seq,
    )
    .await
}

/// The de-duplication id of a poison letter: `<scheme>-seq:<n>`, and `:<member>` after it
/// for a pack's later members.
pub fn poison_id(scheme: &str, stream_seq: u64, member: usize) -> String {
    if member == 0 {
        format!("{scheme}-seq:{stream_seq}")
    } else {
        format!("{scheme}-seq:{stream_seq}:{member}")
    }
}

/// The one shape of a poison dead letter: the original bytes, the reason and class in
/// headers, de-duplicated by the original's stream sequence (`Nats-Msg-Id =
/// <scheme>-seq:<n>`), so poisoning the same message twice stores it once.
async fn publish_poison(
    js: &jetstream::Context,
    subject: String,
    payload: bytes::Bytes,
    reason: &str,
    msg_id: String,
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
        .message_id(msg_id)
        .expected_stream(subjects::DEAD_LETTERS_STREAM);
    js.send_publish(subject, msg).await?.await?;
    Ok(())
}

/// A dead letter being redriven: its id, its kind (`delivery` or `submission`) and what it
/// holds (the job, or the submission's envelope line).
pub struct Redrive<'a> {
    pub letter_id: String,
    pub kind: &'a str,
    pub payload: &'a [u8],
}

/// Publishes redriven letters pipelined: a delivery letter's job to `DELIVERIES`, a submission
/// letter's envelope to `SUBMISSIONS` on its quiz's subject (stored once: the batcher's id
/// guard). Each `Nats-Msg-Id` names the redrive (`redrive:<dead letter id>`), so JetStream's
/// duplicate window cannot swallow it as a copy of the original, and publishing the same
/// redrive again (the outbox relay after a crash) inside the window stores it once. Returns,
/// per letter, whether JetStream acked it; a job that does not decode is never published.
pub async fn publish_redrives(js: &jetstream::Context, letters: &[Redrive<'_>]) -> Vec<bool> {
    let mut acks = Vec::with_capacity(letters.len());
    for letter in letters {
        let target = match letter.kind {
            "submission" => {
                // The quiz names the subject; an envelope that does not decode (a poison
                // letter redriven after an upgrade) goes on a subject of its own and is
                // dead-lettered again if it still cannot be read.
                let quiz = serde_json::from_slice::<SubmissionEnvelope>(letter.payload)
                    .map(|e| subjects::submission(&e.quiz_id))
                    .unwrap_or_else(|_| subjects::SUBMISSIONS_REDRIVEN_UNREADABLE.to_owned());
                Some((quiz, subjects::SUBMISSIONS_STREAM))
            }
            _ => serde_json::from_slice::<quizflow_core::DeliveryJob>(letter.payload)
                .ok()
                .map(|job| {
                    (
                        subjects::delivery(job.channel, job.priority),
                        subjects::DELIVERIES_STREAM,
                    )
                }),
        };
        let Some((subject, stream)) = target else {
            acks.push(None);
            continue;
        };
        let msg = PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(letter.payload))
            .message_id(format!("redrive:{}", letter.letter_id))
            .expected_stream(stream);
        acks.push(js.send_publish(subject, msg).await.ok());
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
) -> Result<u64, NatsError> {
    let msg = PublishMessage::build()
        .payload(letter)
        .message_id(letter_id)
        .expected_stream(subjects::DEAD_LETTERS_STREAM);
    let ack = js
        .send_publish(
            subjects::dead_letter(subjects::DeadKind::Delivery, channel),
            msg,
        )
        .await?
        .await?;
    Ok(ack.sequence)
}

/// Takes back an archived letter (by its stream sequence): one that names a person erased
/// while it was being archived.
pub async fn delete_dead_letter(js: &jetstream::Context, sequence: u64) -> Result<(), NatsError> {
    let stream = js
        .get_stream(subjects::DEAD_LETTERS_STREAM)
        .await
        .map_err(|e| NatsError::Api(e.into()))?;
    stream
        .delete_message(sequence)
        .await
        .map_err(|e| NatsError::Api(e.into()))?;
    Ok(())
}

/// Publishes a job message that cannot be handled as it is (undecodable, unknown version, or
/// a stream copy the sweeper rescued) to `dead.deliveries.<channel>` with its reason in
/// headers, de-duplicated by its stream sequence (`<scheme>-seq:<n>`).
#[allow(clippy::too_many_arguments)]
pub async fn dead_letter_job_message(
    js: &jetstream::Context,
    channel: &str,
    payload: bytes::Bytes,
    reason: &str,
    scheme: &str,
    stream_seq: u64,
    member: usize,
) -> Result<(), NatsError> {
    publish_poison(
        js,
        subjects::dead_letter(subjects::DeadKind::Delivery, channel),
        payload,
        reason,
        poison_id(scheme, stream_seq, member),
        stream_seq,
    )
    .await
}
