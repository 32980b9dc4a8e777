//! quizflow's HTTP intake (contract §2).
//!
//! A submission is validated, rate-limited and published to JetStream; the API answers 202
//! only after the PubAck, so a 202 always means "durable". Every error, the API's own and
//! poem's (unknown route, wrong method, unreadable body), is the JSON error shape.
//!
//! Public surface: [`ApiSettings`], [`AppState::new`], [`app`] and [`serve`].

mod admin;
mod audit;
mod blocklist;
mod callbacks;
mod cancel;
mod captcha;
mod config;
mod consent;
mod cors;
mod erase;
mod error;
mod intake;
mod limits;
mod messages;
mod metrics;
mod ops;
mod preview;
mod quiz_names;
mod quotas;
mod receipts;
mod refreshed;
mod respondents;
mod routes;
mod stats;

pub use callbacks::CallbackSettings;
pub use captcha::{CaptchaProvider, CaptchaSettings};
pub use config::{ApiConfig, ApiSettings, MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS, MAX_BODY_BYTES};
pub use consent::{split_keywords, ConsentSettings, DEFAULT_OPT_IN, DEFAULT_OPT_OUT};
pub use cors::CorsOrigins;
pub use error::ApiError;
pub use limits::LimitScope;

use async_nats::jetstream;
use metrics::Metrics;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, Server};
use quizflow_store::Pool;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the handlers share. Nothing in here is state another instance needs: the limiter
/// counters are per instance by design (see `limits`).
pub struct AppState {
    settings: ApiSettings,
    nats: async_nats::Client,
    js: jetstream::Context,
    /// Packs concurrent submissions into one `SUBMISSIONS` message per quiz.
    packer: quizflow_nats::Packer,
    db: Pool,
    admin_token: Option<String>,
    /// Key of the audit log's hashes of respondents and client addresses.
    audit_key: audit::AuditKey,
    /// Repeated dead-letter list reads (the dashboard's poll), recorded once per window.
    audit_reads: audit::RecentReads,
    /// Coalesces provider receipts into batched ledger writes.
    receipts: receipts::ReceiptWriter,
    /// Key the QR image links are sealed with (`QUIZFLOW_LINK_KEY`; none: no link opens).
    link_key: Option<Vec<u8>>,
    respondent_limiter: limits::RespondentLimiter,
    ip_limiter: limits::WindowLimiter,
    /// Failed admin authentications per client IP.
    auth_failures: AuthFailures,
    /// Captcha checks of intake (`QUIZFLOW_CAPTCHA`; none: not checked).
    captcha: Option<captcha::Captcha>,
    /// Intake quotas per quiz and global, cluster-wide (`QUIZFLOW_QUOTA_*`).
    quotas: quotas::Quotas,
    /// The quizzes campaigns name: the intake-rate metric's labels.
    quiz_names: quiz_names::QuizNames,
    /// Keyed hashes intake refuses (`blocked` suppressions).
    blocklist: blocklist::Blocklist,
    /// Requests in flight (`max_inflight` permits): past it, 503 at once, never a queue.
    inflight: Arc<tokio::sync::Semaphore>,
    /// Set once a graceful stop began: new submissions answer 503, those in flight finish.
    draining: std::sync::atomic::AtomicBool,
    metrics: Metrics,
    /// What `/metrics` serves: the API's own metrics, and in `up` every role's.
    registry: prometheus::Registry,
}

/// Failed admin authentications per client IP: past [`AuthFailures::LIMIT`] a minute, that IP
/// gets 429 on admin routes until the window slides.
pub(crate) struct AuthFailures(limits::WindowLimiter);

impl AuthFailures {
    const LIMIT: u32 = 30;

    fn new() -> Self {
        Self(limits::WindowLimiter::with_key_cap(
            Self::LIMIT,
            Duration::from_secs(60),
            4096,
        ))
    }

    pub(crate) fn is_over(&self, ip: &Option<std::net::IpAddr>) -> bool {
        self.0.is_over(self.0.key(ip))
    }

    pub(crate) fn hit(&self, ip: Option<std::net::IpAddr>) {
        self.0.hit(self.0.key(ip));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

impl AppState {
    pub fn new(
        settings: ApiSettings,
        nats: async_nats::Client,
        js: jetstream::Context,
        db: Pool,
    ) -> Result<Arc<Self>, ServeError> {
        Self::with_registry(settings, nats, js, db, prometheus::Registry::new())
    }

    /// As [`AppState::new`], serving `registry` on `/metrics` (the API registers its own
    /// metrics in it; `up` passes the registry every role shares).
    pub fn with_registry(
        settings: ApiSettings,
        nats: async_nats::Client,
        js: jetstream::Context,
        db: Pool,
        registry: prometheus::Registry,
    ) -> Result<Arc<Self>, ServeError> {
        let state = Arc::new(Self {
            respondent_limiter: limits::RespondentLimiter::of(&settings, &js),
            ip_limiter: limits::WindowLimiter::new(
                settings.ip_limit_per_min,
                settings.limit_window,
            ),
            auth_failures: AuthFailures::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            inflight: Arc::new(tokio::sync::Semaphore::new(settings.max_inflight.max(1))),
            metrics: Metrics::new(&registry)?,
            quiz_names: Default::default(),
            blocklist: Default::default(),
            quotas: quotas::Quotas::new(
                &js,
                settings.quota_per_quiz_per_min,
                settings.quota_global_per_min,
                settings.replicas,
            ),
            captcha: match settings.captcha.clone() {
                Some(c) => Some(captcha::Captcha::new(c, &registry)?),
                None => None,
            },
            registry,
            admin_token: settings.admin_token.clone(),
            audit_reads: audit::RecentReads::default(),
            audit_key: audit::AuditKey::new(
                settings
                    .audit_key
                    .as_deref()
                    .or(settings.admin_token.as_deref())
                    .unwrap_or("quizflow")
                    .as_bytes(),
            ),
            receipts: receipts::ReceiptWriter::spawn(db.clone()),
            link_key: settings.link_key.as_ref().map(|k| k.as_bytes().to_vec()),
            packer: quizflow_nats::Packer::spawn(js.clone(), settings.packer.clone()),
            settings,
            nats,
            js,
            db,
        });
        stats::spawn_flusher(Arc::downgrade(&state));
        quiz_names::spawn(Arc::downgrade(&state));
        blocklist::spawn(Arc::downgrade(&state));
        // Prune idle limiter keys; the task ends when the state is dropped.
        let weak = Arc::downgrade(&state);
        let every = state.settings.limit_window;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { break };
                s.respondent_limiter.prune();
                s.ip_limiter.prune();
                s.auth_failures.0.prune();
            }
        });
        Ok(state)
    }
}

impl AppState {
    /// Begins draining: from now on new submissions answer 503 (the graceful stop calls this
    /// when its signal arrives; requests already in flight finish).
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The routes, with JSON errors for everything and per-route metrics.
pub fn app(state: Arc<AppState>) -> impl Endpoint<Output = Response> {
    let metrics_state = state.clone();
    let guard = {
        let admin_state = state.clone();
        move |ep: poem::RouteMethod| {
            let st = admin_state.clone();
            let audit = st.clone();
            ep.around(move |ep, req| admin::require_admin(st.clone(), ep, req))
                .around(move |ep, req| audit::record(audit.clone(), ep, req))
        }
    };
    let mut router = Route::new();
    for r in routes::ROUTES {
        let mut methods = poem::RouteMethod::new();
        for op in r.ops {
            methods = methods.method(op.method.http(), (op.handler)());
        }
        router = if r.admin {
            router.at(r.path, guard(methods))
        } else if r.cors {
            let st = state.clone();
            router.at(
                r.path,
                methods.around(move |ep, req| cors::around(st.clone(), ep, req)),
            )
        } else {
            router.at(r.path, methods)
        };
    }
    router
        .data(state)
        .catch_all_error(
            |err: poem::Error| async move { ApiError::from_poem(&err).into_response() },
        )
        .around(move |ep, req| metered(metrics_state.clone(), ep, req))
}

/// Around every request: the in-flight cap (past it, 503 `overloaded` at once; operations
/// routes are always answered), the trace span, the `Allow` header of a 405, and the
/// per-route metrics.
async fn metered<E>(state: Arc<AppState>, ep: Arc<E>, req: poem::Request) -> poem::Result<Response>
where
    E: Endpoint<Output = Response>,
{
    let route = routes::label(req.uri().path());
    let started = Instant::now();
    // Bounded: past `max_inflight` a request is refused at once (the client
    // retries, a load balancer tries another instance); operations routes are
    // always answered, so a busy instance is not taken for a dead one.
    let _permit = match route {
        "/healthz" | "/readyz" | "/metrics" => None,
        _ => match state.inflight.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                state
                    .metrics
                    .requests
                    .with_label_values(&[route, "503"])
                    .inc();
                let mut e = ApiError::new(
                    poem::http::StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests in flight on this instance; retry shortly",
                );
                e.retry_after = Some(1);
                return Ok(e.into_response());
            }
        },
    };
    let mut resp = if quizflow_telemetry::enabled() {
        // The caller's `traceparent` (if any) is this request's parent; the
        // publish inside carries the trace on to the batcher.
        let span = tracing::info_span!(
            "http.request",
            http.method = %req.method(),
            http.route = route,
            http.status_code = tracing::field::Empty,
        );
        quizflow_telemetry::set_parent_from_http(&span, req.headers());
        let resp = tracing::Instrument::instrument(ep.call(req), span.clone()).await?;
        span.record("http.status_code", resp.status().as_u16());
        resp
    } else {
        ep.call(req).await?
    };
    let status = resp.status();
    if status == poem::http::StatusCode::METHOD_NOT_ALLOWED {
        let allow =
            routes::allowed_methods(route).and_then(|a| poem::http::HeaderValue::from_str(&a).ok());
        if let Some(allow) = allow {
            resp.headers_mut().insert(poem::http::header::ALLOW, allow);
        }
    }
    state
        .metrics
        .requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[route, status.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok(resp)
}

/// A bound, not yet running, API server.
pub struct BoundApi {
    acceptor: poem::listener::TcpAcceptor,
    pub local_addr: SocketAddr,
}

/// Binds the listener (port 0 picks a free one: see `local_addr`).
pub async fn bind(addr: &str) -> Result<BoundApi, ServeError> {
    let acceptor = TcpListener::bind(addr.to_owned())
        .into_acceptor()
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.into(),
            source,
        })?;
    let local_addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .ok_or_else(|| ServeError::Bind {
            addr: addr.into(),
            source: std::io::Error::other("no local address"),
        })?;
    Ok(BoundApi {
        acceptor,
        local_addr,
    })
}

/// Serves until `shutdown` resolves, then refuses new submissions with 503 and lets requests
/// in flight finish (up to `shutdown_timeout`): a request whose publish is under way still
/// gets its honest answer.
pub async fn serve(
    bound: BoundApi,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tracing::info!(addr = %bound.local_addr, "api listening");
    let drain = state.clone();
    let grace = state.settings.shutdown_timeout;
    Server::new_with_acceptor(bound.acceptor)
        // Keep-alive connections left idle are closed: each costs memory and a file handle.
        .idle_timeout(Duration::from_secs(75))
        .run_with_graceful_shutdown(
            app(state),
            async move {
                shutdown.await;
                // From now on new submissions get 503 (their clients retry elsewhere), while
                // publishes in flight get their honest answer.
                drain.drain();
                tracing::info!("api draining: new submissions answer 503");
            },
            Some(grace),
        )
        .await?;
    Ok(())
}
