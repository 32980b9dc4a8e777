-- One send per job: a worker claims a ledger row (queued|failed -> sending) with a lease
-- before it calls the provider; `claim` is its token, so a late or duplicate worker's write
-- cannot land on a row someone else holds. `cancelled`: the campaign was deactivated, ended
-- or deleted before the job was sent.
ALTER TABLE deliveries ADD COLUMN claim uuid;
ALTER TABLE deliveries ADD COLUMN lease_until timestamptz;
-- The earliest a waiting job (backoff after a failure, `Retry-After` after a throttle) may be
-- claimed again: a copy that arrives early (a re-publish) waits too.
ALTER TABLE deliveries ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status
    CHECK (status IN ('queued', 'sending', 'sent', 'delivered', 'failed', 'dead', 'cancelled'));

-- Every version of every campaign: a job renders with the version it was matched under.
CREATE TABLE campaign_versions (
    campaign_id uuid        NOT NULL,
    version     integer     NOT NULL,
    definition  jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, version)
);
INSERT INTO campaign_versions (campaign_id, version, definition)
    SELECT id, version, definition FROM campaigns ON CONFLICT DO NOTHING;

-- Redrive outbox: `redriven_at` is committed with the ledger reset, `redrive_published_at`
-- once JetStream acknowledged the job. A row with the first and not the second is published
-- again by any workers process (same message id, so a copy inside the window is dropped).
ALTER TABLE dead_letters ADD COLUMN redrive_published_at timestamptz;
CREATE INDEX dead_letters_redrive_pending ON dead_letters (redriven_at)
    WHERE redriven_at IS NOT NULL AND redrive_published_at IS NULL;

-- Attempt histories are capped: the newest `keep` entries stay.
CREATE FUNCTION quizflow_cap_history(h jsonb, keep int) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_array_length(h) <= keep THEN h
        ELSE (SELECT jsonb_agg(e ORDER BY n) FROM jsonb_array_elements(h) WITH ORDINALITY AS t(e, n)
              WHERE n > jsonb_array_length(h) - keep) END
$$;
