//! The ops server of a role running alone (`quizflow batcher`, `quizflow workers`):
//! `/metrics`, `/healthz` and `/readyz` on `QUIZFLOW_METRICS_ADDR`.

use crate::TelemetryError;
use futures::future::BoxFuture;
use poem::http::{header, StatusCode};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Data;
use poem::{get, handler, EndpointExt, Response, Route, Server};
use prometheus::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Readiness: the names of dependencies that are not reachable (empty when ready).
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Vec<String>> + Send + Sync>;

struct OpsState {
    registry: Registry,
    ready: ReadyCheck,
}

#[handler]
fn metrics(state: Data<&Arc<OpsState>>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(crate::render(&state.registry))
}

#[handler]
fn healthz() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

#[handler]
async fn readyz(state: Data<&Arc<OpsState>>) -> Response {
    let down = (state.ready)().await;
    if down.is_empty() {
        return json(StatusCode::OK, r#"{"status":"ready"}"#.to_owned());
    }
    let names: Vec<String> = down.iter().map(|d| format!("{d:?}")).collect();
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            r#"{{"status":"unavailable","unreachable":[{}]}}"#,
            names.join(",")
        ),
    )
}

fn json(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address at once (port 0
/// picks a free one) and the serving future.
pub async fn serve_ops(
    addr: &str,
    registry: Registry,
    ready: ReadyCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<
    (
        SocketAddr,
        impl Future<Output = std::io::Result<()>> + Send + 'static,
    ),
    TelemetryError,
> {
    let acceptor = TcpListener::bind(addr.to_owned())
        .into_acceptor()
        .await
        .map_err(|source| TelemetryError::Bind {
            addr: addr.into(),
            source,
        })?;
    let local = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .ok_or_else(|| TelemetryError::Bind {
            addr: addr.into(),
            source: std::io::Error::other("no local address"),
        })?;
    let state = Arc::new(OpsState { registry, ready });
    let app = Route::new()
        .at("/metrics", get(metrics))
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .data(state);
    tracing::info!(addr = %local, "metrics listening");
    let fut = async move {
        Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(app, shutdown, Some(std::time::Duration::from_secs(2)))
            .await
    };
    Ok((local, fut))
}
