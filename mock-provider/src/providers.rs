//! The providers' request shapes: Twilio Messages, WhatsApp Cloud, Evolution `sendText`,
//! Resend `/emails` and webhooks, each judged (faults, magic recipients) and recorded.

use crate::*;
use chrono::Utc;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Form, Json, Path};
use poem::{handler, IntoResponse, Response};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

/// Permanent errors of the magic recipients, in each provider's own error shape.
pub(crate) fn magic(channel: &str, to: &str) -> Option<Response> {
    let (code, msg) = match to {
        INVALID_NUMBER => (21211, "The 'To' number is not a valid phone number."),
        NOT_SMS_CAPABLE => (21614, "'To' number is not a valid mobile number"),
        BOUNCE_EMAIL => (550, "recipient rejected"),
        OPTED_OUT => (21610, "Attempt to send to unsubscribed recipient"),
        _ => return None,
    };
    let body = match channel {
        "whatsapp" if to == OPTED_OUT => json!({"error": {"code": 131050,
            "message": "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business."}}),
        // WhatsApp Cloud's "message undeliverable" for an unreachable recipient.
        "whatsapp" => json!({"error": {"code": 131026, "message": msg}}),
        "email" => json!({"statusCode": 422, "name": "validation_error", "message": msg}),
        _ => json!({"code": code, "message": msg, "status": 400}),
    };
    let status = if channel == "email" {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_REQUEST
    };
    Some((status, Json(body)).into_response())
}

pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TwilioForm {
    to: String,
    #[serde(default)]
    from: Option<String>,
    body: String,
    #[serde(default)]
    status_callback: Option<String>,
}

/// The password of a Basic `Authorization` header: Twilio signs with the account's token.
pub(crate) fn basic_password(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let raw = header(headers, "authorization")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, p)| p.to_owned())
}

#[handler]
pub(crate) async fn twilio(
    state: Data<&MockState>,
    Path(_sid): Path<String>,
    headers: &HeaderMap,
    Form(f): Form<TwilioForm>,
) -> Response {
    let key = header(headers, "i-twilio-idempotency-token");
    match state.judge("sms", &f.to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            let sid = format!("SM{}", uuid_like());
            state.record(Message {
                channel: "sms",
                to: f.to.clone(),
                subject: None,
                body: f.body,
                media: None,
                idempotency_key: key,
                received_at: Utc::now(),
                text: None,
                headers: Default::default(),
            });
            if let (Some(url), Some(token), Some(cb)) = (
                f.status_callback.clone(),
                basic_password(headers),
                state.callback_for(),
            ) {
                let mut params = vec![
                    ("MessageSid".to_owned(), sid.clone()),
                    ("AccountSid".to_owned(), "ACmock".to_owned()),
                    ("To".to_owned(), f.to.clone()),
                    (
                        "MessageStatus".to_owned(),
                        if cb.failed() {
                            "undelivered"
                        } else {
                            "delivered"
                        }
                        .to_owned(),
                    ),
                ];
                if cb.failed() {
                    params.push(("ErrorCode".to_owned(), "30008".to_owned()));
                }
                let signature = quizflow_core::signatures::twilio(&token, &url, &params);
                state.call_back("sms", cb.delay_ms, move |http| {
                    http.post(url)
                        .header("X-Twilio-Signature", signature)
                        .form(&params)
                });
            }
            (
                StatusCode::CREATED,
                Json(json!({"sid": sid, "status": "queued", "to": f.to, "from": f.from})),
            )
                .into_response()
        }
    }
}

pub(crate) fn uuid_like() -> String {
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

#[handler]
pub(crate) async fn whatsapp_cloud(
    state: Data<&MockState>,
    Path((_version, _phone_id)): Path<(String, String)>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    // A text message, or a media one whose caption is the text.
    let text = body["text"]["body"]
        .as_str()
        .or(body["image"]["caption"].as_str())
        .unwrap_or_default()
        .to_owned();
    let media = body["image"]["link"].as_str().map(str::to_owned);
    let key = header(headers, "idempotency-key");
    match state.judge("whatsapp", &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            state.record(Message {
                channel: "whatsapp",
                to: to.clone(),
                subject: None,
                body: text,
                media,
                idempotency_key: key,
                received_at: Utc::now(),
                text: None,
                headers: Default::default(),
            });
            let wamid = format!("wamid.{}", uuid_like());
            if let Some(cb) = state.callback_for() {
                if let (Some(url), Some(secret)) =
                    (cb.whatsapp_url.clone(), cb.whatsapp_app_secret.clone())
                {
                    let mut status = json!({"id": wamid, "status": if cb.failed() { "failed" } else { "delivered" },
                        "timestamp": Utc::now().timestamp().to_string(), "recipient_id": to.trim_start_matches('+'),
                        "biz_opaque_callback_data": body["biz_opaque_callback_data"]});
                    if cb.failed() {
                        status["errors"] =
                            json!([{"code": 131026, "title": "Message undeliverable"}]);
                    }
                    let doc = json!({"object": "whatsapp_business_account", "entry": [{"id": "mock", "changes": [
                        {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [status]}}]}]});
                    let raw = serde_json::to_vec(&doc).unwrap_or_default();
                    let signature = quizflow_core::signatures::hub(&secret, &raw);
                    state.call_back("whatsapp", cb.delay_ms, move |http| {
                        http.post(url)
                            .header("content-type", "application/json")
                            .header("X-Hub-Signature-256", signature)
                            .body(raw)
                    });
                }
            }
            Json(json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid}]})).into_response()
        }
    }
}

#[handler]
pub(crate) async fn evolution(
    state: Data<&MockState>,
    Path(_instance): Path<String>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let to = body["number"].as_str().unwrap_or_default().to_owned();
    let text = body["text"].as_str().unwrap_or_default().to_owned();
    let key = header(headers, "idempotency-key");
    match state.judge("whatsapp", &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            state.record(Message {
                channel: "whatsapp",
                to,
                subject: None,
                body: text,
                media: None,
                idempotency_key: key,
                received_at: Utc::now(),
                text: None,
                headers: Default::default(),
            });
            (
                StatusCode::CREATED,
                Json(json!({"key": {"id": uuid_like()}, "status": "PENDING"})),
            )
                .into_response()
        }
    }
}

#[handler]
pub(crate) async fn resend(
    state: Data<&MockState>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let to = match &body["to"] {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    let key = header(headers, "idempotency-key");
    match state.judge("email", &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            let email_id = uuid_like();
            // A complaint is always reported (when e-mail callbacks are configured at all).
            let complaint = to == COMPLAINT_EMAIL;
            let cb = state.callback_for().or_else(|| {
                complaint
                    .then(|| state.callbacks())
                    .filter(|c| c.email_url.is_some())
            });
            if let Some(cb) = cb {
                resend_event(&state, &cb, &body, &to, &email_id, complaint);
            }
            state.record(Message {
                channel: "email",
                to,
                subject: body["subject"].as_str().map(str::to_owned),
                body: body["html"]
                    .as_str()
                    .or(body["text"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
                media: None,
                idempotency_key: key,
                received_at: Utc::now(),
                text: body["text"].as_str().map(str::to_owned),
                headers: body["headers"].as_object().cloned().unwrap_or_default(),
            });
            Json(json!({"id": email_id})).into_response()
        }
    }
}

#[handler]
pub(crate) async fn webhook(
    state: Data<&MockState>,
    Path(path): Path<String>,
    headers: &HeaderMap,
    body: String,
) -> Response {
    let key = header(headers, "idempotency-key");
    let to = format!("/webhooks/{path}");
    match state.judge("webhook", &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            state.record(Message {
                channel: "webhook",
                to,
                subject: None,
                body,
                media: None,
                idempotency_key: key,
                received_at: Utc::now(),
                text: None,
                headers: Default::default(),
            });
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// Resend's webhook event for an accepted e-mail (Svix-signed): `email.complained` for the
/// complaint address, `email.bounced` when the callbacks say `failed`, else `email.delivered`.
fn resend_event(
    state: &MockState,
    cb: &Callbacks,
    body: &Value,
    to: &str,
    email_id: &str,
    complaint: bool,
) {
    let (Some(url), Some(secret)) = (cb.email_url.clone(), cb.email_secret.clone()) else {
        return;
    };
    // Resend's event shape: tags come back as an object.
    let mut tags = serde_json::Map::new();
    for t in body["tags"].as_array().into_iter().flatten() {
        if let (Some(n), Some(v)) = (t["name"].as_str(), t["value"].as_str()) {
            tags.insert(n.to_owned(), v.into());
        }
    }
    let mut data =
        json!({"email_id": email_id, "to": [to], "created_at": Utc::now(), "tags": tags});
    if cb.failed() {
        data["bounce"] = json!({"message": "mailbox does not exist", "type": "Permanent"});
    }
    let kind = match () {
        _ if complaint => "email.complained",
        _ if cb.failed() => "email.bounced",
        _ => "email.delivered",
    };
    let doc = json!({"type": kind, "created_at": Utc::now(), "data": data});
    let raw = serde_json::to_vec(&doc).unwrap_or_default();
    let id = format!("msg_{}", uuid_like());
    let ts = Utc::now().timestamp().to_string();
    if let Some(signature) = quizflow_core::signatures::svix(&secret, &id, &ts, &raw) {
        state.call_back("email", cb.delay_ms, move |http| {
            http.post(url)
                .header("content-type", "application/json")
                .header("svix-id", id)
                .header("svix-timestamp", ts)
                .header("svix-signature", signature)
                .body(raw)
        });
    }
}
