-- bench/sql/results.sql: what one phase of bench/pipeline left behind, as
-- one line of space-separated fields:
--   rows  error_rows  dead_jobs  jobs_left  last_insert_epoch
--   p50_latency_ms  p99_latency_ms  model_p50_ms  model_p99_ms  queue_p99_ms
-- latency_ms is enqueue -> insert, computed by ragpool.complete_jobs on the
-- database clock; the model's own time is embed_ms + infer_ms from the
-- worker's per-stage timings, queue_ms the wait from enqueue to claim.
-- Percentiles are over answered rows only.
SELECT (SELECT count(*) FROM public.conversations),
       (SELECT count(*) FROM public.conversations WHERE status = 'error'),
       (SELECT count(*) FROM ragpool.dead_jobs),
       (SELECT count(*) FROM ragpool.jobs),
       coalesce(round(extract(epoch FROM (SELECT max(created_at) FROM public.conversations))::numeric, 3)::text, '-'),
       coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1)::text, '-'),
       coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1)::text, '-'),
       coalesce(round(percentile_cont(0.5) WITHIN GROUP (
                    ORDER BY (timings ->> 'embed_ms')::float8 + (timings ->> 'infer_ms')::float8)::numeric, 1)::text, '-'),
       coalesce(round(percentile_cont(0.99) WITHIN GROUP (
                    ORDER BY (timings ->> 'embed_ms')::float8 + (timings ->> 'infer_ms')::float8)::numeric, 1)::text, '-'),
       coalesce(round(percentile_cont(0.99) WITHIN GROUP (
                    ORDER BY (timings ->> 'queue_ms')::float8)::numeric, 1)::text, '-')
  FROM public.conversations
 WHERE status = 'done';
