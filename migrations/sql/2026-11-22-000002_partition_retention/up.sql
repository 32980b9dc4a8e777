-- Drops monthly partitions of `submissions` that end before the start of the month
-- `keep_months` months ago (drop, not delete: instant and leaves no bloat). Returns how many.
CREATE FUNCTION quizflow_drop_old_submission_partitions(keep_months int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    cutoff date := (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => keep_months))::date;
    part record;
    dropped int := 0;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'submissions'::regclass AND c.relname ~ '^submissions_[0-9]{4}_[0-9]{2}$'
    LOOP
        IF to_date(substr(part.relname, 13), 'YYYY_MM') < cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

