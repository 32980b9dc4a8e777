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

/// Sends `load[range]` to `base` and returns each request's fate, in order; `tick` is called
/// after each answer with the number answered so far.
pub async fn drive(
    client: &reqwest::Client,
    base: &str,
    load: &Load,
    range: std::ops::Range<usize>,
    pacing: Pacing,
    tick: &(dyn Fn(usize) + Sync),
) -> Vec<Sent> {
    use futures::StreamExt;
    let send = |i: usize, due: Instant| {
        let url = format!("{base}/v1/quizzes/{}/submissions", load.quizzes[i]);
        let req = client
            .post(url)
            .header("Idempotency-Key", load.keys[i].as_str())
            .header("content-type", "application/json")
            .body(load.bodies[i].clone());
        async move {
            let status = match req.send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            (
                i,
                Sent {
                    due,
                    done: Instant::now(),
                    status,
                },
            )
        }
    };
    let start = range.start;
    let mut out: Vec<Option<Sent>> = vec![None; range.len()];
    let mut answered = 0usize;
    match pacing {
        Pacing::Closed { concurrency } => {
            let mut answers = futures::stream::iter(range)
                .map(|i| send(i, Instant::now()))
                .buffer_unordered(concurrency.max(1));
            while let Some((i, s)) = answers.next().await {
                out[i - start] = Some(s);
                answered += 1;
                tick(answered);
            }
        }
        Pacing::Open { rate } => {
            let t0 = Instant::now();
            let mut in_flight = futures::stream::FuturesUnordered::new();
            for i in range {
                let at = t0 + due(i - start, rate);
                loop {
                    if in_flight.len() >= OPEN_LOOP_IN_FLIGHT {
                        if let Some((j, s)) = in_flight.next().await {
                            out[j - start] = Some(s);
                            answered += 1;
                            tick(answered);
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => break,
                        Some((j, s)) = in_flight.next(), if !in_flight.is_empty() => {
                            out[j - start] = Some(s);
                            answered += 1;
                            tick(answered);
                        }
                    }
                }
                in_flight.push(send(i, at));
            }
            while let Some((j, s)) = in_flight.next().await {
                out[j - start] = Some(s);
                answered += 1;
                tick(answered);
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
}
