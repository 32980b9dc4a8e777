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
        NOT_ON_WHATSAPP if channel == "whatsapp" => (131026, "Message undeliverable"),
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
    #[serde(default)]
    messaging_service_sid: Option<String>,
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
    Path(account_sid): Path<String>,
    headers: &HeaderMap,
    Form(f): Form<TwilioForm>,
) -> Response {
    let key = header(headers, "i-twilio-idempotency-token");
    let from = From {
        sender: f
            .from
            .clone()
            .or(f.messaging_service_sid.clone())
            .unwrap_or_default(),
        account: Some(account_sid.clone()),
    };
    match state.judge("sms", &from, &f.to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            let sid = format!("SM{}", uuid_like());
            state.record(Message {
                channel: "sms",
                to: f.to.clone(),
                sender: from.sender,
                account: Some(account_sid),
                body: f.body,
                idempotency_key: key,
                received_at: Utc::now(),
                ..Default::default()
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

/// Evolution's `messages.update` webhook for an accepted message: `DELIVERY_ACK` (or `ERROR`
/// when the callbacks say `failed`), carrying the API key as Evolution does.
fn evolution_update(state: &MockState, cb: &Callbacks, instance: &str, to: &str, id: &str) {
    let (Some(url), Some(key)) = (cb.evolution_url.clone(), cb.evolution_api_key.clone()) else {
        return;
    };
    let status = if cb.failed() { "ERROR" } else { "DELIVERY_ACK" };
    let doc = json!({"event": "messages.update", "instance": instance,
        "data": {"keyId": id, "remoteJid": format!("{}@s.whatsapp.net", to.trim_start_matches('+')),
                 "fromMe": true, "status": status, "instanceId": instance},
        "date_time": Utc::now(), "apikey": key});
    state.call_back("whatsapp", cb.delay_ms, move |http| {
        http.post(url).header("apikey", key).json(&doc)
    });
}

/// What a Cloud message says: a text, a media one whose caption is the text, or a template's
/// parameters (one per line) and header image.
fn cloud_content(body: &Value, template: Option<&Value>) -> (String, Option<String>) {
    let text = match template {
        Some(t) => t["body"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        None => body["text"]["body"]
            .as_str()
            .or(body["image"]["caption"].as_str())
            .unwrap_or_default()
            .to_owned(),
    };
    let media = body["image"]["link"]
        .as_str()
        .or_else(|| template?["header_image"].as_str())
        .map(str::to_owned);
    (text, media)
}

/// A Cloud API template as the mock records it: name, language, body parameters, header image.
fn cloud_template(t: &Value) -> Value {
    let components = t["components"].as_array().cloned().unwrap_or_default();
    let part = |kind: &str| {
        components
            .iter()
            .find(|c| c["type"] == kind)
            .and_then(|c| c["parameters"].as_array().cloned())
            .unwrap_or_default()
    };
    let body: Vec<Value> = part("body").iter().map(|p| p["text"].clone()).collect();
    let header_image = part("header")
        .first()
        .map(|p| p["image"]["link"].clone())
        .unwrap_or(Value::Null);
    json!({"name": t["name"], "language": t["language"]["code"], "body": body,
        "header_image": header_image})
}

/// Template errors in the Cloud API's shape, for magic template names: `quizflow_missing`
/// (132001, not approved in that language), `quizflow_paused` (132015); a parameter that is
/// empty is 132000 (Meta counts it as missing).
fn template_error(t: &Value) -> Option<Response> {
    let (code, title, details) = match t["name"].as_str() {
        Some("quizflow_missing") => (132001, "Template name does not exist in the translation", "template name (quizflow_missing) does not exist in pt_BR"),
        Some("quizflow_paused") => (132015, "Template is Paused", "template is paused due to low quality"),
        _ if t["body"].as_array().is_some_and(|b| b.iter().any(|p| p.as_str().is_none_or(str::is_empty))) => {
            (132000, "Number of parameters does not match the expected number of params", "body: number of localizable_params (0) does not match the expected number of params")
        }
        _ => return None,
    };
    let body = json!({"error": {"message": "(#132001) Template name does not exist in the translation",
        "type": "OAuthException", "code": code, "title": title,
        "error_data": {"messaging_product": "whatsapp", "details": details}}});
    Some((StatusCode::BAD_REQUEST, Json(body)).into_response())
}

pub(crate) fn uuid_like() -> String {
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

#[handler]
pub(crate) async fn whatsapp_cloud(
    state: Data<&MockState>,
    Path((_version, phone_id)): Path<(String, String)>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let template = (body["type"] == "template").then(|| cloud_template(&body["template"]));
    let key = header(headers, "idempotency-key");
    let from = From {
        sender: phone_id,
        account: None,
    };
    if let Some(refused) = template.as_ref().and_then(template_error) {
        state.note_request("whatsapp", &from, &to, 400, key);
        return refused;
    }
    let (text, media) = cloud_content(&body, template.as_ref());
    match state.judge("whatsapp", &from, &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            state.record(Message {
                channel: "whatsapp",
                to: to.clone(),
                sender: from.sender,
                body: text,
                media,
                template,
                idempotency_key: key,
                received_at: Utc::now(),
                ..Default::default()
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
    Path(instance): Path<String>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let to = body["number"].as_str().unwrap_or_default().to_owned();
    let text = body["text"].as_str().unwrap_or_default().to_owned();
    let key = header(headers, "idempotency-key");
    let from = From {
        sender: instance,
        account: None,
    };
    match state.judge("whatsapp", &from, &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            let id = uuid_like().to_uppercase();
            if let Some(cb) = state.callback_for() {
                evolution_update(&state, &cb, &from.sender, &to, &id);
            }
            state.record(Message {
                channel: "whatsapp",
                to: to.clone(),
                sender: from.sender,
                body: text,
                idempotency_key: key,
                received_at: Utc::now(),
                ..Default::default()
            });
            let jid = format!("{}@s.whatsapp.net", to.trim_start_matches('+'));
            (
                StatusCode::CREATED,
                Json(json!({"key": {"remoteJid": jid, "fromMe": true, "id": id}, "status": "PENDING"})),
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
    let from = From {
        sender: body["from"].as_str().unwrap_or_default().to_owned(),
        account: None,
    };
    match state.judge("email", &from, &to, key.clone()).await {
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
                sender: from.sender,
                account: None,
                template: None,
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
    match state
        .judge("webhook", &From::default(), &to, key.clone())
        .await
    {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            state.record(Message {
                channel: "webhook",
                to,
                body,
                idempotency_key: key,
                received_at: Utc::now(),
                ..Default::default()
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
