DROP INDEX IF EXISTS submissions_received_brin;
