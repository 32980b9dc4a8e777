DROP TABLE dead_letters;
DROP TABLE deliveries;
DROP TABLE campaigns;
DROP FUNCTION quizflow_ensure_submission_partitions(timestamptz, int);
DROP TABLE submissions;
DROP TABLE submission_ids;
