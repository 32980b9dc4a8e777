//! Admin routes (contract §2.3, §2.4): campaigns and reading stored submissions. Every one needs
//! `Authorization: Bearer <token>`, compared in constant time; without it, 401 on any route.

use crate::audit::AuditNote;
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
    // Only wrong tokens are throttled, per client address (contract §2.4): a valid token always
    // gets in, so no one's guesses (behind a proxy every client may share one address) lock
    // the operators out. A guess past the limit is answered 429 without a verdict.
    if !ok {
        let ip = state.client_ip(&req);
        if state.auth_failures.is_over(&ip) {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many failed admin authentications; retry later",
            );
            e.retry_after = Some(60);
            return Ok(e.into_response());
        }
        // Only a presented, wrong token is a guess; a missing header guesses nothing.
        if given.is_some() {
            state.auth_failures.hit(ip);
        }
        return Ok(unauthorized().into_response());
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

pub(crate) fn db_error(e: impl std::fmt::Display) -> ApiError {
    // The driver's text can quote data: it goes to the log at warn, never to the client.
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

/// Attaches what the audit log records of this action beside route and outcome.
fn with_note(mut resp: Response, note: AuditNote) -> Response {
    resp.extensions_mut().insert(note);
    resp
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
    let c = quizflow_store::campaigns::insert(&mut conn, &spec)
        .await
        .map_err(db_error)?;
    state.announce_campaign_change(c.id).await;
    state.name_quiz(c.spec.quiz_id.as_ref());
    tracing::info!(campaign = %c.id, "campaign created");
    let location = format!("/v1/campaigns/{}", c.id);
    let note = AuditNote::new(
        c.id.to_string(),
        serde_json::json!({ "version": c.version, "campaign": &c.spec }),
    );
    Ok(with_note(
        Json(c)
            .with_status(StatusCode::CREATED)
            .with_header(header::LOCATION, location)
            .into_response(),
        note,
    ))
}

#[handler]
pub async fn list_campaigns(
    state: Data<&Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut conn = state.db.get().await.map_err(db_error)?;
    let items = quizflow_store::campaigns::list(&mut conn)
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
    match quizflow_store::campaigns::get(&mut conn, id)
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
    match quizflow_store::campaigns::replace(&mut conn, id, &spec)
        .await
        .map_err(db_error)?
    {
        Some(c) => {
            state.announce_campaign_change(c.id).await;
            state.name_quiz(c.spec.quiz_id.as_ref());
            tracing::info!(campaign = %c.id, version = c.version, "campaign replaced");
            let note = AuditNote::new(
                c.id.to_string(),
                serde_json::json!({
                    "version": c.version,
                    "previous_version": c.version - 1,
                    "campaign": &c.spec,
                }),
            );
            Ok(with_note(Json(c).into_response(), note))
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
    if quizflow_store::campaigns::delete(&mut conn, id)
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
    match quizflow_store::submissions::get(&mut conn, id)
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
) -> Result<Response, ApiError> {
    let channel = channel_param(q.channel.as_deref())?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 1000"));
    }
    let mut conn = state.db.get().await.map_err(db_error)?;
    let items = quizflow_store::dead_letters::list(&mut conn, channel, limit)
        .await
        .map_err(db_error)?;
    let note = AuditNote::new(
        None,
        serde_json::json!({ "channel": channel, "limit": limit, "returned": items.len() }),
    );
    Ok(with_note(
        Json(serde_json::json!({ "items": items })).into_response(),
        note,
    ))
}

/// Redrives in chunks, each an outbox step: take (one transaction: letters marked, ledger
/// rows reset), publish the chunk pipelined with `redrive:<id>` message ids, then mark it
/// published. No connection is held across publishes. A chunk that could not be published
/// stays in the outbox and the workers' relay publishes it later: nothing is lost, and the
/// answer says how many are still pending.
async fn redrive(
    state: &AppState,
    id: Option<Uuid>,
    channel: Option<&str>,
) -> Result<(usize, usize), ApiError> {
    const CHUNK: i64 = 500;
    const MAX_PER_CALL: usize = 100_000;
    let (mut published, mut pending) = (0usize, 0usize);
    loop {
        let taken = {
            let mut conn = state.db.get().await.map_err(db_error)?;
            quizflow_store::dead_letters::take_for_redrive(&mut conn, id, channel, CHUNK)
                .await
                .map_err(db_error)?
        };
        if taken.is_empty() {
            break;
        }
        let letters: Vec<quizflow_nats::Redrive<'_>> = taken
            .iter()
            .filter_map(|t| {
                Some(quizflow_nats::Redrive {
                    letter_id: t.id.to_string(),
                    kind: &t.kind,
                    payload: t.payload.as_deref()?,
                })
            })
            .collect();
        let acked = quizflow_nats::publish_redrives(&state.js, &letters).await;
        let ok: Vec<Uuid> = letters
            .iter()
            .zip(&acked)
            .filter(|(_, ok)| **ok)
            .filter_map(|(l, _)| l.letter_id.parse().ok())
            .collect();
        {
            let mut conn = state.db.get().await.map_err(db_error)?;
            quizflow_store::dead_letters::mark_published(&mut conn, &ok)
                .await
                .map_err(db_error)?;
        }
        published += ok.len();
        pending += taken.len() - ok.len();
        if ok.len() < taken.len() || id.is_some() || published + pending >= MAX_PER_CALL {
            // NATS is struggling (or this was one letter): the relay takes it from here.
            break;
        }
    }
    tracing::info!(published, pending, "dead letters redriven");
    Ok((published, pending))
}

#[handler]
pub async fn redrive_one(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "dead letter")?;
    match redrive(&state, Some(id), None).await? {
        (0, 0) => Err(not_found("open dead letter")),
        (n, pending) => {
            let counts =
                serde_json::json!({"redriven": n + pending, "published": n, "pending": pending});
            Ok(with_note(
                Json(counts.clone())
                    .with_status(StatusCode::ACCEPTED)
                    .into_response(),
                AuditNote::new(id.to_string(), counts),
            ))
        }
    }
}

#[handler]
pub async fn redrive_bulk(
    state: Data<&Arc<AppState>>,
    poem::web::Query(q): poem::web::Query<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let channel = channel_param(q.channel.as_deref())?;
    let (n, pending) = redrive(&state, None, channel).await?;
    let counts = serde_json::json!({"redriven": n + pending, "published": n, "pending": pending});
    let mut detail = counts.clone();
    detail["channel"] = channel.into();
    Ok(with_note(
        Json(counts)
            .with_status(StatusCode::ACCEPTED)
            .into_response(),
        AuditNote::new(None, detail),
    ))
}
