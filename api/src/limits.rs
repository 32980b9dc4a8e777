//! Sliding-window submission limits (per respondent and quiz, per client IP).
//!
//! A limit is *reserved* before the publish and *released* when the submission turns out to
//! be a duplicate or could not be published, so only valid, non-duplicate submissions count
//! (contract §6) and concurrent requests cannot overshoot the limit.
//!
//! Two scopes for the respondent limit (`QUIZFLOW_RATE_LIMIT_SCOPE`):
//! - `instance` (the default): counters in this process. With N API instances a respondent
//!   can get up to N times the limit through if the load balancer spreads their requests;
//!   no network round trip is added.
//! - `cluster`: [`ClusterLimiter`], one JetStream message per counted submission in the
//!   in-memory stream `RESPONDENT_LIMITS`, a subject per respondent and quiz (a keyed hash,
//!   never the phone or e-mail), at most `limit` messages per subject (`discard_new_per_subject`)
//!   for `window` (`max_age`). The server refuses the publish past the limit, atomically
//!   for every instance: a sliding log, exact, one round trip per submission; a release
//!   (duplicate, not published) deletes the message, a second round trip on that path only.
//!
//! The per-IP limit is always per instance.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 32;
/// Keys tracked per shard before new keys are let through untracked (memory bound).
const MAX_KEYS_PER_SHARD: usize = 64 * 1024;

#[derive(Clone, Copy)]
struct Slot {
    window_start: Instant,
    count: u32,
    previous: u32,
}

/// A limiter of `limit` events per `window` and key; `limit == 0` disables it.
pub struct WindowLimiter {
    limit: u32,
    window: Duration,
    max_keys_per_shard: usize,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<u64, Slot>>>,
}

/// A successful reservation; hand it back with [`WindowLimiter::release`] if it should not count.
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    key: u64,
    window_start: Instant,
}

impl WindowLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self::with_key_cap(limit, window, MAX_KEYS_PER_SHARD)
    }

    /// As [`WindowLimiter::new`], with a cap on the keys each of its shards tracks.
    pub fn with_key_cap(limit: u32, window: Duration, max_keys_per_shard: usize) -> Self {
        Self {
            limit,
            window,
            max_keys_per_shard,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    pub fn key(&self, parts: impl Hash) -> u64 {
        self.hasher.hash_one(parts)
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, Slot>> {
        &self.shards[(key as usize) % SHARDS]
    }

    /// Reserves one event for each key, all or none. `Err(seconds)` says when to retry.
    pub fn reserve(&self, keys: &[u64]) -> Result<Vec<Reservation>, u64> {
        if !self.enabled() {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let mut taken = Vec::with_capacity(keys.len());
        for &key in keys {
            match self.reserve_one(key, now) {
                Ok(r) => taken.push(r),
                Err(retry) => {
                    self.release(&taken);
                    return Err(retry);
                }
            }
        }
        Ok(taken)
    }

    fn reserve_one(&self, key: u64, now: Instant) -> Result<Reservation, u64> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.max_keys_per_shard && !shard.contains_key(&key) {
            Self::prune_shard(&mut shard, now, self.window);
            if shard.len() >= self.max_keys_per_shard {
                // Still full (a flood of distinct keys): the new key goes through untracked
                // rather than growing memory without bound. Its release finds no slot.
                return Ok(Reservation {
                    key,
                    window_start: now,
                });
            }
        }
        let slot = shard.entry(key).or_insert(Slot {
            window_start: now,
            count: 0,
            previous: 0,
        });
        let mut elapsed = now.duration_since(slot.window_start);
        if elapsed >= self.window {
            let windows = elapsed.as_nanos() / self.window.as_nanos().max(1);
            slot.previous = if windows == 1 { slot.count } else { 0 };
            slot.count = 0;
            slot.window_start += self.window * windows as u32;
            elapsed = now.duration_since(slot.window_start);
        }
        // Sliding estimate: the part of the previous window still inside the last minute.
        let frac_left = 1.0 - elapsed.as_secs_f64() / self.window.as_secs_f64();
        let estimate = f64::from(slot.previous) * frac_left + f64::from(slot.count);
        if estimate + 1.0 > f64::from(self.limit) {
            let retry = (self.window - elapsed).as_secs_f64().ceil() as u64;
            return Err(retry.max(1));
        }
        slot.count += 1;
        Ok(Reservation {
            key,
            window_start: slot.window_start,
        })
    }

    /// Whether `key` is at its limit now (without counting an event).
    pub fn is_over(&self, key: u64) -> bool {
        if !self.enabled() {
            return false;
        }
        let now = Instant::now();
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = shard.get(&key) else {
            return false;
        };
        let elapsed = now.duration_since(slot.window_start);
        if elapsed >= self.window * 2 {
            return false;
        }
        let (previous, count, elapsed) = if elapsed >= self.window {
            (slot.count, 0, elapsed - self.window)
        } else {
            (slot.previous, slot.count, elapsed)
        };
        let frac_left = 1.0 - elapsed.as_secs_f64() / self.window.as_secs_f64();
        f64::from(previous) * frac_left + f64::from(count) >= f64::from(self.limit)
    }

    /// Counts one event for `key`, whether or not it is over the limit.
    pub fn hit(&self, key: u64) {
        let _ = self.reserve_one(key, Instant::now());
    }

    /// Keys tracked now (all shards).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Gives reservations back (duplicate, or not published).
    pub fn release(&self, reservations: &[Reservation]) {
        for r in reservations {
            let mut shard = self.shard(r.key).lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = shard.get_mut(&r.key) {
                if slot.window_start == r.window_start {
                    slot.count = slot.count.saturating_sub(1);
                }
            }
        }
    }

    fn prune_shard(shard: &mut HashMap<u64, Slot>, now: Instant, window: Duration) {
        shard.retain(|_, s| now.duration_since(s.window_start) < window * 2);
    }

    /// Drops keys idle for two windows; run periodically.
    pub fn prune(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            Self::prune_shard(&mut shard, now, self.window);
        }
    }
}

/// `QUIZFLOW_RATE_LIMIT_SCOPE`: `instance` or `cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    #[default]
    Instance,
    Cluster,
}

/// The respondent limit in either scope.
pub enum RespondentLimiter {
    Instance(WindowLimiter),
    Cluster(Box<ClusterLimiter>),
}

/// What a reservation holds, to be given back.
#[derive(Debug, Default)]
pub struct Held {
    local: Vec<Reservation>,
    /// Sequences in `RESPONDENT_LIMITS`.
    cluster: Vec<u64>,
}

impl RespondentLimiter {
    /// The limiter `settings` ask for (`QUIZFLOW_RATE_LIMIT_SCOPE`).
    pub fn of(settings: &crate::ApiSettings, js: &async_nats::jetstream::Context) -> Self {
        match settings.respondent_limit_scope {
            LimitScope::Instance => Self::Instance(WindowLimiter::new(
                settings.respondent_limit_per_min,
                settings.limit_window,
            )),
            LimitScope::Cluster => Self::Cluster(Box::new(ClusterLimiter::new(
                js.clone(),
                settings.respondent_limit_per_min,
                settings.limit_window,
                settings.replicas,
                // Every instance shares the admin token, so every instance hashes a
                // respondent to the same subject.
                settings
                    .admin_token
                    .as_deref()
                    .unwrap_or("quizflow")
                    .as_bytes(),
            ))),
        }
    }

    pub fn enabled(&self) -> bool {
        match self {
            Self::Instance(l) => l.enabled(),
            Self::Cluster(c) => c.limit > 0,
        }
    }

    /// Counts one submission for each of the respondent's keys (`(quiz, kind, value)`), all or
    /// none. `Err(seconds)` says when to retry.
    pub async fn reserve(&self, quiz: &str, keys: &[(char, String)]) -> Result<Held, u64> {
        if keys.is_empty() || !self.enabled() {
            return Ok(Held::default());
        }
        match self {
            Self::Instance(l) => {
                let hashed: Vec<u64> = keys
                    .iter()
                    .map(|(kind, value)| l.key((quiz, *kind, value.as_str())))
                    .collect();
                l.reserve(&hashed).map(|local| Held {
                    local,
                    cluster: Vec::new(),
                })
            }
            Self::Cluster(c) => c.reserve(quiz, keys).await.map(|cluster| Held {
                local: Vec::new(),
                cluster,
            }),
        }
    }

    pub async fn release(&self, held: Held) {
        match self {
            Self::Instance(l) => l.release(&held.local),
            Self::Cluster(c) => c.release(&held.cluster).await,
        }
    }

    pub fn prune(&self) {
        if let Self::Instance(l) = self {
            l.prune();
        }
    }
}

/// The cluster-wide respondent limit (see the module docs); the intake quotas use the same
/// sliding log in streams of their own.
pub struct ClusterLimiter {
    js: async_nats::jetstream::Context,
    /// The stream, its subjects' prefix and what it counts.
    name: &'static str,
    prefix: &'static str,
    what: &'static str,
    limit: u32,
    window: Duration,
    replicas: usize,
    /// Keys the subject hash, so subjects reveal no phone or e-mail.
    secret: Vec<u8>,
    stream: tokio::sync::OnceCell<async_nats::jetstream::stream::Stream>,
}

/// The stream of [`ClusterLimiter`].
use quizflow_nats::subjects::{LIMITS_PREFIX, LIMITS_STREAM};

impl ClusterLimiter {
    pub fn new(
        js: async_nats::jetstream::Context,
        limit: u32,
        window: Duration,
        replicas: usize,
        secret: &[u8],
    ) -> Self {
        Self {
            js,
            name: LIMITS_STREAM,
            prefix: LIMITS_PREFIX,
            what: "respondent limits",
            limit,
            window,
            replicas,
            secret: secret.to_vec(),
            stream: tokio::sync::OnceCell::new(),
        }
    }

    /// A sliding log of `limit` per `window` in stream `name`, keyed by subjects under `prefix`.
    pub fn named(
        js: async_nats::jetstream::Context,
        (name, prefix, what): (&'static str, &'static str, &'static str),
        limit: u32,
        window: Duration,
        replicas: usize,
    ) -> Self {
        Self {
            name,
            prefix,
            what,
            ..Self::new(js, limit, window, replicas, &[])
        }
    }

    /// Counts one event under `key` (a subject token). `Err(seconds)` says when to retry.
    pub async fn take(&self, key: &str) -> Result<Vec<u64>, u64> {
        self.reserve_subjects(&[format!("{}.{key}", self.prefix)])
            .await
    }

    /// Gives back what [`ClusterLimiter::take`] counted.
    pub async fn give_back(&self, seqs: &[u64]) {
        self.release(seqs).await;
    }

    /// The subject of one respondent key: a keyed SHA-256, 128 bits in hex.
    pub fn subject(&self, quiz: &str, kind: char, value: &str) -> String {
        let hex = quizflow_core::signatures::digest_hex(
            &self.secret,
            &[quiz.as_bytes(), &[0, kind as u8, 0], value.as_bytes()],
        );
        format!("{LIMITS_PREFIX}.{hex}")
    }

    /// The stream, created (or brought to this limit and window) on first use. Every API
    /// instance must run with the same limit: the last one to start sets it.
    async fn stream(&self) -> Option<&async_nats::jetstream::stream::Stream> {
        use async_nats::jetstream::stream;
        self.stream
            .get_or_try_init(|| async {
                let cfg = stream::Config {
                    name: self.name.into(),
                    description: Some(format!("quizflow {}: one message per counted submission", self.what)),
                    subjects: vec![format!("{}.*", self.prefix)],
                    retention: stream::RetentionPolicy::Limits,
                    storage: stream::StorageType::Memory,
                    num_replicas: self.replicas,
                    max_age: self.window,
                    max_messages_per_subject: i64::from(self.limit),
                    discard: stream::DiscardPolicy::New,
                    discard_new_per_subject: true,
                    // `Retry-After` reads the oldest message of a subject directly.
                    allow_direct: true,
                    // Bounded: past it new respondents are let through uncounted (below).
                    max_bytes: 256 * 1024 * 1024,
                    ..Default::default()
                };
                self.js
                    .create_or_update_stream(cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                self.js
                    .get_stream(self.name)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| tracing::warn!(error = %e, stream = self.name, "limits stream unavailable; not limiting"))
            .ok()
    }

    async fn reserve(&self, quiz: &str, keys: &[(char, String)]) -> Result<Vec<u64>, u64> {
        let subjects: Vec<String> = keys
            .iter()
            .map(|(kind, value)| self.subject(quiz, *kind, value))
            .collect();
        self.reserve_subjects(&subjects).await
    }

    async fn reserve_subjects(&self, subjects: &[String]) -> Result<Vec<u64>, u64> {
        // Created on first use; without it (NATS away) submissions go through uncounted.
        if self.stream().await.is_none() {
            return Ok(Vec::new());
        }
        let mut taken = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let subject = subject.clone();
            let ack = match self.js.publish(subject.clone(), bytes::Bytes::new()).await {
                Ok(f) => f.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match ack {
                Ok(a) => taken.push(a.sequence),
                Err(e) if e.contains("maximum messages per subject") => {
                    self.release(&taken).await;
                    return Err(self.retry_after(&subject).await);
                }
                // Anything else (NATS away, the stream full): let the submission through
                // uncounted; the limit is abuse protection and must not fail intake.
                Err(e) => tracing::debug!(error = %e, stream = self.name, "limit not counted"),
            }
        }
        Ok(taken)
    }

    /// Seconds until the oldest counted submission of `subject` leaves the window.
    async fn retry_after(&self, subject: &str) -> u64 {
        let window = self.window.as_secs().max(1);
        let Some(stream) = self.stream().await else {
            return window;
        };
        match stream.direct_get_first_for_subject(subject).await {
            Ok(m) => {
                let age = (chrono::Utc::now() - m.time).num_milliseconds().max(0) as f64 / 1000.0;
                ((self.window.as_secs_f64() - age).ceil() as u64).clamp(1, window)
            }
            Err(_) => window,
        }
    }

    async fn release(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        let Some(stream) = self.stream().await else {
            return;
        };
        for &seq in seqs {
            if let Err(e) = stream.delete_message(seq).await {
                tracing::debug!(error = %e, "respondent limit not given back");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_limit_then_refuses_with_retry_after() {
        let l = WindowLimiter::new(3, Duration::from_secs(60));
        let k = l.key("a");
        for _ in 0..3 {
            assert!(l.reserve(&[k]).is_ok());
        }
        let retry = l.reserve(&[k]).expect_err("over the limit");
        assert!((1..=60).contains(&retry));
        assert!(
            l.reserve(&[l.key("b")]).is_ok(),
            "other keys are independent"
        );
    }

    #[test]
    fn released_reservations_do_not_count() {
        let l = WindowLimiter::new(1, Duration::from_secs(60));
        let k = l.key("a");
        let r = l.reserve(&[k]).expect("first");
        l.release(&r);
        assert!(l.reserve(&[k]).is_ok());
    }

    #[test]
    fn all_keys_or_none() {
        let l = WindowLimiter::new(1, Duration::from_secs(60));
        let (a, b) = (l.key("a"), l.key("b"));
        l.reserve(&[b]).expect("b once");
        assert!(l.reserve(&[a, b]).is_err());
        assert!(l.reserve(&[a]).is_ok(), "a was given back when b failed");
    }

    #[test]
    fn window_slides() {
        let l = WindowLimiter::new(2, Duration::from_millis(100));
        let k = l.key("a");
        l.reserve(&[k]).expect("1");
        l.reserve(&[k]).expect("2");
        assert!(l.reserve(&[k]).is_err());
        std::thread::sleep(Duration::from_millis(220));
        assert!(l.reserve(&[k]).is_ok());
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_cap() {
        let l = WindowLimiter::with_key_cap(5, Duration::from_secs(60), 100);
        for i in 0..100_000u64 {
            assert!(l.reserve(&[l.key(i)]).is_ok());
        }
        assert!(l.tracked() <= 100 * SHARDS, "tracked {}", l.tracked());
        // Keys tracked before the flood are still limited.
        let l = WindowLimiter::with_key_cap(2, Duration::from_secs(60), 10);
        let k = l.key("early");
        l.reserve(&[k]).expect("1");
        l.reserve(&[k]).expect("2");
        for i in 0..10_000u64 {
            let _ = l.reserve(&[l.key(i)]);
        }
        assert!(l.reserve(&[k]).is_err(), "the early key kept its count");
    }

    #[test]
    fn failures_are_counted_and_checked_without_reserving() {
        let l = WindowLimiter::new(3, Duration::from_secs(60));
        let k = l.key("1.2.3.4");
        assert!(!l.is_over(k));
        for _ in 0..3 {
            l.hit(k);
        }
        assert!(l.is_over(k));
        assert!(!l.is_over(l.key("5.6.7.8")));
    }

    #[test]
    fn zero_disables() {
        let l = WindowLimiter::new(0, Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(l.reserve(&[l.key("a")]).is_ok());
        }
    }
}
