/**
 * ai-enqueue: ragpool's Supabase Edge Function (Deno).  The reference
 * design's `ai-finance` function reworked into a front end that only
 * enqueues: it authenticates the caller from the request's JWT, validates
 * the question, enqueues one chat job (Postgres through
 * `ragpool.enqueue_chat`, or Redis) and answers
 * `202 {"job_id": ..., "status": "queued"}` at once.  ragpool-worker answers
 * later; the answer arrives over Supabase Realtime as an INSERT on
 * `conversations` (filter `user_id=eq.<the user>`).
 *
 *   POST <any path>   Authorization: Bearer <Supabase JWT>
 *                     Content-Type: application/json
 *                     [Idempotency-Key: <1..255 visible ASCII characters>]
 *                     {"message": "...", "conversation_id"?: "...", "options"?: {...}}
 *   OPTIONS           CORS preflight: 200 "ok" with the CORS headers
 *
 * The order of checks and every error code are ragpool-dispatcher's
 * (docs/DISPATCHER.md): 405, 401 (missing_token / invalid_token), 415,
 * 413, 400 (malformed_json), 422 (invalid_request / invalid_fields /
 * invalid_idempotency_key / rejected), 503 (queue_unavailable).  Every
 * answer is JSON and carries the CORS headers.  The user is the token's
 * `sub`, never anything in the body.
 *
 * Settings are environment variables (README.md), read once at start; a bad
 * value stops the function at start with a message naming the variable.
 * The queue client is created once per process, so connections are pooled
 * across requests.  On Supabase the runtime serves the handler; anywhere
 * else (`deno run`, the tests, bench/dispatcher) it listens on
 * RAGPOOL_EDGE_HOST:RAGPOOL_EDGE_PORT (127.0.0.1:8000), and SIGTERM/SIGINT
 * stop it after the requests in progress; SIGUSR2 logs its counters.
 */
import { AuthError, bearerToken, HS256Verifier } from "./auth.ts";
import { idempotencyJobId, idempotencyKeyValid, isJsonContentType, parseChatBody, type Refusal } from "./request.ts";
import { postgresQueue, type Queue, QueueError, redisQueue } from "./queue.ts";

// ------------------------------------------------------------------ settings

class ConfigError extends Error {}

function env(name: string): string | undefined {
  const v = Deno.env.get(name);
  return v === undefined || v === "" ? undefined : v;
}

function intEnv(name: string, def: number, min: number, max: number): number {
  const raw = env(name);
  if (raw === undefined) return def;
  if (!/^-?[0-9]+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new ConfigError(`${name}: must be an integer from ${min} to ${max}, got "${raw}"`);
  }
  return Number(raw);
}

function boolEnv(name: string, def: boolean): boolean {
  const raw = env(name);
  if (raw === undefined) return def;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(`${name}: must be true or false, got "${raw}"`);
}

/** Comma-separated list; null when the variable is set but empty (= not checked). */
function listEnv(name: string, def: string): string[] | null {
  const raw = Deno.env.get(name) ?? def;
  const items = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
  return items.length > 0 ? items : null;
}

function loadConfig() {
  // `supabase secrets set` refuses names starting with SUPABASE_, hence the alias.
  const secret = env("RAGPOOL_JWT_SECRET") ?? env("SUPABASE_JWT_SECRET");
  if (secret === undefined) {
    throw new ConfigError("SUPABASE_JWT_SECRET (or RAGPOOL_JWT_SECRET): the project's JWT secret is required");
  }
  const queue = env("RAGPOOL_QUEUE") ?? "postgres";
  if (queue !== "postgres" && queue !== "redis") {
    throw new ConfigError(`RAGPOOL_QUEUE: must be postgres or redis, got "${queue}"`);
  }
  // SUPABASE_DB_URL is set for every function on Supabase.
  const databaseUrl = env("DATABASE_URL") ?? env("SUPABASE_DB_URL");
  if (queue === "postgres" && databaseUrl === undefined) {
    throw new ConfigError("DATABASE_URL (or SUPABASE_DB_URL) is required when RAGPOOL_QUEUE=postgres");
  }
  const redisUrl = env("REDIS_URL");
  if (queue === "redis" && redisUrl === undefined) {
    throw new ConfigError("REDIS_URL is required when RAGPOOL_QUEUE=redis");
  }
  const cors = Deno.env.get("RAGPOOL_CORS_ORIGINS") ?? "*";
  const audience = (Deno.env.get("RAGPOOL_JWT_AUDIENCE") ?? "authenticated").trim();
  return {
    queue: queue as "postgres" | "redis",
    databaseUrl: databaseUrl ?? "",
    redisUrl: redisUrl ?? "",
    redisStream: env("RAGPOOL_REDIS_STREAM") ?? "ragpool:jobs",
    pgPoolMax: intEnv("RAGPOOL_PG_POOL_MAX", 5, 1, 1000),
    pgPrepare: boolEnv("RAGPOOL_PG_PREPARE", true),
    maxAttempts: intEnv("RAGPOOL_MAX_ATTEMPTS", 5, 1, 1000),
    auth: {
      secret: new TextEncoder().encode(secret),
      audience: audience === "" ? null : audience,
      roles: listEnv("RAGPOOL_JWT_ROLES", "authenticated"),
      leewayS: intEnv("RAGPOOL_JWT_LEEWAY_S", 30, 0, 86400),
      maxTokenBytes: 8192,
      cacheSize: intEnv("RAGPOOL_JWT_CACHE", 4096, 0, 1000000),
    },
    maxBodyBytes: intEnv("RAGPOOL_MAX_BODY_BYTES", 65536, 1024, 16 * 1024 * 1024),
    enqueueTimeoutMs: intEnv("RAGPOOL_ENQUEUE_TIMEOUT_MS", 5000, 1, 600000),
    corsOrigins: cors.trim() === "" ? null : cors.split(",").map((s) => s.trim()).filter((s) => s !== ""),
    host: env("RAGPOOL_EDGE_HOST") ?? "127.0.0.1",
    port: intEnv("RAGPOOL_EDGE_PORT", 8000, 0, 65535),
    portFile: env("RAGPOOL_EDGE_PORT_FILE"),
  };
}

// ------------------------------------------------------------------ logs

/** One JSON line on stderr (the function's log on Supabase).  Never a token. */
function log(level: "info" | "warn" | "error", event: string, fields: Record<string, unknown> = {}): void {
  console.error(JSON.stringify({ ts: new Date().toISOString(), level, event, ...fields }));
}

// ------------------------------------------------------------------ state

let cfg: ReturnType<typeof loadConfig>;
try {
  cfg = loadConfig();
} catch (e) {
  log("error", "ai-enqueue.config", { message: (e as Error).message });
  throw e;
}
const verifier = new HS256Verifier(cfg.auth);
/** Module level: one pool per process, shared by every request. */
const queue: Queue = cfg.queue === "redis"
  ? await redisQueue({ url: cfg.redisUrl, stream: cfg.redisStream, maxAttempts: cfg.maxAttempts })
  : postgresQueue({ url: cfg.databaseUrl, poolMax: cfg.pgPoolMax, prepare: cfg.pgPrepare });

/** Answers sent, by status (SIGUSR2 and the stop line print them). */
const counts: Record<string, number> = {};

// ------------------------------------------------------------------ answers

const ALLOW_HEADERS = "authorization, x-client-info, apikey, content-type, idempotency-key";

function corsHeaders(req: Request): Record<string, string> {
  const allowed = cfg.corsOrigins;
  if (allowed === null) return {};
  const h: Record<string, string> = {
    "Access-Control-Allow-Headers": ALLOW_HEADERS,
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Expose-Headers": "Retry-After",
  };
  if (allowed.includes("*")) {
    h["Access-Control-Allow-Origin"] = "*";
  } else {
    const origin = req.headers.get("Origin");
    if (origin !== null && allowed.includes(origin)) h["Access-Control-Allow-Origin"] = origin;
    h["Vary"] = "Origin";
  }
  return h;
}

function json(req: Request, status: number, body: unknown, extra: Record<string, string> = {}): Response {
  counts[status] = (counts[status] ?? 0) + 1;
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...corsHeaders(req), ...extra },
  });
}

function error(
  req: Request,
  status: number,
  code: string,
  message: string,
  extra: Record<string, string> = {},
  fields?: string[],
): Response {
  const e: Record<string, unknown> = { code, message };
  if (fields !== undefined) e.fields = fields;
  return json(req, status, { error: e }, extra);
}

function refuse(req: Request, r: Refusal): Response {
  return error(req, r.status, r.code, r.message, {}, r.fields);
}

function unauthorized(req: Request, e: AuthError): Response {
  const challenge = e.code === "missing_token"
    ? 'Bearer realm="ragpool"'
    : 'Bearer realm="ragpool", error="invalid_token"';
  return error(req, 401, e.code, e.message, { "WWW-Authenticate": challenge });
}

function unavailable(req: Request): Response {
  return error(req, 503, "queue_unavailable", "the queue cannot take the job now; retry later", {
    "Retry-After": "1",
  });
}

/** The body, or null when it is larger than max bytes (read no further than that). */
async function readBody(req: Request, max: number): Promise<Uint8Array | null> {
  const declared = req.headers.get("Content-Length");
  if (declared !== null && Number(declared) > max) return null;
  if (req.body === null) return new Uint8Array(0);
  if (declared !== null) return new Uint8Array(await req.arrayBuffer());
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > max) {
      await reader.cancel();
      return null;
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new QueueError("unavailable", `no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

// ------------------------------------------------------------------ handler

/** The function: one request in, one answer out (never throws). */
export async function handler(req: Request): Promise<Response> {
  if (req.method === "OPTIONS") {
    counts[200] = (counts[200] ?? 0) + 1;
    return new Response("ok", { headers: corsHeaders(req) });
  }
  if (req.method !== "POST") {
    return error(req, 405, "method_not_allowed", "use POST", { Allow: "POST, OPTIONS" });
  }

  // 1. Who is asking: the verified token's subject, never the body.
  const token = bearerToken(req.headers.get("Authorization"));
  if (token === null) {
    return unauthorized(req, new AuthError("missing_token", "an Authorization: Bearer token is required"));
  }
  let sub: string;
  try {
    sub = (await verifier.verify(token, Math.floor(Date.now() / 1000))).sub;
  } catch (e) {
    if (e instanceof AuthError) return unauthorized(req, e);
    throw e;
  }

  // 2. What is asked.
  if (!isJsonContentType(req.headers.get("Content-Type"))) {
    return error(req, 415, "unsupported_media_type", "Content-Type must be application/json");
  }
  let body: Uint8Array | null;
  try {
    body = await readBody(req, cfg.maxBodyBytes);
  } catch {
    return error(req, 400, "malformed_json", "the request body could not be read");
  }
  if (body === null) return error(req, 413, "payload_too_large", "the request body is too large");
  const chat = parseChatBody(body);
  if ("status" in chat) return refuse(req, chat);
  let jobId: string | null = null;
  const key = req.headers.get("Idempotency-Key");
  if (key !== null) {
    if (!idempotencyKeyValid(key)) {
      return error(
        req,
        422,
        "invalid_idempotency_key",
        "Idempotency-Key must be 1 to 255 visible ASCII characters",
      );
    }
    jobId = await idempotencyJobId(sub, key);
  }

  // 3. Enqueue; 202 only once the queue has the job.
  try {
    const r = await withTimeout(queue.enqueue(sub, chat.message, chat.options, jobId), cfg.enqueueTimeoutMs);
    const out: Record<string, unknown> = { job_id: r.jobId, status: "queued" };
    if (r.existing) out.existing = true;
    if (chat.conversationId !== null) out.conversation_id = chat.conversationId;
    return json(req, 202, out);
  } catch (e) {
    if (e instanceof QueueError && e.kind === "rejected") {
      return error(req, 422, "rejected", e.message);
    }
    log("warn", "ai-enqueue.enqueue_failed", { job_id: jobId, message: (e as Error).message });
    return unavailable(req);
  }
}

/** The handler with a last line of defence: an unexpected exception is a JSON 500, logged. */
export async function serve(req: Request): Promise<Response> {
  try {
    return await handler(req);
  } catch (e) {
    log("error", "ai-enqueue.internal", { message: (e as Error).message });
    return error(req, 500, "internal", "internal error");
  }
}

// ------------------------------------------------------------------ serving

declare const EdgeRuntime: unknown;

if (import.meta.main) {
  if (typeof EdgeRuntime !== "undefined") {
    // Supabase's runtime: it owns the listening socket and the lifecycle.
    Deno.serve(serve);
  } else {
    const server = Deno.serve({
      hostname: cfg.host,
      port: cfg.port,
      onListen({ port }) {
        if (cfg.portFile !== undefined) Deno.writeTextFileSync(cfg.portFile, `${port}\n`);
        log("info", "ai-enqueue.ready", { host: cfg.host, port, queue: queue.backend });
      },
    }, serve);
    let stopping = false;
    const stop = async (signal: string) => {
      if (stopping) Deno.exit(1); // a second signal: at once
      stopping = true;
      log("info", "ai-enqueue.draining", { signal });
      await server.shutdown();
      await queue.close();
      log("info", "ai-enqueue.stopped", { answers: counts });
      Deno.exit(0);
    };
    Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
    Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
    Deno.addSignalListener("SIGUSR2", () => log("info", "ai-enqueue.stats", { answers: counts }));
  }
}
