/*
 * test_pg.c: integration tests for common/pg.c against a real Postgres.
 *
 * The server comes from RP_TEST_PG_URL (a superuser URL that ./dev test
 * provides); without it the test is skipped (exit 77).  Helper statements
 * (NOTIFY from another session, pg_terminate_backend) go through a second,
 * ordinary blocking libpq connection, which is fine in a test.  Every test
 * runs its own loop and ends with uv_loop_close() == 0, so a handle left
 * behind by rp_pg fails it.  test_throughput prints queries/s and CPU time
 * per query for `select $1::int` with 1,000 queries in flight.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "pg.h"

static const char *pg_url;

typedef struct ctx {
    uv_loop_t loop;
    rp_pg_t *pg;
    uv_timer_t guard; /* fails the test if it runs too long */
    int closed;
    int connects;
    int disconnects;
    int notifies;
    char last_notify[256];
    int answered;
    int expect_next; /* for ordered answers */
    int errors;
    int step;
    long backend_pid;
    uv_timer_t t; /* per-test helper timer */
} ctx_t;

/* --- helpers ------------------------------------------------------- */

static PGconn *blocking_conn(void)
{
    PGconn *c = PQconnectdb(pg_url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("helper connection failed: %s", PQerrorMessage(c));
    return c;
}

static void blocking_exec(const char *sql, int n, const char *const *params)
{
    PGconn *c = blocking_conn();
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("helper statement failed: %s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

static void guard_cb(uv_timer_t *t)
{
    (void)t;
    fail_msg("test took too long");
}

static void on_closed(void *data)
{
    ((ctx_t *)data)->closed = 1;
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
}

static void on_notify(void *data, const char *channel, const char *payload)
{
    ctx_t *c = data;
    c->notifies++;
    snprintf(c->last_notify, sizeof(c->last_notify), "%s|%s", channel, payload);
}

static void ctx_init(ctx_t *c, const rp_pg_opts_t *extra, const char *url)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(uv_loop_init(&c->loop), 0);
    uv_timer_init(&c->loop, &c->guard);
    uv_timer_start(&c->guard, guard_cb, 30000, 0);
    uv_unref((uv_handle_t *)&c->guard);
    uv_timer_init(&c->loop, &c->t);
    c->t.data = c;
    rp_pg_opts_t o = extra ? *extra : (rp_pg_opts_t){0};
    o.on_connect = on_connect;
    o.on_disconnect = on_disconnect;
    o.on_notify = on_notify;
    o.data = c;
    rp_err_t err;
    c->pg = rp_pg_new(&c->loop, url ? url : pg_url, &o, &err);
    if (c->pg == NULL)
        fail_msg("rp_pg_new: %s", err.msg);
    assert_int_equal(rp_pg_start(c->pg), 0);
}

/* Close the connection and the helper handles, run the loop dry and check
 * nothing is left on it. */
static void ctx_finish(ctx_t *c)
{
    if (c->pg) {
        rp_pg_close(c->pg, on_closed, c);
        c->pg = NULL;
    }
    uv_close((uv_handle_t *)&c->t, NULL);
    uv_close((uv_handle_t *)&c->guard, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(c->closed, 1);
    assert_int_equal(uv_loop_close(&c->loop), 0);
}

static void stop_loop(ctx_t *c)
{
    uv_stop(&c->loop);
}

/* --- connect and a parameterised query ------------------------------ */

static void q_basic(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    if (rp_pg_res_error(res) != 0)
        fail_msg("query failed: %s", rp_pg_res_message(res));
    assert_int_equal(rp_pg_res_ntuples(res), 1);
    assert_int_equal(rp_pg_res_nfields(res), 3);
    assert_string_equal(rp_pg_res_value(res, 0, 0), "42");
    assert_int_equal(rp_pg_res_length(res, 0, 0), 2);
    assert_string_equal(rp_pg_res_value(res, 0, 1), "t");
    assert_true(rp_pg_res_isnull(res, 0, 2));
    assert_false(rp_pg_res_isnull(res, 0, 0));
    assert_string_equal(rp_pg_res_value(res, 0, 2), "");
    assert_int_equal(rp_pg_res_column(res, "answer"), 0);
    assert_int_equal(rp_pg_res_column(res, "nope"), -1);
    /* out of range is safe */
    assert_string_equal(rp_pg_res_value(res, 5, 5), "");
    c->answered++;
    stop_loop(c);
}

static void test_connect_and_query(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    /* Submitted before the connection is up: it waits, then goes. */
    const char *params[] = {"41", NULL};
    assert_int_equal(rp_pg_query(c.pg, "select $1::int + 1 as answer, $2::text is null, $2::text",
                                 2, params, 5000, q_basic, &c),
                     0);
    assert_int_equal(rp_pg_pending(c.pg), 1);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 1);
    assert_int_equal(c.connects, 1);
    assert_true(rp_pg_is_up(c.pg));
    assert_int_equal(rp_pg_pending(c.pg), 0);
    /* bad arguments never call back */
    assert_int_equal(rp_pg_query(c.pg, NULL, 0, NULL, 0, q_basic, &c), RP_EINVAL);
    assert_int_equal(rp_pg_query(c.pg, "select 1", 1, NULL, 0, q_basic, &c), RP_EINVAL);
    ctx_finish(&c);
}

/* --- 1,000 queries in flight, answered in order -------------------- */

static void q_ordered(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    if (rp_pg_res_error(res) != 0)
        fail_msg("query failed: %s", rp_pg_res_message(res));
    int v = atoi(rp_pg_res_value(res, 0, 0));
    assert_int_equal(v, c->expect_next);
    c->expect_next++;
    c->answered++;
    if (c->answered == c->step)
        stop_loop(c);
}

static void test_thousand_in_flight(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    c.step = 1000;
    for (int i = 0; i < 1000; i++) {
        char buf[16];
        snprintf(buf, sizeof(buf), "%d", i);
        const char *p[] = {buf};
        assert_int_equal(rp_pg_query(c.pg, "select $1::int", 1, p, 10000, q_ordered, &c), 0);
    }
    assert_int_equal(rp_pg_pending(c.pg), 1000);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 1000);
    assert_int_equal(rp_pg_pending(c.pg), 0);
    ctx_finish(&c);
}

/* --- prepared statements -------------------------------------------- */

static void q_prepared_error(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), RP_EDB);
    assert_string_equal(rp_pg_res_sqlstate(res), "42P01"); /* undefined table */
    c->errors++;
}

static void q_first_value(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), 0);
    c->backend_pid = atol(rp_pg_res_value(res, 0, 0));
    stop_loop(c);
}

static void test_prepared(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    /* 1,000 uses of one statement in flight at once: the first carries the
     * Parse, all answer in order. */
    c.step = 1000;
    for (int i = 0; i < 1000; i++) {
        char buf[16];
        snprintf(buf, sizeof(buf), "%d", i);
        const char *p[] = {buf};
        assert_int_equal(rp_pg_query_prepared(c.pg, "t_int", "select $1::int", 1, p, 10000,
                                              q_ordered, &c),
                         0);
    }
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 1000);
    /* The server holds one statement of that name on this session. */
    blocking_exec("select 1", 0, NULL);
    assert_int_equal(rp_pg_query(c.pg, "select count(*) from pg_prepared_statements where "
                                       "name = 't_int'",
                                 0, NULL, 0, q_first_value, &c),
                     0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.backend_pid, 1);
    /* A statement that cannot be prepared reports the server's error, the
     * next query is unaffected, and a later use tries again. */
    assert_int_equal(
        rp_pg_query_prepared(c.pg, "t_bad", "select * from no_such_table_xyz", 0, NULL, 0,
                             q_prepared_error, &c),
        0);
    assert_int_equal(
        rp_pg_query_prepared(c.pg, "t_bad", "select * from no_such_table_xyz", 0, NULL, 0,
                             q_prepared_error, &c),
        0);
    c.step = 1001;
    c.expect_next = 1000;
    const char *p[] = {"1000"};
    assert_int_equal(
        rp_pg_query_prepared(c.pg, "t_int", "select $1::int", 1, p, 0, q_ordered, &c), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    while (c.errors < 2) /* the second is sent again, after the first's error */
        uv_run(&c.loop, UV_RUN_ONCE);
    assert_int_equal(c.errors, 2);
    /* After the server ends the session, the statement is prepared again. */
    assert_int_equal(rp_pg_query(c.pg, "select pg_backend_pid()", 0, NULL, 0, q_first_value, &c), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    char pid[32];
    snprintf(pid, sizeof(pid), "%ld", c.backend_pid);
    const char *kp[] = {pid};
    blocking_exec("select pg_terminate_backend($1::int)", 1, kp);
    int connects = c.connects;
    while (c.connects == connects)
        uv_run(&c.loop, UV_RUN_ONCE);
    c.step = 1002;
    c.expect_next = 1001;
    const char *p2[] = {"1001"};
    assert_int_equal(
        rp_pg_query_prepared(c.pg, "t_int", "select $1::int", 1, p2, 0, q_ordered, &c), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 1002);
    ctx_finish(&c);
}

/* --- throughput: keep 1,000 in flight ------------------------------ */

typedef struct bench {
    ctx_t *c;
    int sent, done, total;
} bench_t;

static void q_bench(void *data, const rp_pg_res_t *res);

static void bench_send(bench_t *b)
{
    char buf[16];
    snprintf(buf, sizeof(buf), "%d", b->sent);
    const char *p[] = {buf};
    assert_int_equal(rp_pg_query(b->c->pg, "select $1::int", 1, p, 0, q_bench, b), 0);
    b->sent++;
}

static void q_bench(void *data, const rp_pg_res_t *res)
{
    bench_t *b = data;
    assert_int_equal(rp_pg_res_error(res), 0);
    b->done++;
    if (b->sent < b->total)
        bench_send(b);
    if (b->done == b->total)
        stop_loop(b->c);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void q_warm(void *data, const rp_pg_res_t *res)
{
    (void)res;
    stop_loop(data);
}

static void test_throughput(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    assert_int_equal(rp_pg_query(c.pg, "select 1", 0, NULL, 0, q_warm, &c), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    const char *n_env = getenv("RP_TEST_PG_BENCH_N");
    bench_t b = {.c = &c, .total = n_env ? atoi(n_env) : 50000};
    uint64_t t0 = uv_hrtime();
    double cpu0 = cpu_seconds();
    for (int i = 0; i < 1000 && b.sent < b.total; i++)
        bench_send(&b);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    double secs = (double)(uv_hrtime() - t0) / 1e9;
    double cpu = cpu_seconds() - cpu0;
    assert_int_equal(b.done, b.total);
    printf("pg throughput: %d queries in %.3f s = %.0f queries/s, client CPU %.2f us/query "
           "(1000 in flight, one connection)\n",
           b.total, secs, b.total / secs, cpu * 1e6 / b.total);
    ctx_finish(&c);
}

/* --- an error does not affect the next queries --------------------- */

static void q_err_seq(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    switch (c->answered) {
    case 0:
    case 2:
        assert_int_equal(rp_pg_res_error(res), 0);
        assert_string_equal(rp_pg_res_value(res, 0, 0), c->answered == 0 ? "1" : "3");
        break;
    case 1:
        assert_int_equal(rp_pg_res_error(res), RP_EDB);
        assert_string_equal(rp_pg_res_sqlstate(res), "22012");
        assert_non_null(strstr(rp_pg_res_message(res), "division by zero"));
        assert_int_equal(rp_pg_res_ntuples(res), 0);
        break;
    case 3:
        assert_int_equal(rp_pg_res_error(res), RP_EDB);
        assert_string_equal(rp_pg_res_sqlstate(res), "42P01"); /* undefined table */
        break;
    case 4:
        assert_int_equal(rp_pg_res_error(res), 0);
        stop_loop(c);
        break;
    }
    c->answered++;
}

static void test_error_isolated(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    assert_int_equal(rp_pg_query(c.pg, "select 1", 0, NULL, 0, q_err_seq, &c), 0);
    assert_int_equal(rp_pg_query(c.pg, "select 1/0", 0, NULL, 0, q_err_seq, &c), 0);
    assert_int_equal(rp_pg_query(c.pg, "select 3", 0, NULL, 0, q_err_seq, &c), 0);
    assert_int_equal(rp_pg_query(c.pg, "select * from no_such_table", 0, NULL, 0, q_err_seq, &c),
                     0);
    assert_int_equal(rp_pg_query(c.pg, "select 5", 0, NULL, 0, q_err_seq, &c), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 5);
    ctx_finish(&c);
}

/* --- per-query timeout --------------------------------------------- */

static void q_timeout_after(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), 0);
    assert_string_equal(rp_pg_res_value(res, 0, 0), "7");
    c->answered++;
    stop_loop(c);
}

static void q_timeout(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), RP_ETIMEDOUT);
    c->errors++;
}

static void q_server_timeout(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), RP_ETIMEDOUT);
    assert_string_equal(rp_pg_res_sqlstate(res), "57014");
    c->errors++;
}

static void test_query_timeout(void **state)
{
    (void)state;
    ctx_t c;
    rp_pg_opts_t o = {.query_timeout_ms = 300};
    ctx_init(&c, &o, NULL);
    uint64_t t0 = uv_now(&c.loop);
    /* Default deadline (300 ms, also the server's statement_timeout). */
    assert_int_equal(rp_pg_query(c.pg, "select pg_sleep(5)", 0, NULL, 0, q_timeout, &c), 0);
    /* Own shorter deadline; the server finishes it later and the answer is
     * discarded. */
    assert_int_equal(rp_pg_query(c.pg, "select pg_sleep(0.2)", 0, NULL, 50, q_timeout, &c), 0);
    /* Own longer deadline: the server's statement_timeout (the default)
     * still stops it, reported as a timeout too. */
    assert_int_equal(rp_pg_query(c.pg, "select pg_sleep(2)", 0, NULL, 5000, q_server_timeout, &c),
                     0);
    assert_int_equal(rp_pg_query(c.pg, "select 7", 0, NULL, 5000, q_timeout_after, &c), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    uint64_t took = uv_now(&c.loop) - t0;
    assert_int_equal(c.errors, 3);
    assert_int_equal(c.answered, 1);
    assert_true(took < 3000);
    assert_true(rp_pg_is_up(c.pg));
    assert_int_equal(c.connects, 1);
    assert_int_equal(c.disconnects, 0);
    ctx_finish(&c);
}

/* --- LISTEN / NOTIFY ----------------------------------------------- */

#define CHANNEL "rp test \"chan\""

static void notify_timer(uv_timer_t *t)
{
    ctx_t *c = t->data;
    if (c->notifies > 0) {
        stop_loop(c);
        return;
    }
    const char *p[] = {CHANNEL, "hello"};
    blocking_exec("select pg_notify($1, $2)", 2, p);
    uv_timer_start(t, notify_timer, 100, 0);
}

static void q_after_listen(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), 0);
    /* LISTEN went before this query in the pipeline: it is in effect. */
    uv_timer_start(&c->t, notify_timer, 1, 0);
}

static void test_listen_notify(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    assert_int_equal(rp_pg_listen(c.pg, CHANNEL), 0);
    assert_int_equal(rp_pg_query(c.pg, "select 1", 0, NULL, 0, q_after_listen, &c), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.notifies, 1);
    assert_string_equal(c.last_notify, CHANNEL "|hello");
    /* A channel added while up is LISTENed at once. */
    assert_int_equal(rp_pg_listen(c.pg, "rp_second"), 0);
    assert_int_equal(rp_pg_listen(c.pg, ""), RP_EINVAL);
    ctx_finish(&c);
}

/* --- connection killed by the server ------------------------------- */

static void q_kill_sleep(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), RP_EIO);
    c->errors++;
}

static void kill_timer(uv_timer_t *t)
{
    ctx_t *c = t->data;
    char pid[32];
    snprintf(pid, sizeof(pid), "%ld", c->backend_pid);
    const char *p[] = {pid};
    blocking_exec("select pg_terminate_backend($1::int)", 1, p);
}

static void q_pid(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), 0);
    c->backend_pid = atol(rp_pg_res_value(res, 0, 0));
    assert_int_equal(rp_pg_query(c->pg, "select pg_sleep(20)", 0, NULL, 0, q_kill_sleep, c), 0);
    uv_timer_start(&c->t, kill_timer, 200, 0);
}

static void reconnect_notify_timer(uv_timer_t *t)
{
    ctx_t *c = t->data;
    if (c->notifies > 0) {
        stop_loop(c);
        return;
    }
    const char *p[] = {"rp_reconnect", "again"};
    blocking_exec("select pg_notify($1, $2)", 2, p);
    uv_timer_start(t, reconnect_notify_timer, 100, 0);
}

static void q_after_reconnect(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), 0);
    /* a new backend */
    assert_true(atol(rp_pg_res_value(res, 0, 0)) != c->backend_pid);
    uv_timer_start(&c->t, reconnect_notify_timer, 1, 0);
}

static void on_connect_kill(void *data)
{
    ctx_t *c = data;
    c->connects++;
    if (c->connects == 1)
        assert_int_equal(rp_pg_query(c->pg, "select pg_backend_pid()", 0, NULL, 0, q_pid, c), 0);
    else
        assert_int_equal(
            rp_pg_query(c->pg, "select pg_backend_pid()", 0, NULL, 0, q_after_reconnect, c), 0);
}

static void test_server_kills_connection(void **state)
{
    (void)state;
    ctx_t c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(uv_loop_init(&c.loop), 0);
    uv_timer_init(&c.loop, &c.guard);
    uv_timer_start(&c.guard, guard_cb, 30000, 0);
    uv_unref((uv_handle_t *)&c.guard);
    uv_timer_init(&c.loop, &c.t);
    c.t.data = &c;
    rp_pg_opts_t o = {.reconnect_min_ms = 50,
                      .reconnect_max_ms = 200,
                      .on_connect = on_connect_kill,
                      .on_disconnect = on_disconnect,
                      .on_notify = on_notify,
                      .data = &c};
    rp_err_t err;
    c.pg = rp_pg_new(&c.loop, pg_url, &o, &err);
    assert_non_null(c.pg);
    assert_int_equal(rp_pg_listen(c.pg, "rp_reconnect"), 0);
    assert_int_equal(rp_pg_start(c.pg), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.errors, 1); /* the in-flight sleep failed with RP_EIO */
    assert_int_equal(c.disconnects, 1);
    assert_int_equal(c.connects, 2);
    assert_int_equal(c.notifies, 1); /* LISTEN was re-issued */
    assert_string_equal(c.last_notify, "rp_reconnect|again");
    ctx_finish(&c);
}

/* --- bad conninfo --------------------------------------------------- */

static void test_bad_conninfo(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    const char *bad[] = {
        "host=127.0.0.1 password=s3cretpw bogus_option=1",
        "host=127.0.0.1 password s3cretpw",
        "host=127.0.0.1 password=s3cretpw s3cretpw",
        "host=127.0.0.1 password='s3cretpw",
        "postgresql://u:s3cretpw@127.0.0.1/db?bogus=1",
        "postgresql://u:s3cretpw@[::1/db",
        "",
    };
    /* libpq's reason is kept where it names no value */
    rp_err_t e0;
    assert_null(rp_pg_new(&loop, bad[0], NULL, &e0));
    assert_non_null(strstr(e0.msg, "bogus_option"));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rp_err_t err;
        rp_err_clear(&err);
        rp_pg_t *pg = rp_pg_new(&loop, bad[i], NULL, &err);
        assert_null(pg);
        assert_int_equal(err.code, RP_EINVAL);
        assert_true(strlen(err.msg) > 10);
        if (strstr(err.msg, "s3cretpw") != NULL)
            fail_msg("password leaked: %s", err.msg);
        assert_non_null(strstr(err.msg, "connection string"));
    }
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- nothing listening ---------------------------------------------- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

static void q_refused(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), RP_ETIMEDOUT);
    c->errors++;
}

static void q_canceled(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    assert_int_equal(rp_pg_res_error(res), RP_ECANCELED);
    c->answered++;
}

static void refused_timer(uv_timer_t *t)
{
    stop_loop(t->data);
}

static void test_nothing_listening(void **state)
{
    (void)state;
    char url[128];
    /* "localhost" also exercises the asynchronous lookup and libpq trying
     * each resolved address in turn. */
    snprintf(url, sizeof(url), "postgresql://postgres@localhost:%d/postgres", free_port());
    ctx_t c;
    rp_pg_opts_t o = {.reconnect_min_ms = 10, .reconnect_max_ms = 50, .connect_timeout_ms = 500};
    ctx_init(&c, &o, url);
    assert_int_equal(rp_pg_query(c.pg, "select 1", 0, NULL, 150, q_refused, &c), 0);
    assert_int_equal(rp_pg_query(c.pg, "select 1", 0, NULL, 60000, q_canceled, &c), 0);
    uv_timer_start(&c.t, refused_timer, 600, 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_false(rp_pg_is_up(c.pg));
    assert_int_equal(c.connects, 0);
    assert_int_equal(c.errors, 1);
    assert_int_equal(c.answered, 0);
    assert_int_equal(rp_pg_pending(c.pg), 1);
    ctx_finish(&c); /* the waiting query is cancelled */
    assert_int_equal(c.answered, 1);
}

/* --- close with queries in flight ----------------------------------- */

static void q_close_from_cb(void *data, const rp_pg_res_t *res)
{
    ctx_t *c = data;
    c->answered++;
    if (c->answered == 1) {
        assert_int_equal(rp_pg_res_error(res), 0);
        /* closing from inside a result callback cancels the rest */
        rp_pg_close(c->pg, on_closed, c);
        assert_int_equal(rp_pg_query(c->pg, "select 1", 0, NULL, 0, q_close_from_cb, c),
                         RP_ECLOSED);
    } else {
        assert_int_equal(rp_pg_res_error(res), RP_ECANCELED);
    }
}

static void test_close_from_callback(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL, NULL);
    for (int i = 0; i < 50; i++)
        assert_int_equal(rp_pg_query(c.pg, "select 1", 0, NULL, 0, q_close_from_cb, &c), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.answered, 50);
    assert_int_equal(c.closed, 1);
    c.pg = NULL;
    ctx_finish(&c);
}

int main(void)
{
    pg_url = getenv("RP_TEST_PG_URL");
    if (pg_url == NULL || *pg_url == '\0') {
        printf("SKIP: RP_TEST_PG_URL not set (run through ./dev test)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_and_query),   cmocka_unit_test(test_thousand_in_flight),
        cmocka_unit_test(test_error_isolated),      cmocka_unit_test(test_query_timeout),
        cmocka_unit_test(test_listen_notify),       cmocka_unit_test(test_server_kills_connection),
        cmocka_unit_test(test_bad_conninfo),        cmocka_unit_test(test_nothing_listening),
        cmocka_unit_test(test_close_from_callback), cmocka_unit_test(test_throughput),
        cmocka_unit_test(test_prepared),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
