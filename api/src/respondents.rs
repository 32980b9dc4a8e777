//! A person's data on request (the LGPD/GDPR access right): `GET /v1/respondents?phone=…` and/or
//! `email=…` (admin, audited as a personal-data read) answers every stored submission of that
//! person with its deliveries and their histories, their dead letters, and (on the first page)
//! their suppression-list entries, which outlive erasure. Paged by receipt time: `next` is the
//! `after` of the next page.

use crate::admin::db_error;
use crate::audit::AuditNote;
use crate::error::ApiError;
use crate::AppState;
use poem::web::{Data, Json, Query};
use poem::{handler, IntoResponse, Response};
use quizflow_store::respondents::After;
use std::sync::Arc;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    phone: Option<String>,
    email: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

/// `after`: `<receipt time in µs since the epoch>.<submission id>`, as `next` gives it.
fn cursor(raw: &str) -> Option<After> {
    let (micros, id) = raw.split_once('.')?;
    Some(After {
        received_at: chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id: uuid::Uuid::parse_str(id).ok()?,
    })
}

/// The query's `after` and `limit`, once the contacts are valid.
fn check(q: &ExportQuery) -> Result<(Option<After>, i64), ApiError> {
    if q.phone.is_none() && q.email.is_none() {
        return Err(ApiError::invalid_field(
            "phone",
            "phone and/or email is required",
        ));
    }
    if q.phone
        .as_deref()
        .is_some_and(|p| !quizflow_core::is_e164(p))
    {
        return Err(ApiError::invalid_field(
            "phone",
            "must be an E.164 number (+5511987654321)",
        ));
    }
    if q.email
        .as_deref()
        .is_some_and(|e| !quizflow_core::is_email(e))
    {
        return Err(ApiError::invalid_field(
            "email",
            "must be an e-mail address",
        ));
    }
    let after = match q.after.as_deref() {
        None => None,
        Some(raw) => Some(cursor(raw).ok_or_else(|| {
            ApiError::invalid_field("after", "must be the `next` of an earlier page")
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 1000"));
    }
    Ok((after, limit))
}

#[handler]
pub async fn export(
    state: Data<&Arc<AppState>>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let (after, limit) = check(&q)?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    let page = quizflow_store::respondents::page(
        &mut conn,
        q.phone.as_deref(),
        q.email.as_deref(),
        after,
        limit,
    )
    .await
    .map_err(db_error)?;
    // The list holds keyed hashes only: the person's, per channel; the first page has them.
    let suppressions = match after {
        Some(_) => Vec::new(),
        None => {
            let hashes = state
                .settings
                .consent
                .hash_key
                .person_hashes(q.phone.as_deref(), q.email.as_deref());
            quizflow_store::respondents::suppressions(&mut conn, &hashes)
                .await
                .map_err(db_error)?
        }
    };
    let next = page
        .next
        .map(|n| format!("{}.{}", n.received_at.timestamp_micros(), n.id));
    let note = serde_json::json!({
        "submissions": page.submissions.len(),
        "dead_letters": page.dead_letters.len(),
        "suppressions": suppressions.len(),
    });
    let body = serde_json::json!({
        "submissions": page.submissions,
        "dead_letters": page.dead_letters,
        "suppressions": suppressions,
        "next": next,
    });
    let mut resp = Json(body).into_response();
    resp.extensions_mut().insert(AuditNote::new(None, note));
    Ok(resp)
}
