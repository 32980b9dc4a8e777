-- quizflow initial schema (SPEC §5).

-- "Stored at most once, ever": a partitioned table cannot be unique on id alone, so this small
-- unpartitioned table is the guard. The batcher inserts here first, in the same transaction,
-- and only ids that were new go on to `submissions`.
CREATE TABLE submission_ids (
    id          uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL
);

-- Leads, partitioned by month on the receipt time the API set (it travels in the message, so
-- a redelivered message lands on the same partition and row). `json`, not `jsonb`, for the
-- free-form columns: they are written in bulk on the hot path and read back whole.
CREATE TABLE submissions (
    id              uuid             NOT NULL,
    quiz_id         text             NOT NULL,
    received_at     timestamptz      NOT NULL,
    completed_at    timestamptz      NOT NULL,
    score           double precision,
    phone           text,
    email           text,
    name            text,
    locale          text,
    answers         json             NOT NULL,
    tags            text[]           NOT NULL,
    metadata        json             NOT NULL,
    idempotency_key text,
    stream_seq      bigint           NOT NULL,
    stored_at       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);

CREATE INDEX submissions_quiz_received ON submissions (quiz_id, received_at);

-- Creates the monthly partitions of `submissions` from the month of `from_ts` for `months`
-- months; existing ones are left alone. Called by migrations and by every batcher at start.
CREATE FUNCTION quizflow_ensure_submission_partitions(from_ts timestamptz, months int)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m date := date_trunc('month', from_ts AT TIME ZONE 'UTC')::date;
    i int;
    name text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        name := format('submissions_%s', to_char(m, 'YYYY_MM'));
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF submissions FOR VALUES FROM (%L) TO (%L)',
            name, (m::timestamp AT TIME ZONE 'UTC'), ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
        m := (m + interval '1 month')::date;
    END LOOP;
END $$;

SELECT quizflow_ensure_submission_partitions(now() - interval '1 month', 4);

CREATE TABLE campaigns (
    id          uuid        PRIMARY KEY,
    version     integer     NOT NULL DEFAULT 1,
    name        text        NOT NULL,
    active      boolean     NOT NULL,
    quiz_id     text,
    priority    text        NOT NULL,
    definition  jsonb       NOT NULL,
    starts_at   timestamptz,
    ends_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The send ledger: one row per (submission, campaign, channel), ever. The job id is derived
-- from that triple, so the triple is the key and there is no second unique index to pay for
-- on the hot insert path.
CREATE TABLE deliveries (
    submission_id    uuid        NOT NULL,
    campaign_id      uuid        NOT NULL,
    channel          text        NOT NULL,
    campaign_version integer     NOT NULL,
    priority         text        NOT NULL,
    status           text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (submission_id, campaign_id, channel),
    CONSTRAINT deliveries_status CHECK (status IN ('queued', 'sending', 'sent', 'delivered', 'failed', 'dead'))
);

-- Mirror of DEAD_LETTERS for inspection and redrive.
CREATE TABLE dead_letters (
    id            uuid        PRIMARY KEY,
    kind          text        NOT NULL,
    channel       text,
    submission_id uuid,
    campaign_id   uuid,
    recipient     text,
    class         text        NOT NULL,
    reason        text        NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    history       jsonb       NOT NULL DEFAULT '[]',
    payload       bytea,
    failed_at     timestamptz NOT NULL DEFAULT now(),
    redriven_at   timestamptz
);

CREATE INDEX dead_letters_open ON dead_letters (channel, failed_at) WHERE redriven_at IS NULL;
