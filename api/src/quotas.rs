//! Intake quotas (issue 26): at most `QUIZFLOW_QUOTA_PER_QUIZ_PER_MIN` leads a minute per quiz
//! and `QUIZFLOW_QUOTA_GLOBAL_PER_MIN` for the whole intake, counted across every API instance
//! (a sliding log per quota in its own in-memory JetStream stream, as the cluster-wide
//! respondent limit is: exact, one publish per counted lead and quota). Past one, 429
//! `quota_exceeded` with `Retry-After`. A duplicate or a lead that was not published gives its
//! count back. Off (0) by default; NATS away, leads go through uncounted (abuse protection
//! never fails intake).

use crate::error::ApiError;
use crate::limits::ClusterLimiter;
use quizflow_nats::subjects::{
    GLOBAL_QUOTA_PREFIX, GLOBAL_QUOTA_STREAM, QUIZ_QUOTA_PREFIX, QUIZ_QUOTA_STREAM,
};
use std::time::Duration;

pub(crate) struct Quotas {
    quiz: Option<ClusterLimiter>,
    global: Option<ClusterLimiter>,
}

/// What a lead counted, to be given back.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    quiz: Vec<u64>,
    global: Vec<u64>,
}

impl Quotas {
    pub(crate) fn new(
        js: &async_nats::jetstream::Context,
        per_quiz: u32,
        global: u32,
        replicas: usize,
    ) -> Self {
        let window = Duration::from_secs(60);
        let limiter = |names, limit: u32| {
            (limit > 0).then(|| ClusterLimiter::named(js.clone(), names, limit, window, replicas))
        };
        Self {
            quiz: limiter(
                (
                    QUIZ_QUOTA_STREAM,
                    QUIZ_QUOTA_PREFIX,
                    "intake quota per quiz",
                ),
                per_quiz,
            ),
            global: limiter(
                (
                    GLOBAL_QUOTA_STREAM,
                    GLOBAL_QUOTA_PREFIX,
                    "global intake quota",
                ),
                global,
            ),
        }
    }

    /// Counts one lead of `quiz` against both quotas, all or nothing.
    pub(crate) async fn take(&self, quiz: &str) -> Result<Taken, ApiError> {
        let mut taken = Taken::default();
        if let Some(q) = &self.quiz {
            taken.quiz = q
                .take(quiz)
                .await
                .map_err(|retry| exceeded(retry, "this quiz's intake quota is used up"))?;
        }
        if let Some(g) = &self.global {
            match g.take("all").await {
                Ok(seqs) => taken.global = seqs,
                Err(retry) => {
                    self.give_back(taken).await;
                    return Err(exceeded(retry, "the intake quota is used up"));
                }
            }
        }
        Ok(taken)
    }

    pub(crate) async fn give_back(&self, taken: Taken) {
        if let Some(q) = &self.quiz {
            q.give_back(&taken.quiz).await;
        }
        if let Some(g) = &self.global {
            g.give_back(&taken.global).await;
        }
    }
}

impl crate::AppState {
    /// Counts a lead against the quotas; a retry of a lead already accepted is never refused
    /// for them (it is answered `duplicate`, and counts nothing).
    pub(crate) async fn take_quota(
        &self,
        envelope: &quizflow_core::SubmissionEnvelope,
    ) -> Result<Taken, ApiError> {
        match self.quotas.take(envelope.quiz_id.as_str()).await {
            Ok(t) => Ok(t),
            Err(_) if self.all_accepted_before(&[envelope.submission_id]).await => {
                Ok(Taken::default())
            }
            Err(e) => Err(e),
        }
    }
}

fn exceeded(retry_after: u64, why: &str) -> ApiError {
    ApiError {
        retry_after: Some(retry_after.max(1)),
        ..ApiError::new(
            poem::http::StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("{why}; retry later"),
        )
    }
}
