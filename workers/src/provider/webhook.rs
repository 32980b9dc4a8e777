//! Webhooks: a POST of the submission and campaign to the campaign's URL, HMAC-SHA256 signed
//! when a secret is set, and only to public addresses unless private ones are allowed.

use super::Outgoing;
use quizflow_core::Outcome;
use serde_json::Value;

/// Header with the webhook body's signature: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Quizflow-Signature";

pub fn sign(secret: &str, body: &[u8]) -> String {
    quizflow_core::signatures::quizflow(secret, body)
}

/// The request, or the outcome when the URL may not be called at all.
pub(super) fn request(
    http: &reqwest::Client,
    secret: Option<&str>,
    allow_private: bool,
    out: &Outgoing,
) -> Result<reqwest::RequestBuilder, Outcome> {
    if !allow_private {
        crate::egress::check_url(&out.to).map_err(|e| Outcome::Permanent(e.to_string()))?;
    }
    let body = serde_json::to_vec(out.payload.as_ref().unwrap_or(&Value::Null)).unwrap_or_default();
    let mut r = http
        .post(&out.to)
        .header("content-type", "application/json")
        .header("Idempotency-Key", &out.idempotency_key);
    if let Some(secret) = secret {
        r = r.header(SIGNATURE_HEADER, sign(secret, &body));
    }
    Ok(r.body(body))
}
