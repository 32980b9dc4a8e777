//! The batcher's write path beside raw binary COPY of the same rows, in one run.
//!
//! Phase 1 (ceiling): `COPY submissions FROM STDIN (FORMAT binary)` of 1,000-row batches,
//! no id guard, no matching, no ledger. Phase 2 (quizflow): per 1,000-row batch, vectorised
//! matching against `--campaigns` campaigns, then the batcher's transaction (id guard,
//! `INSERT … UNNEST … ON CONFLICT`, ledger rows). Both with `--writers` connections.

use futures::StreamExt;
use quizflow_batcher::Matcher;
use quizflow_core::{parse_campaign, Campaign, SubmissionEnvelope};
use quizflow_store::intake::{self as store, Row};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Rows in each phase.
    #[arg(long, default_value_t = 50_000)]
    pub rows: usize,
    /// Rows per batch (the batcher's QUIZFLOW_BATCH_MAX).
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Concurrent writers (connections).
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Active campaigns to match against.
    #[arg(long, default_value_t = 100)]
    pub campaigns: usize,
}

#[derive(Debug, Serialize)]
pub struct StoreReport {
    pub rows: usize,
    pub batch: usize,
    pub writers: usize,
    pub raw_copy_rows_per_s: f64,
    pub quizflow_rows_per_s: f64,
    pub ratio: f64,
    pub ledger_rows: i64,
}

impl StoreReport {
    pub fn markdown(&self) -> String {
        format!(
            "## quizflow store benchmark\n\n| measure | value |\n|---|---|\n\
             | rows, batch, writers | {} / {} / {} |\n\
             | raw binary COPY into `submissions` | {:.0} rows/s |\n\
             | batcher path (match + id guard + UNNEST insert + ledger) | {:.0} rows/s |\n\
             | **batcher / raw COPY** | **{:.1} %** |\n\
             | ledger rows written | {} |\n",
            self.rows,
            self.batch,
            self.writers,
            self.raw_copy_rows_per_s,
            self.quizflow_rows_per_s,
            self.ratio * 100.0,
            self.ledger_rows
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreBenchError {
    #[error("postgres: {0}")]
    Pg(#[from] tokio_postgres::Error),
    #[error("diesel: {0}")]
    Diesel(#[from] diesel::result::Error),
    #[error("store: {0}")]
    Store(#[from] quizflow_store::StoreError),
    #[error("connect: {0}")]
    Connect(#[from] diesel::ConnectionError),
}

fn envelopes(n: usize) -> Vec<SubmissionEnvelope> {
    crate::leads::envelopes(n, 20)
}

fn campaigns(n: usize) -> Vec<Arc<Campaign>> {
    (0..n)
        .map(|i| {
            let quiz = if i % 10 < 7 { serde_json::json!(format!("quiz{}", i % 20)) } else { serde_json::Value::Null };
            let spec = parse_campaign(&serde_json::json!({
                "name": format!("c{i}"), "quiz_id": quiz,
                "match": {"all": [{"field": "score", "op": "gte", "value": 90 + (i % 10)}],
                          "any": [{"field": "answers.q1", "op": "in", "value": ["a", "b"]}, {"field": "tags", "op": "contains", "value": "event"}]},
                "actions": [{"channel": "sms", "template": "hi"}]
            }))
            .unwrap_or_else(|e| unreachable!("{e:?}"));
            Arc::new(Campaign {
                id: uuid::Uuid::new_v4(),
                version: 1,
                spec,
                created_at: chrono::DateTime::UNIX_EPOCH,
                updated_at: chrono::Utc::now(),
            })
        })
        .collect()
}

async fn pg(url: &str) -> Result<tokio_postgres::Client, StoreBenchError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn copy_batch(
    client: &tokio_postgres::Client,
    rows: &[SubmissionEnvelope],
) -> Result<(), StoreBenchError> {
    let sink = client
        .copy_in(quizflow_store::ceiling::COPY_SUBMISSIONS)
        .await?;
    let types = [
        Type::UUID,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::FLOAT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::JSON,
        Type::TEXT_ARRAY,
        Type::JSON,
        Type::TEXT,
        Type::INT8,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    for (i, e) in rows.iter().enumerate() {
        let s = &e.submission;
        let answers = serde_json::to_value(&s.answers).unwrap_or_default();
        let metadata = serde_json::Value::Object(s.metadata.clone());
        let completed = s.completed_at.unwrap_or(e.received_at);
        let key = e.idempotency_key.as_ref().map(|k| k.as_str().to_owned());
        writer
            .as_mut()
            .write(&[
                &e.submission_id.0,
                &e.quiz_id.as_str(),
                &e.received_at,
                &completed,
                &s.score,
                &s.respondent.phone,
                &s.respondent.email,
                &s.respondent.name,
                &s.respondent.locale,
                &answers,
                &s.tags,
                &metadata,
                &key,
                &(i as i64),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn quizflow_batch(
    pool: &quizflow_store::Pool,
    matcher: &Matcher,
    rows: &[SubmissionEnvelope],
) -> Result<usize, StoreBenchError> {
    let matches = matcher.match_batch(rows);
    let store_rows: Vec<Row<'_>> = rows
        .iter()
        .enumerate()
        .map(|(i, e)| Row {
            envelope: e,
            stream_seq: i as u64,
        })
        .collect();
    let now = chrono::Utc::now();
    let jobs_for = |new_rows: &HashSet<usize>| matcher.jobs(&matches, rows, new_rows, now).into();
    let (_, jobs) = store::store_batch(pool, &store_rows, jobs_for).await?;
    Ok(jobs.jobs.len())
}

pub async fn run_store(
    args: &StoreArgs,
    database_url: &str,
) -> Result<StoreReport, StoreBenchError> {
    let data = envelopes(args.rows);
    let batch = args.batch.max(1);
    let writers = args.writers.max(1);
    let admin = pg(database_url).await?;
    admin
        .batch_execute(quizflow_store::ceiling::TRUNCATE_INTAKE)
        .await?;

    // Phase 1: raw binary COPY.
    let clients = futures::future::try_join_all((0..writers).map(|_| pg(database_url))).await?;
    let started = Instant::now();
    let chunks: Vec<&[SubmissionEnvelope]> = data.chunks(batch).collect();
    futures::stream::iter(chunks.iter().enumerate())
        .map(|(i, chunk)| {
            let client = &clients[i % writers];
            async move { copy_batch(client, chunk).await }
        })
        .buffer_unordered(writers)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    let raw = args.rows as f64 / started.elapsed().as_secs_f64();
    admin
        .batch_execute(quizflow_store::ceiling::TRUNCATE_INTAKE)
        .await?;

    // Phase 2: the batcher's path.
    let matcher = Arc::new(Matcher::new(campaigns(args.campaigns)));
    let pool = quizflow_store::pool(database_url, u32::try_from(writers).unwrap_or(u32::MAX));
    let started = Instant::now();
    futures::stream::iter(chunks.iter())
        .map(|chunk| {
            let (pool, matcher) = (&pool, matcher.clone());
            async move { quizflow_batch(pool, &matcher, chunk).await }
        })
        .buffer_unordered(writers)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<usize>, _>>()?;
    let ours = args.rows as f64 / started.elapsed().as_secs_f64();
    let ledger: i64 = admin
        .query_one(quizflow_store::ceiling::COUNT_DELIVERIES, &[])
        .await?
        .get(0);
    admin
        .batch_execute(quizflow_store::ceiling::TRUNCATE_INTAKE)
        .await?;
    Ok(StoreReport {
        rows: args.rows,
        batch,
        writers,
        raw_copy_rows_per_s: raw,
        quizflow_rows_per_s: ours,
        ratio: ours / raw,
        ledger_rows: ledger,
    })
}
