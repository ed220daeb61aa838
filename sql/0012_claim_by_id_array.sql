-- 0012: claim by an array of ids.
--
-- With a deep queue (10^5 jobs), 0004's `UPDATE ... FROM due` was planned as
-- a hash join over a full scan of ragpool.jobs: 29 ms of a 42 ms claim of
-- 1,024 jobs, and the worker keeps one claim in flight, so that capped the
-- drain rate.  `WHERE id = ANY (ARRAY(SELECT ... FOR UPDATE SKIP LOCKED))`
-- is an index lookup per claimed id: 12 ms for the same claim, about +60%
-- jobs/s on the no-op drain benchmark (bench/queue).  Everything else is as
-- in 0004.

CREATE OR REPLACE FUNCTION ragpool.claim_jobs(worker text, n int, lease_ms int, kinds text[] DEFAULT NULL)
RETURNS TABLE (id uuid, kind text, payload jsonb, attempts int, max_attempts int, lease_id uuid, queued_ms float8)
LANGUAGE plpgsql AS
$$
DECLARE
    r ragpool.jobs;
    -- The clock read once, into a variable: a volatile clock_timestamp()
    -- in a WHERE clause cannot be an index condition, a variable can.
    t_now timestamptz := clock_timestamp();
BEGIN
    IF n IS NULL OR n < 1 OR lease_ms IS NULL OR lease_ms < 1 THEN
        RAISE EXCEPTION 'ragpool.claim_jobs: n and lease_ms must be positive' USING ERRCODE = '22023';
    END IF;

    -- Expired leases first: a short range scan of jobs_lease_idx when there
    -- are none.  (It selects id, which is not in the index, so it is a plain
    -- index scan: those mark the entries of deleted jobs dead as they pass,
    -- index-only scans do not.)  Rows another session holds are skipped: it
    -- is reaping or finishing them.
    IF EXISTS (SELECT j.id FROM ragpool.jobs j
                WHERE j.state = 'running' AND j.locked_until <= t_now) THEN
        FOR r IN SELECT * FROM ragpool.jobs j
                  WHERE j.state = 'running' AND j.locked_until <= t_now
                    AND j.attempts >= j.max_attempts
                  FOR UPDATE SKIP LOCKED
        LOOP
            PERFORM ragpool.dead_letter(r, 'lease_expired',
                coalesce(r.last_error || '; ', '') || 'lease expired on attempt ' || r.attempts
                    || ' (worker ' || coalesce(r.locked_by, '?') || ')',
                NULL);
        END LOOP;
        UPDATE ragpool.jobs j
           SET state = 'queued', locked_by = NULL, lease_id = NULL, locked_until = NULL,
               last_error = 'lease expired on attempt ' || j.attempts
                            || ' (worker ' || coalesce(j.locked_by, '?') || ')',
               updated_at = t_now
         WHERE j.id IN (SELECT e.id FROM ragpool.jobs e
                         WHERE e.state = 'running' AND e.locked_until <= t_now
                           AND e.attempts < e.max_attempts
                         FOR UPDATE SKIP LOCKED);
    END IF;

    RETURN QUERY
    UPDATE ragpool.jobs j
       SET state = 'running', attempts = j.attempts + 1, locked_by = worker,
           lease_id = gen_random_uuid(),
           locked_until = clock_timestamp() + lease_ms * interval '1 millisecond',
           updated_at = t_now
     WHERE j.id = ANY (ARRAY(
        SELECT q.id FROM ragpool.jobs q
         WHERE q.state = 'queued' AND q.run_at <= t_now
           AND (kinds IS NULL OR q.kind = ANY (kinds))
         ORDER BY q.priority DESC, q.run_at, q.id
         LIMIT n
         FOR UPDATE SKIP LOCKED))
    RETURNING j.id, j.kind, j.payload, j.attempts, j.max_attempts, j.lease_id,
              extract(epoch FROM t_now - j.created_at)::float8 * 1000;
END
$$;
