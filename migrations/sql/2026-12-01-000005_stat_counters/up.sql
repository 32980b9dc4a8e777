-- Counters for GET /v1/stats that stay cheap at any table size (issue 8): triggers append
-- per-statement deltas (no row locks shared between writers), and a compaction folds them
-- into stat_counts. A read sums both, so it is exact whether or not compaction ran.
CREATE TABLE stat_counts (
    metric      text   NOT NULL,
    campaign_id uuid   NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    channel     text   NOT NULL DEFAULT '',
    status      text   NOT NULL DEFAULT '',
    n           bigint NOT NULL,
    PRIMARY KEY (metric, campaign_id, channel, status)
);

CREATE TABLE stat_deltas (
    metric      text   NOT NULL,
    campaign_id uuid   NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    channel     text   NOT NULL DEFAULT '',
    status      text   NOT NULL DEFAULT '',
    n           bigint NOT NULL
);

-- deliveries: one row per (campaign, channel, status) and statement.
CREATE FUNCTION quizflow_count_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO stat_deltas (metric, campaign_id, channel, status, n)
        SELECT 'deliveries', campaign_id, channel, status, count(*) FROM new_rows
        GROUP BY campaign_id, channel, status;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO stat_deltas (metric, campaign_id, channel, status, n)
        SELECT 'deliveries', campaign_id, channel, status, -count(*) FROM old_rows
        GROUP BY campaign_id, channel, status;
    ELSE
        INSERT INTO stat_deltas (metric, campaign_id, channel, status, n)
        SELECT 'deliveries', campaign_id, channel, status, sum(d)
        FROM (SELECT campaign_id, channel, status, -1 AS d FROM old_rows
              UNION ALL
              SELECT campaign_id, channel, status, 1 FROM new_rows) x
        GROUP BY campaign_id, channel, status
        HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_count_ins AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_deliveries();
CREATE TRIGGER deliveries_count_upd AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_deliveries();
CREATE TRIGGER deliveries_count_del AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_deliveries();

-- submission_ids: one row per stored submission (never updated).
CREATE FUNCTION quizflow_count_submissions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO stat_deltas (metric, n) SELECT 'submissions_stored', count(*) FROM new_rows HAVING count(*) > 0;
    ELSE
        INSERT INTO stat_deltas (metric, n) SELECT 'submissions_stored', -count(*) FROM old_rows HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER submission_ids_count_ins AFTER INSERT ON submission_ids
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_submissions();
CREATE TRIGGER submission_ids_count_del AFTER DELETE ON submission_ids
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_submissions();

-- dead_letters: open letters (not redriven) per channel, `submission` for poison submissions.
CREATE FUNCTION quizflow_count_dead_letters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO stat_deltas (metric, channel, n)
        SELECT 'dead_letters', coalesce(channel, kind), count(*) FROM new_rows
        WHERE redriven_at IS NULL GROUP BY 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO stat_deltas (metric, channel, n)
        SELECT 'dead_letters', coalesce(channel, kind), -count(*) FROM old_rows
        WHERE redriven_at IS NULL GROUP BY 2;
    ELSE
        INSERT INTO stat_deltas (metric, channel, n)
        SELECT 'dead_letters', ch, sum(d)
        FROM (SELECT coalesce(channel, kind) AS ch, -1 AS d FROM old_rows WHERE redriven_at IS NULL
              UNION ALL
              SELECT coalesce(channel, kind), 1 FROM new_rows WHERE redriven_at IS NULL) x
        GROUP BY ch HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER dead_letters_count_ins AFTER INSERT ON dead_letters
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_dead_letters();
CREATE TRIGGER dead_letters_count_upd AFTER UPDATE ON dead_letters
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_dead_letters();
CREATE TRIGGER dead_letters_count_del AFTER DELETE ON dead_letters
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION quizflow_count_dead_letters();

-- What exists already, counted once.
INSERT INTO stat_counts (metric, campaign_id, channel, status, n)
SELECT 'deliveries', campaign_id, channel, status, count(*) FROM deliveries GROUP BY 2, 3, 4;
INSERT INTO stat_counts (metric, n) SELECT 'submissions_stored', count(*) FROM submission_ids;
INSERT INTO stat_counts (metric, channel, n)
SELECT 'dead_letters', coalesce(channel, kind), count(*) FROM dead_letters WHERE redriven_at IS NULL GROUP BY 2;

-- Live reports of each running role instance (circuit states, counters kept in memory):
-- shared through the database so any API instance can show every worker's breakers.
CREATE TABLE instance_reports (
    instance text        PRIMARY KEY,
    role     text        NOT NULL,
    report   jsonb       NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
