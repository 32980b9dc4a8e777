//! Captcha checks on intake (issue 26), against the mock's `siteverify`: a lead without a
//! token, or with one the provider refuses, is 403 `captcha_failed` and never published; a
//! verified one is 202; a retry of an accepted lead with its spent token still gets its
//! `duplicate` answer (the duplicate check comes first, and the provider is not asked); a
//! batch needs one token; a provider outage is 503 `captcha_unavailable` when failing closed,
//! and the lead is accepted when failing open.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;

use harness::Api;
use poem::listener::{Acceptor, Listener};
use serde_json::{json, Value};

async fn mock() -> String {
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("addr");
    let state = quizflow_mock_provider::MockState::default();
    tokio::spawn(quizflow_mock_provider::serve(
        acceptor,
        state,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

async fn api(mock: &str, fail_open: bool) -> Api {
    let url = format!("{mock}/siteverify");
    Api::start_with(move |s| {
        s.captcha = Some(quizflow_api::CaptchaSettings {
            provider: quizflow_api::CaptchaProvider::Turnstile,
            secret: "turnstile-secret".into(),
            verify_url: url,
            fail_open,
            timeout: std::time::Duration::from_secs(2),
        });
    })
    .await
}

async fn post(api: &Api, path: &str, token: Option<&str>, key: &str, body: Value) -> (u16, Value) {
    let mut r = api
        .http
        .post(api.url(path))
        .header("idempotency-key", key)
        .json(&body);
    if let Some(t) = token {
        r = r.header("x-captcha-token", t);
    }
    let r = r.send().await.expect("post");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn verifications(mock: &str) -> usize {
    let r: Value = reqwest::get(format!("{mock}/_mock/requests"))
        .await
        .expect("requests")
        .json()
        .await
        .expect("json");
    r["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|q| q["channel"] == "captcha")
        .count()
}

async fn stored(api: &Api) -> u64 {
    let mut s = api.js.get_stream("SUBMISSIONS").await.expect("stream");
    s.info().await.expect("info").state.messages
}

#[tokio::test]
async fn leads_need_a_verified_token_and_a_retry_keeps_its_duplicate_answer() {
    let mock = mock().await;
    let api = api(&mock, false).await;
    let lead = json!({"respondent": {"phone": "+5511987650505"}, "score": 50});
    let path = "/v1/quizzes/promo/submissions";
    for token in [None, Some("robot")] {
        let (s, e) = post(&api, path, token, "lead-1", lead.clone()).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (403, Some("captcha_failed")),
            "{e}"
        );
    }
    assert_eq!(stored(&api).await, 0, "nothing refused is published");
    assert_eq!(
        verifications(&mock).await,
        1,
        "a missing token is refused without asking"
    );

    let (s, a) = post(&api, path, Some("pass-1"), "lead-1", lead.clone()).await;
    assert_eq!((s, &a["duplicate"]), (202, &json!(false)), "{a}");
    // The client retries with the token it already spent: a duplicate, the provider not asked.
    let (s, b) = post(&api, path, Some("spent"), "lead-1", lead.clone()).await;
    assert_eq!((s, &b["duplicate"]), (202, &json!(true)), "{b}");
    assert_eq!(a["submission_id"], b["submission_id"]);
    assert_eq!(verifications(&mock).await, 2);

    // A batch: one token for the request.
    let batch = json!({"submissions": [
        {"quiz_id": "promo", "idempotency_key": "b-1", "respondent": {"email": "a@example.com"}},
        {"quiz_id": "promo", "idempotency_key": "b-2", "respondent": {"email": "b@example.com"}}]});
    let (s, e) = post(
        &api,
        "/v1/submissions/batch",
        Some("robot"),
        "unused",
        batch.clone(),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("captcha_failed")),
        "{e}"
    );
    let (s, r) = post(
        &api,
        "/v1/submissions/batch",
        Some("pass-2"),
        "unused",
        batch,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(
        r["results"]
            .as_array()
            .is_some_and(|a| a.iter().all(|i| i["status"] == 202)),
        "{r}"
    );

    // The provider down: failing closed, the lead is refused for a retry.
    let fault = json!({"channel": "captcha", "status": 503, "rate": 1.0});
    let put = reqwest::Client::new()
        .put(format!("{mock}/_mock/faults"))
        .json(&fault)
        .send()
        .await
        .expect("fault");
    assert!(put.status().is_success());
    let r = api
        .http
        .post(api.url(path))
        .header("x-captcha-token", "pass-3")
        .json(&json!({"respondent": {"phone": "+5511987650606"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "captcha_unavailable");

    // Failing open, the same lead is accepted.
    let open = api_with_fail_open(&mock).await;
    let (s, a) = post(
        &open,
        path,
        Some("pass-3"),
        "lead-3",
        json!({"respondent": {"phone": "+5511987650606"}}),
    )
    .await;
    assert_eq!((s, &a["duplicate"]), (202, &json!(false)), "{a}");
}

async fn api_with_fail_open(mock: &str) -> Api {
    api(mock, true).await
}
