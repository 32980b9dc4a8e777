//! Admin routes (SPEC §2.3, §2.4): campaigns and reading stored submissions. Every one needs
//! `Authorization: Bearer <token>`, compared in constant time; without it, 401 on any route.

use crate::error::ApiError;
use crate::intake::{check_content_type, read_body};
use crate::AppState;
use poem::http::{header, HeaderMap, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, Endpoint, IntoResponse, Request, Response};
use quizflow_core::parse_campaign;
use quizflow_nats::subjects;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

const MAX_CAMPAIGN_BYTES: usize = 256 * 1024;

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid admin bearer token is required",
    )
}

/// Checks the bearer token before the request reaches any admin route.
pub async fn require_admin<E: Endpoint>(
    state: Arc<AppState>,
    ep: E,
    req: Request,
) -> poem::Result<Response> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (given, state.admin_token.as_deref()) {
        (Some(given), Some(expected)) => bool::from(given.as_bytes().ct_eq(expected.as_bytes())),
        _ => false,
    };
    if !ok {
        return Ok(unauthorized().into_response());
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

fn db_error(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "database unavailable");
    ApiError::unavailable("the database is unavailable; retry shortly")
}

fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    })
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such {what}"),
    )
}

impl AppState {
    /// Tells every batcher to reload campaigns (they also reload periodically, and on start).
    async fn announce_campaign_change(&self, id: Uuid) {
        let sent = self
            .nats
            .publish(subjects::CAMPAIGNS_CHANGED, id.to_string().into())
            .await;
        if let Err(e) = sent
            .map_err(|e| e.to_string())
            .and(self.nats.flush().await.map_err(|e| e.to_string()))
        {
            tracing::warn!(error = %e, "campaign change not announced; batchers pick it up on their next refresh");
        }
    }
}

async fn campaign_body(
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<quizflow_core::CampaignSpec, ApiError> {
    check_content_type(headers)?;
    let value = read_body(headers, body, MAX_CAMPAIGN_BYTES).await?;
    parse_campaign(&value).map_err(ApiError::invalid)
}

#[handler]
pub async fn create_campaign(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let spec = campaign_body(headers, body).await?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    let c = quizflow_migrations::campaigns::insert(&mut conn, &spec)
        .await
        .map_err(db_error)?;
    state.announce_campaign_change(c.id).await;
    tracing::info!(campaign = %c.id, "campaign created");
    let location = format!("/v1/campaigns/{}", c.id);
    Ok(Json(c)
        .with_status(StatusCode::CREATED)
        .with_header(header::LOCATION, location)
        .into_response())
}

#[handler]
pub async fn list_campaigns(
    state: Data<&Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut conn = state.db.get().await.map_err(db_error)?;
    let items = quizflow_migrations::campaigns::list(&mut conn)
        .await
        .map_err(db_error)?;
    Ok(Json(serde_json::json!({ "items": items })))
}

#[handler]
pub async fn get_campaign(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "campaign")?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    match quizflow_migrations::campaigns::get(&mut conn, id)
        .await
        .map_err(db_error)?
    {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(not_found("campaign")),
    }
}

#[handler]
pub async fn replace_campaign(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "campaign")?;
    let spec = campaign_body(headers, body).await?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    match quizflow_migrations::campaigns::replace(&mut conn, id, &spec)
        .await
        .map_err(db_error)?
    {
        Some(c) => {
            state.announce_campaign_change(c.id).await;
            tracing::info!(campaign = %c.id, version = c.version, "campaign replaced");
            Ok(Json(c).into_response())
        }
        None => Err(not_found("campaign")),
    }
}

#[handler]
pub async fn delete_campaign(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "campaign")?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    if quizflow_migrations::campaigns::delete(&mut conn, id)
        .await
        .map_err(db_error)?
    {
        state.announce_campaign_change(id).await;
        tracing::info!(campaign = %id, "campaign deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found("campaign"))
    }
}

#[handler]
pub async fn get_submission(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "submission")?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    match quizflow_migrations::submissions::get(&mut conn, id)
        .await
        .map_err(db_error)?
    {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no stored submission with this id (it may not be stored yet)",
        )),
    }
}

#[derive(serde::Deserialize)]
pub struct DeadLetterQuery {
    channel: Option<String>,
    limit: Option<i64>,
}

fn channel_param(raw: Option<&str>) -> Result<Option<&'static str>, ApiError> {
    match raw {
        None => Ok(None),
        Some(c) => quizflow_core::Channel::parse(c)
            .map(|c| Some(c.as_str()))
            .ok_or_else(|| {
                ApiError::invalid_field("channel", "must be sms, email, whatsapp or webhook")
            }),
    }
}

#[handler]
pub async fn list_dead_letters(
    state: Data<&Arc<AppState>>,
    poem::web::Query(q): poem::web::Query<DeadLetterQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let channel = channel_param(q.channel.as_deref())?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 1000"));
    }
    let mut conn = state.db.get().await.map_err(db_error)?;
    let items = quizflow_migrations::dead_letters::list(&mut conn, channel, limit)
        .await
        .map_err(db_error)?;
    Ok(Json(serde_json::json!({ "items": items })))
}

/// Takes dead letters for redrive and publishes their jobs again; what cannot be published
/// is put back on the list.
async fn redrive(
    state: &AppState,
    id: Option<Uuid>,
    channel: Option<&str>,
) -> Result<usize, ApiError> {
    let mut conn = state.db.get().await.map_err(db_error)?;
    let taken = quizflow_migrations::dead_letters::take_for_redrive(&mut conn, id, channel, 10_000)
        .await
        .map_err(db_error)?;
    let mut failed = Vec::new();
    let mut sent = 0;
    for t in &taken {
        let job: Option<quizflow_core::DeliveryJob> = t
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_slice(p).ok());
        let ok = match job {
            Some(job) => quizflow_nats::publish_redrive(&state.js, &job, &t.id.to_string())
                .await
                .is_ok(),
            None => false,
        };
        if ok {
            sent += 1;
        } else {
            failed.push(t.id);
        }
    }
    if !failed.is_empty() {
        quizflow_migrations::dead_letters::restore(&mut conn, &failed)
            .await
            .map_err(db_error)?;
        if sent == 0 {
            return Err(ApiError::unavailable(
                "the jobs could not be published; retry shortly",
            ));
        }
    }
    tracing::info!(
        redriven = sent,
        kept = failed.len(),
        "dead letters redriven"
    );
    Ok(sent)
}

#[handler]
pub async fn redrive_one(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "dead letter")?;
    match redrive(&state, Some(id), None).await? {
        0 => Err(not_found("open delivery dead letter")),
        n => Ok(Json(serde_json::json!({"redriven": n}))
            .with_status(StatusCode::ACCEPTED)
            .into_response()),
    }
}

#[handler]
pub async fn redrive_bulk(
    state: Data<&Arc<AppState>>,
    poem::web::Query(q): poem::web::Query<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let channel = channel_param(q.channel.as_deref())?;
    let n = redrive(&state, None, channel).await?;
    Ok(Json(serde_json::json!({"redriven": n}))
        .with_status(StatusCode::ACCEPTED)
        .into_response())
}
