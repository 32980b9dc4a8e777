//! The intake routes: `POST /v1/quizzes/{quiz_id}/submissions` and `POST /v1/submissions/batch`.

use crate::config::{MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS, MAX_BODY_BYTES};
use crate::error::ApiError;
use crate::AppState;
use chrono::Utc;
use futures::future::join_all;
use poem::http::{header, HeaderMap, StatusCode};
use poem::web::{Data, Path, RemoteAddr};
use poem::{handler, Body, IntoResponse, Response};
use quizflow_core::{
    canonical_json, parse_submission, FieldProblem, IdempotencyKey, QuizId, Submission,
    SubmissionEnvelope, SubmissionId, ValidationErrors,
};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// A validated submission ready to publish.
struct Ready {
    envelope: SubmissionEnvelope,
    /// (kind, value) of the respondent's phone and e-mail, for the respondent limit.
    respondent_keys: Vec<(char, String)>,
}

#[derive(Serialize)]
struct Accepted {
    submission_id: SubmissionId,
    duplicate: bool,
}

/// `application/json`, optionally with `charset=utf-8`; anything else is 415.
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError::unsupported_media_type());
    };
    let mut parts = value.split(';');
    let mime = parts.next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::unsupported_media_type());
    }
    for param in parts {
        let Some((name, val)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let val = val.trim().trim_matches('"');
            if !val.eq_ignore_ascii_case("utf-8") && !val.eq_ignore_ascii_case("utf8") {
                return Err(ApiError::unsupported_media_type());
            }
        }
    }
    Ok(())
}

/// Reads at most `limit` bytes, whether or not the client sent a Content-Length: a chunked
/// body is cut off as soon as it passes the limit.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Value, ApiError> {
    let bytes = read_bytes(headers, body, limit).await?;
    if bytes.len() <= MAX_BODY_BYTES {
        return serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_json(&e));
    }
    // A batch body (up to 4 MiB) takes milliseconds to parse: off the async threads, so
    // one large batch never stalls the small requests sharing its worker thread.
    tokio::task::spawn_blocking(move || {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_json(&e))
    })
    .await
    .map_err(|_| ApiError::unavailable("the request could not be parsed; retry"))?
}

/// Longest a client may take to send its body: a slow sender (or a slowloris) holds a slot
/// of the in-flight limit, so it is cut off with 408.
pub(crate) const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The raw body, read under the same limit as [`read_body`] (signed callbacks need the
/// exact bytes).
pub(crate) async fn read_bytes(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, body.into_bytes_limit(limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
        })?;
    read.map_err(|e| match e {
        poem::error::ReadBodyError::PayloadTooLarge => ApiError::payload_too_large(limit),
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("cannot read the body: {other}"),
        ),
    })
}

impl AppState {
    fn prepare(
        &self,
        quiz: QuizId,
        key: Option<IdempotencyKey>,
        body: &Value,
        submission: Submission,
    ) -> Ready {
        let submission_id = match &key {
            Some(k) => SubmissionId::from_key(&quiz, k),
            None => SubmissionId::from_canonical_body(&quiz, &canonical_json(body)),
        };
        let mut respondent_keys = Vec::with_capacity(2);
        if self.respondent_limiter.enabled() {
            if let Some(phone) = &submission.respondent.phone {
                respondent_keys.push(('p', phone.clone()));
            }
            if let Some(email) = &submission.respondent.email {
                respondent_keys.push(('e', email.to_ascii_lowercase()));
            }
        }
        Ready {
            envelope: SubmissionEnvelope::new(submission_id, quiz, Utc::now(), key, submission),
            respondent_keys,
        }
    }

    /// Rate-limits, publishes and waits for the PubAck. Never answers 202 without the ack.
    async fn publish(&self, ready: Ready) -> Result<Accepted, ApiError> {
        let quota = self.take_quota(&ready.envelope).await?;
        let reserved = self
            .respondent_limiter
            .reserve(ready.envelope.quiz_id.as_str(), &ready.respondent_keys)
            .await;
        let reservations = match reserved {
            Ok(r) => r,
            Err(retry) => {
                self.quotas.give_back(quota).await;
                return Err(ApiError::rate_limited(retry, "for this respondent"));
            }
        };
        match self.publish_envelope(&ready.envelope).await {
            Ok(outcome) => {
                if outcome.duplicate {
                    self.quotas.give_back(quota).await;
                    self.respondent_limiter.release(reservations).await;
                    self.metrics.duplicates.inc();
                } else {
                    self.metrics.accepted.inc();
                    self.count_lead(ready.envelope.quiz_id.as_str());
                }
                Ok(Accepted {
                    submission_id: ready.envelope.submission_id,
                    duplicate: outcome.duplicate,
                })
            }
            Err(e) => {
                self.quotas.give_back(quota).await;
                self.respondent_limiter.release(reservations).await;
                Err(e)
            }
        }
    }

    async fn publish_envelope(
        &self,
        envelope: &SubmissionEnvelope,
    ) -> Result<quizflow_nats::PublishOutcome, ApiError> {
        // Fail fast while disconnected: a publish would only sit in the client's buffer.
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(ApiError::unavailable(
                "the message broker is unreachable; retry shortly",
            ));
        }
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.settings.publish_timeout, self.packer.publish(envelope))
                .await;
        self.metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "publish failed");
                Err(ApiError::unavailable(
                    "the submission could not be made durable; retry shortly",
                ))
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.settings.publish_timeout, "publish ack timed out");
                Err(ApiError::unavailable(
                    "the submission could not be made durable in time; retry shortly",
                ))
            }
        }
    }

    /// During a graceful stop new submissions are refused: a 503 the client retries (on
    /// another instance), never a request cut off halfway.
    fn check_draining(&self) -> Result<(), ApiError> {
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::unavailable(
                "this instance is shutting down; retry shortly",
            ));
        }
        Ok(())
    }

    fn check_ip(&self, remote: &RemoteAddr, headers: &HeaderMap, n: usize) -> Result<(), ApiError> {
        if !self.ip_limiter.enabled() {
            return Ok(());
        }
        let ip = client_addr(&self.settings.trusted_proxies, remote, headers);
        let key = self.ip_limiter.key(ip);
        let keys = vec![key; n];
        self.ip_limiter
            .reserve(&keys)
            .map(|_| ())
            .map_err(|retry| ApiError::rate_limited(retry, "from this address"))
    }
}

#[handler]
pub async fn submit_one(
    state: Data<&Arc<AppState>>,
    Path(quiz_id): Path<String>,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    body: Body,
) -> Result<Response, ApiError> {
    let result = submit_one_inner(&state, &quiz_id, headers, remote, body).await;
    if let Err(e) = &result {
        state.metrics.rejected.with_label_values(&[e.code]).inc();
    }
    result
}

async fn submit_one_inner(
    state: &AppState,
    quiz_id: &str,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_draining()?;
    check_content_type(headers)?;
    let body = read_body(headers, body, MAX_BODY_BYTES).await?;
    let quiz =
        QuizId::parse(quiz_id).map_err(|e| ApiError::invalid_field("quiz_id", e.to_string()))?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| IdempotencyKey::parse(s).ok())
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        "Idempotency-Key",
                        "must be 1 to 128 printable ASCII characters",
                    )
                })?,
        ),
    };
    let submission = parse_submission(&body).map_err(ApiError::invalid)?;
    state.check_blocked(&submission.respondent)?;
    state.check_ip(remote, headers, 1)?;
    let ready = state.prepare(quiz, key, &body, submission);
    let ip = client_addr(&state.settings.trusted_proxies, remote, headers);
    let id = [ready.envelope.submission_id];
    state.check_captcha(headers, ip, &id).await?;
    let accepted = state.publish(ready).await?;
    let location = format!("/v1/submissions/{}", accepted.submission_id);
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::LOCATION, location)
        .body(serde_json::to_vec(&accepted).unwrap_or_default()))
}

#[derive(Serialize)]
struct ItemResult {
    index: usize,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    submission_id: Option<SubmissionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
}

#[derive(Serialize)]
struct ItemError {
    code: &'static str,
    message: String,
    details: Vec<FieldProblem>,
}

impl ItemResult {
    fn ok(index: usize, a: Accepted) -> Self {
        Self {
            index,
            status: 202,
            submission_id: Some(a.submission_id),
            duplicate: Some(a.duplicate),
            error: None,
        }
    }

    fn err(index: usize, e: ApiError) -> Self {
        Self {
            index,
            status: e.status.as_u16(),
            submission_id: None,
            duplicate: None,
            error: Some(ItemError {
                code: e.code,
                message: e.message,
                details: e.details,
            }),
        }
    }
}

/// Splits a batch item into its quiz id, key and submission body.
fn parse_item(state: &AppState, item: Value) -> Result<Ready, ApiError> {
    let Value::Object(mut obj) = item else {
        return Err(ApiError::invalid_field(
            "",
            "each submission must be a JSON object",
        ));
    };
    let mut problems = Vec::new();
    let quiz = match obj.remove("quiz_id") {
        Some(Value::String(s)) => QuizId::parse(&s)
            .map_err(|e| problems.push(problem("quiz_id", e.to_string())))
            .ok(),
        Some(_) => {
            problems.push(problem("quiz_id", "must be a string"));
            None
        }
        None => {
            problems.push(problem("quiz_id", "is required"));
            None
        }
    };
    let key = match obj.remove("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => IdempotencyKey::parse(&s)
            .map_err(|e| problems.push(problem("idempotency_key", e.to_string())))
            .ok(),
        Some(_) => {
            problems.push(problem("idempotency_key", "must be a string"));
            None
        }
    };
    let body = Value::Object(obj);
    let submission = match parse_submission(&body) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.extend(e.0);
            None
        }
    };
    match (quiz, submission) {
        (Some(quiz), Some(submission)) if problems.is_empty() => {
            state.check_blocked(&submission.respondent)?;
            Ok(state.prepare(quiz, key, &body, submission))
        }
        _ => Err(ApiError::invalid(ValidationErrors(problems))),
    }
}

fn problem(field: &str, problem: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: field.into(),
        problem: problem.into(),
    }
}

#[handler]
pub async fn submit_batch(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    remote: &RemoteAddr,
    body: Body,
) -> Result<Response, ApiError> {
    state.check_draining()?;
    check_content_type(headers)?;
    let body = read_body(headers, body, MAX_BATCH_BODY_BYTES).await?;
    let Value::Object(mut top) = body else {
        return Err(ApiError::invalid_field(
            "",
            "the body must be an object {\"submissions\": [...]}",
        ));
    };
    if let Some(unknown) = top.keys().find(|k| *k != "submissions") {
        return Err(ApiError::invalid_field(unknown, "unknown field"));
    }
    let items = match top.remove("submissions") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid_field("submissions", "must be an array")),
        None => return Err(ApiError::invalid_field("submissions", "is required")),
    };
    if items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid_field(
            "submissions",
            format!(
                "at most {MAX_BATCH_ITEMS} submissions per batch, got {}",
                items.len()
            ),
        ));
    }
    let parsed: Vec<Result<Ready, ApiError>> = items
        .into_iter()
        .map(|item| parse_item(&state, item))
        .collect();
    let valid = parsed.iter().filter(|r| r.is_ok()).count();
    // One token covers the request (checked unless every valid item is a retry).
    let ids: Vec<_> = parsed
        .iter()
        .flatten()
        .map(|r| r.envelope.submission_id)
        .collect();
    let ip = client_addr(&state.settings.trusted_proxies, remote, headers);
    state.check_captcha(headers, ip, &ids).await?;
    let ip_check = state.check_ip(remote, headers, valid);
    // All valid items are published concurrently: the context pipelines them, so a batch
    // costs about one PubAck round trip, not one per item.
    let results = join_all(parsed.into_iter().enumerate().map(|(index, r)| {
        let ip_check = ip_check.clone();
        let state = &state;
        async move {
            let outcome = match (r, ip_check) {
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                (Ok(ready), Ok(())) => state.publish(ready).await,
            };
            match outcome {
                Ok(a) => ItemResult::ok(index, a),
                Err(e) => {
                    state.metrics.rejected.with_label_values(&[e.code]).inc();
                    ItemResult::err(index, e)
                }
            }
        }
    }))
    .await;
    Ok(poem::web::Json(serde_json::json!({ "results": results })).into_response())
}

/// The client's address (contract §2.4): the socket peer's, or, when the peer is a trusted proxy,
/// the `X-Forwarded-For` entry its proxies appended: read from the right, the first address
/// that is not itself a trusted proxy. Entries to the left of it were written by the client
/// and are never believed. `None` for non-TCP listeners.
pub(crate) fn client_addr(
    trusted: &[ipnet::IpNet],
    remote: &RemoteAddr,
    headers: &HeaderMap,
) -> Option<std::net::IpAddr> {
    let peer = remote.as_socket_addr().map(|a| a.ip())?;
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for entry in entries.into_iter().rev() {
        let Some(ip) = parse_forwarded(entry) else {
            // Garbage in the chain: the last hop we could read is the best we know.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`[::1]:80`, `1.2.3.4:80`).
fn parse_forwarded(entry: &str) -> Option<std::net::IpAddr> {
    entry
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

impl AppState {
    /// [`client_addr`] with this instance's trusted proxies.
    pub(crate) fn client_ip(&self, req: &poem::Request) -> Option<std::net::IpAddr> {
        client_addr(
            &self.settings.trusted_proxies,
            req.remote_addr(),
            req.headers(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::HeaderValue;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().expect("cidr"),
            "192.168.1.1/32".parse().expect("cidr"),
        ];
        let remote = |ip: &str| {
            RemoteAddr(poem::Addr::SocketAddr(
                format!("{ip}:5000").parse().expect("addr"),
            ))
        };
        let xff = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
            h
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let cases = [
            // (peer, X-Forwarded-For, client)
            ("203.0.113.9", "1.1.1.1", "203.0.113.9"), // untrusted peer: its header is a lie
            ("10.0.0.5", "1.1.1.1", "1.1.1.1"),        // one trusted proxy
            ("10.0.0.5", "6.6.6.6, 1.1.1.1", "1.1.1.1"), // the client's own entry is ignored
            ("10.0.0.5", "1.1.1.1, 192.168.1.1", "1.1.1.1"), // two trusted hops
            ("10.0.0.5", "10.0.0.7, 10.0.0.6", "10.0.0.7"), // all trusted: the farthest
            ("10.0.0.5", "garbage, 1.1.1.1", "1.1.1.1"),
            ("10.0.0.5", "1.1.1.1:443", "1.1.1.1"),
            ("10.0.0.5", "not-an-ip", "10.0.0.5"),
        ];
        for (peer, header, want) in cases {
            assert_eq!(
                client_addr(&trusted, &remote(peer), &xff(header)),
                Some(ip(want)),
                "{peer} / {header}"
            );
        }
        assert_eq!(
            client_addr(&trusted, &remote("10.0.0.5"), &HeaderMap::new()),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            client_addr(&[], &remote("10.0.0.5"), &xff("1.1.1.1")),
            Some(ip("10.0.0.5")),
            "no trusted proxies: never believed"
        );
    }

    #[test]
    fn content_type_rules() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_err());
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=\"UTF-8\"",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(check_content_type(&h).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/json; charset=latin1",
            "application/jsonx",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(bad));
            assert!(check_content_type(&h).is_err(), "{bad}");
        }
    }
}
