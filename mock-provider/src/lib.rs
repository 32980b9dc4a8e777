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
//! (21614 not SMS-capable), `+15005550021` (opted out: Twilio 21610, WhatsApp 131050),
//! `+15005550026` (not on WhatsApp: 131026; SMS takes it),
//! `bounce@quizflow.test` (permanent rejection; SMTP `550 5.1.1`), `complaint@quizflow.test`
//! (accepted, then reported as a spam complaint). `POST /_mock/inbound` sends a person's
//! reply (`{"channel", "from", "body"}`) to quizflow as the provider would, signed. `POST
//! /siteverify` answers captcha checks (a token starting `pass` verifies). Memory is bounded:
//! the oldest records are dropped past [`MAX_RECORDS`].

mod captcha;
mod inbound;
mod inspect;
mod providers;
mod smtp;

use inspect::*;
use providers::*;
pub use smtp::serve_smtp;

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::web::Json;
use poem::{get, post, put, EndpointExt, IntoResponse, Response, Route};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MAX_RECORDS: usize = 100_000;
pub const INVALID_NUMBER: &str = "+15005550001";
pub const NOT_SMS_CAPABLE: &str = "+15005550009";
pub const BOUNCE_EMAIL: &str = "bounce@quizflow.test";
/// A number that opted out with the provider: Twilio answers 21610, WhatsApp 131050.
pub const OPTED_OUT: &str = "+15005550021";
/// A number that is not on WhatsApp: WhatsApp Cloud answers 131026; SMS accepts it.
pub const NOT_ON_WHATSAPP: &str = "+15005550026";
/// An address whose mail is accepted, then reported as a spam complaint (`email.complained`).
pub const COMPLAINT_EMAIL: &str = "complaint@quizflow.test";

#[derive(Debug, Clone, Default, Serialize)]
pub struct Message {
    pub channel: &'static str,
    pub to: String,
    /// What it was sent from: the Twilio `From` (or messaging service), the WhatsApp
    /// phone-number id, the Evolution instance, the e-mail `from`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sender: String,
    /// The Twilio account it came through (a second account is a second provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// WhatsApp Cloud template messages: `{"name", "language", "body": [...], "header_image"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub body: String,
    /// A media message's link (WhatsApp `image`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    pub idempotency_key: Option<String>,
    pub received_at: DateTime<Utc>,
    /// E-mail: the plain-text part, when the message had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// E-mail: the headers the sender set beside the usual ones (`List-Unsubscribe`, ...).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub headers: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub channel: &'static str,
    pub to: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sender: String,
    pub status: u16,
    pub idempotency_key: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// Faults injected on one channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub channel: String,
    /// Only requests from this sender (a `From`, phone-number id, instance, e-mail `from`) or
    /// through this Twilio account sid; unset: the whole channel.
    #[serde(default)]
    pub sender: Option<String>,
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
    /// Evolution's webhook (`MESSAGES_UPDATE` delivery reports) and the API key it carries.
    pub evolution_url: Option<String>,
    pub evolution_api_key: Option<String>,
    /// Where `POST /_mock/inbound` delivers a reply as Twilio's incoming-message webhook, and
    /// the auth token it is signed with.
    pub twilio_inbound_url: Option<String>,
    pub twilio_auth_token: Option<String>,
}

impl Callbacks {
    fn failed(&self) -> bool {
        self.status.as_deref() == Some("failed")
    }
}

#[derive(Default)]
pub(crate) struct Inner {
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

    /// The status callbacks as set.
    pub fn callbacks(&self) -> Callbacks {
        self.lock().callbacks.clone()
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

pub(crate) fn callback_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

pub(crate) fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() >= MAX_RECORDS {
        q.pop_front();
    }
    q.push_back(item);
}

/// Who a request came from: its sender, and the Twilio account it came through.
#[derive(Debug, Clone, Default)]
pub(crate) struct From {
    pub sender: String,
    pub account: Option<String>,
}

/// What the mock answers for one request, after faults and magic recipients.
pub(crate) enum Verdict {
    Accept,
    Reject(Response, u16),
}

impl MockState {
    async fn judge(
        &self,
        channel: &'static str,
        from: &From,
        to: &str,
        key: Option<String>,
    ) -> Verdict {
        let fault = {
            let inner = self.lock();
            [&from.sender, from.account.as_deref().unwrap_or_default()]
                .iter()
                .find_map(|s| inner.faults.get(&format!("{channel}/{s}")))
                .or_else(|| inner.faults.get(channel))
                .cloned()
        };
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
        self.note_request(channel, from, to, status, key);
        verdict
    }

    /// Records a request with the status it was answered.
    fn note_request(
        &self,
        channel: &'static str,
        from: &From,
        to: &str,
        status: u16,
        key: Option<String>,
    ) {
        push_bounded(
            &mut self.lock().requests,
            RequestRecord {
                channel,
                to: to.to_owned(),
                sender: from.sender.clone(),
                status,
                idempotency_key: key,
                received_at: Utc::now(),
            },
        );
    }

    fn record(&self, m: Message) {
        push_bounded(&mut self.lock().messages, m);
    }
}

pub fn app(state: MockState) -> impl poem::Endpoint<Output = Response> {
    Route::new()
        .at("/2010-04-01/Accounts/:sid/Messages.json", post(twilio))
        .at("/:version/:phone_id/messages", post(whatsapp_cloud))
        .at("/message/sendText/:instance", post(evolution))
        .at("/emails", post(resend))
        .at("/webhooks/*path", post(webhook))
        .at("/siteverify", post(captcha::siteverify))
        .at("/_mock/messages", get(list_messages).delete(clear_messages))
        .at("/_mock/requests", get(list_requests))
        .at("/_mock/senders", get(list_senders))
        .at("/_mock/faults", put(set_fault))
        .at("/_mock/callbacks", put(set_callbacks).get(callbacks_sent))
        .at("/_mock/inbound", post(inbound::inbound))
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
