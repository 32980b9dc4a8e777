//! Operational routes: health, readiness, metrics, the OpenAPI document and its browser.

use crate::error::ApiError;
use crate::AppState;
use poem::http::{header, StatusCode};
use poem::web::{Data, Json};
use poem::{handler, IntoResponse, Response};
use quizflow_core::{FieldProblem, ValidationErrors};
use std::sync::Arc;
use std::time::Duration;

const OPENAPI: &str = include_str!("../openapi.json");
const DOCS: &str = include_str!("../docs.html");

#[handler]
pub fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when this API can accept submissions: NATS connected and not draining (contract §2.5).
/// PostgreSQL is reported in the body and in `quizflow_dependency_up`, never a reason to be
/// unready: intake goes on while JetStream buffers, so a database outage must not take every
/// API instance out of its load balancer.
#[handler]
pub async fn readyz(state: Data<&Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let nats_ok = state.nats.connection_state() == async_nats::connection::State::Connected;
    let draining = state.draining.load(std::sync::atomic::Ordering::SeqCst);
    let postgres =
        match tokio::time::timeout(Duration::from_secs(2), quizflow_store::ping(&state.db)).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "readiness: PostgreSQL check failed");
                e.public().to_owned()
            }
            Err(_) => "no answer within 2s".to_owned(),
        };
    let up = &state.metrics.dependency_up;
    up.with_label_values(&["nats"]).set(i64::from(nats_ok));
    up.with_label_values(&["postgres"])
        .set(i64::from(postgres == "ok"));
    let mut problems = Vec::new();
    if !nats_ok {
        problems.push(FieldProblem {
            field: "nats".into(),
            problem: "not connected".into(),
        });
    }
    if draining {
        problems.push(FieldProblem {
            field: "api".into(),
            problem: "draining: stopping gracefully".into(),
        });
    }
    if problems.is_empty() {
        return Ok(Json(serde_json::json!({
            "status": "ready",
            "nats": "ok",
            "postgres": postgres,
        })));
    }
    if postgres != "ok" {
        problems.push(FieldProblem {
            field: "postgres".into(),
            problem: postgres,
        });
    }
    let mut err = ApiError::invalid(ValidationErrors(problems));
    err.status = StatusCode::SERVICE_UNAVAILABLE;
    err.code = "unavailable";
    err.message = "this API cannot accept submissions now".into();
    err.retry_after = Some(1);
    Err(err)
}

#[handler]
pub fn metrics(state: Data<&Arc<AppState>>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(quizflow_telemetry::render(&state.registry))
}

const DASHBOARD: &str = include_str!("../dashboard.html");

/// The live dashboard (contract §2.5): one static page that asks for the admin token and polls
/// `/v1/stats`. No build step; the figures come from the same counters as the stats.
#[handler]
pub fn dashboard() -> impl IntoResponse {
    poem::web::Html(DASHBOARD)
}

#[handler]
pub fn openapi() -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(OPENAPI)
}

/// `GET /v1/qr/{token}.png`: the QR code a template's `qr_url` linked to (WhatsApp media).
/// Public, like the message that carries it; only values this deployment signed are drawn.
#[handler]
pub async fn qr_image(
    state: poem::web::Data<&std::sync::Arc<crate::AppState>>,
    poem::web::Path(file): poem::web::Path<String>,
) -> Result<Response, crate::ApiError> {
    let gone = || {
        crate::ApiError::new(
            poem::http::StatusCode::NOT_FOUND,
            "not_found",
            "no such QR code",
        )
    };
    // A link opens only under this deployment's key, until it expires, and while the person
    // it was made for has not been erased.
    let link = file
        .strip_suffix(".png")
        .zip(state.link_key.as_deref())
        .and_then(|(t, key)| quizflow_core::qr::open(key, t))
        .filter(|l| l.expires_at > chrono::Utc::now())
        .ok_or_else(gone)?;
    if let Some(id) = link.submission_id {
        let mut conn = state.db.get().await.map_err(crate::admin::db_error)?;
        if quizflow_store::submissions::erased(&mut conn, id)
            .await
            .map_err(crate::admin::db_error)?
        {
            return Err(gone());
        }
    }
    let png = quizflow_core::qr::png(&link.value)
        .map_err(|e| crate::ApiError::new(poem::http::StatusCode::NOT_FOUND, "not_found", e))?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "image/png")
        // Not kept by shared caches: an erasure must be able to take it back.
        .header(header::CACHE_CONTROL, "private, max-age=3600")
        .body(png))
}

#[handler]
pub fn docs() -> impl IntoResponse {
    poem::web::Html(DOCS)
}

#[cfg(test)]
mod tests {
    /// Every documented operation is served with that method, and every served route is
    /// documented with exactly its methods: the document and the router cannot drift apart.
    #[test]
    fn the_openapi_document_has_exactly_the_served_routes_and_methods() {
        let doc: serde_json::Value =
            serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let served: Vec<&str> = crate::routes::ROUTES.iter().map(|r| r.template).collect();
        for (path, ops) in paths {
            let mut documented: Vec<String> = ops
                .as_object()
                .expect("operations")
                .keys()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            documented.sort();
            let mut allowed: Vec<String> = crate::routes::allowed_methods(path)
                .unwrap_or_else(|| panic!("{path} is documented but not served"))
                .split(", ")
                .filter(|m| *m != "HEAD")
                .map(str::to_owned)
                .collect();
            allowed.sort();
            assert_eq!(documented, allowed, "methods of {path}");
        }
        for route in &served {
            assert!(
                paths.contains_key(*route),
                "{route} is served but not documented"
            );
        }
        assert_eq!(paths.len(), served.len());
    }

    #[test]
    fn the_openapi_document_is_json_and_lists_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        assert_eq!(
            doc["openapi"].as_str().map(|v| v.starts_with("3.")),
            Some(true)
        );
        for path in [
            "/v1/quizzes/{quiz_id}/submissions",
            "/v1/submissions/batch",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
    }
}
