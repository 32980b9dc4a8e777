//! SMTP for e-mail configured that way: a small ESMTP dialogue, each message judged and
//! recorded like an HTTP provider request; the magic bounce address is refused at `RCPT TO`.

use crate::*;
use chrono::Utc;

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

pub(crate) async fn smtp_session(
    sock: tokio::net::TcpStream,
    state: MockState,
) -> std::io::Result<()> {
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
            let (reply, accepted) = rcpt_to(&state, &line);
            rcpt = accepted;
            reply.into()
        } else if upper == "DATA" {
            w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = Vec::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push(l.strip_prefix('.').map(str::to_owned).unwrap_or(l));
            }
            data_received(&state, rcpt.clone().unwrap_or_default(), &data)
                .await
                .into()
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

/// `RCPT TO:<addr>`: the magic bounce address is refused (and recorded as a request).
pub(crate) fn rcpt_to(state: &MockState, line: &str) -> (&'static str, Option<String>) {
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
    if addr != BOUNCE_EMAIL {
        return ("250 2.1.5 OK\r\n", Some(addr));
    }
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
    ("550 5.1.1 recipient rejected\r\n", None)
}

/// A message's `DATA`: its headers and body read, then judged like any provider request.
pub(crate) async fn data_received(state: &MockState, to: String, data: &[String]) -> &'static str {
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
            "250 2.0.0 queued\r\n"
        }
        Verdict::Reject(_, status) if status >= 500 && status != 503 => {
            "554 5.0.0 rejected (injected)\r\n"
        }
        Verdict::Reject(..) => "451 4.3.0 try again later (injected)\r\n",
    }
}
