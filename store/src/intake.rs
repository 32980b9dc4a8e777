//! Bulk writes of a batch: one transaction stores the new submissions and their ledger rows.
//!
//! Multi-row `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING`: one statement per
//! table per batch, whatever its size. `submission_ids` (unpartitioned, unique on `id`) is
//! written first: only ids it did not hold go on to `submissions` and `deliveries`, which is
//! what makes storage at-most-once forever, not just inside JetStream's duplicate window.

use chrono::{DateTime, Datelike, Utc};
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{Array, Integer, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use quizflow_core::{Channel, DeliveryJob, Priority, SubmissionEnvelope, SubmissionId};
use std::collections::HashSet;
use uuid::Uuid;

/// One decoded message of the batch.
pub struct Row<'a> {
    pub envelope: &'a SubmissionEnvelope,
    pub stream_seq: u64,
}

#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// A ledger row as a job (what a re-publish sends).
#[derive(diesel::QueryableByName)]
pub(crate) struct LedgerRow {
    #[diesel(sql_type = SqlUuid)]
    pub(crate) submission_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub(crate) campaign_id: Uuid,
    #[diesel(sql_type = Integer)]
    campaign_version: i32,
    #[diesel(sql_type = Text)]
    pub(crate) channel: String,
    #[diesel(sql_type = Text)]
    priority: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub(crate) status: String,
    #[diesel(sql_type = SmallInt)]
    pub(crate) step: i16,
}

/// The columns of [`LedgerRow`].
pub(crate) const LEDGER_COLUMNS: &str =
    "d.submission_id, d.campaign_id, d.campaign_version, d.channel, d.priority, d.created_at, d.status, d.step";

impl LedgerRow {
    pub(crate) fn job(&self) -> Option<DeliveryJob> {
        let channel = Channel::parse(&self.channel)?;
        let submission_id = SubmissionId(self.submission_id);
        let step = u16::try_from(self.step).ok()?;
        Some(DeliveryJob {
            v: DeliveryJob::VERSION,
            job_id: DeliveryJob::job_id(submission_id, self.campaign_id, channel, step),
            submission_id,
            campaign_id: self.campaign_id,
            campaign_version: self.campaign_version,
            channel,
            priority: Priority::parse(&self.priority).unwrap_or_default(),
            created_at: self.created_at,
            step,
            due_at: None,
        })
    }
}

/// Creates missing monthly partitions for the months of `times` (cached per process).
pub async fn ensure_partitions(
    conn: &mut AsyncPgConnection,
    known: &mut HashSet<(i32, u32)>,
    times: impl Iterator<Item = DateTime<Utc>>,
) -> Result<(), crate::StoreError> {
    let mut missing: Vec<DateTime<Utc>> = Vec::new();
    for t in times {
        if known.insert((t.year(), t.month())) {
            missing.push(t);
        }
    }
    for t in missing {
        diesel::sql_query("SELECT quizflow_ensure_submission_partitions($1, 1)")
            .bind::<Timestamptz, _>(t)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Stores the rows whose ids are new and the ledger rows of their jobs (from `jobs_for`),
/// in one transaction. Returns the indexes of the rows that were new.
pub async fn store_batch(
    conn: &mut AsyncPgConnection,
    rows: &[Row<'_>],
    jobs_for: impl Fn(&HashSet<usize>) -> Vec<DeliveryJob> + Send + Sync,
) -> Result<(HashSet<usize>, Vec<DeliveryJob>), crate::StoreError> {
    conn.transaction::<_, crate::StoreError, _>(async move |conn| {
        {
            let ids: Vec<Uuid> = rows.iter().map(|r| r.envelope.submission_id.0).collect();
            let received: Vec<DateTime<Utc>> = rows.iter().map(|r| r.envelope.received_at).collect();
            let fresh: Vec<IdRow> = diesel::sql_query(
                "INSERT INTO submission_ids (id, received_at) SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[]) \
                 ON CONFLICT (id) DO NOTHING RETURNING id",
            )
            .bind::<Array<SqlUuid>, _>(&ids)
            .bind::<Array<Timestamptz>, _>(&received)
            .load(conn)
            .await?;
            let fresh_ids: HashSet<Uuid> = fresh.into_iter().map(|r| r.id).collect();
            // A batch may hold the same id twice (redelivery racing a retry): store it once.
            let mut taken = HashSet::new();
            let new_rows: HashSet<usize> = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| fresh_ids.contains(&r.envelope.submission_id.0) && taken.insert(r.envelope.submission_id.0))
                .map(|(i, _)| i)
                .collect();
            if !new_rows.is_empty() {
                insert_submissions(conn, rows, &new_rows).await?;
            }
            let jobs = jobs_for(&new_rows);
            if !jobs.is_empty() {
                insert_ledger(conn, &jobs).await?;
            }
            Ok((new_rows, jobs))
        }
    })
    .await
}

async fn insert_submissions(
    conn: &mut AsyncPgConnection,
    rows: &[Row<'_>],
    new_rows: &HashSet<usize>,
) -> Result<(), crate::StoreError> {
    let mut idx: Vec<usize> = new_rows.iter().copied().collect();
    idx.sort_unstable();
    let pick = |f: &dyn Fn(&Row<'_>) -> Option<String>| -> Vec<Option<String>> {
        idx.iter().map(|&i| f(&rows[i])).collect()
    };
    let ids: Vec<Uuid> = idx
        .iter()
        .map(|&i| rows[i].envelope.submission_id.0)
        .collect();
    let quiz: Vec<String> = idx
        .iter()
        .map(|&i| rows[i].envelope.quiz_id.to_string())
        .collect();
    let received: Vec<DateTime<Utc>> = idx.iter().map(|&i| rows[i].envelope.received_at).collect();
    let completed: Vec<DateTime<Utc>> = idx
        .iter()
        .map(|&i| {
            rows[i]
                .envelope
                .submission
                .completed_at
                .unwrap_or(rows[i].envelope.received_at)
        })
        .collect();
    let score: Vec<Option<f64>> = idx
        .iter()
        .map(|&i| rows[i].envelope.submission.score)
        .collect();
    let phone = pick(&|r| r.envelope.submission.respondent.phone.clone());
    let email = pick(&|r| r.envelope.submission.respondent.email.clone());
    let name = pick(&|r| r.envelope.submission.respondent.name.clone());
    let locale = pick(&|r| r.envelope.submission.respondent.locale.clone());
    let json = |f: &dyn Fn(&Row<'_>) -> String| -> Vec<String> {
        idx.iter().map(|&i| f(&rows[i])).collect()
    };
    let answers = json(&|r| {
        serde_json::to_string(&r.envelope.submission.answers).unwrap_or_else(|_| "[]".into())
    });
    let tags = json(&|r| pg_text_array(&r.envelope.submission.tags));
    let metadata = json(&|r| {
        serde_json::to_string(&r.envelope.submission.metadata).unwrap_or_else(|_| "{}".into())
    });
    let key = pick(&|r| {
        r.envelope
            .idempotency_key
            .as_ref()
            .map(|k| k.as_str().to_owned())
    });
    let seq: Vec<i64> = idx.iter().map(|&i| rows[i].stream_seq as i64).collect();
    diesel::sql_query(
        "INSERT INTO submissions (id, quiz_id, received_at, completed_at, score, phone, email, name, locale, \
                                  answers, tags, metadata, idempotency_key, stream_seq) \
         SELECT u.id, u.quiz_id, u.received_at, u.completed_at, u.score, u.phone, u.email, u.name, u.locale, \
                u.answers::json, u.tags::text[], u.metadata::json, u.key, u.seq \
         FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::float8[], $6::text[], $7::text[], \
                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int8[]) \
              AS u(id, quiz_id, received_at, completed_at, score, phone, email, name, locale, answers, tags, metadata, key, seq) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Text>, _>(&quiz)
    .bind::<Array<Timestamptz>, _>(&received)
    .bind::<Array<Timestamptz>, _>(&completed)
    .bind::<Array<Nullable<diesel::sql_types::Double>>, _>(&score)
    .bind::<Array<Nullable<Text>>, _>(&phone)
    .bind::<Array<Nullable<Text>>, _>(&email)
    .bind::<Array<Nullable<Text>>, _>(&name)
    .bind::<Array<Nullable<Text>>, _>(&locale)
    .bind::<Array<Text>, _>(&answers)
    .bind::<Array<Text>, _>(&tags)
    .bind::<Array<Text>, _>(&metadata)
    .bind::<Array<Nullable<Text>>, _>(&key)
    .bind::<Array<diesel::sql_types::BigInt>, _>(&seq)
    .execute(conn)
    .await?;
    Ok(())
}

/// A PostgreSQL array literal (`{"a","b\\"c"}`): a ragged list of lists cannot be
/// unnested, but one text per row cast to `text[]` can, and costs far less than JSON.
fn pg_text_array(items: &[String]) -> String {
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 3).sum::<usize>());
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in item.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// The ledger columns of a set of jobs, as arrays for one `UNNEST` insert.
pub(crate) struct LedgerColumns {
    subs: Vec<Uuid>,
    camps: Vec<Uuid>,
    versions: Vec<i32>,
    channels: Vec<&'static str>,
    priorities: Vec<&'static str>,
    created: Vec<DateTime<Utc>>,
    steps: Vec<i16>,
    due: Vec<Option<DateTime<Utc>>>,
}

impl LedgerColumns {
    pub(crate) fn of(jobs: &[DeliveryJob]) -> Self {
        Self {
            subs: jobs.iter().map(|j| j.submission_id.0).collect(),
            camps: jobs.iter().map(|j| j.campaign_id).collect(),
            versions: jobs.iter().map(|j| j.campaign_version).collect(),
            channels: jobs.iter().map(|j| j.channel.as_str()).collect(),
            priorities: jobs.iter().map(|j| j.priority.as_str()).collect(),
            created: jobs.iter().map(|j| j.created_at).collect(),
            steps: jobs
                .iter()
                .map(|j| i16::try_from(j.step).unwrap_or(i16::MAX))
                .collect(),
            due: jobs.iter().map(|j| j.due_at).collect(),
        }
    }

    /// Ledger rows for every job whose key is not taken (`queued`, or `scheduled` until its
    /// `due_at`); with `returning`, the keys of the rows it created come back.
    pub(crate) fn insert(&self, returning: bool) -> BoxedSqlQuery<'_, Pg, SqlQuery> {
        diesel::sql_query(format!(
            "INSERT INTO deliveries (submission_id, campaign_id, campaign_version, channel, priority, status, created_at, updated_at, step, due_at) \
             SELECT u.sub, u.camp, u.ver, u.channel, u.priority, \
                    CASE WHEN u.due IS NULL THEN 'queued' ELSE 'scheduled' END, u.created, u.created, u.step, u.due \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::text[], $6::timestamptz[], $7::int2[], $8::timestamptz[]) \
                  AS u(sub, camp, ver, channel, priority, created, step, due) \
             ON CONFLICT DO NOTHING{}",
            if returning { " RETURNING submission_id, campaign_id, channel, step" } else { "" }
        ))
        .into_boxed()
        .bind::<Array<SqlUuid>, _>(&self.subs)
        .bind::<Array<SqlUuid>, _>(&self.camps)
        .bind::<Array<Integer>, _>(&self.versions)
        .bind::<Array<Text>, _>(&self.channels)
        .bind::<Array<Text>, _>(&self.priorities)
        .bind::<Array<Timestamptz>, _>(&self.created)
        .bind::<Array<SmallInt>, _>(&self.steps)
        .bind::<Array<Nullable<Timestamptz>>, _>(&self.due)
    }
}

async fn insert_ledger(
    conn: &mut AsyncPgConnection,
    jobs: &[DeliveryJob],
) -> Result<(), crate::StoreError> {
    LedgerColumns::of(jobs).insert(false).execute(conn).await?;
    Ok(())
}

/// Ledger rows still `queued` for submissions stored by an earlier attempt at the same
/// message (`(id, stream_seq)`): their jobs may not have been published before that attempt
/// died, so they are published again (the same batch makes the same chunks, which JetStream
/// drops by `Nats-Msg-Id`; any other copy is sent once, by the worker's claim).
pub async fn queued_jobs(
    conn: &mut AsyncPgConnection,
    submissions: &[(SubmissionId, u64)],
) -> Result<Vec<DeliveryJob>, crate::StoreError> {
    if submissions.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = submissions.iter().map(|s| s.0 .0).collect();
    let seqs: Vec<i64> = submissions
        .iter()
        .map(|s| i64::try_from(s.1).unwrap_or(i64::MAX))
        .collect();
    // Only rows stored from this very message: a copy of the submission in another message
    // (posted again) leaves the jobs to the message that stored it.
    let rows: Vec<LedgerRow> = diesel::sql_query(format!(
        "SELECT {LEDGER_COLUMNS} FROM deliveries d \
         JOIN UNNEST($1::uuid[], $2::bigint[]) AS m(id, seq) ON m.id = d.submission_id \
         WHERE d.status = 'queued' \
           AND EXISTS (SELECT 1 FROM submissions s WHERE s.id = m.id AND s.stream_seq = m.seq)"
    ))
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<diesel::sql_types::BigInt>, _>(&seqs)
    .load(conn)
    .await?;
    Ok(rows.iter().filter_map(LedgerRow::job).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_array_literals_escape_quotes_and_backslashes() {
        assert_eq!(super::pg_text_array(&[]), "{}");
        assert_eq!(
            super::pg_text_array(&["a".into(), "b c".into()]),
            r#"{"a","b c"}"#
        );
        assert_eq!(
            super::pg_text_array(&[r#"q"u\o"#.into(), "{x,y}".into()]),
            r#"{"q\"u\\o","{x,y}"}"#
        );
    }
}
