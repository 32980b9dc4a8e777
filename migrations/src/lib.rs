//! quizflow's PostgreSQL schema: the SQL migrations under `sql/`, embedded in the binary, and
//! the migrator. Every statement the pipeline runs at run time lives in `quizflow-store`.

use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("sql");

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    #[error("migration failed: {0}")]
    Migration(String),
}

/// Applies pending migrations; returns the versions applied.
pub async fn run_migrations(database_url: &str) -> Result<Vec<String>, MigrationError> {
    let url = database_url.to_owned();
    // The migration harness is synchronous; it must not block the runtime.
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| MigrationError::Connect(e.to_string()))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| MigrationError::Migration(e.to_string()))?;
        Ok(applied.into_iter().map(|v| v.to_string()).collect())
    })
    .await
    .map_err(|e| MigrationError::Migration(format!("migration task failed: {e}")))?
}
