//! Cancelling pending messages (contract §3.3): `POST /v1/cancellations {"key"}` cancels every
//! pending delivery whose rendered `cancel_key` is that key (a paid invoice's reminders);
//! `POST /v1/submissions/{id}/cancel` every pending delivery of one submission. Both are
//! admin routes, audited; a call already under way finishes and is recorded, and the answer
//! says how many were cancelled and how many were already calling.

use crate::admin::db_error;
use crate::audit::AuditNote;
use crate::error::ApiError;
use crate::intake::{check_content_type, read_body};
use crate::AppState;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse, Response};
use quizflow_store::deliveries::cancel::{self, Cancelled};
use std::sync::Arc;

/// The longest cancel key (the batcher stores none longer).
const MAX_KEY: usize = 200;

#[handler]
pub async fn by_key(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let value = read_body(headers, body, 4 * 1024).await?;
    let key = match value.get("key") {
        Some(serde_json::Value::String(k))
            if !k.trim().is_empty() && k.len() <= MAX_KEY && !k.chars().any(char::is_control) =>
        {
            k.trim().to_owned()
        }
        _ => {
            let why = format!(
                "must be a non-empty string of at most {MAX_KEY} bytes, without control characters"
            );
            return Err(ApiError::invalid_field("key", why));
        }
    };
    if let Some(k) = value
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "key"))
    {
        return Err(ApiError::invalid_field(k, "unknown field"));
    }
    let mut conn = state.db.get().await.map_err(db_error)?;
    let done = cancel::by_key(&mut conn, &key).await.map_err(db_error)?;
    Ok(answer(done, key))
}

#[handler]
pub async fn submission(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no stored submission with this id (it may not be stored yet)",
        )
    };
    let id = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    let done = cancel::by_submission(&mut conn, id)
        .await
        .map_err(db_error)?;
    if done
        == (Cancelled {
            cancelled: 0,
            in_flight: 0,
        })
        && quizflow_store::submissions::get(&mut conn, id)
            .await
            .map_err(db_error)?
            .is_none()
    {
        return Err(not_found());
    }
    Ok(answer(done, id.to_string()))
}

fn answer(done: Cancelled, target: String) -> Response {
    let body = serde_json::json!({"cancelled": done.cancelled, "in_flight": done.in_flight});
    let mut resp = Json(body.clone()).into_response();
    resp.extensions_mut()
        .insert(AuditNote::new(Some(target), body));
    resp
}
