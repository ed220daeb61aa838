-- 0013: claim by row address.
--
-- 0012 found the rows it had just locked again through the primary key:
-- `id = ANY (array)` is a bitmap scan of jobs_pkey, one descent per id,
-- 4.3 ms of a 12.4 ms claim of 1,024 jobs.  The subquery now returns the
-- locked rows' ctids and the UPDATE reads them with a TID scan (2.3 ms; the
-- claim 10.8 ms).  This is safe: FOR UPDATE holds each row from the
-- subquery to the UPDATE in the same statement, so nothing else can move
-- it in between (and were a row ever moved, the TID recheck would skip it,
-- leaving it queued for the next claim rather than claiming it twice).
-- And the jobs of one claim share one lease id (see t_lease).  Everything
-- else is as in 0012.

CREATE OR REPLACE FUNCTION ragpool.claim_jobs(worker text, n int, lease_ms int, kinds text[] DEFAULT NULL)
RETURNS TABLE (id uuid, kind text, payload jsonb, attempts int, max_attempts int, lease_id uuid, queued_ms float8)
LANGUAGE plpgsql AS
$$
DECLARE
    r ragpool.jobs;
    -- The clock read once, into a variable: a volatile clock_timestamp()
    -- in a WHERE clause cannot be an index condition, a variable can.
    t_now timestamptz := clock_timestamp();
    -- One lease id for the jobs of one claim: a lease names the claim that
    -- holds a job (each terminal write names the job and its lease), and a
    -- later claim of the same job draws a new one.  gen_random_uuid() per
    -- row was ~1 us of a ~10 us claim per job.
    t_lease uuid := gen_random_uuid();
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
           lease_id = t_lease,
           locked_until = clock_timestamp() + lease_ms * interval '1 millisecond',
           updated_at = t_now
     WHERE j.ctid = ANY (ARRAY(
        SELECT q.ctid FROM ragpool.jobs q
         WHERE q.state = 'queued' AND q.run_at <= t_now
           AND (kinds IS NULL OR q.kind = ANY (kinds))
         ORDER BY q.priority DESC, q.run_at, q.id
         LIMIT n
         FOR UPDATE SKIP LOCKED))
    RETURNING j.id, j.kind, j.payload, j.attempts, j.max_attempts, j.lease_id,
              extract(epoch FROM t_now - j.created_at)::float8 * 1000;
END
$$;
