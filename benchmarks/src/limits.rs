//! `quizflow bench limits`: do a channel's provider limits hold for the sum of all workers
//! processes? With a backlog of SMS jobs and the provider a sink, the harness runs 1, 2 and 4
//! workers processes in turn and counts what reaches the sink per second; then it kills one
//! with -9 and times how long the survivors take to reach the limit again.
//!
//! This module holds the arguments, the arithmetic over arrival times and the report; the
//! processes are started by the `quizflow` binary.

use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    /// The channel's rate limit (`QUIZFLOW_PROVIDER_RATE_PER_SEC`), a cluster-wide total.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// The channel's concurrency cap (`QUIZFLOW_WORKER_CONCURRENCY`), a cluster-wide total.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Workers process counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub processes: Vec<usize>,
    /// Seconds measured per process count (after a settling spell of 4 s).
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    /// The sink's answer time in milliseconds (a provider's latency): with it the
    /// concurrency cap, not the rate, can be what binds.
    #[arg(long, default_value_t = 0)]
    pub sink_latency_ms: u64,
    /// Report directory (`limits-report.json`, `limits-report.md`).
    #[arg(long, default_value = "bench-out")]
    pub out: std::path::PathBuf,
}

/// One process count's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub processes: usize,
    pub sent_per_s: f64,
    /// `sent_per_s` over the limit (≤ 1.10 holds the limit; ≥ 0.80 uses it).
    pub of_limit: f64,
    /// The most calls the sink had in flight at once during the window.
    pub max_inflight: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsReport {
    pub rate_limit: u32,
    pub concurrency: usize,
    pub sink_latency_ms: u64,
    pub phases: Vec<Phase>,
    /// After a kill -9 of one of the processes: seconds until the survivors' rate, over a
    /// sliding second, is back to 90 % of the limit (`None`: not within the watch).
    pub recovery_s: Option<f64>,
    /// The survivors' rate in the second after the kill, before their shares grew.
    pub after_kill_per_s: f64,
    pub duplicates: u64,
}

/// Arrivals per second within `[from, from + len)`.
pub fn rate_in(arrivals: &[Instant], from: Instant, len: Duration) -> f64 {
    let to = from + len;
    let n = arrivals.iter().filter(|t| **t >= from && **t < to).count();
    n as f64 / len.as_secs_f64().max(1e-9)
}

/// The first moment after `from` at which the rate over the preceding `span` reaches
/// `target` per second, as seconds after `from` (stepping by 100 ms up to `within`).
pub fn recovered_after(
    arrivals: &[Instant],
    from: Instant,
    span: Duration,
    target: f64,
    within: Duration,
) -> Option<f64> {
    let step = Duration::from_millis(100);
    let mut t = from + span;
    while t <= from + within {
        if rate_in(arrivals, t - span, span) >= target {
            return Some((t - from).as_secs_f64());
        }
        t += step;
    }
    None
}

impl LimitsReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "## Provider limits across workers processes\n\nLimit: {} msg/s and {} calls in flight for the channel, cluster-wide; sink latency {} ms.\n\n| workers processes | sent/s | of the limit | most calls in flight |\n|---|---|---|---|\n",
            self.rate_limit, self.concurrency, self.sink_latency_ms
        );
        for p in &self.phases {
            s.push_str(&format!(
                "| {} | {:.1} | {:.0} % | {} |\n",
                p.processes,
                p.sent_per_s,
                p.of_limit * 100.0,
                p.max_inflight
            ));
        }
        s.push_str(&format!(
            "\nKill -9 of one process: the survivors sent {:.1}/s in the next second; back to 90 % of the limit after {}. Duplicates at the sink: {}.\n",
            self.after_kill_per_s,
            self.recovery_s
                .map_or("(not within the watch)".to_owned(), |r| format!("{r:.1} s")),
            self.duplicates
        ));
        s
    }

    pub fn write(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("limits-report.json"),
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(dir.join("limits-report.md"), self.markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_arrivals_inside_the_window_only() {
        let t0 = Instant::now();
        let arrivals: Vec<Instant> = (0..100)
            .map(|i| t0 + Duration::from_millis(i * 20))
            .collect();
        // 50/s for two seconds.
        assert_eq!(rate_in(&arrivals, t0, Duration::from_secs(1)), 50.0);
        assert_eq!(
            rate_in(
                &arrivals,
                t0 + Duration::from_secs(1),
                Duration::from_secs(1)
            ),
            50.0
        );
        assert_eq!(
            rate_in(
                &arrivals,
                t0 + Duration::from_secs(2),
                Duration::from_secs(1)
            ),
            0.0
        );
    }

    #[test]
    fn recovery_is_the_first_window_at_the_target() {
        let t0 = Instant::now();
        // 10/s for 3 s, then 50/s.
        let mut arrivals: Vec<Instant> = (0..30)
            .map(|i| t0 + Duration::from_millis(i * 100))
            .collect();
        arrivals
            .extend((0..150).map(|i| t0 + Duration::from_secs(3) + Duration::from_millis(i * 20)));
        let r = recovered_after(
            &arrivals,
            t0,
            Duration::from_secs(1),
            45.0,
            Duration::from_secs(10),
        )
        .expect("recovers");
        assert!((3.8..=4.1).contains(&r), "{r}");
        assert_eq!(
            recovered_after(
                &arrivals,
                t0,
                Duration::from_secs(1),
                500.0,
                Duration::from_secs(10)
            ),
            None
        );
    }
}
