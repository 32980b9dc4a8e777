//! Subject and stream names: part of the contract (contract §1).

use quizflow_core::{Channel, Priority, QuizId};

pub const SUBMISSIONS_STREAM: &str = "SUBMISSIONS";
pub const DELIVERIES_STREAM: &str = "DELIVERIES";
pub const DEAD_LETTERS_STREAM: &str = "DEAD_LETTERS";
/// In-memory stream of duplicate marks: one empty message per accepted submission, its
/// `Nats-Msg-Id` the submission id, kept for the duplicate window. It answers the API's
/// `duplicate` now that several submissions share one `SUBMISSIONS` message.
pub const SUBMISSION_IDS_STREAM: &str = "SUBMISSION_IDS";
/// The one subject of `SUBMISSION_IDS`.
pub const SUBMISSION_IDS: &str = "quizflow.submission-ids";

/// Durable pull consumer of `SUBMISSIONS` shared by every batcher instance.
pub const BATCHER_CONSUMER: &str = "batcher";
/// KV bucket of the workers' cluster-wide limits: heartbeats (`member.<instance>`) and
/// breaker verdicts (`breaker.<channel>`). Its stream is `KV_quizflow_workers`.
/// The API's per-respondent intake limits: an in-memory stream with a subject per
/// respondent and quiz (a keyed hash, see `quizflow_api::limits`).
pub const LIMITS_STREAM: &str = "RESPONDENT_LIMITS";
/// Prefix of [`LIMITS_STREAM`]'s subjects: `<prefix>.<hash>`.
pub const LIMITS_PREFIX: &str = "quizflow.limits.respondent";
/// Intake quotas per quiz (a sliding log per quiz, like [`LIMITS_STREAM`]): `<prefix>.<quiz_id>`.
pub const QUIZ_QUOTA_STREAM: &str = "QUIZ_QUOTAS";
pub const QUIZ_QUOTA_PREFIX: &str = "quizflow.quota.quiz";
/// The global intake quota: one subject, `<prefix>.all`.
pub const GLOBAL_QUOTA_STREAM: &str = "GLOBAL_QUOTA";
pub const GLOBAL_QUOTA_PREFIX: &str = "quizflow.quota.global";

pub const WORKERS_BUCKET: &str = "quizflow_workers";

pub const SUBMISSIONS_ALL: &str = "quiz.submissions.>";
/// Where a redriven submission letter whose envelope cannot be read is published (no quiz id
/// to name the subject; `_` is not a valid quiz id, so no quiz shares it).
pub const SUBMISSIONS_REDRIVEN_UNREADABLE: &str = "quiz.submissions._";
pub const DELIVERIES_ALL: &str = "deliveries.>";
pub const DEAD_LETTERS_ALL: &str = "dead.>";

/// `quiz.submissions.<quiz_id>`; a [`QuizId`] cannot hold a `.` or a wildcard.
pub fn submission(quiz: &QuizId) -> String {
    format!("quiz.submissions.{quiz}")
}

/// `deliveries.<channel>.<priority>`
pub fn delivery(channel: Channel, priority: Priority) -> String {
    format!("deliveries.{channel}.{priority}")
}

/// Durable consumer of one channel and priority: `workers-<channel>-<priority>`.
pub fn worker_consumer(channel: Channel, priority: Priority) -> String {
    format!("workers-{channel}-{priority}")
}

/// What a dead letter was: a delivery job or an undecodable submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadKind {
    Delivery,
    Submission,
}

/// `dead.<kind>.<channel>`; undecodable submissions use `dead.submissions.<quiz_id or _>`.
pub fn dead_letter(kind: DeadKind, channel_or_quiz: &str) -> String {
    match kind {
        DeadKind::Delivery => format!("dead.deliveries.{channel_or_quiz}"),
        DeadKind::Submission => format!("dead.submissions.{channel_or_quiz}"),
    }
}

/// JetStream's advisory when a job hit `max_deliver` without a worker deciding its fate
/// (crash loops, ack timeouts). Captured durably by `DEAD_LETTERS` as well.
pub const MAX_DELIVERIES_ADVISORIES: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.DELIVERIES.>";

/// Durable consumer of those advisories, shared by every workers instance.
pub const MAX_DELIVERIES_SWEEPER: &str = "max-deliveries-sweeper";

/// Core NATS subject on which campaign changes are announced to every batcher.
pub const CAMPAIGNS_CHANGED: &str = "quizflow.campaigns.changed";

/// Header carrying JetStream's de-duplication id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_spec() {
        let q = QuizId::parse("promo-nov").expect("valid");
        assert_eq!(submission(&q), "quiz.submissions.promo-nov");
        assert_eq!(
            delivery(Channel::Sms, Priority::High),
            "deliveries.sms.high"
        );
        assert_eq!(
            worker_consumer(Channel::Webhook, Priority::Low),
            "workers-webhook-low"
        );
        assert_eq!(
            dead_letter(DeadKind::Delivery, "email"),
            "dead.deliveries.email"
        );
    }
}
