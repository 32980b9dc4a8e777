//! The statements `quizflow bench store` measures the batcher's write path against: a raw
//! binary COPY of the same rows (the ceiling), and the resets between its phases. Kept here
//! with every other statement; the benchmark runs them on a client of its own.

/// Binary COPY into `submissions`, the columns in this order.
pub const COPY_SUBMISSIONS: &str = "COPY submissions (id, quiz_id, received_at, completed_at, score, phone, email, name, locale, answers, tags, metadata, idempotency_key, stream_seq) FROM STDIN (FORMAT binary)";

/// Empties the intake tables between the benchmark's phases.
pub const TRUNCATE_INTAKE: &str = "TRUNCATE submissions, submission_ids, deliveries";

/// Ledger rows written.
pub const COUNT_DELIVERIES: &str = "SELECT count(*) FROM deliveries";

/// A checkpoint now (the benchmark's private server, whose user may): what a setup step wrote
/// is flushed before the measured phase, instead of by a checkpoint in the middle of it.
pub async fn checkpoint(pool: &crate::Pool) -> Result<(), crate::StoreError> {
    let conn = pool.raw().await?;
    conn.client.batch_execute("CHECKPOINT").await?;
    Ok(())
}
