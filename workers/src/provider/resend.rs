//! Resend-style e-mail API: `POST /emails`, the message's reference as a tag that comes back
//! in Resend's webhooks.

use super::Outgoing;
use serde_json::json;

pub(super) fn request(
    http: &reqwest::Client,
    base: &str,
    api_key: &str,
    from: &str,
    out: &Outgoing,
) -> reqwest::RequestBuilder {
    http.post(format!("{}/emails", base.trim_end_matches('/')))
        .bearer_auth(api_key)
        .header("Idempotency-Key", &out.idempotency_key)
        .json(&json!({"from": from, "to": [out.to], "subject": out.subject.clone().unwrap_or_default(),
            "html": out.body, "tags": [{"name": "quizflow_ref", "value": out.reference}]}))
}
