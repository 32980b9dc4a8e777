//! The `quizflow` binary: one executable, one module per subcommand.
//!
//! `api`, `batcher`, `workers` and `mock-provider` each serve one role and `up` serves them
//! all, through one function ([`roles::serve_roles`]); `check` asks the code that starts a
//! role; `streams` and `migrate` set up NATS and PostgreSQL; `replay` re-runs matching;
//! `bench` (the default-on `bench` feature) measures.

#[cfg(feature = "bench")]
mod bench;
mod check;
mod config;
mod devservices;
mod mock;
mod ops;
mod replay;
mod respondents;
mod roles;
mod setup;
mod suppressions;
mod up;

use clap::{Parser, Subcommand};
use config::Config;
use std::path::PathBuf;

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
    Replay(replay::ReplayArgs),
    /// The suppression list: `import FILE.csv` adds an existing opt-out list (needs
    /// DATABASE_URL and QUIZFLOW_HASH_KEY, or a running `quizflow up`).
    #[command(subcommand)]
    Suppressions(suppressions::SuppressionsCommand),
    /// A person's data: `export --phone … [--email …] --out FILE` writes everything held on
    /// them (needs DATABASE_URL and QUIZFLOW_HASH_KEY, or a running `quizflow up`).
    #[command(subcommand)]
    Respondents(respondents::RespondentsCommand),
    /// Benchmarks: `ingest` (HTTP intake beside raw JetStream publishes) and `store` (the
    /// batcher's write path beside raw COPY). Private servers unless configured.
    #[cfg(feature = "bench")]
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
        let r = run(cli.command, cfg, registry).await;
        // Exporters flush on a thread of their own; not on the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        r
    });
    outcome
}

async fn run(
    command: Command,
    cfg: Config,
    registry: quizflow_telemetry::prometheus::Registry,
) -> anyhow::Result<()> {
    match command {
        Command::Up => up::up(cfg, registry).await,
        Command::Streams => setup::streams(cfg).await,
        Command::Migrate => setup::migrate(cfg).await,
        Command::Check { role } => check::check(&cfg, &role),
        Command::Replay(args) => replay::run(cfg, args).await,
        Command::Suppressions(cmd) => suppressions::run(cfg, cmd).await,
        Command::Respondents(cmd) => respondents::run(cfg, cmd).await,
        #[cfg(feature = "bench")]
        Command::Bench(kind) => bench::run(cfg, kind).await,
        Command::Api | Command::Batcher | Command::Workers { .. } | Command::MockProvider => {
            let roles: Vec<roles::Role> = command.role().into_iter().collect();
            roles::serve_roles(&cfg, &roles, registry, ops::shutdown_signal()).await
        }
    }
}

fn parse_channel(raw: &str) -> Result<quizflow_core::Channel, String> {
    quizflow_core::Channel::parse(raw)
        .ok_or_else(|| format!("unknown channel {raw:?}: sms, email, whatsapp or webhook"))
}
