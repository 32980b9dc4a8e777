DROP INDEX deliveries_provider_message_id;
ALTER TABLE deliveries DROP COLUMN provider_message_id;
DROP INDEX deliveries_cancel_key;
ALTER TABLE deliveries DROP COLUMN cancel_key;
