//! The `deliveries` ledger as the workers see it: what a fetch of jobs needs (one query), the
//! claim taken before a provider call, and batched, forward-only status writes.
//!
//! Statuses only move forward. A worker claims a row (`queued|failed → sending`, or a
//! `sending` row whose lease expired) with a token; its outcome is written only while the row
//! is still `sending` under that token. Writes without a token (cancellation, the
//! max-deliveries sweeper) apply only to rows nobody holds. So `sent`, `delivered`, `dead` and
//! `cancelled` are never overwritten by a late `failed`, and two copies of a job never both
//! reach the provider unless a lease ran out.

pub mod cancel;
mod caps;
mod claim;
mod load;
mod write;

pub use caps::{claim_capped, Cap, CapClaim, Capped};
pub use claim::{claim, renew, start_calls, Call, Start};
pub use load::{load, JobContext, SpecCache};
pub use write::{count_sent_for_quiz, record_dead, write, Arm, DeadLetterRow, Update};

use diesel::sql_types::{SmallInt, Text, Uuid as SqlUuid};
use uuid::Uuid;

/// How many attempt-history entries a ledger row keeps (the newest).
pub const HISTORY_CAP: i32 = 50;

/// A ledger key: (submission, campaign, channel, step).
pub type Key = (Uuid, Uuid, String, u16);

#[derive(diesel::QueryableByName)]
pub(crate) struct KeyRow {
    #[diesel(sql_type = SqlUuid)]
    pub(crate) submission_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub(crate) campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    pub(crate) channel: String,
    #[diesel(sql_type = SmallInt)]
    pub(crate) step: i16,
}

impl KeyRow {
    fn key(self) -> Key {
        (
            self.submission_id,
            self.campaign_id,
            self.channel,
            u16::try_from(self.step).unwrap_or_default(),
        )
    }
}

type KeyColumns = (Vec<Uuid>, Vec<Uuid>, Vec<String>, Vec<i16>);

fn unzip(keys: &[Key]) -> KeyColumns {
    let mut a = Vec::with_capacity(keys.len());
    let mut b = Vec::with_capacity(keys.len());
    let mut c = Vec::with_capacity(keys.len());
    let mut d = Vec::with_capacity(keys.len());
    for (s, k, ch, step) in keys {
        a.push(*s);
        b.push(*k);
        c.push(ch.clone());
        d.push(*step as i16);
    }
    (a, b, c, d)
}
