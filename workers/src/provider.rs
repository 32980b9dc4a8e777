//! Provider adapters: one HTTP request per attempt, answered with a [`Class`].

use crate::classify::{classify_http, Class, CodeTable, NONE, TWILIO, WHATSAPP};
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};
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

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a local relay, the mock).
    None,
    /// STARTTLS required (port 587).
    StartTls,
    /// Implicit TLS (port 465).
    Tls,
}

impl Provider {
    pub fn smtp(
        host: &str,
        port: u16,
        tls: SmtpTls,
        credentials: Option<(String, String)>,
        from: &str,
    ) -> Result<Self, String> {
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::{AsyncSmtpTransport, Tokio1Executor};
        let mut b = match tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| e.to_string())?,
            SmtpTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| e.to_string())?
            }
        }
        .port(port)
        .timeout(Some(Duration::from_secs(15)));
        if let Some((user, pass)) = credentials {
            b = b.credentials(Credentials::new(user, pass));
        }
        from.parse::<lettre::message::Mailbox>()
            .map_err(|e| format!("sender {from:?}: {e}"))?;
        Ok(Provider::Smtp {
            transport: std::sync::Arc::new(b.build()),
            from: from.to_owned(),
        })
    }
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
}

/// Header with the webhook body's signature: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Quizflow-Signature";

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

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

    fn table(&self) -> &'static CodeTable {
        match self {
            Provider::Twilio { .. } => &TWILIO,
            Provider::WhatsappCloud { .. } | Provider::Evolution { .. } => &WHATSAPP,
            _ => &NONE,
        }
    }

    pub async fn send(&self, http: &reqwest::Client, out: &Outgoing, timeout: Duration) -> Class {
        if let Provider::Webhook {
            allow_private: false,
            ..
        } = self
        {
            if let Err(e) = crate::egress::check_url(&out.to) {
                return Class::Permanent(e.to_string());
            }
        }
        if let Provider::Smtp { transport, from } = self {
            return send_smtp(transport, from, out, timeout).await;
        }
        let req = match self {
            Provider::Twilio { base, account_sid, auth_token, from, status_callback } => {
                let mut form = vec![("To", out.to.clone()), ("From", from.clone()), ("Body", out.body.clone())];
                if let Some(cb) = status_callback {
                    form.push(("StatusCallback", format!("{cb}?ref={}", out.reference)));
                }
                http.post(format!("{}/2010-04-01/Accounts/{account_sid}/Messages.json", base.trim_end_matches('/')))
                    .basic_auth(account_sid, Some(auth_token))
                    .header("I-Twilio-Idempotency-Token", &out.idempotency_key)
                    .form(&form)
            }
            Provider::WhatsappCloud { base, version, phone_number_id, token } => http
                .post(format!("{}/{version}/{phone_number_id}/messages", base.trim_end_matches('/')))
                .bearer_auth(token)
                .header("Idempotency-Key", &out.idempotency_key)
                .json(&match &out.image {
                    Some(link) => json!({"messaging_product": "whatsapp", "to": out.to, "type": "image",
                        "image": {"link": link, "caption": out.body}, "biz_opaque_callback_data": out.reference}),
                    None => json!({"messaging_product": "whatsapp", "to": out.to, "type": "text", "text": {"body": out.body},
                        "biz_opaque_callback_data": out.reference}),
                }),
            Provider::Evolution { base, instance, api_key } => http
                .post(format!("{}/message/sendText/{instance}", base.trim_end_matches('/')))
                .header("apikey", api_key)
                .header("Idempotency-Key", &out.idempotency_key)
                .json(&json!({"number": out.to, "text": match &out.image {
                    // sendText has no media: the image goes as a link under the text.
                    Some(link) => format!("{}\n{link}", out.body),
                    None => out.body.clone(),
                }})),
            Provider::Resend { base, api_key, from } => http
                .post(format!("{}/emails", base.trim_end_matches('/')))
                .bearer_auth(api_key)
                .header("Idempotency-Key", &out.idempotency_key)
                .json(&json!({"from": from, "to": [out.to], "subject": out.subject.clone().unwrap_or_default(), "html": out.body,
                    "tags": [{"name": "quizflow_ref", "value": out.reference}]})),
            Provider::Webhook { secret, .. } => {
                let body = serde_json::to_vec(out.payload.as_ref().unwrap_or(&Value::Null)).unwrap_or_default();
                let mut r = http
                    .post(&out.to)
                    .header("content-type", "application/json")
                    .header("Idempotency-Key", &out.idempotency_key);
                if let Some(secret) = secret {
                    r = r.header(SIGNATURE_HEADER, sign(secret, &body));
                }
                r.body(body)
            }
            Provider::Smtp { .. } => return Class::Permanent("unreachable: smtp handled above".into()),
        };
        match req.timeout(timeout).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                if (200..300).contains(&status) {
                    return Class::Sent;
                }
                let text = read_limited(resp, MAX_ERROR_BODY).await;
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let code = body["code"].as_i64().or(body["error"]["code"].as_i64());
                let message = body["message"]
                    .as_str()
                    .or(body["error"]["message"].as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| text.chars().take(200).collect());
                classify_http(self.table(), status, code, retry_after, message)
            }
            // Sent but no answer: the provider may have accepted it.
            Err(e) if e.is_timeout() => {
                Class::Uncertain(format!("{}: timed out after {timeout:?}", self.name()))
            }
            Err(e) if crate::egress::is_denied(&e) => {
                Class::Permanent(format!("{}: {}", self.name(), e.without_url()))
            }
            Err(e) if e.is_builder() => {
                Class::Permanent(format!("{}: invalid request: {e}", self.name()))
            }
            Err(e) => Class::Transient(format!("{}: {}", self.name(), e.without_url())),
        }
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

async fn send_smtp(
    transport: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: &str,
    out: &Outgoing,
    timeout: Duration,
) -> Class {
    use lettre::message::header::ContentType;
    use lettre::AsyncTransport;
    let (Ok(from), Ok(to)) = (
        from.parse::<lettre::message::Mailbox>(),
        out.to.parse::<lettre::message::Mailbox>(),
    ) else {
        return Class::Permanent("smtp: invalid sender or recipient address".into());
    };
    let message = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(out.subject.clone().unwrap_or_default())
        // The job id: a resend after a crash carries the same Message-ID.
        .message_id(Some(format!("<{}@quizflow>", out.idempotency_key)))
        .header(ContentType::TEXT_HTML)
        .body(out.body.clone());
    let message = match message {
        Ok(m) => m,
        Err(e) => return Class::Permanent(format!("smtp: {e}")),
    };
    match tokio::time::timeout(timeout, transport.send(message)).await {
        Ok(Ok(_)) => Class::Sent,
        // SMTP 5.x.x: permanent; 4.x.x and connection trouble: transient.
        Ok(Err(e)) if e.is_permanent() => Class::Permanent(format!("smtp: {e}")),
        Ok(Err(e)) => Class::Transient(format!("smtp: {e}")),
        Err(_) => Class::Uncertain(format!("smtp: timed out after {timeout:?}")),
    }
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
