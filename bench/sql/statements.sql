-- bench/sql/statements.sql: the statements Postgres spent its time on
-- during the profile pass of bench/pipeline (pg_stat_statements, which the
-- pass preloads in its private cluster, with planning time tracked).
SELECT calls,
       round(total_exec_time::numeric, 0) AS exec_ms,
       round(total_plan_time::numeric, 0) AS plan_ms,
       round(((total_exec_time + total_plan_time) / greatest(calls, 1))::numeric, 3) AS ms_per_call,
       rows,
       left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY total_exec_time + total_plan_time DESC
 LIMIT 12;
