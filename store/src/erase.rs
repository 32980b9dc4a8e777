//! A person's personal data, erased from every table that holds it (contract §2.4).
//!
//! `submissions` keep their id, quiz, score, tags and times (the counts stay right) and lose
//! the respondent, the answers and the metadata; the ledger rows of those submissions that
//! had not been sent are cancelled, and every row's error text and history are cleared
//! (provider errors may quote a number); the person's dead letters are deleted (a poison
//! submission's by the contact in its raw bytes: it never decoded). One
//! statement: an erasure is all or nothing.

use crate::StoreError;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// Rows changed by an erasure, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// Submissions whose personal data was removed.
    pub submissions: i64,
    /// Pending messages cancelled (queued, sending under an expired lease, or failed and
    /// waiting for a retry).
    pub deliveries_cancelled: i64,
    /// Ledger rows whose error text and history were cleared.
    pub deliveries_scrubbed: i64,
    /// Dead letters deleted.
    pub dead_letters: i64,
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// The advisory lock that orders erasures against the batcher's store transactions: a store
/// transaction holds it shared, an erasure's barrier exclusive. So every batch either
/// committed before the tombstones (and the erasure's scrub finds its rows) or checks them.
pub const BARRIER_LOCK: i64 = 0x7175_697a_666c_6f77; // "quizflow"

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The barrier, step 1 of an erasure: tombstones for the person's contacts (a lead received
/// before now never stores or matches them again) and every pending message of theirs
/// cancelled — `scheduled`, `queued`, `failed`, and `sending` under a claim whose holder has
/// not started the call (it checks before calling, and finds the row cancelled). One
/// transaction, under [`BARRIER_LOCK`]. Returns the messages cancelled.
pub async fn barrier(
    conn: &mut AsyncPgConnection,
    phone: Option<&str>,
    email: Option<&str>,
) -> Result<i64, StoreError> {
    use diesel_async::AsyncConnection;
    let (phone, email) = (phone.map(str::to_owned), email.map(str::to_lowercase));
    conn.transaction::<i64, StoreError, _>(async move |conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(BARRIER_LOCK)
            .execute(conn)
            .await?;
        diesel::sql_query(
            "INSERT INTO erasures (contact, erased_at) \
             SELECT quizflow_contact_hash(k, c), now() FROM (VALUES ('phone', $1), ('email', $2)) AS v(k, c) \
             WHERE c IS NOT NULL \
             ON CONFLICT (contact) DO UPDATE SET erased_at = now()",
        )
        .bind::<Nullable<Text>, _>(phone.as_deref())
        .bind::<Nullable<Text>, _>(email.as_deref())
        .execute(conn)
        .await?;
        let cancelled: N = diesel::sql_query(
            "WITH c AS (UPDATE deliveries d SET status = 'cancelled', claim = NULL, lease_until = NULL, \
                          next_attempt_at = NULL, calling_at = NULL, updated_at = now() \
                        WHERE d.submission_id IN (SELECT id FROM submissions WHERE phone = $1 \
                                                  UNION SELECT id FROM submissions WHERE lower(email) = $2) \
                          AND (d.status IN ('scheduled', 'queued', 'failed') \
                               OR (d.status = 'sending' AND (d.calling_at IS NULL OR d.lease_until < now()))) \
                        RETURNING 1) \
             SELECT count(*) AS n FROM c",
        )
        .bind::<Nullable<Text>, _>(phone.as_deref())
        .bind::<Nullable<Text>, _>(email.as_deref())
        .get_result(conn)
        .await?;
        Ok(cancelled.n)
    })
    .await
}

/// Provider calls of the person under way now (their holder passed its check before the
/// barrier): the erasure waits for their outcomes before it scrubs.
pub async fn calls_in_flight(
    conn: &mut AsyncPgConnection,
    phone: Option<&str>,
    email: Option<&str>,
) -> Result<i64, StoreError> {
    let n: N = diesel::sql_query(
        "SELECT count(*) AS n FROM deliveries d \
         WHERE d.submission_id IN (SELECT id FROM submissions WHERE phone = $1 \
                                   UNION SELECT id FROM submissions WHERE lower(email) = lower($2)) \
           AND d.status = 'sending' AND d.calling_at IS NOT NULL AND d.lease_until > now()",
    )
    .bind::<Nullable<Text>, _>(phone)
    .bind::<Nullable<Text>, _>(email)
    .get_result(conn)
    .await?;
    Ok(n.n)
}

/// Was this contact (`phone` or `email`) erased after `since`? A worker asks after archiving
/// a dead letter that names it, to take the copy back if an erasure scanned the stream first.
pub async fn erased_since(
    conn: &mut AsyncPgConnection,
    kind: &str,
    contact: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<bool, StoreError> {
    let contact = if kind == "email" {
        contact.to_lowercase()
    } else {
        contact.to_owned()
    };
    let n: N = diesel::sql_query(
        "SELECT count(*) AS n FROM erasures WHERE contact = quizflow_contact_hash($1, $2) AND erased_at >= $3",
    )
    .bind::<Text, _>(kind)
    .bind::<Text, _>(contact)
    .bind::<diesel::sql_types::Timestamptz, _>(since)
    .get_result(conn)
    .await?;
    Ok(n.n > 0)
}

/// The lock that lets one erasure sweep at a time scan the streams, cluster-wide: a
/// session-level advisory lock on a connection of its own, released when dropped (the
/// connection closes), even if its holder dies.
pub struct ScanLock {
    _conn: crate::raw::RawConn,
}

const SCAN_LOCK: i64 = 0x7175_697a_7363_616e; // "quizscan"

impl ScanLock {
    /// Waits until no other sweep scans, then holds the lock.
    pub async fn acquire(pool: &crate::Pool) -> Result<Self, StoreError> {
        let conn = pool.dedicated().await?;
        loop {
            let row = conn
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&SCAN_LOCK])
                .await?;
            if row.try_get::<_, bool>(0)? {
                return Ok(Self { _conn: conn });
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Records an erasure job as running.
pub async fn job_started(conn: &mut AsyncPgConnection, id: Uuid) -> Result<(), StoreError> {
    diesel::sql_query("INSERT INTO erasure_jobs (id) VALUES ($1)")
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records how an erasure job ended: `done` with its counts, or `failed` with why.
pub async fn job_finished(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    status: &str,
    result: &serde_json::Value,
    error: Option<&str>,
) -> Result<(), StoreError> {
    diesel::sql_query(
        "UPDATE erasure_jobs SET status = $2, result = $3::jsonb, error = $4, finished_at = now() WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(status)
    .bind::<Text, _>(result.to_string())
    .bind::<Nullable<Text>, _>(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// An erasure job as `GET /v1/erasures/{id}` shows it; `None` when there is no such job.
pub async fn job(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<serde_json::Value>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Job {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        job: serde_json::Value,
    }
    let rows: Vec<Job> = diesel::sql_query(
        "SELECT jsonb_build_object('id', id, 'status', status, 'started_at', started_at, \
                'finished_at', finished_at, 'erased', result->'erased', 'scanned', result->'scanned', \
                'error', error) AS job \
         FROM erasure_jobs WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|j| j.job))
}

/// Ids of the stored submissions of a phone and/or an e-mail (any case).
pub async fn find(
    conn: &mut AsyncPgConnection,
    phone: Option<&str>,
    email: Option<&str>,
) -> Result<Vec<Uuid>, StoreError> {
    let rows: Vec<Id> = diesel::sql_query(
        "SELECT id FROM submissions WHERE phone = $1 \
         UNION SELECT id FROM submissions WHERE lower(email) = lower($2)",
    )
    .bind::<Nullable<Text>, _>(phone)
    .bind::<Nullable<Text>, _>(email)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

#[derive(diesel::QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    submissions: i64,
    #[diesel(sql_type = BigInt)]
    cancelled: i64,
    #[diesel(sql_type = BigInt)]
    scrubbed: i64,
    #[diesel(sql_type = BigInt)]
    dead: i64,
}

/// Erases the person (their phone, e-mail, and the submissions `ids` found before the streams
/// were erased) in one statement. Repeating it changes nothing and returns zeros.
pub async fn erase(
    conn: &mut AsyncPgConnection,
    phone: Option<&str>,
    email: Option<&str>,
    ids: &[Uuid],
) -> Result<Erased, StoreError> {
    // One statement, so all or nothing. A direct message's spec (its text may name the person)
    // goes with its submission. Submissions stored since `find` (a batch in flight)
    // are caught by contact. One UPDATE of `deliveries` both cancels and clears: two
    // data-modifying CTEs must not touch the same row.
    let c: Counts = diesel::sql_query(
        "WITH ids AS ( \
           SELECT id FROM submissions WHERE phone = $1 \
           UNION SELECT id FROM submissions WHERE lower(email) = lower($2) \
           UNION SELECT unnest($3::uuid[])), \
         s AS (UPDATE submissions SET phone = NULL, email = NULL, name = NULL, locale = NULL, timezone = NULL, \
                 answers = '[]', metadata = '{}', idempotency_key = NULL, \
                 erased_at = COALESCE(erased_at, now()) \
               WHERE id IN (SELECT id FROM ids) \
                 AND (phone IS NOT NULL OR email IS NOT NULL OR name IS NOT NULL \
                      OR locale IS NOT NULL OR answers::text <> '[]' OR metadata::text <> '{}' \
                      OR idempotency_key IS NOT NULL OR erased_at IS NULL) \
               RETURNING 1), \
         o AS (SELECT submission_id, campaign_id, channel, step, \
                 (status IN ('scheduled', 'queued', 'failed') OR (status = 'sending' AND lease_until < now())) AS pending \
               FROM deliveries WHERE submission_id IN (SELECT id FROM ids) FOR UPDATE), \
         l AS (UPDATE deliveries d SET \
                 status = CASE WHEN o.pending THEN 'cancelled' ELSE d.status END, \
                 claim = CASE WHEN o.pending THEN NULL ELSE d.claim END, \
                 lease_until = CASE WHEN o.pending THEN NULL ELSE d.lease_until END, \
                 next_attempt_at = CASE WHEN o.pending THEN NULL ELSE d.next_attempt_at END, \
                 updated_at = CASE WHEN o.pending THEN now() ELSE d.updated_at END, \
                 last_error = NULL, history = '[]' \
               FROM o WHERE d.submission_id = o.submission_id AND d.campaign_id = o.campaign_id \
                 AND d.channel = o.channel AND d.step = o.step \
                 AND (o.pending OR d.last_error IS NOT NULL OR d.history <> '[]') \
               RETURNING o.pending), \
         d AS (DELETE FROM dead_letters \
               WHERE submission_id IN (SELECT id FROM ids) \
                  OR lower(recipient) = lower($1) OR lower(recipient) = lower($2) \
                  OR (kind = 'submission' AND payload IS NOT NULL \
                      AND (strpos(lower(encode(payload, 'escape')), lower($1)) > 0 \
                           OR strpos(lower(encode(payload, 'escape')), lower($2)) > 0)) \
               RETURNING 1), \
         v AS (DELETE FROM campaign_versions WHERE campaign_id IN (SELECT id FROM ids) RETURNING 1) \
         SELECT (SELECT count(*) FROM s) AS submissions, \
                (SELECT count(*) FROM l WHERE pending) AS cancelled, \
                (SELECT count(*) FROM l) AS scrubbed, (SELECT count(*) FROM d) AS dead",
    )
    .bind::<Nullable<Text>, _>(phone)
    .bind::<Nullable<Text>, _>(email)
    .bind::<Array<SqlUuid>, _>(ids)
    .get_result(conn)
    .await?;
    Ok(Erased {
        submissions: c.submissions,
        deliveries_cancelled: c.cancelled,
        deliveries_scrubbed: c.scrubbed,
        dead_letters: c.dead,
    })
}
