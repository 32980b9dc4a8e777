//! WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages`, a text, or an image with
//! the body as its caption; the message's reference rides in `biz_opaque_callback_data`.

use super::Outgoing;
use serde_json::json;

pub(super) fn request(
    http: &reqwest::Client,
    base: &str,
    version: &str,
    phone_number_id: &str,
    token: &str,
    out: &Outgoing,
) -> reqwest::RequestBuilder {
    let body = match &out.image {
        Some(link) => json!({"messaging_product": "whatsapp", "to": out.to, "type": "image",
            "image": {"link": link, "caption": out.body}, "biz_opaque_callback_data": out.reference}),
        None => json!({"messaging_product": "whatsapp", "to": out.to, "type": "text",
            "text": {"body": out.body}, "biz_opaque_callback_data": out.reference}),
    };
    http.post(format!(
        "{}/{version}/{phone_number_id}/messages",
        base.trim_end_matches('/')
    ))
    .bearer_auth(token)
    .header("Idempotency-Key", &out.idempotency_key)
    .json(&body)
}
