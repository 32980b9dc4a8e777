DROP INDEX deliveries_cancel_key;
ALTER TABLE deliveries DROP COLUMN cancel_key;
