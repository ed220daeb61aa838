-- bench/sql/sample.sql: the in-flight sampler of bench/pipeline.  Every
-- 100 ms, in its own short transaction (so it never holds back vacuum of
-- the hot jobs table), it prints one line:
--     <epoch seconds> <jobs running> <t|f: any job row left>
-- The running count reads the partial index on running jobs, and the
-- existence test stops at the first row, so a sample costs well under a
-- millisecond of Postgres time.  Run with psql -tA -F' ' -f; stop it with
-- a signal.
SELECT round(extract(epoch FROM clock_timestamp())::numeric, 3),
       (SELECT count(*) FROM ragpool.jobs WHERE state = 'running'),
       EXISTS (SELECT 1 FROM ragpool.jobs) \watch 0.1
