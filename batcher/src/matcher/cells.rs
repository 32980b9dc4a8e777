//! One submission's value of a field (a [`Cell`]) and how a predicate's operator reads it:
//! the semantics the columnar evaluation and the [`super::reference`] share.

use chrono::DateTime;
use quizflow_core::{AnswerValue, Channel, Field, Op, SubmissionEnvelope};
use serde_json::Value;

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

pub(super) fn answer_cell(v: &AnswerValue) -> Cell<'_> {
    match v {
        AnswerValue::Bool(b) => Cell::Bool(*b),
        AnswerValue::Number(n) => n.as_f64().map(Cell::Num).unwrap_or(Cell::Opaque),
        AnswerValue::Text(s) => Cell::Str(s),
        AnswerValue::List(items) => Cell::Strs(items),
    }
}

pub(super) fn json_cell(v: &Value) -> Cell<'_> {
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
        Field::Timezone => opt(&sub.respondent.timezone),
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
