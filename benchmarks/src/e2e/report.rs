//! `bench e2e`'s report: CPU per lead by role (for `--plan`), the Markdown summary, and the
//! files written (JSON, Markdown, SVG charts).

use super::*;

impl E2eReport {
    /// CPU per lead by role, for `--plan`.
    pub fn costs(&self) -> Vec<RoleCost> {
        self.cpu_ms_per_lead
            .iter()
            .map(|(role, ms)| RoleCost {
                role: role.clone(),
                cpu_s_per_lead: ms / 1000.0,
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## quizflow end-to-end benchmark\n\n{} submissions, {}{}, {:.0} % match one SMS campaign ({} active campaigns), nats-server fsync {:?}.\n\n\
             | target | accepted/s | SMS delivered/s (first send → last delivery) | HTTP p50 / p99 ms | 202 → SMS p50 / p99 ms | lost | duplicates | errors |\n|---|---|---|---|---|---|---|---|\n",
            self.submissions,
            match self.pacing {
                Pacing::Open { rate } => format!("open loop at {rate:.0}/s"),
                Pacing::Closed { concurrency } => format!("closed loop, {concurrency} in flight"),
            },
            if self.batch > 0 {
                format!(", {} per request to the batch endpoint", self.batch)
            } else {
                String::new()
            },
            self.match_share * 100.0,
            self.campaigns,
            self.fsync,
        );
        for r in self.ceiling.iter().chain(self.quizflow.iter()) {
            out.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.1} / {:.1} | {:.0} / {:.0} | {} | {} | {} |\n",
                r.target,
                r.accepted_per_s,
                r.delivered_per_s,
                r.http_p50_ms,
                r.http_p99_ms,
                r.e2e_p50_ms,
                r.e2e_p99_ms,
                r.lost_messages + r.lost_submissions,
                r.duplicates,
                r.errors
            ));
        }
        if let (Some(q), Some(c)) = (&self.quizflow, &self.ceiling) {
            out.push_str(&format!(
                "\nquizflow / ceiling: accepted {:.0} %, delivered {:.0} %.\n",
                100.0 * q.accepted_per_s / c.accepted_per_s.max(1e-9),
                100.0 * q.delivered_per_s / c.delivered_per_s.max(1e-9)
            ));
        }
        if let Some(q) = &self.quizflow {
            out.push_str(
                "\n| process | CPU s | CPU ms per lead | peak PSS MB |\n|---|---|---|---|\n",
            );
            for (role, cpu) in &q.cpu_s {
                out.push_str(&format!(
                    "| {role} | {cpu:.1} | {:.3} | {:.0} |\n",
                    self.cpu_ms_per_lead.get(role).copied().unwrap_or(0.0),
                    q.peak_pss_mb.get(role).copied().unwrap_or(0.0)
                ));
            }
            if let (Some(s), Some(e)) = (q.stored_per_s, q.enqueued_per_s) {
                out.push_str(&format!(
                    "\nstored/s: {s:.0}; SMS enqueued/s: {e:.0} (first send → the sample that saw them all)\n"
                ));
            }
        }
        if let Some(v) = &self.verify_plan {
            out.push_str(&format!(
                "\n### Plan check\n\nA plan that fits this machine (70 % of its cores by the CPU per lead above): {:.0} leads/s, open loop. \
                 Achieved {:.0} accepted/s, {:.0} SMS/s, 202 → SMS p99 {:.0} ms.\n\n| process | predicted CPU s | measured CPU s | error |\n|---|---|---|---|\n",
                v.rate_per_s, v.achieved_accepted_per_s, v.achieved_delivered_per_s, v.e2e_p99_ms
            ));
            for l in &v.lines {
                out.push_str(&format!(
                    "| {} | {:.1} | {:.1} | {:+.0} % |\n",
                    l.role, l.predicted_cpu_s, l.measured_cpu_s, l.error_pct
                ));
            }
            out.push_str(&format!(
                "| **all** | | | **{:+.0} %** |\n",
                v.total_error_pct
            ));
        }
        out
    }

    /// Writes `bench-report.json`, `bench-report.md` and the SVG charts into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> Result<Vec<PathBuf>, E2eError> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("bench-report.json");
        std::fs::write(
            &json,
            serde_json::to_vec_pretty(self).map_err(|e| E2eError::Setup(e.to_string()))?,
        )?;
        let md = dir.join("bench-report.md");
        std::fs::write(&md, self.markdown())?;
        let mut written = vec![json, md];
        if let Some(run) = self.quizflow.as_ref().or(self.ceiling.as_ref()) {
            written.extend(charts::write_all(dir, run).map_err(E2eError::Setup)?);
        }
        Ok(written)
    }
}
