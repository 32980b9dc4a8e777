//! Batched, forward-only status writes, and dead letters mirrored with their ledger row.

use super::{Key, KeyRow, HISTORY_CAP};
use crate::StoreError;
use diesel::sql_types::{Array, Integer, Nullable, SmallInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_core::{DeliveryJob, DeliveryStatus};
use uuid::Uuid;

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
    /// The provider's id of the message, for providers whose reports name only it
    /// (Evolution): [`crate::reports::keys_of_messages`] finds the row by it.
    pub provider_message_id: Option<String>,
    /// The action's fallback, armed by this outcome: its ledger row is written `scheduled`,
    /// due after `due_in`, in the same statement (only if this write applies).
    pub fallback: Option<Arm>,
}

/// A fallback armed by an outcome (contract §3.3): the row it writes, and when it is due.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub channel: String,
    /// The fallback's ledger step ([`quizflow_core::fallback_step`]).
    pub step: u16,
    /// From now, on the database's clock.
    pub due_in: std::time::Duration,
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

/// The batched status write, and the fallback rows its updates arm (see [`write`]).
const WRITE: &str = "WITH upd AS (UPDATE deliveries d SET status = u.status, attempts = u.attempts, last_error = u.err, \
                history = CASE WHEN jsonb_array_length(d.history) + jsonb_array_length(u.hist::jsonb) <= $9 \
                               THEN d.history || u.hist::jsonb \
                               ELSE quizflow_cap_history(d.history || u.hist::jsonb, $9) END, \
                claim = CASE WHEN u.status = 'sending' THEN d.claim END, \
                lease_until = CASE WHEN u.status = 'sending' THEN d.lease_until END, \
                calling_at = NULL, \
                provider_message_id = COALESCE(u.pmid, d.provider_message_id), \
                next_attempt_at = now() + make_interval(secs => u.retry_in), \
                updated_at = now() \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::uuid[], \
                     $10::float8[], $11::int2[], $12::text[], $13::text[], $14::int2[], $15::float8[]) \
              AS u(sub, camp, channel, status, attempts, err, hist, claim, retry_in, step, pmid, fb_channel, fb_step, fb_due) \
         WHERE d.submission_id = u.sub AND d.campaign_id = u.camp AND d.channel = u.channel AND d.step = u.step \
           AND CASE WHEN u.claim IS NULL \
                    THEN d.status IN ('queued', 'failed') OR (d.status = 'sending' AND d.lease_until < now()) \
                    ELSE d.status = 'sending' AND d.claim = u.claim END \
         RETURNING d.submission_id, d.campaign_id, d.channel, d.step, d.campaign_version, d.priority, d.cancel_key, \
                   u.fb_channel, u.fb_step, u.fb_due), \
         fb AS (INSERT INTO deliveries (submission_id, campaign_id, campaign_version, channel, priority, status, step, due_at, cancel_key) \
                SELECT upd.submission_id, upd.campaign_id, upd.campaign_version, upd.fb_channel, upd.priority, 'scheduled', \
                       upd.fb_step, now() + make_interval(secs => upd.fb_due), upd.cancel_key \
                FROM upd WHERE upd.fb_channel IS NOT NULL \
                  AND NOT EXISTS (SELECT 1 FROM submissions s WHERE s.id = upd.submission_id AND s.erased_at IS NOT NULL) \
                ON CONFLICT DO NOTHING) \
         SELECT submission_id, campaign_id, channel, step FROM upd";

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
    let pmids: Vec<Option<&str>> = updates
        .iter()
        .map(|u| u.provider_message_id.as_deref())
        .collect();
    let fb_channels: Vec<Option<&str>> = updates
        .iter()
        .map(|u| u.fallback.as_ref().map(|f| f.channel.as_str()))
        .collect();
    let fb_steps: Vec<i16> = updates
        .iter()
        .map(|u| u.fallback.as_ref().map_or(0, |f| f.step as i16))
        .collect();
    let fb_due: Vec<f64> = updates
        .iter()
        .map(|u| u.fallback.as_ref().map_or(0.0, |f| f.due_in.as_secs_f64()))
        .collect();
    // One statement: the outcome and the fallback row it arms land together or not at all.
    // No fallback is written for a person erased meanwhile.
    let rows: Vec<KeyRow> = diesel::sql_query(WRITE)
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
        .bind::<Array<Nullable<Text>>, _>(&pmids)
        .bind::<Array<Nullable<Text>>, _>(&fb_channels)
        .bind::<Array<SmallInt>, _>(&fb_steps)
        .bind::<Array<diesel::sql_types::Double>, _>(&fb_due)
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
