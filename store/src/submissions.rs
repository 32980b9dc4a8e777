//! Reading a stored submission and its deliveries (contract §2.3).

// `#[diesel(embed)]` needs the trait in scope.
use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, BigInt, Double, Integer, Json, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use quizflow_core::{
    Answer, IdempotencyKey, QuizId, Respondent, Submission, SubmissionEnvelope, SubmissionId,
};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Serialize, diesel::QueryableByName)]
pub struct Delivery {
    #[diesel(sql_type = SqlUuid)]
    pub campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    pub channel: String,
    /// The n-th action of the channel in the campaign.
    #[diesel(sql_type = diesel::sql_types::SmallInt)]
    pub step: i16,
    #[diesel(sql_type = Text)]
    pub status: String,
    /// When a scheduled message is (or was) due; absent for one sent at once.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// The respondent's columns of `submissions` (`phone`, `email`, `name`, `locale`).
#[derive(Debug, Clone, Default, diesel::QueryableByName)]
pub(crate) struct RespondentColumns {
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) phone: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) email: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) locale: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) timezone: Option<String>,
}

impl RespondentColumns {
    /// The stored submission's `respondent` object: only the fields it has.
    pub(crate) fn json(self) -> serde_json::Value {
        let mut respondent = serde_json::Map::new();
        for (k, v) in [
            ("phone", self.phone),
            ("email", self.email),
            ("name", self.name),
            ("locale", self.locale),
            ("timezone", self.timezone),
        ] {
            if let Some(v) = v {
                respondent.insert(k.into(), v.into());
            }
        }
        serde_json::Value::Object(respondent)
    }
}

/// A row of `submissions` as read back whole ([`STORED_COLUMNS`], table alias `s`).
#[derive(Debug, diesel::QueryableByName)]
pub(crate) struct StoredRow {
    #[diesel(sql_type = SqlUuid)]
    pub(crate) id: Uuid,
    #[diesel(sql_type = Text)]
    quiz_id: String,
    #[diesel(sql_type = Timestamptz)]
    pub(crate) received_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    completed_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Double>)]
    score: Option<f64>,
    #[diesel(embed)]
    respondent: RespondentColumns,
    #[diesel(sql_type = Json)]
    answers: serde_json::Value,
    #[diesel(sql_type = Array<Text>)]
    tags: Vec<String>,
    #[diesel(sql_type = Json)]
    metadata: serde_json::Value,
    #[diesel(sql_type = Nullable<Text>)]
    idempotency_key: Option<String>,
    #[diesel(sql_type = BigInt)]
    stream_seq: i64,
    #[diesel(sql_type = Timestamptz)]
    stored_at: DateTime<Utc>,
}

/// The columns of [`StoredRow`], on the alias `s`.
pub(crate) const STORED_COLUMNS: &str =
    "s.id, s.quiz_id, s.received_at, s.completed_at, s.score, s.phone, s.email, s.name, s.locale, s.timezone, \
     s.answers, s.tags, s.metadata, s.idempotency_key, s.stream_seq, s.stored_at";

impl StoredRow {
    /// The envelope the row was stored from (what the matcher saw on the stream), with its
    /// stream sequence; None if the row no longer parses.
    pub(crate) fn into_envelope(self) -> Option<(SubmissionEnvelope, u64)> {
        let quiz_id = QuizId::parse(&self.quiz_id).ok()?;
        let answers: Vec<Answer> = serde_json::from_value(self.answers).ok()?;
        let metadata = match self.metadata {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        };
        let submission = Submission {
            respondent: Respondent {
                phone: self.respondent.phone,
                email: self.respondent.email,
                name: self.respondent.name,
                locale: self.respondent.locale,
                timezone: self.respondent.timezone,
            },
            answers,
            score: self.score,
            completed_at: Some(self.completed_at),
            tags: self.tags,
            metadata,
        };
        let envelope = SubmissionEnvelope::new(
            SubmissionId(self.id),
            quiz_id,
            self.received_at,
            self.idempotency_key
                .and_then(|k| IdempotencyKey::parse(&k).ok()),
            submission,
        );
        Some((envelope, u64::try_from(self.stream_seq).unwrap_or(0)))
    }
}

/// A stored submission with its deliveries, as `GET /v1/submissions/{id}` shows it.
pub async fn get(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<serde_json::Value>, crate::StoreError> {
    // The id guard gives the receipt time, which prunes the search to one partition.
    let rows: Vec<StoredRow> = diesel::sql_query(format!(
        "SELECT {STORED_COLUMNS} \
         FROM submission_ids i JOIN submissions s ON s.id = i.id AND s.received_at = i.received_at \
         WHERE i.id = $1"
    ))
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await?;
    let Some(r) = rows.into_iter().next() else {
        return Ok(None);
    };
    let deliveries: Vec<Delivery> = diesel::sql_query(
        "SELECT campaign_id, channel, step, status, due_at, attempts, last_error, updated_at FROM deliveries \
         WHERE submission_id = $1 ORDER BY created_at, campaign_id, channel, step",
    )
    .bind::<SqlUuid, _>(id)
    .load(conn)
    .await?;
    let mut out = r.json();
    out["deliveries"] = serde_json::to_value(deliveries).unwrap_or_default();
    Ok(Some(out))
}

impl StoredRow {
    /// The row as `GET /v1/submissions/{id}` shows it (without deliveries).
    pub(crate) fn json(self) -> serde_json::Value {
        serde_json::json!({
            "submission_id": self.id,
            "quiz_id": self.quiz_id,
            "received_at": self.received_at,
            "completed_at": self.completed_at,
            "score": self.score,
            "respondent": self.respondent.json(),
            "answers": self.answers,
            "tags": self.tags,
            "metadata": self.metadata,
            "idempotency_key": self.idempotency_key,
            "stored_at": self.stored_at,
        })
    }
}

/// Whether the stored submission `id` had its person erased (false when no such row).
pub async fn erased(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
) -> Result<bool, crate::StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Erased {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        erased: bool,
    }
    let e: Erased = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM submissions WHERE id = $1 AND erased_at IS NOT NULL) AS erased",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result(conn)
    .await?;
    Ok(e.erased)
}
