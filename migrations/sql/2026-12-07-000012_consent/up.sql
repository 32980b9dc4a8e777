-- The people quizflow messages (contract §3.2, issue 24).

-- Suppressed contacts: a keyed hash of the normalised contact (QUIZFLOW_HASH_KEY; no
-- personal data, so an entry outlives the person's erasure), per channel and reason. `scope`
-- says which purposes it stops: `marketing`, or `all` (transactional messages too).
CREATE TABLE suppressions (
    channel      text        NOT NULL,
    contact_hash bytea       NOT NULL,
    reason       text        NOT NULL,
    scope        text        NOT NULL,
    source       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Covering: both checks (at match, before each call) are index-only scans of it.
    PRIMARY KEY (channel, contact_hash, reason) INCLUDE (scope),
    CONSTRAINT suppressions_scope CHECK (scope IN ('marketing', 'all')),
    CONSTRAINT suppressions_reason CHECK (reason IN ('opt_out_keyword', 'unsubscribe_link',
        'hard_bounce', 'complaint', 'provider_opt_out', 'admin'))
);
CREATE INDEX suppressions_created_at ON suppressions (created_at);

-- Entries per channel and reason for GET /v1/stats, as the ledger's are (migration 5): a
-- statement-level delta, never a count over the list.
CREATE FUNCTION quizflow_count_suppressions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO stat_deltas (metric, channel, status, n)
        SELECT 'suppressions', channel, reason, count(*) FROM new_rows GROUP BY channel, reason;
    ELSE
        INSERT INTO stat_deltas (metric, channel, status, n)
        SELECT 'suppressions', channel, reason, -count(*) FROM old_rows GROUP BY channel, reason;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER suppressions_count_ins AFTER INSERT ON suppressions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_suppressions();
CREATE TRIGGER suppressions_count_del AFTER DELETE ON suppressions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_suppressions();

-- Sends counted against frequency caps: one row per ledger row whose send was claimed while
-- a cap applied to it. A claim counts under a per-contact lock and reads the contact's rows
-- first, so a retry of the same row is not counted again: no unique key is needed, and the
-- one index covers the read. Rows past the longest window a cap may have (31 days) are
-- pruned hourly.
CREATE TABLE contact_sends (
    submission_id uuid        NOT NULL,
    campaign_id   uuid        NOT NULL,
    channel       text        NOT NULL,
    step          smallint    NOT NULL,
    contact_hash  bytea       NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contact_sends_contact ON contact_sends (channel, contact_hash, claimed_at)
    INCLUDE (campaign_id, submission_id, step);

-- Quiet hours: how many messages each window opening already holds per channel, so a burst
-- deferred to 09:00 is spread at the provider's rate from 09:00 on, cluster-wide.
CREATE TABLE window_slots (
    channel text        NOT NULL,
    opening timestamptz NOT NULL,
    taken   bigint      NOT NULL,
    PRIMARY KEY (channel, opening)
);

ALTER TABLE submissions ADD COLUMN timezone text;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status
    CHECK (status IN ('scheduled', 'queued', 'sending', 'sent', 'delivered', 'failed', 'dead',
                      'cancelled', 'suppressed', 'capped', 'skipped'));
