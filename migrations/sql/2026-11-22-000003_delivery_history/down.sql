ALTER TABLE deliveries DROP COLUMN history;
