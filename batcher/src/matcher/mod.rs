//! Vectorised campaign matching (contract §2.4).
//!
//! Campaigns are compiled once per change into a [`Matcher`]. Per batch, the submissions
//! are turned into columns (dictionary-encoded strings, `f64` scores and times, per-question
//! answer columns), every *distinct* predicate is evaluated once over its column into a
//! [`Bitmap`] (in parallel with rayon), and each campaign combines its bitmaps: quiz scope
//! AND time window AND all(`all`) AND any(`any`). Campaigns are indexed by `quiz_id`, so a
//! campaign scoped to a quiz absent from the batch costs nothing.
//!
//! Semantics (shared with the row-by-row [`reference`] evaluator that the property test
//! compares against):
//! - a missing field satisfies only `ne`, `not_in` and `exists: false`;
//! - `eq`/`ne`/`in`/`not_in` compare strings, numbers and booleans without coercion
//!   (`"72"` is not `72`); on a list (tags, list answers) `eq`/`in` hold if any element does;
//! - `gt`/`gte`/`lt`/`lte` compare numbers, and `completed_at` with an RFC 3339 value;
//! - `contains` holds for a list holding the value, or a string containing it;
//! - an empty `all` and an empty `any` are true; `starts_at <= received_at < ends_at`, and a
//!   campaign never matches a submission received before the campaign was created;
//! - a channel needs its contact (phone for sms/whatsapp, e-mail for email).
mod cells;
mod columns;
pub mod reference;

pub use cells::{cell, channel_reachable, eval_cell, Cell};
use columns::Columns;

use crate::bitmap::Bitmap;
use quizflow_core::schedule::{Recurrence, Schedule, STEP_STRIDE};
use quizflow_core::{Campaign, Channel, DeliveryJob, Predicate, SubmissionEnvelope};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// One (submission, campaign, action) to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Match {
    pub row: usize,
    pub campaign: usize,
    pub channel: Channel,
    /// The n-th action of `channel` in the campaign (the ledger key's `step`).
    pub step: u16,
    /// The action's index in the campaign's `actions`.
    pub action: u16,
}

#[derive(Debug)]
struct Compiled {
    campaign: Arc<Campaign>,
    /// Per action: when it is due (`None`: at once).
    schedules: Vec<Option<Schedule>>,
    /// Per action: its recurrence (`None`: sent once).
    recurrences: Vec<Option<Recurrence>>,
    all: Vec<usize>,
    any: Vec<usize>,
    starts_ms: Option<i64>,
    ends_ms: Option<i64>,
    /// The campaign's quiet hours, parsed once.
    window: Option<quizflow_core::consent::Window>,
}

/// The active campaigns, compiled for columnar evaluation.
#[derive(Debug, Default)]
pub struct Matcher {
    compiled: Vec<Compiled>,
    /// Distinct predicates across all campaigns.
    predicates: Vec<Predicate>,
    by_quiz: HashMap<String, Vec<usize>>,
    global: Vec<usize>,
    by_id: HashMap<uuid::Uuid, usize>,
}

impl Matcher {
    /// Compiles the active campaigns (inactive ones never match) for live traffic: a
    /// campaign matches only submissions received from its creation on.
    pub fn new(campaigns: impl IntoIterator<Item = Arc<Campaign>>) -> Self {
        Self::compile(campaigns, true)
    }

    /// Compiles campaigns for a replay of history: the same evaluation, without the
    /// creation-time bound (reaching history is what a replay is for). `starts_at` and
    /// `ends_at` still bound the receipt time.
    pub fn for_replay(campaigns: impl IntoIterator<Item = Arc<Campaign>>) -> Self {
        Self::compile(campaigns, false)
    }

    fn compile(campaigns: impl IntoIterator<Item = Arc<Campaign>>, from_creation: bool) -> Self {
        let mut m = Matcher::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut intern = |p: &Predicate, preds: &mut Vec<Predicate>| -> usize {
            let key = format!("{}\u{0}{:?}\u{0}{}", p.field.name(), p.op, p.value);
            *index.entry(key).or_insert_with(|| {
                preds.push(p.clone());
                preds.len() - 1
            })
        };
        for c in campaigns {
            if !c.spec.active {
                continue;
            }
            let all = c
                .spec
                .match_
                .all
                .iter()
                .map(|p| intern(p, &mut m.predicates))
                .collect();
            let any = c
                .spec
                .match_
                .any
                .iter()
                .map(|p| intern(p, &mut m.predicates))
                .collect();
            let idx = m.compiled.len();
            m.by_id.insert(c.id, idx);
            match &c.spec.quiz_id {
                Some(q) => m
                    .by_quiz
                    .entry(q.as_str().to_owned())
                    .or_default()
                    .push(idx),
                None => m.global.push(idx),
            }
            m.compiled.push(Compiled {
                // A campaign applies to submissions received from its creation on (history
                // is reached by replay), and from `starts_at` if that is later.
                starts_ms: if from_creation {
                    Some(
                        c.spec
                            .starts_at
                            .map_or(c.created_at, |s| s.max(c.created_at))
                            .timestamp_millis(),
                    )
                } else {
                    c.spec.starts_at.map(|s| s.timestamp_millis())
                },
                ends_ms: c.spec.ends_at.map(|t| t.timestamp_millis()),
                schedules: c.spec.actions.iter().map(|a| a.schedule()).collect(),
                recurrences: c.spec.actions.iter().map(|a| a.recurrence()).collect(),
                window: c.spec.send_window.as_ref().and_then(|w| w.parse().ok()),
                campaign: c,
                all,
                any,
            });
        }
        m
    }

    /// A compiled campaign by id, with its parsed send window.
    pub fn campaign_by_id(
        &self,
        id: uuid::Uuid,
    ) -> Option<(&Campaign, Option<&quizflow_core::consent::Window>)> {
        let c = self.compiled.get(*self.by_id.get(&id)?)?;
        Some((&c.campaign, c.window.as_ref()))
    }

    /// The delivery jobs of the `matches` whose row is in `rows` (the newly stored ones).
    /// A scheduled action's job carries its `due_at`; one whose `send_at` template does not
    /// render a time for this submission is left out (one warning per batch says how many).
    pub fn jobs(
        &self,
        matches: &[Match],
        batch: &[SubmissionEnvelope],
        rows: &std::collections::HashSet<usize>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<DeliveryJob> {
        let mut unresolved: Option<(uuid::Uuid, usize)> = None;
        let mut jobs = Vec::new();
        for m in matches.iter().filter(|m| rows.contains(&m.row)) {
            let compiled = &self.compiled[m.campaign];
            let c = &compiled.campaign;
            let envelope = &batch[m.row];
            let submission_id = envelope.submission_id;
            let action = usize::from(m.action);
            let cancel_key = self.cancel_key(c, action, envelope);
            let job = |step: u16, due_at| DeliveryJob {
                v: DeliveryJob::VERSION,
                job_id: DeliveryJob::job_id(submission_id, c.id, m.channel, step),
                submission_id,
                campaign_id: c.id,
                campaign_version: c.version,
                channel: m.channel,
                priority: c.spec.priority,
                created_at: now,
                step,
                due_at,
                repeat_until: None,
                cancel_key: cancel_key.clone(),
            };
            if let Some(r) = compiled.recurrences.get(action).and_then(Option::as_ref) {
                // Only the next occurrence is written; the firer writes each one after it.
                match r.first(envelope.received_at, now, || template_context(envelope, c)) {
                    Ok(Some((k, t, until))) => jobs.push(DeliveryJob {
                        repeat_until: Some(until),
                        ..job(m.step + k * STEP_STRIDE, Some(t))
                    }),
                    Ok(None) => {}
                    // What it rendered may be personal data: only the campaign is named.
                    Err(_) => unresolved.get_or_insert((c.id, 0)).1 += 1,
                }
                continue;
            }
            let schedule = compiled.schedules.get(action).and_then(Option::as_ref);
            match schedule.map(|s| s.due(now, || template_context(envelope, c))) {
                None => jobs.push(job(m.step, None)),
                Some(Ok(t)) => jobs.push(job(m.step, Some(t))),
                Some(Err(_)) => unresolved.get_or_insert((c.id, 0)).1 += 1,
            }
        }
        if let Some((campaign, n)) = unresolved {
            tracing::warn!(
                %campaign,
                submissions = n,
                "send_at or until did not render an RFC 3339 time; those messages are not scheduled"
            );
        }
        jobs
    }

    /// The action's `cancel_key` rendered for this submission (`None`: it has none, or it
    /// renders empty or fails — then the message cannot be cancelled by key, only otherwise).
    fn cancel_key(&self, c: &Campaign, action: usize, e: &SubmissionEnvelope) -> Option<String> {
        let template = c.spec.actions.get(action)?.cancel_key.as_deref()?;
        let env = quizflow_core::template::environment();
        let key = env.render_str(template, template_context(e, c)).ok()?;
        let key = key.trim();
        (!key.is_empty() && key.len() <= 200 && !key.chars().any(char::is_control))
            .then(|| key.to_owned())
    }

    pub fn campaign(&self, idx: usize) -> &Arc<Campaign> {
        &self.compiled[idx].campaign
    }

    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }

    /// Matches a batch: at most one entry per (row, campaign, channel), grouped by campaign
    /// (no particular order otherwise).
    pub fn match_batch(&self, batch: &[SubmissionEnvelope]) -> Vec<Match> {
        if batch.is_empty() || self.compiled.is_empty() {
            return Vec::new();
        }
        let cols = Columns::build(batch);
        let candidates = self.candidates(&cols);
        if candidates.is_empty() {
            return Vec::new();
        }
        let bits = self.evaluate(&cols, &candidates, batch);
        candidates
            .par_iter()
            .flat_map_iter(|&(ci, quiz)| self.matches_of(ci, quiz, &bits).into_iter())
            .collect()
    }

    /// Which campaigns can match at all: global ones and those of quizzes in the batch (with
    /// the quiz's code in the batch's dictionary).
    fn candidates(&self, cols: &Columns<'_>) -> Vec<(usize, Option<u32>)> {
        let mut candidates: Vec<(usize, Option<u32>)> =
            self.global.iter().map(|&c| (c, None)).collect();
        for (quiz, code) in &cols.quiz.dict {
            if let Some(cs) = self.by_quiz.get(*quiz) {
                candidates.extend(cs.iter().map(|&c| (c, Some(*code))));
            }
        }
        candidates
    }

    /// Each distinct predicate the candidates use, evaluated once over its column (in
    /// parallel), and the rows of each quiz and contact.
    fn evaluate<'a>(
        &self,
        cols: &'a Columns<'a>,
        candidates: &[(usize, Option<u32>)],
        batch: &[SubmissionEnvelope],
    ) -> BatchBits<'a> {
        let n = batch.len();
        let mut needed = vec![false; self.predicates.len()];
        for (c, _) in candidates {
            for &p in self.compiled[*c].all.iter().chain(&self.compiled[*c].any) {
                needed[p] = true;
            }
        }
        let predicates = self
            .predicates
            .par_iter()
            .enumerate()
            .map(|(i, p)| needed[i].then(|| cols.eval(p)))
            .collect();
        // One bitmap per quiz in the batch, shared by all campaigns scoped to it.
        let mut quiz_rows = vec![Bitmap::zeros(n); cols.quiz.dict.len()];
        for (r, &code) in cols.quiz.codes.iter().enumerate() {
            quiz_rows[code as usize].set(r);
        }
        BatchBits {
            n,
            predicates,
            quiz_rows,
            phone: Bitmap::from_fn(n, |r| batch[r].submission.respondent.phone.is_some()),
            email: Bitmap::from_fn(n, |r| batch[r].submission.respondent.email.is_some()),
            received_ms: &cols.received_ms,
        }
    }

    /// The rows campaign `ci` matches: quiz scope AND time window AND all(`all`) AND
    /// any(`any`).
    fn rows_of(&self, ci: usize, quiz: Option<u32>, bits: &BatchBits<'_>) -> Bitmap {
        let (c, n) = (&self.compiled[ci], bits.n);
        let mut rows = match quiz {
            Some(code) => bits.quiz_rows[code as usize].clone(),
            None => Bitmap::ones(n),
        };
        if c.starts_ms.is_some() || c.ends_ms.is_some() {
            rows.and_assign(&Bitmap::from_fn(n, |r| {
                let t = bits.received_ms[r];
                c.starts_ms.is_none_or(|s| t >= s) && c.ends_ms.is_none_or(|e| t < e)
            }));
        }
        for b in c.all.iter().filter_map(|&p| bits.predicates[p].as_ref()) {
            rows.and_assign(b);
        }
        if !c.any.is_empty() {
            let mut any = Bitmap::zeros(n);
            for b in c.any.iter().filter_map(|&p| bits.predicates[p].as_ref()) {
                any.or_assign(b);
            }
            rows.and_assign(&any);
        }
        rows
    }

    /// Campaign `ci`'s matches: one per matched row and action whose channel reaches it.
    fn matches_of(&self, ci: usize, quiz: Option<u32>, bits: &BatchBits<'_>) -> Vec<Match> {
        let rows = self.rows_of(ci, quiz, bits);
        let mut found = Vec::new();
        if rows.none() {
            return found;
        }
        // The n-th action of a channel is its step; the rows a channel reaches are worked
        // out once for all of its actions.
        let mut steps = [0u16; 4];
        let mut reach: [Option<Bitmap>; 4] = Default::default();
        for (ai, action) in self.compiled[ci].campaign.spec.actions.iter().enumerate() {
            let slot = action.channel as usize;
            let step = steps[slot];
            steps[slot] += 1;
            let reach = reach[slot].get_or_insert_with(|| {
                let mut r = rows.clone();
                match action.channel {
                    Channel::Sms | Channel::Whatsapp => r.and_assign(&bits.phone),
                    Channel::Email => r.and_assign(&bits.email),
                    Channel::Webhook => {}
                }
                r
            });
            found.extend(reach.ones_iter().map(|row| Match {
                row,
                campaign: ci,
                channel: action.channel,
                step,
                action: u16::try_from(ai).unwrap_or(u16::MAX),
            }));
        }
        found
    }
}

/// What a batch's evaluation shares between its candidate campaigns.
struct BatchBits<'a> {
    n: usize,
    /// Per distinct predicate: its rows, when a candidate uses it.
    predicates: Vec<Option<Bitmap>>,
    /// Per quiz of the batch (by dictionary code): its rows.
    quiz_rows: Vec<Bitmap>,
    phone: Bitmap,
    email: Bitmap,
    received_ms: &'a [i64],
}

/// What a `send_at` or `until` template sees: what the campaign's message templates see
/// (one builder, `quizflow_core::template`).
fn template_context(e: &SubmissionEnvelope, c: &Campaign) -> minijinja::Value {
    quizflow_core::template::context(
        &quizflow_core::template::stored_shape(e),
        &c.id.to_string(),
        &c.spec.name,
    )
}
