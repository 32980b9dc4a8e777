//! Intake rate per quiz, with a bounded label set: `quizflow_intake_leads_total{quiz}` names only
//! the quizzes some campaign names (read from PostgreSQL every [`REFRESH`]; a database outage
//! keeps the last list), and counts every other quiz as `other`, so the public cannot grow the
//! metric's series by posting to made-up quiz ids. The alert `QuizflowUnusualIntakeRate` reads it.

use crate::AppState;
use std::collections::HashSet;
use std::sync::{RwLock, Weak};
use std::time::Duration;

/// How often the list of quizzes campaigns name is read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The quizzes some campaign names.
#[derive(Default)]
pub(crate) struct QuizNames(RwLock<HashSet<String>>);

impl AppState {
    /// A campaign this instance just stored names `quiz`: labelled from now (other instances
    /// within [`REFRESH`]).
    pub(crate) fn name_quiz(&self, quiz: Option<&quizflow_core::QuizId>) {
        if let (Some(q), Ok(mut names)) = (quiz, self.quiz_names.0.write()) {
            names.insert(q.as_str().to_owned());
        }
    }

    /// Counts one new lead of `quiz` under its label.
    pub(crate) fn count_lead(&self, quiz: &str) {
        let known = self
            .quiz_names
            .0
            .read()
            .map(|names| names.contains(quiz))
            .unwrap_or(false);
        let label = if known { quiz } else { "other" };
        self.metrics.intake_leads.with_label_values(&[label]).inc();
    }
}

/// Reads the campaigns' quizzes now and every [`REFRESH`] until the state is dropped.
pub(crate) fn spawn(state: Weak<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            let Some(s) = state.upgrade() else { break };
            let Ok(mut conn) = s.db.get().await else {
                continue;
            };
            match quizflow_store::campaigns::list(&mut conn).await {
                Ok(campaigns) => {
                    let names: HashSet<String> = campaigns
                        .into_iter()
                        .filter_map(|c| c.spec.quiz_id.map(|q| q.as_str().to_owned()))
                        .collect();
                    if let Ok(mut held) = s.quiz_names.0.write() {
                        *held = names;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "quiz names not refreshed"),
            }
        }
    });
}
