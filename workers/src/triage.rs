//! What to do with a fetched job once its ledger row is loaded, before any claim: a pure
//! function of the row and the clock, so every case is a row of a table test.

use chrono::{DateTime, Utc};
use quizflow_core::DeliveryStatus;
use quizflow_store::deliveries::JobContext;
use std::time::Duration;

/// How often a job without a ledger row comes back before it is poison: the ledger row is
/// written before the job is published, so a job without one was never made by a batcher.
pub const ROWLESS_DELIVERIES: u64 = 5;

/// A job's context as loaded: `Ok(None)` without a ledger row, `Err` when the database
/// refused it for its data.
pub type Loaded = Result<Option<JobContext>, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    /// Claim it and send it.
    Send,
    /// Nothing to do: a redelivery or a second copy of a finished job. Ack.
    Done,
    /// Its campaign ended, was deactivated or deleted: record `cancelled`, then ack.
    Cancel(&'static str),
    /// Not now: nak with this delay, no attempt spent.
    Wait(Duration),
    /// The context the database refused for its data: the dead path.
    Unloadable(String),
    /// Cannot be handled at all: to dead letters on its own.
    Poison(&'static str),
}

/// The triage of one job: `ctx` is its loaded context (`Ok(None)`: no ledger row; `Err`: the
/// database refused it for its data), `delivered` how often the stream has delivered it.
pub fn triage(ctx: &Loaded, delivered: u64, now: DateTime<Utc>) -> Triage {
    let ctx = match ctx {
        Err(reason) => return Triage::Unloadable(reason.clone()),
        Ok(None) if delivered >= ROWLESS_DELIVERIES => {
            return Triage::Poison("no ledger row for this job")
        }
        Ok(None) => return Triage::Wait(Duration::from_secs(2)),
        Ok(Some(ctx)) => ctx,
    };
    if ctx.is_final() {
        return Triage::Done;
    }
    if !ctx.campaign_live {
        return Triage::Cancel(if ctx.campaign_exists {
            "campaign inactive or ended"
        } else {
            "campaign deleted"
        });
    }
    if let Some(at) = ctx.next_attempt_at.filter(|t| *t > now) {
        // A copy that arrived before the job's backoff ran out (a re-publish, a redrive of
        // an older letter): it waits like the original.
        return Triage::Wait((at - now).to_std().unwrap_or_default());
    }
    match ctx.lease_until {
        Some(until) if ctx.status == DeliveryStatus::Sending && until > now => {
            // Another worker holds it: look again soon (its outcome usually lands within
            // seconds), at the latest when its lease runs out.
            let left = (until - now).to_std().unwrap_or_default();
            Triage::Wait((left + Duration::from_secs(1)).min(Duration::from_secs(5)))
        }
        _ => Triage::Send,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(status: DeliveryStatus) -> JobContext {
        JobContext {
            status,
            attempts: 0,
            lease_until: None,
            next_attempt_at: None,
            history: Vec::new(),
            submission: serde_json::Value::Null,
            campaign: None,
            campaign_version: 1,
            campaign_live: true,
            campaign_exists: true,
        }
    }

    #[test]
    fn the_triage_table() {
        use DeliveryStatus::*;
        let now = Utc::now();
        let secs = |s: i64| now + chrono::Duration::seconds(s);
        let with = |status, f: fn(&mut JobContext, DateTime<Utc>)| {
            let mut c = ctx(status);
            f(&mut c, now);
            Ok(Some(c))
        };
        type Row = (&'static str, Loaded, u64, Triage);
        let rows: Vec<Row> = vec![
            (
                "refused",
                Err("bad".into()),
                1,
                Triage::Unloadable("bad".into()),
            ),
            (
                "no row, early",
                Ok(None),
                1,
                Triage::Wait(Duration::from_secs(2)),
            ),
            (
                "no row, 5th time",
                Ok(None),
                5,
                Triage::Poison("no ledger row for this job"),
            ),
            ("queued", with(Queued, |_, _| {}), 1, Triage::Send),
            (
                "failed, backoff over",
                with(Failed, |c, n| {
                    c.next_attempt_at = Some(n - chrono::Duration::seconds(1))
                }),
                1,
                Triage::Send,
            ),
            (
                "failed, backoff 30 s left",
                with(Failed, |c, n| {
                    c.next_attempt_at = Some(n + chrono::Duration::seconds(30))
                }),
                1,
                Triage::Wait(Duration::from_secs(30)),
            ),
            (
                "sending, lease 2 s left",
                with(Sending, |c, n| {
                    c.lease_until = Some(n + chrono::Duration::seconds(2))
                }),
                1,
                Triage::Wait(Duration::from_secs(3)),
            ),
            (
                "sending, lease 60 s left",
                with(Sending, |c, n| {
                    c.lease_until = Some(n + chrono::Duration::seconds(60))
                }),
                1,
                Triage::Wait(Duration::from_secs(5)),
            ),
            (
                "sending, lease expired",
                with(Sending, |c, n| {
                    c.lease_until = Some(n - chrono::Duration::seconds(1))
                }),
                1,
                Triage::Send,
            ),
            (
                "campaign ended",
                with(Queued, |c, _| c.campaign_live = false),
                1,
                Triage::Cancel("campaign inactive or ended"),
            ),
            (
                "campaign deleted",
                with(Queued, |c, _| {
                    c.campaign_live = false;
                    c.campaign_exists = false
                }),
                1,
                Triage::Cancel("campaign deleted"),
            ),
            (
                "dead campaign, final row",
                with(Sent, |c, _| c.campaign_live = false),
                1,
                Triage::Done,
            ),
        ];
        for (name, c, delivered, want) in rows {
            assert_eq!(triage(&c, delivered, now), want, "{name}");
        }
        for s in DeliveryStatus::FINAL {
            assert_eq!(triage(&Ok(Some(ctx(s))), 1, secs(0)), Triage::Done, "{s}");
        }
    }
}
