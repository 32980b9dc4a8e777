//! Replay throughput: submissions replayed per second against 1,000 campaigns, in one run.
//!
//! Set-up: `--submissions` realistic leads published to `SUBMISSIONS` and stored by the
//! batcher; then `--campaigns` campaigns are created (so live matching never saw them: 90 %
//! quiz-scoped, a lead matches about two). Phases, on the same data:
//! 1. **read ceiling**: the ordered consumer over the range, decode only;
//! 2. **matcher only**: `Matcher::for_replay` over the decoded envelopes, in batches;
//! 3. **dry run**: read + stored check + match + ledger lookup;
//! 4. **replay**: the real thing at `--rate 0` (ledger insert + job publishes);
//! 5. **second replay**: everything exists (the idempotent path);
//! 6. **PostgreSQL source**, dry: the same range paged out of `submissions`;
//! 7. **live intake alone, then beside a replay** at the default rate and priority.

use futures::StreamExt;
use quizflow_batcher::{Batcher, BatcherSettings, Matcher};
use quizflow_core::{parse_campaign, SubmissionEnvelope};
use quizflow_replay::{Bound, ReplaySpec, Source};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Stored submissions to replay.
    #[arg(long, default_value_t = 20_000)]
    pub submissions: usize,
    /// Active campaigns to match against (created after the submissions).
    #[arg(long, default_value_t = 1_000)]
    pub campaigns: usize,
    /// Submissions per replay batch.
    #[arg(long, default_value_t = quizflow_replay::DEFAULT_BATCH)]
    pub batch: usize,
    /// fsync policy of the private nats-server (`always`, as `quizflow up` runs it, or
    /// `interval`, the server's default): every job a replay creates is one stored message.
    #[arg(long, value_enum, default_value_t = crate::Fsync::Always)]
    pub fsync: crate::Fsync,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub submissions_per_s: f64,
    pub seconds: f64,
    /// Against the read ceiling (phase 1).
    pub of_read_ceiling: f64,
    pub jobs_created: u64,
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub submissions: usize,
    pub campaigns: usize,
    pub batch: usize,
    pub fsync: crate::Fsync,
    pub matched: u64,
    pub phases: Vec<Phase>,
    /// Live intake (publish + batcher store) of this many new submissions…
    pub live_submissions: usize,
    /// …with no replay running,
    pub live_alone_per_s: f64,
    /// …and beside a replay at the default rate and priority.
    pub live_beside_replay_per_s: f64,
    /// Submissions that replay scanned meanwhile.
    pub replayed_beside: u64,
}

impl ReplayReport {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## quizflow replay benchmark\n\n{} stored submissions, {} campaigns (90 % quiz-scoped), batches of {}, nats-server fsync {:?}; {} submissions matched.\n\n\
             | phase | submissions/s | of read ceiling | jobs created |\n|---|---|---|---|\n",
            self.submissions, self.campaigns, self.batch, self.fsync, self.matched
        );
        for p in &self.phases {
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} % | {} |\n",
                p.name,
                p.submissions_per_s,
                p.of_read_ceiling * 100.0,
                p.jobs_created
            ));
        }
        out.push_str(&format!(
            "\nLive intake of {} new submissions (publish + batcher store): {:.0}/s alone, {:.0}/s beside a replay at the defaults \
             (2,000/s, low priority; it scanned {} meanwhile): **{:.0} %** of the rate alone.\n",
            self.live_submissions,
            self.live_alone_per_s,
            self.live_beside_replay_per_s,
            self.replayed_beside,
            100.0 * self.live_beside_replay_per_s / self.live_alone_per_s
        ));
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayBenchError {
    #[error("nats: {0}")]
    Nats(#[from] quizflow_nats::NatsError),
    #[error("store: {0}")]
    Store(#[from] quizflow_store::StoreError),
    #[error("replay: {0}")]
    Replay(#[from] quizflow_replay::ReplayError),
    #[error("{0}")]
    Setup(String),
}

const QUIZZES: usize = 20;

pub(crate) fn envelopes(n: usize) -> Vec<SubmissionEnvelope> {
    crate::leads::envelopes(n, QUIZZES)
}

/// A campaign set drawn from a fixed seed: 90 % scoped to one of the quizzes, a score band,
/// a traffic source and an answer mix each; a lead matches about two of them.
fn campaign_specs(n: usize, seed: u64) -> Vec<serde_json::Value> {
    use rand::{Rng, SeedableRng};
    const SOURCES: &[&str] = &["tv", "instagram", "google", "email", "direct"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let quiz = if rng.random_bool(0.9) {
                serde_json::json!(format!("quiz{}", rng.random_range(0..QUIZZES)))
            } else {
                serde_json::Value::Null
            };
            let low = rng.random_range(0..95);
            let width = rng.random_range(5..=20);
            serde_json::json!({
                "name": format!("replay-bench-{seed}-{i}"), "quiz_id": quiz,
                "match": {
                    "all": [
                        {"field": "score", "op": "gte", "value": low},
                        {"field": "score", "op": "lt", "value": low + width},
                        {"field": "metadata.utm_source", "op": "eq", "value": SOURCES[rng.random_range(0..SOURCES.len())]},
                    ],
                    "any": [
                        {"field": "answers.q1", "op": "in", "value": ["a", "b"]},
                        {"field": "answers.q2", "op": "gte", "value": 4},
                    ]
                },
                "actions": [{"channel": if rng.random_bool(0.3) { "email" } else { "sms" }, "template": "hi"}]
            })
        })
        .collect()
}

/// Publishes `data` (pipelined) and returns how long the batcher took to store it all.
pub(crate) async fn publish_and_store(
    data: &[SubmissionEnvelope],
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    pool: &quizflow_store::Pool,
) -> Result<Duration, ReplayBenchError> {
    futures::stream::iter(data.iter())
        .map(|e| quizflow_nats::publish_submission(js, e))
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let batcher = Batcher::new(
        BatcherSettings::default(),
        client.clone(),
        js.clone(),
        pool.clone(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        let _ = batcher
            .run(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    let ids: Vec<uuid::Uuid> = data.iter().map(|e| e.submission_id.0).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut conn = pool.get().await.map_err(quizflow_store::StoreError::from)?;
        if quizflow_store::replay::stored_ids(&mut conn, &ids)
            .await?
            .len()
            == ids.len()
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(ReplayBenchError::Setup(
                "the batcher did not store the submissions".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let _ = stop_tx.send(());
    let _ = task.await;
    Ok(took)
}

async fn create_campaigns(
    pool: &quizflow_store::Pool,
    n: usize,
    seed: u64,
) -> Result<Vec<Arc<quizflow_core::Campaign>>, ReplayBenchError> {
    let mut conn = pool.get().await.map_err(quizflow_store::StoreError::from)?;
    let mut out = Vec::with_capacity(n);
    for body in campaign_specs(n, seed) {
        let spec = parse_campaign(&body)
            .map_err(|e| ReplayBenchError::Setup(format!("campaign: {e:?}")))?;
        out.push(Arc::new(
            quizflow_store::campaigns::insert(&mut conn, &spec).await?,
        ));
    }
    Ok(out)
}

/// The stream's submissions from `first` to `last`, decoded (the read ceiling's work).
async fn read_back(
    js: &async_nats::jetstream::Context,
    first: u64,
    last: u64,
    expected: usize,
) -> Result<Vec<SubmissionEnvelope>, ReplayBenchError> {
    let (mut messages, _) =
        quizflow_nats::read_submissions(js, quizflow_nats::StartAt::Seq(first), &[]).await?;
    let mut decoded: Vec<SubmissionEnvelope> = Vec::with_capacity(expected);
    while let Some(m) = messages.next().await {
        let m = m?;
        decoded.extend(
            quizflow_batcher::decode_members(&m.payload)
                .into_iter()
                .flatten(),
        );
        if m.seq >= last {
            break;
        }
    }
    Ok(decoded)
}

/// Submissions matched by at least one campaign, in batches of `batch` (rayon).
fn match_only(matcher: &Matcher, decoded: &[SubmissionEnvelope], batch: usize) -> u64 {
    decoded
        .chunks(batch.max(1))
        .map(|chunk| {
            let m = matcher.match_batch(chunk);
            m.iter()
                .map(|m| m.row)
                .collect::<std::collections::HashSet<_>>()
                .len() as u64
        })
        .sum()
}

/// The replays measured: (phase, dry run, source).
const REPLAYS: [(&str, bool, Source); 4] = [
    (
        "dry run (read, stored check, match, ledger lookup)",
        true,
        Source::Stream,
    ),
    (
        "replay (+ ledger insert, job publishes)",
        false,
        Source::Stream,
    ),
    ("second replay (everything exists)", false, Source::Stream),
    ("dry run from PostgreSQL", true, Source::Postgres),
];

/// The benchmark's range, replayed as `quizflow replay` would.
struct Range<'a> {
    js: &'a async_nats::jetstream::Context,
    pool: &'a quizflow_store::Pool,
    first_seq: u64,
    last_seq: u64,
    first_time: chrono::DateTime<chrono::Utc>,
    batch: usize,
}

impl Range<'_> {
    async fn replay(
        &self,
        dry_run: bool,
        source: Source,
    ) -> Result<quizflow_replay::Summary, ReplayBenchError> {
        let mut s = ReplaySpec::new(match source {
            Source::Stream => Bound::Seq(self.first_seq),
            Source::Postgres => Bound::Time(self.first_time),
        });
        s.to = Some(match source {
            Source::Stream => Bound::Seq(self.last_seq),
            Source::Postgres => Bound::Time(chrono::Utc::now()),
        });
        s.dry_run = dry_run;
        s.rate = None;
        s.batch = self.batch;
        s.source = source;
        let never = futures::future::pending();
        Ok(quizflow_replay::replay(&s, self.js, self.pool, |_| {}, never).await?)
    }
}

/// Live intake beside a replay of the range `from..=to`.
struct Beside<'a> {
    client: &'a async_nats::Client,
    js: &'a async_nats::jetstream::Context,
    pool: &'a quizflow_store::Pool,
    from: u64,
    to: u64,
}

impl Beside<'_> {
    /// Live submissions per second alone, then beside the replay, and what the replay
    /// scanned meanwhile.
    async fn measure(
        &self,
        live: usize,
        batch: usize,
    ) -> Result<(f64, f64, u64), ReplayBenchError> {
        let (client, js, pool) = (self.client, self.js, self.pool);
        let alone = publish_and_store(&envelopes(live), client, js, pool).await?;
        let fresh = create_campaigns(pool, 100, 2).await?;
        let mut spec = ReplaySpec::new(Bound::Seq(self.from));
        spec.to = Some(Bound::Seq(self.to));
        spec.campaigns = fresh.iter().map(|c| c.id).collect();
        spec.batch = batch;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let replay_task = {
            let (js, pool) = (js.clone(), pool.clone());
            tokio::spawn(async move {
                quizflow_replay::replay(&spec, &js, &pool, |_| {}, async {
                    let _ = stop_rx.await;
                })
                .await
            })
        };
        let beside = publish_and_store(&envelopes(live), client, js, pool).await?;
        let _ = stop_tx.send(());
        let replayed = replay_task
            .await
            .map_err(|e| ReplayBenchError::Setup(e.to_string()))??;
        Ok((
            live as f64 / alone.as_secs_f64(),
            live as f64 / beside.as_secs_f64(),
            replayed.scanned,
        ))
    }
}

pub async fn run_replay(
    args: &ReplayArgs,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    database_url: &str,
) -> Result<ReplayReport, ReplayBenchError> {
    let pool = quizflow_store::pool(database_url, 4);
    let data = envelopes(args.submissions);
    let first_seq = quizflow_nats::submissions_history(&js).await?.last_seq + 1;
    publish_and_store(&data, &client, &js, &pool).await?;
    let last_seq = quizflow_nats::submissions_history(&js).await?.last_seq;
    // Campaigns, created now: after every submission.
    let campaigns = create_campaigns(&pool, args.campaigns, 1).await?;

    let n = args.submissions as f64;
    let mut phases = Vec::new();
    // 1. Read ceiling: the ordered consumer, decode only.
    let started = Instant::now();
    let decoded = read_back(&js, first_seq, last_seq, args.submissions).await?;
    let read_s = started.elapsed().as_secs_f64();
    let ceiling = n / read_s;
    let mut phase = |name, count: f64, seconds: f64, jobs| {
        phases.push(Phase {
            name,
            submissions_per_s: count / seconds,
            seconds,
            of_read_ceiling: (count / seconds) / ceiling,
            jobs_created: jobs,
        })
    };
    phase("read + decode (ceiling)", n, read_s, 0);

    // 2. Matcher only (rayon, in batches).
    let matcher = Matcher::for_replay(campaigns.iter().cloned());
    let started = Instant::now();
    let matched = match_only(&matcher, &decoded, args.batch);
    phase("matcher only", n, started.elapsed().as_secs_f64(), 0);

    let range = Range {
        js: &js,
        pool: &pool,
        first_seq,
        last_seq,
        first_time: data[0].received_at,
        batch: args.batch,
    };
    for (name, dry, source) in REPLAYS {
        let s = range.replay(dry, source).await?;
        phase(name, s.scanned as f64, s.elapsed_s, s.jobs_created);
    }
    // 7. The live batcher alone, then beside a replay at the defaults (2,000/s, low
    //    priority) of 100 campaigns created for it: how much a replay slows live intake.
    let live = (args.submissions / 2).max(1);
    let beside = Beside {
        client: &client,
        js: &js,
        pool: &pool,
        from: first_seq,
        to: last_seq,
    };
    let (live_alone, live_beside, replayed) = beside.measure(live, args.batch).await?;

    Ok(ReplayReport {
        submissions: args.submissions,
        campaigns: args.campaigns,
        batch: args.batch,
        fsync: args.fsync,
        matched,
        phases,
        live_submissions: live,
        live_alone_per_s: live_alone,
        live_beside_replay_per_s: live_beside,
        replayed_beside: replayed,
    })
}
