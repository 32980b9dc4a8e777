//! The admin API over what the batcher stored: a lead reads back with its deliveries.

#[path = "../../api/tests/harness/mod.rs"]
mod harness;

use harness::{assert_error, Api};
use reqwest::Method;
use serde_json::json;

fn campaign() -> serde_json::Value {
    json!({
        "name": "Promo Nov high scorers", "active": true, "quiz_id": "promo-nov",
        "match": {"all": [{"field": "score", "op": "gte", "value": 70}], "any": []},
        "actions": [{"channel": "sms", "template": "Olá {{ respondent.name }}"}, {"channel": "webhook", "url": "https://crm.example.com/x"}],
        "priority": "high", "starts_at": null, "ends_at": null
    })
}

#[tokio::test]
async fn given_an_unstored_submission_then_404_and_a_stored_one_reads_back_with_deliveries() {
    let api = Api::start().await;
    // The campaign exists before the submission is received, so it applies to it.
    let created: serde_json::Value = api
        .admin(Method::POST, "/v1/campaigns")
        .json(&campaign())
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let accepted: serde_json::Value = api
        .post_json(
            "/v1/quizzes/promo-nov/submissions",
            &harness::lead("+5511987654321"),
        )
        .await
        .json()
        .await
        .expect("json");
    let id = accepted["submission_id"].as_str().expect("id").to_owned();
    // No batcher runs here: accepted but not stored yet.
    let missing = api
        .admin(Method::GET, &format!("/v1/submissions/{id}"))
        .send()
        .await
        .expect("get");
    assert_error(missing, 404, "not_found").await;

    // Store it the way the batcher does, with its ledger rows.
    let settings = quizflow_batcher::BatcherSettings {
        batch_wait: std::time::Duration::from_millis(20),
        ..Default::default()
    };
    let nats = async_nats::connect(api.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(nats.clone());
    let batcher =
        quizflow_batcher::Batcher::new(settings, nats, js, quizflow_store::pool(&api.db.url, 2));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(batcher.run(async move {
        let _ = rx.await;
    }));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let body = loop {
        let r = api
            .admin(Method::GET, &format!("/v1/submissions/{id}"))
            .send()
            .await
            .expect("get");
        if r.status().as_u16() == 200 {
            break r.json::<serde_json::Value>().await.expect("json");
        }
        assert!(std::time::Instant::now() < deadline, "stored in time");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let _ = tx.send(());
    handle.await.expect("join").expect("batcher stop");
    assert_eq!(body["submission_id"], id);
    assert_eq!(body["respondent"]["phone"], "+5511987654321");
    assert_eq!(body["score"], 72.0);
    assert_eq!(body["tags"], json!(["promo-nov"]));
    let deliveries = body["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 2, "{body}");
    assert!(deliveries.iter().all(|d| d["status"] == "queued"
        && d["campaign_id"] == created["id"]
        && d["attempts"] == 0));
}
