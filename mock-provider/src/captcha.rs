//! Captcha `siteverify` (Cloudflare Turnstile, hCaptcha and reCAPTCHA share its shape: a form
//! with `secret`, `response` and optional `remoteip`; JSON `{"success", "error-codes"}`).
//! A response token starting `pass` verifies; any other fails; faults on channel `captcha`
//! make the endpoint fail (an outage). Every call is recorded as a request.

use crate::{From, MockState, Verdict};
use poem::web::{Data, Form, Json};
use poem::{handler, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub(crate) struct VerifyForm {
    #[serde(default)]
    secret: String,
    #[serde(default)]
    response: String,
    #[serde(default)]
    remoteip: Option<String>,
}

#[handler]
pub(crate) async fn siteverify(state: Data<&MockState>, Form(f): Form<VerifyForm>) -> Response {
    let from = From {
        sender: f.remoteip.clone().unwrap_or_default(),
        account: None,
    };
    match state.judge("captcha", &from, &f.response, None).await {
        Verdict::Reject(resp, _) => resp,
        Verdict::Accept if f.secret.is_empty() => {
            Json(json!({"success": false, "error-codes": ["missing-input-secret"]})).into_response()
        }
        Verdict::Accept if f.response.starts_with("pass") => {
            Json(json!({"success": true, "hostname": "quiz.example.com"})).into_response()
        }
        Verdict::Accept => {
            Json(json!({"success": false, "error-codes": ["invalid-input-response"]}))
                .into_response()
        }
    }
}
