//! `/_mock/*`: what the mock received, the faults it injects, the delivery reports it sends.

use crate::*;
use poem::http::StatusCode;
use poem::web::{Data, Json, Query};
use poem::{handler, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub(crate) struct MessageFilter {
    channel: Option<String>,
    to: Option<String>,
}

#[handler]
pub(crate) fn list_messages(
    state: Data<&MockState>,
    Query(f): Query<MessageFilter>,
) -> Json<Value> {
    let inner = state.lock();
    let messages: Vec<&Message> = inner
        .messages
        .iter()
        .filter(|m| {
            f.channel.as_deref().is_none_or(|c| c == m.channel)
                && f.to.as_deref().is_none_or(|t| t == m.to)
        })
        .collect();
    Json(json!({ "messages": messages }))
}

#[handler]
pub(crate) fn clear_messages(state: Data<&MockState>) -> StatusCode {
    let mut inner = state.lock();
    inner.messages.clear();
    inner.requests.clear();
    StatusCode::NO_CONTENT
}

#[handler]
pub(crate) fn list_requests(state: Data<&MockState>) -> Json<Value> {
    let inner = state.lock();
    Json(json!({ "requests": inner.requests.iter().collect::<Vec<_>>() }))
}

#[handler]
pub(crate) fn set_fault(state: Data<&MockState>, Json(f): Json<Fault>) -> Response {
    if !matches!(
        f.channel.as_str(),
        "sms" | "email" | "whatsapp" | "webhook" | "captcha"
    ) || !(0.0..=1.0).contains(&f.rate)
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "invalid_request", "message": "channel must be sms|email|whatsapp|webhook|captcha and rate within 0..1", "details": []}})),
        )
            .into_response();
    }
    let key = match &f.sender {
        Some(s) => format!("{}/{s}", f.channel),
        None => f.channel.clone(),
    };
    let mut inner = state.lock();
    if f.rate == 0.0 && f.latency_ms == 0 {
        inner.faults.remove(&key);
    } else {
        inner.faults.insert(key, f.clone());
    }
    Json(f).into_response()
}

#[handler]
pub(crate) fn redirect() -> Response {
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header("location", "/webhooks/redirected")
        .finish()
}

/// The mock provider's routes over `state`.
#[handler]
pub(crate) fn set_callbacks(state: Data<&MockState>, Json(c): Json<Callbacks>) -> Response {
    if !(0.0..=1.0).contains(&c.share) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "share must be 0 to 1"})),
        )
            .into_response();
    }
    if c.status
        .as_deref()
        .is_some_and(|s| s != "delivered" && s != "failed")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "status must be delivered or failed"})),
        )
            .into_response();
    }
    state.set_callbacks(c);
    StatusCode::NO_CONTENT.into_response()
}

/// `{"sent": [{"channel", "status", "count"}]}`: callbacks sent, by the status they got.
#[handler]
pub(crate) fn callbacks_sent(state: Data<&MockState>) -> Json<Value> {
    let inner = state.lock();
    let sent: Vec<Value> = inner
        .callbacks_sent
        .iter()
        .map(|((channel, status), n)| json!({"channel": channel, "status": status, "count": n}))
        .collect();
    Json(json!({ "sent": sent }))
}

/// Per sender: messages accepted, and the busiest one-second bucket (aligned to whole seconds
/// of the mock's clock), to check per-sender rate limits from outside.
#[handler]
pub(crate) fn list_senders(state: Data<&MockState>) -> Json<Value> {
    let inner = state.lock();
    let mut per: std::collections::BTreeMap<(&str, &str), std::collections::HashMap<i64, u64>> =
        Default::default();
    for m in &inner.messages {
        *per.entry((m.channel, m.sender.as_str()))
            .or_default()
            .entry(m.received_at.timestamp())
            .or_default() += 1;
    }
    let senders: Vec<Value> = per
        .iter()
        .map(|((channel, sender), secs)| {
            json!({"channel": channel, "sender": sender,
                "messages": secs.values().sum::<u64>(),
                "busiest_second": secs.values().max().copied().unwrap_or(0)})
        })
        .collect();
    Json(json!({ "senders": senders }))
}
