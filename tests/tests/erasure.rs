//! `POST /v1/respondents/erase` through the whole pipeline: a person with stored
//! submissions, a dead-lettered SMS and an e-mail waiting for its retry is erased from every
//! table and stream, their waiting message is never sent, everyone else is untouched, and a
//! second call is a no-op. Production retry schedule and worker defaults.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;

use common::{count, pipeline_behind};
use harness::Api;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// The mock rejects this number permanently on every channel (Twilio 21211).
const PHONE: &str = quizflow_mock_provider::INVALID_NUMBER;
const EMAIL: &str = "Ana.Erased@Example.com";

fn lead(phone: &str, email: &str, n: usize) -> Value {
    json!({
        "respondent": {"phone": phone, "email": email, "name": format!("Person {n}"), "locale": "pt-BR"},
        "answers": [{"question": "q1", "value": "b"}, {"question": "referral", "value": format!("friend of {email}")}],
        "score": 72, "tags": ["promo-nov"], "metadata": {"utm_source": "tv", "contact": phone}
    })
}

use common::wait_until as wait_for;

/// Every stream message's bytes, lower-cased.
async fn stream_texts(js: &async_nats::jetstream::Context, stream: &str) -> Vec<String> {
    let mut s = js.get_stream(stream).await.expect("stream");
    let state = s.info().await.expect("info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(String::from_utf8_lossy(&m.payload).to_lowercase());
        }
    }
    out
}

async fn erase(api: &Api, body: Value) -> Value {
    let r = api
        .admin(Method::POST, "/v1/respondents/erase")
        .json(&body)
        .send()
        .await
        .expect("erase");
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.expect("json")
}

#[tokio::test]
async fn given_a_person_in_every_store_when_erased_then_no_read_returns_them_and_their_pending_message_is_cancelled(
) {
    let api = Api::start().await;
    let (phone_l, email_l) = (PHONE.to_lowercase(), EMAIL.to_lowercase());

    // The pipeline behind the API: the mock, a batcher, workers at production defaults.
    let mock = pipeline_behind(
        &api.nats.url(),
        &api.db.url,
        quizflow_mock_provider::MockState::default(),
        |_| {},
    )
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(api.nats.url()).await.expect("nats"));
    let http = reqwest::Client::new();
    // E-mail is down: every e-mail waits for its retry (5 s, the production schedule).
    let fault = |rate: f64| {
        http.put(format!("{mock}/_mock/faults"))
            .json(&json!({"channel": "email", "status": 503, "rate": rate}))
            .send()
    };
    assert!(fault(1.0).await.expect("fault").status().is_success());

    let created = api
        .admin(Method::POST, "/v1/campaigns")
        .json(&json!({
            "name": "Welcome", "quiz_id": "promo-nov", "match": {},
            "actions": [{"channel": "sms", "template": "Oi {{ respondent.name }}"},
                        {"channel": "email", "subject": "Oi", "template": "<p>{{ score }}</p>"}]
        }))
        .send()
        .await
        .expect("campaign");
    assert_eq!(created.status().as_u16(), 201);

    // The person twice, among 40 others, all at once: their submissions share packs.
    let mut posts = Vec::new();
    for n in 0..40 {
        let body = lead(&format!("+55119{n:08}"), &format!("p{n}@example.com"), n);
        posts.push(api.post_owned("/v1/quizzes/promo-nov/submissions".into(), body));
        if n == 10 || n == 30 {
            posts.push(api.post_owned(
                "/v1/quizzes/promo-nov/submissions".into(),
                lead(PHONE, EMAIL, 1000 + n),
            ));
        }
    }
    let answers = futures::future::join_all(posts).await;
    let mut theirs = Vec::new();
    for (i, r) in answers.into_iter().enumerate() {
        assert_eq!(r.status().as_u16(), 202);
        let v: Value = r.json().await.expect("json");
        if i == 11 || i == 32 {
            theirs.push(v["submission_id"].as_str().expect("id").to_owned());
        }
    }
    let db = api.db.url.clone();
    // Their SMS is dead (permanent), and every e-mail waits: for its retry, or behind the
    // e-mail provider's open breaker.
    wait_for("the person's SMS dead and every e-mail waiting", Duration::from_secs(60), || {
        let db = db.clone();
        async move {
            count(&db, "SELECT count(*) AS n FROM dead_letters WHERE recipient = '+15005550001'").await == 2
                && count(&db, "SELECT count(*) AS n FROM deliveries WHERE channel = 'email' AND status IN ('queued', 'failed')").await == 42
                && count(&db, "SELECT count(*) AS n FROM deliveries WHERE channel = 'sms' AND status IN ('sent', 'dead')").await == 42
        }
    })
    .await;

    let first = erase(&api, json!({"phone": PHONE, "email": EMAIL.to_uppercase()})).await;
    let e = &first["erased"];
    assert_eq!(e["submissions"], 2, "{first}");
    assert_eq!(e["deliveries_cancelled"], 2, "{first}");
    assert_eq!(e["deliveries_scrubbed"], 4, "{first}");
    assert_eq!(e["dead_letters"], 2, "{first}");
    assert_eq!(e["stream_submissions"], 2, "{first}");
    assert_eq!(e["stream_dead_letters"], 2, "{first}");

    // Tables: nothing of theirs anywhere, in any column of any table.
    for table in [
        "submissions",
        "deliveries",
        "dead_letters",
        "audit_log",
        "campaigns",
    ] {
        let n = count(
            &db,
            &format!(
                "SELECT count(*) AS n FROM {table} t WHERE lower(t::text) LIKE '%{phone_l}%' \
                 OR lower(t::text) LIKE '%{email_l}%'"
            ),
        )
        .await;
        assert_eq!(n, 0, "{table} still holds the person");
    }
    // Their submissions keep id, quiz and score; their e-mails are cancelled, not sent.
    for id in &theirs {
        let got: Value = api
            .admin(Method::GET, &format!("/v1/submissions/{id}"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(got["score"], 72.0);
        let text = got.to_string().to_lowercase();
        assert!(
            !text.contains(&phone_l) && !text.contains(&email_l),
            "{got}"
        );
        let email = got["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .find(|d| d["channel"] == "email")
            .cloned()
            .expect("email row");
        assert_eq!(email["status"], "cancelled");
    }
    // Streams: no copy of theirs; every other submission still replayable.
    for text in stream_texts(&js, "SUBMISSIONS").await {
        assert!(!text.contains(&phone_l) && !text.contains(&email_l));
    }
    let others: std::collections::HashSet<String> = stream_texts(&js, "SUBMISSIONS")
        .await
        .iter()
        .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter_map(|v| v["submission_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(others.len(), 40);
    for text in stream_texts(&js, "DEAD_LETTERS").await {
        assert!(!text.contains(&phone_l) && !text.contains(&email_l));
    }
    // The API's lists: not in the dead letters.
    let dead: Value = api
        .admin(Method::GET, "/v1/dead-letters")
        .send()
        .await
        .expect("dead")
        .json()
        .await
        .expect("json");
    assert!(!dead.to_string().to_lowercase().contains(&phone_l));

    // E-mail comes back: everyone else's e-mail is sent, theirs never is.
    assert!(fault(0.0).await.expect("fault").status().is_success());
    wait_for("the others' e-mails sent", Duration::from_secs(90), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) AS n FROM deliveries WHERE channel = 'email' AND status = 'sent'",
            )
            .await
                == 40
        }
    })
    .await;
    let mocked: Value = http
        .get(format!("{mock}/_mock/requests"))
        .send()
        .await
        .expect("mock")
        .json()
        .await
        .expect("json");
    let after_erase: Vec<&Value> = mocked["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["channel"] == "email" && r["status"] == 200)
        .filter(|r| {
            r["to"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case(EMAIL))
        })
        .collect();
    assert!(
        after_erase.is_empty(),
        "sent to an erased person: {after_erase:?}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM deliveries WHERE channel = 'email' AND status = 'cancelled'"
        )
        .await,
        2
    );

    // Again: a no-op, answered 200 with zeros.
    let second = erase(&api, json!({"email": EMAIL, "phone": PHONE})).await;
    for (k, v) in second["erased"].as_object().expect("erased") {
        assert_eq!(v, 0, "{k} on the second call");
    }
    // Both calls are in the audit log, the person only as keyed hashes.
    let audit: Value = api
        .admin(Method::GET, "/v1/audit")
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    let erasures: Vec<&Value> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "respondent.erase")
        .collect();
    assert_eq!(erasures.len(), 2);
    assert_eq!(erasures[0]["target"], erasures[1]["target"]);
    assert!(erasures[0]["target"]
        .as_str()
        .is_some_and(|t| t.starts_with("h:")));
    assert_eq!(erasures[1]["detail"]["erased"]["submissions"], 2);
    let audit_text = audit.to_string().to_lowercase();
    assert!(!audit_text.contains(&phone_l) && !audit_text.contains(&email_l));
}
