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

use crate::bitmap::Bitmap;
use chrono::DateTime;
use quizflow_core::schedule::{Recurrence, Schedule, STEP_STRIDE};
use quizflow_core::{
    AnswerValue, Campaign, Channel, DeliveryJob, Field, Op, Predicate, SubmissionEnvelope,
};
use rayon::prelude::*;
use serde_json::Value;
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

/// A field's value in one row, as predicates see it.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Missing,
    Num(f64),
    Str(&'a str),
    Bool(bool),
    /// Milliseconds since the epoch.
    Time(i64),
    Strs(&'a [String]),
    Json(&'a [Value]),
    /// Present but not comparable (an object in metadata).
    Opaque,
}

fn value_eq(cell: &Cell<'_>, v: &Value) -> bool {
    match (cell, v) {
        (Cell::Num(a), Value::Number(b)) => b.as_f64() == Some(*a),
        (Cell::Str(a), Value::String(b)) => *a == b,
        (Cell::Bool(a), Value::Bool(b)) => a == b,
        (Cell::Time(a), Value::String(b)) => parse_ms(b) == Some(*a),
        (Cell::Strs(items), Value::String(b)) => items.iter().any(|s| s == b),
        (Cell::Json(items), v) => items.iter().any(|x| scalar_eq(x, v)),
        _ => false,
    }
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => false,
    }
}

fn parse_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The one definition of what an op means on a cell.
pub fn eval_cell(cell: &Cell<'_>, op: Op, v: &Value) -> bool {
    if let Cell::Missing = cell {
        return match op {
            Op::Ne | Op::NotIn => true,
            Op::Exists => v.as_bool() == Some(false),
            _ => false,
        };
    }
    match op {
        Op::Exists => v.as_bool() != Some(false),
        Op::Eq => value_eq(cell, v),
        Op::Ne => !value_eq(cell, v),
        Op::In => v
            .as_array()
            .is_some_and(|vs| vs.iter().any(|x| value_eq(cell, x))),
        Op::NotIn => !v
            .as_array()
            .is_some_and(|vs| vs.iter().any(|x| value_eq(cell, x))),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let (a, b) = match (cell, v) {
                (Cell::Num(a), Value::Number(b)) => (*a, b.as_f64().unwrap_or(f64::NAN)),
                (Cell::Time(a), Value::String(b)) => match parse_ms(b) {
                    Some(b) => (*a as f64, b as f64),
                    None => return false,
                },
                _ => return false,
            };
            match op {
                Op::Gt => a > b,
                Op::Gte => a >= b,
                Op::Lt => a < b,
                _ => a <= b,
            }
        }
        Op::Contains => match (cell, v) {
            (Cell::Str(s), Value::String(needle)) => s.contains(needle.as_str()),
            (Cell::Strs(_) | Cell::Json(_), _) => value_eq(cell, v),
            _ => false,
        },
    }
}

fn answer_cell(v: &AnswerValue) -> Cell<'_> {
    match v {
        AnswerValue::Bool(b) => Cell::Bool(*b),
        AnswerValue::Number(n) => n.as_f64().map(Cell::Num).unwrap_or(Cell::Opaque),
        AnswerValue::Text(s) => Cell::Str(s),
        AnswerValue::List(items) => Cell::Strs(items),
    }
}

fn json_cell(v: &Value) -> Cell<'_> {
    match v {
        Value::Null => Cell::Missing,
        Value::Bool(b) => Cell::Bool(*b),
        Value::Number(n) => n.as_f64().map(Cell::Num).unwrap_or(Cell::Opaque),
        Value::String(s) => Cell::Str(s),
        Value::Array(items) => Cell::Json(items),
        Value::Object(_) => Cell::Opaque,
    }
}

/// A field's value in a submission (the row-by-row view).
pub fn cell<'a>(s: &'a SubmissionEnvelope, field: &Field) -> Cell<'a> {
    let sub = &s.submission;
    let opt = |o: &'a Option<String>| o.as_deref().map(Cell::Str).unwrap_or(Cell::Missing);
    match field {
        Field::Score => sub.score.map(Cell::Num).unwrap_or(Cell::Missing),
        Field::QuizId => Cell::Str(s.quiz_id.as_str()),
        Field::CompletedAt => {
            Cell::Time(sub.completed_at.unwrap_or(s.received_at).timestamp_millis())
        }
        Field::Tags => Cell::Strs(&sub.tags),
        Field::Phone => opt(&sub.respondent.phone),
        Field::Email => opt(&sub.respondent.email),
        Field::Name => opt(&sub.respondent.name),
        Field::Locale => opt(&sub.respondent.locale),
        Field::Answer(q) => sub
            .answers
            .iter()
            .find(|a| &a.question == q)
            .map(|a| answer_cell(&a.value))
            .unwrap_or(Cell::Missing),
        Field::Metadata(k) => sub.metadata.get(k).map(json_cell).unwrap_or(Cell::Missing),
    }
}

pub fn channel_reachable(s: &SubmissionEnvelope, channel: Channel) -> bool {
    let r = &s.submission.respondent;
    match channel {
        Channel::Sms | Channel::Whatsapp => r.phone.is_some(),
        Channel::Email => r.email.is_some(),
        Channel::Webhook => true,
    }
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
}

/// The active campaigns, compiled for columnar evaluation.
#[derive(Debug, Default)]
pub struct Matcher {
    compiled: Vec<Compiled>,
    /// Distinct predicates across all campaigns.
    predicates: Vec<Predicate>,
    by_quiz: HashMap<String, Vec<usize>>,
    global: Vec<usize>,
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
                campaign: c,
                all,
                any,
            });
        }
        m
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
        let n = batch.len();
        if n == 0 || self.compiled.is_empty() {
            return Vec::new();
        }
        let cols = Columns::build(batch);
        // Which campaigns can match at all: global ones and those of quizzes in the batch.
        let mut candidates: Vec<(usize, Option<u32>)> =
            self.global.iter().map(|&c| (c, None)).collect();
        for (quiz, code) in &cols.quiz.dict {
            if let Some(cs) = self.by_quiz.get(*quiz) {
                candidates.extend(cs.iter().map(|&c| (c, Some(*code))));
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        // Evaluate each distinct predicate the candidates use, once, over its column.
        let mut needed = vec![false; self.predicates.len()];
        for (c, _) in &candidates {
            for &p in self.compiled[*c].all.iter().chain(&self.compiled[*c].any) {
                needed[p] = true;
            }
        }
        let bitmaps: Vec<Option<Bitmap>> = self
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
        let phone = Bitmap::from_fn(n, |r| batch[r].submission.respondent.phone.is_some());
        let email = Bitmap::from_fn(n, |r| batch[r].submission.respondent.email.is_some());

        let out: Vec<Match> = candidates
            .par_iter()
            .flat_map_iter(|&(ci, quiz_code)| {
                let c = &self.compiled[ci];
                let mut rows = match quiz_code {
                    Some(code) => quiz_rows[code as usize].clone(),
                    None => Bitmap::ones(n),
                };
                if c.starts_ms.is_some() || c.ends_ms.is_some() {
                    rows.and_assign(&Bitmap::from_fn(n, |r| {
                        let t = cols.received_ms[r];
                        c.starts_ms.is_none_or(|s| t >= s) && c.ends_ms.is_none_or(|e| t < e)
                    }));
                }
                for &p in &c.all {
                    if let Some(b) = &bitmaps[p] {
                        rows.and_assign(b);
                    }
                }
                if !c.any.is_empty() {
                    let mut any = Bitmap::zeros(n);
                    for &p in &c.any {
                        if let Some(b) = &bitmaps[p] {
                            any.or_assign(b);
                        }
                    }
                    rows.and_assign(&any);
                }
                let mut found = Vec::new();
                if rows.none() {
                    return found.into_iter();
                }
                // The n-th action of a channel is its step; the rows a channel reaches are
                // worked out once for all of its actions.
                let mut steps = [0u16; 4];
                let mut reach: [Option<Bitmap>; 4] = Default::default();
                for (ai, action) in c.campaign.spec.actions.iter().enumerate() {
                    let slot = action.channel as usize;
                    let step = steps[slot];
                    steps[slot] += 1;
                    let reach = reach[slot].get_or_insert_with(|| {
                        let mut r = rows.clone();
                        match action.channel {
                            Channel::Sms | Channel::Whatsapp => r.and_assign(&phone),
                            Channel::Email => r.and_assign(&email),
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
                found.into_iter()
            })
            .collect();
        out
    }
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

/// A dictionary-encoded string column.
struct Dict<'a> {
    codes: Vec<u32>,
    dict: HashMap<&'a str, u32>,
    /// Rows with no value get this code.
    missing: u32,
}

impl<'a> Dict<'a> {
    fn build(values: impl Iterator<Item = Option<&'a str>>, n: usize) -> Self {
        let mut dict = HashMap::new();
        let mut codes = Vec::with_capacity(n);
        let missing = u32::MAX;
        for v in values {
            codes.push(match v {
                Some(s) => {
                    let next = dict.len() as u32;
                    *dict.entry(s).or_insert(next)
                }
                None => missing,
            });
        }
        Self {
            codes,
            dict,
            missing,
        }
    }

    /// Evaluates the op once per distinct value, then maps codes to results.
    fn eval(&self, op: Op, v: &Value) -> Bitmap {
        let mut by_code = vec![false; self.dict.len()];
        for (s, &code) in &self.dict {
            by_code[code as usize] = eval_cell(&Cell::Str(s), op, v);
        }
        let on_missing = eval_cell(&Cell::Missing, op, v);
        Bitmap::from_fn(self.codes.len(), |r| {
            let c = self.codes[r];
            if c == self.missing {
                on_missing
            } else {
                by_code[c as usize]
            }
        })
    }
}

struct Columns<'a> {
    batch: &'a [SubmissionEnvelope],
    quiz: Dict<'a>,
    score: Vec<Option<f64>>,
    completed_ms: Vec<i64>,
    received_ms: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn build(batch: &'a [SubmissionEnvelope]) -> Self {
        let n = batch.len();
        Self {
            batch,
            quiz: Dict::build(batch.iter().map(|s| Some(s.quiz_id.as_str())), n),
            score: batch.iter().map(|s| s.submission.score).collect(),
            completed_ms: batch
                .iter()
                .map(|s| {
                    s.submission
                        .completed_at
                        .unwrap_or(s.received_at)
                        .timestamp_millis()
                })
                .collect(),
            received_ms: batch
                .iter()
                .map(|s| s.received_at.timestamp_millis())
                .collect(),
        }
    }

    fn eval(&self, p: &Predicate) -> Bitmap {
        let n = self.batch.len();
        let b = self.batch;
        match &p.field {
            Field::Score => match (p.op, p.value.as_f64()) {
                // The hot numeric case: a straight loop over an f64 column.
                (Op::Gt, Some(x)) => Bitmap::from_fn(n, |r| self.score[r].is_some_and(|s| s > x)),
                (Op::Gte, Some(x)) => Bitmap::from_fn(n, |r| self.score[r].is_some_and(|s| s >= x)),
                (Op::Lt, Some(x)) => Bitmap::from_fn(n, |r| self.score[r].is_some_and(|s| s < x)),
                (Op::Lte, Some(x)) => Bitmap::from_fn(n, |r| self.score[r].is_some_and(|s| s <= x)),
                _ => Bitmap::from_fn(n, |r| {
                    eval_cell(
                        &self.score[r].map(Cell::Num).unwrap_or(Cell::Missing),
                        p.op,
                        &p.value,
                    )
                }),
            },
            Field::CompletedAt => Bitmap::from_fn(n, |r| {
                eval_cell(&Cell::Time(self.completed_ms[r]), p.op, &p.value)
            }),
            Field::QuizId => self.quiz.eval(p.op, &p.value),
            Field::Locale => Dict::build(
                b.iter().map(|s| s.submission.respondent.locale.as_deref()),
                n,
            )
            .eval(p.op, &p.value),
            Field::Name => {
                Dict::build(b.iter().map(|s| s.submission.respondent.name.as_deref()), n)
                    .eval(p.op, &p.value)
            }
            Field::Phone => Dict::build(
                b.iter().map(|s| s.submission.respondent.phone.as_deref()),
                n,
            )
            .eval(p.op, &p.value),
            Field::Email => Dict::build(
                b.iter().map(|s| s.submission.respondent.email.as_deref()),
                n,
            )
            .eval(p.op, &p.value),
            Field::Tags => Bitmap::from_fn(n, |r| {
                eval_cell(&Cell::Strs(&b[r].submission.tags), p.op, &p.value)
            }),
            Field::Answer(q) => {
                // The answer column for this question, then the op over it.
                let column: Vec<Cell<'_>> = b
                    .iter()
                    .map(|s| {
                        s.submission
                            .answers
                            .iter()
                            .find(|a| &a.question == q)
                            .map(|a| answer_cell(&a.value))
                            .unwrap_or(Cell::Missing)
                    })
                    .collect();
                Bitmap::from_fn(n, |r| eval_cell(&column[r], p.op, &p.value))
            }
            Field::Metadata(k) => {
                let column: Vec<Cell<'_>> = b
                    .iter()
                    .map(|s| {
                        s.submission
                            .metadata
                            .get(k)
                            .map(json_cell)
                            .unwrap_or(Cell::Missing)
                    })
                    .collect();
                Bitmap::from_fn(n, |r| eval_cell(&column[r], p.op, &p.value))
            }
        }
    }
}

/// The row-by-row reference: campaign by campaign, submission by submission. Only for
/// tests and as the executable definition of the semantics.
pub mod reference {
    use super::*;
    use quizflow_core::Campaign;

    pub fn matches(c: &Campaign, s: &SubmissionEnvelope) -> bool {
        let spec = &c.spec;
        if !spec.active {
            return false;
        }
        if spec.quiz_id.as_ref().is_some_and(|q| q != &s.quiz_id) {
            return false;
        }
        if s.received_at < c.created_at
            || spec.starts_at.is_some_and(|t| s.received_at < t)
            || spec.ends_at.is_some_and(|t| s.received_at >= t)
        {
            return false;
        }
        let holds = |p: &Predicate| eval_cell(&cell(s, &p.field), p.op, &p.value);
        spec.match_.all.iter().all(holds)
            && (spec.match_.any.is_empty() || spec.match_.any.iter().any(holds))
    }

    pub fn match_batch(campaigns: &[Arc<Campaign>], batch: &[SubmissionEnvelope]) -> Vec<Match> {
        let active: Vec<&Arc<Campaign>> = campaigns.iter().filter(|c| c.spec.active).collect();
        let mut out = Vec::new();
        for (row, s) in batch.iter().enumerate() {
            for (ci, c) in active.iter().enumerate() {
                if !matches(c, s) {
                    continue;
                }
                let mut steps = [0u16; 4];
                for (ai, a) in c.spec.actions.iter().enumerate() {
                    let step = steps[a.channel as usize];
                    steps[a.channel as usize] += 1;
                    if channel_reachable(s, a.channel) {
                        out.push(Match {
                            row,
                            campaign: ci,
                            channel: a.channel,
                            step,
                            action: ai as u16,
                        });
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }
}
