//! What `quizflow replay` reads and writes: which submissions are stored, which ledger rows
//! exist, the insert of the missing ones, and history paged out of the `submissions` table
//! when it has aged out of the stream.
//!
//! The ledger's primary key `(submission_id, campaign_id, channel)` is what makes a replay
//! idempotent: rows are inserted with `ON CONFLICT DO NOTHING RETURNING`, so only the rows
//! this statement created come back, whatever ran before or runs beside it.

use crate::intake::{LedgerColumns, LedgerRow, LEDGER_COLUMNS};
use crate::submissions::{StoredRow, STORED_COLUMNS};
use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use quizflow_core::{Channel, DeliveryJob, SubmissionEnvelope};
use std::collections::HashSet;
use uuid::Uuid;

/// A ledger key: (submission, campaign, channel, step).
pub type LedgerKey = (Uuid, Uuid, Channel, u16);

#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// The ids among `ids` that are stored (in `submission_ids`, written in the same
/// transaction as the submission row) and whose person was not erased.
pub async fn stored_ids(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, StoreError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    // A submission whose person was erased counts as not stored: a replay never brings
    // them back.
    let rows: Vec<IdRow> = diesel::sql_query(
        "SELECT i.id FROM submission_ids i JOIN submissions s ON s.id = i.id AND s.received_at = i.received_at \
         WHERE i.id = ANY($1) AND s.erased_at IS NULL",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// A ledger row that already exists for a replayed job.
#[derive(Debug, Clone)]
pub struct Existing {
    pub key: LedgerKey,
    pub status: String,
    /// The job as the ledger row describes it (what a re-publish sends).
    pub job: DeliveryJob,
}

/// The ledger rows that already exist among the keys of `jobs`.
pub async fn existing(
    conn: &mut AsyncPgConnection,
    jobs: &[DeliveryJob],
) -> Result<Vec<Existing>, StoreError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let subs: Vec<Uuid> = jobs.iter().map(|j| j.submission_id.0).collect();
    let camps: Vec<Uuid> = jobs.iter().map(|j| j.campaign_id).collect();
    let channels: Vec<&str> = jobs.iter().map(|j| j.channel.as_str()).collect();
    let steps: Vec<i16> = jobs.iter().map(|j| j.step as i16).collect();
    let rows: Vec<LedgerRow> = diesel::sql_query(format!(
        "SELECT {LEDGER_COLUMNS} \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[]) AS u(sub, camp, channel, step) \
         JOIN deliveries d ON d.submission_id = u.sub AND d.campaign_id = u.camp AND d.channel = u.channel \
              AND d.step = u.step"
    ))
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<diesel::sql_types::SmallInt>, _>(&steps)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let job = r.job()?;
            Some(Existing {
                key: key_of(&job),
                status: r.status,
                job,
            })
        })
        .collect())
}

#[derive(diesel::QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = SqlUuid)]
    submission_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = diesel::sql_types::SmallInt)]
    step: i16,
}

/// Inserts the ledger rows of `jobs` that do not exist yet (`queued`), in one statement,
/// and returns the keys it created. A row that exists — from the live batcher, an earlier
/// replay or one running beside this one — is left alone.
pub async fn insert_missing(
    conn: &mut AsyncPgConnection,
    jobs: &[DeliveryJob],
) -> Result<HashSet<LedgerKey>, StoreError> {
    if jobs.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<KeyRow> = LedgerColumns::of(jobs).insert(true).load(conn).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some((
                r.submission_id,
                r.campaign_id,
                Channel::parse(&r.channel)?,
                u16::try_from(r.step).ok()?,
            ))
        })
        .collect())
}

/// The ledger key of a job.
pub fn key_of(job: &DeliveryJob) -> LedgerKey {
    (job.submission_id.0, job.campaign_id, job.channel, job.step)
}

/// Which stored submissions a replay from PostgreSQL reads.
#[derive(Debug, Clone)]
pub struct Range {
    /// Inclusive lower bound on the receipt time.
    pub from: DateTime<Utc>,
    /// Exclusive upper bound on the receipt time.
    pub to: DateTime<Utc>,
    /// Only these quizzes (empty: all).
    pub quizzes: Vec<String>,
}

/// Where a page of [`page`] resumes: after this (receipt time, id).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct After {
    pub received_at: DateTime<Utc>,
    pub id: Uuid,
}

/// One page of [`page`]: the submissions, how many rows did not parse, and the key of the
/// page's last row (where the next page starts).
#[derive(Debug)]
pub struct Page {
    pub submissions: Vec<(SubmissionEnvelope, u64)>,
    pub unreadable: usize,
    pub rows: usize,
    pub last: Option<After>,
}

/// One page of stored submissions in `range`, in (receipt time, id) order, after `after`
/// and before `window_end` (which the caller keeps small enough that the BRIN index on
/// `received_at` narrows the read to the blocks of that window). Rows that no longer parse
/// are skipped and counted.
pub async fn page(
    conn: &mut AsyncPgConnection,
    range: &Range,
    after: After,
    window_end: DateTime<Utc>,
    limit: usize,
) -> Result<Page, StoreError> {
    let hi = window_end.min(range.to);
    let rows: Vec<StoredRow> = diesel::sql_query(format!(
        "SELECT {STORED_COLUMNS} FROM submissions s \
         WHERE s.received_at >= $1 AND s.received_at < $2 AND (s.received_at, s.id) > ($3, $4) \
           AND (cardinality($5::text[]) = 0 OR s.quiz_id = ANY($5)) AND s.erased_at IS NULL \
           AND s.quiz_id <> '_messages' \
         ORDER BY s.received_at, s.id LIMIT $6"
    ))
    .bind::<Timestamptz, _>(range.from.max(after.received_at))
    .bind::<Timestamptz, _>(hi)
    .bind::<Timestamptz, _>(after.received_at)
    .bind::<SqlUuid, _>(after.id)
    .bind::<Array<Text>, _>(&range.quizzes)
    .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
    .load(conn)
    .await?;
    let total = rows.len();
    let last = rows.last().map(|r| After {
        received_at: r.received_at,
        id: r.id,
    });
    let submissions: Vec<_> = rows
        .into_iter()
        .filter_map(StoredRow::into_envelope)
        .collect();
    Ok(Page {
        unreadable: total - submissions.len(),
        rows: total,
        submissions,
        last,
    })
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many stored submissions `range` holds (the progress bar's total).
pub async fn count(conn: &mut AsyncPgConnection, range: &Range) -> Result<u64, StoreError> {
    let c: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM submissions WHERE received_at >= $1 AND received_at < $2 \
           AND (cardinality($3::text[]) = 0 OR quiz_id = ANY($3)) AND quiz_id <> '_messages'",
    )
    .bind::<Timestamptz, _>(range.from)
    .bind::<Timestamptz, _>(range.to)
    .bind::<Array<Text>, _>(&range.quizzes)
    .get_result(conn)
    .await?;
    Ok(u64::try_from(c.n).unwrap_or(0))
}
