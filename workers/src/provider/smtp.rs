//! E-mail over SMTP (lettre, pooled connections): a 5.x.x answer is permanent, 4.x.x and
//! connection trouble transient.

use super::{Outgoing, Provider, SmtpTls};
use quizflow_core::Outcome;
use std::time::Duration;

impl Provider {
    /// An SMTP provider: the transport is built (and the sender checked) once, at start-up.
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

pub(super) async fn send(
    transport: &lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: &str,
    out: &Outgoing,
    timeout: Duration,
) -> Outcome {
    use lettre::message::header::ContentType;
    use lettre::AsyncTransport;
    let (Ok(from), Ok(to)) = (
        from.parse::<lettre::message::Mailbox>(),
        out.to.parse::<lettre::message::Mailbox>(),
    ) else {
        return Outcome::Permanent("smtp: invalid sender or recipient address".into());
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
        Err(e) => return Outcome::Permanent(format!("smtp: {e}")),
    };
    match tokio::time::timeout(timeout, transport.send(message)).await {
        Ok(Ok(_)) => Outcome::Sent,
        // SMTP 5.x.x: permanent; 4.x.x and connection trouble: transient.
        Ok(Err(e)) if e.is_permanent() => Outcome::Permanent(format!("smtp: {e}")),
        Ok(Err(e)) => Outcome::Transient(format!("smtp: {e}")),
        Err(_) => Outcome::Uncertain(format!("smtp: timed out after {timeout:?}")),
    }
}
