//! One channel's pool: what every stage of a job's life (fetch, triage, send, settle, dead
//! letters) shares, and this process's share of the channel's limits, followed as the
//! cluster's membership changes.

use crate::breaker::Breaker;
use crate::cluster::Share;
use crate::handle::JobMsg;
use crate::metrics::WorkerMetrics;
use crate::provider::Provider;
use crate::render;
use crate::status::{StatusWriter, Update};
use crate::WorkerSettings;
use async_nats::jetstream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use quizflow_core::{Channel, DeliveryJob, DeliveryStatus};
use quizflow_store::deliveries::{self, JobContext, Key};
use quizflow_store::Pool;
use rand::Rng;
use std::num::NonZeroU32;
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
    pub provider: Provider,
    /// This process's share of the channel's rate (none: send nothing), rebuilt when the
    /// cluster's membership changes.
    pub limiter: std::sync::RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    /// This process's share of the channel's limits ([`crate::cluster`]).
    pub share: watch::Receiver<Share>,
    /// Provider calls in flight: as many permits as the share's concurrency.
    pub slots: Arc<Semaphore>,
    pub breaker: Arc<Breaker>,
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

    /// Applies this process's share as the cluster changes: a limiter at the new rate, and
    /// the slots grown or shrunk (a shrink takes permits back as calls finish).
    pub async fn follow_share(self: Arc<Self>) -> Result<(), crate::WorkerError> {
        let mut share = self.share.clone();
        let mut issued = 0usize;
        let mut rate = 0.0f64;
        let mut replaced = false;
        loop {
            let now = *share.borrow_and_update();
            if now.rate_per_sec != rate {
                rate = now.rate_per_sec;
                let limiter = limiter_at(rate, replaced);
                replaced |= limiter.is_some();
                *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = limiter;
                let channel = [self.channel.as_str()];
                self.metrics
                    .rate_share
                    .with_label_values(&channel)
                    .set(rate);
                self.metrics
                    .members
                    .with_label_values(&channel)
                    .set(now.members as i64);
            }
            if now.concurrency > issued {
                self.slots.add_permits(now.concurrency - issued);
                issued = now.concurrency;
            } else if now.concurrency < issued {
                issued -= self.slots.forget_permits(issued - now.concurrency);
            }
            tokio::select! {
                changed = share.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                // Permits held by calls in flight come back one by one: take them out.
                p = self.slots.acquire(), if issued > now.concurrency => {
                    if let Ok(p) = p {
                        p.forget();
                        issued -= 1;
                    }
                }
                _ = self.stopped() => return Ok(()),
            }
        }
    }

    pub fn current_limiter(&self) -> Option<Arc<DefaultDirectRateLimiter>> {
        self.limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

/// A limiter at `rate` per second (none at 0). Its burst is a tenth of a second's worth: a
/// provider that allows 50 msg/s must not see 50 at once after an idle spell. A limiter that
/// `replaces` another starts empty, or every membership change would add a burst per process.
fn limiter_at(rate: f64, replaces: bool) -> Option<Arc<DefaultDirectRateLimiter>> {
    if rate <= 0.0 {
        return None;
    }
    let burst = NonZeroU32::new((rate / 10.0) as u32).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))?.allow_burst(burst);
    let l = RateLimiter::direct(quota);
    if replaces {
        let _ = l.check_n(burst);
    }
    Some(Arc::new(l))
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
    }
}
