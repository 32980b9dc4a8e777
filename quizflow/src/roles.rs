//! The roles a process serves — api, batcher, workers, the mock provider — and
//! [`serve_roles`], the one function that starts any set of them: each single-role command
//! starts one, `up` starts them all. [`Role::prepare`] builds a role's settings; `check`
//! asks it too, so a configuration `check` passes is one the role starts with.

use crate::config::Config;
use crate::ops;
use anyhow::Context;
use quizflow_core::Channel;
use quizflow_telemetry::prometheus::Registry;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One role of a process.
#[derive(Debug, Clone)]
pub enum Role {
    Api,
    Batcher,
    /// The worker pools of `channels` (all when empty); channels without a provider send to
    /// the mock provider at `mock`, when given.
    Workers {
        channels: Vec<Channel>,
        mock: Option<String>,
    },
    MockProvider,
}

/// A role's settings, built (and checked) before anything connects.
enum Prepared {
    Api(Box<quizflow_api::ApiSettings>),
    Batcher(quizflow_batcher::BatcherSettings),
    Workers(Box<quizflow_workers::WorkerSettings>),
    MockProvider,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Batcher => "batcher",
            Role::Workers { .. } => "workers",
            Role::MockProvider => "mock provider",
        }
    }

    fn needs_servers(&self) -> bool {
        !matches!(self, Role::MockProvider)
    }

    /// The role's settings as it would start with them; the servers it needs are set.
    fn prepare(&self, cfg: &Config) -> anyhow::Result<Prepared> {
        if self.needs_servers() {
            required(&cfg.nats_url, "NATS_URL")?;
            required(&cfg.database_url, "DATABASE_URL")?;
        }
        Ok(match self {
            Role::Api => Prepared::Api(Box::new(cfg.api_settings()?)),
            Role::Batcher => Prepared::Batcher(cfg.batcher_settings()?),
            Role::Workers { channels, mock } => {
                let channels = if channels.is_empty() {
                    Channel::ALL.to_vec()
                } else {
                    channels.clone()
                };
                let s = cfg.worker_settings(channels, mock.as_deref())?;
                Prepared::Workers(Box::new(s))
            }
            Role::MockProvider => Prepared::MockProvider,
        })
    }

    /// Checks the role's configuration without starting it (`quizflow check`).
    pub fn check(&self, cfg: &Config) -> anyhow::Result<()> {
        self.prepare(cfg).map(|_| ())
    }
}

pub fn required<'a>(value: &'a Option<String>, name: &str) -> anyhow::Result<&'a str> {
    value
        .as_deref()
        .with_context(|| format!("{name} is not set"))
}

/// Runs `roles` in this process until `shutdown` resolves or one of them stops, then stops
/// them all (each drains within the shutdown timeout). Every role's metrics go to
/// `registry`; the API serves them, or, without an API, the ops server of
/// `QUIZFLOW_METRICS_ADDR` does. One depth poller serves the whole process.
pub async fn serve_roles(
    cfg: &Config,
    roles: &[Role],
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let prepared = roles
        .iter()
        .map(|r| r.prepare(cfg).with_context(|| r.name()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut ops_task = None;
    if roles.iter().any(Role::needs_servers) {
        let (client, js) = connect_nats(cfg, "depths").await?;
        let (r, rx) = (registry.clone(), stop.clone());
        tasks.spawn(async move {
            ops::poll_depths(js, &r, ops::stopped(rx)).await;
            Ok(())
        });
        if let Some(role) = roles.iter().find(|r| r.needs_servers()) {
            if !roles.iter().any(|r| matches!(r, Role::Api)) {
                let pool = pool(cfg)?;
                let (r, rx) = (registry.clone(), stop.clone());
                ops_task = ops::serve_ops(cfg, role.name(), client, pool, r, rx).await?;
            }
        }
    }
    for (role, settings) in roles.iter().zip(prepared) {
        let (cfg, r, rx) = (cfg.clone(), registry.clone(), stop.clone());
        let name = role.name();
        tasks.spawn(async move {
            let stop = ops::stopped(rx);
            run(&cfg, settings, r, stop).await.context(name)
        });
    }
    let outcome = tokio::select! {
        _ = shutdown => Ok(()),
        r = tasks.join_next() => match r {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow::anyhow!("a role panicked: {e}")),
            _ => Err(anyhow::anyhow!("a role stopped unexpectedly")),
        },
    };
    let _ = stop_tx.send(true);
    let drain = tokio::time::timeout(cfg.shutdown_timeout() + Duration::from_secs(5), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %format!("{e:#}"), "role stopped with an error");
            }
        }
    });
    let _ = drain.await;
    if let Some(t) = ops_task {
        let _ = t.await;
    }
    outcome
}

/// Runs one prepared role until `stop`.
async fn run(
    cfg: &Config,
    settings: Prepared,
    registry: Registry,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    match settings {
        Prepared::Api(s) => run_api(cfg, *s, registry, stop).await,
        Prepared::Batcher(s) => run_batcher(cfg, s, registry, stop).await,
        Prepared::Workers(s) => run_workers(cfg, *s, registry, stop).await,
        Prepared::MockProvider => crate::mock::serve(cfg, stop).await,
    }
}

fn pool(cfg: &Config) -> anyhow::Result<quizflow_store::Pool> {
    let url = required(&cfg.database_url, "DATABASE_URL")?;
    Ok(quizflow_store::pool(url, cfg.db_pool_size))
}

/// Refuses to start with a `QUIZFLOW_HASH_KEY` other than the one the database's suppression
/// list was made with: every check would miss, and opted-out people would be messaged. Waits
/// for the database like the roles do (it may start after them).
pub async fn check_hash_key(cfg: &Config, pool: &quizflow_store::Pool) -> anyhow::Result<()> {
    let fingerprint = cfg.hash_key()?.fingerprint();
    let mut delay = Duration::from_millis(200);
    let matches = loop {
        let checked = match pool.get().await {
            Ok(mut conn) => {
                quizflow_store::consent::hash_key_matches(&mut conn, &fingerprint).await
            }
            Err(e) => Err(e.into()),
        };
        match checked {
            Ok(m) => break m,
            Err(e) if e.retry() == quizflow_store::Retry::Later => {
                tracing::warn!(error = %e, "cannot check QUIZFLOW_HASH_KEY yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    anyhow::ensure!(
        matches,
        "QUIZFLOW_HASH_KEY differs from the key this database's suppression list was made with: \
         with it, opted-out contacts would not be recognised. Start with the original key (a \
         rotation needs every entry re-made from its contact, which quizflow does not hold)"
    );
    Ok(())
}

pub async fn connect_nats(
    cfg: &Config,
    role: &str,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    connect_nats_at(cfg, required(&cfg.nats_url, "NATS_URL")?, role).await
}

/// [`connect_nats`] to a server other than the configured one (a private one).
pub async fn connect_nats_at(
    cfg: &Config,
    url: &str,
    role: &str,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let settings = cfg.nats_settings(url, role)?;
    let client = quizflow_nats::connect(&settings).await?;
    let js = quizflow_nats::jetstream(client.clone(), &settings);
    Ok((client, js))
}

/// Ensures the topology, retrying while NATS is not reachable yet.
pub async fn ensure_topology(
    cfg: &Config,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match quizflow_nats::ensure_topology(js, &cfg.topology()).await {
            Ok(()) => return Ok(()),
            Err(e @ quizflow_nats::NatsError::ServerTooOld { .. }) => return Err(e.into()),
            Err(e) if attempt < 30 => {
                tracing::warn!(error = %e, attempt, "stream topology not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn run_api(
    cfg: &Config,
    settings: quizflow_api::ApiSettings,
    registry: Registry,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (client, js) = connect_nats(cfg, "api").await?;
    ensure_topology(cfg, &js).await?;
    if settings.admin_token.is_none() {
        tracing::warn!("QUIZFLOW_ADMIN_TOKEN is not set: every admin route answers 401");
    }
    let pool = pool(cfg)?;
    check_hash_key(cfg, &pool).await?;
    let state = quizflow_api::AppState::with_registry(
        settings.clone(),
        client.clone(),
        js,
        pool,
        registry,
    )?;
    let bound = quizflow_api::bind(&settings.http_addr).await?;
    quizflow_api::serve(bound, state, stop).await?;
    // Flush anything the client still holds before exiting.
    let _ = client.flush().await;
    Ok(())
}

async fn run_batcher(
    cfg: &Config,
    settings: quizflow_batcher::BatcherSettings,
    registry: Registry,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (client, js) = connect_nats(cfg, "batcher").await?;
    ensure_topology(cfg, &js).await?;
    let pool = pool(cfg)?;
    check_hash_key(cfg, &pool).await?;
    let batcher = quizflow_batcher::Batcher::new(settings, client.clone(), js, pool);
    batcher.metrics().register(&registry)?;
    batcher.run(stop).await?;
    let _ = client.flush().await;
    Ok(())
}

async fn run_workers(
    cfg: &Config,
    settings: quizflow_workers::WorkerSettings,
    registry: Registry,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (client, js) = connect_nats(cfg, "workers").await?;
    ensure_topology(cfg, &js).await?;
    let pool = pool(cfg)?;
    check_hash_key(cfg, &pool).await?;
    quizflow_workers::run(settings, js, pool, registry, stop).await?;
    let _ = client.flush().await;
    Ok(())
}
