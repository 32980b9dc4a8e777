-- Stats at scale: 10 million ledger rows and 5 million stored submissions, for timing
-- GET /v1/stats against them (see README, Benchmarks). Run on a migrated, empty database:
--   psql "$DATABASE_URL" -f benchmarks/sql/stats_10m.sql
\timing on
CREATE TEMP TABLE camps AS SELECT gen_random_uuid() AS id, n FROM generate_series(1,20) n;
INSERT INTO campaigns (id, name, active, priority, definition) SELECT id, 'c' || n, true, 'normal', '{}' FROM camps;
DO $$
BEGIN
  FOR i IN 1..10 LOOP
    INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status)
    SELECT gen_random_uuid(), (SELECT id FROM camps WHERE n = 1 + (g % 20)),
           (ARRAY['sms','email','whatsapp','webhook'])[1 + (g % 4)], 1, 'normal',
           (ARRAY['sent','sent','sent','delivered','queued','failed','dead','cancelled'])[1 + (g % 8)]
    FROM generate_series(1, 1000000) g;
    COMMIT;
  END LOOP;
END $$;
INSERT INTO submission_ids (id, received_at) SELECT gen_random_uuid(), now() FROM generate_series(1, 5000000);
SELECT count(*) FROM stat_deltas;
