-- Scheduled messages and several actions per channel (issue 12). The ledger's key becomes
-- (submission, campaign, channel, step): `step` is the n-th action of that channel in the
-- campaign (0 for the first, so every row written before keeps its meaning and its job id).
ALTER TABLE deliveries ADD COLUMN step smallint NOT NULL DEFAULT 0;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
ALTER TABLE deliveries ADD PRIMARY KEY (submission_id, campaign_id, channel, step);
-- `scheduled` rows wait for `due_at`; any workers process publishes the due ones
-- (`FOR UPDATE SKIP LOCKED` over this partial index) and moves them to `queued`.
ALTER TABLE deliveries ADD COLUMN due_at timestamptz;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status
    CHECK (status IN ('scheduled', 'queued', 'sending', 'sent', 'delivered', 'failed', 'dead', 'cancelled'));
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'scheduled';
ALTER TABLE dead_letters ADD COLUMN step smallint NOT NULL DEFAULT 0;
