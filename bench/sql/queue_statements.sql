-- bench/sql/queue_statements.sql: where Postgres spent its time during one
-- profiled drain of bench/queue (pg_stat_statements, preloaded for the
-- profile pass only): per statement, calls, execution time, time per call
-- and per row returned (a claim or an acknowledgement returns one row per
-- job, so that column is the cost per job).
SELECT calls,
       round(total_exec_time::numeric, 0) AS exec_ms,
       round((total_exec_time / greatest(calls, 1))::numeric, 3) AS ms_per_call,
       rows,
       round((1000 * total_exec_time / greatest(rows, 1))::numeric, 1) AS us_per_row,
       left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND query !~* 'pg_stat_statements_reset'
 ORDER BY total_exec_time DESC
 LIMIT 6;
