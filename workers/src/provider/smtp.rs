//! E-mail over SMTP (lettre, pooled connections): a 5.x.x answer is permanent, 4.x.x and
//! connection trouble transient.

use super::{Outgoing, Provider, SmtpTls};
use quizflow_core::Outcome;
use std::time::Duration;

/// An SMTP answer naming an enhanced status code of class 5.1 (bad destination mailbox or
/// system, RFC 3463): the address does not exist.
fn hard_bounce(answer: &str) -> bool {
    let b = answer.as_bytes();
    b.windows(5).enumerate().any(|(i, w)| {
        w.starts_with(b"5.1.")
            && w[4].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.'))
    })
}

#[cfg(test)]
#[test]
fn hard_bounces_are_5_1_x() {
    assert!(hard_bounce(
        "permanent error (550): 5.1.1 <x@y>: user unknown"
    ));
    assert!(hard_bounce("550 5.1.10 null MX"));
    assert!(!hard_bounce(
        "permanent error (550): 5.7.1 message rejected as spam"
    ));
    assert!(!hard_bounce("554 15.1.1 odd"));
}

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
    use lettre::message::header::{HeaderName, HeaderValue};
    use lettre::message::MultiPart;
    use lettre::AsyncTransport;
    let (Ok(from), Ok(to)) = (
        from.parse::<lettre::message::Mailbox>(),
        out.to.parse::<lettre::message::Mailbox>(),
    ) else {
        return Outcome::Permanent("smtp: invalid sender or recipient address".into());
    };
    let mut builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(out.subject.clone().unwrap_or_default())
        // The job id: a resend after a crash carries the same Message-ID.
        .message_id(Some(format!("<{}@quizflow>", out.idempotency_key)));
    if let Some(url) = &out.unsubscribe {
        builder = builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ));
    }
    let message = builder.multipart(MultiPart::alternative_plain_html(
        out.text(),
        out.body.clone(),
    ));
    let message = match message {
        Ok(m) => m,
        Err(e) => return Outcome::Permanent(format!("smtp: {e}")),
    };
    match tokio::time::timeout(timeout, transport.send(message)).await {
        Ok(Ok(_)) => Outcome::Sent,
        // SMTP 5.1.x (no such mailbox, bad destination): a hard bounce, the address is
        // suppressed; other 5.x.x: permanent; 4.x.x and connection trouble: transient.
        Ok(Err(e)) if e.is_permanent() && hard_bounce(&e.to_string()) => Outcome::Suppress {
            reason: quizflow_core::consent::Reason::HardBounce,
            detail: format!("smtp: {e}"),
        },
        Ok(Err(e)) if e.is_permanent() => Outcome::Permanent(format!("smtp: {e}")),
        Ok(Err(e)) => Outcome::Transient(format!("smtp: {e}")),
        Err(_) => Outcome::Uncertain(format!("smtp: timed out after {timeout:?}")),
    }
}
