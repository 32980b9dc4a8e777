//! A claimed job's call: what to send (recipient, rendered templates), the wait for the rate
//! limiter, the breaker and the erasure gate, then the provider call, whose outcome the
//! breaker learns before the slot frees. The outcome goes on to [`crate::settle`].

use crate::channel::{key_of, Channelled};
use crate::fetch::Called;
use crate::handle::JobMsg;
use crate::lanes::{route, Ask, Lane, Route};
use crate::outcome::decide;
use crate::provider::Outgoing;
use crate::render;
use crate::settle::Via;
use quizflow_core::consent::Purpose;
use quizflow_core::{Action, Channel, DeadClass, DeliveryJob, Outcome};
use quizflow_store::deliveries::JobContext;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Interval;
use uuid::Uuid;

impl Channelled {
    /// Sends one claimed job through one of the channel's senders ([`crate::lanes`]); `probe`
    /// names the sender this job probes, if it is a probe. `slot` is held for the provider
    /// call only: recording the outcome and acking do not keep a provider slot busy.
    pub(crate) async fn process(
        &self,
        msg: JobMsg,
        job: DeliveryJob,
        ctx: JobContext,
        claim: Uuid,
        slot: tokio::sync::OwnedSemaphorePermit,
        probe: Option<usize>,
    ) -> Called {
        let (out, from) = match self.compose(&job, &ctx) {
            Ok(out) => out,
            Err((to, reason)) => {
                let dead = (DeadClass::Permanent, reason.as_str(), ctx.attempts);
                self.dead(msg, &job, &ctx, claim, to.as_deref(), dead).await;
                return Called::No;
            }
        };
        // A message that renders to nothing is never sent (contract §3): `skipped`.
        if job.channel != Channel::Webhook
            && out.body.trim().is_empty()
            && out.image.is_none()
            && out.template.is_none()
        {
            self.skip(msg, &job, &ctx, claim, "empty_render").await;
            return Called::No;
        }
        // SMS pumping: a number outside the allowed countries is never messaged.
        let phone = matches!(job.channel, Channel::Sms | Channel::Whatsapp);
        if phone && !self.settings.allowed_countries.allows(&out.to) {
            self.skip(msg, &job, &ctx, claim, "country_not_allowed")
                .await;
            return Called::No;
        }
        let ask = Ask {
            to: &out.to,
            template: out.template.is_some(),
            from: from.as_deref(),
            pinned: crate::lanes::uncertain_lane(&ctx.history),
            probe,
        };
        let lane = match route(&self.lanes, &ask) {
            Route::Lane(i) => &self.lanes[i],
            Route::Wait(wait) => {
                // Every sender it may use is unusable now: back to the stream, no attempt.
                self.release(msg, &job, &ctx, claim, Some(wait)).await;
                return Called::No;
            }
            Route::Never(reason) => {
                let dead = (DeadClass::Permanent, reason.as_str(), ctx.attempts);
                self.dead(msg, &job, &ctx, claim, Some(&out.to), dead).await;
                return Called::No;
            }
        };
        let probing = probe.is_some_and(|p| std::ptr::eq(&self.lanes[p], lane));
        if !probing {
            self.release_probe(probe);
        }
        let chosen = Chosen { lane, probing, out };
        self.send_through(msg, job, ctx, claim, slot, chosen).await
    }

    /// The job's call through its sender: the sender's slot and limiter, the breaker, the
    /// pre-call check, the pacer, the call, and the outcome settled.
    async fn send_through(
        &self,
        msg: JobMsg,
        job: DeliveryJob,
        ctx: JobContext,
        claim: Uuid,
        slot: tokio::sync::OwnedSemaphorePermit,
        chosen: Chosen<'_>,
    ) -> Called {
        let Chosen { lane, probing, out } = chosen;
        // In-progress acks keep JetStream from redelivering a job that waits or is being sent.
        let mut tick = tokio::time::interval(self.settings.ack_wait / 3);
        tick.tick().await;
        let Some(lane_slot) = self.lane_slot(&msg, lane, &mut tick).await else {
            // Fetched but not started when the stop came: back to the stream, unsent.
            self.release(msg, &job, &ctx, claim, None).await;
            return Called::No;
        };
        if !self.paced(&msg, lane, &lane.limiter, &mut tick).await {
            self.release(msg, &job, &ctx, claim, None).await;
            return Called::No;
        }
        if !probing {
            if let Err(wait) = lane.breaker.admit() {
                // Opened since this job was fetched: back to the stream, no attempt burned.
                self.release(msg, &job, &ctx, claim, Some(wait)).await;
                return Called::No;
            }
        }
        let Some(msg) = self.cleared(msg, &job, &ctx, claim, &out.to).await else {
            return Called::No;
        };
        // Paced again right before the call: the check's statement may have held calls back
        // together, and they must not reach the provider in a bunch (a second over the limit).
        if !self.paced(&msg, lane, &lane.pacer, &mut tick).await {
            self.release(msg, &job, &ctx, claim, None).await;
            return Called::No;
        }
        let (outcome, message_id) = self.call(&msg, lane, &out, &mut tick).await;
        let via = Via {
            to: &out.to,
            message_id,
            provider: lane.sender.provider.name(),
            sender: &lane.label,
            uncertain: matches!(outcome, Outcome::Uncertain(_)),
        };
        let (decision, news) = decide(
            outcome,
            ctx.attempts,
            self.settings.retry_schedule.len(),
            |n| self.delay(n),
        );
        // The breaker learns of the outcome before the slot frees, so the next call already
        // sees an opened breaker.
        if lane.breaker.learn(news) {
            tracing::warn!(channel = %self.channel, sender = %lane.label, "circuit breaker opened");
        }
        drop((slot, lane_slot));
        self.settle(msg, job, ctx, claim, decision, via).await;
        Called::Yes
    }

    /// The message for this job: its recipient and rendered templates. `Err` when it can
    /// never be sent (with the recipient when there is one, for the dead letter).
    fn compose(
        &self,
        job: &DeliveryJob,
        ctx: &JobContext,
    ) -> Result<(Outgoing, Option<String>), (Option<String>, String)> {
        let spec = ctx
            .campaign
            .as_ref()
            .ok_or((None, "campaign version unknown".to_owned()))?;
        let action = spec
            .action_for(job.channel, job.step)
            .ok_or((None, "campaign has no action for this channel".to_owned()))?;
        let to = recipient(job.channel, &ctx.submission, action)
            .ok_or((None, "no recipient for this channel".to_owned()))?;
        let unsubscribe = self.unsubscribe_url(job.channel, spec.purpose, &to);
        let tctx = render::context(&ctx.submission, &job.campaign_id.to_string(), &spec.name);
        let tctx = render::with_unsubscribe(tctx, unsubscribe.as_deref());
        let rendered = self
            .templates
            .get(
                job.campaign_id,
                ctx.campaign_version,
                // A fallback's templates are its own: keyed by its whole step.
                match quizflow_core::primary_of(job.step) {
                    Some(_) => job.step,
                    None => job.action_step(),
                },
                action,
            )
            .and_then(|env| {
                Ok((
                    render::render_compiled(&env, "body", &tctx)?,
                    render::render_compiled(&env, "subject", &tctx)?,
                    render::render_compiled(&env, "image", &tctx)?,
                    render::whatsapp_template(&env, action, &tctx)?,
                ))
            });
        let (body, subject, image, template) = rendered.map_err(|e| (Some(to.clone()), e))?;
        let out = Outgoing {
            to,
            subject,
            body: body.unwrap_or_default(),
            idempotency_key: job.job_id.to_string(),
            reference: job.reference_for_attempt(ctx.attempts + 1),
            image: image.map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()),
            // Marketing e-mail carries the one-click unsubscribe headers (RFC 8058).
            unsubscribe: unsubscribe
                .filter(|_| job.channel == Channel::Email && spec.purpose == Purpose::Marketing),
            payload: (job.channel == Channel::Webhook).then(|| {
                serde_json::json!({"job_id": job.job_id, "submission": ctx.submission,
                    "campaign": {"id": job.campaign_id, "name": spec.name, "version": job.campaign_version}})
            }),
            template,
        };
        Ok((out, action.from.clone()))
    }

    /// The recipient's unsubscribe link (contract §3.2): a signed token of channel, purpose
    /// and contact hash under `QUIZFLOW_PUBLIC_URL`; `None` without a public URL.
    fn unsubscribe_url(&self, channel: Channel, purpose: Purpose, to: &str) -> Option<String> {
        let base = self.settings.public_url.as_deref()?;
        let hash = self.settings.hash_key.hash(channel, to)?;
        let token = self
            .settings
            .hash_key
            .unsubscribe_token(channel, purpose, &hash);
        Some(format!(
            "{}/v1/unsubscribe/{token}",
            base.trim_end_matches('/')
        ))
    }

    /// Waits for a slot of the sender, when it has a cap. `None` when the stop came first;
    /// else the slot (if any), held for the call.
    async fn lane_slot(
        &self,
        msg: &JobMsg,
        lane: &Lane,
        tick: &mut Interval,
    ) -> Option<Option<OwnedSemaphorePermit>> {
        let Some(slots) = &lane.slots else {
            return Some(None);
        };
        loop {
            tokio::select! {
                p = slots.clone().acquire_owned() => return Some(p.ok()),
                _ = tick.tick() => msg.progress().await,
                _ = self.stopped() => return None,
            }
        }
    }

    /// Waits for one of the sender's rate limiters (a wait, not a failure). False when the
    /// stop came first.
    async fn paced(
        &self,
        msg: &JobMsg,
        lane: &Lane,
        which: &std::sync::RwLock<Option<std::sync::Arc<governor::DefaultDirectRateLimiter>>>,
        tick: &mut Interval,
    ) -> bool {
        let waited = Instant::now();
        // The share may change while this call waits (a process joins or leaves): wait on
        // the limiter of the moment.
        let mut share = lane.share.clone();
        let ready = loop {
            share.borrow_and_update();
            let limiter = Lane::current(which);
            let ready = async {
                match &limiter {
                    Some(l) => l.until_ready().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ready => break true,
                _ = share.changed() => {}
                _ = tick.tick() => msg.progress().await,
                _ = self.stopped() => break false,
            }
        };
        self.metrics
            .limiter_wait_seconds
            .with_label_values(&[self.channel.as_str()])
            .observe(waited.elapsed().as_secs_f64());
        ready
    }

    /// The last word before the call: is the row still ours, and may its recipient still be
    /// messaged? An erasure cancels claimed rows whose call has not begun, and waits for those
    /// that have; an opt-out heard since the match ends the row `suppressed`. `None`: the job
    /// was settled here (acked when gone or suppressed, given back when the database cannot
    /// tell).
    async fn cleared(
        &self,
        msg: JobMsg,
        job: &DeliveryJob,
        ctx: &JobContext,
        claim: Uuid,
        to: &str,
    ) -> Option<JobMsg> {
        let call = quizflow_store::deliveries::Call {
            key: key_of(job),
            claim,
            contact: self
                .settings
                .hash_key
                .hash(job.channel, to)
                .map(|h| h.to_vec()),
            purpose: ctx
                .campaign
                .as_ref()
                .map_or(Purpose::Marketing, |c| c.purpose)
                .as_str(),
            since: checked_since(job),
        };
        match self.gate.ask(call).await {
            crate::lease::Gate::Go => Some(msg),
            crate::lease::Gate::Suppressed => {
                self.metrics
                    .skipped
                    .with_label_values(&[self.channel.as_str(), "suppressed"])
                    .inc();
                msg.ack().await;
                None
            }
            crate::lease::Gate::Gone => {
                tracing::debug!(job = %job.job_id, "claim gone before the call (cancelled or taken over)");
                msg.ack().await;
                None
            }
            crate::lease::Gate::Unknown => {
                let wait = Some(Duration::from_secs(2));
                self.release(msg, job, ctx, claim, wait).await;
                None
            }
        }
    }

    /// The provider call, with in-progress acks while it lasts.
    async fn call(
        &self,
        msg: &JobMsg,
        lane: &Lane,
        out: &Outgoing,
        tick: &mut Interval,
    ) -> (Outcome, Option<String>) {
        let called = Instant::now();
        let send = lane
            .sender
            .provider
            .send(&self.http, out, self.settings.send_timeout);
        tokio::pin!(send);
        let outcome = loop {
            tokio::select! {
                o = &mut send => break o,
                _ = tick.tick() => msg.progress().await,
            }
        };
        self.observe(&outcome.0, called.elapsed());
        outcome
    }
}

/// The sender a job goes through, and its message.
struct Chosen<'a> {
    lane: &'a Lane,
    /// This job is the sender's probe (its breaker's cooldown is over).
    probing: bool,
    out: Outgoing,
}

/// Who a job goes to: the respondent's phone or e-mail, or the action's webhook URL.
fn recipient(channel: Channel, submission: &serde_json::Value, action: &Action) -> Option<String> {
    match channel {
        Channel::Webhook => action.url.clone(),
        _ => recipient_of(channel, submission),
    }
}

/// The person a job goes to: the respondent's phone (sms, WhatsApp) or e-mail.
pub(crate) fn recipient_of(channel: Channel, submission: &serde_json::Value) -> Option<String> {
    let respondent = &submission["respondent"];
    match channel {
        Channel::Sms | Channel::Whatsapp => respondent["phone"].as_str().map(str::to_owned),
        Channel::Email => respondent["email"].as_str().map(str::to_owned),
        Channel::Webhook => None,
    }
}

/// Since when the list must be read for this job: the batcher checked the contact when it
/// matched the job (its `created_at`), less a margin for clock skew between hosts and for
/// entries written while that check ran. A recurring action's later occurrences were written
/// by the firer, unchecked: `None`, always read.
fn checked_since(job: &DeliveryJob) -> Option<chrono::DateTime<chrono::Utc>> {
    const MARGIN: chrono::Duration = chrono::Duration::minutes(10);
    (job.step < quizflow_core::schedule::STEP_STRIDE).then(|| job.created_at - MARGIN)
}
