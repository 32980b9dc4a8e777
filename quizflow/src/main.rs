//! The `quizflow` binary: one executable, one subcommand per role (SPEC §6).
//!
//! `up` is the development all-in-one; `api` is the intake role as deployed; `streams` and
//! `migrate` set up NATS and PostgreSQL; `bench` measures ingest.

mod bench_e2e;
mod bench_limits;
mod config;
mod devservices;
mod replay_cmd;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::Config;
use devservices::DevServices;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

// Per-request allocations dominate the API's user time under glibc malloc (measured with
// perf under `quizflow bench`); mimalloc is markedly cheaper for them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "quizflow",
    version,
    about = "Quiz submissions in, campaign messages out: NATS JetStream + PostgreSQL"
)]
struct Cli {
    /// Optional TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "QUIZFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Development all-in-one: starts private NATS and PostgreSQL unless NATS_URL /
    /// DATABASE_URL are set, migrates, creates the streams and serves the API.
    Up,
    /// Serve the HTTP intake API (needs NATS_URL and DATABASE_URL).
    Api,
    /// Store submissions in bulk, match campaigns and publish delivery jobs (needs NATS_URL
    /// and DATABASE_URL).
    Batcher,
    /// Deliver jobs through per-channel worker pools (needs NATS_URL and DATABASE_URL).
    Workers {
        /// Channels to serve (default: all).
        #[arg(long, value_delimiter = ',', value_parser = parse_channel)]
        channels: Vec<quizflow_core::Channel>,
        /// Send channels that have no provider configured to this mock provider (base URL,
        /// e.g. http://127.0.0.1:4010). Without it such a channel is a start-up error.
        #[arg(long, value_name = "URL")]
        mock_provider: Option<String>,
    },
    /// The bundled mock provider (Twilio, WhatsApp Cloud, Evolution, Resend and webhook
    /// shapes) on QUIZFLOW_MOCK_ADDR, with `/_mock/*` inspection and fault injection.
    MockProvider,
    /// Create or update the stream topology (needs NATS_URL).
    Streams,
    /// Check the configuration a role would start with, without starting it or connecting:
    /// unknown `QUIZFLOW_*` keys, invalid values, missing settings (`quizflow check workers
    /// --channels sms`). Exit status 0 when the role would start.
    Check {
        /// The role's command line, e.g. `api` or `workers --channels sms`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        role: Vec<String>,
    },
    /// Apply pending database migrations (needs DATABASE_URL).
    Migrate,
    /// Re-run campaign matching over historical submissions (the SUBMISSIONS stream, or the
    /// submissions table with --source postgres), creating only the deliveries that do not
    /// exist yet: idempotent, resumable, low priority by default.
    Replay(replay_cmd::ReplayArgs),
    /// Benchmarks: `ingest` (HTTP intake beside raw JetStream publishes) and `store` (the
    /// batcher's write path beside raw COPY). Private servers unless configured.
    #[command(subcommand)]
    Bench(quizflow_benchmarks::BenchKind),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // One clear line, no backtrace: a user typed something we cannot take.
            eprintln!("quizflow: {e:#}");
            std::process::exit(2);
        }
    };
    let service = match &cli.command {
        Command::Api => "quizflow-api",
        Command::Batcher => "quizflow-batcher",
        Command::Workers { .. } => "quizflow-workers",
        _ => "quizflow",
    };
    let format = if cfg.log_format == "json" {
        quizflow_telemetry::LogFormat::Json
    } else {
        quizflow_telemetry::LogFormat::Text
    };
    let telemetry = match quizflow_telemetry::init(format, service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("quizflow: {e}");
            std::process::exit(2);
        }
    };
    for key in Config::unknown_env_keys() {
        tracing::warn!(%key, "unknown QUIZFLOW_ variable ignored (typo?)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // One registry per process: in `up` every role's metrics are on the API's `/metrics`.
    let registry = quizflow_telemetry::prometheus::Registry::new();
    let mut telemetry = telemetry;
    // Outside the runtime: the exporter's blocking HTTP client must not be built inside it.
    if let Err(e) = telemetry.export_metrics(registry.clone()) {
        tracing::warn!(error = %e, "OTLP metrics export not started");
    }
    let outcome = runtime.block_on(async move {
        let r = match cli.command {
            Command::Up => up(cfg, registry).await,
            Command::Api => api(cfg, registry).await,
            Command::Batcher => batcher(cfg, registry).await,
            Command::Workers {
                channels,
                mock_provider,
            } => workers(cfg, channels, mock_provider, registry).await,
            Command::MockProvider => mock_provider(cfg, shutdown_signal()).await,
            Command::Streams => streams(cfg).await,
            Command::Check { role } => check(&cfg, &role),
            Command::Migrate => migrate(cfg).await,
            Command::Replay(args) => replay_cmd::run(cfg, args).await,
            Command::Bench(quizflow_benchmarks::BenchKind::Ingest(args)) => bench(cfg, args).await,
            Command::Bench(quizflow_benchmarks::BenchKind::Deliveries(args)) => {
                bench_deliveries(cfg, args).await
            }
            Command::Bench(quizflow_benchmarks::BenchKind::Store(args)) => {
                bench_store(cfg, args).await
            }
            Command::Bench(quizflow_benchmarks::BenchKind::Erase(args)) => {
                bench_erase(cfg, args).await
            }
            Command::Bench(quizflow_benchmarks::BenchKind::Schedules(args)) => {
                bench_schedules(cfg, args).await
            }
            Command::Bench(quizflow_benchmarks::BenchKind::Replay(args)) => {
                bench_replay(cfg, args).await
            }
            Command::Bench(quizflow_benchmarks::BenchKind::E2e(args)) => {
                bench_e2e::run(cfg, args).await
            }
            Command::Bench(quizflow_benchmarks::BenchKind::Limits(args)) => {
                bench_limits::run(cfg, args).await
            }
        };
        // Exporters flush on a thread of their own; not on the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        r
    });
    outcome
}

/// Polls stream and consumer depths into the `quizflow_consumer_*` gauges every 5 s, until
/// `stop` resolves.
async fn poll_depths(
    js: async_nats::jetstream::Context,
    registry: &quizflow_telemetry::prometheus::Registry,
    stop: impl std::future::Future<Output = ()>,
) {
    let gauges = match quizflow_telemetry::DepthGauges::register(registry) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "consumer depth gauges not registered");
            return;
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        match quizflow_nats::depths(&js).await {
            Ok(d) => {
                for s in &d.streams {
                    gauges.set_stream(&s.stream, s.messages);
                }
                for c in &d.consumers {
                    gauges.set_consumer(c);
                }
            }
            Err(e) => tracing::debug!(error = %e, "consumer depths not read"),
        }
    }
}

/// [`poll_depths`] on a task of its own until `stop` turns true.
fn spawn_depth_poller(
    js: async_nats::jetstream::Context,
    registry: quizflow_telemetry::prometheus::Registry,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        poll_depths(js, &registry, async move {
            let _ = stop.wait_for(|v| *v).await;
        })
        .await
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` for a role running alone, with the depth
/// poller, until `stop` fires. Nothing when `metrics_addr` is empty.
#[allow(clippy::too_many_arguments)]
async fn role_ops(
    cfg: &Config,
    role: &str,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    pool: quizflow_store::Pool,
    registry: quizflow_telemetry::prometheus::Registry,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let poller = spawn_depth_poller(js, registry.clone(), stop.clone());
    let Some(addr) = cfg.metrics_addr_for(role) else {
        return Ok(poller);
    };
    let ready: quizflow_telemetry::ReadyCheck = std::sync::Arc::new(move || {
        let (client, pool) = (client.clone(), pool.clone());
        Box::pin(async move {
            let mut down = Vec::new();
            if client.connection_state() != async_nats::connection::State::Connected {
                down.push("nats".to_owned());
            }
            if !matches!(
                tokio::time::timeout(Duration::from_secs(2), quizflow_store::ping(&pool)).await,
                Ok(Ok(()))
            ) {
                down.push("postgres".to_owned());
            }
            down
        })
    });
    let (_, serve) =
        quizflow_telemetry::serve_ops(&addr, registry, ready, async move {
            let mut stop = stop;
            let _ = stop.wait_for(|v| *v).await;
        })
            .await
            .with_context(|| {
                format!("{role} metrics: set QUIZFLOW_METRICS_ADDR to a free address, or empty to switch them off")
            })?;
    Ok(tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
        let _ = poller.await;
    }))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// `quizflow check <role…>`: builds the role's settings as its start would.
fn check(cfg: &Config, role: &[String]) -> anyhow::Result<()> {
    let unknown = Config::unknown_env_keys();
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown variables (typos?): {}",
        unknown.join(", ")
    );
    let cli =
        Cli::try_parse_from(std::iter::once("quizflow".to_owned()).chain(role.iter().cloned()))?;
    match cli.command {
        Command::Api => {
            required(&cfg.nats_url, "NATS_URL")?;
            required(&cfg.database_url, "DATABASE_URL")?;
            cfg.api_settings()?;
        }
        Command::Batcher => {
            required(&cfg.nats_url, "NATS_URL")?;
            required(&cfg.database_url, "DATABASE_URL")?;
            cfg.batcher_settings();
        }
        Command::Workers {
            channels,
            mock_provider,
        } => {
            required(&cfg.nats_url, "NATS_URL")?;
            required(&cfg.database_url, "DATABASE_URL")?;
            let channels = if channels.is_empty() {
                quizflow_core::Channel::ALL.to_vec()
            } else {
                channels
            };
            cfg.worker_settings(channels, mock_provider.as_deref())?;
        }
        Command::Migrate => {
            required(&cfg.database_url, "DATABASE_URL")?;
        }
        Command::Streams => {
            required(&cfg.nats_url, "NATS_URL")?;
        }
        Command::Up | Command::MockProvider => {}
        Command::Check { .. } | Command::Replay(_) | Command::Bench(_) => anyhow::bail!(
            "check takes a role: api, batcher, workers, migrate, streams, mock-provider or up"
        ),
    }
    println!(
        "ok: quizflow {} would start with this configuration",
        role.join(" ")
    );
    Ok(())
}

fn required<'a>(value: &'a Option<String>, name: &str) -> anyhow::Result<&'a str> {
    value
        .as_deref()
        .with_context(|| format!("{name} is not set"))
}

async fn connect_nats(
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
async fn ensure_topology(cfg: &Config, js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
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
    nats_url: &str,
    database_url: &str,
    registry: quizflow_telemetry::prometheus::Registry,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (client, js) = connect_nats(cfg, nats_url, "api").await?;
    ensure_topology(cfg, &js).await?;
    let settings = cfg.api_settings()?;
    if settings.admin_token.is_none() {
        tracing::warn!("QUIZFLOW_ADMIN_TOKEN is not set: every admin route answers 401");
    }
    let pool = quizflow_store::pool(database_url, cfg.db_pool_size);
    let state = quizflow_api::AppState::with_registry(
        settings.clone(),
        client.clone(),
        js,
        pool,
        registry,
    )?;
    let bound = quizflow_api::bind(&settings.http_addr).await?;
    quizflow_api::serve(bound, state, shutdown).await?;
    // Flush anything the client still holds before exiting.
    let _ = client.flush().await;
    Ok(())
}

async fn api(
    cfg: Config,
    registry: quizflow_telemetry::prometheus::Registry,
) -> anyhow::Result<()> {
    let nats_url = required(&cfg.nats_url, "NATS_URL")?.to_owned();
    let database_url = required(&cfg.database_url, "DATABASE_URL")?.to_owned();
    let (_client, js) = connect_nats(&cfg, &nats_url, "api-depths").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = spawn_depth_poller(js, registry.clone(), stop_rx);
    let r = run_api(&cfg, &nats_url, &database_url, registry, shutdown_signal()).await;
    let _ = stop_tx.send(true);
    let _ = poller.await;
    r
}

/// `ops`: serve `/metrics` etc. on `metrics_addr` (a role running alone), or not (`up`).
async fn run_batcher(
    cfg: &Config,
    nats_url: &str,
    database_url: &str,
    registry: quizflow_telemetry::prometheus::Registry,
    ops: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (client, js) = connect_nats(cfg, nats_url, "batcher").await?;
    ensure_topology(cfg, &js).await?;
    let pool = quizflow_store::pool(database_url, cfg.db_pool_size);
    let batcher = quizflow_batcher::Batcher::new(
        cfg.batcher_settings(),
        client.clone(),
        js.clone(),
        pool.clone(),
    );
    batcher.metrics().register(&registry)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ops = if ops {
        Some(role_ops(cfg, "batcher", client.clone(), js, pool, registry, stop_rx).await?)
    } else {
        None
    };
    let r = batcher.run(shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(o) = ops {
        let _ = o.await;
    }
    r?;
    let _ = client.flush().await;
    Ok(())
}

async fn batcher(
    cfg: Config,
    registry: quizflow_telemetry::prometheus::Registry,
) -> anyhow::Result<()> {
    let nats_url = required(&cfg.nats_url, "NATS_URL")?.to_owned();
    let database_url = required(&cfg.database_url, "DATABASE_URL")?.to_owned();
    run_batcher(
        &cfg,
        &nats_url,
        &database_url,
        registry,
        true,
        shutdown_signal(),
    )
    .await
}

fn parse_channel(raw: &str) -> Result<quizflow_core::Channel, String> {
    quizflow_core::Channel::parse(raw)
        .ok_or_else(|| format!("unknown channel {raw:?}: sms, email, whatsapp or webhook"))
}

#[allow(clippy::too_many_arguments)]
async fn run_workers(
    cfg: &Config,
    channels: Vec<quizflow_core::Channel>,
    mock: Option<&str>,
    nats_url: &str,
    database_url: &str,
    registry: quizflow_telemetry::prometheus::Registry,
    ops: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let channels = if channels.is_empty() {
        quizflow_core::Channel::ALL.to_vec()
    } else {
        channels
    };
    let settings = cfg.worker_settings(channels, mock)?;
    let (client, js) = connect_nats(cfg, nats_url, "workers").await?;
    ensure_topology(cfg, &js).await?;
    let pool = quizflow_store::pool(database_url, cfg.db_pool_size);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ops = if ops {
        Some(
            role_ops(
                cfg,
                "workers",
                client.clone(),
                js.clone(),
                pool.clone(),
                registry.clone(),
                stop_rx,
            )
            .await?,
        )
    } else {
        None
    };
    let r = quizflow_workers::run(settings, js, pool, registry, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(o) = ops {
        let _ = o.await;
    }
    r?;
    let _ = client.flush().await;
    Ok(())
}

async fn workers(
    cfg: Config,
    channels: Vec<quizflow_core::Channel>,
    mock: Option<String>,
    registry: quizflow_telemetry::prometheus::Registry,
) -> anyhow::Result<()> {
    let nats_url = required(&cfg.nats_url, "NATS_URL")?.to_owned();
    let database_url = required(&cfg.database_url, "DATABASE_URL")?.to_owned();
    run_workers(
        &cfg,
        channels,
        mock.as_deref(),
        &nats_url,
        &database_url,
        registry,
        true,
        shutdown_signal(),
    )
    .await
}

/// A secret `up` derives from its admin token when none is configured: stable across
/// restarts of the same data dir, different per purpose.
fn derive_secret(slot: &mut Option<String>, token: &str, purpose: &str) {
    if slot.is_none() {
        *slot = Some(quizflow_core::signatures::hub(token, purpose.as_bytes()));
    }
}

async fn mock_provider(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use poem::listener::{Acceptor, Listener};
    let acceptor = poem::listener::TcpListener::bind(cfg.mock_addr.clone())
        .into_acceptor()
        .await
        .with_context(|| format!("mock provider cannot listen on {}", cfg.mock_addr))?;
    let smtp = tokio::net::TcpListener::bind(&cfg.mock_smtp_addr)
        .await
        .with_context(|| format!("mock SMTP cannot listen on {}", cfg.mock_smtp_addr))?;
    tracing::info!(addr = ?acceptor.local_addr(), smtp = %cfg.mock_smtp_addr, "mock provider listening");
    let state = quizflow_mock_provider::MockState::default();
    if cfg.mock_callbacks {
        // Every accepted message is reported delivered a moment later (PUT /_mock/callbacks
        // changes the share, the delay and the outcome).
        let public = cfg.public_url.clone().unwrap_or_default();
        state.set_callbacks(quizflow_mock_provider::Callbacks {
            share: 1.0,
            delay_ms: 200,
            status: None,
            whatsapp_url: Some(format!("{public}/v1/callbacks/whatsapp")),
            whatsapp_app_secret: cfg.whatsapp_app_secret.clone(),
            email_url: Some(format!("{public}/v1/callbacks/email")),
            email_secret: cfg.email_webhook_secret.clone(),
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let smtp_task = tokio::spawn(quizflow_mock_provider::serve_smtp(
        smtp,
        state.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    quizflow_mock_provider::serve(acceptor, state, shutdown).await?;
    let _ = stop_tx.send(());
    let _ = smtp_task.await;
    Ok(())
}

async fn streams(cfg: Config) -> anyhow::Result<()> {
    let url = required(&cfg.nats_url, "NATS_URL")?.to_owned();
    let (_client, js) = connect_nats(&cfg, &url, "streams").await?;
    quizflow_nats::ensure_topology(&js, &cfg.topology()).await?;
    println!("streams SUBMISSIONS, DELIVERIES, DEAD_LETTERS and their consumers are in place (replicas: {})", cfg.stream_replicas);
    Ok(())
}

async fn migrate(cfg: Config) -> anyhow::Result<()> {
    let url = required(&cfg.database_url, "DATABASE_URL")?;
    let applied = quizflow_migrations::run_migrations(url).await?;
    println!("{} migration(s) applied", applied.len());
    Ok(())
}

/// Reads or creates the admin token kept in the data dir (mode 0600).
fn admin_token(cfg: &Config) -> anyhow::Result<String> {
    if let Some(t) = &cfg.admin_token {
        return Ok(t.clone());
    }
    let path = cfg.data_dir.join("admin-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if existing.trim().len() >= 16 {
            return Ok(existing.trim().to_owned());
        }
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

/// Starts private servers for whatever is not configured.
async fn dev_services(
    cfg: &Config,
    data_dir: &Path,
    sync_always: bool,
) -> anyhow::Result<(DevServices, String, String)> {
    let mut dev = DevServices::none();
    let nats_url = match &cfg.nats_url {
        Some(u) => u.clone(),
        None => {
            dev.start_nats(data_dir, cfg.nats_server_bin.as_deref(), sync_always)
                .await?
        }
    };
    let database_url = match &cfg.database_url {
        Some(u) => u.clone(),
        None => match dev.start_postgres(data_dir).await {
            Ok(u) => u,
            Err(e) => {
                dev.stop().await;
                return Err(e);
            }
        },
    };
    Ok((dev, nats_url, database_url))
}

async fn up(cfg: Config, registry: quizflow_telemetry::prometheus::Registry) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
    let data_dir = std::path::absolute(&cfg.data_dir)?;
    let token = admin_token(&cfg)?;
    let (mut dev, nats_url, database_url) = dev_services(&cfg, &data_dir, true).await?;
    // Where `quizflow replay` (and other one-off commands) find this deployment's servers.
    let env_file = data_dir.join(UP_ENV_FILE);
    if let Err(e) = write_private(
        &env_file,
        &format!("NATS_URL={nats_url}\nDATABASE_URL={database_url}\n"),
    ) {
        tracing::warn!(error = %e, "cannot write {}", env_file.display());
    }
    let result = async {
        let applied = quizflow_migrations::run_migrations(&database_url).await?;
        tracing::info!(applied = applied.len(), "database migrated");
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let mut cfg = cfg.clone();
        cfg.admin_token = Some(token.clone());
        // `up` delivers to its own mock on loopback (SPEC §6).
        cfg.webhook_allow_private = true;
        // The mock reports delivery back to this API, signed as each provider signs.
        cfg.public_url
            .get_or_insert_with(|| format!("http://{}", cfg.http_addr));
        derive_secret(&mut cfg.whatsapp_app_secret, &token, "whatsapp-app-secret");
        derive_secret(&mut cfg.whatsapp_verify_token, &token, "whatsapp-verify-token");
        derive_secret(&mut cfg.link_key, &token, "qr-link-key");
        if cfg.email_webhook_secret.is_none() {
            use base64::Engine;
            let key = quizflow_core::signatures::hub(&token, b"email-webhook-secret");
            cfg.email_webhook_secret = Some(format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ));
        }
        cfg.mock_callbacks = true;
        let mut roles = tokio::task::JoinSet::new();
        {
            let (cfg, n, d, rx) = (
                cfg.clone(),
                nats_url.clone(),
                database_url.clone(),
                shutdown_rx.clone(),
            );
            let r = registry.clone();
            roles.spawn(async move { run_api(&cfg, &n, &d, r, stop(rx)).await.context("api") });
        }
        {
            let (cfg, n, d, rx) = (
                cfg.clone(),
                nats_url.clone(),
                database_url.clone(),
                shutdown_rx.clone(),
            );
            let r = registry.clone();
            roles.spawn(async move {
                run_batcher(&cfg, &n, &d, r, false, stop(rx))
                    .await
                    .context("batcher")
            });
        }
        {
            let (cfg, rx) = (cfg.clone(), shutdown_rx.clone());
            roles.spawn(async move { mock_provider(cfg, stop(rx)).await.context("mock provider") });
        }
        {
            let (cfg, n, d, rx) = (
                cfg.clone(),
                nats_url.clone(),
                database_url.clone(),
                shutdown_rx.clone(),
            );
            let r = registry.clone();
            roles.spawn(async move {
                let mock = format!("http://{}", cfg.mock_addr);
                run_workers(&cfg, Vec::new(), Some(&mock), &n, &d, r, false, stop(rx))
                    .await
                    .context("workers")
            });
        }
        {
            // One depth poller for the whole of `up`; its gauges are on the API's /metrics.
            let (cfg, n, rx, r) = (cfg.clone(), nats_url.clone(), shutdown_rx.clone(), registry.clone());
            roles.spawn(async move {
                let (_client, js) = connect_nats(&cfg, &n, "depths").await?;
                poll_depths(js, &r, stop(rx)).await;
                Ok(())
            });
        }
        println!();
        println!("quizflow is up (api + batcher + workers + mock provider)");
        println!(
            "  API            http://{}  (dashboard: /, docs: /docs, spec: /openapi.json, metrics: /metrics)",
            cfg.http_addr
        );
        println!(
            "  mock provider  http://{}  (/_mock/messages)",
            cfg.mock_addr
        );
        println!("  NATS           {}", quizflow_nats::redact_url(&nats_url));
        println!("  PostgreSQL     {}", redact_pg(&database_url));
        println!("  data dir       {}", data_dir.display());
        println!(
            "  admin token    {token}  (also in {})",
            data_dir.join("admin-token").display()
        );
        println!("Ctrl-C stops everything.");
        println!();
        let outcome = tokio::select! {
            _ = shutdown_signal() => Ok(()),
            r = roles.join_next() => match r {
                Some(Ok(Err(e))) => Err(e),
                Some(Err(e)) => Err(anyhow::anyhow!("a role panicked: {e}")),
                _ => Err(anyhow::anyhow!("a role stopped unexpectedly")),
            },
        };
        let _ = shutdown_tx.send(true);
        let _ = tokio::time::timeout(cfg.shutdown_timeout() + Duration::from_secs(5), async {
            while let Some(r) = roles.join_next().await {
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "role stopped with an error");
                }
            }
        })
        .await;
        outcome?;
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&env_file);
    dev.stop().await;
    result
}

/// In `up`'s data dir while it runs: the servers it uses (`NATS_URL=…`, `DATABASE_URL=…`).
pub(crate) const UP_ENV_FILE: &str = "up.env";

/// Writes a file only its owner can read (it may name credentials).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// Runs a benchmark against a private deployment (nats-server with the given fsync policy,
/// PostgreSQL migrated, streams created), stops it, and writes `bench-out/<name>.json` and
/// `.md` (printing the Markdown).
async fn bench_private<R, F, Fut>(
    cfg: &Config,
    fsync: quizflow_benchmarks::Fsync,
    name: &str,
    run: F,
    markdown: impl Fn(&R) -> String,
) -> anyhow::Result<()>
where
    R: serde::Serialize,
    F: FnOnce(async_nats::Client, async_nats::jetstream::Context, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    let tmp = tempfile::tempdir()?;
    let always = fsync == quizflow_benchmarks::Fsync::Always;
    let (mut dev, nats_url, database_url) = dev_services(cfg, tmp.path(), always).await?;
    let result = async {
        quizflow_migrations::run_migrations(&database_url).await?;
        let (client, js) = connect_nats(cfg, &nats_url, "bench").await?;
        ensure_topology(cfg, &js).await?;
        run(client, js, database_url.clone()).await
    }
    .await;
    dev.stop().await;
    let report = result?;
    std::fs::create_dir_all("bench-out")?;
    std::fs::write(
        format!("bench-out/{name}.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(format!("bench-out/{name}.md"), markdown(&report))?;
    println!("{}", markdown(&report));
    Ok(())
}

async fn bench_replay(cfg: Config, args: quizflow_benchmarks::ReplayArgs) -> anyhow::Result<()> {
    let fsync = args.fsync;
    bench_private(
        &cfg,
        fsync,
        "replay",
        |client, js, db| async move {
            Ok(quizflow_benchmarks::run_replay(&args, client, js, &db).await?)
        },
        quizflow_benchmarks::ReplayReport::markdown,
    )
    .await
}

async fn bench_erase(cfg: Config, args: quizflow_benchmarks::EraseArgs) -> anyhow::Result<()> {
    let fsync = args.fsync;
    bench_private(
        &cfg,
        fsync,
        "erase",
        |client, js, db| async move {
            Ok(quizflow_benchmarks::run_erase(&args, client, js, &db).await?)
        },
        quizflow_benchmarks::EraseReport::markdown,
    )
    .await
}

async fn bench_schedules(
    cfg: Config,
    args: quizflow_benchmarks::SchedulesArgs,
) -> anyhow::Result<()> {
    let fsync = args.fsync;
    bench_private(
        &cfg,
        fsync,
        "schedules",
        |_client, js, db| async move {
            Ok(quizflow_benchmarks::run_schedules(&args, js, &db).await?)
        },
        quizflow_benchmarks::SchedulesReport::markdown,
    )
    .await
}

async fn bench_deliveries(
    cfg: Config,
    args: quizflow_benchmarks::DeliveriesArgs,
) -> anyhow::Result<()> {
    let mut dev = DevServices::none();
    let tmp = tempfile::tempdir()?;
    let mock_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut mock = tokio::process::Command::new(std::env::current_exe()?)
        .arg("mock-provider")
        .env("QUIZFLOW_MOCK_ADDR", format!("127.0.0.1:{mock_port}"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let result = async {
        let nats_url = dev
            .start_nats(tmp.path(), cfg.nats_server_bin.as_deref(), true)
            .await?;
        let database_url = dev.start_postgres(tmp.path()).await?;
        quizflow_migrations::run_migrations(&database_url).await?;
        let (_client, js) = connect_nats(&cfg, &nats_url, "bench").await?;
        ensure_topology(&cfg, &js).await?;
        let mock_url = format!("http://127.0.0.1:{mock_port}");
        anyhow::Ok(
            quizflow_benchmarks::run_deliveries(&args, &mock_url, &nats_url, &database_url).await?,
        )
    }
    .await;
    let _ = mock.kill().await;
    dev.stop().await;
    let report = result?;
    std::fs::create_dir_all("bench-out")?;
    std::fs::write(
        "bench-out/deliveries.json",
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write("bench-out/deliveries.md", report.markdown())?;
    println!("{}", report.markdown());
    Ok(())
}

async fn bench_store(cfg: Config, args: quizflow_benchmarks::StoreArgs) -> anyhow::Result<()> {
    let mut dev = DevServices::none();
    let tmp = tempfile::tempdir()?;
    let url = match &cfg.database_url {
        Some(u) => u.clone(),
        None => dev.start_postgres(tmp.path()).await?,
    };
    let result = async {
        quizflow_migrations::run_migrations(&url).await?;
        anyhow::Ok(quizflow_benchmarks::run_store(&args, &url).await?)
    }
    .await;
    dev.stop().await;
    let report = result?;
    std::fs::create_dir_all("bench-out")?;
    std::fs::write("bench-out/store.json", serde_json::to_vec_pretty(&report)?)?;
    std::fs::write("bench-out/store.md", report.markdown())?;
    println!("{}", report.markdown());
    Ok(())
}

fn redact_pg(url: &str) -> String {
    quizflow_nats::redact_url(url)
}

async fn bench(cfg: Config, args: quizflow_benchmarks::IngestArgs) -> anyhow::Result<()> {
    let mut dev = DevServices::none();
    let mut child = None;
    let tmp = tempfile::tempdir()?;
    let (api_url, nats_url) = match (&args.api, &args.nats) {
        (Some(a), Some(n)) => (a.clone(), n.clone()),
        (None, None) => {
            // A private deployment: servers here, the API as a separate process, so the load
            // generator and the API do not share a runtime.
            let nats_url = dev
                .start_nats(
                    tmp.path(),
                    cfg.nats_server_bin.as_deref(),
                    args.fsync == quizflow_benchmarks::Fsync::Always,
                )
                .await?;
            let database_url = dev.start_postgres(tmp.path()).await?;
            quizflow_migrations::run_migrations(&database_url).await?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let exe = std::env::current_exe()?;
            let c = tokio::process::Command::new(exe)
                .arg("api")
                .env("NATS_URL", &nats_url)
                .env("DATABASE_URL", &database_url)
                .env("QUIZFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("QUIZFLOW_RATE_LIMIT_RESPONDENT_PER_MIN", "0")
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .spawn()?;
            child = Some(c);
            (format!("http://127.0.0.1:{port}"), nats_url)
        }
        _ => anyhow::bail!("give both --api and --nats, or neither"),
    };
    let result = quizflow_benchmarks::run_ingest(&args, &api_url, &nats_url).await;
    if let Some(mut c) = child {
        if let Some(pid) = c.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
    }
    dev.stop().await;
    let report = result?;
    println!("{}", report.markdown());
    Ok(())
}
