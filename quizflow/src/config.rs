//! Configuration: defaults, then an optional TOML file, then the environment (contract §6).
//!
//! Environment keys are the contract's (`NATS_URL`, `DATABASE_URL`, `QUIZFLOW_*`); the TOML file
//! uses the same names in lower case without the prefix (`http_addr = "..."`). An unknown key
//! in the file is an error; an unknown `QUIZFLOW_*` variable is reported at start-up, so a
//! typo never goes unnoticed. Secrets (`admin_token`, URLs with passwords) are never logged.

use anyhow::{bail, Context};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

// Not `deny_unknown_fields` (serde cannot with a flattened section): [`Config::load`] checks
// a file's keys against [`keys`] itself.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The batcher's section (`quizflow_batcher::BatcherConfig`) and the workers' (pools and
    /// providers, `quizflow_workers::WorkersConfig`): owned by their crates, flat in the file
    /// and the environment like every other key.
    #[serde(flatten)]
    pub api: quizflow_api::ApiConfig,
    #[serde(flatten)]
    pub batcher: quizflow_batcher::BatcherConfig,
    #[serde(flatten)]
    pub workers: quizflow_workers::WorkersConfig,
    pub mock_addr: String,
    /// Set by `up`: the mock provider sends signed status callbacks, and the API takes them.
    #[serde(skip)]
    pub mock_callbacks: bool,
    pub nats_url: Option<String>,
    pub nats_creds: Option<PathBuf>,
    pub nats_tls_ca: Option<PathBuf>,
    pub nats_tls_required: bool,
    pub database_url: Option<String>,
    pub db_pool_size: u32,
    pub data_dir: PathBuf,
    pub nats_server_bin: Option<PathBuf>,
    pub stream_replicas: usize,
    pub publish_timeout: String,
    pub max_ack_inflight: usize,
    pub log_format: String,
    pub shutdown_timeout: String,
    pub deliveries_max_msgs: i64,
    pub deliveries_max_bytes: i64,
    pub mock_smtp_addr: String,
    /// `/metrics`, `/healthz`, `/readyz` of `quizflow batcher` / `quizflow workers` (the API
    /// and `up` serve them on `http_addr`). Unset: 127.0.0.1:9464 for the batcher, :9465 for
    /// workers, so both run side by side; empty: not served.
    pub metrics_addr: Option<String>,
    /// `QUIZFLOW_HASH_KEY`: the key of contact hashes (suppression list) and unsubscribe
    /// links; required by every role (`up` derives one), never changed silently.
    pub hash_key: Option<String>,
    pub cost_currency: String,
    pub cost_sms: f64,
    pub cost_email: f64,
    pub cost_whatsapp: f64,
    pub cost_webhook: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mock_addr: "127.0.0.1:4010".into(),
            mock_callbacks: false,
            api: quizflow_api::ApiConfig::default(),
            batcher: quizflow_batcher::BatcherConfig::default(),
            workers: quizflow_workers::WorkersConfig::default(),
            nats_url: None,
            nats_creds: None,
            nats_tls_ca: None,
            nats_tls_required: false,
            database_url: None,
            db_pool_size: 8,
            data_dir: PathBuf::from(".quizflow"),
            nats_server_bin: None,
            stream_replicas: 1,
            publish_timeout: "5s".into(),
            max_ack_inflight: 4096,
            log_format: "text".into(),
            shutdown_timeout: "30s".into(),
            deliveries_max_msgs: 10_000_000,
            deliveries_max_bytes: 8 * 1024 * 1024 * 1024,
            mock_smtp_addr: "127.0.0.1:2525".into(),
            metrics_addr: None,
            hash_key: None,
            cost_currency: "USD".into(),
            cost_sms: 0.0,
            cost_email: 0.0,
            cost_whatsapp: 0.0,
            cost_webhook: 0.0,
        }
    }
}

/// Every key of the configuration, read off the defaults (so a key added to a section is
/// known here without being listed): file keys, and `QUIZFLOW_<KEY>` in the environment.
/// `nats_url` and `database_url` are read from `NATS_URL` and `DATABASE_URL`.
pub fn keys() -> Vec<String> {
    let Ok(serde_json::Value::Object(m)) = serde_json::to_value(Config::default()) else {
        return Vec::new();
    };
    m.into_iter().map(|(k, _)| k).collect()
}

/// Keys read from an unprefixed variable instead of `QUIZFLOW_<KEY>`.
const UNPREFIXED: &[(&str, &str)] = &[("NATS_URL", "nats_url"), ("DATABASE_URL", "database_url")];

/// The keys read from `QUIZFLOW_<KEY>`.
pub fn prefixed_keys() -> Vec<String> {
    keys()
        .into_iter()
        .filter(|k| !UNPREFIXED.iter().any(|(_, u)| u == k))
        .collect()
}

/// The first key whose value alone makes the configuration invalid: the file's, then the
/// environment's.
fn culprit(file: Option<&Path>, env: &figment::value::Dict) -> Option<String> {
    let from_file: figment::value::Dict = file
        .and_then(|f| Figment::from(Toml::file(f)).extract().ok())
        .unwrap_or_default();
    from_file.iter().chain(env.iter()).find_map(|(key, value)| {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default(key, value))
            .extract::<Config>()
            .is_err()
            .then(|| key.clone())
    })
}

/// A key in the file that no section has is an error (a typo would be silently ignored).
fn check_file_keys(file: &Path) -> anyhow::Result<()> {
    let table: figment::value::Dict = Figment::from(Toml::file(file))
        .extract()
        .with_context(|| format!("config file {}", file.display()))?;
    let known = keys();
    let unknown: Vec<&String> = table.keys().filter(|k| !known.contains(k)).collect();
    if !unknown.is_empty() {
        bail!(
            "config file {}: unknown key(s) {}",
            file.display(),
            unknown
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `QUIZFLOW_*` variables read by other tools (the test harness), not by this binary.
const FOREIGN: &[&str] = &["test_database_url", "config", "test_logs"];

impl Config {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            check_file_keys(file)?;
            fig = fig.merge(Toml::file(file));
        }
        let env = env_values()?;
        fig = fig.merge(Serialized::defaults(env.clone()));
        let cfg: Config = fig.extract().map_err(|e| {
            // One line naming the key, not figment's nested report. A key of a flattened
            // section (`ProviderConfig`) comes back without its path: the key is found by
            // trying each given value alone.
            let key = if e.path.is_empty() {
                culprit(file, &env).unwrap_or_default()
            } else {
                e.path.join(".")
            };
            anyhow::anyhow!(
                "invalid configuration: {}{}",
                if key.is_empty() {
                    String::new()
                } else {
                    format!("{} (QUIZFLOW_{}): ", key, key.to_ascii_uppercase())
                },
                e.kind
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// How long a graceful stop may take (`QUIZFLOW_SHUTDOWN_TIMEOUT`).
    pub fn shutdown_timeout(&self) -> Duration {
        humantime::parse_duration(&self.shutdown_timeout).unwrap_or(Duration::from_secs(30))
    }

    /// Unknown `QUIZFLOW_*` variables: probably typos.
    pub fn unknown_env_keys() -> Vec<String> {
        let known = prefixed_keys();
        std::env::vars()
            .filter_map(|(k, _)| k.strip_prefix("QUIZFLOW_").map(str::to_ascii_lowercase))
            .filter(|k| !known.contains(k) && !FOREIGN.contains(&k.as_str()))
            .map(|k| format!("QUIZFLOW_{}", k.to_ascii_uppercase()))
            .collect()
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.publish_timeout()?;
        if !(1..=5).contains(&self.stream_replicas) {
            bail!(
                "stream_replicas must be 1 to 5, got {}",
                self.stream_replicas
            );
        }
        if self.max_ack_inflight == 0 || self.db_pool_size == 0 {
            bail!("max_ack_inflight and db_pool_size must be positive");
        }
        self.api.validate().map_err(anyhow::Error::msg)?;
        self.batcher.validate().map_err(anyhow::Error::msg)?;
        self.workers.validate()?;
        humantime::parse_duration(&self.shutdown_timeout)
            .with_context(|| format!("shutdown_timeout {:?}", self.shutdown_timeout))?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be text or json");
        }
        for (key, v) in [
            ("cost_sms", self.cost_sms),
            ("cost_email", self.cost_email),
            ("cost_whatsapp", self.cost_whatsapp),
            ("cost_webhook", self.cost_webhook),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!(
                    "{key} (QUIZFLOW_{}) must be a price of 0 or more",
                    key.to_ascii_uppercase()
                );
            }
        }
        if self.cost_currency.trim().is_empty() || self.cost_currency.len() > 8 {
            bail!("cost_currency must be a currency code such as USD or BRL");
        }
        Ok(())
    }

    pub fn publish_timeout(&self) -> anyhow::Result<Duration> {
        humantime::parse_duration(&self.publish_timeout)
            .with_context(|| format!("publish_timeout {:?}", self.publish_timeout))
    }

    pub fn nats_settings(
        &self,
        url: &str,
        role: &str,
    ) -> anyhow::Result<quizflow_nats::NatsSettings> {
        let mut s = quizflow_nats::NatsSettings::new(url, format!("quizflow-{role}"));
        s.creds_file = self.nats_creds.clone();
        s.tls_ca_file = self.nats_tls_ca.clone();
        s.tls_required = self.nats_tls_required;
        s.ack_timeout = self.publish_timeout()?;
        s.max_ack_inflight = self.max_ack_inflight;
        Ok(s)
    }

    pub fn topology(&self) -> quizflow_nats::TopologyConfig {
        quizflow_nats::TopologyConfig {
            replicas: self.stream_replicas,
            batcher_ack_wait: self.batcher.batcher_ack_wait.0,
            deliveries_max_msgs: self.deliveries_max_msgs,
            deliveries_max_bytes: self.deliveries_max_bytes,
            ..Default::default()
        }
    }

    pub fn batcher_settings(&self) -> anyhow::Result<quizflow_batcher::BatcherSettings> {
        let mut s = self.batcher.settings();
        s.hash_key = self.hash_key()?;
        // A burst deferred to a send window's opening is spread at the providers' rate.
        s.spread_per_second = self.workers.provider_rate_per_sec;
        Ok(s)
    }

    /// `QUIZFLOW_HASH_KEY`, required: without it no contact can be checked against the
    /// suppression list.
    pub fn hash_key(&self) -> anyhow::Result<quizflow_core::consent::HashKey> {
        let raw = self.hash_key.as_deref().context(
            "QUIZFLOW_HASH_KEY is not set: every role needs it to check contacts against the \
             suppression list (generate one with `openssl rand -hex 32`, give every instance the \
             same, and never change it)",
        )?;
        quizflow_core::consent::HashKey::new(raw).map_err(anyhow::Error::msg)
    }

    /// `mock`: where channels without a provider go — `up`'s mock, or `--mock-provider URL`.
    /// Without it, a served channel that has no provider configured is an error: a
    /// production `quizflow workers` must not quietly "deliver" to a mock.
    pub fn worker_settings(
        &self,
        channels: Vec<quizflow_core::Channel>,
        mock: Option<&str>,
    ) -> anyhow::Result<quizflow_workers::WorkerSettings> {
        let mock_base = mock.map_or_else(|| format!("http://{}", self.mock_addr), str::to_owned);
        let (mut providers, mocked) = self.workers.providers.resolve(&mock_base)?;
        let unserved: Vec<&str> = mocked
            .iter()
            .filter(|c| channels.contains(c))
            .map(|c| c.as_str())
            .collect();
        match mock {
            _ if unserved.is_empty() => {}
            Some(url) => {
                tracing::warn!(channels = ?unserved, mock = %url, "no provider configured: these channels use the mock provider");
            }
            None => bail!(
                "no provider configured for {}: configure one (see README), serve other channels with --channels, or pass --mock-provider URL",
                unserved.join(", ")
            ),
        }
        if let Some(public) = &self.api.public_url {
            providers = providers.with_status_callbacks(public);
        }
        let mut s = self.workers.settings(channels, providers);
        s.hash_key = self.hash_key()?;
        s.public_url = self.api.public_url.clone();
        s.ack_wait = self.topology().worker_ack_wait;
        s.shutdown_timeout = self.shutdown_timeout();
        s.costs = self.costs();
        // The API serves what `qr_url` links to, and checks the same key.
        s.qr_links =
            self.api
                .public_url
                .as_ref()
                .map(|public_url| quizflow_workers::render::QrLinks {
                    public_url: public_url.clone(),
                    key: self.api.link_key.as_ref().map(|k| k.as_bytes().to_vec()),
                });
        Ok(s)
    }

    /// Where a role running alone serves its ops routes; `None` when switched off.
    pub fn metrics_addr_for(&self, role: &str) -> Option<String> {
        match &self.metrics_addr {
            Some(a) if a.trim().is_empty() => None,
            Some(a) => Some(a.trim().to_owned()),
            None if role == "workers" => Some("127.0.0.1:9465".into()),
            None => Some("127.0.0.1:9464".into()),
        }
    }

    pub fn costs(&self) -> quizflow_core::Costs {
        quizflow_core::Costs {
            currency: self.cost_currency.trim().to_owned(),
            sms: self.cost_sms,
            email: self.cost_email,
            whatsapp: self.cost_whatsapp,
            webhook: self.cost_webhook,
        }
    }

    pub fn api_settings(&self) -> anyhow::Result<quizflow_api::ApiSettings> {
        let mut s = self.api.settings().map_err(anyhow::Error::msg)?;
        s.publish_timeout = self.publish_timeout()?;
        s.replicas = self.stream_replicas;
        // `up`'s mock signs as Twilio would with the mock account's token.
        s.callbacks.twilio_auth_token = self
            .workers
            .providers
            .twilio_auth_token
            .clone()
            .or_else(|| self.mock_callbacks.then(|| "mock".to_owned()));
        s.shutdown_timeout = self.shutdown_timeout();
        s.costs = self.costs();
        s.consent.hash_key = self.hash_key()?;
        Ok(s)
    }
}

/// Keys whose values are secrets: `Debug` shows them as `***`.
const SECRET_KEYS: &[&str] = &[
    "admin_token",
    "hash_key",
    "audit_key",
    "link_key",
    "whatsapp_app_secret",
    "whatsapp_verify_token",
    "email_webhook_secret",
    "evolution_webhook_key",
    "twilio_auth_token",
    "whatsapp_token",
    "email_api_key",
    "email_smtp_password",
    "webhook_secret",
];

/// Secrets redacted, credentials in URLs too: a `{cfg:?}` in a log line leaks nothing.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        if let Some(m) = v.as_object_mut() {
            for (k, val) in m.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) && !val.is_null() {
                    *val = "***".into();
                } else if k.ends_with("_url") {
                    if let Some(u) = val.as_str() {
                        *val = quizflow_nats::redact_url(u).into();
                    }
                }
            }
        }
        write!(f, "Config {v}")
    }
}

/// Environment values, typed by the key's default: keys whose default is a number or a
/// boolean are parsed, every other key stays the string the user typed
/// (`QUIZFLOW_TWILIO_FROM=+15550001111` is a phone number, not an integer).
fn env_values() -> anyhow::Result<figment::value::Dict> {
    use figment::value::Value;
    let defaults = Value::serialize(Config::default())?;
    let mut dict = figment::value::Dict::new();
    for key in prefixed_keys() {
        let Ok(raw) = std::env::var(format!("QUIZFLOW_{}", key.to_ascii_uppercase())) else {
            continue;
        };
        let typed = match defaults.find_ref(&key) {
            Some(Value::Num(..)) | Some(Value::Bool(..)) => raw
                .trim()
                .parse::<Value>()
                .unwrap_or_else(|_| Value::from(raw.clone())),
            _ => Value::from(raw),
        };
        dict.insert(key, typed);
    }
    for (env, key) in UNPREFIXED {
        if let Ok(v) = std::env::var(env) {
            dict.insert((*key).to_owned(), Value::from(v));
        }
    }
    Ok(dict)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    #[test]
    fn roles_alone_get_distinct_metrics_addresses_and_empty_switches_them_off() {
        figment::Jail::expect_with(|jail| {
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_ne!(
                cfg.metrics_addr_for("batcher"),
                cfg.metrics_addr_for("workers")
            );
            jail.set_env("QUIZFLOW_METRICS_ADDR", "");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.metrics_addr_for("batcher"), None);
            jail.set_env("QUIZFLOW_METRICS_ADDR", "0.0.0.0:9100");
            jail.set_env("QUIZFLOW_COST_SMS", "0.0075");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.metrics_addr_for("workers").as_deref(),
                Some("0.0.0.0:9100")
            );
            assert_eq!(cfg.costs().sms, 0.0075);
            jail.set_env("QUIZFLOW_COST_SMS", "-1");
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn string_keys_stay_strings_and_numbers_parse() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUIZFLOW_TWILIO_FROM", "+15550001111");
            jail.set_env("QUIZFLOW_TWILIO_AUTH_TOKEN", "12345");
            jail.set_env("QUIZFLOW_BATCH_MAX", "250");
            jail.set_env("QUIZFLOW_WEBHOOK_ALLOW_PRIVATE", "true");
            jail.set_env("QUIZFLOW_RETRY_SCHEDULE", "1m30s,2h");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.workers.providers.twilio_from.as_deref(),
                Some("+15550001111")
            );
            assert_eq!(
                cfg.workers.providers.twilio_auth_token.as_deref(),
                Some("12345")
            );
            assert_eq!(cfg.batcher.batch_max, 250);
            assert!(cfg.workers.providers.webhook_allow_private);
            Ok(())
        });
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let mut cfg = Config {
            database_url: Some("postgres://u:pg-secret@h/db".into()),
            ..Config::default()
        };
        cfg.api.admin_token = Some("admin-secret-123456".into());
        cfg.workers.providers.twilio_auth_token = Some("twilio-secret".into());
        cfg.workers.providers.email_smtp_password = Some("smtp-secret".into());
        cfg.workers.providers.webhook_secret = Some("hook-secret".into());
        let shown = format!("{cfg:?}");
        for secret in [
            "admin-secret",
            "twilio-secret",
            "smtp-secret",
            "hook-secret",
            "pg-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("http_addr"));
    }

    #[test]
    fn workers_refuse_a_channel_without_a_provider_unless_a_mock_is_named() {
        let cfg = Config {
            hash_key: Some("a-hash-key-long-enough-for-tests".into()),
            ..Config::default()
        };
        let err = cfg
            .worker_settings(vec![quizflow_core::Channel::Sms], None)
            .expect_err("no provider for sms");
        assert!(err.to_string().contains("sms"), "{err}");
        assert!(
            cfg.worker_settings(vec![quizflow_core::Channel::Webhook], None)
                .is_ok(),
            "webhooks need no provider"
        );
        assert!(cfg
            .worker_settings(
                vec![quizflow_core::Channel::Sms],
                Some("http://127.0.0.1:4010")
            )
            .is_ok());
    }

    #[test]
    fn keys_are_read_off_every_section_and_enums_parse_at_load() {
        let keys = keys();
        for k in ["http_addr", "twilio_from", "email_smtp_tls", "nats_url"] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
        assert!(!prefixed_keys().iter().any(|k| k == "nats_url"));
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUIZFLOW_EMAIL_SMTP_TLS", "tls");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.workers.providers.email_smtp_tls,
                quizflow_workers::provider::SmtpTls::Tls
            );
            jail.set_env("QUIZFLOW_WHATSAPP_PROVIDER", "carrier-pigeon");
            let err = Config::load(None)
                .expect_err("unknown provider")
                .to_string();
            assert!(err.contains("cloud"), "{err}");
            jail.set_env("QUIZFLOW_WHATSAPP_PROVIDER", "cloud");
            jail.set_env("QUIZFLOW_TYPO_KEY", "1");
            assert_eq!(Config::unknown_env_keys(), vec!["QUIZFLOW_TYPO_KEY"]);
            jail.create_file("q.toml", "http_addr = \"127.0.0.1:1\"\nbatch_maxx = 3\n")?;
            let err = Config::load(Some(Path::new("q.toml"))).expect_err("unknown key");
            assert!(err.to_string().contains("batch_maxx"), "{err}");
            Ok(())
        });
    }

    /// One of the tidy rules (see `tests/tests/tidy.rs`): every key is in README's table.
    #[test]
    fn every_key_is_in_the_readme_table() {
        let readme = include_str!("../../README.md");
        let table: String = readme
            .lines()
            .filter(|l| l.starts_with("| `"))
            .collect::<Vec<_>>()
            .join("\n");
        let missing: Vec<String> = prefixed_keys()
            .into_iter()
            .map(|k| format!("`QUIZFLOW_{}`", k.to_ascii_uppercase()))
            .chain(UNPREFIXED.iter().map(|(env, _)| format!("`{env}`")))
            .filter(|k| !table.contains(k.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "keys missing from README's configuration table: {missing:?}"
        );
    }

    #[test]
    fn a_bad_value_is_one_line_naming_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUIZFLOW_BATCH_MAX", "lots");
            let err = Config::load(None).expect_err("invalid").to_string();
            assert!(err.contains("batch_max"), "{err}");
            assert!(err.contains("QUIZFLOW_BATCH_MAX"), "{err}");
            assert!(!err.contains('\n'), "{err}");
            Ok(())
        });
    }
}
