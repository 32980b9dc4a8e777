//! Resend-style e-mail API: `POST /emails`, the message's reference as a tag that comes back
//! in Resend's webhooks.

use super::Outgoing;
use serde_json::json;

/// The one-click unsubscribe headers of RFC 8058 (what Gmail's and Yahoo's bulk-sender rules
/// ask of marketing mail), as a JSON object of header → value.
pub(super) fn unsubscribe_headers(url: &str) -> serde_json::Value {
    json!({"List-Unsubscribe": format!("<{url}>"),
           "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})
}

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
        .json(&{
            let mut body = json!({"from": from, "to": [out.to], "subject": out.subject.clone().unwrap_or_default(),
                "html": out.body, "text": out.text(), "tags": [{"name": "quizflow_ref", "value": out.reference}]});
            if let Some(url) = &out.unsubscribe {
                body["headers"] = unsubscribe_headers(url);
            }
            body
        })
}
