//! What a fetch of jobs needs, in one query: each job's ledger row, its stored submission and
//! whether its campaign is still live; campaign versions are read once per process.

use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, Bool, Integer, Json, Jsonb, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid,
};
// `#[diesel(embed)]` needs the trait in scope.
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use quizflow_core::{CampaignSpec, DeliveryJob, DeliveryStatus};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

#[derive(diesel::QueryableByName, Clone)]
struct Row {
    #[diesel(sql_type = SqlUuid)]
    submission_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = SmallInt)]
    step: i16,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    lease_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_attempt_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Jsonb)]
    history: serde_json::Value,
    #[diesel(sql_type = Text)]
    quiz_id: String,
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    score: Option<f64>,
    // PostgreSQL's own JSON rendering of the time, as the stored submission shows it.
    #[diesel(sql_type = Json)]
    completed_at: serde_json::Value,
    #[diesel(sql_type = Array<Text>)]
    tags: Vec<String>,
    // `json`, not `jsonb`: the stored columns are `json` and are read back as they are.
    #[diesel(sql_type = Json)]
    answers: serde_json::Value,
    #[diesel(sql_type = Json)]
    metadata: serde_json::Value,
    #[diesel(embed)]
    respondent: crate::submissions::RespondentColumns,
    #[diesel(sql_type = Integer)]
    version: i32,
    #[diesel(sql_type = Bool)]
    campaign_exists: bool,
    #[diesel(sql_type = Bool)]
    campaign_live: bool,
}

/// Everything one job needs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub status: DeliveryStatus,
    pub attempts: i32,
    /// Set while another worker holds the row (`sending`).
    pub lease_until: Option<DateTime<Utc>>,
    /// A waiting job (backoff, `Retry-After`) is not claimed before this.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub history: Vec<serde_json::Value>,
    /// The stored submission (the `GET /v1/submissions/{id}` shape, without deliveries).
    pub submission: serde_json::Value,
    /// The campaign as it was when the job was matched (`None`: that version is unknown).
    pub campaign: Option<Arc<CampaignSpec>>,
    /// The version the job was matched under (templates are compiled once per version).
    pub campaign_version: i32,
    /// The campaign still exists, is active and has not ended: otherwise the job is cancelled.
    pub campaign_live: bool,
    pub campaign_exists: bool,
}

impl JobContext {
    pub fn is_final(&self) -> bool {
        // Final statuses: nothing is ever written over them but a redrive of `dead`.
        self.status.is_final()
    }
}

// A direct message (`POST /v1/messages`) is its own campaign: its row's campaign id is its
// submission id, and its one-off spec is that campaign's version 1. It is live until sent.
// The submission's columns as they are: its JSON shape is built in Rust ([`Row::submission`]),
// which costs PostgreSQL (the busiest process of a run) far less than building it there.
const LOAD: &str = "SELECT d.submission_id, d.campaign_id, d.channel, d.step, d.status, d.attempts, d.lease_until, d.next_attempt_at, d.history, \
        s.quiz_id, s.score, to_json(s.completed_at) AS completed_at, s.tags, s.answers, s.metadata, \
        s.phone, s.email, s.name, s.locale, s.timezone, \
        d.campaign_version AS version, (c.id IS NOT NULL OR d.campaign_id = d.submission_id) AS campaign_exists, \
        COALESCE(c.active AND (c.ends_at IS NULL OR c.ends_at > now()), d.campaign_id = d.submission_id) AS campaign_live \
 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[]) AS k(sub, camp, channel, step) \
 JOIN deliveries d ON d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel \
      AND d.step = k.step \
 JOIN submission_ids i ON i.id = d.submission_id \
 JOIN submissions s ON s.id = i.id AND s.received_at = i.received_at \
 LEFT JOIN campaigns c ON c.id = d.campaign_id";

/// Campaign versions already read, by (campaign, version). A version never changes once
/// written, so a process reads each one once instead of once per job. Bounded: emptied when
/// it grows past [`SpecCache::MAX`] (a process meets few versions).
#[derive(Default)]
pub struct SpecCache(std::sync::Mutex<HashMap<VersionKey, Spec>>);

/// (campaign, version).
type VersionKey = (Uuid, i32);
/// A version's spec; `None` when its stored definition does not parse.
type Spec = Option<Arc<CampaignSpec>>;

impl SpecCache {
    const MAX: usize = 4096;

    fn get(&self, key: &VersionKey) -> Option<Spec> {
        self.0.lock().ok()?.get(key).cloned()
    }

    fn put(&self, entries: impl IntoIterator<Item = (VersionKey, Spec)>) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() > Self::MAX {
                map.clear();
            }
            map.extend(entries);
        }
    }
}

#[derive(diesel::QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = SqlUuid)]
    campaign_id: Uuid,
    #[diesel(sql_type = Integer)]
    version: i32,
    #[diesel(sql_type = Jsonb)]
    definition: serde_json::Value,
}

/// The specs of `keys` not in `cache` yet, read in one query; a version that is not stored
/// is remembered as unknown (`None`) for this call only.
async fn specs(
    conn: &mut AsyncPgConnection,
    cache: &SpecCache,
    keys: impl Iterator<Item = (Uuid, i32)>,
) -> Result<HashMap<VersionKey, Spec>, StoreError> {
    let mut out = HashMap::new();
    let mut missing: Vec<(Uuid, i32)> = Vec::new();
    for key in keys {
        if out.contains_key(&key) || missing.contains(&key) {
            continue;
        }
        match cache.get(&key) {
            Some(spec) => {
                out.insert(key, spec);
            }
            None => missing.push(key),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let camps: Vec<Uuid> = missing.iter().map(|k| k.0).collect();
    let versions: Vec<i32> = missing.iter().map(|k| k.1).collect();
    let rows: Vec<VersionRow> = diesel::sql_query(
        "SELECT v.campaign_id, v.version, v.definition FROM campaign_versions v \
         JOIN UNNEST($1::uuid[], $2::int4[]) AS k(camp, ver) ON v.campaign_id = k.camp AND v.version = k.ver",
    )
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Integer>, _>(&versions)
    .load(conn)
    .await?;
    let found: Vec<(VersionKey, Spec)> = rows
        .into_iter()
        .map(|r| {
            let spec = serde_json::from_value::<CampaignSpec>(r.definition)
                .ok()
                .map(Arc::new);
            ((r.campaign_id, r.version), spec)
        })
        .collect();
    cache.put(found.iter().cloned());
    out.extend(found);
    for key in missing {
        out.entry(key).or_insert(None);
    }
    Ok(out)
}

/// Loads the context of every job of a fetch in one query (and each campaign version the
/// process has not seen yet in one more); `None` where the ledger row (or its submission) is
/// missing.
pub async fn load(
    conn: &mut AsyncPgConnection,
    cache: &SpecCache,
    jobs: &[&DeliveryJob],
) -> Result<Vec<Option<JobContext>>, StoreError> {
    let subs: Vec<Uuid> = jobs.iter().map(|j| j.submission_id.0).collect();
    let camps: Vec<Uuid> = jobs.iter().map(|j| j.campaign_id).collect();
    let channels: Vec<String> = jobs.iter().map(|j| j.channel.to_string()).collect();
    let steps: Vec<i16> = jobs.iter().map(|j| j.step as i16).collect();
    let rows: Vec<Row> = diesel::sql_query(LOAD)
        .bind::<Array<SqlUuid>, _>(&subs)
        .bind::<Array<SqlUuid>, _>(&camps)
        .bind::<Array<Text>, _>(&channels)
        .bind::<Array<SmallInt>, _>(&steps)
        .load(conn)
        .await?;
    let specs = specs(conn, cache, rows.iter().map(|r| (r.campaign_id, r.version))).await?;
    let mut by_key: HashMap<RowKey, Row> = rows
        .into_iter()
        .map(|r| {
            (
                (
                    r.submission_id,
                    r.campaign_id,
                    channel_name(&r.channel),
                    r.step,
                ),
                r,
            )
        })
        .collect();
    // A fetch may hold two copies of one job: each gets the same context, so a row is
    // moved out for its last copy and cloned for the others.
    let mut left: HashMap<RowKey, usize> = HashMap::new();
    for j in jobs {
        *left.entry(row_key(j)).or_default() += 1;
    }
    Ok(jobs
        .iter()
        .map(|j| {
            let key = row_key(j);
            let n = left.get_mut(&key)?;
            *n -= 1;
            let mut r = if *n == 0 {
                by_key.remove(&key)?
            } else {
                by_key.get(&key)?.clone()
            };
            let campaign = specs.get(&(r.campaign_id, r.version)).cloned().flatten();
            Some(r.context(campaign))
        })
        .collect())
}

/// A ledger row's key as the query answers it.
type RowKey = (Uuid, Uuid, &'static str, i16);

fn row_key(j: &DeliveryJob) -> RowKey {
    (
        j.submission_id.0,
        j.campaign_id,
        j.channel.as_str(),
        j.step as i16,
    )
}

impl Row {
    fn context(&mut self, campaign: Option<Arc<CampaignSpec>>) -> JobContext {
        JobContext {
            // The column's CHECK constraint names the same statuses as the enum; an unknown
            // text would read as held elsewhere: waited on, never sent twice.
            status: self.status.parse().unwrap_or(DeliveryStatus::Sending),
            attempts: self.attempts,
            lease_until: self.lease_until,
            next_attempt_at: self.next_attempt_at,
            history: match std::mem::take(&mut self.history) {
                serde_json::Value::Array(a) => a,
                _ => Vec::new(),
            },
            submission: self.submission(),
            campaign,
            campaign_version: self.version,
            campaign_live: self.campaign_live,
            campaign_exists: self.campaign_exists,
        }
    }
}

impl Row {
    /// The stored submission in the `GET /v1/submissions/{id}` shape (without deliveries).
    fn submission(&mut self) -> serde_json::Value {
        serde_json::json!({
            "submission_id": self.submission_id,
            "quiz_id": std::mem::take(&mut self.quiz_id),
            "score": self.score.map(pg_number),
            "completed_at": self.completed_at.take(),
            "tags": std::mem::take(&mut self.tags),
            "answers": self.answers.take(),
            "metadata": self.metadata.take(),
            "respondent": std::mem::take(&mut self.respondent).json(),
        })
    }
}

/// A `float8` as PostgreSQL writes it in JSON: a whole number without a fraction (`72`, not
/// `72.0`), so templates render the score the same as the stored submission shows it.
fn pg_number(x: f64) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact
    if x.fract() == 0.0 && x.abs() < EXACT {
        serde_json::Value::from(x as i64)
    } else {
        serde_json::Value::from(x)
    }
}

/// The channel names the ledger holds, as static strings (anything else never matches a job).
fn channel_name(s: &str) -> &'static str {
    quizflow_core::Channel::parse(s).map_or("", |c| c.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn scores_read_as_postgres_writes_them_in_json() {
        assert_eq!(super::pg_number(72.0).to_string(), "72");
        assert_eq!(super::pg_number(72.5).to_string(), "72.5");
        assert_eq!(super::pg_number(-3.0).to_string(), "-3");
        assert_eq!(super::pg_number(1e300).to_string(), "1e+300");
    }
}
