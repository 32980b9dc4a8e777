//! Validated identifiers.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must match ^[A-Za-z0-9_-]{{1,64}}$")]
    BadQuizId,
    #[error("must be 1 to 128 printable ASCII characters")]
    BadIdempotencyKey,
}

/// A quiz id. It becomes a NATS subject token, so it can only hold `[A-Za-z0-9_-]{1,64}`:
/// no `.`, `*`, `>` or whitespace can ever reach a subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct QuizId(String);

impl QuizId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdError::BadQuizId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for QuizId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        QuizId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for QuizId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-chosen idempotency key: 1–128 printable ASCII characters (space to `~`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let ok =
            !raw.is_empty() && raw.len() <= 128 && raw.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdError::BadIdempotencyKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A submission id: a UUIDv5, derived deterministically so that a retried post maps to the
/// same id (and so to the same `Nats-Msg-Id` and the same row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubmissionId(pub Uuid);

/// Namespace of quizflow's UUIDv5 submission ids. Changing it changes every id: never do.
const SUBMISSION_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_0c2e_9d4a_4f7e_8a51_2c3d_4e5f_6071);

impl SubmissionId {
    /// The id of a submission posted with an `Idempotency-Key`.
    pub fn from_key(quiz: &QuizId, key: &IdempotencyKey) -> Self {
        Self::derive(b"key", quiz, key.as_str().as_bytes())
    }

    /// The id of a submission posted without a key: derived from its canonical JSON
    /// (sorted keys, no whitespace), so key order and formatting do not matter.
    pub fn from_canonical_body(quiz: &QuizId, canonical_json: &[u8]) -> Self {
        Self::derive(b"body", quiz, canonical_json)
    }

    fn derive(kind: &[u8], quiz: &QuizId, material: &[u8]) -> Self {
        let mut name = Vec::with_capacity(kind.len() + quiz.as_str().len() + material.len() + 2);
        name.extend_from_slice(kind);
        name.push(0);
        name.extend_from_slice(quiz.as_str().as_bytes());
        name.push(0);
        name.extend_from_slice(material);
        Self(Uuid::new_v5(&SUBMISSION_NAMESPACE, &name))
    }
}

impl fmt::Display for SubmissionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Email,
    Whatsapp,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::Sms,
        Channel::Email,
        Channel::Whatsapp,
        Channel::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Whatsapp => "whatsapp",
            Channel::Webhook => "webhook",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery priority; pools drain `High` before `Normal` before `Low`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Highest first: the order in which a pool drains them.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiz_id_accepts_subject_safe_tokens_only() {
        assert!(QuizId::parse("promo-nov_2026").is_ok());
        assert!(QuizId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", "ção", &"a".repeat(65)] {
            assert_eq!(QuizId::parse(bad), Err(IdError::BadQuizId), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_key_is_printable_ascii() {
        assert!(IdempotencyKey::parse("abc-123 ~!").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
    }

    #[test]
    fn ids_are_deterministic_and_scoped_by_quiz() {
        let q1 = QuizId::parse("q1").expect("valid");
        let q2 = QuizId::parse("q2").expect("valid");
        let k = IdempotencyKey::parse("k").expect("valid");
        assert_eq!(
            SubmissionId::from_key(&q1, &k),
            SubmissionId::from_key(&q1, &k)
        );
        assert_ne!(
            SubmissionId::from_key(&q1, &k),
            SubmissionId::from_key(&q2, &k)
        );
        assert_ne!(
            SubmissionId::from_key(&q1, &k),
            SubmissionId::from_canonical_body(&q1, b"k")
        );
    }
}
