//! Captcha checks on intake (issue 26): with `QUIZFLOW_CAPTCHA=turnstile|hcaptcha|recaptcha` and
//! `QUIZFLOW_CAPTCHA_SECRET`, a lead posted without a token that the provider's `siteverify`
//! accepts is refused (403 `captcha_failed`). The token comes in the `X-Captcha-Token` header.
//! The check runs after the duplicate check: a retry of leads already accepted (a token is
//! spent by its first check) still gets its `duplicate` answer. When the provider cannot
//! answer, `QUIZFLOW_CAPTCHA_FAIL_OPEN` decides: accept the lead (counted), or 503
//! `captcha_unavailable` for the client to retry.

use crate::error::ApiError;
use crate::AppState;
use poem::http::{HeaderMap, StatusCode};
use prometheus::IntCounterVec;
use quizflow_core::SubmissionId;
use std::time::Duration;

/// The header a page sends its widget's token in.
pub const HEADER: &str = "x-captcha-token";

/// Which provider verifies the tokens (their `siteverify` endpoints share one shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptchaProvider {
    Turnstile,
    Hcaptcha,
    Recaptcha,
}

impl CaptchaProvider {
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(None),
            "turnstile" => Ok(Some(Self::Turnstile)),
            "hcaptcha" => Ok(Some(Self::Hcaptcha)),
            "recaptcha" => Ok(Some(Self::Recaptcha)),
            other => Err(format!(
                "captcha (QUIZFLOW_CAPTCHA): {other:?} is not turnstile, hcaptcha or recaptcha"
            )),
        }
    }

    /// The provider's own `siteverify` endpoint.
    pub fn verify_url(self) -> &'static str {
        match self {
            Self::Turnstile => "https://challenges.cloudflare.com/turnstile/v0/siteverify",
            Self::Hcaptcha => "https://api.hcaptcha.com/siteverify",
            Self::Recaptcha => "https://www.google.com/recaptcha/api/siteverify",
        }
    }
}

/// How intake checks captcha tokens.
#[derive(Clone)]
pub struct CaptchaSettings {
    pub provider: CaptchaProvider,
    pub secret: String,
    /// The provider's `siteverify` (configurable: tests use the mock's).
    pub verify_url: String,
    /// When the provider cannot answer: accept the lead (`true`) or answer 503.
    pub fail_open: bool,
    pub timeout: Duration,
}

/// The secret never shows.
impl std::fmt::Debug for CaptchaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptchaSettings")
            .field("provider", &self.provider)
            .field("verify_url", &self.verify_url)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

/// The checker: its settings, an HTTP client and its counter.
pub(crate) struct Captcha {
    settings: CaptchaSettings,
    http: reqwest::Client,
    checks: IntCounterVec,
}

impl Captcha {
    pub(crate) fn new(
        settings: CaptchaSettings,
        registry: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let checks = IntCounterVec::new(
            prometheus::Opts::new(
                "quizflow_captcha_checks_total",
                "Captcha checks of intake requests, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(checks.clone()))?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Ok(Self {
            settings,
            http,
            checks,
        })
    }

    /// Asks the provider; `Err` when it did not answer usably.
    async fn verify(&self, token: &str, ip: Option<std::net::IpAddr>) -> Result<bool, String> {
        let mut form = vec![
            ("secret", self.settings.secret.clone()),
            ("response", token.to_owned()),
        ];
        if let Some(ip) = ip {
            form.push(("remoteip", ip.to_string()));
        }
        let resp = self
            .http
            .post(&self.settings.verify_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("siteverify answered {}", resp.status()));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        body.get("success")
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(|| "siteverify answered without success".to_owned())
    }

    fn count(&self, outcome: &str) {
        self.checks.with_label_values(&[outcome]).inc();
    }
}

fn failed(why: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "captcha_failed", why.to_owned())
}

impl AppState {
    /// The captcha check of one intake request carrying `ids` (see the module docs).
    pub(crate) async fn check_captcha(
        &self,
        headers: &HeaderMap,
        ip: Option<std::net::IpAddr>,
        ids: &[SubmissionId],
    ) -> Result<(), ApiError> {
        let Some(c) = &self.captcha else {
            return Ok(());
        };
        if !ids.is_empty() && self.all_accepted_before(ids).await {
            c.count("duplicate");
            return Ok(());
        }
        let token = headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 4096)
            .ok_or_else(|| failed("send the captcha widget's token in X-Captcha-Token"))?;
        match c.verify(token, ip).await {
            Ok(true) => {
                c.count("passed");
                Ok(())
            }
            Ok(false) => {
                c.count("failed");
                Err(failed("the captcha token was not accepted"))
            }
            Err(e) if c.settings.fail_open => {
                tracing::warn!(error = %e, "captcha provider unavailable; lead accepted (fail-open)");
                c.count("unavailable_accepted");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "captcha provider unavailable; lead refused (fail-closed)");
                c.count("unavailable_refused");
                Err(ApiError {
                    retry_after: Some(5),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "captcha_unavailable",
                        "the captcha could not be checked; retry shortly",
                    )
                })
            }
        }
    }

    /// Whether every id was accepted before (a retry); a lookup that fails counts as no.
    pub(crate) async fn all_accepted_before(&self, ids: &[SubmissionId]) -> bool {
        for id in ids {
            match quizflow_nats::accepted_before(&self.js, &id.to_string()).await {
                Ok(true) => {}
                _ => return false,
            }
        }
        true
    }
}
