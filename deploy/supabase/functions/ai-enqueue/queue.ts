/**
 * queue.ts: enqueueing a chat job, into Postgres or Redis.
 *
 * One queue object per process (module level in index.ts), so its
 * connections are pooled across requests:
 *
 *   - Postgres (default): postgres.js (npm `postgres`) with a small pool;
 *     one `select ragpool.enqueue_chat(user, message, options, job_id)` per
 *     job (docs/SCHEMA.md).  The job is committed when the statement
 *     returns.  A known job id (an Idempotency-Key retry) returns that id
 *     and enqueues nothing.
 *   - Redis (RAGPOOL_QUEUE=redis): ioredis with auto-pipelining; one msgpack
 *     entry per job added with ragpool's idempotent-XADD script
 *     (docs/REDIS.md), so a retried job id makes no second entry.  The
 *     entry is written when the script returns.
 *
 * Failures come back as QueueError: `rejected` when the queue refused this
 * job (an invalid user id for this database, ...: retrying will not help)
 * or `unavailable` (the queue could not be reached or answered an error:
 * the job may exist; retry with the same job id).
 */
import postgres from "postgres";

export interface EnqueueResult {
  jobId: string;
  /** True when the job id was known already (Redis only: Postgres does not say). */
  existing: boolean;
}

export interface Queue {
  readonly backend: "postgres" | "redis";
  /** Enqueue one chat job; jobId null = a new random id. */
  enqueue(
    userId: string,
    message: string,
    options: Record<string, unknown> | null,
    jobId: string | null,
  ): Promise<EnqueueResult>;
  /** Close every connection (after the last enqueue). */
  close(): Promise<void>;
}

export class QueueError extends Error {
  constructor(readonly kind: "rejected" | "unavailable", message: string) {
    super(message);
  }
}

export interface PostgresQueueConfig {
  url: string;
  poolMax: number;
  /** Named prepared statements; false behind a transaction pooler. */
  prepare: boolean;
}

/** The Postgres queue (ragpool.enqueue_chat). */
export function postgresQueue(cfg: PostgresQueueConfig): Queue {
  const sql = postgres(cfg.url, {
    max: cfg.poolMax,
    prepare: cfg.prepare,
    fetch_types: false,
    idle_timeout: 60,
    connect_timeout: 5,
    onnotice: () => {},
    connection: { application_name: "ragpool-ai-enqueue" },
  });
  return {
    backend: "postgres",
    async enqueue(userId, message, options, jobId) {
      let rows;
      try {
        rows = await sql`select ragpool.enqueue_chat(${userId}::text, ${message}::text,
                                 ${JSON.stringify(options ?? {})}::text::jsonb,
                                 ${jobId}::uuid) as id`;
      } catch (e) {
        // SQLSTATE class 22 (data exception: a user id of the wrong form,
        // a message out of range) is this job's fault; anything else
        // (connection, not migrated, ...) is the queue's.
        const code = (e as { code?: unknown }).code;
        if (typeof code === "string" && code.startsWith("22")) {
          throw new QueueError("rejected", (e as Error).message);
        }
        throw new QueueError("unavailable", (e as Error).message);
      }
      return { jobId: String(rows[0].id), existing: false };
    },
    async close() {
      await sql.end({ timeout: 5 });
    },
  };
}

export interface RedisQueueConfig {
  url: string;
  stream: string;
  maxAttempts: number;
}

/** KEYS[1] = <stream>:idem:<job id>, KEYS[2] = <stream>; ARGV[1] = job, ARGV[2] = TTL (s). */
const IDEMPOTENT_XADD = `
local prev = redis.call('GET', KEYS[1])
if prev then return {1, prev} end
local id = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('SET', KEYS[1], id, 'EX', tonumber(ARGV[2]))
return {0, id}
`;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const INTEGER = /^-?[0-9]{1,19}$/;

/** The Redis queue (docs/REDIS.md).  The clients are imported only when used. */
export async function redisQueue(cfg: RedisQueueConfig): Promise<Queue> {
  const { Redis } = await import("ioredis");
  const { encode } = await import("@msgpack/msgpack");
  const { Buffer } = await import("node:buffer");
  const redis = new Redis(cfg.url, {
    enableAutoPipelining: true,
    maxRetriesPerRequest: 1,
    connectTimeout: 5000,
    lazyConnect: false,
  });
  // Errors reach the callers of enqueue; without a listener ioredis would
  // also print each reconnect failure as an unhandled error.
  redis.on("error", () => {});
  redis.defineCommand("ragpoolEnqueue", { numberOfKeys: 2, lua: IDEMPOTENT_XADD });
  const run = (redis as unknown as {
    ragpoolEnqueue(k1: string, k2: string, job: Uint8Array, ttl: string): Promise<[number, string]>;
  }).ragpoolEnqueue.bind(redis);
  return {
    backend: "redis",
    async enqueue(userId, message, options, jobId) {
      // The worker would dead-letter these; refuse them here instead.
      if (!UUID.test(userId) && !INTEGER.test(userId)) {
        throw new QueueError("rejected", "payload.user_id: must be a uuid or an integer");
      }
      const id = (jobId ?? crypto.randomUUID()).toLowerCase();
      const job = encode({
        id,
        kind: "chat",
        payload: { user_id: userId, message, options: options ?? {} },
        max_attempts: cfg.maxAttempts,
        attempt: 0,
        enqueued_at_ms: Date.now(),
      });
      const entry = Buffer.from(job.buffer, job.byteOffset, job.byteLength);
      try {
        if (jobId === null) {
          // An id generated here cannot be repeated by anyone: no
          // idempotency key is kept for it (docs/REDIS.md).
          await redis.xadd(cfg.stream, "*", "job", entry);
          return { jobId: id, existing: false };
        }
        const reply = await run(`${cfg.stream}:idem:${id}`, cfg.stream, entry, "86400");
        return { jobId: id, existing: Number(reply[0]) === 1 };
      } catch (e) {
        throw new QueueError("unavailable", (e as Error).message);
      }
    },
    async close() {
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}
