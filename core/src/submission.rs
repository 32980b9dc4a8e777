//! The validated submission and the envelope it travels in.

use crate::{IdempotencyKey, QuizId, SubmissionId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Who completed the quiz. Phone and e-mail are personal data: never log them at info level
/// and never use them as metric labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Respondent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA zone name: a campaign's send window is read in it (never guessed from the phone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// One answer's value: a string, a number, a boolean or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnswerValue {
    Bool(bool),
    Number(serde_json::Number),
    Text(String),
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub question: String,
    pub value: AnswerValue,
}

/// A completed quiz, validated against contract §2.1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    #[serde(default)]
    pub respondent: Respondent,
    #[serde(default)]
    pub answers: Vec<Answer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// What the API publishes to `quiz.submissions.<quiz_id>`.
///
/// The receipt time is set once, by the API, and travels in the message: a redelivered
/// message therefore lands in the same monthly partition and on the same row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmissionEnvelope {
    /// Envelope format version, so that consumers can reject what they do not understand.
    pub v: u16,
    pub submission_id: SubmissionId,
    pub quiz_id: QuizId,
    pub received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    pub submission: Submission,
}

impl SubmissionEnvelope {
    pub const VERSION: u16 = 1;

    /// Wraps a validated submission; `completed_at` defaults to the receipt time.
    pub fn new(
        submission_id: SubmissionId,
        quiz_id: QuizId,
        received_at: DateTime<Utc>,
        idempotency_key: Option<IdempotencyKey>,
        mut submission: Submission,
    ) -> Self {
        submission.completed_at.get_or_insert(received_at);
        Self {
            v: Self::VERSION,
            submission_id,
            quiz_id,
            received_at,
            idempotency_key,
            submission,
        }
    }
}
