//! The phone and e-mail blocklist at intake (issue 26): the suppression list's `blocked` entries
//! (the same keyed hashes; `POST /v1/suppressions` with `"reason": "blocked"`). A lead whose
//! phone or e-mail is on it is refused, 403 `blocked`, before it is published; the pipeline
//! never sends to it either (a `blocked` entry suppresses every purpose). Each instance holds
//! the hashes in memory, read from PostgreSQL every [`REFRESH`] (an outage keeps the last
//! list, so intake never waits on the database), and applies its own additions at once.

use crate::error::ApiError;
use crate::refreshed::RefreshedSet;
use crate::AppState;
use quizflow_core::{Channel, Respondent};
use std::sync::Weak;
use std::time::Duration;

/// How often the list is read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The blocked keyed hashes.
pub(crate) type Blocklist = RefreshedSet<Vec<u8>>;

impl AppState {
    /// 403 `blocked` when the lead's phone or e-mail is on the blocklist.
    pub(crate) fn check_blocked(&self, r: &Respondent) -> Result<(), ApiError> {
        let Some(list) = self.blocklist.read() else {
            return Ok(());
        };
        if list.is_empty() {
            return Ok(());
        }
        let key = &self.settings.consent.hash_key;
        let contacts = [
            (Channel::Sms, r.phone.as_deref()),
            (Channel::Email, r.email.as_deref()),
        ];
        let blocked = contacts.into_iter().any(|(channel, contact)| {
            contact
                .and_then(|c| key.hash(channel, c))
                .is_some_and(|h| list.contains(h.as_slice()))
        });
        if blocked {
            return Err(ApiError::new(
                poem::http::StatusCode::FORBIDDEN,
                "blocked",
                "this contact may not submit",
            ));
        }
        Ok(())
    }

    /// An admin just added (or removed) a `blocked` entry: applied here at once.
    pub(crate) fn note_blocked(&self, hash: &[u8], blocked: bool) {
        self.blocklist.change(|list| {
            if blocked {
                list.insert(hash.to_vec());
            } else {
                list.remove(hash);
            }
        });
    }
}

/// Reads the list now and every [`REFRESH`] until the state is dropped.
pub(crate) fn spawn(state: Weak<AppState>) {
    crate::refreshed::spawn(
        state,
        REFRESH,
        |s| &s.blocklist,
        |pool| async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            let hashes = quizflow_store::consent::blocked_hashes(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(hashes.into_iter().collect())
        },
    );
}
