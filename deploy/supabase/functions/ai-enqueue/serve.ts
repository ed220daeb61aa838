/**
 * serve.ts: the function under `deno serve` -- Deno's own HTTP server,
 * which with `--parallel` runs one worker (isolate) per CPU on one port:
 *
 *   deno serve --parallel --host 127.0.0.1 --port 8000 --allow-net --allow-env serve.ts
 *
 * Same handler, settings and answers as index.ts; each worker has its own
 * queue client.  bench/dispatcher uses it to give the function every core,
 * beside the one-isolate `deno run index.ts` that Supabase's model matches.
 * SIGUSR2 counters and the drain on SIGTERM are index.ts's own (`deno run`).
 */
import { serve } from "./index.ts";

export default { fetch: serve } satisfies Deno.ServeDefaultExport;
