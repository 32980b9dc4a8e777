//! `POST /_mock/inbound` `{"channel": "sms"|"whatsapp", "from": "+55…", "body": "SAIR"}`: a
//! person's reply, sent to quizflow as the provider would send it — an SMS (or, with
//! `"via": "twilio"`, a WhatsApp message) as Twilio's signed incoming-message webhook, a
//! WhatsApp message as a WhatsApp Cloud `messages` webhook (sender as its `wa_id`: digits,
//! no `+`). Answers with the status quizflow answered, so a test knows the reply was taken.

use crate::*;
use poem::handler;
use poem::web::Data;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Inbound {
    channel: String,
    from: String,
    body: String,
    /// `twilio` or `cloud` (WhatsApp only; default `cloud`).
    #[serde(default)]
    via: Option<String>,
}

#[handler]
pub(crate) async fn inbound(state: Data<&MockState>, Json(m): Json<Inbound>) -> Response {
    let cb = state.callbacks();
    let request = match (m.channel.as_str(), m.via.as_deref()) {
        ("sms", _) | ("whatsapp", Some("twilio")) => twilio(&cb, &m),
        ("whatsapp", None | Some("cloud")) => cloud(&cb, &m),
        _ => Err("channel must be sms or whatsapp (via twilio or cloud)"),
    };
    let request = match request {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, Json(json!({"error": why}))).into_response(),
    };
    match request.timeout(Duration::from_secs(10)).send().await {
        Ok(r) => Json(json!({"status": r.status().as_u16()})).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": format!("quizflow did not answer: {e}")})),
        )
            .into_response(),
    }
}

fn twilio(cb: &Callbacks, m: &Inbound) -> Result<reqwest::RequestBuilder, &'static str> {
    let (Some(url), Some(token)) = (&cb.twilio_inbound_url, &cb.twilio_auth_token) else {
        return Err("twilio_inbound_url and twilio_auth_token are not set (PUT /_mock/callbacks)");
    };
    let prefix = if m.channel == "whatsapp" {
        "whatsapp:"
    } else {
        ""
    };
    let params = vec![
        ("MessageSid".to_owned(), format!("SM{}", uuid_like())),
        ("AccountSid".to_owned(), "ACmock".to_owned()),
        ("From".to_owned(), format!("{prefix}{}", m.from)),
        ("To".to_owned(), format!("{prefix}+15550000000")),
        ("Body".to_owned(), m.body.clone()),
        ("NumMedia".to_owned(), "0".to_owned()),
    ];
    let signature = quizflow_core::signatures::twilio(token, url, &params);
    Ok(callback_client()
        .post(url)
        .header("X-Twilio-Signature", signature)
        .form(&params))
}

fn cloud(cb: &Callbacks, m: &Inbound) -> Result<reqwest::RequestBuilder, &'static str> {
    let (Some(url), Some(secret)) = (&cb.whatsapp_url, &cb.whatsapp_app_secret) else {
        return Err("whatsapp_url and whatsapp_app_secret are not set (PUT /_mock/callbacks)");
    };
    let wa_id = m.from.trim_start_matches('+');
    let doc = json!({"object": "whatsapp_business_account", "entry": [{"id": "mock-waba", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "mock"},
            "contacts": [{"profile": {"name": ""}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": format!("wamid.{}", uuid_like()),
                "timestamp": Utc::now().timestamp().to_string(), "type": "text",
                "text": {"body": m.body}}]}}]}]});
    let raw = serde_json::to_vec(&doc).unwrap_or_default();
    let signature = quizflow_core::signatures::hub(secret, &raw);
    Ok(callback_client()
        .post(url)
        .header("content-type", "application/json")
        .header("X-Hub-Signature-256", signature)
        .body(raw))
}
