//! Consent and opt-out (contract §3.2): the suppression list's admin routes, the inbound
//! replies that put a contact on it or take a keyword opt-out off (`POST /v1/inbound/twilio`;
//! WhatsApp Cloud's inbound messages arrive on its callback route), and the unsubscribe link's
//! page and one-click POST (RFC 8058).
//!
//! Every change is written to the audit log with its reason and source; contacts appear only
//! as their keyed hash (`QUIZFLOW_HASH_KEY`), never in a log line or a metric label.

use crate::admin::db_error;
use crate::error::ApiError;
use crate::intake::{check_content_type, read_body};
use crate::AppState;
use poem::http::{header, HeaderMap, StatusCode, Uri};
use poem::web::{Data, Json, Path, Query};
use poem::{handler, IntoResponse, Response};
use quizflow_core::consent::{keyword, HashKey, Keyword, Purpose, Reason, Scope};
use quizflow_core::Channel;
use quizflow_store::consent::NewSuppression;
use std::sync::Arc;

/// What the API needs of consent: the hash key and the reply keywords.
#[derive(Clone, Debug)]
pub struct ConsentSettings {
    pub hash_key: HashKey,
    /// `QUIZFLOW_OPT_OUT_KEYWORDS`: replies that suppress (whole message, any case or accent).
    pub opt_out_keywords: Vec<String>,
    /// `QUIZFLOW_OPT_IN_KEYWORDS`: replies that lift a keyword opt-out.
    pub opt_in_keywords: Vec<String>,
}

impl Default for ConsentSettings {
    fn default() -> Self {
        Self {
            hash_key: HashKey::for_tests(),
            opt_out_keywords: split_keywords(DEFAULT_OPT_OUT),
            opt_in_keywords: split_keywords(DEFAULT_OPT_IN),
        }
    }
}

pub const DEFAULT_OPT_OUT: &str = "STOP,SAIR,PARAR,CANCELAR,UNSUBSCRIBE";
pub const DEFAULT_OPT_IN: &str = "START,VOLTAR";

pub fn split_keywords(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What one change to the list came from, for the audit log.
struct Change<'a> {
    action: &'static str,
    route: &'static str,
    channel: Channel,
    hash: [u8; 32],
    reason: Option<Reason>,
    source: &'a str,
}

impl AppState {
    /// Suppresses `contact` on `channel` for `reason` (its scope), and records it in the audit
    /// log. False when the contact does not normalise (nothing to suppress).
    pub(crate) async fn suppress(
        &self,
        channel: Channel,
        contact: &str,
        reason: Reason,
        source: &str,
        route: &'static str,
    ) -> Result<bool, ApiError> {
        let Some(hash) = self.settings.consent.hash_key.hash(channel, contact) else {
            return Ok(false);
        };
        self.suppress_hash(channel, hash, reason, reason.scope(), source, Some(route))
            .await
    }

    pub(crate) async fn suppress_hash(
        &self,
        channel: Channel,
        hash: [u8; 32],
        reason: Reason,
        scope: Scope,
        source: &str,
        // The route to write an audit entry for; `None` when the caller's own route is audited.
        route: Option<&'static str>,
    ) -> Result<bool, ApiError> {
        let entry = NewSuppression {
            channel: channel.as_str().to_owned(),
            contact_hash: hash.to_vec(),
            reason: reason.as_str().to_owned(),
            scope: scope.as_str().to_owned(),
            source: source.to_owned(),
        };
        let mut conn = self.db.get().await.map_err(db_error)?;
        let added = quizflow_store::consent::suppress(&mut conn, &[entry])
            .await
            .map_err(db_error)?;
        self.metrics
            .suppressions
            .with_label_values(&[channel.as_str(), reason.as_str()])
            .inc();
        if let Some(route) = route {
            let change = Change {
                action: "suppression.add",
                route,
                channel,
                hash,
                reason: Some(reason),
                source,
            };
            self.audit_change(&mut conn, change, serde_json::json!({ "new": added > 0 }))
                .await;
        }
        Ok(true)
    }

    /// Lifts the keyword opt-outs of `contact` on `channel` (a START / VOLTAR reply).
    async fn lift_keyword(
        &self,
        channel: Channel,
        contact: &str,
        source: &str,
        route: &'static str,
    ) -> Result<(), ApiError> {
        let Some(hash) = self.settings.consent.hash_key.hash(channel, contact) else {
            return Ok(());
        };
        let reasons: Vec<&str> = Reason::ALL
            .into_iter()
            .filter(|r| r.lifted_by_keyword())
            .map(Reason::as_str)
            .collect();
        let mut conn = self.db.get().await.map_err(db_error)?;
        let lifted = quizflow_store::consent::lift(&mut conn, channel.as_str(), &hash, &reasons)
            .await
            .map_err(db_error)?;
        let change = Change {
            action: "suppression.lift",
            route,
            channel,
            hash,
            reason: None,
            source,
        };
        self.audit_change(&mut conn, change, serde_json::json!({ "lifted": lifted }))
            .await;
        Ok(())
    }

    /// The audit entry of a change that no admin made (a reply, a provider's report, a
    /// click): the proof of when and why.
    async fn audit_change(
        &self,
        conn: &mut quizflow_store::Conn<'_>,
        c: Change<'_>,
        extra: serde_json::Value,
    ) {
        let mut detail = serde_json::json!({
            "channel": c.channel.as_str(),
            "source": c.source,
        });
        if let Some(r) = c.reason {
            detail["reason"] = r.as_str().into();
        }
        if let (Some(d), serde_json::Value::Object(e)) = (detail.as_object_mut(), extra) {
            d.extend(e);
        }
        let entry = quizflow_store::audit::NewEntry {
            action: c.action,
            route: c.route.to_owned(),
            outcome: "ok",
            status: 200,
            target: Some(format!("contact:{}", hex::encode(&c.hash[..16]))),
            detail,
        };
        if let Err(e) = quizflow_store::audit::append(conn, &entry).await {
            tracing::warn!(error = %e, "suppression change not written to the audit log");
        }
    }

    /// A reply's text from `from` on `channel`: an opt-out keyword suppresses, an opt-in one
    /// lifts; anything else is left alone. Returns what it was.
    pub(crate) async fn reply(
        &self,
        channel: Channel,
        from: &str,
        text: &str,
        source: &str,
        route: &'static str,
    ) -> Result<Option<Keyword>, ApiError> {
        let c = &self.settings.consent;
        let kw = keyword(text, &c.opt_out_keywords, &c.opt_in_keywords);
        match kw {
            Some(Keyword::OptOut) => {
                self.suppress(channel, from, Reason::OptOutKeyword, source, route)
                    .await?;
            }
            Some(Keyword::OptIn) => self.lift_keyword(channel, from, source, route).await?,
            None => {}
        }
        let label = match kw {
            Some(Keyword::OptOut) => "opt_out",
            Some(Keyword::OptIn) => "opt_in",
            None => "other",
        };
        self.metrics
            .inbound
            .with_label_values(&[channel.as_str(), label])
            .inc();
        Ok(kw)
    }
}

/// `POST /v1/inbound/twilio`: Twilio's incoming-message webhook (form-encoded, signed like
/// its status callbacks). `From` `whatsapp:+…` is a WhatsApp reply through Twilio. Answered
/// with an empty TwiML `<Response/>` (no auto-reply: Twilio's own opt-out handling answers
/// STOP).
#[handler]
pub async fn inbound_twilio(
    state: Data<&Arc<AppState>>,
    uri: &Uri,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let params = crate::callbacks::twilio_params(&state, uri, headers, body).await?;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let from = get("From").unwrap_or_default();
    let channel = if from.starts_with("whatsapp:") {
        Channel::Whatsapp
    } else {
        Channel::Sms
    };
    let text = get("Body").unwrap_or_default();
    state
        .reply(
            channel,
            from,
            text,
            "inbound:twilio",
            "POST /v1/inbound/twilio",
        )
        .await?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/xml")
        .body("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>"))
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    channel: Option<String>,
    contact: Option<String>,
    reason: Option<String>,
    before: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<i64>,
}

fn channel_param(raw: &str) -> Result<Channel, ApiError> {
    Channel::parse(raw)
        .filter(|c| *c != Channel::Webhook)
        .ok_or_else(|| ApiError::invalid_field("channel", "must be sms, whatsapp or email"))
}

/// The keyed hash of an admin's `contact` on `channel` (400 when it is not one).
fn hash_param(key: &HashKey, channel: Channel, contact: &str) -> Result<[u8; 32], ApiError> {
    key.hash(channel, contact).ok_or_else(|| {
        ApiError::invalid_field(
            "contact",
            "must be a phone number (E.164) for sms and whatsapp, an e-mail address for email",
        )
    })
}

/// `GET /v1/suppressions?channel=&contact=&reason=&before=&limit=`: newest first. Entries
/// show the contact's hash, never the contact (the list does not hold it).
#[handler]
pub async fn list(
    state: Data<&Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let channel = q.channel.as_deref().map(channel_param).transpose()?;
    let hash = match (&q.contact, channel) {
        (Some(c), Some(ch)) => Some(hash_param(&state.settings.consent.hash_key, ch, c)?),
        (Some(_), None) => {
            return Err(ApiError::invalid_field(
                "channel",
                "is required with contact",
            ))
        }
        _ => None,
    };
    if let Some(r) = &q.reason {
        r.parse::<Reason>()
            .map_err(|e| ApiError::invalid_field("reason", e))?;
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 1000"));
    }
    let mut conn = state.db.get().await.map_err(db_error)?;
    let items = quizflow_store::consent::list(
        &mut conn,
        channel.map(Channel::as_str),
        hash.as_ref().map(|h| h.as_slice()),
        q.reason.as_deref(),
        q.before,
        limit,
    )
    .await
    .map_err(db_error)?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|i| i.created_at))
        .flatten();
    Ok(Json(serde_json::json!({ "items": items, "next_before": next })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    channel: String,
    contact: String,
    #[serde(default)]
    reason: Option<String>,
    /// `all` (default) or `marketing`.
    #[serde(default)]
    purpose: Option<String>,
}

/// `POST /v1/suppressions` `{"channel", "contact", "reason"?, "purpose"?}`: 201 with the
/// entry's hash. `purpose` `all` (default) stops every message on the channel, `marketing`
/// only marketing ones.
#[handler]
pub async fn add(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let value = read_body(headers, body, 16 * 1024).await?;
    for k in ["reason", "purpose"] {
        if value.get(k).is_some_and(serde_json::Value::is_null) {
            return Err(ApiError::invalid_field(k, "must be a string when given"));
        }
    }
    let b: AddBody = serde_json::from_value(value).map_err(|e| ApiError::invalid_json(&e))?;
    let channel = channel_param(&b.channel)?;
    let hash = hash_param(&state.settings.consent.hash_key, channel, &b.contact)?;
    let reason = match &b.reason {
        Some(r) => r
            .parse::<Reason>()
            .map_err(|e| ApiError::invalid_field("reason", e))?,
        None => Reason::Admin,
    };
    let scope = match &b.purpose {
        Some(p) => p
            .parse::<Scope>()
            .map_err(|e| ApiError::invalid_field("purpose", e))?,
        None => Scope::All,
    };
    // The route's own audit entry records it (with this note), not a second one.
    state
        .suppress_hash(channel, hash, reason, scope, "admin", None)
        .await?;
    if reason == Reason::Blocked {
        state.note_blocked(&hash, true);
    }
    let body = serde_json::json!({"channel": channel.as_str(), "contact_hash": hex::encode(hash),
        "reason": reason.as_str(), "purpose": scope.as_str()});
    let mut resp = (StatusCode::CREATED, Json(body.clone())).into_response();
    resp.extensions_mut().insert(crate::audit::AuditNote::new(
        Some(format!("contact:{}", hex::encode(&hash[..16]))),
        body,
    ));
    Ok(resp)
}

#[derive(serde::Deserialize)]
pub struct DeleteQuery {
    channel: String,
    contact: String,
    reason: Option<String>,
}

/// `DELETE /v1/suppressions?channel=&contact=[&reason=]`: 204, or 404 when there was none.
#[handler]
pub async fn remove(
    state: Data<&Arc<AppState>>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let channel = channel_param(&q.channel)?;
    let hash = hash_param(&state.settings.consent.hash_key, channel, &q.contact)?;
    let reasons: Vec<&str> = match &q.reason {
        Some(r) => {
            let r = r
                .parse::<Reason>()
                .map_err(|e| ApiError::invalid_field("reason", e))?;
            vec![r.as_str()]
        }
        None => Vec::new(),
    };
    let mut conn = state.db.get().await.map_err(db_error)?;
    let n = quizflow_store::consent::lift(&mut conn, channel.as_str(), &hash, &reasons)
        .await
        .map_err(db_error)?;
    if reasons.is_empty() || reasons.contains(&Reason::Blocked.as_str()) {
        state.note_blocked(&hash, false);
    }
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such suppression",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn page(title: &str, body: &str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header("Cache-Control", "no-store")
        .header("Referrer-Policy", "no-referrer")
        .body(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
             <body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\"><h1>{title}</h1>{body}</body></html>"
        ))
}

fn bad_link() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "this unsubscribe link is not valid",
    )
}

fn purpose_text(p: Purpose) -> &'static str {
    match p {
        Purpose::Marketing => "marketing messages",
        Purpose::Transactional => "messages",
    }
}

/// `GET /v1/unsubscribe/{token}`: a confirmation page whose button POSTs (a mail scanner
/// following links must not unsubscribe anyone).
#[handler]
pub async fn unsubscribe_page(
    state: Data<&Arc<AppState>>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let (channel, purpose, _) = state
        .settings
        .consent
        .hash_key
        .open_unsubscribe(&token)
        .ok_or_else(bad_link)?;
    let what = purpose_text(purpose);
    Ok(page(
        "Unsubscribe",
        &format!(
            "<p>Stop receiving {what} by {channel}?</p>\
             <form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>"
        ),
    ))
}

/// `POST /v1/unsubscribe/{token}`: the one-click unsubscribe (RFC 8058 sends
/// `List-Unsubscribe=One-Click`; the page's button sends nothing). Suppresses the token's
/// contact for marketing on its channel.
#[handler]
pub async fn unsubscribe(
    state: Data<&Arc<AppState>>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let (channel, _, hash) = state
        .settings
        .consent
        .hash_key
        .open_unsubscribe(&token)
        .ok_or_else(bad_link)?;
    let reason = Reason::UnsubscribeLink;
    state
        .suppress_hash(
            channel,
            hash,
            reason,
            reason.scope(),
            "unsubscribe",
            Some("POST /v1/unsubscribe/{token}"),
        )
        .await?;
    Ok(page(
        "Unsubscribed",
        "<p>You will not receive these messages any more.</p>",
    ))
}
