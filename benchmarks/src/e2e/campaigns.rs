//! The benchmark's campaigns: its SMS campaign, and idle ones that match nothing (the cost of
//! matching many campaigns).

use super::{Deployment, E2eArgs, E2eError, BODY_PREFIX};

/// The `n`-th campaign that matches none of the benchmark's leads (scores stay within 0..=100).
pub(super) fn idle_campaign(n: usize, quizzes: usize) -> serde_json::Value {
    let quiz = if n % 10 < 7 {
        serde_json::json!(format!("e2e{}", n % quizzes.max(1)))
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({
        "name": format!("bench idle {n}"), "quiz_id": quiz,
        "match": {
            "all": [{"field": "score", "op": "gt", "value": 1000 + n}],
            "any": [{"field": "answers.q1", "op": "in", "value": ["a", "b"]}, {"field": "tags", "op": "contains", "value": "event"}]
        },
        "actions": [{"channel": "sms", "template": "never"}]
    })
}

/// `POST /v1/campaigns`; anything but 201 is a set-up error.
async fn post_campaign(
    http: &reqwest::Client,
    d: &Deployment,
    body: &serde_json::Value,
) -> Result<(), E2eError> {
    let r = http
        .post(format!("{}/v1/campaigns", d.api))
        .bearer_auth(&d.admin_token)
        .json(body)
        .send()
        .await?;
    if r.status().as_u16() != 201 {
        return Err(E2eError::Setup(format!(
            "campaign not created: {}",
            r.text().await.unwrap_or_default()
        )));
    }
    Ok(())
}

/// The benchmark's SMS campaign, and `--campaigns - 1` idle ones beside it.
pub(super) async fn create_campaign(
    http: &reqwest::Client,
    d: &Deployment,
    args: &E2eArgs,
) -> Result<(), E2eError> {
    for n in 1..args.campaigns.max(1) {
        post_campaign(http, d, &idle_campaign(n, args.quizzes)).await?;
    }
    post_campaign(
        http,
        d,
        &serde_json::json!({
            "name": "bench e2e", "priority": "normal",
            "match": {"all": [{"field": "answers.q1", "op": "eq", "value": "b"}]},
            "actions": [{"channel": "sms", "template": format!("{BODY_PREFIX}{{{{ submission_id }}}}")}]
        }),
    )
    .await
}
