//! The last step of a sent job: its [`Decision`] recorded in the ledger (before the ack: a
//! crash in between resends at worst), then the ack or the nak with its backoff; and the
//! metrics of each call. Cancellations are settled here too.

use crate::channel::{update, Channelled};
use crate::handle::JobMsg;
use crate::outcome::Decision;
use crate::status::history_entry;
use quizflow_core::{DeliveryJob, DeliveryStatus, FallbackOn, Outcome};
use quizflow_store::deliveries::Arm;
use quizflow_store::deliveries::JobContext;
use std::time::Duration;
use uuid::Uuid;

/// The sender an attempt went through, written into its history entry: a retry after an
/// `uncertain` answer goes back to it ([`crate::lanes::uncertain_lane`]).
#[derive(Debug, Clone)]
pub(crate) struct Via<'a> {
    /// The recipient.
    pub to: &'a str,
    /// The provider's id of the message, where its reports name only that (Evolution).
    pub message_id: Option<String>,
    pub provider: &'static str,
    /// `provider/sender`.
    pub sender: &'a str,
    pub uncertain: bool,
}

impl Via<'_> {
    fn entry(&self, outcome: &str, detail: &str) -> serde_json::Value {
        let mut e = history_entry(outcome, detail);
        e["provider"] = self.provider.into();
        e["sender"] = self.sender.into();
        if self.uncertain {
            e["uncertain"] = true.into();
        }
        e
    }
}

/// The fallback `on` arms for this job (contract §3.3): its action's, when it has one that
/// `on` arms, due now (`not_on_channel`) or after its wait (`undelivered`).
pub(crate) fn arm(job: &DeliveryJob, ctx: &JobContext, on: FallbackOn) -> Option<Arm> {
    // Only a campaign step's message has one: not a fallback, not a recurring occurrence.
    if job.step >= quizflow_core::schedule::STEP_STRIDE {
        return None;
    }
    let spec = ctx.campaign.as_ref()?;
    let f = spec
        .action_for(job.channel, job.step)?
        .fallback
        .as_deref()?;
    if !f.arms_on(on) {
        return None;
    }
    let due_in = match on {
        FallbackOn::NotOnChannel => Duration::ZERO,
        FallbackOn::Undelivered => f.wait()?,
    };
    Some(Arm {
        channel: f.action.channel.as_str().to_owned(),
        step: quizflow_core::fallback_step(job.channel, job.step),
        due_in,
    })
}

/// A sent job's row: its provider's id and the fallback an `undelivered` wait arms.
fn sent(
    job: &DeliveryJob,
    ctx: &JobContext,
    attempts: i32,
    claim: Uuid,
    via: &Via<'_>,
) -> quizflow_store::deliveries::Update {
    let history = vec![via.entry("sent", via.sender)];
    let mut u = update(
        job,
        DeliveryStatus::Sent,
        attempts,
        None,
        history,
        Some(claim),
    );
    u.provider_message_id = via.message_id.clone();
    u.fallback = arm(job, ctx, FallbackOn::Undelivered);
    u
}

impl Channelled {
    /// Records a call's decision, then acks (sent, dead) or naks for its backoff.
    pub(crate) async fn settle(
        &self,
        msg: JobMsg,
        job: DeliveryJob,
        ctx: JobContext,
        claim: Uuid,
        decision: Decision,
        via: Via<'_>,
    ) {
        let to = via.to;
        let (u, retry_in) = match decision {
            Decision::Sent { attempts } => (sent(&job, &ctx, attempts, claim, &via), None),
            Decision::Dead {
                class: quizflow_core::DeadClass::Permanent,
                attempts,
                reason,
            } if crate::classify::not_on_channel(&reason)
                && arm(&job, &ctx, FallbackOn::NotOnChannel).is_some() =>
            {
                (
                    self.fell_back(&job, &ctx, attempts, &reason, claim, &via),
                    None,
                )
            }
            Decision::Retry {
                status,
                attempts,
                retry_in,
                event,
                detail,
            } => {
                let history = vec![via.entry(event, &detail)];
                let mut u = update(&job, status, attempts, Some(detail), history, Some(claim));
                u.retry_in = Some(retry_in);
                (u, Some(retry_in))
            }
            Decision::Dead {
                class,
                attempts,
                reason,
            } => {
                let dead = (class, reason.as_str(), attempts);
                return self.dead(msg, &job, &ctx, claim, Some(to), dead).await;
            }
            Decision::Suppressed {
                attempts,
                reason,
                detail,
            } => {
                // The entry first: were the row written and the entry lost, the next campaign
                // would call the provider again.
                if let Err(e) = self.suppress(to, reason, via.provider).await {
                    tracing::warn!(error = %e, "suppression not recorded; job naked");
                    msg.nak(Some(Duration::from_secs(5)), Some(&job)).await;
                    return;
                }
                let why = format!("suppressed: {}: {detail}", reason.as_str());
                let history = vec![via.entry("suppressed", &why)];
                let status = DeliveryStatus::Suppressed;
                (
                    update(&job, status, attempts, Some(why), history, Some(claim)),
                    None,
                )
            }
        };
        self.record(msg, &job, u, retry_in).await;
    }

    /// Writes a call's outcome, then acks it, or naks it for its wait (or when it was not
    /// recorded: it comes back).
    async fn record(
        &self,
        msg: JobMsg,
        job: &DeliveryJob,
        u: quizflow_store::deliveries::Update,
        retry_in: Option<Duration>,
    ) {
        match self.status.write(u).await {
            Ok(true) => match retry_in {
                None => msg.ack().await,
                Some(wait) => msg.nak(Some(wait), Some(job)).await,
            },
            Ok(false) => {
                // The row is no longer ours (its lease ran out and another worker took it, or
                // it was finished): that worker's outcome stands.
                tracing::warn!(job = %job.job_id, "outcome superseded: the claim was lost");
                msg.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "status not recorded; job naked");
                msg.nak(Some(Duration::from_secs(5)), Some(job)).await;
            }
        }
    }

    /// The person is not on this channel and its fallback takes over: the row ends `skipped`
    /// (not a failure to look into: no dead letter) and the fallback's row is armed, due now.
    fn fell_back(
        &self,
        job: &DeliveryJob,
        ctx: &JobContext,
        attempts: i32,
        reason: &str,
        claim: Uuid,
        via: &Via<'_>,
    ) -> quizflow_store::deliveries::Update {
        let why = format!("skipped: not_on_channel: {reason}");
        let history = vec![via.entry("skipped", &why)];
        let status = DeliveryStatus::Skipped;
        let mut u = update(job, status, attempts, Some(why), history, Some(claim));
        u.fallback = arm(job, ctx, FallbackOn::NotOnChannel);
        self.metrics
            .skipped
            .with_label_values(&[self.channel.as_str(), "skipped"])
            .inc();
        u
    }

    /// Puts the recipient on the suppression list for `reason` (on this channel, for the
    /// purposes the reason covers).
    async fn suppress(
        &self,
        to: &str,
        reason: quizflow_core::consent::Reason,
        provider: &str,
    ) -> Result<(), quizflow_store::StoreError> {
        let Some(hash) = self.settings.hash_key.hash(self.channel, to) else {
            return Ok(());
        };
        let entry = quizflow_store::consent::NewSuppression {
            channel: self.channel.as_str().to_owned(),
            contact_hash: hash.to_vec(),
            reason: reason.as_str().to_owned(),
            scope: reason.scope().as_str().to_owned(),
            source: format!("provider:{provider}"),
        };
        let mut conn = self.pool.get().await?;
        quizflow_store::consent::suppress(&mut conn, &[entry]).await?;
        self.metrics
            .suppressed
            .with_label_values(&[self.channel.as_str(), reason.as_str()])
            .inc();
        Ok(())
    }

    /// A claimed job a rule says not to send (`empty_render`): recorded `skipped` with the
    /// reason, then acked.
    pub(crate) async fn skip(
        &self,
        msg: JobMsg,
        job: &DeliveryJob,
        ctx: &JobContext,
        claim: Uuid,
        reason: &'static str,
    ) {
        let why = format!("skipped: {reason}");
        let history = vec![history_entry("skipped", &why)];
        let status = DeliveryStatus::Skipped;
        let u = update(job, status, ctx.attempts, Some(why), history, Some(claim));
        self.metrics
            .skipped
            .with_label_values(&[self.channel.as_str(), "skipped"])
            .inc();
        match self.status.write(u).await {
            Ok(_) => msg.ack().await,
            Err(_) => msg.nak(Some(Duration::from_secs(5)), Some(job)).await,
        }
    }

    /// A job whose campaign ended or went away: recorded `cancelled` (only if nobody holds
    /// it), then acked.
    pub(crate) async fn cancel(
        &self,
        msg: JobMsg,
        job: &DeliveryJob,
        ctx: &JobContext,
        why: &'static str,
    ) {
        let history = vec![history_entry("cancelled", why)];
        let status = DeliveryStatus::Cancelled;
        let u = update(
            job,
            status,
            ctx.attempts,
            Some(why.to_owned()),
            history,
            None,
        );
        match self.status.write(u).await {
            // Applied, or someone holds it (their outcome stands): either way this copy is done.
            Ok(_) => {
                tracing::info!(job = %job.job_id, why, "job cancelled");
                msg.ack().await;
            }
            Err(_) => msg.nak(Some(Duration::from_secs(5)), Some(job)).await,
        }
    }

    /// Counts a provider call: its outcome class, duration, and what it cost.
    pub(crate) fn observe(&self, outcome: &Outcome, took: Duration) {
        let channel = self.channel.as_str();
        let m = &self.metrics;
        m.deliveries
            .with_label_values(&[channel, outcome.label()])
            .inc();
        m.provider_seconds
            .with_label_values(&[channel])
            .observe(took.as_secs_f64());
        match outcome {
            Outcome::Sent => {
                let unit = self.settings.costs.unit(self.channel);
                if unit > 0.0 {
                    let currency = &self.settings.costs.currency;
                    m.cost.with_label_values(&[channel, currency]).inc_by(unit);
                }
            }
            Outcome::Throttle { .. } => m.retries.with_label_values(&[channel, "throttled"]).inc(),
            Outcome::Transient(_) | Outcome::Uncertain(_) => {
                m.retries.with_label_values(&[channel, "failed"]).inc()
            }
            Outcome::Permanent(_) | Outcome::Suppress { .. } => {}
        }
    }
}
