-- bench/sql/queue_graphile_enqueue.sql: add :n no-op jobs to graphile-worker
-- in one statement with graphile_worker.add_jobs(), its bulk form (one call,
-- one array of job specs); they become visible together when it commits.
-- Used by bench/queue.  psql variables: n.
SELECT count(*)
  FROM graphile_worker.add_jobs(ARRAY(
         SELECT ROW('noop', '{}'::json, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
           FROM generate_series(1, :n)));
