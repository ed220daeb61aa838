-- bench/sql/enqueue.sql: pgbench script for the latency phase of
-- bench/pipeline.  One chat job per transaction, for the demo user (whose
-- swaps deploy/local/demo_seed.sql loads, so the history stage has work),
-- run open loop at a fixed rate with `pgbench -R`.  The number keeps the
-- questions distinct, as real traffic is.
\set q random(1, 1000000)
SELECT ragpool.enqueue_chat('00000000-0000-4000-8000-000000000001'::uuid,
                            'What is TON token and how do I stake it? #' || :q);
