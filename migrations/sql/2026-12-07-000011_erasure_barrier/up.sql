-- Erasure as a barrier (SPEC §4 "Erased means erased").
--
-- Tombstones: a keyed hash of each erased contact and when it was erased. The batcher's
-- store transaction checks them, so a lead received before an erasure but stored after it
-- (a batch in a batcher's hands, a message redelivered) never stores the person again. The
-- key is random per database and never leaves it: the table holds no personal data, and a
-- tombstone outlives the erasure it records.
CREATE TABLE quizflow_keys (
    name text  PRIMARY KEY,
    key  bytea NOT NULL
);
INSERT INTO quizflow_keys (name, key)
VALUES ('contact', decode(md5(gen_random_uuid()::text) || md5(gen_random_uuid()::text), 'hex'));

CREATE FUNCTION quizflow_contact_hash(kind text, contact text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT encode(sha256((SELECT key FROM quizflow_keys WHERE name = 'contact')
                         || convert_to(kind || ':' || contact, 'UTF8')), 'hex')
$$;

CREATE TABLE erasures (
    contact   text        PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);

-- Set when a claim's holder is about to call the provider (checked in one statement per
-- group of calls): an erasure cancels every claimed row not yet calling, and waits for the
-- calls already under way to be recorded.
ALTER TABLE deliveries ADD COLUMN calling_at timestamptz;

-- Webhook deliveries already applied, by the sender's id (Svix's `svix-id`): a signed request
-- replayed inside the signature's 5-minute window is answered without effect. Kept 10 minutes.
CREATE TABLE webhook_ids (
    id      text        PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_ids_seen_at ON webhook_ids (seen_at);

-- When a submission's person was erased (by an erasure, or at storage when the erasure came
-- first): replay skips such rows from either source.
ALTER TABLE submissions ADD COLUMN erased_at timestamptz;

-- A recurring action's occurrence keeps only the next one on the ledger: the firer writes the
-- one after when it fires it, up to this time (the action's `until`, rendered at match).
ALTER TABLE deliveries ADD COLUMN repeat_until timestamptz;

-- Erasure sweeps (the stream scan grows with the streams): `POST /v1/respondents/erase`
-- answers 202 with one of these when it does not finish within a few seconds. Counts only:
-- no personal data.
CREATE TABLE erasure_jobs (
    id          uuid        PRIMARY KEY,
    status      text        NOT NULL DEFAULT 'running',
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    result      jsonb,
    error       text
);
