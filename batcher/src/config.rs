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
}

impl Default for BatcherSettings {
    fn default() -> Self {
        Self {
            batch_max: 1000,
            batch_wait: Duration::from_millis(100),
            retention_months: 12,
            campaign_refresh: Duration::from_secs(60),
        }
    }
}
