ALTER TABLE deliveries DROP CONSTRAINT deliveries_status;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status
    CHECK (status IN ('scheduled', 'queued', 'sending', 'sent', 'delivered', 'failed', 'dead', 'cancelled'));
ALTER TABLE submissions DROP COLUMN timezone;
DROP TABLE window_slots;
DROP TABLE contact_sends;
DROP TABLE suppressions;
DROP FUNCTION quizflow_count_suppressions();
DELETE FROM stat_deltas WHERE metric = 'suppressions';
DELETE FROM stat_counts WHERE metric = 'suppressions';
DELETE FROM quizflow_keys WHERE name = 'hash_key_fingerprint';
