//! Reading a stored submission and its deliveries (SPEC §2.3).

use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, Double, Integer, Json, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Serialize, diesel::QueryableByName)]
pub struct Delivery {
    #[diesel(sql_type = SqlUuid)]
    pub campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    pub channel: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    quiz_id: String,
    #[diesel(sql_type = Timestamptz)]
    received_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    completed_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Double>)]
    score: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    phone: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    email: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    locale: Option<String>,
    #[diesel(sql_type = Json)]
    answers: serde_json::Value,
    #[diesel(sql_type = Array<Text>)]
    tags: Vec<String>,
    #[diesel(sql_type = Json)]
    metadata: serde_json::Value,
    #[diesel(sql_type = Nullable<Text>)]
    idempotency_key: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    stored_at: DateTime<Utc>,
}

/// A stored submission with its deliveries, as `GET /v1/submissions/{id}` shows it.
pub async fn get(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<serde_json::Value>, crate::StoreError> {
    // The id guard gives the receipt time, which prunes the search to one partition.
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT s.id, s.quiz_id, s.received_at, s.completed_at, s.score, s.phone, s.email, s.name, s.locale, \
                s.answers, s.tags, s.metadata, s.idempotency_key, s.stored_at \
         FROM submission_ids i JOIN submissions s ON s.id = i.id AND s.received_at = i.received_at \
         WHERE i.id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await?;
    let Some(r) = rows.into_iter().next() else {
        return Ok(None);
    };
    let deliveries: Vec<Delivery> = diesel::sql_query(
        "SELECT campaign_id, channel, status, attempts, last_error, updated_at FROM deliveries \
         WHERE submission_id = $1 ORDER BY created_at, campaign_id, channel",
    )
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await?;
    let mut respondent = serde_json::Map::new();
    for (k, v) in [
        ("phone", r.phone),
        ("email", r.email),
        ("name", r.name),
        ("locale", r.locale),
    ] {
        if let Some(v) = v {
            respondent.insert(k.into(), v.into());
        }
    }
    Ok(Some(serde_json::json!({
        "submission_id": r.id,
        "quiz_id": r.quiz_id,
        "received_at": r.received_at,
        "completed_at": r.completed_at,
        "score": r.score,
        "respondent": respondent,
        "answers": r.answers,
        "tags": r.tags,
        "metadata": r.metadata,
        "idempotency_key": r.idempotency_key,
        "stored_at": r.stored_at,
        "deliveries": deliveries,
    })))
}
