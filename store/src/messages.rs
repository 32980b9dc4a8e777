//! Direct messages (`POST /v1/messages`, contract §3.3): one message (or a campaign's test
//! send) through the same pipeline as a campaign's, without a rule. A message is stored as a
//! submission of the quiz [`QUIZ_ID`] (its recipient and variables, erased like any other) and
//! is its own campaign: its ledger rows' campaign id is its id, its spec that id's version 1.
//! Its rows are written `scheduled`, due at `send_at` or now, so the schedule firer publishes
//! them in its own transaction: nothing committed here waits on JetStream, and nothing is lost
//! between the commit and a publish.

use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Double, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// The quiz direct messages are stored under (replay never matches them against campaigns).
pub const QUIZ_ID: &str = "_messages";

/// One message to store: its recipient and variables, its spec and its ledger rows.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    /// The stored submission's columns (`respondent.*`, `answers`, `tags`, `score`,
    /// `metadata`): the message's recipient and variables, or a test send's sample lead.
    pub phone: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub score: Option<f64>,
    pub answers: serde_json::Value,
    pub tags: Vec<String>,
    pub metadata: serde_json::Value,
    pub idempotency_key: Option<String>,
    /// The message's one-off campaign spec (a `CampaignSpec` as JSON).
    pub spec: serde_json::Value,
    pub priority: String,
    /// (channel, step) of each ledger row: one per action.
    pub rows: Vec<(String, u16)>,
    pub send_at: Option<DateTime<Utc>>,
}

/// Stores `messages` in one transaction; per message, whether it is new (false: a message
/// with that id, i.e. that idempotency key, was stored before and nothing was written).
pub async fn create(
    conn: &mut AsyncPgConnection,
    messages: &[NewMessage],
) -> Result<Vec<bool>, StoreError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let messages = messages.to_vec();
    conn.transaction::<_, StoreError, _>(async move |conn| {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
        }
        let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
        // The id guard: a message id already taken (the same idempotency key) is not new.
        let fresh: Vec<Id> = diesel::sql_query(
            "INSERT INTO submission_ids (id, received_at) SELECT u, now() FROM UNNEST($1::uuid[]) AS u \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .load(conn)
        .await?;
        let fresh: std::collections::HashSet<Uuid> = fresh.into_iter().map(|r| r.id).collect();
        let new: Vec<&NewMessage> = messages.iter().filter(|m| fresh.contains(&m.id)).collect();
        if !new.is_empty() {
            insert_submissions(conn, &new).await?;
            insert_specs_and_rows(conn, &new).await?;
        }
        Ok(messages.iter().map(|m| fresh.contains(&m.id)).collect())
    })
    .await
}

async fn insert_submissions(
    conn: &mut AsyncPgConnection,
    new: &[&NewMessage],
) -> Result<(), StoreError> {
    let col = |f: fn(&NewMessage) -> Option<String>| -> Vec<Option<String>> {
        new.iter().map(|m| f(m)).collect()
    };
    let ids: Vec<Uuid> = new.iter().map(|m| m.id).collect();
    let scores: Vec<Option<f64>> = new.iter().map(|m| m.score).collect();
    let answers: Vec<String> = new.iter().map(|m| m.answers.to_string()).collect();
    let tags: Vec<String> = new
        .iter()
        .map(|m| serde_json::Value::from(m.tags.clone()).to_string())
        .collect();
    let metadata: Vec<String> = new.iter().map(|m| m.metadata.to_string()).collect();
    diesel::sql_query(
        "INSERT INTO submissions (id, quiz_id, received_at, completed_at, score, phone, email, name, locale, timezone, \
                                  answers, tags, metadata, idempotency_key, stream_seq) \
         SELECT i.id, $12, i.received_at, i.received_at, u.score, u.phone, u.email, u.name, u.locale, u.tz, \
                u.answers::json, ARRAY(SELECT json_array_elements_text(u.tags::json)), u.metadata::json, u.key, 0 \
         FROM UNNEST($1::uuid[], $2::float8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                     $8::text[], $9::text[], $10::text[], $11::text[]) \
              AS u(id, score, phone, email, name, locale, tz, answers, tags, metadata, key) \
         JOIN submission_ids i ON i.id = u.id",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Nullable<Double>>, _>(&scores)
    .bind::<Array<Nullable<Text>>, _>(&col(|m| m.phone.clone()))
    .bind::<Array<Nullable<Text>>, _>(&col(|m| m.email.clone()))
    .bind::<Array<Nullable<Text>>, _>(&col(|m| m.name.clone()))
    .bind::<Array<Nullable<Text>>, _>(&col(|m| m.locale.clone()))
    .bind::<Array<Nullable<Text>>, _>(&col(|m| m.timezone.clone()))
    .bind::<Array<Text>, _>(&answers)
    .bind::<Array<Text>, _>(&tags)
    .bind::<Array<Text>, _>(&metadata)
    .bind::<Array<Nullable<Text>>, _>(&col(|m| m.idempotency_key.clone()))
    .bind::<Text, _>(QUIZ_ID)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_specs_and_rows(
    conn: &mut AsyncPgConnection,
    new: &[&NewMessage],
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = new.iter().map(|m| m.id).collect();
    let specs: Vec<String> = new.iter().map(|m| m.spec.to_string()).collect();
    diesel::sql_query(
        "INSERT INTO campaign_versions (campaign_id, version, definition) \
         SELECT id, 1, spec::jsonb FROM UNNEST($1::uuid[], $2::text[]) AS u(id, spec) ON CONFLICT DO NOTHING",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Text>, _>(&specs)
    .execute(conn)
    .await?;
    let mut subs = Vec::new();
    let mut channels = Vec::new();
    let mut steps = Vec::new();
    let mut priorities = Vec::new();
    let mut due = Vec::new();
    for m in new {
        for (channel, step) in &m.rows {
            subs.push(m.id);
            channels.push(channel.as_str());
            steps.push(*step as i16);
            priorities.push(m.priority.as_str());
            due.push(m.send_at);
        }
    }
    diesel::sql_query(
        "INSERT INTO deliveries (submission_id, campaign_id, campaign_version, channel, priority, status, step, due_at) \
         SELECT u.id, u.id, 1, u.channel, u.priority, 'scheduled', u.step, COALESCE(u.due, now()) \
         FROM UNNEST($1::uuid[], $2::text[], $3::int2[], $4::text[], $5::timestamptz[]) \
              AS u(id, channel, step, priority, due) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<Array<Text>, _>(&priorities)
    .bind::<Array<Nullable<Timestamptz>>, _>(&due)
    .execute(conn)
    .await?;
    Ok(())
}
