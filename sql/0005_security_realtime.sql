-- 0005_security_realtime.sql: row level security, grants, and the Realtime
-- publication.
--
-- A signed-in user (role authenticated) reads only their own conversations
-- and swaps, and may set the feedback of their own answers.  The user is
-- ragpool.request_user_id(): the JWT's custom `user_id` claim, else its
-- subject (auth.uid()).  The worker connects as the owner of the tables or
-- as service_role, which bypass RLS.  Grants follow Supabase's pattern:
-- nothing in schema ragpool is callable by default; enqueue_chat is
-- callable by authenticated (for their own id only) and service_role.
--
-- Supabase Realtime streams `conversations` inserts: the table is in the
-- publication supabase_realtime (created here where absent) with REPLICA
-- IDENTITY FULL, so filters and RLS checks see whole rows.

ALTER TABLE public.conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.swap_history ENABLE ROW LEVEL SECURITY;

-- Policies are dropped and created again so a re-run installs the current
-- text.  The sub-select makes the user id an init-plan: computed once per
-- query, and compared in the column's type so the user_id index serves it.
DROP POLICY IF EXISTS ragpool_conversations_select_own ON public.conversations;
CREATE POLICY ragpool_conversations_select_own ON public.conversations
    FOR SELECT TO authenticated
    USING (user_id = (SELECT ragpool.to_user_id(ragpool.request_user_id())));

DROP POLICY IF EXISTS ragpool_conversations_feedback_own ON public.conversations;
CREATE POLICY ragpool_conversations_feedback_own ON public.conversations
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT ragpool.to_user_id(ragpool.request_user_id())))
    WITH CHECK (user_id = (SELECT ragpool.to_user_id(ragpool.request_user_id())));

DROP POLICY IF EXISTS ragpool_swap_history_select_own ON public.swap_history;
CREATE POLICY ragpool_swap_history_select_own ON public.swap_history
    FOR SELECT TO authenticated
    USING (user_id = (SELECT ragpool.to_user_id(ragpool.request_user_id())));

-- Schema ragpool: usable, but nothing callable unless granted below.
GRANT USAGE ON SCHEMA ragpool TO anon, authenticated, service_role;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ragpool FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA ragpool FROM anon, authenticated;
-- Used by the policies, so the querying role must be able to call them.
GRANT EXECUTE ON FUNCTION ragpool.request_user_id(), ragpool.to_user_id(text)
    TO anon, authenticated, service_role;
-- Used by the fallback match function, which its callers run as themselves.
GRANT EXECUTE ON FUNCTION ragpool.l2_norm(real[]), ragpool.cosine_similarity(real[], real[])
    TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION
    ragpool.enqueue_chat(text, text, jsonb, uuid),
    ragpool.enqueue_chat(uuid, text, jsonb, uuid),
    ragpool.enqueue_chat(bigint, text, jsonb, uuid)
    TO authenticated, service_role;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ragpool TO service_role;
GRANT ALL ON ALL TABLES IN SCHEMA ragpool TO service_role;

-- Application tables.  On Supabase, anon and authenticated may already hold
-- more through default privileges: RLS (no insert/delete policy) still
-- limits them to reading their own rows.
GRANT SELECT ON public.conversations, public.swap_history TO authenticated;
GRANT UPDATE (feedback) ON public.conversations TO authenticated;
GRANT SELECT ON public.finance_knowledge TO anon, authenticated;
GRANT ALL ON public.conversations, public.swap_history, public.finance_knowledge TO service_role;
GRANT EXECUTE ON FUNCTION public.match_finance_knowledge TO anon, authenticated, service_role;

-- Realtime.
ALTER TABLE public.conversations REPLICA IDENTITY FULL;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
        CREATE PUBLICATION supabase_realtime;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime' AND puballtables)
       AND NOT EXISTS (SELECT 1 FROM pg_publication_tables
                        WHERE pubname = 'supabase_realtime'
                          AND schemaname = 'public' AND tablename = 'conversations') THEN
        ALTER PUBLICATION supabase_realtime ADD TABLE public.conversations;
    END IF;
END
$$;
