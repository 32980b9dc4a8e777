-- The per-campaign counters as before.
CREATE OR REPLACE FUNCTION quizflow_count_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
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
