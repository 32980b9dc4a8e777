//! Direct sends (contract §3.3): `POST /v1/messages` sends one message through the pipeline —
//! its own ledger row, claim, limits, retries, receipts, suppression, caps and dead letters —
//! without a campaign; `POST /v1/messages/batch` up to 1,000; `GET /v1/messages/{id}` its
//! status. The message is stored (with its rows `scheduled`, due at `send_at` or now) before
//! the answer, and the schedule firer publishes it: a 202 is a message that will be sent.

use crate::admin::db_error;
use crate::audit::AuditNote;
use crate::error::ApiError;
use crate::intake::{check_content_type, read_body};
use crate::AppState;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse, Response};
use quizflow_core::{Channel, FieldProblem, ValidationErrors};
use quizflow_store::messages::{NewMessage, QUIZ_ID};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use uuid::Uuid;

/// The most messages one batch takes.
pub const MAX_BATCH: usize = 1000;
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Message ids of idempotency keys: the same key is the same message, on every API instance.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x7a1d_93c4_52e8_4b07_a6f1_3c9e_0b84_d215);

/// The fields of an action a message takes (what it sends).
const ACTION_KEYS: &[&str] = &[
    "channel",
    "template",
    "subject",
    "url",
    "image",
    "whatsapp_template",
    "from",
    "strict",
    "fallback",
];
/// The message's own fields (who, when, why).
const MESSAGE_KEYS: &[&str] = &[
    "to",
    "respondent",
    "variables",
    "send_at",
    "idempotency_key",
    "purpose",
    "priority",
];

#[handler]
pub async fn send_one(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let value = read_body(headers, body, MAX_MESSAGE_BYTES).await?;
    let msg = parse(&value, "").map_err(|p| ApiError::invalid(ValidationErrors(p)))?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    let new = quizflow_store::messages::create(&mut conn, std::slice::from_ref(&msg))
        .await
        .map_err(db_error)?;
    let duplicate = !new.first().copied().unwrap_or(false);
    let body = json!({"message_id": msg.id, "duplicate": duplicate});
    let mut resp = (StatusCode::ACCEPTED, Json(body.clone())).into_response();
    if let Ok(location) = poem::http::HeaderValue::from_str(&format!("/v1/messages/{}", msg.id)) {
        resp.headers_mut().insert("location", location);
    }
    resp.extensions_mut()
        .insert(AuditNote::new(Some(msg.id.to_string()), body));
    Ok(resp)
}

#[handler]
pub async fn send_batch(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let value = read_body(headers, body, MAX_BATCH_BYTES).await?;
    let items = match value.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_BATCH => a,
        _ => {
            let why = format!("is required: an array of 1 to {MAX_BATCH} messages");
            return Err(ApiError::invalid_field("messages", why));
        }
    };
    if let Some(k) = value
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "messages"))
    {
        return Err(ApiError::invalid_field(k, "unknown field"));
    }
    let mut problems = Vec::new();
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match parse(item, &format!("messages[{i}].")) {
            Ok(m) => messages.push(m),
            Err(p) => problems.extend(p),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(ValidationErrors(problems)));
    }
    let mut conn = state.db.get().await.map_err(db_error)?;
    let new = quizflow_store::messages::create(&mut conn, &messages)
        .await
        .map_err(db_error)?;
    let answers: Vec<Value> = messages
        .iter()
        .zip(&new)
        .map(|(m, n)| json!({"message_id": m.id, "duplicate": !n}))
        .collect();
    let created = new.iter().filter(|n| **n).count();
    let note = json!({"messages": messages.len(), "created": created});
    let mut resp = (StatusCode::ACCEPTED, Json(json!({"messages": answers}))).into_response();
    resp.extensions_mut().insert(AuditNote::new(None, note));
    Ok(resp)
}

#[handler]
pub async fn get(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no message with this id",
        )
    };
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    let stored = quizflow_store::submissions::get(&mut conn, id)
        .await
        .map_err(db_error)?
        .filter(|s| s["quiz_id"] == QUIZ_ID)
        .ok_or_else(not_found)?;
    Ok(Json(answer(id, stored)).into_response())
}

/// A message as `GET /v1/messages/{id}` shows it: the first row's status (or the one that
/// reached the person, when a fallback did) and every ledger row of it.
fn answer(id: Uuid, stored: Value) -> Value {
    let id_text = id.to_string();
    let rows: Vec<Value> = stored["deliveries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["campaign_id"].as_str() == Some(id_text.as_str()))
                .map(|d| {
                    let mut d = d.clone();
                    if let Some(o) = d.as_object_mut() {
                        o.remove("campaign_id");
                        let step = o.get("step").and_then(Value::as_u64).unwrap_or(0);
                        let fallback = u16::try_from(step).ok().and_then(quizflow_core::primary_of);
                        o.insert("fallback".into(), fallback.is_some().into());
                    }
                    d
                })
                .collect()
        })
        .unwrap_or_default();
    let reached = rows
        .iter()
        .find(|d| d["status"] == "delivered")
        .or_else(|| rows.iter().find(|d| d["status"] == "sent"));
    let first = rows.first();
    let status = reached.or(first).map(|d| d["status"].clone());
    json!({
        "message_id": id,
        "status": status,
        "channel": first.map(|d| d["channel"].clone()),
        "reached_by": reached.map(|d| d["channel"].clone()),
        "created_at": stored["received_at"],
        "deliveries": rows,
    })
}

/// Validates one message (`at` prefixes every field path) into what is stored.
pub(crate) fn parse(v: &Value, at: &str) -> Result<NewMessage, Vec<FieldProblem>> {
    let mut p = Vec::new();
    let problem = |p: &mut Vec<FieldProblem>, field: &str, why: &str| {
        p.push(FieldProblem {
            field: format!("{at}{field}"),
            problem: why.to_owned(),
        })
    };
    let Some(o) = v.as_object() else {
        problem(&mut p, "", "must be an object");
        return Err(p);
    };
    for k in o.keys() {
        if !ACTION_KEYS.contains(&k.as_str()) && !MESSAGE_KEYS.contains(&k.as_str()) {
            problem(&mut p, k, "unknown field");
        }
    }
    let action: Map<String, Value> = o
        .iter()
        .filter(|(k, _)| ACTION_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let spec = spec(&action, o, at, &mut p);
    let (mut respondent, variables) = lead(o, at, &mut p);
    let channel = spec
        .as_ref()
        .and_then(|s| s.actions.first())
        .map(|a| a.channel);
    recipient(channel, o.get("to"), &mut respondent, at, &mut p);
    let send_at = match o.get("send_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| problem(&mut p, "send_at", "must be an RFC 3339 timestamp"))
            .ok(),
        Some(_) => {
            problem(&mut p, "send_at", "must be an RFC 3339 timestamp");
            None
        }
    };
    let key = match o.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if quizflow_core::IdempotencyKey::parse(k).is_ok() => {
            Some(k.clone())
        }
        Some(_) => {
            let why = "must be 1 to 128 printable ASCII characters";
            problem(&mut p, "idempotency_key", why);
            None
        }
    };
    let (Some(spec), true) = (spec, p.is_empty()) else {
        return Err(p);
    };
    let id = match &key {
        Some(k) => Uuid::new_v5(&KEY_NAMESPACE, k.as_bytes()),
        None => Uuid::new_v4(),
    };
    let channel = spec.actions[0].channel;
    Ok(NewMessage {
        id,
        phone: respondent.phone,
        email: respondent.email,
        name: respondent.name,
        locale: respondent.locale,
        timezone: respondent.timezone,
        score: None,
        answers: json!([]),
        tags: Vec::new(),
        metadata: Value::Object(variables),
        idempotency_key: key,
        priority: spec.priority.as_str().to_owned(),
        spec: serde_json::to_value(&spec).unwrap_or(Value::Null),
        rows: vec![(channel.as_str().to_owned(), 0)],
        send_at,
    })
}

/// `to` as the respondent's phone or e-mail, as the channel takes it (a webhook takes none).
fn recipient(
    channel: Option<Channel>,
    to: Option<&Value>,
    respondent: &mut quizflow_core::Respondent,
    at: &str,
    p: &mut Vec<FieldProblem>,
) {
    let mut problem = |why: &str| {
        p.push(FieldProblem {
            field: format!("{at}to"),
            problem: why.to_owned(),
        })
    };
    match (channel, to) {
        (Some(Channel::Webhook), Some(_)) => {
            problem("a webhook message goes to its url, not to a contact")
        }
        (Some(Channel::Webhook), None) | (None, _) => {}
        (Some(c), to) => match to.and_then(Value::as_str) {
            Some(t) if c == Channel::Email && quizflow_core::is_email(t) => {
                respondent.email = Some(t.to_owned())
            }
            Some(t) if c != Channel::Email && quizflow_core::is_e164(t) => {
                respondent.phone = Some(t.to_owned())
            }
            _ if c == Channel::Email => problem("is required: an e-mail address"),
            _ => problem("is required: an E.164 phone number (+5511999990000)"),
        },
    }
}

/// The message's one-off campaign: its action, priority (`high` by default) and purpose
/// (`transactional` by default: a confirmation or a ticket), validated as a campaign is.
fn spec(
    action: &Map<String, Value>,
    o: &Map<String, Value>,
    at: &str,
    p: &mut Vec<FieldProblem>,
) -> Option<quizflow_core::CampaignSpec> {
    let body = json!({
        "name": "direct message", "active": true, "match": {},
        "actions": [action],
        "priority": o.get("priority").filter(|v| !v.is_null()).cloned().unwrap_or_else(|| "high".into()),
        "purpose": o.get("purpose").filter(|v| !v.is_null()).cloned().unwrap_or_else(|| "transactional".into()),
    });
    match quizflow_core::parse_campaign(&body) {
        Ok(s) => Some(s),
        Err(e) => {
            p.extend(e.0.into_iter().map(|f| FieldProblem {
                field: format!("{at}{}", f.field.trim_start_matches("actions[0].")),
                problem: f.problem,
            }));
            None
        }
    }
}

/// The recipient's other details (`respondent`: name, locale, timezone, and the other
/// contact a fallback needs) and the template variables (stored as the lead's `metadata`).
fn lead(
    o: &Map<String, Value>,
    at: &str,
    p: &mut Vec<FieldProblem>,
) -> (quizflow_core::Respondent, Map<String, Value>) {
    let mut body = Map::new();
    if let Some(r) = o.get("respondent") {
        body.insert("respondent".into(), r.clone());
    }
    if let Some(v) = o.get("variables") {
        body.insert("metadata".into(), v.clone());
    }
    match quizflow_core::parse_submission(&Value::Object(body)) {
        Ok(s) => (s.respondent, s.metadata),
        Err(e) => {
            p.extend(e.0.into_iter().map(|f| FieldProblem {
                field: format!("{at}{}", f.field.replacen("metadata", "variables", 1)),
                problem: f.problem,
            }));
            Default::default()
        }
    }
}
