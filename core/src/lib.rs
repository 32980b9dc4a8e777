//! Domain types shared by every quizflow stage.
//!
//! Everything that crosses a process boundary is defined here once: validated identifiers
//! ([`QuizId`], [`IdempotencyKey`], [`SubmissionId`]), the validated [`Submission`], the
//! [`SubmissionEnvelope`] that travels through the `SUBMISSIONS` stream, and the delivery
//! [`Channel`]/[`Priority`] vocabulary. Validation lives here so that a value of one of these
//! types is valid by construction wherever it is used.

mod campaign;
pub mod consent;
mod cost;
mod ids;
mod job;
pub mod qr;
pub mod render;
pub mod schedule;
pub mod settings;
pub mod signatures;
mod status;
mod submission;
pub mod template;
mod validate;

pub use campaign::{
    fallback_step, parse_campaign, primary_of, Action, Campaign, CampaignSpec, Fallback,
    FallbackOn, Field, MatchSpec, Op, Predicate, WhatsappTemplate, FALLBACK_BASE,
};
pub use cost::Costs;
pub use ids::{Channel, IdError, IdempotencyKey, Priority, QuizId, SubmissionId};
pub use job::{DeliveryJob, Reference};
pub use status::{DeadClass, DeliveryStatus, Outcome, UnknownText};
pub use submission::{Answer, AnswerValue, Respondent, Submission, SubmissionEnvelope};
pub use validate::{
    canonical_json, is_e164, is_email, parse_submission, FieldProblem, ValidationErrors,
    MAX_ANSWERS, MAX_TAGS,
};
