//! What providers report after accepting a message (status callbacks, contract §2.4): the ledger
//! row moves forward only, `sent` (or `sending`, `failed` when the report outruns the
//! worker's own write or a retry) to `delivered`, or `sending`/`sent` to `dead` for a late
//! failure, with a dead letter. A report about a row that is already further on, or that does
//! not exist, changes nothing.

use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, Bool, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// One row's report: its ledger key and the provider's words (never personal data).
#[derive(Debug, Clone)]
pub struct Delivered {
    pub submission_id: Uuid,
    pub campaign_id: Uuid,
    pub channel: String,
    /// The n-th action of the channel (the ledger key's `step`).
    pub step: u16,
    /// The attempt the report is about, when the reference names one: a report of an earlier
    /// attempt than the row's is stale.
    pub attempt: Option<i32>,
    pub detail: String,
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The row moved.
    Moved,
    /// The row is already as far or further (a repeated or late report).
    Stale,
    /// No such row.
    Unknown,
}

#[derive(diesel::QueryableByName)]
struct Outcome {
    #[diesel(sql_type = Bool)]
    moved: bool,
    #[diesel(sql_type = Bool)]
    known: bool,
}

fn applied(o: &Outcome) -> Applied {
    match (o.moved, o.known) {
        (true, _) => Applied::Moved,
        (false, true) => Applied::Stale,
        (false, false) => Applied::Unknown,
    }
}

/// A report names the attempt under way (`sending`: the row counts the attempts before it)
/// or the last one made (any other status); a report of an earlier attempt moves nothing.
/// Reports without an attempt (references from before attempts were named) apply as before.
const THIS_ATTEMPT: &str =
    "(u.attempt IS NULL OR (d.status = 'sending' AND u.attempt = d.attempts + 1) \
                            OR (d.status <> 'sending' AND u.attempt = d.attempts))";

/// Marks rows `delivered` in one statement; one [`Applied`] per report, in order.
pub async fn delivered(
    conn: &mut AsyncPgConnection,
    reports: &[Delivered],
) -> Result<Vec<Applied>, StoreError> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let subs: Vec<Uuid> = reports.iter().map(|r| r.submission_id).collect();
    let camps: Vec<Uuid> = reports.iter().map(|r| r.campaign_id).collect();
    let channels: Vec<&str> = reports.iter().map(|r| r.channel.as_str()).collect();
    let details: Vec<&str> = reports.iter().map(|r| r.detail.as_str()).collect();
    let ords: Vec<i32> = (0..reports.len() as i32).collect();
    let steps: Vec<i16> = reports.iter().map(|r| r.step as i16).collect();
    let attempts: Vec<Option<i32>> = reports.iter().map(|r| r.attempt).collect();
    let fallbacks: Vec<i16> = reports.iter().map(fallback_of).collect();
    // A delivered first message cancels its fallback while that waits (contract §3.3).
    let rows: Vec<Outcome> = diesel::sql_query(format!(
        "WITH u AS (SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[], $7::int2[], $8::int4[], $9::int2[]) \
                    AS u(sub, camp, channel, detail, ord, step, attempt, fb_step)), \
         m AS (UPDATE deliveries d SET status = 'delivered', updated_at = now(), \
                 history = quizflow_cap_history(d.history || jsonb_build_array(jsonb_build_object( \
                   'at', now(), 'outcome', 'delivered', 'detail', u.detail)), $6) \
               FROM u WHERE d.submission_id = u.sub AND d.campaign_id = u.camp AND d.channel = u.channel \
                 AND d.step = u.step AND d.status IN ('sending', 'sent', 'failed') \
                 AND {THIS_ATTEMPT} \
               RETURNING d.submission_id, d.campaign_id, d.channel, d.step, u.fb_step), \
         f AS (UPDATE deliveries f SET status = 'cancelled', updated_at = now(), \
                 last_error = 'the first message was delivered before the fallback was due', \
                 history = f.history || jsonb_build_array(jsonb_build_object('at', now(), 'outcome', 'cancelled', \
                   'detail', 'the first message (' || m.channel || ') was delivered')) \
               FROM m WHERE f.submission_id = m.submission_id AND f.campaign_id = m.campaign_id \
                 AND f.step = m.fb_step AND f.status = 'scheduled') \
         SELECT EXISTS (SELECT 1 FROM m WHERE m.submission_id = u.sub AND m.campaign_id = u.camp AND m.channel = u.channel \
                          AND m.step = u.step) AS moved, \
                EXISTS (SELECT 1 FROM deliveries d WHERE d.submission_id = u.sub AND d.campaign_id = u.camp AND d.channel = u.channel \
                          AND d.step = u.step) AS known \
         FROM u ORDER BY u.ord"
    ))
    .bind::<Array<SqlUuid>, _>(&subs)
    .bind::<Array<SqlUuid>, _>(&camps)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<Text>, _>(&details)
    .bind::<Array<Integer>, _>(&ords)
    .bind::<Integer, _>(crate::deliveries::HISTORY_CAP)
    .bind::<Array<SmallInt>, _>(&steps)
    .bind::<Array<Nullable<Integer>>, _>(&attempts)
    .bind::<Array<SmallInt>, _>(&fallbacks)
    .load(conn)
    .await?;
    Ok(rows.iter().map(applied).collect())
}

/// The ledger step of a report's fallback; -1 (no row) for a step that has none: a fallback's
/// own, or a recurring occurrence's.
fn fallback_of(r: &Delivered) -> i16 {
    match quizflow_core::Channel::parse(&r.channel) {
        Some(c) if r.step < quizflow_core::schedule::STEP_STRIDE => {
            quizflow_core::fallback_step(c, r.step) as i16
        }
        _ => -1,
    }
}

/// The ledger rows of messages a provider knows by its own id (Evolution's `keyId`): each id
/// found, with its row's key, ready for [`delivered`] (no attempt named: the id is the one
/// the last `sent` write recorded).
pub async fn keys_of_messages(
    conn: &mut AsyncPgConnection,
    ids: &[String],
) -> Result<Vec<(String, Delivered)>, StoreError> {
    // The embedded row's derive names the trait unqualified.
    use diesel::QueryableByName;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        provider_message_id: String,
        #[diesel(embed)]
        key: crate::deliveries::KeyRow,
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT provider_message_id, submission_id, campaign_id, channel, step FROM deliveries \
         WHERE provider_message_id = ANY($1)",
    )
    .bind::<Array<Text>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let key = Delivered {
                submission_id: r.key.submission_id,
                campaign_id: r.key.campaign_id,
                channel: r.key.channel,
                step: u16::try_from(r.key.step).unwrap_or_default(),
                attempt: None,
                detail: String::new(),
            };
            (r.provider_message_id, key)
        })
        .collect())
}

/// A late failure turned into a dead letter: what the `DEAD_LETTERS` copy needs.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct LateFailure {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    pub recipient: Option<String>,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Jsonb)]
    pub history: serde_json::Value,
    #[diesel(sql_type = Integer)]
    pub campaign_version: i32,
    #[diesel(sql_type = Text)]
    pub priority: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// Moves a `sending`/`sent` row to `dead` and mirrors its dead letter (class `permanent`,
/// the provider's reason), in one transaction. `Ok(None)` with [`Applied::Stale`] or
/// [`Applied::Unknown`] when nothing moved.
pub async fn failed(
    conn: &mut AsyncPgConnection,
    report: &Delivered,
) -> Result<(Applied, Option<LateFailure>), StoreError> {
    let r = report.clone();
    conn.transaction::<_, StoreError, _>(async move |conn| {
        let letter: Vec<LateFailure> = diesel::sql_query(
            "WITH m AS (UPDATE deliveries d SET status = 'dead', last_error = $4, updated_at = now(), \
                   claim = NULL, lease_until = NULL, \
                   history = quizflow_cap_history(d.history || jsonb_build_array(jsonb_build_object( \
                     'at', now(), 'outcome', 'permanent', 'detail', $4)), $5) \
                 WHERE d.submission_id = $1 AND d.campaign_id = $2 AND d.channel = $3 AND d.step = $7 \
                   AND d.status IN ('sending', 'sent') \
                   AND ($8::int4 IS NULL OR (d.status = 'sending' AND $8 = d.attempts + 1) \
                        OR (d.status <> 'sending' AND $8 = d.attempts)) \
                 RETURNING d.attempts, d.history, d.campaign_version, d.priority, d.created_at), \
             f AS (UPDATE deliveries f SET due_at = now(), updated_at = now() FROM m \
                   WHERE f.submission_id = $1 AND f.campaign_id = $2 AND f.step = $9 \
                     AND f.status = 'scheduled' AND f.due_at > now()) \
             INSERT INTO dead_letters (id, kind, channel, submission_id, campaign_id, recipient, class, reason, attempts, history, payload, step) \
             SELECT gen_random_uuid(), 'delivery', $3, $1, $2, \
                    (SELECT CASE WHEN $3 = 'email' THEN s.email ELSE s.phone END FROM submissions s WHERE s.id = $1 LIMIT 1), \
                    'permanent', $4, m.attempts, m.history, \
                    convert_to(json_build_object('v', 1, 'job_id', $6::uuid, 'submission_id', $1::uuid, 'campaign_id', $2::uuid, \
                      'campaign_version', m.campaign_version, 'channel', $3::text, 'priority', m.priority, \
                      'created_at', m.created_at, 'step', $7)::text, 'UTF8'), $7 \
             FROM m \
             RETURNING id, recipient, attempts, history, \
                    (SELECT campaign_version FROM m) AS campaign_version, (SELECT priority FROM m) AS priority, \
                    (SELECT created_at FROM m) AS created_at",
        )
        .bind::<SqlUuid, _>(r.submission_id)
        .bind::<SqlUuid, _>(r.campaign_id)
        .bind::<Text, _>(&r.channel)
        .bind::<Text, _>(&r.detail)
        .bind::<Integer, _>(crate::deliveries::HISTORY_CAP)
        .bind::<SqlUuid, _>(job_id(&r))
        .bind::<SmallInt, _>(r.step as i16)
        .bind::<Nullable<Integer>, _>(r.attempt)
        // A late failure arms a waiting fallback at once: no receipt will come now.
        .bind::<SmallInt, _>(fallback_of(&r))
        .load(conn)
        .await?;
        if let Some(l) = letter.into_iter().next() {
            return Ok((Applied::Moved, Some(l)));
        }
        let known: Vec<Outcome> = diesel::sql_query(
            "SELECT false AS moved, EXISTS (SELECT 1 FROM deliveries WHERE submission_id = $1 \
               AND campaign_id = $2 AND channel = $3 AND step = $4) AS known",
        )
        .bind::<SqlUuid, _>(r.submission_id)
        .bind::<SqlUuid, _>(r.campaign_id)
        .bind::<Text, _>(&r.channel)
        .bind::<SmallInt, _>(r.step as i16)
        .load(conn)
        .await?;
        Ok((
            <[_]>::first(&known).map(applied).unwrap_or(Applied::Unknown),
            None,
        ))
    })
    .await
}

fn job_id(r: &Delivered) -> Uuid {
    match quizflow_core::Channel::parse(&r.channel) {
        Some(c) => quizflow_core::DeliveryJob::job_id(
            quizflow_core::SubmissionId(r.submission_id),
            r.campaign_id,
            c,
            r.step,
        ),
        None => Uuid::nil(),
    }
}

/// Whether a webhook delivery (by its sender's id, e.g. `svix-id`) was applied before.
pub async fn webhook_seen(conn: &mut AsyncPgConnection, id: &str) -> Result<bool, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Seen {
        #[diesel(sql_type = Bool)]
        seen: bool,
    }
    let s: Seen = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM webhook_ids WHERE id = $1 AND seen_at > now() - interval '10 minutes') AS seen",
    )
    .bind::<Text, _>(id)
    .get_result(conn)
    .await?;
    Ok(s.seen)
}

/// Records a webhook delivery as applied (and forgets those older than 10 minutes: past the
/// signature's 5-minute window a replay is refused by its timestamp anyway).
pub async fn webhook_applied(conn: &mut AsyncPgConnection, id: &str) -> Result<(), StoreError> {
    diesel::sql_query(
        "WITH old AS (DELETE FROM webhook_ids WHERE seen_at < now() - interval '10 minutes') \
         INSERT INTO webhook_ids (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET seen_at = now()",
    )
    .bind::<Text, _>(id)
    .execute(conn)
    .await?;
    Ok(())
}
