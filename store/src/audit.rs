//! The `audit_log` table: every admin action, append-only (contract §2.4). Entries never hold
//! personal data; callers pass respondents as keyed hashes.

use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Jsonb, Nullable, SmallInt, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

/// An entry to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// What was done, e.g. `campaign.replace`, `respondent.erase`, `auth.failure`.
    pub action: &'static str,
    /// `METHOD /route/{template}`: never the raw path, which may carry ids of people.
    pub route: String,
    /// `ok`, `rejected` (4xx), `denied` (401), `failed` (5xx).
    pub outcome: &'static str,
    /// The HTTP status answered.
    pub status: u16,
    /// What the action was on: a campaign or dead-letter id, a respondent's keyed hash.
    pub target: Option<String>,
    /// The change (a campaign's new definition, counts erased, why a request was refused).
    pub detail: serde_json::Value,
}

/// A stored entry, as `GET /v1/audit` shows it.
#[derive(Debug, Serialize, diesel::QueryableByName)]
pub struct Entry {
    #[diesel(sql_type = BigInt)]
    #[serde(skip)]
    pub id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Text)]
    pub route: String,
    #[diesel(sql_type = Text)]
    pub outcome: String,
    #[diesel(sql_type = SmallInt)]
    pub status: i16,
    #[diesel(sql_type = Nullable<Text>)]
    pub target: Option<String>,
    #[diesel(sql_type = Jsonb)]
    pub detail: serde_json::Value,
}

/// Appends one entry.
pub async fn append(conn: &mut AsyncPgConnection, e: &NewEntry) -> Result<(), StoreError> {
    diesel::sql_query(
        "INSERT INTO audit_log (action, route, outcome, status, target, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind::<Text, _>(e.action)
    .bind::<Text, _>(&e.route)
    .bind::<Text, _>(e.outcome)
    .bind::<SmallInt, _>(i16::try_from(e.status).unwrap_or(i16::MAX))
    .bind::<Nullable<Text>, _>(e.target.as_deref())
    .bind::<Jsonb, _>(&e.detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Entries newest first, older than the cursor `before` (an entry id) when given.
pub async fn page(
    conn: &mut AsyncPgConnection,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Entry>, StoreError> {
    diesel::sql_query(
        "SELECT id, at, action, route, outcome, status, target, detail FROM audit_log \
         WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind::<Nullable<BigInt>, _>(before)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
    .map_err(Into::into)
}
