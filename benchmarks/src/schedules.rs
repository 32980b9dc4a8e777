//! Scheduled messages at scale: `--pending` reminders (a million by default) written to the
//! ledger as `scheduled` rows due evenly over `--spread`, the first `--lead` after the write,
//! so for that long the whole million is pending at once. Then `--firers` schedule firers
//! (the very loop every workers process runs) publish them to JetStream as they fall due.
//!
//! Measured in one run: what a million pending messages cost (table and due-index size on
//! disk, memory of the firer process and of nats-server while they wait and while they fire),
//! and how late each one was published after its due time (p50, p99, p99.9, max, and how many
//! were more than a second late).

use crate::e2e::procs;
use crate::replay::ReplayBenchError;
use hdrhistogram::Histogram;
use quizflow_core::parse_campaign;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct SchedulesArgs {
    /// Scheduled messages pending at once.
    #[arg(long, default_value_t = 1_000_000)]
    pub pending: i64,
    /// Their due times spread evenly over this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    pub spread: Duration,
    /// From the end of the write to the first due time: how long all of them wait together
    /// (the write must finish within it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub lead: Duration,
    /// Schedule firers (one per workers process in a deployment).
    #[arg(long, default_value_t = 1)]
    pub firers: usize,
    /// fsync policy of the private nats-server.
    #[arg(long, value_enum, default_value_t = crate::Fsync::Always)]
    pub fsync: crate::Fsync,
}

#[derive(Debug, Serialize)]
pub struct SchedulesReport {
    pub pending: i64,
    pub spread_s: f64,
    pub firers: usize,
    pub fsync: crate::Fsync,
    /// Writing the rows (one statement).
    pub write_s: f64,
    /// `deliveries` (table + indexes) and the partial due-time index, a million pending.
    pub table_mib: f64,
    pub due_index_mib: f64,
    /// Proportional set size of this process (the firers) and of nats-server: before the
    /// write, while everything is pending, and the peak while firing.
    pub firer_mib: [f64; 3],
    pub nats_mib: [f64; 3],
    pub published: u64,
    pub cancelled: u64,
    /// Publish time minus due time, in milliseconds.
    pub late_p50_ms: u64,
    pub late_p99_ms: u64,
    pub late_p999_ms: u64,
    pub late_max_ms: u64,
    /// Messages published more than a second after their due time.
    pub over_1s: u64,
    /// Published per second: the asked rate (pending / spread) and the busiest second.
    pub asked_per_s: f64,
    pub peak_per_s: u64,
    /// Rows still scheduled at the end (0: every one fired).
    pub left: i64,
}

impl SchedulesReport {
    pub fn markdown(&self) -> String {
        let mib = |m: [f64; 3]| format!("{:.0} / {:.0} / {:.0} MiB", m[0], m[1], m[2]);
        format!(
            "# quizflow bench schedules\n\n\
             {} scheduled messages pending at once (PostgreSQL schedule table), due evenly over \
             {:.0} s, {} firer(s), nats-server fsync `{:?}`.\n\n\
             | measure | value |\n|---|---|\n\
             | write {} scheduled rows (one statement) | {:.1} s |\n\
             | `deliveries` on disk / its due-time index | {:.0} MiB / {:.0} MiB |\n\
             | firer process PSS: before / all pending / peak firing | {} |\n\
             | nats-server PSS: before / all pending / peak firing | {} |\n\
             | published / cancelled / left scheduled | {} / {} / {} |\n\
             | lateness p50 / p99 / p99.9 / max | {} / {} / {} / {} ms |\n\
             | more than 1 s late | {} |\n\
             | asked rate / busiest second | {:.0}/s / {}/s |\n",
            self.pending,
            self.spread_s,
            self.firers,
            self.fsync,
            self.pending,
            self.write_s,
            self.table_mib,
            self.due_index_mib,
            mib(self.firer_mib),
            mib(self.nats_mib),
            self.published,
            self.cancelled,
            self.left,
            self.late_p50_ms,
            self.late_p99_ms,
            self.late_p999_ms,
            self.late_max_ms,
            self.over_1s,
            self.asked_per_s,
            self.peak_per_s,
        )
    }
}

/// PSS in MiB of this process and of its nats-server child (0 when there is none).
fn memory() -> (f64, f64) {
    let me = std::process::id();
    let nats = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.contains("(nats-server)") && procs::parse_stat(&s).is_some_and(|p| p.0 == me)
            })
        });
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    (
        mib(procs::pss(me)),
        nats.map_or(0.0, |p| mib(procs::pss(p))),
    )
}

#[derive(Default)]
struct Tally {
    late: Option<Histogram<u64>>,
    published: u64,
    cancelled: u64,
    /// Published per wall-clock second since the start (bounded by the run's length).
    per_second: BTreeMap<u64, u64>,
}

/// The benchmark's campaign and its `--pending` reminders, due over `--spread` from
/// `--lead` on: the first due time, and how long writing them took.
async fn seed_reminders(
    conn: &mut quizflow_store::Conn<'_>,
    args: &SchedulesArgs,
) -> Result<(chrono::DateTime<chrono::Utc>, f64), ReplayBenchError> {
    let setup = |e: String| ReplayBenchError::Setup(e);
    let spec = parse_campaign(&serde_json::json!({
        "name": "bench reminders",
        "match": {"all": [{"field": "score", "op": "gte", "value": 0}]},
        "actions": [{"channel": "sms", "template": "Hoje!"},
                    {"channel": "sms", "template": "Amanhã é o dia!", "delay": "1d"}]
    }))
    .map_err(|e| setup(format!("campaign: {e:?}")))?;
    let campaign = quizflow_store::campaigns::insert(conn, &spec).await?;
    let started = Instant::now();
    let first_due = chrono::Utc::now()
        + chrono::Duration::from_std(args.lead).map_err(|e| setup(e.to_string()))?;
    let (id, version) = (campaign.id, campaign.version);
    quizflow_store::schedules::seed(conn, id, version, args.pending, first_due, args.spread)
        .await?;
    let write_s = started.elapsed().as_secs_f64();
    if chrono::Utc::now() >= first_due {
        return Err(setup(format!(
            "writing took {write_s:.1} s, longer than --lead {:?}: raise --lead",
            args.lead
        )));
    }
    Ok((first_due, write_s))
}

/// `n` firers, as every workers process runs one, counting what they fire into `tally`.
fn start_firers(
    n: usize,
    js: &async_nats::jetstream::Context,
    pool: &quizflow_store::Pool,
    tally: &Arc<Mutex<Tally>>,
    started: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinSet<()> {
    let mut firers = tokio::task::JoinSet::new();
    for _ in 0..n {
        let tally = tally.clone();
        firers.spawn(quizflow_workers::schedule::run(
            js.clone(),
            pool.clone(),
            &quizflow_core::Channel::ALL,
            move |f: &quizflow_workers::schedule::Fired| {
                let Ok(mut t) = tally.lock() else { return };
                t.published += f.published as u64;
                t.cancelled += f.cancelled as u64;
                *t.per_second.entry(started.elapsed().as_secs()).or_default() += f.published as u64;
                if let Some(h) = t.late.as_mut() {
                    for ms in &f.lateness_ms {
                        // Recorded at least 1 ms so the histogram's lower bound holds.
                        let _ = h.record((*ms).max(1) as u64);
                    }
                }
            },
            stop.clone(),
        ));
    }
    firers
}

/// Until every row fired (or `give_up`), the firers' and nats-server's peak memory, sampled
/// each second.
async fn watch_memory(
    tally: &Arc<Mutex<Tally>>,
    pending: i64,
    give_up: chrono::DateTime<chrono::Utc>,
    (mut firer_peak, mut nats_peak): (f64, f64),
) -> (f64, f64) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (f, n) = memory();
        firer_peak = firer_peak.max(f);
        nats_peak = nats_peak.max(n);
        let done = tally
            .lock()
            .map(|t| (t.published + t.cancelled) as i64 >= pending)
            .unwrap_or(true);
        if done || chrono::Utc::now() > give_up {
            return (firer_peak, nats_peak);
        }
    }
}

pub async fn run_schedules(
    args: &SchedulesArgs,
    js: async_nats::jetstream::Context,
    database_url: &str,
) -> Result<SchedulesReport, ReplayBenchError> {
    let setup = |e: String| ReplayBenchError::Setup(e);
    let pool = quizflow_store::pool(database_url, args.firers as u32 + 2);
    let mut conn = pool.get().await.map_err(quizflow_store::StoreError::from)?;
    let before = memory();
    let started = Instant::now();
    let (first_due, write_s) = seed_reminders(&mut conn, args).await?;
    let backlog = quizflow_store::schedules::backlog(&mut conn).await?;
    drop(conn);
    let pending_mem = memory();

    let tally = Arc::new(Mutex::new(Tally {
        late: Some(Histogram::new_with_bounds(1, 3_600_000, 3).map_err(|e| setup(e.to_string()))?),
        ..Tally::default()
    }));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut firers = start_firers(args.firers, &js, &pool, &tally, started, stop_rx);

    // Until every row fired (or well past the last due time), sampling memory each second.
    let give_up = first_due
        + chrono::Duration::from_std(args.spread + Duration::from_secs(120))
            .map_err(|e| setup(e.to_string()))?;
    let (firer_peak, nats_peak) = watch_memory(&tally, args.pending, give_up, pending_mem).await;
    let _ = stop_tx.send(true);
    while firers.join_next().await.is_some() {}
    let mut conn = pool.get().await.map_err(quizflow_store::StoreError::from)?;
    let left = quizflow_store::schedules::backlog(&mut conn)
        .await?
        .scheduled;

    let t = tally
        .lock()
        .map_err(|_| setup("tally lock poisoned".into()))?;
    let h = t
        .late
        .as_ref()
        .ok_or_else(|| setup("no histogram".into()))?;
    let over_1s = h.count_between(1_001, h.max().max(1_001));
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    Ok(SchedulesReport {
        pending: args.pending,
        spread_s: args.spread.as_secs_f64(),
        firers: args.firers,
        fsync: args.fsync,
        write_s,
        table_mib: mib(backlog.table_bytes),
        due_index_mib: mib(backlog.due_index_bytes),
        firer_mib: [before.0, pending_mem.0, firer_peak],
        nats_mib: [before.1, pending_mem.1, nats_peak],
        published: t.published,
        cancelled: t.cancelled,
        late_p50_ms: h.value_at_quantile(0.5),
        late_p99_ms: h.value_at_quantile(0.99),
        late_p999_ms: h.value_at_quantile(0.999),
        late_max_ms: h.max(),
        over_1s: if h.max() > 1_000 { over_1s } else { 0 },
        asked_per_s: args.pending as f64 / args.spread.as_secs_f64().max(0.001),
        peak_per_s: t.per_second.values().copied().max().unwrap_or(0),
        left,
    })
}
