//! Worker pools against real NATS, PostgreSQL and the mock provider on loopback.

mod common;

use common::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn given_a_matching_submission_then_every_channel_is_sent_once_with_its_rendered_template() {
    let mut env = Env::start().await;
    env.campaign(json!([
        {"channel": "sms", "template": "Olá {{ respondent.name }}, cupom {{ submission_id[:8] }}"},
        {"channel": "email", "subject": "Seu resultado", "template": "<p>Score {{ score }}</p>"},
        {"channel": "whatsapp", "template": "oi {{ respondent.name }}"},
        {"channel": "webhook", "url": format!("{}/webhooks/crm", env.mock)}
    ]))
    .await;
    let s = env.settings(|_| {});
    env.workers(s);
    let id = env
        .submit(
            "k1",
            json!({"phone": PHONE, "email": "ana@example.com", "name": "Ana"}),
        )
        .await;
    let rows = env
        .wait_status(
            id,
            &[
                ("email", "sent"),
                ("sms", "sent"),
                ("webhook", "sent"),
                ("whatsapp", "sent"),
            ],
            Duration::from_secs(20),
        )
        .await;
    assert!(rows.iter().all(|(_, _, attempts, _)| *attempts == 1));
    let sms = env.mock_get("/_mock/messages?channel=sms").await;
    let body = sms["messages"][0]["body"].as_str().expect("body");
    assert_eq!(body, format!("Olá Ana, cupom {}", &id.to_string()[..8]));
    assert_eq!(sms["messages"][0]["to"], PHONE);
    let email = env.mock_get("/_mock/messages?channel=email").await;
    assert_eq!(email["messages"][0]["subject"], "Seu resultado");
    assert_eq!(email["messages"][0]["body"], "<p>Score 72</p>");
    let hook = env.mock_get("/_mock/messages?channel=webhook").await;
    let posted: Value =
        serde_json::from_str(hook["messages"][0]["body"].as_str().expect("body")).expect("json");
    assert_eq!(posted["submission"]["submission_id"], id.to_string());
    // The job id is the idempotency key.
    assert!(sms["messages"][0]["idempotency_key"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    let all = env.mock_get("/_mock/messages").await;
    assert_eq!(
        all["messages"].as_array().map(Vec::len),
        Some(4),
        "each exactly once"
    );
}

#[tokio::test]
async fn given_a_permanent_error_then_dead_letter_after_exactly_one_attempt() {
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    let s = env.settings(|_| {});
    env.workers(s);
    let id = env
        .submit("k2", json!({"phone": mock::INVALID_NUMBER}))
        .await;
    let rows = env
        .wait_status(id, &[("sms", "dead")], Duration::from_secs(20))
        .await;
    assert_eq!(rows[0].2, 1, "one attempt");
    let requests = env.mock_get("/_mock/requests").await;
    assert_eq!(requests["requests"].as_array().map(Vec::len), Some(1));
    assert_eq!(env.dead_letters().await, 1);
    let dl = env.js.get_stream("DEAD_LETTERS").await.expect("stream");
    let msg = dl
        .get_last_raw_message_by_subject("dead.deliveries.sms")
        .await
        .expect("dead letter");
    let letter: Value = serde_json::from_slice(&msg.payload).expect("json");
    assert_eq!(letter["class"], "permanent");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("21211")),
        "{letter}"
    );
    assert_eq!(letter["attempts"], 1);
}

#[tokio::test]
async fn given_transient_failures_until_exhausted_then_dead_letter_with_schedule_plus_one_attempts()
{
    let mut env = Env::start().await;
    let hook = format!("{}/webhooks/down", env.mock);
    env.campaign(json!([{"channel": "webhook", "url": hook}]))
        .await;
    env.fault(json!({"channel": "webhook", "status": 503, "rate": 1.0}))
        .await;
    let s = env.settings(|s| s.breaker_failures = 100);
    env.workers(s);
    let id = env.submit("k3", json!({"name": "x"})).await;
    let rows = env
        .wait_status(id, &[("webhook", "dead")], Duration::from_secs(30))
        .await;
    assert_eq!(rows[0].2, 3, "attempts = schedule entries + 1");
    let history = rows[0].3.as_array().expect("history");
    assert!(history.len() >= 3, "{history:?}");
    let requests = env.mock_get("/_mock/requests").await;
    let times: Vec<chrono::DateTime<chrono::Utc>> = requests["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|r| r["received_at"].as_str().and_then(|t| t.parse().ok()))
        .collect();
    assert_eq!(times.len(), 3);
    for gap in times.windows(2).map(|w| (w[1] - w[0]).num_milliseconds()) {
        // 400 ms ± 10 % jitter, plus redelivery overhead.
        assert!((340..2000).contains(&gap), "gap {gap} ms");
    }
    let dl = env.js.get_stream("DEAD_LETTERS").await.expect("stream");
    let letter: Value = serde_json::from_slice(
        &dl.get_last_raw_message_by_subject("dead.deliveries.webhook")
            .await
            .expect("dl")
            .payload,
    )
    .expect("json");
    assert_eq!(letter["class"], "exhausted");
    assert_eq!(letter["attempts"], 3);
}

#[tokio::test]
async fn given_429_with_retry_after_then_it_waits_and_the_attempt_is_not_counted() {
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    env.fault(json!({"channel": "sms", "status": 429, "rate": 1.0, "retry_after_s": 1}))
        .await;
    let s = env.settings(|_| {});
    env.workers(s);
    let id = env.submit("k4", json!({"phone": PHONE})).await;
    // Let it be throttled a couple of times, then lift the fault.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.fault(json!({"channel": "sms", "rate": 0})).await;
    let rows = env
        .wait_status(id, &[("sms", "sent")], Duration::from_secs(20))
        .await;
    assert_eq!(rows[0].2, 1, "throttles are not attempts");
    let requests = env.mock_get("/_mock/requests").await;
    let reqs = requests["requests"].as_array().expect("requests");
    assert!(
        reqs.len() >= 2 && reqs.len() <= 4,
        "{} requests in ~2.5 s with Retry-After 1 s",
        reqs.len()
    );
    let times: Vec<chrono::DateTime<chrono::Utc>> = reqs
        .iter()
        .filter_map(|r| r["received_at"].as_str().and_then(|t| t.parse().ok()))
        .collect();
    for gap in times.windows(2).map(|w| (w[1] - w[0]).num_milliseconds()) {
        assert!(gap >= 900, "Retry-After honoured: gap {gap} ms");
    }
}

#[tokio::test]
async fn given_a_worker_killed_mid_send_then_another_finishes_the_job() {
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    env.fault(json!({"channel": "sms", "latency_ms": 1500, "rate": 0}))
        .await;
    let s = env.settings(|_| {});
    let first = env.workers(s.clone());
    let id = env.submit("k5", json!({"phone": PHONE})).await;
    // Wait until the provider call is in flight (the ledger says `sending`; the mock holds
    // the request for 1.5 s), then kill the worker: no answer recorded, no ack.
    env.wait_status(id, &[("sms", "sending")], Duration::from_secs(10))
        .await;
    first.abort();
    // Killed means killed: no task of the first worker lives on to record an outcome (the
    // provider may still complete a request already on the wire, as after a real kill -9).
    // Longer than the mock's 1.5 s hold: a detached task would have recorded `sent` by now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rows = env.deliveries(id).await;
    assert_eq!(rows[0].1, "sending", "the killed worker recorded nothing");
    env.fault(json!({"channel": "sms", "rate": 0})).await;
    env.workers(s);
    env.wait_status(id, &[("sms", "sent")], Duration::from_secs(20))
        .await;
    // At-least-once: the killed call may have reached the provider too; both carry the
    // same idempotency key (the job id).
    let sms = env.mock_get("/_mock/requests").await;
    let keys: std::collections::HashSet<&str> = sms["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|r| r["idempotency_key"].as_str())
        .collect();
    assert_eq!(keys.len(), 1);
}

#[tokio::test]
async fn given_an_exhausted_job_when_redriven_over_the_api_then_it_is_delivered_with_a_fresh_budget(
) {
    let mut env = Env::start().await;
    let hook = format!("{}/webhooks/flaky", env.mock);
    env.campaign(json!([{"channel": "webhook", "url": hook}]))
        .await;
    env.fault(json!({"channel": "webhook", "status": 503, "rate": 1.0}))
        .await;
    let s = env.settings(|s| s.breaker_failures = 100);
    env.workers(s);
    let id = env.submit("k6", json!({"name": "x"})).await;
    env.wait_status(id, &[("webhook", "dead")], Duration::from_secs(30))
        .await;

    // The admin API over the same NATS and database.
    let token = "redrive-test-token-0123456789";
    let settings = quizflow_api::ApiSettings {
        http_addr: "127.0.0.1:0".into(),
        admin_token: Some(token.into()),
        ..Default::default()
    };
    let state = quizflow_api::AppState::new(
        settings,
        env.client.clone(),
        env.js.clone(),
        quizflow_store::pool(&env.db.url, 2),
    )
    .expect("state");
    let bound = quizflow_api::bind("127.0.0.1:0").await.expect("bind");
    let api = format!("http://{}", bound.local_addr);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    env.stops.push(tx);
    tokio::spawn(quizflow_api::serve(bound, state, async move {
        let _ = rx.await;
    }));
    let list: Value = env
        .http
        .get(format!("{api}/v1/dead-letters?channel=webhook"))
        .bearer_auth(token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["class"], "exhausted");
    assert_eq!(items[0]["attempts"], 3);
    assert!(items[0]["history"].as_array().is_some_and(|h| h.len() >= 3));
    let dl = items[0]["id"].as_str().expect("id").to_owned();

    env.fault(json!({"channel": "webhook", "rate": 0})).await;
    let r = env
        .http
        .post(format!("{api}/v1/dead-letters/{dl}/redrive"))
        .bearer_auth(token)
        .send()
        .await
        .expect("redrive");
    assert_eq!(r.status().as_u16(), 202);
    let rows = env
        .wait_status(id, &[("webhook", "sent")], Duration::from_secs(20))
        .await;
    assert_eq!(rows[0].2, 1, "a fresh attempt budget");
    let list: Value = env
        .http
        .get(format!("{api}/v1/dead-letters"))
        .bearer_auth(token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(0),
        "it left the list"
    );
    let again = env
        .http
        .post(format!("{api}/v1/dead-letters/{dl}/redrive"))
        .bearer_auth(token)
        .send()
        .await
        .expect("redrive");
    assert_eq!(again.status().as_u16(), 404);
    let bulk = env
        .http
        .post(format!("{api}/v1/dead-letters/redrive?channel=webhook"))
        .bearer_auth(token)
        .send()
        .await
        .expect("bulk");
    assert_eq!(bulk.status().as_u16(), 202);
    let bulk: Value = bulk.json().await.expect("json");
    assert_eq!(bulk["redriven"], 0);
}

#[tokio::test]
async fn given_a_provider_down_then_the_breaker_opens_burns_no_attempts_and_recovers() {
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    env.fault(json!({"channel": "sms", "status": 503, "rate": 1.0}))
        .await;
    let s = env.settings(|s| {
        s.concurrency = 1;
        s.breaker_failures = 2;
        s.breaker_cooldown = Duration::from_millis(1500);
        s.retry_schedule = vec![Duration::from_millis(300); 5];
    });
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            env.submit(
                &format!("b{i}"),
                json!({"phone": format!("+55119000000{i:02}")}),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.workers(s);
    let count = |v: Value| v["requests"].as_array().map(Vec::len).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(env.mock_get("/_mock/requests").await) < 2 {
        assert!(Instant::now() < deadline, "two failures");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Open: nothing reaches the provider during the cooldown.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        count(env.mock_get("/_mock/requests").await),
        2,
        "the breaker stops the calls"
    );
    env.fault(json!({"channel": "sms", "rate": 0})).await;
    for id in ids {
        let rows = env
            .wait_status(id, &[("sms", "sent")], Duration::from_secs(20))
            .await;
        assert!(
            rows[0].2 <= 2,
            "waiting behind an open breaker burns no attempt: {} {}",
            rows[0].2,
            rows[0].3
        );
    }
    assert_eq!(env.dead_letters().await, 0);
}

#[tokio::test]
async fn given_a_rate_limit_of_50_per_second_then_the_provider_sees_50_per_second() {
    let mut env = Env::start().await;
    let hook = format!("{}/webhooks/rate", env.mock);
    env.campaign(json!([{"channel": "webhook", "url": hook}]))
        .await;
    for i in 0..300 {
        env.submit(&format!("r{i}"), json!({"name": "x"})).await;
    }
    // Every job queued first, so the pool is never starved.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if quizflow_testkit::items_in(&env.js, "DELIVERIES").await == 300 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = env.settings(|s| {
        s.rate_per_sec = 50;
        s.channels = vec![quizflow_core::Channel::Webhook];
    });
    env.workers(s);
    // Watch five full seconds from the first call (a workers process takes its share of the
    // cluster's limit a heartbeat after it starts).
    let deadline = Instant::now() + Duration::from_secs(30);
    let times = loop {
        let requests = env.mock_get("/_mock/requests").await;
        let times: Vec<chrono::DateTime<chrono::Utc>> = requests["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .filter_map(|r| r["received_at"].as_str().and_then(|t| t.parse().ok()))
            .collect();
        // (`<[_]>::first`: diesel's `RunQueryDsl::first` is in scope too.)
        if <[_]>::first(&times)
            .is_some_and(|t0| (chrono::Utc::now() - *t0).num_milliseconds() > 5_200)
        {
            break times;
        }
        assert!(Instant::now() < deadline, "no provider calls");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t0 = times[0];
    let in_5s = times
        .iter()
        .filter(|t| (**t - t0).num_milliseconds() < 5000)
        .count();
    // The limit is never exceeded by more than 10 %; the lower bound leaves room for a
    // loaded CI machine running the other tests of this binary alongside.
    assert!(
        (200..=275).contains(&in_5s),
        "{in_5s} requests in 5 s at 50/s"
    );
}

#[tokio::test]
async fn given_a_job_that_hits_max_deliver_without_an_outcome_then_it_becomes_a_dead_letter() {
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "hi"}]))
        .await;
    let id = env.submit("m1", json!({"phone": PHONE})).await;
    // A crash-looping consumer: takes the job and never answers, max_deliver (4) times.
    let consumer: async_nats::jetstream::consumer::PullConsumer = env
        .js
        .get_stream("DELIVERIES")
        .await
        .expect("stream")
        .get_consumer("workers-sms-normal")
        .await
        .expect("consumer");
    let mut taken = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken < 4 {
        assert!(Instant::now() < deadline, "took the job 4 times ({taken})");
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .expect("fetch");
        while let Some(Ok(_unanswered)) = futures::StreamExt::next(&mut batch).await {
            taken += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The server gives the job up when its last ack wait runs out and it would deliver it
    // again: one more pull after that.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    while futures::StreamExt::next(&mut batch).await.is_some() {}
    // Workers for another channel: the sweeper runs in every workers process.
    let s = env.settings(|s| s.channels = vec![quizflow_core::Channel::Webhook]);
    env.workers(s);
    env.wait_status(id, &[("sms", "dead")], Duration::from_secs(20))
        .await;
    let dl = env.js.get_stream("DEAD_LETTERS").await.expect("stream");
    let letter: Value = serde_json::from_slice(
        &dl.get_last_raw_message_by_subject("dead.deliveries.sms")
            .await
            .expect("dl")
            .payload,
    )
    .expect("json");
    assert_eq!(letter["class"], "max_deliveries");
    let mut deliveries = env.js.get_stream("DELIVERIES").await.expect("stream");
    assert_eq!(
        deliveries.info().await.expect("info").state.messages,
        0,
        "the stranded job left the work queue"
    );
}

#[tokio::test]
async fn given_jobs_of_every_priority_then_high_drains_before_normal_before_low() {
    let mut env = Env::start().await;
    let mut created = Vec::new();
    for p in ["low", "normal", "high"] {
        let spec = parse_campaign(&json!({"name": p, "priority": p, "match": {}, "actions": [{"channel": "sms", "template": p}]})).expect("valid");
        let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
        created.push(
            quizflow_store::campaigns::insert(&mut conn, &spec)
                .await
                .expect("insert"),
        );
    }
    env.client
        .publish(subjects::CAMPAIGNS_CHANGED, "x".into())
        .await
        .expect("notify");
    env.wait_matching(&created.iter().collect::<Vec<_>>()).await;
    for i in 0..3 {
        env.submit(&format!("p{i}"), json!({"phone": PHONE})).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if quizflow_testkit::items_in(&env.js, "DELIVERIES").await == 9 {
            break;
        }
        assert!(Instant::now() < deadline, "9 jobs queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = env.settings(|s| s.concurrency = 1);
    env.workers(s);
    let deadline = Instant::now() + Duration::from_secs(20);
    let bodies = loop {
        let sms = env.mock_get("/_mock/messages?channel=sms").await;
        let bodies: Vec<String> = sms["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["body"].as_str().map(str::to_owned))
            .collect();
        if bodies.len() == 9 {
            break bodies;
        }
        assert!(Instant::now() < deadline, "9 sent: {bodies:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        bodies,
        ["high", "high", "high", "normal", "normal", "normal", "low", "low", "low"]
    );
}

#[tokio::test]
async fn given_email_over_smtp_then_it_is_sent_with_unsubscribe_headers_and_an_unknown_mailbox_is_suppressed(
) {
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "email", "subject": "Seu resultado", "template": "<p>Olá {{ respondent.name }}</p>"}])).await;
    let port = env.smtp_port;
    let s = env.settings(|s| {
        s.providers.email = quizflow_workers::provider::Sender::alone(
            quizflow_workers::provider::Provider::smtp(
                "127.0.0.1",
                port,
                quizflow_workers::provider::SmtpTls::None,
                None,
                "quizflow@example.com",
            )
            .expect("smtp provider"),
        );
        s.public_url = Some("https://quizflow.example".into());
    });
    env.workers(s);
    let ok = env
        .submit("e1", json!({"email": "ana@example.com", "name": "Ana"}))
        .await;
    let bounce = env.submit("e2", json!({"email": mock::BOUNCE_EMAIL})).await;
    env.wait_status(ok, &[("email", "sent")], Duration::from_secs(20))
        .await;
    // `550 5.1.1`: the mailbox does not exist. A hard bounce: suppressed, not dead-lettered.
    let rows = env
        .wait_status(bounce, &[("email", "suppressed")], Duration::from_secs(20))
        .await;
    assert_eq!(rows[0].2, 1, "a 5xx from SMTP is permanent: one attempt");
    assert_eq!(
        common::count(
            &env.db.url,
            "SELECT count(*) AS n FROM suppressions WHERE channel = 'email' AND reason = 'hard_bounce'"
        )
        .await,
        1
    );
    let email = env.mock_get("/_mock/messages?channel=email").await;
    let messages = email["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["to"], "ana@example.com");
    assert_eq!(messages[0]["subject"], "Seu resultado");
    assert!(
        messages[0]["body"]
            .as_str()
            .is_some_and(|b| b.contains("Ol")),
        "{}",
        messages[0]
    );
    // Marketing mail: the RFC 8058 headers and a plain-text part beside the HTML.
    let m = &messages[0];
    assert!(
        m["headers"]["List-Unsubscribe"]
            .as_str()
            .is_some_and(|v| v.starts_with("<https://quizflow.example/v1/unsubscribe/")),
        "{m}"
    );
    assert_eq!(
        m["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
    assert_eq!(m["text"], "Olá Ana", "{m}");
    assert_eq!(m["body"], "<p>Olá Ana</p>", "{m}");
}

#[tokio::test]
async fn given_a_job_redelivered_after_it_was_sent_then_it_is_acked_without_sending_again() {
    let mut env = Env::start().await;
    env.campaign(json!([{"channel": "sms", "template": "once"}]))
        .await;
    let s = env.settings(|_| {});
    env.workers(s);
    let id = env.submit("s1", json!({"phone": PHONE})).await;
    env.wait_status(id, &[("sms", "sent")], Duration::from_secs(20))
        .await;
    // The same job again, as after a crash between the provider's answer and the ack.
    let mut conn = AsyncPgConnection::establish(&env.db.url).await.expect("db");
    #[derive(diesel::QueryableByName)]
    struct C {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        campaign_id: uuid::Uuid,
    }
    let c: C = diesel::sql_query("SELECT campaign_id FROM deliveries WHERE submission_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id.0)
        .get_result(&mut conn)
        .await
        .expect("ledger");
    let job = common::sms_job(id, c.campaign_id);
    let payload = serde_json::to_vec(&job).expect("job");
    let letter = quizflow_nats::Redrive {
        letter_id: "again".into(),
        kind: "delivery",
        payload: &payload,
    };
    assert_eq!(
        quizflow_nats::publish_redrives(&env.js, &[letter]).await,
        vec![true],
        "published"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = env.js.get_stream("DELIVERIES").await.expect("stream");
        if s.info().await.expect("info").state.messages == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the copy was consumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sms = env.mock_get("/_mock/requests").await;
    assert_eq!(
        sms["requests"].as_array().map(Vec::len),
        Some(1),
        "sent once only"
    );
}
