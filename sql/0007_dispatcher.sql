-- 0007_dispatcher.sql: what the HTTP dispatcher reads.
--
--   ragpool.job_status(job_id uuid, user_id text)
--       The state of one chat job as its owner may see it, or no row when
--       the job does not exist *or belongs to someone else* (the dispatcher
--       answers 404 for both, so a job's existence never leaks).  Looks in
--       ragpool.dead_jobs, then public.conversations (the answer), then
--       ragpool.jobs; the first that knows the job wins.
--       state: queued | running | done | error | dead.  The job's internal
--       error text (last_error, conversations.error) is never returned:
--       users see the safe message in `response`.

CREATE OR REPLACE FUNCTION ragpool.job_status(p_job_id uuid, p_user_id text)
RETURNS TABLE (job_id uuid, state text, attempts int, max_attempts int,
               created_at timestamptz, run_at timestamptz,
               response text, answer_status text, context_used jsonb,
               model_version text, answered_at timestamptz, dead_reason text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
    SELECT s.id, s.state, s.attempts, s.max_attempts, s.created_at, s.run_at,
           s.response, s.answer_status, s.context_used, s.model_version,
           s.answered_at, s.dead_reason
      FROM (
        SELECT 1 AS prio, d.id, 'dead'::text AS state, d.attempts, d.max_attempts,
               d.created_at, NULL::timestamptz AS run_at,
               c.response, c.status AS answer_status, c.context_used, c.model_version,
               c.created_at AS answered_at, d.reason AS dead_reason
          FROM ragpool.dead_jobs d
          LEFT JOIN public.conversations c ON c.job_id = d.id
         WHERE d.id = p_job_id AND d.kind = 'chat'
           AND ragpool.to_user_id(d.payload ->> 'user_id') = ragpool.to_user_id(p_user_id)
        UNION ALL
        SELECT 2, c.job_id, CASE WHEN c.status = 'error' THEN 'error' ELSE 'done' END,
               c.attempts, NULL::int, NULL::timestamptz, NULL::timestamptz,
               c.response, c.status, c.context_used, c.model_version, c.created_at, NULL::text
          FROM public.conversations c
         WHERE c.job_id = p_job_id AND c.user_id = ragpool.to_user_id(p_user_id)
        UNION ALL
        SELECT 3, j.id, j.state, j.attempts, j.max_attempts, j.created_at, j.run_at,
               NULL::text, NULL::text, NULL::jsonb, NULL::text, NULL::timestamptz, NULL::text
          FROM ragpool.jobs j
         WHERE j.id = p_job_id AND j.kind = 'chat'
           AND ragpool.to_user_id(j.payload ->> 'user_id') = ragpool.to_user_id(p_user_id)
      ) s
     ORDER BY s.prio
     LIMIT 1
$$;

REVOKE ALL ON FUNCTION ragpool.job_status(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ragpool.job_status(uuid, text) TO service_role;
