//! `quizflow replay`: the command line around [`quizflow_replay`] — arguments, the progress
//! bar (plain lines when stderr is not a terminal), the summary.

use crate::config::Config;
use anyhow::Context;
use quizflow_core::{Priority, QuizId};
use quizflow_replay::{Bound, Progress, ReplayError, ReplaySpec, Source, Summary};
use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Re-run campaign matching over historical submissions (contract §6).
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    quizflow replay --from 2026-11-24T00:00:00Z --campaign 6f1c… --dry-run\n  \
    quizflow replay --from 120001 --to 150000 --quiz black-friday --rate 500/s\n  \
    quizflow replay --from 2026-10-01T00:00:00Z --to 2026-10-08T00:00:00Z --source postgres\n\n\
    Without NATS_URL and DATABASE_URL, the servers of a running `quizflow up` (its data dir) are used.")]
pub struct ReplayArgs {
    /// Start: an RFC 3339 receipt time (inclusive) or a SUBMISSIONS stream sequence
    /// (inclusive; the checkpoint a replay prints is one).
    #[arg(long, value_parser = Bound::parse)]
    from: Bound,
    /// End: an RFC 3339 receipt time (exclusive) or a stream sequence (inclusive). Default:
    /// the last submission when the replay starts.
    #[arg(long, value_parser = Bound::parse)]
    to: Option<Bound>,
    /// Only this quiz (repeatable).
    #[arg(long = "quiz", value_name = "ID", value_parser = parse_quiz)]
    quizzes: Vec<QuizId>,
    /// Only this campaign (repeatable; default: every active campaign that has not ended).
    #[arg(long = "campaign", value_name = "ID")]
    campaigns: Vec<uuid::Uuid>,
    /// Count what would be created; write and publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Submissions read per second, e.g. `500/s`; `0` = unbounded.
    #[arg(long, default_value = "2000/s", value_parser = parse_rate)]
    rate: Rate,
    /// Priority of the jobs created (workers drain high, then normal, then low).
    #[arg(long, default_value = "low", value_parser = parse_priority)]
    priority: Priority,
    /// Submissions per batch (one ledger statement each).
    #[arg(long, default_value_t = quizflow_replay::DEFAULT_BATCH)]
    batch: usize,
    /// Where history is read from: `stream` (SUBMISSIONS) or `postgres` (the submissions
    /// table, for ranges that have aged out of the stream; times only).
    #[arg(long, default_value = "stream", value_parser = parse_source)]
    source: Source,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Rate(Option<NonZeroU32>);

fn parse_rate(raw: &str) -> Result<Rate, String> {
    let n = raw.trim().trim_end_matches("/s");
    match n {
        "0" | "unbounded" | "unlimited" => Ok(Rate(None)),
        n => n.parse::<NonZeroU32>().map(|r| Rate(Some(r))).map_err(|_| {
            format!("{raw:?} is not a rate: give submissions per second, e.g. 500/s, or 0")
        }),
    }
}

fn parse_quiz(raw: &str) -> Result<QuizId, String> {
    QuizId::parse(raw).map_err(|e| e.to_string())
}

fn parse_priority(raw: &str) -> Result<Priority, String> {
    Priority::parse(raw).ok_or_else(|| format!("{raw:?}: high, normal or low"))
}

fn parse_source(raw: &str) -> Result<Source, String> {
    match raw {
        "stream" => Ok(Source::Stream),
        "postgres" => Ok(Source::Postgres),
        _ => Err(format!("{raw:?}: stream or postgres")),
    }
}

/// The servers: configured, or those of a `quizflow up` running on the data dir.
pub(crate) fn servers(cfg: &Config) -> anyhow::Result<(String, String)> {
    if let (Some(n), Some(d)) = (&cfg.nats_url, &cfg.database_url) {
        return Ok((n.clone(), d.clone()));
    }
    let path = cfg.data_dir.join(crate::up::UP_ENV_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "NATS_URL and DATABASE_URL are not set, and no running `quizflow up` was found ({} is missing)",
            path.display()
        )
    })?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let nats = cfg.nats_url.clone().or_else(|| get("NATS_URL"));
    let db = cfg.database_url.clone().or_else(|| get("DATABASE_URL"));
    match (nats, db) {
        (Some(n), Some(d)) => {
            eprintln!(
                "replay: using the servers of the `quizflow up` in {}",
                cfg.data_dir.display()
            );
            Ok((n, d))
        }
        _ => anyhow::bail!("{} does not name both servers", path.display()),
    }
}

/// Shows progress: a bar on a terminal, a line every few seconds otherwise.
struct Feedback {
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
    started: Instant,
}

impl Feedback {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ({percent}%) eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    fn update(&mut self, p: &Progress<'_>, last: bool) {
        let s = p.summary;
        let checkpoint = s.checkpoint.as_deref().unwrap_or("-");
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total);
                bar.set_position(p.done);
                let rate = s.read as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "{rate:.0}/s · matched {} · jobs +{} · existed {} · checkpoint --from {checkpoint}",
                    s.matched, s.jobs_created, s.already_existed
                ));
            }
            None if last || self.last_line.elapsed() >= Duration::from_secs(2) => {
                self.last_line = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                let rate = s.read as f64 / secs;
                let left = p.total.saturating_sub(p.done);
                let per_s = p.done as f64 / secs;
                let eta = if per_s > 0.0 {
                    format!("{:.0}s", left as f64 / per_s)
                } else {
                    "?".into()
                };
                eprintln!(
                    "replay: read {} submissions, {}/{} messages ({:.0}%), matched {}, jobs created {}, already existed {}, {:.0}/s, eta {eta}, checkpoint --from {checkpoint}",
                    s.read,
                    p.done,
                    p.total,
                    if p.total > 0 { 100.0 * p.done as f64 / p.total as f64 } else { 100.0 },
                    s.matched,
                    s.jobs_created,
                    s.already_existed,
                    rate,
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        // The summary follows and says it all: leave no half line behind.
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let verb = if s.dry_run {
        "would be created"
    } else {
        "created"
    };
    println!(
        "replay {}{} from {}: {:.1}s",
        if s.completed { "done" } else { "stopped" },
        if s.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        },
        s.source,
        s.elapsed_s
    );
    println!("  read               {}", s.read);
    println!("  scanned (in range) {}", s.scanned);
    if s.not_stored > 0 {
        println!(
            "  not stored         {}  (dead-lettered, or not stored by the batcher yet: replay them later)",
            s.not_stored
        );
    }
    if s.undecodable > 0 {
        println!("  undecodable        {}", s.undecodable);
    }
    println!("  matched            {}", s.matched);
    println!("  {:<19}{}", format!("jobs {verb}"), s.jobs_created);
    println!("  already existed    {}", s.already_existed);
    if s.republished > 0 {
        println!(
            "  re-published       {}  (rows still queued: their jobs go out again in case a stopped run lost them; a worker claims each row once)",
            s.republished
        );
    }
    if !s.by_campaign.is_empty() {
        println!("  by campaign and channel (jobs {verb} / already existed):");
        for c in &s.by_campaign {
            println!(
                "    {} ({})  {:<9} {} / {}",
                c.campaign, c.campaign_id, c.channel, c.created, c.existed
            );
        }
    }
    if s.jobs_created == 0 && s.completed && !s.dry_run {
        println!("  nothing new to send");
    }
    if let Some(cp) = &s.checkpoint {
        println!("  checkpoint         --from {cp}");
    }
    Ok(())
}

pub async fn run(cfg: Config, args: ReplayArgs) -> anyhow::Result<()> {
    let (nats_url, database_url) = servers(&cfg)?;
    let (_client, js) = crate::roles::connect_nats_at(&cfg, &nats_url, "replay").await?;
    let pool = quizflow_store::pool(&database_url, 4);
    let spec = ReplaySpec {
        from: args.from,
        to: args.to,
        quizzes: args.quizzes,
        campaigns: args.campaigns,
        dry_run: args.dry_run,
        rate: args.rate.0,
        priority: args.priority,
        batch: args.batch,
        source: args.source,
        hash_key: {
            let mut c = cfg.clone();
            if c.hash_key.is_none() {
                c.hash_key = crate::up::derived_hash_key(&c);
            }
            c.hash_key()?
        },
    };
    let mut feedback = Feedback::new();
    let stop = async {
        crate::ops::shutdown_signal().await;
        eprintln!("replay: stopping after the batch in hand");
    };
    let outcome =
        quizflow_replay::replay(&spec, &js, &pool, |p| feedback.update(p, false), stop).await;
    feedback.finish();
    match outcome {
        Ok(summary) => {
            if feedback.bar.is_none() {
                feedback.update(
                    &Progress {
                        total: summary.messages,
                        done: summary.messages,
                        summary: &summary,
                    },
                    true,
                );
            }
            print_summary(&summary, args.json)?;
            if !summary.completed {
                eprintln!(
                    "replay: stopped before the end; resume with --from {}",
                    summary.checkpoint.as_deref().unwrap_or("(the same --from)")
                );
                std::process::exit(130);
            }
            Ok(())
        }
        Err(ReplayError::Interrupted {
            error,
            checkpoint,
            summary,
        }) => {
            print_summary(&summary, args.json)?;
            anyhow::bail!("replay failed: {error}; resume with --from {checkpoint}")
        }
        Err(e) => Err(e.into()),
    }
}
