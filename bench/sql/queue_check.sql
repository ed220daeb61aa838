-- bench/sql/queue_check.sql: what a drain left behind, one line:
-- ragpool job rows, ragpool dead letters, conversations rows (no-op jobs
-- write none), graphile-worker job rows (a failed job would stay there).
SELECT (SELECT count(*) FROM ragpool.jobs) AS ragpool_jobs,
       (SELECT count(*) FROM ragpool.dead_jobs) AS ragpool_dead,
       (SELECT count(*) FROM public.conversations) AS conversations,
       (SELECT count(*) FROM graphile_worker._private_jobs) AS graphile_jobs;
