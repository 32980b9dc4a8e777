//! What a batch's matches come to before they are written (contract §3.2): the jobs to write
//! `queued` or `scheduled`, the ones whose contact is suppressed (written `suppressed`, never
//! published), and the ones quiet hours deferred to a window's opening, spread from it at the
//! provider's rate through `window_slots`, cluster-wide.

use crate::intake::LedgerColumns;
use crate::StoreError;
use chrono::{DateTime, Utc};
use quizflow_core::DeliveryJob;
use std::collections::HashMap;
use tokio_postgres::types::ToSql;

/// The jobs of a batch's new rows, as the matcher planned them.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub jobs: Vec<DeliveryJob>,
    /// Never sent: their contact is on the suppression list for the campaign's purpose (the
    /// entry's reason).
    pub suppressed: Vec<(DeliveryJob, String)>,
    /// Indexes into `jobs` of those a send window deferred (`due_at` is the opening).
    pub deferred: Vec<usize>,
    /// Messages per second a channel's provider takes: how fast a deferred burst is spread.
    pub per_second: u32,
}

impl From<Vec<DeliveryJob>> for Plan {
    fn from(jobs: Vec<DeliveryJob>) -> Self {
        Self {
            jobs,
            ..Self::default()
        }
    }
}

/// Gives each deferred job its own place after the opening: the n-th message any batcher
/// deferred to a (channel, opening) is due n / `per_second` seconds after it. One statement.
pub(crate) async fn spread(
    tx: &tokio_postgres::Transaction<'_>,
    plan: &mut Plan,
) -> Result<(), StoreError> {
    if plan.deferred.is_empty() {
        return Ok(());
    }
    let mut groups: HashMap<(&'static str, DateTime<Utc>), Vec<usize>> = HashMap::new();
    for &i in &plan.deferred {
        if let Some(at) = plan.jobs[i].due_at {
            groups
                .entry((plan.jobs[i].channel.as_str(), at))
                .or_default()
                .push(i);
        }
    }
    let keys: Vec<(&'static str, DateTime<Utc>)> = groups.keys().copied().collect();
    let channels: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let openings: Vec<DateTime<Utc>> = keys.iter().map(|k| k.1).collect();
    let counts: Vec<i64> = keys.iter().map(|k| groups[k].len() as i64).collect();
    let params: [&(dyn ToSql + Sync); 3] = [&channels, &openings, &counts];
    let rows = tx
        .query(
            "INSERT INTO window_slots (channel, opening, taken) \
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[]) \
             ON CONFLICT (channel, opening) DO UPDATE SET taken = window_slots.taken + EXCLUDED.taken \
             RETURNING channel, opening, taken",
            &params,
        )
        .await?;
    let rate = f64::from(plan.per_second.max(1));
    for r in rows {
        let (channel, opening, taken): (String, DateTime<Utc>, i64) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let Some(members) = keys
            .iter()
            .find(|k| k.0 == channel && k.1 == opening)
            .and_then(|k| groups.get(k))
        else {
            continue;
        };
        let first = taken - members.len() as i64;
        for (n, &i) in members.iter().enumerate() {
            let ms = ((first + n as i64) as f64 / rate * 1000.0) as i64;
            plan.jobs[i].due_at = Some(opening + chrono::Duration::milliseconds(ms));
        }
    }
    Ok(())
}

/// Ledger rows of suppressed jobs: written final (`suppressed`, with the reason), so the
/// submission's deliveries and the stats show why nothing was sent.
pub(crate) async fn write_suppressed(
    tx: &tokio_postgres::Transaction<'_>,
    suppressed: &[(DeliveryJob, String)],
) -> Result<(), StoreError> {
    if suppressed.is_empty() {
        return Ok(());
    }
    let jobs: Vec<DeliveryJob> = suppressed.iter().map(|(j, _)| j.clone()).collect();
    let why: Vec<String> = suppressed
        .iter()
        .map(|(_, r)| format!("suppressed: {r}"))
        .collect();
    let c = LedgerColumns::of(&jobs);
    let mut params = c.params_without_schedule();
    params.push(&why);
    tx.execute(
        "INSERT INTO deliveries (submission_id, campaign_id, campaign_version, channel, priority, status, \
                                 last_error, created_at, updated_at, step) \
         SELECT u.sub, u.camp, u.ver, u.channel, u.priority, 'suppressed', u.why, u.created, u.created, u.step \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::text[], $6::timestamptz[], $7::int2[], $8::text[]) \
              AS u(sub, camp, ver, channel, priority, created, step, why) \
         ON CONFLICT DO NOTHING",
        &params,
    )
    .await?;
    Ok(())
}
