//! The batcher's Prometheus metrics. Labels are outcomes only: never ids or personal data.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct BatcherMetrics {
    /// Batches by outcome: `stored`, `retried` (naked for an outage), `isolated` (split).
    pub batches: IntCounterVec,
    pub batch_size: Histogram,
    pub flush_seconds: Histogram,
    /// New submissions stored (the rate is rows per second).
    pub stored: IntCounter,
    /// Messages redelivered whose submission was already stored.
    pub already_stored: IntCounter,
    /// Matches not sent because the contact is suppressed (written `suppressed`).
    pub suppressed: IntCounter,
    pub jobs_per_batch: Histogram,
    pub jobs_published: IntCounter,
    /// Submissions moved to DEAD_LETTERS, by class (`poison`, `unstorable`).
    pub dead_letters: IntCounterVec,
}

impl BatcherMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let sizes = vec![
            1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
        ];
        Ok(Self {
            batches: IntCounterVec::new(
                Opts::new("quizflow_batcher_batches_total", "Batches by outcome"),
                &["outcome"],
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("quizflow_batcher_batch_size", "Messages per batch")
                    .buckets(sizes.clone()),
            )?,
            flush_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "quizflow_batcher_flush_duration_seconds",
                    "Store, match, publish and ack of one batch",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            stored: IntCounter::new(
                "quizflow_batcher_submissions_stored_total",
                "New submissions stored in PostgreSQL",
            )?,
            already_stored: IntCounter::new(
                "quizflow_batcher_submissions_already_stored_total",
                "Redelivered submissions that were already stored",
            )?,
            suppressed: IntCounter::new(
                "quizflow_batcher_suppressed_total",
                "Matches whose contact is on the suppression list: written suppressed, never sent",
            )?,
            jobs_per_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "quizflow_batcher_matches_per_batch",
                    "Delivery jobs a batch produced (campaign matches)",
                )
                .buckets(vec![
                    0.0, 1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0,
                ]),
            )?,
            jobs_published: IntCounter::new(
                "quizflow_batcher_jobs_published_total",
                "Delivery jobs published to DELIVERIES",
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "quizflow_batcher_dead_letters_total",
                    "Submissions moved to DEAD_LETTERS",
                ),
                &["class"],
            )?,
        })
    }

    /// Registers every collector in `registry` (a role's own, or the one `up` shares).
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.batches.clone()))?;
        registry.register(Box::new(self.batch_size.clone()))?;
        registry.register(Box::new(self.flush_seconds.clone()))?;
        registry.register(Box::new(self.stored.clone()))?;
        registry.register(Box::new(self.already_stored.clone()))?;
        registry.register(Box::new(self.suppressed.clone()))?;
        registry.register(Box::new(self.jobs_per_batch.clone()))?;
        registry.register(Box::new(self.jobs_published.clone()))?;
        registry.register(Box::new(self.dead_letters.clone()))?;
        Ok(())
    }
}
