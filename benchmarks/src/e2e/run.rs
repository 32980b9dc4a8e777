//! One measured run of `bench e2e`: warm-up, the load with a sampler beside it, the drain,
//! then the accounting (lost, duplicated) and the latencies.

use super::driver::{self, Load, Pacing, Sent};
use super::procs::{self, Usage};
use super::{
    account, counts, histogram, ms, Deployment, E2eArgs, E2eError, Point, RunResult, Sink,
};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// Where a run sends its load and what it accounts against.
pub(super) struct Target<'a> {
    pub name: &'a str,
    pub base: &'a str,
    pub deployment: Option<&'a Deployment>,
    pub sink: &'a Sink,
}

pub(super) async fn stats(http: &reqwest::Client, d: &Deployment) -> Option<serde_json::Value> {
    http.get(format!("{}/v1/stats", d.api))
        .bearer_auth(&d.admin_token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Copies per submission among `ids`, at the sink now.
fn copies(sink: &Sink, ids: &[Uuid]) -> HashMap<Uuid, usize> {
    let Ok(r) = sink.received.lock() else {
        return HashMap::new();
    };
    ids.iter()
        .filter_map(|id| r.by_submission.get(id).map(|v| (*id, v.len())))
        .collect()
}

fn delivered_among(sink: &Sink, ids: &HashSet<Uuid>) -> u64 {
    sink.received
        .lock()
        .map(|r| r.by_submission.keys().filter(|k| ids.contains(k)).count() as u64)
        .unwrap_or(0)
}

/// Waits until every expected message of `ids` arrived, or nothing arrived for a while, or
/// `limit` passed.
async fn drain(sink: &Sink, expected: &HashSet<Uuid>, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = (0u64, Instant::now());
    loop {
        let got = delivered_among(sink, expected);
        if got >= expected.len() as u64 || Instant::now() > deadline {
            return;
        }
        if got > last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            tracing::warn!(
                got,
                expected = expected.len(),
                "deliveries stopped arriving"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One measured run: warm-up, the load, the drain, the accounting.
pub(super) async fn run_once(
    t: Target<'_>,
    args: &E2eArgs,
    n: usize,
    pacing: Pacing,
    progress: &indicatif::ProgressBar,
) -> Result<RunResult, E2eError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?;
    // Each run's leads are its own (ids and idempotency keys never meet an earlier run's).
    let run = Uuid::new_v4().simple().to_string();
    warm_up(&http, &t, args, &run, progress).await?;

    let load = Load::generate(n, args.quizzes, args.match_share, &format!("m{run}"));
    let matching = load.matching();
    let procs: Vec<(String, u32)> = t
        .deployment
        .map(|d| d.processes.clone())
        .unwrap_or_default();
    let cpu_before: Vec<Usage> = procs.iter().map(|(_, p)| procs::tree(*p)).collect();

    let answered = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = tokio::spawn(sample(
        http.clone(),
        t.sink.clone(),
        matching.clone(),
        answered.clone(),
        t.deployment.map(Deployment::without_processes),
        procs.clone(),
        stop_rx,
    ));

    progress.set_length(n as u64);
    progress.set_position(0);
    progress.set_message(t.name.to_owned());
    let started = Instant::now();
    let tick = |k: usize| {
        answered.store(k, Ordering::Relaxed);
        progress.set_position(k as u64);
    };
    let sent = driver::drive(&http, t.base, &load, 0..n, pacing, args.batch, &tick).await;
    let accepted: Vec<bool> = sent.iter().map(|s| s.status == 202).collect();
    let accepted_ids = accepted_ids(&load, &accepted);
    let expected: HashSet<Uuid> = matching.intersection(&accepted_ids).copied().collect();
    progress.set_message(format!("{}: waiting for the last deliveries", t.name));
    drain(t.sink, &expected, *args.drain_timeout).await;
    let _ = stop_tx.send(true);
    let (series, peak) = sampler.await.map_err(|e| E2eError::Setup(e.to_string()))?;

    let stored = stored_among(t.deployment, &accepted_ids).await?;
    let received = copies(t.sink, &load.ids);
    let acc = account(
        &load.ids,
        &load.matches,
        &accepted,
        stored.as_ref(),
        &received,
    );
    let lat = Latencies::of(&sent, &load, started);
    let (e2e, last_delivery) = end_to_end(t.sink, &expected, &lat.accepted_at, started);
    let (cpu_s, peak_pss_mb) = cpu_and_memory(&procs, &cpu_before, &peak);
    Ok(Finished {
        name: t.name,
        n,
        accepted: accepted_ids.len() as u64,
        measured_stages: t.deployment.is_some(),
        acc,
        lat,
        e2e,
        last_delivery,
        started,
        series,
        cpu_s,
        peak_pss_mb,
    }
    .result())
}

/// The ids of the submissions answered 202.
fn accepted_ids(load: &Load, accepted: &[bool]) -> HashSet<Uuid> {
    load.ids
        .iter()
        .zip(accepted)
        .filter(|(_, a)| **a)
        .map(|(id, _)| *id)
        .collect()
}

/// CPU seconds each process spent in the run, and its peak memory (MiB).
fn cpu_and_memory(
    procs: &[(String, u32)],
    before: &[Usage],
    peak: &[u64],
) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let mut cpu_s = BTreeMap::new();
    let mut peak_pss_mb = BTreeMap::new();
    for (i, (role, pid)) in procs.iter().enumerate() {
        let after = procs::tree(*pid);
        cpu_s.insert(role.clone(), (after.cpu_s - before[i].cpu_s).max(0.0));
        peak_pss_mb.insert(role.clone(), peak[i] as f64 / (1024.0 * 1024.0));
    }
    (cpu_s, peak_pss_mb)
}

/// What a run measured, before it is summed up.
struct Finished<'a> {
    name: &'a str,
    n: usize,
    accepted: u64,
    /// Stored and enqueued rates are measured (a deployment, not the null target).
    measured_stages: bool,
    acc: super::Accounting,
    lat: Latencies,
    e2e: Histogram<u64>,
    last_delivery: Instant,
    started: Instant,
    series: Vec<Point>,
    cpu_s: BTreeMap<String, f64>,
    peak_pss_mb: BTreeMap<String, f64>,
}

impl Finished<'_> {
    fn result(self) -> RunResult {
        let started = self.started;
        let secs = |until: Instant| {
            until
                .saturating_duration_since(started)
                .as_secs_f64()
                .max(1e-3)
        };
        let series = &self.series;
        let per_s = |total: u64, reached: fn(&Point) -> u64| {
            self.measured_stages
                .then(|| series.iter().find(|p| reached(p) >= total))
                .flatten()
                .map(|p| total as f64 / p.t_s.max(1e-3))
        };
        let max_ms = |h: &Histogram<u64>| {
            if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            }
        };
        let (acc, lat) = (&self.acc, &self.lat);
        RunResult {
            target: self.name.to_owned(),
            submissions: self.n,
            accepted: self.accepted,
            accepted_per_s: self.accepted as f64 / secs(lat.last_accept),
            expected_messages: acc.expected_messages,
            delivered_messages: acc.delivered_messages,
            delivered_per_s: acc.delivered_messages as f64 / secs(self.last_delivery),
            stored_per_s: per_s(self.accepted, |p| p.stored),
            enqueued_per_s: per_s(acc.expected_messages, |p| p.enqueued),
            http_p50_ms: ms(&lat.http, 0.50),
            http_p95_ms: ms(&lat.http, 0.95),
            http_p99_ms: ms(&lat.http, 0.99),
            http_max_ms: max_ms(&lat.http),
            e2e_p50_ms: ms(&self.e2e, 0.50),
            e2e_p99_ms: ms(&self.e2e, 0.99),
            e2e_max_ms: max_ms(&self.e2e),
            lost_submissions: acc.lost_submissions,
            lost_messages: acc.lost_messages,
            duplicates: acc.duplicates,
            errors: lat.errors_by_status.values().sum(),
            errors_by_status: lat.errors_by_status.clone(),
            latency_series: lat
                .per_second
                .iter()
                .map(|(s, h)| (*s as f64, ms(h, 0.50), ms(h, 0.99)))
                .collect(),
            cpu_s: self.cpu_s,
            peak_pss_mb: self.peak_pss_mb,
            series: self.series,
        }
    }
}

/// Warm-up: the campaign is in every batcher, connections are open, and the path works.
async fn warm_up(
    http: &reqwest::Client,
    t: &Target<'_>,
    args: &E2eArgs,
    run: &str,
    progress: &indicatif::ProgressBar,
) -> Result<(), E2eError> {
    let warm = Load::generate(
        args.warmup,
        args.quizzes,
        args.match_share,
        &format!("w{run}"),
    );
    progress.set_message(format!("{}: warm-up", t.name));
    let closed = Pacing::Closed { concurrency: 64 };
    driver::drive(
        http,
        t.base,
        &warm,
        0..warm.len(),
        closed,
        args.batch,
        &|_| {},
    )
    .await;
    let warm_expected = warm.matching();
    drain(t.sink, &warm_expected, Duration::from_secs(120)).await;
    if delivered_among(t.sink, &warm_expected) < warm_expected.len() as u64 {
        return Err(E2eError::Setup(format!(
            "{}: the warm-up's messages did not all arrive; is the pipeline working?",
            t.name
        )));
    }
    Ok(())
}

/// The sampler beside a run: stored, queued and delivered twice a second, and the processes'
/// peak memory every 2 s, until `stop` (which takes one last sample: the run's end is in the
/// series).
async fn sample(
    http: reqwest::Client,
    sink: Sink,
    matching: HashSet<Uuid>,
    answered: Arc<AtomicUsize>,
    d: Option<Deployment>,
    procs: Vec<(String, u32)>,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Point>, Vec<u64>) {
    let t0 = Instant::now();
    let base = match &d {
        Some(d) => stats(&http, d)
            .await
            .map(|s| counts(&s))
            .unwrap_or_default(),
        None => (0, 0, 0),
    };
    let mut series = vec![Point {
        t_s: 0.0,
        accepted: 0,
        stored: 0,
        enqueued: 0,
        delivered: 0,
        queued: 0,
    }];
    let mut peak = vec![0u64; procs.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    for n in 1u64.. {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let delivered = delivered_among(&sink, &matching);
        let (stored, enqueued, queued) = match &d {
            Some(d) => match stats(&http, d).await {
                Some(s) => {
                    let (stored, enqueued, queued) = counts(&s);
                    (
                        stored.saturating_sub(base.0),
                        enqueued.saturating_sub(base.1),
                        queued,
                    )
                }
                None => series
                    .last()
                    .map_or((0, 0, 0), |p: &Point| (p.stored, p.enqueued, p.queued)),
            },
            // The null target stores nothing and queues nothing.
            None => (answered.load(Ordering::Relaxed) as u64, delivered, 0),
        };
        // Reading `smaps_rollup` walks a process's page tables: every 2 s is enough for a
        // peak and keeps the harness's own CPU off the machine under test.
        if last || n % 4 == 1 {
            for (i, (_, pid)) in procs.iter().enumerate() {
                peak[i] = peak[i].max(procs::tree(*pid).pss_bytes);
            }
        }
        series.push(Point {
            t_s: t0.elapsed().as_secs_f64(),
            accepted: answered.load(Ordering::Relaxed) as u64,
            stored,
            enqueued,
            delivered,
            queued,
        });
        if last {
            break;
        }
    }
    (series, peak)
}

/// The accepted submissions the deployment stored (`None` for the null target).
async fn stored_among(
    deployment: Option<&Deployment>,
    accepted: &HashSet<Uuid>,
) -> Result<Option<HashSet<Uuid>>, E2eError> {
    let Some(d) = deployment else {
        return Ok(None);
    };
    let pool = quizflow_store::pool(&d.database_url, 2);
    let mut conn = pool.get().await.map_err(quizflow_store::StoreError::from)?;
    let ids: Vec<Uuid> = accepted.iter().copied().collect();
    let mut found = HashSet::new();
    for chunk in ids.chunks(10_000) {
        found.extend(quizflow_store::replay::stored_ids(&mut conn, chunk).await?);
    }
    Ok(Some(found))
}

/// The HTTP side of a run: latencies (overall and per second), errors by status, and when
/// each accepted submission was answered.
struct Latencies {
    http: Histogram<u64>,
    errors_by_status: BTreeMap<String, u64>,
    accepted_at: HashMap<Uuid, Instant>,
    last_accept: Instant,
    per_second: BTreeMap<u64, Histogram<u64>>,
}

impl Latencies {
    fn of(sent: &[Sent], load: &Load, started: Instant) -> Self {
        let mut l = Latencies {
            http: histogram(),
            errors_by_status: BTreeMap::new(),
            accepted_at: HashMap::with_capacity(sent.len()),
            last_accept: started,
            per_second: BTreeMap::new(),
        };
        for (i, s) in sent.iter().enumerate() {
            let us = s.latency().as_micros().min(600_000_000) as u64;
            let _ = l.http.record(us.max(1));
            let second = s.due.saturating_duration_since(started).as_secs();
            let _ = l
                .per_second
                .entry(second)
                .or_insert_with(histogram)
                .record(us.max(1));
            if s.status == 202 {
                l.accepted_at.insert(load.ids[i], s.done);
                l.last_accept = l.last_accept.max(s.done);
            } else {
                let status = if s.status == 0 {
                    "transport".into()
                } else {
                    s.status.to_string()
                };
                *l.errors_by_status.entry(status).or_default() += 1;
            }
        }
        l
    }
}

/// From each 202 to the sink's first copy, and when the last message arrived.
fn end_to_end(
    sink: &Sink,
    expected: &HashSet<Uuid>,
    accepted_at: &HashMap<Uuid, Instant>,
    started: Instant,
) -> (Histogram<u64>, Instant) {
    let mut h = histogram();
    let mut last = started;
    if let Ok(r) = sink.received.lock() {
        for id in expected {
            let (Some(copies), Some(at)) = (r.by_submission.get(id), accepted_at.get(id)) else {
                continue;
            };
            if let Some(first) = copies.iter().min() {
                let us = first
                    .saturating_duration_since(*at)
                    .as_micros()
                    .min(600_000_000) as u64;
                let _ = h.record(us.max(1));
                last = last.max(*first);
            }
        }
    }
    (h, last)
}
