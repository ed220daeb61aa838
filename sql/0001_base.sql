-- 0001_base.sql: the ragpool schema, its settings, and the Supabase roles and
-- auth helpers where the server does not already have them.
--
-- On Supabase the roles (anon, authenticated, service_role) and the auth
-- schema (auth.uid(), auth.jwt()) exist and belong to Supabase: this file
-- leaves them alone.  On plain Postgres it creates minimal stand-ins that
-- read the same settings PostgREST and Realtime set (`request.jwt.claims`,
-- `request.jwt.claim.sub`), so the RLS policies behave the same in tests.
--
-- The user id type (uuid, Supabase Auth's default, or bigint, the reference
-- design's) is chosen once, here, and kept in ragpool.settings: from the
-- session setting `ragpool.user_id_type` (`ragpool migrate --user-id-type`),
-- else from an existing public.conversations.user_id column, else uuid.
-- Idempotent: every statement may run again.

CREATE SCHEMA IF NOT EXISTS ragpool;

CREATE TABLE IF NOT EXISTS ragpool.settings (
    key text PRIMARY KEY,
    value text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

DO $$
DECLARE
    wanted text := lower(nullif(btrim(current_setting('ragpool.user_id_type', true)), ''));
    existing text;
    stored text;
BEGIN
    IF wanted IS NOT NULL AND wanted NOT IN ('uuid', 'bigint') THEN
        RAISE EXCEPTION 'ragpool.user_id_type must be uuid or bigint, not %', wanted
            USING ERRCODE = '22023';
    END IF;

    -- An application that already has the reference design's tables keeps
    -- its column type (integer ids are treated as bigint).
    SELECT CASE format_type(a.atttypid, NULL)
               WHEN 'uuid' THEN 'uuid'
               WHEN 'bigint' THEN 'bigint'
               WHEN 'integer' THEN 'bigint'
               ELSE format_type(a.atttypid, NULL) END
      INTO existing
      FROM pg_attribute a
     WHERE a.attrelid = to_regclass('public.conversations')
       AND a.attname = 'user_id' AND NOT a.attisdropped;
    IF existing IS NOT NULL AND existing NOT IN ('uuid', 'bigint') THEN
        RAISE EXCEPTION 'public.conversations.user_id has type %, ragpool supports uuid or bigint', existing
            USING ERRCODE = '42804';
    END IF;
    IF existing IS NOT NULL AND wanted IS NOT NULL AND existing <> wanted THEN
        RAISE EXCEPTION 'user id type % was requested but public.conversations.user_id is %', wanted, existing
            USING ERRCODE = '42804';
    END IF;

    SELECT value INTO stored FROM ragpool.settings WHERE key = 'user_id_type';
    IF stored IS NULL THEN
        INSERT INTO ragpool.settings (key, value)
        VALUES ('user_id_type', coalesce(existing, wanted, 'uuid'));
    ELSIF wanted IS NOT NULL AND wanted <> stored THEN
        RAISE EXCEPTION 'user id type is already % in this database; it cannot change to %', stored, wanted
            USING ERRCODE = '42804';
    END IF;
END
$$;

-- Roles as Supabase has them.  service_role bypasses RLS (it is what a
-- server-side component such as the worker may connect as).
-- Roles are cluster-wide: two databases migrating at once may both see a
-- role missing, so a concurrent creation (unique_violation on pg_authid, or
-- duplicate_object) counts as success.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES ('anon', 'NOLOGIN NOINHERIT'),
                                   ('authenticated', 'NOLOGIN NOINHERIT'),
                                   ('service_role', 'NOLOGIN NOINHERIT BYPASSRLS')) AS t(name, opts)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', r.name, r.opts);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- A minimal auth schema, only where Supabase's is absent.  The bodies follow
-- Supabase's: the newer `request.jwt.claims` JSON and the older per-claim
-- `request.jwt.claim.sub` setting are both understood.
CREATE SCHEMA IF NOT EXISTS auth;

DO $$
BEGIN
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
        LANGUAGE sql STABLE AS
        $f$
            SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                            nullif(current_setting('request.jwt.claims', true), ''))::jsonb
        $f$;
    END IF;
    IF to_regprocedure('auth.uid()') IS NULL THEN
        CREATE FUNCTION auth.uid() RETURNS uuid
        LANGUAGE sql STABLE AS
        $f$
            SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
        $f$;
    END IF;
    IF to_regprocedure('auth.role()') IS NULL THEN
        CREATE FUNCTION auth.role() RETURNS text
        LANGUAGE sql STABLE AS
        $f$
            SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text
        $f$;
    END IF;
END
$$;

DO $$
BEGIN
    -- Only on a schema we created: Supabase manages the grants of its own.
    IF (SELECT nspowner FROM pg_namespace WHERE nspname = 'auth') = (SELECT oid FROM pg_roles WHERE rolname = current_user) THEN
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA auth TO anon, authenticated, service_role;
    END IF;
END
$$;
