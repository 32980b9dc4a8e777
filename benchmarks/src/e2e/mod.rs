//! `quizflow bench e2e`: the whole pipeline measured from outside, beside the machine's
//! ceiling, in one run.
//!
//! The driver posts realistic submissions (closed or open loop); half of them (by default)
//! match one SMS campaign whose message names the submission. The workers deliver to a
//! Twilio-shaped [`Sink`] the harness runs, which counts distinct and duplicate messages; the
//! end-to-end latency is from each 202 to the sink's receipt. The same driver against
//! [`NullTarget`] (202 at once, SMS straight from memory) gives the ceiling reported beside
//! every result. The caller starts the deployment (`quizflow` does: private NATS and
//! PostgreSQL, api, batcher and workers as processes of their own) and hands it over as a
//! [`Deployment`].

mod campaigns;
mod charts;
mod driver;
mod plan;
pub(crate) mod procs;
mod report;
mod run;
pub(crate) mod sink;

pub use driver::{batch_body, due, Load, Pacing, Sent};
pub use plan::{parse_rate, plan, Plan, RoleCost};
pub use procs::Usage;
pub use sink::{NullTarget, Sink, BODY_PREFIX};

use campaigns::create_campaign;
#[cfg(test)]
use campaigns::idle_campaign;
use run::run_once;

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// 100,000 completions a minute for 2 minutes (open loop).
    EventPeak,
    /// As fast as 256 requests in flight allow, 100,000 submissions (closed loop).
    Max,
    /// 500/s for 30 minutes (open loop).
    Soak,
}

#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    /// A preset (its values give way to explicit flags).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Submissions in the measured phase.
    #[arg(long)]
    pub submissions: Option<usize>,
    /// Open loop at this rate (`1667/s`, `100000/min`); without it, closed loop.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Requests in flight in closed loop.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Submissions per request through `POST /v1/submissions/batch` (0: one per request to
    /// `POST /v1/quizzes/{quiz}/submissions`).
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Submissions sent (and delivered) before measuring: the campaign is loaded and every
    /// connection warm.
    #[arg(long, default_value_t = 2_000)]
    pub warmup: usize,
    /// Share of submissions the SMS campaign matches.
    #[arg(long, default_value_t = 0.5)]
    pub match_share: f64,
    /// Active campaigns in all: the SMS campaign and `N - 1` that match nothing (quiz-scoped
    /// and global, with predicates the matcher must evaluate), to load the matcher.
    #[arg(long, default_value_t = 1)]
    pub campaigns: usize,
    /// Quizzes the submissions spread over.
    #[arg(long, default_value_t = 20)]
    pub quizzes: usize,
    /// `null`: only the do-nothing target (the ceiling). Without it, the pipeline is started.
    #[arg(long)]
    pub target: Option<String>,
    /// fsync policy of the private nats-server.
    #[arg(long, value_enum, default_value_t = crate::Fsync::Always)]
    pub fsync: crate::Fsync,
    /// Skip the ceiling run.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Count every lead against the respondent limit (set high enough never to refuse one),
    /// `instance` or `cluster` (`QUIZFLOW_RATE_LIMIT_SCOPE`), to measure what the limit
    /// costs. Without it the limit is off.
    #[arg(long)]
    pub respondent_limit: Option<String>,
    /// Contacts on the SMS suppression list before the run (none of them a lead's): what the
    /// consent checks cost with a long opt-out history.
    #[arg(long, default_value_t = 0)]
    pub suppressed: usize,
    /// `QUIZFLOW_FREQUENCY_CAP_SMS` of the workers (`1000/24h`: counted, never reached).
    #[arg(long)]
    pub frequency_cap: Option<String>,
    /// Longest wait for the last delivery after the last request.
    #[arg(long, default_value = "300s")]
    pub drain_timeout: humantime::Duration,
    /// Also print what this rate needs (`100000/min`), from the CPU measured per lead.
    #[arg(long, value_parser = parse_rate)]
    pub plan: Option<f64>,
    /// After the run, run a plan that fits this machine (70 % of its cores, by the CPU per
    /// lead just measured) open loop, and report how far the plan's CPU was off.
    #[arg(long)]
    pub verify_plan: bool,
    /// With --plan: plan from this earlier `bench-report.json` instead of running.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where the report, summary and charts go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

impl E2eArgs {
    /// (submissions, pacing) after the preset.
    pub fn shape(&self) -> (usize, Pacing) {
        let (n, rate) = match self.preset {
            Some(Preset::EventPeak) => (200_000, Some(100_000.0 / 60.0)),
            Some(Preset::Soak) => (900_000, Some(500.0)),
            Some(Preset::Max) | None => (100_000, None),
        };
        let n = self.submissions.unwrap_or(n);
        let pacing = match self.rate.or(if self.preset == Some(Preset::Max) {
            None
        } else {
            rate
        }) {
            Some(rate) => Pacing::Open { rate },
            None => Pacing::Closed {
                concurrency: self.concurrency,
            },
        };
        (n, pacing)
    }
}

/// A running quizflow pipeline, started by the caller.
pub struct Deployment {
    pub api: String,
    pub admin_token: String,
    pub database_url: String,
    /// Processes to account CPU and memory to, by role.
    pub processes: Vec<(String, u32)>,
}

impl Deployment {
    /// The same deployment without its processes (what the sampler needs).
    fn without_processes(&self) -> Deployment {
        Deployment {
            api: self.api.clone(),
            admin_token: self.admin_token.clone(),
            database_url: self.database_url.clone(),
            processes: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("store: {0}")]
    Store(#[from] quizflow_store::StoreError),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t_s: f64,
    pub accepted: u64,
    pub stored: u64,
    /// SMS jobs created (ledger rows, any status).
    pub enqueued: u64,
    pub delivered: u64,
    pub queued: u64,
}

/// (stored submissions, SMS ledger rows of any status, SMS rows still queued) from stats.
fn counts(s: &serde_json::Value) -> (u64, u64, u64) {
    let sms = &s["deliveries"]["sms"];
    (
        s["submissions"]["stored"].as_u64().unwrap_or(0),
        sms.as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0),
        sms["queued"].as_u64().unwrap_or(0),
    )
}

/// One run of the driver against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub target: String,
    pub submissions: usize,
    pub accepted: u64,
    pub accepted_per_s: f64,
    pub expected_messages: u64,
    pub delivered_messages: u64,
    pub delivered_per_s: f64,
    pub stored_per_s: Option<f64>,
    pub enqueued_per_s: Option<f64>,
    pub http_p50_ms: f64,
    pub http_p95_ms: f64,
    pub http_p99_ms: f64,
    pub http_max_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
    pub lost_submissions: u64,
    pub lost_messages: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub cpu_s: BTreeMap<String, f64>,
    pub peak_pss_mb: BTreeMap<String, f64>,
    pub series: Vec<Point>,
    /// HTTP p50 / p99 per second of the run (by due time), for the latency chart.
    pub latency_series: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    pub pacing: Pacing,
    /// Submissions per request (0: the single endpoint).
    pub batch: usize,
    pub fsync: crate::Fsync,
    pub submissions: usize,
    pub match_share: f64,
    pub campaigns: usize,
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    pub http_p50_ms: f64,
    pub http_p99_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub ceiling_accepted_per_s: Option<f64>,
    pub ceiling_delivered_per_s: Option<f64>,
    pub cpu_s: BTreeMap<String, f64>,
    /// CPU milliseconds per accepted lead, by process.
    pub cpu_ms_per_lead: BTreeMap<String, f64>,
    pub quizflow: Option<RunResult>,
    pub ceiling: Option<RunResult>,
    pub verify_plan: Option<Verification>,
}

/// A plan run for real: predicted CPU (cost per lead × leads) beside what was spent.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub rate_per_s: f64,
    pub achieved_accepted_per_s: f64,
    pub achieved_delivered_per_s: f64,
    pub e2e_p99_ms: f64,
    pub lines: Vec<VerifyLine>,
    pub total_error_pct: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VerifyLine {
    pub role: String,
    pub predicted_cpu_s: f64,
    pub measured_cpu_s: f64,
    pub error_pct: f64,
}

/// The rate a plan fits on `cores` at `utilization`, and never above `ceiling_per_s` (CPU is
/// not the only bound: fsync latency is another).
pub fn fitting_rate(costs: &[RoleCost], cores: f64, utilization: f64, ceiling_per_s: f64) -> f64 {
    let per_lead: f64 = costs.iter().map(|c| c.cpu_s_per_lead).sum();
    if per_lead <= 0.0 {
        return ceiling_per_s;
    }
    (cores * utilization / per_lead).min(ceiling_per_s).max(1.0)
}

/// Predicted against measured CPU, per role.
pub fn verify(
    costs: &[RoleCost],
    leads: u64,
    measured: &BTreeMap<String, f64>,
) -> (Vec<VerifyLine>, f64) {
    let lines: Vec<VerifyLine> = costs
        .iter()
        .map(|c| {
            let predicted = c.cpu_s_per_lead * leads as f64;
            let got = measured.get(&c.role).copied().unwrap_or(0.0);
            VerifyLine {
                role: c.role.clone(),
                predicted_cpu_s: predicted,
                measured_cpu_s: got,
                error_pct: if predicted > 0.0 {
                    100.0 * (got - predicted) / predicted
                } else {
                    0.0
                },
            }
        })
        .collect();
    let p: f64 = lines.iter().map(|l| l.predicted_cpu_s).sum();
    let m: f64 = lines.iter().map(|l| l.measured_cpu_s).sum();
    (lines, if p > 0.0 { 100.0 * (m - p) / p } else { 0.0 })
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to ten minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| unreachable!("static histogram bounds are valid"))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

/// What the sink and the database say of one run's submissions.
#[derive(Debug, Default, PartialEq)]
pub struct Accounting {
    pub expected_messages: u64,
    pub delivered_messages: u64,
    pub lost_messages: u64,
    pub duplicates: u64,
    pub lost_submissions: u64,
}

/// Every accepted submission must be stored once (`stored` holds the accepted ids found
/// stored; None when the target stores nothing), and every accepted, matching one must have
/// exactly one message (`received`: copies per submission at the sink).
pub fn account(
    ids: &[Uuid],
    matches: &[bool],
    accepted: &[bool],
    stored: Option<&HashSet<Uuid>>,
    received: &HashMap<Uuid, usize>,
) -> Accounting {
    let mut a = Accounting::default();
    for i in 0..ids.len() {
        let copies = received.get(&ids[i]).copied().unwrap_or(0);
        a.duplicates += copies.saturating_sub(1) as u64;
        if !accepted[i] {
            continue;
        }
        if stored.is_some_and(|s| !s.contains(&ids[i])) {
            a.lost_submissions += 1;
        }
        if matches[i] {
            a.expected_messages += 1;
            if copies == 0 {
                a.lost_messages += 1;
            } else {
                a.delivered_messages += 1;
            }
        }
    }
    a
}

fn progress_bar() -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ({percent}%) eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `--verify-plan`: a run at the rate the plan says fits the cores, and how far each role's
/// CPU came from the plan's.
async fn check_plan(
    args: &E2eArgs,
    d: &Deployment,
    q: &RunResult,
    costs: &[RoleCost],
    sink: &Sink,
    bar: &indicatif::ProgressBar,
) -> Result<Verification, E2eError> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let rate = fitting_rate(costs, cores, 0.7, 0.8 * q.accepted_per_s);
    let leads = ((rate * 20.0) as usize).max(2_000);
    let t = run::Target {
        name: "plan check",
        base: &d.api,
        deployment: Some(d),
        sink,
    };
    let r = run_once(t, args, leads, Pacing::Open { rate }, bar).await?;
    let (lines, total_error_pct) = verify(costs, r.accepted, &r.cpu_s);
    Ok(Verification {
        rate_per_s: rate,
        achieved_accepted_per_s: r.accepted_per_s,
        achieved_delivered_per_s: r.delivered_per_s,
        e2e_p99_ms: r.e2e_p99_ms,
        lines,
        total_error_pct,
    })
}

/// The same load against the null target: the machine's ceiling.
async fn run_ceiling(
    args: &E2eArgs,
    sink: &Sink,
    bar: &indicatif::ProgressBar,
) -> Result<RunResult, E2eError> {
    let (n, pacing) = args.shape();
    let null = NullTarget::start(sink, 64).await?;
    let t = run::Target {
        name: "ceiling (null target)",
        base: &null.url,
        deployment: None,
        sink,
    };
    run_once(t, args, n, pacing, bar).await
}

/// The load against the deployment, its campaigns created first.
async fn run_quizflow(
    args: &E2eArgs,
    d: &Deployment,
    sink: &Sink,
    bar: &indicatif::ProgressBar,
) -> Result<RunResult, E2eError> {
    let (n, pacing) = args.shape();
    create_campaign(&reqwest::Client::new(), d, args).await?;
    let t = run::Target {
        name: "quizflow",
        base: &d.api,
        deployment: Some(d),
        sink,
    };
    run_once(t, args, n, pacing, bar).await
}

/// Runs the ceiling (unless `--no-ceiling`) and then `deployment` (None with `--target null`).
pub async fn run_e2e(
    args: &E2eArgs,
    deployment: Option<&Deployment>,
    sink: &Sink,
) -> Result<E2eReport, E2eError> {
    let (n, pacing) = args.shape();
    let bar = progress_bar();
    let ceiling = if deployment.is_none() || !args.no_ceiling {
        Some(run_ceiling(args, sink, &bar).await?)
    } else {
        None
    };
    let quizflow = match deployment {
        Some(d) => Some(run_quizflow(args, d, sink, &bar).await?),
        None => None,
    };
    let cpu_s = quizflow
        .as_ref()
        .map(|q| q.cpu_s.clone())
        .unwrap_or_default();
    let accepted = quizflow.as_ref().map(|q| q.accepted).unwrap_or(0).max(1) as f64;
    let cpu_ms_per_lead: BTreeMap<String, f64> = cpu_s
        .iter()
        .map(|(k, v)| (k.clone(), v * 1000.0 / accepted))
        .collect();
    let costs: Vec<RoleCost> = cpu_ms_per_lead
        .iter()
        .map(|(role, ms)| RoleCost {
            role: role.clone(),
            cpu_s_per_lead: ms / 1000.0,
        })
        .collect();
    let verify_plan = match (deployment, &quizflow) {
        (Some(d), Some(q)) if args.verify_plan => {
            Some(check_plan(args, d, q, &costs, sink, &bar).await?)
        }
        _ => None,
    };
    bar.finish_and_clear();
    let main = quizflow.as_ref().or(ceiling.as_ref());
    let pick = |f: fn(&RunResult) -> f64| main.map(f).unwrap_or(0.0);
    Ok(E2eReport {
        pacing,
        batch: args.batch,
        fsync: args.fsync,
        submissions: n,
        match_share: args.match_share,
        campaigns: args.campaigns.max(1),
        accepted_per_s: pick(|r| r.accepted_per_s),
        delivered_per_s: pick(|r| r.delivered_per_s),
        http_p50_ms: pick(|r| r.http_p50_ms),
        http_p99_ms: pick(|r| r.http_p99_ms),
        e2e_p50_ms: pick(|r| r.e2e_p50_ms),
        e2e_p99_ms: pick(|r| r.e2e_p99_ms),
        lost: main
            .map(|r| r.lost_messages + r.lost_submissions)
            .unwrap_or(0),
        duplicates: main.map(|r| r.duplicates).unwrap_or(0),
        errors: main.map(|r| r.errors).unwrap_or(0),
        ceiling_accepted_per_s: ceiling.as_ref().map(|c| c.accepted_per_s),
        ceiling_delivered_per_s: ceiling.as_ref().map(|c| c.delivered_per_s),
        cpu_ms_per_lead,
        cpu_s,
        quizflow,
        ceiling,
        verify_plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn accounting_counts_lost_submissions_lost_messages_and_duplicates() {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let matches = [true, true, false, true, true];
        // The last one was refused (503): nothing is expected of it.
        let accepted = [true, true, true, true, false];
        let stored: HashSet<Uuid> = [ids[0], ids[1], ids[3]].into_iter().collect();
        let received: HashMap<Uuid, usize> = [(ids[0], 1), (ids[1], 3)].into_iter().collect();
        let a = account(&ids, &matches, &accepted, Some(&stored), &received);
        assert_eq!(
            a,
            Accounting {
                expected_messages: 3,
                delivered_messages: 2,
                lost_messages: 1,    // ids[3]
                duplicates: 2,       // ids[1] arrived three times
                lost_submissions: 1, // ids[2] accepted, never stored
            }
        );
        // A target that stores nothing is not charged for storage.
        let b = account(&ids, &matches, &accepted, None, &received);
        assert_eq!(b.lost_submissions, 0);
    }

    #[test]
    fn a_plan_check_fits_the_cores_and_reports_cpu_error_per_role() {
        let costs = vec![
            RoleCost {
                role: "api".into(),
                cpu_s_per_lead: 0.000_1,
            },
            RoleCost {
                role: "nats-server".into(),
                cpu_s_per_lead: 0.000_3,
            },
        ];
        // 0.4 ms per lead; 2 cores at 70 % → 3,500 leads/s, unless the pipeline is slower.
        assert!((fitting_rate(&costs, 2.0, 0.7, 10_000.0) - 3_500.0).abs() < 1e-6);
        assert!((fitting_rate(&costs, 2.0, 0.7, 1_000.0) - 1_000.0).abs() < 1e-9);
        let measured: BTreeMap<String, f64> =
            [("api".to_owned(), 1.1), ("nats-server".to_owned(), 2.7)]
                .into_iter()
                .collect();
        let (lines, total) = verify(&costs, 10_000, &measured);
        assert!((lines[0].error_pct - 10.0).abs() < 1e-6);
        assert!((lines[1].error_pct + 10.0).abs() < 1e-6);
        assert!(
            (total - (-5.0)).abs() < 1e-6,
            "3.8 s spent against 4.0 s predicted"
        );
    }

    #[test]
    fn idle_campaigns_are_valid_and_match_no_benchmark_lead() {
        let load = Load::generate(500, 20, 0.5, "i");
        let campaigns: Vec<Arc<quizflow_core::Campaign>> = (1..50)
            .map(|n| {
                let spec = quizflow_core::parse_campaign(&idle_campaign(n, 20)).expect("valid");
                Arc::new(quizflow_core::Campaign {
                    id: Uuid::new_v4(),
                    version: 1,
                    spec,
                    created_at: chrono::DateTime::UNIX_EPOCH,
                    updated_at: chrono::Utc::now(),
                })
            })
            .collect();
        let envelopes: Vec<quizflow_core::SubmissionEnvelope> = (0..load.len())
            .map(|i| {
                let body: serde_json::Value =
                    serde_json::from_slice(&load.bodies[i]).expect("json");
                let q = quizflow_core::QuizId::parse(&load.quizzes[i]).expect("quiz");
                quizflow_core::SubmissionEnvelope::new(
                    quizflow_core::SubmissionId(load.ids[i]),
                    q,
                    chrono::Utc::now(),
                    None,
                    quizflow_core::parse_submission(&body).expect("valid"),
                )
            })
            .collect();
        assert!(quizflow_batcher::Matcher::new(campaigns)
            .match_batch(&envelopes)
            .is_empty());
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            let _ = h.record(us * 1000); // 1 ms … 1000 ms
        }
        assert!((ms(&h, 0.50) - 500.0).abs() < 1.0);
        assert!((ms(&h, 0.99) - 990.0).abs() < 2.0);
        assert_eq!(ms(&histogram(), 0.99), 0.0);
    }

    #[test]
    fn presets_give_way_to_explicit_flags() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            e2e: E2eArgs,
        }
        let peak = Cli::parse_from(["x", "--preset", "event-peak"]).e2e;
        assert_eq!(peak.shape().0, 200_000);
        assert!(matches!(peak.shape().1, Pacing::Open { rate } if (rate - 1666.67).abs() < 0.01));
        let small = Cli::parse_from(["x", "--preset", "event-peak", "--submissions", "1000"]).e2e;
        assert_eq!(small.shape().0, 1_000);
        let max = Cli::parse_from(["x", "--preset", "max"]).e2e;
        assert_eq!(max.shape().1, Pacing::Closed { concurrency: 256 });
        let open = Cli::parse_from(["x", "--rate", "100000/min"]).e2e;
        assert!(matches!(open.shape().1, Pacing::Open { .. }));
    }
}
