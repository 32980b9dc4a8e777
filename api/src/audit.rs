//! The audit log of admin actions (contract §2.4): a layer around every admin route records what
//! was done, on which route, its outcome and the change; `GET /v1/audit` pages through it.
//!
//! Recorded: every write (campaign create/replace/delete, redrive, erase), every read of
//! personal data (a stored submission, the dead-letter list) and every presented-but-wrong
//! token. Not recorded: reads of campaigns, stats and the audit log itself, and requests
//! without any token (they guess nothing; scanners would fill the log). Respondents and client
//! addresses appear only as keyed hashes ([`AuditKey::hash`]).

use crate::admin::db_error;
use crate::error::ApiError;
use crate::AppState;
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json, Query};
use poem::{handler, Endpoint, IntoResponse, Request, Response};
use quizflow_store::audit::NewEntry;
use std::sync::Arc;

/// What a handler adds to its entry: the target it resolved and the change it made.
#[derive(Clone, Default)]
pub(crate) struct AuditNote {
    pub target: Option<String>,
    pub detail: serde_json::Value,
}

impl AuditNote {
    pub fn new(target: impl Into<Option<String>>, detail: serde_json::Value) -> Self {
        Self {
            target: target.into(),
            detail,
        }
    }
}

/// The key of the audit log's hashes: `QUIZFLOW_AUDIT_KEY`, else the admin token. Every
/// instance of a cluster shares it, so one person hashes alike everywhere; without the key a
/// hash cannot be tested against a guessed phone number.
pub(crate) struct AuditKey(Vec<u8>);

impl AuditKey {
    pub fn new(key: &[u8]) -> Self {
        Self(key.to_vec())
    }

    /// `h:` and 128 bits of HMAC-SHA-256 over `kind` and `value`, in hex.
    pub fn hash(&self, kind: &str, value: &str) -> String {
        let digest = quizflow_core::signatures::digest_hex(
            &self.0,
            &[kind.as_bytes(), &[0], value.as_bytes()],
        );
        format!("h:{digest}")
    }
}

/// The action a request on `route` is, if it is one the log keeps when it succeeds (named in
/// the route table).
fn action(method: &Method, route: &str) -> Option<&'static str> {
    crate::routes::audit_action(method.as_str(), route)
}

/// The id in a templated route's path (a campaign, a dead letter, a submission): uuids, never
/// personal data.
fn path_target(route: &str, path: &str) -> Option<String> {
    route.contains("{id}").then(|| {
        path.split('/')
            .nth(3)
            .unwrap_or_default()
            .chars()
            .take(64)
            .collect()
    })
}

/// Records the admin request's entry once it is answered. Wraps the token check, so a wrong
/// token is recorded too.
pub(crate) async fn record<E: Endpoint>(
    state: Arc<AppState>,
    ep: E,
    req: Request,
) -> poem::Result<Response> {
    let method = req.method().clone();
    let route = crate::routes::label(req.uri().path());
    let target = path_target(route, req.uri().path());
    let presented_token = req
        .headers()
        .contains_key(poem::http::header::AUTHORIZATION);
    let client = state
        .client_ip(&req)
        .map(|ip| state.audit_key.hash("ip", &ip.to_string()));
    let result = ep.call(req).await.map(IntoResponse::into_response);
    let (status, note, code) = match &result {
        Ok(resp) => (
            resp.status(),
            resp.extensions().get::<AuditNote>().cloned(),
            None,
        ),
        Err(e) => (
            e.status(),
            None,
            e.downcast_ref::<ApiError>().map(|a| a.code),
        ),
    };
    let entry = if status == StatusCode::UNAUTHORIZED {
        presented_token.then(|| NewEntry {
            action: "auth.failure",
            route: format!("{method} {route}"),
            outcome: "denied",
            status: status.as_u16(),
            target: None,
            detail: serde_json::json!({ "reason": "wrong token", "client": client }),
        })
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        // The token guesser throttled: counted in metrics, not one row per refused guess.
        None
    } else {
        action(&method, route).map(|action| {
            let note = note.unwrap_or_default();
            let mut detail = match note.detail {
                serde_json::Value::Object(m) => m,
                serde_json::Value::Null => serde_json::Map::new(),
                other => serde_json::Map::from_iter([("change".to_owned(), other)]),
            };
            if let Some(code) = code {
                detail.insert("error".into(), code.into());
            }
            if let Some(client) = &client {
                detail.insert("client".into(), client.clone().into());
            }
            NewEntry {
                action,
                route: format!("{method} {route}"),
                outcome: match status.as_u16() {
                    200..=299 => "ok",
                    400..=499 => "rejected",
                    _ => "failed",
                },
                status: status.as_u16(),
                target: note.target.or(target),
                detail: detail.into(),
            }
        })
    };
    if let Some(entry) = entry {
        if entry.action != "dead_letters.read" || state.audit_reads.first_in_window(&entry) {
            state.append_audit(&entry).await;
        }
    }
    result
}

/// The dead-letter list read again by the same client with the same query (the dashboard
/// polls it) is recorded once per [`RecentReads::WINDOW`], not once per poll. Per instance and
/// bounded: a flood of distinct clients only makes more entries, never more memory.
#[derive(Default)]
pub(crate) struct RecentReads(
    std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
);

impl RecentReads {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
    const MAX: usize = 4096;

    fn first_in_window(&self, entry: &NewEntry) -> bool {
        let mut detail = entry.detail.clone();
        if let Some(m) = detail.as_object_mut() {
            m.remove("returned");
        }
        let key = format!("{}|{}", entry.route, detail);
        let now = std::time::Instant::now();
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        if seen.len() >= Self::MAX {
            seen.retain(|_, at| now.duration_since(*at) < Self::WINDOW);
            if seen.len() >= Self::MAX {
                return true;
            }
        }
        match seen.get(&key) {
            Some(at) if now.duration_since(*at) < Self::WINDOW => false,
            _ => {
                seen.insert(key, now);
                true
            }
        }
    }
}

impl AppState {
    /// Appends an entry. The action has happened by now, so a failed write does not change
    /// the answer: it is logged (without the entry's detail) and counted for alerting.
    async fn append_audit(&self, entry: &NewEntry) {
        let written = match self.db.get().await {
            Ok(mut conn) => quizflow_store::audit::append(&mut conn, entry)
                .await
                .map_err(|e| e.public().to_owned()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            self.metrics.audit_write_failures.inc();
            tracing::error!(action = entry.action, route = %entry.route, error = %e, "audit entry not written");
        }
    }
}

#[derive(serde::Deserialize)]
pub struct AuditQuery {
    limit: Option<i64>,
    before: Option<String>,
}

/// `GET /v1/audit?limit=100&before=<cursor>`: newest first; `next` is the cursor of the next
/// (older) page, null on the last.
#[handler]
pub async fn list(
    state: Data<&Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "must be 1 to 1000"));
    }
    let before = match q.before.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::invalid_field("before", "not a cursor this API gave"))?,
        ),
    };
    let mut conn = state.db.get().await.map_err(db_error)?;
    let items = quizflow_store::audit::page(&mut conn, before, limit)
        .await
        .map_err(db_error)?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(serde_json::json!({ "items": items, "next": next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_stable() {
        let a = AuditKey::new(b"k1");
        let b = AuditKey::new(b"k2");
        let h = a.hash("phone", "+5511999990000");
        assert_eq!(h, a.hash("phone", "+5511999990000"));
        assert_ne!(h, b.hash("phone", "+5511999990000"));
        assert_ne!(h, a.hash("email", "+5511999990000"));
        assert_eq!(h.len(), 34);
        assert!(!h.contains("5511"));
    }

    #[test]
    fn writes_and_personal_reads_are_actions_plain_reads_are_not() {
        assert_eq!(
            action(&Method::PUT, "/v1/campaigns/{id}"),
            Some("campaign.replace")
        );
        assert_eq!(
            action(&Method::GET, "/v1/submissions/{id}"),
            Some("submission.read")
        );
        assert_eq!(action(&Method::GET, "/v1/campaigns"), None);
        assert_eq!(action(&Method::GET, "/v1/audit"), None);
        assert_eq!(
            path_target(
                "/v1/dead-letters/{id}/redrive",
                "/v1/dead-letters/abc/redrive"
            ),
            Some("abc".into())
        );
        assert_eq!(path_target("/v1/campaigns", "/v1/campaigns"), None);
    }
}
