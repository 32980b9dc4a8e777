//! The `dead_letters` mirror: listing and redrive bookkeeping (contract §2.4).

use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{
    BigInt, Binary, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Serialize, diesel::QueryableByName)]
pub struct DeadLetter {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub channel: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub submission_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub campaign_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    pub recipient: Option<String>,
    #[diesel(sql_type = Text)]
    pub class: String,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Jsonb)]
    pub history: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    pub failed_at: DateTime<Utc>,
}

/// Open (not redriven) dead letters, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    channel: Option<&str>,
    limit: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    diesel::sql_query(
        "SELECT id, kind, channel, submission_id, campaign_id, recipient, class, reason, attempts, history, failed_at \
         FROM dead_letters WHERE redriven_at IS NULL AND ($1::text IS NULL OR channel = $1) \
         ORDER BY failed_at DESC LIMIT $2",
    )
    .bind::<Nullable<Text>, _>(channel)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
    .map_err(Into::into)
}

#[derive(Debug, diesel::QueryableByName)]
pub struct Taken {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// `delivery` or `submission`.
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Nullable<Binary>)]
    pub payload: Option<Vec<u8>>,
}

/// Redrive, step 1 of 2 (an outbox): marks up to `limit` open dead letters (deliveries and
/// submissions) as redriven and gives the ledger rows of delivery letters a fresh attempt
/// budget (`queued`, 0 attempts), in one transaction; returns their stored jobs or envelopes. `id` selects one; otherwise those of `channel`.
/// Step 2 is [`mark_published`] once JetStream acknowledged the jobs; rows taken but not
/// published (a crash, NATS away) are found again by [`unpublished`].
pub async fn take_for_redrive(
    conn: &mut AsyncPgConnection,
    id: Option<Uuid>,
    channel: Option<&str>,
    limit: i64,
) -> Result<Vec<Taken>, StoreError> {
    use diesel_async::AsyncConnection;
    let channel = channel.map(str::to_owned);
    conn.transaction::<_, StoreError, _>(async move |conn| {
        let taken: Vec<Taken> = diesel::sql_query(
            "UPDATE dead_letters SET redriven_at = now(), redrive_published_at = NULL WHERE id IN ( \
                 SELECT id FROM dead_letters WHERE redriven_at IS NULL AND kind IN ('delivery', 'submission') \
                 AND payload IS NOT NULL \
                 AND ($1::uuid IS NULL OR id = $1) AND ($2::text IS NULL OR channel = $2) \
                 ORDER BY failed_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, kind, payload",
        )
        .bind::<Nullable<SqlUuid>, _>(id)
        .bind::<Nullable<Text>, _>(channel.as_deref())
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await?;
        let ids: Vec<Uuid> = taken.iter().map(|t| t.id).collect();
        diesel::sql_query(
            "UPDATE deliveries d SET status = 'queued', attempts = 0, last_error = NULL, claim = NULL, \
                 lease_until = NULL, next_attempt_at = NULL, updated_at = now(), \
                 history = quizflow_cap_history(d.history || jsonb_build_array(jsonb_build_object('at', now(), \
                     'outcome', 'redriven', 'detail', l.id::text)), 50) \
             FROM dead_letters l WHERE l.id = ANY($1) AND d.submission_id = l.submission_id \
               AND d.campaign_id = l.campaign_id AND d.channel = l.channel AND d.step = l.step \
               AND d.status = 'dead'",
        )
        .bind::<diesel::sql_types::Array<SqlUuid>, _>(&ids)
        .execute(conn)
        .await?;
        Ok(taken)
    })
    .await
}

/// Redrive, step 2: the jobs of these letters are in JetStream.
pub async fn mark_published(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    diesel::sql_query("UPDATE dead_letters SET redrive_published_at = now() WHERE id = ANY($1)")
        .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Letters taken for redrive more than `older_than` ago whose jobs were never confirmed
/// published: the outbox relay publishes them (again).
pub async fn unpublished(
    conn: &mut AsyncPgConnection,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<Vec<Taken>, StoreError> {
    Ok(diesel::sql_query(
        "SELECT id, kind, payload FROM dead_letters WHERE redriven_at IS NOT NULL AND redrive_published_at IS NULL \
           AND redriven_at < now() - make_interval(secs => $1) ORDER BY redriven_at LIMIT $2",
    )
    .bind::<diesel::sql_types::Double, _>(older_than.as_secs_f64())
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?)
}

/// Mirrors an undecodable submission (kind `submission`, class `poison`).
pub async fn insert_poison_submission(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    reason: &str,
    payload: &[u8],
) -> Result<(), StoreError> {
    diesel::sql_query(
        "INSERT INTO dead_letters (id, kind, class, reason, attempts, payload) VALUES ($1, 'submission', 'poison', $2, 1, $3) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(reason.replace('\0', "\u{FFFD}"))
    .bind::<Binary, _>(payload)
    .execute(conn)
    .await?;
    Ok(())
}
