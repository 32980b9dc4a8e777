//! Twilio Messages API: `POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, with
//! the job id as Twilio's idempotency token and the message's reference in the status
//! callback's query (Twilio signs it with the rest).

use super::Outgoing;

pub(super) struct Account<'a> {
    pub base: &'a str,
    pub account_sid: &'a str,
    pub auth_token: &'a str,
    pub from: &'a str,
    pub status_callback: Option<&'a str>,
}

pub(super) fn request(
    http: &reqwest::Client,
    a: Account<'_>,
    out: &Outgoing,
) -> reqwest::RequestBuilder {
    // A messaging service (`MG…`) picks the number itself; otherwise `From` is the number.
    let from = if a.from.starts_with("MG") {
        "MessagingServiceSid"
    } else {
        "From"
    };
    let mut form = vec![
        ("To", out.to.clone()),
        (from, a.from.to_owned()),
        ("Body", out.body.clone()),
    ];
    if let Some(cb) = a.status_callback {
        form.push(("StatusCallback", format!("{cb}?ref={}", out.reference)));
    }
    http.post(format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        a.base.trim_end_matches('/'),
        a.account_sid
    ))
    .basic_auth(a.account_sid, Some(a.auth_token))
    .header("I-Twilio-Idempotency-Token", &out.idempotency_key)
    .form(&form)
}
