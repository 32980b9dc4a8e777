-- Attempt history of each delivery ({at, outcome, detail}), appended by the workers in batches;
-- it travels with a dead letter.
ALTER TABLE deliveries ADD COLUMN history jsonb NOT NULL DEFAULT '[]';
