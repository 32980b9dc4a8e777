//! `quizflow replay`: historical submissions matched against today's campaigns.
//!
//! A replay reads a range of `SUBMISSIONS` on an ordered, ephemeral consumer (or, for history
//! that has aged out of the stream, of the `submissions` table), matches it in batches with the
//! batcher's own columnar matcher ([`quizflow_batcher::Matcher::for_replay`]: the same code,
//! without the live rule that a campaign only matches what arrived after its creation), and
//! creates only the ledger rows and delivery jobs that do not exist yet.
//!
//! - **Idempotent**: the ledger's key `(submission, campaign, channel)` decides, with
//!   `INSERT … ON CONFLICT DO NOTHING RETURNING`; only rows this run created get a job. An
//!   existing row still `queued` (a replay that died between its commit and its publishes)
//!   has its job published again: a worker claims the row before it sends, so a copy is never
//!   a second message.
//! - **Beside live traffic**: jobs go out on `low` priority by default (workers drain higher
//!   priorities first), the read rate is bounded, and each batch is one short statement.
//! - **Resumable**: after each batch is committed and its jobs acknowledged, the checkpoint
//!   (the next stream sequence, or the receipt time for the PostgreSQL source) is reported;
//!   `--from <checkpoint>` resumes.
//! - **Dry run**: the same reads and the same summary; nothing is written or published.

mod run;

use chrono::{DateTime, SecondsFormat, Utc};
use quizflow_core::{Channel, Priority, QuizId};
use serde::Serialize;
use std::fmt;
use std::num::NonZeroU32;
use uuid::Uuid;

pub use run::replay;

/// One end of a replay's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A `SUBMISSIONS` stream sequence (inclusive at both ends).
    Seq(u64),
    /// A receipt time: `from` inclusive, `to` exclusive.
    Time(DateTime<Utc>),
}

impl Bound {
    /// An RFC 3339 time or a stream sequence number.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Ok(seq) = raw.parse::<u64>() {
            return if seq == 0 {
                Err("stream sequences start at 1".into())
            } else {
                Ok(Bound::Seq(seq))
            };
        }
        DateTime::parse_from_rfc3339(raw)
            .map(|t| Bound::Time(t.with_timezone(&Utc)))
            .map_err(|_| {
                format!("{raw:?} is neither an RFC 3339 time (2026-11-22T10:00:00Z) nor a stream sequence")
            })
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Seq(s) => write!(f, "{s}"),
            Bound::Time(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        }
    }
}

/// Where history is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// The `SUBMISSIONS` stream (what it still holds: max age 7 days by default).
    #[default]
    Stream,
    /// The `submissions` table, for ranges that have aged out of the stream (times only).
    Postgres,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stream => "stream",
            Source::Postgres => "postgres",
        }
    }
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplaySpec {
    pub from: Bound,
    /// Default: the stream's last message when the replay starts (the table: now).
    pub to: Option<Bound>,
    /// Only these quizzes (empty: all).
    pub quizzes: Vec<QuizId>,
    /// Only these campaigns (empty: every active one that has not ended).
    pub campaigns: Vec<Uuid>,
    pub dry_run: bool,
    /// Submissions read per second (None: unbounded).
    pub rate: Option<NonZeroU32>,
    /// Priority of the jobs a replay creates.
    pub priority: Priority,
    /// Submissions matched and written per batch.
    pub batch: usize,
    pub source: Source,
    /// `QUIZFLOW_HASH_KEY`: a replayed match is checked against the suppression list, as the
    /// batcher checks a live one (contract §3.2).
    pub hash_key: quizflow_core::consent::HashKey,
}

impl ReplaySpec {
    /// Defaults: low priority, 2,000 submissions/s, batches of 500, from the stream.
    pub fn new(from: Bound) -> Self {
        Self {
            from,
            to: None,
            quizzes: Vec::new(),
            campaigns: Vec::new(),
            dry_run: false,
            rate: NonZeroU32::new(DEFAULT_RATE),
            priority: Priority::Low,
            batch: DEFAULT_BATCH,
            source: Source::Stream,
            hash_key: quizflow_core::consent::HashKey::for_tests(),
        }
    }
}

/// Submissions read per second unless told otherwise: a fraction of what one batcher stores,
/// so a replay never competes with live intake for the database.
pub const DEFAULT_RATE: u32 = 2_000;
/// Small beside the live batcher's 1,000: each batch is one short ledger statement.
pub const DEFAULT_BATCH: usize = 500;

/// Where to resume: the value to give `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint(pub Bound);

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Per campaign and channel: what the replay found and did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CampaignCounts {
    pub campaign_id: Uuid,
    pub campaign: String,
    pub channel: Channel,
    /// Ledger rows (and jobs) this run created — or, in a dry run, would create.
    pub created: u64,
    /// Matches whose ledger row already existed (sent live, or by an earlier replay).
    pub existed: u64,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub dry_run: bool,
    pub source: &'static str,
    /// Submissions (or rows) read, in range or not.
    pub read: u64,
    /// Stream messages (or rows) read: a message holds one or more submissions.
    pub messages: u64,
    /// Submissions in the range.
    pub scanned: u64,
    /// In the range but not stored (dead-lettered, or the live batcher has not got to it yet):
    /// nothing can be sent for them.
    pub not_stored: u64,
    /// Submissions (or rows) that do not decode.
    pub undecodable: u64,
    /// Submissions that matched at least one selected campaign.
    pub matched: u64,
    pub jobs_created: u64,
    pub already_existed: u64,
    /// Matches not created: the contact is on the suppression list for the campaign's purpose.
    pub suppressed: u64,
    /// Existing ledger rows still `queued` whose job was published again (one claim per row:
    /// never a second message).
    pub republished: u64,
    pub by_campaign: Vec<CampaignCounts>,
    /// Resume here (`--from`); None before the first batch.
    pub checkpoint: Option<String>,
    /// False when stopped before the end of the range.
    pub completed: bool,
    pub elapsed_s: f64,
}

/// Reported after every batch.
#[derive(Debug)]
pub struct Progress<'a> {
    /// Messages (rows) the range holds, as estimated at the start.
    pub total: u64,
    /// Messages (rows) read so far.
    pub done: u64,
    pub summary: &'a Summary,
}

/// Why a replay could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Range(String),
    #[error(
        "the stream no longer holds the start of this range: SUBMISSIONS starts at sequence {first_seq}{since}; \
         replay it from the submissions table with --source postgres (times only), or start at or after that point"
    )]
    AgedOut { first_seq: u64, since: String },
    #[error("campaign {0} does not exist")]
    UnknownCampaign(Uuid),
    #[error("campaign {id} ({name}) {why}: its jobs would be cancelled, not sent")]
    CampaignNotLive {
        id: Uuid,
        name: String,
        why: &'static str,
    },
    #[error("no active campaign to replay against")]
    NoCampaigns,
    #[error("nats: {0}")]
    Nats(#[from] quizflow_nats::NatsError),
    #[error("database: {0}")]
    Store(#[from] quizflow_store::StoreError),
    #[error("{error} (resume with --from {checkpoint})")]
    Interrupted {
        error: Box<ReplayError>,
        checkpoint: String,
        summary: Box<Summary>,
    },
    #[error("matcher task failed: {0}")]
    Matcher(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_sequences_or_rfc3339_times() {
        assert_eq!(Bound::parse("42"), Ok(Bound::Seq(42)));
        assert!(Bound::parse("0").is_err());
        let t = Bound::parse("2026-11-22T10:00:00-03:00").expect("time");
        assert_eq!(t.to_string(), "2026-11-22T13:00:00Z");
        let precise = Bound::parse("2026-11-22T13:00:00.123456Z").expect("time");
        assert_eq!(
            Bound::parse(&precise.to_string()),
            Ok(precise),
            "a printed checkpoint parses back to itself"
        );
        assert!(Bound::parse("yesterday").is_err());
        assert!(Bound::parse("-1").is_err());
    }
}
