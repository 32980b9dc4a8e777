//! The HTTP driver: realistic submissions, sent closed-loop (as fast as `concurrency`
//! allows) or open-loop (request `i` is due at `i / rate`; its latency counts from then, so a
//! stall delays no measurement: no coordinated omission).

use crate::leads::lead;
use bytes::Bytes;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Submissions prepared before a run, so the driver spends its CPU on HTTP.
pub struct Load {
    pub quizzes: Vec<String>,
    pub keys: Vec<String>,
    pub bodies: Vec<Bytes>,
    /// The submission id the API derives from (quiz, key).
    pub ids: Vec<Uuid>,
    /// Whether the benchmark campaign matches it (answer `q1` = `b`).
    pub matches: Vec<bool>,
}

impl Load {
    /// `n` leads over `quizzes` quizzes, a `match_share` of them matching, with keys unique to
    /// `run`.
    pub fn generate(n: usize, quizzes: usize, match_share: f64, run: &str) -> Self {
        let mut rng = rand::rng();
        let mut load = Load {
            quizzes: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            matches: Vec::with_capacity(n),
        };
        let per_mille = (match_share.clamp(0.0, 1.0) * 1000.0).round() as usize;
        for i in 0..n {
            let quiz = format!("e2e{}", i % quizzes.max(1));
            let key = format!("{run}-{i}");
            // Spread evenly: every 1,000 consecutive leads hold exactly the share.
            let matching = (i * 7919) % 1000 < per_mille;
            let mut body = lead(&mut rng, i as u64);
            body["answers"][0]["value"] = serde_json::json!(if matching { "b" } else { "a" });
            body["respondent"]["phone"] =
                serde_json::json!(format!("+55119{:08}", i % 100_000_000));
            let id = match (
                quizflow_core::QuizId::parse(&quiz),
                quizflow_core::IdempotencyKey::parse(&key),
            ) {
                (Ok(q), Ok(k)) => quizflow_core::SubmissionId::from_key(&q, &k).0,
                _ => Uuid::nil(),
            };
            load.bodies
                .push(serde_json::to_vec(&body).unwrap_or_default().into());
            load.quizzes.push(quiz);
            load.keys.push(key);
            load.ids.push(id);
            load.matches.push(matching);
        }
        load
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The ids of the submissions the benchmark campaign matches.
    pub fn matching(&self) -> std::collections::HashSet<Uuid> {
        self.ids
            .iter()
            .zip(&self.matches)
            .filter(|(_, m)| **m)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "loop")]
pub enum Pacing {
    /// As fast as `concurrency` requests in flight allow.
    Closed { concurrency: usize },
    /// `rate` requests per second, on schedule, however slow the answers.
    Open { rate: f64 },
}

/// When request `i` is due, from the start of an open-loop run.
pub fn due(i: usize, rate: f64) -> Duration {
    if rate <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(i as f64 / rate)
}

/// One request's fate.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// When it was due (open loop) or sent (closed loop).
    pub due: Instant,
    pub done: Instant,
    /// HTTP status; 0 for a transport error.
    pub status: u16,
}

impl Sent {
    pub fn latency(&self) -> Duration {
        self.done.saturating_duration_since(self.due)
    }
}

/// Requests allowed in flight in an open-loop run before the driver itself waits (the wait
/// shows in the latencies, which count from each request's due time).
const OPEN_LOOP_IN_FLIGHT: usize = 8_192;

/// The body of `POST /v1/submissions/batch` for `load[idx]`.
pub fn batch_body(load: &Load, idx: &[usize]) -> Bytes {
    let items: Vec<serde_json::Value> = idx
        .iter()
        .map(|&i| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&load.bodies[i]).unwrap_or_default();
            v["quiz_id"] = serde_json::json!(load.quizzes[i]);
            v["idempotency_key"] = serde_json::json!(load.keys[i]);
            v
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "submissions": items }))
        .unwrap_or_default()
        .into()
}

/// One request: a single submission (`batch` = 0) or `POST /v1/submissions/batch` with the
/// chunk's submissions. Every submission gets the request's times and its own status.
async fn send_chunk(
    client: &reqwest::Client,
    base: &str,
    load: &Load,
    idx: Vec<usize>,
    body: Option<Bytes>,
    due: Instant,
) -> Vec<(usize, Sent)> {
    let statuses: Vec<u16> = match body {
        None => {
            let i = idx[0];
            let r = client
                .post(format!("{base}/v1/quizzes/{}/submissions", load.quizzes[i]))
                .header("Idempotency-Key", load.keys[i].as_str())
                .header("content-type", "application/json")
                .body(load.bodies[i].clone())
                .send()
                .await;
            vec![r.map(|r| r.status().as_u16()).unwrap_or(0)]
        }
        Some(body) => {
            let r = client
                .post(format!("{base}/v1/submissions/batch"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 200 => {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    let mut by_index = vec![0u16; idx.len()];
                    for item in v["results"].as_array().into_iter().flatten() {
                        if let (Some(k), Some(st)) =
                            (item["index"].as_u64(), item["status"].as_u64())
                        {
                            if let Some(slot) = by_index.get_mut(k as usize) {
                                *slot = u16::try_from(st).unwrap_or(0);
                            }
                        }
                    }
                    by_index
                }
                Ok(r) => vec![r.status().as_u16(); idx.len()],
                Err(_) => vec![0; idx.len()],
            }
        }
    };
    let done = Instant::now();
    idx.into_iter()
        .zip(statuses)
        .map(|(i, status)| (i, Sent { due, done, status }))
        .collect()
}

/// Sends `load[range]` to `base` and returns each submission's fate, in order: one request
/// per submission, or (`batch` > 0) `POST /v1/submissions/batch` with `batch` per request.
/// An open-loop `rate` counts submissions. `tick` is called after each answer with the number
/// of submissions answered so far.
pub async fn drive(
    client: &reqwest::Client,
    base: &str,
    load: &Load,
    range: std::ops::Range<usize>,
    pacing: Pacing,
    batch: usize,
    tick: &(dyn Fn(usize) + Sync),
) -> Vec<Sent> {
    use futures::StreamExt;
    let start = range.start;
    let per = batch.max(1);
    let chunks: Vec<Vec<usize>> = range
        .clone()
        .collect::<Vec<_>>()
        .chunks(per)
        .map(<[usize]>::to_vec)
        .collect();
    // Bodies are built before the clock starts.
    let bodies: Vec<Option<Bytes>> = chunks
        .iter()
        .map(|c| (batch > 0).then(|| batch_body(load, c)))
        .collect();
    let mut out: Vec<Option<Sent>> = vec![None; range.len()];
    let mut answered = 0usize;
    let mut settle = |results: Vec<(usize, Sent)>, out: &mut Vec<Option<Sent>>| {
        answered += results.len();
        for (i, s) in results {
            out[i - start] = Some(s);
        }
        tick(answered);
    };
    let work = chunks.into_iter().zip(bodies);
    match pacing {
        Pacing::Closed { concurrency } => {
            let mut answers = futures::stream::iter(work)
                .map(|(idx, body)| send_chunk(client, base, load, idx, body, Instant::now()))
                .buffer_unordered(concurrency.max(1));
            while let Some(r) = answers.next().await {
                settle(r, &mut out);
            }
        }
        Pacing::Open { rate } => {
            let t0 = Instant::now();
            let mut in_flight = futures::stream::FuturesUnordered::new();
            for (idx, body) in work {
                let at = t0 + due(idx[0] - start, rate);
                loop {
                    if in_flight.len() >= OPEN_LOOP_IN_FLIGHT {
                        if let Some(r) = in_flight.next().await {
                            settle(r, &mut out);
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => break,
                        Some(r) = in_flight.next(), if !in_flight.is_empty() => settle(r, &mut out),
                    }
                }
                in_flight.push(send_chunk(client, base, load, idx, body, at));
            }
            while let Some(r) = in_flight.next().await {
                settle(r, &mut out);
            }
        }
    }
    let now = Instant::now();
    out.into_iter()
        .map(|s| {
            s.unwrap_or(Sent {
                due: now,
                done: now,
                status: 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_requests_are_due_on_a_fixed_schedule() {
        assert_eq!(due(0, 1_000.0), Duration::ZERO);
        assert_eq!(due(1_000, 1_000.0), Duration::from_secs(1));
        assert_eq!(due(150, 100.0), Duration::from_millis(1_500));
        // No drift: request n is due at n / rate, not at the sum of n rounded gaps.
        let r = 1_667.0;
        let n = 200_000;
        let expect = n as f64 / r;
        assert!((due(n, r).as_secs_f64() - expect).abs() < 1e-6);
    }

    #[test]
    fn a_request_answered_late_counts_from_when_it_was_due() {
        let due = Instant::now();
        let s = Sent {
            due,
            done: due + Duration::from_millis(250),
            status: 202,
        };
        assert_eq!(s.latency(), Duration::from_millis(250));
    }

    #[test]
    fn the_load_holds_the_match_share_and_ids_the_api_derives() {
        let load = Load::generate(2_000, 20, 0.5, "t");
        assert_eq!(load.matches.iter().filter(|m| **m).count(), 1_000);
        let q = quizflow_core::QuizId::parse(&load.quizzes[7]).expect("quiz");
        let k = quizflow_core::IdempotencyKey::parse(&load.keys[7]).expect("key");
        assert_eq!(quizflow_core::SubmissionId::from_key(&q, &k).0, load.ids[7]);
        let body: serde_json::Value = serde_json::from_slice(&load.bodies[7]).expect("json");
        assert!(
            quizflow_core::parse_submission(&body).is_ok(),
            "valid for the API"
        );
        assert_eq!(
            body["answers"][0]["value"] == "b",
            load.matches[7],
            "the body says what the harness expects"
        );
    }

    #[test]
    fn a_batch_body_carries_each_submissions_quiz_and_key() {
        let load = Load::generate(10, 3, 0.5, "b");
        let body: serde_json::Value =
            serde_json::from_slice(&batch_body(&load, &[2, 5])).expect("json");
        let items = body["submissions"].as_array().expect("items");
        assert_eq!(items.len(), 2);
        assert_eq!(items[1]["quiz_id"], load.quizzes[5].as_str());
        assert_eq!(items[1]["idempotency_key"], load.keys[5].as_str());
    }
}
