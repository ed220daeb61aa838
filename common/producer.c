/*
 * producer.c: enqueueing chat jobs into the Postgres or the Redis queue
 * from a libuv program.  See producer.h for the contract, docs/REDIS.md for
 * the Redis entry format and sql/0008_producer.sql for the Postgres side.
 *
 * Every request is validated here first, by the job codec's rules (the
 * same the worker applies, the options by the codec itself), so a bad job
 * is refused with a message naming the field and never reaches the queue.  Requests then wait on
 * `pending` until the `flush` idle handle runs (the next loop turn, never inside
 * rp_producer_enqueue), which:
 *   - answers refused requests (RP_EINVAL) and
 *   - Postgres: writes up to max_batch requests with one statement
 *     (ragpool.enqueue_chat_batch) while fewer than PG_MAX_BATCHES
 *     statements are in flight; the rest wait for the next turn, so while
 *     one commit is in flight the next group gathers.  The function answers
 *     one row per element, in order, so row i belongs to request i; an
 *     element the database refuses (a user id of the wrong type for this
 *     database) is answered RP_EINVAL alone.
 *   - Redis: a batch of up to max_batch requests whose ids the producer
 *     generated (no Idempotency-Key) goes as one plain XADD per job; a
 *     batch with a caller-chosen id goes as one EVALSHA of a small script
 *     that, for each job in turn, finds the entry id already recorded
 *     under <stream>:idem:<job id> or XADDs the job (recording its entry
 *     id there for a day when it has a key), and answers per job.  Either
 *     way one refused XADD fails its own request only, and a turn's
 *     commands go out in one write (rp_redis pipelines).  Until the
 *     script's SHA is known (SCRIPT LOAD at start) and after a NOSCRIPT
 *     answer (a restarted server), EVAL carries the script itself.
 * A request's deadline (opts.timeout_ms) runs from rp_producer_enqueue:
 * the statement or command carrying it is given what is left of it.
 * Job ids for Redis are generated here (uuid v7: the time, then getrandom bytes); Postgres
 * generates its own for requests without one.
 */
#include "producer.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "buf.h"
#include "job.h"
#include "log.h"
#include "pg.h"
#include "redis.h"

#define PG_MAX_BATCHES 2
#define IDEM_TTL_S "86400"

/* One call enqueues a batch.  KEYS[1] = the stream, KEYS[1+i] = job i's
 * idempotency key for the first k jobs (those whose id the caller chose);
 * ARGV[1] = the keys' lifetime in seconds, ARGV[1+i] = job i (msgpack).
 * Answers one element per job, in order: 1 when the key already names an
 * entry (a repeat: nothing added), 0 when the job was added (XADD, then
 * its entry id recorded under its key, if it has one), or the error text
 * Redis gave for that job's XADD (nothing added for it; e.g. OOM).  A
 * repeat inside one batch is seen too: the first one set the key.  Jobs
 * whose id the producer generated have no key: nobody else knows the id,
 * so nothing could repeat it, and Redis keeps no key per job for a day. */
static const char ENQUEUE_SCRIPT[] =
    "local out = {}\n"
    "for i = 2, #ARGV do\n"
    "  local key = KEYS[i]\n"
    "  if key and redis.call('GET', key) then\n"
    "    out[i - 1] = 1\n"
    "  else\n"
    "    local id = redis.pcall('XADD', KEYS[1], '*', 'job', ARGV[i])\n"
    "    if type(id) == 'table' then\n"
    "      out[i - 1] = id.err or 'XADD failed'\n"
    "    else\n"
    "      if key then redis.pcall('SET', key, id, 'EX', ARGV[1]) end\n"
    "      out[i - 1] = 0\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

typedef enum { BACKEND_PG = 0, BACKEND_REDIS } backend_t;

typedef struct prod_req prod_req_t;
struct prod_req {
    prod_req_t *next;
    rp_producer_t *p;
    rp_producer_cb cb;
    void *data;
    uint64_t deadline;              /* loop time, ms */
    char job_id[RP_JOB_ID_LEN + 1]; /* given or generated; "" = Postgres picks */
    char *body; /* Postgres: the batch element (JSON); Redis: the job (msgpack) */
    size_t body_len;
    char *refused; /* validation failure: the message */
    int keyed;     /* Redis: the caller chose the job id (an idempotency key) */
};

typedef struct req_queue {
    prod_req_t *head, *tail;
    size_t n;
} req_queue_t;

typedef struct pg_batch {
    rp_producer_t *p;
    prod_req_t **reqs;
    size_t n;
} pg_batch_t;

struct rp_producer {
    uv_loop_t *loop;
    backend_t backend;
    long timeout_ms;
    size_t max_batch;
    char *stream;
    char *idem_prefix; /* "<stream>:idem:" */
    char *group;       /* the workers' consumer group (rp_producer_depth) */
    char *delayed;     /* "<stream>:delayed" */
    char *dead;        /* "<stream>:dead" */
    rp_pg_t *pg;
    rp_redis_t *redis;
    char sha[41]; /* the script's SHA1 once loaded, "" before */
    int sha_loading;
    uv_idle_t flush;
    req_queue_t pending;
    int batches; /* Postgres statements in flight */
    int closing;
    int nclosing;      /* handles and connections still closing */
    uint8_t rnd[4096]; /* getrandom bytes for job ids, refilled when used up */
    size_t rnd_used;
    void (*close_cb)(void *data);
    void *close_data;
};

/* ---------------------------------------------------------------- queue */

static void q_push(req_queue_t *q, prod_req_t *r)
{
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
}

static prod_req_t *q_pop(req_queue_t *q)
{
    prod_req_t *r = q->head;
    if (r) {
        q->head = r->next;
        if (q->head == NULL)
            q->tail = NULL;
        q->n--;
        r->next = NULL;
    }
    return r;
}

static void req_free(prod_req_t *r)
{
    free(r->body);
    free(r->refused);
    free(r);
}

/* Answer and free r. */
static void req_done(prod_req_t *r, int err, const char *job_id, int existing, const char *msg)
{
    rp_producer_cb cb = r->cb;
    void *data = r->data;
    char id[RP_JOB_ID_LEN + 1];
    const char *src = job_id ? job_id : r->job_id;
    size_t n = strnlen(src, RP_JOB_ID_LEN); /* (snprintf cost more than the rest) */
    memcpy(id, src, n);
    id[n] = '\0';
    char *m = msg ? strdup(msg) : NULL; /* msg may point into r */
    req_free(r);
    cb(data, err, id[0] ? id : NULL, existing, m ? m : (err ? rp_strerror(err) : NULL));
    free(m);
}

static void flush_arm(rp_producer_t *p);

/* ------------------------------------------------------------- job ids */

static int64_t unix_ms(void);

/* A time-ordered (version 7, RFC 9562) uuid, lower-case: 48 bits of Unix
 * time in milliseconds, then random bits, as ragpool.new_job_id() makes
 * them in Postgres -- jobs enqueued together are neighbours in the
 * conversations table's job_id index. */
static int new_uuid(rp_producer_t *p, char out[RP_JOB_ID_LEN + 1])
{
    if (p->rnd_used + 16 > sizeof(p->rnd)) {
        size_t got = 0;
        while (got < sizeof(p->rnd)) {
            ssize_t n = getrandom(p->rnd + got, sizeof(p->rnd) - got, 0);
            if (n <= 0)
                return RP_EIO;
            got += (size_t)n;
        }
        p->rnd_used = 0;
    }
    uint8_t b[16];
    memcpy(b, p->rnd + p->rnd_used, 16);
    memset(p->rnd + p->rnd_used, 0, 16);
    p->rnd_used += 16;
    uint64_t ms = (uint64_t)unix_ms();
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x70);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    size_t w = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[w++] = '-';
        out[w++] = hex[b[i] >> 4];
        out[w++] = hex[b[i] & 15];
    }
    out[w] = '\0';
    return 0;
}

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ----------------------------------------------------------- validation */

/* The options of a payload given as JSON text: decoded and checked by the
 * job codec (inside a minimal valid payload, so only options can fail). */
static int parse_options(const char *options_json, rp_chat_payload_t *pl, rp_err_t *err)
{
    json_error_t jerr;
    json_t *opts = json_loads(options_json, JSON_REJECT_DUPLICATES, &jerr);
    if (opts == NULL)
        return rp_err_set(err, RP_EINVAL, "options: not valid JSON (%s)", jerr.text);
    json_t *obj = json_pack("{s:i, s:s, s:O}", "user_id", 1, "message", "x", "options", opts);
    json_decref(opts);
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (text == NULL)
        return rp_err_set(err, RP_ENOMEM, "out of memory");
    rp_chat_payload_t tmp;
    int rc = rp_chat_payload_decode_json(text, strlen(text), &tmp, err);
    free(text);
    if (rc != 0)
        return rc;
    pl->match_count = tmp.match_count;
    pl->match_threshold = tmp.match_threshold;
    pl->history_count = tmp.history_count;
    pl->max_tokens = tmp.max_tokens;
    pl->temperature = tmp.temperature;
    pl->model = tmp.model;
    tmp.model = NULL;
    rp_chat_payload_free(&tmp);
    return 0;
}

/* A batch element for ragpool.enqueue_chat_batch, written directly (this
 * runs once per job; jansson would build and free a tree for it). */
static char *pg_element(const char *job_id, int max_attempts, const rp_chat_payload_t *pl,
                        size_t *len)
{
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_putc(&b, '{');
    if (job_id[0])
        rp_buf_printf(&b, "\"job_id\":\"%s\",", job_id);
    if (max_attempts > 0)
        rp_buf_printf(&b, "\"max_attempts\":%d,", max_attempts);
    rp_buf_puts(&b, "\"user_id\":\"");
    rp_buf_json_escape(&b, pl->user_id, strlen(pl->user_id));
    rp_buf_puts(&b, "\",\"message\":\"");
    rp_buf_json_escape(&b, pl->message, strlen(pl->message));
    rp_buf_puts(&b, "\",\"options\":{");
    const char *sep = "";
    if (pl->match_count >= 0) {
        rp_buf_printf(&b, "%s\"match_count\":%d", sep, pl->match_count);
        sep = ",";
    }
    if (!isnan(pl->match_threshold)) {
        rp_buf_printf(&b, "%s\"match_threshold\":%.17g", sep, pl->match_threshold);
        sep = ",";
    }
    if (pl->history_count >= 0) {
        rp_buf_printf(&b, "%s\"history_count\":%d", sep, pl->history_count);
        sep = ",";
    }
    if (pl->model != NULL) {
        rp_buf_printf(&b, "%s\"model\":\"", sep);
        rp_buf_json_escape(&b, pl->model, strlen(pl->model));
        rp_buf_putc(&b, '"');
        sep = ",";
    }
    if (pl->max_tokens >= 0) {
        rp_buf_printf(&b, "%s\"max_tokens\":%d", sep, pl->max_tokens);
        sep = ",";
    }
    if (!isnan(pl->temperature))
        rp_buf_printf(&b, "%s\"temperature\":%.17g", sep, pl->temperature);
    rp_buf_puts(&b, "}}");
    return rp_buf_take(&b, len);
}

/* Validate e with the job codec's rules and fill r->body for the backend,
 * or set r->refused.  Returns 0, or RP_ENOMEM. */
static int req_prepare(rp_producer_t *p, prod_req_t *r, const rp_enqueue_t *e)
{
    rp_err_t err;
    rp_err_clear(&err);
    rp_chat_payload_t pl;
    memset(&pl, 0, sizeof(pl));
    pl.match_count = pl.history_count = pl.max_tokens = -1;
    pl.match_threshold = pl.temperature = NAN;
    int rc = 0;

    if (e->job_id != NULL) {
        if (!rp_uuid_valid(e->job_id)) {
            rp_err_set(&err, RP_EINVAL, "job_id: must be a uuid");
            goto refused;
        }
        for (int i = 0; i < RP_JOB_ID_LEN; i++)
            r->job_id[i] = (char)tolower((unsigned char)e->job_id[i]);
        r->job_id[RP_JOB_ID_LEN] = '\0';
        r->keyed = 1;
    }
    if (e->max_attempts < 0 || e->max_attempts > RP_JOB_MAX_ATTEMPTS_MAX) {
        rp_err_set(&err, RP_EINVAL, "max_attempts: must be between 1 and %d",
                   RP_JOB_MAX_ATTEMPTS_MAX);
        goto refused;
    }
    /* The same rules and messages as rp_chat_payload_decode_json. */
    if (e->user_id == NULL) {
        rp_err_set(&err, RP_EINVAL, "user_id: missing");
        goto refused;
    }
    if (!rp_user_id_valid(e->user_id)) {
        rp_err_set(&err, RP_EINVAL, "user_id: must be a uuid or an integer");
        goto refused;
    }
    if (e->message == NULL) {
        rp_err_set(&err, RP_EINVAL, "message: missing");
        goto refused;
    }
    size_t mlen = strlen(e->message);
    if (mlen == 0 || mlen > RP_JOB_MESSAGE_MAX) {
        rp_err_set(&err, RP_EINVAL, "message: must be 1 to %d bytes (got %zu)", RP_JOB_MESSAGE_MAX,
                   mlen);
        goto refused;
    }
    if (!rp_utf8_valid(e->message, mlen)) {
        rp_err_set(&err, RP_EINVAL, "message: must be valid UTF-8");
        goto refused;
    }
    if (e->options_json != NULL) {
        rc = parse_options(e->options_json, &pl, &err);
        if (rc == RP_ENOMEM)
            goto out;
        rc = 0;
        if (err.code != 0)
            goto refused;
    }
    /* Borrowed from e for the encoders; cleared before the free below. */
    pl.user_id = (char *)e->user_id;
    pl.message = (char *)e->message;

    if (p->backend == BACKEND_PG) {
        r->body = pg_element(r->job_id, e->max_attempts, &pl, &r->body_len);
    } else {
        if (r->job_id[0] == '\0' && new_uuid(p, r->job_id) != 0) {
            rc = RP_EIO;
            goto out;
        }
        rp_job_envelope_t env;
        memset(&env, 0, sizeof(env));
        memcpy(env.id, r->job_id, sizeof(env.id));
        memcpy(env.kind, "chat", 5);
        env.payload = pl;
        env.max_attempts = e->max_attempts > 0 ? e->max_attempts : RP_JOB_DEFAULT_MAX_ATTEMPTS;
        env.attempt = 0;
        env.enqueued_at_ms = unix_ms();
        r->body = rp_job_envelope_encode_msgpack(&env, &r->body_len);
    }
    if (r->body == NULL)
        rc = RP_ENOMEM;
    goto out;

refused:
    r->refused = strdup(err.msg[0] ? err.msg : "invalid job");
    if (r->refused == NULL)
        rc = RP_ENOMEM;
out:
    pl.user_id = pl.message = NULL;
    rp_chat_payload_free(&pl);
    return rc;
}

/* ------------------------------------------------------------ Postgres */

static long remaining_ms(rp_producer_t *p, const prod_req_t *r)
{
    uint64_t now = uv_now(p->loop);
    return r->deadline > now ? (long)(r->deadline - now) : 1;
}

static void pg_batch_cb(void *data, const rp_pg_res_t *res)
{
    pg_batch_t *b = data;
    rp_producer_t *p = b->p;
    p->batches--;
    int err = rp_pg_res_error(res);
    int nrows = err == 0 ? rp_pg_res_ntuples(res) : 0;
    if (err == 0 && nrows != (int)b->n) {
        err = RP_EPROTO;
    }
    const char *msg = rp_pg_res_message(res);
    char why[RP_ERR_MSG_MAX];
    if (err == RP_EPROTO)
        snprintf(why, sizeof(why), "ragpool.enqueue_chat_batch answered %d rows for %zu jobs",
                 nrows, b->n);
    else
        snprintf(why, sizeof(why), "%s", msg && *msg ? msg : rp_strerror(err));
    for (size_t i = 0; i < b->n; i++) {
        prod_req_t *r = b->reqs[i];
        if (err != 0) {
            req_done(r, err, NULL, 0, why);
            continue;
        }
        int row = (int)i;
        const char *id = rp_pg_res_isnull(res, row, 0) ? NULL : rp_pg_res_value(res, row, 0);
        if (!rp_pg_res_isnull(res, row, 2)) {
            req_done(r, RP_EINVAL, id, 0, rp_pg_res_value(res, row, 2));
            continue;
        }
        int existing = strcmp(rp_pg_res_value(res, row, 1), "t") == 0;
        req_done(r, 0, id, existing, NULL);
    }
    free(b->reqs);
    free(b);
    if (!p->closing && p->pending.head)
        flush_arm(p);
}

/* Send one statement for up to max_batch requests from pending. */
static void pg_send_batch(rp_producer_t *p)
{
    size_t n = p->pending.n < p->max_batch ? p->pending.n : p->max_batch;
    pg_batch_t *b = calloc(1, sizeof(*b));
    prod_req_t **reqs = calloc(n, sizeof(*reqs));
    rp_buf_t json = RP_BUF_INIT;
    if (b == NULL || reqs == NULL)
        goto oom;
    b->p = p;
    b->reqs = reqs;
    rp_buf_putc(&json, '[');
    long timeout = 0;
    for (size_t i = 0; i < n; i++) {
        prod_req_t *r = q_pop(&p->pending);
        reqs[b->n++] = r;
        if (i > 0)
            rp_buf_putc(&json, ',');
        rp_buf_append(&json, r->body, r->body_len);
        /* The earliest deadline bounds the statement. */
        long left = remaining_ms(p, r);
        if (i == 0 || left < timeout)
            timeout = left;
    }
    rp_buf_putc(&json, ']');
    if (rp_buf_failed(&json))
        goto oom;
    const char *params[1] = {json.data};
    int rc = rp_pg_query(
        p->pg, "SELECT job_id, existing, error FROM ragpool.enqueue_chat_batch($1::jsonb)", 1,
        params, timeout, pg_batch_cb, b);
    rp_buf_free(&json);
    if (rc != 0) {
        for (size_t i = 0; i < b->n; i++)
            req_done(reqs[i], rc, NULL, 0, NULL);
        free(reqs);
        free(b);
        return;
    }
    p->batches++;
    return;
oom:
    rp_buf_free(&json);
    if (b != NULL)
        for (size_t i = 0; i < b->n; i++)
            req_done(reqs[i], RP_ENOMEM, NULL, 0, NULL);
    free(reqs);
    free(b);
}

/* --------------------------------------------------------------- Redis */

typedef struct redis_batch {
    rp_producer_t *p;
    int eval;     /* sent as EVAL (script text included) */
    size_t keyed; /* reqs[0 .. keyed) carry idempotency keys */
    size_t n;
    prod_req_t *reqs[];
} redis_batch_t;

static void redis_send(rp_producer_t *p, redis_batch_t *b);

static void script_loaded(void *data, int err, const rp_redis_reply_t *reply)
{
    rp_producer_t *p = data;
    p->sha_loading = 0;
    size_t len = 0;
    const char *s = rp_redis_reply_str(reply, &len);
    if (err == 0 && rp_redis_reply_type(reply) == RP_REDIS_STRING && len == 40)
        memcpy(p->sha, s, 41);
    else if (err == 0)
        rp_log_warn("producer.script_load_failed", NULL, "%s", s ? s : "unexpected reply");
}

static void script_load(rp_producer_t *p)
{
    if (p->sha_loading || p->closing)
        return;
    const char *argv[] = {"SCRIPT", "LOAD", ENQUEUE_SCRIPT};
    if (rp_redis_command(p->redis, 3, argv, NULL, p->timeout_ms, script_loaded, p) == 0)
        p->sha_loading = 1;
}

/* Answer every request of b with err and msg, and free b. */
static void redis_batch_fail(redis_batch_t *b, int err, const char *msg)
{
    for (size_t i = 0; i < b->n; i++)
        req_done(b->reqs[i], err, NULL, 0, msg);
    free(b);
}

static void redis_reply_cb(void *data, int err, const rp_redis_reply_t *reply)
{
    redis_batch_t *b = data;
    rp_producer_t *p = b->p;
    if (err != 0) {
        redis_batch_fail(b, err, NULL);
        return;
    }
    char why[RP_ERR_MSG_MAX];
    if (rp_redis_reply_type(reply) == RP_REDIS_ERROR) {
        const char *msg = rp_redis_reply_str(reply, NULL);
        if (!b->eval && msg && strncmp(msg, "NOSCRIPT", 8) == 0 && !p->closing) {
            /* The server lost its scripts (restart, SCRIPT FLUSH). */
            p->sha[0] = '\0';
            script_load(p);
            b->eval = 1;
            redis_send(p, b);
            return;
        }
        snprintf(why, sizeof(why), "Redis refused the job: %s", msg ? msg : "error");
        redis_batch_fail(b, RP_EDB, why);
        return;
    }
    if (rp_redis_reply_type(reply) != RP_REDIS_ARRAY || rp_redis_reply_len(reply) != b->n) {
        redis_batch_fail(b, RP_EPROTO, "unexpected answer from the enqueue script");
        return;
    }
    /* One answer per job, in order: 0 added, 1 already there, or the
     * error Redis gave for this job's XADD (nothing was added for it). */
    for (size_t i = 0; i < b->n; i++) {
        const rp_redis_reply_t *one = rp_redis_reply_at(reply, i);
        int type = rp_redis_reply_type(one);
        if (type == RP_REDIS_INTEGER) {
            req_done(b->reqs[i], 0, NULL, rp_redis_reply_int(one) == 1, NULL);
        } else if (type == RP_REDIS_STRING) {
            size_t len = 0;
            const char *msg = rp_redis_reply_str(one, &len);
            snprintf(why, sizeof(why), "Redis refused the job: %.*s", (int)(len < 200 ? len : 200),
                     msg);
            req_done(b->reqs[i], RP_EDB, NULL, 0, why);
        } else {
            req_done(b->reqs[i], RP_EPROTO, NULL, 0, "unexpected answer from the enqueue script");
        }
    }
    free(b);
}

/* Send b as one EVALSHA (EVAL until the script's SHA is known): KEYS =
 * the stream, then the idempotency keys of b's first `keyed` jobs; ARGV =
 * the keys' lifetime, then every job.  The earliest deadline bounds the
 * command. */
static void redis_send(rp_producer_t *p, redis_batch_t *b)
{
    size_t n = b->n, k = b->keyed, plen = strlen(p->idem_prefix), klen = plen + RP_JOB_ID_LEN;
    size_t argc = 5 + k + n;
    const char **argv = malloc(argc * sizeof(*argv));
    size_t *lens = malloc(argc * sizeof(*lens));
    char *keys = malloc(k * klen + 1);
    if (argv == NULL || lens == NULL || keys == NULL) {
        free(argv);
        free(lens);
        free(keys);
        redis_batch_fail(b, RP_ENOMEM, NULL);
        return;
    }
    if (p->sha[0] == '\0')
        b->eval = 1;
    char numkeys[24];
    snprintf(numkeys, sizeof(numkeys), "%zu", k + 1);
    size_t a = 0;
    argv[a] = b->eval ? "EVAL" : "EVALSHA";
    lens[a] = strlen(argv[a]);
    a++;
    argv[a] = b->eval ? ENQUEUE_SCRIPT : p->sha;
    lens[a] = strlen(argv[a]);
    a++;
    argv[a] = numkeys;
    lens[a++] = strlen(numkeys);
    argv[a] = p->stream;
    lens[a++] = strlen(p->stream);
    for (size_t i = 0; i < k; i++) {
        char *key = keys + i * klen;
        memcpy(key, p->idem_prefix, plen);
        memcpy(key + plen, b->reqs[i]->job_id, RP_JOB_ID_LEN);
        argv[a] = key;
        lens[a++] = klen;
    }
    argv[a] = IDEM_TTL_S;
    lens[a++] = sizeof(IDEM_TTL_S) - 1;
    long timeout = 0;
    for (size_t i = 0; i < n; i++) {
        prod_req_t *r = b->reqs[i];
        argv[a] = r->body;
        lens[a++] = r->body_len;
        long left = remaining_ms(p, r);
        if (i == 0 || left < timeout)
            timeout = left;
    }
    int rc = rp_redis_command(p->redis, (int)argc, argv, lens, timeout, redis_reply_cb, b);
    free(argv);
    free(lens);
    free(keys);
    if (rc != 0)
        redis_batch_fail(b, rc, NULL);
}

/* A plain XADD's answer: the entry id, or Redis' reason for refusing it. */
static void xadd_reply_cb(void *data, int err, const rp_redis_reply_t *reply)
{
    prod_req_t *r = data;
    if (err != 0) {
        req_done(r, err, NULL, 0, NULL);
    } else if (rp_redis_reply_type(reply) == RP_REDIS_STRING) {
        req_done(r, 0, NULL, 0, NULL);
    } else if (rp_redis_reply_type(reply) == RP_REDIS_ERROR) {
        size_t len = 0;
        const char *msg = rp_redis_reply_str(reply, &len);
        char why[RP_ERR_MSG_MAX];
        snprintf(why, sizeof(why), "Redis refused the job: %.*s", (int)(len < 200 ? len : 200),
                 msg ? msg : "error");
        req_done(r, RP_EDB, NULL, 0, why);
    } else {
        req_done(r, RP_EPROTO, NULL, 0, "unexpected answer to XADD");
    }
}

/* Jobs whose ids the producer generated have no idempotency key to look
 * up or record, so each is one plain XADD (rp_redis sends a turn's
 * commands in one write).  Inside Redis that is ~0.6 us a job against
 * ~1.7 us through the script in batches of 8 (INFO commandstats), and the
 * script's cost per call grows as threads split the batches. */
static void redis_send_plain(rp_producer_t *p, prod_req_t *r)
{
    const char *argv[5] = {"XADD", p->stream, "*", "job", r->body};
    size_t lens[5] = {4, strlen(p->stream), 1, 3, r->body_len};
    int rc = rp_redis_command(p->redis, 5, argv, lens, remaining_ms(p, r), xadd_reply_cb, r);
    if (rc != 0)
        req_done(r, rc, NULL, 0, NULL);
}

static int any_keyed(const rp_producer_t *p, size_t n)
{
    const prod_req_t *r = p->pending.head;
    for (size_t i = 0; i < n && r != NULL; i++, r = r->next)
        if (r->keyed)
            return 1;
    return 0;
}

/* Send the pending requests in batches of at most max_batch: a batch
 * without caller-chosen ids as plain XADDs, any other through the script. */
static void redis_flush(rp_producer_t *p)
{
    while (p->pending.head && !p->closing) {
        size_t n = p->pending.n < p->max_batch ? p->pending.n : p->max_batch;
        if (!any_keyed(p, n)) {
            for (size_t i = 0; i < n && !p->closing; i++)
                redis_send_plain(p, q_pop(&p->pending));
            continue;
        }
        redis_batch_t *b = malloc(sizeof(*b) + n * sizeof(b->reqs[0]));
        if (b == NULL) {
            prod_req_t *r;
            while ((r = q_pop(&p->pending)) != NULL)
                req_done(r, RP_ENOMEM, NULL, 0, NULL);
            return;
        }
        b->p = p;
        b->eval = 0;
        b->n = n;
        /* The keyed jobs first (the script pairs them with KEYS), each
         * group in arrival order. */
        size_t k = 0;
        req_queue_t unkeyed = {NULL, NULL, 0};
        for (size_t i = 0; i < n; i++) {
            prod_req_t *r = q_pop(&p->pending);
            if (r->keyed)
                b->reqs[k++] = r;
            else
                q_push(&unkeyed, r);
        }
        b->keyed = k;
        for (prod_req_t *r; (r = q_pop(&unkeyed)) != NULL;)
            b->reqs[k++] = r;
        redis_send(p, b);
    }
}

/* -------------------------------------------------------------- flushing */

static void flush_cb(uv_idle_t *h)
{
    rp_producer_t *p = h->data;
    uv_idle_stop(h);
    if (p->closing)
        return;
    /* Answer the refused ones, then batch the rest (requests that the
     * callbacks enqueue go behind the ones kept). */
    req_queue_t refused = {NULL, NULL, 0}, keep = {NULL, NULL, 0};
    prod_req_t *r;
    while ((r = q_pop(&p->pending)) != NULL)
        q_push(r->refused ? &refused : &keep, r);
    p->pending = keep;
    while ((r = q_pop(&refused)) != NULL) {
        req_done(r, RP_EINVAL, NULL, 0, r->refused);
        if (p->closing) {
            /* rp_producer_close answered the pending ones. */
            while ((r = q_pop(&refused)) != NULL)
                req_done(r, RP_ECANCELED, NULL, 0, NULL);
            return;
        }
    }
    if (p->backend == BACKEND_REDIS) {
        redis_flush(p);
        return;
    }
    while (p->pending.head && p->batches < PG_MAX_BATCHES && !p->closing)
        pg_send_batch(p);
}

static void flush_arm(rp_producer_t *p)
{
    if (!p->closing)
        uv_idle_start(&p->flush, flush_cb);
}

/* ---------------------------------------------------------- queue depth */

typedef struct depth_op {
    rp_producer_depth_cb cb;
    void *data;
    int pending; /* replies still to come */
    int err;
    rp_queue_depth_t d;
} depth_op_t;

static void depth_one(depth_op_t *op, int err, const rp_redis_reply_t *reply, long long *slot,
                      int nogroup_is_zero)
{
    if (err == 0 && rp_redis_reply_type(reply) == RP_REDIS_ERROR) {
        const char *m = rp_redis_reply_str(reply, NULL);
        if (!(nogroup_is_zero && m != NULL && strncmp(m, "NOGROUP", 7) == 0))
            err = RP_EDB;
    } else if (err == 0 && slot != NULL) {
        /* XPENDING's summary is an array whose first element is the count. */
        const rp_redis_reply_t *v =
            rp_redis_reply_type(reply) == RP_REDIS_ARRAY ? rp_redis_reply_at(reply, 0) : reply;
        *slot = rp_redis_reply_int(v);
    }
    if (err != 0 && op->err == 0)
        op->err = err;
    if (--op->pending > 0)
        return;
    /* The stream holds the undelivered and the pending entries alike. */
    op->d.queued = op->d.queued > op->d.running ? op->d.queued - op->d.running : 0;
    op->cb(op->data, op->err, op->err == 0 ? &op->d : NULL);
    free(op);
}

static void depth_xlen(void *data, int err, const rp_redis_reply_t *reply)
{
    depth_op_t *op = data;
    depth_one(op, err, reply, &op->d.queued, 0);
}

static void depth_delayed(void *data, int err, const rp_redis_reply_t *reply)
{
    depth_op_t *op = data;
    depth_one(op, err, reply, &op->d.scheduled, 0);
}

static void depth_dead(void *data, int err, const rp_redis_reply_t *reply)
{
    depth_op_t *op = data;
    depth_one(op, err, reply, &op->d.dead, 0);
}

static void depth_pending(void *data, int err, const rp_redis_reply_t *reply)
{
    depth_op_t *op = data;
    depth_one(op, err, reply, &op->d.running, 1);
}

/* XRANGE <stream> - + COUNT 1: the oldest entry's id starts with its time. */
static void depth_oldest(void *data, int err, const rp_redis_reply_t *reply)
{
    depth_op_t *op = data;
    if (err == 0 && rp_redis_reply_type(reply) == RP_REDIS_ARRAY) {
        const char *id =
            rp_redis_reply_str(rp_redis_reply_at(rp_redis_reply_at(reply, 0), 0), NULL);
        op->d.oldest_ms = id != NULL ? strtoll(id, NULL, 10) : 0;
    }
    depth_one(op, err, reply, NULL, 0);
}

int rp_producer_depth(rp_producer_t *p, rp_producer_depth_cb cb, void *data)
{
    if (p->closing)
        return RP_ECLOSED;
    if (p->backend != BACKEND_REDIS || cb == NULL)
        return RP_EINVAL;
    depth_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return RP_ENOMEM;
    op->cb = cb;
    op->data = data;
    const char *xlen[] = {"XLEN", p->stream};
    const char *zcard[] = {"ZCARD", p->delayed};
    const char *dead[] = {"XLEN", p->dead};
    const char *pending[] = {"XPENDING", p->stream, p->group};
    const char *first[] = {"XRANGE", p->stream, "-", "+", "COUNT", "1"};
    /* Five commands, one write; each answers once, even when sending the
     * later ones fails. */
    enum { NCMDS = 5 };
    op->pending = NCMDS;
    struct {
        int argc;
        const char *const *argv;
        rp_redis_cb cb;
    } cmds[NCMDS] = {{2, xlen, depth_xlen},
                     {2, zcard, depth_delayed},
                     {2, dead, depth_dead},
                     {3, pending, depth_pending},
                     {6, first, depth_oldest}};
    int sent = 0;
    for (int i = 0; i < NCMDS; i++) {
        int rc = rp_redis_command(p->redis, cmds[i].argc, cmds[i].argv, NULL, p->timeout_ms,
                                  cmds[i].cb, op);
        if (rc != 0) {
            if (sent == 0) {
                free(op);
                return rc;
            }
            /* Count the unsent ones as answered with rc. */
            op->err = op->err ? op->err : rc;
            op->pending -= NCMDS - i;
            break;
        }
        sent++;
    }
    return 0;
}

static void producer_free_names(rp_producer_t *p)
{
    free(p->stream);
    free(p->idem_prefix);
    free(p->delayed);
    free(p->dead);
    free(p->group);
}

/* ------------------------------------------------------------------ API */

rp_producer_t *rp_producer_new(uv_loop_t *loop, const rp_producer_opts_t *opts, rp_err_t *err)
{
    const char *queue = opts && opts->queue ? opts->queue : "postgres";
    backend_t backend;
    if (strcmp(queue, "postgres") == 0) {
        backend = BACKEND_PG;
    } else if (strcmp(queue, "redis") == 0) {
        backend = BACKEND_REDIS;
    } else {
        rp_err_set(err, RP_EINVAL, "unknown queue '%.32s' (postgres or redis)", queue);
        return NULL;
    }
    rp_producer_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    p->loop = loop;
    p->backend = backend;
    p->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    p->max_batch = opts->max_batch > 0 ? opts->max_batch : 512;
    p->rnd_used = sizeof(p->rnd);
    if (backend == BACKEND_PG) {
        if (opts->database_url == NULL || *opts->database_url == '\0') {
            rp_err_set(err, RP_EINVAL, "DATABASE_URL is required for the postgres queue");
            goto fail;
        }
        rp_pg_opts_t po = {.query_timeout_ms = p->timeout_ms,
                           .application_name = "ragpool-producer"};
        p->pg = rp_pg_new(loop, opts->database_url, &po, err);
        if (p->pg == NULL)
            goto fail;
    } else {
        if (opts->redis_url == NULL || *opts->redis_url == '\0') {
            rp_err_set(err, RP_EINVAL, "REDIS_URL is required for the redis queue");
            goto fail;
        }
        const char *stream =
            opts->redis_stream && *opts->redis_stream ? opts->redis_stream : "ragpool:jobs";
        if (strlen(stream) > 200) {
            rp_err_set(err, RP_EINVAL, "the Redis stream name is longer than 200 bytes");
            goto fail;
        }
        p->stream = strdup(stream);
        p->idem_prefix = rp_str_concat(stream, ":idem:");
        p->delayed = rp_str_concat(stream, ":delayed");
        p->dead = rp_str_concat(stream, ":dead");
        p->group = strdup(opts->redis_group && *opts->redis_group ? opts->redis_group : "ragpool");
        if (p->stream == NULL || p->idem_prefix == NULL || p->delayed == NULL || p->dead == NULL ||
            p->group == NULL) {
            rp_err_set(err, RP_ENOMEM, "out of memory");
            goto fail;
        }
        rp_redis_opts_t ro = {.command_timeout_ms = p->timeout_ms};
        p->redis = rp_redis_new(loop, opts->redis_url, &ro, err);
        if (p->redis == NULL)
            goto fail;
    }
    uv_idle_init(loop, &p->flush);
    p->flush.data = p;
    return p;
fail:
    producer_free_names(p);
    free(p);
    return NULL;
}

int rp_producer_start(rp_producer_t *p)
{
    if (p->closing)
        return RP_ECLOSED;
    if (p->backend == BACKEND_PG)
        return rp_pg_start(p->pg);
    int rc = rp_redis_start(p->redis);
    if (rc == 0)
        script_load(p);
    return rc;
}

int rp_producer_is_up(const rp_producer_t *p)
{
    return p->backend == BACKEND_PG ? rp_pg_is_up(p->pg) : rp_redis_is_up(p->redis);
}

int rp_producer_enqueue(rp_producer_t *p, const rp_enqueue_t *e, rp_producer_cb cb, void *data)
{
    if (p->closing)
        return RP_ECLOSED;
    if (e == NULL || cb == NULL)
        return RP_EINVAL;
    prod_req_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return RP_ENOMEM;
    r->p = p;
    r->cb = cb;
    r->data = data;
    r->deadline = uv_now(p->loop) + (uint64_t)p->timeout_ms;
    int rc = req_prepare(p, r, e);
    if (rc != 0) {
        req_free(r);
        return rc;
    }
    q_push(&p->pending, r);
    flush_arm(p);
    return 0;
}

static void part_closed(void *data)
{
    rp_producer_t *p = data;
    if (--p->nclosing > 0)
        return;
    void (*cb)(void *) = p->close_cb;
    void *cdata = p->close_data;
    producer_free_names(p);
    free(p);
    if (cb)
        cb(cdata);
}

static void flush_closed(uv_handle_t *h)
{
    part_closed(h->data);
}

void rp_producer_close(rp_producer_t *p, void (*close_cb)(void *data), void *data)
{
    if (p->closing)
        return;
    p->closing = 1;
    p->close_cb = close_cb;
    p->close_data = data;
    p->nclosing = 2; /* the idle handle and the connection */
    uv_idle_stop(&p->flush);
    prod_req_t *r;
    while ((r = q_pop(&p->pending)) != NULL)
        req_done(r, RP_ECANCELED, NULL, 0, NULL);
    /* In-flight requests are answered RP_ECANCELED by the connection. */
    if (p->pg)
        rp_pg_close(p->pg, part_closed, p);
    else
        rp_redis_close(p->redis, part_closed, p);
    uv_close((uv_handle_t *)&p->flush, flush_closed);
}
