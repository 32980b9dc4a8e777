//! Realistic generated leads (about 400 bytes of JSON each).

use rand::Rng;
use serde_json::{json, Value};

const NAMES: &[&str] = &[
    "Ana", "Bruno", "Carla", "Diego", "Elisa", "Felipe", "Gabi", "Hugo",
];
const LOCALES: &[&str] = &["pt-BR", "es-AR", "en-US", "pt-PT"];
const SOURCES: &[&str] = &["tv", "instagram", "google", "email", "direct"];

/// One lead body for `POST /v1/quizzes/{quiz_id}/submissions`; `n` makes it unique.
pub fn lead(rng: &mut impl Rng, n: u64) -> Value {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let q1 = ["a", "b", "c", "d"][rng.random_range(0..4)];
    json!({
        "respondent": {
            "phone": format!("+55119{:08}", rng.random_range(0..100_000_000u64)),
            "email": format!("{}.{n}@example.com", name.to_lowercase()),
            "name": name,
            "locale": LOCALES[rng.random_range(0..LOCALES.len())],
        },
        "answers": [
            {"question": "q1", "value": q1},
            {"question": "q2", "value": rng.random_range(1..=5)},
            {"question": "age", "value": rng.random_range(18..80)},
            {"question": "interests", "value": ["sports", "travel"]},
            {"question": "newsletter", "value": rng.random_bool(0.5)},
        ],
        "score": rng.random_range(0..=100),
        "completed_at": "2026-11-22T10:00:00Z",
        "tags": ["promo-nov", "event"],
        "metadata": {"utm_source": SOURCES[rng.random_range(0..SOURCES.len())], "utm_campaign": "nov", "n": n},
    })
}

/// `n` validated envelopes of [`lead`]s over `quizzes` quizzes (`quiz0`…), received now, with
/// idempotency keys unique to this call.
pub fn envelopes(n: usize, quizzes: usize) -> Vec<quizflow_core::SubmissionEnvelope> {
    use quizflow_core::{IdempotencyKey, QuizId, SubmissionEnvelope, SubmissionId};
    let mut rng = rand::rng();
    let run = uuid::Uuid::new_v4();
    (0..n)
        .map(|i| {
            let quiz = QuizId::parse(&format!("quiz{}", i % quizzes.max(1)))
                .unwrap_or_else(|_| unreachable!("valid"));
            let key = IdempotencyKey::parse(&format!("bench-{run}-{i}"))
                .unwrap_or_else(|_| unreachable!("valid"));
            let sub =
                quizflow_core::parse_submission(&lead(&mut rng, i as u64)).unwrap_or_default();
            SubmissionEnvelope::new(
                SubmissionId::from_key(&quiz, &key),
                quiz,
                chrono::Utc::now(),
                Some(key),
                sub,
            )
        })
        .collect()
}
