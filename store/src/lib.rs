//! quizflow's PostgreSQL access: every SQL statement the pipeline runs lives in this crate.
//!
//! One module per table ([`audit`], [`campaigns`], [`submissions`], [`deliveries`], [`dead_letters`]),
//! plus [`intake`] (the batcher's one-transaction bulk write), [`replay`] (what a replay reads and writes) and [`schema`] (diesel `table!`
//! declarations). The SQL files and the migrator are in `quizflow-migrations`.
//!
//! Errors carry a kind ([`ErrorKind`]); [`StoreError::retry`] is the one place that decides
//! whether an operation is worth trying again later or will never work for this data.

pub mod audit;
pub mod campaigns;
pub mod dead_letters;
pub mod deliveries;
pub mod erase;
pub mod intake;
pub mod replay;
pub mod reports;
pub mod schedules;
pub mod schema;
pub mod stats;
pub mod submissions;

use diesel::result::DatabaseErrorKind;
use diesel_async::pooled_connection::{bb8, AsyncDieselConnectionManager};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::Duration;

/// A pool of async PostgreSQL connections.
pub type Pool = bb8::Pool<AsyncPgConnection>;
/// A connection checked out of the [`Pool`].
pub type Conn<'a> = bb8::PooledConnection<'a, AsyncPgConnection>;

/// What went wrong, as far as a caller's next step is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection, connection lost, server shutting down or read-only: the database is away.
    Unavailable,
    /// No pooled connection in time, or a statement timed out.
    Timeout,
    /// A serialization failure or deadlock between concurrent writers.
    Conflict,
    /// The server rejected this data (constraint, invalid value): it will never work as is.
    Data,
    /// The server rejected the statement for a reason it did not classify: could be the data,
    /// could be the server. Callers isolate (split the batch) to find out.
    Rejected,
}

/// What a caller should do with a failed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Back off and try the same thing again: it should work once the database is back.
    Later,
    /// Try the items one by one: one of them may be what fails.
    Isolate,
    /// It will never work with this data.
    Never,
}

/// A database operation that failed, with its kind.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct StoreError {
    kind: ErrorKind,
    message: String,
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The one place that maps an error kind to what to do next.
    pub fn retry(&self) -> Retry {
        match self.kind {
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Conflict => Retry::Later,
            ErrorKind::Rejected => Retry::Isolate,
            ErrorKind::Data => Retry::Never,
        }
    }

    /// A short text safe to show an operator: the kind, never driver text with data in it.
    pub fn public(&self) -> &'static str {
        match self.kind {
            ErrorKind::Unavailable => "database unavailable",
            ErrorKind::Timeout => "database timeout",
            ErrorKind::Conflict => "database write conflict",
            ErrorKind::Data => "data rejected by the database",
            ErrorKind::Rejected => "statement rejected by the database",
        }
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::Error as E;
        let kind = match &e {
            E::DatabaseError(k, info) => match k {
                DatabaseErrorKind::UnableToSendCommand
                | DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::ReadOnlyTransaction => ErrorKind::Unavailable,
                DatabaseErrorKind::SerializationFailure => ErrorKind::Conflict,
                DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::RestrictViolation
                | DatabaseErrorKind::ExclusionViolation => ErrorKind::Data,
                _ => classify_message(info.message()),
            },
            E::DeserializationError(_) | E::SerializationError(_) | E::InvalidCString(_) => {
                ErrorKind::Data
            }
            E::BrokenTransactionManager | E::AlreadyInTransaction => ErrorKind::Unavailable,
            _ => ErrorKind::Rejected,
        };
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

/// diesel-async keeps the server's message but not its SQLSTATE for unclassified errors; the
/// few that mean "the server, not the data" are recognisable by their text.
fn classify_message(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    if m.contains("deadlock") {
        ErrorKind::Conflict
    } else if m.contains("statement timeout") || m.contains("canceling statement") {
        ErrorKind::Timeout
    } else if m.contains("terminating connection")
        || m.contains("shutting down")
        || m.contains("too many clients")
        || m.contains("recovery")
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Rejected
    }
}

impl From<bb8::RunError> for StoreError {
    fn from(e: bb8::RunError) -> Self {
        let kind = match &e {
            bb8::RunError::TimedOut => ErrorKind::Timeout,
            bb8::RunError::User(_) => ErrorKind::Unavailable,
        };
        Self {
            kind,
            message: e.to_string(),
        }
    }
}

impl StoreError {
    /// An error raised by this crate's own checks.
    pub fn data(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Data,
            message: message.into(),
        }
    }
}

/// Builds a pool; connections are made lazily, so this succeeds while PostgreSQL is down.
pub fn pool(database_url: &str, max_size: u32) -> Pool {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager)
}

/// `SELECT 1` through the pool, for readiness checks and outage probes.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// Partition upkeep: monthly `submissions` partitions `months_ahead` ahead, and drops those past
/// `retention_months`.
pub async fn maintain_partitions(
    conn: &mut AsyncPgConnection,
    months_ahead: i32,
    retention_months: i32,
) -> Result<i32, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Dropped {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        dropped: i32,
    }
    diesel::sql_query("SELECT quizflow_ensure_submission_partitions(now(), $1)")
        .bind::<diesel::sql_types::Integer, _>(months_ahead)
        .execute(conn)
        .await?;
    let d: Dropped =
        diesel::sql_query("SELECT quizflow_drop_old_submission_partitions($1) AS dropped")
            .bind::<diesel::sql_types::Integer, _>(retention_months)
            .get_result(conn)
            .await?;
    Ok(d.dropped)
}

/// Creates database `name` if the server has none by that name (`quizflow up`'s private
/// server). `name` must be a plain identifier.
pub async fn create_database_if_missing(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> Result<(), StoreError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::data(format!(
            "not a plain database name: {name:?}"
        )));
    }
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let found: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(name)
            .get_result(conn)
            .await?;
    if !found.exists {
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_loss_is_retried_and_constraints_are_not() {
        let lost: StoreError = diesel::result::Error::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand,
            Box::new("connection closed".to_owned()),
        )
        .into();
        assert_eq!(lost.retry(), Retry::Later);
        let check: StoreError = diesel::result::Error::DatabaseError(
            DatabaseErrorKind::CheckViolation,
            Box::new("violates check".to_owned()),
        )
        .into();
        assert_eq!(check.retry(), Retry::Never);
        let unknown: StoreError = diesel::result::Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("unsupported Unicode escape sequence".to_owned()),
        )
        .into();
        assert_eq!(unknown.retry(), Retry::Isolate);
        let shutdown: StoreError = diesel::result::Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("terminating connection due to administrator command".to_owned()),
        )
        .into();
        assert_eq!(shutdown.retry(), Retry::Later);
    }
}
