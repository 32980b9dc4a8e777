//! Cancelling pending messages by their `cancel_key` or by submission (contract §3.3), as an
//! erasure does: `scheduled`, `queued` and `failed` rows, and `sending` rows whose holder has
//! not started the call (it checks right before calling and finds the row cancelled) or
//! whose lease ran out. A call already under way is not stopped; its outcome is recorded.

use crate::StoreError;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

#[derive(diesel::QueryableByName)]
struct Counted {
    #[diesel(sql_type = BigInt)]
    cancelled: i64,
    #[diesel(sql_type = BigInt)]
    in_flight: i64,
}

/// What a cancellation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cancelled {
    /// Pending messages now `cancelled`.
    pub cancelled: i64,
    /// Calls already under way (past the check): they finish and are recorded.
    pub in_flight: i64,
}

const PENDING: &str = "(d.status IN ('scheduled', 'queued', 'failed') \
     OR (d.status = 'sending' AND (d.calling_at IS NULL OR d.lease_until < now())))";

const IN_FLIGHT: &str =
    "d.status = 'sending' AND d.calling_at IS NOT NULL AND d.lease_until >= now()";

fn statement(filter: &str, why: &str) -> String {
    format!(
        "WITH c AS (UPDATE deliveries d SET status = 'cancelled', claim = NULL, lease_until = NULL, \
                      next_attempt_at = NULL, calling_at = NULL, last_error = '{why}', updated_at = now() \
                    WHERE {filter} AND {PENDING} RETURNING 1) \
         SELECT (SELECT count(*) FROM c) AS cancelled, \
                (SELECT count(*) FROM deliveries d WHERE {filter} AND {IN_FLIGHT}) AS in_flight"
    )
}

/// Cancels every pending message whose rendered `cancel_key` is `key`.
pub async fn by_key(conn: &mut AsyncPgConnection, key: &str) -> Result<Cancelled, StoreError> {
    let c: Counted = diesel::sql_query(statement(
        "d.cancel_key = $1",
        "cancelled: by its cancel key",
    ))
    .bind::<Text, _>(key)
    .get_result(conn)
    .await?;
    Ok(Cancelled {
        cancelled: c.cancelled,
        in_flight: c.in_flight,
    })
}

/// Cancels every pending message of one submission.
pub async fn by_submission(
    conn: &mut AsyncPgConnection,
    submission: Uuid,
) -> Result<Cancelled, StoreError> {
    let c: Counted = diesel::sql_query(statement(
        "d.submission_id = $1",
        "cancelled: its submission was cancelled",
    ))
    .bind::<SqlUuid, _>(submission)
    .get_result(conn)
    .await?;
    Ok(Cancelled {
        cancelled: c.cancelled,
        in_flight: c.in_flight,
    })
}
