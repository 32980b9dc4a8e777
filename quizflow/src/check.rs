//! `quizflow check <role…>`: the configuration a role would start with, checked by the same
//! code that starts it ([`Role::check`]), without connecting anywhere.

use crate::config::Config;
use crate::roles::{required, Role};
use crate::{Cli, Command};
use clap::Parser;

pub fn check(cfg: &Config, role: &[String]) -> anyhow::Result<()> {
    let unknown = Config::unknown_env_keys();
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown variables (typos?): {}",
        unknown.join(", ")
    );
    let cli =
        Cli::try_parse_from(std::iter::once("quizflow".to_owned()).chain(role.iter().cloned()))?;
    match cli.command {
        Command::Migrate => {
            required(&cfg.database_url, "DATABASE_URL")?;
        }
        Command::Streams => {
            required(&cfg.nats_url, "NATS_URL")?;
        }
        // `up` starts private servers for what is not configured: its roles' other settings
        // are checked when it starts them.
        Command::Up => {}
        command => match command.role() {
            Some(r) => r.check(cfg)?,
            None => anyhow::bail!(
                "check takes a role: api, batcher, workers, migrate, streams, mock-provider or up"
            ),
        },
    }
    println!(
        "ok: quizflow {} would start with this configuration",
        role.join(" ")
    );
    Ok(())
}

impl Command {
    /// The role a single-role command serves.
    pub fn role(&self) -> Option<Role> {
        Some(match self {
            Command::Api => Role::Api,
            Command::Batcher => Role::Batcher,
            Command::Workers {
                channels,
                mock_provider,
            } => Role::Workers {
                channels: channels.clone(),
                mock: mock_provider.clone(),
            },
            Command::MockProvider => Role::MockProvider,
            _ => return None,
        })
    }
}
