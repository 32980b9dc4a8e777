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
    PRIMARY KEY (channel, contact_hash, reason),
    CONSTRAINT suppressions_scope CHECK (scope IN ('marketing', 'all')),
    CONSTRAINT suppressions_reason CHECK (reason IN ('opt_out_keyword', 'unsubscribe_link',
        'hard_bounce', 'complaint', 'provider_opt_out', 'admin'))
);
CREATE INDEX suppressions_created_at ON suppressions (created_at);

-- Sends counted against frequency caps: one row per ledger row whose send was claimed while
-- a cap applied to it (a retry of the same row is not counted again).
CREATE TABLE contact_sends (
    submission_id uuid        NOT NULL,
    campaign_id   uuid        NOT NULL,
    channel       text        NOT NULL,
    step          smallint    NOT NULL,
    contact_hash  bytea       NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (submission_id, campaign_id, channel, step)
);
CREATE INDEX contact_sends_contact ON contact_sends (channel, contact_hash, claimed_at);

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
