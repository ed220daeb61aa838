-- 0011: close what the later migrations left open.
--
-- Functions created after 0005 are executable by PUBLIC unless revoked;
-- ack_jobs and record_results (0006) were not.  And on Supabase, tables in
-- public are reachable through the Data API by anon and authenticated, so
-- every application table gets row-level security: the knowledge base stays
-- readable (match_finance_knowledge runs as the caller), nothing else is
-- readable or writable by app users.  The worker connects as the tables'
-- owner or service_role, which RLS does not restrict.

REVOKE ALL ON FUNCTION ragpool.ack_jobs(jsonb), ragpool.record_results(jsonb) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION ragpool.ack_jobs(jsonb), ragpool.record_results(jsonb)
            TO service_role;
    END IF;
END
$$;

ALTER TABLE public.finance_knowledge ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS ragpool_finance_knowledge_read ON public.finance_knowledge;
CREATE POLICY ragpool_finance_knowledge_read ON public.finance_knowledge
    FOR SELECT TO anon, authenticated USING (true);
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.finance_knowledge FROM anon, authenticated;

DO $$
BEGIN
    IF to_regclass('public.model_metadata') IS NOT NULL THEN
        ALTER TABLE public.model_metadata ENABLE ROW LEVEL SECURITY;
        REVOKE ALL ON public.model_metadata FROM anon, authenticated;
    END IF;
    IF to_regclass('public.training_data') IS NOT NULL THEN
        ALTER TABLE public.training_data ENABLE ROW LEVEL SECURITY;
        REVOKE ALL ON public.training_data FROM anon, authenticated;
    END IF;
END
$$;
