/*
 * test_redis.c: integration tests for common/redis.c against a real Redis.
 *
 * The server comes from REDIS_URL (./dev test provides one); without it the
 * test is skipped (exit 77).  Helper commands (CLIENT KILL from another
 * connection, checking a database) go through hiredis' blocking API, which
 * is fine in a test.  The AUTH tests start a private redis-server on a free
 * loopback port with a password (the shared one is never changed).  Every
 * test runs its own loop and ends with uv_loop_close() == 0, so a handle
 * left behind by rp_redis fails it.  test_pipeline prints commands/s and
 * CPU time per command for 10,000 pipelined INCRs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "redis.h"
#include "test_proc.h"

static const char *redis_url;
static char redis_host[64];
static int redis_port;
static char prefix[64]; /* key prefix unique to this run */

typedef struct ctx {
    uv_loop_t loop;
    rp_redis_t *r;
    uv_timer_t guard;
    uv_timer_t t;
    int closed;
    int connects;
    int disconnects;
    char last_why[256];
    int answered;
    int expect_next;
    int errors[16]; /* count per -err */
    long long client_id;
    int step;
} ctx_t;

/* ----------------------------------------------------------- helpers */

static redisContext *helper_connect(const char *host, int port)
{
    redisContext *h = redisConnect(host, port);
    if (h == NULL || h->err)
        fail_msg("helper connection failed: %s", h ? h->errstr : "out of memory");
    return h;
}

/* Run a blocking command and return the reply (freeReplyObject it). */
static redisReply *helper_cmd(redisContext *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(h, fmt, ap);
    va_end(ap);
    if (rep == NULL)
        fail_msg("helper command failed: %s", h->errstr);
    return rep;
}

static void guard_cb(uv_timer_t *t)
{
    (void)t;
    fail_msg("test took too long");
}

static void on_connect(void *data)
{
    ((ctx_t *)data)->connects++;
}

static void on_disconnect(void *data, const char *why)
{
    ctx_t *c = data;
    assert_non_null(why);
    c->disconnects++;
    snprintf(c->last_why, sizeof(c->last_why), "%s", why);
}

static void on_closed(void *data)
{
    ((ctx_t *)data)->closed = 1;
}

static void ctx_init(ctx_t *c, const char *url, const rp_redis_opts_t *extra)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(uv_loop_init(&c->loop), 0);
    uv_timer_init(&c->loop, &c->guard);
    uv_timer_start(&c->guard, guard_cb, 30000, 0);
    uv_unref((uv_handle_t *)&c->guard);
    uv_timer_init(&c->loop, &c->t);
    c->t.data = c;
    rp_redis_opts_t o = extra ? *extra : (rp_redis_opts_t){0};
    o.on_connect = on_connect;
    o.on_disconnect = on_disconnect;
    o.data = c;
    rp_err_t err;
    c->r = rp_redis_new(&c->loop, url ? url : redis_url, &o, &err);
    if (c->r == NULL)
        fail_msg("rp_redis_new: %s", err.msg);
    assert_int_equal(rp_redis_start(c->r), 0);
}

static void ctx_finish(ctx_t *c)
{
    if (c->r) {
        rp_redis_close(c->r, on_closed, c);
        c->r = NULL;
    }
    uv_close((uv_handle_t *)&c->t, NULL);
    uv_close((uv_handle_t *)&c->guard, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(c->closed, 1);
    assert_int_equal(uv_loop_close(&c->loop), 0);
}

static int cmd(ctx_t *c, long timeout_ms, rp_redis_cb cb, int argc, ...)
{
    const char *argv[16];
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++)
        argv[i] = va_arg(ap, const char *);
    va_end(ap);
    return rp_redis_command(c->r, argc, argv, NULL, timeout_ms, cb, c);
}

static void key(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s:%s", prefix, name);
}

/* Record the outcome and stop the loop once `step` answers came. */
static void count_cb(void *data, int err, const rp_redis_reply_t *rep)
{
    ctx_t *c = data;
    if (err != 0)
        assert_null(rep);
    c->errors[-err]++;
    c->answered++;
    if (c->answered == c->step)
        uv_stop(&c->loop);
}

/* ------------------------------------------------- replies of every type */

static void types_cb(void *data, int err, const rp_redis_reply_t *rep)
{
    ctx_t *c = data;
    if (err != 0)
        fail_msg("command %d failed: %s", c->answered, rp_strerror(err));
    size_t len = 0;
    switch (c->answered) {
    case 0: /* PING */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_STATUS);
        assert_string_equal(rp_redis_reply_str(rep, NULL), "PONG");
        break;
    case 1: /* SET */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_STATUS);
        break;
    case 2: { /* GET: binary-safe */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_STRING);
        const char *s = rp_redis_reply_str(rep, &len);
        assert_int_equal(len, 5);
        assert_memory_equal(s, "a\0b\r\n", 5);
        break;
    }
    case 3: /* GET missing */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_NIL);
        assert_null(rp_redis_reply_str(rep, &len));
        assert_int_equal(len, 0);
        break;
    case 4: /* INCR */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_INTEGER);
        assert_int_equal(rp_redis_reply_int(rep), 1);
        break;
    case 5: /* RPUSH */
        assert_int_equal(rp_redis_reply_int(rep), 3);
        break;
    case 6: { /* LRANGE */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_ARRAY);
        assert_int_equal(rp_redis_reply_len(rep), 3);
        assert_string_equal(rp_redis_reply_str(rp_redis_reply_at(rep, 0), NULL), "x");
        assert_string_equal(rp_redis_reply_str(rp_redis_reply_at(rep, 2), NULL), "");
        assert_null(rp_redis_reply_at(rep, 3));
        assert_int_equal(rp_redis_reply_int(rep), 0); /* wrong accessor is safe */
        break;
    }
    case 7: /* XADD */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_STRING);
        break;
    case 8: { /* XRANGE: nested arrays */
        assert_int_equal(rp_redis_reply_len(rep), 1);
        const rp_redis_reply_t *entry = rp_redis_reply_at(rep, 0);
        assert_int_equal(rp_redis_reply_len(entry), 2);
        const rp_redis_reply_t *fields = rp_redis_reply_at(entry, 1);
        assert_int_equal(rp_redis_reply_len(fields), 2);
        assert_string_equal(rp_redis_reply_str(rp_redis_reply_at(fields, 0), NULL), "job");
        assert_string_equal(rp_redis_reply_str(rp_redis_reply_at(fields, 1), NULL), "v");
        break;
    }
    case 9: /* an unknown command: an error reply, err 0 */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_ERROR);
        assert_non_null(strstr(rp_redis_reply_str(rep, NULL), "unknown command"));
        break;
    case 10: /* WRONGTYPE */
        assert_int_equal(rp_redis_reply_type(rep), RP_REDIS_ERROR);
        assert_non_null(strstr(rp_redis_reply_str(rep, NULL), "WRONGTYPE"));
        break;
    case 11: /* DEL */
        assert_int_equal(rp_redis_reply_int(rep), 4);
        uv_stop(&c->loop);
        break;
    }
    c->answered++;
}

static void test_reply_types(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    char k[5][96];
    key(k[0], sizeof(k[0]), "str");
    key(k[1], sizeof(k[1]), "missing");
    key(k[2], sizeof(k[2]), "counter");
    key(k[3], sizeof(k[3]), "list");
    key(k[4], sizeof(k[4]), "stream");
    /* Submitted before the connection is up: they wait, then go in order. */
    assert_int_equal(cmd(&c, 0, types_cb, 1, "PING"), 0);
    const char *setv[] = {"SET", k[0], "a\0b\r\n"};
    size_t setl[] = {3, strlen(k[0]), 5};
    assert_int_equal(rp_redis_command(c.r, 3, setv, setl, 0, types_cb, &c), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 2, "GET", k[0]), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 2, "GET", k[1]), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 2, "INCR", k[2]), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 5, "RPUSH", k[3], "x", "y", ""), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 4, "LRANGE", k[3], "0", "-1"), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 5, "XADD", k[4], "*", "job", "v"), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 4, "XRANGE", k[4], "-", "+"), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 1, "NOSUCHCOMMAND"), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 2, "INCR", k[3]), 0);
    assert_int_equal(cmd(&c, 0, types_cb, 5, "DEL", k[0], k[2], k[3], k[4]), 0);
    assert_int_equal(rp_redis_pending(c.r), 12);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 12);
    assert_int_equal(c.connects, 1);
    assert_true(rp_redis_is_up(c.r));
    assert_int_equal(rp_redis_pending(c.r), 0);
    /* bad arguments never call back */
    assert_int_equal(rp_redis_command(c.r, 0, NULL, NULL, 0, types_cb, &c), RP_EINVAL);
    const char *nullarg[] = {NULL};
    assert_int_equal(rp_redis_command(c.r, 1, nullarg, NULL, 0, types_cb, &c), RP_EINVAL);
    assert_int_equal(cmd(&c, 0, NULL, 1, "PING"), RP_EINVAL);
    ctx_finish(&c);
}

/* ---------------------------------------- 10,000 pipelined, in order */

static void ordered_cb(void *data, int err, const rp_redis_reply_t *rep)
{
    ctx_t *c = data;
    if (err != 0)
        fail_msg("INCR %d failed: %s", c->expect_next, rp_strerror(err));
    assert_int_equal(rp_redis_reply_int(rep), c->expect_next);
    c->expect_next++;
    c->answered++;
    if (c->answered == c->step)
        uv_stop(&c->loop);
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void test_pipeline(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    char k[96];
    key(k, sizeof(k), "pipeline");
    /* connect first, so the figure is about commands only */
    c.step = 1;
    assert_int_equal(cmd(&c, 0, count_cb, 2, "DEL", k), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors[0], 1);

    const int n = 10000;
    c.answered = 0;
    c.expect_next = 1;
    c.step = n;
    uint64_t t0 = uv_hrtime();
    double cpu0 = cpu_s();
    for (int i = 0; i < n; i++)
        assert_int_equal(cmd(&c, 0, ordered_cb, 2, "INCR", k), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    double secs = (double)(uv_hrtime() - t0) / 1e9;
    double cpu = cpu_s() - cpu0;
    assert_int_equal(c.answered, n);
    printf("# redis pipeline: %d INCR in %.3f s = %.0f commands/s, client CPU %.2f us/command\n", n,
           secs, n / secs, cpu * 1e6 / n);
    c.step = 1;
    c.answered = 0;
    assert_int_equal(cmd(&c, 0, count_cb, 2, "DEL", k), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    ctx_finish(&c);
}

/* ------------------------------------------------ a command's deadline */

static void test_command_timeout(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    char k[96];
    key(k, sizeof(k), "nobody-pushes");
    /* BLPOP blocks for ever; its deadline is 300 ms.  The PING behind it
     * waits for it, so it is lost with the connection (RP_EIO). */
    c.step = 2;
    assert_int_equal(cmd(&c, 300, count_cb, 3, "BLPOP", k, "0"), 0);
    assert_int_equal(cmd(&c, 5000, count_cb, 1, "PING"), 0);
    uint64_t t0 = uv_now(&c.loop);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors[-RP_ETIMEDOUT], 1);
    assert_int_equal(c.errors[-RP_EIO], 1);
    assert_true(uv_now(&c.loop) - t0 < 3000);
    /* The connection recovers by itself. */
    c.step = 3;
    assert_int_equal(cmd(&c, 5000, count_cb, 1, "PING"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors[0], 1);
    assert_int_equal(c.connects, 2);
    assert_int_equal(c.disconnects, 1);
    assert_non_null(strstr(c.last_why, "timed out"));
    ctx_finish(&c);
}

/* ------------------------------ the server kills the connection */

static void client_id_cb(void *data, int err, const rp_redis_reply_t *rep)
{
    ctx_t *c = data;
    assert_int_equal(err, 0);
    c->client_id = rp_redis_reply_int(rep);
    uv_stop(&c->loop);
}

static void kill_timer_cb(uv_timer_t *t)
{
    ctx_t *c = t->data;
    redisContext *h = helper_connect(redis_host, redis_port);
    redisReply *rep = helper_cmd(h, "CLIENT KILL ID %lld", c->client_id);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    redisFree(h);
}

static void test_server_kills_connection(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    assert_int_equal(cmd(&c, 0, client_id_cb, 2, "CLIENT", "ID"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_true(c.client_id > 0);
    char k[96];
    key(k, sizeof(k), "blocked");
    /* In flight when the server kills the connection: RP_EIO. */
    c.step = 1;
    assert_int_equal(cmd(&c, 10000, count_cb, 3, "BLPOP", k, "5"), 0);
    uv_timer_start(&c.t, kill_timer_cb, 200, 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors[-RP_EIO], 1);
    assert_int_equal(c.disconnects, 1);
    /* Reconnects by itself; later commands work. */
    c.step = 2;
    assert_int_equal(cmd(&c, 5000, count_cb, 1, "PING"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors[0], 1);
    assert_int_equal(c.connects, 2);
    ctx_finish(&c);
}

/* ------------------------------------------------------ AUTH */

/* A free loopback port (bound, read, released). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Start a private redis-server with a password; returns it (owned). */
static rp_test_proc_t *private_redis(int port)
{
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    const char *argv[] = {
        "redis-server", "--port", ps,      "--bind",         "127.0.0.1",     "--save",    "",
        "--appendonly", "no",     "--dir", rp_test_tmpdir(), "--requirepass", "s3cret-pw", NULL};
    rp_test_proc_t *p = rp_test_proc_start("redis-auth", argv, NULL);
    for (int i = 0; i < 100; i++) {
        redisContext *h = redisConnect("127.0.0.1", port);
        int ok = h != NULL && h->err == 0;
        redisFree(h);
        if (ok)
            return p;
        usleep(50000);
    }
    rp_test_proc_free(p);
    fail_msg("private redis-server did not start");
    return NULL;
}

/* Connect with url and run one PING (500 ms): returns the callback's err,
 * and the last on_disconnect text in why. */
static int try_url(const char *url, char *why, size_t cap)
{
    ctx_t c;
    rp_redis_opts_t o = {.reconnect_min_ms = 50, .reconnect_max_ms = 100};
    ctx_init(&c, url, &o);
    c.step = 1;
    assert_int_equal(cmd(&c, 800, count_cb, 1, "PING"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    int err = c.errors[0] ? 0 : c.errors[-RP_ETIMEDOUT] ? RP_ETIMEDOUT : RP_EIO;
    snprintf(why, cap, "%s", c.last_why);
    if (err != 0) {
        assert_true(c.disconnects >= 1);
        assert_string_equal(rp_redis_last_error(c.r), c.last_why);
    }
    ctx_finish(&c);
    return err;
}

static void test_auth(void **state)
{
    (void)state;
    int port = free_port();
    rp_test_proc_t *srv = private_redis(port);
    char url[256], why[256];

    snprintf(url, sizeof(url), "redis://:s3cret-pw@127.0.0.1:%d/0", port);
    assert_int_equal(try_url(url, why, sizeof(why)), 0);

    snprintf(url, sizeof(url), "redis://:wrong-pw@127.0.0.1:%d", port);
    assert_int_equal(try_url(url, why, sizeof(why)), RP_ETIMEDOUT);
    if (strstr(why, "authentication refused") == NULL)
        fail_msg("why: %s", why);
    assert_null(strstr(why, "wrong-pw"));

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    assert_int_equal(try_url(url, why, sizeof(why)), RP_ETIMEDOUT);
    if (strstr(why, "authentication required") == NULL)
        fail_msg("why: %s", why);

    /* A Redis 6 ACL user. */
    redisContext *h = helper_connect("127.0.0.1", port);
    freeReplyObject(helper_cmd(h, "AUTH s3cret-pw"));
    redisReply *rep = helper_cmd(h, "ACL SETUSER alice on >alice%%pw ~* +@all");
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    redisFree(h);
    snprintf(url, sizeof(url), "redis://alice:alice%%25pw@127.0.0.1:%d", port); /* %-escaped */
    assert_int_equal(try_url(url, why, sizeof(why)), 0);
    snprintf(url, sizeof(url), "redis://alice:nope@127.0.0.1:%d", port);
    assert_int_equal(try_url(url, why, sizeof(why)), RP_ETIMEDOUT);
    if (strstr(why, "authentication refused") == NULL)
        fail_msg("why: %s", why);

    /* A database that does not exist. */
    snprintf(url, sizeof(url), "redis://:s3cret-pw@127.0.0.1:%d/999", port);
    assert_int_equal(try_url(url, why, sizeof(why)), RP_ETIMEDOUT);
    if (strstr(why, "SELECT 999 refused") == NULL)
        fail_msg("why: %s", why);
    rp_test_proc_free(srv);
}

/* ------------------------------------------------ SELECT from the URL */

static void test_select_db(void **state)
{
    (void)state;
    char url[256];
    snprintf(url, sizeof(url), "redis://%s:%d/5", redis_host, redis_port);
    ctx_t c;
    ctx_init(&c, url, NULL);
    char k[96];
    key(k, sizeof(k), "in-db-5");
    c.step = 1;
    assert_int_equal(cmd(&c, 0, count_cb, 5, "SET", k, "five", "EX", "60"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors[0], 1);
    ctx_finish(&c);

    redisContext *h = helper_connect(redis_host, redis_port);
    redisReply *rep = helper_cmd(h, "EXISTS %s", k);
    assert_int_equal(rep->integer, 0); /* not in db 0 */
    freeReplyObject(rep);
    freeReplyObject(helper_cmd(h, "SELECT 5"));
    rep = helper_cmd(h, "GET %s", k);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "five");
    freeReplyObject(rep);
    freeReplyObject(helper_cmd(h, "DEL %s", k));
    redisFree(h);
}

/* ------------------------------------------ nothing listening; close */

static void test_nothing_listening(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", free_port());
    ctx_t c;
    rp_redis_opts_t o = {.reconnect_min_ms = 20, .reconnect_max_ms = 50};
    ctx_init(&c, url, &o);
    c.step = 1;
    assert_int_equal(cmd(&c, 500, count_cb, 1, "PING"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors[-RP_ETIMEDOUT], 1);
    assert_true(c.disconnects >= 3); /* it kept trying */
    assert_int_equal(c.connects, 0);
    if (strstr(c.last_why, "refused") == NULL)
        fail_msg("why: %s", c.last_why);
    assert_false(rp_redis_is_up(c.r));
    /* A command waiting when closing is cancelled. */
    c.step = 100;
    assert_int_equal(cmd(&c, 5000, count_cb, 1, "PING"), 0);
    ctx_finish(&c);
    assert_int_equal(c.errors[-RP_ECANCELED], 1);
}

/* A name that needs a lookup works too (resolved off the loop). */
static void test_host_name(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof(url), "redis://localhost:%d/0", redis_port);
    ctx_t c;
    ctx_init(&c, url, NULL);
    c.step = 1;
    assert_int_equal(cmd(&c, 5000, count_cb, 1, "PING"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors[0], 1);
    ctx_finish(&c);
}

/* ------------------------------------------------ URLs refused early */

static void test_bad_urls(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"", "empty"},
        {"http://:pw-secret@127.0.0.1", "must start with redis://"},
        {"rediss://:pw-secret@127.0.0.1", "TLS"},
        {"redis://:pw-secret@", "host is missing"},
        {"redis://:pw-secret@127.0.0.1:0", "port"},
        {"redis://:pw-secret@127.0.0.1:99999", "port"},
        {"redis://:pw-secret@127.0.0.1:12ab", "port"},
        {"redis://:pw-secret@127.0.0.1:6379/x", "database"},
        {"redis://:pw-secret@127.0.0.1:6379/0?timeout=1", "query"},
        {"redis://pw-secret@127.0.0.1", "no password"},
        {"redis://:pw%zzsecret@127.0.0.1", "%-escape"},
        {"redis://:pw-secret@[::1", "IPv6"},
    };
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rp_err_t err;
        memset(&err, 0, sizeof(err));
        rp_redis_t *r = rp_redis_new(&loop, cases[i][0], NULL, &err);
        if (r != NULL)
            fail_msg("case %zu accepted", i);
        assert_int_equal(err.code, RP_EINVAL);
        if (strstr(err.msg, cases[i][1]) == NULL)
            fail_msg("case %zu: '%s' does not contain '%s'", i, err.msg, cases[i][1]);
        if (strstr(err.msg, "secret") != NULL)
            fail_msg("case %zu: the message shows the password: %s", i, err.msg);
    }
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --------------------------------- closing from inside a reply callback */

static void close_from_cb(void *data, int err, const rp_redis_reply_t *rep)
{
    ctx_t *c = data;
    c->answered++;
    if (c->answered == 1) {
        assert_int_equal(err, 0);
        rp_redis_close(c->r, on_closed, c);
        const char *argv[] = {"PING"};
        assert_int_equal(rp_redis_command(c->r, 1, argv, NULL, 0, close_from_cb, c), RP_ECLOSED);
    } else {
        assert_int_equal(err, RP_ECANCELED);
    }
}

static void test_close_from_callback(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    for (int i = 0; i < 50; i++)
        assert_int_equal(cmd(&c, 0, close_from_cb, 1, "PING"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 50);
    assert_int_equal(c.closed, 1);
    c.r = NULL;
    ctx_finish(&c);
}

/* Re-entrancy the other way: commands submitted from a reply callback, and
 * from on_disconnect while the connection goes down. */
static void chain_cb(void *data, int err, const rp_redis_reply_t *rep)
{
    ctx_t *c = data;
    assert_int_equal(err, 0);
    c->answered++;
    if (c->answered < 100)
        assert_int_equal(cmd(c, 0, chain_cb, 1, "PING"), 0);
    else
        uv_stop(&c->loop);
}

static void test_submit_from_callback(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    assert_int_equal(cmd(&c, 0, chain_cb, 1, "PING"), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 100);
    ctx_finish(&c);
}

int main(void)
{
    redis_url = getenv("REDIS_URL");
    if (redis_url == NULL || *redis_url == '\0') {
        printf("SKIP: REDIS_URL not set (run through ./dev test)\n");
        return 77;
    }
    if (sscanf(redis_url, "redis://%63[^:/]:%d", redis_host, &redis_port) != 2) {
        printf("REDIS_URL must be redis://HOST:PORT[/db] for this test\n");
        return 1;
    }
    snprintf(prefix, sizeof(prefix), "rp-test-redis:%d", (int)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_types),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_command_timeout),
        cmocka_unit_test(test_server_kills_connection),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_select_db),
        cmocka_unit_test(test_nothing_listening),
        cmocka_unit_test(test_host_name),
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_close_from_callback),
        cmocka_unit_test(test_submit_from_callback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
