DROP TABLE erasure_jobs;
DROP TABLE webhook_ids;
ALTER TABLE submissions DROP COLUMN erased_at;
ALTER TABLE deliveries DROP COLUMN calling_at;
ALTER TABLE deliveries DROP COLUMN repeat_until;
DROP TABLE erasures;
DROP FUNCTION quizflow_contact_hash(text, text);
DROP TABLE quizflow_keys;
