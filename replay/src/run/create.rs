//! One batch of a replay: matched by the batcher's matcher, its missing ledger rows created
//! (or, dry, counted), and their jobs published; rows that lost their job get it again.

use super::*;

impl Replayer<'_> {
    /// Matches one batch and creates what is missing (or, dry, counts it).
    pub(super) async fn process(
        &mut self,
        batch: Vec<SubmissionEnvelope>,
        check_stored: bool,
    ) -> Result<(), ReplayError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = if check_stored {
            self.only_stored(batch).await?
        } else {
            batch
        };
        // The same submission twice in a range (published again after the duplicate window;
        // the batcher stored it once): match it once.
        let mut seen = HashSet::with_capacity(batch.len());
        let batch: Vec<SubmissionEnvelope> = batch
            .into_iter()
            .filter(|e| seen.insert(e.submission_id.0))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        let jobs = self.jobs_of(batch).await?;
        if jobs.is_empty() {
            return Ok(());
        }
        let (created, existing) = self.ledger(&jobs).await?;
        // A `queued` row may have lost its job (a replay that died between its commit and
        // its publishes): publish it again. The worker's claim makes a copy harmless.
        let republish: Vec<DeliveryJob> = existing
            .into_iter()
            .filter(|e| e.status == quizflow_core::DeliveryStatus::Queued.as_str())
            .map(|e| e.job)
            .collect();
        let out: Vec<DeliveryJob> = jobs
            .iter()
            .filter(|j| created.contains(&ledger::key_of(j)))
            .cloned()
            .collect();
        for job in &jobs {
            let slot = self
                .counts
                .entry((job.campaign_id, job.channel))
                .or_default();
            if created.contains(&ledger::key_of(job)) {
                slot.0 += 1;
            } else {
                slot.1 += 1;
            }
        }
        self.summary.jobs_created += out.len() as u64;
        self.summary.already_existed += (jobs.len() - out.len()) as u64;
        self.summary.republished += republish.len() as u64;
        if !self.spec.dry_run {
            // Scheduled steps wait in the ledger; the workers publish them when due.
            let mut out: Vec<DeliveryJob> =
                out.into_iter().filter(|j| j.due_at.is_none()).collect();
            out.extend(republish);
            with_retry("publish", || async {
                Ok(quizflow_nats::publish_jobs(self.js, &out, |_| None).await?)
            })
            .await?;
        }
        Ok(())
    }

    /// The stream's copies of submissions the batcher stored (the others are counted).
    async fn only_stored(
        &mut self,
        batch: Vec<SubmissionEnvelope>,
    ) -> Result<Vec<SubmissionEnvelope>, ReplayError> {
        let ids: Vec<Uuid> = batch.iter().map(|e| e.submission_id.0).collect();
        let stored = with_retry("read", || async {
            let mut c = self.pool.get().await.map_err(StoreError::from)?;
            Ok(ledger::stored_ids(&mut c, &ids).await?)
        })
        .await?;
        let before = batch.len();
        let kept: Vec<SubmissionEnvelope> = batch
            .into_iter()
            .filter(|e| stored.contains(&e.submission_id.0))
            .collect();
        self.summary.not_stored += (before - kept.len()) as u64;
        Ok(kept)
    }

    /// The batch's jobs: the batcher's matcher, on rayon, off the async runtime.
    async fn jobs_of(
        &mut self,
        batch: Vec<SubmissionEnvelope>,
    ) -> Result<Vec<DeliveryJob>, ReplayError> {
        let matcher = self.matcher.clone();
        let (batch, matches, matcher) = tokio::task::spawn_blocking(move || {
            let m = matcher.match_batch(&batch);
            (batch, m, matcher)
        })
        .await
        .map_err(|e| ReplayError::Matcher(e.to_string()))?;
        let rows: HashSet<usize> = (0..batch.len()).collect();
        // Checked against the suppression list as a live match is (the workers check again
        // only what was added since a job's `created_at`).
        let contacts = quizflow_batcher::consent::contacts(&self.spec.hash_key, &matches, &batch);
        let suppressed = with_retry("suppression lookup", || async {
            Ok(quizflow_batcher::consent::suppressed(self.pool, &contacts).await?)
        })
        .await?;
        let planner = quizflow_batcher::consent::Planner {
            matcher: &matcher,
            matches: &matches,
            batch: &batch,
            contacts: &contacts,
            suppressed: &suppressed,
            now: Utc::now(),
            per_second: 1,
            // Quiet hours are not applied to history: a replay goes out as its rate allows.
            windows: false,
        };
        let plan = planner.plan(&rows);
        self.summary.suppressed += plan.suppressed.len() as u64;
        let mut jobs = plan.jobs;
        for job in &mut jobs {
            job.priority = self.spec.priority;
        }
        self.summary.matched += matches.iter().map(|m| m.row).collect::<HashSet<_>>().len() as u64;
        Ok(jobs)
    }

    /// The ledger rows the jobs lacked, created (or, dry, found missing), and the rows that
    /// existed already.
    async fn ledger(
        &self,
        jobs: &[DeliveryJob],
    ) -> Result<(HashSet<LedgerKey>, Vec<ledger::Existing>), ReplayError> {
        if self.spec.dry_run {
            let existing = with_retry("read", || async {
                let mut c = self.pool.get().await.map_err(StoreError::from)?;
                Ok(ledger::existing(&mut c, jobs).await?)
            })
            .await?;
            let found: HashSet<LedgerKey> = existing.iter().map(|e| e.key).collect();
            let created = jobs
                .iter()
                .map(ledger::key_of)
                .filter(|k| !found.contains(k))
                .collect();
            return Ok((created, existing));
        }
        let created = with_retry("ledger write", || async {
            let mut c = self.pool.get().await.map_err(StoreError::from)?;
            Ok(ledger::insert_missing(&mut c, jobs).await?)
        })
        .await?;
        let rest: Vec<DeliveryJob> = jobs
            .iter()
            .filter(|j| !created.contains(&ledger::key_of(j)))
            .cloned()
            .collect();
        let existing = if rest.is_empty() {
            Vec::new()
        } else {
            with_retry("read", || async {
                let mut c = self.pool.get().await.map_err(StoreError::from)?;
                Ok(ledger::existing(&mut c, &rest).await?)
            })
            .await?
        };
        Ok((created, existing))
    }
}
