//! Templates users can trust (contract §3.3): `POST /v1/campaigns/{id}/preview` renders every
//! action of a campaign (and its fallback, and WhatsApp template parameters) against a sample
//! lead given in the body, with the workers' own rendering code; `POST /v1/campaigns/{id}/test`
//! sends them once, now, to the sample lead's own contacts through the normal pipeline (a
//! direct message: see `GET /v1/messages/{id}`).

use crate::admin::db_error;
use crate::audit::AuditNote;
use crate::error::ApiError;
use crate::intake::{check_content_type, read_body};
use crate::AppState;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Json, Path};
use poem::{handler, IntoResponse, Response};
use quizflow_core::render::{self, QrLinks, TemplateCache};
use quizflow_core::{
    Action, Campaign, Channel, SubmissionEnvelope, SubmissionId, ValidationErrors,
};
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

const MAX_LEAD_BYTES: usize = 64 * 1024;

/// The campaign and the sample lead of a preview or test call.
async fn campaign_and_lead(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<(Campaign, SubmissionEnvelope), ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no campaign with this id",
        )
    };
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    check_content_type(headers)?;
    let value = read_body(headers, body, MAX_LEAD_BYTES).await?;
    let submission = quizflow_core::parse_submission(&value).map_err(ApiError::invalid)?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    let campaign = quizflow_store::campaigns::get(&mut conn, id)
        .await
        .map_err(db_error)?
        .ok_or_else(not_found)?;
    let quiz = campaign
        .spec
        .quiz_id
        .clone()
        .or_else(|| quizflow_core::QuizId::parse("preview").ok())
        .ok_or_else(not_found)?;
    let lead = SubmissionEnvelope::new(
        SubmissionId(Uuid::new_v4()),
        quiz,
        chrono::Utc::now(),
        None,
        submission,
    );
    Ok((campaign, lead))
}

/// Every action with its ledger step (the n-th of its channel), and each one's fallback.
fn actions(c: &Campaign) -> Vec<(u16, &Action, Option<u16>)> {
    let mut seen = [0u16; 4];
    let mut out = Vec::new();
    for a in &c.spec.actions {
        let i = Channel::ALL
            .iter()
            .position(|x| *x == a.channel)
            .unwrap_or(0);
        let step = seen[i];
        seen[i] += 1;
        out.push((step, a, None));
        if let Some(f) = &a.fallback {
            out.push((
                step,
                &f.action,
                Some(quizflow_core::fallback_step(a.channel, step)),
            ));
        }
    }
    out
}

#[handler]
pub async fn preview(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let (campaign, lead) = campaign_and_lead(&state, &id, headers, body).await?;
    let links = state
        .settings
        .callbacks
        .public_url
        .clone()
        .map(|public_url| QrLinks {
            public_url,
            key: state.link_key.clone(),
        });
    let cache = TemplateCache::with_links(links);
    let stored = quizflow_core::template::stored_shape(&lead);
    let rendered: Vec<Value> = actions(&campaign)
        .into_iter()
        .map(|(step, a, fallback)| {
            let mut one = render_one(&state, &cache, &campaign, &stored, step, a, fallback);
            one["channel"] = a.channel.as_str().into();
            if fallback.is_some() {
                one["fallback"] = true.into();
            }
            one
        })
        .collect();
    Ok(
        Json(json!({"campaign_id": campaign.id, "version": campaign.version, "actions": rendered}))
            .into_response(),
    )
}

/// One action rendered for the lead as the workers would: its recipient, texts, WhatsApp
/// template, or why it would not be sent (`skipped: empty_render`, a template error).
fn render_one(
    state: &AppState,
    cache: &TemplateCache,
    c: &Campaign,
    stored: &Value,
    step: u16,
    a: &Action,
    fallback: Option<u16>,
) -> Value {
    let to = match a.channel {
        Channel::Webhook => a.url.clone(),
        Channel::Email => stored["respondent"]["email"].as_str().map(str::to_owned),
        _ => stored["respondent"]["phone"].as_str().map(str::to_owned),
    };
    let tctx = render::context(stored, &c.id.to_string(), &c.spec.name);
    // The link the recipient would get (its token is made from the contact).
    let unsubscribe = to.as_deref().and_then(|to| {
        let base = state.settings.callbacks.public_url.as_deref()?;
        let hash = state.settings.consent.hash_key.hash(a.channel, to)?;
        let token =
            state
                .settings
                .consent
                .hash_key
                .unsubscribe_token(a.channel, c.spec.purpose, &hash);
        Some(format!(
            "{}/v1/unsubscribe/{token}",
            base.trim_end_matches('/')
        ))
    });
    let tctx = render::with_unsubscribe(tctx, unsubscribe.as_deref());
    let out = cache
        .get(c.id, c.version, fallback.unwrap_or(step), a)
        .and_then(|env| {
            Ok(json!({
                "body": render::render_compiled(&env, "body", &tctx)?,
                "subject": render::render_compiled(&env, "subject", &tctx)?,
                "image": render::render_compiled(&env, "image", &tctx)?,
                "whatsapp_template": render::whatsapp_template(&env, a, &tctx)?,
            }))
        });
    let mut v = match out {
        Ok(v) => v,
        Err(e) => return json!({"step": step, "to": to, "error": e}),
    };
    let empty = v["body"].as_str().is_none_or(|b| b.trim().is_empty())
        && v["whatsapp_template"].is_null()
        && a.channel != Channel::Webhook;
    v["step"] = step.into();
    v["to"] = to.clone().into();
    if to.is_none() {
        v["skipped"] = "no recipient for this channel".into();
    } else if empty {
        v["skipped"] = "empty_render".into();
    }
    v
}

#[handler]
pub async fn test(
    state: Data<&Arc<AppState>>,
    Path(id): Path<String>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    let (campaign, lead) = campaign_and_lead(&state, &id, headers, body).await?;
    let r = &lead.submission.respondent;
    let mut spec = campaign.spec.clone();
    // Sent now, once: no schedule, no recurrence, no cancel key.
    for a in &mut spec.actions {
        a.delay = None;
        a.send_at = None;
        a.cron = None;
        a.timezone = None;
        a.until = None;
        a.max_occurrences = None;
        a.cancel_key = None;
    }
    let rows: Vec<(String, u16)> = actions(&campaign)
        .into_iter()
        .filter(|(_, a, fallback)| fallback.is_none() && reachable(a.channel, r))
        .map(|(step, a, _)| (a.channel.as_str().to_owned(), step))
        .collect();
    if rows.is_empty() {
        let why = "the sample lead has no contact any action of this campaign sends to";
        return Err(ApiError::invalid(ValidationErrors(vec![
            quizflow_core::FieldProblem {
                field: "respondent".into(),
                problem: why.into(),
            },
        ])));
    }
    let msg = quizflow_store::messages::NewMessage {
        id: Uuid::new_v4(),
        phone: r.phone.clone(),
        email: r.email.clone(),
        name: r.name.clone(),
        locale: r.locale.clone(),
        timezone: r.timezone.clone(),
        score: lead.submission.score,
        answers: serde_json::to_value(&lead.submission.answers).unwrap_or_else(|_| json!([])),
        tags: lead.submission.tags.clone(),
        metadata: Value::Object(lead.submission.metadata.clone()),
        idempotency_key: None,
        priority: spec.priority.as_str().to_owned(),
        spec: serde_json::to_value(&spec).unwrap_or(Value::Null),
        rows,
        send_at: None,
    };
    let mut conn = state.db.get().await.map_err(db_error)?;
    quizflow_store::messages::create(&mut conn, std::slice::from_ref(&msg))
        .await
        .map_err(db_error)?;
    let body = json!({"message_id": msg.id, "messages": msg.rows.len()});
    let mut resp = (StatusCode::ACCEPTED, Json(body.clone())).into_response();
    resp.extensions_mut()
        .insert(AuditNote::new(Some(campaign.id.to_string()), body));
    Ok(resp)
}

fn reachable(channel: Channel, r: &quizflow_core::Respondent) -> bool {
    match channel {
        Channel::Webhook => true,
        Channel::Email => r.email.is_some(),
        Channel::Sms | Channel::Whatsapp => r.phone.is_some(),
    }
}
