//! Provider status callbacks through the whole pipeline: the mock reports each accepted SMS,
//! WhatsApp and e-mail back to the API, signed as Twilio, Meta and Svix sign, and the ledger
//! moves `sent → delivered`; a late failure becomes `dead` with a dead letter; forged,
//! unknown and repeated reports change nothing.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;

use common::{count, pipeline_behind, wait_until};
use harness::Api;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const APP_SECRET: &str = "meta-app-secret-for-tests";
const VERIFY: &str = "verify-me";
const EMAIL_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZg==";

#[tokio::test]
async fn given_the_mock_reports_delivery_then_rows_move_forward_only_and_forgeries_change_nothing()
{
    // Twilio signs the URL it calls: the API checks against its public address.
    let api = Api::start_with_base(|s, base| {
        s.callbacks = quizflow_api::CallbackSettings {
            public_url: Some(base.to_owned()),
            twilio_auth_token: Some("mock".into()),
            whatsapp_app_secret: Some(APP_SECRET.into()),
            whatsapp_verify_token: Some(VERIFY.into()),
            email_webhook_secret: Some(EMAIL_SECRET.into()),
            evolution_webhook_key: None,
        };
    })
    .await;
    let state = quizflow_mock_provider::MockState::default();
    state.set_callbacks(quizflow_mock_provider::Callbacks {
        share: 1.0,
        delay_ms: 50,
        status: None,
        whatsapp_url: Some(api.url("/v1/callbacks/whatsapp")),
        whatsapp_app_secret: Some(APP_SECRET.into()),
        email_url: Some(api.url("/v1/callbacks/email")),
        email_secret: Some(EMAIL_SECRET.into()),
        ..Default::default()
    });
    let base = api.base.clone();
    let mock = pipeline_behind(&api.nats.url(), &api.db.url, state, move |s| {
        s.providers = std::mem::replace(
            &mut s.providers,
            quizflow_workers::Providers::mock("http://unused"),
        )
        .with_status_callbacks(&base);
    })
    .await;
    let created = api
        .admin(Method::POST, "/v1/campaigns")
        .json(&json!({
            "name": "Welcome", "quiz_id": "promo-nov", "match": {},
            "actions": [{"channel": "sms", "template": "Oi {{ respondent.name }}"},
                        {"channel": "whatsapp", "template": "Oi"},
                        {"channel": "email", "subject": "Oi", "template": "<p>{{ score }}</p>"}]
        }))
        .send()
        .await
        .expect("campaign");
    assert_eq!(created.status().as_u16(), 201);

    let posts = (0..20).map(|n| {
        api.post_owned(
            "/v1/quizzes/promo-nov/submissions".into(),
            json!({"respondent": {"phone": format!("+55119{n:08}"), "email": format!("p{n}@example.com")}, "score": 72}),
        )
    });
    for r in futures::future::join_all(posts).await {
        assert_eq!(r.status().as_u16(), 202);
    }
    let db = api.db.url.clone();
    wait_until("every message delivered", Duration::from_secs(60), || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'",
            )
            .await
                == 60
        }
    })
    .await;
    // The history says who reported it.
    let detail = count(
        &db,
        "SELECT count(*) AS n FROM deliveries WHERE history::text LIKE '%twilio delivered%' \
           OR history::text LIKE '%whatsapp delivered%' OR history::text LIKE '%email.delivered%'",
    )
    .await;
    assert_eq!(detail, 60);

    // Late failures: the next ones bounce after being accepted.
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{mock}/_mock/callbacks"))
        .json(&json!({"share": 1.0, "delay_ms": 50, "status": "failed",
            "whatsapp_url": api.url("/v1/callbacks/whatsapp"), "whatsapp_app_secret": APP_SECRET,
            "email_url": api.url("/v1/callbacks/email"), "email_secret": EMAIL_SECRET}))
        .send()
        .await
        .expect("callbacks");
    assert!(r.status().is_success());
    let late = api
        .post_json(
            "/v1/quizzes/promo-nov/submissions",
            &json!({"respondent": {"phone": "+5511988887777", "email": "late@example.com"}, "score": 72}),
        )
        .await;
    assert_eq!(late.status().as_u16(), 202);
    wait_until(
        "three late failures dead-lettered",
        Duration::from_secs(60),
        || {
            let db = db.clone();
            async move {
                count(
                    &db,
                    "SELECT count(*) AS n FROM deliveries WHERE status = 'dead'",
                )
                .await
                    == 3
                    && count(
                        &db,
                        "SELECT count(*) AS n FROM dead_letters WHERE class = 'permanent'",
                    )
                    .await
                        == 3
            }
        },
    )
    .await;
    let dead: Value = api.admin_get("/v1/dead-letters").await;
    let reasons: Vec<&str> = dead["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|l| l["reason"].as_str())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("30008")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("131026")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("email.bounced")),
        "{reasons:?}"
    );
    assert!(dead["items"][0]["recipient"].is_string());

    // Forward only: a failure reported for a delivered row changes nothing (and vice versa).
    let delivered_before = count(
        &db,
        "SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'",
    )
    .await;
    #[derive(diesel::QueryableByName)]
    struct Key {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        submission_id: uuid::Uuid,
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        campaign_id: uuid::Uuid,
    }
    let key: Key = {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let mut conn = diesel_async::AsyncPgConnection::establish(&db)
            .await
            .expect("db");
        diesel::sql_query("SELECT submission_id, campaign_id FROM deliveries WHERE status = 'delivered' AND channel = 'whatsapp' LIMIT 1")
            .get_result(&mut conn)
            .await
            .expect("a delivered row")
    };
    let reference = format!("{}_{}_whatsapp", key.submission_id, key.campaign_id);
    let whatsapp = |status: &str, reference: &str, secret: &str| {
        let doc = json!({"object": "whatsapp_business_account", "entry": [{"id": "x", "changes": [{"field": "messages",
            "value": {"statuses": [{"id": "wamid.x", "status": status, "biz_opaque_callback_data": reference,
            "errors": [{"code": 131026, "title": "late"}]}]}}]}]});
        let raw = serde_json::to_vec(&doc).expect("json");
        let sig = quizflow_core::signatures::hub(secret, &raw);
        http.post(api.url("/v1/callbacks/whatsapp"))
            .header("content-type", "application/json")
            .header("X-Hub-Signature-256", sig)
            .body(raw)
            .send()
    };
    let r = whatsapp("failed", &reference, APP_SECRET)
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["moved"], 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'"
        )
        .await,
        delivered_before
    );
    // Unknown references are answered 200 and change nothing.
    let r = whatsapp("delivered", "not-ours", APP_SECRET)
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    // A forged signature is refused, whatever it claims.
    let r = whatsapp("failed", &reference, "guessed")
        .await
        .expect("post");
    harness::assert_error(r, 403, "invalid_signature").await;
    let r = http
        .post(api.url("/v1/callbacks/twilio?ref=x"))
        .header("X-Twilio-Signature", "AAAA")
        .form(&[("MessageStatus", "delivered")])
        .send()
        .await
        .expect("post");
    harness::assert_error(r, 403, "invalid_signature").await;
    let r = http
        .post(api.url("/v1/callbacks/email"))
        .header("svix-id", "msg_1")
        .header("svix-timestamp", "1")
        .header("svix-signature", "v1,AAAA")
        .body("{}")
        .send()
        .await
        .expect("post");
    harness::assert_error(r, 403, "invalid_signature").await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'"
        )
        .await,
        delivered_before
    );

    // Meta's handshake: the challenge back only for the right token.
    let ok = http
        .get(api.url(&format!("/v1/callbacks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=1158201444")))
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.text().await.expect("text"), "1158201444");
    let bad =
        http.get(api.url(
            "/v1/callbacks/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
        ))
        .send()
        .await
        .expect("get");
    harness::assert_error(bad, 403, "invalid_signature").await;

    // Every report is counted, by provider and outcome.
    let metrics = http
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        r#"quizflow_callbacks_total{outcome="delivered",provider="twilio"} 20"#,
        r#"quizflow_callbacks_total{outcome="failed",provider="email"} 1"#,
        r#"quizflow_callbacks_total{outcome="stale",provider="whatsapp"} 1"#,
        r#"quizflow_callbacks_total{outcome="unknown",provider="whatsapp"} 1"#,
        r#"quizflow_callbacks_total{outcome="rejected",provider="whatsapp"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
}

/// A signed Svix delivery replayed inside its 5-minute window (the same `svix-id`) is
/// answered 200 without effect: a seen-set of ids, shared by every API instance (PostgreSQL).
#[tokio::test]
async fn given_a_signed_email_report_replayed_then_the_replay_changes_nothing() {
    let api = Api::start_with(|s| {
        s.callbacks.email_webhook_secret = Some(EMAIL_SECRET.into());
    })
    .await;
    let raw = serde_json::to_vec(&json!({"type": "email.delivered",
        "data": {"tags": {"quizflow_ref": "not-ours"}}}))
    .expect("json");
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig =
        quizflow_core::signatures::svix(EMAIL_SECRET, "msg_replayed", &ts, &raw).expect("secret");
    let send = || {
        reqwest::Client::new()
            .post(api.url("/v1/callbacks/email"))
            .header("content-type", "application/json")
            .header("svix-id", "msg_replayed")
            .header("svix-timestamp", &ts)
            .header("svix-signature", &sig)
            .body(raw.clone())
            .send()
    };
    let first: Value = send().await.expect("post").json().await.expect("json");
    assert_eq!(first["replayed"], Value::Null, "{first}");
    let again = send().await.expect("post");
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["replayed"], true, "{again}");
}
