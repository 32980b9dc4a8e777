//! Provider status callbacks (contract §2.4): Twilio's status callbacks, WhatsApp Cloud webhooks
//! (with Meta's `GET` verification handshake) and Resend's e-mail events (Svix-signed). No
//! admin token: each request carries its provider's signature, checked in constant time
//! against the configured secret; without a secret the route answers 403.
//!
//! A report names its ledger row by the reference the worker sent with the message
//! ([`quizflow_core::DeliveryJob::reference`]); it moves the row forward only: to `delivered`,
//! or for a late failure to `dead` with a dead letter carrying the provider's reason. Reports
//! for unknown messages, repeated ones and progress reports (`queued`, `sent`, ...) are
//! answered 200 and counted (`quizflow_callbacks_total{provider, outcome}`): a provider that
//! gets an error retries, and retrying cannot help those. `delivered` reports are written in
//! batches ([`crate::receipts`]); late failures (rare) one by one, each with its dead letter.

use crate::error::ApiError;
use crate::AppState;
use poem::http::{header, HeaderMap, StatusCode, Uri};
use poem::web::{Data, Json, Query};
use poem::{handler, IntoResponse, Response};
use quizflow_core::consent::Reason;
use quizflow_core::{signatures, Channel, DeliveryJob};
use quizflow_store::reports::{Applied, Delivered};
use std::sync::Arc;

/// Largest callback body (a WhatsApp webhook may batch many statuses).
const MAX_CALLBACK_BYTES: usize = 256 * 1024;
/// How far a Svix timestamp may be from now (replayed requests are refused past it).
const SVIX_TOLERANCE_S: i64 = 300;

/// Secrets and the public address the callbacks are checked with.
#[derive(Clone, Default)]
pub struct CallbackSettings {
    /// `QUIZFLOW_PUBLIC_URL`: the scheme and host the providers call (Twilio signs the URL).
    pub public_url: Option<String>,
    /// `QUIZFLOW_TWILIO_AUTH_TOKEN`: Twilio signs its callbacks with the account's token.
    pub twilio_auth_token: Option<String>,
    /// `QUIZFLOW_WHATSAPP_APP_SECRET`: the Meta app secret (`X-Hub-Signature-256`).
    pub whatsapp_app_secret: Option<String>,
    /// `QUIZFLOW_WHATSAPP_VERIFY_TOKEN`: answered back in the subscription handshake.
    pub whatsapp_verify_token: Option<String>,
    /// `QUIZFLOW_EMAIL_WEBHOOK_SECRET`: the Svix signing secret (`whsec_…`).
    pub email_webhook_secret: Option<String>,
    /// `QUIZFLOW_EVOLUTION_WEBHOOK_KEY`: the API key Evolution sends with its webhooks.
    pub evolution_webhook_key: Option<String>,
}

impl std::fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("CallbackSettings")
            .field("public_url", &self.public_url)
            .field("twilio_auth_token", &set(&self.twilio_auth_token))
            .field("whatsapp_app_secret", &set(&self.whatsapp_app_secret))
            .field("whatsapp_verify_token", &set(&self.whatsapp_verify_token))
            .field("email_webhook_secret", &set(&self.email_webhook_secret))
            .field("evolution_webhook_key", &set(&self.evolution_webhook_key))
            .finish()
    }
}

/// One status a provider reported about one message.
enum Report {
    Delivered(Delivered),
    Failed(Delivered),
    /// A status that moves nothing (`queued`, `sent`, `delivery_delayed`, ...).
    Progress,
    /// No reference quizflow gave (or none at all).
    Unknown,
}

fn report(reference: Option<&str>, delivered: Option<bool>, detail: String) -> Report {
    let Some(delivered) = delivered else {
        return Report::Progress;
    };
    let Some(r) = reference.and_then(DeliveryJob::parse_reference) else {
        return Report::Unknown;
    };
    let d = Delivered {
        submission_id: r.submission_id.0,
        campaign_id: r.campaign_id,
        channel: r.channel.as_str().to_owned(),
        step: r.step,
        attempt: r.attempt,
        // Provider texts can quote the recipient: bounded, and kept to the ledger.
        detail: detail.chars().take(500).collect(),
    };
    if delivered {
        Report::Delivered(d)
    } else {
        Report::Failed(d)
    }
}

fn refused(why: &'static str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "invalid_signature", why)
}

fn not_configured(provider: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "not_configured",
        format!("{provider} callbacks are not configured on this deployment"),
    )
}

async fn raw_body(headers: &HeaderMap, body: poem::Body) -> Result<bytes::Bytes, ApiError> {
    crate::intake::read_bytes(headers, body, MAX_CALLBACK_BYTES).await
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl AppState {
    /// Applies the reports and counts each outcome; the answer is 200 whatever they found.
    async fn apply_reports(
        &self,
        provider: &'static str,
        reports: Vec<Report>,
    ) -> Result<Response, ApiError> {
        let count = |outcome: &str, n: usize| {
            self.metrics
                .callbacks
                .with_label_values(&[provider, outcome])
                .inc_by(n as u64);
        };
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let (mut progress, mut unknown) = (0, 0);
        for r in reports {
            match r {
                Report::Delivered(d) => delivered.push(d),
                Report::Failed(d) => failed.push(d),
                Report::Progress => progress += 1,
                Report::Unknown => unknown += 1,
            }
        }
        count("progress", progress);
        let mut moved = 0usize;
        let mut tally = |applied: Applied, what: &'static str| match applied {
            Applied::Moved => {
                moved += 1;
                what
            }
            Applied::Stale => "stale",
            Applied::Unknown => "unknown",
        };
        let mut outcomes: Vec<&'static str> = Vec::new();
        // Concurrent callbacks share one statement (see `receipts`).
        let written =
            futures::future::join_all(delivered.into_iter().map(|d| self.receipts.delivered(d)))
                .await;
        for w in written {
            let a = w.map_err(crate::admin::db_error)?;
            outcomes.push(tally(a, "delivered"));
        }
        for f in &failed {
            let result = {
                let mut conn = self.db.get().await.map_err(crate::admin::db_error)?;
                quizflow_store::reports::failed(&mut conn, f)
                    .await
                    .map_err(crate::admin::db_error)?
            };
            outcomes.push(tally(result.0, "failed"));
            if let Some(letter) = result.1 {
                self.archive_late_failure(f, letter).await;
            }
        }
        for o in outcomes {
            count(o, 1);
        }
        count("unknown", unknown);
        Ok(Json(serde_json::json!({ "moved": moved })).into_response())
    }

    /// The `DEAD_LETTERS` copy of a late failure; the mirror row (already committed) is what
    /// listing and redrive use, so a failed publish is logged, not fatal.
    async fn archive_late_failure(&self, f: &Delivered, l: quizflow_store::reports::LateFailure) {
        let Some(channel) = quizflow_core::Channel::parse(&f.channel) else {
            return;
        };
        let priority =
            quizflow_core::Priority::parse(&l.priority).unwrap_or(quizflow_core::Priority::Normal);
        let submission_id = quizflow_core::SubmissionId(f.submission_id);
        let job = DeliveryJob {
            v: DeliveryJob::VERSION,
            job_id: DeliveryJob::job_id(submission_id, f.campaign_id, channel, f.step),
            submission_id,
            campaign_id: f.campaign_id,
            campaign_version: l.campaign_version,
            channel,
            priority,
            created_at: l.created_at,
            step: f.step,
            due_at: None,
            repeat_until: None,
            cancel_key: None,
        };
        let letter = serde_json::json!({"id": l.id, "kind": "delivery", "channel": f.channel,
            "submission_id": f.submission_id, "campaign_id": f.campaign_id, "recipient": l.recipient,
            "class": "permanent", "reason": f.detail, "attempts": l.attempts, "history": l.history,
            "failed_at": chrono::Utc::now(), "job": job});
        let bytes = serde_json::to_vec(&letter).unwrap_or_default();
        if let Err(e) = quizflow_nats::dead_letter_delivery(
            &self.js,
            channel.as_str(),
            &l.id.to_string(),
            bytes.into(),
        )
        .await
        {
            tracing::warn!(error = %e, "late failure recorded, its DEAD_LETTERS copy not published");
        }
    }

    fn reject(&self, provider: &'static str, e: ApiError) -> ApiError {
        self.metrics
            .callbacks
            .with_label_values(&[provider, "rejected"])
            .inc();
        e
    }
}

/// A Twilio webhook's form parameters, once its `X-Twilio-Signature` is checked (status
/// callbacks and incoming messages are signed alike: the URL Twilio called and the form).
pub(crate) async fn twilio_params(
    state: &Arc<AppState>,
    uri: &Uri,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Vec<(String, String)>, ApiError> {
    let cfg = &state.settings.callbacks;
    let (Some(token), Some(public)) = (&cfg.twilio_auth_token, &cfg.public_url) else {
        return Err(state.reject("twilio", not_configured("Twilio")));
    };
    let raw = raw_body(headers, body).await?;
    let params: Vec<(String, String)> = form_urlencoded::parse(&raw).into_owned().collect();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{path}", public.trim_end_matches('/'));
    let given = header_str(headers, "x-twilio-signature").unwrap_or_default();
    if !signatures::equal(given, &signatures::twilio(token, &url, &params)) {
        return Err(state.reject("twilio", refused("X-Twilio-Signature does not match")));
    }
    Ok(params)
}

/// `POST /v1/callbacks/twilio?ref=…`: Twilio's status callback (form-encoded). An
/// `undelivered` with 21610 (the person texted STOP to Twilio) also suppresses the recipient.
#[handler]
pub async fn twilio(
    state: Data<&Arc<AppState>>,
    uri: &Uri,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let params = twilio_params(&state, uri, headers, body).await?;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let reference = uri
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "ref"))
        .map(|(_, v)| v.into_owned());
    let status = get("MessageStatus").unwrap_or_default();
    let delivered = match status {
        "delivered" | "read" => Some(true),
        "undelivered" | "failed" => Some(false),
        _ => None,
    };
    let detail = match get("ErrorCode") {
        Some(code) => format!("twilio {status} {code}"),
        None => format!("twilio {status}"),
    };
    if let (Some("21610"), Some(to)) = (get("ErrorCode"), get("To")) {
        let channel = if to.starts_with("whatsapp:") {
            Channel::Whatsapp
        } else {
            Channel::Sms
        };
        state
            .suppress(
                channel,
                to,
                Reason::ProviderOptOut,
                "callback:twilio",
                "POST /v1/callbacks/twilio",
            )
            .await?;
    }
    let reports = vec![report(reference.as_deref(), delivered, detail)];
    state.apply_reports("twilio", reports).await
}

#[derive(serde::Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// `GET /v1/callbacks/whatsapp`: Meta's subscription handshake; the challenge is echoed when
/// the verify token matches.
#[handler]
pub async fn whatsapp_verify(
    state: Data<&Arc<AppState>>,
    Query(q): Query<Handshake>,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.settings.callbacks.whatsapp_verify_token else {
        return Err(not_configured("WhatsApp"));
    };
    match (q.mode.as_deref(), q.verify_token, q.challenge) {
        (Some("subscribe"), Some(token), Some(challenge))
            if signatures::equal(&token, expected) && challenge.len() <= 256 =>
        {
            Ok(Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(challenge))
        }
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_signature",
            "hub.mode must be subscribe and hub.verify_token the configured token",
        )),
    }
}

/// `POST /v1/callbacks/whatsapp`: WhatsApp Cloud webhooks; every status in the batch.
#[handler]
pub async fn whatsapp(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let Some(secret) = &state.settings.callbacks.whatsapp_app_secret else {
        return Err(state.reject("whatsapp", not_configured("WhatsApp")));
    };
    let raw = raw_body(headers, body).await?;
    let given = header_str(headers, "x-hub-signature-256").unwrap_or_default();
    if !signatures::equal(given, &signatures::hub(secret, &raw)) {
        return Err(state.reject("whatsapp", refused("X-Hub-Signature-256 does not match")));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| ApiError::invalid_json(&e))?;
    let mut reports = Vec::new();
    let empty = Vec::new();
    for entry in doc["entry"].as_array().unwrap_or(&empty) {
        for change in entry["changes"].as_array().unwrap_or(&empty) {
            let value = &change["value"];
            for m in value["messages"].as_array().unwrap_or(&empty) {
                // A reply: text, or a quick-reply button's text.
                let text = m["text"]["body"]
                    .as_str()
                    .or_else(|| m["button"]["text"].as_str());
                if let (Some(from), Some(text)) = (m["from"].as_str(), text) {
                    let route = "POST /v1/callbacks/whatsapp";
                    state
                        .reply(Channel::Whatsapp, from, text, "inbound:whatsapp", route)
                        .await?;
                }
            }
            for s in value["statuses"].as_array().unwrap_or(&empty) {
                let status = s["status"].as_str().unwrap_or_default();
                let opted_out = s["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["code"] == 131050));
                if let (true, Some(to)) = (opted_out, s["recipient_id"].as_str()) {
                    state
                        .suppress(
                            Channel::Whatsapp,
                            to,
                            Reason::ProviderOptOut,
                            "callback:whatsapp",
                            "POST /v1/callbacks/whatsapp",
                        )
                        .await?;
                }
                let delivered = match status {
                    "delivered" | "read" => Some(true),
                    "failed" => Some(false),
                    _ => None,
                };
                let detail = match s["errors"].get(0) {
                    Some(e) => format!(
                        "whatsapp {status} {}: {}",
                        e["code"],
                        e["title"].as_str().unwrap_or_default()
                    ),
                    None => format!("whatsapp {status}"),
                };
                reports.push(report(
                    s["biz_opaque_callback_data"].as_str(),
                    delivered,
                    detail,
                ));
            }
        }
    }
    state.apply_reports("whatsapp", reports).await
}

/// `POST /v1/callbacks/evolution`: Evolution API's `MESSAGES_UPDATE` webhooks, carrying its API
/// key (in the `apikey` header or the body). A delivery (`DELIVERY_ACK`, `READ`, `PLAYED`)
/// moves the row its `keyId` names to `delivered`, forward only; other statuses move nothing.
#[handler]
pub async fn evolution(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let Some(key) = &state.settings.callbacks.evolution_webhook_key else {
        return Err(state.reject("evolution", not_configured("Evolution")));
    };
    let raw = raw_body(headers, body).await?;
    let doc: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| ApiError::invalid_json(&e))?;
    let given = header_str(headers, "apikey")
        .or_else(|| doc["apikey"].as_str())
        .unwrap_or_default();
    if !signatures::equal(given, key) {
        return Err(state.reject("evolution", refused("apikey does not match")));
    }
    let event = doc["event"].as_str().unwrap_or_default();
    if !event.eq_ignore_ascii_case("messages.update") && event != "MESSAGES_UPDATE" {
        state
            .apply_reports("evolution", vec![Report::Progress])
            .await?;
        return Ok(Json(serde_json::json!({ "moved": 0 })).into_response());
    }
    let items = match &doc["data"] {
        serde_json::Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    };
    let mut delivered = Vec::new();
    let mut reports = Vec::new();
    for d in &items {
        let id = d["keyId"]
            .as_str()
            .or_else(|| d["key"]["id"].as_str())
            .or_else(|| d["messageId"].as_str());
        let status = d["status"]
            .as_str()
            .or_else(|| d["update"]["status"].as_str())
            .unwrap_or_default();
        // Ids quizflow kept are Evolution's own (short, printable): anything else names nothing.
        let id = id.filter(|id| id.len() <= 200 && !id.chars().any(char::is_control));
        match (id, status) {
            (Some(id), "DELIVERY_ACK" | "READ" | "PLAYED") => {
                delivered.push((id.to_owned(), format!("evolution {status}")))
            }
            _ => reports.push(Report::Progress),
        }
    }
    let ids: Vec<String> = delivered.iter().map(|(id, _)| id.clone()).collect();
    let found = {
        let mut conn = state.db.get().await.map_err(crate::admin::db_error)?;
        quizflow_store::reports::keys_of_messages(&mut conn, &ids)
            .await
            .map_err(crate::admin::db_error)?
    };
    for (id, detail) in delivered {
        reports.push(match found.iter().find(|(f, _)| *f == id) {
            Some((_, key)) => Report::Delivered(Delivered {
                detail,
                ..key.clone()
            }),
            None => Report::Unknown,
        });
    }
    state.apply_reports("evolution", reports).await
}

/// `POST /v1/callbacks/email`: Resend's events, signed by Svix.
#[handler]
pub async fn email(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let Some(secret) = &state.settings.callbacks.email_webhook_secret else {
        return Err(state.reject("email", not_configured("E-mail")));
    };
    let raw = raw_body(headers, body).await?;
    let id = header_str(headers, "svix-id").unwrap_or_default();
    let ts = header_str(headers, "svix-timestamp").unwrap_or_default();
    let fresh = ts
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= SVIX_TOLERANCE_S);
    let expected = signatures::svix(secret, id, ts, &raw);
    let signed = header_str(headers, "svix-signature")
        .unwrap_or_default()
        .split(' ')
        .any(|given| {
            expected
                .as_deref()
                .is_some_and(|e| signatures::equal(given, e))
        });
    if !fresh || !signed {
        return Err(state.reject(
            "email",
            refused("svix-signature does not match, or svix-timestamp is not within 5 minutes"),
        ));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| ApiError::invalid_json(&e))?;
    let kind = doc["type"].as_str().unwrap_or_default();
    let delivered = match kind {
        "email.delivered" => Some(true),
        "email.bounced" | "email.failed" => Some(false),
        _ => None,
    };
    // Resend sends tags as an object; accept the request's list shape too.
    let tags = &doc["data"]["tags"];
    let reference = tags["quizflow_ref"].as_str().or_else(|| {
        tags.as_array()?
            .iter()
            .find(|t| t["name"] == "quizflow_ref")?["value"]
            .as_str()
    });
    let detail = match doc["data"]["bounce"]["message"].as_str() {
        Some(m) => format!("{kind}: {m}"),
        None => kind.to_owned(),
    };
    let reports = vec![report(reference, delivered, detail)];
    // A signed request replayed inside the signature's window is answered, without effect.
    let replay = {
        let mut conn = state.db.get().await.map_err(crate::admin::db_error)?;
        quizflow_store::reports::webhook_seen(&mut conn, id)
            .await
            .map_err(crate::admin::db_error)?
    };
    if replay {
        state
            .metrics
            .callbacks
            .with_label_values(&["email", "replayed"])
            .inc();
        return Ok(Json(serde_json::json!({ "moved": 0, "replayed": true })).into_response());
    }
    email_suppression(&state, kind, &doc).await?;
    let answer = state.apply_reports("email", reports).await?;
    if let Ok(mut conn) = state.db.get().await {
        if let Err(e) = quizflow_store::reports::webhook_applied(&mut conn, id).await {
            tracing::warn!(error = %e, "svix-id not recorded; a replay would be applied again (forward-only)");
        }
    }
    Ok(answer)
}

/// A hard bounce (Resend's `Permanent`, or a bounce without a type) and a complaint suppress
/// the address (contract §3.2).
async fn email_suppression(
    state: &AppState,
    kind: &str,
    doc: &serde_json::Value,
) -> Result<(), ApiError> {
    let bounce = doc["data"]["bounce"]["type"].as_str();
    let reason = match kind {
        "email.bounced" if bounce.is_none_or(|t| t.eq_ignore_ascii_case("permanent")) => {
            Reason::HardBounce
        }
        "email.complained" => Reason::Complaint,
        _ => return Ok(()),
    };
    let to = doc["data"]["to"]
        .as_array()
        .and_then(|t| t.first())
        .or(Some(&doc["data"]["to"]))
        .and_then(|t| t.as_str());
    if let Some(to) = to {
        let route = "POST /v1/callbacks/email";
        state
            .suppress(Channel::Email, to, reason, "callback:email", route)
            .await?;
    }
    Ok(())
}
