//! WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages`, an approved template (what
//! starts a conversation), a text, or an image with the body as its caption; the message's reference rides in `biz_opaque_callback_data`.

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
    let body = match (&out.template, &out.image) {
        (Some(t), _) => json!({"messaging_product": "whatsapp", "to": out.to, "type": "template",
            "template": template(t), "biz_opaque_callback_data": out.reference}),
        (None, image) => free_text(out, image.as_deref()),
    };
    http.post(format!(
        "{}/{version}/{phone_number_id}/messages",
        base.trim_end_matches('/')
    ))
    .bearer_auth(token)
    .header("Idempotency-Key", &out.idempotency_key)
    .json(&body)
}

/// A template's `components`: the header image and the body's text parameters, in order.
fn template(t: &super::TemplateMessage) -> serde_json::Value {
    let mut components = Vec::new();
    if let Some(link) = &t.header_image {
        components.push(json!({"type": "header",
            "parameters": [{"type": "image", "image": {"link": link}}]}));
    }
    if !t.body.is_empty() {
        let parameters: Vec<_> = t
            .body
            .iter()
            .map(|text| json!({"type": "text", "text": text}))
            .collect();
        components.push(json!({"type": "body", "parameters": parameters}));
    }
    json!({"name": t.name, "language": {"code": t.language}, "components": components})
}

/// Free text (only inside the 24-hour window after the person wrote), or an image with the
/// body as its caption.
fn free_text(out: &Outgoing, image: Option<&str>) -> serde_json::Value {
    match image {
        Some(link) => json!({"messaging_product": "whatsapp", "to": out.to, "type": "image",
            "image": {"link": link, "caption": out.body}, "biz_opaque_callback_data": out.reference}),
        None => json!({"messaging_product": "whatsapp", "to": out.to, "type": "text",
            "text": {"body": out.body}, "biz_opaque_callback_data": out.reference}),
    }
}
