-- bench/sql/queue_enqueue.sql: enqueue :n no-op jobs into ragpool's Postgres
-- queue in one statement, the documented way (ragpool.enqueue); the rows
-- become visible together when it commits, and the identical NOTIFYs of one
-- transaction merge into one.  Used by bench/queue.  psql variables: n.
SELECT count(ragpool.enqueue('noop', '{}'::jsonb)) FROM generate_series(1, :n);
