//! CORS for the intake routes (contract §2): a quiz page on another origin may post leads when
//! its origin is listed in `QUIZFLOW_CORS_ORIGINS` (exact origins, or `https://*.example.com`
//! for any subdomain). Preflights are answered for listed origins alone, allowing `POST` with
//! `Content-Type`, `Idempotency-Key` and the trace headers; admin routes never answer CORS.
//! A request from an origin not listed is served as before, without CORS headers, so a
//! browser refuses to hand its answer to the page (and, since intake takes only JSON, it never
//! sends a lead without a preflight).

use crate::error::ApiError;
use crate::AppState;
use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use std::sync::Arc;

/// Headers a page may send with a lead.
const ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "idempotency-key",
    "traceparent",
    "tracestate",
];
/// How long a browser may keep a preflight's answer.
const MAX_AGE_S: &str = "600";

/// The origins allowed to post leads from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsOrigins {
    exact: Vec<String>,
    /// (`https://`, `.example.com`): any subdomain of the suffix under the scheme.
    patterns: Vec<(String, String)>,
}

impl CorsOrigins {
    /// Parses `QUIZFLOW_CORS_ORIGINS`: comma-separated origins (`https://quiz.example.com`,
    /// `http://localhost:8080`) and patterns (`https://*.example.com`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for entry in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || {
                format!(
                    "cors_origins (QUIZFLOW_CORS_ORIGINS): {entry:?} is not an origin \
                     (https://quiz.example.com) or a pattern (https://*.example.com)"
                )
            };
            let entry = entry.to_ascii_lowercase();
            let (scheme, host) = entry.split_once("://").ok_or_else(bad)?;
            if !matches!(scheme, "http" | "https") || !host_ok(host.trim_start_matches("*.")) {
                return Err(bad());
            }
            match host.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => out
                    .patterns
                    .push((format!("{scheme}://"), suffix.to_owned())),
                Some(_) => return Err(bad()),
                None => out.exact.push(entry.clone()),
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }

    /// Whether a page of `origin` may post leads.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if self.exact.contains(&origin) {
            return true;
        }
        self.patterns.iter().any(|(scheme, suffix)| {
            origin
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| !sub.is_empty() && host_ok(sub))
        })
    }
}

/// A host (with an optional port) as an origin holds it: letters, digits, `-`, `.`, one `:port`.
fn host_ok(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Around an intake route: preflights answered for listed origins, and their requests'
/// answers readable by the page.
pub(crate) async fn around<E>(
    state: Arc<AppState>,
    ep: Arc<E>,
    req: Request,
) -> poem::Result<Response>
where
    E: Endpoint<Output = Response>,
{
    let origins = &state.settings.cors_origins;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let Some(origin) = origin.filter(|_| !origins.is_empty()) else {
        return ep.call(req).await;
    };
    let allowed = origins.allows(&origin);
    if req.method() == Method::OPTIONS {
        return Ok(preflight(&req, &origin, allowed));
    }
    let mut resp = ep.call(req).await?;
    if allowed {
        decorate(&mut resp, &origin);
        if let Ok(v) = HeaderValue::from_str("Retry-After") {
            resp.headers_mut()
                .insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
    Ok(resp)
}

fn decorate(resp: &mut Response, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        resp.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// The answer to a preflight: 204 with what a page may send, or 403 JSON saying why not.
fn preflight(req: &Request, origin: &str, allowed: bool) -> Response {
    let refuse = |why: &str| {
        let mut r = ApiError::new(StatusCode::FORBIDDEN, "cors_not_allowed", why.to_owned())
            .into_response();
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
        r
    };
    if !allowed {
        return refuse("this origin is not in QUIZFLOW_CORS_ORIGINS");
    }
    let method = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| m.to_str().ok());
    if method != Some("POST") {
        return refuse("only POST is allowed from a browser");
    }
    let asked = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let unknown = asked
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .find(|h| !h.is_empty() && !ALLOWED_HEADERS.contains(&h.as_str()));
    if let Some(h) = unknown {
        return refuse(&format!("the header {h} is not allowed from a browser"));
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    decorate(&mut resp, origin);
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    if let Ok(v) = HeaderValue::from_str(&ALLOWED_HEADERS.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE_S),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_patterns() {
        let o = CorsOrigins::parse(
            "https://quiz.example.com, http://localhost:8080,https://*.promo.com.br",
        )
        .expect("parses");
        for (origin, ok) in [
            ("https://quiz.example.com", true),
            ("HTTPS://Quiz.Example.com", true),
            ("http://quiz.example.com", false),
            ("https://quiz.example.com:8443", false),
            ("http://localhost:8080", true),
            ("http://localhost:8081", false),
            ("https://a.promo.com.br", true),
            ("https://a.b.promo.com.br", true),
            ("https://promo.com.br", false),
            ("https://evil.com/.promo.com.br", false),
            ("https://evilpromo.com.br", false),
            ("http://a.promo.com.br", false),
            ("null", false),
        ] {
            assert_eq!(o.allows(origin), ok, "{origin}");
        }
        for bad in [
            "*",
            "quiz.example.com",
            "https://*",
            "https://a.*.com",
            "ftp://x.com",
            "https://x.com/path",
        ] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
        assert!(CorsOrigins::parse("").expect("empty").is_empty());
    }
}
