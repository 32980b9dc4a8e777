//! `quizflow bench senders`: seed 003's headline — a WhatsApp backlog sent through a pool of
//! senders (default 20 phone-number ids × 50 msg/s each) against a Cloud-API-shaped sink.
//! Reported: the aggregate rate and, per sender, what the sink received and its busiest
//! second (aligned one-second buckets of the sink's wall clock), which must never pass the
//! sender's limit.
//!
//! This module holds the arguments, the sink and the report; the processes are started by
//! the `quizflow` binary.

use poem::web::{Data, Json, Path};
use poem::{handler, post, EndpointExt, Route};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, clap::Args)]
pub struct SendersArgs {
    /// WhatsApp phone-number ids in the pool.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Each sender's limit (`QUIZFLOW_PROVIDER_RATE_PER_SEC`, per sender).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// WhatsApp jobs in the backlog (one lead each).
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Calls in flight for the channel (`QUIZFLOW_WORKER_CONCURRENCY`).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Workers processes sharing the senders' limits.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Report directory (`senders-report.json`, `senders-report.md`).
    #[arg(long, default_value = "bench-out")]
    pub out: std::path::PathBuf,
}

/// What the sink received: per job (the template's first parameter), the copies; per sender,
/// messages per wall-clock second.
#[derive(Debug, Default)]
pub struct Received {
    pub by_job: HashMap<String, u32>,
    pub per_sender: HashMap<String, BTreeMap<u64, u64>>,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl Received {
    pub fn distinct(&self) -> u64 {
        self.by_job.len() as u64
    }

    pub fn duplicates(&self) -> u64 {
        self.by_job.values().map(|n| u64::from(n - 1)).sum()
    }
}

#[handler]
async fn cloud(
    Data(received): Data<&Arc<Mutex<Received>>>,
    Path((_version, phone_id)): Path<(String, String)>,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    let now = Instant::now();
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let job = body["template"]["components"][0]["parameters"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Ok(mut r) = received.lock() {
        *r.by_job.entry(job).or_default() += 1;
        *r.per_sender
            .entry(phone_id)
            .or_default()
            .entry(second)
            .or_default() += 1;
        r.first.get_or_insert(now);
        r.last = Some(now);
    }
    Json(serde_json::json!({"messaging_product": "whatsapp", "messages": [{"id": "wamid.bench"}]}))
}

/// A Cloud-API-shaped sink (`POST /{version}/{phone_number_id}/messages`), answering at once.
pub struct CloudSink {
    pub url: String,
    pub received: Arc<Mutex<Received>>,
}

impl CloudSink {
    pub async fn start() -> std::io::Result<Self> {
        let received = Arc::new(Mutex::new(Received::default()));
        let (acceptor, port) = crate::e2e::sink::bind().await?;
        let app = Route::new()
            .at("/:version/:phone_id/messages", post(cloud))
            .data(received.clone());
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            received,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SenderLine {
    pub sender: String,
    pub messages: u64,
    pub busiest_second: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SendersReport {
    pub senders: usize,
    pub rate_per_sender: u32,
    pub processes: usize,
    pub jobs: usize,
    pub delivered: u64,
    pub duplicates: u64,
    /// Delivered over the time from the first to the last arrival.
    pub aggregate_per_s: f64,
    /// The pool's limit: senders × rate.
    pub limit_per_s: f64,
    /// The busiest second of the busiest sender (never above `rate_per_sender`).
    pub busiest_second: u64,
    pub per_sender: Vec<SenderLine>,
    pub seconds: f64,
}

impl SendersReport {
    pub fn from_received(args: &SendersArgs, r: &Received) -> Self {
        let seconds = match (r.first, r.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let mut per_sender: Vec<SenderLine> = r
            .per_sender
            .iter()
            .map(|(sender, secs)| SenderLine {
                sender: sender.clone(),
                messages: secs.values().sum(),
                busiest_second: secs.values().copied().max().unwrap_or(0),
            })
            .collect();
        per_sender.sort_by(|a, b| a.sender.cmp(&b.sender));
        let delivered = r.distinct();
        Self {
            senders: args.senders,
            rate_per_sender: args.rate,
            processes: args.processes,
            jobs: args.jobs,
            delivered,
            duplicates: r.duplicates(),
            aggregate_per_s: delivered as f64 / seconds.max(1e-9),
            limit_per_s: args.senders as f64 * f64::from(args.rate),
            busiest_second: per_sender
                .iter()
                .map(|s| s.busiest_second)
                .max()
                .unwrap_or(0),
            per_sender,
            seconds,
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = format!(
            "## bench senders\n\n{} WhatsApp jobs through {} senders × {} msg/s ({} workers process(es)).\n\n\
             | delivered | duplicates | seconds | aggregate msg/s | of the pool's {:.0}/s | busiest sender-second |\n|---|---|---|---|---|---|\n\
             | {} | {} | {:.1} | {:.1} | {:.1} % | {} |\n\n| sender | messages | busiest second |\n|---|---|---|\n",
            self.jobs, self.senders, self.rate_per_sender, self.processes, self.limit_per_s,
            self.delivered, self.duplicates, self.seconds, self.aggregate_per_s,
            self.aggregate_per_s / self.limit_per_s * 100.0, self.busiest_second
        );
        for s in &self.per_sender {
            md.push_str(&format!(
                "| {} | {} | {} |\n",
                s.sender, s.messages, s.busiest_second
            ));
        }
        md
    }

    pub fn write(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("senders-report.json"),
            serde_json::to_vec_pretty(self).unwrap_or_default(),
        )?;
        std::fs::write(dir.join("senders-report.md"), self.markdown())
    }
}

/// Waits until the sink holds `n` distinct jobs, or `within` passes with no progress.
pub async fn wait_delivered(sink: &CloudSink, n: u64, stall: Duration) -> u64 {
    let mut last = (0, Instant::now());
    loop {
        let got = sink.received.lock().map_or(0, |r| r.distinct());
        if got >= n {
            return got;
        }
        if got > last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > stall {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
