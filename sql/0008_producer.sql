-- 0008_producer.sql: enqueueing many chat jobs in one statement.
--
--   ragpool.enqueue_chat_batch(jobs jsonb) -> (job_id uuid, existing boolean, error text)
--       jobs is a JSON array of {"job_id"?, "user_id", "message", "options"?,
--       "max_attempts"?}.  One row per element, in the order given.  Every
--       valid element becomes a queued chat job (the same payload as
--       ragpool.enqueue_chat writes), or, when its job_id is already known
--       (queued, running, answered or dead-lettered), returns that id with
--       existing = true and changes nothing.  An invalid element gets
--       existing = NULL and error "<field>: <problem>" (job_id is the id it
--       gave when that was a valid uuid, else NULL) and does not stop the others: the producer
--       (common/producer.c) gathers the enqueues of one loop turn into one
--       call, so a synchronous-commit server pays one commit for all of
--       them, and one bad job must not fail its neighbours.  Elements
--       without a job_id get a new one.  Repeats of one job_id within a batch:
--       the first creates it, the others report existing = true.  One NOTIFY
--       ragpool_jobs per call.
--
-- It is a service function (the producer connects as the tables' owner or
-- service_role): not SECURITY DEFINER, and not granted to app users, who
-- enqueue one job at a time through ragpool.enqueue_chat.

CREATE OR REPLACE FUNCTION ragpool.enqueue_chat_batch(jobs jsonb)
RETURNS TABLE (job_id uuid, existing boolean, error text)
LANGUAGE plpgsql AS
$$
#variable_conflict use_column
DECLARE
    id_type text := coalesce((SELECT s.value FROM ragpool.settings s WHERE s.key = 'user_id_type'),
                             'uuid');
BEGIN
    IF jobs IS NULL OR jsonb_typeof(jobs) <> 'array' THEN
        RAISE EXCEPTION 'ragpool.enqueue_chat_batch: jobs must be a JSON array'
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(jobs) = 0 THEN
        RETURN;
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT x.ord, x.elem,
               CASE WHEN jsonb_typeof(x.elem) = 'object' THEN x.elem END AS o
          FROM jsonb_array_elements(jobs) WITH ORDINALITY AS x(elem, ord)
    ), parsed AS (
        -- Every cast is guarded, so no element can raise.
        SELECT i.ord,
               i.o IS NOT NULL AS is_obj,
               coalesce(jsonb_typeof(i.o -> 'job_id'), 'null') <> 'null' AS id_given,
               CASE WHEN jsonb_typeof(i.o -> 'job_id') = 'string'
                         AND (i.o ->> 'job_id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                    THEN (i.o ->> 'job_id')::uuid END AS given_id,
               CASE WHEN jsonb_typeof(i.o -> 'user_id') IN ('string', 'number')
                    THEN ragpool.to_user_id(i.o ->> 'user_id')::text END AS uid,
               CASE WHEN jsonb_typeof(i.o -> 'message') = 'string' THEN i.o ->> 'message' END AS msg,
               coalesce(jsonb_typeof(i.o -> 'options'), 'null') AS opts_type,
               CASE WHEN jsonb_typeof(i.o -> 'options') = 'object' THEN i.o -> 'options'
                    ELSE '{}'::jsonb END AS opts,
               coalesce(jsonb_typeof(i.o -> 'max_attempts'), 'null') AS ma_type,
               CASE WHEN jsonb_typeof(i.o -> 'max_attempts') = 'number'
                         AND (i.o ->> 'max_attempts') ~ '^[0-9]{1,4}$'
                         AND (i.o ->> 'max_attempts')::int BETWEEN 1 AND 1000
                    THEN (i.o ->> 'max_attempts')::int END AS ma
          FROM input i
    ), checked AS (
        SELECT p.*,
               CASE WHEN p.id_given THEN p.given_id ELSE gen_random_uuid() END AS id,
               CASE
                   WHEN NOT p.is_obj THEN 'job: must be a JSON object'
                   WHEN p.id_given AND p.given_id IS NULL THEN 'job_id: must be a uuid'
                   WHEN p.uid IS NULL THEN
                       format('user_id: must be a %s user id (this database uses %s user ids)',
                              id_type, id_type)
                   WHEN p.msg IS NULL THEN 'message: must be a string'
                   WHEN octet_length(p.msg) NOT BETWEEN 1 AND 32768 THEN
                       'message: must be 1 to 32768 bytes'
                   WHEN p.opts_type NOT IN ('object', 'null') THEN 'options: must be a JSON object'
                   WHEN p.ma_type <> 'null' AND p.ma IS NULL THEN
                       'max_attempts: must be an integer from 1 to 1000'
               END AS error
          FROM parsed p
    ), ranked AS (
        SELECT c.*,
               row_number() OVER (PARTITION BY c.id ORDER BY c.ord) AS rank,
               c.error IS NULL AND c.id_given AND (
                      EXISTS (SELECT 1 FROM public.conversations cv WHERE cv.job_id = c.id)
                   OR EXISTS (SELECT 1 FROM ragpool.dead_jobs d WHERE d.id = c.id)) AS finished
          FROM checked c
    ), ins AS (
        INSERT INTO ragpool.jobs AS j (id, kind, payload, max_attempts, run_at)
        SELECT r.id, 'chat',
               jsonb_build_object('user_id', r.uid, 'message', r.msg, 'options', r.opts),
               coalesce(r.ma, 5), clock_timestamp()
          FROM ranked r
         WHERE r.error IS NULL AND NOT r.finished AND r.rank = 1
         ORDER BY r.ord
        ON CONFLICT (id) DO NOTHING
        RETURNING j.id
    )
    SELECT CASE WHEN r.error IS NULL OR r.id_given THEN r.id END,
           CASE WHEN r.error IS NOT NULL THEN NULL
                ELSE i.id IS NULL OR r.rank > 1 END,
           r.error
      FROM ranked r
      LEFT JOIN ins i ON i.id = r.id AND r.rank = 1 AND r.error IS NULL
     ORDER BY r.ord;

    PERFORM pg_notify('ragpool_jobs', '');
END
$$;

REVOKE ALL ON FUNCTION ragpool.enqueue_chat_batch(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ragpool.enqueue_chat_batch(jsonb) TO service_role;
