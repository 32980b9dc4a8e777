//! The delivery job published to `deliveries.<channel>.<priority>`.

use crate::{Channel, Priority, SubmissionId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One message to send: (submission, campaign, channel, step), at most once per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub v: u16,
    /// Deterministic: the same triple always has the same job id (the provider idempotency key).
    pub job_id: Uuid,
    pub submission_id: SubmissionId,
    pub campaign_id: Uuid,
    pub campaign_version: i32,
    pub channel: Channel,
    pub priority: Priority,
    pub created_at: DateTime<Utc>,
    /// Which action of its channel in the campaign: the n-th (0: the first, and the only one
    /// before campaigns could hold several; absent in such jobs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step: u16,
    /// When a scheduled action is due (`delay`, `send_at`): the ledger row waits as
    /// `scheduled` and the job is published then. `None`: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// A recurring action's occurrence: the last time a next one may be due (its `until`,
    /// rendered). The firer writes the next occurrence when it fires this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_until: Option<DateTime<Utc>>,
    /// The action's `cancel_key` rendered for this submission: `POST /v1/cancellations` with it
    /// cancels the message while it is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_key: Option<String>,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

const JOB_NAMESPACE: Uuid = Uuid::from_u128(0x2f6c_51a0_7b3e_4c19_9e84_0d1a_6b5c_3e27);

impl DeliveryJob {
    /// Which of its channel's actions in the campaign this job sends (a recurring action's
    /// occurrences share it; see [`crate::schedule::STEP_STRIDE`]).
    pub fn action_step(&self) -> u16 {
        self.step % crate::schedule::STEP_STRIDE
    }

    pub const VERSION: u16 = 1;

    pub fn job_id(submission: SubmissionId, campaign: Uuid, channel: Channel, step: u16) -> Uuid {
        Uuid::new_v5(
            &JOB_NAMESPACE,
            Self::msg_id_of(submission, campaign, channel, step).as_bytes(),
        )
    }

    /// `Nats-Msg-Id` of the job: `<submission_id>:<campaign_id>:<channel>`, and `:<step>`
    /// after it for every action of a channel but the first (so the ids of jobs made before
    /// steps existed do not change).
    pub fn msg_id_of(
        submission: SubmissionId,
        campaign: Uuid,
        channel: Channel,
        step: u16,
    ) -> String {
        if step == 0 {
            format!("{submission}:{campaign}:{channel}")
        } else {
            format!("{submission}:{campaign}:{channel}:{step}")
        }
    }

    pub fn msg_id(&self) -> String {
        Self::msg_id_of(
            self.submission_id,
            self.campaign_id,
            self.channel,
            self.step,
        )
    }

    /// What a provider echoes back in its status callbacks (Twilio's callback URL, WhatsApp's
    /// `biz_opaque_callback_data`, a Resend tag): `<submission>_<campaign>_<channel>`, and
    /// `_<step>` for a later step. Only letters, digits, `-` and `_`, which every one of them
    /// accepts; no personal data.
    pub fn reference(&self) -> String {
        let base = format!(
            "{}_{}_{}",
            self.submission_id,
            self.campaign_id,
            self.channel.as_str()
        );
        if self.step == 0 {
            base
        } else {
            format!("{base}_{}", self.step)
        }
    }

    /// [`DeliveryJob::reference`] of one attempt (`_a<n>` appended): a report names the
    /// call it is about, so a late report of an earlier attempt cannot move the row a later
    /// attempt is working on.
    pub fn reference_for_attempt(&self, attempt: i32) -> String {
        format!("{}_a{attempt}", self.reference())
    }

    /// The ledger key a [`DeliveryJob::reference`] names, and the attempt when the reference
    /// has one (references from before attempts were named have none); `None` for anything
    /// else.
    pub fn parse_reference(raw: &str) -> Option<Reference> {
        let (raw, attempt) = match raw.rsplit_once("_a") {
            Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                (head, Some(n.parse::<i32>().ok()?))
            }
            _ => (raw, None),
        };
        let mut parts = raw.splitn(4, '_');
        let sub = Uuid::parse_str(parts.next()?).ok()?;
        let camp = Uuid::parse_str(parts.next()?).ok()?;
        let channel = Channel::parse(parts.next()?)?;
        let step = match parts.next() {
            None => 0,
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok()?,
            Some(_) => return None,
        };
        Some(Reference {
            submission_id: SubmissionId(sub),
            campaign_id: camp,
            channel,
            step,
            attempt,
        })
    }
}

/// What a provider's status report is about: a ledger row, and which attempt at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    pub submission_id: SubmissionId,
    pub campaign_id: Uuid,
    pub channel: Channel,
    pub step: u16,
    /// The attempt the report is about; `None` for a reference without one.
    pub attempt: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_names_its_ledger_row_and_nothing_else_parses() {
        let job = DeliveryJob {
            v: DeliveryJob::VERSION,
            job_id: Uuid::nil(),
            submission_id: SubmissionId(Uuid::from_u128(1)),
            campaign_id: Uuid::from_u128(2),
            campaign_version: 1,
            channel: Channel::Whatsapp,
            priority: Priority::Normal,
            created_at: Utc::now(),
            step: 0,
            due_at: None,
            repeat_until: None,
            cancel_key: None,
        };
        let r = job.reference();
        assert!(r
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let key = |r: Option<Reference>| {
            r.map(|r| (r.submission_id, r.campaign_id, r.channel, r.step, r.attempt))
        };
        assert_eq!(
            key(DeliveryJob::parse_reference(&r)),
            Some((
                job.submission_id,
                job.campaign_id,
                Channel::Whatsapp,
                0,
                None
            ))
        );
        let third = job.reference_for_attempt(3);
        assert!(third
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(
            key(DeliveryJob::parse_reference(&third)),
            Some((
                job.submission_id,
                job.campaign_id,
                Channel::Whatsapp,
                0,
                Some(3)
            ))
        );
        let later = DeliveryJob {
            step: 2,
            ..job.clone()
        };
        assert_eq!(
            key(DeliveryJob::parse_reference(
                &later.reference_for_attempt(1)
            )),
            Some((
                job.submission_id,
                job.campaign_id,
                Channel::Whatsapp,
                2,
                Some(1)
            ))
        );
        assert_ne!(later.msg_id(), job.msg_id());
        // A first step's ids are what they were before steps existed.
        assert_eq!(
            job.msg_id(),
            format!("{}:{}:whatsapp", job.submission_id, job.campaign_id)
        );
        for bad in [
            "",
            "x_y_sms",
            &format!("{}_{}_fax", Uuid::nil(), Uuid::nil()),
            &format!("{}_{}_sms_", Uuid::nil(), Uuid::nil()),
            &format!("{}_{}_sms_x1", Uuid::nil(), Uuid::nil()),
            &format!("{}_{}_sms_99999999", Uuid::nil(), Uuid::nil()),
            &format!("{}_{}_sms_a", Uuid::nil(), Uuid::nil()),
            &format!("{}_{}_sms_a99999999999", Uuid::nil(), Uuid::nil()),
        ] {
            assert_eq!(DeliveryJob::parse_reference(bad), None);
        }
    }
}
