-- 0006: acknowledging jobs that leave no answer, and recording answers of
-- jobs that were not queued in Postgres.
--
--   ragpool.ack_jobs(jobs jsonb)          [{"job_id","lease_id"}] -> (job_id, outcome)
--       Deletes each job still held under its lease; outcome 'done' or
--       'lost_lease'.  For job kinds with no conversations row (e.g. 'noop',
--       used by the queue benchmarks).
--   ragpool.record_results(results jsonb) -> (job_id, outcome)
--       Inserts conversations rows for jobs queued elsewhere (the Redis
--       Streams backend): each element is a complete_jobs element plus
--       "attempts" and "enqueued_at_ms" (Unix ms, for latency_ms).  Outcome
--       'done', or 'duplicate' when the row already exists -- the backend
--       acknowledges either way, so a duplicate delivery never makes a
--       second row.

CREATE OR REPLACE FUNCTION ragpool.ack_jobs(jobs jsonb)
RETURNS TABLE (job_id uuid, outcome text)
LANGUAGE plpgsql AS
$$
#variable_conflict use_column
BEGIN
    IF jobs IS NULL OR jsonb_typeof(jobs) <> 'array' THEN
        RAISE EXCEPTION 'ragpool.ack_jobs: jobs must be a JSON array' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH r AS (
        SELECT x.* FROM jsonb_to_recordset(jobs) AS x(job_id uuid, lease_id uuid)
    ), del AS (
        DELETE FROM ragpool.jobs j USING r
         WHERE j.id = r.job_id AND j.lease_id = r.lease_id
           AND j.state = 'running' AND j.locked_until > clock_timestamp()
        RETURNING j.id
    )
    SELECT r.job_id, CASE WHEN d.id IS NOT NULL THEN 'done' ELSE 'lost_lease' END
      FROM r LEFT JOIN del d ON d.id = r.job_id;
END
$$;

CREATE OR REPLACE FUNCTION ragpool.record_results(results jsonb)
RETURNS TABLE (job_id uuid, outcome text)
LANGUAGE plpgsql AS
$$
#variable_conflict use_column
BEGIN
    IF results IS NULL OR jsonb_typeof(results) <> 'array' THEN
        RAISE EXCEPTION 'ragpool.record_results: results must be a JSON array' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH r AS (
        SELECT x.* FROM jsonb_to_recordset(results) AS x(
            job_id uuid, user_id text, message text, response text,
            context_used jsonb, model_version text, status text, error text,
            prompt_tokens int, completion_tokens int, timings jsonb,
            attempts int, enqueued_at_ms bigint)
    ), ins AS (
        INSERT INTO public.conversations AS c
            (job_id, user_id, message, response, context_used, model_version, status, error,
             prompt_tokens, completion_tokens, latency_ms, attempts, timings)
        SELECT r.job_id, ragpool.to_user_id(r.user_id), coalesce(r.message, ''),
               coalesce(r.response, ''), coalesce(r.context_used, '[]'::jsonb), r.model_version,
               CASE WHEN r.status = 'error' THEN 'error' ELSE 'done' END,
               r.error, r.prompt_tokens, r.completion_tokens,
               CASE WHEN r.enqueued_at_ms IS NULL THEN NULL
                    ELSE greatest(0, least(extract(epoch FROM clock_timestamp()) * 1000
                                           - r.enqueued_at_ms, 2147483647))::int END,
               r.attempts, r.timings
          FROM r
         WHERE ragpool.to_user_id(r.user_id) IS NOT NULL
        ON CONFLICT (job_id) DO NOTHING
        RETURNING c.job_id
    )
    SELECT r.job_id, CASE WHEN i.job_id IS NOT NULL THEN 'done'
                          WHEN EXISTS (SELECT 1 FROM public.conversations c2
                                        WHERE c2.job_id = r.job_id) THEN 'duplicate'
                          ELSE 'invalid' END
      FROM r LEFT JOIN ins i ON i.job_id = r.job_id;
    PERFORM pg_notify('ragpool_done', '');
END
$$;
