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

async fn write(db: &Pool, batch: Vec<(Delivered, Reply)>) {
    // One row per key in a statement: a repeated report in the same batch is stale.
    let mut seen = std::collections::HashSet::new();
    let (mut rows, mut replies, mut repeats) = (Vec::new(), Vec::new(), Vec::new());
    for (d, reply) in batch {
        if seen.insert((d.submission_id, d.campaign_id, d.channel.clone())) {
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
