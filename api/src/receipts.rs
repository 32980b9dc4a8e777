//! Delivery receipts written in batches: concurrent callbacks (one per message for Twilio and
//! Resend) are coalesced into one `UPDATE` of many rows, as the workers batch their status
//! writes. Each caller waits for its own row's outcome, so a 200 means "recorded".
//!
//! Bounded: a queue of [`QUEUE`] reports (callers wait for room: backpressure onto the
//! providers, which retry), batches of up to [`BATCH`]; no timer at low load (a lone report
//! is written at once), and under load a batch is whatever queued while the last one wrote.

use quizflow_store::reports::{Applied, Delivered};
use quizflow_store::Pool;
use tokio::sync::{mpsc, oneshot};

const QUEUE: usize = 4096;
const BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Applied, String>>;

/// The handle callers submit `delivered` reports through.
#[derive(Clone)]
pub(crate) struct ReceiptWriter {
    tx: mpsc::Sender<(Delivered, Reply)>,
}

impl ReceiptWriter {
    /// Starts the writer; it ends when every handle is dropped.
    pub fn spawn(db: Pool) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Delivered, Reply)>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                write(&db, std::mem::take(&mut batch)).await;
            }
        });
        Self { tx }
    }

    /// Records one report and waits for its outcome.
    pub async fn delivered(&self, report: Delivered) -> Result<Applied, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((report, reply))
            .await
            .map_err(|_| "receipt writer stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "receipt writer stopped".to_owned())?
    }
}

/// The ledger key a report moves: (submission, campaign, channel, step).
fn key(d: &Delivered) -> (uuid::Uuid, uuid::Uuid, String, u16) {
    (d.submission_id, d.campaign_id, d.channel.clone(), d.step)
}

async fn write(db: &Pool, batch: Vec<(Delivered, Reply)>) {
    // One row per ledger key in a statement: a repeated report in the same batch is stale.
    // The key includes the step: a welcome and a coupon of one campaign are two rows.
    let mut seen = std::collections::HashSet::new();
    let (mut rows, mut replies, mut repeats) = (Vec::new(), Vec::new(), Vec::new());
    for (d, reply) in batch {
        if seen.insert(key(&d)) {
            rows.push(d);
            replies.push(reply);
        } else {
            repeats.push(reply);
        }
    }
    let result = match db.get().await {
        Ok(mut conn) => quizflow_store::reports::delivered(&mut conn, &rows)
            .await
            .map_err(|e| e.public().to_owned()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(applied) => {
            for (reply, a) in replies.into_iter().zip(applied) {
                let _ = reply.send(Ok(a));
            }
            for reply in repeats {
                let _ = reply.send(Ok(Applied::Stale));
            }
        }
        Err(e) => {
            for reply in replies.into_iter().chain(repeats) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel_async::RunQueryDsl;

    /// Two steps of one campaign (a welcome and a coupon) reported in the same batch: each
    /// report moves its own row. Keyed without the step, the second was answered "stale" and
    /// its row stayed `sent` for good.
    #[tokio::test]
    async fn two_steps_reported_in_one_batch_each_move_their_row() {
        let db = quizflow_testkit::TestDb::create().await;
        quizflow_migrations::run_migrations(&db.url)
            .await
            .expect("migrate");
        let pool = quizflow_store::pool(&db.url, 2);
        let (sub, camp) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        {
            let mut conn = pool.get().await.expect("conn");
            diesel::sql_query(
                "INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status, step) \
                 VALUES ($1, $2, 'sms', 1, 'normal', 'sent', 0), ($1, $2, 'sms', 1, 'normal', 'sent', 1)",
            )
            .bind::<diesel::sql_types::Uuid, _>(sub)
            .bind::<diesel::sql_types::Uuid, _>(camp)
            .execute(&mut conn)
            .await
            .expect("rows");
        }
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for step in [0u16, 1] {
            let (reply, answer) = oneshot::channel();
            let report = Delivered {
                submission_id: sub,
                campaign_id: camp,
                channel: "sms".into(),
                step,
                attempt: None,
                detail: "delivered".into(),
            };
            batch.push((report, reply));
            answers.push(answer);
        }
        write(&pool, batch).await;
        for answer in answers {
            assert_eq!(answer.await.expect("answered"), Ok(Applied::Moved));
        }
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = pool.get().await.expect("conn");
        let delivered: N = diesel::sql_query(
            "SELECT count(*) AS n FROM deliveries WHERE submission_id = $1 AND status = 'delivered'",
        )
        .bind::<diesel::sql_types::Uuid, _>(sub)
        .get_result(&mut conn)
        .await
        .expect("count");
        assert_eq!(delivered.n, 2);
    }
}
