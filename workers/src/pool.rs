//! Per-channel worker pools: pull (high before normal before low), claim, send, then ack,
//! nak with a delay, or dead-letter. Outcomes map to acks here and nowhere else.
//!
//! Waiting is not failing: the consumers redeliver without limit (`max_deliver: -1`), and the
//! attempt budget lives in the ledger, so a job that waits on a `Retry-After`, the rate limiter,
//! an open breaker or a claim held elsewhere keeps every attempt it had.

use crate::breaker::{Allowance, Breaker};
use crate::classify::Class;
use crate::cluster::{self, ChannelLink, Share, Totals};
use crate::handle::{self, JobMsg};
use crate::metrics::WorkerMetrics;
use crate::provider::{Outgoing, Provider};
use crate::render;
use crate::status::{history_entry, StatusWriter, Update};
use crate::WorkerSettings;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use quizflow_core::{Channel, DeliveryJob, Priority};
use quizflow_nats::subjects;
use quizflow_store::deliveries::{self, DeadLetterRow, JobContext, Key};
use quizflow_store::{Pool, Retry};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("nats: {0}")]
    Nats(String),
    #[error("http client: {0}")]
    Http(String),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

struct Channelled {
    channel: Channel,
    settings: Arc<WorkerSettings>,
    js: jetstream::Context,
    pool: Pool,
    status: StatusWriter,
    http: reqwest::Client,
    provider: Provider,
    /// This process's share of the channel's rate (none: send nothing), rebuilt when the
    /// cluster's membership changes.
    limiter: std::sync::RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    /// This process's share of the channel's limits ([`cluster`]).
    share: watch::Receiver<Share>,
    /// Provider calls in flight: as many permits as the share's concurrency.
    slots: Arc<Semaphore>,
    breaker: Arc<Breaker>,
    metrics: WorkerMetrics,
    templates: render::TemplateCache,
    /// Campaign versions read so far (immutable once written).
    specs: deliveries::SpecCache,
    /// Claims this process holds, renewed until each job is settled (shared by channels).
    leases: Arc<crate::lease::Leases>,
    /// Confirms each claim right before its call (an erasure may have cancelled it).
    gate: crate::lease::CallGate,
    stop: watch::Receiver<bool>,
}

/// Runs a pool per configured channel until `shutdown`. Then: no new fetches; jobs fetched
/// but not started go back to the stream; provider calls in flight finish, and their outcomes
/// are recorded and acked, all within `shutdown_timeout`.
pub async fn run(
    settings: WorkerSettings,
    js: jetstream::Context,
    pool: Pool,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let settings = Arc::new(settings);
    let metrics = WorkerMetrics::new()?;
    metrics.register(&registry)?;
    let mut pools: Vec<Arc<Channelled>> = Vec::new();
    let (status, writer) = StatusWriter::start(pool.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let leases = Arc::new(crate::lease::Leases::default());
    let gate = crate::lease::CallGate::start(pool.clone());
    let bucket = cluster::bucket(&js)
        .await
        .map_err(|e| WorkerError::Nats(e.to_string()))?;
    let (verdict_tx, verdict_rx) = tokio::sync::mpsc::channel(64);
    let mut links = Vec::new();
    for &channel in &settings.channels {
        let (share_tx, share_rx) = watch::channel(Share::NONE);
        let breaker = Arc::new(Breaker::shared(
            settings.breaker_failures,
            settings.breaker_cooldown,
            channel,
            verdict_tx.clone(),
        ));
        links.push(ChannelLink {
            channel,
            breaker: breaker.clone(),
            share: share_tx,
        });
        let c = Arc::new(Channelled {
            channel,
            provider: settings.providers.for_channel(channel).clone(),
            limiter: std::sync::RwLock::new(None),
            share: share_rx,
            slots: Arc::new(Semaphore::new(0)),
            breaker,
            metrics: metrics.clone(),
            templates: render::TemplateCache::with_links(settings.qr_links.clone()),
            specs: deliveries::SpecCache::default(),
            settings: settings.clone(),
            js: js.clone(),
            pool: pool.clone(),
            status: status.clone(),
            leases: leases.clone(),
            gate: gate.clone(),
            http: crate::provider::http_client(&settings, channel)
                .map_err(|e| WorkerError::Http(e.to_string()))?,
            stop: stop_rx.clone(),
        });
        pools.push(c.clone());
        tasks.spawn(c.clone().follow_share());
        tasks.spawn(async move { c.run().await });
    }
    drop(verdict_tx);
    let totals = Totals {
        rate_per_sec: f64::from(settings.rate_per_sec.max(1)),
        concurrency: settings.concurrency.max(1),
    };
    let me = format!("{}", Uuid::new_v4().simple());
    let stop = stop_rx.clone();
    tasks.spawn(async move {
        cluster::run(bucket, me, totals, links, verdict_rx, stop).await;
        Ok(())
    });
    tasks.spawn(report(pools, pool.clone(), stop_rx.clone()));
    tasks.spawn({
        let (pool, stop, lease) = (pool.clone(), stop_rx.clone(), lease_for(&settings));
        async move {
            crate::lease::renew(leases, pool, lease, stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let (js, pool, status, stop) = (js.clone(), pool.clone(), status.clone(), stop_rx.clone());
        let relay_after = settings.redrive_relay_after;
        async move {
            crate::sweep::run(relay_after, js, pool, status, stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let (js, pool, metrics, stop) =
            (js.clone(), pool.clone(), metrics.clone(), stop_rx.clone());
        let channels = settings.channels.clone();
        async move {
            crate::schedule::run(
                js,
                pool,
                &channels,
                |f| crate::schedule::observe(&metrics, f),
                stop,
            )
            .await;
            Ok(())
        }
    });
    drop(status);
    shutdown.await;
    tracing::info!("workers stopping: no new jobs, finishing calls in flight");
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "channel pool stopped with an error");
        }
    }
    // Every task that could write is gone: the writer flushes what it holds and ends.
    let _ = writer.await;
    Ok(())
}

/// Every 2 s: circuit states into the gauges, and this instance's report (circuits per
/// channel) into the database, where any API instance reads it for `/v1/stats`.
async fn report(
    pools: Vec<Arc<Channelled>>,
    db: Pool,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let instance = format!("workers-{}", Uuid::new_v4().simple());
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let mut circuits = serde_json::Map::new();
        for c in &pools {
            let state = c.breaker.state();
            c.metrics
                .circuit
                .with_label_values(&[c.channel.as_str(), c.provider.name()])
                .set(state.gauge());
            circuits.insert(
                c.channel.as_str().to_owned(),
                serde_json::json!({"provider": c.provider.name(), "state": state.as_str()}),
            );
        }
        let report = serde_json::json!({ "circuits": circuits });
        if let Ok(mut conn) = db.get().await {
            if let Err(e) =
                quizflow_store::stats::report_instance(&mut conn, &instance, "workers", &report)
                    .await
            {
                tracing::debug!(error = %e, "instance report not written");
            }
        }
    }
}

/// What became of a job in [`Channelled::process`]: did it reach the provider?
#[derive(Debug, PartialEq, Eq)]
enum Called {
    Yes,
    No,
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

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the stop signal is given.
    async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Sleeps for `d` or until the stop signal, whichever comes first.
    async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    /// Applies this process's share as the cluster changes: a limiter at the new rate, and
    /// the slots grown or shrunk (a shrink takes permits back as calls finish).
    async fn follow_share(self: Arc<Self>) -> Result<(), WorkerError> {
        let mut share = self.share.clone();
        let mut issued = 0usize;
        let mut rate = 0.0f64;
        let mut replaced = false;
        loop {
            let now = *share.borrow_and_update();
            if now.rate_per_sec != rate {
                rate = now.rate_per_sec;
                let limiter = (rate > 0.0).then(|| {
                    // A small burst (a tenth of a second's worth): a provider that allows
                    // 50 msg/s must not see 50 at once after an idle spell.
                    let burst = NonZeroU32::new((rate / 10.0) as u32).unwrap_or(NonZeroU32::MIN);
                    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
                        .map(|q| q.allow_burst(burst));
                    quota.map(|q| {
                        let l = RateLimiter::direct(q);
                        if replaced {
                            // A new share is not an idle spell: start with an empty bucket,
                            // or every membership change would add a burst per process.
                            let _ = l.check_n(burst);
                        }
                        Arc::new(l)
                    })
                });
                let limiter = limiter.flatten();
                replaced |= limiter.is_some();
                *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = limiter;
                self.metrics
                    .rate_share
                    .with_label_values(&[self.channel.as_str()])
                    .set(rate);
                self.metrics
                    .members
                    .with_label_values(&[self.channel.as_str()])
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

    fn current_limiter(&self) -> Option<Arc<DefaultDirectRateLimiter>> {
        self.limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn run(self: Arc<Self>) -> Result<(), WorkerError> {
        let consumers = self.consumers().await?;
        let slots = self.slots.clone();
        let mut inflight: JoinSet<()> = JoinSet::new();
        let mut idle = Duration::from_millis(20);
        tracing::info!(channel = %self.channel, provider = self.provider.name(), "worker pool started");
        while !self.stopping() {
            while inflight.try_join_next().is_some() {}
            // Open breaker: nothing is fetched, the jobs wait in the stream. Half-open: one
            // job is fetched, the probe.
            let probe = match self.breaker.allowance() {
                Ok(Allowance::Closed) => false,
                Ok(Allowance::Probe) => true,
                Err(wait) => {
                    self.pause(wait.min(Duration::from_millis(250))).await;
                    continue;
                }
            };
            let free = slots.available_permits();
            if free == 0 {
                if probe {
                    self.breaker.release_probe();
                }
                tokio::select! {
                    _ = slots.acquire() => {}
                    _ = self.pause(Duration::from_millis(250)) => {}
                }
                continue;
            }
            // A message may carry a chunk of up to JOB_CHUNK jobs: fetch about as many jobs
            // as there are free slots, at least one message.
            let want = if probe {
                1
            } else {
                free.div_ceil(quizflow_nats::JOB_CHUNK).clamp(1, 100)
            };
            let msgs = self.fetch(&consumers, want).await;
            if msgs.is_empty() {
                if probe {
                    self.breaker.release_probe();
                }
                self.pause(idle).await;
                idle = (idle * 2).min(Duration::from_millis(250));
                continue;
            }
            idle = Duration::from_millis(20);
            self.dispatch(msgs, &slots, &mut inflight, probe).await;
        }
        // Calls in flight finish, and their outcomes are recorded and acked.
        let drained = tokio::time::timeout(self.settings.shutdown_timeout, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(channel = %self.channel, left = inflight.len(), "shutdown timeout: calls still in flight are abandoned (their jobs come back)");
        }
        Ok(())
    }

    /// Highest priority first: lower ones are fetched only when it is empty.
    async fn fetch(&self, consumers: &[PullConsumer], want: usize) -> Vec<jetstream::Message> {
        let mut msgs = Vec::new();
        for c in consumers {
            match c.fetch().max_messages(want).messages().await {
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
        msgs
    }

    /// Decodes, loads and claims a fetch, then starts a task per claimed job.
    async fn dispatch(
        self: &Arc<Self>,
        msgs: Vec<jetstream::Message>,
        slots: &Arc<Semaphore>,
        inflight: &mut JoinSet<()>,
        probe: bool,
    ) {
        let mut jobs = Vec::with_capacity(msgs.len());
        let mut keys_seen = HashSet::new();
        let now = chrono::Utc::now();
        for msg in msgs.into_iter().flat_map(|m| handle::split(&self.js, m)) {
            // A job published again to wait (see `handle`): not before its time.
            if let Some(wait) = msg.not_before().and_then(|t| (t - now).to_std().ok()) {
                msg.nak(Some(wait), None).await;
                continue;
            }
            match serde_json::from_slice::<DeliveryJob>(msg.payload()) {
                Ok(job) if job.v != DeliveryJob::VERSION => {
                    self.poison(msg, &format!("unsupported job version {}", job.v))
                        .await
                }
                Ok(job) => {
                    if keys_seen.insert(key_of(&job)) {
                        jobs.push((msg, job));
                    } else {
                        // A second copy in the same fetch: the first carries the job.
                        msg.ack().await;
                    }
                }
                Err(e) => self.poison(msg, &format!("undecodable job: {e}")).await,
            }
        }
        let mut probe_used = false;
        let contexts = self.load(&jobs).await;
        let Some(contexts) = contexts else {
            // The database is away: everything goes back, no attempt spent (a whole chunk as
            // one message, not one re-publish per job).
            handle::nak_together(jobs, Duration::from_secs(2)).await;
            if probe {
                self.breaker.release_probe();
            }
            self.pause(Duration::from_secs(1)).await;
            return;
        };
        let mut eligible = Vec::new();
        for ((msg, job), ctx) in jobs.into_iter().zip(contexts) {
            match ctx {
                Err(reason) => self.unloadable(msg, &job, &reason).await,
                Ok(None) => {
                    // The ledger row is written before the job is published, so a job without
                    // one was never made by a batcher: after a few tries it is poison.
                    if msg.delivered() >= 5 {
                        self.poison(msg, "no ledger row for this job").await;
                    } else {
                        msg.nak(Some(Duration::from_secs(2)), Some(&job)).await;
                    }
                }
                Ok(Some(ctx)) if ctx.is_final() => {
                    // Already done: a redelivery, or a second copy (re-publish, redrive).
                    msg.ack().await;
                }
                Ok(Some(ctx)) if !ctx.campaign_live => self.cancel(msg, &job, &ctx).await,
                Ok(Some(ctx)) if ctx.next_attempt_at.is_some_and(|t| t > chrono::Utc::now()) => {
                    // A copy that arrived before the job's backoff ran out (a re-publish, a
                    // redrive of an older letter): it waits like the original.
                    let wait = ctx
                        .next_attempt_at
                        .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
                        .unwrap_or_default();
                    msg.nak(Some(wait), Some(&job)).await;
                }
                Ok(Some(ctx)) => match ctx.lease_until {
                    Some(until) if ctx.status == "sending" && until > chrono::Utc::now() => {
                        // Another worker holds it: look again soon (its outcome usually
                        // lands within seconds), at the latest when its lease runs out.
                        let wait = ((until - chrono::Utc::now()).to_std().unwrap_or_default()
                            + Duration::from_secs(1))
                        .min(Duration::from_secs(5));
                        msg.nak(Some(wait), Some(&job)).await;
                    }
                    _ => eligible.push((msg, job, ctx)),
                },
            }
        }
        let claim = Uuid::new_v4();
        let keys: Vec<Key> = eligible.iter().map(|(_, j, _)| key_of(j)).collect();
        let claimed: HashSet<Key> = match self.pool.get().await {
            Ok(mut conn) => deliveries::claim(&mut conn, &keys, claim, self.lease())
                .await
                .map(|v| v.into_iter().collect())
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "claim failed; jobs naked");
                    HashSet::new()
                }),
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; jobs naked");
                HashSet::new()
            }
        };
        // Every claim is renewed until its job is settled or given back, however long the
        // job waits for a slot or the rate limiter (a guard moves into the job's task).
        let mut guards: HashMap<Key, crate::lease::LeaseGuard> = claimed
            .iter()
            .map(|k| (k.clone(), self.leases.hold(k.clone(), claim)))
            .collect();
        for (msg, job, ctx) in eligible {
            let Some(guard) = guards.remove(&key_of(&job)) else {
                // Taken or finished by someone else since the load: look again later.
                msg.nak(Some(Duration::from_secs(2)), Some(&job)).await;
                continue;
            };
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.ok(),
                _ = self.stopped() => None,
            };
            let Some(permit) = permit.filter(|_| !self.stopping()) else {
                self.release(msg, &job, &ctx, claim, None).await;
                continue;
            };
            let me = self.clone();
            let is_probe = probe && !probe_used;
            probe_used |= is_probe;
            let span = tracing::info_span!(
                "worker.deliver",
                channel = %job.channel,
                job_id = %job.job_id,
                attempt = ctx.attempts + 1
            );
            quizflow_telemetry::set_parent_from_nats(&span, msg.trace().as_ref());
            inflight.spawn(async move {
                let _lease = guard;
                let called = tracing::Instrument::instrument(
                    me.process(msg, job, ctx, claim, permit, is_probe),
                    span,
                )
                .await;
                if is_probe && called == Called::No {
                    me.breaker.release_probe();
                }
            });
        }
        if probe && !probe_used {
            self.breaker.release_probe();
        }
    }

    /// Contexts of a fetch in one query. A query that fails for a reason that may be one
    /// job's data is retried job by job, so one bad job never fails the others: its slot
    /// holds `Err(reason)`. `None`: the database is away.
    async fn load(
        &self,
        jobs: &[(JobMsg, DeliveryJob)],
    ) -> Option<Vec<Result<Option<JobContext>, String>>> {
        if jobs.is_empty() {
            return Some(Vec::new());
        }
        let mut conn = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, channel = %self.channel, "cannot load job contexts");
                return None;
            }
        };
        let refs: Vec<&DeliveryJob> = jobs.iter().map(|(_, j)| j).collect();
        match deliveries::load(&mut conn, &self.specs, &refs).await {
            Ok(c) => Some(c.into_iter().map(Ok).collect()),
            Err(e) if e.retry() == Retry::Later => {
                tracing::warn!(error = %e, channel = %self.channel, "cannot load job contexts");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "job contexts rejected; loading one by one");
                let mut out = Vec::with_capacity(refs.len());
                for j in refs {
                    out.push(match deliveries::load(&mut conn, &self.specs, &[j]).await {
                        Ok(mut c) => Ok(c.pop().flatten()),
                        Err(e) if e.retry() == Retry::Later => return None,
                        Err(e) => Err(format!("job context cannot be loaded: {}", e.public())),
                    });
                }
                Some(out)
            }
        }
    }

    /// How long a claim holds: the longest a claimed job can take before its outcome is
    /// recorded (waiting for the rate limiter, the call, the ack wait), with room to spare.
    fn lease(&self) -> Duration {
        lease_for(&self.settings)
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

    /// The status a claimed job waits in: `queued` before its first attempt, `failed` after.
    fn waiting(attempts: i32) -> &'static str {
        if attempts == 0 {
            "queued"
        } else {
            "failed"
        }
    }

    /// Gives a claimed job back unsent (stopping, breaker opened): no attempt spent.
    async fn release(
        &self,
        msg: JobMsg,
        job: &DeliveryJob,
        ctx: &JobContext,
        claim: Uuid,
        wait: Option<Duration>,
    ) {
        let _ = self
            .status
            .write(update(
                job,
                Self::waiting(ctx.attempts),
                ctx.attempts,
                None,
                Vec::new(),
                Some(claim),
            ))
            .await;
        msg.nak(wait, Some(job)).await;
    }

    async fn cancel(&self, msg: JobMsg, job: &DeliveryJob, ctx: &JobContext) {
        let why = if ctx.campaign_exists {
            "campaign inactive or ended"
        } else {
            "campaign deleted"
        };
        let u = update(
            job,
            "cancelled",
            ctx.attempts,
            Some(why.to_owned()),
            vec![history_entry("cancelled", why)],
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

    /// Sends one claimed job. `slot` is held for the provider call only: recording the
    /// outcome and acking do not keep a provider slot busy.
    async fn process(
        &self,
        msg: JobMsg,
        job: DeliveryJob,
        ctx: JobContext,
        claim: Uuid,
        slot: tokio::sync::OwnedSemaphorePermit,
        probe: bool,
    ) -> Called {
        // What the send needs; without it the job can never be sent (permanent).
        let prepared = (|| {
            let spec = ctx.campaign.as_ref().ok_or("campaign version unknown")?;
            let action = spec
                .actions
                .iter()
                .filter(|a| a.channel == job.channel)
                .nth(usize::from(job.action_step()))
                .ok_or("campaign has no action for this channel")?;
            let respondent = &ctx.submission["respondent"];
            let to = match job.channel {
                Channel::Sms | Channel::Whatsapp => respondent["phone"].as_str().map(str::to_owned),
                Channel::Email => respondent["email"].as_str().map(str::to_owned),
                Channel::Webhook => action.url.clone(),
            }
            .ok_or("no recipient for this channel")?;
            Ok::<_, &'static str>((spec, action, to))
        })();
        let (spec, action, to) = match prepared {
            Ok(p) => p,
            Err(reason) => {
                self.dead(
                    msg,
                    &job,
                    &ctx,
                    claim,
                    None,
                    "permanent",
                    reason,
                    ctx.attempts,
                )
                .await;
                return Called::No;
            }
        };
        let tctx = render::context(&ctx.submission, &job.campaign_id.to_string(), &spec.name);
        let rendered = self
            .templates
            .get(
                job.campaign_id,
                ctx.campaign_version,
                job.action_step(),
                action,
            )
            .and_then(|env| {
                Ok((
                    render::render_compiled(&env, "body", &tctx)?,
                    render::render_compiled(&env, "subject", &tctx)?,
                    render::render_compiled(&env, "image", &tctx)?,
                ))
            });
        let (body, subject, image) = match rendered {
            Ok(r) => r,
            Err(e) => {
                self.dead(
                    msg,
                    &job,
                    &ctx,
                    claim,
                    Some(&to),
                    "permanent",
                    &e,
                    ctx.attempts,
                )
                .await;
                return Called::No;
            }
        };
        let out = Outgoing {
            to: to.clone(),
            subject,
            body: body.unwrap_or_default(),
            idempotency_key: job.job_id.to_string(),
            reference: job.reference_for_attempt(ctx.attempts + 1),
            image: image.map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()),
            payload: (job.channel == Channel::Webhook).then(|| {
                serde_json::json!({"job_id": job.job_id, "submission": ctx.submission,
                    "campaign": {"id": job.campaign_id, "name": spec.name, "version": job.campaign_version}})
            }),
        };
        // The rate limiter's wait is a wait, not a failure: in-progress acks keep the job ours.
        let mut tick = tokio::time::interval(self.settings.ack_wait / 3);
        tick.tick().await;
        let waited = std::time::Instant::now();
        let ready = async {
            // The share may change while this call waits (a process joins or leaves): wait
            // on the limiter of the moment.
            let mut share = self.share.clone();
            loop {
                share.borrow_and_update();
                let limiter = self.current_limiter();
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
            }
        }
        .await;
        self.metrics
            .limiter_wait_seconds
            .with_label_values(&[self.channel.as_str()])
            .observe(waited.elapsed().as_secs_f64());
        if !ready || self.stopping() {
            // Fetched but not started when the stop came: back to the stream, unsent.
            self.release(msg, &job, &ctx, claim, None).await;
            return Called::No;
        }
        if !probe {
            if let Err(wait) = self.breaker.admit() {
                // Opened since this job was fetched: back to the stream, no attempt burned.
                self.release(msg, &job, &ctx, claim, Some(wait)).await;
                return Called::No;
            }
        }
        // The last word before the call: is the row still ours? An erasure cancels claimed
        // rows whose call has not begun, and waits for those that have.
        match self.gate.ask(key_of(&job), claim).await {
            crate::lease::Gate::Go => {}
            crate::lease::Gate::Gone => {
                tracing::debug!(job = %job.job_id, "claim gone before the call (cancelled or taken over)");
                msg.ack().await;
                return Called::No;
            }
            crate::lease::Gate::Unknown => {
                self.release(msg, &job, &ctx, claim, Some(Duration::from_secs(2)))
                    .await;
                return Called::No;
            }
        }
        // Long calls: in-progress acks keep JetStream from redelivering a job being sent.
        let called = std::time::Instant::now();
        let send = self
            .provider
            .send(&self.http, &out, self.settings.send_timeout);
        tokio::pin!(send);
        let class = loop {
            tokio::select! {
                c = &mut send => break c,
                _ = tick.tick() => msg.progress().await,
            }
        };
        self.observe(&class, called.elapsed());
        // The breaker learns of the outcome before the slot frees, so the next call already
        // sees an opened breaker.
        match &class {
            Class::Sent | Class::Permanent(_) => self.breaker.success(),
            Class::Transient(_) | Class::Uncertain(_) => {
                if self.breaker.failure() {
                    tracing::warn!(channel = %self.channel, provider = self.provider.name(), "circuit breaker opened");
                }
            }
            // A throttle is about the provider, not this job: the whole channel pauses for
            // `Retry-After` (then probes), instead of every job hammering it on its own.
            Class::Throttle { retry_after, .. } => {
                let wait = retry_after.unwrap_or_else(|| self.delay(ctx.attempts as usize));
                self.breaker.pause(wait);
                tracing::debug!(channel = %self.channel, ?wait, "provider throttles: channel paused");
            }
        }
        drop(slot);
        self.settle(msg, job, ctx, claim, &to, class).await;
        Called::Yes
    }

    /// Counts a provider call: its outcome class, duration, and what it cost.
    fn observe(&self, class: &Class, took: Duration) {
        let channel = self.channel.as_str();
        let outcome = match class {
            Class::Sent => "sent",
            Class::Throttle { .. } => "throttled",
            Class::Transient(_) => "transient",
            Class::Uncertain(_) => "uncertain",
            Class::Permanent(_) => "permanent",
        };
        self.metrics
            .deliveries
            .with_label_values(&[channel, outcome])
            .inc();
        self.metrics
            .provider_seconds
            .with_label_values(&[channel])
            .observe(took.as_secs_f64());
        if matches!(class, Class::Sent) {
            let unit = self.settings.costs.unit(self.channel);
            if unit > 0.0 {
                self.metrics
                    .cost
                    .with_label_values(&[channel, &self.settings.costs.currency])
                    .inc_by(unit);
            }
        }
        match class {
            Class::Throttle { .. } => self
                .metrics
                .retries
                .with_label_values(&[channel, "throttled"])
                .inc(),
            Class::Transient(_) | Class::Uncertain(_) => self
                .metrics
                .retries
                .with_label_values(&[channel, "failed"])
                .inc(),
            _ => {}
        }
    }

    async fn settle(
        &self,
        msg: JobMsg,
        job: DeliveryJob,
        ctx: JobContext,
        claim: Uuid,
        to: &str,
        class: Class,
    ) {
        let attempts = ctx.attempts;
        let (u, retry_in) = match class {
            Class::Sent => (
                update(
                    &job,
                    "sent",
                    attempts + 1,
                    None,
                    vec![history_entry("sent", self.provider.name())],
                    Some(claim),
                ),
                None,
            ),
            Class::Throttle {
                retry_after,
                detail,
            } => {
                // Not a failed attempt: the count stays, and so does the job's budget.
                let wait = retry_after.unwrap_or_else(|| self.delay(attempts as usize));
                let mut u = update(
                    &job,
                    Self::waiting(attempts),
                    attempts,
                    Some(detail.clone()),
                    vec![history_entry("throttled", &detail)],
                    Some(claim),
                );
                u.retry_in = Some(wait);
                (u, Some(wait))
            }
            Class::Permanent(reason) => {
                return self
                    .dead(
                        msg,
                        &job,
                        &ctx,
                        claim,
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
                        .dead(
                            msg,
                            &job,
                            &ctx,
                            claim,
                            Some(to),
                            "exhausted",
                            &reason,
                            attempts,
                        )
                        .await;
                }
                let wait = self.delay(attempts as usize - 1);
                let mut u = update(
                    &job,
                    "failed",
                    attempts,
                    Some(reason.clone()),
                    vec![history_entry("failed", &reason)],
                    Some(claim),
                );
                u.retry_in = Some(wait);
                (u, Some(wait))
            }
        };
        // The outcome is recorded before the ack: a crash in between resends at worst.
        match self.status.write(u).await {
            Ok(true) => match retry_in {
                None => msg.ack().await,
                Some(wait) => msg.nak(Some(wait), Some(&job)).await,
            },
            Ok(false) => {
                // The row is no longer ours (its lease ran out and another worker took it, or
                // it was finished): that worker's outcome stands.
                tracing::warn!(job = %job.job_id, "outcome superseded: the claim was lost");
                msg.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "status not recorded; job naked");
                msg.nak(Some(Duration::from_secs(5)), Some(&job)).await;
            }
        }
    }

    /// Dead-letters the job (see [`DeadLetters::record`]), then acks it; if that cannot be
    /// recorded the job is naked and comes back.
    #[allow(clippy::too_many_arguments)]
    async fn dead(
        &self,
        msg: JobMsg,
        job: &DeliveryJob,
        ctx: &JobContext,
        claim: Uuid,
        to: Option<&str>,
        class: &str,
        reason: &str,
        attempts: i32,
    ) {
        let dl = DeadLetters {
            js: &self.js,
            pool: &self.pool,
        };
        match dl
            .record(job, &ctx.history, to, class, reason, attempts, Some(claim))
            .await
        {
            Ok(_) => {
                self.metrics
                    .dead_letters
                    .with_label_values(&[job.channel.as_str(), class])
                    .inc();
                // The reason stays in the letter (admin-only): provider texts can quote the recipient.
                tracing::info!(job = %job.job_id, channel = %job.channel, class, "job dead-lettered");
                msg.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not recorded; job naked");
                msg.nak(Some(Duration::from_secs(5)), Some(job)).await;
            }
        }
    }

    /// A job whose context the database refused for its data (the server is fine: trouble
    /// of the server makes the whole fetch wait): its ledger row, when there is one, goes the
    /// normal dead path (marked `dead`, listed, redrivable); without a row, stream only.
    async fn unloadable(&self, msg: JobMsg, job: &DeliveryJob, reason: &str) {
        let dl = DeadLetters {
            js: &self.js,
            pool: &self.pool,
        };
        match dl.record(job, &[], None, "poison", reason, 0, None).await {
            Ok(true) => {
                self.metrics
                    .dead_letters
                    .with_label_values(&[job.channel.as_str(), "poison"])
                    .inc();
                tracing::warn!(job = %job.job_id, channel = %job.channel, "job whose context cannot be loaded dead-lettered");
                msg.ack().await;
            }
            Ok(false) => self.poison(msg, reason).await,
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not recorded; job naked");
                msg.nak(Some(Duration::from_secs(5)), Some(job)).await;
            }
        }
    }

    /// A job that cannot be handled at all goes to `DEAD_LETTERS` on its own (its line only,
    /// named by message and place).
    async fn poison(&self, msg: JobMsg, reason: &str) {
        let (seq, member) = msg.position();
        tracing::warn!(seq, member, reason, channel = %self.channel, "poison job moved to dead letters");
        let ok = quizflow_nats::dead_letter_job_message(
            &self.js,
            self.channel.as_str(),
            msg.payload().clone(),
            reason,
            "delivery",
            seq,
            member,
        )
        .await
        .is_ok();
        if ok {
            self.metrics
                .dead_letters
                .with_label_values(&[self.channel.as_str(), "poison"])
                .inc();
            msg.term().await;
        } else {
            msg.nak(Some(Duration::from_secs(5)), None).await;
        }
    }
}

/// How long a claim holds without renewal: the longest one send can take before its outcome
/// is recorded (waiting for the rate limiter, the call, the ack wait), with room to spare.
/// Held claims are renewed every quarter of it ([`crate::lease`]).
fn lease_for(s: &WorkerSettings) -> Duration {
    let limiter = Duration::from_secs_f64(s.concurrency as f64 / f64::from(s.rate_per_sec.max(1)));
    s.send_timeout + s.ack_wait * 2 + limiter
}

fn key_of(job: &DeliveryJob) -> Key {
    (
        job.submission_id.0,
        job.campaign_id,
        job.channel.to_string(),
        job.step,
    )
}

fn update(
    job: &DeliveryJob,
    status: &'static str,
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

/// Where dead letters go: the `dead_letters` mirror with the ledger's `dead`, then
/// `dead.deliveries.<channel>`.
pub(crate) struct DeadLetters<'a> {
    pub js: &'a jetstream::Context,
    pub pool: &'a Pool,
}

impl DeadLetters<'_> {
    /// Marks the ledger row `dead` and mirrors the letter into `dead_letters` in one
    /// transaction (only while the row is the caller's: under `claim`, or nobody's), then
    /// publishes the letter to `dead.deliveries.<channel>`. Returns false when the row was
    /// no longer the caller's to finish.
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &self,
        job: &DeliveryJob,
        history: &[serde_json::Value],
        to: Option<&str>,
        class: &str,
        reason: &str,
        attempts: i32,
        claim: Option<Uuid>,
    ) -> Result<bool, String> {
        let id = Uuid::new_v4();
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
        let payload = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let recorded = deliveries::record_dead(
            &mut conn,
            DeadLetterRow {
                id,
                job,
                recipient: to,
                class,
                reason,
                attempts,
                history: &history,
                payload: &payload,
            },
            update(
                job,
                "dead",
                attempts,
                Some(reason.to_owned()),
                vec![entry],
                claim,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
        drop(conn);
        if !recorded {
            return Ok(false);
        }
        // The mirror row is what listing and redrive use; the stream copy is the archive.
        let letter = serde_json::json!({"id": id, "kind": "delivery", "channel": job.channel, "submission_id": job.submission_id,
            "campaign_id": job.campaign_id, "recipient": to, "class": class, "reason": reason, "attempts": attempts,
            "history": history, "failed_at": chrono::Utc::now(), "job": job});
        let bytes = serde_json::to_vec(&letter).map_err(|e| e.to_string())?;
        let mut wait = Duration::from_millis(200);
        for _ in 0..5 {
            match quizflow_nats::dead_letter_delivery(
                self.js,
                job.channel.as_str(),
                &id.to_string(),
                bytes.clone().into(),
            )
            .await
            {
                Ok(sequence) => {
                    self.take_back_if_erased(job, to, sequence).await;
                    return Ok(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead letter not archived in DEAD_LETTERS yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        tracing::error!(letter = %id, "dead letter recorded in PostgreSQL but not archived in DEAD_LETTERS");
        Ok(true)
    }

    /// An erasure may have scanned `DEAD_LETTERS` between this letter's ledger write and its
    /// archiving: if the recipient was erased since the job was made, the copy is taken back.
    async fn take_back_if_erased(&self, job: &DeliveryJob, to: Option<&str>, sequence: u64) {
        let kind = match job.channel {
            Channel::Sms | Channel::Whatsapp => "phone",
            Channel::Email => "email",
            Channel::Webhook => return,
        };
        let Some(to) = to else { return };
        let erased = match self.pool.get().await {
            Ok(mut conn) => {
                quizflow_store::erase::erased_since(&mut conn, kind, to, job.created_at).await
            }
            Err(e) => Err(e.into()),
        };
        match erased {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = quizflow_nats::delete_dead_letter(self.js, sequence).await {
                    tracing::warn!(error = %e, sequence, "archived letter of an erased person not taken back");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, sequence, "cannot tell whether an archived letter's person was erased")
            }
        }
    }
}
