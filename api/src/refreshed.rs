//! A set the API holds in memory and reads again from PostgreSQL on a timer (the blocklist's
//! hashes, the quizzes campaigns name): intake never waits on the database, an outage keeps the
//! last set, and a change this instance makes applies at once. A read that raced a local change
//! is not applied (the next one is), so a refresh never undoes an addition made meanwhile.

use crate::AppState;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, Weak};
use std::time::Duration;

pub(crate) struct RefreshedSet<T> {
    set: RwLock<HashSet<T>>,
    /// Local changes so far: a read that saw another value than at its start is dropped.
    changes: AtomicU64,
}

impl<T> Default for RefreshedSet<T> {
    fn default() -> Self {
        Self {
            set: RwLock::new(HashSet::new()),
            changes: AtomicU64::new(0),
        }
    }
}

impl<T: Eq + Hash> RefreshedSet<T> {
    /// Reads the set (`None` when its lock was poisoned).
    pub(crate) fn read(&self) -> Option<std::sync::RwLockReadGuard<'_, HashSet<T>>> {
        self.set.read().ok()
    }

    /// A change made here: applied at once, and wins over a read under way.
    pub(crate) fn change(&self, apply: impl FnOnce(&mut HashSet<T>)) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut set) = self.set.write() {
            apply(&mut set);
        }
    }

    fn replace_unless_changed(&self, since: u64, fresh: HashSet<T>) {
        if let Ok(mut set) = self.set.write() {
            if self.changes.load(Ordering::SeqCst) == since {
                *set = fresh;
            }
        }
    }
}

/// Reads `pick(state)` with `load` now and every `every`, until the state is dropped.
pub(crate) fn spawn<T, F, Fut>(
    state: Weak<AppState>,
    every: Duration,
    pick: fn(&AppState) -> &RefreshedSet<T>,
    load: F,
) where
    T: Eq + Hash + Send + Sync + 'static,
    F: Fn(quizflow_store::Pool) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<HashSet<T>, String>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(s) = state.upgrade() else { break };
            let since = pick(&s).changes.load(Ordering::SeqCst);
            match load(s.db.clone()).await {
                Ok(fresh) => pick(&s).replace_unless_changed(since, fresh),
                Err(e) => tracing::debug!(error = %e, "in-memory set not refreshed"),
            }
        }
    });
}
