//! The delivery vocabulary: a ledger row's status, a dead letter's class, and what one
//! provider call came to. The database and the HTTP API hold these as text; [`as_str`] and
//! [`FromStr`] are the one place that text is spelled.
//!
//! [`as_str`]: DeliveryStatus::as_str
//! [`FromStr`]: std::str::FromStr

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Where a delivery (one ledger row) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its time (a delayed or recurring action).
    Scheduled,
    /// Published, not attempted yet.
    Queued,
    /// Claimed by a worker; the lease says until when.
    Sending,
    /// The provider accepted it.
    Sent,
    /// The provider reported it delivered.
    Delivered,
    /// An attempt failed; another follows after the backoff.
    Failed,
    /// Dead-lettered: permanent, exhausted or poison.
    Dead,
    /// Never sent: its campaign ended or was deleted, or the person was erased.
    Cancelled,
    /// Never sent: the contact opted out, bounced or complained (contract §3.2).
    Suppressed,
    /// Never sent: the recipient had had their frequency cap's worth of messages.
    Capped,
    /// Never sent: a rule said not to, with its reason (`empty_render`, ...).
    Skipped,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 11] = [
        Self::Scheduled,
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Delivered,
        Self::Failed,
        Self::Dead,
        Self::Cancelled,
        Self::Suppressed,
        Self::Capped,
        Self::Skipped,
    ];

    /// Statuses a row never leaves (a delivery report may still move `sent` to `delivered`).
    pub const FINAL: [DeliveryStatus; 7] = [
        Self::Sent,
        Self::Delivered,
        Self::Dead,
        Self::Cancelled,
        Self::Suppressed,
        Self::Capped,
        Self::Skipped,
    ];

    /// Statuses whose message the provider took, and bills.
    pub const BILLED: [DeliveryStatus; 2] = [Self::Sent, Self::Delivered];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
            Self::Suppressed => "suppressed",
            Self::Capped => "capped",
            Self::Skipped => "skipped",
        }
    }

    pub fn is_final(self) -> bool {
        Self::FINAL.contains(&self)
    }

    /// The status a job waits in between attempts: `queued` before its first, `failed` after.
    pub fn waiting(attempts: i32) -> Self {
        if attempts == 0 {
            Self::Queued
        } else {
            Self::Failed
        }
    }
}

/// A status text the vocabulary does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {text:?}")]
pub struct UnknownText {
    kind: &'static str,
    text: String,
}

impl FromStr for DeliveryStatus {
    type Err = UnknownText;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownText {
                kind: "delivery status",
                text: s.to_owned(),
            })
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadClass {
    /// The provider (or the job's own data) says it can never be sent.
    Permanent,
    /// Every attempt of the retry schedule failed.
    Exhausted,
    /// The job itself cannot be read or loaded.
    Poison,
    /// JetStream's delivery limit was reached without an outcome (the sweeper's letters).
    #[serde(rename = "max_deliveries")]
    MaxDeliveries,
}

impl DeadClass {
    pub const ALL: [DeadClass; 4] = [
        Self::Permanent,
        Self::Exhausted,
        Self::Poison,
        Self::MaxDeliveries,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::Poison => "poison",
            Self::MaxDeliveries => "max_deliveries",
        }
    }

    /// The history entry a letter of this class ends with: an exhausted job's last attempt
    /// simply failed.
    pub const fn history_event(self) -> &'static str {
        match self {
            Self::Exhausted => "failed",
            other => other.as_str(),
        }
    }
}

impl FromStr for DeadClass {
    type Err = UnknownText;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownText {
                kind: "dead-letter class",
                text: s.to_owned(),
            })
    }
}

impl fmt::Display for DeadClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one provider call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the message.
    Sent,
    /// Never retry: dead letter now.
    Permanent(String),
    /// Wait (Retry-After or backoff); not a failed attempt.
    Throttle {
        retry_after: Option<Duration>,
        detail: String,
    },
    /// Retry with backoff.
    Transient(String),
    /// The request may have been accepted: retry with the same idempotency key.
    Uncertain(String),
    /// The provider refused because of the person (opted out with it, the address does not
    /// exist): the contact is suppressed and the row ends `suppressed`, no dead letter.
    Suppress {
        reason: crate::consent::Reason,
        detail: String,
    },
}

impl Outcome {
    /// The metric label of the outcome's class.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Throttle { .. } => "throttled",
            Self::Transient(_) => "transient",
            Self::Uncertain(_) => "uncertain",
            Self::Permanent(_) => "permanent",
            Self::Suppress { .. } => "opt_out",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>(), Ok(s));
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
        }
        for c in DeadClass::ALL {
            assert_eq!(c.as_str().parse::<DeadClass>(), Ok(c));
            assert_eq!(serde_json::to_value(c).ok(), Some(c.as_str().into()));
        }
        assert!("sendin".parse::<DeliveryStatus>().is_err());
    }

    #[test]
    fn final_and_waiting() {
        assert!(DeliveryStatus::Cancelled.is_final());
        assert!(!DeliveryStatus::Failed.is_final());
        assert_eq!(DeliveryStatus::waiting(0), DeliveryStatus::Queued);
        assert_eq!(DeliveryStatus::waiting(2), DeliveryStatus::Failed);
        assert_eq!(DeadClass::Exhausted.history_event(), "failed");
    }
}
