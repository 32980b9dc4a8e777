//! A whole deployment for tests through the public routes: an API with signed callbacks and
//! inbound replies, a batcher and workers behind it, and a mock provider that reports back and
//! replies as Twilio and Meta would.

#![allow(dead_code)] // each test binary uses part of it

use crate::common::{pipeline_and_batcher, wait_until};
use crate::harness::Api;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

pub const EVOLUTION_KEY: &str = "evolution-global-api-key";
const APP_SECRET: &str = "meta-app-secret-for-tests";
const EMAIL_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZg==";

pub struct World {
    pub api: Api,
    pub mock: String,
    pub http: reqwest::Client,
    pub batcher: std::sync::Arc<quizflow_batcher::Batcher>,
}

/// An API with signed callbacks and inbound replies, a batcher and workers behind it, and a
/// mock that reports back and sends replies as Twilio and Meta would.
pub async fn world() -> World {
    world_with(|_| {}).await
}

pub async fn world_with(
    tune: impl FnOnce(&mut quizflow_workers::WorkerSettings) + Send + 'static,
) -> World {
    let api = Api::start_with_base(|s, base| {
        s.callbacks = quizflow_api::CallbackSettings {
            public_url: Some(base.to_owned()),
            twilio_auth_token: Some("mock".into()),
            whatsapp_app_secret: Some(APP_SECRET.into()),
            whatsapp_verify_token: None,
            email_webhook_secret: Some(EMAIL_SECRET.into()),
            evolution_webhook_key: Some(EVOLUTION_KEY.into()),
        };
    })
    .await;
    let state = quizflow_mock_provider::MockState::default();
    state.set_callbacks(quizflow_mock_provider::Callbacks {
        share: 0.0,
        whatsapp_url: Some(api.url("/v1/callbacks/whatsapp")),
        whatsapp_app_secret: Some(APP_SECRET.into()),
        email_url: Some(api.url("/v1/callbacks/email")),
        email_secret: Some(EMAIL_SECRET.into()),
        twilio_inbound_url: Some(api.url("/v1/inbound/twilio")),
        twilio_auth_token: Some("mock".into()),
        evolution_url: Some(api.url("/v1/callbacks/evolution")),
        evolution_api_key: Some(EVOLUTION_KEY.into()),
        ..Default::default()
    });
    let base = api.base.clone();
    let (mock, batcher) = pipeline_and_batcher(&api.nats.url(), &api.db.url, state, move |s| {
        s.public_url = Some(base.clone());
        s.providers = std::mem::replace(
            &mut s.providers,
            quizflow_workers::Providers::mock("http://unused"),
        )
        .with_status_callbacks(&base);
        tune(s);
    })
    .await;
    World {
        api,
        mock,
        http: reqwest::Client::new(),
        batcher,
    }
}

impl World {
    pub async fn campaign(&self, body: Value) -> String {
        let r = self
            .api
            .admin(Method::POST, "/v1/campaigns")
            .json(&body)
            .send()
            .await
            .expect("campaign");
        assert_eq!(r.status().as_u16(), 201);
        let c: Value = r.json().await.expect("json");
        let id: uuid::Uuid = c["id"].as_str().expect("id").parse().expect("uuid");
        let version = c["version"].as_i64().expect("version") as i32;
        // A campaign applies from when the batcher has it (the change is announced): wait.
        wait_until(
            "the batcher matches with it",
            Duration::from_secs(20),
            || async { self.batcher.knows_campaign(id, version) },
        )
        .await;
        id.to_string()
    }

    pub async fn deactivate(&self, id: &str) {
        let mut c = self.api.admin_get(&format!("/v1/campaigns/{id}")).await;
        c["active"] = false.into();
        for k in ["id", "version", "created_at", "updated_at"] {
            c.as_object_mut().expect("object").remove(k);
        }
        let r = self
            .api
            .admin(Method::PUT, &format!("/v1/campaigns/{id}"))
            .json(&c)
            .send()
            .await
            .expect("put");
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    }

    pub async fn submit(&self, quiz: &str, respondent: Value) -> String {
        let r = self
            .api
            .post_json(
                &format!("/v1/quizzes/{quiz}/submissions"),
                // A nonce: the same body twice is one submission (its id is the body's hash).
                &json!({"respondent": respondent, "score": 50,
                        "metadata": {"nonce": uuid::Uuid::new_v4().to_string()}}),
            )
            .await;
        assert_eq!(r.status().as_u16(), 202);
        let b: Value = r.json().await.expect("json");
        b["submission_id"].as_str().expect("id").to_owned()
    }

    /// The submission's deliveries, once it has `n` of them in a final or waiting state.
    pub async fn deliveries(&self, id: &str, settled: &[&str], n: usize) -> Vec<Value> {
        let mut last = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let s = self.api.admin_get(&format!("/v1/submissions/{id}")).await;
            last = s["deliveries"].as_array().cloned().unwrap_or_default();
            let done = last
                .iter()
                .filter(|d| settled.contains(&d["status"].as_str().unwrap_or_default()))
                .count();
            if done >= n {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{id}: not {n} deliveries in {settled:?}: {last:?}");
    }

    pub async fn status(&self, id: &str, channel: &str, settled: &[&str]) -> Value {
        let all = self.deliveries(id, settled, 1).await;
        all.into_iter()
            .find(|d| d["channel"] == channel)
            .unwrap_or_else(|| panic!("no {channel} delivery"))
    }

    /// Requests the mock received for `to` on `channel`, accepted or not.
    pub async fn calls(&self, channel: &str, to: &str) -> usize {
        let r: Value = self
            .http
            .get(format!("{}/_mock/requests", self.mock))
            .send()
            .await
            .expect("requests")
            .json()
            .await
            .expect("json");
        r["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["channel"] == channel && m["to"] == to)
            .count()
    }

    pub async fn reply(&self, channel: &str, from: &str, body: &str, via: Option<&str>) {
        let mut msg = json!({"channel": channel, "from": from, "body": body});
        if let Some(v) = via {
            msg["via"] = v.into();
        }
        let r: Value = self
            .http
            .post(format!("{}/_mock/inbound", self.mock))
            .json(&msg)
            .send()
            .await
            .expect("inbound")
            .json()
            .await
            .expect("json");
        assert_eq!(r["status"], 200, "quizflow took the reply: {r}");
    }

    pub async fn suppressions(&self, query: &str) -> Vec<Value> {
        let v = self
            .api
            .admin_get(&format!("/v1/suppressions?{query}"))
            .await;
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

pub const FINAL: &[&str] = &[
    "sent",
    "delivered",
    "suppressed",
    "capped",
    "skipped",
    "dead",
    "cancelled",
];
