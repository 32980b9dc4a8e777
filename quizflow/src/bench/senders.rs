//! `quizflow bench senders`: a private deployment (nats-server, PostgreSQL, `quizflow api` and
//! `batcher`), a backlog of WhatsApp template jobs stored first, then `quizflow workers` with a
//! pool of Cloud API senders against a sink; see [`quizflow_benchmarks::senders`].

use super::e2e::{spawn, start_private};
use super::limits::{api_and_batcher, store_backlog};
use crate::config::Config;
use crate::devservices::DevServices;
use quizflow_benchmarks::senders::{wait_delivered, CloudSink, SendersArgs, SendersReport};
use std::time::Duration;
use tokio::process::Child;

/// The benchmark's WhatsApp campaign: every lead of the load matches it; the template's one
/// parameter names the lead, so the sink counts each job and its copies.
async fn create_campaign(http: &reqwest::Client, api: &str, token: &str) -> anyhow::Result<()> {
    let r = http
        .post(format!("{api}/v1/campaigns"))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "name": "bench senders",
            "purpose": "transactional",
            "match": {"all": [{"field": "answers.q1", "op": "eq", "value": "b"}]},
            "actions": [{"channel": "whatsapp", "whatsapp_template": {"name": "event_reminder",
                "language": "pt_BR", "body": ["{{ submission_id }}"]}}]
        }))
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 201, "campaign: {}", r.text().await?);
    Ok(())
}

pub async fn run(cfg: Config, args: SendersArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.senders > 0 && args.processes > 0 && args.jobs > 0,
        "--senders, --processes and --jobs must be positive"
    );
    let sink = CloudSink::start().await?;
    let tmp = tempfile::tempdir()?;
    let mut dev = DevServices::none();
    let mut children: Vec<Child> = Vec::new();
    let result = async {
        let private = start_private(&cfg, &mut dev, tmp.path(), false).await?;
        let token = private.token.clone();
        let common = private.common();
        let (http, api) = api_and_batcher(&private, &mut children).await?;
        create_campaign(&http, &api, &token).await?;
        store_backlog(&http, &api, &token, args.jobs).await?;
        println!("backlog: {} WhatsApp jobs stored and queued", args.jobs);
        let ids: Vec<String> = (1..=args.senders).map(|i| format!("10{i:08}")).collect();
        let mut env = common.clone();
        env.extend([
            ("QUIZFLOW_WHATSAPP_PROVIDER", "cloud".to_owned()),
            ("QUIZFLOW_WHATSAPP_URL", sink.url.clone()),
            ("QUIZFLOW_WHATSAPP_TOKEN", "bench".to_owned()),
            ("QUIZFLOW_WHATSAPP_PHONE_NUMBER_ID", ids.join(",")),
            ("QUIZFLOW_PROVIDER_RATE_PER_SEC", args.rate.to_string()),
            ("QUIZFLOW_WORKER_CONCURRENCY", args.concurrency.to_string()),
        ]);
        for _ in 0..args.processes {
            children.push(spawn(&["workers", "--channels", "whatsapp"], &env)?);
        }
        let got = wait_delivered(&sink, args.jobs as u64, Duration::from_secs(30)).await;
        anyhow::ensure!(
            got >= args.jobs as u64,
            "only {got} of {} jobs reached the sink",
            args.jobs
        );
        // Copies arriving late would count as duplicates: give them a moment.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = match sink.received.lock() {
            Ok(r) => SendersReport::from_received(&args, &r),
            Err(_) => anyhow::bail!("sink poisoned"),
        };
        anyhow::Ok(report)
    }
    .await;
    for mut c in children {
        let _ = c.kill().await;
    }
    dev.stop().await;
    let report = result?;
    report.write(&args.out)?;
    println!("{}", report.markdown());
    println!("wrote {}", args.out.join("senders-report.json").display());
    Ok(())
}
