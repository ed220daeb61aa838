-- 0009_reembed.sql: batch re-embedding and automatic embeddings.
--
-- A *target* is one embedding column of one user table: the key column,
-- the text column(s) whose content is embedded, and the embedding column
-- (pgvector `vector` or the portable `real[]` / `double precision[]`).
-- Two kinds of target rows live in ragpool.reembed_batches:
--
--   kind 'batch'  one run of `ragpool reembed` (ragpool.reembed_start):
--                 a 'reembed_plan' job splits the table by key range into
--                 chunks (ragpool.reembed_chunks), each an 'embed_chunk'
--                 job; progress is counted on the batch row.
--   kind 'auto'   ragpool.embed_on_change: triggers enqueue the rows an
--                 INSERT or an UPDATE of the text changed, as
--                 'embed_chunk' jobs holding up to batch_rows ids each
--                 (coalesced per statement, never one job per row).
--
-- Invariants:
--  * Nothing is written to a user table except its embedding column, and
--    only by ragpool.reembed_chunk_commit, in ONE transaction per chunk
--    together with the chunk's checkpoint (state 'done') and the content
--    hashes, and only while the caller holds the chunk job's lease.  A
--    worker killed at any moment therefore leaves each chunk either fully
--    committed (its job, when it comes back, finds the checkpoint and does
--    nothing) or not at all (it is embedded again, whole).
--  * ragpool.embedding_hashes keeps, per (table, embedding column, row), the
--    md5 of "model/dimensions\n" || text of the last committed embedding:
--    a row whose hash matches and whose embedding is not NULL is skipped,
--    and a commit writes a vector only if the row's text still hashes to
--    what was embedded (a row changed meanwhile is left to its trigger or
--    to the next run).  embed_count counts commits per row.
--  * Counters: done (embedded) + skipped (unchanged, or empty text) +
--    failed (refused by the model) = total once a batch is 'done'; rows of
--    chunks that were dead-lettered are reported as dead chunks.
--  * User SQL (--where) and identifiers are only ever put into dynamic SQL
--    through format() with %I / %s of catalog-derived types; values always
--    travel as parameters.  The where clause is trusted operator input
--    (only the owner and service_role may start a batch).

CREATE TABLE IF NOT EXISTS ragpool.reembed_batches (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('batch', 'auto')),
    relid oid NOT NULL,
    table_name text NOT NULL,
    id_column name NOT NULL,
    text_columns name[] NOT NULL,
    embedding_column name NOT NULL,
    id_type text NOT NULL,
    embedding_type text NOT NULL,
    vector_format text NOT NULL CHECK (vector_format IN ('vector', 'array')),
    where_sql text,
    model text,
    dimensions int,
    chunk_rows int NOT NULL,
    max_attempts int NOT NULL,
    priority int NOT NULL,
    state text NOT NULL
        CHECK (state IN ('planning', 'running', 'done', 'cancelled', 'auto')),
    plan_cursor text,
    planned boolean NOT NULL DEFAULT false,
    total_rows bigint NOT NULL DEFAULT 0,
    done_rows bigint NOT NULL DEFAULT 0,
    skipped_rows bigint NOT NULL DEFAULT 0,
    failed_rows bigint NOT NULL DEFAULT 0,
    chunks_total int NOT NULL DEFAULT 0,
    chunks_done int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE UNIQUE INDEX IF NOT EXISTS reembed_batches_auto_idx
    ON ragpool.reembed_batches (relid, embedding_column) WHERE kind = 'auto';

-- One key range (lo, hi] of a batch: lo is exclusive (NULL: from the
-- start), hi inclusive, both as text of the key column's type.
CREATE TABLE IF NOT EXISTS ragpool.reembed_chunks (
    batch_id bigint NOT NULL REFERENCES ragpool.reembed_batches (id) ON DELETE CASCADE,
    chunk_no int NOT NULL,
    lo text,
    hi text NOT NULL,
    planned_rows int NOT NULL,
    job_id uuid NOT NULL,
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'done')),
    rows_done int,
    rows_skipped int,
    rows_failed int,
    done_at timestamptz,
    PRIMARY KEY (batch_id, chunk_no)
);
CREATE INDEX IF NOT EXISTS reembed_chunks_job_idx ON ragpool.reembed_chunks (job_id);

CREATE TABLE IF NOT EXISTS ragpool.embedding_hashes (
    relid oid NOT NULL,
    embedding_column name NOT NULL,
    row_id text NOT NULL,
    hash uuid NOT NULL,
    embed_count int NOT NULL DEFAULT 1,
    embedded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (relid, embedding_column, row_id)
);

-- Rows the model refused, with its reason (latest per target and row).
CREATE TABLE IF NOT EXISTS ragpool.reembed_failures (
    batch_id bigint NOT NULL REFERENCES ragpool.reembed_batches (id) ON DELETE CASCADE,
    row_id text NOT NULL,
    reason text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (batch_id, row_id)
);

-- ---------------------------------------------------------------------------
-- Helpers

-- The SQL expression (over the table alias al) of the text a row is
-- embedded from: the column, or the non-NULL columns joined by newlines.
CREATE OR REPLACE FUNCTION ragpool.reembed_text_expr(cols name[], al text DEFAULT 't')
RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS
$$
    SELECT CASE WHEN cardinality(cols) = 1 THEN format('%s.%I::text', al, cols[1])
                ELSE 'concat_ws(E''\n'', '
                     || (SELECT string_agg(format('%s.%I::text', al, c), ', ' ORDER BY o)
                           FROM unnest(cols) WITH ORDINALITY AS u(c, o))
                     || ')' END
$$;

-- Checks a target and describes it: the key column's type, the embedding
-- column's type and whether vectors are written as '[a,b]' or '{a,b}'.
CREATE OR REPLACE FUNCTION ragpool.reembed_describe(
    tbl regclass, id_column name, text_columns name[], embedding_column name,
    OUT id_type text, OUT embedding_type text, OUT vector_format text, OUT typmod_dims int)
LANGUAGE plpgsql STABLE AS
$$
DECLARE
    c name;
    base text;
BEGIN
    IF tbl IS NULL OR id_column IS NULL OR embedding_column IS NULL
       OR text_columns IS NULL OR cardinality(text_columns) = 0 THEN
        RAISE EXCEPTION 'ragpool: table, id column, text column(s) and embedding column are required'
            USING ERRCODE = '22023';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod) INTO id_type
      FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = id_column
       AND a.attnum > 0 AND NOT a.attisdropped;
    IF id_type IS NULL THEN
        RAISE EXCEPTION 'ragpool: table % has no column %', tbl, id_column USING ERRCODE = '42703';
    END IF;
    FOREACH c IN ARRAY text_columns LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = c
                          AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'ragpool: table % has no column %', tbl, c USING ERRCODE = '42703';
        END IF;
    END LOOP;
    SELECT format_type(a.atttypid, a.atttypmod), t.typname,
           CASE WHEN t.typname = 'vector' AND a.atttypmod > 0 THEN a.atttypmod END
      INTO embedding_type, base, typmod_dims
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = tbl AND a.attname = embedding_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF embedding_type IS NULL THEN
        RAISE EXCEPTION 'ragpool: table % has no column %', tbl, embedding_column USING ERRCODE = '42703';
    END IF;
    IF base = 'vector' THEN
        vector_format := 'vector';
        -- Schema-qualified, so casts work whatever the search_path.
        SELECT format('%I.%s', n.nspname, embedding_type) INTO embedding_type
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE t.oid = (SELECT a.atttypid FROM pg_attribute a
                         WHERE a.attrelid = tbl AND a.attname = embedding_column);
    ELSIF base IN ('_float4', '_float8') THEN
        vector_format := 'array';
    ELSE
        RAISE EXCEPTION 'ragpool: %.% is %, not vector, real[] or double precision[]',
            tbl, embedding_column, embedding_type USING ERRCODE = '42804';
    END IF;
END
$$;

-- The job row, locked, when the caller still holds its lease; else NULL.
CREATE OR REPLACE FUNCTION ragpool.reembed_held(p_job_id uuid, p_lease_id uuid)
RETURNS ragpool.jobs
LANGUAGE sql AS
$$
    SELECT j.* FROM ragpool.jobs j
     WHERE j.id = p_job_id AND j.lease_id = p_lease_id
       AND j.state = 'running' AND j.locked_until > clock_timestamp()
       FOR UPDATE
$$;

-- Keeps a held lease alive (the worker calls it while a chunk waits for
-- its turn or for the provider's rate limits).  False when it is lost.
CREATE OR REPLACE FUNCTION ragpool.reembed_extend(p_job_id uuid, p_lease_id uuid, lease_ms int)
RETURNS boolean
LANGUAGE plpgsql AS
$$
BEGIN
    UPDATE ragpool.jobs j
       SET locked_until = clock_timestamp() + greatest(lease_ms, 1) * interval '1 millisecond',
           updated_at = clock_timestamp()
     WHERE j.id = p_job_id AND j.lease_id = p_lease_id
       AND j.state = 'running' AND j.locked_until > clock_timestamp();
    RETURN FOUND;
END
$$;

-- ---------------------------------------------------------------------------
-- Batches

-- Starts a batch: checks the target and the where clause, records the
-- batch and enqueues its planning job.  Returns the batch id.
CREATE OR REPLACE FUNCTION ragpool.reembed_start(
    tbl regclass,
    id_column name,
    text_columns name[],
    embedding_column name,
    where_sql text DEFAULT NULL,
    model text DEFAULT NULL,
    dimensions int DEFAULT NULL,
    chunk_rows int DEFAULT 1000,
    max_attempts int DEFAULT 10,
    priority int DEFAULT -10)
RETURNS bigint
LANGUAGE plpgsql AS
$$
DECLARE
    d record;
    bid bigint;
BEGIN
    d := ragpool.reembed_describe(tbl, id_column, text_columns, embedding_column);
    IF chunk_rows IS NULL OR chunk_rows NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'ragpool.reembed_start: chunk_rows must be 1..100000' USING ERRCODE = '22023';
    END IF;
    IF dimensions IS NOT NULL AND dimensions NOT BETWEEN 1 AND 16000 THEN
        RAISE EXCEPTION 'ragpool.reembed_start: dimensions must be 1..16000' USING ERRCODE = '22023';
    END IF;
    IF d.typmod_dims IS NOT NULL AND dimensions IS NOT NULL AND dimensions <> d.typmod_dims THEN
        RAISE EXCEPTION 'ragpool.reembed_start: %.% holds % dimensions, not %',
            tbl, embedding_column, d.typmod_dims, dimensions USING ERRCODE = '22023';
    END IF;
    IF nullif(btrim(where_sql), '') IS NOT NULL THEN
        -- Fails here, with the server's message, rather than in every chunk.
        EXECUTE format('SELECT 1 FROM %s t WHERE (%s) LIMIT 0', tbl, where_sql);
    END IF;
    INSERT INTO ragpool.reembed_batches
        (kind, relid, table_name, id_column, text_columns, embedding_column, id_type,
         embedding_type, vector_format, where_sql, model, dimensions, chunk_rows,
         max_attempts, priority, state)
    VALUES ('batch', tbl, tbl::text, id_column, text_columns, embedding_column, d.id_type,
            d.embedding_type, d.vector_format, nullif(btrim(where_sql), ''), nullif(model, ''),
            coalesce(dimensions, d.typmod_dims), chunk_rows, coalesce(max_attempts, 10),
            coalesce(priority, -10), 'planning')
    RETURNING id INTO bid;
    PERFORM ragpool.enqueue('reembed_plan', jsonb_build_object('batch', bid), NULL,
                            coalesce(max_attempts, 10), NULL, coalesce(priority, -10) + 1);
    RETURN bid;
END
$$;

-- The payload of one chunk job of target b.
CREATE OR REPLACE FUNCTION ragpool.reembed_payload(b ragpool.reembed_batches)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS
$$
    SELECT jsonb_strip_nulls(jsonb_build_object('batch', b.id, 'model', b.model,
                                                'dimensions', b.dimensions,
                                                'vector', b.vector_format))
$$;

-- One planning step of a batch: the next chunks (at most max_chunks of
-- chunk_rows keys each, after the cursor) become chunk rows and jobs.
-- Returns 'more', 'done' (planning finished) or 'lost_lease'.
CREATE OR REPLACE FUNCTION ragpool.reembed_plan(p_job_id uuid, p_lease_id uuid, max_chunks int)
RETURNS text
LANGUAGE plpgsql AS
$$
DECLARE
    j ragpool.jobs;
    b ragpool.reembed_batches;
    r record;
    n int := 0;
    keys bigint := 0;
    lo text;
    jid uuid;
    lim bigint;
BEGIN
    j := ragpool.reembed_held(p_job_id, p_lease_id);
    IF j.id IS NULL THEN
        RETURN 'lost_lease';
    END IF;
    SELECT * INTO b FROM ragpool.reembed_batches x
     WHERE x.id = (j.payload ->> 'batch')::bigint FOR UPDATE;
    IF NOT FOUND OR b.planned OR b.state <> 'planning' THEN
        RETURN 'done';
    END IF;
    lim := b.chunk_rows::bigint * greatest(coalesce(max_chunks, 100), 1);
    lo := b.plan_cursor;
    FOR r IN EXECUTE format(
        'SELECT min(k)::text AS first, max(k)::text AS last, count(*) AS n FROM (
             SELECT s.k, (row_number() OVER (ORDER BY s.k) - 1) / $2 AS g FROM (
                 SELECT t.%1$I AS k FROM %2$s t
                  WHERE ($1::text IS NULL OR t.%1$I > $1::%3$s) AND (%4$s)
                  ORDER BY t.%1$I LIMIT $3) s) w
          GROUP BY g ORDER BY g',
        b.id_column, b.relid::regclass, b.id_type, coalesce(b.where_sql, 'true'))
        USING b.plan_cursor, b.chunk_rows, lim
    LOOP
        jid := gen_random_uuid();
        INSERT INTO ragpool.reembed_chunks (batch_id, chunk_no, lo, hi, planned_rows, job_id)
        VALUES (b.id, b.chunks_total + n, lo, r.last, r.n, jid);
        INSERT INTO ragpool.jobs (id, kind, payload, max_attempts, priority)
        VALUES (jid, 'embed_chunk',
                ragpool.reembed_payload(b) || jsonb_build_object('chunk', b.chunks_total + n),
                b.max_attempts, b.priority);
        lo := r.last;
        n := n + 1;
        keys := keys + r.n;
    END LOOP;
    UPDATE ragpool.reembed_batches x
       SET plan_cursor = lo,
           chunks_total = x.chunks_total + n,
           total_rows = x.total_rows + keys,
           started_at = coalesce(x.started_at, clock_timestamp()),
           planned = keys < lim,
           state = CASE WHEN keys < lim AND x.chunks_done = x.chunks_total + n THEN 'done'
                        WHEN keys < lim THEN 'running' ELSE 'planning' END,
           finished_at = CASE WHEN keys < lim AND x.chunks_done = x.chunks_total + n
                              THEN clock_timestamp() END,
           updated_at = clock_timestamp()
     WHERE x.id = b.id;
    IF n > 0 THEN
        PERFORM pg_notify('ragpool_jobs', '');
    END IF;
    RETURN CASE WHEN keys < lim THEN 'done' ELSE 'more' END;
END
$$;

-- Stops a batch: its queued chunk jobs are deleted, running ones find the
-- batch cancelled and commit nothing.  Returns whether it was running.
CREATE OR REPLACE FUNCTION ragpool.reembed_cancel(batch_id bigint)
RETURNS boolean
LANGUAGE plpgsql AS
$$
BEGIN
    UPDATE ragpool.reembed_batches b
       SET state = 'cancelled', finished_at = clock_timestamp(), updated_at = clock_timestamp()
     WHERE b.id = reembed_cancel.batch_id AND b.kind = 'batch' AND b.state IN ('planning', 'running');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM ragpool.jobs j
     WHERE j.state = 'queued' AND j.kind IN ('embed_chunk', 'reembed_plan')
       AND (j.payload ->> 'batch')::bigint = reembed_cancel.batch_id;
    RETURN true;
END
$$;

-- ---------------------------------------------------------------------------
-- Chunks (called by the worker, under the chunk job's lease)

-- The rows of a chunk job: every key in its range (or its id list) with
-- state 'e' (embed: content is the text, hash what a commit must match),
-- 'u' (unchanged since its last embedding) or 'n' (no text).  Nothing when
-- the chunk is committed already or its batch was cancelled.  Raises
-- 'lost lease' (SQLSTATE 55000) when the caller no longer holds the job.
CREATE OR REPLACE FUNCTION ragpool.reembed_chunk_rows(
    p_job_id uuid, p_lease_id uuid, p_model text, p_dimensions int)
RETURNS TABLE (row_id text, state text, content text, hash uuid)
LANGUAGE plpgsql AS
$$
DECLARE
    j ragpool.jobs;
    b ragpool.reembed_batches;
    c ragpool.reembed_chunks;
    prefix text := coalesce(p_model, '') || '/' || coalesce(p_dimensions::text, '') || E'\n';
    expr text;
    cond text;
BEGIN
    SELECT x.* INTO j FROM ragpool.jobs x
     WHERE x.id = p_job_id AND x.lease_id = p_lease_id
       AND x.state = 'running' AND x.locked_until > clock_timestamp();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpool.reembed_chunk_rows: lost lease on job %', p_job_id
            USING ERRCODE = '55000';
    END IF;
    SELECT * INTO b FROM ragpool.reembed_batches x WHERE x.id = (j.payload ->> 'batch')::bigint;
    IF NOT FOUND OR b.state = 'cancelled' THEN
        RETURN;
    END IF;
    expr := ragpool.reembed_text_expr(b.text_columns);
    IF j.payload ? 'chunk' THEN
        SELECT * INTO c FROM ragpool.reembed_chunks x
         WHERE x.batch_id = b.id AND x.chunk_no = (j.payload ->> 'chunk')::int;
        IF NOT FOUND OR c.state = 'done' THEN
            RETURN;
        END IF;
        cond := format('($1::text IS NULL OR t.%1$I > $1::%2$s) AND t.%1$I <= $2::%2$s AND (%3$s)',
                       b.id_column, b.id_type, coalesce(b.where_sql, 'true'));
    ELSE
        cond := format('t.%I = ANY ($3::%s[])', b.id_column, b.id_type);
    END IF;
    -- The stored hash is looked up row by row (a subquery on the primary
    -- key): a join would let the planner scan the whole hash table for
    -- every chunk, which grows with the table.
    RETURN QUERY EXECUTE format(
        'SELECT y.k::text,
                CASE WHEN y.txt IS NULL OR y.txt = '''' THEN ''n''
                     WHEN y.has AND y.old = y.new THEN ''u'' ELSE ''e'' END,
                CASE WHEN y.txt IS NULL OR y.txt = '''' THEN NULL
                     WHEN y.has AND y.old = y.new THEN NULL ELSE y.txt END,
                CASE WHEN y.txt IS NULL OR y.txt = '''' THEN NULL ELSE y.new END
           FROM (SELECT x.k, x.txt, x.has, md5($4 || x.txt)::uuid AS new,
                        (SELECT h.hash FROM ragpool.embedding_hashes h
                          WHERE h.relid = $5 AND h.embedding_column = $6
                            AND h.row_id = x.k::text) AS old
                   FROM (SELECT t.%1$I AS k, %2$s AS txt, t.%3$I IS NOT NULL AS has
                           FROM %4$s t WHERE %5$s) x) y
          ORDER BY y.k',
        b.id_column, expr, b.embedding_column, b.relid::regclass, cond)
        USING c.lo, c.hi,
              CASE WHEN j.payload ? 'ids'
                   THEN ARRAY(SELECT jsonb_array_elements_text(j.payload -> 'ids')) END,
              prefix, b.relid, b.embedding_column;
END
$$;

-- Commits one chunk in one transaction: writes the vectors (one UPDATE
-- FROM unnest) of rows whose text still hashes to what was embedded,
-- records their hashes and the refused rows, marks the chunk done and
-- counts it on its batch.  vectors are pgvector or array literals as the
-- target's vector_format says.  Returns 'done', 'already_done' (a previous
-- attempt committed: nothing written) or 'lost_lease' (nothing written).
CREATE OR REPLACE FUNCTION ragpool.reembed_chunk_commit(
    p_job_id uuid, p_lease_id uuid, p_model text, p_dimensions int,
    ids text[], hashes uuid[], vectors text[],
    failed_ids text[], failed_reasons text[], n_skipped int)
RETURNS text
LANGUAGE plpgsql AS
$$
DECLARE
    j ragpool.jobs;
    b ragpool.reembed_batches;
    c ragpool.reembed_chunks;
    prefix text := coalesce(p_model, '') || '/' || coalesce(p_dimensions::text, '') || E'\n';
    written int := 0;
    nids int := coalesce(cardinality(ids), 0);
    nfailed int := coalesce(cardinality(failed_ids), 0);
    is_chunk boolean;
BEGIN
    j := ragpool.reembed_held(p_job_id, p_lease_id);
    IF j.id IS NULL THEN
        RETURN 'lost_lease';
    END IF;
    SELECT * INTO b FROM ragpool.reembed_batches x WHERE x.id = (j.payload ->> 'batch')::bigint;
    IF NOT FOUND OR b.state = 'cancelled' THEN
        RETURN 'already_done';
    END IF;
    is_chunk := j.payload ? 'chunk';
    IF is_chunk THEN
        SELECT * INTO c FROM ragpool.reembed_chunks x
         WHERE x.batch_id = b.id AND x.chunk_no = (j.payload ->> 'chunk')::int FOR UPDATE;
        IF NOT FOUND OR c.state = 'done' THEN
            RETURN 'already_done';
        END IF;
    END IF;

    IF nids > 0 THEN
        -- Our own write must not look like an edit to the target's triggers.
        PERFORM set_config('ragpool.embedding_write', 'on', true);
        EXECUTE format(
            'WITH v AS (SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[]) AS v(id, hash, vec)),
                  u AS (UPDATE %1$s t SET %2$I = v.vec::%3$s FROM v
                         WHERE t.%4$I = v.id::%5$s AND md5($4 || %6$s)::uuid = v.hash
                        RETURNING v.id, v.hash)
             INSERT INTO ragpool.embedding_hashes AS h (relid, embedding_column, row_id, hash)
             SELECT $5, $6, u.id, u.hash FROM u
             ON CONFLICT (relid, embedding_column, row_id) DO UPDATE
                SET hash = excluded.hash, embed_count = h.embed_count + 1,
                    embedded_at = clock_timestamp()',
            b.relid::regclass, b.embedding_column, b.embedding_type, b.id_column, b.id_type,
            ragpool.reembed_text_expr(b.text_columns))
            USING ids, hashes, vectors, prefix, b.relid, b.embedding_column;
        GET DIAGNOSTICS written = ROW_COUNT;
        PERFORM set_config('ragpool.embedding_write', 'off', true);
    END IF;
    IF nfailed > 0 THEN
        INSERT INTO ragpool.reembed_failures AS f (batch_id, row_id, reason)
        SELECT b.id, x.id, coalesce(x.reason, 'refused')
          FROM unnest(failed_ids, failed_reasons) AS x(id, reason)
        ON CONFLICT (batch_id, row_id) DO UPDATE
           SET reason = excluded.reason, failed_at = clock_timestamp();
    END IF;

    IF is_chunk THEN
        UPDATE ragpool.reembed_chunks x
           SET state = 'done', rows_done = written,
               rows_skipped = coalesce(n_skipped, 0) + nids - written,
               rows_failed = nfailed, done_at = clock_timestamp()
         WHERE x.batch_id = c.batch_id AND x.chunk_no = c.chunk_no;
    END IF;
    -- Last, so the batch row is locked only for the end of the transaction.
    UPDATE ragpool.reembed_batches x
       SET done_rows = x.done_rows + written,
           skipped_rows = x.skipped_rows + coalesce(n_skipped, 0) + nids - written,
           failed_rows = x.failed_rows + nfailed,
           total_rows = x.total_rows + CASE WHEN is_chunk
                            THEN nids + nfailed + coalesce(n_skipped, 0) - c.planned_rows
                            ELSE nids + nfailed + coalesce(n_skipped, 0) END,
           chunks_done = x.chunks_done + CASE WHEN is_chunk THEN 1 ELSE 0 END,
           started_at = coalesce(x.started_at, clock_timestamp()),
           state = CASE WHEN is_chunk AND x.planned AND x.chunks_done + 1 >= x.chunks_total
                        THEN 'done' ELSE x.state END,
           finished_at = CASE WHEN is_chunk AND x.planned AND x.chunks_done + 1 >= x.chunks_total
                              THEN clock_timestamp() ELSE x.finished_at END,
           updated_at = clock_timestamp()
     WHERE x.id = b.id;
    RETURN 'done';
END
$$;

-- ---------------------------------------------------------------------------
-- Progress

-- Per batch (every one, or one): counts, chunks, rate and ETA.  state is
-- the batch's, or 'stalled' when only dead-lettered chunks are left
-- (ragpool dead retry brings them back).  rows_per_s is the average since
-- the first chunk started; eta_s is NULL until there is a rate.
CREATE OR REPLACE FUNCTION ragpool.reembed_progress(p_batch_id bigint DEFAULT NULL)
RETURNS TABLE (batch_id bigint, kind text, table_name text, embedding_column name, state text,
               total bigint, done bigint, skipped bigint, failed bigint, chunks_total int,
               chunks_done int, chunks_dead bigint, dead_rows bigint, rows_per_s float8,
               eta_s float8, elapsed_s float8, created_at timestamptz,
               finished_at timestamptz)
LANGUAGE sql STABLE AS
$$
    SELECT b.id, b.kind, b.table_name, b.embedding_column,
           CASE WHEN b.state = 'running' AND dc.n > 0 AND b.chunks_done + dc.n >= b.chunks_total
                THEN 'stalled' ELSE b.state END,
           b.total_rows, b.done_rows, b.skipped_rows, b.failed_rows, b.chunks_total,
           b.chunks_done, dc.n, dc.r,
           round((processed / nullif(el, 0))::numeric, 1)::float8,
           CASE WHEN b.state IN ('planning', 'running') AND processed > 0 AND el > 0
                THEN round((greatest(b.total_rows - processed - dc.r, 0) / (processed / el))::numeric, 1)::float8 END,
           round(el::numeric, 1)::float8, b.created_at, b.finished_at
      FROM ragpool.reembed_batches b
      CROSS JOIN LATERAL (
          SELECT count(*) AS n, coalesce(sum(c.planned_rows), 0)::bigint AS r
            FROM ragpool.reembed_chunks c JOIN ragpool.dead_jobs d ON d.id = c.job_id
           WHERE c.batch_id = b.id AND c.state = 'queued') dc
      CROSS JOIN LATERAL (
          SELECT (b.done_rows + b.skipped_rows + b.failed_rows)::float8 AS processed,
                 extract(epoch FROM coalesce(b.finished_at, clock_timestamp())
                                    - coalesce(b.started_at, b.created_at))::float8 AS el) m
     WHERE p_batch_id IS NULL OR b.id = p_batch_id
     ORDER BY b.id
$$;

-- ---------------------------------------------------------------------------
-- Automatic embeddings

-- Enqueues the rows ids of auto target tid as embed_chunk jobs of at most
-- chunk_rows ids each.  Returns the number of jobs.
CREATE OR REPLACE FUNCTION ragpool.embed_enqueue_ids(tid bigint, ids text[])
RETURNS int
LANGUAGE plpgsql AS
$$
DECLARE
    b ragpool.reembed_batches;
    n int := coalesce(cardinality(ids), 0);
    k int := 0;
BEGIN
    IF n = 0 THEN
        RETURN 0;
    END IF;
    SELECT * INTO b FROM ragpool.reembed_batches x WHERE x.id = tid;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    INSERT INTO ragpool.jobs (kind, payload, max_attempts, priority)
    SELECT 'embed_chunk',
           ragpool.reembed_payload(b) || jsonb_build_object('ids', to_jsonb(ids[i : i + b.chunk_rows - 1])),
           b.max_attempts, b.priority
      FROM generate_series(1, n, b.chunk_rows) AS i;
    GET DIAGNOSTICS k = ROW_COUNT;
    PERFORM pg_notify('ragpool_jobs', '');
    RETURN k;
END
$$;

-- Installs automatic embeddings on a table: after every INSERT (rows
-- without an embedding) and every UPDATE that changes a text column, the
-- changed rows are enqueued -- one job per batch_rows rows of a statement,
-- never one per row -- and an UPDATE that changes the text clears the stale
-- embedding at once (a BEFORE trigger), so readers never see a vector of
-- the old text.  Updates of other columns enqueue nothing.  A job is tried
-- max_attempts times and then dead-lettered (ragpool dead list).  With
-- backfill, rows that have no embedding yet are embedded by a batch.
-- Calling it again updates the settings.  Returns the target's id.
CREATE OR REPLACE FUNCTION ragpool.embed_on_change(
    tbl regclass,
    id_column name,
    text_columns name[],
    embedding_column name,
    model text DEFAULT NULL,
    dimensions int DEFAULT NULL,
    max_attempts int DEFAULT 5,
    batch_rows int DEFAULT 500,
    priority int DEFAULT -5,
    backfill boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql AS
$body$
#variable_conflict use_column
DECLARE
    d record;
    tid bigint;
    fn text;
    cols text;
    new_cols text;
    old_cols text;
    n_cols text;
    o_cols text;
    txt_nonempty text;
BEGIN
    d := ragpool.reembed_describe(tbl, id_column, text_columns, embedding_column);
    IF batch_rows IS NULL OR batch_rows NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'ragpool.embed_on_change: batch_rows must be 1..10000' USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'ragpool.embed_on_change: max_attempts must be at least 1' USING ERRCODE = '22023';
    END IF;
    INSERT INTO ragpool.reembed_batches AS x
        (kind, relid, table_name, id_column, text_columns, embedding_column, id_type,
         embedding_type, vector_format, model, dimensions, chunk_rows, max_attempts, priority, state)
    VALUES ('auto', tbl, tbl::text, embed_on_change.id_column, embed_on_change.text_columns,
            embed_on_change.embedding_column, d.id_type, d.embedding_type, d.vector_format,
            nullif(embed_on_change.model, ''), coalesce(embed_on_change.dimensions, d.typmod_dims),
            batch_rows, embed_on_change.max_attempts, coalesce(embed_on_change.priority, -5), 'auto')
    ON CONFLICT (relid, embedding_column) WHERE kind = 'auto' DO UPDATE
        SET id_column = excluded.id_column, text_columns = excluded.text_columns,
            id_type = excluded.id_type, embedding_type = excluded.embedding_type,
            vector_format = excluded.vector_format, model = excluded.model,
            dimensions = excluded.dimensions, chunk_rows = excluded.chunk_rows,
            max_attempts = excluded.max_attempts, priority = excluded.priority,
            table_name = excluded.table_name, updated_at = clock_timestamp()
    RETURNING x.id INTO tid;

    fn := 'embed_auto_' || tid;
    SELECT string_agg(format('%I', c), ', ' ORDER BY o),
           string_agg(format('NEW.%I', c), ', ' ORDER BY o),
           string_agg(format('OLD.%I', c), ', ' ORDER BY o),
           string_agg(format('n.%I', c), ', ' ORDER BY o),
           string_agg(format('o.%I', c), ', ' ORDER BY o)
      INTO cols, new_cols, old_cols, n_cols, o_cols
      FROM unnest(text_columns) WITH ORDINALITY AS u(c, o);
    txt_nonempty := format('coalesce(%s, '''') <> ''''',
                           ragpool.reembed_text_expr(text_columns, 'n'));

    -- Clears the embedding of a row whose text changes (before the write).
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION ragpool.%1$I() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            IF ROW(%2$s) IS DISTINCT FROM ROW(%3$s) THEN
                NEW.%4$I := NULL;
            END IF;
            RETURN NEW;
        END $b$$f$, fn || '_clear', new_cols, old_cols, embedding_column);
    -- Enqueues inserted rows that have text and no embedding.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION ragpool.%1$I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            PERFORM ragpool.embed_enqueue_ids(%2$s, ARRAY(
                SELECT n.%3$I::text FROM new_rows n
                 WHERE n.%4$I IS NULL AND %5$s ORDER BY n.%3$I));
            RETURN NULL;
        END $b$$f$, fn || '_insert', tid, id_column, embedding_column, txt_nonempty);
    -- Enqueues updated rows whose text changed (a new key counts as
    -- changed); our own writes of the embedding column are skipped.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION ragpool.%1$I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            IF current_setting('ragpool.embedding_write', true) = 'on' THEN
                RETURN NULL;
            END IF;
            PERFORM ragpool.embed_enqueue_ids(%2$s, ARRAY(
                SELECT n.%3$I::text FROM new_rows n
                 WHERE %4$s AND NOT EXISTS (
                       SELECT 1 FROM old_rows o
                        WHERE o.%3$I = n.%3$I AND ROW(%5$s) IS NOT DISTINCT FROM ROW(%6$s))
                 ORDER BY n.%3$I));
            RETURN NULL;
        END $b$$f$, fn || '_update', tid, id_column, txt_nonempty,
            o_cols, n_cols);
    -- Forgets the hashes of deleted rows.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION ragpool.%1$I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $b$
        BEGIN
            DELETE FROM ragpool.embedding_hashes h
             USING old_rows o
             WHERE h.relid = %2$s AND h.embedding_column = %3$L AND h.row_id = o.%4$I::text;
            RETURN NULL;
        END $b$$f$, fn || '_delete', tbl::oid, embedding_column, id_column);

    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'ragpool_' || fn || '_clear', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'ragpool_' || fn || '_insert', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'ragpool_' || fn || '_update', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'ragpool_' || fn || '_delete', tbl);
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OF %s ON %s FOR EACH ROW EXECUTE FUNCTION ragpool.%I()',
                   'ragpool_' || fn || '_clear', cols, tbl, fn || '_clear');
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION ragpool.%I()',
                   'ragpool_' || fn || '_insert', tbl, fn || '_insert');
    -- Transition tables cannot be combined with a column list, so this one
    -- fires for every UPDATE and compares the texts itself.
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
                   'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ragpool.%I()',
                   'ragpool_' || fn || '_update', tbl, fn || '_update');
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION ragpool.%I()',
                   'ragpool_' || fn || '_delete', tbl, fn || '_delete');

    IF backfill THEN
        PERFORM ragpool.reembed_start(tbl, id_column, text_columns, embedding_column,
                                      format('t.%I IS NULL', embedding_column), model, dimensions);
    END IF;
    RETURN tid;
END
$body$;

-- Removes automatic embeddings from a table's embedding column (the
-- embeddings stay).  Returns whether they were installed.
CREATE OR REPLACE FUNCTION ragpool.embed_off(tbl regclass, embedding_column name)
RETURNS boolean
LANGUAGE plpgsql AS
$$
DECLARE
    tid bigint;
    fn text;
    s text;
BEGIN
    DELETE FROM ragpool.reembed_batches b
     WHERE b.kind = 'auto' AND b.relid = tbl AND b.embedding_column = embed_off.embedding_column
    RETURNING b.id INTO tid;
    IF tid IS NULL THEN
        RETURN false;
    END IF;
    fn := 'embed_auto_' || tid;
    FOREACH s IN ARRAY ARRAY['_clear', '_insert', '_update', '_delete'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'ragpool_' || fn || s, tbl);
        EXECUTE format('DROP FUNCTION IF EXISTS ragpool.%I()', fn || s);
    END LOOP;
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION
    ragpool.reembed_text_expr(name[], text),
    ragpool.reembed_describe(regclass, name, name[], name),
    ragpool.reembed_held(uuid, uuid),
    ragpool.reembed_extend(uuid, uuid, int),
    ragpool.reembed_start(regclass, name, name[], name, text, text, int, int, int, int),
    ragpool.reembed_payload(ragpool.reembed_batches),
    ragpool.reembed_plan(uuid, uuid, int),
    ragpool.reembed_cancel(bigint),
    ragpool.reembed_chunk_rows(uuid, uuid, text, int),
    ragpool.reembed_chunk_commit(uuid, uuid, text, int, text[], uuid[], text[], text[], text[], int),
    ragpool.reembed_progress(bigint),
    ragpool.embed_enqueue_ids(bigint, text[]),
    ragpool.embed_on_change(regclass, name, name[], name, text, int, int, int, int, boolean),
    ragpool.embed_off(regclass, name)
    FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ragpool TO service_role;
        GRANT ALL ON ragpool.reembed_batches, ragpool.reembed_chunks, ragpool.embedding_hashes,
                     ragpool.reembed_failures TO service_role;
    END IF;
END
$$;
