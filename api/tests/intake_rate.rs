//! The intake rate per quiz (`quizflow_intake_leads_total{quiz}`, read by the alert
//! `QuizflowUnusualIntakeRate`): a quiz some campaign names has its own series; leads to quizzes
//! nobody names, however many made-up ids, all count as `other`, so the public cannot grow the
//! label set.

mod harness;

use harness::Api;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn only_quizzes_campaigns_name_get_a_label() {
    let api = Api::start().await;
    let r = api
        .admin(Method::POST, "/v1/campaigns")
        .json(
            &json!({"name": "Promo", "quiz_id": "promo", "match": {}, "actions": [
            {"channel": "sms", "template": "Oi"}]}),
        )
        .send()
        .await
        .expect("campaign");
    assert_eq!(r.status().as_u16(), 201);
    for quiz in std::iter::once("promo".to_owned()).chain((0..20).map(|i| format!("made-up-{i}"))) {
        let r = api
            .post_json(
                &format!("/v1/quizzes/{quiz}/submissions"),
                &json!({"respondent": {"email": format!("{quiz}@example.com")}}),
            )
            .await;
        assert_eq!(r.status().as_u16(), 202);
    }
    let metrics = api
        .http
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("quizflow_intake_leads_total{"))
        .collect();
    assert_eq!(
        series,
        [
            "quizflow_intake_leads_total{quiz=\"other\"} 20",
            "quizflow_intake_leads_total{quiz=\"promo\"} 1"
        ],
        "{metrics}"
    );
}
