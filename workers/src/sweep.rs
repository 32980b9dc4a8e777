//! Background upkeep every workers process runs (any number may run at once):
//!
//! - **max-deliveries sweeper**: a job JetStream gave up on (a consumer still configured with a
//!   `max_deliver` limit) is dead-lettered from its stream copy, then deleted from the work
//!   queue. Its advisories are captured durably in `DEAD_LETTERS`.
//! - **redrive relay**: dead letters taken for redrive whose jobs were never confirmed
//!   published (the API crashed, NATS was away) are published again.

use crate::dead::{DeadLetters, Letter};
use crate::status::StatusWriter;
use async_nats::jetstream::{self, consumer::PullConsumer, stream::RawMessageErrorKind, AckKind};
use futures::StreamExt;
use quizflow_core::DeliveryJob;
use quizflow_nats::subjects;
use quizflow_store::{deliveries, Pool};
use std::time::Duration;
use tokio::sync::watch;

pub(crate) async fn run(
    relay_after: Duration,
    js: jetstream::Context,
    pool: Pool,
    status: StatusWriter,
    mut stop: watch::Receiver<bool>,
) {
    // Held so the status writer outlives the sweeper's last write.
    let _status = status;
    let consumer: Option<PullConsumer> = async {
        js.get_stream(subjects::DEAD_LETTERS_STREAM)
            .await
            .ok()?
            .get_consumer(subjects::MAX_DELIVERIES_SWEEPER)
            .await
            .ok()
    }
    .await;
    let deliveries_stream = js.get_stream(subjects::DELIVERIES_STREAM).await.ok();
    if consumer.is_none() || deliveries_stream.is_none() {
        tracing::error!("max-deliveries sweeper cannot start; the redrive relay runs alone");
    }
    let dl = DeadLetters {
        js: &js,
        pool: &pool,
    };
    let mut relay_tick = tokio::time::interval((relay_after / 3).max(Duration::from_millis(200)));
    loop {
        if *stop.borrow() {
            break;
        }
        let mut got = 0;
        if let (Some(consumer), Some(stream)) = (&consumer, &deliveries_stream) {
            if let Ok(mut batch) = consumer.fetch().max_messages(100).messages().await {
                while let Some(Ok(advisory)) = batch.next().await {
                    got += 1;
                    let ok = sweep_one(&dl, stream, &advisory.payload).await;
                    let _ = advisory
                        .ack_with(if ok {
                            AckKind::Ack
                        } else {
                            AckKind::Nak(Some(Duration::from_secs(5)))
                        })
                        .await;
                }
            }
        }
        if got == 0 {
            tokio::select! {
                _ = relay_tick.tick() => relay_redrives(&js, &pool, relay_after).await,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Publishes redrives that were taken but never confirmed published.
pub(crate) async fn relay_redrives(js: &jetstream::Context, pool: &Pool, relay_after: Duration) {
    let Ok(mut conn) = pool.get().await else {
        return;
    };
    let taken = match quizflow_store::dead_letters::unpublished(&mut conn, relay_after, 500).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "redrive relay: cannot read the outbox");
            return;
        }
    };
    drop(conn);
    if taken.is_empty() {
        return;
    }
    let letters: Vec<quizflow_nats::Redrive<'_>> = taken
        .iter()
        .filter_map(|t| {
            Some(quizflow_nats::Redrive {
                letter_id: t.id.to_string(),
                kind: &t.kind,
                payload: t.payload.as_deref()?,
            })
        })
        .collect();
    let acked = quizflow_nats::publish_redrives(js, &letters).await;
    let ids: Vec<uuid::Uuid> = letters
        .iter()
        .zip(acked)
        .filter(|(_, ok)| *ok)
        .filter_map(|(l, _)| l.letter_id.parse().ok())
        .collect();
    if let Ok(mut conn) = pool.get().await {
        if quizflow_store::dead_letters::mark_published(&mut conn, &ids)
            .await
            .is_ok()
        {
            tracing::info!(
                published = ids.len(),
                "redrive relay published pending redrives"
            );
        }
    }
}

/// One job of a stranded message, dead-lettered unless it was settled meanwhile. `None`: the
/// database is away (look again later).
async fn sweep_job(dl: &DeadLetters<'_>, job: &DeliveryJob) -> Option<Result<(), String>> {
    let mut conn = dl.pool.get().await.ok()?;
    let ctx = deliveries::load(&mut conn, &deliveries::SpecCache::default(), &[job])
        .await
        .ok()?
        .pop()
        .flatten();
    drop(conn);
    // Jobs of the chunk that were settled already stay as they are.
    if ctx.as_ref().is_some_and(|c| c.is_final()) {
        return Some(Ok(()));
    }
    let (attempts, history) = ctx.map(|c| (c.attempts, c.history)).unwrap_or_default();
    let letter = Letter {
        class: quizflow_core::DeadClass::MaxDeliveries,
        reason: "JetStream delivery limit reached without an outcome",
        attempts,
        to: None,
        claim: None,
        fallback: None,
    };
    let recorded = dl.record(job, &history, letter).await;
    Some(recorded.map(|_| ()).map_err(|e| e.to_string()))
}

/// Dead-letters one job JetStream gave up on. False: try again later.
async fn sweep_one(
    dl: &DeadLetters<'_>,
    deliveries_stream: &jetstream::stream::Stream,
    advisory: &[u8],
) -> bool {
    let seq = serde_json::from_slice::<serde_json::Value>(advisory)
        .ok()
        .and_then(|a| a["stream_seq"].as_u64());
    let Some(seq) = seq else { return true };
    let original = match deliveries_stream.get_raw_message(seq).await {
        Ok(m) => m,
        // Acked or deleted meanwhile: nothing to do.
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return true,
        // Anything else (NATS away, timeout) is not "gone": look again later.
        Err(e) => {
            tracing::warn!(error = %e, seq, "max-deliveries sweeper cannot read the job; will retry");
            return false;
        }
    };
    // A message carries one job or a chunk of them, one per line.
    let mut recorded: Result<(), String> = Ok(());
    for (member, line) in quizflow_nats::members(&original.payload).enumerate() {
        let one = match serde_json::from_slice::<DeliveryJob>(line) {
            Ok(job) => match sweep_job(dl, &job).await {
                Some(r) => r,
                None => return false,
            },
            // Undecodable: the stream copy is all there is; keep it in DEAD_LETTERS as is.
            Err(e) => quizflow_nats::dead_letter_job_message(
                dl.js,
                "unknown",
                original.payload.slice_ref(line),
                &format!("undecodable job: {e}"),
                "max-deliveries",
                seq,
                member,
            )
            .await
            .map_err(|e| e.to_string()),
        };
        if one.is_err() {
            recorded = one;
        }
    }
    match recorded {
        Ok(()) => {
            if let Err(e) = deliveries_stream.delete_message(seq).await {
                tracing::warn!(error = %e, seq, "stranded job dead-lettered but not deleted from the work queue");
            }
            tracing::warn!(seq, "job dead-lettered after reaching max deliveries");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, seq, "max-deliveries dead letter not recorded; will retry");
            false
        }
    }
}
