//! `quizflow mock-provider`: one HTTP server that speaks every provider's request shape.
//!
//! - Twilio Messages: `POST /2010-04-01/Accounts/{sid}/Messages.json` (form `To`, `From`, `Body`;
//!   idempotency from `I-Twilio-Idempotency-Token`);
//! - WhatsApp Cloud: `POST /{version}/{phone_number_id}/messages` (`{"to", "text": {"body"}}`);
//! - Evolution: `POST /message/sendText/{instance}` (`{"number", "text"}`);
//! - Resend: `POST /emails` (`{"to", "subject", "html"|"text"}`, `Idempotency-Key`);
//! - webhooks: `POST /webhooks/{anything}` (any JSON body).
//!
//! Inspection: `GET /_mock/messages?channel=&to=`, `DELETE /_mock/messages`, `GET /_mock/requests`,
//! `PUT /_mock/faults`. Status callbacks, as the real providers send them (signed the same
//! way), for a share of accepted messages after a delay: `PUT /_mock/callbacks`
//! ([`Callbacks`]); Twilio's go to the message's `StatusCallback`, WhatsApp's and e-mail's to
//! the configured URLs; `GET /_mock/callbacks` counts them by the status they were answered. Magic recipients: `+15005550001` (21211 invalid number), `+15005550009`
//! (21614 not SMS-capable), `bounce@quizflow.test` (permanent rejection). Memory is bounded:
//! the oldest records are dropped past [`MAX_RECORDS`].

use chrono::{DateTime, Utc};
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Form, Json, Path, Query};
use poem::{get, handler, post, put, EndpointExt, IntoResponse, Response, Route};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MAX_RECORDS: usize = 100_000;
pub const INVALID_NUMBER: &str = "+15005550001";
pub const NOT_SMS_CAPABLE: &str = "+15005550009";
pub const BOUNCE_EMAIL: &str = "bounce@quizflow.test";

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub channel: &'static str,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub body: String,
    /// A media message's link (WhatsApp `image`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    pub idempotency_key: Option<String>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub channel: &'static str,
    pub to: String,
    pub status: u16,
    pub idempotency_key: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// Faults injected on one channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub channel: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

/// Status callbacks the mock sends after accepting a message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Callbacks {
    /// Share of accepted messages that get a callback (0, the default: none).
    pub share: f64,
    /// Delay between accepting a message and calling back.
    pub delay_ms: u64,
    /// `delivered` (the default) or `failed`.
    pub status: Option<String>,
    /// WhatsApp Cloud webhook URL and the app secret it is signed with.
    pub whatsapp_url: Option<String>,
    pub whatsapp_app_secret: Option<String>,
    /// E-mail (Resend/Svix) webhook URL and its `whsec_` secret.
    pub email_url: Option<String>,
    pub email_secret: Option<String>,
}

impl Callbacks {
    fn failed(&self) -> bool {
        self.status.as_deref() == Some("failed")
    }
}

#[derive(Default)]
struct Inner {
    messages: VecDeque<Message>,
    requests: VecDeque<RequestRecord>,
    faults: HashMap<String, Fault>,
    callbacks: Callbacks,
    /// Callbacks sent, by channel and the HTTP status they were answered (0: no answer).
    callbacks_sent: HashMap<(String, u16), u64>,
}

/// The mock's recorded state; cheap to clone.
#[derive(Clone, Default)]
pub struct MockState(Arc<Mutex<Inner>>);

impl MockState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.iter().cloned().collect()
    }

    /// Sets the status callbacks (what `PUT /_mock/callbacks` does).
    pub fn set_callbacks(&self, c: Callbacks) {
        self.lock().callbacks = c;
    }

    /// Whether this accepted message gets a callback, and the settings to send it with.
    fn callback_for(&self) -> Option<Callbacks> {
        let c = self.lock().callbacks.clone();
        (c.share > 0.0 && rand::rng().random_bool(c.share.clamp(0.0, 1.0))).then_some(c)
    }

    /// Sends one signed callback after the configured delay, in the background.
    fn call_back(
        &self,
        channel: &'static str,
        delay_ms: u64,
        request: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder + Send + 'static,
    ) {
        let state = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let status = match request(callback_client())
                .timeout(Duration::from_secs(10))
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            *state
                .lock()
                .callbacks_sent
                .entry((channel.to_owned(), status))
                .or_default() += 1;
        });
    }
}

fn callback_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() >= MAX_RECORDS {
        q.pop_front();
    }
    q.push_back(item);
}

/// What the mock answers for one request, after faults and magic recipients.
enum Verdict {
    Accept,
    Reject(Response, u16),
}

impl MockState {
    async fn judge(&self, channel: &'static str, to: &str, key: Option<String>) -> Verdict {
        let fault = self.lock().faults.get(channel).cloned();
        if let Some(f) = &fault {
            if f.latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
            }
        }
        let verdict = if let Some(resp) = magic(channel, to) {
            let status = resp.status().as_u16();
            Verdict::Reject(resp, status)
        } else if let Some(f) = fault.filter(|f| {
            f.rate > 0.0 && f.status.is_some() && rand::rng().random_bool(f.rate.clamp(0.0, 1.0))
        }) {
            let status = StatusCode::from_u16(f.status.unwrap_or(503))
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = (
                status,
                Json(json!({"code": status.as_u16(), "message": "injected fault"})),
            )
                .into_response();
            if let Some(s) = f.retry_after_s {
                resp.headers_mut().insert("retry-after", s.into());
            }
            Verdict::Reject(resp, status.as_u16())
        } else {
            Verdict::Accept
        };
        let status = match &verdict {
            Verdict::Accept => 200,
            Verdict::Reject(_, s) => *s,
        };
        push_bounded(
            &mut self.lock().requests,
            RequestRecord {
                channel,
                to: to.to_owned(),
                status,
                idempotency_key: key,
                received_at: Utc::now(),
            },
        );
        verdict
    }

    fn record(&self, m: Message) {
        push_bounded(&mut self.lock().messages, m);
    }
}

/// Permanent errors of the magic recipients, in each provider's own error shape.
fn magic(channel: &str, to: &str) -> Option<Response> {
    let (code, msg) = match to {
        INVALID_NUMBER => (21211, "The 'To' number is not a valid phone number."),
        NOT_SMS_CAPABLE => (21614, "'To' number is not a valid mobile number"),
        BOUNCE_EMAIL => (550, "recipient rejected"),
        _ => return None,
    };
    let body = match channel {
        // WhatsApp Cloud's "message undeliverable" for an unreachable recipient.
        "whatsapp" => json!({"error": {"code": 131026, "message": msg}}),
        "email" => json!({"statusCode": 422, "name": "validation_error", "message": msg}),
        _ => json!({"code": code, "message": msg, "status": 400}),
    };
    let status = if channel == "email" {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_REQUEST
    };
    Some((status, Json(body)).into_response())
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TwilioForm {
    to: String,
    #[serde(default)]
    from: Option<String>,
    body: String,
    #[serde(default)]
    status_callback: Option<String>,
}

/// The password of a Basic `Authorization` header: Twilio signs with the account's token.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let raw = header(headers, "authorization")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, p)| p.to_owned())
}

#[handler]
async fn twilio(
    state: Data<&MockState>,
    Path(_sid): Path<String>,
    headers: &HeaderMap,
    Form(f): Form<TwilioForm>,
) -> Response {
    let key = header(headers, "i-twilio-idempotency-token");
    match state.judge("sms", &f.to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            let sid = format!("SM{}", uuid_like());
            state.record(Message {
                channel: "sms",
                to: f.to.clone(),
                subject: None,
                body: f.body,
                media: None,
                idempotency_key: key,
                received_at: Utc::now(),
            });
            if let (Some(url), Some(token), Some(cb)) = (
                f.status_callback.clone(),
                basic_password(headers),
                state.callback_for(),
            ) {
                let mut params = vec![
                    ("MessageSid".to_owned(), sid.clone()),
                    ("AccountSid".to_owned(), "ACmock".to_owned()),
                    ("To".to_owned(), f.to.clone()),
                    (
                        "MessageStatus".to_owned(),
                        if cb.failed() {
                            "undelivered"
                        } else {
                            "delivered"
                        }
                        .to_owned(),
                    ),
                ];
                if cb.failed() {
                    params.push(("ErrorCode".to_owned(), "30008".to_owned()));
                }
                let signature = quizflow_core::signatures::twilio(&token, &url, &params);
                state.call_back("sms", cb.delay_ms, move |http| {
                    http.post(url)
                        .header("X-Twilio-Signature", signature)
                        .form(&params)
                });
            }
            (
                StatusCode::CREATED,
                Json(json!({"sid": sid, "status": "queued", "to": f.to, "from": f.from})),
            )
                .into_response()
        }
    }
}

fn uuid_like() -> String {
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

#[handler]
async fn whatsapp_cloud(
    state: Data<&MockState>,
    Path((_version, _phone_id)): Path<(String, String)>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    // A text message, or a media one whose caption is the text.
    let text = body["text"]["body"]
        .as_str()
        .or(body["image"]["caption"].as_str())
        .unwrap_or_default()
        .to_owned();
    let media = body["image"]["link"].as_str().map(str::to_owned);
    let key = header(headers, "idempotency-key");
    match state.judge("whatsapp", &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            state.record(Message {
                channel: "whatsapp",
                to: to.clone(),
                subject: None,
                body: text,
                media,
                idempotency_key: key,
                received_at: Utc::now(),
            });
            let wamid = format!("wamid.{}", uuid_like());
            if let Some(cb) = state.callback_for() {
                if let (Some(url), Some(secret)) =
                    (cb.whatsapp_url.clone(), cb.whatsapp_app_secret.clone())
                {
                    let mut status = json!({"id": wamid, "status": if cb.failed() { "failed" } else { "delivered" },
                        "timestamp": Utc::now().timestamp().to_string(), "recipient_id": to.trim_start_matches('+'),
                        "biz_opaque_callback_data": body["biz_opaque_callback_data"]});
                    if cb.failed() {
                        status["errors"] =
                            json!([{"code": 131026, "title": "Message undeliverable"}]);
                    }
                    let doc = json!({"object": "whatsapp_business_account", "entry": [{"id": "mock", "changes": [
                        {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [status]}}]}]});
                    let raw = serde_json::to_vec(&doc).unwrap_or_default();
                    let signature = quizflow_core::signatures::hub(&secret, &raw);
                    state.call_back("whatsapp", cb.delay_ms, move |http| {
                        http.post(url)
                            .header("content-type", "application/json")
                            .header("X-Hub-Signature-256", signature)
                            .body(raw)
                    });
                }
            }
            Json(json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid}]})).into_response()
        }
    }
}

#[handler]
async fn evolution(
    state: Data<&MockState>,
    Path(_instance): Path<String>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let to = body["number"].as_str().unwrap_or_default().to_owned();
    let text = body["text"].as_str().unwrap_or_default().to_owned();
    let key = header(headers, "idempotency-key");
    match state.judge("whatsapp", &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            state.record(Message {
                channel: "whatsapp",
                to,
                subject: None,
                body: text,
                media: None,
                idempotency_key: key,
                received_at: Utc::now(),
            });
            (
                StatusCode::CREATED,
                Json(json!({"key": {"id": uuid_like()}, "status": "PENDING"})),
            )
                .into_response()
        }
    }
}

#[handler]
async fn resend(state: Data<&MockState>, headers: &HeaderMap, Json(body): Json<Value>) -> Response {
    let to = match &body["to"] {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    let key = header(headers, "idempotency-key");
    match state.judge("email", &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            let email_id = uuid_like();
            if let Some(cb) = state.callback_for() {
                if let (Some(url), Some(secret)) = (cb.email_url.clone(), cb.email_secret.clone()) {
                    // Resend's event shape: tags come back as an object.
                    let mut tags = serde_json::Map::new();
                    for t in body["tags"].as_array().into_iter().flatten() {
                        if let (Some(n), Some(v)) = (t["name"].as_str(), t["value"].as_str()) {
                            tags.insert(n.to_owned(), v.into());
                        }
                    }
                    let mut data = json!({"email_id": email_id, "to": [to], "created_at": Utc::now(), "tags": tags});
                    if cb.failed() {
                        data["bounce"] =
                            json!({"message": "mailbox does not exist", "type": "Permanent"});
                    }
                    let doc = json!({"type": if cb.failed() { "email.bounced" } else { "email.delivered" },
                        "created_at": Utc::now(), "data": data});
                    let raw = serde_json::to_vec(&doc).unwrap_or_default();
                    let id = format!("msg_{}", uuid_like());
                    let ts = Utc::now().timestamp().to_string();
                    if let Some(signature) =
                        quizflow_core::signatures::svix(&secret, &id, &ts, &raw)
                    {
                        state.call_back("email", cb.delay_ms, move |http| {
                            http.post(url)
                                .header("content-type", "application/json")
                                .header("svix-id", id)
                                .header("svix-timestamp", ts)
                                .header("svix-signature", signature)
                                .body(raw)
                        });
                    }
                }
            }
            state.record(Message {
                channel: "email",
                to,
                subject: body["subject"].as_str().map(str::to_owned),
                body: body["html"]
                    .as_str()
                    .or(body["text"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
                media: None,
                idempotency_key: key,
                received_at: Utc::now(),
            });
            Json(json!({"id": email_id})).into_response()
        }
    }
}

#[handler]
async fn webhook(
    state: Data<&MockState>,
    Path(path): Path<String>,
    headers: &HeaderMap,
    body: String,
) -> Response {
    let key = header(headers, "idempotency-key");
    let to = format!("/webhooks/{path}");
    match state.judge("webhook", &to, key.clone()).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept => {
            state.record(Message {
                channel: "webhook",
                to,
                subject: None,
                body,
                media: None,
                idempotency_key: key,
                received_at: Utc::now(),
            });
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[derive(Deserialize)]
struct MessageFilter {
    channel: Option<String>,
    to: Option<String>,
}

#[handler]
fn list_messages(state: Data<&MockState>, Query(f): Query<MessageFilter>) -> Json<Value> {
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
fn clear_messages(state: Data<&MockState>) -> StatusCode {
    let mut inner = state.lock();
    inner.messages.clear();
    inner.requests.clear();
    StatusCode::NO_CONTENT
}

#[handler]
fn list_requests(state: Data<&MockState>) -> Json<Value> {
    let inner = state.lock();
    Json(json!({ "requests": inner.requests.iter().collect::<Vec<_>>() }))
}

#[handler]
fn set_fault(state: Data<&MockState>, Json(f): Json<Fault>) -> Response {
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
fn redirect() -> Response {
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header("location", "/webhooks/redirected")
        .finish()
}

/// The mock provider's routes over `state`.
#[handler]
fn set_callbacks(state: Data<&MockState>, Json(c): Json<Callbacks>) -> Response {
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
fn callbacks_sent(state: Data<&MockState>) -> Json<Value> {
    let inner = state.lock();
    let sent: Vec<Value> = inner
        .callbacks_sent
        .iter()
        .map(|((channel, status), n)| json!({"channel": channel, "status": status, "count": n}))
        .collect();
    Json(json!({ "sent": sent }))
}

pub fn app(state: MockState) -> impl poem::Endpoint<Output = Response> {
    Route::new()
        .at("/2010-04-01/Accounts/:sid/Messages.json", post(twilio))
        .at("/:version/:phone_id/messages", post(whatsapp_cloud))
        .at("/message/sendText/:instance", post(evolution))
        .at("/emails", post(resend))
        .at("/webhooks/*path", post(webhook))
        .at("/_mock/messages", get(list_messages).delete(clear_messages))
        .at("/_mock/requests", get(list_requests))
        .at("/_mock/faults", put(set_fault))
        .at("/_mock/callbacks", put(set_callbacks).get(callbacks_sent))
        // A target that redirects: quizflow must not follow it (contract §4).
        .at("/_mock/redirect", post(redirect))
        .data(state)
        .map_to_response()
}

/// Serves the mock on `listener` until `shutdown` resolves.
pub async fn serve(
    acceptor: poem::listener::TcpAcceptor,
    state: MockState,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(state), shutdown, Some(Duration::from_secs(5)))
        .await
}

/// A minimal SMTP server for e-mail configured for SMTP: records accepted messages as channel
/// `email`, rejects [`BOUNCE_EMAIL`] with a permanent 550, and answers injected `email`
/// faults with 451 (4xx: transient) or 554 (5xx status codes ≥ 500 other than 503).
pub async fn serve_smtp(
    listener: tokio::net::TcpListener,
    state: MockState,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = &mut shutdown => return Ok(()),
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = smtp_session(sock, state).await {
                tracing::debug!(error = %e, "mock smtp session ended");
            }
        });
    }
}

async fn smtp_session(sock: tokio::net::TcpStream, state: MockState) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"220 quizflow-mock ESMTP\r\n").await?;
    let mut rcpt: Option<String> = None;
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250-quizflow-mock\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".into()
        } else if upper.starts_with("MAIL FROM") {
            rcpt = None;
            "250 2.1.0 OK\r\n".into()
        } else if upper.starts_with("RCPT TO") {
            let addr = line
                .split_once(':')
                .map(|(_, a)| {
                    a.trim()
                        .trim_start_matches('<')
                        .split('>')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .unwrap_or_default();
            if addr == BOUNCE_EMAIL {
                push_bounded(
                    &mut state.lock().requests,
                    RequestRecord {
                        channel: "email",
                        to: addr,
                        status: 550,
                        idempotency_key: None,
                        received_at: Utc::now(),
                    },
                );
                "550 5.1.1 recipient rejected\r\n".into()
            } else {
                rcpt = Some(addr);
                "250 2.1.5 OK\r\n".into()
            }
        } else if upper == "DATA" {
            w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = Vec::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push(l.strip_prefix('.').map(str::to_owned).unwrap_or(l));
            }
            let to = rcpt.clone().unwrap_or_default();
            let blank = data.iter().position(|l| l.is_empty()).unwrap_or(data.len());
            let subject = data[..blank]
                .iter()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned));
            let key = data[..blank]
                .iter()
                .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_owned));
            let body = data
                .get(blank + 1..)
                .map(|b| b.join("\n"))
                .unwrap_or_default();
            match state.judge("email", &to, key.clone()).await {
                Verdict::Accept => {
                    state.record(Message {
                        channel: "email",
                        to,
                        subject,
                        body,
                        media: None,
                        idempotency_key: key,
                        received_at: Utc::now(),
                    });
                    "250 2.0.0 queued\r\n".into()
                }
                Verdict::Reject(_, status) if status >= 500 && status != 503 => {
                    "554 5.0.0 rejected (injected)\r\n".into()
                }
                Verdict::Reject(..) => "451 4.3.0 try again later (injected)\r\n".into(),
            }
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            "250 OK\r\n".into()
        } else {
            "502 5.5.2 command not implemented\r\n".into()
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}
