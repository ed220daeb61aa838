-- bench/sql/reset.sql: an empty pipeline before each measured phase of
-- bench/pipeline: no answers, no dead letters, no jobs left over from an
-- earlier phase, and fresh statistics so every phase plans alike.
TRUNCATE public.conversations;
TRUNCATE ragpool.dead_jobs;
DELETE FROM ragpool.jobs;
VACUUM ANALYZE ragpool.jobs;
VACUUM ANALYZE public.conversations;
