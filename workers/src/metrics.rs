//! The workers' Prometheus metrics. Labels are channels, outcome classes and providers: never
//! recipients, ids or message text.

use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct WorkerMetrics {
    /// Provider calls by channel and outcome class (`sent`, `throttled`, `transient`,
    /// `uncertain`, `permanent`).
    pub deliveries: IntCounterVec,
    pub provider_seconds: HistogramVec,
    /// Attempts that will be tried again (failed, throttled, released).
    pub retries: IntCounterVec,
    /// Jobs dead-lettered, by channel and class (`permanent`, `exhausted`, `poison`,
    /// `max_deliveries`).
    pub dead_letters: IntCounterVec,
    /// 0 closed, 1 open (or paused for a throttle), 2 half-open (probing).
    pub circuit: IntGaugeVec,
    pub limiter_wait_seconds: HistogramVec,
    /// What sent messages cost, in the configured currency.
    pub cost: CounterVec,
    /// This process's share of its channel's rate limit (messages per second).
    pub rate_share: GaugeVec,
    /// Live workers processes serving the channel, as this one sees them.
    pub members: IntGaugeVec,
    /// Scheduled messages fired, by outcome (`published`, `cancelled`).
    pub scheduled: IntCounterVec,
    /// How late a scheduled message was published after its due time.
    pub schedule_lateness: prometheus::Histogram,
    /// Jobs ended without a call by a rule of contract §3.2, by channel and status
    /// (`suppressed`: an opt-out heard after the match; `capped`: a frequency cap).
    pub skipped: IntCounterVec,
    /// Contacts put on the suppression list by a provider's answer, by channel and reason.
    pub suppressed: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn seconds(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

/// What contract §3.2 stopped: jobs ended without a call, contacts a provider's answer put on
/// the suppression list.
fn consent_counters() -> Result<(IntCounterVec, IntCounterVec), prometheus::Error> {
    Ok((
        counter(
            "quizflow_worker_skipped_total",
            "Jobs ended without a provider call: suppressed, over a frequency cap, or empty",
            &["channel", "status"],
        )?,
        counter(
            "quizflow_worker_suppressions_total",
            "Contacts suppressed because of a provider's answer (opt-out, hard bounce)",
            &["channel", "reason"],
        )?,
    ))
}

impl WorkerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        const CALL: &[f64] = &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        const WAIT: &[f64] = &[
            0.0001, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        const LATE: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];
        let (skipped, suppressed) = consent_counters()?;
        Ok(Self {
            skipped,
            suppressed,
            deliveries: counter(
                "quizflow_deliveries_total",
                "Provider calls by channel and outcome class",
                &["channel", "outcome"],
            )?,
            provider_seconds: HistogramVec::new(
                seconds(
                    "quizflow_provider_request_duration_seconds",
                    "Provider call duration",
                    CALL,
                ),
                &["channel"],
            )?,
            retries: counter(
                "quizflow_delivery_retries_total",
                "Delivery attempts scheduled again (failed or throttled)",
                &["channel", "reason"],
            )?,
            dead_letters: counter(
                "quizflow_worker_dead_letters_total",
                "Delivery jobs moved to DEAD_LETTERS",
                &["channel", "class"],
            )?,
            circuit: gauge(
                "quizflow_circuit_breaker_state",
                "Provider circuit per sender: 0 closed, 1 open, 2 half-open",
                &["channel", "provider", "sender"],
            )?,
            limiter_wait_seconds: HistogramVec::new(
                seconds(
                    "quizflow_rate_limiter_wait_seconds",
                    "Time a job waited for its channel's token bucket",
                    WAIT,
                ),
                &["channel"],
            )?,
            cost: CounterVec::new(
                Opts::new(
                    "quizflow_delivery_cost_total",
                    "What sent messages cost (unit price per channel)",
                ),
                &["channel", "currency"],
            )?,
            rate_share: GaugeVec::new(
                Opts::new(
                    "quizflow_worker_rate_share",
                    "This process's share of a sender's rate limit, msg/s",
                ),
                &["channel", "sender"],
            )?,
            members: gauge(
                "quizflow_worker_members",
                "Live workers processes serving the channel (they split its limits)",
                &["channel"],
            )?,
            scheduled: counter(
                "quizflow_scheduled_messages_total",
                "Scheduled messages fired, by outcome (published or cancelled)",
                &["outcome"],
            )?,
            schedule_lateness: prometheus::Histogram::with_opts(seconds(
                "quizflow_schedule_lateness_seconds",
                "How long after its due time a scheduled message was published",
                LATE,
            ))?,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.deliveries.clone()))?;
        registry.register(Box::new(self.skipped.clone()))?;
        registry.register(Box::new(self.suppressed.clone()))?;
        registry.register(Box::new(self.provider_seconds.clone()))?;
        registry.register(Box::new(self.retries.clone()))?;
        registry.register(Box::new(self.dead_letters.clone()))?;
        registry.register(Box::new(self.circuit.clone()))?;
        registry.register(Box::new(self.limiter_wait_seconds.clone()))?;
        registry.register(Box::new(self.cost.clone()))?;
        registry.register(Box::new(self.rate_share.clone()))?;
        registry.register(Box::new(self.members.clone()))?;
        registry.register(Box::new(self.scheduled.clone()))?;
        registry.register(Box::new(self.schedule_lateness.clone()))?;
        Ok(())
    }
}
