//! A batch as columns (dictionary-encoded strings, numbers, per-question answers), each
//! predicate evaluated over its column into a [`Bitmap`].

use super::cells::*;
use crate::bitmap::Bitmap;
use quizflow_core::{Field, Op, Predicate, SubmissionEnvelope};
use serde_json::Value;
use std::collections::HashMap;

/// A dictionary-encoded string column.
pub(super) struct Dict<'a> {
    pub codes: Vec<u32>,
    pub dict: HashMap<&'a str, u32>,
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

pub(super) struct Columns<'a> {
    batch: &'a [SubmissionEnvelope],
    pub quiz: Dict<'a>,
    score: Vec<Option<f64>>,
    completed_ms: Vec<i64>,
    pub received_ms: Vec<i64>,
}

impl<'a> Columns<'a> {
    pub fn build(batch: &'a [SubmissionEnvelope]) -> Self {
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

    pub fn eval(&self, p: &Predicate) -> Bitmap {
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
            Field::Timezone => Dict::build(
                b.iter()
                    .map(|s| s.submission.respondent.timezone.as_deref()),
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
