//! quizflow's PostgreSQL schema, connection set-up and shared table access.
//!
//! The SQL migrations under `sql/` are embedded in the binary, so `quizflow migrate` and
//! `quizflow up` need nothing on disk. Only this crate creates pools, so pool sizing and
//! timeouts are decided in one place.

pub mod campaigns;
pub mod dead_letters;
pub mod submissions;

use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::{bb8, AsyncDieselConnectionManager};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::time::Duration;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("sql");

/// A pool of async PostgreSQL connections.
pub type Pool = bb8::Pool<AsyncPgConnection>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("no pooled connection: {0}")]
    Pool(String),
}

/// Builds a pool; connections are made lazily, so this succeeds while PostgreSQL is down.
pub fn pool(database_url: &str, max_size: u32) -> Pool {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager)
}

/// Applies pending migrations; returns the versions applied.
pub async fn run_migrations(database_url: &str) -> Result<Vec<String>, DbError> {
    let url = database_url.to_owned();
    // The migration harness is synchronous; it must not block the runtime.
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| DbError::Connect(e.to_string()))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(applied.into_iter().map(|v| v.to_string()).collect())
    })
    .await
    .map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}

/// `SELECT 1` through the pool, for readiness checks.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let mut conn = pool.get().await.map_err(|e| DbError::Pool(e.to_string()))?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quizflow_testkit::TestDb;

    #[tokio::test]
    async fn migrations_apply_once_and_create_partitions() {
        let db = TestDb::create().await;
        let first = run_migrations(&db.url).await.expect("migrate");
        assert_eq!(first.len(), 3);
        assert!(run_migrations(&db.url)
            .await
            .expect("migrate again")
            .is_empty());
        let pool = pool(&db.url, 2);
        ping(&pool).await.expect("ping");
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = pool.get().await.expect("conn");
        let c: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'submissions'::regclass",
        )
        .get_result(&mut conn)
        .await
        .expect("count partitions");
        assert_eq!(c.n, 4);

        // Retention drops whole partitions older than the cut-off, and only those.
        diesel::sql_query(
            "SELECT quizflow_ensure_submission_partitions(now() - interval '14 months', 2)",
        )
        .execute(&mut conn)
        .await
        .expect("old partitions");
        #[derive(diesel::QueryableByName)]
        struct Dropped {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            dropped: i32,
        }
        let d: Dropped =
            diesel::sql_query("SELECT quizflow_drop_old_submission_partitions(12) AS dropped")
                .get_result(&mut conn)
                .await
                .expect("drop");
        assert_eq!(d.dropped, 2);
        let c: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'submissions'::regclass",
        )
        .get_result(&mut conn)
        .await
        .expect("count partitions");
        assert_eq!(c.n, 4, "the recent partitions are kept");
    }
}
