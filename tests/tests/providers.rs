//! Providers and pending messages through the public routes (contract §3.3): cancel keys and
//! per-submission cancels (a paid invoice's scheduled reminder and its message still waiting
//! for the provider are cancelled before any call; the answer counts them; bad input is a
//! 400, an unknown submission a 404, each cancel audited), and Evolution API's delivery
//! reports (`MESSAGES_UPDATE`, its API key checked) moving rows to `delivered`.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;
mod world;

use common::wait_until;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use world::{world_with, World, EVOLUTION_KEY, FINAL};

async fn cancel(w: &World, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = w.api.admin(Method::POST, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("cancel");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_cancel_key_stops_a_scheduled_reminder_and_a_queued_message_before_any_call() {
    // One message a second: the last leads' messages wait their turn, claimed or queued.
    let w = world_with(|s| s.rate_per_sec = 1).await;
    w.campaign(json!({"name": "Billing", "quiz_id": "inv", "match": {}, "actions": [
        {"channel": "sms", "template": "Invoice {{ metadata.invoice }} is due", "cancel_key": "invoice-{{ metadata.invoice }}"},
        {"channel": "sms", "template": "Reminder: {{ metadata.invoice }}", "delay": "1h", "cancel_key": "invoice-{{ metadata.invoice }}"}
    ]}))
    .await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let r = w
            .api
            .post_json(
                "/v1/quizzes/inv/submissions",
                &json!({"respondent": {"phone": format!("+551198765{i:04}")},
                        "metadata": {"invoice": format!("A{i}")}}),
            )
            .await;
        assert_eq!(r.status().as_u16(), 202);
        let b: Value = r.json().await.expect("json");
        ids.push(b["submission_id"].as_str().expect("id").to_owned());
    }
    // The last lead's rows are stored (its reminder is scheduled); its first message waits
    // behind seven others at one a second.
    let last = ids.last().expect("ids").clone();
    w.deliveries(&last, &["scheduled"], 1).await;
    let (status, body) = cancel(&w, "/v1/cancellations", Some(json!({"key": "invoice-A7"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"cancelled": 2, "in_flight": 0}));
    let rows = w.deliveries(&last, FINAL, 2).await;
    assert!(rows.iter().all(|d| d["status"] == "cancelled"), "{rows:?}");
    // The others are sent; the cancelled lead never reaches the provider.
    for id in &ids[..7] {
        w.deliveries(id, &["sent", "delivered"], 1).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.calls("sms", "+5511987650007").await, 0);
    // Again: nothing left to cancel.
    let (_, again) = cancel(&w, "/v1/cancellations", Some(json!({"key": "invoice-A7"}))).await;
    assert_eq!(again["cancelled"], 0);
    // A whole submission: its scheduled reminder.
    let (status, body) = cancel(&w, &format!("/v1/submissions/{}/cancel", ids[0]), None).await;
    assert_eq!((status, &body["cancelled"]), (200, &json!(1)), "{body}");
    let reminder = w.deliveries(&ids[0], &["cancelled"], 1).await;
    assert_eq!(
        reminder
            .iter()
            .filter(|d| d["status"] == "cancelled")
            .count(),
        1
    );
    // Bad input, unknown ids, and the audit trail.
    for bad in [
        json!({}),
        json!({"key": ""}),
        json!({"key": 5}),
        json!({"key": "k", "x": 1}),
        json!({"key": "a\u{0}b"}),
    ] {
        let (status, body) = cancel(&w, "/v1/cancellations", Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    let unknown = format!("/v1/submissions/{}/cancel", uuid::Uuid::new_v4());
    assert_eq!(cancel(&w, &unknown, None).await.0, 404);
    let unauth = w
        .http
        .post(w.api.url("/v1/cancellations"))
        .json(&json!({"key": "invoice-A1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(unauth.status().as_u16(), 401);
    wait_until("both cancels audited", Duration::from_secs(10), || async {
        let log = w.api.admin_get("/v1/audit?limit=100").await;
        let actions: Vec<String> = log["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["action"].as_str().map(str::to_owned))
            .collect();
        actions.iter().any(|a| a == "cancellation.create")
            && actions.iter().any(|a| a == "submission.cancel")
    })
    .await;
}

#[tokio::test]
async fn evolution_reports_move_its_messages_to_delivered_and_a_wrong_key_moves_nothing() {
    let w = world_with(|s| {
        let base = match &s.providers.whatsapp[0].provider {
            quizflow_workers::provider::Provider::WhatsappCloud { base, .. } => base.clone(),
            other => panic!("{other:?}"),
        };
        s.providers.whatsapp = quizflow_workers::provider::Sender::alone(
            quizflow_workers::provider::Provider::Evolution {
                base,
                instance: "vendas".into(),
                api_key: "instance-key".into(),
            },
        );
    })
    .await;
    // Every accepted message is reported a moment later, as Evolution's webhook does.
    let mut callbacks = json!({"share": 1.0, "delay_ms": 300,
        "evolution_url": w.api.url("/v1/callbacks/evolution"), "evolution_api_key": EVOLUTION_KEY});
    let put = |body: Value| {
        w.http
            .put(format!("{}/_mock/callbacks", w.mock))
            .json(&body)
            .send()
    };
    assert!(put(callbacks.clone())
        .await
        .expect("put")
        .status()
        .is_success());
    w.campaign(
        json!({"name": "Oi", "quiz_id": "evo", "match": {}, "actions": [
        {"channel": "whatsapp", "template": "Oi {{ respondent.name }}"}]}),
    )
    .await;
    let id = w
        .submit("evo", json!({"phone": "+5511987651111", "name": "Ana"}))
        .await;
    let d = w.status(&id, "whatsapp", &["delivered"]).await;
    assert_eq!(d["status"], "delivered", "{d}");
    // A report with the wrong key is refused and moves nothing.
    callbacks["evolution_api_key"] = "not-the-key".into();
    assert!(put(callbacks).await.expect("put").status().is_success());
    let id = w
        .submit("evo", json!({"phone": "+5511987652222", "name": "Bia"}))
        .await;
    let d = w.status(&id, "whatsapp", &["sent", "delivered"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = w.status(&id, "whatsapp", &["sent", "delivered"]).await;
    assert_eq!(
        (&d["status"], &again["status"]),
        (&json!("sent"), &json!("sent"))
    );
    let refused = w
        .http
        .post(w.api.url("/v1/callbacks/evolution"))
        .header("apikey", "not-the-key")
        .json(
            &json!({"event": "messages.update", "data": {"keyId": "X", "status": "DELIVERY_ACK"}}),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status().as_u16(), 403);
}
