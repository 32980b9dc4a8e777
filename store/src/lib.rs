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
pub mod ceiling;
pub mod consent;
pub mod dead_letters;
pub mod deliveries;
pub mod erase;
pub mod intake;
pub mod messages;
mod plan;
pub mod replay;
pub mod reports;
pub mod respondents;
pub mod schedules;
pub mod schema;
pub mod stats;
pub mod submissions;

mod raw;

use diesel::result::DatabaseErrorKind;
use diesel_async::pooled_connection::{bb8 as dbb8, AsyncDieselConnectionManager};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::Duration;

/// PostgreSQL connections: diesel-async for most statements, and tokio-postgres for the
/// writes whose failures are read by SQLSTATE (the batcher's intake). Both open lazily.
#[derive(Clone)]
pub struct Pool {
    diesel: dbb8::Pool<AsyncPgConnection>,
    raw: raw::RawPool,
}

/// A connection checked out of the [`Pool`].
pub type Conn<'a> = dbb8::PooledConnection<'a, AsyncPgConnection>;

impl Pool {
    /// A diesel connection.
    pub async fn get(&self) -> Result<Conn<'_>, dbb8::RunError> {
        self.diesel.get().await
    }

    /// A connection of its own, outside the pool, that closes when dropped (a session-level
    /// lock taken on it can never outlive its holder).
    pub(crate) async fn dedicated(&self) -> Result<raw::RawConn, StoreError> {
        Ok(self.raw.dedicated_connection().await?)
    }

    /// A tokio-postgres connection, whose errors keep their SQLSTATE.
    pub(crate) async fn raw(
        &self,
    ) -> Result<bb8::PooledConnection<'_, raw::RawManager>, StoreError> {
        self.raw.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => StoreError::from(e),
            bb8::RunError::TimedOut => StoreError {
                kind: ErrorKind::Timeout,
                sqlstate: None,
                message: "no database connection within the pool timeout".into(),
                source: None,
            },
        })
    }
}

/// What went wrong, as far as a caller's next step is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection, connection lost, server shutting down or read-only: the database is away.
    Unavailable,
    /// No pooled connection in time, or a statement timed out.
    Timeout,
    /// A serialization failure or deadlock between concurrent writers.
    Conflict,
    /// The server's own trouble (SQLSTATE classes other than 22 and 23: disk full, out of
    /// memory, locks, operator intervention, internal errors), or a server error whose
    /// SQLSTATE the driver did not keep. Never the data's fault.
    Server,
    /// The server rejected this data (SQLSTATE classes 22 and 23): it will never work as is.
    Data,
    /// A row with no `submissions` partition for it (23514 on the partitioned table): the
    /// partition is created and the write retried.
    MissingPartition,
}

/// What a caller should do with a failed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Back off and try the same thing again: it should work once the database is back.
    Later,
    /// The data was refused: try the items one by one to find the one that fails, and call
    /// it bad only once the server is shown to accept other writes.
    Isolate,
}

/// A database operation that failed, with its kind.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}{}: {message}", self.sqlstate().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
pub struct StoreError {
    kind: ErrorKind,
    /// The server's SQLSTATE, where the driver kept it.
    sqlstate: Option<[u8; 5]>,
    message: String,
    /// The driver's error, when there is one.
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's SQLSTATE, where the driver kept it (tokio-postgres paths).
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }

    /// The one place that maps an error kind to what to do next.
    pub fn retry(&self) -> Retry {
        match self.kind {
            ErrorKind::Data => Retry::Isolate,
            ErrorKind::Unavailable
            | ErrorKind::Timeout
            | ErrorKind::Conflict
            | ErrorKind::Server
            | ErrorKind::MissingPartition => Retry::Later,
        }
    }

    /// A short text safe to show an operator: the kind, never driver text with data in it.
    pub fn public(&self) -> &'static str {
        match self.kind {
            ErrorKind::Unavailable => "database unavailable",
            ErrorKind::Timeout => "database timeout",
            ErrorKind::Conflict => "database write conflict",
            ErrorKind::Server => "database server error",
            ErrorKind::Data => "data rejected by the database",
            ErrorKind::MissingPartition => "no partition for the row",
        }
    }

    /// An error raised by this crate's own checks.
    pub fn data(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Data,
            sqlstate: None,
            message: message.into(),
            source: None,
        }
    }
}

/// SQLSTATE classes 22 (data exception) and 23 (integrity constraint) are the data's, except a
/// check violation on `submissions` itself, which is a row no partition takes; every other
/// class is the server's, told apart only as far as a caller acts differently on them.
fn classify_sqlstate(code: &str, table: Option<&str>) -> ErrorKind {
    match code {
        "23514" if table == Some("submissions") => ErrorKind::MissingPartition,
        c if c.starts_with("22") || c.starts_with("23") => ErrorKind::Data,
        "40001" | "40P01" => ErrorKind::Conflict,
        "57014" => ErrorKind::Timeout,
        c if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "25006") => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Server,
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let (kind, sqlstate) = match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                let mut sqlstate = [b'?'; 5];
                for (slot, b) in sqlstate.iter_mut().zip(code.bytes()) {
                    *slot = b;
                }
                (classify_sqlstate(code, db.table()), Some(sqlstate))
            }
            // No server error: the connection failed or closed.
            None => (ErrorKind::Unavailable, None),
        };
        Self {
            kind,
            sqlstate,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::Error as E;
        // diesel-async keeps a kind for a few SQLSTATEs and drops the code of every other
        // one: an `Unknown` is taken as the server's trouble (wait, never isolate). Writes
        // that must tell data from server on any code go through tokio-postgres (`intake`).
        let kind = match &e {
            E::DatabaseError(k, info) => match k {
                DatabaseErrorKind::UnableToSendCommand
                | DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::ReadOnlyTransaction => ErrorKind::Unavailable,
                DatabaseErrorKind::SerializationFailure => ErrorKind::Conflict,
                DatabaseErrorKind::CheckViolation if info.table_name() == Some("submissions") => {
                    ErrorKind::MissingPartition
                }
                DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::RestrictViolation
                | DatabaseErrorKind::ExclusionViolation => ErrorKind::Data,
                _ => ErrorKind::Server,
            },
            E::DeserializationError(_) | E::SerializationError(_) | E::InvalidCString(_) => {
                ErrorKind::Data
            }
            E::BrokenTransactionManager | E::AlreadyInTransaction => ErrorKind::Unavailable,
            _ => ErrorKind::Server,
        };
        Self {
            kind,
            sqlstate: None,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

impl From<dbb8::RunError> for StoreError {
    fn from(e: dbb8::RunError) -> Self {
        let kind = match &e {
            dbb8::RunError::TimedOut => ErrorKind::Timeout,
            dbb8::RunError::User(_) => ErrorKind::Unavailable,
        };
        Self {
            kind,
            sqlstate: None,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// Builds a pool; connections are made lazily, so this succeeds while PostgreSQL is down.
pub fn pool(database_url: &str, max_size: u32) -> Pool {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    let diesel = dbb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager);
    // The raw side serves the batcher's intake; opened on use, so a process that never
    // stores a batch opens none.
    let raw = bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(raw::RawManager::new(database_url));
    Pool { diesel, raw }
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
/// A connection of its own to `url` (an administrative one: creating a database).
pub async fn connect(url: &str) -> Result<AsyncPgConnection, StoreError> {
    use diesel_async::AsyncConnection;
    AsyncPgConnection::establish(url)
        .await
        .map_err(|e| StoreError {
            kind: ErrorKind::Unavailable,
            sqlstate: None,
            message: e.to_string(),
            source: Some(Box::new(e)),
        })
}

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
    fn sqlstates_tell_the_data_from_the_server() {
        // (SQLSTATE, table, kind): classes 22 and 23 are the data's, everything else the
        // server's; a check violation on `submissions` itself is a missing partition.
        let cases = [
            ("22P05", None, ErrorKind::Data), // unsupported Unicode escape
            ("22003", None, ErrorKind::Data), // numeric out of range
            ("23505", Some("submission_ids"), ErrorKind::Data),
            ("23514", Some("deliveries"), ErrorKind::Data),
            ("23514", Some("submissions"), ErrorKind::MissingPartition),
            ("53100", None, ErrorKind::Server), // disk full
            ("53200", None, ErrorKind::Server), // out of memory
            ("54000", None, ErrorKind::Server), // program limit
            ("55P03", None, ErrorKind::Server), // lock not available
            ("58030", None, ErrorKind::Server), // I/O error
            ("XX000", None, ErrorKind::Server), // internal error
            ("42P01", None, ErrorKind::Server), // undefined table: a deployment's trouble
            ("40001", None, ErrorKind::Conflict),
            ("40P01", None, ErrorKind::Conflict),
            ("57014", None, ErrorKind::Timeout),
            ("57P01", None, ErrorKind::Unavailable), // admin shutdown
            ("08006", None, ErrorKind::Unavailable),
            ("25006", None, ErrorKind::Unavailable), // read-only transaction (a replica)
        ];
        for (code, table, kind) in cases {
            assert_eq!(classify_sqlstate(code, table), kind, "{code} {table:?}");
            let e = StoreError {
                kind,
                sqlstate: None,
                message: String::new(),
                source: None,
            };
            let want = if kind == ErrorKind::Data {
                Retry::Isolate
            } else {
                Retry::Later
            };
            assert_eq!(e.retry(), want, "{code}");
        }
    }

    #[test]
    fn diesel_kinds_without_a_sqlstate_are_the_servers_unless_typed_as_data() {
        let of = |kind, message: &str| -> StoreError {
            diesel::result::Error::DatabaseError(kind, Box::new(message.to_owned())).into()
        };
        assert_eq!(
            of(DatabaseErrorKind::UnableToSendCommand, "connection closed").retry(),
            Retry::Later
        );
        assert_eq!(
            of(DatabaseErrorKind::CheckViolation, "violates check").retry(),
            Retry::Isolate
        );
        // The message is never read: an unknown code is the server's, in any language.
        for text in [
            "unsupported Unicode escape sequence",
            "could not extend file: No space left on device",
            "não foi possível estender o arquivo",
        ] {
            let e = of(DatabaseErrorKind::Unknown, text);
            assert_eq!(e.kind(), ErrorKind::Server, "{text}");
            assert_eq!(e.retry(), Retry::Later, "{text}");
        }
    }
}
