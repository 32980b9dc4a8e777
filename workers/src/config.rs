//! Settings of the workers role.

use crate::provider::{Provider, Sender, SmtpTls};
use quizflow_core::Channel;
use std::time::Duration;

/// Each channel's senders, in failover order (contract §3.3): the first provider's senders,
/// then the next provider's.
#[derive(Debug, Clone)]
pub struct Providers {
    pub sms: Vec<Sender>,
    pub whatsapp: Vec<Sender>,
    pub email: Vec<Sender>,
    pub webhook: Vec<Sender>,
}

impl Providers {
    pub fn for_channel(&self, c: Channel) -> &[Sender] {
        match c {
            Channel::Sms => &self.sms,
            Channel::Whatsapp => &self.whatsapp,
            Channel::Email => &self.email,
            Channel::Webhook => &self.webhook,
        }
    }

    /// Every channel pointed at the bundled mock provider (`quizflow up`, benchmarks, tests).
    pub fn mock(base: &str) -> Self {
        Self {
            sms: Sender::alone(Provider::Twilio {
                base: base.into(),
                account_sid: "ACmock".into(),
                auth_token: "mock".into(),
                from: "+15550000000".into(),
                status_callback: None,
            }),
            whatsapp: Sender::alone(Provider::WhatsappCloud {
                base: base.into(),
                version: "v21.0".into(),
                phone_number_id: "mock".into(),
                token: "mock".into(),
            }),
            email: Sender::alone(Provider::Resend {
                base: base.into(),
                api_key: "mock".into(),
                from: "quizflow@example.com".into(),
            }),
            webhook: Sender::alone(Provider::Webhook {
                secret: None,
                allow_private: true,
            }),
        }
    }

    /// Asks providers that take a per-message callback address (Twilio) to report delivery
    /// to the API at `public_url` (`QUIZFLOW_PUBLIC_URL`). WhatsApp Cloud and Resend report
    /// to the address configured in their dashboards.
    pub fn with_status_callbacks(mut self, public_url: &str) -> Self {
        for s in &mut self.sms {
            if let Provider::Twilio {
                status_callback, ..
            } = &mut s.provider
            {
                *status_callback = Some(format!(
                    "{}/v1/callbacks/twilio",
                    public_url.trim_end_matches('/')
                ));
            }
        }
        self
    }
}

/// One provider account's senders: the account once per `from` of a comma-separated list
/// (`QUIZFLOW_TWILIO_FROM=+15550001,+15550002`), at failover position `rank`.
fn senders(provider: Provider, list: &str, rank: usize) -> Result<Vec<Sender>, ConfigError> {
    let mut out: Vec<Sender> = Vec::new();
    for from in list.split(',').map(str::trim) {
        if from.is_empty() {
            return invalid(format!(
                "{}: an empty sender in the list {list:?}",
                provider.name()
            ));
        }
        if out.iter().any(|s| s.provider.sender() == from) {
            return invalid(format!("{}: sender {from} listed twice", provider.name()));
        }
        out.push(Sender {
            provider: provider.with_sender(from),
            rank,
        });
    }
    Ok(out)
}

/// The workers' section of the configuration: the pools' limits, retries and breaker
/// (`QUIZFLOW_WORKER_CONCURRENCY`, `QUIZFLOW_PROVIDER_RATE_PER_SEC`, `QUIZFLOW_RETRY_SCHEDULE`,
/// `QUIZFLOW_BREAKER_*`) and the providers ([`ProviderConfig`]); keys and defaults written here
/// once, durations parsed when the configuration is loaded.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct WorkersConfig {
    /// Provider calls in flight per channel, for all workers processes together.
    pub worker_concurrency: usize,
    /// Messages per second per channel's provider, for all workers processes together.
    pub provider_rate_per_sec: u32,
    /// Waits between delivery attempts; attempts = entries + 1.
    pub retry_schedule: quizflow_core::settings::Durations,
    pub breaker_failures: u32,
    pub breaker_cooldown: quizflow_core::settings::HumanDuration,
    /// At most so many messages per recipient per rolling window on the channel, across
    /// campaigns (`"3/24h"`); transactional campaigns are exempt. Unset: no cap.
    /// Provider calls in flight per sender, for all workers processes together (unset: only
    /// the channel's `worker_concurrency` bounds them).
    pub sender_concurrency: Option<usize>,
    pub frequency_cap_sms: Option<quizflow_core::consent::FrequencyCap>,
    pub frequency_cap_whatsapp: Option<quizflow_core::consent::FrequencyCap>,
    pub frequency_cap_email: Option<quizflow_core::consent::FrequencyCap>,
    /// Country calling codes SMS and WhatsApp may go to (`55,1`); others end `skipped`
    /// (`country_not_allowed`). Empty: everywhere.
    pub allowed_countries: quizflow_core::settings::CallingCodes,
    #[serde(flatten)]
    pub providers: ProviderConfig,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        let s = WorkerSettings::new(Providers::mock(""));
        Self {
            worker_concurrency: s.concurrency,
            provider_rate_per_sec: s.rate_per_sec,
            retry_schedule: quizflow_core::settings::Durations(s.retry_schedule),
            breaker_failures: s.breaker_failures,
            breaker_cooldown: quizflow_core::settings::HumanDuration(s.breaker_cooldown),
            sender_concurrency: None,
            frequency_cap_sms: None,
            frequency_cap_whatsapp: None,
            frequency_cap_email: None,
            allowed_countries: Default::default(),
            providers: ProviderConfig::default(),
        }
    }
}

impl WorkersConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.worker_concurrency == 0
            || self.provider_rate_per_sec == 0
            || self.breaker_failures == 0
            || self.sender_concurrency == Some(0)
        {
            return invalid(
                "worker_concurrency, provider_rate_per_sec, sender_concurrency and breaker_failures must be positive",
            );
        }
        Ok(())
    }

    /// The pools' settings for `channels` with these `providers`; the caller adds what is not
    /// this section's (ack wait, shutdown timeout, costs, QR links).
    pub fn settings(&self, channels: Vec<Channel>, providers: Providers) -> WorkerSettings {
        let mut s = WorkerSettings::new(providers);
        s.channels = channels;
        s.concurrency = self.worker_concurrency;
        s.rate_per_sec = self.provider_rate_per_sec;
        s.sender_concurrency = self.sender_concurrency;
        s.retry_schedule = self.retry_schedule.0.clone();
        s.breaker_failures = self.breaker_failures;
        s.breaker_cooldown = self.breaker_cooldown.0;
        s.webhook_allow_private = self.providers.webhook_allow_private;
        s.allowed_countries = self.allowed_countries.clone();
        s.frequency_caps = [
            (Channel::Sms, self.frequency_cap_sms),
            (Channel::Whatsapp, self.frequency_cap_whatsapp),
            (Channel::Email, self.frequency_cap_email),
        ]
        .into_iter()
        .filter_map(|(c, cap)| Some((c, cap?)))
        .collect();
        s
    }
}

/// How the workers' providers are configured (`QUIZFLOW_TWILIO_*`, `QUIZFLOW_WHATSAPP_*`,
/// `QUIZFLOW_EMAIL_*`, `QUIZFLOW_WEBHOOK_*`): this crate's section of the configuration, its
/// keys and defaults written here once. [`ProviderConfig::resolve`] turns it into
/// [`Providers`].
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    pub twilio_url: String,
    pub twilio_account_sid: Option<String>,
    pub twilio_auth_token: Option<String>,
    pub twilio_from: Option<String>,
    /// A second Twilio-compatible account the SMS channel fails over to while the first's
    /// breakers are open.
    pub twilio_failover_url: Option<String>,
    pub twilio_failover_account_sid: Option<String>,
    pub twilio_failover_auth_token: Option<String>,
    pub twilio_failover_from: Option<String>,
    pub whatsapp_provider: Option<WhatsappProvider>,
    pub whatsapp_url: Option<String>,
    pub whatsapp_token: Option<String>,
    pub whatsapp_phone_number_id: Option<String>,
    pub evolution_instance: Option<String>,
    pub email_url: String,
    pub email_api_key: Option<String>,
    pub email_from: Option<String>,
    pub email_smtp_host: Option<String>,
    pub email_smtp_port: u16,
    pub email_smtp_tls: SmtpTls,
    pub email_smtp_username: Option<String>,
    pub email_smtp_password: Option<String>,
    pub webhook_secret: Option<String>,
    /// Allow webhooks to loopback and private addresses (`up`, tests).
    pub webhook_allow_private: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            twilio_url: "https://api.twilio.com".into(),
            twilio_account_sid: None,
            twilio_auth_token: None,
            twilio_from: None,
            twilio_failover_url: None,
            twilio_failover_account_sid: None,
            twilio_failover_auth_token: None,
            twilio_failover_from: None,
            whatsapp_provider: None,
            whatsapp_url: None,
            whatsapp_token: None,
            whatsapp_phone_number_id: None,
            evolution_instance: None,
            email_url: "https://api.resend.com".into(),
            email_api_key: None,
            email_from: None,
            email_smtp_host: None,
            email_smtp_port: 587,
            email_smtp_tls: SmtpTls::StartTls,
            email_smtp_username: None,
            email_smtp_password: None,
            webhook_secret: None,
            webhook_allow_private: false,
        }
    }
}

/// Which WhatsApp API `QUIZFLOW_WHATSAPP_PROVIDER` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhatsappProvider {
    Cloud,
    Evolution,
}

/// A provider configuration that cannot work: what is missing or contradictory.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn invalid<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

impl ProviderConfig {
    /// The providers configured; channels with none configured go to the mock provider at
    /// `mock_base`, and are listed.
    pub fn resolve(&self, mock_base: &str) -> Result<(Providers, Vec<Channel>), ConfigError> {
        let mut p = Providers::mock(mock_base);
        let mut mocked = Vec::new();
        match self.sms()? {
            Some(sms) => p.sms = sms,
            None => mocked.push(Channel::Sms),
        }
        match self.whatsapp()? {
            Some(w) => p.whatsapp = w,
            None => mocked.push(Channel::Whatsapp),
        }
        match self.email()? {
            Some(e) => p.email = e,
            None => mocked.push(Channel::Email),
        }
        p.webhook = Sender::alone(Provider::Webhook {
            secret: self.webhook_secret.clone(),
            allow_private: self.webhook_allow_private,
        });
        Ok((p, mocked))
    }

    fn sms(&self) -> Result<Option<Vec<Sender>>, ConfigError> {
        let first = twilio(
            &self.twilio_url,
            [
                &self.twilio_account_sid,
                &self.twilio_auth_token,
                &self.twilio_from,
            ],
            0,
        )?;
        let url = self
            .twilio_failover_url
            .as_deref()
            .unwrap_or(&self.twilio_url);
        let second = twilio(
            url,
            [
                &self.twilio_failover_account_sid,
                &self.twilio_failover_auth_token,
                &self.twilio_failover_from,
            ],
            1,
        )?;
        match (first, second) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Ok(Some(a))
            }
            (Some(a), None) => Ok(Some(a)),
            (None, None) => Ok(None),
            (None, Some(_)) => invalid(
                "QUIZFLOW_TWILIO_FAILOVER_* needs a first Twilio account (QUIZFLOW_TWILIO_*)",
            ),
        }
    }

    fn whatsapp(&self) -> Result<Option<Vec<Sender>>, ConfigError> {
        let (url, token) = (&self.whatsapp_url, &self.whatsapp_token);
        match self.whatsapp_provider {
            None => Ok(None),
            Some(WhatsappProvider::Cloud) => {
                let (Some(url), Some(token), Some(ids)) =
                    (url, token, &self.whatsapp_phone_number_id)
                else {
                    return invalid("WhatsApp Cloud needs QUIZFLOW_WHATSAPP_URL, QUIZFLOW_WHATSAPP_TOKEN and QUIZFLOW_WHATSAPP_PHONE_NUMBER_ID");
                };
                let cloud = Provider::WhatsappCloud {
                    base: url.clone(),
                    version: "v21.0".into(),
                    phone_number_id: String::new(),
                    token: token.clone(),
                };
                senders(cloud, ids, 0).map(Some)
            }
            Some(WhatsappProvider::Evolution) => {
                let (Some(url), Some(token), Some(instances)) =
                    (url, token, &self.evolution_instance)
                else {
                    return invalid("Evolution needs QUIZFLOW_WHATSAPP_URL, QUIZFLOW_WHATSAPP_TOKEN (API key) and QUIZFLOW_EVOLUTION_INSTANCE");
                };
                let evolution = Provider::Evolution {
                    base: url.clone(),
                    instance: String::new(),
                    api_key: token.clone(),
                };
                senders(evolution, instances, 0).map(Some)
            }
        }
    }

    /// Resend, SMTP, or both: then Resend sends and SMTP takes over while Resend's breakers
    /// are open.
    fn email(&self) -> Result<Option<Vec<Sender>>, ConfigError> {
        let Some(from) = &self.email_from else {
            return match (&self.email_smtp_host, &self.email_api_key) {
                (None, None) => Ok(None),
                (Some(_), _) => invalid("SMTP e-mail needs QUIZFLOW_EMAIL_FROM"),
                (None, Some(_)) => {
                    invalid("e-mail needs QUIZFLOW_EMAIL_API_KEY and QUIZFLOW_EMAIL_FROM")
                }
            };
        };
        for f in from.split(',').map(str::trim) {
            if let Err(e) = f.parse::<lettre::message::Mailbox>() {
                return invalid(format!("QUIZFLOW_EMAIL_FROM: sender {f:?}: {e}"));
            }
        }
        let mut out = Vec::new();
        if let Some(key) = &self.email_api_key {
            let resend = Provider::Resend {
                base: self.email_url.clone(),
                api_key: key.clone(),
                from: String::new(),
            };
            out.extend(senders(resend, from, 0)?);
        }
        if let Some(host) = &self.email_smtp_host {
            let creds = self
                .email_smtp_username
                .clone()
                .zip(self.email_smtp_password.clone());
            let first = from.split(',').next().unwrap_or_default().trim();
            let smtp = Provider::smtp(
                host,
                self.email_smtp_port,
                self.email_smtp_tls,
                creds,
                first,
            )
            .map_err(ConfigError)?;
            out.extend(senders(smtp, from, usize::from(!out.is_empty()))?);
        }
        if out.is_empty() {
            return invalid("e-mail needs QUIZFLOW_EMAIL_API_KEY or QUIZFLOW_EMAIL_SMTP_HOST");
        }
        Ok(Some(out))
    }
}

/// One Twilio-compatible account (`[sid, token, from list]`), all three or none.
fn twilio(
    base: &str,
    [sid, token, from]: [&Option<String>; 3],
    rank: usize,
) -> Result<Option<Vec<Sender>>, ConfigError> {
    match (sid, token, from) {
        (Some(sid), Some(token), Some(from)) => {
            let account = Provider::Twilio {
                base: base.to_owned(),
                account_sid: sid.clone(),
                auth_token: token.clone(),
                from: String::new(),
                status_callback: None,
            };
            senders(account, from, rank).map(Some)
        }
        (None, None, None) => Ok(None),
        _ => invalid("a Twilio account needs its ACCOUNT_SID, AUTH_TOKEN and FROM (QUIZFLOW_TWILIO_* or QUIZFLOW_TWILIO_FAILOVER_*)"),
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub channels: Vec<Channel>,
    /// Jobs in flight per channel (a semaphore around provider calls).
    pub concurrency: usize,
    /// Token bucket per sender, messages per second.
    pub rate_per_sec: u32,
    /// Calls in flight per sender (unset: only `concurrency` bounds them).
    pub sender_concurrency: Option<usize>,
    /// `QUIZFLOW_RETRY_SCHEDULE`: waits between attempts; attempts = entries + 1.
    pub retry_schedule: Vec<Duration>,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub send_timeout: Duration,
    /// The consumers' ack wait: in-progress acks go out at a third of it during long calls.
    pub ack_wait: Duration,
    /// `QUIZFLOW_SHUTDOWN_TIMEOUT`: the longest a graceful stop waits for calls in flight.
    pub shutdown_timeout: Duration,
    /// `QUIZFLOW_WEBHOOK_ALLOW_PRIVATE`: webhook targets may be loopback or private.
    pub webhook_allow_private: bool,
    /// How long a redrive may stay taken but unpublished before the relay publishes it.
    pub redrive_relay_after: Duration,
    pub providers: Providers,
    /// Unit prices per channel (`QUIZFLOW_COST_*`): the cost counters.
    pub costs: quizflow_core::Costs,
    /// Where templates' `qr_url` points (`QUIZFLOW_PUBLIC_URL`, signed with the link key).
    pub qr_links: Option<crate::render::QrLinks>,
    /// `QUIZFLOW_PUBLIC_URL`: where unsubscribe links point (the API's `/v1/unsubscribe`).
    pub public_url: Option<String>,
    /// `QUIZFLOW_HASH_KEY`: contacts are checked and suppressed by their keyed hash.
    pub hash_key: quizflow_core::consent::HashKey,
    /// `QUIZFLOW_FREQUENCY_CAP_<CHANNEL>`: per recipient, across campaigns.
    pub frequency_caps: Vec<(Channel, quizflow_core::consent::FrequencyCap)>,
    /// `QUIZFLOW_ALLOWED_COUNTRIES`: where SMS and WhatsApp may go (empty: everywhere).
    pub allowed_countries: quizflow_core::settings::CallingCodes,
}

impl WorkerSettings {
    pub fn new(providers: Providers) -> Self {
        Self {
            channels: Channel::ALL.to_vec(),
            concurrency: 64,
            rate_per_sec: 50,
            sender_concurrency: None,
            retry_schedule: [5, 25, 120, 600, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            send_timeout: Duration::from_secs(15),
            ack_wait: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            webhook_allow_private: false,
            redrive_relay_after: Duration::from_secs(30),
            providers,
            costs: quizflow_core::Costs::default(),
            qr_links: None,
            public_url: None,
            hash_key: quizflow_core::consent::HashKey::for_tests(),
            frequency_caps: Vec::new(),
            allowed_countries: Default::default(),
        }
    }

    /// The channel-wide frequency cap of `channel`, if one is configured.
    pub fn frequency_cap(&self, channel: Channel) -> Option<quizflow_core::consent::FrequencyCap> {
        self.frequency_caps
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, cap)| *cap)
    }
}

/// Parses `5s,25s,2m,10m,1h`.
pub fn parse_schedule(raw: &str) -> Result<Vec<Duration>, String> {
    quizflow_core::settings::Durations::parse(raw).map(|d| d.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn schedules_parse() {
        let s = super::parse_schedule("5s,25s,2m,10m,1h").expect("valid");
        assert_eq!(s.len(), 5);
        assert_eq!(s[2].as_secs(), 120);
        assert_eq!(
            super::parse_schedule("300ms, 1s").expect("valid")[0].as_millis(),
            300
        );
        assert_eq!(
            super::parse_schedule("1m30s,2h").expect("valid")[0].as_secs(),
            90
        );
        assert!(super::parse_schedule("5x").is_err());
        assert!(super::parse_schedule("").is_err());
    }
}
