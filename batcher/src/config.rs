//! Settings of the batcher role.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BatcherSettings {
    /// `QUIZFLOW_BATCH_MAX`: flush at this many messages.
    pub batch_max: usize,
    /// `QUIZFLOW_BATCH_WAIT_MS`: flush this long after the batch's *first* message.
    pub batch_wait: Duration,
    /// Monthly partitions of `submissions` older than this many months are dropped.
    pub retention_months: u32,
    /// Safety net behind the change notifications: reload campaigns this often anyway.
    pub campaign_refresh: Duration,
    /// `QUIZFLOW_HASH_KEY`: contacts are checked against the suppression list by their hash.
    pub hash_key: quizflow_core::consent::HashKey,
    /// `QUIZFLOW_PROVIDER_RATE_PER_SEC`: how fast a burst deferred to a send window's opening
    /// is spread.
    pub spread_per_second: u32,
}

impl Default for BatcherSettings {
    fn default() -> Self {
        Self {
            batch_max: 1000,
            batch_wait: Duration::from_millis(100),
            retention_months: 12,
            campaign_refresh: Duration::from_secs(60),
            hash_key: quizflow_core::consent::HashKey::for_tests(),
            spread_per_second: 50,
        }
    }
}

/// The batcher's section of the configuration (`QUIZFLOW_BATCH_MAX`, `QUIZFLOW_BATCH_WAIT_MS`,
/// `QUIZFLOW_SUBMISSIONS_RETENTION_MONTHS`, `QUIZFLOW_BATCHER_ACK_WAIT`): its keys and
/// defaults written here once, checked by [`BatcherConfig::validate`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BatcherConfig {
    pub batch_max: usize,
    pub batch_wait_ms: u64,
    pub submissions_retention_months: u32,
    /// How long a batcher may hold a message before JetStream redelivers it.
    pub batcher_ack_wait: quizflow_core::settings::HumanDuration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        let s = BatcherSettings::default();
        Self {
            batch_max: s.batch_max,
            batch_wait_ms: s.batch_wait.as_millis() as u64,
            submissions_retention_months: s.retention_months,
            batcher_ack_wait: quizflow_core::settings::HumanDuration(Duration::from_secs(60)),
        }
    }
}

impl BatcherConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.batch_max) || self.batch_wait_ms == 0 {
            return Err("batch_max must be 1 to 10000 and batch_wait_ms positive".into());
        }
        Ok(())
    }

    pub fn settings(&self) -> BatcherSettings {
        BatcherSettings {
            batch_max: self.batch_max,
            batch_wait: Duration::from_millis(self.batch_wait_ms),
            retention_months: self.submissions_retention_months,
            ..Default::default()
        }
    }
}
