//! The replay loop: read a range in batches, match, write what is missing, publish, report.

mod create;

use crate::{
    Bound, CampaignCounts, Checkpoint, Progress, ReplayError, ReplaySpec, Source, Summary,
};
use async_nats::jetstream;
use chrono::Utc;
use futures::future::FusedFuture;
use futures::{FutureExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use quizflow_batcher::Matcher;
use quizflow_core::{Campaign, Channel, DeliveryJob, SubmissionEnvelope};
use quizflow_nats::{HistoryMessage, StartAt};
use quizflow_store::replay::{self as ledger, After, LedgerKey};
use quizflow_store::{Pool, Retry, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The API sets a submission's receipt time a moment before JetStream stores it (a publish
/// can wait for its ack up to the publish timeout): a time range is read from the stream with
/// this margin and then cut exactly on the receipt time the message carries.
const SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Attempts of one step (a ledger statement, a publish) before the replay gives up and
/// reports where to resume.
const ATTEMPTS: u32 = 8;

/// Runs a replay until its range is done or `stop` resolves (then after the batch in hand),
/// calling `on_progress` after every batch. An error that outlasts the retries comes back as
/// [`ReplayError::Interrupted`] with the checkpoint to resume from.
pub async fn replay(
    spec: &ReplaySpec,
    js: &jetstream::Context,
    pool: &Pool,
    on_progress: impl FnMut(&Progress<'_>),
    stop: impl Future<Output = ()>,
) -> Result<Summary, ReplayError> {
    if spec.batch == 0 {
        return Err(ReplayError::Range(
            "the batch size must be at least 1".into(),
        ));
    }
    match (spec.from, spec.to) {
        (Bound::Time(a), Some(Bound::Time(b))) if a >= b => {
            return Err(ReplayError::Range(format!(
                "--from {} is not before --to {}",
                spec.from,
                Bound::Time(b)
            )))
        }
        (Bound::Seq(a), Some(Bound::Seq(b))) if a > b => {
            return Err(ReplayError::Range(format!("--from {a} is after --to {b}")))
        }
        _ => {}
    }
    let campaigns = select_campaigns(spec, pool).await?;
    let names = campaigns
        .iter()
        .map(|c| (c.id, c.spec.name.clone()))
        .collect();
    let batch = match spec.rate {
        // A batch never waits for more tokens than the bucket can hold.
        Some(r) => spec.batch.min(r.get() as usize).max(1),
        None => spec.batch,
    };
    let limiter = spec.rate.map(|r| {
        let burst = NonZeroU32::new(u32::try_from(batch).unwrap_or(u32::MAX)).unwrap_or(r);
        RateLimiter::direct(Quota::per_second(r).allow_burst(burst))
    });
    let mut r = Replayer {
        spec,
        js,
        pool,
        batch,
        matcher: Arc::new(Matcher::for_replay(campaigns)),
        names,
        counts: BTreeMap::new(),
        summary: Summary {
            dry_run: spec.dry_run,
            source: spec.source.as_str(),
            ..Summary::default()
        },
        limiter,
        started: Instant::now(),
        total: 0,
    };
    let stop = stop.fuse();
    tokio::pin!(stop);
    let outcome = match spec.source {
        Source::Stream => r.read_stream(&mut stop, on_progress).await,
        Source::Postgres => r.read_postgres(&mut stop, on_progress).await,
    };
    let summary = r.finish();
    match outcome {
        Ok(completed) => Ok(Summary {
            completed,
            ..summary
        }),
        Err(e @ (ReplayError::Range(_) | ReplayError::AgedOut { .. })) => Err(e),
        Err(e) => Err(ReplayError::Interrupted {
            checkpoint: summary
                .checkpoint
                .clone()
                .unwrap_or_else(|| spec.from.to_string()),
            error: Box::new(e),
            summary: Box::new(summary),
        }),
    }
}

/// The campaigns a replay matches against: those named, or every active one that has not
/// ended. A campaign whose jobs the workers would cancel is refused rather than replayed.
async fn select_campaigns(
    spec: &ReplaySpec,
    pool: &Pool,
) -> Result<Vec<Arc<Campaign>>, ReplayError> {
    let mut conn = pool.get().await.map_err(StoreError::from)?;
    let all = quizflow_store::campaigns::list(&mut conn).await?;
    let now = Utc::now();
    let live = |c: &Campaign| -> Result<(), &'static str> {
        if !c.spec.active {
            Err("is not active")
        } else if c.spec.ends_at.is_some_and(|e| e <= now) {
            Err("has ended")
        } else {
            Ok(())
        }
    };
    let chosen: Vec<Campaign> = if spec.campaigns.is_empty() {
        all.into_iter().filter(|c| live(c).is_ok()).collect()
    } else {
        let mut by_id: HashMap<Uuid, Campaign> = all.into_iter().map(|c| (c.id, c)).collect();
        let mut chosen = Vec::new();
        for id in &spec.campaigns {
            let c = by_id.remove(id).ok_or(ReplayError::UnknownCampaign(*id))?;
            live(&c).map_err(|why| ReplayError::CampaignNotLive {
                id: c.id,
                name: c.spec.name.clone(),
                why,
            })?;
            chosen.push(c);
        }
        chosen
    };
    if chosen.is_empty() {
        return Err(ReplayError::NoCampaigns);
    }
    Ok(chosen.into_iter().map(Arc::new).collect())
}

/// Where a stream read ends, and the receipt times it keeps.
struct Window {
    end_seq: u64,
    from_time: Option<chrono::DateTime<Utc>>,
    to_time: Option<chrono::DateTime<Utc>>,
}

/// One batch read from the stream.
struct ReadBatch {
    batch: Vec<SubmissionEnvelope>,
    messages: usize,
    last_seq: Option<u64>,
    /// The range's end was reached.
    end: bool,
    /// The stop came while waiting for the batch's first message.
    stopped: bool,
}

struct Replayer<'a> {
    spec: &'a ReplaySpec,
    js: &'a jetstream::Context,
    pool: &'a Pool,
    batch: usize,
    matcher: Arc<Matcher>,
    names: HashMap<Uuid, String>,
    /// (campaign, channel) → (created, existed)
    counts: BTreeMap<(Uuid, Channel), (u64, u64)>,
    summary: Summary,
    limiter: Option<DefaultDirectRateLimiter>,
    started: Instant,
    total: u64,
}

/// Whether a step's failure is worth another attempt.
fn transient(e: &ReplayError) -> bool {
    match e {
        ReplayError::Store(s) => s.retry() == Retry::Later,
        ReplayError::Nats(_) => true,
        _ => false,
    }
}

/// Runs `step` until it succeeds, fails for good, or has failed [`ATTEMPTS`] times.
async fn with_retry<T, F, Fut>(what: &str, mut step: F) -> Result<T, ReplayError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ReplayError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                tracing::warn!(error = %e, attempt, retry_in = ?delay, "replay {what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Replayer<'_> {
    fn finish(&mut self) -> Summary {
        let mut s = self.summary.clone();
        s.by_campaign = self
            .counts
            .iter()
            .map(|(&(id, channel), &(created, existed))| CampaignCounts {
                campaign_id: id,
                campaign: self.names.get(&id).cloned().unwrap_or_default(),
                channel,
                created,
                existed,
            })
            .collect();
        s.elapsed_s = self.started.elapsed().as_secs_f64();
        s
    }

    fn report(&mut self, on_progress: &mut impl FnMut(&Progress<'_>), checkpoint: Bound) {
        self.summary.checkpoint = Some(Checkpoint(checkpoint).to_string());
        self.summary.elapsed_s = self.started.elapsed().as_secs_f64();
        on_progress(&Progress {
            total: self.total.max(self.summary.messages),
            done: self.summary.messages,
            summary: &self.summary,
        });
    }

    async fn pace(&self, n: usize) {
        if let (Some(l), Some(n)) = (
            &self.limiter,
            NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)),
        ) {
            // n never exceeds the burst (the batch size is capped by the rate).
            let _ = l.until_n_ready(n).await;
        }
    }

    /// What the stream no longer holds: only when something was removed (first_seq > 1).
    fn check_not_aged_out(&self, history: &quizflow_nats::History) -> Result<(), ReplayError> {
        let aged_out = history.first_seq > 1
            && match self.spec.from {
                Bound::Seq(s) => s < history.first_seq,
                Bound::Time(t) => history.first_time.is_none_or(|f| t < f),
            };
        if !aged_out {
            return Ok(());
        }
        Err(ReplayError::AgedOut {
            first_seq: history.first_seq,
            since: history
                .first_time
                .map(|t| format!(" (received {})", Bound::Time(t)))
                .unwrap_or_default(),
        })
    }

    /// The stream source. Returns whether the whole range was read.
    async fn read_stream<S>(
        &mut self,
        stop: &mut std::pin::Pin<&mut futures::future::Fuse<S>>,
        mut on_progress: impl FnMut(&Progress<'_>),
    ) -> Result<bool, ReplayError>
    where
        S: Future<Output = ()>,
    {
        let history = quizflow_nats::submissions_history(self.js).await?;
        self.check_not_aged_out(&history)?;
        let (start, from_time) = match self.spec.from {
            Bound::Seq(s) => (StartAt::Seq(s), None),
            Bound::Time(t) => (StartAt::Time(t - SLACK), Some(t)),
        };
        let (end_seq, to_time) = match self.spec.to {
            None => (history.last_seq, None),
            Some(Bound::Seq(s)) => (s.min(history.last_seq), None),
            Some(Bound::Time(t)) => (history.last_seq, Some(t)),
        };
        let first = match self.spec.from {
            Bound::Seq(s) => s,
            Bound::Time(_) => 1,
        };
        if history.messages == 0 || first > end_seq {
            self.report(&mut on_progress, self.spec.from);
            return Ok(true);
        }
        let (mut messages, pending) =
            quizflow_nats::read_submissions(self.js, start, &self.spec.quizzes).await?;
        self.total = match self.spec.from {
            Bound::Seq(s) => pending.min(end_seq.saturating_sub(s) + 1),
            Bound::Time(_) => pending,
        };
        if pending == 0 {
            self.report(&mut on_progress, self.spec.from);
            return Ok(true);
        }
        let window = Window {
            end_seq,
            from_time,
            to_time,
        };
        loop {
            let read = self.read_batch(&mut messages, stop, &window).await?;
            self.pace(read.messages).await;
            self.summary.scanned += read.batch.len() as u64;
            self.process(read.batch, true).await?;
            if let Some(s) = read.last_seq {
                self.report(&mut on_progress, Bound::Seq(s + 1));
            }
            if read.end {
                return Ok(true);
            }
            if read.stopped || stop.is_terminated() || stop.as_mut().now_or_never().is_some() {
                return Ok(false);
            }
        }
    }

    /// Up to a batch of the stream's messages, their submissions in the time range decoded.
    async fn read_batch<S>(
        &mut self,
        messages: &mut (impl futures::Stream<Item = Result<HistoryMessage, quizflow_nats::NatsError>>
                  + Unpin),
        stop: &mut std::pin::Pin<&mut futures::future::Fuse<S>>,
        w: &Window,
    ) -> Result<ReadBatch, ReplayError>
    where
        S: Future<Output = ()>,
    {
        let mut r = ReadBatch {
            batch: Vec::with_capacity(self.batch),
            messages: 0,
            last_seq: None,
            end: false,
            stopped: false,
        };
        while r.messages < self.batch && !r.end {
            let next = if r.messages == 0 {
                tokio::select! {
                    m = messages.next() => m,
                    _ = &mut *stop => { r.stopped = true; break; }
                }
            } else {
                // The consumer pulls 500 at a time: a pause means the pull is refilling.
                match tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            let msg: HistoryMessage = match next {
                Some(m) => m?,
                None => {
                    return Err(ReplayError::Nats(quizflow_nats::NatsError::Api(
                        "the replay consumer's message stream ended".into(),
                    )))
                }
            };
            if msg.seq > w.end_seq || w.to_time.is_some_and(|t| msg.stored_at >= t + SLACK) {
                r.end = true;
                break;
            }
            r.messages += 1;
            r.last_seq = Some(msg.seq);
            r.end = msg.pending == 0 || msg.seq >= w.end_seq;
            self.summary.messages += 1;
            // A message holds one or more submissions (the API packs them).
            for member in quizflow_batcher::decode_members(&msg.payload) {
                self.summary.read += 1;
                let Ok(envelope) = member else {
                    self.summary.undecodable += 1;
                    continue;
                };
                let in_range = w.from_time.is_none_or(|t| envelope.received_at >= t)
                    && w.to_time.is_none_or(|t| envelope.received_at < t);
                if in_range {
                    r.batch.push(envelope);
                }
            }
        }
        Ok(r)
    }

    /// The range in the table: `--from`/`--to` must be times there.
    fn postgres_range(&self) -> Result<ledger::Range, ReplayError> {
        let times_only = || {
            ReplayError::Range(
                "--source postgres takes RFC 3339 times for --from and --to (sequences belong to the stream)"
                    .into(),
            )
        };
        let from = match self.spec.from {
            Bound::Time(t) => t,
            Bound::Seq(_) => return Err(times_only()),
        };
        let to = match self.spec.to {
            None => Utc::now(),
            Some(Bound::Time(t)) => t,
            Some(Bound::Seq(_)) => return Err(times_only()),
        };
        let quizzes = self.spec.quizzes.iter().map(|q| q.as_str().to_owned());
        Ok(ledger::Range {
            from,
            to,
            quizzes: quizzes.collect(),
        })
    }

    /// The PostgreSQL source: `submissions` in (receipt time, id) order, paged by time
    /// windows that halve when a page is full and double when it is not.
    async fn read_postgres<S>(
        &mut self,
        stop: &mut std::pin::Pin<&mut futures::future::Fuse<S>>,
        mut on_progress: impl FnMut(&Progress<'_>),
    ) -> Result<bool, ReplayError>
    where
        S: Future<Output = ()>,
    {
        let range = self.postgres_range()?;
        let (from, to) = (range.from, range.to);
        self.total = with_retry("count", || async {
            let mut c = self.pool.get().await.map_err(StoreError::from)?;
            Ok(ledger::count(&mut c, &range).await?)
        })
        .await?;
        let mut after = After {
            received_at: from,
            id: Uuid::nil(),
        };
        let mut window = chrono::TimeDelta::hours(1);
        loop {
            if stop.is_terminated() || stop.as_mut().now_or_never().is_some() {
                return Ok(false);
            }
            let window_end = after
                .received_at
                .checked_add_signed(window)
                .unwrap_or(to)
                .min(to);
            let page = with_retry("read", || async {
                let mut c = self.pool.get().await.map_err(StoreError::from)?;
                Ok(ledger::page(&mut c, &range, after, window_end, self.batch).await?)
            })
            .await?;
            self.pace(page.rows).await;
            self.summary.read += page.rows as u64;
            self.summary.messages += page.rows as u64;
            self.summary.undecodable += page.unreadable as u64;
            self.summary.scanned += page.submissions.len() as u64;
            let full = page.rows >= self.batch;
            let last = page.last;
            self.process(
                page.submissions.into_iter().map(|(e, _)| e).collect(),
                false,
            )
            .await?;
            match (full, last) {
                (true, Some(last)) => {
                    after = last;
                    window = (window / 2).max(chrono::TimeDelta::seconds(1));
                }
                _ => {
                    after = After {
                        received_at: window_end,
                        id: Uuid::nil(),
                    };
                    window = (window * 2).min(chrono::TimeDelta::days(31));
                }
            }
            self.report(&mut on_progress, Bound::Time(after.received_at));
            if !full && window_end >= to {
                return Ok(true);
            }
        }
    }
}
