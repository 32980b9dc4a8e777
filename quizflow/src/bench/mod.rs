//! `quizflow bench …`: each benchmark against a private deployment (nats-server with the
//! fsync policy asked for, PostgreSQL migrated, streams created) unless servers are given.
//! Built with the default-on `bench` feature; an image may leave it out.

mod e2e;
mod limits;
mod senders;

use crate::config::Config;
use crate::devservices::DevServices;
use crate::roles::{connect_nats_at, ensure_topology};
use crate::up::dev_services;
use quizflow_benchmarks::BenchKind;
use std::time::Duration;

pub async fn run(cfg: Config, kind: BenchKind) -> anyhow::Result<()> {
    match kind {
        BenchKind::Ingest(args) => ingest(cfg, args).await,
        BenchKind::Deliveries(args) => bench_deliveries(cfg, args).await,
        BenchKind::Store(args) => bench_store(cfg, args).await,
        BenchKind::Erase(args) => bench_erase(cfg, args).await,
        BenchKind::Schedules(args) => bench_schedules(cfg, args).await,
        BenchKind::Replay(args) => bench_replay(cfg, args).await,
        BenchKind::E2e(args) => e2e::run(cfg, args).await,
        BenchKind::Limits(args) => limits::run(cfg, args).await,
        BenchKind::Senders(args) => senders::run(cfg, args).await,
    }
}

/// Runs a benchmark against a private deployment (nats-server with the given fsync policy,
/// PostgreSQL migrated, streams created), stops it, and writes `bench-out/<name>.json` and
/// `.md` (printing the Markdown).
pub async fn bench_private<R, F, Fut>(
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
        let (client, js) = connect_nats_at(cfg, &nats_url, "bench").await?;
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
        let (_client, js) = connect_nats_at(&cfg, &nats_url, "bench").await?;
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

async fn ingest(cfg: Config, args: quizflow_benchmarks::IngestArgs) -> anyhow::Result<()> {
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
                .env("QUIZFLOW_HASH_KEY", e2e::BENCH_HASH_KEY)
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
