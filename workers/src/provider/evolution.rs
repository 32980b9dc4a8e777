//! Evolution API: `POST /message/sendText/{instance}` with the instance's API key.

use super::Outgoing;
use serde_json::json;

/// The message's id in Evolution's answer (`key.id`): its delivery reports name only it.
pub(super) async fn message_id(resp: reqwest::Response) -> Option<String> {
    let body = super::read_limited(resp, super::MAX_ERROR_BODY).await;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["key"]["id"]
        .as_str()
        .filter(|id| !id.is_empty() && id.len() <= 200)
        .map(str::to_owned)
}

pub(super) fn request(
    http: &reqwest::Client,
    base: &str,
    instance: &str,
    api_key: &str,
    out: &Outgoing,
) -> reqwest::RequestBuilder {
    let text = match &out.image {
        // sendText has no media: the image goes as a link under the text.
        Some(link) => format!("{}\n{link}", out.body),
        None => out.body.clone(),
    };
    http.post(format!(
        "{}/message/sendText/{instance}",
        base.trim_end_matches('/')
    ))
    .header("apikey", api_key)
    .header("Idempotency-Key", &out.idempotency_key)
    .json(&json!({"number": out.to, "text": text}))
}
