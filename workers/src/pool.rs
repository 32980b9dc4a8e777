//! The workers role: a pool per configured channel (see [`crate::fetch`] for its loop) and the
//! tasks every pool shares, started together and stopped together.
//!
//! Waiting is not failing: the consumers redeliver without limit (`max_deliver: -1`), and the
//! attempt budget lives in the ledger, so a job that waits on a `Retry-After`, the rate limiter,
//! an open breaker or a claim held elsewhere keeps every attempt it had.

use crate::breaker::Breaker;
use crate::channel::{lease_for, Channelled};
use crate::cluster::{self, ChannelLink, LaneLink, Share, Totals, VerdictTx};
use crate::lanes::Lane;
use crate::lease::{CallGate, Leases};
use crate::metrics::WorkerMetrics;
use crate::provider::Sender;
use crate::render;
use crate::status::StatusWriter;
use crate::WorkerSettings;
use async_nats::jetstream;
use quizflow_core::Channel;
use quizflow_store::deliveries;
use quizflow_store::Pool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot open the DELIVERIES stream: {0}")]
    Stream(#[from] async_nats::jetstream::context::GetStreamError),
    #[error("cannot open a worker consumer: {0}")]
    Consumer(#[from] async_nats::Error),
    #[error("cannot open the workers' shared limits: {0}")]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot build the provider HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What every channel's pool of this process shares.
struct Shared {
    settings: Arc<WorkerSettings>,
    js: jetstream::Context,
    pool: Pool,
    status: StatusWriter,
    metrics: WorkerMetrics,
    leases: Arc<Leases>,
    gate: CallGate,
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
    let metrics = WorkerMetrics::new()?;
    metrics.register(&registry)?;
    let (status, writer) = StatusWriter::start(pool.clone());
    let (stop_tx, stop) = watch::channel(false);
    let shared = Shared {
        settings: Arc::new(settings),
        gate: CallGate::start(pool.clone()),
        leases: Arc::new(Leases::default()),
        js,
        pool,
        status,
        metrics,
        stop,
    };
    let bucket = cluster::bucket(&shared.js).await?;
    let mut tasks = JoinSet::new();
    let (verdict_tx, verdict_rx) = tokio::sync::mpsc::channel(64);
    let mut links = Vec::new();
    let mut pools = Vec::new();
    for &channel in &shared.settings.channels {
        let (c, link) = shared.channel(channel, verdict_tx.clone())?;
        links.push(link);
        pools.push(c.clone());
        tasks.spawn(c.clone().follow_share());
        tasks.spawn(c.serve());
    }
    drop(verdict_tx);
    let me = format!("{}", Uuid::new_v4().simple());
    let stop = shared.stop.clone();
    tasks.spawn(async move {
        cluster::run(bucket, me, links, verdict_rx, stop).await;
        Ok(())
    });
    tasks.spawn(report(pools, shared.pool.clone(), shared.stop.clone()));
    shared.spawn_upkeep(&mut tasks);
    drop(shared);
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

impl Shared {
    /// One channel's pool, and its link to the cluster's shares and breaker verdicts.
    fn channel(
        &self,
        channel: Channel,
        verdicts: VerdictTx,
    ) -> Result<(Arc<Channelled>, ChannelLink), WorkerError> {
        let s = &self.settings;
        let (share_tx, share_rx) = watch::channel(Share::NONE);
        let (lanes, lane_links) = s
            .providers
            .for_channel(channel)
            .iter()
            .map(|sender| self.lane(channel, sender, verdicts.clone()))
            .unzip();
        let link = ChannelLink {
            channel,
            totals: Totals {
                rate_per_sec: f64::from(s.rate_per_sec.max(1)),
                concurrency: s.concurrency.max(1),
            },
            share: share_tx,
            lanes: lane_links,
        };
        let c = Channelled {
            channel,
            lanes,
            share: share_rx,
            slots: Arc::new(Semaphore::new(0)),
            metrics: self.metrics.clone(),
            templates: render::TemplateCache::with_links(s.qr_links.clone()),
            specs: deliveries::SpecCache::default(),
            settings: s.clone(),
            js: self.js.clone(),
            pool: self.pool.clone(),
            status: self.status.clone(),
            leases: self.leases.clone(),
            gate: self.gate.clone(),
            http: crate::provider::http_client(s, channel)?,
            stop: self.stop.clone(),
        };
        Ok((Arc::new(c), link))
    }

    /// One sender of a channel: its breaker (verdicts shared under the sender's key), its
    /// share of the sender's limits.
    fn lane(&self, channel: Channel, sender: &Sender, verdicts: VerdictTx) -> (Lane, LaneLink) {
        let s = &self.settings;
        let label = sender.label();
        let key = crate::lanes::verdict_key(channel, &label);
        let breaker = Arc::new(Breaker::shared(
            s.breaker_failures,
            s.breaker_cooldown,
            key.clone(),
            verdicts,
        ));
        let (share_tx, share_rx) = watch::channel(Share::NONE);
        let lane = Lane {
            sender: sender.clone(),
            label,
            limiter: std::sync::RwLock::new(None),
            pacer: std::sync::RwLock::new(None),
            share: share_rx,
            slots: s.sender_concurrency.map(|_| Arc::new(Semaphore::new(0))),
            breaker: breaker.clone(),
        };
        let link = LaneLink {
            key,
            totals: Totals {
                rate_per_sec: f64::from(s.rate_per_sec.max(1)),
                concurrency: s.sender_concurrency.unwrap_or(s.concurrency).max(1),
            },
            breaker,
            share: share_tx,
        };
        (lane, link)
    }

    /// The tasks beside the pools: lease renewal, the max-deliveries sweeper, the firer of
    /// scheduled steps.
    fn spawn_upkeep(&self, tasks: &mut JoinSet<Result<(), WorkerError>>) {
        let (leases, pool, stop) = (self.leases.clone(), self.pool.clone(), self.stop.clone());
        let lease = lease_for(&self.settings);
        tasks.spawn(async move {
            crate::lease::renew(leases, pool, lease, stop).await;
            Ok(())
        });
        let (js, pool, status, stop) = (
            self.js.clone(),
            self.pool.clone(),
            self.status.clone(),
            self.stop.clone(),
        );
        let relay_after = self.settings.redrive_relay_after;
        tasks.spawn(async move {
            crate::sweep::run(relay_after, js, pool, status, stop).await;
            Ok(())
        });
        let (js, pool, metrics, stop) = (
            self.js.clone(),
            self.pool.clone(),
            self.metrics.clone(),
            self.stop.clone(),
        );
        let channels = self.settings.channels.clone();
        tasks.spawn(async move {
            let observe = |f: &crate::schedule::Fired| crate::schedule::observe(&metrics, f);
            crate::schedule::run(js, pool, &channels, observe, stop).await;
            Ok(())
        });
    }
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
        let mut circuits = Vec::new();
        for c in &pools {
            for lane in &c.lanes {
                let state = lane.breaker.state();
                let provider = lane.sender.provider.name();
                c.metrics
                    .circuit
                    .with_label_values(&[c.channel.as_str(), provider, &lane.label])
                    .set(state.gauge());
                circuits.push(serde_json::json!({"channel": c.channel.as_str(),
                    "provider": provider, "sender": lane.label, "state": state.as_str()}));
            }
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
