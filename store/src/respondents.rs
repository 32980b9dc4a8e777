//! A person's data on request (the LGPD/GDPR access right): every stored submission of a phone
//! and/or an e-mail address with its ledger rows (histories included) and its dead letters,
//! paged by receipt time over the same lookups erasure uses. The suppression list holds only
//! keyed hashes: the caller reads it by the person's hashes ([`crate::consent::list`]).

use crate::dead_letters::DeadLetter;
use crate::submissions::{StoredRow, STORED_COLUMNS};
use crate::StoreError;
use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, BigInt, Jsonb, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;

/// Where a page ends: the next page starts after this submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct After {
    pub received_at: DateTime<Utc>,
    pub id: Uuid,
}

/// One page of a person's data.
#[derive(Debug, Serialize)]
pub struct Page {
    /// Each in the `GET /v1/submissions/{id}` shape, with every ledger row and its history.
    pub submissions: Vec<serde_json::Value>,
    /// Dead letters of these submissions; on the first page also those naming the person
    /// without a submission of theirs.
    pub dead_letters: Vec<DeadLetter>,
    pub next: Option<After>,
}

#[derive(Debug, Serialize, diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = SqlUuid)]
    #[serde(skip)]
    submission_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    campaign_id: Uuid,
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = SmallInt)]
    step: i16,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Jsonb)]
    history: serde_json::Value,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    due_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

/// Up to `limit` of the person's submissions after `after`, with their rows and dead letters.
pub async fn page(
    conn: &mut AsyncPgConnection,
    phone: Option<&str>,
    email: Option<&str>,
    after: Option<After>,
    limit: i64,
) -> Result<Page, StoreError> {
    let start = after.unwrap_or(After {
        received_at: DateTime::<Utc>::UNIX_EPOCH,
        id: Uuid::nil(),
    });
    let rows: Vec<StoredRow> = diesel::sql_query(format!(
        "SELECT {STORED_COLUMNS} FROM submissions s \
         WHERE s.id IN (SELECT id FROM submissions WHERE phone = $1 \
                        UNION SELECT id FROM submissions WHERE lower(email) = lower($2)) \
           AND (s.received_at, s.id) > ($3, $4) \
         ORDER BY s.received_at, s.id LIMIT $5"
    ))
    .bind::<Nullable<Text>, _>(phone)
    .bind::<Nullable<Text>, _>(email)
    .bind::<Timestamptz, _>(start.received_at)
    .bind::<SqlUuid, _>(start.id)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| {
            rows.last().map(|r| After {
                received_at: r.received_at,
                id: r.id,
            })
        })
        .flatten();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let ledger: Vec<Row> = diesel::sql_query(
        "SELECT submission_id, campaign_id, channel, step, status, attempts, last_error, history, due_at, created_at, updated_at \
         FROM deliveries WHERE submission_id = ANY($1) ORDER BY created_at, campaign_id, channel, step",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .load(conn)
    .await?;
    let mut by_submission: HashMap<Uuid, Vec<Row>> = HashMap::new();
    for r in ledger {
        by_submission.entry(r.submission_id).or_default().push(r);
    }
    let submissions = rows
        .into_iter()
        .map(|r| {
            let id = r.id;
            let mut v = r.json();
            v["deliveries"] = serde_json::to_value(by_submission.remove(&id).unwrap_or_default())
                .unwrap_or_default();
            v
        })
        .collect();
    let first = after.is_none();
    let dead_letters: Vec<DeadLetter> = diesel::sql_query(
        "SELECT id, kind, channel, submission_id, campaign_id, recipient, class, reason, attempts, history, failed_at \
         FROM dead_letters WHERE submission_id = ANY($1) \
            OR ($2 AND (lower(recipient) = lower($3) OR lower(recipient) = lower($4)) \
                AND (submission_id IS NULL OR NOT submission_id IN \
                     (SELECT id FROM submissions WHERE phone = $3 \
                      UNION SELECT id FROM submissions WHERE lower(email) = lower($4)))) \
         ORDER BY failed_at",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<diesel::sql_types::Bool, _>(first)
    .bind::<Nullable<Text>, _>(phone)
    .bind::<Nullable<Text>, _>(email)
    .load(conn)
    .await?;
    Ok(Page {
        submissions,
        dead_letters,
        next,
    })
}

/// The suppression-list entries of a person's hashes (`(channel, hash)`, e.g. from
/// `HashKey::person_hashes`), up to 1,000 per channel.
pub async fn suppressions(
    conn: &mut AsyncPgConnection,
    hashes: &[(quizflow_core::Channel, [u8; 32])],
) -> Result<Vec<crate::consent::Suppression>, StoreError> {
    let mut out = Vec::new();
    for (channel, hash) in hashes {
        let found =
            crate::consent::list(conn, Some(channel.as_str()), Some(hash), None, None, 1000)
                .await?;
        out.extend(found);
    }
    Ok(out)
}
