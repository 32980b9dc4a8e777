//! `quizflow bench ingest`: HTTP intake at a constant rate or as fast as it goes, beside raw
//! JetStream publishes of the same submissions in the same run (the ceiling).

use crate::leads::lead;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use quizflow_core::{parse_submission, IdempotencyKey, QuizId, SubmissionEnvelope, SubmissionId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Base URL of a running API (with --nats); without both, a private deployment is started.
    #[arg(long)]
    pub api: Option<String>,
    /// NATS URL of that deployment (for the raw-publish ceiling).
    #[arg(long)]
    pub nats: Option<String>,
    /// Messages in each saturation phase (raw and HTTP).
    #[arg(long, default_value_t = 40_000)]
    pub messages: u64,
    /// HTTP requests in flight during the saturation phase.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Submissions per request in the batch-endpoint phase.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Publish acks in flight during the raw phase.
    #[arg(long, default_value_t = 1_000)]
    pub window: usize,
    /// Requests per second of the constant-rate phase (1,667/s = 100k/min).
    #[arg(long, default_value_t = 1_667.0)]
    pub rate: f64,
    /// Length of the constant-rate phase.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// fsync policy of the private nats-server (`always`, as `quizflow up` runs it, or the
    /// server default `interval`: every two minutes). Ignored with --nats.
    #[arg(long, value_enum, default_value_t = Fsync::Always)]
    pub fsync: Fsync,
    /// Where the JSON report and Markdown summary go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    Interval,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("nats: {0}")]
    Nats(String),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the API is not ready at {0}")]
    NotReady(String),
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct IngestReport {
    /// fsync policy of the private server (None: an external deployment).
    pub fsync: Option<Fsync>,
    pub payload_bytes: usize,
    pub raw_publish_per_s: f64,
    pub raw_window: usize,
    pub http_saturation_accepted_per_s: f64,
    pub http_saturation_concurrency: usize,
    pub http_saturation_latency: Latency,
    pub ratio_http_to_raw: f64,
    pub http_batch_accepted_per_s: f64,
    pub http_batch_size: usize,
    pub ratio_batch_to_raw: f64,
    pub rate_target_per_s: f64,
    pub rate_achieved_per_s: f64,
    pub rate_latency: Latency,
    pub statuses: BTreeMap<String, u64>,
}

impl IngestReport {
    pub fn markdown(&self) -> String {
        format!(
            "## quizflow ingest benchmark\n\n\
             | measure | value |\n|---|---|\n\
             | nats-server fsync | {} |\n\
             | payload (envelope) | {} bytes |\n\
             | raw JetStream publish, {} acks in flight | {:.0} msg/s |\n\
             | API at saturation ({} in flight) | {:.0} accepted/s |\n\
             | **API / raw** | **{:.1} %** |\n\
             | saturation latency p50 / p99 | {:.2} / {:.2} ms |\n\
             | API batch endpoint ({} per request, 8 in flight) | {:.0} accepted/s |\n\
             | **API batch / raw** | **{:.1} %** |\n\
             | constant rate target / achieved | {:.0} / {:.0} req/s |\n\
             | constant-rate latency p50 / p95 / p99 / max | {:.2} / {:.2} / {:.2} / {:.2} ms |\n\
             | statuses | {:?} |\n",
            self.fsync
                .map(|f| format!("{f:?}"))
                .unwrap_or_else(|| "external server".into()),
            self.payload_bytes,
            self.raw_window,
            self.raw_publish_per_s,
            self.http_saturation_concurrency,
            self.http_saturation_accepted_per_s,
            self.ratio_http_to_raw * 100.0,
            self.http_saturation_latency.p50_ms,
            self.http_saturation_latency.p99_ms,
            self.http_batch_size,
            self.http_batch_accepted_per_s,
            self.ratio_batch_to_raw * 100.0,
            self.rate_target_per_s,
            self.rate_achieved_per_s,
            self.rate_latency.p50_ms,
            self.rate_latency.p95_ms,
            self.rate_latency.p99_ms,
            self.rate_latency.max_ms,
            self.statuses,
        )
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to a minute, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_default_hist())
}

trait OrDefaultHist {
    fn unwrap_or_default_hist(self) -> Histogram<u64>;
}

impl<E> OrDefaultHist for Result<Histogram<u64>, E> {
    fn unwrap_or_default_hist(self) -> Histogram<u64> {
        match self {
            Ok(h) => h,
            Err(_) => unreachable!("3 significant digits is a valid histogram"),
        }
    }
}

/// The envelope the API would publish for lead `n`, serialised.
fn envelope(n: u64) -> (String, Vec<u8>) {
    let mut rng = rand::rng();
    let body = lead(&mut rng, n);
    let quiz = QuizId::parse("bench").unwrap_or_else(|_| unreachable!("valid literal"));
    let submission = parse_submission(&body).unwrap_or_default();
    let key = IdempotencyKey::parse(&format!("raw-{n}")).ok();
    let id = key
        .as_ref()
        .map(|k| SubmissionId::from_key(&quiz, k))
        .unwrap_or_else(|| SubmissionId::from_canonical_body(&quiz, b""));
    let env = SubmissionEnvelope::new(id, quiz, chrono::Utc::now(), key, submission);
    (id.to_string(), serde_json::to_vec(&env).unwrap_or_default())
}

const RAW_STREAM: &str = "BENCH_RAW";

async fn raw_publish(
    js: &jetstream::Context,
    messages: u64,
    window: usize,
) -> Result<(f64, usize), BenchError> {
    let _ = js.delete_stream(RAW_STREAM).await;
    js.create_stream(stream::Config {
        name: RAW_STREAM.into(),
        subjects: vec!["bench.raw.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| BenchError::Nats(e.to_string()))?;
    let payloads: Vec<(String, Vec<u8>)> = (0..messages).map(envelope).collect();
    let size = payloads.first().map(|p| p.1.len()).unwrap_or(0);
    let started = Instant::now();
    let mut acks: FuturesUnordered<
        <async_nats::jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
    > = FuturesUnordered::new();
    for (id, payload) in payloads {
        if acks.len() >= window {
            if let Some(r) = acks.next().await {
                r.map_err(|e| BenchError::Nats(e.to_string()))?;
            }
        }
        let msg = PublishMessage::build()
            .payload(payload.into())
            .message_id(id);
        let ack = js
            .send_publish("bench.raw.bench", msg)
            .await
            .map_err(|e| BenchError::Nats(e.to_string()))?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(r) = acks.next().await {
        r.map_err(|e| BenchError::Nats(e.to_string()))?;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream(RAW_STREAM).await;
    Ok((rate, size))
}

struct Tally {
    hist: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    accepted: u64,
}

/// Bodies are generated before a phase starts, so the generator spends its CPU on HTTP.
fn bodies(count: u64) -> Vec<bytes::Bytes> {
    let mut rng = rand::rng();
    (0..count)
        .map(|n| {
            serde_json::to_vec(&lead(&mut rng, n))
                .unwrap_or_default()
                .into()
        })
        .collect()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    n: u64,
    tag: &str,
    body: bytes::Bytes,
) -> String {
    match client
        .post(url)
        .header("Idempotency-Key", format!("{tag}-{n}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16().to_string(),
        Err(e) if e.is_timeout() => "timeout".into(),
        Err(_) => "connect_error".into(),
    }
}

async fn wait_ready(client: &reqwest::Client, api: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{api}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(BenchError::NotReady(api.into()))
}

/// `POST /v1/submissions/batch` with `size` submissions per request, 8 requests in flight.
async fn batch_phase(
    client: &reqwest::Client,
    api: &str,
    messages: u64,
    size: usize,
    statuses: &mut BTreeMap<String, u64>,
) -> Result<f64, BenchError> {
    let mut rng = rand::rng();
    let requests: Vec<bytes::Bytes> = (0..messages)
        .collect::<Vec<_>>()
        .chunks(size)
        .map(|chunk| {
            let items: Vec<serde_json::Value> = chunk
                .iter()
                .map(|&n| {
                    let mut l = lead(&mut rng, n);
                    l["quiz_id"] = serde_json::json!("bench");
                    l["idempotency_key"] = serde_json::json!(format!("batch-{n}"));
                    l
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "submissions": items }))
                .unwrap_or_default()
                .into()
        })
        .collect();
    let url = format!("{api}/v1/submissions/batch");
    let started = Instant::now();
    let results: Vec<Result<serde_json::Value, reqwest::Error>> = futures::stream::iter(requests)
        .map(|body| {
            let (client, url) = (client, &url);
            async move {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?
                    .json::<serde_json::Value>()
                    .await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut accepted = 0u64;
    for r in results {
        let body = r?;
        for item in body["results"].as_array().into_iter().flatten() {
            let status = item["status"].as_u64().unwrap_or(0);
            if status == 202 {
                accepted += 1;
            }
            *statuses.entry(format!("batch:{status}")).or_default() += 1;
        }
    }
    Ok(accepted as f64 / elapsed)
}

pub async fn run_ingest(
    args: &IngestArgs,
    api: &str,
    nats_url: &str,
) -> Result<IngestReport, BenchError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(64))
        .timeout(Duration::from_secs(30))
        .build()?;
    wait_ready(&client, api).await?;
    let nats = async_nats::connect(nats_url)
        .await
        .map_err(|e| BenchError::Nats(e.to_string()))?;
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(args.window.max(1))
        .backpressure_on_inflight(true)
        .build(nats);

    tracing::info!(
        messages = args.messages,
        window = args.window,
        "raw JetStream publish"
    );
    let (raw_rate, payload_bytes) = raw_publish(&js, args.messages, args.window).await?;

    tracing::info!(
        messages = args.messages,
        concurrency = args.concurrency,
        "API at saturation"
    );
    let url = format!("{api}/v1/quizzes/bench/submissions");
    let (sat_rate, sat_latency, mut statuses) = saturation(&client, &url, args).await;

    tracing::info!(
        messages = args.messages,
        batch = args.batch_size,
        "API batch endpoint"
    );
    let batch = args.batch_size.clamp(1, 1000);
    let batch_rate = batch_phase(&client, api, args.messages, batch, &mut statuses).await?;

    tracing::info!(rate = args.rate, duration = %args.duration, "API at constant rate");
    let (rate_achieved, rate_latency, rate_statuses) = constant_rate(&client, &url, args).await;
    for (k, v) in &rate_statuses {
        *statuses.entry(format!("rate:{k}")).or_default() += v;
    }
    let report = IngestReport {
        fsync: (args.nats.is_none()).then_some(args.fsync),
        payload_bytes,
        raw_publish_per_s: raw_rate,
        raw_window: args.window,
        http_saturation_accepted_per_s: sat_rate,
        http_saturation_concurrency: args.concurrency,
        http_saturation_latency: sat_latency,
        ratio_http_to_raw: sat_rate / raw_rate,
        http_batch_accepted_per_s: batch_rate,
        http_batch_size: args.batch_size,
        ratio_batch_to_raw: batch_rate / raw_rate,
        rate_target_per_s: args.rate,
        rate_achieved_per_s: rate_achieved,
        rate_latency,
        statuses,
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("ingest.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )?;
    std::fs::write(args.out.join("ingest.md"), report.markdown())?;
    Ok(report)
}

fn tally() -> Arc<Mutex<Tally>> {
    Arc::new(Mutex::new(Tally {
        hist: histogram(),
        statuses: BTreeMap::new(),
        accepted: 0,
    }))
}

/// The API at saturation: `concurrency` posts in flight until `messages` are sent. Accepted
/// per second, the latencies, and the statuses.
async fn saturation(
    client: &reqwest::Client,
    url: &str,
    args: &IngestArgs,
) -> (f64, Latency, BTreeMap<String, u64>) {
    let tally = tally();
    let started = Instant::now();
    futures::stream::iter(bodies(args.messages).into_iter().enumerate())
        .map(|(n, body)| {
            let tally = tally.clone();
            async move {
                let t = Instant::now();
                let status = post(client, url, n as u64, "sat", body).await;
                let mut g = tally.lock().unwrap_or_else(|p| p.into_inner());
                let _ = g.hist.record(t.elapsed().as_micros() as u64);
                if status == "202" {
                    g.accepted += 1;
                }
                *g.statuses.entry(status).or_default() += 1;
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<()>()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let g = tally.lock().unwrap_or_else(|p| p.into_inner());
    (
        g.accepted as f64 / elapsed,
        Latency::of(&g.hist),
        g.statuses.clone(),
    )
}

/// The API at a constant rate (open loop: latency from each request's scheduled time).
/// Achieved accepted per second, the latencies, and the statuses.
async fn constant_rate(
    client: &reqwest::Client,
    url: &str,
    args: &IngestArgs,
) -> (f64, Latency, BTreeMap<String, u64>) {
    let tally = tally();
    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    // Bounded: past this many requests in flight the generator counts a drop instead.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(20_000));
    let begin = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, body) in bodies(total).into_iter().enumerate() {
        let scheduled = begin + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let mut g = tally.lock().unwrap_or_else(|p| p.into_inner());
            *g.statuses.entry("generator_overflow".into()).or_default() += 1;
            continue;
        };
        let (client, url, tally) = (client.clone(), url.to_owned(), tally.clone());
        tasks.spawn(async move {
            let status = post(&client, &url, n as u64, "rate", body).await;
            let latency = scheduled.elapsed();
            let mut g = tally.lock().unwrap_or_else(|p| p.into_inner());
            let _ = g.hist.record(latency.as_micros() as u64);
            if status == "202" {
                g.accepted += 1;
            }
            *g.statuses.entry(status).or_default() += 1;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = begin.elapsed().as_secs_f64();
    let g = tally.lock().unwrap_or_else(|p| p.into_inner());
    (
        g.accepted as f64 / elapsed,
        Latency::of(&g.hist),
        g.statuses.clone(),
    )
}
