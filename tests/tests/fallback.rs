//! Channel fallback, direct sends and campaign preview/test through the public routes
//! (contract §3.3): a lead not on WhatsApp (131026) gets the SMS fallback, once; a `delivered`
//! receipt before `after` cancels the fallback, and no receipt within it sends the fallback
//! once; a direct send posted twice with one idempotency key is one message, its status
//! readable; a batch sends each; a preview renders a lead's texts without sending, and a test
//! send reaches the given recipient.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;
mod world;

use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use world::{world, World, FINAL};

const NOT_ON_WHATSAPP: &str = quizflow_mock_provider::NOT_ON_WHATSAPP;

async fn messages(w: &World, channel: &str, to: &str) -> Vec<Value> {
    let r: Value = w
        .http
        .get(format!(
            "{}/_mock/messages?channel={channel}&to={}",
            w.mock,
            to.replace('+', "%2B")
        ))
        .send()
        .await
        .expect("messages")
        .json()
        .await
        .expect("json");
    r["messages"].as_array().cloned().unwrap_or_default()
}

async fn post(w: &World, path: &str, body: &Value) -> (u16, Value) {
    let r = w
        .api
        .admin(Method::POST, path)
        .json(body)
        .send()
        .await
        .expect("post");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn campaign() -> Value {
    json!({"name": "Evento", "quiz_id": "evento", "match": {}, "actions": [
        {"channel": "whatsapp", "whatsapp_template": {"name": "event_reminder", "language": "pt_BR",
            "body": ["{{ respondent.name }}"]},
         "fallback": {"channel": "sms", "template": "Oi {{ respondent.name }}, seu ingresso chegou",
                      "on": ["not_on_channel", "undelivered"], "after": "10m"}}
    ]})
}

#[tokio::test]
async fn a_lead_not_on_whatsapp_gets_the_sms_fallback_once_and_a_receipt_cancels_it() {
    let w = world().await;
    w.campaign(campaign()).await;
    // Not on WhatsApp: the first row ends skipped (no dead letter), the SMS goes at once.
    let id = w
        .submit("evento", json!({"phone": NOT_ON_WHATSAPP, "name": "Ana"}))
        .await;
    let rows = w.deliveries(&id, FINAL, 2).await;
    let by = |c: &str| {
        rows.iter()
            .find(|d| d["channel"] == c)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by("whatsapp")["status"], "skipped", "{rows:?}");
    assert!(by("whatsapp")["last_error"]
        .as_str()
        .unwrap_or_default()
        .contains("not_on_channel"));
    assert_eq!(by("sms")["status"], "sent", "{rows:?}");
    let sms = messages(&w, "sms", NOT_ON_WHATSAPP).await;
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(sms[0]["body"], "Oi Ana, seu ingresso chegou");
    let dead: Value = w.api.admin_get("/v1/dead-letters").await;
    assert_eq!(dead["items"].as_array().map_or(0, Vec::len), 0, "{dead}");

    // Delivered before `after`: the armed fallback is cancelled, never sent.
    let put = w
        .http
        .put(format!("{}/_mock/callbacks", w.mock))
        .json(&json!({"share": 1.0, "delay_ms": 200,
            "whatsapp_url": w.api.url("/v1/callbacks/whatsapp"),
            "whatsapp_app_secret": "meta-app-secret-for-tests"}))
        .send()
        .await
        .expect("put");
    assert!(put.status().is_success());
    let phone = "+5511987653333";
    let id = w
        .submit("evento", json!({"phone": phone, "name": "Bia"}))
        .await;
    let rows = w.deliveries(&id, &["delivered", "cancelled"], 2).await;
    let by = |c: &str| {
        rows.iter()
            .find(|d| d["channel"] == c)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by("whatsapp")["status"], "delivered", "{rows:?}");
    assert_eq!(by("sms")["status"], "cancelled", "{rows:?}");
    let wa = messages(&w, "whatsapp", phone).await;
    assert_eq!(wa.len(), 1);
    assert_eq!(wa[0]["template"]["body"], json!(["Bia"]));
    assert!(messages(&w, "sms", phone).await.is_empty());
}

#[tokio::test]
async fn direct_sends_are_idempotent_readable_and_batched_and_campaigns_preview_and_test() {
    let w = world().await;
    let msg = json!({"channel": "sms", "to": "+5511987654444", "template": "Ingresso {{ metadata.code }}",
        "variables": {"code": "A7"}, "idempotency_key": "ticket-A7"});
    let (s1, a) = post(&w, "/v1/messages", &msg).await;
    let (s2, b) = post(&w, "/v1/messages", &msg).await;
    assert_eq!((s1, s2), (202, 202), "{a} {b}");
    assert_eq!(a["message_id"], b["message_id"]);
    assert_eq!(
        (&a["duplicate"], &b["duplicate"]),
        (&json!(false), &json!(true))
    );
    let id = a["message_id"].as_str().expect("id").to_owned();
    common::wait_until("the message is sent", Duration::from_secs(30), || {
        let (w, id) = (&w, &id);
        async move { w.api.admin_get(&format!("/v1/messages/{id}")).await["status"] == "sent" }
    })
    .await;
    let last = w.api.admin_get(&format!("/v1/messages/{id}")).await;
    assert_eq!(
        last["deliveries"].as_array().map_or(0, Vec::len),
        1,
        "{last}"
    );
    let sent = messages(&w, "sms", "+5511987654444").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["body"], "Ingresso A7");

    // Bad input names its field; an unknown id is a 404.
    let (s, e) = post(
        &w,
        "/v1/messages",
        &json!({"channel": "sms", "to": "123", "template": "x"}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["details"][0]["field"].as_str()),
        (400, Some("to")),
        "{e}"
    );
    let r = w
        .api
        .admin(
            Method::GET,
            &format!("/v1/messages/{}", uuid::Uuid::new_v4()),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);

    // A batch: each message once.
    let batch: Vec<Value> = (0..3)
        .map(|i| json!({"channel": "sms", "to": format!("+55119876550{i:02}"), "template": "Oi"}))
        .collect();
    let (s, b) = post(&w, "/v1/messages/batch", &json!({"messages": batch})).await;
    assert_eq!(s, 202, "{b}");
    for i in 0..3 {
        let to = format!("+55119876550{i:02}");
        common::wait_until(
            "each batch message is sent",
            Duration::from_secs(30),
            || {
                let (w, to) = (&w, &to);
                async move { messages(w, "sms", to).await.len() == 1 }
            },
        )
        .await;
    }

    // Preview renders without sending; test sends once to the sample lead.
    let c = w
        .campaign(json!({"name": "Boas-vindas", "quiz_id": "bv", "match": {}, "actions": [
            {"channel": "sms", "template": "Oi {{ respondent.name }}, nota {{ score }}", "delay": "1d"},
            {"channel": "email", "subject": "Oi", "template": "{{ metadata.nada }}"}]}))
        .await;
    let lead = json!({"respondent": {"phone": "+5511987656666", "name": "Caio", "email": "caio@example.com"}, "score": 80});
    let (s, p) = post(&w, &format!("/v1/campaigns/{c}/preview"), &lead).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["actions"][0]["body"], "Oi Caio, nota 80", "{p}");
    assert_eq!(p["actions"][1]["skipped"], "empty_render", "{p}");
    assert!(messages(&w, "sms", "+5511987656666").await.is_empty());
    let (s, t) = post(&w, &format!("/v1/campaigns/{c}/test"), &lead).await;
    assert_eq!(s, 202, "{t}");
    let tid = t["message_id"].as_str().expect("id").to_owned();
    let rows = w.deliveries(&tid, FINAL, 2).await;
    let by = |ch: &str| {
        rows.iter()
            .find(|d| d["channel"] == ch)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by("sms")["status"], "sent", "{rows:?}");
    assert_eq!(
        by("email")["status"],
        "skipped",
        "the empty e-mail is never sent: {rows:?}"
    );
    let sms = messages(&w, "sms", "+5511987656666").await;
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0]["body"], "Oi Caio, nota 80");
}

#[tokio::test]
async fn no_delivered_receipt_within_after_sends_the_fallback_once() {
    let w = world().await;
    let mut c = campaign();
    c["quiz_id"] = "lembrete".into();
    c["actions"][0]["fallback"]["on"] = json!(["undelivered"]);
    c["actions"][0]["fallback"]["after"] = "2s".into();
    w.campaign(c).await;
    // The mock reports nothing: the WhatsApp row stays `sent`, and `after` later the SMS goes.
    let phone = "+5511987657777";
    let id = w
        .submit("lembrete", json!({"phone": phone, "name": "Duda"}))
        .await;
    let first = w.status(&id, "whatsapp", &["sent"]).await;
    assert_eq!(first["status"], "sent");
    let rows = w.deliveries(&id, &["sent"], 2).await;
    let sms = rows
        .iter()
        .find(|d| d["channel"] == "sms")
        .cloned()
        .unwrap_or_default();
    assert_eq!(sms["status"], "sent", "{rows:?}");
    // Due `after` the WhatsApp message was sent (the row's last update), not before.
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default()).expect("a time")
    };
    let waited = at(&sms["due_at"]) - at(&first["updated_at"]);
    assert!(
        waited >= chrono::Duration::milliseconds(1900),
        "the fallback waited {waited}: {rows:?}"
    );
    let sent = messages(&w, "sms", phone).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["body"], "Oi Duda, seu ingresso chegou");
    assert_eq!(messages(&w, "whatsapp", phone).await.len(), 1);
}
