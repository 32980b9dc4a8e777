//! A circuit breaker per provider: opens after `failures` consecutive transient failures,
//! lets one probe through after `cooldown`, closes on a success.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` while open: the job should go back to the stream for `wait`.
    pub fn admit(&self) -> Result<(), Duration> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *s = State::HalfOpen;
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
            // One probe at a time.
            State::HalfOpen => Err(Duration::from_millis(500)),
        }
    }

    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// Returns true when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let mut s = self.lock();
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
        }
        opened
    }

    pub fn is_open(&self) -> bool {
        matches!(*self.lock(), State::Open { until } if Instant::now() < until)
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
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit().is_ok(), "a probe after the cooldown");
        assert!(b.admit().is_err(), "only one probe");
        b.success();
        assert!(b.admit().is_ok());
        assert!(!b.failure(), "the count restarted");
    }
}
