//! The API's per-request CPU work: parse, validate, derive the id, build and encode the
//! envelope. Criterion, with throughput in submissions.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quizflow_benchmarks::leads::lead;
use quizflow_core::{canonical_json, parse_submission, QuizId, SubmissionEnvelope, SubmissionId};
use std::hint::black_box;

fn intake_cpu(c: &mut Criterion) {
    let mut rng = rand::rng();
    let bodies: Vec<Vec<u8>> = (0..1000)
        .map(|n| serde_json::to_vec(&lead(&mut rng, n)).unwrap_or_default())
        .collect();
    let quiz = QuizId::parse("bench").unwrap_or_else(|_| unreachable!("valid literal"));
    let mut group = c.benchmark_group("intake");
    group.throughput(Throughput::Elements(bodies.len() as u64));
    group.bench_function("parse+validate+id+encode", |b| {
        b.iter(|| {
            for raw in &bodies {
                let value: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
                let Ok(sub) = parse_submission(&value) else {
                    continue;
                };
                let id = SubmissionId::from_canonical_body(&quiz, &canonical_json(&value));
                let env = SubmissionEnvelope::new(id, quiz.clone(), chrono::Utc::now(), None, sub);
                black_box(serde_json::to_vec(&env).unwrap_or_default());
            }
        })
    });
    group.bench_function("validate only", |b| {
        let values: Vec<serde_json::Value> = bodies
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap_or_default())
            .collect();
        b.iter(|| {
            for v in &values {
                let _ = black_box(parse_submission(v));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, intake_cpu);
criterion_main!(benches);
