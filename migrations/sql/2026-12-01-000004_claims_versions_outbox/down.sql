DROP FUNCTION quizflow_cap_history(jsonb, int);
DROP INDEX dead_letters_redrive_pending;
ALTER TABLE dead_letters DROP COLUMN redrive_published_at;
DROP TABLE campaign_versions;
UPDATE deliveries SET status = 'dead' WHERE status = 'cancelled';
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status
    CHECK (status IN ('queued', 'sending', 'sent', 'delivered', 'failed', 'dead'));
ALTER TABLE deliveries DROP COLUMN next_attempt_at;
ALTER TABLE deliveries DROP COLUMN lease_until;
ALTER TABLE deliveries DROP COLUMN claim;
