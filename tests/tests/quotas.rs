//! Intake quotas (issue 26) across two API instances on one NATS: a quiz's quota and the global
//! one hold for the cluster, not per instance; past one a lead is 429 `quota_exceeded` with
//! `Retry-After` and is not published; a retry of an accepted lead still gets `duplicate`.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;

use harness::Api;
use quizflow_nats::NatsSettings;
use serde_json::{json, Value};

const PER_QUIZ: u32 = 5;
const GLOBAL: u32 = 8;

fn quotas(s: &mut quizflow_api::ApiSettings) {
    s.quota_per_quiz_per_min = PER_QUIZ;
    s.quota_global_per_min = GLOBAL;
}

/// A second API instance on the first one's NATS and database.
async fn second(first: &Api) -> String {
    let bound = quizflow_api::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", bound.local_addr);
    let ns = NatsSettings::new(first.nats.url(), "quizflow-api-second");
    let client = quizflow_nats::connect(&ns).await.expect("connect");
    let js = quizflow_nats::jetstream(client.clone(), &ns);
    let mut settings = quizflow_api::ApiSettings {
        http_addr: "127.0.0.1:0".into(),
        admin_token: Some(harness::ADMIN_TOKEN.into()),
        ..quizflow_api::ApiSettings::default()
    };
    quotas(&mut settings);
    let pool = quizflow_store::pool(&first.db.url, 2);
    let state = quizflow_api::AppState::new(settings, client, js, pool).expect("state");
    tokio::spawn(quizflow_api::serve(bound, state, std::future::pending()));
    base
}

async fn lead(
    http: &reqwest::Client,
    base: &str,
    quiz: &str,
    key: &str,
) -> (u16, Option<String>, Value) {
    let r = http
        .post(format!("{base}/v1/quizzes/{quiz}/submissions"))
        .header("idempotency-key", key)
        .json(&json!({"respondent": {"email": format!("{key}@example.com")}}))
        .send()
        .await
        .expect("post");
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        r.status().as_u16(),
        retry,
        r.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn quotas_hold_across_instances_and_a_retry_keeps_its_duplicate_answer() {
    let first = Api::start_with(quotas).await;
    let other = second(&first).await;
    let http = reqwest::Client::new();
    let bases = [first.base.clone(), other];
    // The quiz's quota, spread over both instances.
    for i in 0..PER_QUIZ as usize {
        let (s, _, b) = lead(&http, &bases[i % 2], "promo", &format!("a{i}")).await;
        assert_eq!(s, 202, "{b}");
    }
    for base in &bases {
        let (s, retry, e) = lead(&http, base, "promo", "a-over").await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (429, Some("quota_exceeded")),
            "{e}"
        );
        let retry: u64 = retry.expect("Retry-After").parse().expect("seconds");
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // A retry of an accepted lead is a duplicate, never refused for the quota.
    let (s, _, b) = lead(&http, &bases[1], "promo", "a0").await;
    assert_eq!((s, &b["duplicate"]), (202, &json!(true)), "{b}");
    // Another quiz has its own quota, and the global one bounds both.
    for i in 0..(GLOBAL - PER_QUIZ) as usize {
        let (s, _, b) = lead(&http, &bases[i % 2], "outro", &format!("b{i}")).await;
        assert_eq!(s, 202, "{b}");
    }
    let (s, _, e) = lead(&http, &bases[0], "outro", "b-over").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (429, Some("quota_exceeded")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("the intake quota")),
        "{e}"
    );
    let mut stream = first.js.get_stream("SUBMISSIONS").await.expect("stream");
    let published = stream.info().await.expect("info").state.messages;
    assert_eq!(
        published,
        u64::from(GLOBAL) + 1,
        "the counted leads and the retry's copy (held twice, stored once): no refused lead"
    );
}
