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
    if !matches!(f.channel.as_str(), "sms" | "email" | "whatsapp" | "webhook")
        || !(0.0..=1.0).contains(&f.rate)
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "invalid_request", "message": "channel must be sms|email|whatsapp|webhook and rate within 0..1", "details": []}})),
        )
            .into_response();
    }
    let mut inner = state.lock();
    if f.rate == 0.0 && f.latency_ms == 0 {
        inner.faults.remove(&f.channel);
    } else {
        inner.faults.insert(f.channel.clone(), f.clone());
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
