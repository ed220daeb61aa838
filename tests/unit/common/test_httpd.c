/*
 * test_httpd.c: common/httpd.c against real sockets.
 *
 * Each test runs a server on port 0 on a loop in the main thread and a
 * client with plain blocking sockets in a second thread.  The client
 * records what it saw and, when done, wakes the loop with a uv_async_t,
 * whose callback closes the server; the loop then runs dry and must close
 * with no handle left.  Assertions happen on the main thread afterwards.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "httpd.h"
#include "httpd_testclient.h"

typedef struct fixture fixture_t;

typedef struct result {
    int status;
    char body[512];
    char conn_hdr[64];
    int chunked;
} result_t;

struct fixture {
    uv_loop_t loop;
    rp_httpd_t *s;
    uv_async_t done;
    pthread_t thread;
    int port;
    void (*client)(fixture_t *f);
    result_t res[8];
    int nres;
    int closed_after; /* the client saw the server close the connection */
    int aborted;      /* an on_abort callback ran */
    int server_closed;
    int handled; /* requests the handler saw */
    int client_ok;
    int done_sent; /* the client already woke the loop */
};

/* ---- server side ---- */

typedef struct later {
    uv_timer_t timer;
    rp_httpd_req_t *req;
    fixture_t *f;
    int chunked;
} later_t;

static void later_on_close(uv_handle_t *h)
{
    free(h->data);
}

static void later_on_timer(uv_timer_t *t)
{
    later_t *l = t->data;
    if (l->chunked) {
        rp_httpd_write(l->req, "late", 4);
        rp_httpd_end(l->req);
    } else {
        rp_httpd_respond(l->req, 200, NULL, "async", 5);
    }
    uv_close((uv_handle_t *)&l->timer, later_on_close);
}

static void later_on_abort(void *data)
{
    later_t *l = data;
    l->f->aborted++;
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, later_on_close);
}

static void answer_later(fixture_t *f, rp_httpd_req_t *req, uint64_t ms, int chunked)
{
    later_t *l = calloc(1, sizeof(*l));
    l->req = req;
    l->f = f;
    l->chunked = chunked;
    uv_timer_init(&f->loop, &l->timer);
    l->timer.data = l;
    rp_httpd_on_abort(req, later_on_abort, l);
    uv_timer_start(&l->timer, later_on_timer, ms, 0);
}

static void handler(void *data, rp_httpd_req_t *req)
{
    fixture_t *f = data;
    const char *path = rp_httpd_path(req);
    f->handled++;
    static const char *const text[] = {"Content-Type: text/plain", NULL};
    if (strcmp(path, "/hello") == 0) {
        rp_httpd_respond(req, 200, text, "hello", 5);
    } else if (strcmp(path, "/echo") == 0) {
        char buf[512];
        size_t blen;
        const char *body = rp_httpd_body(req, &blen);
        const char *x = rp_httpd_header(req, "x-test");
        int n = snprintf(buf, sizeof(buf), "%s %s ?%s x=%s [%s]", rp_httpd_method(req), path,
                         rp_httpd_query(req), x != NULL ? x : "-", body);
        rp_httpd_respond(req, 201, text, buf, (size_t)n);
    } else if (strcmp(path, "/async") == 0) {
        answer_later(f, req, 50, 0);
    } else if (strcmp(path, "/chunked") == 0) {
        rp_httpd_begin(req, 200, text);
        rp_httpd_write(req, "part1", 5);
        rp_httpd_write(req, "part2", 5);
        answer_later(f, req, 20, 1);
    } else if (strcmp(path, "/slow") == 0) {
        answer_later(f, req, 10000, 0);
    } else {
        rp_httpd_respond(req, 404, text, "no", 2);
    }
}

static void on_server_closed(void *data)
{
    fixture_t *f = data;
    f->server_closed = 1;
}

static void on_done(uv_async_t *a)
{
    fixture_t *f = a->data;
    rp_httpd_close(f->s, on_server_closed, f);
    uv_close((uv_handle_t *)&f->done, NULL);
}

static void *client_main(void *arg)
{
    fixture_t *f = arg;
    f->client(f);
    if (!f->done_sent)
        uv_async_send(&f->done);
    return NULL;
}

static void run(fixture_t *f, void (*client)(fixture_t *), size_t max_body, size_t max_header,
                long idle_ms)
{
    rp_err_t err = {0};
    assert_int_equal(uv_loop_init(&f->loop), 0);
    rp_httpd_opts_t o = {.host = "127.0.0.1",
                         .port = 0,
                         .max_body_bytes = max_body,
                         .max_header_bytes = max_header,
                         .idle_timeout_ms = idle_ms,
                         .handler = handler,
                         .data = f};
    f->s = rp_httpd_new(&f->loop, &o, &err);
    assert_non_null(f->s);
    assert_int_equal(rp_httpd_start(f->s, &err), 0);
    f->port = rp_httpd_port(f->s);
    assert_true(f->port > 0);
    f->client = client;
    assert_int_equal(uv_async_init(&f->loop, &f->done, on_done), 0);
    f->done.data = f;
    assert_int_equal(pthread_create(&f->thread, NULL, client_main, f), 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    pthread_join(f->thread, NULL);
    assert_true(f->server_closed);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* ---- client side helpers ---- */

static void record(fixture_t *f, tc_resp_t *r)
{
    result_t *x = &f->res[f->nres++];
    x->status = r->status;
    snprintf(x->body, sizeof(x->body), "%.511s", r->body != NULL ? r->body : "");
    const char *c = tc_header(r, "Connection");
    snprintf(x->conn_hdr, sizeof(x->conn_hdr), "%.63s", c != NULL ? c : "");
    x->chunked = r->chunked;
    tc_resp_free(r);
}

static int request(fixture_t *f, tc_conn_t *c, const char *raw)
{
    tc_resp_t r;
    if (tc_sends(c, raw) < 0 || tc_read(c, &r) < 0)
        return -1;
    record(f, &r);
    return 0;
}

/* ---- tests ---- */

static void client_get_post(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    int ok = request(f, &c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n") == 0;
    ok = ok && request(f, &c,
                       "POST /echo?a=1&b=2 HTTP/1.1\r\nHost: x\r\nX-Test: yes\r\n"
                       "Content-Length: 11\r\nConnection: close\r\n\r\nhello world") == 0;
    f->closed_after = ok && tc_wait_closed(&c);
    f->client_ok = ok;
    tc_close(&c);
}

static void test_get_post(void **state)
{
    fixture_t f = {0};
    run(&f, client_get_post, 0, 0, 0);
    assert_true(f.client_ok);
    assert_int_equal(f.nres, 2);
    assert_int_equal(f.res[0].status, 200);
    assert_string_equal(f.res[0].body, "hello");
    assert_string_equal(f.res[0].conn_hdr, "keep-alive");
    assert_int_equal(f.res[1].status, 201);
    assert_string_equal(f.res[1].body, "POST /echo ?a=1&b=2 x=yes [hello world]");
    assert_string_equal(f.res[1].conn_hdr, "close");
    assert_true(f.closed_after);
}

static void client_keepalive(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    int ok = request(f, &c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n") == 0;
    ok = ok && request(f, &c,
                       "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n") == 0;
    f->client_ok = ok;
    tc_close(&c);
}

static void test_keepalive(void **state)
{
    fixture_t f = {0};
    run(&f, client_keepalive, 0, 0, 0);
    assert_true(f.client_ok);
    assert_int_equal(f.nres, 2);
    assert_string_equal(f.res[0].body, "hello");
    assert_string_equal(f.res[1].body, "POST /echo ? x=- [abcde]");
    assert_int_equal(f.handled, 2);
}

static void client_pipelined(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    /* The first answer comes last (after a timer) but must be read first. */
    const char *raw = "GET /async HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n"
                      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    int ok = tc_sends(&c, raw) == 0;
    for (int i = 0; ok && i < 4; i++) {
        tc_resp_t r;
        ok = tc_read(&c, &r) == 0;
        if (ok)
            record(f, &r);
    }
    f->client_ok = ok;
    tc_close(&c);
}

static void test_pipelined_async_chunked(void **state)
{
    fixture_t f = {0};
    run(&f, client_pipelined, 0, 0, 0);
    assert_true(f.client_ok);
    assert_int_equal(f.nres, 4);
    assert_string_equal(f.res[0].body, "async");
    assert_string_equal(f.res[1].body, "hello");
    assert_string_equal(f.res[2].body, "part1part2late");
    assert_true(f.res[2].chunked);
    assert_string_equal(f.res[3].body, "POST /echo ? x=- [hi]");
}

static void client_limits(fixture_t *f)
{
    tc_conn_t c;
    /* Body over the limit (announced): 413, then the connection closes. */
    if (tc_connect(&c, f->port) < 0)
        return;
    int ok = request(f, &c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n") == 0;
    f->closed_after = ok && tc_wait_closed(&c);
    tc_close(&c);
    /* Chunked body growing over the limit: 413. */
    if (ok && tc_connect(&c, f->port) == 0) {
        static const char head[] = "POST /echo HTTP/1.1\r\nHost: x\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n800\r\n";
        char big[sizeof(head) - 1 + 2048];
        memcpy(big, head, sizeof(head) - 1);
        memset(big + sizeof(head) - 1, 'a', 2048);
        /* Send only the first chunk: the server fails on it, and any more
         * input would just be discarded. */
        ok = tc_send(&c, big, sizeof(big)) == 0;
        tc_resp_t r;
        ok = ok && tc_read(&c, &r) == 0;
        if (ok)
            record(f, &r);
        tc_close(&c);
    }
    /* Headers over the limit: 431. */
    if (ok && tc_connect(&c, f->port) == 0) {
        char req[4096];
        char val[2000];
        memset(val, 'v', sizeof(val) - 1);
        val[sizeof(val) - 1] = '\0';
        snprintf(req, sizeof(req), "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", val);
        ok = request(f, &c, req) == 0;
        tc_close(&c);
    }
    /* Garbage: 400 and close. */
    if (ok && tc_connect(&c, f->port) == 0) {
        ok = request(f, &c, "BLAH\x01 / HTTP/9\r\n\r\n") == 0;
        f->aborted += ok && tc_wait_closed(&c) ? 100 : 0;
        tc_close(&c);
    }
    f->client_ok = ok;
}

static void test_limits_and_errors(void **state)
{
    fixture_t f = {0};
    run(&f, client_limits, 1024, 1024, 0);
    assert_true(f.client_ok);
    assert_int_equal(f.nres, 4);
    assert_int_equal(f.res[0].status, 413);
    assert_string_equal(f.res[0].conn_hdr, "close");
    assert_true(f.closed_after);
    assert_int_equal(f.res[1].status, 413);
    assert_int_equal(f.res[2].status, 431);
    assert_int_equal(f.res[3].status, 400);
    assert_int_equal(f.aborted, 100); /* closed after the 400 */
    assert_int_equal(f.handled, 0);
}

static void client_disconnect(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    f->client_ok = tc_sends(&c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n") == 0;
    usleep(100 * 1000); /* let the server hand the request to the handler */
    tc_close(&c);
    usleep(100 * 1000); /* let the server see the close */
}

static void test_client_disconnect_aborts(void **state)
{
    fixture_t f = {0};
    run(&f, client_disconnect, 0, 0, 0);
    assert_true(f.client_ok);
    assert_int_equal(f.handled, 1);
    assert_int_equal(f.aborted, 1);
}

static void client_close_with_pending(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    f->client_ok = tc_sends(&c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n") == 0;
    usleep(100 * 1000);
    /* Returning closes the server while the request is pending; the
     * socket stays open until the server has gone. */
    f->done_sent = 1;
    uv_async_send(&f->done);
    f->closed_after = tc_wait_closed(&c);
    tc_close(&c);
}

static void test_server_close_aborts_pending(void **state)
{
    fixture_t f = {0};
    run(&f, client_close_with_pending, 0, 0, 0);
    assert_true(f.client_ok);
    assert_int_equal(f.aborted, 1);
    assert_true(f.closed_after);
}

static void client_idle(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    int ok = request(f, &c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n") == 0;
    /* Nothing more: the idle timer (100 ms) must close the connection. */
    f->closed_after = ok && tc_wait_closed(&c);
    f->client_ok = ok;
    tc_close(&c);
}

static void test_idle_timeout(void **state)
{
    fixture_t f = {0};
    run(&f, client_idle, 0, 0, 100);
    assert_true(f.client_ok);
    assert_true(f.closed_after);
}

static void client_http10_head(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    /* HTTP/1.0 without keep-alive: answer, then close. */
    int ok = request(f, &c, "GET /hello HTTP/1.0\r\n\r\n") == 0;
    f->closed_after = ok && tc_wait_closed(&c);
    tc_close(&c);
    if (ok && tc_connect(&c, f->port) == 0) {
        /* HEAD: headers only (Content-Length says 5, no body follows). */
        ok = tc_sends(&c, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                          "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n") == 0;
        tc_resp_t r;
        ok = ok && tc_read(&c, &r) == 0;
        if (ok) {
            /* The reader consumed 5 bytes of the next answer as a body:
             * it must be the start of the next status line. */
            ok = strncmp(r.body, "HTTP/", 5) == 0;
            tc_resp_free(&r);
        }
        tc_close(&c);
    }
    f->client_ok = ok;
}

static void test_http10_and_head(void **state)
{
    fixture_t f = {0};
    run(&f, client_http10_head, 0, 0, 0);
    assert_true(f.client_ok);
    assert_int_equal(f.res[0].status, 200);
    assert_string_equal(f.res[0].body, "hello");
    assert_string_equal(f.res[0].conn_hdr, "close");
    assert_true(f.closed_after);
}

static void client_many(fixture_t *f)
{
    /* Many connections at once, each with two requests. */
    enum { N = 200 };
    static tc_conn_t c[N];
    int ok = 1;
    for (int i = 0; i < N && ok; i++)
        ok = tc_connect(&c[i], f->port) == 0 &&
             tc_sends(&c[i], "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                             "GET /async HTTP/1.1\r\nHost: x\r\n\r\n") == 0;
    int good = 0;
    for (int i = 0; i < N && ok; i++) {
        tc_resp_t a, b;
        if (tc_read(&c[i], &a) == 0 && tc_read(&c[i], &b) == 0 && strcmp(a.body, "hello") == 0 &&
            strcmp(b.body, "async") == 0)
            good++;
        tc_resp_free(&a);
        tc_resp_free(&b);
    }
    for (int i = 0; i < N; i++)
        tc_close(&c[i]);
    f->client_ok = ok && good == N;
}

static void test_many_connections(void **state)
{
    fixture_t f = {0};
    run(&f, client_many, 0, 0, 0);
    assert_true(f.client_ok);
    assert_int_equal(f.handled, 400);
}

static void test_reason_and_unstarted_close(void **state)
{
    assert_string_equal(rp_httpd_reason(429), "Too Many Requests");
    assert_string_equal(rp_httpd_reason(200), "OK");
    uv_loop_t loop;
    uv_loop_init(&loop);
    fixture_t f = {0};
    rp_httpd_opts_t o = {.handler = handler, .data = &f};
    rp_httpd_t *s = rp_httpd_new(&loop, &o, NULL);
    assert_non_null(s);
    rp_httpd_close(s, on_server_closed, &f);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(f.server_closed);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_post),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_pipelined_async_chunked),
        cmocka_unit_test(test_limits_and_errors),
        cmocka_unit_test(test_client_disconnect_aborts),
        cmocka_unit_test(test_server_close_aborts_pending),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_http10_and_head),
        cmocka_unit_test(test_many_connections),
        cmocka_unit_test(test_reason_and_unstarted_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
