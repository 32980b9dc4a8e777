//! Claims held by this process, and their leases renewed while it holds them.
//!
//! A worker claims a fetch's ledger rows at once (one statement), then sends them one by one
//! as its concurrency and rate share allow: at a small share a chunk of 128 jobs can take
//! longer than any fixed lease. So every claim this process holds is renewed by one batched
//! statement every quarter lease; a claim is dropped from the set when its job is settled or
//! given back ([`LeaseGuard`] on drop). Only a process that stops renewing (dead, or cut off
//! from the database for longer than a lease) lets a claim expire.

use quizflow_store::deliveries::{self, Call, Key, Start};
use quizflow_store::Pool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// The claims this process holds: ledger key → claim token.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<Key, Uuid>>,
}

/// One held claim; dropping it stops its renewal.
pub(crate) struct LeaseGuard {
    leases: Arc<Leases>,
    key: Key,
    claim: Uuid,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Ok(mut held) = self.leases.held.lock() {
            // Only our own entry: the same key may since be held under a newer claim.
            if held.get(&self.key) == Some(&self.claim) {
                held.remove(&self.key);
            }
        }
    }
}

impl Leases {
    pub(crate) fn hold(self: &Arc<Self>, key: Key, claim: Uuid) -> LeaseGuard {
        if let Ok(mut held) = self.held.lock() {
            held.insert(key.clone(), claim);
        }
        LeaseGuard {
            leases: self.clone(),
            key,
            claim,
        }
    }

    fn snapshot(&self) -> Vec<(Key, Uuid)> {
        self.held
            .lock()
            .map(|h| h.iter().map(|(k, c)| (k.clone(), *c)).collect())
            .unwrap_or_default()
    }
}

/// Renews every held claim to `lease` from now, every quarter lease (every second after a
/// failed renewal), until `stop`.
pub(crate) async fn renew(
    leases: Arc<Leases>,
    pool: Pool,
    lease: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let period = (lease / 4).max(Duration::from_secs(1));
    let mut wait = period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let held = leases.snapshot();
        if held.is_empty() {
            wait = period;
            continue;
        }
        let renewed = match pool.get().await {
            Ok(mut conn) => deliveries::renew(&mut conn, &held, lease).await,
            Err(e) => Err(e.into()),
        };
        wait = match renewed {
            Ok(n) => {
                tracing::debug!(held = held.len(), renewed = n, "leases renewed");
                period
            }
            Err(e) => {
                tracing::warn!(error = %e, held = held.len(), "leases not renewed; retrying");
                Duration::from_secs(1)
            }
        };
    }
}

/// Confirms claims right before their provider calls, batched: each call asks, and one
/// statement per group of concurrent asks marks the rows `calling_at` (group commit, as the
/// status writer does). A row cancelled by an erasure, or taken over, is not confirmed, and
/// its holder does not call; an erasure waits for the calls confirmed before its barrier.
#[derive(Clone)]
pub(crate) struct CallGate {
    tx: tokio::sync::mpsc::Sender<(Call, tokio::sync::oneshot::Sender<Gate>)>,
}

/// What the gate says of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Still ours, marked as calling: go ahead.
    Go,
    /// Cancelled or taken over since the claim: do not call.
    Gone,
    /// The database did not answer: do not call now (give the job back).
    Unknown,
    /// The contact opted out since the match (the reason): the row is now `suppressed`.
    Suppressed,
}

impl CallGate {
    pub(crate) fn start(pool: Pool) -> Self {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(Call, tokio::sync::oneshot::Sender<Gate>)>(4096);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(512);
            while rx.recv_many(&mut batch, 512).await > 0 {
                let calls: Vec<Call> = batch.iter().map(|(c, _)| c.clone()).collect();
                let confirmed = match pool.get().await {
                    Ok(mut conn) => deliveries::start_calls(&mut conn, &calls).await,
                    Err(e) => Err(e.into()),
                };
                match confirmed {
                    Ok(found) => {
                        let found: HashMap<Key, Start> = found.into_iter().collect();
                        for (c, done) in batch.drain(..) {
                            let _ = done.send(match found.get(&c.key) {
                                Some(Start::Go) => Gate::Go,
                                Some(Start::Suppressed(_)) => Gate::Suppressed,
                                None => Gate::Gone,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, calls = batch.len(), "calls not confirmed; given back");
                        for (_, done) in batch.drain(..) {
                            let _ = done.send(Gate::Unknown);
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// May the holder of the call's claim call the provider now?
    pub(crate) async fn ask(&self, call: Call) -> Gate {
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.tx.send((call, done)).await.is_err() {
            return Gate::Unknown;
        }
        answer.await.unwrap_or(Gate::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel_async::RunQueryDsl;

    async fn queued_row(pool: &Pool) -> Key {
        let key: Key = (Uuid::new_v4(), Uuid::new_v4(), "sms".into(), 0);
        let mut conn = pool.get().await.expect("conn");
        diesel::sql_query(
            "INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status) \
             VALUES ($1, $2, 'sms', 1, 'normal', 'queued')",
        )
        .bind::<diesel::sql_types::Uuid, _>(key.0)
        .bind::<diesel::sql_types::Uuid, _>(key.1)
        .execute(&mut conn)
        .await
        .expect("row");
        key
    }

    /// A claim held longer than its lease (a job waiting behind a slow chunk) is never taken
    /// over while its holder lives; once given back, it expires and another worker may claim.
    #[tokio::test]
    async fn a_held_claim_outlives_its_lease_and_expires_once_released() {
        let db = quizflow_testkit::TestDb::create().await;
        quizflow_migrations::run_migrations(&db.url)
            .await
            .expect("migrate");
        let pool = quizflow_store::pool(&db.url, 2);
        let key = queued_row(&pool).await;
        // Renewed every second (a quarter lease, at least 1 s): three seconds of slack for a
        // loaded machine.
        let lease = Duration::from_secs(4);
        let ours = Uuid::new_v4();
        let mut conn = pool.get().await.expect("conn");
        let claimed = deliveries::claim(&mut conn, std::slice::from_ref(&key), ours, lease)
            .await
            .expect("claim");
        assert_eq!(claimed, vec![key.clone()]);
        let leases = Arc::new(Leases::default());
        let guard = leases.hold(key.clone(), ours);
        let (stop_tx, stop_rx) = watch::channel(false);
        let renewer = tokio::spawn(renew(leases.clone(), pool.clone(), lease, stop_rx));
        // Three leases long: without renewal another worker could have taken it twice over.
        let until = tokio::time::Instant::now() + lease * 3;
        while tokio::time::Instant::now() < until {
            let theirs =
                deliveries::claim(&mut conn, std::slice::from_ref(&key), Uuid::new_v4(), lease)
                    .await
                    .expect("claim");
            assert!(theirs.is_empty(), "a held claim was taken over");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Settled or given back: renewal stops, and the lease runs out.
        drop(guard);
        let deadline = tokio::time::Instant::now() + lease * 4;
        loop {
            let theirs =
                deliveries::claim(&mut conn, std::slice::from_ref(&key), Uuid::new_v4(), lease)
                    .await
                    .expect("claim");
            if !theirs.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "released claim never expired"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = stop_tx.send(true);
        renewer.await.expect("renewer stops");
    }
}
