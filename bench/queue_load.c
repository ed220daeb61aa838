/*
 * queue_load.c: bench-queue_load, the bulk loader of bench/queue for the
 * Redis Streams queue.
 *
 *   bench-queue_load --url redis://[:password@]host[:port][/db] --stream NAME
 *                    --count N [--kind noop]
 *
 * Adds N jobs of one kind with an empty payload to a stream, in the entry
 * format of docs/REDIS.md: `XADD <stream> * job <envelope>`, where the
 * envelope is the msgpack map {"id", "kind", "payload", "max_attempts",
 * "attempt", "enqueued_at_ms"}.  Every XADD travels in one pipelined
 * MULTI ... EXEC, so the whole batch becomes visible to consumers at once,
 * like a bulk INSERT committed in one transaction: a worker that is already
 * waiting sees all N jobs at the same moment, and bench/queue starts its
 * clock when this program returns.  Job ids are uuids (version 4 form) made
 * of 8 random bytes and a counter, so runs never collide.
 *
 * Prints the number of entries added on stdout; exit status 0 on success,
 * 1 on a Redis or encoding error, 2 on usage errors.  A blocking hiredis
 * context is right here: this is a one-shot command-line tool, not part of
 * an event loop.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <msgpack.h>

#define LOAD_MAX_COUNT 100000000L

typedef struct load_opts {
    char host[256];
    int port;
    char password[256]; /* "" when none */
    int db;
    const char *stream; /* borrowed from argv */
    const char *kind;   /* borrowed from argv */
    long count;
} load_opts_t;

static int usage(void)
{
    fprintf(stderr, "usage: bench-queue_load --url redis://[:password@]host[:port][/db] "
                    "--stream NAME --count N [--kind noop]\n");
    return 2;
}

/* Parse redis://[[user]:password@]host[:port][/db] into o.  Returns 0, or -1
 * with a message on stderr.  Reads url only (borrowed). */
static int parse_url(const char *url, load_opts_t *o)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0) {
        fprintf(stderr, "bench-queue_load: --url must start with redis://\n");
        return -1;
    }
    p += 8;
    const char *at = strchr(p, '@');
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon != NULL ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= sizeof(o->password)) {
            fprintf(stderr, "bench-queue_load: password too long\n");
            return -1;
        }
        memcpy(o->password, pw, n);
        o->password[n] = '\0';
        p = at + 1;
    }
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof(o->host)) {
        fprintf(stderr, "bench-queue_load: bad host in --url\n");
        return -1;
    }
    memcpy(o->host, p, hl);
    o->host[hl] = '\0';
    p += hl;
    o->port = 6379;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port < 1 || port > 65535) {
            fprintf(stderr, "bench-queue_load: bad port in --url\n");
            return -1;
        }
        o->port = (int)port;
        p = end;
    }
    o->db = 0;
    if (*p == '/' && p[1] != '\0') {
        char *end;
        long db = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end != '\0' || db < 0 || db > 1000000) {
            fprintf(stderr, "bench-queue_load: bad database index in --url\n");
            return -1;
        }
        o->db = (int)db;
    } else if (*p != '\0' && strcmp(p, "/") != 0) {
        fprintf(stderr, "bench-queue_load: unexpected text in --url: %s\n", p);
        return -1;
    }
    return 0;
}

static int pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) | msgpack_pack_str_body(pk, s, n);
}

/* Encode the envelope of job number i into sb (cleared first).  prefix is
 * 8 random bytes; the id is <prefix as 8-4-4 hex with the version and
 * variant nibbles set>-<i as 12 hex digits>.  Returns 0 or -1 (out of
 * memory). */
static int encode_job(msgpack_sbuffer *sb, const unsigned char prefix[8], uint64_t i,
                      const char *kind, int64_t now_ms)
{
    char id[37];
    snprintf(id, sizeof(id), "%02x%02x%02x%02x-%02x%02x-4%x%02x-8%03" PRIx64 "-%012" PRIx64,
             prefix[0], prefix[1], prefix[2], prefix[3], prefix[4], prefix[5],
             (unsigned)(prefix[6] & 0x0f), prefix[7], (uint64_t)(i >> 48) & 0xfff,
             i & UINT64_C(0xffffffffffff));
    msgpack_sbuffer_clear(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, 6);
    rc |= pack_cstr(&pk, "id") | pack_cstr(&pk, id);
    rc |= pack_cstr(&pk, "kind") | pack_cstr(&pk, kind);
    rc |= pack_cstr(&pk, "payload") | msgpack_pack_map(&pk, 0);
    rc |= pack_cstr(&pk, "max_attempts") | msgpack_pack_int(&pk, 5);
    rc |= pack_cstr(&pk, "attempt") | msgpack_pack_int(&pk, 0);
    rc |= pack_cstr(&pk, "enqueued_at_ms") | msgpack_pack_int64(&pk, now_ms);
    return rc == 0 ? 0 : -1;
}

/* Read one reply and check it; returns 0, or -1 with a message on stderr.
 * want is REDIS_REPLY_STATUS (QUEUED/OK) or REDIS_REPLY_ARRAY (EXEC). */
static int expect_reply(redisContext *c, int want, const char *what, size_t *nelem)
{
    void *r = NULL;
    if (redisGetReply(c, &r) != REDIS_OK || r == NULL) {
        fprintf(stderr, "bench-queue_load: %s: %s\n", what, c->errstr[0] ? c->errstr : "no reply");
        return -1;
    }
    redisReply *rep = r;
    int rc = 0;
    if (rep->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "bench-queue_load: %s: %s\n", what, rep->str);
        rc = -1;
    } else if (rep->type != want) {
        fprintf(stderr, "bench-queue_load: %s: unexpected reply type %d\n", what, rep->type);
        rc = -1;
    } else if (nelem != NULL) {
        *nelem = rep->elements;
    }
    freeReplyObject(rep);
    return rc;
}

int main(int argc, char **argv)
{
    load_opts_t o;
    memset(&o, 0, sizeof(o));
    o.kind = "noop";
    o.count = -1;
    const char *url = NULL;
    for (int a = 1; a < argc; a++) {
        if (a + 1 >= argc)
            return usage();
        if (strcmp(argv[a], "--url") == 0) {
            url = argv[++a];
        } else if (strcmp(argv[a], "--stream") == 0) {
            o.stream = argv[++a];
        } else if (strcmp(argv[a], "--kind") == 0) {
            o.kind = argv[++a];
        } else if (strcmp(argv[a], "--count") == 0) {
            char *end;
            errno = 0;
            o.count = strtol(argv[++a], &end, 10);
            if (errno != 0 || *end != '\0' || o.count < 1 || o.count > LOAD_MAX_COUNT)
                return usage();
        } else {
            return usage();
        }
    }
    if (url == NULL || o.stream == NULL || o.stream[0] == '\0' || o.count < 1 || o.kind[0] == '\0')
        return usage();
    if (parse_url(url, &o) != 0)
        return 2;

    int status = 1;
    unsigned char prefix[8];
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(o.host, o.port, tv);
    if (c == NULL || c->err) {
        fprintf(stderr, "bench-queue_load: connect %s:%d: %s\n", o.host, o.port,
                c != NULL ? c->errstr : "out of memory");
        goto out_ctx;
    }
    if (getrandom(prefix, sizeof(prefix), 0) != (ssize_t)sizeof(prefix)) {
        fprintf(stderr, "bench-queue_load: getrandom: %s\n", strerror(errno));
        goto out_ctx;
    }
    if (o.password[0] != '\0') {
        redisAppendCommand(c, "AUTH %s", o.password);
        if (expect_reply(c, REDIS_REPLY_STATUS, "AUTH", NULL) != 0)
            goto out_ctx;
    }
    if (o.db != 0) {
        redisAppendCommand(c, "SELECT %d", o.db);
        if (expect_reply(c, REDIS_REPLY_STATUS, "SELECT", NULL) != 0)
            goto out_ctx;
    }

    struct timeval now;
    gettimeofday(&now, NULL);
    int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_usec / 1000;

    /* Queue everything in hiredis' output buffer, then read the replies:
     * one round trip for the whole batch.  The buffer holds N entries of
     * about 120 bytes, a few MB even for a million jobs. */
    if (redisAppendCommand(c, "MULTI") != REDIS_OK)
        goto out_oom;
    for (long i = 0; i < o.count; i++) {
        if (encode_job(&sb, prefix, (uint64_t)i, o.kind, now_ms) != 0)
            goto out_oom;
        const char *av[5] = {"XADD", o.stream, "*", "job", sb.data};
        size_t al[5] = {4, strlen(o.stream), 1, 3, sb.size};
        if (redisAppendCommandArgv(c, 5, av, al) != REDIS_OK)
            goto out_oom;
    }
    if (redisAppendCommand(c, "EXEC") != REDIS_OK)
        goto out_oom;

    if (expect_reply(c, REDIS_REPLY_STATUS, "MULTI", NULL) != 0)
        goto out_ctx;
    for (long i = 0; i < o.count; i++) {
        if (expect_reply(c, REDIS_REPLY_STATUS, "XADD", NULL) != 0)
            goto out_ctx;
    }
    size_t added = 0;
    if (expect_reply(c, REDIS_REPLY_ARRAY, "EXEC", &added) != 0)
        goto out_ctx;
    if (added != (size_t)o.count) {
        fprintf(stderr, "bench-queue_load: EXEC ran %zu of %ld XADDs\n", added, o.count);
        goto out_ctx;
    }
    printf("%zu\n", added);
    status = 0;
    goto out_ctx;

out_oom:
    fprintf(stderr, "bench-queue_load: out of memory\n");
out_ctx:
    if (c != NULL)
        redisFree(c);
    msgpack_sbuffer_destroy(&sb);
    return status;
}
