/*
 * redis_queue.c: `ragpool status` and `ragpool dead list|retry` for the
 * Redis Streams queue (--queue redis, or RAGPOOL_QUEUE=redis).
 *
 * The CLI is blocking; Redis is reached through common/redis.c (the same
 * URL rules, AUTH and SELECT as the workers) on a private libuv loop that
 * runs until each command is answered.  The keys are the workers' (docs/
 * CONTRACTS.md): the stream, its consumer group, <stream>:delayed (retries
 * waiting for their time) and <stream>:dead (dead letters: fields job,
 * reason, error, failed_at_ms, attempts).
 *
 * Retrying a dead letter: its error row is deleted from conversations
 * first (as ragpool.retry_dead does), then one script moves the job back:
 * XDEL from the dead stream and, only if that removed it, XADD to the
 * stream with the attempts reset.  A crash between the two leaves the dead
 * letter in place (run retry again); two operators retrying at once move
 * it once.
 */
#include "redis_queue.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "buf.h"
#include "err.h"
#include "job.h"
#include "log.h"
#include "producer.h"
#include "redis.h"

#define COMMAND_TIMEOUT_MS 10000
#define SCAN_PAGE "500"

/* KEYS[1] = stream, KEYS[2] = dead stream; ARGV[1] = the job (msgpack),
 * ARGV[2] = the dead letter's entry id.  Returns the new entry id, or
 * false when the dead letter was no longer there. */
static const char MOVE_SCRIPT[] = "if redis.call('XDEL', KEYS[2], ARGV[2]) == 1 then\n"
                                  "  return redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])\n"
                                  "end\n"
                                  "return false\n";

/* ------------------------------------------------- a blocking client */

typedef void (*reply_fn)(void *data, const rp_redis_reply_t *reply);

typedef struct rclient {
    uv_loop_t loop;
    rp_redis_t *r;
    const char *stream;
    char *delayed, *dead;
    /* the command in flight */
    int done, err;
    reply_fn fn;
    void *data;
    char msg[256];
} rclient_t;

static int rc_open(rclient_t *c, const rp_cli_cfg_t *cfg, const char *cmd)
{
    memset(c, 0, sizeof(*c));
    if (cfg->redis_url == NULL || cfg->redis_url[0] == '\0') {
        fprintf(stderr, "ragpool %s: REDIS_URL is required for the redis queue\n", cmd);
        return -1;
    }
    c->stream = cfg->redis_stream != NULL && cfg->redis_stream[0] != '\0' ? cfg->redis_stream
                                                                          : "ragpool:jobs";
    c->delayed = rp_str_concat(c->stream, ":delayed");
    c->dead = rp_str_concat(c->stream, ":dead");
    if (c->delayed == NULL || c->dead == NULL || uv_loop_init(&c->loop) != 0) {
        fprintf(stderr, "ragpool %s: out of memory\n", cmd);
        free(c->delayed);
        free(c->dead);
        return -1;
    }
    /* Connection lines are for servers; a command prints only problems. */
    rp_log_set_level(RP_LOG_WARN);
    rp_err_t err;
    rp_redis_opts_t o = {.command_timeout_ms = COMMAND_TIMEOUT_MS};
    c->r = rp_redis_new(&c->loop, cfg->redis_url, &o, &err);
    if (c->r == NULL || rp_redis_start(c->r) != 0) {
        fprintf(stderr, "ragpool %s: %s\n", cmd, c->r == NULL ? err.msg : "cannot start Redis");
        if (c->r != NULL)
            rp_redis_close(c->r, NULL, NULL);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        uv_loop_close(&c->loop);
        free(c->delayed);
        free(c->dead);
        return -1;
    }
    return 0;
}

static void rc_close(rclient_t *c)
{
    rp_redis_close(c->r, NULL, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    uv_loop_close(&c->loop);
    free(c->delayed);
    free(c->dead);
}

static void rc_reply(void *data, int err, const rp_redis_reply_t *reply)
{
    rclient_t *c = data;
    c->done = 1;
    c->err = err;
    if (err != 0) {
        const char *why = rp_redis_last_error(c->r);
        snprintf(c->msg, sizeof(c->msg), "%s%s%s", rp_strerror(err), why[0] ? ": " : "", why);
        return;
    }
    if (rp_redis_reply_type(reply) == RP_REDIS_ERROR) {
        c->err = RP_EDB;
        const char *m = rp_redis_reply_str(reply, NULL);
        snprintf(c->msg, sizeof(c->msg), "%s", m != NULL ? m : "error");
        return;
    }
    if (c->fn != NULL)
        c->fn(c->data, reply);
}

/* Run one command and wait for it; fn (may be NULL) sees the reply unless
 * it is an error.  Returns 0, or an RP_E* code with c->msg saying why. */
static int rc_call(rclient_t *c, int argc, const char *const *argv, const size_t *lens, reply_fn fn,
                   void *data)
{
    c->done = 0;
    c->err = 0;
    c->fn = fn;
    c->data = data;
    c->msg[0] = '\0';
    int rc = rp_redis_command(c->r, argc, argv, lens, COMMAND_TIMEOUT_MS, rc_reply, c);
    if (rc != 0) {
        snprintf(c->msg, sizeof(c->msg), "%s", rp_strerror(rc));
        return rc;
    }
    while (!c->done)
        uv_run(&c->loop, UV_RUN_ONCE);
    return c->err;
}

/* ------------------------------------------------- dead letters */

typedef struct dead_entry {
    char entry[64]; /* the dead stream's entry id */
    char id[RP_JOB_ID_LEN + 1];
    char kind[16];
    long long attempts;
    char reason[64];
    char error[512];
    char failed_at[32]; /* ISO 8601, UTC */
    char *job;          /* the envelope's bytes */
    size_t job_len;
} dead_entry_t;

typedef struct dead_page {
    dead_entry_t *e;
    size_t n;
    char last[64]; /* the last entry id seen ("" when none) */
    int oom;
} dead_page_t;

static void iso_ms(long long ms, char out[32])
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || gmtime_r(&s, &tm) == NULL) {
        snprintf(out, 32, "-");
        return;
    }
    char base[24];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 32, "%s.%03dZ", base, (int)(ms % 1000));
}

static void copy_field(char *dst, size_t cap, const char *s, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, s, len);
    dst[len] = '\0';
}

/* One XRANGE/XREVRANGE entry: [entry id, [field, value, ...]]. */
static int dead_entry_read(const rp_redis_reply_t *item, dead_entry_t *d)
{
    memset(d, 0, sizeof(*d));
    size_t len = 0;
    const char *s = rp_redis_reply_str(rp_redis_reply_at(item, 0), &len);
    const rp_redis_reply_t *fields = rp_redis_reply_at(item, 1);
    if (s == NULL || fields == NULL)
        return -1;
    copy_field(d->entry, sizeof(d->entry), s, len);
    snprintf(d->kind, sizeof(d->kind), "?");
    long long failed_ms = 0;
    for (size_t f = 0; f + 1 < rp_redis_reply_len(fields); f += 2) {
        const char *name = rp_redis_reply_str(rp_redis_reply_at(fields, f), NULL);
        size_t vlen = 0;
        const char *v = rp_redis_reply_str(rp_redis_reply_at(fields, f + 1), &vlen);
        if (name == NULL || v == NULL)
            continue;
        if (strcmp(name, "job") == 0) {
            d->job = malloc(vlen + 1);
            if (d->job == NULL)
                return RP_ENOMEM;
            memcpy(d->job, v, vlen);
            d->job[vlen] = '\0';
            d->job_len = vlen;
        } else if (strcmp(name, "reason") == 0) {
            copy_field(d->reason, sizeof(d->reason), v, vlen);
        } else if (strcmp(name, "error") == 0) {
            copy_field(d->error, sizeof(d->error), v, vlen);
        } else if (strcmp(name, "failed_at_ms") == 0) {
            failed_ms = strtoll(v, NULL, 10);
        } else if (strcmp(name, "attempts") == 0) {
            d->attempts = strtoll(v, NULL, 10);
        }
    }
    iso_ms(failed_ms, d->failed_at);
    if (d->job != NULL) {
        rp_job_envelope_t env;
        rp_err_t err;
        int rc = rp_job_envelope_decode_msgpack(d->job, d->job_len, &env, &err);
        memcpy(d->id, env.id, sizeof(d->id)); /* kept even when the rest is invalid */
        if (rc == 0)
            snprintf(d->kind, sizeof(d->kind), "%s", env.kind);
        rp_job_envelope_free(&env);
    }
    return 0;
}

static void dead_page_cb(void *data, const rp_redis_reply_t *reply)
{
    dead_page_t *p = data;
    size_t n = rp_redis_reply_len(reply);
    p->e = n > 0 ? calloc(n, sizeof(*p->e)) : NULL;
    if (n > 0 && p->e == NULL) {
        p->oom = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        int rc = dead_entry_read(rp_redis_reply_at(reply, i), &p->e[p->n]);
        if (rc == RP_ENOMEM) {
            free(p->e[p->n].job);
            p->oom = 1;
            return;
        }
        if (rc == 0) {
            snprintf(p->last, sizeof(p->last), "%s", p->e[p->n].entry);
            p->n++;
        }
    }
}

static void dead_page_free(dead_page_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->e[i].job);
    free(p->e);
    memset(p, 0, sizeof(*p));
}

int rp_cli_redis_dead_list(const rp_cli_cfg_t *cfg, int json, long limit)
{
    rclient_t c;
    if (rc_open(&c, cfg, "dead list") != 0)
        return RP_CLI_FAIL;
    char count[32];
    snprintf(count, sizeof(count), "%ld", limit);
    const char *argv[] = {"XREVRANGE", c.dead, "+", "-", "COUNT", count};
    dead_page_t page = {0};
    int rc = RP_CLI_OK;
    if (rc_call(&c, 6, argv, NULL, dead_page_cb, &page) != 0) {
        fprintf(stderr, "ragpool: list dead jobs: %s\n", c.msg);
        rc = RP_CLI_FAIL;
    } else if (page.oom) {
        fprintf(stderr, "ragpool: out of memory\n");
        rc = RP_CLI_FAIL;
    } else if (json) {
        json_t *a = json_array();
        for (size_t i = 0; i < page.n && a != NULL; i++) {
            const dead_entry_t *d = &page.e[i];
            json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:s}", "id", d->id,
                                               "kind", d->kind, "attempts", (json_int_t)d->attempts,
                                               "reason", d->reason, "last_error", d->error,
                                               "failed_at", d->failed_at, "entry", d->entry));
        }
        char *s = a != NULL ? json_dumps(a, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        json_decref(a);
        if (s == NULL) {
            fprintf(stderr, "ragpool: out of memory\n");
            rc = RP_CLI_FAIL;
        } else {
            printf("%s\n", s);
            free(s);
        }
    } else {
        if (page.n == 0)
            printf("no dead letters\n");
        for (size_t i = 0; i < page.n; i++) {
            const dead_entry_t *d = &page.e[i];
            printf("%s  %s  %lld attempts  %s  %s\n    %s\n", d->id[0] ? d->id : "(no job id)",
                   d->kind, d->attempts, d->reason, d->failed_at, d->error);
        }
    }
    dead_page_free(&page);
    rc_close(&c);
    return rc;
}

/* The move script answers the new entry id, or nil when the dead letter
 * was already gone (another retry took it). */
static void moved_cb(void *data, const rp_redis_reply_t *reply)
{
    *(int *)data = rp_redis_reply_type(reply) == RP_REDIS_STRING;
}

/* Move one dead letter back to the stream.  Returns 1 when moved, 0 when
 * it was gone, -1 on error (printed). */
static int retry_one(rclient_t *c, PGconn *conn, const dead_entry_t *d)
{
    rp_job_envelope_t env;
    rp_err_t err;
    if (d->job == NULL || rp_job_envelope_decode_msgpack(d->job, d->job_len, &env, &err) != 0) {
        if (d->job != NULL)
            rp_job_envelope_free(&env);
        fprintf(stderr,
                "ragpool dead retry: %s (entry %s) cannot be retried: its job is unreadable; "
                "XDEL it from %s once looked at\n",
                d->id[0] ? d->id : "a dead letter", d->entry, c->dead);
        return -1;
    }
    env.attempt = 0;
    size_t len = 0;
    char *job = rp_job_envelope_encode_msgpack(&env, &len);
    rp_job_envelope_free(&env);
    if (job == NULL) {
        fprintf(stderr, "ragpool: out of memory\n");
        return -1;
    }
    /* The error row first: the retried job must be able to write its answer. */
    const char *params[] = {d->id};
    PGresult *res = rp_cli_exec(conn, "remove the error row",
                                "DELETE FROM public.conversations "
                                "WHERE job_id = $1::uuid AND status = 'error'",
                                1, params);
    if (res == NULL) {
        free(job);
        return -1;
    }
    PQclear(res);
    const char *argv[] = {"EVAL", MOVE_SCRIPT, "2", c->stream, c->dead, job, d->entry};
    size_t lens[] = {4,   strlen(MOVE_SCRIPT), 1, strlen(c->stream), strlen(c->dead),
                     len, strlen(d->entry)};
    int moved = 0;
    int rc = rc_call(c, 7, argv, lens, moved_cb, &moved);
    free(job);
    if (rc != 0) {
        fprintf(stderr, "ragpool dead retry: %s: %s (the dead letter is still there)\n", d->id,
                c->msg);
        return -1;
    }
    return moved;
}

int rp_cli_redis_dead_retry(const rp_cli_cfg_t *cfg, PGconn *conn, const char *id, int all)
{
    rclient_t c;
    if (rc_open(&c, cfg, "dead retry") != 0)
        return RP_CLI_FAIL;
    long requeued = 0;
    int failed = 0, found = 0;
    char start[80] = "-";
    for (;;) {
        /* Page through the dead stream, oldest first. */
        const char *argv[] = {"XRANGE", c.dead, start, "+", "COUNT", SCAN_PAGE};
        dead_page_t page = {0};
        if (rc_call(&c, 6, argv, NULL, dead_page_cb, &page) != 0 || page.oom) {
            fprintf(stderr, "ragpool: read dead jobs: %s\n", page.oom ? "out of memory" : c.msg);
            dead_page_free(&page);
            failed = 1;
            break;
        }
        for (size_t i = 0; i < page.n; i++) {
            const dead_entry_t *d = &page.e[i];
            if (!all && strcmp(d->id, id) != 0)
                continue;
            found = 1;
            int r = retry_one(&c, conn, d);
            if (r < 0)
                failed = 1;
            else
                requeued += r;
        }
        int more = page.n > 0 && page.last[0] != '\0';
        if (more)
            snprintf(start, sizeof(start), "(%s", page.last);
        dead_page_free(&page);
        if (!more || (!all && found))
            break;
    }
    rc_close(&c);
    printf("requeued %ld job%s\n", requeued, requeued == 1 ? "" : "s");
    if (id != NULL && !found && !failed) {
        fprintf(stderr, "ragpool dead retry: no dead job %s in %s:dead\n", id,
                cfg->redis_stream != NULL && cfg->redis_stream[0] ? cfg->redis_stream
                                                                  : "ragpool:jobs");
        return RP_CLI_FAIL;
    }
    return failed ? RP_CLI_FAIL : RP_CLI_OK;
}

/* ------------------------------------------------- status */

typedef struct depth_wait {
    int done, err;
    rp_queue_depth_t d;
} depth_wait_t;

static void depth_cb(void *data, int err, const rp_queue_depth_t *depth)
{
    depth_wait_t *w = data;
    w->done = 1;
    w->err = err;
    if (depth != NULL)
        w->d = *depth;
}

static void producer_closed(void *data)
{
    *(int *)data = 1;
}

int rp_cli_redis_status(const rp_cli_cfg_t *cfg, const char *group, rp_cli_redis_counts_t *out)
{
    memset(out, 0, sizeof(*out));
    if (cfg->redis_url == NULL || cfg->redis_url[0] == '\0') {
        fprintf(stderr, "ragpool status: REDIS_URL is required for the redis queue\n");
        return RP_CLI_FAIL;
    }
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "ragpool status: cannot create an event loop\n");
        return RP_CLI_FAIL;
    }
    rp_log_set_level(RP_LOG_WARN);
    /* The producer knows the queue's keys: its depth reading is the one
     * the dispatcher's /metrics shows. */
    rp_producer_opts_t o = {.queue = "redis",
                            .redis_url = cfg->redis_url,
                            .redis_stream = cfg->redis_stream,
                            .redis_group = group,
                            .timeout_ms = COMMAND_TIMEOUT_MS};
    rp_err_t err;
    rp_producer_t *p = rp_producer_new(&loop, &o, &err);
    if (p == NULL) {
        fprintf(stderr, "ragpool status: %s\n", err.msg);
        uv_loop_close(&loop);
        return RP_CLI_FAIL;
    }
    depth_wait_t w = {0};
    int rc = rp_producer_start(p);
    if (rc == 0)
        rc = rp_producer_depth(p, depth_cb, &w);
    while (rc == 0 && !w.done)
        uv_run(&loop, UV_RUN_ONCE);
    if (rc == 0)
        rc = w.err;
    int closed = 0;
    rp_producer_close(p, producer_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (rc != 0) {
        fprintf(stderr, "ragpool: read the Redis queue: %s\n", rp_strerror(rc));
        return RP_CLI_FAIL;
    }
    out->queued = w.d.queued;
    out->running = w.d.running;
    out->scheduled = w.d.scheduled;
    out->dead = w.d.dead;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long now_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    out->oldest_s =
        w.d.oldest_ms > 0 && now_ms > w.d.oldest_ms ? (double)(now_ms - w.d.oldest_ms) / 1000 : 0;
    return RP_CLI_OK;
}
