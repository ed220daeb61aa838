-- 0010_models_streaming_training.sql: the model registry, the provider that
-- answered, streamed partial answers, feedback, and training-data exports.
--
--   public.model_metadata          the reference design's registry (created where
--                                  absent; gains `provider`), NOTIFY ragpool_models
--                                  on every change so workers follow it
--   conversations.provider         which provider answered (model_version: which model)
--   ragpool.stream_push(chunks)    partial answers: Supabase Realtime Broadcast
--                                  (realtime.send) where the realtime schema exists,
--                                  else ragpool.stream_chunks + NOTIFY ragpool_stream
--   ragpool.set_feedback(id, f)    a user rates their own answer (RLS decides)
--   public.training_data           the reference design's table (+ conversation_id,
--                                  export_id)
--   ragpool.training_exports       one row per export job: parameters, progress,
--                                  outputs; ragpool.enqueue_training_export creates
--                                  one and its job
--
-- complete_jobs and record_results are replaced by the same text plus the
-- `provider` element, so a row records who answered.

-- ------------------------------------------------------------------
-- Model registry
-- ------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.model_metadata (
    id bigserial PRIMARY KEY,
    model_name text NOT NULL,
    version text NOT NULL,
    base_model text,
    training_data_size integer,
    fine_tuned_on timestamptz,
    deployed_at timestamptz,
    performance_metrics jsonb,
    storage_path text,
    is_active boolean DEFAULT false
);
-- NULL: the active row applies to every provider without an active row of
-- its own; otherwise the provider name ('openai', 'replicate').
ALTER TABLE public.model_metadata ADD COLUMN IF NOT EXISTS provider text;
CREATE INDEX IF NOT EXISTS model_metadata_active_idx
    ON public.model_metadata (provider) WHERE is_active;

CREATE OR REPLACE FUNCTION ragpool.model_metadata_notify() RETURNS trigger
LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('ragpool_models', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS ragpool_model_metadata_notify ON public.model_metadata;
CREATE TRIGGER ragpool_model_metadata_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.model_metadata
    FOR EACH STATEMENT EXECUTE FUNCTION ragpool.model_metadata_notify();

-- The active models, most specific and newest first (what workers load).
CREATE OR REPLACE FUNCTION ragpool.active_models()
RETURNS TABLE (provider text, model_name text, version text, id bigint)
LANGUAGE sql STABLE AS
$$
    SELECT coalesce(m.provider, ''), m.model_name, m.version, m.id
      FROM public.model_metadata m
     WHERE m.is_active
     ORDER BY m.provider NULLS LAST, m.deployed_at DESC NULLS LAST, m.id DESC
$$;

-- Make one model the active one for its provider (NULL: the default for all),
-- deactivating the previous one in the same transaction.
CREATE OR REPLACE FUNCTION ragpool.activate_model(model_id bigint)
RETURNS void
LANGUAGE plpgsql AS
$$
DECLARE
    p text;
BEGIN
    SELECT m.provider INTO p FROM public.model_metadata m WHERE m.id = model_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpool.activate_model: no model %', model_id USING ERRCODE = '22023';
    END IF;
    UPDATE public.model_metadata m SET is_active = false
     WHERE m.is_active AND m.provider IS NOT DISTINCT FROM p AND m.id <> model_id;
    UPDATE public.model_metadata m
       SET is_active = true, deployed_at = coalesce(m.deployed_at, now())
     WHERE m.id = model_id;
END
$$;

-- ------------------------------------------------------------------
-- Who answered
-- ------------------------------------------------------------------
ALTER TABLE public.conversations ADD COLUMN IF NOT EXISTS provider text;

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
            context_used jsonb, model_version text, provider text, status text, error text,
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
            (job_id, user_id, message, response, context_used, model_version, provider, status,
             error, prompt_tokens, completion_tokens, latency_ms, attempts, timings)
        SELECT h.job_id,
               ragpool.to_user_id(coalesce(h.user_id, h.job_payload ->> 'user_id')),
               coalesce(h.message, h.job_payload ->> 'message', ''),
               coalesce(h.response, ''),
               coalesce(h.context_used, '[]'::jsonb),
               h.model_version,
               h.provider,
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
            context_used jsonb, model_version text, provider text, status text, error text,
            prompt_tokens int, completion_tokens int, timings jsonb,
            attempts int, enqueued_at_ms bigint)
    ), ins AS (
        INSERT INTO public.conversations AS c
            (job_id, user_id, message, response, context_used, model_version, provider, status,
             error, prompt_tokens, completion_tokens, latency_ms, attempts, timings)
        SELECT r.job_id, ragpool.to_user_id(r.user_id), coalesce(r.message, ''),
               coalesce(r.response, ''), coalesce(r.context_used, '[]'::jsonb), r.model_version,
               r.provider,
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

-- ------------------------------------------------------------------
-- Streamed partial answers
-- ------------------------------------------------------------------
-- Where Supabase Realtime is absent.  UNLOGGED: partial text is worth
-- nothing after a crash (the final row is the record), and skipping the WAL
-- halves the cost of the most frequent write.
CREATE UNLOGGED TABLE IF NOT EXISTS ragpool.stream_chunks (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job_id uuid NOT NULL,
    attempt int NOT NULL,
    seq int NOT NULL,
    user_id text NOT NULL,
    topic text NOT NULL,
    text text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, attempt, seq)
);
CREATE INDEX IF NOT EXISTS stream_chunks_created_idx ON ragpool.stream_chunks (created_at);

-- chunks: [{"topic","user_id","job_id","attempt","seq","text","done"}].
-- With the realtime schema (Supabase): one Broadcast message per chunk,
-- event 'chat_chunk', on the user's private topic; the payload is the chunk
-- without "topic".  Without it: rows in ragpool.stream_chunks (a duplicate
-- (job_id, attempt, seq) is ignored) and NOTIFY ragpool_stream with the
-- payload (its text cut to 6000 bytes; "id" points at the row).  Returns the
-- number of chunks accepted.
CREATE OR REPLACE FUNCTION ragpool.stream_push(chunks jsonb)
RETURNS int
LANGUAGE plpgsql AS
$$
DECLARE
    n int := 0;
    c jsonb;
BEGIN
    IF chunks IS NULL OR jsonb_typeof(chunks) <> 'array' THEN
        RAISE EXCEPTION 'ragpool.stream_push: chunks must be a JSON array' USING ERRCODE = '22023';
    END IF;
    IF to_regprocedure('realtime.send(jsonb,text,text,boolean)') IS NOT NULL THEN
        -- plpgsql plans this statement only when it runs, so the function
        -- is valid on Postgres without the realtime schema.
        FOR c IN SELECT e FROM jsonb_array_elements(chunks) e LOOP
            PERFORM realtime.send(c - 'topic', 'chat_chunk', c ->> 'topic', true);
            n := n + 1;
        END LOOP;
        RETURN n;
    END IF;
    WITH ins AS (
        INSERT INTO ragpool.stream_chunks AS s (job_id, attempt, seq, user_id, topic, text, done)
        SELECT x.job_id, x.attempt, x.seq, x.user_id, x.topic, coalesce(x.text, ''),
               coalesce(x.done, false)
          FROM jsonb_to_recordset(chunks) AS x(job_id uuid, attempt int, seq int, user_id text,
                                               topic text, text text, done boolean)
        ON CONFLICT (job_id, attempt, seq) DO NOTHING
        RETURNING s.id, s.job_id, s.attempt, s.seq, s.user_id, s.text, s.done
    )
    SELECT count(pg_notify('ragpool_stream',
                           json_build_object('id', id, 'job_id', job_id, 'attempt', attempt,
                                             'seq', seq, 'user_id', user_id,
                                             'text', left(text, 6000), 'done', done)::text))
      INTO n FROM ins;
    RETURN n;
END
$$;

-- Remove partial answers older than keep (run it from cron or pg_cron).
CREATE OR REPLACE FUNCTION ragpool.prune_stream_chunks(keep interval DEFAULT '1 hour')
RETURNS bigint
LANGUAGE sql AS
$$
    WITH d AS (DELETE FROM ragpool.stream_chunks WHERE created_at < now() - keep RETURNING 1)
    SELECT count(*) FROM d
$$;

ALTER TABLE ragpool.stream_chunks ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS ragpool_stream_chunks_select_own ON ragpool.stream_chunks;
CREATE POLICY ragpool_stream_chunks_select_own ON ragpool.stream_chunks
    FOR SELECT TO authenticated
    USING (user_id = (SELECT ragpool.request_user_id()));
GRANT SELECT ON ragpool.stream_chunks TO authenticated;

-- On Supabase: let a signed-in user receive Broadcast messages on their own
-- private topic 'ragpool:user:<id>' (Realtime Authorization reads this
-- policy on realtime.messages).
DO $$
BEGIN
    IF to_regclass('realtime.messages') IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_policies
                        WHERE schemaname = 'realtime' AND tablename = 'messages'
                          AND policyname = 'ragpool_stream_own_topic') THEN
        EXECUTE $p$
            CREATE POLICY ragpool_stream_own_topic ON realtime.messages
                FOR SELECT TO authenticated
                USING (realtime.topic() = 'ragpool:user:' || (SELECT ragpool.request_user_id()))
        $p$;
    END IF;
EXCEPTION WHEN insufficient_privilege OR undefined_function THEN
    RAISE NOTICE 'ragpool: could not add the realtime.messages policy (%); add it by hand', SQLERRM;
END
$$;

-- ------------------------------------------------------------------
-- Feedback
-- ------------------------------------------------------------------
-- SECURITY INVOKER: the caller's RLS decides which rows it may touch, so
-- an authenticated user can rate only their own conversations (42501
-- otherwise, also for ids that do not exist, so nothing is revealed).
CREATE OR REPLACE FUNCTION ragpool.set_feedback(conversation_id bigint, feedback int)
RETURNS void
LANGUAGE plpgsql AS
$$
DECLARE
    n int;
BEGIN
    IF feedback IS NULL OR feedback NOT BETWEEN -1 AND 1 THEN
        RAISE EXCEPTION 'ragpool.set_feedback: feedback must be -1, 0 or 1' USING ERRCODE = '22023';
    END IF;
    UPDATE public.conversations c SET feedback = set_feedback.feedback
     WHERE c.id = set_feedback.conversation_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RAISE EXCEPTION 'ragpool.set_feedback: no conversation % of yours', conversation_id
            USING ERRCODE = '42501';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION ragpool.set_feedback(bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ragpool.set_feedback(bigint, int) TO authenticated, service_role;

-- ------------------------------------------------------------------
-- Training data and its exports
-- ------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.training_data (
    id bigserial PRIMARY KEY,
    instruction text NOT NULL,
    input text,
    output text NOT NULL,
    source text,
    quality_score float,
    tags text[],
    created_at timestamptz DEFAULT now()
);
ALTER TABLE public.training_data
    ADD COLUMN IF NOT EXISTS conversation_id bigint,
    ADD COLUMN IF NOT EXISTS export_id bigint;
CREATE UNIQUE INDEX IF NOT EXISTS training_data_export_conversation_idx
    ON public.training_data (export_id, conversation_id);
CREATE INDEX IF NOT EXISTS conversations_rated_idx
    ON public.conversations (id) WHERE feedback = 1;

CREATE TABLE IF NOT EXISTS ragpool.training_exports (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job_id uuid,
    created_from timestamptz,          -- conversations created at or after (NULL: no bound)
    created_to timestamptz,            -- and before (NULL: no bound)
    model_version text,                -- only this model (NULL: any)
    name text NOT NULL,                -- object/file name stem
    bucket text,                       -- Supabase Storage bucket (NULL: files only)
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'done', 'failed')),
    rows_total bigint,
    rows_done bigint NOT NULL DEFAULT 0,
    outputs jsonb,                     -- [{"format","kind":"file"|"storage","path","bytes"}]
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);

-- Create an export and its job; returns the export id.  name: letters,
-- digits, '-', '_', '.' and '/' (no '..'), default 'training-<id>'.
CREATE OR REPLACE FUNCTION ragpool.enqueue_training_export(
    created_from timestamptz DEFAULT NULL, created_to timestamptz DEFAULT NULL,
    model_version text DEFAULT NULL, name text DEFAULT NULL, bucket text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS
$$
DECLARE
    eid bigint;
    jid uuid;
BEGIN
    IF name IS NOT NULL AND (name !~ '^[A-Za-z0-9_.-][A-Za-z0-9_./-]{0,199}$' OR name ~ '\.\.') THEN
        RAISE EXCEPTION 'ragpool.enqueue_training_export: bad name %', name USING ERRCODE = '22023';
    END IF;
    IF bucket IS NOT NULL AND bucket !~ '^[A-Za-z0-9_.-]{1,100}$' THEN
        RAISE EXCEPTION 'ragpool.enqueue_training_export: bad bucket %', bucket USING ERRCODE = '22023';
    END IF;
    INSERT INTO ragpool.training_exports (created_from, created_to, model_version, name, bucket)
    VALUES (created_from, created_to, model_version, coalesce(name, ''), bucket)
    RETURNING id INTO eid;
    IF name IS NULL THEN
        UPDATE ragpool.training_exports SET name = 'training-' || eid WHERE id = eid;
    END IF;
    jid := ragpool.enqueue('export_training', jsonb_build_object('export_id', eid));
    UPDATE ragpool.training_exports SET job_id = jid WHERE id = eid;
    RETURN eid;
END
$$;

-- The worker's first step of every attempt: forget what an earlier attempt
-- wrote, count the rows to export, and hand back the parameters.
CREATE OR REPLACE FUNCTION ragpool.training_export_begin(export_id bigint)
RETURNS TABLE (name text, bucket text, rows_total bigint)
LANGUAGE plpgsql AS
$$
DECLARE
    e ragpool.training_exports;
    total bigint;
BEGIN
    SELECT * INTO e FROM ragpool.training_exports x WHERE x.id = export_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpool.training_export_begin: no export %', export_id
            USING ERRCODE = '22023';
    END IF;
    DELETE FROM public.training_data t WHERE t.export_id = e.id;
    SELECT count(*) INTO total FROM public.conversations c
     WHERE c.feedback = 1 AND c.status = 'done'
       AND (e.created_from IS NULL OR c.created_at >= e.created_from)
       AND (e.created_to IS NULL OR c.created_at < e.created_to)
       AND (e.model_version IS NULL OR c.model_version = e.model_version);
    UPDATE ragpool.training_exports x
       SET status = 'running', rows_total = total, rows_done = 0, started_at = now(),
           finished_at = NULL, error = NULL, outputs = NULL
     WHERE x.id = e.id;
    RETURN QUERY SELECT e.name, e.bucket, total;
END
$$;

-- One page of the export, in conversation id order after after_id: stores
-- the training_data rows, advances rows_done, and returns the page.
CREATE OR REPLACE FUNCTION ragpool.training_export_page(export_id bigint, after_id bigint, n int)
RETURNS TABLE (conversation_id bigint, message text, response text, model_version text)
LANGUAGE plpgsql AS
$$
#variable_conflict use_column
DECLARE
    e ragpool.training_exports;
BEGIN
    SELECT * INTO e FROM ragpool.training_exports x WHERE x.id = training_export_page.export_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpool.training_export_page: no export %', export_id
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH page AS (
        SELECT c.id, c.message, c.response, c.model_version
          FROM public.conversations c
         WHERE c.feedback = 1 AND c.status = 'done' AND c.id > after_id
           AND (e.created_from IS NULL OR c.created_at >= e.created_from)
           AND (e.created_to IS NULL OR c.created_at < e.created_to)
           AND (e.model_version IS NULL OR c.model_version = e.model_version)
         ORDER BY c.id
         LIMIT n
    ), ins AS (
        INSERT INTO public.training_data
            (instruction, input, output, source, quality_score, tags, conversation_id, export_id)
        SELECT p.message, '', p.response, 'conversation', 1.0,
               CASE WHEN p.model_version IS NULL THEN ARRAY[]::text[]
                    ELSE ARRAY['model:' || p.model_version] END,
               p.id, e.id
          FROM page p
        ON CONFLICT (export_id, conversation_id) DO NOTHING
        RETURNING 1
    ), upd AS (
        UPDATE ragpool.training_exports x SET rows_done = x.rows_done + (SELECT count(*) FROM page)
         WHERE x.id = e.id
        RETURNING 1
    )
    SELECT p.id, p.message, p.response, p.model_version FROM page p ORDER BY p.id;
END
$$;

-- The end of an export: 'done' with its outputs, or 'failed' with the error.
CREATE OR REPLACE FUNCTION ragpool.training_export_finish(export_id bigint, outputs jsonb,
                                                          error text DEFAULT NULL)
RETURNS void
LANGUAGE sql AS
$$
    UPDATE ragpool.training_exports x
       SET status = CASE WHEN training_export_finish.error IS NULL THEN 'done' ELSE 'failed' END,
           outputs = training_export_finish.outputs, error = training_export_finish.error,
           finished_at = now()
     WHERE x.id = training_export_finish.export_id
$$;

REVOKE ALL ON FUNCTION ragpool.model_metadata_notify(), ragpool.active_models(),
    ragpool.activate_model(bigint), ragpool.stream_push(jsonb),
    ragpool.prune_stream_chunks(interval),
    ragpool.enqueue_training_export(timestamptz, timestamptz, text, text, text),
    ragpool.training_export_begin(bigint), ragpool.training_export_page(bigint, bigint, int),
    ragpool.training_export_finish(bigint, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ragpool TO service_role;
GRANT ALL ON ALL TABLES IN SCHEMA ragpool TO service_role;
GRANT ALL ON public.model_metadata, public.training_data TO service_role;
