//! The first step of a job's life: the pool's loop. Fetch (high priority before normal before
//! low) as many jobs as there are free provider slots, decode them, load their contexts in one
//! query, [`triage`] each, claim the ones to send in one statement, and start a task per
//! claimed job ([`crate::send`]).

use crate::channel::{key_of, Channelled};
use crate::handle::{self, JobMsg};
use crate::triage::{triage, Loaded, Triage};
use crate::WorkerError;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use quizflow_core::{DeliveryJob, Priority};
use quizflow_nats::subjects;
use quizflow_store::deliveries::{self, JobContext, Key};
use quizflow_store::Retry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use uuid::Uuid;

/// What became of a job in [`Channelled::process`]: did it reach the provider?
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Called {
    Yes,
    No,
}

impl Channelled {
    async fn consumers(&self) -> Result<Vec<PullConsumer>, WorkerError> {
        let stream = self.js.get_stream(subjects::DELIVERIES_STREAM).await?;
        let mut out = Vec::new();
        for p in Priority::ALL {
            let name = subjects::worker_consumer(self.channel, p);
            out.push(stream.get_consumer(&name).await?);
        }
        Ok(out)
    }

    /// The pool's loop until the stop signal; then calls in flight finish, and their
    /// outcomes are recorded and acked, within the shutdown timeout.
    pub async fn serve(self: Arc<Self>) -> Result<(), WorkerError> {
        let consumers = self.consumers().await?;
        let mut inflight: JoinSet<()> = JoinSet::new();
        let mut idle = Duration::from_millis(20);
        tracing::info!(channel = %self.channel, senders = self.lanes.len(), "worker pool started");
        while !self.stopping() {
            while inflight.try_join_next().is_some() {}
            // Every sender's breaker open: nothing is fetched, the jobs wait in the stream.
            // A sender's cooldown over: one job is its probe (the only one fetched when no
            // sender is closed).
            let (open, probe) = match crate::lanes::allowance(&self.lanes) {
                Ok(x) => x,
                Err(wait) => {
                    self.pause(wait.min(Duration::from_millis(250))).await;
                    continue;
                }
            };
            let Some(want) = self.room(open, probe).await else {
                continue;
            };
            let msgs = self.fetch(&consumers, want).await;
            if msgs.is_empty() {
                self.release_probe(probe);
                self.pause(idle).await;
                idle = (idle * 2).min(Duration::from_millis(250));
                continue;
            }
            idle = Duration::from_millis(20);
            self.dispatch(msgs, &mut inflight, probe).await;
        }
        let drained = tokio::time::timeout(self.settings.shutdown_timeout, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(channel = %self.channel, left = inflight.len(), "shutdown timeout: calls still in flight are abandoned (their jobs come back)");
        }
        Ok(())
    }

    /// A probe that made no provider call: the next caller may probe at once.
    pub(crate) fn release_probe(&self, probe: Option<usize>) {
        if let Some(lane) = probe.and_then(|p| self.lanes.get(p)) {
            lane.breaker.release_probe();
        }
    }

    /// How many messages to fetch: about one per free slot (a message may carry a chunk of
    /// up to `JOB_CHUNK` jobs), one for a probe alone; `None` after waiting for a slot to free.
    async fn room(&self, open: bool, probe: Option<usize>) -> Option<usize> {
        let free = self.slots.available_permits();
        if free == 0 {
            self.release_probe(probe);
            tokio::select! {
                _ = self.slots.acquire() => {}
                _ = self.pause(Duration::from_millis(250)) => {}
            }
            return None;
        }
        Some(if !open {
            1
        } else {
            free.div_ceil(quizflow_nats::JOB_CHUNK).clamp(1, 100)
        })
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

    /// Decodes a fetch: jobs not due yet wait, undecodable ones are poison, a second copy of
    /// a job in the same fetch is acked (the first carries it).
    async fn decode(&self, msgs: Vec<jetstream::Message>) -> Vec<(JobMsg, DeliveryJob)> {
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
                    let reason = format!("unsupported job version {}", job.v);
                    self.poison(msg, &reason).await
                }
                Ok(job) if keys_seen.insert(key_of(&job)) => jobs.push((msg, job)),
                Ok(_) => msg.ack().await,
                Err(e) => self.poison(msg, &format!("undecodable job: {e}")).await,
            }
        }
        jobs
    }

    /// Decodes, loads, triages and claims a fetch, then starts a task per claimed job.
    async fn dispatch(
        self: &Arc<Self>,
        msgs: Vec<jetstream::Message>,
        inflight: &mut JoinSet<()>,
        probe: Option<usize>,
    ) {
        let jobs = self.decode(msgs).await;
        let Some(contexts) = self.load(&jobs).await else {
            // The database is away: everything goes back, no attempt spent (a whole chunk as
            // one message, not one re-publish per job).
            handle::nak_together(jobs, Duration::from_secs(2)).await;
            self.release_probe(probe);
            self.pause(Duration::from_secs(1)).await;
            return;
        };
        let mut eligible = Vec::new();
        let now = chrono::Utc::now();
        for ((msg, job), ctx) in jobs.into_iter().zip(contexts) {
            match (triage(&ctx, msg.delivered(), now), ctx) {
                (Triage::Send, Ok(Some(ctx))) => eligible.push((msg, job, ctx)),
                (Triage::Done, _) => msg.ack().await,
                (Triage::Cancel(why), Ok(Some(ctx))) => self.cancel(msg, &job, &ctx, why).await,
                (Triage::Wait(wait), _) => msg.nak(Some(wait), Some(&job)).await,
                (Triage::Unloadable(reason), _) => self.unloadable(msg, &job, &reason).await,
                (Triage::Poison(reason), _) => self.poison(msg, reason).await,
                // Send and Cancel come only with a context.
                (_, _) => msg.nak(Some(Duration::from_secs(2)), Some(&job)).await,
            }
        }
        let started = self.start(eligible, inflight, probe).await;
        if !started {
            self.release_probe(probe);
        }
    }

    /// Claims the eligible jobs in one statement and starts a task for each claimed one, as
    /// provider slots free. Returns whether the probe (if this fetch is one) was handed on.
    async fn start(
        self: &Arc<Self>,
        eligible: Vec<(JobMsg, DeliveryJob, JobContext)>,
        inflight: &mut JoinSet<()>,
        probe: Option<usize>,
    ) -> bool {
        let claim = Uuid::new_v4();
        let keys: Vec<Key> = eligible.iter().map(|(_, j, _)| key_of(j)).collect();
        let capped = self.caps(&eligible);
        let (claimed, over) = self.claim(&keys, claim, &capped).await;
        // Every claim is renewed until its job is settled or given back, however long the
        // job waits for a slot or the rate limiter (a guard moves into the job's task).
        let mut guards: HashMap<Key, crate::lease::LeaseGuard> = claimed
            .into_iter()
            .map(|k| (k.clone(), self.leases.hold(k, claim)))
            .collect();
        let mut probe_used = false;
        for (msg, job, ctx) in eligible {
            if over.contains(&key_of(&job)) {
                // Ended `capped` by the claim: never sent.
                self.metrics
                    .skipped
                    .with_label_values(&[self.channel.as_str(), "capped"])
                    .inc();
                msg.ack().await;
                continue;
            }
            let Some(guard) = guards.remove(&key_of(&job)) else {
                // Taken or finished by someone else since the load: look again later.
                msg.nak(Some(Duration::from_secs(2)), Some(&job)).await;
                continue;
            };
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => p.ok(),
                _ = self.stopped() => None,
            };
            let Some(permit) = permit.filter(|_| !self.stopping()) else {
                self.release(msg, &job, &ctx, claim, None).await;
                continue;
            };
            let is_probe = probe.filter(|_| !probe_used);
            probe_used |= is_probe.is_some();
            let span = tracing::info_span!(
                "worker.deliver",
                channel = %job.channel,
                job_id = %job.job_id,
                attempt = ctx.attempts + 1
            );
            quizflow_telemetry::set_parent_from_nats(&span, msg.trace().as_ref());
            let me = self.clone();
            inflight.spawn(async move {
                let _lease = guard;
                let send = me.process(msg, job, ctx, claim, permit, is_probe);
                let called = tracing::Instrument::instrument(send, span).await;
                if called == Called::No {
                    me.release_probe(is_probe);
                }
            });
        }
        probe_used
    }

    /// The frequency caps each eligible job counts against (contract §3.2): the channel's
    /// and its campaign's. Transactional campaigns are exempt; a job without a contact has
    /// nobody to count.
    fn caps(&self, eligible: &[(JobMsg, DeliveryJob, JobContext)]) -> Vec<deliveries::Capped> {
        let channel_cap = self.settings.frequency_cap(self.channel);
        let cap = |c: quizflow_core::consent::FrequencyCap, campaign| deliveries::Cap {
            count: c.count,
            window_s: c.window.as_secs_f64(),
            campaign,
        };
        eligible
            .iter()
            .filter_map(|(_, job, ctx)| {
                let spec = ctx.campaign.as_ref()?;
                if spec.purpose == quizflow_core::consent::Purpose::Transactional {
                    return None;
                }
                let caps: Vec<deliveries::Cap> = channel_cap
                    .map(|c| cap(c, None))
                    .into_iter()
                    .chain(spec.frequency_cap.map(|c| cap(c, Some(job.campaign_id))))
                    .collect();
                if caps.is_empty() {
                    return None;
                }
                let to = crate::send::recipient_of(job.channel, &ctx.submission)?;
                let contact = self.settings.hash_key.hash(job.channel, &to)?.to_vec();
                Some(deliveries::Capped {
                    key: key_of(job),
                    contact,
                    caps,
                })
            })
            .collect()
    }

    /// Claims `keys` under `claim`, counting the `capped` ones against their caps: the keys
    /// claimed to send, and those ended `capped` (none when the database is away).
    async fn claim(
        &self,
        keys: &[Key],
        claim: Uuid,
        capped: &[deliveries::Capped],
    ) -> (HashSet<Key>, HashSet<Key>) {
        let claimed = match self.pool.get().await {
            Ok(mut conn) => {
                deliveries::claim_capped(&mut conn, keys, claim, self.lease(), capped).await
            }
            Err(e) => Err(e.into()),
        };
        match claimed {
            Ok(c) => (
                c.claimed.into_iter().collect(),
                c.capped.into_iter().collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; jobs naked");
                (HashSet::new(), HashSet::new())
            }
        }
    }

    /// Contexts of a fetch in one query. A query that fails for a reason that may be one
    /// job's data is retried job by job, so one bad job never fails the others: its slot
    /// holds `Err(reason)`. `None`: the database is away.
    async fn load(&self, jobs: &[(JobMsg, DeliveryJob)]) -> Option<Vec<Loaded>> {
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
}
