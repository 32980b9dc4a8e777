//! Provider adapters: one request per attempt, answered with an [`Outcome`]. Each provider
//! builds its request in a file of its own; the answer is classified here, once.

mod evolution;
mod resend;
mod smtp;
mod twilio;
mod webhook;
mod whatsapp;

use crate::classify::{classify_http, CodeTable, NONE, TWILIO, WHATSAPP};
use quizflow_core::Outcome;
use serde_json::Value;
use std::time::Duration;

/// Where and how a channel sends. Credentials are never logged (`Debug` hides them).
#[derive(Clone)]
pub enum Provider {
    /// Twilio Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`), for sms.
    Twilio {
        base: String,
        account_sid: String,
        auth_token: String,
        from: String,
        /// `<QUIZFLOW_PUBLIC_URL>/v1/callbacks/twilio`: where Twilio reports delivery. The
        /// message's reference rides in its query (`?ref=`), which Twilio signs with the rest.
        status_callback: Option<String>,
    },
    /// WhatsApp Cloud API (`POST /{version}/{phone_number_id}/messages`).
    WhatsappCloud {
        base: String,
        version: String,
        phone_number_id: String,
        token: String,
    },
    /// Evolution API (`POST /message/sendText/{instance}`).
    Evolution {
        base: String,
        instance: String,
        api_key: String,
    },
    /// Resend-style e-mail API (`POST /emails`).
    Resend {
        base: String,
        api_key: String,
        from: String,
    },
    /// POST of the submission and campaign to the campaign's URL, HMAC-SHA256 signed.
    Webhook {
        secret: Option<String>,
        /// `QUIZFLOW_WEBHOOK_ALLOW_PRIVATE`: allow loopback and private targets.
        allow_private: bool,
    },
    /// E-mail over SMTP (lettre, pooled connections).
    Smtp {
        transport: std::sync::Arc<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>>,
        from: String,
    },
}

/// How an SMTP connection is secured (`QUIZFLOW_EMAIL_SMTP_TLS`: none, starttls, tls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (a local relay, the mock).
    None,
    /// STARTTLS required (port 587).
    StartTls,
    /// Implicit TLS (port 465).
    Tls,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One rendered message.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Phone (E.164), e-mail address, or webhook URL.
    pub to: String,
    pub subject: Option<String>,
    pub body: String,
    /// The job id: the provider's idempotency key where it has one.
    pub idempotency_key: String,
    /// Webhooks only: the JSON document to post.
    pub payload: Option<Value>,
    /// The job's [`quizflow_core::DeliveryJob::reference`], echoed in status callbacks.
    pub reference: String,
    /// WhatsApp: the URL of an image sent with the message, the body its caption.
    pub image: Option<String>,
    /// Marketing e-mail: the one-click unsubscribe URL, sent as `List-Unsubscribe` with
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    pub unsubscribe: Option<String>,
    /// WhatsApp Cloud: an approved template with its parameters rendered (`type: template`).
    pub template: Option<TemplateMessage>,
}

pub use quizflow_core::render::TemplateMessage;

/// One sender of a channel: a provider account with the number, phone-number id, instance or
/// address it sends from, and its place in the channel's failover order (contract §3.3).
#[derive(Debug, Clone)]
pub struct Sender {
    pub provider: Provider,
    /// The provider's position in the channel's failover order (0: the first).
    pub rank: usize,
}

impl Sender {
    /// The only sender of its channel.
    pub fn alone(provider: Provider) -> Vec<Sender> {
        vec![Sender { provider, rank: 0 }]
    }

    /// `provider/sender`: how attempts, metrics and stats name it (a business's own number or
    /// address, never a recipient's).
    pub fn label(&self) -> String {
        format!("{}/{}", self.provider.name(), self.provider.sender())
    }
}

impl Outgoing {
    /// The e-mail's plain-text part: the HTML body with its tags taken out.
    pub fn text(&self) -> String {
        crate::render::plain_text(&self.body)
    }
}

pub use webhook::{sign, SIGNATURE_HEADER};

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Twilio { .. } => "twilio",
            Provider::WhatsappCloud { .. } => "whatsapp-cloud",
            Provider::Evolution { .. } => "evolution",
            Provider::Resend { .. } => "resend",
            Provider::Webhook { .. } => "webhook",
            Provider::Smtp { .. } => "smtp",
        }
    }

    /// What this provider sends from: the number or messaging service, phone-number id,
    /// instance or address (empty for webhooks).
    pub fn sender(&self) -> &str {
        match self {
            Provider::Twilio { from, .. }
            | Provider::Resend { from, .. }
            | Provider::Smtp { from, .. } => from,
            Provider::WhatsappCloud {
                phone_number_id, ..
            } => phone_number_id,
            Provider::Evolution { instance, .. } => instance,
            Provider::Webhook { .. } => "",
        }
    }

    /// Sends approved WhatsApp templates (Cloud API); the others send free text only.
    pub fn sends_templates(&self) -> bool {
        matches!(self, Provider::WhatsappCloud { .. })
    }

    /// The same provider account sending from `sender` instead.
    pub fn with_sender(&self, sender: &str) -> Provider {
        let mut p = self.clone();
        match &mut p {
            Provider::Twilio { from, .. }
            | Provider::Resend { from, .. }
            | Provider::Smtp { from, .. } => *from = sender.to_owned(),
            Provider::WhatsappCloud {
                phone_number_id, ..
            } => *phone_number_id = sender.to_owned(),
            Provider::Evolution { instance, .. } => *instance = sender.to_owned(),
            Provider::Webhook { .. } => {}
        }
        p
    }

    fn table(&self) -> &'static CodeTable {
        match self {
            Provider::Twilio { .. } => &TWILIO,
            Provider::WhatsappCloud { .. } | Provider::Evolution { .. } => &WHATSAPP,
            _ => &NONE,
        }
    }

    /// One attempt: the provider's request, its answer classified, and the provider's id of
    /// the message where quizflow needs it to match the provider's reports (Evolution's
    /// `key.id`; the others echo quizflow's own reference).
    pub async fn send(
        &self,
        http: &reqwest::Client,
        out: &Outgoing,
        timeout: Duration,
    ) -> (Outcome, Option<String>) {
        let req = match self {
            Provider::Twilio {
                base,
                account_sid,
                auth_token,
                from,
                status_callback,
            } => twilio::request(
                http,
                twilio::Account {
                    base,
                    account_sid,
                    auth_token,
                    from,
                    status_callback: status_callback.as_deref(),
                },
                out,
            ),
            Provider::WhatsappCloud {
                base,
                version,
                phone_number_id,
                token,
            } => whatsapp::request(http, base, version, phone_number_id, token, out),
            Provider::Evolution {
                base,
                instance,
                api_key,
            } => evolution::request(http, base, instance, api_key, out),
            Provider::Resend {
                base,
                api_key,
                from,
            } => resend::request(http, base, api_key, from, out),
            Provider::Webhook {
                secret,
                allow_private,
            } => match webhook::request(http, secret.as_deref(), *allow_private, out) {
                Ok(r) => r,
                Err(outcome) => return (outcome, None),
            },
            Provider::Smtp { transport, from } => {
                return (smtp::send(transport, from, out, timeout).await, None)
            }
        };
        self.answer(req.timeout(timeout).send().await, timeout)
            .await
    }

    /// Classifies what came back from an HTTP provider: its status, error code and message.
    async fn answer(
        &self,
        sent: Result<reqwest::Response, reqwest::Error>,
        timeout: Duration,
    ) -> (Outcome, Option<String>) {
        let outcome = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if (200..300).contains(&status) {
                    let id = match self {
                        Provider::Evolution { .. } => evolution::message_id(resp).await,
                        _ => None,
                    };
                    return (Outcome::Sent, id);
                }
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = read_limited(resp, MAX_ERROR_BODY).await;
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let code = body["code"].as_i64().or(body["error"]["code"].as_i64());
                // Cloud API template errors carry their reason in `error_data.details` and a
                // short `title` (e.g. 132001 "Template name does not exist in the translation").
                let e = &body["error"];
                let message = match (e["title"].as_str(), e["error_data"]["details"].as_str()) {
                    (Some(title), Some(details)) => Some(format!("{title} ({details})")),
                    (title, details) => body["message"]
                        .as_str()
                        .or(title)
                        .or(details)
                        .or(e["message"].as_str())
                        .map(str::to_owned),
                }
                .unwrap_or_else(|| text.chars().take(200).collect());
                classify_http(self.table(), status, code, retry_after, message)
            }
            // Sent but no answer: the provider may have accepted it.
            Err(e) if e.is_timeout() => {
                Outcome::Uncertain(format!("{}: timed out after {timeout:?}", self.name()))
            }
            Err(e) if crate::egress::is_denied(&e) => {
                Outcome::Permanent(format!("{}: {}", self.name(), e.without_url()))
            }
            Err(e) if e.is_builder() => {
                Outcome::Permanent(format!("{}: invalid request: {e}", self.name()))
            }
            Err(e) => Outcome::Transient(format!("{}: {}", self.name(), e.without_url())),
        };
        (outcome, None)
    }
}

/// How much of a provider's error answer is read: enough for its code and message.
const MAX_ERROR_BODY: usize = 64 * 1024;

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= limit {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The HTTP client of one channel's pool: no redirects (a provider or webhook answer cannot
/// send quizflow elsewhere), and for webhooks, unless allowed, a resolver that keeps only
/// public addresses.
pub fn http_client(
    settings: &crate::WorkerSettings,
    channel: quizflow_core::Channel,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(settings.concurrency);
    if channel == quizflow_core::Channel::Webhook {
        // A system proxy (HTTPS_PROXY in the environment) would resolve and connect for us,
        // past the public-only resolver: webhooks always go direct.
        b = b.no_proxy();
        if !settings.webhook_allow_private {
            b = b.dns_resolver(std::sync::Arc::new(crate::egress::PublicOnly));
        }
    }
    b.build()
}

#[cfg(test)]
mod tests {
    /// Providers are https: the client must speak TLS (a build without a TLS backend fails
    /// every real provider call before it connects).
    #[tokio::test]
    async fn the_provider_client_speaks_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let first = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut b = [0u8; 1];
            sock.read_exact(&mut b).await.expect("read");
            b[0]
        });
        let mut settings = crate::WorkerSettings::new(crate::Providers::mock("http://127.0.0.1:9"));
        settings.webhook_allow_private = true;
        let client = super::http_client(&settings, quizflow_core::Channel::Sms).expect("client");
        let call = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            client.get(format!("https://127.0.0.1:{port}/")).send(),
        );
        let _ = call.await;
        let byte = tokio::time::timeout(std::time::Duration::from_secs(2), first)
            .await
            .expect("the client connected")
            .expect("join");
        assert_eq!(byte, 0x16, "a TLS handshake record");
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
