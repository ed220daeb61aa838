-- bench/sql/queue_reset.sql: the same starting point before every measured
-- drain of bench/queue: no job rows left over, the dead tuples of the last
-- drain vacuumed away, fresh statistics, and a checkpoint so no earlier
-- run's dirty pages are written during this one.
DELETE FROM ragpool.jobs;
VACUUM ANALYZE ragpool.jobs;
VACUUM ANALYZE ragpool.dead_jobs;
DELETE FROM graphile_worker._private_jobs;
VACUUM ANALYZE graphile_worker._private_jobs;
VACUUM ANALYZE graphile_worker._private_job_queues;
CHECKPOINT;
