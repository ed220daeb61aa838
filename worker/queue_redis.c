/*
 * queue_redis.c: the Redis Streams queue backend (docs/REDIS.md).
 *
 * Jobs are entries of a stream (RAGPOOL_REDIS_STREAM) read by one consumer
 * group; each worker is a consumer named by RAGPOOL_WORKER_ID.  Answers and
 * dead letters' error rows still go to Postgres, so a job's end is:
 *
 *   done:   ragpool.record_results (INSERT ... ON CONFLICT (job_id) DO
 *           NOTHING) commits the row, then XACK + XDEL.  A duplicate
 *           delivery meets the conflict and is acknowledged all the same.
 *   retry:  one Lua script, only while the entry is still pending under this
 *           consumer (the lease): ZADD <stream>:delayed due envelope, XACK,
 *           XDEL.  A mover (any worker, every few hundred ms, one script)
 *           puts due entries back into the stream, so a retry survives a
 *           worker crash.
 *   dead:   the error row in Postgres first, then one script: XADD
 *           <stream>:dead (job, reason, error, failed_at_ms, attempts),
 *           XACK, XDEL.  Entries dead-lettered at claim time (malformed,
 *           or delivered more than max_attempts times) get the error row
 *           too whenever the job id and the payload's user id can be read;
 *           if that row cannot be written (Postgres down) the entry stays
 *           pending and comes back after the lease.
 *   release (drain): one script re-adds the entry with the attempt
 *           un-counted, XACK, XDEL.
 *
 * Claims: XREADGROUP ... BLOCK on a connection of its own (the worker keeps
 * one claim in flight: claims_block).  Entries idle longer than the lease
 * under a dead consumer are taken back with XAUTOCLAIM (checked every half
 * lease); their delivery count, from XPENDING, counts the attempts a crash
 * consumed, so a payload that kills workers is dead-lettered after
 * max_attempts.  While no Postgres connection is up nothing is claimed:
 * answers could not be recorded, and claiming would only spend attempts
 * (entries a blocked read returns meanwhile are given back unchanged).
 * The payload travels as msgpack and is handed to the pool as
 * JSON, the form every job kind reads.  The lease token given to the pool is
 * "<entry id>/<enqueued_at_ms>".
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "buf.h"
#include "job.h"
#include "log.h"
#include "queue.h"
#include "redis.h"

#define MOVER_INTERVAL_MS 250
#define MOVER_BATCH "256"

static const char MOVER_LUA[] =
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, "
    "tonumber(ARGV[2]))\n"
    "for _, v in ipairs(due) do\n"
    "  redis.call('XADD', KEYS[2], '*', 'job', v)\n"
    "  redis.call('ZREM', KEYS[1], v)\n"
    "end\n"
    "return #due\n";

/* KEYS: stream; ARGV: group, consumer, entry id.  The entry must still be
 * pending under this consumer (the lease). */
#define OWNED_LUA                                                                            \
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"              \
    "if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end\n"

/* KEYS: stream, delayed; ARGV: group, consumer, id, due_ms, envelope */
static const char RETRY_LUA[] = OWNED_LUA
    "redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "redis.call('XDEL', KEYS[1], ARGV[3])\n"
    "return 1\n";

/* KEYS: stream, dead; ARGV: group, consumer, id, envelope, reason, error, failed_at_ms,
 * attempts */
static const char DEAD_LUA[] = OWNED_LUA
    "redis.call('XADD', KEYS[2], '*', 'job', ARGV[4], 'reason', ARGV[5], 'error', ARGV[6], "
    "'failed_at_ms', ARGV[7], 'attempts', ARGV[8])\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "redis.call('XDEL', KEYS[1], ARGV[3])\n"
    "return 1\n";

/* KEYS: stream; ARGV: group, consumer, id, envelope */
static const char RELEASE_LUA[] = OWNED_LUA
    "redis.call('XADD', KEYS[1], '*', 'job', ARGV[4])\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])\n"
    "redis.call('XDEL', KEYS[1], ARGV[3])\n"
    "return 1\n";

typedef struct redis_queue {
    rp_queue_t base;
    uv_loop_t *loop;
    const rp_worker_cfg_t *cfg;
    rp_pg_t *const *db; /* borrowed */
    size_t ndb;
    rp_redis_t *cmd; /* everything but the blocking read */
    rp_redis_t *blk; /* XREADGROUP ... BLOCK */
    char *delayed, *dead;
    uv_timer_t mover_timer, autoclaim_timer;
    int autoclaim_due;
    int group_ready;
    int mover_inflight;
    int closing;
    int handles;
    void (*close_cb)(void *data);
    void *close_data;
} redis_queue_t;

static uint64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static rp_pg_t *db_pick(redis_queue_t *q)
{
    return rp_pg_pick(q->db, q->ndb);
}

/* Whether any Postgres connection is up (answers can be recorded). */
static int db_any_up(redis_queue_t *q)
{
    for (size_t i = 0; i < q->ndb; i++)
        if (rp_pg_is_up(q->db[i]))
            return 1;
    return 0;
}

/* Send a command given as NUL-terminated strings. */
static int cmdv(rp_redis_t *r, long timeout_ms, rp_redis_cb cb, void *data, int argc,
                const char *const *argv)
{
    size_t lens[32];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return rp_redis_command(r, argc, argv, lens, timeout_ms, cb, data);
}

/* Split a lease token "<entry id>/<enqueued_at_ms>". */
static void lease_split(const char *lease, char *entry, size_t n, int64_t *enq_ms)
{
    const char *slash = strchr(lease, '/');
    size_t len = slash ? (size_t)(slash - lease) : strlen(lease);
    if (len >= n)
        len = n - 1;
    memcpy(entry, lease, len);
    entry[len] = '\0';
    *enq_ms = slash ? strtoll(slash + 1, NULL, 10) : 0;
}

/* ------------------------------------------------------------------ */
/* Group creation and the delayed-retry mover                          */
/* ------------------------------------------------------------------ */

static void group_created(void *data, int err, const rp_redis_reply_t *rep)
{
    redis_queue_t *q = data;
    if (err != 0)
        return; /* on_connect tries again after the reconnect */
    if (rp_redis_reply_type(rep) == RP_REDIS_ERROR) {
        const char *msg = rp_redis_reply_str(rep, NULL);
        if (msg == NULL || strncmp(msg, "BUSYGROUP", 9) != 0) {
            rp_log_error("queue.redis_group", NULL, "cannot create consumer group %s: %s",
                         q->cfg->redis_group, msg ? msg : "?");
            return;
        }
    }
    if (!q->group_ready) {
        q->group_ready = 1;
        rp_log_info("queue.redis_ready", NULL, "stream %s, group %s, consumer %s",
                    q->cfg->redis_stream, q->cfg->redis_group, q->cfg->worker_id);
    }
    if (q->base.on_wake != NULL)
        q->base.on_wake(q->base.wake_data);
}

static void on_cmd_connect(void *data)
{
    redis_queue_t *q = data;
    /* "0": a new group starts at the beginning, so nothing enqueued before
     * the first worker started is skipped. */
    const char *argv[] = {"XGROUP", "CREATE", q->cfg->redis_stream, q->cfg->redis_group, "0",
                          "MKSTREAM"};
    cmdv(q->cmd, 0, group_created, q, 6, argv);
}

static void on_disconnect(void *data, const char *why)
{
    rp_log_warn("queue.redis_disconnected", NULL, "%s", why);
}

static void mover_done(void *data, int err, const rp_redis_reply_t *rep)
{
    redis_queue_t *q = data;
    q->mover_inflight = 0;
    if (err == 0 && rp_redis_reply_type(rep) == RP_REDIS_ERROR)
        rp_log_error("queue.redis_mover", NULL, "%s", rp_redis_reply_str(rep, NULL));
}

static void mover_cb(uv_timer_t *t)
{
    redis_queue_t *q = t->data;
    if (q->mover_inflight || !rp_redis_is_up(q->cmd))
        return;
    char now[32];
    snprintf(now, sizeof(now), "%" PRIu64, now_ms());
    const char *argv[] = {"EVAL", MOVER_LUA, "2", q->delayed, q->cfg->redis_stream, now,
                          MOVER_BATCH};
    if (cmdv(q->cmd, 0, mover_done, q, 7, argv) == 0)
        q->mover_inflight = 1;
}

static void autoclaim_cb(uv_timer_t *t)
{
    redis_queue_t *q = t->data;
    q->autoclaim_due = 1;
}

static int redis_start(rp_queue_t *base)
{
    redis_queue_t *q = (redis_queue_t *)base;
    uint64_t every = (uint64_t)q->cfg->lease_ms / 2;
    if (every < 500)
        every = 500;
    uv_timer_start(&q->mover_timer, mover_cb, MOVER_INTERVAL_MS, MOVER_INTERVAL_MS);
    uv_timer_start(&q->autoclaim_timer, autoclaim_cb, every, every);
    q->autoclaim_due = 1; /* take over what a crashed predecessor left */
    int rc = rp_redis_start(q->cmd);
    if (rc == 0)
        rc = rp_redis_start(q->blk);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Claiming                                                             */
/* ------------------------------------------------------------------ */

typedef struct claim_op {
    redis_queue_t *q;
    rp_queue_claim_cb cb;
    void *data;
    size_t n;             /* entries taken (reclaim path) */
    size_t answered;      /* XPENDING answers received */
    rp_claimed_t *jobs;
    char **bufs;          /* owned strings behind jobs */
    size_t nbufs;
    int *deliveries;
    char (*ids)[48];
    size_t *sent;         /* reclaim path: indexes whose XPENDING was sent, in order */
    size_t nsent, nrecv;
    char **raw;           /* reclaim path: the entries' job fields, copied */
    size_t *raw_len;
} claim_op_t;

static void claim_op_free(claim_op_t *co)
{
    for (size_t i = 0; i < co->nbufs; i++)
        free(co->bufs[i]);
    for (size_t i = 0; co->raw != NULL && i < co->n; i++)
        free(co->raw[i]);
    free(co->raw);
    free(co->raw_len);
    free(co->bufs);
    free(co->jobs);
    free(co->deliveries);
    free(co->ids);
    free(co->sent);
    free(co);
}

static char *keep(claim_op_t *co, char *s)
{
    if (s != NULL)
        co->bufs[co->nbufs++] = s;
    return s;
}

static void dead_letter_now(redis_queue_t *q, const char *entry_id, const char *job_id,
                            const char *job, size_t job_len, int attempts, int64_t enqueued_at_ms,
                            const char *reason, const char *error);

/* Turn one stream entry (id + its "job" field) into a claimed job, or
 * dead-letter it at once when it cannot be run.  Returns 1 when added. */
static int take_entry(claim_op_t *co, const char *entry_id, const char *job, size_t job_len,
                      int deliveries)
{
    redis_queue_t *q = co->q;
    rp_job_envelope_t env;
    rp_err_t err;
    char reason_msg[300];
    if (job == NULL) {
        dead_letter_now(q, entry_id, "", "", 0, deliveries, 0, "invalid_payload",
                        "invalid_payload: the entry has no 'job' field");
        return 0;
    }
    if (rp_job_envelope_decode_msgpack(job, job_len, &env, &err) != 0) {
        snprintf(reason_msg, sizeof(reason_msg), "invalid_payload: %s", err.msg);
        /* env.id is the job id when that much was valid ("" otherwise). */
        dead_letter_now(q, entry_id, env.id, job, job_len, env.attempt + deliveries,
                        env.enqueued_at_ms, "invalid_payload", reason_msg);
        rp_job_envelope_free(&env);
        return 0;
    }
    int attempt = env.attempt + deliveries;
    int noop = strcmp(env.kind, "noop") == 0;
    char *json = noop ? strdup("{}") : rp_chat_payload_encode_json(&env.payload);
    char *lease = malloc(80);
    char *id = strdup(env.id);
    char *kind = strdup(env.kind);
    int64_t enq = env.enqueued_at_ms;
    int max_attempts = env.max_attempts;
    rp_job_envelope_free(&env);
    if (json == NULL || lease == NULL || id == NULL || kind == NULL) {
        free(json);
        free(lease);
        free(id);
        free(kind);
        return 0; /* out of memory: the entry comes back after the lease */
    }
    snprintf(lease, 80, "%s/%" PRId64, entry_id, enq);
    keep(co, json);
    keep(co, lease);
    keep(co, id);
    keep(co, kind);
    if (attempt > max_attempts) {
        /* Delivered more often than allowed: workers died holding it. */
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "lease expired on attempt %d of %d: the job was taken back from a worker "
                 "that stopped answering",
                 attempt - 1, max_attempts);
        dead_letter_now(q, entry_id, id, job, job_len, attempt - 1, enq, "lease_expired", msg);
        return 0;
    }
    rp_claimed_t *c = &co->jobs[co->answered++];
    c->id = id;
    c->lease = lease;
    c->kind = kind;
    c->payload = json;
    c->payload_len = strlen(json);
    c->format = RP_PAYLOAD_JSON;
    c->attempts = attempt;
    c->max_attempts = max_attempts;
    uint64_t now = now_ms();
    c->queued_ms = enq > 0 && (uint64_t)enq < now ? (double)(now - (uint64_t)enq) : 0;
    return 1;
}

/* The "job" field of an entry [id, [field, value, ...]]. */
static const char *entry_job(const rp_redis_reply_t *entry, size_t *len, const char **id)
{
    const rp_redis_reply_t *rid = rp_redis_reply_at(entry, 0);
    const rp_redis_reply_t *fields = rp_redis_reply_at(entry, 1);
    *id = rid != NULL ? rp_redis_reply_str(rid, NULL) : NULL;
    for (size_t f = 0; f + 1 < rp_redis_reply_len(fields); f += 2) {
        const char *name = rp_redis_reply_str(rp_redis_reply_at(fields, f), NULL);
        if (name != NULL && strcmp(name, "job") == 0)
            return rp_redis_reply_str(rp_redis_reply_at(fields, f + 1), len);
    }
    *len = 0;
    return NULL;
}

static claim_op_t *claim_op_new(redis_queue_t *q, size_t n, rp_queue_claim_cb cb, void *data)
{
    claim_op_t *co = calloc(1, sizeof(*co));
    if (co == NULL)
        return NULL;
    co->q = q;
    co->cb = cb;
    co->data = data;
    co->jobs = calloc(n ? n : 1, sizeof(rp_claimed_t));
    co->bufs = calloc(4 * (n ? n : 1), sizeof(char *));
    if (co->jobs == NULL || co->bufs == NULL) {
        claim_op_free(co);
        return NULL;
    }
    return co;
}

static void given_back(void *data, int err, const rp_redis_reply_t *rep)
{
    (void)data;
    if (err != 0 || rp_redis_reply_type(rep) == RP_REDIS_ERROR)
        rp_log_warn("queue.redis_give_back_failed", NULL,
                    "an entry could not be returned: it comes back after the lease");
}

/* Return a just-delivered entry to the stream as it was (RELEASE_LUA with
 * its own bytes); without a job field it stays pending (dead-lettered when
 * it comes back). */
static void give_back_entry(redis_queue_t *q, const char *entry_id, const char *job, size_t len)
{
    if (job == NULL)
        return;
    const char *argv[] = {"EVAL",          RELEASE_LUA,       "1",      q->cfg->redis_stream,
                          q->cfg->redis_group, q->cfg->worker_id, entry_id, job};
    size_t lens[8];
    for (int k = 0; k < 7; k++)
        lens[k] = strlen(argv[k]);
    lens[7] = len;
    rp_redis_command(q->cmd, 8, argv, lens, 0, given_back, NULL);
}

static void read_done(void *data, int err, const rp_redis_reply_t *rep)
{
    claim_op_t *co = data;
    if (err == 0 && rp_redis_reply_type(rep) == RP_REDIS_ERROR) {
        const char *msg = rp_redis_reply_str(rep, NULL);
        rp_log_error("claim.failed", NULL, "XREADGROUP: %s", msg ? msg : "?");
        if (msg != NULL && strncmp(msg, "NOGROUP", 7) == 0) {
            co->q->group_ready = 0;
            on_cmd_connect(co->q);
        }
        err = RP_EPROTO;
    }
    if (err != 0) {
        co->cb(co->data, err, NULL, 0);
        claim_op_free(co);
        return;
    }
    /* Reply: nil (timeout) or [[stream, [entries...]]]. */
    const rp_redis_reply_t *streams = rep;
    const rp_redis_reply_t *entries = rp_redis_reply_at(rp_redis_reply_at(streams, 0), 1);
    size_t n = rp_redis_reply_len(entries);
    /* Postgres went down while the read was blocked: hand the entries
     * straight back (a first delivery: the bytes re-added unchanged carry
     * the same attempt), rather than spend their attempts. */
    int give_back = !db_any_up(co->q);
    if (give_back && n > 0)
        rp_log_warn("queue.redis_given_back", NULL,
                    "Postgres is unreachable: %zu entries returned to the stream", n);
    for (size_t i = 0; i < n; i++) {
        const char *id;
        size_t len;
        const char *job = entry_job(rp_redis_reply_at(entries, i), &len, &id);
        if (id != NULL && give_back)
            give_back_entry(co->q, id, job, len);
        else if (id != NULL)
            take_entry(co, id, job, len, 1);
    }
    co->cb(co->data, 0, co->jobs, co->answered);
    claim_op_free(co);
}

/* Reclaim path: XAUTOCLAIM took entries; XPENDING says how often each was
 * delivered (including this time). */
static void reclaim_finish(claim_op_t *co)
{
    for (size_t k = 0; k < co->n; k++)
        take_entry(co, co->ids[k], co->raw[k], co->raw_len[k], co->deliveries[k]);
    co->cb(co->data, 0, co->jobs, co->answered);
    claim_op_free(co);
}

static void pending_done(void *data, int err, const rp_redis_reply_t *rep)
{
    claim_op_t *co = data;
    size_t i = co->sent[co->nrecv++]; /* Redis answers in order */
    if (err == 0 && rp_redis_reply_len(rep) > 0) {
        const rp_redis_reply_t *row = rp_redis_reply_at(rep, 0);
        int d = (int)rp_redis_reply_int(rp_redis_reply_at(row, 3));
        co->deliveries[i] = d < 1 ? 1 : d;
    }
    if (co->nrecv == co->nsent)
        reclaim_finish(co);
}

static void autoclaim_done(void *data, int err, const rp_redis_reply_t *rep)
{
    claim_op_t *co = data;
    redis_queue_t *q = co->q;
    if (err != 0 || rp_redis_reply_type(rep) != RP_REDIS_ARRAY) {
        if (err == 0)
            rp_log_error("claim.failed", NULL, "XAUTOCLAIM: %s",
                         rp_redis_reply_str(rep, NULL) ? rp_redis_reply_str(rep, NULL) : "?");
        co->cb(co->data, err ? err : RP_EPROTO, NULL, 0);
        claim_op_free(co);
        return;
    }
    /* [next cursor, [entries], [deleted ids]] */
    const rp_redis_reply_t *entries = rp_redis_reply_at(rep, 1);
    size_t n = rp_redis_reply_len(entries);
    const char *cursor = rp_redis_reply_str(rp_redis_reply_at(rep, 0), NULL);
    /* Scan on next time when there are more; a full lap ends at "0-0". */
    q->autoclaim_due = cursor != NULL && strcmp(cursor, "0-0") != 0;
    co->n = 0;
    co->deliveries = calloc(n ? n : 1, sizeof(int));
    co->ids = calloc(n ? n : 1, sizeof(*co->ids));
    co->raw = calloc(n ? n : 1, sizeof(char *));
    co->raw_len = calloc(n ? n : 1, sizeof(size_t));
    co->sent = calloc(n ? n : 1, sizeof(size_t));
    if (co->deliveries == NULL || co->ids == NULL || co->raw == NULL || co->raw_len == NULL ||
        co->sent == NULL) {
        co->cb(co->data, RP_ENOMEM, NULL, 0);
        claim_op_free(co);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *id;
        size_t len;
        const char *job = entry_job(rp_redis_reply_at(entries, i), &len, &id);
        if (id == NULL)
            continue; /* deleted meanwhile (Redis 7 reports these apart) */
        snprintf(co->ids[co->n], sizeof(co->ids[co->n]), "%s", id);
        co->raw[co->n] = job != NULL ? malloc(len + 1) : NULL;
        if (co->raw[co->n] != NULL) {
            memcpy(co->raw[co->n], job, len);
            co->raw[co->n][len] = '\0';
        }
        co->raw_len[co->n] = job != NULL ? len : 0;
        co->n++;
    }
    if (co->n == 0) {
        co->cb(co->data, 0, co->jobs, 0);
        claim_op_free(co);
        return;
    }
    rp_log_warn("queue.reclaimed", NULL, "took back %zu entries idle longer than the lease",
                co->n);
    for (size_t i = 0; i < co->n; i++) {
        /* Counted as one delivery unless XPENDING says more. */
        co->deliveries[i] = 1;
        const char *argv[] = {"XPENDING", q->cfg->redis_stream, q->cfg->redis_group,
                              co->ids[i], co->ids[i], "1"};
        if (cmdv(q->cmd, 0, pending_done, co, 6, argv) == 0)
            co->sent[co->nsent++] = i;
    }
    if (co->nsent == 0)
        reclaim_finish(co);
}

static int redis_claim(rp_queue_t *base, size_t n, rp_queue_claim_cb cb, void *data)
{
    redis_queue_t *q = (redis_queue_t *)base;
    if (!q->group_ready)
        return RP_EIO; /* the wake after XGROUP CREATE claims again */
    /* Postgres down: nothing could be recorded (rows, error rows), so a
     * claim would only spend attempts; the reconnect's wake claims again. */
    if (!db_any_up(q))
        return RP_EIO;
    claim_op_t *co = claim_op_new(q, n, cb, data);
    if (co == NULL)
        return RP_ENOMEM;
    char count[32], idle[32];
    snprintf(count, sizeof(count), "%zu", n);
    if (q->autoclaim_due) {
        q->autoclaim_due = 0;
        snprintf(idle, sizeof(idle), "%ld", q->cfg->lease_ms);
        const char *argv[] = {"XAUTOCLAIM", q->cfg->redis_stream, q->cfg->redis_group,
                              q->cfg->worker_id, idle, "0-0", "COUNT", count};
        int rc = cmdv(q->cmd, 0, autoclaim_done, co, 8, argv);
        if (rc != 0)
            claim_op_free(co);
        return rc;
    }
    char block[32];
    snprintf(block, sizeof(block), "%ld", q->cfg->redis_block_ms);
    const char *argv[] = {"XREADGROUP", "GROUP",   q->cfg->redis_group, q->cfg->worker_id,
                          "COUNT",      count,     "BLOCK",             block,
                          "STREAMS",    q->cfg->redis_stream, ">"};
    /* The command's deadline must outlast the server-side block. */
    int rc = cmdv(q->blk, q->cfg->redis_block_ms + 5000, read_done, co, 11, argv);
    if (rc != 0)
        claim_op_free(co);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Finishing                                                            */
/* ------------------------------------------------------------------ */

typedef struct fin_op {
    redis_queue_t *q;
    rp_queue_finish_cb cb;
    void *data;
    size_t n;
    int pending;
    int err;
    rp_outcome_t *outcomes;
    char (*entries)[48];
    /* dead path */
    char *envelope;
    size_t envelope_len;
    char reason[32];
    char *error;
    int attempts;
} fin_op_t;

static void fin_free(fin_op_t *op)
{
    free(op->outcomes);
    free(op->entries);
    free(op->envelope);
    free(op->error);
    free(op);
}

static fin_op_t *fin_new(redis_queue_t *q, const rp_finish_t *jobs, size_t n,
                         rp_queue_finish_cb cb, void *data)
{
    fin_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return NULL;
    op->q = q;
    op->cb = cb;
    op->data = data;
    op->n = n;
    op->outcomes = calloc(n, sizeof(rp_outcome_t));
    op->entries = calloc(n, sizeof(*op->entries));
    if (op->outcomes == NULL || op->entries == NULL) {
        fin_free(op);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t enq;
        lease_split(jobs[i].lease, op->entries[i], sizeof(op->entries[i]), &enq);
        op->outcomes[i] = RP_OUTCOME_FAILED;
    }
    return op;
}

static void fin_answered(fin_op_t *op)
{
    if (--op->pending > 0)
        return;
    op->cb(op->data, op->err, op->outcomes, op->n);
    fin_free(op);
}

/* Re-encode a job's envelope from what the pool kept: its JSON payload. */
static char *envelope_of(const rp_finish_t *f, int attempt, size_t *len)
{
    rp_job_envelope_t env;
    memset(&env, 0, sizeof(env));
    rp_err_t err;
    int noop = f->kind_name != NULL && strcmp(f->kind_name, "noop") == 0;
    if (!noop && (f->payload == NULL || rp_chat_payload_decode_json(f->payload, f->payload_len,
                                                                    &env.payload, &err) != 0))
        return NULL;
    snprintf(env.id, sizeof(env.id), "%s", f->id);
    snprintf(env.kind, sizeof(env.kind), "%s", f->kind_name ? f->kind_name : "chat");
    env.max_attempts = f->max_attempts;
    env.attempt = attempt < 0 ? 0 : attempt;
    char entry[48];
    lease_split(f->lease, entry, sizeof(entry), &env.enqueued_at_ms);
    char *out = rp_job_envelope_encode_msgpack(&env, len);
    rp_chat_payload_free(&env.payload);
    return out;
}

static void acked(void *data, int err, const rp_redis_reply_t *rep)
{
    fin_op_t *op = data;
    if (err != 0)
        /* The rows are committed; the entries come back after the lease and
         * meet ON CONFLICT, then are acknowledged. */
        rp_log_warn("queue.redis_ack_failed", NULL, "%s", rp_strerror(err));
    fin_answered(op);
}

/* XACK then XDEL of every entry of op (XDEL keeps the stream small). */
static void send_acks(fin_op_t *op)
{
    redis_queue_t *q = op->q;
    size_t n = op->n;
    const char **argv = calloc(n + 3, sizeof(char *));
    size_t *lens = calloc(n + 3, sizeof(size_t));
    if (argv == NULL || lens == NULL) {
        free(argv);
        free(lens);
        return; /* the entries come back after the lease and meet ON CONFLICT */
    }
    argv[0] = "XACK";
    argv[1] = q->cfg->redis_stream;
    argv[2] = q->cfg->redis_group;
    for (size_t i = 0; i < n; i++)
        argv[3 + i] = op->entries[i];
    for (size_t i = 0; i < n + 3; i++)
        lens[i] = strlen(argv[i]);
    if (rp_redis_command(q->cmd, (int)(n + 3), argv, lens, 0, acked, op) == 0)
        op->pending++;
    /* XDEL <stream> <ids...>: the same array from its second slot on. */
    argv[1] = "XDEL";
    argv[2] = q->cfg->redis_stream;
    lens[1] = 4;
    lens[2] = strlen(argv[2]);
    if (rp_redis_command(q->cmd, (int)(n + 2), argv + 1, lens + 1, 0, acked, op) == 0)
        op->pending++;
    free(argv);
    free(lens);
}

static void recorded(void *data, const rp_pg_res_t *res)
{
    fin_op_t *op = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        rp_log_error("commit.failed", NULL, "recording %zu answers failed: %s %s", op->n,
                     rp_strerror(err), rp_pg_res_message(res));
        op->err = err;
        fin_answered(op);
        return;
    }
    for (size_t i = 0; i < op->n; i++)
        op->outcomes[i] = RP_OUTCOME_DONE;
    send_acks(op);   /* each command sent holds op until answered */
    fin_answered(op); /* the hold taken when the statement was sent */
}

static void script_done(void *data, int err, const rp_redis_reply_t *rep)
{
    fin_op_t *op = data;
    int owned = err == 0 && rp_redis_reply_type(rep) == RP_REDIS_INTEGER &&
                rp_redis_reply_int(rep) == 1;
    if (err == 0 && rp_redis_reply_type(rep) == RP_REDIS_ERROR) {
        rp_log_error("queue.redis_script", NULL, "%s", rp_redis_reply_str(rep, NULL));
        err = RP_EPROTO;
    }
    op->err = err;
    op->outcomes[0] = err != 0 ? RP_OUTCOME_FAILED : !owned ? RP_OUTCOME_LOST : op->outcomes[0];
    fin_answered(op);
}

static int run_dead_script(fin_op_t *op, const char *entry)
{
    redis_queue_t *q = op->q;
    char failed_at[32], attempts[16];
    snprintf(failed_at, sizeof(failed_at), "%" PRIu64, now_ms());
    snprintf(attempts, sizeof(attempts), "%d", op->attempts);
    const char *argv[] = {"EVAL",
                          DEAD_LUA,
                          "2",
                          q->cfg->redis_stream,
                          q->dead,
                          q->cfg->redis_group,
                          q->cfg->worker_id,
                          entry,
                          op->envelope != NULL ? op->envelope : "",
                          op->reason,
                          op->error != NULL ? op->error : "",
                          failed_at,
                          attempts};
    size_t lens[13];
    for (int i = 0; i < 13; i++)
        lens[i] = strlen(argv[i]);
    lens[8] = op->envelope != NULL ? op->envelope_len : 0;
    op->outcomes[0] = RP_OUTCOME_DEAD;
    return rp_redis_command(q->cmd, 13, argv, lens, 0, script_done, op);
}

static void error_row_done(void *data, const rp_pg_res_t *res)
{
    fin_op_t *op = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        rp_log_error("job.fail_unrecorded", NULL, "error row: %s %s", rp_strerror(err),
                     rp_pg_res_message(res));
        op->err = err;
        fin_answered(op);
        return;
    }
    if (run_dead_script(op, op->entries[0]) != 0) {
        op->err = RP_EIO;
        fin_answered(op);
    }
}

static void append_str(rp_buf_t *b, const char *key, const char *v)
{
    rp_buf_printf(b, ",\"%s\":\"", key);
    rp_buf_json_escape(b, v, strlen(v));
    rp_buf_putc(b, '"');
}

static int redis_finish(rp_queue_t *base, const rp_finish_t *jobs, size_t n,
                        rp_queue_finish_cb cb, void *data)
{
    redis_queue_t *q = (redis_queue_t *)base;
    if (n == 0 || (jobs[0].kind != RP_FINISH_DONE && n != 1))
        return RP_EINVAL;
    fin_op_t *op = fin_new(q, jobs, n, cb, data);
    if (op == NULL)
        return RP_ENOMEM;

    if (jobs[0].kind == RP_FINISH_DONE) {
        rp_buf_t b = RP_BUF_INIT;
        size_t rows = 0;
        for (size_t i = 0; i < n; i++) {
            const char *row = jobs[i].row_json;
            size_t len = row != NULL ? strlen(row) : 0;
            if (len < 2 || row[len - 1] != '}')
                continue;
            int64_t enq;
            char entry[48];
            lease_split(jobs[i].lease, entry, sizeof(entry), &enq);
            rp_buf_puts(&b, rows++ ? "," : "[");
            rp_buf_append(&b, row, len - 1);
            rp_buf_printf(&b, ",\"attempts\":%d,\"enqueued_at_ms\":%" PRId64 "}",
                          jobs[i].attempts, enq);
        }
        op->pending = 1;
        if (rows == 0) {
            rp_buf_free(&b);
            for (size_t i = 0; i < n; i++)
                op->outcomes[i] = RP_OUTCOME_DONE;
            send_acks(op);
            fin_answered(op);
            return 0;
        }
        rp_buf_putc(&b, ']');
        int rc = RP_ENOMEM;
        if (!rp_buf_failed(&b)) {
            const char *params[1] = {b.data};
            rc = rp_pg_query(db_pick(q),
                             "SELECT job_id, outcome FROM ragpool.record_results($1::jsonb)", 1,
                             params, 0, recorded, op);
        }
        rp_buf_free(&b);
        if (rc != 0)
            fin_free(op);
        return rc;
    }

    const rp_finish_t *f = &jobs[0];
    int retry = f->kind == RP_FINISH_RETRY && f->attempts < f->max_attempts;
    op->pending = 1;
    if (retry) {
        size_t len = 0;
        char *env = envelope_of(f, f->attempts, &len);
        if (env == NULL) {
            fin_free(op);
            return RP_ENOMEM;
        }
        char due[32];
        snprintf(due, sizeof(due), "%" PRIu64, now_ms() + (uint64_t)f->delay_ms);
        const char *argv[] = {"EVAL",
                              RETRY_LUA,
                              "2",
                              q->cfg->redis_stream,
                              q->delayed,
                              q->cfg->redis_group,
                              q->cfg->worker_id,
                              op->entries[0],
                              due,
                              env};
        size_t lens[10];
        for (int i = 0; i < 9; i++)
            lens[i] = strlen(argv[i]);
        lens[9] = len;
        op->outcomes[0] = RP_OUTCOME_RETRY;
        int rc = rp_redis_command(q->cmd, 10, argv, lens, 0, script_done, op);
        free(env);
        if (rc != 0)
            fin_free(op);
        return rc;
    }

    /* Dead: the error row first (when the payload names a user), then the
     * dead letter and the acknowledgement in one script. */
    snprintf(op->reason, sizeof(op->reason), "%s",
             f->kind == RP_FINISH_INVALID ||
                     (f->error != NULL && strncmp(f->error, "invalid_payload", 15) == 0)
                 ? "invalid_payload"
             : f->kind == RP_FINISH_PERMANENT ? "permanent"
                                              : "max_attempts");
    op->error = strdup(f->error != NULL ? f->error : "");
    op->attempts = f->attempts;
    op->envelope = envelope_of(f, f->attempts, &op->envelope_len);
    rp_chat_payload_t p;
    rp_err_t perr;
    int have_user = f->payload != NULL &&
                    rp_chat_payload_decode_json(f->payload, f->payload_len, &p, &perr) == 0;
    if (!have_user) {
        int rc = run_dead_script(op, op->entries[0]);
        if (rc != 0)
            fin_free(op);
        return rc;
    }
    int64_t enq;
    char entry[48];
    lease_split(f->lease, entry, sizeof(entry), &enq);
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_puts(&b, "[{\"job_id\":\"");
    rp_buf_json_escape(&b, f->id, strlen(f->id));
    rp_buf_putc(&b, '"');
    append_str(&b, "user_id", p.user_id);
    append_str(&b, "message", p.message);
    append_str(&b, "response", RP_SAFE_ERROR_MESSAGE);
    append_str(&b, "error", op->error);
    rp_buf_printf(&b, ",\"status\":\"error\",\"attempts\":%d,\"enqueued_at_ms\":%" PRId64 "}]",
                  f->attempts, enq);
    rp_chat_payload_free(&p);
    int rc = RP_ENOMEM;
    if (!rp_buf_failed(&b)) {
        const char *params[1] = {b.data};
        rc = rp_pg_query(db_pick(q), "SELECT job_id, outcome FROM ragpool.record_results($1::jsonb)",
                         1, params, 0, error_row_done, op);
    }
    rp_buf_free(&b);
    if (rc != 0)
        fin_free(op);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Dead letters found at claim time                                     */
/* ------------------------------------------------------------------ */

/* A malformed entry's error row needs the payload's user id and message,
 * which the codec does not hand out for a refused job.  This reader digs
 * them out of the raw bytes with the codec's care: every length is checked
 * against the bytes present before anything is read or skipped, nothing
 * is allocated while walking, and nesting is bounded. */
typedef struct mp_rd {
    const unsigned char *p, *end;
} mp_rd_t;

enum { MPK_MAP, MPK_ARRAY, MPK_STR, MPK_INT, MPK_OTHER };

static int mp_rd_take(mp_rd_t *c, uint64_t k, const unsigned char **out)
{
    if ((uint64_t)(c->end - c->p) < k)
        return -1;
    *out = c->p;
    c->p += k;
    return 0;
}

static uint64_t mp_rd_be(const unsigned char *b, int k)
{
    uint64_t v = 0;
    for (int i = 0; i < k; i++)
        v = v << 8 | b[i];
    return v;
}

/* One value's head: a map or array's count (its children follow), a
 * string's bytes (*s, *n), an integer (*iv); other scalars, bin and ext
 * are consumed whole (MPK_OTHER).  Returns the kind, or -1. */
static int mp_rd_head(mp_rd_t *c, uint64_t *n, int64_t *iv, const unsigned char **s)
{
    const unsigned char *b;
    if (mp_rd_take(c, 1, &b) != 0)
        return -1;
    unsigned t = b[0];
    int w = 0, kind;
    if (t <= 0x7f || t >= 0xe0) {
        *iv = t <= 0x7f ? (int64_t)t : (int64_t)(int8_t)t;
        return MPK_INT;
    }
    if ((t & 0xf0) == 0x80 || (t & 0xf0) == 0x90) {
        *n = t & 0x0f;
        return (t & 0xf0) == 0x80 ? MPK_MAP : MPK_ARRAY;
    }
    if ((t & 0xe0) == 0xa0) {
        *n = t & 0x1f;
        return mp_rd_take(c, *n, s) == 0 ? MPK_STR : -1;
    }
    switch (t) {
    case 0xc0: case 0xc2: case 0xc3:
        return MPK_OTHER;
    case 0xca: case 0xcb: /* float 32, 64 */
        return mp_rd_take(c, t == 0xca ? 4 : 8, &b) == 0 ? MPK_OTHER : -1;
    case 0xcc: case 0xcd: case 0xce: case 0xcf: /* uint 8..64 */
        w = 1 << (t - 0xcc);
        if (mp_rd_take(c, (uint64_t)w, &b) != 0)
            return -1;
        *n = mp_rd_be(b, w);
        if (*n > INT64_MAX)
            return MPK_OTHER;
        *iv = (int64_t)*n;
        return MPK_INT;
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: { /* int 8..64 */
        w = 1 << (t - 0xd0);
        if (mp_rd_take(c, (uint64_t)w, &b) != 0)
            return -1;
        uint64_t u = mp_rd_be(b, w);
        int bits = 8 * w;
        *iv = bits == 64 ? (int64_t)u
                         : (int64_t)(u & (1ULL << (bits - 1)) ? u - (1ULL << bits) : u);
        return MPK_INT;
    }
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext 1..16 */
        return mp_rd_take(c, 1 + (1u << (t - 0xd4)), &b) == 0 ? MPK_OTHER : -1;
    case 0xd9: case 0xda: case 0xdb: /* str 8..32 */
    case 0xc4: case 0xc5: case 0xc6: /* bin 8..32 */
    case 0xc7: case 0xc8: case 0xc9: /* ext 8..32 */
        w = t >= 0xd9 ? 1 << (t - 0xd9) : t >= 0xc7 ? 1 << (t - 0xc7) : 1 << (t - 0xc4);
        if (mp_rd_take(c, (uint64_t)w, &b) != 0)
            return -1;
        *n = mp_rd_be(b, w) + (t >= 0xc7 && t <= 0xc9); /* ext: the type byte */
        kind = t >= 0xd9 ? MPK_STR : MPK_OTHER;
        return mp_rd_take(c, *n, s) == 0 ? kind : -1;
    case 0xdc: case 0xdd: case 0xde: case 0xdf: /* array, map 16/32 */
        w = t == 0xdc || t == 0xde ? 2 : 4;
        if (mp_rd_take(c, (uint64_t)w, &b) != 0)
            return -1;
        *n = mp_rd_be(b, w);
        return t <= 0xdd ? MPK_ARRAY : MPK_MAP;
    default: /* 0xc1: never used */
        return -1;
    }
}

/* Skip one value, children included. */
static int mp_rd_skip(mp_rd_t *c, int depth)
{
    uint64_t n = 0;
    int64_t iv;
    const unsigned char *s;
    int k = mp_rd_head(c, &n, &iv, &s);
    if (k < 0 || depth > 16)
        return -1;
    if (k != MPK_MAP && k != MPK_ARRAY)
        return 0;
    if (k == MPK_MAP)
        n *= 2;
    /* Every child takes at least one byte: a hostile count fails here. */
    if (n > (uint64_t)(c->end - c->p))
        return -1;
    for (uint64_t i = 0; i < n; i++)
        if (mp_rd_skip(c, depth + 1) != 0)
            return -1;
    return 0;
}

/* The head of a map; returns its pair count or -1. */
static int64_t mp_rd_map(mp_rd_t *c)
{
    uint64_t n = 0;
    int64_t iv;
    const unsigned char *s;
    if (mp_rd_head(c, &n, &iv, &s) != MPK_MAP || n > (uint64_t)(c->end - c->p))
        return -1;
    return (int64_t)n;
}

/* A string key; 0 with *s, *n, or -1. */
static int mp_rd_key(mp_rd_t *c, const unsigned char **s, uint64_t *n)
{
    int64_t iv;
    return mp_rd_head(c, n, &iv, s) == MPK_STR ? 0 : -1;
}

/* From an entry's job bytes, the payload's user id (a string or an integer
 * that rp_user_id_valid accepts) and message (valid UTF-8 without NUL, else
 * ""): owned strings, or NULL when there is no usable user id. */
static char *salvage_user(const char *job, size_t len, char **message)
{
    mp_rd_t c = {(const unsigned char *)job, (const unsigned char *)job + len};
    char *user = NULL;
    *message = NULL;
    int64_t top = mp_rd_map(&c);
    for (int64_t i = 0; i < top; i++) {
        const unsigned char *k;
        uint64_t kn;
        if (mp_rd_key(&c, &k, &kn) != 0)
            break;
        if (!(kn == 7 && memcmp(k, "payload", 7) == 0)) {
            if (mp_rd_skip(&c, 1) != 0)
                break;
            continue;
        }
        int64_t m = mp_rd_map(&c);
        for (int64_t j = 0; j < m; j++) {
            uint64_t n = 0;
            int64_t iv = 0;
            const unsigned char *s = NULL;
            if (mp_rd_key(&c, &k, &kn) != 0)
                break;
            int is_user = kn == 7 && memcmp(k, "user_id", 7) == 0;
            int is_msg = kn == 7 && memcmp(k, "message", 7) == 0;
            mp_rd_t save = c;
            int kind = is_user || is_msg ? mp_rd_head(&c, &n, &iv, &s) : MPK_MAP;
            if (kind == MPK_MAP || kind == MPK_ARRAY) {
                c = save;
                if (mp_rd_skip(&c, 2) != 0)
                    break;
                continue;
            }
            if (kind < 0)
                break;
            if (is_user && user == NULL) {
                char buf[64];
                if (kind == MPK_STR && n < sizeof(buf)) {
                    memcpy(buf, s, n);
                    buf[n] = '\0';
                } else if (kind == MPK_INT) {
                    snprintf(buf, sizeof(buf), "%" PRId64, iv);
                } else {
                    buf[0] = '\0';
                }
                if (buf[0] != '\0' && rp_user_id_valid(buf))
                    user = strdup(buf);
            } else if (is_msg && *message == NULL && kind == MPK_STR && n <= SIZE_MAX - 1 &&
                       memchr(s, '\0', n) == NULL && rp_utf8_valid((const char *)s, n)) {
                *message = malloc(n + 1);
                if (*message != NULL) {
                    memcpy(*message, s, n);
                    (*message)[n] = '\0';
                }
            }
        }
        break;
    }
    if (user == NULL) {
        free(*message);
        *message = NULL;
    }
    return user;
}

/* An entry dead-lettered at claim time: everything copied, for the error
 * row's round trip. */
typedef struct poison {
    redis_queue_t *q;
    char entry[48];
    char *job;
    size_t job_len;
    int attempts;
    char reason[32];
    char *error;
} poison_t;

static void poison_free(poison_t *ctx)
{
    free(ctx->job);
    free(ctx->error);
    free(ctx);
}

static void poison_done(void *data, int err, const rp_redis_reply_t *rep)
{
    if (err != 0 || rp_redis_reply_type(rep) == RP_REDIS_ERROR)
        rp_log_error("job.fail_unrecorded", NULL,
                     "a malformed entry could not be dead-lettered: it returns after the lease");
    poison_free(data);
}

static void poison_script(poison_t *ctx)
{
    redis_queue_t *q = ctx->q;
    char failed_at[32], attempts[16];
    snprintf(failed_at, sizeof(failed_at), "%" PRIu64, now_ms());
    snprintf(attempts, sizeof(attempts), "%d", ctx->attempts);
    const char *argv[] = {"EVAL",       DEAD_LUA,         "2",
                          q->cfg->redis_stream, q->dead,  q->cfg->redis_group,
                          q->cfg->worker_id,    ctx->entry, ctx->job != NULL ? ctx->job : "",
                          ctx->reason,  ctx->error,       failed_at,
                          attempts};
    size_t lens[13];
    for (int i = 0; i < 13; i++)
        lens[i] = i == 8 ? ctx->job_len : strlen(argv[i]);
    if (rp_redis_command(q->cmd, 13, argv, lens, 0, poison_done, ctx) != 0)
        poison_free(ctx);
}

static void poison_row_done(void *data, const rp_pg_res_t *res)
{
    poison_t *ctx = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        /* Not dead-lettered without its row: the entry stays pending and
         * comes back after the lease, when Postgres may answer. */
        rp_log_error("job.fail_unrecorded", NULL, "error row of stream entry %s: %s %s",
                     ctx->entry, rp_strerror(err), rp_pg_res_message(res));
        poison_free(ctx);
        return;
    }
    poison_script(ctx);
}

/* Dead-letter a stream entry under its entry id (job_id: the job id when
 * known, else ""; attempts: the attempts it consumed; enqueued_at_ms: the
 * envelope's, 0 when unknown): the error row first
 * when the job id and the payload's user id can be read, then the dead
 * letter and the acknowledgement in one script. */
static void dead_letter_now(redis_queue_t *q, const char *entry_id, const char *job_id,
                            const char *job, size_t job_len, int attempts, int64_t enqueued_at_ms,
                            const char *reason, const char *error)
{
    poison_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return; /* the entry comes back after the lease */
    ctx->q = q;
    snprintf(ctx->entry, sizeof(ctx->entry), "%s", entry_id);
    snprintf(ctx->reason, sizeof(ctx->reason), "%s", reason);
    ctx->attempts = attempts < 1 ? 1 : attempts;
    ctx->error = strdup(error);
    ctx->job = malloc(job_len + 1);
    if (ctx->error == NULL || ctx->job == NULL) {
        poison_free(ctx);
        return;
    }
    memcpy(ctx->job, job, job_len);
    ctx->job[job_len] = '\0';
    ctx->job_len = job_len;
    rp_log_error("job.dead", job_id[0] != '\0' ? job_id : NULL, "stream entry %s: %s (%s)",
                 entry_id, error, reason);

    char *message = NULL;
    char *user = job_id[0] != '\0' ? salvage_user(job, job_len, &message) : NULL;
    if (user == NULL) {
        poison_script(ctx);
        return;
    }
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_puts(&b, "[{\"job_id\":\"");
    rp_buf_json_escape(&b, job_id, strlen(job_id));
    rp_buf_putc(&b, '"');
    append_str(&b, "user_id", user);
    append_str(&b, "message", message != NULL ? message : "");
    append_str(&b, "response", RP_SAFE_ERROR_MESSAGE);
    append_str(&b, "error", error);
    rp_buf_printf(&b, ",\"status\":\"error\",\"attempts\":%d", ctx->attempts);
    if (enqueued_at_ms > 0)
        rp_buf_printf(&b, ",\"enqueued_at_ms\":%" PRId64, enqueued_at_ms);
    rp_buf_puts(&b, "}]");
    free(user);
    free(message);
    int rc = RP_ENOMEM;
    if (!rp_buf_failed(&b)) {
        const char *params[1] = {b.data};
        rc = rp_pg_query(db_pick(q),
                         "SELECT job_id, outcome FROM ragpool.record_results($1::jsonb)", 1,
                         params, 0, poison_row_done, ctx);
    }
    rp_buf_free(&b);
    if (rc != 0) {
        rp_log_error("job.fail_unrecorded", NULL,
                     "error row of stream entry %s: %s: it returns after the lease", entry_id,
                     rp_strerror(rc));
        poison_free(ctx);
    }
}

static void release_script_done(void *data, int err, const rp_redis_reply_t *rep)
{
    fin_op_t *op = data;
    if (err != 0 || rp_redis_reply_type(rep) == RP_REDIS_ERROR)
        op->err = err ? err : RP_EPROTO;
    fin_answered(op);
}

static int redis_release(rp_queue_t *base, const rp_finish_t *jobs, size_t n,
                         rp_queue_finish_cb cb, void *data)
{
    redis_queue_t *q = (redis_queue_t *)base;
    fin_op_t *op = fin_new(q, jobs, n, cb, data);
    if (op == NULL)
        return RP_ENOMEM;
    op->pending = 1;
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        /* The attempt is not counted: re-added with the attempts made
         * before this one. */
        char *env = envelope_of(&jobs[i], jobs[i].attempts - 1, &len);
        if (env == NULL)
            continue; /* it comes back after the lease instead */
        const char *argv[] = {"EVAL",
                              RELEASE_LUA,
                              "1",
                              q->cfg->redis_stream,
                              q->cfg->redis_group,
                              q->cfg->worker_id,
                              op->entries[i],
                              env};
        size_t lens[8];
        for (int k = 0; k < 7; k++)
            lens[k] = strlen(argv[k]);
        lens[7] = len;
        if (rp_redis_command(q->cmd, 8, argv, lens, 0, release_script_done, op) == 0) {
            op->pending++;
            op->outcomes[i] = RP_OUTCOME_RETRY;
        }
        free(env);
    }
    rp_log_info("worker.released", NULL, "releasing %zu jobs to the stream", n);
    fin_answered(op);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                            */
/* ------------------------------------------------------------------ */

static void closed_one(void *data)
{
    redis_queue_t *q = data;
    /* The blocking connection may close early (drain); q goes only once
     * redis_close ran and everything it closed is gone. */
    if (--q->handles > 0 || !q->closing)
        return;
    void (*cb)(void *) = q->close_cb;
    void *cb_data = q->close_data;
    free(q->delayed);
    free(q->dead);
    free(q);
    if (cb != NULL)
        cb(cb_data);
}

static void timer_closed(uv_handle_t *h)
{
    closed_one(h->data);
}

static void redis_stop_claiming(rp_queue_t *base)
{
    redis_queue_t *q = (redis_queue_t *)base;
    /* Cut the blocking read short: the drain need not wait for it.  An
     * entry the server handed out meanwhile stays pending under this
     * consumer and is taken back after the lease. */
    rp_redis_t *blk = q->blk;
    if (blk != NULL) {
        /* Cleared first: closing answers the pending read at once, and that
         * answer may reach redis_close, which must not close it again. */
        q->blk = NULL;
        q->handles++;
        rp_redis_close(blk, closed_one, q);
    }
}

static void redis_close(rp_queue_t *base, void (*close_cb)(void *data), void *data)
{
    redis_queue_t *q = (redis_queue_t *)base;
    q->close_cb = close_cb;
    q->close_data = data;
    q->closing = 1;
    q->handles++; /* guard */
    q->handles += 2;
    uv_close((uv_handle_t *)&q->mover_timer, timer_closed);
    uv_close((uv_handle_t *)&q->autoclaim_timer, timer_closed);
    redis_stop_claiming(base);
    q->handles++;
    rp_redis_close(q->cmd, closed_one, q);
    closed_one(q);
}

static const rp_queue_vtbl_t redis_vtbl = {
    .name = "redis",
    .start = redis_start,
    .claim = redis_claim,
    .finish = redis_finish,
    .release = redis_release,
    .stop_claiming = redis_stop_claiming,
    .claims_block = 1,
    .close = redis_close,
};

rp_queue_t *rp_queue_redis_new(uv_loop_t *loop, const rp_worker_cfg_t *cfg, rp_pg_t *const *db,
                               size_t ndb, rp_err_t *err)
{
    redis_queue_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    q->base.vtbl = &redis_vtbl;
    q->loop = loop;
    q->cfg = cfg;
    q->db = db;
    q->ndb = ndb;
    q->delayed = rp_str_concat(cfg->redis_stream, ":delayed");
    q->dead = rp_str_concat(cfg->redis_stream, ":dead");
    rp_redis_opts_t copts = {
        .connect_timeout_ms = 5000,
        .command_timeout_ms = cfg->db_timeout_ms,
        .on_connect = on_cmd_connect,
        .on_disconnect = on_disconnect,
        .data = q,
    };
    rp_redis_opts_t bopts = {
        .connect_timeout_ms = 5000,
        .command_timeout_ms = cfg->redis_block_ms + 5000,
        .on_disconnect = on_disconnect,
        .data = q,
    };
    if (q->delayed == NULL || q->dead == NULL)
        goto nomem;
    q->cmd = rp_redis_new(loop, cfg->redis_url, &copts, err);
    if (q->cmd == NULL)
        goto bad_url;
    q->blk = rp_redis_new(loop, cfg->redis_url, &bopts, err);
    if (q->blk == NULL) {
        rp_redis_close(q->cmd, NULL, NULL);
        goto bad_url;
    }
    uv_timer_init(loop, &q->mover_timer);
    uv_timer_init(loop, &q->autoclaim_timer);
    q->mover_timer.data = q->autoclaim_timer.data = q;
    return &q->base;
bad_url : {
    rp_err_t inner = *err;
    rp_err_set(err, RP_EINVAL, "REDIS_URL: %s", inner.msg);
}
    free(q->delayed);
    free(q->dead);
    free(q);
    return NULL;
nomem:
    rp_err_set(err, RP_ENOMEM, "out of memory");
    free(q->delayed);
    free(q->dead);
    free(q);
    return NULL;
}
