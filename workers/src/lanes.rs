//! A channel's senders (contract §3.3), each a *lane*: one provider account sending from one
//! number, phone-number id, instance or address, with its own share of the cluster's rate and
//! concurrency and its own breaker. [`route`] picks a job's lane:
//!
//! - a recipient sticks to one sender of a provider (a stable hash of the contact), so a
//!   conversation keeps its number; a sender at its rate limit makes its jobs wait there;
//! - only an unusable sender (breaker open or probing) moves a recipient to another sender of
//!   the same provider, and only when every sender of a provider is unusable do jobs go to
//!   the next provider in the channel's order (failover);
//! - a retry after an `uncertain` answer goes back to the lane of that attempt (same provider,
//!   sender and idempotency key) and waits for it, never fails over: no job is sent by two
//!   providers;
//! - a WhatsApp template goes only to senders that send templates (Cloud), and an action's
//!   `from` pins its sender.

use crate::breaker::{Allowance, Breaker};
use crate::cluster::Share;
use crate::provider::Sender;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// One sender of a channel, as this process uses it.
pub(crate) struct Lane {
    pub sender: Sender,
    /// `provider/sender`: in attempts, metrics and stats.
    pub label: String,
    /// This process's share of the sender's rate (none: send nothing through it), waited for
    /// before the pre-call check.
    pub limiter: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    /// The rate again, without a burst, right before the call ([`pacer_at`]): calls that the
    /// pre-call check's statement held back together leave spaced.
    pub pacer: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    pub share: watch::Receiver<Share>,
    /// Calls in flight through this sender, when a per-sender cap is configured.
    pub slots: Option<Arc<Semaphore>>,
    pub breaker: Arc<Breaker>,
}

impl Lane {
    pub fn current(
        which: &RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    ) -> Option<Arc<DefaultDirectRateLimiter>> {
        which.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Follows this process's share of the sender: a limiter at the new rate, the slots grown
    /// or shrunk. Returns when the share's sender is gone or `stop` is given.
    pub async fn follow(&self, mut stop: watch::Receiver<bool>, on_rate: impl Fn(f64, usize)) {
        let mut share = self.share.clone();
        let mut issued = 0usize;
        let mut rate = 0.0f64;
        let mut replaced = false;
        loop {
            let now = *share.borrow_and_update();
            if now.rate_per_sec != rate {
                rate = now.rate_per_sec;
                let limiter = limiter_at(rate, replaced);
                replaced |= limiter.is_some();
                *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = limiter;
                *self.pacer.write().unwrap_or_else(|p| p.into_inner()) = pacer_at(rate);
                on_rate(rate, now.members);
            }
            if let Some(slots) = &self.slots {
                resize(slots, &mut issued, now.concurrency);
            }
            tokio::select! {
                changed = share.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Grows or shrinks `slots` to `want` permits (a shrink takes free permits now; permits held
/// by calls in flight are taken back on the next change).
pub(crate) fn resize(slots: &Semaphore, issued: &mut usize, want: usize) {
    if want > *issued {
        slots.add_permits(want - *issued);
        *issued = want;
    } else if want < *issued {
        *issued -= slots.forget_permits(*issued - want);
    }
}

/// A limiter at `rate` per second (none at 0) that never lets more than `rate` through in any
/// one second, however the calls fall (a provider counts per second): a small burst `b`
/// absorbs timer lateness, and the refill is `rate - b + 1`, so a full bucket plus a second's
/// refill is `rate`. A limiter that `replaces` another starts empty, or every membership change
/// would add a burst per process.
pub(crate) fn limiter_at(rate: f64, replaces: bool) -> Option<Arc<DefaultDirectRateLimiter>> {
    if rate <= 0.0 {
        return None;
    }
    let burst = ((rate / 25.0) as u32).max(1);
    let refill = if rate >= 1.0 {
        rate - f64::from(burst) + 1.0
    } else {
        rate
    };
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / refill))?.allow_burst(burst);
    let l = RateLimiter::direct(quota);
    if replaces {
        let _ = l.check_n(burst);
    }
    Some(Arc::new(l))
}

/// The pacer at `rate`: no burst, so calls leave at least `1 / rate` apart and no second holds
/// more than `rate` of them. It runs a little faster than the limiter before it (which sets
/// the average), so it only spaces out what the pre-call check held back together.
pub(crate) fn pacer_at(rate: f64) -> Option<Arc<DefaultDirectRateLimiter>> {
    if rate <= 0.0 {
        return None;
    }
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))?;
    Some(Arc::new(RateLimiter::direct(quota)))
}

/// What the pool may fetch now, over all its lanes: `Ok((open, probe))` — `open`: some lane is
/// closed (fetch as much as there is room for); `probe`: this lane's cooldown is over and this
/// caller holds its one probe. `Err(wait)`: no lane can send; jobs wait in the stream.
pub(crate) fn allowance(lanes: &[Lane]) -> Result<(bool, Option<usize>), Duration> {
    let mut open = false;
    let mut probe = None;
    let mut wait = Duration::from_millis(250);
    for (i, l) in lanes.iter().enumerate() {
        if probe.is_some() {
            open |= l.breaker.state() == crate::breaker::CircuitState::Closed;
            continue;
        }
        match l.breaker.allowance() {
            Ok(Allowance::Closed) => open = true,
            Ok(Allowance::Probe) => probe = Some(i),
            Err(w) => wait = wait.min(w),
        }
    }
    if open || probe.is_some() {
        Ok((open, probe))
    } else {
        Err(wait)
    }
}

/// What a job needs of a lane.
pub(crate) struct Ask<'a> {
    /// The recipient (its hash picks the sender).
    pub to: &'a str,
    /// An approved WhatsApp template: only senders that send templates.
    pub template: bool,
    /// The action's pinned sender.
    pub from: Option<&'a str>,
    /// The lane of an `uncertain` attempt: the retry goes there and nowhere else.
    pub pinned: Option<&'a str>,
    /// This job is the probe of this lane.
    pub probe: Option<usize>,
}

/// Where a job goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Lane(usize),
    /// No usable lane now (breakers open): back to the stream for this long, no attempt spent.
    Wait(Duration),
    /// No configured lane can ever send it (a pinned sender that is not configured).
    Never(String),
}

/// The lane for `ask` (see the module's rules).
pub(crate) fn route(lanes: &[Lane], ask: &Ask<'_>) -> Route {
    let fits = |l: &Lane| {
        (!ask.template || l.sender.provider.sends_templates())
            && ask.from.is_none_or(|f| l.sender.provider.sender() == f)
    };
    let candidates: Vec<usize> = (0..lanes.len()).filter(|&i| fits(&lanes[i])).collect();
    if candidates.is_empty() {
        return Route::Never(match ask.from {
            Some(f) => format!("sender {f:?} is not one of the channel's senders"),
            None => "no sender of this channel sends WhatsApp templates (Cloud API)".to_owned(),
        });
    }
    if let Some(i) = ask
        .pinned
        .and_then(|p| candidates.iter().copied().find(|&i| lanes[i].label == p))
    {
        return match lanes[i].breaker.admit() {
            Ok(()) => Route::Lane(i),
            Err(w) => Route::Wait(w.max(Duration::from_millis(100))),
        };
    }
    if let Some(p) = ask.probe.filter(|p| candidates.contains(p)) {
        return Route::Lane(p);
    }
    let mut wait = Duration::from_secs(60);
    let mut ranks: Vec<usize> = candidates.iter().map(|&i| lanes[i].sender.rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    for rank in ranks {
        let group: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| lanes[i].sender.rank == rank)
            .collect();
        let start = (stable_hash(ask.to) % group.len() as u64) as usize;
        // A sender the provider throttles (`Retry-After`) is at its limit, not broken: its
        // recipients wait for it and keep their number.
        if let Some(w) = lanes[group[start]].breaker.throttled() {
            return Route::Wait(w.max(Duration::from_millis(100)));
        }
        for k in 0..group.len() {
            let i = group[(start + k) % group.len()];
            match lanes[i].breaker.admit() {
                Ok(()) => return Route::Lane(i),
                Err(w) => wait = wait.min(w),
            }
        }
    }
    Route::Wait(wait.max(Duration::from_millis(100)))
}

/// FNV-1a: the same number for a contact in every process and every release.
pub(crate) fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The key of a lane's shared breaker verdicts (`breaker.<channel>.<hash of its label>`): the
/// same sender has the same key in every process, whatever the order of its configuration.
pub(crate) fn verdict_key(channel: quizflow_core::Channel, label: &str) -> String {
    format!("breaker.{}.{:016x}", channel.as_str(), stable_hash(label))
}

/// The lane an `uncertain` attempt went through, if the job's last attempt was one: its
/// retry goes there again.
pub(crate) fn uncertain_lane(history: &[serde_json::Value]) -> Option<&str> {
    let last = history.last()?;
    (last["uncertain"] == serde_json::Value::Bool(true))
        .then(|| last["sender"].as_str())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Provider;

    fn lane(provider: &str, sender: &str, rank: usize) -> Lane {
        let provider = match provider {
            "cloud" => Provider::WhatsappCloud {
                base: String::new(),
                version: "v21.0".into(),
                phone_number_id: sender.into(),
                token: String::new(),
            },
            _ => Provider::Evolution {
                base: String::new(),
                instance: sender.into(),
                api_key: String::new(),
            },
        };
        let sender = Sender { provider, rank };
        let (_tx, share) = watch::channel(Share::NONE);
        Lane {
            label: sender.label(),
            sender,
            limiter: RwLock::new(None),
            pacer: RwLock::new(None),
            share,
            slots: None,
            breaker: Arc::new(Breaker::new(1, Duration::from_secs(60))),
        }
    }

    fn ask(to: &str) -> Ask<'_> {
        Ask {
            to,
            template: false,
            from: None,
            pinned: None,
            probe: None,
        }
    }

    #[test]
    fn a_recipient_sticks_to_a_sender_moves_only_off_an_open_breaker_then_fails_over() {
        let lanes: Vec<Lane> = (0..4)
            .map(|i| lane("cloud", &format!("n{i}"), 0))
            .chain([lane("cloud", "second", 1)])
            .collect();
        let Route::Lane(first) = route(&lanes, &ask("+5511999990001")) else {
            panic!("a lane");
        };
        assert!(first < 4, "the first provider sends");
        for _ in 0..10 {
            assert_eq!(route(&lanes, &ask("+5511999990001")), Route::Lane(first));
        }
        // Recipients spread over the four senders.
        let used: std::collections::HashSet<usize> = (0..200)
            .map(|n| match route(&lanes, &ask(&format!("+55119{n:08}"))) {
                Route::Lane(i) => i,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(used, (0..4).collect());
        lanes[first].breaker.pause(Duration::from_secs(5));
        assert!(
            matches!(route(&lanes, &ask("+5511999990001")), Route::Wait(_)),
            "a throttled sender keeps its recipients waiting"
        );
        lanes[first].breaker.success();
        lanes[first].breaker.failure();
        let Route::Lane(moved) = route(&lanes, &ask("+5511999990001")) else {
            panic!("a lane");
        };
        assert!(moved != first && moved < 4, "another sender of the pool");
        for l in &lanes[..4] {
            l.breaker.failure();
        }
        assert_eq!(
            route(&lanes, &ask("+5511999990001")),
            Route::Lane(4),
            "the next provider"
        );
        lanes[4].breaker.failure();
        assert!(matches!(
            route(&lanes, &ask("+5511999990001")),
            Route::Wait(_)
        ));
    }

    #[test]
    fn uncertain_retries_stay_templates_go_to_cloud_and_from_pins() {
        let lanes = vec![lane("evolution", "inst", 0), lane("cloud", "123", 1)];
        let mut a = ask("+5511999990001");
        a.template = true;
        assert_eq!(route(&lanes, &a), Route::Lane(1));
        let mut a = ask("+5511999990001");
        a.from = Some("123");
        assert_eq!(route(&lanes, &a), Route::Lane(1));
        a.from = Some("nope");
        assert!(matches!(route(&lanes, &a), Route::Never(_)));
        let mut a = ask("+5511999990001");
        a.pinned = Some("evolution/inst");
        assert_eq!(route(&lanes, &a), Route::Lane(0));
        lanes[0].breaker.failure();
        assert!(
            matches!(route(&lanes, &a), Route::Wait(_)),
            "an uncertain retry waits for its lane, never fails over"
        );
        let history = vec![
            serde_json::json!({"outcome": "failed", "uncertain": true, "sender": "evolution/inst"}),
        ];
        assert_eq!(uncertain_lane(&history), Some("evolution/inst"));
        assert_eq!(uncertain_lane(&[]), None);
    }
}
