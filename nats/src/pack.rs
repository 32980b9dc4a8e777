//! Group commit of submissions: many concurrent submissions of a quiz go out as one
//! `SUBMISSIONS` message, so one PubAck (and, under `sync_interval: always`, one fsync)
//! answers many 202s.
//!
//! There is no timer. While `flights` packs are in flight, new submissions queue; when a
//! flight lands, everything queued leaves in the next one. At low load a submission leaves
//! at once (a pack of one); under load packs grow with the queue, bounded by `max_items` and
//! `max_bytes`.
//!
//! **Wire format**: the payload is one JSON [`SubmissionEnvelope`] per line (`\n`-separated;
//! compact JSON never holds a raw newline), so a message from before packing is a pack of
//! one. Member `i`'s trace context rides in the header `Quizflow-Trace-<i>`.
//!
//! **Duplicates**: a pack has no single `Nats-Msg-Id`. After a pack is acked, each member is
//! marked in the in-memory `SUBMISSION_IDS` stream with its submission id as `Nats-Msg-Id`;
//! JetStream's answer to that mark is the member's `duplicate` flag. The mark is written only
//! after the member is durable, so "duplicate" always means "an earlier copy was acked". A
//! copy stored twice this way is stored once by the batcher (`submission_ids`).

use crate::publish::PublishOutcome;
use crate::{subjects, NatsError};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::{BufMut, BytesMut};
use quizflow_core::{QuizId, SubmissionEnvelope};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Header naming how many submissions a message holds (informative).
pub const PACK_HEADER: &str = "Quizflow-Pack";

/// Header of a pack published again without an erased person's members: the stream
/// sequences it replaces (comma-separated, oldest first). The batcher takes rows stored from
/// any of them as its own, so a member stored from the original whose jobs were not yet
/// published gets them from the replacement.
pub const REPLACES_HEADER: &str = "Quizflow-Replaces";

/// The sequences a message replaces ([`REPLACES_HEADER`]); empty for an original.
pub fn replaced_sequences(headers: Option<&async_nats::HeaderMap>) -> Vec<u64> {
    headers
        .and_then(|h| h.get(REPLACES_HEADER))
        .map(|v| {
            v.as_str()
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The trace-context header of a pack's member `index`.
pub fn trace_header(index: usize) -> String {
    format!("Quizflow-Trace-{index}")
}

/// The trace context member `member` of a pack or chunk was published under: its
/// `Quizflow-Trace-<i>` header, or for the first member of a message from before packing,
/// the message's own `traceparent`.
pub fn member_trace(
    headers: Option<&async_nats::HeaderMap>,
    member: usize,
) -> Option<async_nats::HeaderMap> {
    let headers = headers?;
    match headers.get(trace_header(member).as_str()) {
        Some(t) => {
            let mut h = async_nats::HeaderMap::new();
            h.insert("traceparent", t.as_str());
            Some(h)
        }
        None if member == 0 => Some(headers.clone()),
        None => None,
    }
}

/// Tunables of the packer.
#[derive(Debug, Clone)]
pub struct PackerConfig {
    /// Flights (rounds of packs) awaiting acks at once. 1 is pure group commit; more lowers
    /// latency at low load and makes packs smaller under load.
    pub flights: usize,
    /// Most submissions in one flight.
    pub max_items: usize,
    /// Most payload bytes in one message (kept below the server's `max_payload`).
    pub max_bytes: usize,
    /// Submissions that may wait for a flight; callers wait beyond it (backpressure).
    pub queue: usize,
    /// Answer `duplicate` from `SUBMISSION_IDS` marks (off: always `false`).
    pub duplicate_marks: bool,
}

impl Default for PackerConfig {
    fn default() -> Self {
        Self {
            flights: 2,
            max_items: 2000,
            max_bytes: 512 * 1024,
            queue: 8192,
            duplicate_marks: true,
        }
    }
}

struct Item {
    quiz: QuizId,
    id: String,
    line: Vec<u8>,
    trace: Option<String>,
    reply: oneshot::Sender<Result<PublishOutcome, String>>,
}

/// Hands submissions to the pack loop; cheap to share.
#[derive(Clone)]
pub struct Packer {
    tx: mpsc::Sender<Item>,
}

impl Packer {
    /// Starts the pack loop on the current runtime. It ends when every `Packer` clone is
    /// dropped, after the submissions already handed over are published and answered.
    pub fn spawn(js: jetstream::Context, mut config: PackerConfig) -> Self {
        let server_max = js.client().server_info().max_payload;
        if server_max > 0 {
            // Room for the headers (a trace context per member).
            config.max_bytes = config.max_bytes.min(server_max * 3 / 4);
        }
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        tokio::spawn(pack_loop(js, config, rx));
        Self { tx }
    }

    /// Publishes `envelope` in the next pack of its quiz and waits for that pack's PubAck
    /// (then for its duplicate mark). Only `Ok` means durable.
    pub async fn publish(
        &self,
        envelope: &SubmissionEnvelope,
    ) -> Result<PublishOutcome, NatsError> {
        let line = serde_json::to_vec(envelope)?;
        let mut h = async_nats::HeaderMap::new();
        quizflow_telemetry::inject_current(&mut h);
        let trace = h.get("traceparent").map(|v| v.as_str().to_owned());
        let (reply, answer) = oneshot::channel();
        let item = Item {
            quiz: envelope.quiz_id.clone(),
            id: envelope.submission_id.to_string(),
            line,
            trace,
            reply,
        };
        self.tx
            .send(item)
            .await
            .map_err(|_| NatsError::Pack("the packer has stopped".into()))?;
        match answer.await {
            Ok(r) => r.map_err(NatsError::Pack),
            Err(_) => Err(NatsError::Pack("the pack was abandoned".into())),
        }
    }
}

async fn pack_loop(js: jetstream::Context, config: PackerConfig, mut rx: mpsc::Receiver<Item>) {
    let permits = Arc::new(Semaphore::new(config.flights.max(1)));
    loop {
        // Wait for a free flight first: what arrives meanwhile joins the next pack.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut items = vec![first];
        while items.len() < config.max_items {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        tokio::spawn(flight(
            js.clone(),
            items,
            config.max_bytes,
            config.duplicate_marks,
            permit,
        ));
    }
}

/// One message's worth of submissions of one quiz.
struct Pack {
    quiz: QuizId,
    items: Vec<Item>,
    bytes: usize,
}

/// Groups a flight by quiz (order kept within a quiz), cutting packs at `max_bytes`.
fn into_packs(items: Vec<Item>, max_bytes: usize) -> Vec<Pack> {
    let mut packs: Vec<Pack> = Vec::new();
    let mut open: HashMap<QuizId, usize> = HashMap::new();
    for item in items {
        let len = item.line.len() + 1;
        match open.get(&item.quiz) {
            Some(&i) if packs[i].bytes + len <= max_bytes => {
                packs[i].bytes += len;
                packs[i].items.push(item);
            }
            _ => {
                open.insert(item.quiz.clone(), packs.len());
                packs.push(Pack {
                    quiz: item.quiz.clone(),
                    bytes: len,
                    items: vec![item],
                });
            }
        }
    }
    packs
}

/// The message of a pack: envelopes one per line, member trace contexts in headers.
fn message(pack: &Pack) -> PublishMessage {
    let (payload, headers) = encode(pack);
    PublishMessage::build()
        .headers(headers)
        .payload(payload)
        .expected_stream(subjects::SUBMISSIONS_STREAM)
}

fn encode(pack: &Pack) -> (bytes::Bytes, async_nats::HeaderMap) {
    let mut payload = BytesMut::with_capacity(pack.bytes);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(PACK_HEADER, pack.items.len().to_string().as_str());
    for (i, item) in pack.items.iter().enumerate() {
        if i > 0 {
            payload.put_u8(b'\n');
        }
        payload.put_slice(&item.line);
        if let Some(t) = &item.trace {
            headers.insert(trace_header(i).as_str(), t.as_str());
        }
    }
    (payload.freeze(), headers)
}

async fn flight(
    js: jetstream::Context,
    items: Vec<Item>,
    max_bytes: usize,
    marks: bool,
    _permit: OwnedSemaphorePermit,
) {
    let packs = into_packs(items, max_bytes);
    // Every pack is sent before any ack is awaited: one round trip for the flight.
    let mut pending = Vec::with_capacity(packs.len());
    for pack in &packs {
        let sent = js
            .send_publish(subjects::submission(&pack.quiz), message(pack))
            .await;
        pending.push(sent);
    }
    let acks = futures::future::join_all(pending.into_iter().map(|sent| async move {
        match sent {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }))
    .await;
    let mut durable = Vec::new();
    for (pack, ack) in packs.into_iter().zip(acks) {
        match ack {
            Ok(ack) => durable.extend(pack.items.into_iter().map(|i| (i, ack.sequence))),
            Err(e) => {
                tracing::warn!(error = %e, size = pack.items.len(), "pack not acknowledged");
                for item in pack.items {
                    let _ = item.reply.send(Err(e.clone()));
                }
            }
        }
    }
    if durable.is_empty() {
        return;
    }
    let duplicates = if marks {
        mark(&js, durable.iter().map(|(i, _)| i.id.as_str())).await
    } else {
        vec![false; durable.len()]
    };
    for ((item, sequence), duplicate) in durable.into_iter().zip(duplicates) {
        let _ = item.reply.send(Ok(PublishOutcome {
            sequence,
            duplicate,
        }));
    }
}

/// Marks each id in `SUBMISSION_IDS`; per id, whether it was marked already inside the
/// duplicate window. A mark that fails counts as "not a duplicate": the submission is
/// durable either way, and the batcher stores it once.
async fn mark<'a>(js: &jetstream::Context, ids: impl Iterator<Item = &'a str>) -> Vec<bool> {
    let mut pending = Vec::new();
    for id in ids {
        let msg = PublishMessage::build()
            .message_id(id)
            .expected_stream(subjects::SUBMISSION_IDS_STREAM);
        // One subject per id, so "was this one accepted?" is one lookup ([`accepted_before`]).
        let subject = format!("{}.{id}", subjects::SUBMISSION_IDS);
        pending.push(js.send_publish(subject, msg).await);
    }
    futures::future::join_all(pending.into_iter().map(|sent| async move {
        match sent {
            Ok(ack) => ack.await.map(|a| a.duplicate).unwrap_or(false),
            Err(_) => false,
        }
    }))
    .await
}

/// Whether submission `id` was accepted (marked durable) inside the duplicate window: a retry of
/// it answers `duplicate` without checking anything a first post needs (a captcha token is
/// spent by its first check). `Err`: the broker did not answer.
pub async fn accepted_before(js: &jetstream::Context, id: &str) -> Result<bool, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let stream = js
        .get_stream_no_info(subjects::SUBMISSION_IDS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let subject = format!("{}.{id}", subjects::SUBMISSION_IDS);
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Splits a `SUBMISSIONS` payload into its members' bytes (one for a message from before
/// packing). Empty lines are skipped.
pub fn members(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(quiz: &str, n: usize) -> Item {
        let (reply, _) = oneshot::channel();
        Item {
            quiz: QuizId::parse(quiz).expect("valid"),
            id: format!("{quiz}-{n}"),
            line: vec![b'x'; n],
            trace: None,
            reply,
        }
    }

    #[test]
    fn packs_group_by_quiz_and_cut_at_the_byte_limit() {
        let items = vec![item("a", 10), item("b", 10), item("a", 10), item("a", 10)];
        let packs = into_packs(items, 25);
        let shape: Vec<(String, usize)> = packs
            .iter()
            .map(|p| (p.quiz.to_string(), p.items.len()))
            .collect();
        // "a" holds two 11-byte lines within 25; the third opens a new pack.
        assert_eq!(
            shape,
            vec![("a".into(), 2), ("b".into(), 1), ("a".into(), 1)]
        );
    }

    #[test]
    fn an_item_larger_than_the_limit_goes_alone() {
        let packs = into_packs(vec![item("a", 100), item("a", 1)], 10);
        assert_eq!(packs.len(), 2);
    }

    #[test]
    fn payload_splits_back_into_members() {
        let mut a = item("a", 3);
        a.trace = Some("00-t-0".into());
        let mut b = item("a", 5);
        b.trace = Some("00-t-1".into());
        let packs = into_packs(vec![a, b], 100);
        let (payload, headers) = encode(&packs[0]);
        let got: Vec<&[u8]> = members(&payload).collect();
        assert_eq!(got, vec![&b"xxx"[..], &b"xxxxx"[..]]);
        assert_eq!(headers.get(PACK_HEADER).map(|v| v.as_str()), Some("2"));
        assert_eq!(
            headers.get(trace_header(1).as_str()).map(|v| v.as_str()),
            Some("00-t-1")
        );
        assert_eq!(members(b"{}").count(), 1);
        assert_eq!(members(b"{}\n\n").count(), 1);
    }
}
