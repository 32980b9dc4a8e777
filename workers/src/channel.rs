//! One channel's pool: what every stage of a job's life (fetch, triage, send, settle, dead
//! letters) shares, and this process's share of the channel's limits, followed as the
//! cluster's membership changes.

use crate::cluster::Share;
use crate::handle::JobMsg;
use crate::lanes::Lane;
use crate::metrics::WorkerMetrics;
use crate::render;
use crate::status::{StatusWriter, Update};
use crate::WorkerSettings;
use async_nats::jetstream;
use quizflow_core::{Channel, DeliveryJob, DeliveryStatus};
use quizflow_store::deliveries::{self, JobContext, Key};
use quizflow_store::Pool;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use uuid::Uuid;

pub(crate) struct Channelled {
    pub channel: Channel,
    pub settings: Arc<WorkerSettings>,
    pub js: jetstream::Context,
    pub pool: Pool,
    pub status: StatusWriter,
    pub http: reqwest::Client,
    /// The channel's senders, in failover order ([`crate::lanes`]).
    pub lanes: Vec<Lane>,
    /// This process's share of the channel's concurrency ([`crate::cluster`]).
    pub share: watch::Receiver<Share>,
    /// Provider calls in flight: as many permits as the share's concurrency.
    pub slots: Arc<Semaphore>,
    pub metrics: WorkerMetrics,
    pub templates: render::TemplateCache,
    /// Campaign versions read so far (immutable once written).
    pub specs: deliveries::SpecCache,
    /// Claims this process holds, renewed until each job is settled (shared by channels).
    pub leases: Arc<crate::lease::Leases>,
    /// Confirms each claim right before its call (an erasure may have cancelled it).
    pub gate: crate::lease::CallGate,
    pub stop: watch::Receiver<bool>,
}

impl Channelled {
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the stop signal is given.
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Sleeps for `d` or until the stop signal, whichever comes first.
    pub async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    /// Applies this process's shares as the cluster changes: the channel's slots, and each
    /// sender's limiter and slots.
    pub async fn follow_share(self: Arc<Self>) -> Result<(), crate::WorkerError> {
        let metrics = &self.metrics;
        let lanes = self.lanes.iter().map(|lane| {
            let labels = [self.channel.as_str(), lane.label.as_str()];
            lane.follow(self.stop.clone(), move |rate, members| {
                metrics.rate_share.with_label_values(&labels).set(rate);
                metrics
                    .members
                    .with_label_values(&labels[..1])
                    .set(members as i64);
            })
        });
        tokio::join!(futures::future::join_all(lanes), self.follow_slots());
        Ok(())
    }

    /// The channel's slots grown or shrunk with its share (a shrink takes permits back as
    /// calls finish).
    async fn follow_slots(&self) {
        let mut share = self.share.clone();
        let mut issued = 0usize;
        loop {
            let now = *share.borrow_and_update();
            crate::lanes::resize(&self.slots, &mut issued, now.concurrency);
            tokio::select! {
                changed = share.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                // Permits held by calls in flight come back one by one: take them out.
                p = self.slots.acquire(), if issued > now.concurrency => {
                    if let Ok(p) = p {
                        p.forget();
                        issued -= 1;
                    }
                }
                _ = self.stopped() => return,
            }
        }
    }

    /// How long a claim holds (see [`lease_for`]).
    pub fn lease(&self) -> Duration {
        lease_for(&self.settings)
    }

    /// The backoff after the `attempt`-th failed attempt (0-based), ±10 % jitter so that
    /// retries of a burst spread out instead of arriving together.
    pub fn delay(&self, attempt: usize) -> Duration {
        let s = &self.settings.retry_schedule;
        let base = s
            .get(attempt.min(s.len().saturating_sub(1)))
            .copied()
            .unwrap_or(Duration::from_secs(5));
        base.mul_f64(rand::rng().random_range(0.9..1.1))
    }

    /// Gives a claimed job back unsent (stopping, breaker opened): no attempt spent.
    pub async fn release(
        &self,
        msg: JobMsg,
        job: &DeliveryJob,
        ctx: &JobContext,
        claim: Uuid,
        wait: Option<Duration>,
    ) {
        let waiting = DeliveryStatus::waiting(ctx.attempts);
        let u = update(job, waiting, ctx.attempts, None, Vec::new(), Some(claim));
        let _ = self.status.write(u).await;
        msg.nak(wait, Some(job)).await;
    }
}

/// How long a claim holds without renewal: the longest one send can take before its outcome
/// is recorded (waiting for the rate limiter, the call, the ack wait), with room to spare.
/// Held claims are renewed every quarter of it ([`crate::lease`]).
pub(crate) fn lease_for(s: &WorkerSettings) -> Duration {
    let limiter = Duration::from_secs_f64(s.concurrency as f64 / f64::from(s.rate_per_sec.max(1)));
    s.send_timeout + s.ack_wait * 2 + limiter
}

pub(crate) fn key_of(job: &DeliveryJob) -> Key {
    (
        job.submission_id.0,
        job.campaign_id,
        job.channel.to_string(),
        job.step,
    )
}

pub(crate) fn update(
    job: &DeliveryJob,
    status: DeliveryStatus,
    attempts: i32,
    err: Option<String>,
    history: Vec<serde_json::Value>,
    claim: Option<Uuid>,
) -> Update {
    Update {
        submission_id: job.submission_id.0,
        campaign_id: job.campaign_id,
        channel: job.channel.to_string(),
        step: job.step,
        status,
        attempts,
        last_error: err,
        history,
        claim,
        retry_in: None,
        provider_message_id: None,
        fallback: None,
    }
}
