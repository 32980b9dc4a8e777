//! What an operator sees: `/v1/stats` after a known workload through API, batcher, workers and
//! mock provider (exact counts, depths, circuits, cost), and the metrics moving with it.

mod common;

use common::Env;
use prometheus::Registry;
use quizflow_core::Costs;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "observability-token-0123456789";

struct RunningApi {
    base: String,
    registry: Registry,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn api(env: &Env, costs: Costs) -> RunningApi {
    let settings = quizflow_api::ApiSettings {
        http_addr: "127.0.0.1:0".into(),
        admin_token: Some(TOKEN.into()),
        respondent_limit_per_min: 0,
        costs,
        ..Default::default()
    };
    let registry = Registry::new();
    let state = quizflow_api::AppState::with_registry(
        settings.clone(),
        env.client.clone(),
        env.js.clone(),
        quizflow_store::pool(&env.db.url, 2),
        registry.clone(),
    )
    .expect("state");
    let bound = quizflow_api::bind(&settings.http_addr).await.expect("bind");
    let base = format!("http://{}", bound.local_addr);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(quizflow_api::serve(bound, state, async move {
        let _ = rx.await;
    }));
    RunningApi {
        base,
        registry,
        _stop: tx,
    }
}

fn costs() -> Costs {
    Costs {
        currency: "BRL".into(),
        sms: 0.0075,
        email: 0.001,
        ..Default::default()
    }
}

/// The value of one sample in a Prometheus text exposition (`name{labels}`), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn given_a_known_workload_then_stats_and_metrics_show_exactly_it() {
    let mut env = Env::start_with(|_| {}).await;
    let api = api(&env, costs()).await;
    env.campaign(json!([
        {"channel": "sms", "template": "Olá {{ respondent.name }}"},
        {"channel": "email", "subject": "Oi", "template": "<p>{{ score }}</p>"}
    ]))
    .await;
    let registry_before = quizflow_telemetry::render(&api.registry);
    let before = String::from_utf8_lossy(&registry_before);
    assert_eq!(sample(&before, "quizflow_submissions_accepted_total"), 0.0);
    env.workers(env.settings(|s| s.costs = costs()));

    let http = reqwest::Client::new();
    let url = format!("{}/v1/quizzes/promo-nov/submissions", api.base);
    const LEADS: usize = 20;
    for i in 0..LEADS {
        let lead = json!({
            "respondent": {"phone": format!("+55119876{i:05}"), "email": format!("lead{i}@example.com"), "name": "Ana"},
            "score": 72, "completed_at": "2026-11-22T10:00:00Z"
        });
        let r = http
            .post(&url)
            .header("Idempotency-Key", format!("lead-{i}"))
            .json(&lead)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 202);
        if i < 3 {
            // The same lead again: a duplicate, not a second lead.
            let again = http
                .post(&url)
                .header("Idempotency-Key", format!("lead-{i}"))
                .json(&lead)
                .send()
                .await
                .expect("post");
            assert_eq!(again.status().as_u16(), 202);
        }
    }
    for bad in [json!({"respondant": {}}), json!({"score": "high"})] {
        let r = http.post(&url).json(&bad).send().await.expect("post");
        assert_eq!(r.status().as_u16(), 400);
    }

    // Everything is sent and the API's counters are flushed (every 2 s): wait for exactly that.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats: Value = http
            .get(format!("{}/v1/stats", api.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        let done = stats["deliveries"]["sms"]["sent"] == LEADS
            && stats["deliveries"]["email"]["sent"] == LEADS
            && stats["submissions"]["rejected"] == 2
            && stats["submissions"]["duplicate"] == 3
            && stats["submissions"]["accepted"] == LEADS
            && stats["circuits"].as_array().is_some_and(|c| !c.is_empty())
            && stats["consumers"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["ack_pending"] == 0));
        if done {
            break stats;
        }
        assert!(Instant::now() < deadline, "stats never settled: {stats:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let subs = &stats["submissions"];
    assert_eq!(subs["accepted"], LEADS, "{stats:#}");
    assert_eq!(subs["stored"], LEADS, "{stats:#}");
    assert_eq!(subs["rejected_by_code"]["invalid_request"], 2, "{stats:#}");
    for ch in ["sms", "email"] {
        let d = &stats["deliveries"][ch];
        for status in ["queued", "sending", "failed", "dead", "cancelled"] {
            assert_eq!(d[status], 0, "{ch} {status}: {stats:#}");
        }
    }
    assert_eq!(stats["deliveries"]["webhook"]["sent"], 0);
    assert_eq!(stats["dead_letters"]["sms"], 0);
    let batcher = stats["consumers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["consumer"] == "batcher"))
        .expect("batcher consumer listed");
    assert_eq!(batcher["pending"], 0, "{stats:#}");
    assert!(stats["streams"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["stream"] == "DELIVERIES")));
    let circuits = stats["circuits"].as_array().expect("circuits");
    assert!(
        circuits
            .iter()
            .any(|c| c["channel"] == "sms" && c["state"] == "closed"),
        "{stats:#}"
    );
    let cost = &stats["cost"];
    assert_eq!(cost["currency"], "BRL");
    let total = cost["total"].as_f64().expect("total");
    assert!(
        (total - (20.0 * 0.0075 + 20.0 * 0.001)).abs() < 1e-9,
        "{cost}"
    );
    assert!((cost["by_channel"]["sms"].as_f64().expect("sms") - 0.15).abs() < 1e-9);
    let per_campaign = cost["by_campaign"].as_array().expect("by campaign");
    assert_eq!(per_campaign.len(), 2, "{cost}");
    assert!(per_campaign
        .iter()
        .all(|c| c["campaign"] == "Promo" && c["sent"] == LEADS));

    // The same figures, moving, on /metrics: the API's, the batcher's, the workers'.
    let text = http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        sample(&text, "quizflow_submissions_accepted_total"),
        LEADS as f64
    );
    assert_eq!(sample(&text, "quizflow_submissions_duplicate_total"), 3.0);
    assert_eq!(
        sample(
            &text,
            "quizflow_submissions_rejected_total{code=\"invalid_request\"}"
        ),
        2.0
    );
    assert!(
        sample(
            &text,
            "quizflow_api_requests_total{route=\"/v1/quizzes/{quiz_id}/submissions\",status=\"202\"}"
        ) >= LEADS as f64
    );
    let batcher = env.batcher.as_ref().expect("batcher");
    assert_eq!(batcher.metrics().stored.get(), LEADS as u64);
    assert_eq!(batcher.metrics().jobs_published.get(), 2 * LEADS as u64);
    let workers =
        String::from_utf8_lossy(&quizflow_telemetry::render(&env.registries[0])).into_owned();
    for ch in ["sms", "email"] {
        assert_eq!(
            sample(
                &workers,
                &format!("quizflow_deliveries_total{{channel=\"{ch}\",outcome=\"sent\"}}")
            ),
            LEADS as f64,
            "{workers}"
        );
    }
    assert!(
        (sample(
            &workers,
            "quizflow_delivery_cost_total{channel=\"sms\",currency=\"BRL\"}"
        ) - 0.15)
            .abs()
            < 1e-9
    );
    assert!(
        sample(
            &workers,
            "quizflow_provider_request_duration_seconds_count{channel=\"sms\"}"
        ) >= LEADS as f64
    );
    // No personal data in any label.
    for t in [&text, &workers] {
        assert!(!t.contains("+55119876"), "a phone number in metrics");
        // (The senders' own addresses label their circuits; a respondent's never appears.)
        assert!(
            (0..LEADS).all(|i| !t.contains(&format!("lead{i}@"))),
            "an e-mail in metrics"
        );
    }
}
