-- 0004_queue.sql: the Postgres job queue (schema ragpool) and its functions,
-- as docs/CONTRACTS.md fixes them.
--
-- Invariants:
--  * A job row is `queued` (waiting, possibly until run_at) or `running`
--    (held under a lease: lease_id, locked_by, locked_until).  Finished jobs
--    are deleted: the conversations row (unique job_id) is the record, and a
--    job that failed for good is moved to ragpool.dead_jobs.
--  * The attempt is counted when a job is claimed, so a payload that crashes
--    its worker still reaches max_attempts.
--  * Leases run on the server's clock (clock_timestamp()), and every
--    terminal write (complete, fail, release) happens only while the caller
--    still holds the lease: lease_id matches and locked_until is in the
--    future.  A worker paused past its lease writes nothing.
--  * NOTIFY ragpool_jobs (no payload) when jobs become due; NOTIFY
--    ragpool_done when conversations rows are committed.

CREATE TABLE IF NOT EXISTS ragpool.jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running')),
    priority int NOT NULL DEFAULT 0,
    attempts int NOT NULL DEFAULT 0,
    max_attempts int NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    locked_by text,
    lease_id uuid,
    locked_until timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (fillfactor = 70);

-- The claim scan: due jobs, highest priority first, then oldest.
CREATE INDEX IF NOT EXISTS jobs_claim_idx
    ON ragpool.jobs (priority DESC, run_at, id) WHERE state = 'queued';
-- The reaper's scan: running jobs by lease expiry.
CREATE INDEX IF NOT EXISTS jobs_lease_idx
    ON ragpool.jobs (locked_until) WHERE state = 'running';

-- Every job leaves dead row versions behind (claim, then delete): vacuum
-- this small, hot table early and without throttling, so the claim scans
-- stay short.
ALTER TABLE ragpool.jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000);

CREATE TABLE IF NOT EXISTS ragpool.dead_jobs (
    id uuid PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    attempts int NOT NULL,
    max_attempts int NOT NULL,
    reason text NOT NULL,
    last_error text,
    created_at timestamptz NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS dead_jobs_failed_at_idx ON ragpool.dead_jobs (failed_at DESC);

-- ---------------------------------------------------------------------------
-- Enqueueing

-- The generic form.  job_id is the idempotency key: an id already known
-- (queued, running, finished or dead) returns that id and changes nothing.
CREATE OR REPLACE FUNCTION ragpool.enqueue(
    kind text,
    payload jsonb,
    job_id uuid DEFAULT NULL,
    max_attempts int DEFAULT NULL,
    run_at timestamptz DEFAULT NULL,
    priority int DEFAULT 0)
RETURNS uuid
LANGUAGE plpgsql AS
$$
DECLARE
    new_id uuid;
BEGIN
    IF enqueue.kind IS NULL OR enqueue.kind = '' THEN
        RAISE EXCEPTION 'ragpool.enqueue: kind is required' USING ERRCODE = '22023';
    END IF;
    IF enqueue.payload IS NULL THEN
        RAISE EXCEPTION 'ragpool.enqueue: payload is required' USING ERRCODE = '22023';
    END IF;
    IF enqueue.max_attempts IS NOT NULL AND enqueue.max_attempts < 1 THEN
        RAISE EXCEPTION 'ragpool.enqueue: max_attempts must be at least 1' USING ERRCODE = '22023';
    END IF;
    IF enqueue.job_id IS NOT NULL AND (
           EXISTS (SELECT 1 FROM public.conversations c WHERE c.job_id = enqueue.job_id)
        OR EXISTS (SELECT 1 FROM ragpool.dead_jobs d WHERE d.id = enqueue.job_id)) THEN
        RETURN enqueue.job_id;
    END IF;

    INSERT INTO ragpool.jobs AS j (id, kind, payload, max_attempts, run_at, priority)
    VALUES (coalesce(enqueue.job_id, gen_random_uuid()), enqueue.kind, enqueue.payload,
            coalesce(enqueue.max_attempts, 5), coalesce(enqueue.run_at, clock_timestamp()),
            coalesce(enqueue.priority, 0))
    ON CONFLICT (id) DO NOTHING
    RETURNING j.id INTO new_id;

    IF new_id IS NULL THEN
        RETURN enqueue.job_id;
    END IF;
    PERFORM pg_notify('ragpool_jobs', '');
    RETURN new_id;
END
$$;

-- Who is calling: the role set by SET ROLE (PostgREST, Realtime) or else the
-- session user.  Unlike current_user it is not changed by SECURITY DEFINER.
CREATE OR REPLACE FUNCTION ragpool.caller_role() RETURNS text
LANGUAGE sql STABLE AS
$$
    SELECT CASE WHEN coalesce(current_setting('role', true), 'none') <> 'none'
                THEN current_setting('role', true) ELSE session_user::text END
$$;

-- The chat form, shared by the three overloads.  SECURITY DEFINER so an app
-- may call it by RPC as `authenticated` without any right on ragpool.jobs;
-- such a caller may enqueue only for itself.
CREATE OR REPLACE FUNCTION ragpool.enqueue_chat_text(
    p_user_id text,
    p_message text,
    p_options jsonb,
    p_job_id uuid)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    uid text := ragpool.to_user_id(p_user_id)::text;
    caller text := ragpool.caller_role();
BEGIN
    IF uid IS NULL THEN
        RAISE EXCEPTION 'ragpool.enqueue_chat: % is not a valid user id (this database uses % user ids)',
            coalesce(p_user_id, 'NULL'),
            (SELECT value FROM ragpool.settings WHERE key = 'user_id_type')
            USING ERRCODE = '22P02';
    END IF;
    IF caller IN ('authenticated', 'anon') THEN
        IF ragpool.to_user_id(ragpool.request_user_id())::text IS DISTINCT FROM uid THEN
            RAISE EXCEPTION 'ragpool.enqueue_chat: a user may enqueue only for their own user id'
                USING ERRCODE = '42501';
        END IF;
    END IF;
    IF p_message IS NULL OR octet_length(p_message) NOT BETWEEN 1 AND 32768 THEN
        RAISE EXCEPTION 'ragpool.enqueue_chat: message must be 1 to 32768 bytes' USING ERRCODE = '22023';
    END IF;
    IF p_options IS NOT NULL AND jsonb_typeof(p_options) <> 'object' THEN
        RAISE EXCEPTION 'ragpool.enqueue_chat: options must be a JSON object' USING ERRCODE = '22023';
    END IF;
    RETURN ragpool.enqueue('chat',
                           jsonb_build_object('user_id', uid, 'message', p_message,
                                              'options', coalesce(p_options, '{}'::jsonb)),
                           p_job_id);
END
$$;

CREATE OR REPLACE FUNCTION ragpool.enqueue_chat(
    user_id text, message text, options jsonb DEFAULT '{}', job_id uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$ SELECT ragpool.enqueue_chat_text(user_id, message, options, job_id) $$;

CREATE OR REPLACE FUNCTION ragpool.enqueue_chat(
    user_id uuid, message text, options jsonb DEFAULT '{}', job_id uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$ SELECT ragpool.enqueue_chat_text(user_id::text, message, options, job_id) $$;

CREATE OR REPLACE FUNCTION ragpool.enqueue_chat(
    user_id bigint, message text, options jsonb DEFAULT '{}', job_id uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$ SELECT ragpool.enqueue_chat_text(user_id::text, message, options, job_id) $$;

-- ---------------------------------------------------------------------------
-- Dead letters

-- Moves job j (locked by the caller) to ragpool.dead_jobs and, for a chat
-- job whose payload has a usable user id, inserts the error row the user's
-- Realtime subscription is waiting for.  Returns true when it inserted one.
CREATE OR REPLACE FUNCTION ragpool.dead_letter(
    j ragpool.jobs, reason text, err text, safe_message text)
RETURNS boolean
LANGUAGE plpgsql AS
$$
DECLARE
    inserted boolean := false;
BEGIN
    DELETE FROM ragpool.jobs WHERE id = j.id;
    INSERT INTO ragpool.dead_jobs AS d (id, kind, payload, attempts, max_attempts, reason, last_error, created_at)
    VALUES (j.id, j.kind, j.payload, j.attempts, j.max_attempts, reason, err, j.created_at)
    ON CONFLICT (id) DO UPDATE
        SET attempts = excluded.attempts, reason = excluded.reason,
            last_error = excluded.last_error, failed_at = clock_timestamp();

    IF j.kind = 'chat' AND ragpool.to_user_id(j.payload ->> 'user_id') IS NOT NULL THEN
        -- Anything wrong with the payload beyond the user id (say, a message
        -- that is not text) must not keep the job from being dead-lettered.
        BEGIN
            INSERT INTO public.conversations
                (job_id, user_id, message, response, context_used, status, error, latency_ms, attempts)
            VALUES (j.id, ragpool.to_user_id(j.payload ->> 'user_id'),
                    coalesce(j.payload ->> 'message', ''),
                    coalesce(safe_message, 'Sorry, this request could not be answered. Please try again later.'),
                    '[]'::jsonb, 'error', err,
                    least(extract(epoch FROM clock_timestamp() - j.created_at) * 1000, 2147483647)::int,
                    j.attempts)
            ON CONFLICT (job_id) DO NOTHING;
            inserted := FOUND;
        EXCEPTION WHEN others THEN
            inserted := false;
        END;
    END IF;
    IF inserted THEN
        PERFORM pg_notify('ragpool_done', '');
    END IF;
    RETURN inserted;
END
$$;

-- ---------------------------------------------------------------------------
-- Claiming

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
    WITH due AS (
        SELECT q.id FROM ragpool.jobs q
         WHERE q.state = 'queued' AND q.run_at <= t_now
           AND (kinds IS NULL OR q.kind = ANY (kinds))
         ORDER BY q.priority DESC, q.run_at, q.id
         LIMIT n
         FOR UPDATE SKIP LOCKED
    )
    UPDATE ragpool.jobs j
       SET state = 'running', attempts = j.attempts + 1, locked_by = worker,
           lease_id = gen_random_uuid(),
           locked_until = clock_timestamp() + lease_ms * interval '1 millisecond',
           updated_at = t_now
      FROM due
     WHERE j.id = due.id
    RETURNING j.id, j.kind, j.payload, j.attempts, j.max_attempts, j.lease_id,
              extract(epoch FROM t_now - j.created_at)::float8 * 1000;
END
$$;

-- ---------------------------------------------------------------------------
-- Finishing

-- The group commit of the pipeline: one statement inserts every result
-- whose job is still held and deletes those jobs.  An element whose job is
-- gone or no longer held is `duplicate` when its row exists already (a
-- second completion, or another worker finished it), `lost_lease` otherwise.
-- user_id and message default to the job payload's; latency_ms (enqueue to
-- insert) and attempts come from the job row.
CREATE OR REPLACE FUNCTION ragpool.complete_jobs(results jsonb)
RETURNS TABLE (job_id uuid, outcome text)
LANGUAGE plpgsql AS
$$
#variable_conflict use_column
BEGIN
    IF results IS NULL OR jsonb_typeof(results) <> 'array' THEN
        RAISE EXCEPTION 'ragpool.complete_jobs: results must be a JSON array' USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(results) = 0 THEN
        RETURN;
    END IF;

    RETURN QUERY
    WITH r AS (
        SELECT x.* FROM jsonb_to_recordset(results) AS x(
            job_id uuid, lease_id uuid, user_id text, message text, response text,
            context_used jsonb, model_version text, status text, error text,
            prompt_tokens int, completion_tokens int, timings jsonb)
    ), held AS (
        SELECT r.*, j.created_at AS job_created_at, j.attempts AS job_attempts,
               j.payload AS job_payload
          FROM r JOIN ragpool.jobs j
            ON j.id = r.job_id AND j.lease_id = r.lease_id
           AND j.state = 'running' AND j.locked_until > clock_timestamp()
           FOR UPDATE OF j
    ), ins AS (
        INSERT INTO public.conversations AS c
            (job_id, user_id, message, response, context_used, model_version, status, error,
             prompt_tokens, completion_tokens, latency_ms, attempts, timings)
        SELECT h.job_id,
               ragpool.to_user_id(coalesce(h.user_id, h.job_payload ->> 'user_id')),
               coalesce(h.message, h.job_payload ->> 'message', ''),
               coalesce(h.response, ''),
               coalesce(h.context_used, '[]'::jsonb),
               h.model_version,
               CASE WHEN h.status = 'error' THEN 'error' ELSE 'done' END,
               h.error, h.prompt_tokens, h.completion_tokens,
               least(extract(epoch FROM clock_timestamp() - h.job_created_at) * 1000, 2147483647)::int,
               h.job_attempts, h.timings
          FROM held h
        ON CONFLICT (job_id) DO NOTHING
        RETURNING c.job_id
    ), del AS (
        DELETE FROM ragpool.jobs j USING held h WHERE j.id = h.job_id
        RETURNING j.id
    )
    SELECT r.job_id,
           CASE WHEN i.job_id IS NOT NULL THEN 'done'
                WHEN h.job_id IS NOT NULL THEN 'duplicate'
                WHEN EXISTS (SELECT 1 FROM public.conversations c2 WHERE c2.job_id = r.job_id)
                    THEN 'duplicate'
                ELSE 'lost_lease' END
      FROM r
      LEFT JOIN ins i ON i.job_id = r.job_id
      LEFT JOIN held h ON h.job_id = r.job_id;

    PERFORM pg_notify('ragpool_done', '');
END
$$;

-- A failed attempt.  Returns 'retry' (requeued with run_at = now + delay),
-- 'dead' (moved to dead_jobs, reason max_attempts, permanent or, for an
-- error text starting with 'invalid_payload', invalid_payload) or
-- 'lost_lease' (the caller no longer holds the job: nothing written).
CREATE OR REPLACE FUNCTION ragpool.fail_job(
    job_id uuid, lease_id uuid, error text, retry_delay_ms bigint, permanent boolean, safe_message text)
RETURNS text
LANGUAGE plpgsql AS
$$
DECLARE
    r ragpool.jobs;
BEGIN
    SELECT * INTO r FROM ragpool.jobs j
     WHERE j.id = fail_job.job_id AND j.lease_id = fail_job.lease_id
       AND j.state = 'running' AND j.locked_until > clock_timestamp()
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'lost_lease';
    END IF;

    IF NOT coalesce(fail_job.permanent, false) AND r.attempts < r.max_attempts THEN
        UPDATE ragpool.jobs j
           SET state = 'queued', locked_by = NULL, lease_id = NULL, locked_until = NULL,
               run_at = clock_timestamp()
                        + greatest(coalesce(fail_job.retry_delay_ms, 0), 0) * interval '1 millisecond',
               last_error = fail_job.error, updated_at = clock_timestamp()
         WHERE j.id = r.id;
        RETURN 'retry';
    END IF;

    r.last_error := fail_job.error;
    PERFORM ragpool.dead_letter(r,
        CASE WHEN NOT coalesce(fail_job.permanent, false) THEN 'max_attempts'
             WHEN fail_job.error LIKE 'invalid_payload%' THEN 'invalid_payload'
             ELSE 'permanent' END,
        fail_job.error, fail_job.safe_message);
    RETURN 'dead';
END
$$;

-- Drain: puts jobs the caller still holds back to `queued` at once (keeping
-- their place in line) and un-counts the attempt.  Returns how many.
CREATE OR REPLACE FUNCTION ragpool.release_jobs(jobs jsonb)
RETURNS int
LANGUAGE plpgsql AS
$$
DECLARE
    released int;
BEGIN
    IF jobs IS NULL OR jsonb_typeof(jobs) <> 'array' THEN
        RAISE EXCEPTION 'ragpool.release_jobs: jobs must be a JSON array' USING ERRCODE = '22023';
    END IF;
    WITH r AS (
        SELECT x.* FROM jsonb_to_recordset(jobs) AS x(job_id uuid, lease_id uuid)
    ), u AS (
        UPDATE ragpool.jobs j
           SET state = 'queued', attempts = greatest(j.attempts - 1, 0),
               locked_by = NULL, lease_id = NULL, locked_until = NULL,
               updated_at = clock_timestamp()
          FROM r
         WHERE j.id = r.job_id AND j.lease_id = r.lease_id
           AND j.state = 'running' AND j.locked_until > clock_timestamp()
        RETURNING 1
    )
    SELECT count(*)::int INTO released FROM u;
    IF released > 0 THEN
        PERFORM pg_notify('ragpool_jobs', '');
    END IF;
    RETURN released;
END
$$;

-- Moves a dead job (or every dead job when job_id is NULL) back to the
-- queue with its attempts reset.  The error row a dead chat job left in
-- conversations is deleted, so the retried job can insert its answer.
CREATE OR REPLACE FUNCTION ragpool.retry_dead(job_id uuid DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql AS
$$
DECLARE
    moved int;
BEGIN
    WITH d AS (
        DELETE FROM ragpool.dead_jobs d
         WHERE retry_dead.job_id IS NULL OR d.id = retry_dead.job_id
        RETURNING d.*
    ), c AS (
        DELETE FROM public.conversations c USING d
         WHERE c.job_id = d.id AND c.status = 'error'
        RETURNING 1
    ), i AS (
        INSERT INTO ragpool.jobs (id, kind, payload, max_attempts)
        SELECT d.id, d.kind, d.payload, d.max_attempts FROM d
        ON CONFLICT (id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::int INTO moved FROM i;
    IF moved > 0 THEN
        PERFORM pg_notify('ragpool_jobs', '');
    END IF;
    RETURN moved;
END
$$;

-- ---------------------------------------------------------------------------
-- Reading

-- The user's newest swaps.  user_id is text in either id mode; it is turned
-- into the column type so the (user_id, created_at) index serves the query.
CREATE OR REPLACE FUNCTION ragpool.recent_swaps(user_id text, n int)
RETURNS TABLE (from_token text, to_token text, amount text, created_at timestamptz)
LANGUAGE sql STABLE AS
$$
    SELECT s.from_token, s.to_token, s.amount::text, s.created_at
      FROM public.swap_history s
     WHERE s.user_id = ragpool.to_user_id(recent_swaps.user_id)
     ORDER BY s.created_at DESC
     LIMIT greatest(coalesce(n, 0), 0)
$$;

CREATE OR REPLACE FUNCTION ragpool.queue_stats()
RETURNS TABLE (queued bigint, scheduled bigint, running bigint, dead bigint)
LANGUAGE sql STABLE AS
$$
    SELECT count(*) FILTER (WHERE j.state = 'queued' AND j.run_at <= clock_timestamp()),
           count(*) FILTER (WHERE j.state = 'queued' AND j.run_at > clock_timestamp()),
           count(*) FILTER (WHERE j.state = 'running'),
           (SELECT count(*) FROM ragpool.dead_jobs)
      FROM ragpool.jobs j
$$;
