/**
 * enqueue.ts: enqueue one ragpool chat job into the Redis queue, in the
 * format docs/REDIS.md fixes, from Node (18+) or Deno (2+).
 *
 *   npm install
 *   REDIS_URL=redis://127.0.0.1:6379/0 npx tsx enqueue.ts USER_ID "question" ['{"match_count":3}'] [JOB_ID]
 *   deno run --allow-net --allow-env --allow-read enqueue.ts USER_ID "question"
 *
 * It prints the job id (and "existing" when that id had been enqueued
 * before).  The answer arrives as a row of public.conversations in Postgres
 * (Supabase Realtime: subscribe to INSERT on conversations filtered by
 * user_id), exactly as with the Postgres queue.
 *
 * Use enqueueChat() from your own server code (an edge function, an API
 * route): it validates the obvious, encodes the job with msgpack, and adds
 * it with the idempotency script of docs/REDIS.md (ragpool's own producer
 * runs a batched form of it), so retrying with the same jobId never makes
 * a second job.
 */
import { Buffer } from "node:buffer";
import { randomUUID } from "node:crypto";
import process from "node:process";
import { encode } from "@msgpack/msgpack";
import { Redis } from "ioredis";

/** KEYS[1] = <stream>:idem:<job id>, KEYS[2] = <stream>; ARGV[1] = job, ARGV[2] = TTL (s). */
const IDEMPOTENT_XADD = `
local prev = redis.call('GET', KEYS[1])
if prev then return {1, prev} end
local id = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('SET', KEYS[1], id, 'EX', tonumber(ARGV[2]))
return {0, id}
`;

export interface ChatOptions {
  match_count?: number; // 1..50
  match_threshold?: number; // -1..1
  history_count?: number; // 0..50
  model?: string;
  max_tokens?: number; // 1..32768
  temperature?: number; // 0..2
}

export interface EnqueueResult {
  jobId: string;
  entryId: string; // the stream entry id
  existing: boolean; // true when jobId had been enqueued before
}

type RedisWithEnqueue = Redis & {
  ragpoolEnqueue(idemKey: string, stream: string, job: Buffer, ttl: string): Promise<[number, string]>;
};

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const INTEGER = /^-?[0-9]{1,19}$/;

export function connect(url: string): RedisWithEnqueue {
  const redis = new Redis(url, { maxRetriesPerRequest: 3 }) as RedisWithEnqueue;
  // ioredis sends EVALSHA and falls back to EVAL on NOSCRIPT by itself.
  redis.defineCommand("ragpoolEnqueue", { numberOfKeys: 2, lua: IDEMPOTENT_XADD });
  return redis;
}

export async function enqueueChat(
  redis: RedisWithEnqueue,
  userId: string,
  message: string,
  options: ChatOptions = {},
  jobId?: string, // your idempotency key; none = a new id, plain XADD
  stream = "ragpool:jobs",
  maxAttempts = 5,
): Promise<EnqueueResult> {
  if (!UUID.test(userId) && !INTEGER.test(userId)) throw new Error("user_id: must be a uuid or an integer");
  const bytes = new TextEncoder().encode(message).length;
  if (bytes < 1 || bytes > 32768 || message.includes("\0")) throw new Error("message: must be 1 to 32768 bytes");
  if (jobId !== undefined && !UUID.test(jobId)) throw new Error("job_id: must be a uuid");
  const id = (jobId ?? randomUUID()).toLowerCase();

  const job = encode(
    {
      id,
      kind: "chat",
      payload: { user_id: userId, message, options },
      max_attempts: maxAttempts,
      attempt: 0,
      enqueued_at_ms: Date.now(),
    },
    { ignoreUndefined: true },
  );
  const entry = Buffer.from(job.buffer, job.byteOffset, job.byteLength);
  if (jobId === undefined) {
    // Nobody else knows a fresh id: no idempotency key is kept for it.
    const entryId = await redis.xadd(stream, "*", "job", entry);
    return { jobId: id, entryId: String(entryId), existing: false };
  }
  const [flag, entryId] = await redis.ragpoolEnqueue(`${stream}:idem:${id}`, stream, entry, "86400");
  return { jobId: id, entryId: String(entryId), existing: Number(flag) === 1 };
}

async function main(): Promise<number> {
  const [userId, message, optionsJson, jobId] = process.argv.slice(2);
  if (!userId || !message) {
    console.error('usage: enqueue.ts USER_ID "question" [OPTIONS_JSON] [JOB_ID]');
    return 2;
  }
  const redis = connect(process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0");
  try {
    const options = optionsJson ? (JSON.parse(optionsJson) as ChatOptions) : {};
    const stream = process.env.RAGPOOL_REDIS_STREAM || "ragpool:jobs";
    const r = await enqueueChat(redis, userId, message, options, jobId || undefined, stream);
    console.log(r.existing ? `${r.jobId} existing` : r.jobId);
    return 0;
  } catch (e) {
    console.error(`enqueue failed: ${(e as Error).message}`);
    return 1;
  } finally {
    redis.disconnect();
  }
}

// Run main() only when executed directly, not when imported.
const self = process.argv[1] ?? "";
if (self.endsWith("enqueue.ts") || self.endsWith("enqueue.js")) {
  main().then((code) => process.exit(code));
}
