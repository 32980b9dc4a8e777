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
            sender: String::new(),
            status: 550,
            idempotency_key: None,
            received_at: Utc::now(),
        },
    );
    ("550 5.1.1 recipient rejected\r\n", None)
}

/// A message's `DATA`: its headers and body read, then judged like any provider request.
pub(crate) async fn data_received(state: &MockState, to: String, data: &[String]) -> &'static str {
    let (head, rest) = split_head(data);
    let subject = field(&head, "Subject");
    let key = field(&head, "Message-ID");
    let mut headers = serde_json::Map::new();
    for name in ["List-Unsubscribe", "List-Unsubscribe-Post"] {
        if let Some(v) = field(&head, name) {
            headers.insert(name.to_owned(), v.into());
        }
    }
    // A multipart/alternative message: its HTML part is the body, its plain part the text.
    let (body, text) = match field(&head, "Content-Type")
        .as_deref()
        .and_then(|t| t.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_owned())
    {
        Some(boundary) => {
            let parts = parts(rest, &boundary);
            let of = |kind: &str| {
                parts
                    .iter()
                    .find(|(t, _)| t.starts_with(kind))
                    .map(|(_, b)| b.clone())
            };
            (
                of("text/html")
                    .or_else(|| of("text/plain"))
                    .unwrap_or_default(),
                of("text/plain"),
            )
        }
        None => (rest.join("\n"), None),
    };
    let from = From {
        sender: field(&head, "From").unwrap_or_default(),
        account: None,
    };
    match state.judge("email", &from, &to, key.clone()).await {
        Verdict::Accept => {
            state.record(Message {
                channel: "email",
                to,
                sender: from.sender,
                subject,
                body,
                idempotency_key: key,
                received_at: Utc::now(),
                text,
                headers,
                ..Default::default()
            });
            "250 2.0.0 queued\r\n"
        }
        Verdict::Reject(_, status) if status >= 500 && status != 503 => {
            "554 5.0.0 rejected (injected)\r\n"
        }
        Verdict::Reject(..) => "451 4.3.0 try again later (injected)\r\n",
    }
}

/// The header lines (continuations unfolded) and the lines after the blank one.
fn split_head(lines: &[String]) -> (Vec<String>, &[String]) {
    let blank = lines
        .iter()
        .position(|l| l.is_empty())
        .unwrap_or(lines.len());
    let mut head: Vec<String> = Vec::new();
    for l in &lines[..blank] {
        match head.last_mut() {
            Some(last) if l.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(l.trim());
            }
            _ => head.push(l.clone()),
        }
    }
    (head, lines.get(blank + 1..).unwrap_or_default())
}

fn field(head: &[String], name: &str) -> Option<String> {
    head.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// The parts of a multipart body: each one's content type and decoded text.
fn parts(body: &[String], boundary: &str) -> Vec<(String, String)> {
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut inside = false;
    for l in body {
        if l.starts_with(&delimiter) {
            if inside {
                out.push(decode_part(&current));
            }
            current.clear();
            inside = !l.ends_with("--");
            continue;
        }
        if inside {
            current.push(l.clone());
        }
    }
    out
}

fn decode_part(lines: &[String]) -> (String, String) {
    let (head, body) = split_head(lines);
    let kind = field(&head, "Content-Type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let encoding = field(&head, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let text = match encoding.as_str() {
        "base64" => {
            use base64::Engine;
            let joined: String = body.concat();
            base64::engine::general_purpose::STANDARD
                .decode(joined.trim())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        }
        "quoted-printable" => quoted_printable(body),
        _ => body.join("\n"),
    };
    (kind, text)
}

/// RFC 2045 quoted-printable: `=XX` bytes, `=` at a line's end joins it to the next.
fn quoted_printable(lines: &[String]) -> String {
    let mut bytes = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let (l, soft) = match l.strip_suffix('=') {
            Some(l) => (l, true),
            None => (l.as_str(), false),
        };
        let b = l.as_bytes();
        let mut j = 0;
        while j < b.len() {
            let hex = b
                .get(j + 1..j + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (b[j], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'=', Some(byte)) => {
                    bytes.push(byte);
                    j += 3;
                }
                (c, _) => {
                    bytes.push(c);
                    j += 1;
                }
            }
        }
        if !soft && i + 1 < lines.len() {
            bytes.push(b'\n');
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
