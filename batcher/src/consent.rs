//! The people a batch's matches would message (contract §3.2): each matched contact's keyed
//! hash, the suppression list read for all of them in one query, and the plan the ledger is
//! written from: suppressed jobs end `suppressed` (never published), jobs due outside their
//! campaign's send window wait for its next opening.

use crate::matcher::{Match, Matcher};
use quizflow_core::consent::{ContactHash, HashKey, Scope};
use quizflow_core::{Channel, SubmissionEnvelope};
use quizflow_store::intake::Plan;
use quizflow_store::{Pool, StoreError};
use std::collections::{HashMap, HashSet};

/// The keyed hash of each matched (row, channel)'s contact.
pub type Contacts = HashMap<(usize, Channel), ContactHash>;

/// Suppression entries found for a batch: (channel, contact) → (scope, reason) of each.
pub type Suppressed = HashMap<(Channel, ContactHash), Vec<(Scope, String)>>;

pub fn contacts(key: &HashKey, matches: &[Match], batch: &[SubmissionEnvelope]) -> Contacts {
    let mut out = Contacts::new();
    for m in matches {
        if out.contains_key(&(m.row, m.channel)) {
            continue;
        }
        let r = &batch[m.row].submission.respondent;
        let raw = match m.channel {
            Channel::Sms | Channel::Whatsapp => r.phone.as_deref(),
            Channel::Email => r.email.as_deref(),
            Channel::Webhook => None,
        };
        if let Some(h) = raw.and_then(|raw| key.hash(m.channel, raw)) {
            out.insert((m.row, m.channel), h);
        }
    }
    out
}

/// The entries of a batch's contacts, in one query (none when no match has a contact).
pub async fn suppressed(pool: &Pool, contacts: &Contacts) -> Result<Suppressed, StoreError> {
    let pairs: HashSet<(Channel, ContactHash)> =
        contacts.iter().map(|((_, c), h)| (*c, *h)).collect();
    if pairs.is_empty() {
        return Ok(Suppressed::new());
    }
    let channels: Vec<&str> = pairs.iter().map(|(c, _)| c.as_str()).collect();
    let hashes: Vec<Vec<u8>> = pairs.iter().map(|(_, h)| h.to_vec()).collect();
    let mut conn = pool.get().await?;
    let found = quizflow_store::consent::lookup(&mut conn, &channels, &hashes).await?;
    let mut out = Suppressed::new();
    for s in found {
        let (Some(channel), Ok(hash), Ok(scope)) = (
            Channel::parse(&s.channel),
            ContactHash::try_from(s.contact_hash.as_slice()),
            s.scope.parse::<Scope>(),
        ) else {
            continue;
        };
        out.entry((channel, hash))
            .or_default()
            .push((scope, s.reason));
    }
    Ok(out)
}

/// What the batch's new rows come to: the matcher's jobs, minus the suppressed ones, with
/// quiet hours applied.
pub struct Planner<'a> {
    pub matcher: &'a Matcher,
    pub matches: &'a [Match],
    pub batch: &'a [SubmissionEnvelope],
    pub contacts: &'a Contacts,
    pub suppressed: &'a Suppressed,
    pub now: chrono::DateTime<chrono::Utc>,
    pub per_second: u32,
    /// Apply campaigns' send windows (live traffic; a replay of history does not).
    pub windows: bool,
}

impl Planner<'_> {
    pub fn plan(&self, rows: &HashSet<usize>) -> Plan {
        let jobs = self.matcher.jobs(self.matches, self.batch, rows, self.now);
        let row_of: HashMap<uuid::Uuid, usize> = rows
            .iter()
            .map(|&r| (self.batch[r].submission_id.0, r))
            .collect();
        let mut plan = Plan {
            per_second: self.per_second,
            ..Plan::default()
        };
        for mut job in jobs {
            let (Some(&row), Some((campaign, window))) = (
                row_of.get(&job.submission_id.0),
                self.matcher.campaign_by_id(job.campaign_id),
            ) else {
                plan.jobs.push(job);
                continue;
            };
            let purpose = campaign.spec.purpose;
            let entry = self
                .contacts
                .get(&(row, job.channel))
                .and_then(|h| self.suppressed.get(&(job.channel, *h)))
                .and_then(|entries| entries.iter().find(|(scope, _)| scope.covers(purpose)));
            if let Some((_, reason)) = entry {
                plan.suppressed.push((job, reason.clone()));
                continue;
            }
            if let Some(w) = window.filter(|_| self.windows) {
                let tz = self.batch[row].submission.respondent.timezone.as_deref();
                if let Some(opening) = w.defer(job.due_at.unwrap_or(self.now), tz) {
                    job.due_at = Some(opening);
                    plan.deferred.push(plan.jobs.len());
                }
            }
            plan.jobs.push(job);
        }
        plan
    }
}
