//! What every template over a submission sees — a message's body, subject and image, and an
//! action's `send_at` and `until` — built in one place, so a field that renders in a message
//! renders the same in its schedule.
//!
//! `respondent`, `answers` (a map question → value), `score`, `tags`, `metadata`, `quiz_id`,
//! `submission_id`, `completed_at`, and `campaign` (`id`, `name`).

use crate::SubmissionEnvelope;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The context, borrowed from the submission as stored: built once per job and converted
/// once, whatever number of templates it renders.
#[derive(Serialize)]
struct Context<'a> {
    respondent: &'a Value,
    answers: BTreeMap<&'a str, &'a Value>,
    score: &'a Value,
    tags: &'a Value,
    metadata: &'a Value,
    quiz_id: &'a Value,
    submission_id: &'a Value,
    completed_at: &'a Value,
    campaign: CampaignRef<'a>,
}

#[derive(Serialize)]
struct CampaignRef<'a> {
    id: &'a str,
    name: &'a str,
}

/// The one minijinja environment every template is compiled and rendered in: message bodies,
/// subjects and images, `send_at` and `until`, and the compile check of a campaign. Callers
/// add only what is theirs (the workers' `qr_url`, HTML escaping of e-mail bodies).
pub fn environment() -> minijinja::Environment<'static> {
    minijinja::Environment::new()
}

/// Whether `src` compiles in [`environment`].
pub fn check(src: &str) -> Result<(), minijinja::Error> {
    environment().template_from_str(src).map(|_| ())
}

/// The context of a submission in its stored shape (`GET /v1/submissions/{id}`, what the
/// workers load) for a campaign.
pub fn context(stored: &Value, campaign_id: &str, campaign_name: &str) -> minijinja::Value {
    let answers = stored["answers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["question"].as_str()?, &a["value"])))
        .collect();
    minijinja::Value::from(minijinja::value::Serde(Context {
        respondent: &stored["respondent"],
        answers,
        score: &stored["score"],
        tags: &stored["tags"],
        metadata: &stored["metadata"],
        quiz_id: &stored["quiz_id"],
        submission_id: &stored["submission_id"],
        completed_at: &stored["completed_at"],
        campaign: CampaignRef {
            id: campaign_id,
            name: campaign_name,
        },
    }))
}

/// A submission not stored yet (the batcher matching it) in the stored shape [`context`]
/// reads: a whole score is an integer, as PostgreSQL gives it back; `completed_at` falls back
/// to the receipt time, as the stored row does.
pub fn stored_shape(e: &SubmissionEnvelope) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact
    let score = match e.submission.score {
        Some(x) if x.fract() == 0.0 && x.abs() < EXACT => Value::from(x as i64),
        Some(x) => Value::from(x),
        None => Value::Null,
    };
    serde_json::json!({
        "submission_id": e.submission_id.to_string(),
        "quiz_id": e.quiz_id.as_str(),
        "score": score,
        "completed_at": e.submission.completed_at.unwrap_or(e.received_at),
        "tags": e.submission.tags,
        "answers": e.submission.answers,
        "metadata": e.submission.metadata,
        "respondent": e.submission.respondent,
    })
}
