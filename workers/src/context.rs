//! Loading what a batch of jobs needs (ledger row, stored submission, campaign) in one query.

use diesel::sql_types::{Array, Integer, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use quizflow_core::{CampaignSpec, DeliveryJob};
use uuid::Uuid;

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = SqlUuid)]
    submission_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Jsonb)]
    history: serde_json::Value,
    #[diesel(sql_type = Jsonb)]
    submission: serde_json::Value,
    #[diesel(sql_type = Nullable<Jsonb>)]
    definition: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Integer>)]
    version: Option<i32>,
}

/// Everything one job needs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub status: String,
    pub attempts: i32,
    pub history: Vec<serde_json::Value>,
    /// The stored submission (the `GET /v1/submissions/{id}` shape, without deliveries).
    pub submission: serde_json::Value,
    /// `None` when the campaign was deleted since the job was made.
    pub campaign: Option<CampaignSpec>,
    /// The campaign's current version (templates are compiled once per version).
    pub campaign_version: i32,
}

pub async fn load(
    conn: &mut AsyncPgConnection,
    jobs: &[&DeliveryJob],
) -> Result<Vec<Option<JobContext>>, diesel::result::Error> {
    let subs: Vec<Uuid> = jobs.iter().map(|j| j.submission_id.0).collect();
    let camps: Vec<Uuid> = jobs.iter().map(|j| j.campaign_id).collect();
    let channels: Vec<String> = jobs.iter().map(|j| j.channel.to_string()).collect();
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT d.submission_id, d.campaign_id, d.channel, d.status, d.attempts, d.history, \
                jsonb_build_object('submission_id', s.id, 'quiz_id', s.quiz_id, 'score', s.score, \
                    'completed_at', s.completed_at, 'tags', to_jsonb(s.tags), 'answers', s.answers::jsonb, \
                    'metadata', s.metadata::jsonb, 'respondent', jsonb_strip_nulls(jsonb_build_object( \
                        'phone', s.phone, 'email', s.email, 'name', s.name, 'locale', s.locale))) AS submission, \
                c.definition, c.version \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[]) AS k(sub, camp, channel) \
         JOIN deliveries d ON d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel \
         JOIN submission_ids i ON i.id = d.submission_id \
         JOIN submissions s ON s.id = i.id AND s.received_at = i.received_at \
         LEFT JOIN campaigns c ON c.id = d.campaign_id",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .load(conn)
    .await?;
    Ok(jobs
        .iter()
        .map(|j| {
            rows.iter()
                .find(|r| {
                    r.submission_id == j.submission_id.0
                        && r.campaign_id == j.campaign_id
                        && r.channel == j.channel.as_str()
                })
                .map(|r| JobContext {
                    status: r.status.clone(),
                    attempts: r.attempts,
                    history: r.history.as_array().cloned().unwrap_or_default(),
                    submission: r.submission.clone(),
                    campaign: r
                        .definition
                        .clone()
                        .and_then(|d| serde_json::from_value(d).ok()),
                    campaign_version: r.version.unwrap_or(0),
                })
        })
        .collect())
}

/// Mirrors a dead letter into `dead_letters` for inspection and redrive.
#[allow(clippy::too_many_arguments)]
pub async fn insert_dead_letter(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    job: &DeliveryJob,
    recipient: Option<&str>,
    class: &str,
    reason: &str,
    attempts: i32,
    history: &serde_json::Value,
    payload: &[u8],
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "INSERT INTO dead_letters (id, kind, channel, submission_id, campaign_id, recipient, class, reason, attempts, history, payload) \
         VALUES ($1, 'delivery', $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(job.channel.as_str())
    .bind::<SqlUuid, _>(job.submission_id.0)
    .bind::<SqlUuid, _>(job.campaign_id)
    .bind::<Nullable<Text>, _>(recipient)
    .bind::<Text, _>(class)
    .bind::<Text, _>(reason)
    .bind::<Integer, _>(attempts)
    .bind::<Jsonb, _>(history)
    .bind::<diesel::sql_types::Binary, _>(payload)
    .execute(conn)
    .await?;
    Ok(())
}
