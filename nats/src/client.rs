//! Client and JetStream context set-up.

use crate::NatsError;
use async_nats::jetstream::{self, context::ContextBuilder};
use std::path::PathBuf;
use std::time::Duration;

/// How to reach NATS. `Debug` redacts credentials in the URL.
#[derive(Clone)]
pub struct NatsSettings {
    /// `nats://host:port[,nats://...]`; user/password or token may be embedded in the URL.
    pub url: String,
    /// A `.creds` file (JWT + nkey seed) for decentralised auth.
    pub creds_file: Option<PathBuf>,
    /// Extra root certificate (PEM) to trust, for TLS with a private CA.
    pub tls_ca_file: Option<PathBuf>,
    /// Refuse plain-text connections.
    pub tls_required: bool,
    /// Connection name shown by the server (`quizflow-api`, ...).
    pub name: String,
    /// How long a publish may wait for its PubAck before it counts as failed.
    pub ack_timeout: Duration,
    /// Publishes whose acks may be outstanding at once, per process. Bounded so that an
    /// overloaded server slows publishers down instead of growing a queue.
    pub max_ack_inflight: usize,
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &redact_url(&self.url))
            .field("creds_file", &self.creds_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_required", &self.tls_required)
            .field("name", &self.name)
            .field("ack_timeout", &self.ack_timeout)
            .field("max_ack_inflight", &self.max_ack_inflight)
            .finish()
    }
}

impl NatsSettings {
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            creds_file: None,
            tls_ca_file: None,
            tls_required: false,
            name: name.into(),
            ack_timeout: Duration::from_secs(5),
            max_ack_inflight: 4096,
        }
    }
}

/// Connects with reconnects forever (a NATS restart must not need a quizflow restart) and
/// retries the initial connect, so that a process may start before its server.
pub async fn connect(settings: &NatsSettings) -> Result<async_nats::Client, NatsError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(&settings.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // Reconnect quickly: while disconnected the API answers 503.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(2_000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                other => tracing::debug!(event = %other, "nats event"),
            }
        });
    if let Some(path) = &settings.creds_file {
        opts = opts.credentials_file(path).await.map_err(|e| {
            NatsError::Settings(format!("credentials file {}: {e}", path.display()))
        })?;
    }
    if let Some(ca) = &settings.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if settings.tls_required {
        opts = opts.require_tls(true);
    }
    // Any one reachable seed is enough: the client tries them in turn (and, beyond them, the
    // servers the cluster announces).
    opts.connect(seed_list(&settings.url)?)
        .await
        .map_err(|source| NatsError::Connect {
            url: redact_url(&settings.url),
            source,
        })
}

/// The servers of a `NATS_URL`: one URL, or the NATS convention of a comma-separated seed
/// list (`nats://a:4222,nats://b:4222`). Scheme and port may be left out (`nats://`, 4222).
pub fn seed_list(url: &str) -> Result<Vec<async_nats::ServerAddr>, NatsError> {
    let seeds: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| NatsError::Settings(format!("NATS_URL entry {}: {e}", redact_url(s))))
        })
        .collect::<Result<_, _>>()?;
    if seeds.is_empty() {
        return Err(NatsError::Settings("NATS_URL names no server".into()));
    }
    Ok(seeds)
}

/// A JetStream context for pipelined publishing: at most `max_ack_inflight` acks pending,
/// publishers wait (backpressure) rather than fail when that many are outstanding.
pub fn jetstream(client: async_nats::Client, settings: &NatsSettings) -> jetstream::Context {
    ContextBuilder::new()
        .timeout(settings.ack_timeout)
        .max_ack_inflight(settings.max_ack_inflight)
        .backpressure_on_inflight(true)
        .build(client)
}

/// The URL without any embedded credentials, for logs and errors.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &one[..scheme], &one[at + 1..])
            }
            (None, Some(at)) => format!("***@{}", &one[at + 1..]),
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::{redact_url, seed_list};

    #[test]
    fn a_seed_list_is_comma_separated() {
        let seeds = seed_list("nats://a:4222, nats://u:p@b:4223,c").expect("valid");
        let hosts: Vec<(String, u16)> = seeds
            .iter()
            .map(|s| (s.host().to_owned(), s.port()))
            .collect();
        assert_eq!(
            hosts,
            vec![("a".into(), 4222), ("b".into(), 4223), ("c".into(), 4222)]
        );
        assert!(seed_list(" , ").is_err());
        let bad = seed_list("nats://a:4222,nats://u:secret@b:notaport").expect_err("bad port");
        assert!(!bad.to_string().contains("secret"), "{bad}");
    }

    #[test]
    fn credentials_never_reach_logs() {
        assert_eq!(redact_url("nats://u:secret@h:4222"), "nats://***@h:4222");
        assert_eq!(
            redact_url("tok@h:4222,nats://h2:4222"),
            "***@h:4222,nats://h2:4222"
        );
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }
}
