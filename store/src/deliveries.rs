//! The `deliveries` ledger as the workers see it: what a fetch of jobs needs (one query), the
//! claim taken before a provider call, and batched, forward-only status writes.
//!
//! Statuses only move forward. A worker claims a row (`queued|failed → sending`, or a
//! `sending` row whose lease expired) with a token; its outcome is written only while the row
//! is still `sending` under that token. Writes without a token (cancellation, the
//! max-deliveries sweeper) apply only to rows nobody holds. So `sent`, `delivered`, `dead` and
//! `cancelled` are never overwritten by a late `failed`, and two copies of a job never both
//! reach the provider unless a lease ran out.

// `#[diesel(embed)]` needs the trait in scope.
use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, Bool, Integer, Json, Jsonb, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_core::{CampaignSpec, DeliveryJob, DeliveryStatus};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// How many attempt-history entries a ledger row keeps (the newest).
pub const HISTORY_CAP: i32 = 50;

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

// The submission's columns as they are: its JSON shape is built in Rust ([`Row::submission`]),
// which costs PostgreSQL (the busiest process of a run) far less than building it there.
const LOAD: &str = "SELECT d.submission_id, d.campaign_id, d.channel, d.step, d.status, d.attempts, d.lease_until, d.next_attempt_at, d.history, \
        s.quiz_id, s.score, to_json(s.completed_at) AS completed_at, s.tags, s.answers, s.metadata, \
        s.phone, s.email, s.name, s.locale, \
        d.campaign_version AS version, (c.id IS NOT NULL) AS campaign_exists, \
        COALESCE(c.active AND (c.ends_at IS NULL OR c.ends_at > now()), false) AS campaign_live \
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
    let mut by_key: HashMap<(Uuid, Uuid, &str, i16), Row> = rows
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
    let mut left: HashMap<(Uuid, Uuid, &str, i16), usize> = HashMap::new();
    for j in jobs {
        *left
            .entry((
                j.submission_id.0,
                j.campaign_id,
                j.channel.as_str(),
                j.step as i16,
            ))
            .or_default() += 1;
    }
    Ok(jobs
        .iter()
        .map(|j| {
            let key = (
                j.submission_id.0,
                j.campaign_id,
                j.channel.as_str(),
                j.step as i16,
            );
            let n = left.get_mut(&key)?;
            *n -= 1;
            let mut r = if *n == 0 {
                by_key.remove(&key)?
            } else {
                by_key.get(&key)?.clone()
            };
            let campaign = specs.get(&(r.campaign_id, r.version)).cloned().flatten();
            let submission = r.submission();
            Some(JobContext {
                // The column's CHECK constraint names the same statuses as the enum.
                status: r.status.parse().unwrap_or(DeliveryStatus::Sending),
                attempts: r.attempts,
                lease_until: r.lease_until,
                next_attempt_at: r.next_attempt_at,
                history: match r.history {
                    serde_json::Value::Array(a) => a,
                    _ => Vec::new(),
                },
                submission,
                campaign,
                campaign_version: r.version,
                campaign_live: r.campaign_live,
                campaign_exists: r.campaign_exists,
            })
        })
        .collect())
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

/// A ledger key: (submission, campaign, channel, step).
pub type Key = (Uuid, Uuid, String, u16);

#[derive(diesel::QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = SqlUuid)]
    submission_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = SmallInt)]
    step: i16,
}

impl KeyRow {
    fn key(self) -> Key {
        (
            self.submission_id,
            self.campaign_id,
            self.channel,
            u16::try_from(self.step).unwrap_or_default(),
        )
    }
}

type KeyColumns = (Vec<Uuid>, Vec<Uuid>, Vec<String>, Vec<i16>);

fn unzip(keys: &[Key]) -> KeyColumns {
    let mut a = Vec::with_capacity(keys.len());
    let mut b = Vec::with_capacity(keys.len());
    let mut c = Vec::with_capacity(keys.len());
    let mut d = Vec::with_capacity(keys.len());
    for (s, k, ch, step) in keys {
        a.push(*s);
        b.push(*k);
        c.push(ch.clone());
        d.push(*step as i16);
    }
    (a, b, c, d)
}

/// Claims the rows nobody holds (`queued`, `failed`, or `sending` with an expired lease) for
/// `lease`, under `claim`, in one statement; returns the keys it claimed.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    keys: &[Key],
    claim: Uuid,
    lease: std::time::Duration,
) -> Result<Vec<Key>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (subs, camps, channels, steps) = unzip(keys);
    let rows: Vec<KeyRow> = diesel::sql_query(
        "UPDATE deliveries d SET status = 'sending', claim = $4, calling_at = NULL, \
                lease_until = now() + make_interval(secs => $5), updated_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $6::int2[]) AS k(sub, camp, channel, step) \
         WHERE d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel AND d.step = k.step \
           AND ((d.status IN ('queued', 'failed') AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= now())) \
                OR (d.status = 'sending' AND d.lease_until < now())) \
         RETURNING d.submission_id, d.campaign_id, d.channel, d.step",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<SqlUuid, _>(claim)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .bind::<Array<SmallInt>, _>(&steps)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(KeyRow::key).collect())
}

/// Extends the lease of every row still `sending` under the given claim to `lease` from now,
/// in one statement; returns how many it extended. Rows finished or taken over are left.
/// Like [`start_calls`], committed without waiting for the WAL flush: a renewal lost with a
/// database crash is made again within a quarter lease.
pub async fn renew(
    conn: &mut AsyncPgConnection,
    held: &[(Key, Uuid)],
    lease: std::time::Duration,
) -> Result<usize, StoreError> {
    if held.is_empty() {
        return Ok(0);
    }
    let keys: Vec<Key> = held.iter().map(|(k, _)| k.clone()).collect();
    let claims: Vec<Uuid> = held.iter().map(|(_, c)| *c).collect();
    let (subs, camps, channels, steps) = unzip(&keys);
    let n = diesel::sql_query(
        "UPDATE deliveries d SET lease_until = now() + make_interval(secs => $6) \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::uuid[]) AS k(sub, camp, channel, step, claim), \
              (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit \
         WHERE d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel AND d.step = k.step \
           AND d.status = 'sending' AND d.claim = k.claim",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<Array<SqlUuid>, _>(&claims)
    .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(n)
}

/// Marks the calls about to start: each row still `sending` under the given claim gets
/// `calling_at`, in one statement; returns the keys confirmed. A row missing from the answer
/// was cancelled (an erasure) or taken over since its claim: its holder must not call.
///
/// Committed without waiting for the WAL flush (`synchronous_commit = off` for this statement
/// only): the mark is visible at once to an erasure, which is all it is for, and a mark lost
/// with a database crash costs nothing (the claim's lease still bounds the call). The rows'
/// statuses and outcomes are always written with the durable default.
pub async fn start_calls(
    conn: &mut AsyncPgConnection,
    held: &[(Key, Uuid)],
) -> Result<Vec<Key>, StoreError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Key> = held.iter().map(|(k, _)| k.clone()).collect();
    let claims: Vec<Uuid> = held.iter().map(|(_, c)| *c).collect();
    let (subs, camps, channels, steps) = unzip(&keys);
    let rows: Vec<KeyRow> = diesel::sql_query(
        "UPDATE deliveries d SET calling_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::uuid[]) AS k(sub, camp, channel, step, claim), \
              (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit \
         WHERE d.submission_id = k.sub AND d.campaign_id = k.camp AND d.channel = k.channel AND d.step = k.step \
           AND d.status = 'sending' AND d.claim = k.claim \
         RETURNING d.submission_id, d.campaign_id, d.channel, d.step",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<Array<SqlUuid>, _>(&claims)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(KeyRow::key).collect())
}

/// One status change, applied by [`write`].
#[derive(Debug, Clone)]
pub struct Update {
    pub submission_id: Uuid,
    pub campaign_id: Uuid,
    pub channel: String,
    pub step: u16,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// `{at, outcome, detail}` entries to append.
    pub history: Vec<serde_json::Value>,
    /// For a job that goes back to waiting: how long until it may be claimed again
    /// (measured on the database's clock, like every other lease and time in the ledger).
    pub retry_in: Option<std::time::Duration>,
    /// The claim under which the worker acted; `None` for writes by nobody's claim
    /// (cancellation, the sweeper), which apply only to rows nobody holds.
    pub claim: Option<Uuid>,
}

impl Update {
    pub fn key(&self) -> Key {
        (
            self.submission_id,
            self.campaign_id,
            self.channel.clone(),
            self.step,
        )
    }
}

/// PostgreSQL stores U+0000 neither in `text` nor in `jsonb`; provider answers can hold it.
fn storable(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// [`storable`] for JSON: every string and key, before serialising (serde_json writes U+0000
/// as the escape `\u0000`, which `jsonb` refuses just the same).
fn storable_json(v: &serde_json::Value) -> String {
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.contains('\0') => *s = storable(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
            serde_json::Value::Object(m) => {
                let bad: Vec<String> = m.keys().filter(|k| k.contains('\0')).cloned().collect();
                for k in bad {
                    if let Some(x) = m.remove(&k) {
                        m.insert(storable(&k), x);
                    }
                }
                m.values_mut().for_each(scrub);
            }
            _ => {}
        }
    }
    let mut v = v.clone();
    scrub(&mut v);
    v.to_string()
}

/// Applies `updates` in one statement (the caller merged them one per key and claim).
/// Returns the keys whose write applied; the others were superseded (final, or held by
/// another claim).
pub async fn write(
    conn: &mut AsyncPgConnection,
    updates: &[Update],
) -> Result<Vec<Key>, StoreError> {
    if updates.is_empty() {
        return Ok(Vec::new());
    }
    let subs: Vec<Uuid> = updates.iter().map(|u| u.submission_id).collect();
    let camps: Vec<Uuid> = updates.iter().map(|u| u.campaign_id).collect();
    let channels: Vec<String> = updates.iter().map(|u| u.channel.clone()).collect();
    let steps: Vec<i16> = updates.iter().map(|u| u.step as i16).collect();
    let statuses: Vec<&str> = updates.iter().map(|u| u.status.as_str()).collect();
    let attempts: Vec<i32> = updates.iter().map(|u| u.attempts).collect();
    let errors: Vec<Option<String>> = updates
        .iter()
        .map(|u| u.last_error.as_deref().map(storable))
        .collect();
    let history: Vec<String> = updates
        .iter()
        .map(|u| storable_json(&serde_json::Value::Array(u.history.clone())))
        .collect();
    let claims: Vec<Option<Uuid>> = updates.iter().map(|u| u.claim).collect();
    let retry_in: Vec<Option<f64>> = updates
        .iter()
        .map(|u| u.retry_in.map(|d| d.as_secs_f64()))
        .collect();
    let rows: Vec<KeyRow> = diesel::sql_query(
        "UPDATE deliveries d SET status = u.status, attempts = u.attempts, last_error = u.err, \
                history = CASE WHEN jsonb_array_length(d.history) + jsonb_array_length(u.hist::jsonb) <= $9 \
                               THEN d.history || u.hist::jsonb \
                               ELSE quizflow_cap_history(d.history || u.hist::jsonb, $9) END, \
                claim = CASE WHEN u.status = 'sending' THEN d.claim END, \
                lease_until = CASE WHEN u.status = 'sending' THEN d.lease_until END, \
                calling_at = NULL, \
                next_attempt_at = now() + make_interval(secs => u.retry_in), \
                updated_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::uuid[], \
                     $10::float8[], $11::int2[]) \
              AS u(sub, camp, channel, status, attempts, err, hist, claim, retry_in, step) \
         WHERE d.submission_id = u.sub AND d.campaign_id = u.camp AND d.channel = u.channel AND d.step = u.step \
           AND CASE WHEN u.claim IS NULL \
                    THEN d.status IN ('queued', 'failed') OR (d.status = 'sending' AND d.lease_until < now()) \
                    ELSE d.status = 'sending' AND d.claim = u.claim END \
         RETURNING d.submission_id, d.campaign_id, d.channel, d.step",
    )
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<Text>, _>(&statuses)
    .bind::<Array<Integer>, _>(&attempts)
    .bind::<Array<Nullable<Text>>, _>(&errors)
    .bind::<Array<Text>, _>(&history)
    .bind::<Array<Nullable<SqlUuid>>, _>(&claims)
    .bind::<Integer, _>(HISTORY_CAP)
    .bind::<Array<Nullable<diesel::sql_types::Double>>, _>(&retry_in)
    .bind::<Array<SmallInt>, _>(&steps)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(KeyRow::key).collect())
}

/// A dead letter's row in the `dead_letters` mirror.
#[derive(Debug, Clone)]
pub struct DeadLetterRow<'a> {
    pub id: Uuid,
    pub job: &'a DeliveryJob,
    pub recipient: Option<&'a str>,
    pub class: quizflow_core::DeadClass,
    pub reason: &'a str,
    pub attempts: i32,
    pub history: &'a serde_json::Value,
    pub payload: &'a [u8],
}

/// Mirrors a dead letter into `dead_letters` and marks its ledger row `dead` (under `update`'s
/// claim rules), in one transaction. Returns false, writing nothing, when the row was no
/// longer the caller's to finish.
pub async fn record_dead(
    conn: &mut AsyncPgConnection,
    letter: DeadLetterRow<'_>,
    update: Update,
) -> Result<bool, StoreError> {
    conn.transaction::<bool, StoreError, _>(async move |conn| {
        let applied = write(conn, std::slice::from_ref(&update)).await?;
        if applied.is_empty() {
            return Ok(false);
        }
        let history = storable_json(letter.history);
        diesel::sql_query(
            "INSERT INTO dead_letters (id, kind, channel, submission_id, campaign_id, recipient, class, reason, attempts, history, payload, step) \
             VALUES ($1, 'delivery', $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11) ON CONFLICT (id) DO NOTHING",
        )
        .bind::<SqlUuid, _>(letter.id)
        .bind::<Text, _>(letter.job.channel.as_str())
        .bind::<SqlUuid, _>(letter.job.submission_id.0)
        .bind::<SqlUuid, _>(letter.job.campaign_id)
        .bind::<Nullable<Text>, _>(letter.recipient)
        .bind::<Text, _>(letter.class.as_str())
        .bind::<Text, _>(storable(letter.reason))
        .bind::<Integer, _>(letter.attempts)
        .bind::<Text, _>(history)
        .bind::<diesel::sql_types::Binary, _>(letter.payload)
        .bind::<SmallInt, _>(letter.job.step as i16)
        .execute(conn)
        .await?;
        Ok(true)
    })
    .await
}

/// Ledger rows `sent` for the submissions of one quiz (benchmarks count their progress).
pub async fn count_sent_for_quiz(
    conn: &mut AsyncPgConnection,
    quiz_id: &str,
) -> Result<i64, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query(
        "SELECT count(*) AS n FROM deliveries d JOIN submissions s ON s.id = d.submission_id \
         WHERE d.status = 'sent' AND s.quiz_id = $1",
    )
    .bind::<Text, _>(quiz_id)
    .get_result(conn)
    .await?;
    Ok(n.n)
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
