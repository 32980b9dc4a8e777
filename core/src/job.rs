//! The delivery job published to `deliveries.<channel>.<priority>`.

use crate::{Channel, Priority, SubmissionId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One message to send: (submission, campaign, channel), at most once per triple.
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
}

const JOB_NAMESPACE: Uuid = Uuid::from_u128(0x2f6c_51a0_7b3e_4c19_9e84_0d1a_6b5c_3e27);

impl DeliveryJob {
    pub const VERSION: u16 = 1;

    pub fn job_id(submission: SubmissionId, campaign: Uuid, channel: Channel) -> Uuid {
        Uuid::new_v5(
            &JOB_NAMESPACE,
            Self::msg_id_of(submission, campaign, channel).as_bytes(),
        )
    }

    /// `Nats-Msg-Id` of the job: `<submission_id>:<campaign_id>:<channel>`.
    pub fn msg_id_of(submission: SubmissionId, campaign: Uuid, channel: Channel) -> String {
        format!("{submission}:{campaign}:{channel}")
    }

    pub fn msg_id(&self) -> String {
        Self::msg_id_of(self.submission_id, self.campaign_id, self.channel)
    }

    /// What a provider echoes back in its status callbacks (Twilio's callback URL, WhatsApp's
    /// `biz_opaque_callback_data`, a Resend tag): `<submission>_<campaign>_<channel>`. Only
    /// letters, digits, `-` and `_`, which every one of them accepts; no personal data.
    pub fn reference(&self) -> String {
        format!(
            "{}_{}_{}",
            self.submission_id,
            self.campaign_id,
            self.channel.as_str()
        )
    }

    /// The ledger key a [`DeliveryJob::reference`] names; `None` for anything else.
    pub fn parse_reference(raw: &str) -> Option<(SubmissionId, Uuid, Channel)> {
        let mut parts = raw.splitn(3, '_');
        let sub = Uuid::parse_str(parts.next()?).ok()?;
        let camp = Uuid::parse_str(parts.next()?).ok()?;
        let channel = Channel::parse(parts.next()?)?;
        Some((SubmissionId(sub), camp, channel))
    }
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
        };
        let r = job.reference();
        assert!(r
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(
            DeliveryJob::parse_reference(&r),
            Some((job.submission_id, job.campaign_id, Channel::Whatsapp))
        );
        for bad in [
            "",
            "x_y_sms",
            &format!("{}_{}_fax", Uuid::nil(), Uuid::nil()),
        ] {
            assert_eq!(DeliveryJob::parse_reference(bad), None);
        }
    }
}
