ALTER TABLE dead_letters DROP COLUMN step;
DROP INDEX deliveries_due;
UPDATE deliveries SET status = 'cancelled' WHERE status = 'scheduled';
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status
    CHECK (status IN ('queued', 'sending', 'sent', 'delivered', 'failed', 'dead', 'cancelled'));
ALTER TABLE deliveries DROP COLUMN due_at;
DELETE FROM deliveries WHERE step <> 0;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
ALTER TABLE deliveries ADD PRIMARY KEY (submission_id, campaign_id, channel);
ALTER TABLE deliveries DROP COLUMN step;
