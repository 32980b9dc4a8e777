DROP TABLE webhook_ids;
ALTER TABLE submissions DROP COLUMN erased_at;
ALTER TABLE deliveries DROP COLUMN calling_at;
DROP TABLE erasures;
DROP FUNCTION quizflow_contact_hash(text, text);
DROP TABLE quizflow_keys;
