//! Settings of the workers role.

use crate::provider::Provider;
use quizflow_core::Channel;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Providers {
    pub sms: Provider,
    pub whatsapp: Provider,
    pub email: Provider,
    pub webhook: Provider,
}

impl Providers {
    pub fn for_channel(&self, c: Channel) -> &Provider {
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
            sms: Provider::Twilio {
                base: base.into(),
                account_sid: "ACmock".into(),
                auth_token: "mock".into(),
                from: "+15550000000".into(),
                status_callback: None,
            },
            whatsapp: Provider::WhatsappCloud {
                base: base.into(),
                version: "v21.0".into(),
                phone_number_id: "mock".into(),
                token: "mock".into(),
            },
            email: Provider::Resend {
                base: base.into(),
                api_key: "mock".into(),
                from: "quizflow@example.com".into(),
            },
            webhook: Provider::Webhook {
                secret: None,
                allow_private: true,
            },
        }
    }
}

impl Providers {
    /// Asks providers that take a per-message callback address (Twilio) to report delivery
    /// to the API at `public_url` (`QUIZFLOW_PUBLIC_URL`). WhatsApp Cloud and Resend report
    /// to the address configured in their dashboards.
    pub fn with_status_callbacks(mut self, public_url: &str) -> Self {
        if let Provider::Twilio {
            status_callback, ..
        } = &mut self.sms
        {
            *status_callback = Some(format!(
                "{}/v1/callbacks/twilio",
                public_url.trim_end_matches('/')
            ));
        }
        self
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub channels: Vec<Channel>,
    /// Jobs in flight per channel (a semaphore around provider calls).
    pub concurrency: usize,
    /// Token bucket per channel's provider, messages per second.
    pub rate_per_sec: u32,
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
}

impl WorkerSettings {
    pub fn new(providers: Providers) -> Self {
        Self {
            channels: Channel::ALL.to_vec(),
            concurrency: 64,
            rate_per_sec: 50,
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
        }
    }
}

/// Parses `5s,25s,2m,10m,1h`.
pub fn parse_schedule(raw: &str) -> Result<Vec<Duration>, String> {
    raw.split(',')
        .map(|p| humantime_like(p.trim()))
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("invalid retry schedule {raw:?}: expected e.g. 5s,25s,2m,10m,1h"))
}

/// The same duration syntax as every other key (`300ms`, `1m30s`, `2h`).
fn humantime_like(p: &str) -> Option<Duration> {
    humantime::parse_duration(p).ok()
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
