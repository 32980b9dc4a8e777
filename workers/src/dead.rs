//! Dead letters: a job that can never be sent is marked `dead` in the ledger and mirrored into
//! `dead_letters` in one transaction (listing and redrive read the mirror), then archived in
//! `DEAD_LETTERS`; a job that cannot be handled at all goes to `DEAD_LETTERS` on its own.

use crate::channel::{update, Channelled};
use crate::handle::JobMsg;
use crate::status::history_entry;
use async_nats::jetstream;
use quizflow_core::{Channel, DeadClass, DeliveryJob, DeliveryStatus};
use quizflow_store::deliveries::{self, DeadLetterRow, JobContext};
use quizflow_store::{Pool, StoreError};
use std::time::Duration;
use uuid::Uuid;

/// A letter's class, reason, and the attempts made.
pub(crate) type Death<'a> = (DeadClass, &'a str, i32);

/// Why a dead letter could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead letter not encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("dead letter not recorded: {0}")]
    Store(#[from] StoreError),
}

impl Channelled {
    /// Dead-letters the job (see [`DeadLetters::record`]), then acks it; if that cannot be
    /// recorded the job is naked and comes back.
    pub(crate) async fn dead(
        &self,
        msg: JobMsg,
        job: &DeliveryJob,
        ctx: &JobContext,
        claim: Uuid,
        to: Option<&str>,
        (class, reason, attempts): Death<'_>,
    ) {
        let dl = DeadLetters {
            js: &self.js,
            pool: &self.pool,
        };
        let letter = Letter {
            class,
            reason,
            attempts,
            to,
            claim: Some(claim),
            fallback: crate::settle::arm(job, ctx, quizflow_core::FallbackOn::Undelivered)
                .filter(|_| class == DeadClass::Permanent || class == DeadClass::Exhausted)
                .map(|a| quizflow_store::deliveries::Arm {
                    due_in: Duration::ZERO,
                    ..a
                }),
        };
        match dl.record(job, &ctx.history, letter).await {
            Ok(_) => {
                self.count_dead(job.channel, class);
                // The reason stays in the letter (admin-only): provider texts can quote the recipient.
                tracing::info!(job = %job.job_id, channel = %job.channel, class = class.as_str(), "job dead-lettered");
                msg.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not recorded; job naked");
                msg.nak(Some(Duration::from_secs(5)), Some(job)).await;
            }
        }
    }

    fn count_dead(&self, channel: Channel, class: DeadClass) {
        self.metrics
            .dead_letters
            .with_label_values(&[channel.as_str(), class.as_str()])
            .inc();
    }

    /// A job whose context the database refused for its data (the server is fine: trouble
    /// of the server makes the whole fetch wait): its ledger row, when there is one, goes the
    /// normal dead path (marked `dead`, listed, redrivable); without a row, stream only.
    pub(crate) async fn unloadable(&self, msg: JobMsg, job: &DeliveryJob, reason: &str) {
        let dl = DeadLetters {
            js: &self.js,
            pool: &self.pool,
        };
        let class = DeadClass::Poison;
        let letter = Letter {
            class,
            reason,
            attempts: 0,
            to: None,
            claim: None,
            fallback: None,
        };
        match dl.record(job, &[], letter).await {
            Ok(true) => {
                self.count_dead(job.channel, class);
                tracing::warn!(job = %job.job_id, channel = %job.channel, "job whose context cannot be loaded dead-lettered");
                msg.ack().await;
            }
            Ok(false) => self.poison(msg, reason).await,
            Err(e) => {
                tracing::warn!(error = %e, "dead letter not recorded; job naked");
                msg.nak(Some(Duration::from_secs(5)), Some(job)).await;
            }
        }
    }

    /// A job that cannot be handled at all goes to `DEAD_LETTERS` on its own (its line only,
    /// named by message and place).
    pub(crate) async fn poison(&self, msg: JobMsg, reason: &str) {
        let (seq, member) = msg.position();
        tracing::warn!(seq, member, reason, channel = %self.channel, "poison job moved to dead letters");
        let ok = quizflow_nats::dead_letter_job_message(
            &self.js,
            self.channel.as_str(),
            msg.payload().clone(),
            reason,
            "delivery",
            seq,
            member,
        )
        .await
        .is_ok();
        if ok {
            self.count_dead(self.channel, DeadClass::Poison);
            msg.term().await;
        } else {
            msg.nak(Some(Duration::from_secs(5)), None).await;
        }
    }
}

/// One letter: its class, reason, attempts, recipient, and the claim it is written under
/// (`None`: only while nobody holds the row).
pub(crate) struct Letter<'a> {
    pub class: DeadClass,
    pub reason: &'a str,
    pub attempts: i32,
    pub to: Option<&'a str>,
    pub claim: Option<Uuid>,
    /// The action's fallback, armed because this message will never be delivered.
    pub fallback: Option<quizflow_store::deliveries::Arm>,
}

/// Where dead letters go: the `dead_letters` mirror with the ledger's `dead`, then
/// `dead.deliveries.<channel>`.
pub(crate) struct DeadLetters<'a> {
    pub js: &'a jetstream::Context,
    pub pool: &'a Pool,
}

impl DeadLetters<'_> {
    /// Marks the ledger row `dead` and mirrors the letter into `dead_letters` in one
    /// transaction (only while the row is the caller's: under `claim`, or nobody's), then
    /// publishes the letter to `dead.deliveries.<channel>`. Returns false when the row was
    /// no longer the caller's to finish.
    pub async fn record(
        &self,
        job: &DeliveryJob,
        history: &[serde_json::Value],
        l: Letter<'_>,
    ) -> Result<bool, DeadLetterError> {
        let id = Uuid::new_v4();
        let entry = history_entry(l.class.history_event(), l.reason);
        let mut all = history.to_vec();
        all.push(entry.clone());
        let history = serde_json::Value::Array(all);
        let payload = serde_json::to_vec(job)?;
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let row = DeadLetterRow {
            id,
            job,
            recipient: l.to,
            class: l.class,
            reason: l.reason,
            attempts: l.attempts,
            history: &history,
            payload: &payload,
        };
        let dead = DeliveryStatus::Dead;
        let reason = Some(l.reason.to_owned());
        let mut u = update(job, dead, l.attempts, reason, vec![entry], l.claim);
        u.fallback = l.fallback;
        let recorded = deliveries::record_dead(&mut conn, row, u).await?;
        drop(conn);
        if !recorded {
            return Ok(false);
        }
        let (to, class, reason, attempts) = (l.to, l.class, l.reason, l.attempts);
        // The mirror row is what listing and redrive use; the stream copy is the archive.
        let letter = serde_json::json!({"id": id, "kind": "delivery", "channel": job.channel, "submission_id": job.submission_id,
            "campaign_id": job.campaign_id, "recipient": to, "class": class, "reason": reason, "attempts": attempts,
            "history": history, "failed_at": chrono::Utc::now(), "job": job});
        let bytes = serde_json::to_vec(&letter)?;
        let mut wait = Duration::from_millis(200);
        for _ in 0..5 {
            match quizflow_nats::dead_letter_delivery(
                self.js,
                job.channel.as_str(),
                &id.to_string(),
                bytes.clone().into(),
            )
            .await
            {
                Ok(sequence) => {
                    self.take_back_if_erased(job, to, sequence).await;
                    return Ok(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead letter not archived in DEAD_LETTERS yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
        tracing::error!(letter = %id, "dead letter recorded in PostgreSQL but not archived in DEAD_LETTERS");
        Ok(true)
    }

    /// An erasure may have scanned `DEAD_LETTERS` between this letter's ledger write and its
    /// archiving: if the recipient was erased since the job was made, the copy is taken back.
    async fn take_back_if_erased(&self, job: &DeliveryJob, to: Option<&str>, sequence: u64) {
        let kind = match job.channel {
            Channel::Sms | Channel::Whatsapp => "phone",
            Channel::Email => "email",
            Channel::Webhook => return,
        };
        let Some(to) = to else { return };
        let erased = match self.pool.get().await {
            Ok(mut conn) => {
                quizflow_store::erase::erased_since(&mut conn, kind, to, job.created_at).await
            }
            Err(e) => Err(e.into()),
        };
        match erased {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = quizflow_nats::delete_dead_letter(self.js, sequence).await {
                    tracing::warn!(error = %e, sequence, "archived letter of an erased person not taken back");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, sequence, "cannot tell whether an archived letter's person was erased")
            }
        }
    }
}
