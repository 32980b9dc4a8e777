//! The Twilio-shaped SMS sink the end-to-end benchmark points the workers at, and the
//! do-nothing target that measures the harness's own ceiling.
//!
//! The sink answers `POST /2010-04-01/Accounts/{sid}/Messages.json` with 201 at once and
//! records, per submission (the message body is `qf <submission id>`), when each copy
//! arrived: distinct and duplicate messages, and end-to-end latency, come from here.

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::{Data, Form, Path};
use poem::{handler, post, EndpointExt, Route};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

/// Body of every benchmark message: the harness maps it back to its submission.
pub const BODY_PREFIX: &str = "qf ";

/// What the sink received.
#[derive(Debug, Default)]
pub struct Received {
    /// Per submission: when each copy arrived.
    pub by_submission: HashMap<Uuid, Vec<Instant>>,
    /// Messages whose body names no submission.
    pub foreign: u64,
    pub total: u64,
    /// Requests being answered now, and the most at once since [`Received::take_max_inflight`].
    pub inflight: u64,
    pub max_inflight: u64,
}

impl Received {
    /// Every arrival, in no particular order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.by_submission.values().flatten().copied().collect()
    }

    /// The most requests in flight at once since the last call; starts counting afresh.
    pub fn take_max_inflight(&mut self) -> u64 {
        std::mem::replace(&mut self.max_inflight, self.inflight)
    }

    pub fn distinct(&self) -> u64 {
        self.by_submission.len() as u64
    }

    pub fn duplicates(&self) -> u64 {
        self.by_submission
            .values()
            .map(|v| v.len().saturating_sub(1) as u64)
            .sum()
    }

    fn record(&mut self, body: &str, at: Instant) {
        self.total += 1;
        match body
            .strip_prefix(BODY_PREFIX)
            .and_then(|id| Uuid::parse_str(id.trim()).ok())
        {
            Some(id) => self.by_submission.entry(id).or_default().push(at),
            None => self.foreign += 1,
        }
    }
}

/// A listener on a free loopback port, and the port.
pub(crate) async fn bind() -> std::io::Result<(poem::listener::TcpAcceptor, u16)> {
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let port = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().map(|s| s.port()))
        .unwrap_or(0);
    Ok((acceptor, port))
}

/// A running sink.
#[derive(Clone)]
pub struct Sink {
    pub url: String,
    pub received: Arc<Mutex<Received>>,
}

#[derive(serde::Deserialize)]
struct TwilioForm {
    #[serde(rename = "Body")]
    body: String,
}

/// How long the sink takes to answer (a provider's latency).
#[derive(Clone, Copy)]
struct Latency(std::time::Duration);

#[handler]
async fn twilio(
    Data(received): Data<&Arc<Mutex<Received>>>,
    Data(latency): Data<&Latency>,
    Path(_sid): Path<String>,
    Form(f): Form<TwilioForm>,
) -> (poem::http::StatusCode, &'static str) {
    let now = Instant::now();
    if let Ok(mut r) = received.lock() {
        r.record(&f.body, now);
        r.inflight += 1;
        r.max_inflight = r.max_inflight.max(r.inflight);
    }
    if !latency.0.is_zero() {
        tokio::time::sleep(latency.0).await;
    }
    if let Ok(mut r) = received.lock() {
        r.inflight -= 1;
    }
    (
        poem::http::StatusCode::CREATED,
        r#"{"sid":"SMbench","status":"queued"}"#,
    )
}

impl Sink {
    /// Starts the sink on a free loopback port, for the life of the process.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with_latency(std::time::Duration::ZERO).await
    }

    /// A sink that answers each message after `latency`, as a real provider would.
    pub async fn start_with_latency(latency: std::time::Duration) -> std::io::Result<Self> {
        let received = Arc::new(Mutex::new(Received::default()));
        let (acceptor, port) = bind().await?;
        let app = Route::new()
            .at("/2010-04-01/Accounts/:sid/Messages.json", post(twilio))
            .data(received.clone())
            .data(Latency(latency));
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            received,
        })
    }
}

/// The do-nothing target: answers every submission 202 at once (one by one, or in a batch)
/// and, for those that match
/// (answer `q1` = `b`), sends the SMS to the sink straight from memory — no broker, no
/// database. What the driver and the sink reach against it is the machine's ceiling.
pub struct NullTarget {
    pub url: String,
}

#[derive(Clone)]
struct NullState {
    jobs: tokio::sync::mpsc::Sender<Uuid>,
}

#[handler]
async fn null_submission(
    Data(state): Data<&NullState>,
    Path(quiz): Path<String>,
    headers: &poem::http::HeaderMap,
    body: poem::web::Json<serde_json::Value>,
) -> poem::http::StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let matches = body["answers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["question"] == "q1" && x["value"] == "b"));
    if matches {
        if let (Ok(q), Ok(k)) = (
            quizflow_core::QuizId::parse(&quiz),
            quizflow_core::IdempotencyKey::parse(key),
        ) {
            let id = quizflow_core::SubmissionId::from_key(&q, &k).0;
            // Bounded: a full queue slows the answer down, as a real pipeline would.
            let _ = state.jobs.send(id).await;
        }
    }
    poem::http::StatusCode::ACCEPTED
}

#[handler]
async fn null_batch(
    Data(state): Data<&NullState>,
    body: poem::web::Json<serde_json::Value>,
) -> poem::web::Json<serde_json::Value> {
    let mut results = Vec::new();
    for (index, item) in body["submissions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let quiz = item["quiz_id"].as_str().unwrap_or_default();
        let key = item["idempotency_key"].as_str().unwrap_or_default();
        let id = match (
            quizflow_core::QuizId::parse(quiz),
            quizflow_core::IdempotencyKey::parse(key),
        ) {
            (Ok(q), Ok(k)) => quizflow_core::SubmissionId::from_key(&q, &k).0,
            _ => Uuid::nil(),
        };
        let matches = item["answers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["question"] == "q1" && x["value"] == "b"));
        if matches && !id.is_nil() {
            let _ = state.jobs.send(id).await;
        }
        results.push(serde_json::json!({"index": index, "status": 202, "submission_id": id, "duplicate": false}));
    }
    poem::web::Json(serde_json::json!({ "results": results }))
}

impl NullTarget {
    /// Starts the target, with `senders` tasks delivering its SMS to `sink`.
    pub async fn start(sink: &Sink, senders: usize) -> std::io::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Uuid>(10_000);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let http = reqwest::Client::new();
        let url = format!("{}/2010-04-01/Accounts/ACnull/Messages.json", sink.url);
        for _ in 0..senders.max(1) {
            let (rx, http, url) = (rx.clone(), http.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(id) = next else { return };
                    let body = format!("{BODY_PREFIX}{id}");
                    let _ = http
                        .post(&url)
                        .form(&[("To", "+5511000000000"), ("Body", body.as_str())])
                        .send()
                        .await;
                }
            });
        }
        let (acceptor, port) = bind().await?;
        let app = Route::new()
            .at("/v1/quizzes/:quiz/submissions", post(null_submission))
            .at("/v1/submissions/batch", post(null_batch))
            .at("/readyz", poem::get(poem::endpoint::make_sync(|_| "ok")))
            .data(NullState { jobs: tx });
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_one_submission_count_once_as_distinct_and_the_rest_as_duplicates() {
        let mut r = Received::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        r.record(&format!("{BODY_PREFIX}{a}"), now);
        r.record(&format!("{BODY_PREFIX}{a}"), now);
        r.record(&format!("{BODY_PREFIX}{a}"), now);
        r.record(&format!("{BODY_PREFIX}{b}"), now);
        r.record("hello", now);
        assert_eq!(
            (r.total, r.distinct(), r.duplicates(), r.foreign),
            (5, 2, 2, 1)
        );
    }
}
