//! What a provider call's [`Outcome`] means for the job and for the channel: a pure function,
//! so every class × attempt × breaker state is a row of a table test.
//!
//! Waiting is not failing: a throttle keeps the job's attempt count (and its budget), and
//! pauses the whole channel for `Retry-After`; transient and uncertain answers spend an
//! attempt and count against the breaker; the attempt after the retry schedule's last one
//! dead-letters the job as `exhausted`.

use quizflow_core::{DeadClass, DeliveryStatus, Outcome};
use std::time::Duration;

/// What becomes of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Recorded `sent`; the message is acked.
    Sent { attempts: i32 },
    /// Recorded as waiting (`queued` or `failed`), the message naked for `retry_in`.
    Retry {
        status: DeliveryStatus,
        attempts: i32,
        retry_in: Duration,
        /// The history entry's outcome (`throttled`, `failed`) and detail.
        event: &'static str,
        detail: String,
    },
    /// The provider refused because of the person (an opt-out, an address that does not
    /// exist): the contact is suppressed and the row ends `suppressed`, no dead letter.
    Suppressed {
        attempts: i32,
        reason: quizflow_core::consent::Reason,
        detail: String,
    },
    /// Dead-lettered with this class.
    Dead {
        class: DeadClass,
        attempts: i32,
        reason: String,
    },
}

/// What the channel's breaker learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerNews {
    /// The provider answered: a probe closes the breaker, failures reset.
    Success,
    /// A failure that counts towards opening (or reopens after a probe).
    Failure,
    /// The provider throttles: the whole channel pauses this long, then probes.
    Pause(Duration),
}

/// The decision for a job that had made `attempts` attempts before this call, under a retry
/// schedule of `schedule_len` delays; `backoff(n)` is the delay after the n-th failed attempt
/// (0-based), also used for a throttle without `Retry-After`.
pub fn decide(
    outcome: Outcome,
    attempts: i32,
    schedule_len: usize,
    backoff: impl Fn(usize) -> Duration,
) -> (Decision, BreakerNews) {
    match outcome {
        Outcome::Sent => (
            Decision::Sent {
                attempts: attempts + 1,
            },
            BreakerNews::Success,
        ),
        Outcome::Permanent(reason) => (
            Decision::Dead {
                class: DeadClass::Permanent,
                attempts: attempts + 1,
                reason,
            },
            // A permanent answer is about the message, not the provider's health.
            BreakerNews::Success,
        ),
        Outcome::Suppress { reason, detail } => (
            Decision::Suppressed {
                attempts: attempts + 1,
                reason,
                detail,
            },
            // Like a permanent answer: about the person, not the provider's health.
            BreakerNews::Success,
        ),
        Outcome::Throttle {
            retry_after,
            detail,
        } => {
            let wait = retry_after.unwrap_or_else(|| backoff(attempts.max(0) as usize));
            (
                Decision::Retry {
                    status: DeliveryStatus::waiting(attempts),
                    attempts,
                    retry_in: wait,
                    event: "throttled",
                    detail,
                },
                BreakerNews::Pause(wait),
            )
        }
        Outcome::Transient(reason) | Outcome::Uncertain(reason) => {
            let attempts = attempts + 1;
            let decision = if attempts as usize > schedule_len {
                Decision::Dead {
                    class: DeadClass::Exhausted,
                    attempts,
                    reason,
                }
            } else {
                Decision::Retry {
                    status: DeliveryStatus::Failed,
                    attempts,
                    retry_in: backoff(attempts as usize - 1),
                    event: "failed",
                    detail: reason,
                }
            };
            (decision, BreakerNews::Failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{Allowance, Breaker, CircuitState};

    const SCHEDULE: usize = 5;

    fn backoff(n: usize) -> Duration {
        Duration::from_secs(10 * (n as u64 + 1))
    }

    fn outcomes() -> Vec<Outcome> {
        vec![
            Outcome::Sent,
            Outcome::Permanent("21211".into()),
            Outcome::Throttle {
                retry_after: Some(Duration::from_secs(7)),
                detail: "429".into(),
            },
            Outcome::Throttle {
                retry_after: None,
                detail: "429".into(),
            },
            Outcome::Transient("503".into()),
            Outcome::Uncertain("timed out".into()),
            Outcome::Suppress {
                reason: quizflow_core::consent::Reason::ProviderOptOut,
                detail: "21610".into(),
            },
        ]
    }

    /// Every outcome class × attempts made before the call (first, middle, last allowed,
    /// over the budget) → what becomes of the job.
    #[test]
    fn the_decision_table() {
        for before in [0, 1, SCHEDULE as i32 - 1, SCHEDULE as i32] {
            for outcome in outcomes() {
                let (decision, _) = decide(outcome.clone(), before, SCHEDULE, backoff);
                let expected = match &outcome {
                    Outcome::Sent => Decision::Sent {
                        attempts: before + 1,
                    },
                    Outcome::Permanent(r) => Decision::Dead {
                        class: DeadClass::Permanent,
                        attempts: before + 1,
                        reason: r.clone(),
                    },
                    Outcome::Suppress { reason, detail } => Decision::Suppressed {
                        attempts: before + 1,
                        reason: *reason,
                        detail: detail.clone(),
                    },
                    Outcome::Throttle {
                        retry_after,
                        detail,
                    } => Decision::Retry {
                        status: if before == 0 {
                            DeliveryStatus::Queued
                        } else {
                            DeliveryStatus::Failed
                        },
                        attempts: before,
                        retry_in: retry_after.unwrap_or(backoff(before as usize)),
                        event: "throttled",
                        detail: detail.clone(),
                    },
                    Outcome::Transient(r) | Outcome::Uncertain(r) if before < SCHEDULE as i32 => {
                        Decision::Retry {
                            status: DeliveryStatus::Failed,
                            attempts: before + 1,
                            retry_in: backoff(before as usize),
                            event: "failed",
                            detail: r.clone(),
                        }
                    }
                    Outcome::Transient(r) | Outcome::Uncertain(r) => Decision::Dead {
                        class: DeadClass::Exhausted,
                        attempts: before + 1,
                        reason: r.clone(),
                    },
                };
                assert_eq!(decision, expected, "{outcome:?} after {before} attempts");
            }
        }
    }

    /// Breaker states (closed with no failures, closed one failure short of opening, a
    /// half-open probe) × outcome class → the state the breaker is left in.
    #[test]
    fn the_breaker_table() {
        use CircuitState::*;
        type Expect = fn(&Outcome) -> CircuitState;
        let rows: [(&str, Expect); 3] = [
            ("closed", |_| Closed),
            ("one short", |o| match o {
                Outcome::Transient(_) | Outcome::Uncertain(_) => Open,
                Outcome::Throttle { .. } => Open,
                _ => Closed,
            }),
            ("probe", |o| match o {
                Outcome::Sent | Outcome::Permanent(_) | Outcome::Suppress { .. } => Closed,
                _ => Open,
            }),
        ];
        for (state, expected) in rows {
            for outcome in outcomes() {
                let breaker = Breaker::new(3, Duration::from_millis(50));
                match state {
                    "one short" => {
                        breaker.failure();
                        breaker.failure();
                    }
                    "probe" => {
                        for _ in 0..3 {
                            breaker.failure();
                        }
                        std::thread::sleep(Duration::from_millis(60));
                        assert_eq!(breaker.allowance(), Ok(Allowance::Probe));
                    }
                    _ => {}
                }
                let (_, news) = decide(outcome.clone(), 0, SCHEDULE, backoff);
                breaker.learn(news);
                let want = match (state, &outcome) {
                    // A throttle pauses the channel whatever its state.
                    (_, Outcome::Throttle { .. }) => Open,
                    _ => expected(&outcome),
                };
                assert_eq!(breaker.state(), want, "{state} breaker, {outcome:?}");
            }
        }
    }
}
