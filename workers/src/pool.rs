//! Per-channel worker pools: pull (high before normal before low), send, then ack, nak with
//! a delay, or dead-letter. Outcomes map to acks here and nowhere else.

use crate::breaker::Breaker;
use crate::classify::Class;
use crate::context::{self, JobContext};
use crate::provider::{Outgoing, Provider};
use crate::render;
use crate::status::{history_entry, StatusWriter, Update};
use crate::WorkerSettings;
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use quizflow_core::{Channel, DeliveryJob, Priority};
use quizflow_migrations::Pool;
use quizflow_nats::subjects;
use rand::Rng;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("nats: {0}")]
    Nats(String),
}

struct Channelled {
    channel: Channel,
    settings: Arc<WorkerSettings>,
    js: jetstream::Context,
    pool: Pool,
    status: StatusWriter,
    http: reqwest::Client,
    provider: Provider,
    limiter: DefaultDirectRateLimiter,
    breaker: Breaker,
    templates: render::TemplateCache,
}

/// Runs a pool per configured channel until `shutdown`; in-flight jobs are finished first.
pub async fn run(
    settings: WorkerSettings,
    js: jetstream::Context,
    pool: Pool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let settings = Arc::new(settings);
    let status = StatusWriter::start(pool.clone());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.concurrency)
        .build()
        .map_err(|e| WorkerError::Nats(format!("http client: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for &channel in &settings.channels {
        let rate = NonZeroU32::new(settings.rate_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let c =
            Arc::new(Channelled {
                channel,
                provider: settings.providers.for_channel(channel).clone(),
                // A small burst (a tenth of a second's worth): a provider that allows 50 msg/s
                // must not see 50 at once after an idle spell.
                limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(
                    NonZeroU32::new((rate.get() / 10).max(1)).unwrap_or(NonZeroU32::MIN),
                )),
                breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
                templates: render::TemplateCache::default(),
                settings: settings.clone(),
                js: js.clone(),
                pool: pool.clone(),
                status: status.clone(),
                http: http.clone(),
            });
        let stop = stop_rx.clone();
        tasks.spawn(async move { c.run(stop).await });
    }
    tasks.spawn({
        let (js, pool, status, stop) = (js.clone(), pool.clone(), status.clone(), stop_rx.clone());
        async move {
            sweep_max_deliveries(js, pool, status, stop).await;
            Ok(())
        }
    });
    drop(status);
    shutdown.await;
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "channel pool stopped with an error");
        }
    }
    Ok(())
}

impl Channelled {
    async fn consumers(&self) -> Result<Vec<PullConsumer>, WorkerError> {
        let stream = self
            .js
            .get_stream(subjects::DELIVERIES_STREAM)
            .await
            .map_err(|e| WorkerError::Nats(e.to_string()))?;
        let mut out = Vec::new();
        for p in Priority::ALL {
            out.push(
                stream
                    .get_consumer(&subjects::worker_consumer(self.channel, p))
                    .await
                    .map_err(|e| WorkerError::Nats(e.to_string()))?,
            );
        }
        Ok(out)
    }

    async fn run(
        self: Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        let consumers = self.consumers().await?;
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut idle = Duration::from_millis(20);
        tracing::info!(channel = %self.channel, provider = self.provider.name(), "worker pool started");
        while !*stop.borrow() {
            // While the breaker is open the jobs wait in the stream: nothing is fetched.
            if self.breaker.is_open() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let free = slots.available_permits();
            if free == 0 {
                let _ = slots.acquire().await;
                continue;
            }
            let mut msgs = Vec::new();
            // Highest priority first: lower ones are fetched only when it is empty.
            for c in &consumers {
                match c.fetch().max_messages(free.min(100)).messages().await {
                    Ok(mut batch) => {
                        while let Some(m) = batch.next().await {
                            match m {
                                Ok(m) => msgs.push(m),
                                Err(e) => tracing::debug!(error = %e, "fetch"),
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, channel = %self.channel, "fetch failed"),
                }
                if !msgs.is_empty() {
                    break;
                }
            }
            if msgs.is_empty() {
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(Duration::from_millis(250));
                continue;
            }
            idle = Duration::from_millis(20);
            self.dispatch(msgs, &slots).await;
        }
        // Let the jobs in flight finish (their answers get recorded and acked).
        let _ = tokio::time::timeout(
            self.settings.send_timeout + Duration::from_secs(5),
            slots.acquire_many(self.settings.concurrency.max(1) as u32),
        )
        .await;
        Ok(())
    }

    async fn dispatch(self: &Arc<Self>, msgs: Vec<jetstream::Message>, slots: &Arc<Semaphore>) {
        let mut jobs = Vec::with_capacity(msgs.len());
        for msg in msgs {
            match serde_json::from_slice::<DeliveryJob>(&msg.payload) {
                Ok(job) if job.v == DeliveryJob::VERSION => jobs.push((msg, job)),
                Ok(job) => {
                    self.poison(msg, &format!("unsupported job version {}", job.v))
                        .await
                }
                Err(e) => self.poison(msg, &format!("undecodable job: {e}")).await,
            }
        }
        if jobs.is_empty() {
            return;
        }
        // One query for the whole fetch: ledger rows, submissions and campaigns.
        let refs: Vec<&DeliveryJob> = jobs.iter().map(|(_, j)| j).collect();
        let contexts = match self.pool.get().await {
            Ok(mut conn) => context::load(&mut conn, &refs)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let contexts = match contexts {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, channel = %self.channel, "cannot load job contexts; naked");
                for (msg, _) in jobs {
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                        .await;
                }
                return;
            }
        };
        for ((msg, job), ctx) in jobs.into_iter().zip(contexts) {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move { me.process(msg, job, ctx, permit).await });
        }
    }

    fn delay(&self, attempt: usize) -> Duration {
        let s = &self.settings.retry_schedule;
        let base = s
            .get(attempt.min(s.len().saturating_sub(1)))
            .copied()
            .unwrap_or(Duration::from_secs(5));
        // ±10 % jitter: retries of a burst spread out instead of arriving together.
        base.mul_f64(rand::rng().random_range(0.9..1.1))
    }

    fn update(
        &self,
        job: &DeliveryJob,
        status: &'static str,
        attempts: i32,
        err: Option<String>,
        history: Vec<serde_json::Value>,
    ) -> Update {
        Update {
            submission_id: job.submission_id.0,
            campaign_id: job.campaign_id,
            channel: job.channel.to_string(),
            status,
            attempts,
            last_error: err,
            history,
        }
    }

    /// `slot` is held for the provider call only: recording the outcome and acking (which
    /// waits for the batched status write) does not keep a provider slot busy.
    async fn process(
        &self,
        msg: jetstream::Message,
        job: DeliveryJob,
        ctx: Option<JobContext>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Some(ctx) = ctx else {
            // The ledger row is written before the job is published; not finding it means
            // the database is behind (a replica) or the row was removed: try again later.
            tracing::warn!(job = %job.job_id, "job without ledger row; retrying later");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            return;
        };
        if matches!(ctx.status.as_str(), "sent" | "delivered" | "dead") {
            // A redelivery after a crash between the provider call and the ack.
            let _ = msg.ack().await;
            return;
        }
        let Some(spec) = ctx.campaign.as_ref() else {
            return self
                .dead(
                    msg,
                    &job,
                    &ctx,
                    None,
                    "permanent",
                    "campaign deleted",
                    ctx.attempts,
                )
                .await;
        };
        let Some(action) = spec.actions.iter().find(|a| a.channel == job.channel) else {
            return self
                .dead(
                    msg,
                    &job,
                    &ctx,
                    None,
                    "permanent",
                    "campaign has no action for this channel any more",
                    ctx.attempts,
                )
                .await;
        };
        let respondent = &ctx.submission["respondent"];
        let to = match job.channel {
            Channel::Sms | Channel::Whatsapp => respondent["phone"].as_str().map(str::to_owned),
            Channel::Email => respondent["email"].as_str().map(str::to_owned),
            Channel::Webhook => action.url.clone(),
        };
        let Some(to) = to else {
            return self
                .dead(
                    msg,
                    &job,
                    &ctx,
                    None,
                    "permanent",
                    "no recipient for this channel",
                    ctx.attempts,
                )
                .await;
        };
        if let Err(wait) = self.breaker.admit() {
            // Provider down: back to the stream, no attempt burned.
            let _ = msg.ack_with(AckKind::Nak(Some(wait))).await;
            return;
        }
        let tctx = render::context(&ctx.submission, &job.campaign_id.to_string(), &spec.name);
        let rendered = self
            .templates
            .get(job.campaign_id, ctx.campaign_version, action)
            .and_then(|env| {
                Ok((
                    render::render_compiled(&env, "body", &tctx)?,
                    render::render_compiled(&env, "subject", &tctx)?,
                ))
            });
        let (body, subject) = match rendered {
            Ok(r) => r,
            Err(e) => {
                return self
                    .dead(msg, &job, &ctx, Some(&to), "permanent", &e, ctx.attempts)
                    .await
            }
        };
        let out = Outgoing {
            to: to.clone(),
            subject,
            body: body.unwrap_or_default(),
            idempotency_key: job.job_id.to_string(),
            payload: (job.channel == Channel::Webhook).then(|| {
                serde_json::json!({"job_id": job.job_id, "submission": ctx.submission,
                    "campaign": {"id": job.campaign_id, "name": spec.name, "version": job.campaign_version}})
            }),
        };
        self.limiter.until_ready().await;
        self.status
            .send(self.update(&job, "sending", ctx.attempts, None, Vec::new()))
            .await;
        // Long calls: in-progress acks keep JetStream from redelivering a job being sent.
        let send = self
            .provider
            .send(&self.http, &out, self.settings.send_timeout);
        tokio::pin!(send);
        let mut tick = tokio::time::interval(self.settings.ack_wait / 3);
        tick.tick().await;
        let class = loop {
            tokio::select! {
                c = &mut send => break c,
                _ = tick.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
            }
        };
        // The breaker learns of the outcome before the slot frees, so the next call already
        // sees an opened breaker.
        match &class {
            Class::Sent | Class::Permanent(_) => self.breaker.success(),
            Class::Transient(_) | Class::Uncertain(_) => {
                if self.breaker.failure() {
                    tracing::warn!(channel = %self.channel, provider = self.provider.name(), "circuit breaker opened");
                }
            }
            Class::Throttle { .. } => {}
        }
        drop(slot);
        self.settle(msg, job, ctx, &to, class).await;
    }

    async fn settle(
        &self,
        msg: jetstream::Message,
        job: DeliveryJob,
        ctx: JobContext,
        to: &str,
        class: Class,
    ) {
        let attempts = ctx.attempts;
        let (update, ack) = match class {
            Class::Sent => {
                let u = self.update(
                    &job,
                    "sent",
                    attempts + 1,
                    None,
                    vec![history_entry("sent", self.provider.name())],
                );
                (u, AckKind::Ack)
            }
            Class::Throttle {
                retry_after,
                detail,
            } => {
                // Not a failed attempt: the count stays.
                let wait = retry_after.unwrap_or_else(|| self.delay(attempts as usize));
                let u = self.update(
                    &job,
                    "failed",
                    attempts,
                    Some(detail.clone()),
                    vec![history_entry("throttled", &detail)],
                );
                (u, AckKind::Nak(Some(wait)))
            }
            Class::Permanent(reason) => {
                return self
                    .dead(
                        msg,
                        &job,
                        &ctx,
                        Some(to),
                        "permanent",
                        &reason,
                        attempts + 1,
                    )
                    .await;
            }
            Class::Transient(reason) | Class::Uncertain(reason) => {
                let attempts = attempts + 1;
                if attempts as usize > self.settings.retry_schedule.len() {
                    return self
                        .dead(msg, &job, &ctx, Some(to), "exhausted", &reason, attempts)
                        .await;
                }
                let u = self.update(
                    &job,
                    "failed",
                    attempts,
                    Some(reason.clone()),
                    vec![history_entry("failed", &reason)],
                );
                (u, AckKind::Nak(Some(self.delay(attempts as usize - 1))))
            }
        };
        // The outcome is recorded before the ack: a crash in between resends at worst.
        if let Err(e) = self.status.write(update).await {
            tracing::warn!(error = %e, "status not recorded; job naked");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            return;
        }
        let _ = msg.ack_with(ack).await;
    }

    /// Dead-letters the job (see [`DeadLetters::record`]), then acks it; if that cannot be
    /// recorded the job is naked and comes back.
    #[allow(clippy::too_many_arguments)]
    async fn dead(
        &self,
        msg: jetstream::Message,
        job: &DeliveryJob,
        ctx: &JobContext,
        to: Option<&str>,
        class: &str,
        reason: &str,
        attempts: i32,
    ) {
        let dl = DeadLetters {
            js: &self.js,
            pool: &self.pool,
            status: &self.status,
        };
        match dl
            .record(job, &ctx.history, to, class, reason, attempts)
            .await
        {
            Ok(()) => {
                tracing::info!(job = %job.job_id, channel = %job.channel, class, "job dead-lettered");
                let _ = msg.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not recorded; job naked");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }

    async fn poison(&self, msg: jetstream::Message, reason: &str) {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Quizflow-Reason",
            reason.replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert("Quizflow-Class", "poison");
        let m = async_nats::jetstream::message::PublishMessage::build()
            .payload(msg.payload.clone())
            .headers(headers)
            .message_id(format!("delivery-seq:{seq}"));
        let ok = match self
            .js
            .send_publish(
                subjects::dead_letter(subjects::DeadKind::Delivery, self.channel.as_str()),
                m,
            )
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        let _ = msg
            .ack_with(if ok {
                AckKind::Term
            } else {
                AckKind::Nak(Some(Duration::from_secs(5)))
            })
            .await;
    }
}

/// Where dead letters go: `dead.deliveries.<channel>`, the `dead_letters` mirror, the ledger.
pub(crate) struct DeadLetters<'a> {
    pub js: &'a jetstream::Context,
    pub pool: &'a Pool,
    pub status: &'a StatusWriter,
}

impl DeadLetters<'_> {
    /// Publishes the job with its reason and history to `dead.deliveries.<channel>`, mirrors
    /// it into `dead_letters` and marks the ledger row `dead`.
    pub async fn record(
        &self,
        job: &DeliveryJob,
        history: &[serde_json::Value],
        to: Option<&str>,
        class: &str,
        reason: &str,
        attempts: i32,
    ) -> Result<(), String> {
        let id = uuid::Uuid::new_v4();
        let entry = history_entry(
            if class == "exhausted" {
                "failed"
            } else {
                class
            },
            reason,
        );
        let mut all = history.to_vec();
        all.push(entry.clone());
        let history = serde_json::Value::Array(all);
        let payload = serde_json::to_vec(job).unwrap_or_default();
        let letter = serde_json::json!({"id": id, "kind": "delivery", "channel": job.channel, "submission_id": job.submission_id,
            "campaign_id": job.campaign_id, "recipient": to, "class": class, "reason": reason, "attempts": attempts,
            "history": history, "failed_at": chrono::Utc::now(), "job": job});
        let m = async_nats::jetstream::message::PublishMessage::build()
            .payload(serde_json::to_vec(&letter).unwrap_or_default().into())
            .message_id(id.to_string());
        self.js
            .send_publish(
                subjects::dead_letter(subjects::DeadKind::Delivery, job.channel.as_str()),
                m,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        context::insert_dead_letter(
            &mut conn, id, job, to, class, reason, attempts, &history, &payload,
        )
        .await
        .map_err(|e| e.to_string())?;
        drop(conn);
        self.status
            .write(Update {
                submission_id: job.submission_id.0,
                campaign_id: job.campaign_id,
                channel: job.channel.to_string(),
                status: "dead",
                attempts,
                last_error: Some(reason.to_owned()),
                history: vec![entry],
            })
            .await
    }
}

/// Dead-letters jobs that JetStream gave up on (`max_deliver` reached without a worker
/// deciding: crash loops, ack timeouts). Reads the advisories captured in `DEAD_LETTERS`,
/// records a `max_deliveries` dead letter, then deletes the job from the work queue.
pub(crate) async fn sweep_max_deliveries(
    js: jetstream::Context,
    pool: Pool,
    status: StatusWriter,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let consumer: Result<PullConsumer, String> = async {
        js.get_stream(subjects::DEAD_LETTERS_STREAM)
            .await
            .map_err(|e| e.to_string())?
            .get_consumer(subjects::MAX_DELIVERIES_SWEEPER)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    let consumer = match consumer {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "max-deliveries sweeper cannot start");
            return;
        }
    };
    let deliveries = match js.get_stream(subjects::DELIVERIES_STREAM).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "max-deliveries sweeper cannot start");
            return;
        }
    };
    let dl = DeadLetters {
        js: &js,
        pool: &pool,
        status: &status,
    };
    while !*stop.borrow() {
        let batch = consumer.fetch().max_messages(100).messages().await;
        let mut got = 0;
        if let Ok(mut batch) = batch {
            while let Some(Ok(advisory)) = batch.next().await {
                got += 1;
                let ok = sweep_one(&dl, &deliveries, &advisory.payload).await;
                let _ = advisory
                    .ack_with(if ok {
                        AckKind::Ack
                    } else {
                        AckKind::Nak(Some(Duration::from_secs(5)))
                    })
                    .await;
            }
        }
        if got == 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn sweep_one(
    dl: &DeadLetters<'_>,
    deliveries: &jetstream::stream::Stream,
    advisory: &[u8],
) -> bool {
    let seq = serde_json::from_slice::<serde_json::Value>(advisory)
        .ok()
        .and_then(|a| a["stream_seq"].as_u64());
    let Some(seq) = seq else { return true };
    // Already gone (acked or deleted meanwhile): nothing to do.
    let Ok(original) = deliveries.get_raw_message(seq).await else {
        return true;
    };
    let recorded = match serde_json::from_slice::<DeliveryJob>(&original.payload) {
        Ok(job) => {
            let (attempts, history) = match dl.pool.get().await {
                Ok(mut conn) => match context::load(&mut conn, &[&job]).await {
                    Ok(mut c) => c
                        .pop()
                        .flatten()
                        .map(|c| (c.attempts, c.history))
                        .unwrap_or_default(),
                    Err(_) => return false,
                },
                Err(_) => return false,
            };
            dl.record(
                &job,
                &history,
                None,
                "max_deliveries",
                "JetStream delivery limit reached without an outcome",
                attempts,
            )
            .await
        }
        // Undecodable: the stream copy is all there is; keep it in DEAD_LETTERS as is.
        Err(e) => {
            let m = async_nats::jetstream::message::PublishMessage::build()
                .payload(original.payload.clone())
                .message_id(format!("max-deliveries-seq:{seq}"));
            match dl
                .js
                .send_publish(
                    subjects::dead_letter(subjects::DeadKind::Delivery, "unknown"),
                    m,
                )
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(p) => Err(format!("{e}; {p}")),
            }
        }
    };
    match recorded {
        Ok(()) => {
            let _ = deliveries.delete_message(seq).await;
            tracing::warn!(seq, "job dead-lettered after reaching max deliveries");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, seq, "max-deliveries dead letter not recorded; will retry");
            false
        }
    }
}
