//! `POST /v1/respondents/erase` (SPEC §2.4): one person's personal data erased from every
//! store quizflow keeps, and their pending messages cancelled.
//!
//! Order matters: the person's stored submissions are looked up first (their ids name them in
//! delivery dead letters), then the stream copies are erased, then the tables in one
//! statement, which also catches a submission a batcher stored meanwhile. Each step is safe to
//! repeat, so a failed erasure is finished by calling again; a second call answers zeros.

use crate::admin::db_error;
use crate::audit::AuditNote;
use crate::error::ApiError;
use crate::intake::{check_content_type, read_body};
use crate::AppState;
use poem::http::HeaderMap;
use poem::web::{Data, Json};
use poem::{handler, IntoResponse, Response};
use quizflow_core::{FieldProblem, ValidationErrors};
use std::sync::Arc;

const MAX_ERASE_BYTES: usize = 4 * 1024;
/// Longest wait for provider calls already under way to the person (a call is bounded by the
/// workers' send timeout; its outcome is then recorded within seconds).
const CALLS_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// Who to erase: a phone and/or an e-mail, as intake validates them.
fn parse(body: &serde_json::Value) -> Result<(Option<String>, Option<String>), ApiError> {
    let mut problems = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid_field("", "must be a JSON object"));
    };
    for key in obj.keys() {
        if key != "phone" && key != "email" {
            problems.push(FieldProblem {
                field: key.clone(),
                problem: "unknown field (phone, email)".into(),
            });
        }
    }
    let mut field = |name: &str, valid: fn(&str) -> bool, what: &str| match obj.get(name) {
        None => None,
        Some(serde_json::Value::String(s)) if valid(s) => Some(s.clone()),
        Some(_) => {
            problems.push(FieldProblem {
                field: name.into(),
                problem: format!("must be {what}"),
            });
            None
        }
    };
    let phone = field("phone", quizflow_core::is_e164, "an E.164 phone number");
    let email = field("email", quizflow_core::is_email, "a valid e-mail address");
    if problems.is_empty() && phone.is_none() && email.is_none() {
        problems.push(FieldProblem {
            field: String::new(),
            problem: "give a phone, an email or both".into(),
        });
    }
    if problems.is_empty() {
        Ok((phone, email))
    } else {
        Err(ApiError::invalid(ValidationErrors(problems)))
    }
}

#[handler]
pub async fn erase(
    state: Data<&Arc<AppState>>,
    headers: &HeaderMap,
    body: poem::Body,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let value = read_body(headers, body, MAX_ERASE_BYTES).await?;
    let (phone, email) = parse(&value)?;
    let hashes = serde_json::json!({
        "phone": phone.as_deref().map(|p| state.audit_key.hash("phone", p)),
        "email": email.as_deref().map(|e| state.audit_key.hash("email", &e.to_lowercase())),
    });
    let started = std::time::Instant::now();
    // The barrier first: from its commit on, no lead received before now stores or matches
    // the person, and no message of theirs is sent unless its call had already begun.
    let barrier_cancelled = {
        let mut conn = state.db.get().await.map_err(db_error)?;
        quizflow_store::erase::barrier(&mut conn, phone.as_deref(), email.as_deref())
            .await
            .map_err(db_error)?
    };
    // Calls that had begun finish and are recorded before anything is scrubbed, so no
    // outcome written later puts the contact back.
    let deadline = std::time::Instant::now() + CALLS_WAIT;
    loop {
        let in_flight = {
            let mut conn = state.db.get().await.map_err(db_error)?;
            quizflow_store::erase::calls_in_flight(&mut conn, phone.as_deref(), email.as_deref())
                .await
                .map_err(db_error)?
        };
        if in_flight == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!(
                in_flight,
                "erasure: provider calls still under way; not finished"
            );
            return Err(ApiError::unavailable(
                "messages to this person are being sent right now; call again in a minute",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let ids = {
        let mut conn = state.db.get().await.map_err(db_error)?;
        quizflow_store::erase::find(&mut conn, phone.as_deref(), email.as_deref())
            .await
            .map_err(db_error)?
    };
    let person = quizflow_nats::Person {
        phone: phone.clone(),
        email: email.clone(),
        submission_ids: ids.iter().map(ToString::to_string).collect(),
    };
    let streams = quizflow_nats::erase_person(&state.js, &person)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "erasure: streams not reachable");
            ApiError::unavailable(
                "NATS is unavailable; nothing was erased from the tables, call again",
            )
        })?;
    let tables = {
        let mut conn = state.db.get().await.map_err(db_error)?;
        quizflow_store::erase::erase(&mut conn, phone.as_deref(), email.as_deref(), &ids)
            .await
            .map_err(db_error)?
    };
    tracing::info!(
        submissions = tables.submissions,
        stream_messages = streams.submission_messages + streams.dead_letters,
        scanned = streams.scanned,
        seconds = started.elapsed().as_secs_f64(),
        "respondent erased"
    );
    let erased = serde_json::json!({
        "submissions": tables.submissions,
        "deliveries_cancelled": tables.deliveries_cancelled + barrier_cancelled,
        "deliveries_scrubbed": tables.deliveries_scrubbed,
        "dead_letters": tables.dead_letters,
        "stream_submissions": streams.submissions,
        "stream_submission_messages": streams.submission_messages,
        "stream_dead_letters": streams.dead_letters,
    });
    let target = hashes["phone"]
        .as_str()
        .or(hashes["email"].as_str())
        .map(str::to_owned);
    let note = AuditNote::new(
        target,
        serde_json::json!({ "respondent": hashes, "erased": erased, "scanned": streams.scanned }),
    );
    let mut resp =
        Json(serde_json::json!({ "erased": erased, "scanned": streams.scanned })).into_response();
    resp.extensions_mut().insert(note);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_phone_an_email_or_both_and_nothing_else() {
        assert!(parse(&json!({"phone": "+5511987654321"})).is_ok());
        assert!(parse(&json!({"email": "a@b.co", "phone": "+15550001111"})).is_ok());
        for bad in [
            json!({}),
            json!([]),
            json!({"phone": "11987654321"}),
            json!({"email": "nope"}),
            json!({"phone": 5511}),
            json!({"email": "a@b.co", "phone": null}),
            json!({"email": "a@b.co", "name": "Ana"}),
        ] {
            let e = parse(&bad).expect_err("refused");
            assert_eq!(e.status.as_u16(), 400, "{bad}");
        }
    }
}
