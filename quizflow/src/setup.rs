//! `quizflow streams` and `quizflow migrate`: the NATS topology and the database schema,
//! set up ahead of the roles (each role also ensures the topology when it starts).

use crate::config::Config;
use crate::roles::{connect_nats, required};

pub async fn streams(cfg: Config) -> anyhow::Result<()> {
    let (_client, js) = connect_nats(&cfg, "streams").await?;
    quizflow_nats::ensure_topology(&js, &cfg.topology()).await?;
    println!("streams SUBMISSIONS, DELIVERIES, DEAD_LETTERS and their consumers are in place (replicas: {})", cfg.stream_replicas);
    Ok(())
}

pub async fn migrate(cfg: Config) -> anyhow::Result<()> {
    let url = required(&cfg.database_url, "DATABASE_URL")?;
    let applied = quizflow_migrations::run_migrations(url).await?;
    println!("{} migration(s) applied", applied.len());
    Ok(())
}
