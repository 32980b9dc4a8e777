-- Direct messages (`POST /v1/messages`, contract §3.3): a message is its own campaign (its
-- ledger rows' campaign id is its submission id; its spec is that id's version 1 in
-- `campaign_versions`). The delivery counters add them up under one id,
-- 00000000-0000-0000-0000-000000000001 ("direct messages"), not one counter row per message.
CREATE OR REPLACE FUNCTION quizflow_count_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO stat_deltas (metric, campaign_id, channel, status, n)
        SELECT 'deliveries', (CASE WHEN campaign_id = submission_id THEN '00000000-0000-0000-0000-000000000001'::uuid ELSE campaign_id END), channel, status, count(*) FROM new_rows
        GROUP BY 2, channel, status;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO stat_deltas (metric, campaign_id, channel, status, n)
        SELECT 'deliveries', (CASE WHEN campaign_id = submission_id THEN '00000000-0000-0000-0000-000000000001'::uuid ELSE campaign_id END), channel, status, -count(*) FROM old_rows
        GROUP BY 2, channel, status;
    ELSE
        INSERT INTO stat_deltas (metric, campaign_id, channel, status, n)
        SELECT 'deliveries', campaign_id, channel, status, sum(d)
        FROM (SELECT (CASE WHEN campaign_id = submission_id THEN '00000000-0000-0000-0000-000000000001'::uuid ELSE campaign_id END) AS campaign_id, channel, status, -1 AS d FROM old_rows
              UNION ALL
              SELECT (CASE WHEN campaign_id = submission_id THEN '00000000-0000-0000-0000-000000000001'::uuid ELSE campaign_id END), channel, status, 1 FROM new_rows) x
        GROUP BY campaign_id, channel, status
        HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END $$;
