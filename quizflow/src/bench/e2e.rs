//! `quizflow bench e2e`: starts the pipeline as it is deployed — private nats-server (fsync a
//! flag) and PostgreSQL, then `quizflow api`, `batcher` and `workers --channels sms` as
//! processes of their own, SMS pointed at the harness's sink — and hands it to
//! [`quizflow_benchmarks::e2e`].

use crate::config::Config;
use crate::devservices::DevServices;
use anyhow::Context;
use quizflow_benchmarks::e2e::{self, Deployment, E2eArgs, E2eReport, Sink};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The hash key of the benchmarks' private deployments (every role needs one).
pub(crate) const BENCH_HASH_KEY: &str = "quizflow-bench-hash-key-0123456789";

pub(crate) fn spawn(role: &[&str], env: &[(&str, String)]) -> anyhow::Result<Child> {
    let mut c = Command::new(std::env::current_exe()?);
    c.args(role)
        .env_remove("QUIZFLOW_CONFIG")
        .env("QUIZFLOW_HASH_KEY", BENCH_HASH_KEY)
        .env("RUST_LOG", "warn")
        .env("QUIZFLOW_METRICS_ADDR", "")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn()
        .with_context(|| format!("start quizflow {}", role.join(" ")))
}

/// A private nats-server and PostgreSQL, migrated, with the topology, and the API's port
/// and admin token chosen: what every benchmark that runs the roles as processes needs.
pub(crate) struct Private {
    pub nats_url: String,
    pub database_url: String,
    pub port: u16,
    pub token: String,
}

impl Private {
    /// The environment every role gets.
    pub fn common(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.nats_url.clone()),
            ("DATABASE_URL", self.database_url.clone()),
        ]
    }

    /// A workers process's: SMS through Twilio's API at `sink`, at most `rate` a second.
    pub fn sms_workers_env(&self, sink: &str, rate: &str) -> Vec<(&'static str, String)> {
        let mut env = self.common();
        env.extend([
            ("QUIZFLOW_TWILIO_URL", sink.to_owned()),
            ("QUIZFLOW_TWILIO_ACCOUNT_SID", "ACbench".into()),
            ("QUIZFLOW_TWILIO_AUTH_TOKEN", "bench".into()),
            ("QUIZFLOW_TWILIO_FROM", "+15550001111".into()),
            ("QUIZFLOW_PROVIDER_RATE_PER_SEC", rate.to_owned()),
        ]);
        env
    }

    /// The API's: the common environment, its address and the admin token.
    pub fn api_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.common();
        env.extend([
            ("QUIZFLOW_HTTP_ADDR", format!("127.0.0.1:{}", self.port)),
            ("QUIZFLOW_ADMIN_TOKEN", self.token.clone()),
        ]);
        env
    }
}

pub(crate) async fn start_private(
    cfg: &Config,
    dev: &mut DevServices,
    dir: &std::path::Path,
    fsync_always: bool,
) -> anyhow::Result<Private> {
    let nats_url = dev
        .start_nats(dir, cfg.nats_server_bin.as_deref(), fsync_always)
        .await?;
    let database_url = dev.start_postgres(dir).await?;
    quizflow_migrations::run_migrations(&database_url).await?;
    let (_client, js) = crate::roles::connect_nats_at(cfg, &nats_url, "bench").await?;
    crate::roles::ensure_topology(cfg, &js).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(Private {
        nats_url,
        database_url,
        port,
        token: format!("{}", uuid::Uuid::new_v4().simple()),
    })
}

/// The workers' environment, and the consent state the run measures with (`--suppressed`,
/// `--frequency-cap`). The sink has no rate limit; quizflow's own bucket is not measured.
async fn consent(
    args: &E2eArgs,
    private: &Private,
    sink: &Sink,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut env = private.sms_workers_env(&sink.url, "1000000");
    if let Some(cap) = &args.frequency_cap {
        env.push(("QUIZFLOW_FREQUENCY_CAP_SMS", cap.clone()));
    }
    if args.suppressed > 0 {
        let started = Instant::now();
        suppress_strangers(&private.database_url, args.suppressed).await?;
        eprintln!(
            "bench: {} contacts suppressed in {:.1} s",
            args.suppressed,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(env)
}

/// Puts `n` contacts that are none of the leads on the SMS suppression list (what a deployment
/// with a long opt-out history carries): the match-time and pre-call checks look them up
/// on every lead without finding the lead.
async fn suppress_strangers(database_url: &str, n: usize) -> anyhow::Result<()> {
    let key = quizflow_core::consent::HashKey::new(BENCH_HASH_KEY).map_err(anyhow::Error::msg)?;
    let pool = quizflow_store::pool(database_url, 2);
    let entries: Vec<quizflow_store::consent::NewSuppression> = (0..n)
        .map(|i| quizflow_store::consent::NewSuppression {
            channel: "sms".into(),
            // Leads are +55119…; these are +1555… numbers.
            contact_hash: key
                .hash(quizflow_core::Channel::Sms, &format!("+1555{i:08}"))
                .map(|h| h.to_vec())
                .unwrap_or_default(),
            reason: "admin".into(),
            scope: "all".into(),
            source: "bench".into(),
        })
        .collect();
    quizflow_store::consent::import(&pool, &entries).await?;
    // As a deployment's long-standing list is: vacuumed and analysed (not by autovacuum in
    // the middle of the measurement).
    quizflow_store::consent::settle(&pool).await?;
    // Its pages written out now, not by a checkpoint during the measurement.
    quizflow_store::ceiling::checkpoint(&pool).await?;
    Ok(())
}

/// Waits (up to 30 s) for the API's `/readyz`.
pub(crate) async fn wait_ready(http: &reqwest::Client, api: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{api}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the API did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn plan_only(args: &E2eArgs, rate: f64) -> anyhow::Result<()> {
    let path = args.report.as_ref().context("--report")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let costs: Vec<e2e::RoleCost> = json["cpu_ms_per_lead"]
        .as_object()
        .context("the report has no cpu_ms_per_lead (a run with --target null measures no roles)")?
        .iter()
        .map(|(role, ms)| e2e::RoleCost {
            role: role.clone(),
            cpu_s_per_lead: ms.as_f64().unwrap_or(0.0) / 1000.0,
        })
        .collect();
    println!("{}", e2e::plan(&costs, rate, 0.7, 2.0).markdown());
    Ok(())
}

pub async fn run(cfg: Config, args: E2eArgs) -> anyhow::Result<()> {
    if let (Some(rate), Some(_)) = (args.plan, &args.report) {
        return plan_only(&args, rate).await;
    }
    let sink = Sink::start().await?;
    let report: E2eReport = match args.target.as_deref() {
        Some("null") => e2e::run_e2e(&args, None, &sink).await?,
        Some(other) => anyhow::bail!(
            "--target {other:?}: only `null` (the ceiling) is supported; without --target the pipeline is started"
        ),
        None => {
            let tmp = tempfile::tempdir()?;
            let mut dev = DevServices::none();
            let mut children = Vec::new();
            let result = async {
                let private = start_private(
                    &cfg,
                    &mut dev,
                    tmp.path(),
                    args.fsync == quizflow_benchmarks::Fsync::Always,
                )
                .await?;
                let (common, mut api_env) = (private.common(), private.api_env());
                let (port, token, database_url) =
                    (private.port, private.token.clone(), private.database_url.clone());
                match args.respondent_limit.as_deref() {
                    // Every lead is a distinct respondent, but the limit is not what is measured.
                    None => api_env.push(("QUIZFLOW_RATE_LIMIT_RESPONDENT_PER_MIN", "0".into())),
                    // Counted, never refused: what the count costs is what is measured.
                    Some(scope) => api_env.extend([
                        ("QUIZFLOW_RATE_LIMIT_RESPONDENT_PER_MIN", "1000".into()),
                        ("QUIZFLOW_RATE_LIMIT_SCOPE", scope.to_owned()),
                    ]),
                }
                let workers_env = consent(&args, &private, &sink).await?;
                let api = spawn(&["api"], &api_env)?;
                let batcher = spawn(&["batcher"], &common)?;
                let workers = spawn(&["workers", "--channels", "sms"], &workers_env)?;
                let mut processes = vec![
                    ("api".to_owned(), api.id().unwrap_or(0)),
                    ("batcher".to_owned(), batcher.id().unwrap_or(0)),
                    ("workers".to_owned(), workers.id().unwrap_or(0)),
                ];
                processes.extend(dev.pids().into_iter().map(|(n, p)| (n.to_owned(), p)));
                children.extend([api, batcher, workers]);
                let api_url = format!("http://127.0.0.1:{port}");
                wait_ready(&reqwest::Client::new(), &api_url).await?;
                let deployment = Deployment {
                    api: api_url,
                    admin_token: token,
                    database_url,
                    processes,
                };
                anyhow::Ok(e2e::run_e2e(&args, Some(&deployment), &sink).await?)
            }
            .await;
            for mut c in children {
                let _ = c.kill().await;
            }
            dev.stop().await;
            result?
        }
    };
    let written = report.write(&args.out)?;
    println!("{}", report.markdown());
    for path in written {
        println!("wrote {}", path.display());
    }
    if let Some(rate) = args.plan {
        if report.cpu_ms_per_lead.is_empty() {
            eprintln!("--plan: a run against --target null measures no quizflow roles");
        } else {
            println!("{}", e2e::plan(&report.costs(), rate, 0.7, 2.0).markdown());
        }
    }
    Ok(())
}
