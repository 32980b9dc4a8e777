//! Bulk writes of a batch: one transaction stores the new submissions and their ledger rows.
//!
//! Multi-row `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING`: one statement per
//! table per batch, whatever its size. `submission_ids` (unpartitioned, unique on `id`) is
//! written first: only ids it did not hold go on to `submissions` and `deliveries`, which is
//! what makes storage at-most-once forever, not just inside JetStream's duplicate window.
//!
//! These writes go through tokio-postgres, not diesel-async, so a failure keeps its SQLSTATE:
//! a full disk (53100) must never be read as a bad lead.

use crate::{ErrorKind, Pool, StoreError};
use chrono::{DateTime, Datelike, Utc};
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{Array, Integer, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use quizflow_core::{Channel, DeliveryJob, Priority, SubmissionEnvelope, SubmissionId};
use std::collections::HashSet;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

pub use crate::plan::Plan;

/// One decoded message of the batch.
pub struct Row<'a> {
    pub envelope: &'a SubmissionEnvelope,
    pub stream_seq: u64,
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
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) cancel_key: Option<String>,
}

/// The columns of [`LedgerRow`].
pub(crate) const LEDGER_COLUMNS: &str =
    "d.submission_id, d.campaign_id, d.campaign_version, d.channel, d.priority, d.created_at, d.status, d.step, d.cancel_key";

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
            repeat_until: None,
            cancel_key: self.cancel_key.clone(),
        })
    }
}

/// Creates missing monthly partitions for the months of `times` (cached per process in
/// `known`; a partition dropped behind the cache's back is created again by [`store_batch`]).
pub async fn ensure_partitions(
    pool: &Pool,
    known: &mut HashSet<(i32, u32)>,
    times: impl Iterator<Item = DateTime<Utc>>,
) -> Result<(), StoreError> {
    let mut missing: Vec<DateTime<Utc>> = Vec::new();
    for t in times {
        if !known.contains(&(t.year(), t.month())) {
            missing.push(t);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let conn = pool.raw().await?;
    create_partitions(&conn.client, missing.iter().copied()).await?;
    known.extend(missing.iter().map(|t| (t.year(), t.month())));
    Ok(())
}

async fn create_partitions(
    client: &tokio_postgres::Client,
    times: impl Iterator<Item = DateTime<Utc>>,
) -> Result<(), StoreError> {
    let mut months = std::collections::BTreeSet::new();
    for t in times {
        if months.insert((t.year(), t.month())) {
            client
                .execute("SELECT quizflow_ensure_submission_partitions($1, 1)", &[&t])
                .await?;
        }
    }
    Ok(())
}

/// Stores the rows whose ids are new and the ledger rows of their jobs (from `jobs_for`),
/// in one transaction. Returns the indexes of the rows that were new.
///
/// Runs on tokio-postgres so a failure keeps its SQLSTATE ([`StoreError::retry`] tells the
/// data's fault from the server's). A row no partition takes (dropped or never created) gets
/// its partition and the transaction is tried once more.
pub async fn store_batch(
    pool: &Pool,
    rows: &[Row<'_>],
    jobs_for: impl Fn(&HashSet<usize>) -> Plan + Send + Sync,
) -> Result<(HashSet<usize>, Plan), StoreError> {
    let mut conn = pool.raw().await?;
    match store_once(&mut conn.client, rows, &jobs_for).await {
        Err(e) if e.kind() == ErrorKind::MissingPartition => {
            tracing::warn!("a submission had no partition; creating it and storing again");
            create_partitions(&conn.client, rows.iter().map(|r| r.envelope.received_at)).await?;
            store_once(&mut conn.client, rows, &jobs_for).await
        }
        other => other,
    }
}

async fn store_once(
    client: &mut tokio_postgres::Client,
    rows: &[Row<'_>],
    jobs_for: &(impl Fn(&HashSet<usize>) -> Plan + Send + Sync),
) -> Result<(HashSet<usize>, Plan), StoreError> {
    let tx = client.transaction().await?;
    // Erasures wait for this transaction, or it sees their tombstones (`erase::barrier`).
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&crate::erase::BARRIER_LOCK],
    )
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.envelope.submission_id.0).collect();
    let received: Vec<DateTime<Utc>> = rows.iter().map(|r| r.envelope.received_at).collect();
    let fresh = tx
        .query(
            "INSERT INTO submission_ids (id, received_at) SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[]) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
            &[&ids, &received],
        )
        .await?;
    let fresh_ids: HashSet<Uuid> = fresh
        .iter()
        .map(|r| r.try_get::<_, Uuid>(0))
        .collect::<Result<_, _>>()?;
    // A batch may hold the same id twice (redelivery racing a retry): store it once.
    let mut taken = HashSet::new();
    let new_rows: HashSet<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            fresh_ids.contains(&r.envelope.submission_id.0)
                && taken.insert(r.envelope.submission_id.0)
        })
        .map(|(i, _)| i)
        .collect();
    let mut matched = new_rows.clone();
    if !new_rows.is_empty() {
        let mut idx: Vec<usize> = new_rows.iter().copied().collect();
        idx.sort_unstable();
        // A person erased after this lead was received: it is stored without them (the id
        // and the counts stay right) and matched for nothing.
        let erased = erased_rows(&tx, rows, &idx).await?;
        for i in &erased {
            matched.remove(i);
        }
        let cols = SubmissionColumns::of(rows, &idx, &erased);
        tx.execute(INSERT_SUBMISSIONS, &cols.params()).await?;
        if !erased.is_empty() {
            let ids: Vec<Uuid> = erased
                .iter()
                .map(|&i| rows[i].envelope.submission_id.0)
                .collect();
            tx.execute(
                "UPDATE submissions SET erased_at = now() WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        }
    }
    let mut plan = jobs_for(&matched);
    crate::plan::spread(&tx, &mut plan).await?;
    if !plan.jobs.is_empty() {
        let ledger = LedgerColumns::of(&plan.jobs);
        tx.execute(INSERT_LEDGER, &ledger.params()).await?;
    }
    crate::plan::write_suppressed(&tx, &plan.suppressed).await?;
    tx.commit().await?;
    Ok((new_rows, plan))
}

/// Rows of `idx` whose phone or e-mail was erased after the row was received. One statement;
/// with no tombstone at all it reads nothing (a one-time filter).
async fn erased_rows(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[Row<'_>],
    idx: &[usize],
) -> Result<HashSet<usize>, StoreError> {
    let sub = |i: usize| &rows[i].envelope.submission.respondent;
    let phones: Vec<Option<&str>> = idx.iter().map(|&i| sub(i).phone.as_deref()).collect();
    let emails: Vec<Option<&str>> = idx.iter().map(|&i| sub(i).email.as_deref()).collect();
    let received: Vec<DateTime<Utc>> = idx.iter().map(|&i| rows[i].envelope.received_at).collect();
    let found = tx
        .query(
            "SELECT u.ord FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS u(phone, email, received, ord) \
             WHERE EXISTS (SELECT 1 FROM erasures) \
               AND EXISTS (SELECT 1 FROM erasures e \
                           WHERE e.contact IN (quizflow_contact_hash('phone', u.phone), quizflow_contact_hash('email', lower(u.email))) \
                             AND e.erased_at > u.received)",
            &[&phones, &emails, &received],
        )
        .await?;
    let mut out = HashSet::with_capacity(found.len());
    for r in found {
        let ord: i64 = r.try_get(0)?;
        if let Some(&i) = usize::try_from(ord - 1).ok().and_then(|o| idx.get(o)) {
            out.insert(i);
        }
    }
    Ok(out)
}

/// Can the server take a write of a submission received at `received_at` right now? The
/// same tables, the same partition, in a transaction that is rolled back. A lead the
/// database refused alone is called unstorable only when this succeeds: a refusal while the
/// server cannot write anything is the server's trouble, whatever its SQLSTATE said.
pub async fn write_probe(pool: &Pool, received_at: DateTime<Utc>) -> Result<(), StoreError> {
    let mut conn = pool.raw().await?;
    let tx = conn.client.transaction().await?;
    let id = Uuid::new_v4();
    tx.execute(
        "INSERT INTO submission_ids (id, received_at) VALUES ($1, $2)",
        &[&id, &received_at],
    )
    .await?;
    tx.execute(
        "INSERT INTO submissions (id, quiz_id, received_at, completed_at, answers, tags, metadata, stream_seq) \
         VALUES ($1, 'quizflow-write-probe', $2, $2, '[]', '{}', '{}', 0)",
        &[&id, &received_at],
    )
    .await?;
    tx.rollback().await?;
    Ok(())
}

const INSERT_SUBMISSIONS: &str =
    "INSERT INTO submissions (id, quiz_id, received_at, completed_at, score, phone, email, name, locale, \
                              answers, tags, metadata, idempotency_key, stream_seq, timezone) \
     SELECT u.id, u.quiz_id, u.received_at, u.completed_at, u.score, u.phone, u.email, u.name, u.locale, \
            u.answers::json, u.tags::text[], u.metadata::json, u.key, u.seq, u.tz \
     FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::float8[], $6::text[], $7::text[], \
                 $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int8[], $15::text[]) \
          AS u(id, quiz_id, received_at, completed_at, score, phone, email, name, locale, answers, tags, metadata, key, seq, tz) \
     ON CONFLICT DO NOTHING";

/// The `submissions` columns of the new rows of a batch, as arrays for one `UNNEST` insert.
struct SubmissionColumns {
    ids: Vec<Uuid>,
    quiz: Vec<String>,
    received: Vec<DateTime<Utc>>,
    completed: Vec<DateTime<Utc>>,
    score: Vec<Option<f64>>,
    phone: Vec<Option<String>>,
    email: Vec<Option<String>>,
    name: Vec<Option<String>>,
    locale: Vec<Option<String>>,
    answers: Vec<String>,
    tags: Vec<String>,
    metadata: Vec<String>,
    key: Vec<Option<String>>,
    seq: Vec<i64>,
    timezone: Vec<Option<String>>,
}

impl SubmissionColumns {
    /// The columns of rows `idx`; those in `erased` without the person (no contact, name,
    /// locale, answers, metadata or key).
    fn of(rows: &[Row<'_>], idx: &[usize], erased: &HashSet<usize>) -> Self {
        let sub = |i: usize| &rows[i].envelope.submission;
        let kept = |i: usize| !erased.contains(&i);
        let opt = |f: &dyn Fn(usize) -> Option<String>| -> Vec<Option<String>> {
            idx.iter()
                .map(|&i| if kept(i) { f(i) } else { None })
                .collect()
        };
        Self {
            ids: idx
                .iter()
                .map(|&i| rows[i].envelope.submission_id.0)
                .collect(),
            quiz: idx
                .iter()
                .map(|&i| rows[i].envelope.quiz_id.to_string())
                .collect(),
            received: idx.iter().map(|&i| rows[i].envelope.received_at).collect(),
            completed: idx
                .iter()
                .map(|&i| sub(i).completed_at.unwrap_or(rows[i].envelope.received_at))
                .collect(),
            score: idx.iter().map(|&i| sub(i).score).collect(),
            phone: opt(&|i| sub(i).respondent.phone.clone()),
            email: opt(&|i| sub(i).respondent.email.clone()),
            name: opt(&|i| sub(i).respondent.name.clone()),
            locale: opt(&|i| sub(i).respondent.locale.clone()),
            timezone: opt(&|i| sub(i).respondent.timezone.clone()),
            answers: idx
                .iter()
                .map(|&i| match kept(i) {
                    true => serde_json::to_string(&sub(i).answers).unwrap_or_else(|_| "[]".into()),
                    false => "[]".into(),
                })
                .collect(),
            tags: idx.iter().map(|&i| pg_text_array(&sub(i).tags)).collect(),
            metadata: idx
                .iter()
                .map(|&i| match kept(i) {
                    true => serde_json::to_string(&sub(i).metadata).unwrap_or_else(|_| "{}".into()),
                    false => "{}".into(),
                })
                .collect(),
            key: opt(&|i| {
                rows[i]
                    .envelope
                    .idempotency_key
                    .as_ref()
                    .map(|k| k.as_str().to_owned())
            }),
            seq: idx
                .iter()
                .map(|&i| i64::try_from(rows[i].stream_seq).unwrap_or(i64::MAX))
                .collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        [
            &self.ids,
            &self.quiz,
            &self.received,
            &self.completed,
            &self.score,
            &self.phone,
            &self.email,
            &self.name,
            &self.locale,
            &self.answers,
            &self.tags,
            &self.metadata,
            &self.key,
            &self.seq,
            &self.timezone,
        ]
    }
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
pub(crate) struct LedgerColumns<'a> {
    subs: Vec<Uuid>,
    camps: Vec<Uuid>,
    versions: Vec<i32>,
    channels: Vec<&'static str>,
    priorities: Vec<&'static str>,
    created: Vec<DateTime<Utc>>,
    steps: Vec<i16>,
    due: Vec<Option<DateTime<Utc>>>,
    repeat_until: Vec<Option<DateTime<Utc>>>,
    cancel_keys: Vec<Option<&'a str>>,
}

impl<'a> LedgerColumns<'a> {
    pub(crate) fn of(jobs: &'a [DeliveryJob]) -> Self {
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
            repeat_until: jobs.iter().map(|j| j.repeat_until).collect(),
            cancel_keys: jobs.iter().map(|j| j.cancel_key.as_deref()).collect(),
        }
    }

    /// Ledger rows for every job whose key is not taken (`queued`, or `scheduled` until its
    /// `due_at`); with `returning`, the keys of the rows it created come back.
    pub(crate) fn insert(&self, returning: bool) -> BoxedSqlQuery<'_, Pg, SqlQuery> {
        diesel::sql_query(if returning {
            format!("{INSERT_LEDGER} RETURNING submission_id, campaign_id, channel, step")
        } else {
            INSERT_LEDGER.to_owned()
        })
        .into_boxed()
        .bind::<Array<SqlUuid>, _>(&self.subs)
        .bind::<Array<SqlUuid>, _>(&self.camps)
        .bind::<Array<Integer>, _>(&self.versions)
        .bind::<Array<Text>, _>(&self.channels)
        .bind::<Array<Text>, _>(&self.priorities)
        .bind::<Array<Timestamptz>, _>(&self.created)
        .bind::<Array<SmallInt>, _>(&self.steps)
        .bind::<Array<Nullable<Timestamptz>>, _>(&self.due)
        .bind::<Array<Nullable<Timestamptz>>, _>(&self.repeat_until)
        .bind::<Array<Nullable<Text>>, _>(&self.cancel_keys)
    }

    /// The key, version, priority and creation columns (the first seven parameters).
    pub(crate) fn params_without_schedule(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params()[..7].to_vec()
    }

    /// The same columns as tokio-postgres parameters of [`INSERT_LEDGER`].
    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.subs,
            &self.camps,
            &self.versions,
            &self.channels,
            &self.priorities,
            &self.created,
            &self.steps,
            &self.due,
            &self.repeat_until,
            &self.cancel_keys,
        ]
    }
}

/// Ledger rows for jobs whose key is not taken: `queued`, or `scheduled` until `due_at`.
const INSERT_LEDGER: &str =
    "INSERT INTO deliveries (submission_id, campaign_id, campaign_version, channel, priority, status, created_at, updated_at, step, due_at, repeat_until, cancel_key) \
     SELECT u.sub, u.camp, u.ver, u.channel, u.priority, \
            CASE WHEN u.due IS NULL THEN 'queued' ELSE 'scheduled' END, u.created, u.created, u.step, u.due, u.repeat_until, u.cancel_key \
     FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::text[], $6::timestamptz[], $7::int2[], $8::timestamptz[], $9::timestamptz[], $10::text[]) \
          AS u(sub, camp, ver, channel, priority, created, step, due, repeat_until, cancel_key) \
     ON CONFLICT DO NOTHING";

/// Ledger rows still `queued` for submissions stored by an earlier attempt at the same
/// message (`(id, stream_seq)`): their jobs may not have been published before that attempt
/// died, so they are published again (the same batch makes the same chunks, which JetStream
/// drops by `Nats-Msg-Id`; any other copy is sent once, by the worker's claim).
pub async fn queued_jobs(
    pool: &Pool,
    submissions: &[(SubmissionId, u64)],
) -> Result<Vec<DeliveryJob>, StoreError> {
    if submissions.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = submissions.iter().map(|s| s.0 .0).collect();
    let seqs: Vec<i64> = submissions
        .iter()
        .map(|s| i64::try_from(s.1).unwrap_or(i64::MAX))
        .collect();
    let conn = pool.raw().await?;
    // Only rows stored from this very message: a copy of the submission in another message
    // (posted again) leaves the jobs to the message that stored it.
    let rows = conn
        .client
        .query(
            &format!(
                "SELECT {LEDGER_COLUMNS} FROM deliveries d \
                 JOIN UNNEST($1::uuid[], $2::bigint[]) AS m(id, seq) ON m.id = d.submission_id \
                 WHERE d.status = 'queued' \
                   AND EXISTS (SELECT 1 FROM submissions s WHERE s.id = m.id AND s.stream_seq = m.seq)"
            ),
            &[&ids, &seqs],
        )
        .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let row = LedgerRow {
            submission_id: r.try_get(0)?,
            campaign_id: r.try_get(1)?,
            campaign_version: r.try_get(2)?,
            channel: r.try_get(3)?,
            priority: r.try_get(4)?,
            created_at: r.try_get(5)?,
            status: r.try_get(6)?,
            step: r.try_get(7)?,
            cancel_key: r.try_get(8)?,
        };
        jobs.extend(row.job());
    }
    Ok(jobs)
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
