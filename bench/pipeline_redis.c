/*
 * pipeline_redis.c: bench-pipeline_redis, the Redis side of
 * `bench/pipeline --queue redis`: it fills, paces, watches and empties the
 * stream the worker reads, as pgbench and psql do for the Postgres queue.
 *
 *   bench-pipeline_redis bulk   URL STREAM N          add N chat jobs (pipelined XADDs)
 *   bench-pipeline_redis rate   URL STREAM RATE SECS  add RATE jobs/s for SECS, open loop
 *   bench-pipeline_redis sample URL STREAM GROUP      every 100 ms: "<epoch> <pending> <t|f>"
 *   bench-pipeline_redis ready  URL STREAM GROUP SECS wait until a consumer has read
 *   bench-pipeline_redis stats  URL STREAM            "<dead letters> <entries left>"
 *   bench-pipeline_redis reset  URL STREAM            delete the stream, delayed set, dead letters
 *
 * Jobs are what the Postgres runs enqueue (bench/sql/bulk_enqueue.sql,
 * enqueue.sql): a question about TON for the demo user, numbered so that
 * every question is distinct, written as the entry format of
 * docs/REDIS.md (`XADD <stream> * job <msgpack envelope>`, enqueued_at_ms
 * set so that conversations.latency_ms is enqueue -> insert).  bulk sends
 * its XADDs in pipelined groups of 1,000 (one round trip per group); rate
 * sends each 1 ms tick's share at once.  sample's columns match
 * bench/sql/sample.sql: jobs in flight (the consumer group's pending
 * entries) and whether any job is left (stream or delayed set non-empty).
 * `ready` returns once the group has a consumer or a connection is blocked
 * in XREADGROUP, i.e. the worker has sent its first claim (it claims only
 * once it is ready); run it with no other reader of the server.
 *
 * URL: redis://host[:port][/db] (the local stack's form; no password).
 * Exit status 0, 1 on a Redis error or timeout, 2 on usage errors.  A
 * blocking hiredis context: a command-line tool, not part of a loop.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <msgpack.h>

#define USER "00000000-0000-4000-8000-000000000001"
#define GROUP_SIZE 1000

static int usage(void)
{
    fprintf(stderr, "usage: bench-pipeline_redis bulk|rate|sample|ready|stats|reset URL STREAM "
                    "[N | RATE SECS | GROUP [SECS]]\n");
    return 2;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Connect to redis://host[:port][/db].  Returns owned or NULL (message on
 * stderr). */
static redisContext *connect_url(const char *url)
{
    char host[256];
    int port = 6379, db = 0;
    const char *p = url + 8, *colon, *slash;
    if (strncmp(url, "redis://", 8) != 0 || strchr(p, '@') != NULL) {
        fprintf(stderr, "bench-pipeline_redis: URL must be redis://host[:port][/db]\n");
        return NULL;
    }
    colon = strchr(p, ':');
    slash = strchr(p, '/');
    size_t hl = colon != NULL && (slash == NULL || colon < slash) ? (size_t)(colon - p)
                : slash != NULL                                   ? (size_t)(slash - p)
                                                                  : strlen(p);
    if (hl == 0 || hl >= sizeof(host)) {
        fprintf(stderr, "bench-pipeline_redis: bad host in %s\n", url);
        return NULL;
    }
    memcpy(host, p, hl);
    host[hl] = '\0';
    if (colon != NULL && (slash == NULL || colon < slash))
        port = atoi(colon + 1);
    if (slash != NULL)
        db = atoi(slash + 1);
    redisContext *c = redisConnect(host, port);
    if (c == NULL || c->err) {
        fprintf(stderr, "bench-pipeline_redis: %s: %s\n", url, c ? c->errstr : "out of memory");
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    if (db != 0) {
        redisReply *r = redisCommand(c, "SELECT %d", db);
        int ok = r != NULL && r->type != REDIS_REPLY_ERROR;
        if (r != NULL)
            freeReplyObject(r);
        if (!ok) {
            fprintf(stderr, "bench-pipeline_redis: SELECT %d failed\n", db);
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Queue one XADD of job number i (not waiting for the reply). */
static int append_job(redisContext *c, const char *stream, uint64_t i, const uint8_t seed[8])
{
    char id[40], msg[96];
    uint8_t b[16];
    memcpy(b, seed, 8);
    for (int k = 0; k < 8; k++)
        b[8 + k] = (uint8_t)(i >> (8 * (7 - k)));
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(id, sizeof(id),
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
    snprintf(msg, sizeof(msg), "What is TON token and how do I stake it? #%" PRIu64, i);

    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    pack_cstr(&pk, "id");
    pack_cstr(&pk, id);
    pack_cstr(&pk, "kind");
    pack_cstr(&pk, "chat");
    pack_cstr(&pk, "payload");
    msgpack_pack_map(&pk, 3);
    pack_cstr(&pk, "user_id");
    pack_cstr(&pk, USER);
    pack_cstr(&pk, "message");
    pack_cstr(&pk, msg);
    pack_cstr(&pk, "options");
    msgpack_pack_map(&pk, 0);
    pack_cstr(&pk, "attempt");
    msgpack_pack_int(&pk, 0);
    pack_cstr(&pk, "enqueued_at_ms");
    msgpack_pack_int64(&pk, now_ms());
    int rc = redisAppendCommand(c, "XADD %s * job %b", stream, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return rc == REDIS_OK ? 0 : -1;
}

/* Read n queued replies; -1 on the first error. */
static int read_replies(redisContext *c, long n)
{
    for (long k = 0; k < n; k++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || r == NULL) {
            fprintf(stderr, "bench-pipeline_redis: %s\n", c->errstr);
            return -1;
        }
        int bad = r->type == REDIS_REPLY_ERROR;
        if (bad)
            fprintf(stderr, "bench-pipeline_redis: XADD: %s\n", r->str);
        freeReplyObject(r);
        if (bad)
            return -1;
    }
    return 0;
}

static int seed_of(uint8_t seed[8])
{
    if (getrandom(seed, 8, 0) != 8) {
        fprintf(stderr, "bench-pipeline_redis: getrandom failed\n");
        return -1;
    }
    return 0;
}

static int cmd_bulk(redisContext *c, const char *stream, long n)
{
    uint8_t seed[8];
    if (seed_of(seed) != 0)
        return 1;
    for (long done = 0; done < n;) {
        long k = n - done < GROUP_SIZE ? n - done : GROUP_SIZE;
        for (long j = 0; j < k; j++)
            if (append_job(c, stream, (uint64_t)(done + j + 1), seed) != 0)
                return 1;
        if (read_replies(c, k) != 0)
            return 1;
        done += k;
    }
    printf("%ld\n", n);
    return 0;
}

static int cmd_rate(redisContext *c, const char *stream, double rate, double secs)
{
    uint8_t seed[8];
    if (seed_of(seed) != 0)
        return 1;
    double t0 = now_s();
    long sent = 0;
    for (;;) {
        double el = now_s() - t0;
        if (el >= secs)
            break;
        long due = (long)(el * rate) + 1;
        long k = due - sent;
        for (long j = 0; j < k; j++)
            if (append_job(c, stream, (uint64_t)(sent + j + 1), seed) != 0)
                return 1;
        if (k > 0 && read_replies(c, k) != 0)
            return 1;
        sent += k;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    printf("%ld\n", sent);
    return 0;
}

static long long int_reply(redisContext *c, const char *fmt, const char *a, const char *b)
{
    redisReply *r = redisCommand(c, fmt, a, b);
    long long v = -1;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

/* Pending entries of the group (0 when it does not exist yet). */
static long long pending(redisContext *c, const char *stream, const char *group)
{
    redisReply *r = redisCommand(c, "XPENDING %s %s", stream, group);
    long long v = 0;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        v = r->element[0]->integer;
    if (r != NULL)
        freeReplyObject(r);
    return v;
}

static int cmd_sample(redisContext *c, const char *stream, const char *group)
{
    char delayed[512];
    snprintf(delayed, sizeof(delayed), "%s:delayed", stream);
    for (;;) {
        double t = now_s();
        long long p = pending(c, stream, group);
        long long left = int_reply(c, "XLEN %s", stream, NULL) + int_reply(c, "ZCARD %s", delayed, NULL);
        if (c->err)
            return 1;
        printf("%.3f %lld %s\n", t, p, left > 0 ? "t" : "f");
        fflush(stdout);
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
}

static int cmd_ready(redisContext *c, const char *stream, const char *group, double secs)
{
    double t0 = now_s();
    while (now_s() - t0 < secs) {
        /* A consumer exists once it was handed an entry (Redis 7.0 does not
         * create one for a read of an empty stream); a blocked read shows
         * in CLIENT LIST as the connection's last command. */
        redisReply *r = redisCommand(c, "XINFO CONSUMERS %s %s", stream, group);
        int ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements > 0;
        if (r != NULL)
            freeReplyObject(r);
        r = redisCommand(c, "CLIENT LIST");
        ok = ok || (r != NULL && r->type == REDIS_REPLY_STRING && strstr(r->str, "cmd=xreadgroup"));
        if (r != NULL)
            freeReplyObject(r);
        if (ok)
            return 0;
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "bench-pipeline_redis: no consumer read %s within %.0f s\n", stream, secs);
    return 1;
}

static int cmd_stats(redisContext *c, const char *stream)
{
    char dead[512], delayed[512];
    snprintf(dead, sizeof(dead), "%s:dead", stream);
    snprintf(delayed, sizeof(delayed), "%s:delayed", stream);
    long long d = int_reply(c, "XLEN %s", dead, NULL);
    long long left = int_reply(c, "XLEN %s", stream, NULL) + int_reply(c, "ZCARD %s", delayed, NULL);
    if (d < 0 || left < 0)
        return 1;
    printf("%lld %lld\n", d, left);
    return 0;
}

static int cmd_reset(redisContext *c, const char *stream)
{
    redisReply *r = redisCommand(c, "DEL %s %s:delayed %s:dead", stream, stream, stream);
    int ok = r != NULL && r->type == REDIS_REPLY_INTEGER;
    if (r != NULL)
        freeReplyObject(r);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 4)
        return usage();
    const char *cmd = argv[1], *stream = argv[3];
    int rc;
    if ((strcmp(cmd, "bulk") == 0 && argc != 5) || (strcmp(cmd, "rate") == 0 && argc != 6) ||
        (strcmp(cmd, "sample") == 0 && argc != 5) || (strcmp(cmd, "ready") == 0 && argc != 6) ||
        ((strcmp(cmd, "stats") == 0 || strcmp(cmd, "reset") == 0) && argc != 4))
        return usage();
    redisContext *c = connect_url(argv[2]);
    if (c == NULL)
        return 1;
    if (strcmp(cmd, "bulk") == 0)
        rc = cmd_bulk(c, stream, atol(argv[4]));
    else if (strcmp(cmd, "rate") == 0)
        rc = cmd_rate(c, stream, atof(argv[4]), atof(argv[5]));
    else if (strcmp(cmd, "sample") == 0)
        rc = cmd_sample(c, stream, argv[4]);
    else if (strcmp(cmd, "ready") == 0)
        rc = cmd_ready(c, stream, argv[4], atof(argv[5]));
    else if (strcmp(cmd, "stats") == 0)
        rc = cmd_stats(c, stream);
    else if (strcmp(cmd, "reset") == 0)
        rc = cmd_reset(c, stream);
    else
        rc = usage();
    redisFree(c);
    return rc;
}
