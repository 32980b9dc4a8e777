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
    // The two dead SMS rows lose their error text and history; the two e-mails were cancelled
    // by the barrier first, and count here only if an attempt had left a history to clear.
    assert!(
        (2..=4).contains(&e["deliveries_scrubbed"].as_i64().unwrap_or(-1)),
        "{first}"
    );
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
        let got: Value = api.admin_get(&format!("/v1/submissions/{id}")).await;
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
    let dead: Value = api.admin_get("/v1/dead-letters").await;
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
    let audit: Value = api.admin_get("/v1/audit").await;
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

/// Messages the mock received for `to`.
async fn messages_to(mock: &str, to: &str) -> usize {
    let v: Value = reqwest::get(format!(
        "{mock}/_mock/messages?to={}",
        to.replace('+', "%2B")
    ))
    .await
    .expect("mock")
    .json()
    .await
    .expect("json");
    v["messages"].as_array().map_or(0, Vec::len)
}

/// An SMS campaign for every lead of `promo-nov`, known to the batcher (a first lead matched
/// it) before the test goes on.
async fn sms_campaign(api: &Api, mock: &str) {
    let created = api
        .admin(Method::POST, "/v1/campaigns")
        .json(
            &json!({"name": "Welcome", "quiz_id": "promo-nov", "match": {},
                      "actions": [{"channel": "sms", "template": "Oi {{ respondent.name }}"}]}),
        )
        .send()
        .await
        .expect("campaign");
    assert_eq!(created.status().as_u16(), 201);
    let mut n = 0usize;
    let db = api.db.url.clone();
    wait_for(
        "the batcher matches with the campaign",
        Duration::from_secs(30),
        || {
            n += 1;
            let (db, body) = (
                db.clone(),
                lead(&format!("+55119{n:08}"), &format!("warm{n}@example.com"), n),
            );
            let post = api.post_owned("/v1/quizzes/promo-nov/submissions".into(), body);
            async move {
                assert_eq!(post.await.status().as_u16(), 202);
                count(&db, "SELECT count(*) AS n FROM deliveries").await > 0
            }
        },
    )
    .await;
    let _ = mock;
}

/// contract §4: an erasure is a barrier for a batch a batcher holds. The person's lead is in the
/// batcher's store transaction (held there 3 s by a slow statement) when the erasure comes.
/// Before: the erasure answered at once and the batch then stored the person, with their SMS.
/// Now: the erasure waits for that transaction (or the transaction sees its tombstone); after
/// the answer the person is nowhere and no message reaches them.
#[tokio::test]
async fn given_an_erasure_racing_a_batch_the_batcher_holds_then_nothing_of_that_person_is_stored_or_sent(
) {
    let api = Api::start().await;
    let mock = pipeline_behind(
        &api.nats.url(),
        &api.db.url,
        quizflow_mock_provider::MockState::default(),
        |_| {},
    )
    .await;
    sms_campaign(&api, &mock).await;
    let db = api.db.url.clone();
    exec(
        &db,
        "CREATE FUNCTION test_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$",
    )
    .await;
    exec(
        &db,
        "CREATE TRIGGER slow BEFORE INSERT ON submission_ids FOR EACH STATEMENT EXECUTE FUNCTION test_slow()",
    )
    .await;
    const HER: &str = "+5511977770001";
    let r = api
        .post_json(
            "/v1/quizzes/promo-nov/submissions",
            &lead(HER, "her@example.com", 1),
        )
        .await;
    assert_eq!(r.status().as_u16(), 202);
    wait_for(
        "the batcher is inside its store transaction",
        Duration::from_secs(20),
        || {
            let db = db.clone();
            async move {
                count(
                    &db,
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
                )
                .await
                    > 0
            }
        },
    )
    .await;
    erase(&api, json!({"phone": HER})).await;
    exec(&db, "DROP TRIGGER slow ON submission_ids").await;
    // Whatever the batcher does from here, the person must not come back.
    let other = api
        .post_json(
            "/v1/quizzes/promo-nov/submissions",
            &lead("+5511977770002", "him@example.com", 2),
        )
        .await;
    assert_eq!(other.status().as_u16(), 202);
    wait_for(
        "a later lead of someone else is sent",
        Duration::from_secs(30),
        || {
            let mock = mock.clone();
            async move { messages_to(&mock, "+5511977770002").await == 1 }
        },
    )
    .await;
    assert_eq!(
        count(&db, &format!("SELECT count(*) AS n FROM submissions WHERE phone = '{HER}' OR email = 'her@example.com'")).await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM deliveries WHERE status IN ('queued', 'sending', 'sent', 'failed')
                    AND submission_id IN (SELECT id FROM submissions WHERE phone IS NULL AND email IS NULL)").await,
        0
    );
    assert_eq!(
        messages_to(&mock, HER).await,
        0,
        "no message to an erased person"
    );
}

/// contract §4: an erasure is a barrier for a job a worker holds. The person's SMS is claimed
/// (`sending`) and waits for the rate limiter behind nine others when the erasure comes.
/// Before: a live claim was left alone and the SMS went out after the erasure answered. Now:
/// the claim is cancelled, the worker's check before the call finds it gone, nothing is sent.
#[tokio::test]
async fn given_an_erasure_while_a_worker_holds_the_persons_claimed_job_then_it_is_never_sent() {
    let api = Api::start().await;
    let mock = pipeline_behind(
        &api.nats.url(),
        &api.db.url,
        quizflow_mock_provider::MockState::default(),
        |s| s.rate_per_sec = 2,
    )
    .await;
    sms_campaign(&api, &mock).await;
    let db = api.db.url.clone();
    const HER: &str = "+5511966660010";
    // One batch request: one pack, one chunk of jobs, the person's last.
    let mut items: Vec<Value> = (0..9)
        .map(|n| {
            lead(
                &format!("+55119666600{n:02}"),
                &format!("o{n}@example.com"),
                n,
            )
        })
        .collect();
    items.push(lead(HER, "her@example.com", 10));
    let r = api
        .post_json(
            "/v1/submissions/batch",
            &json!({"submissions": items.iter().map(|l| {
            let mut l = l.clone();
            l["quiz_id"] = json!("promo-nov");
            l
        }).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await.expect("json");
    assert!(
        answer["results"]
            .as_array()
            .is_some_and(|rs| rs.iter().all(|r| r["status"] == 202)),
        "{answer}"
    );
    wait_for("the person's SMS is claimed and waiting", Duration::from_secs(30), || {
        let db = db.clone();
        async move {
            count(&db, &format!("SELECT count(*) AS n FROM deliveries d JOIN submissions s ON s.id = d.submission_id \
                                 WHERE s.phone = '{HER}' AND d.status = 'sending'")).await == 1
        }
    })
    .await;
    assert_eq!(
        messages_to(&mock, HER).await,
        0,
        "sent before the erasure: the test is too slow"
    );
    erase(&api, json!({"phone": HER})).await;
    wait_for("the nine others are sent", Duration::from_secs(60), || {
        let mock = mock.clone();
        async move {
            let v: Value = reqwest::get(format!("{mock}/_mock/messages?channel=sms"))
                .await
                .expect("mock")
                .json()
                .await
                .expect("json");
            v["messages"].as_array().map_or(0, |m| {
                m.iter()
                    .filter(|m| {
                        m["to"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("+55119666600"))
                    })
                    .count()
            }) >= 9
        }
    })
    .await;
    // Room for a late send to show up, then none may have.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        messages_to(&mock, HER).await,
        0,
        "no message after the erasure answered"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM deliveries WHERE status = 'cancelled'"
        )
        .await,
        1
    );
}

async fn exec(db: &str, sql: &str) {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let mut conn = diesel_async::AsyncPgConnection::establish(db)
        .await
        .expect("db");
    diesel::sql_query(sql).execute(&mut conn).await.expect(sql);
}
