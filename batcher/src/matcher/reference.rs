//! The row-by-row reference: campaign by campaign, submission by submission. Only for tests and as the executable definition of the semantics.

use super::*;
use quizflow_core::Campaign;
use std::sync::Arc;

pub fn matches(c: &Campaign, s: &SubmissionEnvelope) -> bool {
    let spec = &c.spec;
    if !spec.active {
        return false;
    }
    if spec.quiz_id.as_ref().is_some_and(|q| q != &s.quiz_id) {
        return false;
    }
    if s.received_at < c.created_at
        || spec.starts_at.is_some_and(|t| s.received_at < t)
        || spec.ends_at.is_some_and(|t| s.received_at >= t)
    {
        return false;
    }
    let holds = |p: &Predicate| eval_cell(&cell(s, &p.field), p.op, &p.value);
    spec.match_.all.iter().all(holds)
        && (spec.match_.any.is_empty() || spec.match_.any.iter().any(holds))
}

pub fn match_batch(campaigns: &[Arc<Campaign>], batch: &[SubmissionEnvelope]) -> Vec<Match> {
    let active: Vec<&Arc<Campaign>> = campaigns.iter().filter(|c| c.spec.active).collect();
    let mut out = Vec::new();
    for (row, s) in batch.iter().enumerate() {
        for (ci, c) in active.iter().enumerate() {
            if !matches(c, s) {
                continue;
            }
            let mut steps = [0u16; 4];
            for (ai, a) in c.spec.actions.iter().enumerate() {
                let step = steps[a.channel as usize];
                steps[a.channel as usize] += 1;
                if channel_reachable(s, a.channel) {
                    out.push(Match {
                        row,
                        campaign: ci,
                        channel: a.channel,
                        step,
                        action: ai as u16,
                    });
                }
            }
        }
    }
    out.sort_unstable();
    out
}
