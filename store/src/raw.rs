//! Connections straight through tokio-postgres, for the writes whose failures must be read by
//! their SQLSTATE (diesel-async keeps only a coarse kind and drops the code): the batcher's
//! store transaction and its write probe. Pooled by bb8 beside the diesel pool, opened lazily.

use tokio_postgres::NoTls;

/// A tokio-postgres client whose connection task runs on the runtime.
pub struct RawConn {
    pub(crate) client: tokio_postgres::Client,
}

/// bb8 manager of [`RawConn`]s. The URL is parsed at each connect, so a URL tokio-postgres
/// cannot read fails where connections are used, with its own error, as the diesel side does.
pub struct RawManager {
    url: String,
}

impl RawManager {
    pub(crate) fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
        }
    }
}

impl bb8::ManageConnection for RawManager {
    type Connection = RawConn;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let config: tokio_postgres::Config = self.url.parse()?;
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(RawConn { client })
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.client.is_closed()
    }
}

/// The pool of [`RawConn`]s.
pub type RawPool = bb8::Pool<RawManager>;
