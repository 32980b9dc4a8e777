//! Scheduled ledger rows (`status = 'scheduled'`, `due_at`): the delay and `send_at` of
//! campaign actions. Any number of workers processes fire the due ones: each takes up to
//! `limit` rows `FOR UPDATE SKIP LOCKED` (so two processes never take the same row), moves
//! them to `queued` (or `cancelled` when their campaign is no longer live), publishes their
//! jobs, and only then commits. A process that dies before its commit leaves its rows
//! `scheduled` for the next one (a second publish inside JetStream's duplicate window is
//! dropped by message id; after it, the worker's claim sends the job once).

use crate::intake::{LedgerRow, LEDGER_COLUMNS};
use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Bool, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
// `#[diesel(embed)]` needs the trait in scope.
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_core::schedule::STEP_STRIDE;
use quizflow_core::DeliveryJob;
use uuid::Uuid;

#[derive(diesel::QueryableByName)]
struct DueRow {
    #[diesel(embed)]
    ledger: LedgerRow,
    #[diesel(sql_type = Bool)]
    live: bool,
    #[diesel(sql_type = Timestamptz)]
    due_at: DateTime<Utc>,
    /// A recurring occurrence: the last time the next one may be due.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    repeat_until: Option<DateTime<Utc>>,
    /// A recurring occurrence's campaign version (what the next occurrence is computed from).
    #[diesel(sql_type = Nullable<diesel::sql_types::Jsonb>)]
    definition: Option<serde_json::Value>,
}

impl DueRow {
    /// The occurrence after this one (a recurring action's), as a job to write `scheduled`:
    /// from the action's cadence in the campaign version this row was matched under.
    fn next_occurrence(&self) -> Option<DeliveryJob> {
        let until = self.repeat_until?;
        let job = self.ledger.job()?;
        let spec: quizflow_core::CampaignSpec =
            serde_json::from_value(self.definition.clone()?).ok()?;
        let action = spec
            .actions
            .iter()
            .filter(|a| a.channel == job.channel)
            .nth(usize::from(job.action_step()))?;
        let k = job.step / STEP_STRIDE;
        let (k2, at) = action.cadence()?.next_after(k, self.due_at, until)?;
        let step = job.action_step() + k2 * STEP_STRIDE;
        Some(DeliveryJob {
            job_id: DeliveryJob::job_id(job.submission_id, job.campaign_id, job.channel, step),
            step,
            created_at: Utc::now(),
            due_at: Some(at),
            repeat_until: Some(until),
            ..job
        })
    }
}

/// What one [`fire_due`] did.
#[derive(Debug, Default, Clone)]
pub struct Fired {
    /// Jobs published (now `queued`).
    pub published: usize,
    /// Rows whose campaign was deactivated, ended or deleted (now `cancelled`).
    pub cancelled: usize,
    /// Rows left scheduled because this build cannot make their job (an unknown channel).
    pub skipped: usize,
    /// How late each published job was: publish time minus its `due_at`, in milliseconds.
    pub lateness_ms: Vec<i64>,
    /// Next occurrences of recurring actions written (`scheduled`).
    pub next_scheduled: usize,
}

/// Why firing failed: the database, or the publish (then nothing was committed).
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publish failed: {0}")]
    Publish(String),
}

impl From<diesel::result::Error> for FireError {
    fn from(e: diesel::result::Error) -> Self {
        FireError::Store(e.into())
    }
}

/// Fires up to `limit` due rows: see the module docs. `publish` gets the jobs of the live
/// ones and must return only once JetStream acknowledged every one.
pub async fn fire_due<P, F>(
    conn: &mut AsyncPgConnection,
    limit: i64,
    channels: &[&str],
    publish: P,
) -> Result<Fired, FireError>
where
    P: FnOnce(Vec<DeliveryJob>) -> F + Send,
    F: std::future::Future<Output = Result<(), String>> + Send,
{
    conn.transaction::<Fired, FireError, _>(async move |conn| {
        let rows = lock_due(conn, limit, channels).await?;
        // A row this build cannot make a job of (a channel added by a newer version, during a
        // rolling upgrade) stays scheduled for a process that can, instead of turning
        // `queued` with no job behind it.
        let mut fired = Fired::default();
        let (rows, unknown): (Vec<DueRow>, Vec<DueRow>) = rows
            .into_iter()
            .partition(|r| !r.live || r.ledger.job().is_some());
        fired.skipped = unknown.len();
        if rows.is_empty() {
            return Ok(fired);
        }
        mark_fired(conn, &rows).await?;
        // A live recurring occurrence fired: the next one is written now, in the same
        // transaction (only one occurrence per action waits in the ledger at a time).
        let next: Vec<DeliveryJob> = rows
            .iter()
            .filter(|r| r.live)
            .filter_map(DueRow::next_occurrence)
            .collect();
        if !next.is_empty() {
            crate::intake::LedgerColumns::of(&next)
                .insert(false)
                .execute(conn)
                .await?;
        }
        fired.next_scheduled = next.len();
        let mut jobs = Vec::new();
        let mut due = Vec::new();
        for r in &rows {
            if !r.live {
                fired.cancelled += 1;
            } else if let Some(job) = r.ledger.job() {
                jobs.push(job);
                due.push(r.due_at);
            }
        }
        fired.published = jobs.len();
        if !jobs.is_empty() {
            publish(jobs).await.map_err(FireError::Publish)?;
        }
        let now = Utc::now();
        fired.lateness_ms = due.iter().map(|d| (now - *d).num_milliseconds()).collect();
        Ok(fired)
    })
    .await
}

/// Up to `limit` due rows of `channels`, locked for this transaction (others skip them).
async fn lock_due(
    conn: &mut AsyncPgConnection,
    limit: i64,
    channels: &[&str],
) -> Result<Vec<DueRow>, diesel::result::Error> {
    diesel::sql_query(format!(
        "SELECT {LEDGER_COLUMNS}, d.due_at, d.repeat_until, \
                COALESCE(c.active AND (c.ends_at IS NULL OR c.ends_at > now()), \
                         d.campaign_id = d.submission_id) AS live, \
                CASE WHEN d.repeat_until IS NOT NULL THEN \
                  (SELECT v.definition FROM campaign_versions v \
                   WHERE v.campaign_id = d.campaign_id AND v.version = d.campaign_version) END AS definition \
         FROM deliveries d LEFT JOIN campaigns c ON c.id = d.campaign_id \
         WHERE d.status = 'scheduled' AND d.due_at <= now() AND d.channel = ANY($2) \
         ORDER BY d.due_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED"
    ))
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(channels)
    .load(conn)
    .await
}

/// Fired rows become `queued` (their campaign live) or `cancelled`, in one statement.
async fn mark_fired(
    conn: &mut AsyncPgConnection,
    rows: &[DueRow],
) -> Result<usize, diesel::result::Error> {
    let subs: Vec<Uuid> = rows.iter().map(|r| r.ledger.submission_id).collect();
    let camps: Vec<Uuid> = rows.iter().map(|r| r.ledger.campaign_id).collect();
    let channels: Vec<&str> = rows.iter().map(|r| r.ledger.channel.as_str()).collect();
    let steps: Vec<i16> = rows.iter().map(|r| r.ledger.step).collect();
    let live: Vec<bool> = rows.iter().map(|r| r.live).collect();
    let reason: Vec<Option<&str>> = rows
        .iter()
        .map(|r| (!r.live).then_some("the campaign was deactivated, ended or deleted"))
        .collect();
    diesel::sql_query(
        "UPDATE deliveries d SET status = CASE WHEN u.live THEN 'queued' ELSE 'cancelled' END, \
                last_error = u.reason, updated_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::bool[], $6::text[]) \
              AS u(sub, camp, channel, step, live, reason) \
         WHERE d.submission_id = u.sub AND d.campaign_id = u.camp AND d.channel = u.channel \
           AND d.step = u.step AND d.status = 'scheduled'",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<Array<Bool>, _>(&live)
    .bind::<Array<Nullable<Text>>, _>(&reason)
    .execute(conn)
    .await
}

/// When the next scheduled row is due (`None`: nothing is scheduled), so a firing loop can
/// sleep until then instead of polling.
pub async fn next_due(
    conn: &mut AsyncPgConnection,
    channels: &[&str],
) -> Result<Option<DateTime<Utc>>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Next {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        at: Option<DateTime<Utc>>,
    }
    let n: Next = diesel::sql_query(
        "SELECT min(due_at) AS at FROM deliveries WHERE status = 'scheduled' AND channel = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(channels)
    .get_result(conn)
    .await?;
    Ok(n.at)
}

/// Bulk-writes `n` scheduled ledger rows of `campaign_id` (an SMS reminder each, for fresh
/// submission ids) due evenly over `spread` from `first_due`: the load of `quizflow bench
/// schedules`, in one statement so a million rows take seconds.
pub async fn seed(
    conn: &mut AsyncPgConnection,
    campaign_id: Uuid,
    campaign_version: i32,
    n: i64,
    first_due: DateTime<Utc>,
    spread: std::time::Duration,
) -> Result<usize, StoreError> {
    Ok(diesel::sql_query(
        "INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, \
                                 status, step, due_at) \
         SELECT gen_random_uuid(), $1, 'sms', $2, 'normal', 'scheduled', 1, \
                $3 + (g::float8 * $4 / $5) * interval '1 millisecond' \
         FROM generate_series(0, $5 - 1) AS g",
    )
    .bind::<SqlUuid, _>(campaign_id)
    .bind::<diesel::sql_types::Integer, _>(campaign_version)
    .bind::<Timestamptz, _>(first_due)
    .bind::<diesel::sql_types::Double, _>(spread.as_secs_f64() * 1000.0)
    .bind::<diesel::sql_types::BigInt, _>(n)
    .execute(conn)
    .await?)
}

/// What the schedule holds: rows still `scheduled`, and the on-disk size of the ledger table
/// and of its due-time index (bytes).
#[derive(Debug, Clone, Copy, diesel::QueryableByName)]
pub struct Backlog {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub scheduled: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub table_bytes: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub due_index_bytes: i64,
}

pub async fn backlog(conn: &mut AsyncPgConnection) -> Result<Backlog, StoreError> {
    Ok(diesel::sql_query(
        "SELECT (SELECT count(*) FROM deliveries WHERE status = 'scheduled') AS scheduled, \
                pg_total_relation_size('deliveries') AS table_bytes, \
                pg_relation_size('deliveries_due') AS due_index_bytes",
    )
    .get_result(conn)
    .await?)
}
