//! Prometheus metrics of the API. Labels are routes, statuses and codes: never personal data.

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub accepted: IntCounter,
    /// New leads by quiz: only quizzes some campaign names, the rest `other` (bounded labels).
    pub intake_leads: IntCounterVec,
    pub duplicates: IntCounter,
    pub rejected: IntCounterVec,
    pub publish_seconds: prometheus::Histogram,
    pub audit_write_failures: IntCounter,
    pub callbacks: IntCounterVec,
    /// Contacts put on the suppression list, by channel and reason.
    pub suppressions: IntCounterVec,
    /// Inbound replies by channel and what they were (`opt_out`, `opt_in`, `other`).
    pub inbound: IntCounterVec,
    /// 1 when the last readiness check reached the dependency (`nats`, `postgres`).
    pub dependency_up: prometheus::IntGaugeVec,
}

fn counters(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

impl Metrics {
    /// The API's metrics, registered in `registry` (its own, or the one `up` shares).
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        const HTTP: &[f64] = &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        const PUBLISH: &[f64] = &[
            0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
        ];
        let r = |c: Box<dyn Collector>| registry.register(c);
        let m = Self {
            requests: counters("quizflow_api_requests_total", "HTTP requests by route and status", &["route", "status"])?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new("quizflow_api_request_duration_seconds", "HTTP request duration")
                    .buckets(HTTP.to_vec()),
                &["route", "status"],
            )?,
            accepted: IntCounter::new(
                "quizflow_submissions_accepted_total",
                "Submissions acknowledged by JetStream (new)",
            )?,
            intake_leads: counters(
                "quizflow_intake_leads_total",
                "New leads accepted, by quiz (quizzes no campaign names are `other`)",
                &["quiz"],
            )?,
            duplicates: IntCounter::new(
                "quizflow_submissions_duplicate_total",
                "Submissions JetStream reported as duplicates",
            )?,
            rejected: counters(
                "quizflow_submissions_rejected_total",
                "Submissions answered with an error, by code",
                &["code"],
            )?,
            publish_seconds: prometheus::Histogram::with_opts(
                HistogramOpts::new("quizflow_jetstream_publish_duration_seconds", "Publish to PubAck")
                    .buckets(PUBLISH.to_vec()),
            )?,
            audit_write_failures: IntCounter::new(
                "quizflow_audit_write_failures_total",
                "Admin actions whose audit entry could not be written",
            )?,
            callbacks: counters(
                "quizflow_callbacks_total",
                "Provider status reports by provider and outcome (delivered, failed, progress, stale, unknown, rejected)",
                &["provider", "outcome"],
            )?,
            suppressions: counters(
                "quizflow_suppressions_total",
                "Contacts suppressed (or suppressed again) by channel and reason",
                &["channel", "reason"],
            )?,
            inbound: counters(
                "quizflow_inbound_messages_total",
                "Inbound replies by channel and kind (opt_out, opt_in, other)",
                &["channel", "kind"],
            )?,
            dependency_up: prometheus::IntGaugeVec::new(
                Opts::new(
                    "quizflow_dependency_up",
                    "1 when the API's last readiness check reached the dependency",
                ),
                &["dependency"],
            )?,
        };
        r(Box::new(m.requests.clone()))?;
        r(Box::new(m.request_seconds.clone()))?;
        r(Box::new(m.accepted.clone()))?;
        r(Box::new(m.intake_leads.clone()))?;
        r(Box::new(m.duplicates.clone()))?;
        r(Box::new(m.rejected.clone()))?;
        r(Box::new(m.publish_seconds.clone()))?;
        r(Box::new(m.audit_write_failures.clone()))?;
        r(Box::new(m.callbacks.clone()))?;
        r(Box::new(m.dependency_up.clone()))?;
        r(Box::new(m.suppressions.clone()))?;
        r(Box::new(m.inbound.clone()))?;
        Ok(m)
    }

    /// This process's cumulative duplicate and rejection counts, keyed as the database
    /// counters are (`metric`, `status`): what the stats flusher adds up cluster-wide.
    pub fn process_counts(&self) -> std::collections::BTreeMap<(&'static str, String), u64> {
        let mut out = std::collections::BTreeMap::new();
        out.insert(
            ("submissions_duplicate", String::new()),
            self.duplicates.get(),
        );
        out.insert(("submissions_accepted", String::new()), self.accepted.get());
        for m in self.rejected.collect() {
            for metric in m.get_metric() {
                let code = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "code")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                out.insert(
                    ("submissions_rejected", code),
                    metric.get_counter().get_value() as u64,
                );
            }
        }
        out
    }
}
