/*
 * test_queue.c: backend-neutral enqueueing and queue inspection for
 * integration tests, and a private redis-server (see test_queue.h).
 *
 * On Redis the helpers write what any client writes (docs/REDIS.md): one
 * stream entry with one field, job, holding the msgpack envelope.  The
 * envelope is packed here from JSON with msgpack-c's packer rather than
 * with the job codec, so that a test can also enqueue payloads the codec
 * would refuse (poison); reading dead letters back uses the codec
 * (rp_job_envelope_decode_msgpack), which names the job even when its
 * payload is malformed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <msgpack.h>

#include "job.h"
#include "test_queue.h"

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int r;
    va_start(ap, fmt);
    r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0) {
        fail_msg("out of memory");
    }
    return s;
}

const char *rp_test_queue_name(void)
{
    const char *q = getenv("RP_TEST_QUEUE");
    if (q == NULL || q[0] == '\0' || strcmp(q, "postgres") == 0) {
        return "postgres";
    }
    if (strcmp(q, "redis") == 0) {
        return "redis";
    }
    fail_msg("RP_TEST_QUEUE=%s: expected postgres or redis", q);
    return NULL;
}

int rp_test_queue_is_redis(void)
{
    return strcmp(rp_test_queue_name(), "redis") == 0;
}

char *rp_test_uuid(void)
{
    unsigned char b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    if (f == NULL || fread(b, 1, sizeof b, f) != sizeof b) {
        fail_msg("cannot read /dev/urandom");
    }
    fclose(f);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    return xasprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                     b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
                     b[13], b[14], b[15]);
}

static long long wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* ------------------------------------------------------------ Redis link */

/* Split redis://host:port[/db] (no user information: the stack has none). */
static void parse_url(const char *url, char *host, size_t hn, int *port, int *db)
{
    const char *p = strncmp(url, "redis://", 8) == 0 ? url + 8 : NULL;
    const char *colon, *slash;
    if (p == NULL || strchr(p, '@') != NULL) {
        fail_msg("the test helpers take redis://host:port[/db] URLs, not %s", url);
    }
    colon = strchr(p, ':');
    slash = strchr(p, '/');
    *port = 6379;
    *db = 0;
    if (colon != NULL && (slash == NULL || colon < slash)) {
        snprintf(host, hn, "%.*s", (int)(colon - p), p);
        *port = atoi(colon + 1);
    } else {
        snprintf(host, hn, "%.*s", slash ? (int)(slash - p) : (int)strlen(p), p);
    }
    if (slash != NULL) {
        *db = atoi(slash + 1);
    }
}

static redisContext *connect_url(const char *url, long timeout_ms)
{
    char host[128];
    int port, db;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c;
    parse_url(url, host, sizeof host, &port, &db);
    c = redisConnectWithTimeout(host, port, tv);
    if (c == NULL || c->err) {
        if (c != NULL) {
            redisFree(c);
        }
        return NULL;
    }
    redisSetTimeout(c, (struct timeval){10, 0});
    if (db != 0) {
        redisReply *r = redisCommand(c, "SELECT %d", db);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            if (r != NULL) {
                freeReplyObject(r);
            }
            redisFree(c);
            return NULL;
        }
        freeReplyObject(r);
    }
    return c;
}

redisContext *rp_test_redis(rp_test_ctx_t *t)
{
    if (t->redis_url == NULL) {
        fail_msg("test %s does not use the redis queue", t->name);
    }
    if (t->rh == NULL) {
        t->rh = connect_url(t->redis_url, 5000);
        if (t->rh == NULL) {
            fail_msg("cannot connect to Redis at %s", t->redis_url);
        }
    }
    return t->rh;
}

void rp_test_redis_disconnect(rp_test_ctx_t *t)
{
    if (t->rh != NULL) {
        redisFree(t->rh);
        t->rh = NULL;
    }
}

redisReply *rp_test_redis_cmd(rp_test_ctx_t *t, const char *fmt, ...)
{
    va_list ap;
    redisReply *r;
    redisContext *c = rp_test_redis(t);
    va_start(ap, fmt);
    r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (r == NULL) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s", c->errstr);
        rp_test_redis_disconnect(t);
        fail_msg("Redis command '%s' failed: %s", fmt, msg);
    }
    return r;
}

static long long redis_int(rp_test_ctx_t *t, const char *fmt, const char *key)
{
    redisReply *r = rp_test_redis_cmd(t, fmt, key);
    long long v;
    if (r->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "Redis: '%s' %s: reply type %d %s\n", fmt, key, r->type,
                r->str ? r->str : "");
        freeReplyObject(r);
        fail_msg("expected an integer reply");
    }
    v = r->integer;
    freeReplyObject(r);
    return v;
}

void rp_test_redis_cleanup(rp_test_ctx_t *t)
{
    redisContext *c;
    char cursor[32] = "0";
    if (t->stream == NULL || t->redis_url == NULL) {
        return;
    }
    rp_test_redis_disconnect(t);
    c = connect_url(t->redis_url, 1000);
    if (c == NULL) {
        return; /* a private server already stopped: its files go with the tmpdir */
    }
    do {
        redisReply *r = redisCommand(c, "SCAN %s MATCH %s:idem:* COUNT 1000", cursor, t->stream);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r != NULL) {
                freeReplyObject(r);
            }
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            redisReply *d = redisCommand(c, "DEL %s", r->element[1]->element[i]->str);
            if (d != NULL) {
                freeReplyObject(d);
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    {
        redisReply *d =
            redisCommand(c, "DEL %s %s:delayed %s:dead", t->stream, t->stream, t->stream);
        if (d != NULL) {
            freeReplyObject(d);
        }
    }
    redisFree(c);
}

/* ------------------------------------------------------------ envelopes */

static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* JSON value -> msgpack (objects are maps with string keys). */
static void pack_json(msgpack_packer *pk, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        msgpack_pack_map(pk, json_object_size(v));
        json_object_foreach((json_t *)v, k, x)
        {
            pack_str(pk, k, strlen(k));
            pack_json(pk, x);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        msgpack_pack_array(pk, json_array_size(v));
        json_array_foreach(v, i, x)
        {
            pack_json(pk, x);
        }
        break;
    }
    case JSON_STRING:
        pack_str(pk, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, (int64_t)json_integer_value(v));
        break;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(v));
        break;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        break;
    case JSON_NULL:
        msgpack_pack_nil(pk);
        break;
    }
}

/* The envelope of docs/REDIS.md around payload (JSON), into sb. */
static void pack_envelope(msgpack_sbuffer *sb, const char *id, const json_t *payload,
                          int max_attempts)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, max_attempts > 0 ? 6 : 5);
    pack_str(&pk, "id", 2);
    pack_str(&pk, id, strlen(id));
    pack_str(&pk, "kind", 4);
    pack_str(&pk, "chat", 4);
    pack_str(&pk, "payload", 7);
    pack_json(&pk, payload);
    if (max_attempts > 0) {
        pack_str(&pk, "max_attempts", 12);
        msgpack_pack_int(&pk, max_attempts);
    }
    pack_str(&pk, "attempt", 7);
    msgpack_pack_int(&pk, 0);
    pack_str(&pk, "enqueued_at_ms", 14);
    msgpack_pack_int64(&pk, wall_ms());
}

/* Append an XADD of envelope(id, payload) to the helper connection's
 * pipeline (the reply is read by the caller). */
static void append_xadd(rp_test_ctx_t *t, const char *id, const json_t *payload, int max_attempts)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_envelope(&sb, id, payload, max_attempts);
    if (redisAppendCommand(rp_test_redis(t), "XADD %s * job %b", t->stream, sb.data, sb.size) !=
        REDIS_OK) {
        fail_msg("cannot queue an XADD");
    }
    msgpack_sbuffer_destroy(&sb);
}

static void read_xadd_reply(rp_test_ctx_t *t)
{
    redisReply *r = NULL;
    if (redisGetReply(rp_test_redis(t), (void **)&r) != REDIS_OK || r == NULL) {
        fail_msg("XADD: no reply from Redis");
    }
    if (r->type != REDIS_REPLY_STRING) {
        fprintf(stderr, "XADD answered type %d: %s\n", r->type, r->str ? r->str : "");
        freeReplyObject(r);
        fail_msg("XADD failed");
    }
    freeReplyObject(r);
}

static json_t *parse_json(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
    if (v == NULL) {
        fail_msg("not JSON (%s): %.200s", e.text, text);
    }
    return v;
}

/* ------------------------------------------------------------ enqueueing */

char *rp_test_enqueue(rp_test_ctx_t *t, const rp_test_job_t *job)
{
    char *id = job->job_id != NULL ? strdup(job->job_id) : rp_test_uuid();
    const char *opts = job->options_json != NULL ? job->options_json : "{}";
    if (t->stream == NULL) {
        char *user = rp_test_sql_literal(t->db, job->user_id);
        char *msg = rp_test_sql_literal(t->db, job->message);
        char *o = rp_test_sql_literal(t->db, opts);
        char *max = job->max_attempts > 0 ? xasprintf("%d", job->max_attempts) : strdup("null");
        char *got = rp_test_sql_text(
            t->db,
            "select ragpool.enqueue('chat', jsonb_build_object('user_id', %s::text, "
            "'message', %s::text, 'options', %s::jsonb), job_id => '%s'::uuid, "
            "max_attempts => %s)",
            user, msg, o, id, max);
        assert_non_null(got);
        assert_string_equal(got, id);
        free(got);
        free(user);
        free(msg);
        free(o);
        free(max);
        return id;
    }
    json_t *payload = json_pack("{s:s, s:s, s:o}", "user_id", job->user_id, "message",
                                job->message, "options", parse_json(opts));
    assert_non_null(payload);
    append_xadd(t, id, payload, job->max_attempts);
    read_xadd_reply(t);
    json_decref(payload);
    return id;
}

char *rp_test_ask(rp_test_ctx_t *t, const char *user_id, const char *message)
{
    rp_test_job_t j = {.user_id = user_id, .message = message};
    return rp_test_enqueue(t, &j);
}

void rp_test_enqueue_table(rp_test_ctx_t *t, const char *table)
{
    PGresult *res;
    int n;
    if (t->stream == NULL) {
        rp_test_sql_exec(t->db,
                         "select ragpool.enqueue_chat(user_id::text, message, '{}'::jsonb, "
                         "job_id) from %s",
                         table);
        return;
    }
    res = rp_test_sql_query(t->db, "select job_id::text, user_id::text, message from %s", table);
    n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        json_t *payload = json_pack("{s:s, s:s, s:{}}", "user_id", PQgetvalue(res, i, 1),
                                    "message", PQgetvalue(res, i, 2), "options");
        append_xadd(t, PQgetvalue(res, i, 0), payload, 0);
        json_decref(payload);
    }
    for (int i = 0; i < n; i++) {
        read_xadd_reply(t);
    }
    PQclear(res);
}

char *rp_test_enqueue_payload(rp_test_ctx_t *t, const char *payload_json)
{
    char *id = rp_test_uuid();
    json_t *payload = parse_json(payload_json);
    if (t->stream == NULL) {
        char *lit = rp_test_sql_literal(t->db, payload_json);
        char *got = rp_test_sql_text(
            t->db, "select ragpool.enqueue('chat', %s::jsonb, job_id => '%s'::uuid)", lit, id);
        assert_non_null(got);
        free(got);
        free(lit);
    } else {
        append_xadd(t, id, payload, 0);
        read_xadd_reply(t);
    }
    json_decref(payload);
    return id;
}

char *rp_test_redis_add_raw(rp_test_ctx_t *t, const char *bytes, size_t len)
{
    redisReply *r;
    char *id;
    assert_non_null(t->stream);
    if (bytes != NULL) {
        r = rp_test_redis_cmd(t, "XADD %s * job %b", t->stream, bytes, len);
    } else {
        r = rp_test_redis_cmd(t, "XADD %s * other %s", t->stream, "field");
    }
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    id = strdup(r->str);
    freeReplyObject(r);
    return id;
}

/* ------------------------------------------------------------ dead letters */

/* A field of a stream entry [id, [k, v, ...]], or NULL. */
static const redisReply *entry_field(const redisReply *entry, const char *name)
{
    const redisReply *f;
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2) {
        return NULL;
    }
    f = entry->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if (f->element[i]->str != NULL && strcmp(f->element[i]->str, name) == 0) {
            return f->element[i + 1];
        }
    }
    return NULL;
}

static redisReply *dead_entries(rp_test_ctx_t *t)
{
    redisReply *r = rp_test_redis_cmd(t, "XRANGE %s:dead - +", t->stream);
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        fail_msg("XRANGE %s:dead did not answer an array", t->stream);
    }
    return r;
}

long long rp_test_dead_count(rp_test_ctx_t *t, const char *reason)
{
    redisReply *r;
    long long n = 0;
    if (t->stream == NULL) {
        if (reason == NULL) {
            return rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs");
        }
        return rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs where reason = '%s'",
                               reason);
    }
    r = dead_entries(t);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *why = entry_field(r->element[i], "reason");
        if (reason == NULL || (why != NULL && why->str != NULL && strcmp(why->str, reason) == 0)) {
            n++;
        }
    }
    freeReplyObject(r);
    return n;
}

int rp_test_dead_get(rp_test_ctx_t *t, const char *job_id, char **reason, char **error,
                     int *attempts)
{
    redisReply *r;
    int found = 0;
    if (t->stream == NULL) {
        PGresult *res = rp_test_sql_query(
            t->db, "select reason, coalesce(last_error, ''), attempts from ragpool.dead_jobs "
                   "where id = '%s'",
            job_id);
        if (PQntuples(res) == 1) {
            found = 1;
            if (reason != NULL) {
                *reason = strdup(PQgetvalue(res, 0, 0));
            }
            if (error != NULL) {
                *error = strdup(PQgetvalue(res, 0, 1));
            }
            if (attempts != NULL) {
                *attempts = atoi(PQgetvalue(res, 0, 2));
            }
        }
        PQclear(res);
        return found;
    }
    r = dead_entries(t);
    for (size_t i = 0; i < r->elements && !found; i++) {
        const redisReply *job = entry_field(r->element[i], "job");
        const redisReply *why = entry_field(r->element[i], "reason");
        const redisReply *err = entry_field(r->element[i], "error");
        rp_job_envelope_t env;
        rp_err_t e;
        int ok;
        if (job == NULL || job->str == NULL) {
            continue;
        }
        memset(&env, 0, sizeof env);
        ok = rp_job_envelope_decode_msgpack(job->str, job->len, &env, &e);
        (void)ok;
        if (strcmp(env.id, job_id) == 0) {
            found = 1;
            if (reason != NULL) {
                *reason = strdup(why != NULL && why->str != NULL ? why->str : "");
            }
            if (error != NULL) {
                *error = strdup(err != NULL && err->str != NULL ? err->str : "");
            }
            if (attempts != NULL) {
                /* The attempts field (the attempts the job consumed); the
                 * envelope's attempt otherwise. */
                const redisReply *at = entry_field(r->element[i], "attempts");
                *attempts = at != NULL && at->str != NULL ? atoi(at->str) : env.attempt;
            }
        }
        rp_job_envelope_free(&env);
    }
    freeReplyObject(r);
    return found;
}

/* ------------------------------------------------------------ counts */

static long long redis_pending(rp_test_ctx_t *t)
{
    redisReply *r = rp_test_redis_cmd(t, "XPENDING %s %s", t->stream, "ragpool");
    long long n = 0;
    /* [count, min, max, consumers], or NOGROUP before any worker started. */
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER) {
        n = r->element[0]->integer;
    }
    freeReplyObject(r);
    return n;
}

rp_test_queue_counts_t rp_test_queue_counts(rp_test_ctx_t *t)
{
    rp_test_queue_counts_t c = {0, 0, 0};
    if (t->stream == NULL) {
        c.queued = rp_test_sql_int(
            t->db, "select count(*) from ragpool.jobs where state = 'queued' and run_at <= now()");
        c.delayed = rp_test_sql_int(
            t->db, "select count(*) from ragpool.jobs where state = 'queued' and run_at > now()");
        c.running =
            rp_test_sql_int(t->db, "select count(*) from ragpool.jobs where state = 'running'");
        return c;
    }
    c.running = redis_pending(t);
    c.queued = redis_int(t, "XLEN %s", t->stream) - c.running;
    {
        char *key = xasprintf("%s:delayed", t->stream);
        c.delayed = redis_int(t, "ZCARD %s", key);
        free(key);
    }
    return c;
}

long long rp_test_queue_total(rp_test_ctx_t *t)
{
    rp_test_queue_counts_t c = rp_test_queue_counts(t);
    return c.queued + c.delayed + c.running;
}

int rp_test_wait_running(rp_test_ctx_t *t, long timeout_ms, long long n)
{
    long long deadline = rp_test_now_ms() + timeout_ms;
    for (;;) {
        if (rp_test_queue_counts(t).running >= n) {
            return 1;
        }
        if (rp_test_now_ms() >= deadline) {
            return 0;
        }
        rp_test_sleep_ms(100);
    }
}

long long rp_test_queued_fresh(rp_test_ctx_t *t)
{
    redisReply *r;
    long long n = 0;
    if (t->stream == NULL) {
        return rp_test_sql_int(t->db, "select count(*) from ragpool.jobs where state = 'queued' "
                                      "and attempts = 0 and locked_by is null");
    }
    if (redis_pending(t) != 0) {
        return 0;
    }
    r = rp_test_redis_cmd(t, "XRANGE %s - +", t->stream);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *job = entry_field(r->element[i], "job");
        rp_job_envelope_t env;
        rp_err_t e;
        memset(&env, 0, sizeof env);
        if (job != NULL && job->str != NULL &&
            rp_job_envelope_decode_msgpack(job->str, job->len, &env, &e) == 0 &&
            env.attempt == 0) {
            n++;
        }
        rp_job_envelope_free(&env);
    }
    freeReplyObject(r);
    return n;
}

/* ------------------------------------------------------------ redis-server */

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int port, fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Start redis-server for s (port, dir set); 0 once it answers PING, -1 when
 * it exited (e.g. the port was taken). */
static int server_launch(rp_test_ctx_t *t, rp_test_redis_server_t *s)
{
    char port[16];
    long long deadline;
    snprintf(port, sizeof port, "%d", s->port);
    const char *argv[] = {"redis-server",
                          "--bind",
                          "127.0.0.1",
                          "--port",
                          port,
                          "--dir",
                          s->dir,
                          "--appendonly",
                          "yes",
                          "--appendfsync",
                          "everysec",
                          "--maxmemory-policy",
                          "noeviction",
                          "--save",
                          "",
                          "--daemonize",
                          "no",
                          NULL};
    s->proc = rp_test_proc_start("redis-server", argv, NULL);
    rp_test_ctx_adopt(t, s->proc);
    deadline = rp_test_now_ms() + 20000;
    while (rp_test_now_ms() < deadline) {
        redisContext *c;
        if (!rp_test_proc_running(s->proc)) {
            return -1;
        }
        c = connect_url(s->url, 500);
        if (c != NULL) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r != NULL && r->type == REDIS_REPLY_STATUS;
            if (r != NULL) {
                freeReplyObject(r);
            }
            redisFree(c);
            if (ok) {
                return 0;
            }
        }
        rp_test_sleep_ms(50);
    }
    rp_test_proc_dump_log(s->proc, stderr, 4000);
    fail_msg("redis-server on port %d did not answer PING", s->port);
    return -1;
}

rp_test_redis_server_t *rp_test_redis_server_start(rp_test_ctx_t *t)
{
    static int seq;
    rp_test_redis_server_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->dir = xasprintf("%s/redis-%d", rp_test_tmpdir(), ++seq);
    if (mkdir(s->dir, 0700) != 0) {
        fail_msg("cannot create %s", s->dir);
    }
    for (int try = 0; try < 5; try++) {
        s->port = free_port();
        free(s->url);
        s->url = xasprintf("redis://127.0.0.1:%d/0", s->port);
        if (server_launch(t, s) == 0) {
            return s;
        }
    }
    fail_msg("redis-server did not start after 5 ports");
    return NULL;
}

void rp_test_redis_server_shutdown(rp_test_redis_server_t *s)
{
    redisContext *c = connect_url(s->url, 2000);
    assert_non_null(c);
    redisReply *r = redisCommand(c, "SHUTDOWN");
    /* A successful SHUTDOWN closes the connection without a reply. */
    if (r != NULL) {
        fprintf(stderr, "SHUTDOWN answered: %s\n", r->str ? r->str : "?");
        freeReplyObject(r);
    }
    redisFree(c);
    if (rp_test_proc_wait(s->proc, 20000) < 0) {
        fail_msg("redis-server did not exit after SHUTDOWN");
    }
    s->proc = NULL;
}

void rp_test_redis_server_restart(rp_test_ctx_t *t, rp_test_redis_server_t *s)
{
    /* The same port (the workers' URL); retried briefly should it linger. */
    for (int try = 0; try < 20; try++) {
        if (server_launch(t, s) == 0) {
            return;
        }
        rp_test_sleep_ms(250);
    }
    fail_msg("redis-server did not restart on port %d", s->port);
}

void rp_test_redis_server_free(rp_test_redis_server_t *s)
{
    if (s == NULL) {
        return;
    }
    free(s->dir);
    free(s->url);
    free(s);
}
