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
}
