//! A circuit breaker per provider: opens after `failures` consecutive transient failures,
//! lets one probe through after `cooldown`, closes on a success.
//!
//! Its verdicts are shared across the cluster ([`crate::cluster`]): an opening (or a
//! throttle pause) here stops the channel in every process, and only one process, the
//! channel's first member, probes when the cooldown ends.

use crate::cluster::{Verdict, VerdictTx};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What the breaker is doing, for metrics and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    Closed,
    Probe,
}

#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    cooldown: Duration,
    state: Mutex<State>,
    /// This process may probe when the cooldown ends (the cluster picks one).
    may_probe: AtomicBool,
    /// Where this breaker's own verdicts go, under its key, to be shared.
    share: Option<(String, VerdictTx)>,
    /// Until when the provider asked this sender to slow down (`Retry-After`): its jobs wait
    /// for it rather than move to another sender (contract §3.3).
    paused_until: Mutex<Option<Instant>>,
}

impl Breaker {
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
            may_probe: AtomicBool::new(true),
            share: None,
            paused_until: Mutex::new(None),
        }
    }

    /// A breaker whose verdicts are shared with the other processes under `key` (one per
    /// sender of a channel: [`crate::lanes::verdict_key`]).
    pub fn shared(failures: u32, cooldown: Duration, key: String, tx: VerdictTx) -> Self {
        Self {
            share: Some((key, tx)),
            ..Self::new(failures, cooldown)
        }
    }

    fn tell(&self, verdict: Verdict) {
        if let Some((key, tx)) = &self.share {
            // Bounded: under a storm of verdicts the others reach their own.
            let _ = tx.try_send((key.clone(), verdict));
        }
    }

    pub fn set_may_probe(&self, may: bool) {
        self.may_probe.store(may, Ordering::Relaxed);
    }

    /// Another process opened the breaker (or paused the channel) for `wait`.
    pub fn open_remote(&self, wait: Duration) {
        let mut s = self.lock();
        let until = Instant::now() + wait;
        *s = match *s {
            State::Open { until: u } if u > until => State::Open { until: u },
            _ => State::Open { until },
        };
    }

    /// Another process's probe succeeded.
    pub fn close_remote(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now: `Open` until its cooldown (or throttle pause) ends, `HalfOpen` while the
    /// probe may go or is out.
    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if Instant::now() < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen => CircuitState::HalfOpen,
        }
    }

    /// What the pool may fetch now. `Closed`: as much as it has room for. `Probe`: the
    /// cooldown is over and this caller holds the one probe (fetch one job; call
    /// [`Breaker::release_probe`] if it makes no provider call). `Err(wait)`: nothing — the
    /// breaker is open, or a probe is in flight; jobs wait in the stream meanwhile.
    pub fn allowance(&self) -> Result<Allowance, Duration> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(Allowance::Closed),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else if self.may_probe.load(Ordering::Relaxed) {
                    *s = State::HalfOpen;
                    Ok(Allowance::Probe)
                } else {
                    // Another process probes; its verdict (closed, or open again) comes
                    // through the bucket.
                    Err(Duration::from_millis(250))
                }
            }
            State::HalfOpen => Err(Duration::from_millis(100)),
        }
    }

    /// For a job fetched while the breaker was closed: `Err(wait)` if it opened since.
    pub fn admit(&self) -> Result<(), Duration> {
        match *self.lock() {
            State::Closed { .. } => Ok(()),
            State::Open { until } => Err(until.saturating_duration_since(Instant::now())),
            State::HalfOpen => Err(Duration::from_millis(500)),
        }
    }

    /// The probe made no provider call (nothing fetched, or its job needed no call): the
    /// next caller may probe at once.
    pub fn release_probe(&self) {
        let mut s = self.lock();
        if matches!(*s, State::HalfOpen) {
            *s = State::Open {
                until: Instant::now(),
            };
        }
    }

    /// The provider said "slow down" (429, `Retry-After`): the whole channel pauses for
    /// `wait` — no fetches, calls not yet made go back — then probes with one job, as after
    /// an outage. A throttle is not a failure: the failure count is not touched.
    pub fn pause(&self, wait: Duration) {
        let mut s = self.lock();
        let until = Instant::now() + wait;
        *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        let extends_by = match *s {
            State::Open { until: u } if u >= until => return,
            State::Open { until: u } => until - u,
            _ => wait,
        };
        *s = State::Open { until };
        drop(s);
        // Concurrent throttles each move the end a little: share only a move that matters.
        if extends_by > Duration::from_millis(250) {
            self.tell(Verdict::Open {
                for_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            });
        }
    }

    /// How much longer the provider's `Retry-After` holds this sender, if it does.
    pub fn throttled(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().unwrap_or_else(|p| p.into_inner()))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero() && self.state() != CircuitState::Closed).then_some(left)
    }

    pub fn success(&self) {
        *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut s = self.lock();
        let was_open = !matches!(*s, State::Closed { .. });
        *s = State::Closed { failures: 0 };
        drop(s);
        if was_open {
            self.tell(Verdict::Closed);
        }
    }

    /// Applies what a call's outcome told about the provider ([`crate::outcome::decide`]);
    /// true when it opened the breaker.
    pub fn learn(&self, news: crate::outcome::BreakerNews) -> bool {
        use crate::outcome::BreakerNews;
        match news {
            BreakerNews::Success => {
                self.success();
                false
            }
            BreakerNews::Failure => self.failure(),
            BreakerNews::Pause(wait) => {
                self.pause(wait);
                false
            }
        }
    }

    /// Returns true when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let mut s = self.lock();
        let was_open = matches!(*s, State::Open { .. });
        let opened = match *s {
            State::Closed { failures } if failures + 1 >= self.failures => true,
            State::Closed { failures } => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen | State::Open { .. } => true,
        };
        if opened {
            *s = State::Open {
                until: Instant::now() + self.cooldown,
            };
            drop(s);
            // Calls that were in flight when it opened fail too: one verdict is enough.
            if !was_open {
                self.tell(Verdict::Open {
                    for_ms: u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX),
                });
            }
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(3, Duration::from_millis(50));
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "third consecutive failure opens it");
        assert!(b.admit().is_err());
        assert!(b.allowance().is_err(), "open: nothing is fetched");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            b.allowance(),
            Ok(Allowance::Probe),
            "a probe after the cooldown"
        );
        assert!(b.allowance().is_err(), "only one probe is fetched");
        assert!(b.admit().is_err(), "half-open: jobs fetched earlier wait");
        b.release_probe();
        assert_eq!(
            b.allowance(),
            Ok(Allowance::Probe),
            "an unused probe is handed on"
        );
        assert!(b.failure(), "a failed probe opens it again");
        assert!(b.allowance().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.allowance(), Ok(Allowance::Probe));
        b.success();
        assert_eq!(b.allowance(), Ok(Allowance::Closed));
        assert!(b.admit().is_ok());
        assert!(!b.failure(), "the count restarted");
        b.success();
        b.pause(Duration::from_millis(50));
        assert!(b.allowance().is_err(), "paused: nothing is fetched");
        assert!(b.admit().is_err(), "paused: calls not yet made wait");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.allowance(), Ok(Allowance::Probe), "then one probe");
        b.success();
        assert_eq!(b.allowance(), Ok(Allowance::Closed));
    }
}
