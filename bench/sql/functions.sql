-- bench/sql/functions.sql: where Postgres spends its time during the
-- profile pass of bench/pipeline, per SQL function (needs track_functions,
-- which the pass turns on with ALTER SYSTEM in its private cluster).
-- Functions the planner inlines (plain SQL ones) are not listed.
SELECT schemaname || '.' || funcname AS function, calls,
       round(total_time::numeric, 0) AS total_ms,
       round(self_time::numeric, 0) AS self_ms,
       round((total_time / greatest(calls, 1))::numeric, 3) AS ms_per_call
  FROM pg_stat_user_functions
 ORDER BY total_time DESC
 LIMIT 12;
