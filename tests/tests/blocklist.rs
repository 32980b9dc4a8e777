//! The blocklist (issue 26): a phone or e-mail added to the suppression list with reason
//! `blocked` makes intake refuse that person's leads (403 `blocked`, alone in a batch), shows in
//! `/v1/stats`, and lifting it lets them in again; other leads are untouched.

mod common;
#[path = "../../api/tests/harness/mod.rs"]
mod harness;

use harness::Api;
use reqwest::Method;
use serde_json::{json, Value};

const BOT: &str = "+5511987659999";

async fn lead(api: &Api, phone: &str) -> (u16, Value) {
    let r = api
        .post_json(
            "/v1/quizzes/promo/submissions",
            &json!({"respondent": {"phone": phone}, "metadata": {"n": uuid::Uuid::new_v4().to_string()}}),
        )
        .await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_blocked_contact_is_refused_at_intake_until_lifted() {
    let api = Api::start().await;
    assert_eq!(lead(&api, BOT).await.0, 202, "not blocked yet");
    let r = api
        .admin(Method::POST, "/v1/suppressions")
        .json(&json!({"channel": "sms", "contact": BOT, "reason": "blocked"}))
        .send()
        .await
        .expect("block");
    assert_eq!(r.status().as_u16(), 201);
    let (s, e) = lead(&api, BOT).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("blocked")),
        "{e}"
    );
    assert_eq!(
        lead(&api, "+5511987658888").await.0,
        202,
        "others are untouched"
    );
    // In a batch the blocked item alone is refused.
    let r = api
        .post_json(
            "/v1/submissions/batch",
            &json!({"submissions": [
                {"quiz_id": "promo", "respondent": {"phone": BOT}},
                {"quiz_id": "promo", "respondent": {"phone": "+5511987657777"}}]}),
        )
        .await;
    let b: Value = r.json().await.expect("json");
    assert_eq!(b["results"][0]["status"], 403, "{b}");
    assert_eq!(b["results"][0]["error"]["code"], "blocked", "{b}");
    assert_eq!(b["results"][1]["status"], 202, "{b}");
    let stats = api.admin_get("/v1/stats").await;
    assert_eq!(stats["suppressions"]["blocked"], 1, "{stats}");

    let r = api
        .admin(
            Method::DELETE,
            &format!(
                "/v1/suppressions?channel=sms&contact=%2B{}&reason=blocked",
                &BOT[1..]
            ),
        )
        .send()
        .await
        .expect("lift");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    assert_eq!(lead(&api, BOT).await.0, 202, "lifted");
}
