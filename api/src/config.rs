//! Settings of the API role.

use std::time::Duration;

/// Largest single-submission body (contract §2.1).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest batch body (contract §2.2).
pub const MAX_BATCH_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most items in one batch (contract §2.2).
pub const MAX_BATCH_ITEMS: usize = 1000;

#[derive(Clone)]
pub struct ApiSettings {
    /// `QUIZFLOW_HTTP_ADDR`
    pub http_addr: String,
    /// How long a request may wait for JetStream's PubAck before answering 503.
    pub publish_timeout: Duration,
    /// `QUIZFLOW_RATE_LIMIT_RESPONDENT_PER_MIN` (0 = off).
    pub respondent_limit_per_min: u32,
    /// `QUIZFLOW_RATE_LIMIT_SCOPE`: the respondent limit per instance or for the cluster.
    pub respondent_limit_scope: crate::LimitScope,
    /// `QUIZFLOW_STREAM_REPLICAS`: replicas of the cluster limit's stream.
    pub replicas: usize,
    /// `QUIZFLOW_RATE_LIMIT_IP_PER_MIN` (0 = off).
    pub ip_limit_per_min: u32,
    /// `QUIZFLOW_HTTP_MAX_INFLIGHT`: requests handled at once by this instance; past it, 503
    /// `overloaded` at once (health, readiness and metrics are never refused).
    pub max_inflight: usize,
    /// How long an erasure's answer waits for its sweep before it answers 202 with the job.
    pub erase_wait: std::time::Duration,
    /// `QUIZFLOW_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` names the client (default none).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Bearer token of the admin routes; without one every admin route answers 401.
    pub admin_token: Option<String>,
    /// `QUIZFLOW_AUDIT_KEY`: key of the audit log's hashes (default: the admin token).
    pub audit_key: Option<String>,
    /// `QUIZFLOW_LINK_KEY`: key of the QR image links (default: the admin token).
    pub link_key: Option<String>,
    /// Window of both limits (a minute; shorter only in tests).
    pub limit_window: Duration,
    /// `QUIZFLOW_SHUTDOWN_TIMEOUT`: how long requests in flight may take after a stop.
    pub shutdown_timeout: Duration,
    /// Unit prices per channel (`QUIZFLOW_COST_*`): the cost figures of `/v1/stats`.
    pub costs: quizflow_core::Costs,
    /// Provider status callbacks: the public address and the providers' signing secrets.
    pub callbacks: crate::CallbackSettings,
    /// Group commit of submissions (`QUIZFLOW_PUBLISH_FLIGHTS`, …): many 202s per PubAck.
    pub packer: quizflow_nats::PackerConfig,
    /// The hash key and the reply keywords of opt-out (contract §3.2).
    pub consent: crate::ConsentSettings,
    /// `QUIZFLOW_CORS_ORIGINS`: the quiz pages' origins allowed to post leads from a browser.
    pub cors_origins: crate::CorsOrigins,
    /// `QUIZFLOW_CAPTCHA` and its secret: intake checks a captcha token (none: it does not).
    pub captcha: Option<crate::CaptchaSettings>,
    /// `QUIZFLOW_QUOTA_PER_QUIZ_PER_MIN`: leads a minute per quiz, cluster-wide (0: no quota).
    pub quota_per_quiz_per_min: u32,
    /// `QUIZFLOW_QUOTA_GLOBAL_PER_MIN`: leads a minute for the whole intake (0: no quota).
    pub quota_global_per_min: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            publish_timeout: Duration::from_secs(5),
            respondent_limit_per_min: 10,
            respondent_limit_scope: crate::LimitScope::Instance,
            replicas: 1,
            ip_limit_per_min: 0,
            trusted_proxies: Vec::new(),
            max_inflight: 4096,
            erase_wait: Duration::from_secs(10),
            limit_window: Duration::from_secs(60),
            admin_token: None,
            audit_key: None,
            link_key: None,
            shutdown_timeout: Duration::from_secs(30),
            costs: quizflow_core::Costs::default(),
            packer: quizflow_nats::PackerConfig::default(),
            callbacks: crate::CallbackSettings::default(),
            consent: crate::ConsentSettings::default(),
            cors_origins: crate::CorsOrigins::default(),
            captcha: None,
            quota_per_quiz_per_min: 0,
            quota_global_per_min: 0,
        }
    }
}

/// The admin token never shows.
impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("http_addr", &self.http_addr)
            .field("publish_timeout", &self.publish_timeout)
            .field("respondent_limit_per_min", &self.respondent_limit_per_min)
            .field("respondent_limit_scope", &self.respondent_limit_scope)
            .field("ip_limit_per_min", &self.ip_limit_per_min)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_inflight", &self.max_inflight)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("audit_key", &self.audit_key.as_ref().map(|_| "***"))
            .field("link_key", &self.link_key.as_ref().map(|_| "***"))
            .field("limit_window", &self.limit_window)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("costs", &self.costs)
            .field("packer", &self.packer)
            .field("callbacks", &self.callbacks)
            .field("consent", &self.consent)
            .field("cors_origins", &self.cors_origins)
            .field("captcha", &self.captcha)
            .field("quota_per_quiz_per_min", &self.quota_per_quiz_per_min)
            .field("quota_global_per_min", &self.quota_global_per_min)
            .finish()
    }
}

/// The API's section of the configuration: its keys and defaults written here once (the
/// defaults are [`ApiSettings::default`]'s). The binary adds what other sections own
/// (publish timeout, replicas, shutdown timeout, costs, Twilio's auth token).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    pub http_addr: String,
    pub admin_token: Option<String>,
    /// Key of the audit log's keyed hashes; the admin token when unset.
    pub audit_key: Option<String>,
    /// Key of the QR image links (`qr_url`); the workers need the same one.
    pub link_key: Option<String>,
    /// Scheme and host providers reach the API at (status callbacks).
    pub public_url: Option<String>,
    /// Meta app secret (WhatsApp webhooks' `X-Hub-Signature-256`).
    pub whatsapp_app_secret: Option<String>,
    /// Token answered back in WhatsApp's webhook subscription handshake.
    pub whatsapp_verify_token: Option<String>,
    /// Svix signing secret of the e-mail API's webhooks (`whsec_…`).
    pub email_webhook_secret: Option<String>,
    /// The API key Evolution API sends with its webhooks (delivery reports).
    pub evolution_webhook_key: Option<String>,
    pub rate_limit_respondent_per_min: u32,
    pub rate_limit_ip_per_min: u32,
    pub rate_limit_scope: crate::LimitScope,
    /// CIDRs (comma-separated) of proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: String,
    /// Requests one API instance handles at once; past it, 503 `overloaded`.
    pub http_max_inflight: usize,
    /// Submission packs awaiting PubAcks at once.
    pub publish_flights: usize,
    /// Replies that opt out (comma-separated; whole message, any case or accent).
    pub opt_out_keywords: String,
    /// Replies that lift a keyword opt-out.
    pub opt_in_keywords: String,
    /// Origins (comma-separated; `https://*.example.com` for subdomains) whose pages may post
    /// leads from a browser.
    pub cors_origins: String,
    /// `turnstile`, `hcaptcha` or `recaptcha`: intake checks the `X-Captcha-Token` header.
    pub captcha: String,
    pub captcha_secret: Option<String>,
    /// The provider's `siteverify` (default: the provider's own).
    pub captcha_verify_url: Option<String>,
    /// When the provider cannot answer: accept leads (true) or answer 503 (false).
    pub captcha_fail_open: bool,
    /// Leads a minute per quiz, across every API instance (0: no quota).
    pub quota_per_quiz_per_min: u32,
    /// Leads a minute for the whole intake, across every API instance (0: no quota).
    pub quota_global_per_min: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        let s = ApiSettings::default();
        Self {
            http_addr: s.http_addr,
            admin_token: None,
            audit_key: None,
            link_key: None,
            public_url: None,
            whatsapp_app_secret: None,
            whatsapp_verify_token: None,
            email_webhook_secret: None,
            evolution_webhook_key: None,
            rate_limit_respondent_per_min: s.respondent_limit_per_min,
            rate_limit_ip_per_min: s.ip_limit_per_min,
            rate_limit_scope: s.respondent_limit_scope,
            trusted_proxies: String::new(),
            http_max_inflight: s.max_inflight,
            publish_flights: s.packer.flights,
            opt_out_keywords: crate::DEFAULT_OPT_OUT.into(),
            opt_in_keywords: crate::DEFAULT_OPT_IN.into(),
            cors_origins: String::new(),
            captcha: String::new(),
            captcha_secret: None,
            captcha_verify_url: None,
            captcha_fail_open: false,
            quota_per_quiz_per_min: 0,
            quota_global_per_min: 0,
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err("QUIZFLOW_ADMIN_TOKEN must be at least 16 characters".into());
        }
        if self.publish_flights == 0 {
            return Err("publish_flights must be positive".into());
        }
        if crate::split_keywords(&self.opt_out_keywords).is_empty() {
            return Err(
                "opt_out_keywords (QUIZFLOW_OPT_OUT_KEYWORDS) must name at least one keyword"
                    .into(),
            );
        }
        crate::CorsOrigins::parse(&self.cors_origins)?;
        self.captcha_settings()?;
        self.proxies().map(|_| ())
    }

    /// `QUIZFLOW_TRUSTED_PROXIES`: CIDRs, or plain addresses (one host).
    fn proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!(
                            "trusted_proxies (QUIZFLOW_TRUSTED_PROXIES): {s:?} is not a CIDR or an address"
                        )
                    })
            })
            .collect()
    }

    /// `QUIZFLOW_CAPTCHA*`: a provider needs its secret.
    fn captcha_settings(&self) -> Result<Option<crate::CaptchaSettings>, String> {
        let Some(provider) = crate::CaptchaProvider::parse(&self.captcha)? else {
            return Ok(None);
        };
        let secret = self
            .captcha_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or("captcha_secret (QUIZFLOW_CAPTCHA_SECRET) is required with QUIZFLOW_CAPTCHA")?;
        Ok(Some(crate::CaptchaSettings {
            provider,
            secret,
            verify_url: self
                .captcha_verify_url
                .clone()
                .unwrap_or_else(|| provider.verify_url().to_owned()),
            fail_open: self.captcha_fail_open,
            timeout: std::time::Duration::from_secs(5),
        }))
    }

    /// This section's part of the API's settings.
    pub fn settings(&self) -> Result<ApiSettings, String> {
        let d = ApiSettings::default();
        Ok(ApiSettings {
            http_addr: self.http_addr.clone(),
            respondent_limit_per_min: self.rate_limit_respondent_per_min,
            ip_limit_per_min: self.rate_limit_ip_per_min,
            trusted_proxies: self.proxies()?,
            cors_origins: crate::CorsOrigins::parse(&self.cors_origins)?,
            captcha: self.captcha_settings()?,
            quota_per_quiz_per_min: self.quota_per_quiz_per_min,
            quota_global_per_min: self.quota_global_per_min,
            max_inflight: self.http_max_inflight.max(1),
            respondent_limit_scope: self.rate_limit_scope,
            admin_token: self.admin_token.clone(),
            audit_key: self.audit_key.clone(),
            link_key: self.link_key.clone(),
            callbacks: crate::CallbackSettings {
                public_url: self.public_url.clone(),
                twilio_auth_token: None,
                whatsapp_app_secret: self.whatsapp_app_secret.clone(),
                whatsapp_verify_token: self.whatsapp_verify_token.clone(),
                email_webhook_secret: self.email_webhook_secret.clone(),
                evolution_webhook_key: self.evolution_webhook_key.clone(),
            },
            packer: quizflow_nats::PackerConfig {
                flights: self.publish_flights,
                ..d.packer
            },
            consent: crate::ConsentSettings {
                opt_out_keywords: crate::split_keywords(&self.opt_out_keywords),
                opt_in_keywords: crate::split_keywords(&self.opt_in_keywords),
                ..d.consent.clone()
            },
            ..d
        })
    }
}
