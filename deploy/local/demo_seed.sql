-- demo_seed.sql: a demo user and their recent swaps, for the local demo.
--
-- The user is 00000000-0000-4000-8000-000000000001 (a uuid, the default user
-- id mode).  Idempotent: the swaps are inserted only when this user has
-- none.  Run after `ragpool migrate`, e.g. `psql "$DATABASE_URL" -f
-- deploy/local/demo_seed.sql`.
DO $$
DECLARE
    uid text := '00000000-0000-4000-8000-000000000001';
BEGIN
    IF (SELECT value FROM ragpool.settings WHERE key = 'user_id_type') <> 'uuid' THEN
        RAISE NOTICE 'demo seed skipped: this database uses bigint user ids';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM public.swap_history WHERE user_id = ragpool.to_user_id(uid)) THEN
        RETURN;
    END IF;
    INSERT INTO public.swap_history (user_id, from_token, to_token, amount, created_at)
    SELECT ragpool.to_user_id(uid), s.from_token, s.to_token, s.amount,
           now() - s.age
      FROM (VALUES
        ('TON',  'USDT', 100::numeric,  interval '2 hours'),
        ('USDT', 'TON',  250,           interval '1 day'),
        ('TON',  'NOT',  20,            interval '2 days'),
        ('ETH',  'USDC', 0.5,           interval '3 days'),
        ('USDT', 'ETH',  400,           interval '5 days'),
        ('BTC',  'USDT', 0.01,          interval '8 days'),
        ('TON',  'USDT', 35.5,          interval '12 days'),
        ('USDC', 'TON',  150,           interval '20 days')
      ) AS s(from_token, to_token, amount, age);
END
$$;
