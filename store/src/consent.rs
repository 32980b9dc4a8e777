//! The suppression list (contract §3.2): contacts as keyed hashes, per channel and reason,
//! with the purposes each entry stops; the hash key's fingerprint; the frequency-cap ledger
//! (`contact_sends`) lives with the claim ([`crate::deliveries::claim`]).

use crate::{Pool, StoreError};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bytea, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio_postgres::types::ToSql;

/// One entry to add.
#[derive(Debug, Clone)]
pub struct NewSuppression {
    pub channel: String,
    pub contact_hash: Vec<u8>,
    pub reason: String,
    /// `marketing` or `all`.
    pub scope: String,
    /// Where it came from: `inbound:twilio`, `callback:email`, `worker:sms`, `admin`, `import`,
    /// `unsubscribe`. Never a contact.
    pub source: String,
}

/// One stored entry.
#[derive(Debug, Clone, diesel::QueryableByName, serde::Serialize)]
pub struct Suppression {
    #[diesel(sql_type = Text)]
    pub channel: String,
    #[diesel(sql_type = Bytea)]
    #[serde(serialize_with = "hex_bytes")]
    pub contact_hash: Vec<u8>,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub scope: String,
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

fn hex_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

/// Checks `QUIZFLOW_HASH_KEY` against the fingerprint the database keeps (the first process
/// to run writes it). False: this process has another key, and every hash it made would miss
/// the list.
pub async fn hash_key_matches(
    conn: &mut AsyncPgConnection,
    fingerprint: &[u8],
) -> Result<bool, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Key {
        #[diesel(sql_type = Bytea)]
        key: Vec<u8>,
    }
    let stored: Key = diesel::sql_query(
        "WITH ins AS (INSERT INTO quizflow_keys (name, key) VALUES ('hash_key_fingerprint', $1) \
                      ON CONFLICT (name) DO NOTHING RETURNING key) \
         SELECT key FROM ins UNION ALL \
         SELECT key FROM quizflow_keys WHERE name = 'hash_key_fingerprint' LIMIT 1",
    )
    .bind::<Bytea, _>(fingerprint)
    .get_result(conn)
    .await?;
    Ok(stored.key == fingerprint)
}

/// One entry as the checks read it (an index-only scan of the primary key).
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct Found {
    #[diesel(sql_type = Text)]
    pub channel: String,
    #[diesel(sql_type = Bytea)]
    pub contact_hash: Vec<u8>,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub scope: String,
}

/// The entries of the given (channel, hash) pairs, in one statement: what the batcher checks
/// a batch's matches against.
pub async fn lookup(
    conn: &mut AsyncPgConnection,
    channels: &[&str],
    hashes: &[Vec<u8>],
) -> Result<Vec<Found>, StoreError> {
    if channels.is_empty() {
        return Ok(Vec::new());
    }
    Ok(diesel::sql_query(
        "SELECT s.channel, s.contact_hash, s.reason, s.scope \
         FROM (SELECT DISTINCT * FROM UNNEST($1::text[], $2::bytea[]) AS k(channel, hash)) k \
         JOIN suppressions s ON s.channel = k.channel AND s.contact_hash = k.hash",
    )
    .bind::<Array<Text>, _>(channels)
    .bind::<Array<Bytea>, _>(hashes)
    .load(conn)
    .await?)
}

/// Adds entries (one statement); an entry already there keeps its first time and source (the
/// proof of when the person asked). Returns how many were new.
pub async fn suppress(
    conn: &mut AsyncPgConnection,
    entries: &[NewSuppression],
) -> Result<usize, StoreError> {
    if entries.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&NewSuppression) -> &str| entries.iter().map(f).collect::<Vec<&str>>();
    let hashes: Vec<&[u8]> = entries.iter().map(|e| e.contact_hash.as_slice()).collect();
    Ok(diesel::sql_query(
        "INSERT INTO suppressions (channel, contact_hash, reason, scope, source) \
         SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[]) \
         ON CONFLICT (channel, contact_hash, reason) DO NOTHING",
    )
    .bind::<Array<Text>, _>(col(|e| &e.channel))
    .bind::<Array<Bytea>, _>(hashes)
    .bind::<Array<Text>, _>(col(|e| &e.reason))
    .bind::<Array<Text>, _>(col(|e| &e.scope))
    .bind::<Array<Text>, _>(col(|e| &e.source))
    .execute(conn)
    .await?)
}

/// Removes a contact's entries on a channel: those of `reasons`, or all when empty. Returns
/// how many were removed.
pub async fn lift(
    conn: &mut AsyncPgConnection,
    channel: &str,
    hash: &[u8],
    reasons: &[&str],
) -> Result<usize, StoreError> {
    Ok(diesel::sql_query(
        "DELETE FROM suppressions WHERE channel = $1 AND contact_hash = $2 \
           AND (cardinality($3::text[]) = 0 OR reason = ANY($3))",
    )
    .bind::<Text, _>(channel)
    .bind::<Bytea, _>(hash)
    .bind::<Array<Text>, _>(reasons)
    .execute(conn)
    .await?)
}

/// Entries, newest first, optionally of one channel, contact or reason; `before` pages on.
pub async fn list(
    conn: &mut AsyncPgConnection,
    channel: Option<&str>,
    hash: Option<&[u8]>,
    reason: Option<&str>,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Suppression>, StoreError> {
    Ok(diesel::sql_query(
        "SELECT channel, contact_hash, reason, scope, source, created_at FROM suppressions \
         WHERE ($1::text IS NULL OR channel = $1) AND ($2::bytea IS NULL OR contact_hash = $2) \
           AND ($3::text IS NULL OR reason = $3) AND ($4::timestamptz IS NULL OR created_at < $4) \
         ORDER BY created_at DESC LIMIT $5",
    )
    .bind::<Nullable<Text>, _>(channel)
    .bind::<Nullable<Bytea>, _>(hash)
    .bind::<Nullable<Text>, _>(reason)
    .bind::<Nullable<Timestamptz>, _>(before)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?)
}

/// After a large import: the list vacuumed and analysed now, so its visibility map and
/// statistics are current before traffic meets it (else autovacuum does it later, at a moment
/// of its choosing, under load).
pub async fn settle(pool: &Pool) -> Result<(), StoreError> {
    let conn = pool.raw().await?;
    conn.client
        .batch_execute("VACUUM (ANALYZE) suppressions")
        .await?;
    Ok(())
}

/// The longest window a frequency cap may have: how long counted sends are kept.
pub const LONGEST_CAP_WINDOW_DAYS: i32 = 31;

/// Hourly upkeep: counted sends past the longest cap window, and window slots of openings
/// past, are deleted. Returns the rows deleted.
pub async fn prune(conn: &mut AsyncPgConnection) -> Result<usize, StoreError> {
    let sends = diesel::sql_query(
        "DELETE FROM contact_sends WHERE claimed_at < now() - make_interval(days => $1)",
    )
    .bind::<diesel::sql_types::Integer, _>(LONGEST_CAP_WINDOW_DAYS)
    .execute(conn)
    .await?;
    let slots =
        diesel::sql_query("DELETE FROM window_slots WHERE opening < now() - interval '1 day'")
            .execute(conn)
            .await?;
    Ok(sends + slots)
}

/// Rows one import statement writes: big enough that a million rows take few round trips,
/// small enough to bound the memory of one statement.
pub const IMPORT_CHUNK: usize = 20_000;

/// Adds many entries (`quizflow suppressions import`): chunks of [`IMPORT_CHUNK`] rows, each
/// one multi-row insert; returns how many were new.
pub async fn import(pool: &Pool, entries: &[NewSuppression]) -> Result<u64, StoreError> {
    let conn = pool.raw().await?;
    let mut added = 0;
    for chunk in entries.chunks(IMPORT_CHUNK) {
        let col = |f: fn(&NewSuppression) -> &str| chunk.iter().map(f).collect::<Vec<&str>>();
        let hashes: Vec<&[u8]> = chunk.iter().map(|e| e.contact_hash.as_slice()).collect();
        let (channels, reasons, scopes, sources) = (
            col(|e| &e.channel),
            col(|e| &e.reason),
            col(|e| &e.scope),
            col(|e| &e.source),
        );
        let params: [&(dyn ToSql + Sync); 5] = [&channels, &hashes, &reasons, &scopes, &sources];
        added += tokio_postgres::Client::execute(
            &conn.client,
            "INSERT INTO suppressions (channel, contact_hash, reason, scope, source) \
                 SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[]) \
                 ON CONFLICT (channel, contact_hash, reason) DO NOTHING",
            &params,
        )
        .await?;
    }
    Ok(added)
}

/// The keyed hashes on the blocklist (reason `blocked`), for intake to refuse their leads.
pub async fn blocked_hashes(conn: &mut AsyncPgConnection) -> Result<Vec<Vec<u8>>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Bytea)]
        contact_hash: Vec<u8>,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT DISTINCT contact_hash FROM suppressions WHERE reason = 'blocked'",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.contact_hash).collect())
}
