//! Counters behind `GET /v1/stats`, cheap at any table size.
//!
//! Triggers on `deliveries`, `submission_ids` and `dead_letters` append one delta row per
//! statement and group to `stat_deltas` (append-only: concurrent writers never wait on each
//! other); [`compact`] folds the deltas into `stat_counts`. [`read`] sums both, so figures are
//! exact whether or not compaction has run. Role instances put what only they know (circuit
//! states, counters kept in memory) in `instance_reports` with [`report_instance`].

use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// One counter: `metric` is `deliveries` (by campaign, channel and status), `dead_letters` (open
/// letters by channel, or `submission`), `submissions_stored`, or one of the API's
/// `submissions_accepted` / `submissions_duplicate` / `submissions_rejected` (status = error
/// code).
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct Counter {
    #[diesel(sql_type = Text)]
    pub metric: String,
    #[diesel(sql_type = SqlUuid)]
    pub campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    pub channel: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// A key of [`add`]: what the caller counted since its last call.
#[derive(Debug, Clone)]
pub struct Delta<'a> {
    pub metric: &'a str,
    pub status: &'a str,
    pub n: i64,
}

/// Every non-zero counter. Reads two small tables: `stat_counts` (one row per key) and the
/// deltas not compacted yet.
pub async fn read(conn: &mut AsyncPgConnection) -> Result<Vec<Counter>, StoreError> {
    diesel::sql_query(
        "SELECT metric, campaign_id, channel, status, sum(n)::bigint AS n FROM ( \
           SELECT metric, campaign_id, channel, status, n FROM stat_counts \
           UNION ALL SELECT metric, campaign_id, channel, status, n FROM stat_deltas) x \
         GROUP BY metric, campaign_id, channel, status HAVING sum(n) <> 0 \
         ORDER BY metric, channel, status, campaign_id",
    )
    .load(conn)
    .await
    .map_err(Into::into)
}

/// Folds the deltas into `stat_counts`; returns how many delta rows it folded. One compactor at
/// a time (a transaction-scoped advisory lock; the others return 0 at once).
pub async fn compact(conn: &mut AsyncPgConnection) -> Result<usize, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    #[derive(diesel::QueryableByName)]
    struct Folded {
        #[diesel(sql_type = BigInt)]
        folded: i64,
    }
    conn.transaction::<_, StoreError, _>(async move |conn| {
            let l: Locked = diesel::sql_query(
                "SELECT pg_try_advisory_xact_lock(hashtext('quizflow_stat_compact')) AS locked",
            )
            .get_result(conn)
            .await?;
            if !l.locked {
                return Ok(0);
            }
            let f: Folded = diesel::sql_query(
                "WITH d AS (DELETE FROM stat_deltas RETURNING metric, campaign_id, channel, status, n), \
                 s AS (SELECT metric, campaign_id, channel, status, sum(n)::bigint AS n, count(*) AS rows \
                       FROM d GROUP BY 1, 2, 3, 4), \
                 up AS (INSERT INTO stat_counts (metric, campaign_id, channel, status, n) \
                        SELECT metric, campaign_id, channel, status, n FROM s ORDER BY 1, 2, 3, 4 \
                        ON CONFLICT (metric, campaign_id, channel, status) \
                        DO UPDATE SET n = stat_counts.n + excluded.n RETURNING 1) \
                 SELECT coalesce(sum(rows), 0)::bigint AS folded FROM s",
            )
            .get_result(conn)
            .await?;
            Ok(f.folded as usize)
    })
    .await
}

/// Adds counts kept in a process (the API's duplicates and rejections) as deltas: one
/// statement for all of them.
pub async fn add(conn: &mut AsyncPgConnection, deltas: &[Delta<'_>]) -> Result<(), StoreError> {
    let deltas: Vec<_> = deltas.iter().filter(|d| d.n != 0).collect();
    if deltas.is_empty() {
        return Ok(());
    }
    let metrics: Vec<&str> = deltas.iter().map(|d| d.metric).collect();
    let statuses: Vec<&str> = deltas.iter().map(|d| d.status).collect();
    let ns: Vec<i64> = deltas.iter().map(|d| d.n).collect();
    diesel::sql_query(
        "INSERT INTO stat_deltas (metric, status, n) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
    )
    .bind::<diesel::sql_types::Array<Text>, _>(&metrics)
    .bind::<diesel::sql_types::Array<Text>, _>(&statuses)
    .bind::<diesel::sql_types::Array<BigInt>, _>(&ns)
    .execute(conn)
    .await?;
    Ok(())
}

/// A role instance's live report.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct InstanceReport {
    #[diesel(sql_type = Text)]
    pub instance: String,
    #[diesel(sql_type = Text)]
    pub role: String,
    #[diesel(sql_type = Jsonb)]
    pub report: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    pub seen_at: DateTime<Utc>,
}

/// Upserts this instance's report, and forgets instances silent for a day.
pub async fn report_instance(
    conn: &mut AsyncPgConnection,
    instance: &str,
    role: &str,
    report: &serde_json::Value,
) -> Result<(), StoreError> {
    diesel::sql_query(
        "INSERT INTO instance_reports (instance, role, report, seen_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (instance) DO UPDATE SET report = excluded.report, seen_at = now()",
    )
    .bind::<Text, _>(instance)
    .bind::<Text, _>(role)
    .bind::<Jsonb, _>(report)
    .execute(conn)
    .await?;
    diesel::sql_query("DELETE FROM instance_reports WHERE seen_at < now() - interval '1 day'")
        .execute(conn)
        .await?;
    Ok(())
}

/// Reports of instances seen within `within_secs`.
pub async fn live_instances(
    conn: &mut AsyncPgConnection,
    within_secs: i64,
) -> Result<Vec<InstanceReport>, StoreError> {
    diesel::sql_query(
        "SELECT instance, role, report, seen_at FROM instance_reports \
         WHERE seen_at > now() - make_interval(secs => $1::double precision) ORDER BY role, instance",
    )
    .bind::<BigInt, _>(within_secs)
    .load(conn)
    .await
    .map_err(Into::into)
}
