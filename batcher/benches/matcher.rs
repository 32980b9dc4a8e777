//! The matcher on 10,000 submissions × 1,000 campaigns (70 % quiz-scoped, mixed predicates),
//! beside the row-by-row reference on the same data.

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quizflow_batcher::matcher::reference;
use quizflow_batcher::Matcher;
use quizflow_core::{
    parse_campaign, parse_submission, Campaign, IdempotencyKey, QuizId, SubmissionEnvelope,
    SubmissionId,
};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::hint::black_box;
use std::sync::Arc;

const QUIZZES: usize = 50;

fn pick<'a>(rng: &mut impl Rng, of: &[&'a str]) -> &'a str {
    of[rng.random_range(0..of.len())]
}

fn submissions(rng: &mut impl Rng, n: usize) -> Vec<SubmissionEnvelope> {
    (0..n)
        .map(|i| {
            let quiz = QuizId::parse(&format!("quiz{}", rng.random_range(0..QUIZZES))).unwrap_or_else(|_| unreachable!());
            let body = json!({
                "respondent": {"phone": "+5511987654321", "email": if rng.random_bool(0.6) { json!("a@b.co") } else { json!(null) },
                               "locale": pick(rng, &["pt-BR", "en-US", "es-AR"])},
                "answers": [{"question": "q1", "value": pick(rng, &["a", "b", "c", "d"])},
                            {"question": "q2", "value": rng.random_range(1..=5)},
                            {"question": "age", "value": rng.random_range(18..80)}],
                "score": rng.random_range(0..=100),
                "tags": if rng.random_bool(0.3) { json!(["promo-nov"]) } else { json!(["organic"]) },
                "metadata": {"utm_source": pick(rng, &["tv", "ig", "google"])}
            });
            let key = IdempotencyKey::parse(&format!("k{i}")).unwrap_or_else(|_| unreachable!());
            let sub = parse_submission(&body).unwrap_or_default();
            SubmissionEnvelope::new(SubmissionId::from_key(&quiz, &key), quiz, Utc::now(), Some(key), sub)
        })
        .collect()
}

fn predicate(rng: &mut impl Rng) -> Value {
    match rng.random_range(0..6) {
        0 => {
            json!({"field": "score", "op": pick(rng, &["gte", "lt", "gt"]), "value": rng.random_range(0..100)})
        }
        1 => json!({"field": "answers.q1", "op": "in", "value": ["a", "b"]}),
        2 => json!({"field": "answers.q2", "op": "gte", "value": rng.random_range(1..5)}),
        3 => json!({"field": "tags", "op": "contains", "value": "promo-nov"}),
        4 => {
            json!({"field": "respondent.locale", "op": "eq", "value": pick(rng, &["pt-BR", "en-US"])})
        }
        _ => json!({"field": "metadata.utm_source", "op": "ne", "value": "google"}),
    }
}

fn campaigns(rng: &mut impl Rng, n: usize) -> Vec<Arc<Campaign>> {
    (0..n)
        .map(|i| {
            let quiz = if rng.random_bool(0.7) { json!(format!("quiz{}", rng.random_range(0..QUIZZES))) } else { json!(null) };
            let all: Vec<Value> = (0..rng.random_range(1..=3)).map(|_| predicate(rng)).collect();
            let any: Vec<Value> = (0..rng.random_range(0..=2)).map(|_| predicate(rng)).collect();
            let spec = parse_campaign(&json!({"name": format!("c{i}"), "quiz_id": quiz, "match": {"all": all, "any": any},
                "actions": [{"channel": "sms", "template": "hi"}, {"channel": "email", "template": "hi"}]}))
            .unwrap_or_else(|e| unreachable!("{e:?}"));
            Arc::new(Campaign { id: uuid::Uuid::new_v4(), version: 1, spec, created_at: chrono::DateTime::UNIX_EPOCH, updated_at: Utc::now() })
        })
        .collect()
}

fn matcher(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let batch = submissions(&mut rng, 10_000);
    let camps = campaigns(&mut rng, 1_000);
    let m = Matcher::new(camps.iter().cloned());
    eprintln!("matches per batch: {}", m.match_batch(&batch).len());
    let mut group = c.benchmark_group("matcher 10k x 1k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("columnar (rayon)", |b| {
        b.iter(|| black_box(m.match_batch(&batch).len()))
    });
    group.bench_function("row-by-row reference", |b| {
        b.iter(|| black_box(reference::match_batch(&camps, &batch).len()))
    });
    group.bench_function("compile 1k campaigns", |b| {
        b.iter(|| black_box(Matcher::new(camps.iter().cloned()).len()))
    });
    group.finish();
}

criterion_group!(benches, matcher);
criterion_main!(benches);
