-- Cost of the stats triggers on the ledger's write path, triggers on and off alternated in
-- one run. On a migrated database: psql "$DATABASE_URL" -f benchmarks/sql/stats_triggers.sql
-- Trigger overhead: the batcher's bulk insert (1000 ledger rows per statement) and the
-- workers' batched status write (64 rows per statement), with the stats triggers on and off,
-- alternated in one run.
CREATE TEMP TABLE results (mode text, op text, ms double precision);
DO $$
DECLARE
  t0 timestamptz; camp uuid := gen_random_uuid(); ids uuid[]; r int; i int; mode text;
BEGIN
  FOR r IN 1..6 LOOP
    FOREACH mode IN ARRAY ARRAY['on','off'] LOOP
      IF mode = 'off' THEN
        EXECUTE 'ALTER TABLE deliveries DISABLE TRIGGER deliveries_count_ins';
        EXECUTE 'ALTER TABLE deliveries DISABLE TRIGGER deliveries_count_upd';
      ELSE
        EXECUTE 'ALTER TABLE deliveries ENABLE TRIGGER deliveries_count_ins';
        EXECUTE 'ALTER TABLE deliveries ENABLE TRIGGER deliveries_count_upd';
      END IF;
      t0 := clock_timestamp();
      FOR i IN 1..50 LOOP
        SELECT array_agg(gen_random_uuid()) INTO ids FROM generate_series(1, 500);
        INSERT INTO deliveries (submission_id, campaign_id, channel, campaign_version, priority, status)
        SELECT s, camp, ch, 1, 'normal', 'queued' FROM unnest(ids) s, unnest(ARRAY['sms','email']) ch;
        -- status writes of those rows, in batches of 64 rows (32 submissions x 2 channels)
        FOR k IN 0..14 LOOP
          UPDATE deliveries SET status = 'sent', updated_at = now()
          WHERE submission_id = ANY(ids[k*32+1:(k+1)*32]) AND campaign_id = camp;
        END LOOP;
      END LOOP;
      INSERT INTO results VALUES (mode, 'insert 1000 + 15 x update 64', extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
  END LOOP;
  EXECUTE 'ALTER TABLE deliveries ENABLE TRIGGER deliveries_count_ins';
  EXECUTE 'ALTER TABLE deliveries ENABLE TRIGGER deliveries_count_upd';
END $$;
SELECT mode, round(sum(ms)::numeric, 0) AS total_ms, round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 0) AS median_round_ms FROM results GROUP BY mode;
