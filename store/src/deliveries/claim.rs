//! The claim a worker takes before a provider call, its renewal while the job is worked on,
//! and the mark set right before the call (an erasure waits for marked calls).

use super::{unzip, Key, KeyRow};
use crate::StoreError;
use diesel::sql_types::{Array, SmallInt, Text, Uuid as SqlUuid};
// `#[diesel(embed)]` needs the trait in scope.
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// Claims the rows nobody holds (`queued`, `failed`, or `sending` with an expired lease) for
/// `lease`, under `claim`, in one statement; returns the keys it claimed.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    keys: &[Key],
    claim: Uuid,
    lease: std::time::Duration,
) -> Result<Vec<Key>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (subs, camps, channels, steps) = unzip(keys);
    let rows: Vec<KeyRow> = diesel::sql_query(
        "UPDATE deliveries d SET status = 'sending', claim = $4, calling_at = NULL, \
                lease_until = now() + make_interval(secs => $5), updated_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $6::int2[]) AS k(sub, camp, channel, step) \
         WHERE d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel AND d.step = k.step \
           AND ((d.status IN ('queued', 'failed') AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= now())) \
                OR (d.status = 'sending' AND d.lease_until < now())) \
         RETURNING d.submission_id, d.campaign_id, d.channel, d.step",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<SqlUuid, _>(claim)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .bind::<Array<SmallInt>, _>(&steps)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(KeyRow::key).collect())
}

/// Extends the lease of every row still `sending` under the given claim to `lease` from now,
/// in one statement; returns how many it extended. Rows finished or taken over are left.
/// Like [`start_calls`], committed without waiting for the WAL flush: a renewal lost with a
/// database crash is made again within a quarter lease.
pub async fn renew(
    conn: &mut AsyncPgConnection,
    held: &[(Key, Uuid)],
    lease: std::time::Duration,
) -> Result<usize, StoreError> {
    if held.is_empty() {
        return Ok(0);
    }
    let keys: Vec<Key> = held.iter().map(|(k, _)| k.clone()).collect();
    let claims: Vec<Uuid> = held.iter().map(|(_, c)| *c).collect();
    let (subs, camps, channels, steps) = unzip(&keys);
    let n = diesel::sql_query(
        "UPDATE deliveries d SET lease_until = now() + make_interval(secs => $6) \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::uuid[]) AS k(sub, camp, channel, step, claim), \
              (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit \
         WHERE d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel AND d.step = k.step \
           AND d.status = 'sending' AND d.claim = k.claim",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<Array<SqlUuid>, _>(&claims)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(n)
}

/// A call about to start: the claim it is made under, and whom it goes to (the contact's
/// keyed hash, `None` for a webhook) for what purpose.
#[derive(Debug, Clone)]
pub struct Call {
    pub key: Key,
    pub claim: Uuid,
    pub contact: Option<Vec<u8>>,
    /// `marketing` or `transactional`.
    pub purpose: &'static str,
    /// Since when the contact may have been suppressed unseen: its match-time check (less a
    /// margin for clocks and in-flight writes). `None`: never checked (look it up).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// What [`start_calls`] found for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Marked as calling: go ahead.
    Go,
    /// The contact is suppressed for this purpose (the reason): the row is now `suppressed`.
    Suppressed(String),
}

#[derive(diesel::QueryableByName)]
struct StartRow {
    #[diesel(embed)]
    key: KeyRow,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    suppressed: Option<String>,
}

/// The last look before the calls, in one statement: each row still `sending` under its claim
/// is marked `calling_at`, unless its contact is on the suppression list for its purpose (an
/// opt-out heard since the match): then it ends `suppressed`. The list is looked up only for
/// calls whose `since` is before its newest entry (the match saw everything older). A key missing from the answer
/// was cancelled (an erasure) or taken over since its claim: its holder must not call.
///
/// Committed without waiting for the WAL flush (`synchronous_commit = off` for this statement
/// only): the mark is visible at once to an erasure, which is all it is for, and a mark lost
/// with a database crash costs nothing (the claim's lease still bounds the call; a lost
/// `suppressed` comes back when the lease runs out and is found again). Outcomes are always
/// written with the durable default.
pub async fn start_calls(
    conn: &mut AsyncPgConnection,
    calls: &[Call],
) -> Result<Vec<(Key, Start)>, StoreError> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Key> = calls.iter().map(|c| c.key.clone()).collect();
    let claims: Vec<Uuid> = calls.iter().map(|c| c.claim).collect();
    let contacts: Vec<Option<&[u8]>> = calls.iter().map(|c| c.contact.as_deref()).collect();
    let purposes: Vec<&str> = calls.iter().map(|c| c.purpose).collect();
    let since: Vec<Option<chrono::DateTime<chrono::Utc>>> = calls.iter().map(|c| c.since).collect();
    let (subs, camps, channels, steps) = unzip(&keys);
    let rows: Vec<StartRow> = diesel::sql_query(
        "WITH newest AS (SELECT max(created_at) AS at FROM suppressions), \
              k AS (SELECT k.*, CASE WHEN k.since IS NULL OR k.since <= (SELECT at FROM newest) THEN \
                                  (SELECT x.reason FROM suppressions x \
                                   WHERE k.hash IS NOT NULL AND x.channel = k.channel AND x.contact_hash = k.hash \
                                     AND (x.scope = 'all' OR k.purpose = 'marketing') LIMIT 1) END AS suppressed \
                    FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::uuid[], $6::bytea[], $7::text[], \
                                $8::timestamptz[]) AS k(sub, camp, channel, step, claim, hash, purpose, since), \
                         (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit), \
              stop AS (UPDATE deliveries d SET status = 'suppressed', claim = NULL, lease_until = NULL, \
                              last_error = 'suppressed: ' || k.suppressed, updated_at = now() \
                       FROM k WHERE k.suppressed IS NOT NULL \
                         AND d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel AND d.step = k.step \
                         AND d.status = 'sending' AND d.claim = k.claim \
                       RETURNING d.submission_id, d.campaign_id, d.channel, d.step, k.suppressed), \
              go AS (UPDATE deliveries d SET calling_at = now() \
                     FROM k WHERE k.suppressed IS NULL \
                       AND d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel AND d.step = k.step \
                       AND d.status = 'sending' AND d.claim = k.claim \
                     RETURNING d.submission_id, d.campaign_id, d.channel, d.step, NULL::text AS suppressed) \
         SELECT * FROM stop UNION ALL SELECT * FROM go",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<Array<SqlUuid>, _>(&claims)
    .bind::<Array<diesel::sql_types::Nullable<diesel::sql_types::Bytea>>, _>(&contacts)
    .bind::<Array<Text>, _>(&purposes)
    .bind::<Array<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>>, _>(&since)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let start = match r.suppressed {
                Some(reason) => Start::Suppressed(reason),
                None => Start::Go,
            };
            (r.key.key(), start)
        })
        .collect())
}
