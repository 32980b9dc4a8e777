//! `POST /v1/respondents/erase` (contract §2.4): one person's personal data erased from every
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

/// Who is being erased: the contacts, and their keyed hashes for the audit log.
struct Person {
    phone: Option<String>,
    email: Option<String>,
    hashes: serde_json::Value,
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
    let person = Person {
        phone,
        email,
        hashes,
    };
    // The barrier first: from its commit on, no lead received before now stores or matches
    // the person, and no message of theirs is sent unless its call had already begun.
    let barrier_cancelled = {
        let mut conn = state.db.get().await.map_err(db_error)?;
        let (phone, email) = (person.phone.as_deref(), person.email.as_deref());
        quizflow_store::erase::barrier(&mut conn, phone, email)
            .await
            .map_err(db_error)?
    };
    wait_for_calls(&state, &person).await?;
    // The sweep: the stream scan grows with the streams, so it runs as a job, one at a time
    // per cluster. Answered 200 with the counts when it finishes within `erase_wait`, else
    // 202 with the job's status resource: the barrier above already holds either way.
    let job = uuid::Uuid::new_v4();
    {
        let mut conn = state.db.get().await.map_err(db_error)?;
        quizflow_store::erase::job_started(&mut conn, job)
            .await
            .map_err(db_error)?;
    }
    let sweep = tokio::spawn(run_job(
        (*state).clone(),
        job,
        person.phone.clone(),
        person.email.clone(),
        barrier_cancelled,
    ));
    let outcome = tokio::time::timeout(state.settings.erase_wait, sweep).await;
    answer(outcome, &person, job, barrier_cancelled)
}

/// Calls that had begun finish and are recorded before anything is scrubbed, so no outcome
/// written later puts the contact back; past [`CALLS_WAIT`], 503 "call again".
async fn wait_for_calls(state: &AppState, person: &Person) -> Result<(), ApiError> {
    let deadline = std::time::Instant::now() + CALLS_WAIT;
    let (phone, email) = (person.phone.as_deref(), person.email.as_deref());
    loop {
        let in_flight = {
            let mut conn = state.db.get().await.map_err(db_error)?;
            quizflow_store::erase::calls_in_flight(&mut conn, phone, email)
                .await
                .map_err(db_error)?
        };
        if in_flight == 0 {
            return Ok(());
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
}

/// The erasure job: the sweep, then its end recorded for `GET /v1/erasures/{id}`.
async fn run_job(
    state: Arc<AppState>,
    job: uuid::Uuid,
    phone: Option<String>,
    email: Option<String>,
    barrier_cancelled: i64,
) -> Result<serde_json::Value, ApiError> {
    let started = std::time::Instant::now();
    let outcome = sweep(
        &state,
        phone.as_deref(),
        email.as_deref(),
        barrier_cancelled,
    )
    .await;
    let (ended, counts, error) = match &outcome {
        Ok(c) => ("done", c.clone(), None),
        Err(e) => ("failed", serde_json::Value::Null, Some(e.message.clone())),
    };
    let recorded = match state.db.get().await {
        Ok(mut conn) => {
            quizflow_store::erase::job_finished(&mut conn, job, ended, &counts, error.as_deref())
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = recorded {
        tracing::warn!(error = %e, %job, "erasure job's end not recorded");
    }
    tracing::info!(%job, status = ended, seconds = started.elapsed().as_secs_f64(), "erasure job ended");
    outcome
}

type JobOutcome = Result<
    Result<Result<serde_json::Value, ApiError>, tokio::task::JoinError>,
    tokio::time::error::Elapsed,
>;

/// 200 with the counts when the job ended within the wait, else 202 with its status resource.
fn answer(
    outcome: JobOutcome,
    person: &Person,
    job: uuid::Uuid,
    barrier_cancelled: i64,
) -> Result<Response, ApiError> {
    let hashes = &person.hashes;
    let target = hashes["phone"]
        .as_str()
        .or(hashes["email"].as_str())
        .map(str::to_owned);
    let (body, code, detail) = match outcome {
        Ok(Ok(Ok(counts))) => {
            let detail = serde_json::json!({ "respondent": hashes, "erased": counts["erased"], "scanned": counts["scanned"], "job": job });
            let mut body = counts;
            body["id"] = job.to_string().into();
            body["status"] = "done".into();
            (body, poem::http::StatusCode::OK, detail)
        }
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => return Err(ApiError::unavailable("the erasure failed; call again")),
        Err(_) => {
            let detail =
                serde_json::json!({ "respondent": hashes, "job": job, "status": "running" });
            let body = serde_json::json!({
                "id": job, "status": "running", "status_url": format!("/v1/erasures/{job}"),
                "erased": {"deliveries_cancelled": barrier_cancelled},
            });
            (body, poem::http::StatusCode::ACCEPTED, detail)
        }
    };
    let mut resp = Json(body).with_status(code).into_response();
    resp.extensions_mut().insert(AuditNote::new(target, detail));
    Ok(resp)
}

/// The sweep of an erasure, after its barrier: the person's stream copies, then every table.
/// One scan at a time in the cluster (an advisory lock held while it runs). Returns the body
/// of a finished erasure: `{"erased": {...counts}, "scanned": n}`.
async fn sweep(
    state: &AppState,
    phone: Option<&str>,
    email: Option<&str>,
    barrier_cancelled: i64,
) -> Result<serde_json::Value, ApiError> {
    let _scan = quizflow_store::erase::ScanLock::acquire(&state.db)
        .await
        .map_err(db_error)?;
    let ids = {
        let mut conn = state.db.get().await.map_err(db_error)?;
        quizflow_store::erase::find(&mut conn, phone, email)
            .await
            .map_err(db_error)?
    };
    let person = quizflow_nats::Person {
        phone: phone.map(str::to_owned),
        email: email.map(str::to_owned),
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
        quizflow_store::erase::erase(&mut conn, phone, email, &ids)
            .await
            .map_err(db_error)?
    };
    tracing::info!(
        submissions = tables.submissions,
        stream_messages = streams.submission_messages + streams.dead_letters,
        scanned = streams.scanned,
        "respondent erased"
    );
    Ok(serde_json::json!({
        "erased": {
            "submissions": tables.submissions,
            "deliveries_cancelled": tables.deliveries_cancelled + barrier_cancelled,
            "deliveries_scrubbed": tables.deliveries_scrubbed,
            "dead_letters": tables.dead_letters,
            "stream_submissions": streams.submissions,
            "stream_submission_messages": streams.submission_messages,
            "stream_dead_letters": streams.dead_letters,
        },
        "scanned": streams.scanned,
    }))
}

/// `GET /v1/erasures/{id}`: an erasure job's status (`running`, `done` with its counts,
/// `failed` with why: call erase again, it is idempotent).
#[handler]
pub async fn status(
    state: Data<&Arc<AppState>>,
    poem::web::Path(id): poem::web::Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            poem::http::StatusCode::NOT_FOUND,
            "not_found",
            "no such erasure",
        )
    };
    let id = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    let mut conn = state.db.get().await.map_err(db_error)?;
    let job = quizflow_store::erase::job(&mut conn, id)
        .await
        .map_err(db_error)?
        .ok_or_else(not_found)?;
    Ok(Json(job).into_response())
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
