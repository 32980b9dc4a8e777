//! A job's handle on the message that carries it.
//!
//! The batcher publishes jobs in chunks (one JSON job per line, see
//! `quizflow_nats::publish_jobs`); a message from before chunking is a chunk of one. Each job
//! is settled on its own through its [`JobMsg`]:
//! - a chunk of one: ack, nak (with its delay) and term act on the message itself;
//! - a larger chunk: a job that is done (sent, dead, cancelled, a copy) just counts off; a job
//!   that must wait is published again on its own with its not-before time
//!   (`quizflow_nats::republish_job`), where JetStream's own nak delay then holds it. The
//!   chunk is acked when its last job is settled.
//!
//! If a job's re-publish fails, or a handle is dropped unsettled (a task aborted), the whole
//! chunk is naked instead once the rest are settled: every job of it comes back, and the
//! ledger (final rows are acked at once, claims) makes the copies harmless. Nothing is lost.

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use quizflow_core::DeliveryJob;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a chunk message is waiting for.
struct Carrier {
    msg: jetstream::Message,
    js: jetstream::Context,
    members: usize,
    /// Members not settled yet.
    left: AtomicUsize,
    /// Some member could not be settled: nak the whole chunk at the end.
    redeliver: AtomicBool,
}

impl Carrier {
    async fn member_done(&self, failed: bool) {
        if failed {
            self.redeliver.store(true, Ordering::SeqCst);
        }
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let kind = if self.redeliver.load(Ordering::SeqCst) {
                AckKind::Nak(Some(Duration::from_secs(5)))
            } else {
                AckKind::Ack
            };
            let _ = self.msg.ack_with(kind).await;
        }
    }
}

/// One job of a fetched message, to be settled exactly once.
pub(crate) struct JobMsg {
    carrier: Arc<Carrier>,
    index: usize,
    bytes: Bytes,
    settled: bool,
}

/// Splits a fetched message into one handle per job line (at least one).
pub(crate) fn split(js: &jetstream::Context, msg: jetstream::Message) -> Vec<JobMsg> {
    let lines: Vec<Bytes> = {
        let all: Vec<Bytes> = quizflow_nats::members(&msg.payload)
            .map(|l| msg.payload.slice_ref(l))
            .collect();
        if all.is_empty() {
            vec![msg.payload.clone()]
        } else {
            all
        }
    };
    let carrier = Arc::new(Carrier {
        members: lines.len(),
        left: AtomicUsize::new(lines.len()),
        redeliver: AtomicBool::new(false),
        msg,
        js: js.clone(),
    });
    lines
        .into_iter()
        .enumerate()
        .map(|(index, bytes)| JobMsg {
            carrier: carrier.clone(),
            index,
            bytes,
            settled: false,
        })
        .collect()
}

impl JobMsg {
    /// This job's bytes (one line of the message).
    pub fn payload(&self) -> &Bytes {
        &self.bytes
    }

    /// The carrying message's stream sequence and this job's place in it.
    pub fn position(&self) -> (u64, usize) {
        let seq = self
            .carrier
            .msg
            .info()
            .map(|i| i.stream_sequence)
            .unwrap_or(0);
        (seq, self.index)
    }

    /// How often this job was delivered, counting the deliveries of the chunk it came from.
    pub fn delivered(&self) -> u64 {
        let here = self
            .carrier
            .msg
            .info()
            .map(|i| u64::try_from(i.delivered).unwrap_or(0))
            .unwrap_or(0);
        here + self.header_u64(quizflow_nats::DELIVERIES_HEADER)
    }

    /// When a re-published job may be sent (its wait is not over before then).
    pub fn not_before(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let ms = self
            .header(quizflow_nats::NOT_BEFORE_HEADER)?
            .parse()
            .ok()?;
        chrono::DateTime::from_timestamp_millis(ms)
    }

    /// The trace context this job was published under.
    pub fn trace(&self) -> Option<async_nats::HeaderMap> {
        quizflow_nats::member_trace(self.carrier.msg.headers.as_ref(), self.index)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.carrier
            .msg
            .headers
            .as_ref()?
            .get(name)
            .map(|v| v.as_str())
    }

    fn header_u64(&self, name: &str) -> u64 {
        self.header(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Keeps the carrying message from being redelivered while this job waits or sends.
    pub async fn progress(&self) {
        let _ = self.carrier.msg.ack_with(AckKind::Progress).await;
    }

    /// Done with this job (sent, dead-lettered, cancelled, or a copy of a finished one).
    pub async fn ack(mut self) {
        self.settled = true;
        if self.carrier.members == 1 {
            let _ = self.carrier.msg.ack().await;
        } else {
            self.carrier.member_done(false).await;
        }
    }

    /// Settled by the chunk's own ack or nak (see [`nak_together`]).
    fn settled_with_its_chunk(mut self) {
        self.settled = true;
    }

    /// Done with this job for good, without processing it (poison, already dead-lettered).
    pub async fn term(mut self) {
        self.settled = true;
        if self.carrier.members == 1 {
            let _ = self.carrier.msg.ack_with(AckKind::Term).await;
        } else {
            self.carrier.member_done(false).await;
        }
    }

    /// The job must come back after `delay` (none: as soon as JetStream redelivers).
    pub async fn nak(mut self, delay: Option<Duration>, job: Option<&DeliveryJob>) {
        self.settled = true;
        if self.carrier.members == 1 {
            let _ = self.carrier.msg.ack_with(AckKind::Nak(delay)).await;
            return;
        }
        let republished = match job {
            Some(job) => {
                let not_before = chrono::Utc::now()
                    + chrono::TimeDelta::from_std(delay.unwrap_or_default()).unwrap_or_default();
                let trace = self
                    .trace()
                    .and_then(|h| h.get("traceparent").map(|v| v.as_str().to_owned()));
                quizflow_nats::republish_job(
                    &self.carrier.js,
                    job,
                    self.bytes.clone(),
                    trace.as_deref(),
                    not_before,
                    self.delivered(),
                )
                .await
                .inspect_err(
                    |e| tracing::warn!(error = %e, "job not re-published; its chunk comes back"),
                )
                .is_ok()
            }
            // Undecodable: it can only come back with its chunk.
            None => false,
        };
        self.carrier.member_done(!republished).await;
    }
}

/// Naks jobs that all wait for the same `delay` (the database is away, a claim failed). A
/// chunk every member of which is among them is naked as one message, instead of one
/// re-publish per member; the rest are naked one by one.
pub(crate) async fn nak_together(jobs: Vec<(JobMsg, DeliveryJob)>, delay: Duration) {
    type Group = (Arc<Carrier>, Vec<(JobMsg, DeliveryJob)>);
    let mut by_carrier: Vec<Group> = Vec::new();
    for (msg, job) in jobs {
        match by_carrier
            .iter_mut()
            .find(|(c, _)| Arc::ptr_eq(c, &msg.carrier))
        {
            Some((_, group)) => group.push((msg, job)),
            None => by_carrier.push((msg.carrier.clone(), vec![(msg, job)])),
        }
    }
    for (carrier, group) in by_carrier {
        let whole = carrier.members > 1
            && group.len() == carrier.members
            && carrier.left.load(Ordering::SeqCst) == carrier.members;
        if whole {
            for (msg, _) in group {
                msg.settled_with_its_chunk();
            }
            carrier.left.store(0, Ordering::SeqCst);
            let _ = carrier.msg.ack_with(AckKind::Nak(Some(delay))).await;
        } else {
            for (msg, job) in group {
                msg.nak(Some(delay), Some(&job)).await;
            }
        }
    }
}

impl Drop for JobMsg {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Dropped unsettled (an aborted task): the chunk must come back.
        let carrier = self.carrier.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { carrier.member_done(true).await });
        }
    }
}
