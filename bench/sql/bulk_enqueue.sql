-- bench/sql/bulk_enqueue.sql: enqueue :n chat jobs in one statement (the
-- throughput phase of bench/pipeline fills the queue before the worker
-- starts).  Identical NOTIFYs in one transaction merge into one.
-- psql variables: n.
SELECT count(ragpool.enqueue_chat('00000000-0000-4000-8000-000000000001'::uuid,
                                  'What is TON token and how do I stake it? #' || i))
  FROM generate_series(1, :n) AS i;
