//! Erasure cost: one respondent erased from a deployment holding `--submissions` stored
//! submissions, each its own `SUBMISSIONS` message (no packing: the most messages a scan can
//! meet for that many leads). Phases: the table lookup, the stream scan and rewrite, the
//! table statement; then the same call again (nothing left to erase).

use crate::replay::{envelopes, publish_and_store, ReplayBenchError};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct EraseArgs {
    /// Stored submissions (and `SUBMISSIONS` messages) the erasure has to look through.
    #[arg(long, default_value_t = 100_000)]
    pub submissions: usize,
    /// fsync policy of the private nats-server.
    #[arg(long, value_enum, default_value_t = crate::Fsync::Always)]
    pub fsync: crate::Fsync,
}

#[derive(Debug, Serialize)]
pub struct EraseReport {
    pub submissions: usize,
    pub fsync: crate::Fsync,
    pub find_ms: f64,
    pub streams_s: f64,
    pub tables_ms: f64,
    pub total_s: f64,
    /// Stream messages read by the scan…
    pub scanned: u64,
    /// …per second.
    pub scanned_per_s: f64,
    pub erased_stream_submissions: u64,
    pub erased_rows: i64,
    /// The second, no-op call.
    pub again_s: f64,
}

impl EraseReport {
    pub fn markdown(&self) -> String {
        format!(
            "# quizflow bench erase\n\n{} stored submissions, one `SUBMISSIONS` message each, fsync `{:?}`.\n\n\
             | step | time |\n|---|---|\n\
             | find the person's submissions (PostgreSQL, by index) | {:.1} ms |\n\
             | scan `SUBMISSIONS` + `DEAD_LETTERS`, erase their copies | {:.2} s ({} messages, {:.0}/s) |\n\
             | scrub tables (one statement) | {:.1} ms |\n\
             | **total** | **{:.2} s** |\n\
             | second call (no-op) | {:.2} s |\n\n\
             Erased: {} stream submission(s), {} submission row(s).\n",
            self.submissions,
            self.fsync,
            self.find_ms,
            self.streams_s,
            self.scanned,
            self.scanned_per_s,
            self.tables_ms,
            self.total_s,
            self.again_s,
            self.erased_stream_submissions,
            self.erased_rows,
        )
    }
}

pub async fn run_erase(
    args: &EraseArgs,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    database_url: &str,
) -> Result<EraseReport, ReplayBenchError> {
    let pool = quizflow_store::pool(database_url, 4);
    let data = envelopes(args.submissions);
    publish_and_store(&data, &client, &js, &pool).await?;
    let target = data
        .get(data.len() / 2)
        .and_then(|e| e.submission.respondent.phone.clone())
        .ok_or_else(|| ReplayBenchError::Setup("no lead with a phone".into()))?;

    let once = || async {
        let started = Instant::now();
        let mut conn = pool.get().await.map_err(quizflow_store::StoreError::from)?;
        let ids = quizflow_store::erase::find(&mut conn, Some(&target), None).await?;
        let find = started.elapsed();
        let person = quizflow_nats::Person {
            phone: Some(target.clone()),
            email: None,
            submission_ids: ids.iter().map(ToString::to_string).collect(),
        };
        let s = Instant::now();
        let streams = quizflow_nats::erase_person(&js, &person).await?;
        let streams_s = s.elapsed();
        let t = Instant::now();
        let rows = quizflow_store::erase::erase(&mut conn, Some(&target), None, &ids).await?;
        Ok::<_, ReplayBenchError>((
            find,
            streams,
            streams_s,
            t.elapsed(),
            rows,
            started.elapsed(),
        ))
    };
    let (find, streams, streams_s, tables, rows, total) = once().await?;
    let (.., again) = once().await?;
    Ok(EraseReport {
        submissions: args.submissions,
        fsync: args.fsync,
        find_ms: find.as_secs_f64() * 1e3,
        streams_s: streams_s.as_secs_f64(),
        tables_ms: tables.as_secs_f64() * 1e3,
        total_s: total.as_secs_f64(),
        scanned: streams.scanned,
        scanned_per_s: streams.scanned as f64 / streams_s.as_secs_f64().max(1e-9),
        erased_stream_submissions: streams.submissions,
        erased_rows: rows.submissions,
        again_s: again.as_secs_f64(),
    })
}
