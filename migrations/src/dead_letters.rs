//! The `dead_letters` mirror: listing and redrive bookkeeping (SPEC §2.4).

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
) -> Result<Vec<DeadLetter>, diesel::result::Error> {
    diesel::sql_query(
        "SELECT id, kind, channel, submission_id, campaign_id, recipient, class, reason, attempts, history, failed_at \
         FROM dead_letters WHERE redriven_at IS NULL AND ($1::text IS NULL OR channel = $1) \
         ORDER BY failed_at DESC LIMIT $2",
    )
    .bind::<Nullable<Text>, _>(channel)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

#[derive(Debug, diesel::QueryableByName)]
pub struct Taken {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Nullable<Binary>)]
    pub payload: Option<Vec<u8>>,
}

/// Marks open *delivery* dead letters as redriven and gives their ledger rows a fresh
/// attempt budget (`queued`, 0 attempts), in one transaction; returns their stored jobs.
/// `id` selects one; otherwise all of `channel` (at most `limit`).
pub async fn take_for_redrive(
    conn: &mut AsyncPgConnection,
    id: Option<Uuid>,
    channel: Option<&str>,
    limit: i64,
) -> Result<Vec<Taken>, diesel::result::Error> {
    use diesel_async::AsyncConnection;
    let channel = channel.map(str::to_owned);
    conn.transaction(async move |conn| {
        let taken: Vec<Taken> = diesel::sql_query(
            "UPDATE dead_letters SET redriven_at = now() WHERE id IN ( \
                 SELECT id FROM dead_letters WHERE redriven_at IS NULL AND kind = 'delivery' \
                 AND ($1::uuid IS NULL OR id = $1) AND ($2::text IS NULL OR channel = $2) \
                 ORDER BY failed_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, payload",
        )
        .bind::<Nullable<SqlUuid>, _>(id)
        .bind::<Nullable<Text>, _>(channel.as_deref())
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await?;
        let ids: Vec<Uuid> = taken.iter().map(|t| t.id).collect();
        diesel::sql_query(
            "UPDATE deliveries d SET status = 'queued', attempts = 0, last_error = NULL, updated_at = now(), \
                 history = d.history || jsonb_build_array(jsonb_build_object('at', now(), 'outcome', 'redriven', 'detail', l.id::text)) \
             FROM dead_letters l WHERE l.id = ANY($1) AND d.submission_id = l.submission_id \
               AND d.campaign_id = l.campaign_id AND d.channel = l.channel",
        )
        .bind::<diesel::sql_types::Array<SqlUuid>, _>(&ids)
        .execute(conn)
        .await?;
        Ok(taken)
    })
    .await
}

/// Undoes a redrive whose job could not be published: the letter is listed again.
pub async fn restore(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "UPDATE deliveries d SET status = 'dead', updated_at = now() FROM dead_letters l \
         WHERE l.id = ANY($1) AND d.submission_id = l.submission_id AND d.campaign_id = l.campaign_id AND d.channel = l.channel",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
    .execute(conn)
    .await?;
    diesel::sql_query("UPDATE dead_letters SET redriven_at = NULL WHERE id = ANY($1)")
        .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Mirrors an undecodable submission (kind `submission`, class `poison`).
pub async fn insert_poison_submission(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    reason: &str,
    payload: &[u8],
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "INSERT INTO dead_letters (id, kind, class, reason, attempts, payload) VALUES ($1, 'submission', 'poison', $2, 1, $3) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(reason)
    .bind::<Binary, _>(payload)
    .execute(conn)
    .await?;
    Ok(())
}
