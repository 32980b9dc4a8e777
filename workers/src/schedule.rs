//! The schedule firer every workers process runs beside its pools: due `scheduled` ledger
//! rows (campaign actions with `delay` or `send_at`) are published as jobs, in due order, by
//! whichever process takes them first (`quizflow_store::schedules`). Idle, it looks every
//! [`POLL`]; after a full round it goes again at once, so a backlog drains at the speed of
//! PostgreSQL and the publishes, not of the poll.

use crate::metrics::WorkerMetrics;
use async_nats::jetstream;
use quizflow_core::Channel;
pub use quizflow_store::schedules::Fired;
use quizflow_store::schedules::{fire_due, FireError};
use quizflow_store::Pool;
use std::time::Duration;
use tokio::sync::watch;

/// How often an idle firer looks for new due rows (a row due sooner is waited for exactly).
pub const POLL: Duration = Duration::from_millis(200);
/// Rows one round takes (one transaction, one pipelined publish): what bounds a firer's
/// memory however many messages are scheduled.
pub const ROUND: i64 = 1000;

/// Fires due rows until `stop`; `on_fired` sees every round that settled something (the
/// workers process counts it in its metrics; `quizflow bench schedules` measures lateness).
pub async fn run(
    js: jetstream::Context,
    pool: Pool,
    channels: &[Channel],
    on_fired: impl Fn(&Fired) + Send,
    mut stop: watch::Receiver<bool>,
) {
    // Only the channels this process serves: a process of one channel's deployment never
    // fires another's rows (nor rows of a channel this build does not know).
    let channels: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    loop {
        if *stop.borrow() {
            break;
        }
        let pause = match round(&js, &pool, &channels).await {
            Ok(fired) => {
                if fired.skipped > 0 {
                    tracing::warn!(
                        rows = fired.skipped,
                        "due scheduled rows of a channel this build does not know stay scheduled \
                         (a newer version's; upgrade this process)"
                    );
                }
                let n = fired.published + fired.cancelled;
                if n > 0 {
                    on_fired(&fired);
                    tracing::debug!(
                        published = fired.published,
                        cancelled = fired.cancelled,
                        "scheduled messages fired"
                    );
                }
                if n as i64 >= ROUND {
                    Duration::ZERO
                } else {
                    until_next(&pool, &channels, fired.skipped > 0).await
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "schedule firer: round failed; rows stay scheduled");
                Duration::from_secs(1)
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// How long an idle firer waits: until the next due row when that comes before [`POLL`]
/// (so a reminder is not late by the poll), else `POLL` (rows written meanwhile are seen then).
async fn until_next(pool: &Pool, channels: &[&str], skipped: bool) -> Duration {
    // Rows this build cannot fire stay due: waiting for them would spin.
    if skipped {
        return POLL;
    }
    let Ok(mut conn) = pool.get().await else {
        return POLL;
    };
    match quizflow_store::schedules::next_due(&mut conn, channels).await {
        Ok(Some(at)) => (at - chrono::Utc::now())
            .to_std()
            // Already due: it fell due after the round's query, or another firer holds it
            // (then it is settled within that firer's round).
            .map_or(Duration::from_millis(20), |d| {
                d.clamp(Duration::from_millis(5), POLL)
            }),
        _ => POLL,
    }
}

/// Counts a round in the workers' metrics.
pub(crate) fn observe(metrics: &WorkerMetrics, fired: &Fired) {
    metrics
        .scheduled
        .with_label_values(&["published"])
        .inc_by(fired.published as u64);
    metrics
        .scheduled
        .with_label_values(&["cancelled"])
        .inc_by(fired.cancelled as u64);
    for ms in &fired.lateness_ms {
        metrics
            .schedule_lateness
            .observe((*ms).max(0) as f64 / 1000.0);
    }
}

/// One round: the rows it settled.
async fn round(
    js: &jetstream::Context,
    pool: &Pool,
    channels: &[&str],
) -> Result<Fired, FireError> {
    let mut conn = pool.get().await.map_err(quizflow_store::StoreError::from)?;
    fire_due(&mut conn, ROUND, channels, |jobs| async move {
        quizflow_nats::publish_jobs(js, &jobs, |_| None)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}
