//! Starts a real API against a private nats-server and a fresh database.
#![allow(dead_code)] // shared by several test binaries; each uses a part

use quizflow_api::ApiSettings;
use quizflow_nats::{NatsSettings, TopologyConfig};
use quizflow_testkit::{NatsServer, TestDb};
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub nats: NatsServer,
    pub js: async_nats::jetstream::Context,
    pub db: TestDb,
    pub state: std::sync::Arc<quizflow_api::AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Api {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut ApiSettings)) -> Self {
        Self::start_with_base(|s, _| tune(s)).await
    }

    /// As [`Api::start_with`]; `tune` also gets the API's base URL (it listens already).
    pub async fn start_with_base(tune: impl FnOnce(&mut ApiSettings, &str)) -> Self {
        let bound = quizflow_api::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", bound.local_addr);
        let nats = NatsServer::start();
        let db = TestDb::create().await;
        let mut ns = NatsSettings::new(nats.url(), "quizflow-api-test");
        ns.ack_timeout = Duration::from_secs(1);
        let client = quizflow_nats::connect(&ns).await.expect("connect");
        let js = quizflow_nats::jetstream(client.clone(), &ns);
        quizflow_nats::ensure_topology(&js, &TopologyConfig::default())
            .await
            .expect("topology");
        let mut settings = ApiSettings {
            http_addr: "127.0.0.1:0".into(),
            publish_timeout: Duration::from_secs(1),
            admin_token: Some(ADMIN_TOKEN.into()),
            ..ApiSettings::default()
        };
        tune(&mut settings, &base);
        quizflow_migrations::run_migrations(&db.url)
            .await
            .expect("migrate");
        let pool = quizflow_store::pool(&db.url, 2);
        let state =
            quizflow_api::AppState::new(settings.clone(), client, js.clone(), pool).expect("state");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(quizflow_api::serve(bound, state.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            base,
            http: reqwest::Client::new(),
            nats,
            js,
            db,
            state,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// An admin request with the bearer token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// An admin GET's JSON body (the status is the caller's to check when it matters).
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        self.admin(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    pub async fn post_owned(&self, path: String, body: serde_json::Value) -> reqwest::Response {
        self.post_json(&path, &body).await
    }

    /// Begins the graceful stop (as SIGTERM does).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Submissions stored in SUBMISSIONS (a message packs one or more), in stream order.
    pub async fn stream_envelopes(&self) -> Vec<quizflow_core::SubmissionEnvelope> {
        let mut s = self.js.get_stream("SUBMISSIONS").await.expect("stream");
        let state = s.info().await.expect("info").state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let msg = s.get_raw_message(seq).await.expect("message");
            for member in quizflow_nats::members(&msg.payload) {
                out.push(serde_json::from_slice(member).expect("every member decodes"));
            }
        }
        out
    }

    /// Distinct submissions in SUBMISSIONS. (A copy posted again inside the duplicate window
    /// is answered `duplicate` and may be held twice by the stream; the batcher stores it
    /// once.)
    pub async fn stream_count(&self) -> u64 {
        let ids: std::collections::HashSet<_> = self
            .stream_envelopes()
            .await
            .into_iter()
            .map(|e| e.submission_id)
            .collect();
        ids.len() as u64
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts the contract's error shape and returns the body.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["details"].is_array(), "{body}");
    body
}

pub fn lead(phone: &str) -> serde_json::Value {
    serde_json::json!({
        "respondent": {"phone": phone, "email": "ana@example.com", "name": "Ana", "locale": "pt-BR"},
        "answers": [{"question": "q1", "value": "b"}, {"question": "age", "value": 31}],
        "score": 72,
        "completed_at": "2026-11-22T10:00:00Z",
        "tags": ["promo-nov"],
        "metadata": {"utm_source": "tv"}
    })
}
