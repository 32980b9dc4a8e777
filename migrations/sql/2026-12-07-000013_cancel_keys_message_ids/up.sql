-- An action's `cancel_key`, rendered per submission at match time (contract §3.3):
-- `POST /v1/cancellations` cancels every pending row with that key. Most rows have none, so
-- the index holds only those that do.
ALTER TABLE deliveries ADD COLUMN cancel_key text;
CREATE INDEX deliveries_cancel_key ON deliveries (cancel_key) WHERE cancel_key IS NOT NULL;

-- The provider's id of a sent message, kept only for providers whose delivery reports name
-- nothing else (Evolution API's `keyId`): its report finds the row by it.
ALTER TABLE deliveries ADD COLUMN provider_message_id text;
CREATE INDEX deliveries_provider_message_id ON deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
