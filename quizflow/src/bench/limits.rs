//! `quizflow bench limits`: a private deployment (nats-server, PostgreSQL, `quizflow api` and
//! `batcher`), a backlog of SMS jobs, then 1, 2 and 4 `quizflow workers` processes in turn
//! against a sink; see [`quizflow_benchmarks::limits`].

use super::e2e::{spawn, start_private, wait_ready, Private};
use crate::config::Config;
use crate::devservices::DevServices;
use anyhow::Context;
use quizflow_benchmarks::e2e::{batch_body, Load, Sink, BODY_PREFIX};
use quizflow_benchmarks::limits::{self, LimitsArgs, LimitsReport, Phase};
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Seconds each process count settles (joins seen, shares applied) before it is measured.
const SETTLE: u64 = 4;
/// How long the survivors are watched after the kill.
const WATCH_AFTER_KILL: Duration = Duration::from_secs(12);

/// The benchmark's SMS campaign: every lead of the load matches it.
async fn create_campaign(http: &reqwest::Client, api: &str, token: &str) -> anyhow::Result<()> {
    let r = http
        .post(format!("{api}/v1/campaigns"))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "name": "bench limits",
            "match": {"all": [{"field": "answers.q1", "op": "eq", "value": "b"}]},
            "actions": [{"channel": "sms", "template": format!("{BODY_PREFIX}{{{{ submission_id }}}}")}]
        }))
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 201, "campaign: {}", r.text().await?);
    Ok(())
}

/// `backlog` leads posted in batches of 500 and stored before any worker starts.
pub(super) async fn store_backlog(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    backlog: usize,
) -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple();
    let load = Load::generate(backlog, 20, 1.0, &format!("lim{run}"));
    let idx: Vec<usize> = (0..backlog).collect();
    for chunk in idx.chunks(500) {
        let r = http
            .post(format!("{api}/v1/submissions/batch"))
            .header("content-type", "application/json")
            .body(batch_body(&load, chunk))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "batch: {}", r.status());
    }
    wait_stored(http, api, token, backlog as u64).await
}

/// One phase: `n` workers processes settle, then the sink's arrivals over `window` seconds.
async fn measure(sink: &Sink, n: usize, window: u64, limit: f64) -> anyhow::Result<Phase> {
    tokio::time::sleep(Duration::from_secs(SETTLE)).await;
    let _ = sink.received.lock().map(|mut r| r.take_max_inflight());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let (arrivals, max_inflight) = match sink.received.lock() {
        Ok(mut r) => (r.arrivals(), r.take_max_inflight()),
        Err(_) => anyhow::bail!("sink poisoned"),
    };
    let sent = limits::rate_in(&arrivals, t0, Duration::from_secs(window));
    println!("{n} workers processes: {sent:.1} sent/s ({:.0} % of {limit:.0}/s), at most {max_inflight} in flight", sent / limit * 100.0);
    Ok(Phase {
        processes: n,
        sent_per_s: sent,
        of_limit: sent / limit,
        max_inflight,
    })
}

/// Kill -9 one workers process: its share must come back to the others. The report, with
/// the rate just after the kill and how long the rest took to reach 90 % of the limit.
async fn after_kill(
    sink: &Sink,
    workers: &mut [Child],
    args: &LimitsArgs,
    limit: f64,
    phases: Vec<Phase>,
) -> anyhow::Result<LimitsReport> {
    let killed_at = Instant::now();
    if let Some(w) = workers.last_mut() {
        w.start_kill()?;
    }
    tokio::time::sleep(WATCH_AFTER_KILL).await;
    let (arrivals, duplicates) = match sink.received.lock() {
        Ok(r) => (r.arrivals(), r.duplicates()),
        Err(_) => anyhow::bail!("sink poisoned"),
    };
    let second = Duration::from_secs(1);
    Ok(LimitsReport {
        rate_limit: args.rate,
        concurrency: args.concurrency,
        sink_latency_ms: args.sink_latency_ms,
        phases,
        after_kill_per_s: limits::rate_in(&arrivals, killed_at, second),
        recovery_s: limits::recovered_after(
            &arrivals,
            killed_at,
            second,
            0.9 * limit,
            WATCH_AFTER_KILL,
        ),
        duplicates,
    })
}

/// `quizflow api` (respondent and IP limits off: the load is one client) and `batcher` on the
/// private deployment, the API ready: its client and address.
pub(super) async fn api_and_batcher(
    private: &Private,
    children: &mut Vec<Child>,
) -> anyhow::Result<(reqwest::Client, String)> {
    let mut api_env = private.api_env();
    api_env.extend([
        ("QUIZFLOW_RATE_LIMIT_RESPONDENT_PER_MIN", "0".into()),
        ("QUIZFLOW_RATE_LIMIT_IP_PER_MIN", "0".into()),
    ]);
    children.push(spawn(&["api"], &api_env)?);
    children.push(spawn(&["batcher"], &private.common())?);
    let api = format!("http://127.0.0.1:{}", private.port);
    let http = reqwest::Client::new();
    wait_ready(&http, &api).await?;
    Ok((http, api))
}

pub async fn run(cfg: Config, args: LimitsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.processes.is_empty() && args.processes.iter().all(|p| *p > 0),
        "--processes: one or more positive counts"
    );
    let latency = Duration::from_millis(args.sink_latency_ms);
    let sink = Sink::start_with_latency(latency).await?;
    let tmp = tempfile::tempdir()?;
    let mut dev = DevServices::none();
    let mut children: Vec<Child> = Vec::new();
    let result = async {
        // Fsync is not what is measured here.
        let private = start_private(&cfg, &mut dev, tmp.path(), false).await?;
        let token = private.token.clone();
        let (http, api) = api_and_batcher(&private, &mut children).await?;
        create_campaign(&http, &api, &token).await?;

        // What can be reached: the rate, or the concurrency over the sink's latency.
        let limit = if latency.is_zero() {
            f64::from(args.rate)
        } else {
            f64::from(args.rate).min(args.concurrency as f64 / latency.as_secs_f64())
        };
        // A backlog longer than the whole run at the limit, stored before any worker starts.
        let phases = args.processes.len() as u64;
        let run_s = phases * (SETTLE + args.window) + WATCH_AFTER_KILL.as_secs() + 10;
        let backlog = (limit * run_s as f64 * 1.2) as usize + 500;
        store_backlog(&http, &api, &token, backlog).await?;
        println!("backlog: {backlog} SMS jobs stored and queued");

        let mut workers_env = private.sms_workers_env(&sink.url, &args.rate.to_string());
        workers_env.push(("QUIZFLOW_WORKER_CONCURRENCY", args.concurrency.to_string()));
        let mut workers: Vec<Child> = Vec::new();
        let mut out = Vec::new();
        for &n in &args.processes {
            while workers.len() < n {
                workers.push(spawn(&["workers", "--channels", "sms"], &workers_env)?);
            }
            while workers.len() > n {
                if let Some(mut w) = workers.pop() {
                    terminate(&mut w).await;
                }
            }
            out.push(measure(&sink, n, args.window, limit).await?);
        }
        let report = after_kill(&sink, &mut workers, &args, limit, out).await?;
        children.extend(workers);
        anyhow::Ok(report)
    }
    .await;
    for mut c in children {
        let _ = c.kill().await;
    }
    dev.stop().await;
    let report = result?;
    report.write(&args.out)?;
    println!("{}", report.markdown());
    println!("wrote {}", args.out.join("limits-report.json").display());
    Ok(())
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(35), child.wait()).await;
}

async fn wait_stored(http: &reqwest::Client, api: &str, token: &str, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats: serde_json::Value = http
            .get(format!("{api}/v1/stats"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await
            .context("stats")?;
        if stats["submissions"]["stored"].as_u64().unwrap_or(0) >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the backlog was not stored in 2 minutes: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
