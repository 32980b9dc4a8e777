//! One batch's way through: decoded member by member, stored, matched and its jobs published,
//! then acked; a batch refused for its data is halved down to the one submission at fault.

use super::{decode_members, Batcher, BatcherError, Decoded};
use crate::matcher::Matcher;
use async_nats::jetstream::{self, AckKind};
use quizflow_core::{SubmissionEnvelope, SubmissionId};
use quizflow_store::intake::{self as store, Row};
use quizflow_store::{Retry, StoreError};
#[cfg(feature = "test-hooks")]
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Batcher {
    /// Decodes every member of every message; an undecodable member goes to `DEAD_LETTERS`
    /// alone. Per message: must it come back (nak) rather than be acked?
    async fn decode_batch(&self, batch: &[jetstream::Message]) -> (Vec<Decoded>, Vec<bool>) {
        let mut redeliver = vec![false; batch.len()];
        let mut good: Vec<Decoded> = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            let replaces: Arc<[u64]> =
                quizflow_nats::replaced_sequences(msg.headers.as_ref()).into();
            let mut bad = Vec::new();
            for (member, decoded) in decode_members(&msg.payload).into_iter().enumerate() {
                match decoded {
                    Ok(envelope) => good.push(Decoded {
                        msg: i,
                        seq,
                        replaces: replaces.clone(),
                        member,
                        envelope,
                    }),
                    Err(reason) => bad.push((member, reason)),
                }
            }
            for (member, reason) in bad {
                if !self.poison(msg, seq, member, &reason, "poison").await {
                    redeliver[i] = true;
                }
            }
        }
        (good, redeliver)
    }

    /// Stores, matches and publishes one batch, then acks it. A batch that fails for a
    /// reason that may be one message's data is split and retried in halves, down to the one
    /// message that fails, which goes to `DEAD_LETTERS` alone; the rest are stored and acked.
    /// On an outage (database or NATS away) every message not yet done is naked with the
    /// backoff as delay, and nothing of it is acked. A message is acked only once every
    /// member is stored or dead-lettered.
    pub(super) async fn flush(
        &self,
        batch: Vec<jetstream::Message>,
        backoff: Duration,
    ) -> Result<(), BatcherError> {
        let (good, mut redeliver) = self.decode_batch(&batch).await;
        let delay = backoff.max(Duration::from_millis(500));
        let mut pending: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
        pending.push(0..good.len());
        let mut outage: Option<BatcherError> = None;
        while let Some(range) = pending.pop() {
            let part = &good[range.clone()];
            if part.is_empty() {
                continue;
            }
            if outage.is_some() {
                part.iter().for_each(|d| redeliver[d.msg] = true);
                continue;
            }
            let Err(e) = self.store_and_publish(&batch, part).await else {
                continue;
            };
            match e.retry() {
                #[cfg(feature = "test-hooks")]
                _ if matches!(e, BatcherError::SimulatedCrash) => return Err(e),
                Retry::Later => {
                    part.iter().for_each(|d| redeliver[d.msg] = true);
                    outage = Some(e);
                }
                Retry::Isolate if part.len() > 1 => {
                    self.metrics.batches.with_label_values(&["isolated"]).inc();
                    let mid = range.start + part.len() / 2;
                    tracing::warn!(error = %e, size = part.len(), "batch rejected for its data; isolating the failing submission");
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
                Retry::Isolate => {
                    let d = &part[0];
                    match self.refused_alone(&batch, d, &e).await {
                        Ok(true) => {}
                        Ok(false) => redeliver[d.msg] = true,
                        Err(probe) => {
                            redeliver[d.msg] = true;
                            outage = Some(probe);
                        }
                    }
                }
            }
        }
        futures::future::join_all(batch.iter().zip(&redeliver).map(|(m, &again)| async move {
            if again {
                m.ack_with(AckKind::Nak(Some(delay))).await
            } else {
                m.ack().await
            }
        }))
        .await;
        match outage {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A submission refused alone, for its data: unstorable only if the server takes another
    /// write of the same shape right now (contract §4); then it goes to `DEAD_LETTERS`.
    /// `Ok(false)`: the letter was not recorded (it comes back); `Err`: the probe failed, the
    /// server's trouble.
    async fn refused_alone(
        &self,
        batch: &[jetstream::Message],
        d: &Decoded,
        e: &BatcherError,
    ) -> Result<bool, BatcherError> {
        if let Err(probe) = store::write_probe(&self.pool, d.envelope.received_at).await {
            tracing::warn!(error = %probe, "write probe failed: the server's trouble, not the submission's");
            return Err(BatcherError::Db(probe));
        }
        let reason = match e {
            BatcherError::Db(db) => format!("cannot be stored: {}", db.public()),
            other => format!("cannot be stored: {other}"),
        };
        Ok(self
            .poison(&batch[d.msg], d.seq, d.member, &reason, "unstorable")
            .await)
    }

    /// Matches a part of a batch on rayon (CPU work, off the async runtime).
    async fn match_part(
        &self,
        part: &[Decoded],
    ) -> Result<(Vec<SubmissionEnvelope>, Arc<Matcher>, Vec<crate::Match>), BatcherError> {
        let matcher = self.snapshot();
        let span = tracing::Span::current();
        let envelopes: Vec<SubmissionEnvelope> = part.iter().map(|d| d.envelope.clone()).collect();
        Ok(tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            let m = matcher.match_batch(&envelopes);
            (envelopes, matcher, m)
        })
        .await?)
    }

    /// The monthly partitions the batch's receipt times need, created once per process.
    async fn ensure_partitions(&self, envelopes: &[SubmissionEnvelope]) -> Result<(), StoreError> {
        let mut known = self
            .partitions
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        store::ensure_partitions(
            &self.pool,
            &mut known,
            envelopes.iter().map(|e| e.received_at),
        )
        .await?;
        if let Ok(mut k) = self.partitions.lock() {
            *k = known;
        }
        Ok(())
    }

    async fn store_and_publish(
        &self,
        batch: &[jetstream::Message],
        part: &[Decoded],
    ) -> Result<(), BatcherError> {
        let (envelopes, matcher, matches) = self.match_part(part).await?;
        let rows: Vec<Row<'_>> = envelopes
            .iter()
            .zip(part)
            .map(|(e, d)| Row {
                envelope: e,
                stream_seq: d.seq,
            })
            .collect();
        let contacts = crate::consent::contacts(&self.settings.hash_key, &matches, &envelopes);
        let suppressed = crate::consent::suppressed(&self.pool, &contacts).await?;
        let planner = crate::consent::Planner {
            matcher: &matcher,
            matches: &matches,
            batch: &envelopes,
            contacts: &contacts,
            suppressed: &suppressed,
            now: chrono::Utc::now(),
            per_second: self.settings.spread_per_second,
            windows: true,
        };
        self.ensure_partitions(&envelopes).await?;
        let (new_rows, plan) =
            store::store_batch(&self.pool, &rows, |new_rows| planner.plan(new_rows)).await?;
        self.metrics.suppressed.inc_by(plan.suppressed.len() as u64);
        let mut jobs = plan.jobs;
        #[cfg(feature = "test-hooks")]
        if self.crash_after_commit.swap(false, Ordering::SeqCst) {
            return Err(BatcherError::SimulatedCrash);
        }
        // Rows stored by an earlier, interrupted attempt: publish their queued jobs again.
        // (A copy that reaches a worker twice is sent once: the worker claims the ledger row.)
        // A pack an erasure published again stands for the sequences it replaces.
        let seen: Vec<(SubmissionId, u64)> = (0..envelopes.len())
            .filter(|i| !new_rows.contains(i))
            .flat_map(|i| {
                let id = envelopes[i].submission_id;
                std::iter::once(part[i].seq)
                    .chain(part[i].replaces.iter().copied())
                    .map(move |seq| (id, seq))
            })
            .collect();
        // (The same batch again makes the same chunks, which JetStream drops as duplicates.)
        if !seen.is_empty() {
            jobs.extend(store::queued_jobs(&self.pool, &seen).await?);
        }
        // Scheduled jobs wait in the ledger (`scheduled`); the workers publish them when due.
        let scheduled = jobs.iter().filter(|j| j.due_at.is_some()).count();
        jobs.retain(|j| j.due_at.is_none());
        let traces = traces(batch, part);
        quizflow_nats::publish_jobs(&self.js, &jobs, |job| {
            traces.get(&job.submission_id).cloned()
        })
        .await?;
        let already = envelopes.len() - new_rows.len();
        self.metrics.stored.inc_by(new_rows.len() as u64);
        self.metrics.already_stored.inc_by(already as u64);
        self.metrics.jobs_per_batch.observe(jobs.len() as f64);
        self.metrics.jobs_published.inc_by(jobs.len() as u64);
        tracing::info!(
            size = part.len(),
            stored = new_rows.len(),
            already_stored = already,
            jobs = jobs.len(),
            scheduled,
            "batch stored"
        );
        Ok(())
    }

    /// Moves a submission that cannot be stored (undecodable: `poison`; refused by the
    /// database for its data: `unstorable`) to DEAD_LETTERS: it never blocks the consumer.
    /// The letter holds that member's bytes only. False when the letter was not published
    /// (its message must then come back).
    pub(super) async fn poison(
        &self,
        msg: &jetstream::Message,
        seq: u64,
        member: usize,
        reason: &str,
        class: &'static str,
    ) -> bool {
        let token = msg
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or("_")
            .to_owned();
        let bytes = match quizflow_nats::members(&msg.payload).nth(member) {
            Some(line) => msg.payload.slice_ref(line),
            None => msg.payload.clone(),
        };
        // The reason stays in the letter (admin-only): decoder errors can quote the payload.
        tracing::warn!(seq, member, class, "submission moved to dead letters");
        self.metrics.dead_letters.with_label_values(&[class]).inc();
        match quizflow_nats::dead_letter_submission(
            &self.js,
            &token,
            bytes.clone(),
            reason,
            seq,
            member,
        )
        .await
        {
            Ok(()) => {
                // Mirror for `GET /v1/dead-letters`; the stream copy is the durable one.
                if let Ok(mut conn) = self.pool.get().await {
                    // One mirror row per stream message and member, however often poisoned.
                    let id = uuid::Uuid::new_v5(
                        &uuid::Uuid::NAMESPACE_OID,
                        quizflow_nats::poison_id("submission", seq, member).as_bytes(),
                    );
                    if let Err(e) = quizflow_store::dead_letters::insert_poison_submission(
                        &mut conn, id, reason, &bytes,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "poison submission not mirrored to dead_letters");
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not published; message naked");
                false
            }
        }
    }
}

/// One span per submission, child of the request that published it, so a lead's trace runs
/// from the API through the batcher to each delivery attempt. Only when tracing is on.
fn traces(
    batch: &[jetstream::Message],
    part: &[Decoded],
) -> std::collections::HashMap<SubmissionId, async_nats::HeaderMap> {
    if !quizflow_telemetry::enabled() {
        return Default::default();
    }
    part.iter()
        .filter_map(|d| {
            let span = tracing::info_span!(
                "batcher.store",
                submission_id = %d.envelope.submission_id,
                stream_seq = d.seq
            );
            let parent = quizflow_nats::member_trace(batch[d.msg].headers.as_ref(), d.member);
            quizflow_telemetry::set_parent_from_nats(&span, parent.as_ref());
            quizflow_telemetry::headers_for(&span).map(|h| (d.envelope.submission_id, h))
        })
        .collect()
}
