//! One person's copies in the streams, erased (contract §2.4, `POST /v1/respondents/erase`).
//!
//! `SUBMISSIONS` keeps every accepted submission for `submissions_max_age` (7 days) and
//! `DEAD_LETTERS` keeps letters for 30; both hold phone numbers and e-mails. Erasure reads each
//! stream once on an ordered consumer and, for every message that holds the person:
//! - a `SUBMISSIONS` pack is published again on its subject without the person's members
//!   (others' submissions stay replayable; the batcher stores each of them at most once, as
//!   for any copy), then the original is deleted by sequence;
//! - a dead letter is deleted by sequence.
//!
//! Deleting by sequence is nats-server's secure erase: the record is overwritten with random
//! bytes and flushed (not only marked deleted). Why not crypto-shredding: it needs a key per
//! respondent looked up or created on the intake's hot path, for a request that comes rarely;
//! a scan costs nothing until someone asks (README "Erasure" has the measured scan rate).

use crate::{pack, subjects, NatsError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;
use quizflow_core::SubmissionEnvelope;

/// Who is erased: a phone (E.164, exact) and/or an e-mail (any case), and the ids of their
/// stored submissions (which name them in delivery dead letters).
#[derive(Debug, Clone, Default)]
pub struct Person {
    pub phone: Option<String>,
    pub email: Option<String>,
    pub submission_ids: Vec<String>,
}

impl Person {
    /// A pack member is the person's when it decodes to their phone or e-mail. A member that
    /// does not decode (it became a poison letter) is theirs when it mentions either.
    fn owns_member(&self, member: &[u8]) -> bool {
        match serde_json::from_slice::<SubmissionEnvelope>(member) {
            Ok(env) => {
                let r = &env.submission.respondent;
                let phone = matches!((&self.phone, &r.phone), (Some(a), Some(b)) if a == b);
                let email = matches!((&self.email, &r.email), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b));
                phone || email || self.submission_ids.contains(&env.submission_id.to_string())
            }
            Err(_) => self.mentioned_in(member),
        }
    }

    /// Whether the bytes mention the phone, the e-mail (any case) or one of the submissions.
    fn mentioned_in(&self, bytes: &[u8]) -> bool {
        let has = |needle: &str| memchr::memmem::find(bytes, needle.as_bytes()).is_some();
        if self.phone.as_deref().is_some_and(has) || self.submission_ids.iter().any(|s| has(s)) {
            return true;
        }
        match &self.email {
            Some(email) => {
                let lower = bytes.to_ascii_lowercase();
                memchr::memmem::find(&lower, email.to_ascii_lowercase().as_bytes()).is_some()
            }
            None => false,
        }
    }
}

/// What was erased from the streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamErasure {
    /// The person's submissions removed from `SUBMISSIONS`.
    pub submissions: u64,
    /// `SUBMISSIONS` messages deleted (their other members published again).
    pub submission_messages: u64,
    /// `DEAD_LETTERS` messages deleted.
    pub dead_letters: u64,
    /// Messages read to find them.
    pub scanned: u64,
}

/// Erases the person from `SUBMISSIONS` and `DEAD_LETTERS` (see the module docs). Safe to
/// repeat: a second run finds nothing.
pub async fn erase_person(
    js: &jetstream::Context,
    person: &Person,
) -> Result<StreamErasure, NatsError> {
    let mut out = StreamErasure::default();
    let mut submissions = stream(js, subjects::SUBMISSIONS_STREAM).await?;
    let candidates = scan(&mut submissions, &mut out.scanned, |payload| {
        pack::members(payload).any(|b| person.owns_member(b))
    })
    .await?;
    for m in candidates {
        let members: Vec<&[u8]> = pack::members(&m.payload).collect();
        let owned: Vec<bool> = members.iter().map(|b| person.owns_member(b)).collect();
        let erased = owned.iter().filter(|o| **o).count();
        if erased == 0 {
            continue;
        }
        if erased < members.len() {
            republish_rest(js, &m, &members, &owned).await?;
        }
        delete(&submissions, m.seq).await?;
        out.submissions += erased as u64;
        out.submission_messages += 1;
    }
    let mut dead = stream(js, subjects::DEAD_LETTERS_STREAM).await?;
    for m in scan(&mut dead, &mut out.scanned, |p| person.mentioned_in(p)).await? {
        delete(&dead, m.seq).await?;
        out.dead_letters += 1;
    }
    Ok(out)
}

struct Held {
    seq: u64,
    subject: String,
    headers: Option<async_nats::HeaderMap>,
    payload: bytes::Bytes,
}

async fn stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<jetstream::stream::Stream, NatsError> {
    js.get_stream(name)
        .await
        .map_err(|e| NatsError::Api(e.into()))
}

/// The messages the stream holds now that `keep` accepts, read once on an ordered consumer:
/// memory holds only the person's messages, whatever the stream's size.
async fn scan(
    stream: &mut jetstream::stream::Stream,
    scanned: &mut u64,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Vec<Held>, NatsError> {
    let api = |e: String| NatsError::Api(e.into());
    let state = stream
        .info()
        .await
        .map_err(|e| api(e.to_string()))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            description: Some("quizflow erasure scan".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| api(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| api(e.to_string()))?;
    let mut held = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| api(e.to_string()))?;
        let info = m.info().map_err(|e| api(e.to_string()))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        *scanned += 1;
        if keep(&m.payload) {
            held.push(Held {
                seq,
                subject: m.subject.to_string(),
                headers: m.headers.clone(),
                payload: m.payload.clone(),
            });
        }
        // Messages stored after the scan began are not the person's past copies.
        if pending == 0 || seq >= state.last_sequence {
            break;
        }
    }
    Ok(held)
}

/// Publishes the members the person does not own as one pack on the original subject, their
/// trace headers renumbered, and waits for the ack. The id names the original, so a retried
/// erasure inside the duplicate window publishes it once.
async fn republish_rest(
    js: &jetstream::Context,
    m: &Held,
    members: &[&[u8]],
    owned: &[bool],
) -> Result<(), NatsError> {
    let mut payload = Vec::with_capacity(m.payload.len());
    let mut headers = async_nats::HeaderMap::new();
    let mut kept = 0usize;
    for (i, (member, owned)) in members.iter().zip(owned).enumerate() {
        if *owned {
            continue;
        }
        if kept > 0 {
            payload.push(b'\n');
        }
        payload.extend_from_slice(member);
        if let Some(t) = pack::member_trace(m.headers.as_ref(), i)
            .and_then(|h| h.get("traceparent").map(|v| v.to_string()))
        {
            headers.insert(pack::trace_header(kept).as_str(), t.as_str());
        }
        kept += 1;
    }
    headers.insert(pack::PACK_HEADER, kept.to_string().as_str());
    // The chain of sequences this pack stands for: the original's, and what it replaced.
    let mut replaces = pack::replaced_sequences(m.headers.as_ref());
    replaces.push(m.seq);
    let replaces: Vec<String> = replaces.iter().map(u64::to_string).collect();
    headers.insert(pack::REPLACES_HEADER, replaces.join(",").as_str());
    let msg = PublishMessage::build()
        .payload(payload.into())
        .headers(headers)
        .message_id(format!("erase:{}", m.seq))
        .expected_stream(subjects::SUBMISSIONS_STREAM);
    js.send_publish(m.subject.clone(), msg)
        .await
        .map_err(|e| NatsError::Api(e.into()))?
        .await
        .map_err(|e| NatsError::Api(e.into()))?;
    Ok(())
}

/// Secure-erases one message. Already gone (aged out, or a concurrent erasure) is fine.
async fn delete(stream: &jetstream::stream::Stream, seq: u64) -> Result<(), NatsError> {
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("no message found") => Ok(()),
        Err(e) => Err(NatsError::Api(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_is_found_by_phone_email_in_any_case_or_submission_id() {
        let p = Person {
            phone: Some("+5511987654321".into()),
            email: Some("Ana@Example.com".into()),
            submission_ids: vec!["0196a1b2-0000-7000-8000-000000000001".into()],
        };
        assert!(p.mentioned_in(br#"{"to":"+5511987654321"}"#));
        assert!(p.mentioned_in(br#"{"to":"ana@example.COM"}"#));
        assert!(p.mentioned_in(br#"{"submission_id":"0196a1b2-0000-7000-8000-000000000001"}"#));
        assert!(!p.mentioned_in(br#"{"to":"+5511987654322","email":"bia@example.com"}"#));
        // Undecodable members fall back to a mention.
        assert!(p.owns_member(br#"{"broken": "+5511987654321""#));
        assert!(!p.owns_member(br#"{"broken": "+5511000000000""#));
    }
}
