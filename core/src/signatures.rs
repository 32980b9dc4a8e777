//! Every keyed hash quizflow computes: the signatures providers put on their status
//! callbacks (one way for the API that checks them and the mock provider that sends them),
//! the signature quizflow puts on its own webhooks, and the keyed digests that stand in for
//! personal data (audit log, per-respondent limits). One HMAC helper serves them all.

use base64::Engine;
use hmac::{KeyInit, Mac};

/// HMAC-SHA256 of the concatenated `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// A keyed digest that names a value without holding it: 128 bits of HMAC-SHA256, in hex.
pub fn digest_hex(key: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(&hmac_sha256(key, parts)[..16])
}

/// quizflow's own webhook signature (`X-Quizflow-Signature`): `sha256=` and the hex
/// HMAC-SHA256 of the body under the secret.
pub fn quizflow(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &[body]))
    )
}

/// Twilio's `X-Twilio-Signature`: base64 of HMAC-SHA1 under the account's auth token over the
/// full callback URL followed by every POST parameter, sorted by name, as name then value.
pub fn twilio(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Meta's `X-Hub-Signature-256` (WhatsApp Cloud webhooks): `sha256=` and the hex HMAC-SHA256
/// of the raw body under the app secret.
pub fn hub(app_secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(app_secret.as_bytes(), &[body]))
    )
}

/// Svix's `svix-signature` (Resend's webhooks): `v1,` and the base64 HMAC-SHA256 of
/// `<svix-id>.<svix-timestamp>.<body>` under the secret's key (the base64 after `whsec_`).
/// `None` when the secret is not of that form.
pub fn svix(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mac = hmac_sha256(
        &key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac)
    ))
}

/// Constant-time equality of two signatures.
pub fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's documented example (twilio.com/docs/usage/security#validating-requests).
    #[test]
    fn twilio_matches_the_documented_example() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            twilio(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn hub_and_svix_are_keyed_over_the_exact_bytes() {
        let h = hub("secret", b"{\"a\":1}");
        assert!(h.starts_with("sha256=") && h.len() == 7 + 64);
        assert_ne!(h, hub("secret", b"{\"a\": 1}"));
        assert_ne!(h, hub("other", b"{\"a\":1}"));
        let key = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef")
        );
        let s = svix(&key, "msg_1", "1700000000", b"{}").expect("valid secret");
        assert!(s.starts_with("v1,"));
        assert_ne!(Some(s.clone()), svix(&key, "msg_2", "1700000000", b"{}"));
        assert!(equal(&s, &s) && !equal(&s, "v1,x"));
        assert_eq!(svix("whsec_***", "a", "1", b""), None);
    }
}
