//! Delivery throughput of one workers process against the mock provider (its own process),
//! at several provider latencies: deliveries/s, and what concurrency a target rate needs.

use quizflow_batcher::{Batcher, BatcherSettings};
use quizflow_core::{
    parse_campaign, parse_submission, IdempotencyKey, QuizId, SubmissionEnvelope, SubmissionId,
};
use quizflow_workers::{Providers, WorkerSettings};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct DeliveriesArgs {
    /// Jobs per phase.
    #[arg(long, default_value_t = 4_000)]
    pub jobs: usize,
    /// Provider latencies to measure, in ms.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 50, 200])]
    pub latency_ms: Vec<u64>,
    /// Jobs in flight per channel.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub latency_ms: u64,
    pub concurrency: usize,
    pub jobs: usize,
    pub deliveries_per_s: f64,
    /// Little's law from the measured rate: concurrency that 1,000 msg/s needs here.
    pub concurrency_for_1000_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct DeliveriesReport {
    pub phases: Vec<Phase>,
}

impl DeliveriesReport {
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "## quizflow delivery benchmark (one workers process, sms via the mock provider)\n\n\
             | provider latency | concurrency | jobs | deliveries/s | concurrency for 1,000/s |\n|---|---|---|---|---|\n",
        );
        for p in &self.phases {
            s.push_str(&format!(
                "| {} ms | {} | {} | {:.0} | {:.0} |\n",
                p.latency_ms,
                p.concurrency,
                p.jobs,
                p.deliveries_per_s,
                p.concurrency_for_1000_per_s
            ));
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveriesError {
    #[error("{0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(e: E) -> DeliveriesError {
    DeliveriesError::Setup(e.to_string())
}

async fn count_sent(pool: &quizflow_store::Pool, tag: &str) -> Result<i64, DeliveriesError> {
    let mut conn = pool.get().await.map_err(setup)?;
    quizflow_store::deliveries::count_sent_for_quiz(&mut conn, tag)
        .await
        .map_err(setup)
}

async fn queued_jobs(js: &async_nats::jetstream::Context) -> Result<u64, DeliveriesError> {
    let mut s = js
        .get_stream(quizflow_nats::subjects::DELIVERIES_STREAM)
        .await
        .map_err(setup)?;
    Ok(s.info().await.map_err(setup)?.state.messages)
}

/// `mock` is the base URL of a running mock provider; `nats_url`/`database_url` a migrated,
/// topology-ready deployment with no other workers.
/// Queues `n` SMS jobs of quiz `tag` (a batcher in this process, stopped before measuring).
async fn queue_jobs(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    pool: &quizflow_store::Pool,
    tag: &str,
    n: usize,
) -> Result<(), DeliveriesError> {
    let settings = BatcherSettings::default();
    let batcher = Batcher::new(settings, client.clone(), js.clone(), pool.clone());
    let (stop_b, rx) = tokio::sync::oneshot::channel::<()>();
    let b = tokio::spawn(batcher.run(async move {
        let _ = rx.await;
    }));
    publish_leads(js, tag, n).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while queued_jobs(js).await? < n as u64 {
        if Instant::now() > deadline {
            return Err(setup("jobs were not queued in time"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_b.send(());
    let _ = b.await;
    Ok(())
}

/// `n` SMS leads of quiz `tag`, published to `SUBMISSIONS` and acknowledged.
async fn publish_leads(
    js: &async_nats::jetstream::Context,
    tag: &str,
    n: usize,
) -> Result<(), DeliveriesError> {
    let quiz = QuizId::parse(tag).map_err(setup)?;
    let mut acks = Vec::with_capacity(n);
    for n in 0..n {
        let key = IdempotencyKey::parse(&format!("{tag}-{n}")).map_err(setup)?;
        let sub = parse_submission(
            &serde_json::json!({"respondent": {"phone": format!("+55119{n:08}"), "name": "Ana"}}),
        )
        .map_err(|e| setup(format!("{e:?}")))?;
        let env = SubmissionEnvelope::new(
            SubmissionId::from_key(&quiz, &key),
            quiz.clone(),
            chrono::Utc::now(),
            Some(key),
            sub,
        );
        let payload = serde_json::to_vec(&env).map_err(setup)?;
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(env.submission_id.to_string());
        acks.push(
            js.send_publish(quizflow_nats::subjects::submission(&quiz), msg)
                .await
                .map_err(setup)?,
        );
    }
    for a in acks {
        std::future::IntoFuture::into_future(a)
            .await
            .map_err(setup)?;
    }
    Ok(())
}

pub async fn run_deliveries(
    args: &DeliveriesArgs,
    mock: &str,
    nats_url: &str,
    database_url: &str,
) -> Result<DeliveriesReport, DeliveriesError> {
    let client = async_nats::connect(nats_url).await.map_err(setup)?;
    let js = async_nats::jetstream::new(client.clone());
    let pool = quizflow_store::pool(database_url, 8);
    let http = reqwest::Client::new();
    {
        let spec = parse_campaign(&serde_json::json!({"name": "bench", "match": {}, "actions": [{"channel": "sms", "template": "Olá {{ respondent.name }}"}]}))
            .map_err(|e| setup(format!("{e:?}")))?;
        let mut conn = pool.get().await.map_err(setup)?;
        quizflow_store::campaigns::insert(&mut conn, &spec)
            .await
            .map_err(setup)?;
    }
    let mut phases = Vec::new();
    for (i, &latency) in args.latency_ms.iter().enumerate() {
        let tag = format!("bench{i}");
        queue_jobs(&client, &js, &pool, &tag, args.jobs).await?;
        http.put(format!("{mock}/_mock/faults"))
            .json(&serde_json::json!({"channel": "sms", "latency_ms": latency, "rate": 0}))
            .send()
            .await
            .map_err(setup)?;

        let mut settings = WorkerSettings::new(Providers::mock(mock));
        settings.channels = vec![quizflow_core::Channel::Sms];
        settings.concurrency = args.concurrency;
        settings.rate_per_sec = 1_000_000;
        let (stop_w, rx) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        let w = tokio::spawn(quizflow_workers::run(
            settings,
            js.clone(),
            pool.clone(),
            prometheus::Registry::new(),
            async move {
                let _ = rx.await;
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(600);
        while count_sent(&pool, &tag).await? < args.jobs as i64 {
            if Instant::now() > deadline {
                return Err(setup("deliveries did not finish in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rate = args.jobs as f64 / started.elapsed().as_secs_f64();
        let _ = stop_w.send(());
        let _ = w.await;
        let _ = http.delete(format!("{mock}/_mock/messages")).send().await;
        phases.push(Phase {
            latency_ms: latency,
            concurrency: args.concurrency,
            jobs: args.jobs,
            deliveries_per_s: rate,
            concurrency_for_1000_per_s: 1000.0 * args.concurrency as f64 / rate,
        });
    }
    Ok(DeliveriesReport { phases })
}
