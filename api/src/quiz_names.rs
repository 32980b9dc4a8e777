//! Intake rate per quiz, with a bounded label set: `quizflow_intake_leads_total{quiz}` names only
//! the quizzes some campaign names (read from PostgreSQL every [`REFRESH`]; a database outage
//! keeps the last list), and counts every other quiz as `other`, so the public cannot grow the
//! metric's series by posting to made-up quiz ids. The alert `QuizflowUnusualIntakeRate` reads it.

use crate::refreshed::RefreshedSet;
use crate::AppState;
use std::sync::Weak;
use std::time::Duration;

/// How often the list of quizzes campaigns name is read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The quizzes some campaign names.
pub(crate) type QuizNames = RefreshedSet<String>;

impl AppState {
    /// A campaign this instance just stored names `quiz`: labelled from now (other instances
    /// within [`REFRESH`]).
    pub(crate) fn name_quiz(&self, quiz: Option<&quizflow_core::QuizId>) {
        if let Some(q) = quiz {
            self.quiz_names.change(|names| {
                names.insert(q.as_str().to_owned());
            });
        }
    }

    /// Counts one new lead of `quiz` under its label.
    pub(crate) fn count_lead(&self, quiz: &str) {
        let known = self
            .quiz_names
            .read()
            .is_some_and(|names| names.contains(quiz));
        let label = if known { quiz } else { "other" };
        self.metrics.intake_leads.with_label_values(&[label]).inc();
    }
}

/// Reads the campaigns' quizzes now and every [`REFRESH`] until the state is dropped.
pub(crate) fn spawn(state: Weak<AppState>) {
    crate::refreshed::spawn(
        state,
        REFRESH,
        |s| &s.quiz_names,
        |pool| async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            let campaigns = quizflow_store::campaigns::list(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(campaigns
                .into_iter()
                .filter_map(|c| c.spec.quiz_id.map(|q| q.as_str().to_owned()))
                .collect())
        },
    );
}
