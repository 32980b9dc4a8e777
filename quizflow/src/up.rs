//! `quizflow up`: the development all-in-one. Private NATS and PostgreSQL unless configured,
//! migrations, then every role in one process ([`serve_roles`]) with the mock provider as
//! every channel's provider, reporting delivery back to this API.

use crate::config::Config;
use crate::devservices::DevServices;
use crate::ops::shutdown_signal;
use crate::roles::{serve_roles, Role};
use anyhow::Context;
use quizflow_telemetry::prometheus::Registry;
use std::io::Write;
use std::path::Path;

/// In `up`'s data dir while it runs: the servers it uses (`NATS_URL=…`, `DATABASE_URL=…`).
pub(crate) const UP_ENV_FILE: &str = "up.env";

pub async fn up(cfg: Config, registry: Registry) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
    let data_dir = std::path::absolute(&cfg.data_dir)?;
    let token = admin_token(&cfg)?;
    let (mut dev, nats_url, database_url) = dev_services(&cfg, &data_dir, true).await?;
    // Where `quizflow replay` (and other one-off commands) find this deployment's servers.
    let env_file = data_dir.join(UP_ENV_FILE);
    let env = format!("NATS_URL={nats_url}\nDATABASE_URL={database_url}\n");
    if let Err(e) = write_private(&env_file, &env) {
        tracing::warn!(error = %e, "cannot write {}", env_file.display());
    }
    let result = async {
        let applied = quizflow_migrations::run_migrations(&database_url).await?;
        tracing::info!(applied = applied.len(), "database migrated");
        let mut cfg = for_up(cfg, &token);
        cfg.nats_url = Some(nats_url.clone());
        cfg.database_url = Some(database_url.clone());
        let mock = format!("http://{}", cfg.mock_addr);
        let roles = [
            Role::Api,
            Role::Batcher,
            Role::MockProvider,
            Role::Workers {
                channels: Vec::new(),
                mock: Some(mock),
            },
        ];
        let serving = serve_roles(&cfg, &roles, registry, shutdown_signal());
        banner(&cfg, &nats_url, &database_url, &data_dir, &token);
        serving.await
    }
    .await;
    let _ = std::fs::remove_file(&env_file);
    dev.stop().await;
    result
}

/// `up`'s own settings: its admin token, delivery to its own mock on loopback, and the
/// secrets the mock signs its delivery reports with, derived from the token.
fn for_up(mut cfg: Config, token: &str) -> Config {
    cfg.api.admin_token = Some(token.to_owned());
    cfg.workers.providers.webhook_allow_private = true;
    cfg.api
        .public_url
        .get_or_insert_with(|| format!("http://{}", cfg.api.http_addr));
    derive_secret(
        &mut cfg.api.whatsapp_app_secret,
        token,
        "whatsapp-app-secret",
    );
    derive_secret(
        &mut cfg.api.whatsapp_verify_token,
        token,
        "whatsapp-verify-token",
    );
    derive_secret(&mut cfg.api.link_key, token, "qr-link-key");
    derive_secret(
        &mut cfg.api.evolution_webhook_key,
        token,
        "evolution-webhook-key",
    );
    // Derived from the token the data dir keeps: the same key on every `up` of this data dir.
    derive_secret(&mut cfg.hash_key, token, "contact-hash-key");
    if cfg.api.email_webhook_secret.is_none() {
        use base64::Engine;
        let key = quizflow_core::signatures::hub(token, b"email-webhook-secret");
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        cfg.api.email_webhook_secret = Some(format!("whsec_{key}"));
    }
    cfg.mock_callbacks = true;
    cfg
}

fn banner(cfg: &Config, nats_url: &str, database_url: &str, data_dir: &Path, token: &str) {
    println!();
    println!("quizflow is up (api + batcher + workers + mock provider)");
    println!(
        "  API            http://{}  (dashboard: /, docs: /docs, spec: /openapi.json, metrics: /metrics)",
        cfg.api.http_addr
    );
    println!(
        "  mock provider  http://{}  (/_mock/messages)",
        cfg.mock_addr
    );
    println!("  NATS           {}", quizflow_nats::redact_url(nats_url));
    println!(
        "  PostgreSQL     {}",
        quizflow_nats::redact_url(database_url)
    );
    println!("  data dir       {}", data_dir.display());
    println!(
        "  admin token    {token}  (also in {})",
        data_dir.join("admin-token").display()
    );
    println!("Ctrl-C stops everything.");
    println!();
}

/// A secret `up` derives from its admin token when none is configured: stable across
/// restarts of the same data dir, different per purpose.
fn derive_secret(slot: &mut Option<String>, token: &str, purpose: &str) {
    if slot.is_none() {
        *slot = Some(quizflow_core::signatures::hub(token, purpose.as_bytes()));
    }
}

/// The hash key `up` derives from the admin token its data dir keeps (what one-off commands
/// beside a running `up` use); `None` when the data dir has no token.
pub(crate) fn derived_hash_key(cfg: &Config) -> Option<String> {
    let token = std::fs::read_to_string(cfg.data_dir.join("admin-token")).ok()?;
    let mut key = None;
    derive_secret(&mut key, token.trim(), "contact-hash-key");
    key
}

/// Reads or creates the admin token kept in the data dir (mode 0600).
fn admin_token(cfg: &Config) -> anyhow::Result<String> {
    if let Some(t) = &cfg.api.admin_token {
        return Ok(t.clone());
    }
    let path = cfg.data_dir.join("admin-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if existing.trim().len() >= 16 {
            return Ok(existing.trim().to_owned());
        }
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, &token).with_context(|| format!("write {}", path.display()))?;
    Ok(token)
}

/// Starts private servers for whatever is not configured.
pub async fn dev_services(
    cfg: &Config,
    data_dir: &Path,
    sync_always: bool,
) -> anyhow::Result<(DevServices, String, String)> {
    let mut dev = DevServices::none();
    let nats_url = match &cfg.nats_url {
        Some(u) => u.clone(),
        None => {
            dev.start_nats(data_dir, cfg.nats_server_bin.as_deref(), sync_always)
                .await?
        }
    };
    let database_url = match &cfg.database_url {
        Some(u) => u.clone(),
        None => match dev.start_postgres(data_dir).await {
            Ok(u) => u,
            Err(e) => {
                dev.stop().await;
                return Err(e);
            }
        },
    };
    Ok((dev, nats_url, database_url))
}

/// Writes a file only its owner can read (it may name credentials).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}
