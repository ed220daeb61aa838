/*
 * test_http.c: unit tests for common/http.c, the libcurl-multi client on
 * libuv, driven against a tiny HTTP/1.1 server that runs in the same loop.
 *
 * The server (test-only, below) reads a request's head and Content-Length
 * body, answers by path with canned responses, keeps connections alive and
 * counts them, can stall, and can stream a chunked text/event-stream body
 * in timed pieces.  Every test ends with uv_loop_close() == 0, so any handle
 * the client leaves behind fails it.  test_throughput prints requests/s.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "http.h"
#include "sse.h"

/* ------------------------------------------------------ test server */

typedef struct srv srv_t;
typedef struct sconn sconn_t;

struct sconn {
    uv_tcp_t tcp;
    srv_t *srv;
    char *buf;
    size_t len, cap;
    uv_timer_t stream_timer; /* drives /stream */
    int stream_left;
    int timer_open;
    sconn_t *next;
};

struct srv {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int accepted;
    int requests;
    sconn_t *conns;
};

static void srv_write(sconn_t *c, const char *data, size_t len);

static void write_done(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
    free(w);
}

static void srv_write(sconn_t *c, const char *data, size_t len)
{
    uv_write_t *w = malloc(sizeof(*w));
    char *copy = malloc(len);
    memcpy(copy, data, len);
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)len);
    if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, write_done) != 0) {
        free(copy);
        free(w);
    }
}

static void srv_respond(sconn_t *c, int status, const char *extra, const char *body, size_t blen)
{
    /* One write per response: separate small writes would meet Nagle and
     * delayed ACKs and measure those instead of the client. */
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nContent-Type: text/plain\r\n%s\r\n",
                     status, blen, extra ? extra : "");
    char *all = malloc((size_t)n + blen);
    memcpy(all, head, (size_t)n);
    if (blen)
        memcpy(all + n, body, blen);
    srv_write(c, all, (size_t)n + blen);
    free(all);
}

static void stream_tick(uv_timer_t *t)
{
    sconn_t *c = t->data;
    char chunk[128];
    char ev[96];
    if (c->stream_left == 0) {
        srv_write(c, "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n", 24);
        return;
    }
    /* Split an event across two chunks to exercise the parser. */
    int en = snprintf(ev, sizeof(ev), "data: {\"n\":%d}\n\n", c->stream_left);
    int half = en / 2;
    int n = snprintf(chunk, sizeof(chunk), "%x\r\n%.*s\r\n%x\r\n%s\r\n", half, half, ev, en - half,
                     ev + half);
    srv_write(c, chunk, (size_t)n);
    c->stream_left--;
    uv_timer_start(t, stream_tick, 10, 0);
}

static const char *find_header(const char *head, size_t hlen, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    for (const char *p = head; p && p < head + hlen;
         p = memchr(p, '\n', (size_t)(head + hlen - p))) {
        if (*p == '\n')
            p++;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            *vlen = (size_t)(e - v);
            return v;
        }
    }
    return NULL;
}

static void srv_handle(sconn_t *c, const char *path, const char *head, size_t hlen,
                       const char *body, size_t blen)
{
    c->srv->requests++;
    if (strcmp(path, "/ok") == 0) {
        srv_respond(c, 200, NULL, "hello", 5);
    } else if (strcmp(path, "/echo") == 0) {
        size_t vlen = 0;
        const char *v = find_header(head, hlen, "X-Test", &vlen);
        char out[2048];
        int n = snprintf(out, sizeof(out), "%.*s|%.*s", (int)blen, body, (int)vlen, v ? v : "");
        srv_respond(c, 200, NULL, out, (size_t)n);
    } else if (strcmp(path, "/429") == 0) {
        srv_respond(c, 429, "Retry-After: 3\r\n", "slow down", 9);
    } else if (strcmp(path, "/503") == 0) {
        srv_respond(c, 503, NULL, "unavailable", 11);
    } else if (strcmp(path, "/stall") == 0) {
        /* never answer */
    } else if (strcmp(path, "/big") == 0) {
        size_t n = 64 * 1024;
        char *b = malloc(n);
        memset(b, 'x', n);
        srv_respond(c, 200, NULL, b, n);
        free(b);
    } else if (strcmp(path, "/bigchunked") == 0) {
        const char *h = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        srv_write(c, h, strlen(h));
        char chunk[1100];
        int n = snprintf(chunk, sizeof(chunk), "400\r\n");
        memset(chunk + n, 'y', 1024);
        chunk[n + 1024] = '\r';
        chunk[n + 1025] = '\n';
        for (int i = 0; i < 4; i++)
            srv_write(c, chunk, (size_t)n + 1026);
        srv_write(c, "0\r\n\r\n", 5);
    } else if (strcmp(path, "/stream") == 0) {
        const char *h = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n";
        srv_write(c, h, strlen(h));
        c->stream_left = 5;
        if (!c->timer_open) {
            uv_timer_init(c->srv->loop, &c->stream_timer);
            c->stream_timer.data = c;
            c->timer_open = 1;
        }
        uv_timer_start(&c->stream_timer, stream_tick, 5, 0);
    } else {
        srv_respond(c, 404, NULL, "no", 2);
    }
}

static void conn_closed(uv_handle_t *h)
{
    sconn_t *c = h->data;
    if (c->timer_open) {
        c->timer_open = 0;
        uv_close((uv_handle_t *)&c->stream_timer, conn_closed);
        return;
    }
    free(c->buf);
    free(c);
}

static void conn_close(sconn_t *c)
{
    srv_t *s = c->srv;
    for (sconn_t **pp = &s->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    if (c->timer_open)
        uv_timer_stop(&c->stream_timer);
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void srv_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    sconn_t *c = h->data;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap * 2 + 65536;
        c->buf = realloc(c->buf, c->cap);
    }
    (void)sz;
    *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len - 1));
}

static void srv_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    sconn_t *c = st->data;
    (void)b;
    if (n < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    for (;;) {
        char *end = strstr(c->buf, "\r\n\r\n");
        if (end == NULL)
            return;
        size_t hlen = (size_t)(end - c->buf) + 4;
        size_t vlen = 0;
        const char *cl = find_header(c->buf, hlen, "Content-Length", &vlen);
        size_t blen = cl ? (size_t)atol(cl) : 0;
        if (c->len < hlen + blen)
            return;
        char path[256] = "";
        sscanf(c->buf, "%*s %255s", path);
        srv_handle(c, path, c->buf, hlen, c->buf + hlen, blen);
        memmove(c->buf, c->buf + hlen + blen, c->len - hlen - blen);
        c->len -= hlen + blen;
        c->buf[c->len] = '\0';
    }
}

static void srv_accept(uv_stream_t *l, int status)
{
    srv_t *s = l->data;
    assert_int_equal(status, 0);
    sconn_t *c = calloc(1, sizeof(*c));
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    uv_tcp_nodelay(&c->tcp, 1);
    c->next = s->conns;
    s->conns = c;
    s->accepted++;
    uv_read_start((uv_stream_t *)&c->tcp, srv_alloc, srv_read);
}

static void srv_start(srv_t *s, uv_loop_t *loop)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&s->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 1024, srv_accept), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&a, &len);
    s->port = ntohs(a.sin_port);
}

static void srv_stop(srv_t *s)
{
    while (s->conns)
        conn_close(s->conns);
    uv_close((uv_handle_t *)&s->listener, NULL);
}

/* --------------------------------------------------------- harness */

typedef struct ctx {
    uv_loop_t loop;
    srv_t srv;
    rp_http_t *http;
    uv_timer_t t;
    int closed;
    int done;
    int want;
    int canceled;
    long status;
    int error;
    char body[256];
    char error_msg[256];
    int64_t retry_after_ms;
    char content_type[64];
    int chunks;
    int events;
    rp_sse_t *sse;
    rp_http_req_t *held;
    int chain_left;
} ctx_t;

static void on_closed(void *data)
{
    ((ctx_t *)data)->closed = 1;
}

static void ctx_init(ctx_t *c, const rp_http_opts_t *o)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(uv_loop_init(&c->loop), 0);
    srv_start(&c->srv, &c->loop);
    uv_timer_init(&c->loop, &c->t);
    c->t.data = c;
    rp_err_t err;
    c->http = rp_http_new(&c->loop, o, &err);
    assert_non_null(c->http);
}

static void ctx_finish(ctx_t *c)
{
    if (c->http)
        rp_http_close(c->http, on_closed, c);
    srv_stop(&c->srv);
    uv_close((uv_handle_t *)&c->t, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(c->closed, 1);
    assert_int_equal(uv_loop_close(&c->loop), 0);
    rp_sse_free(c->sse);
}

static void url(ctx_t *c, char *buf, size_t n, const char *path)
{
    snprintf(buf, n, "http://127.0.0.1:%d%s", c->srv.port, path);
}

static void on_resp(void *data, const rp_http_resp_t *r)
{
    ctx_t *c = data;
    c->status = r->status;
    c->error = r->error;
    assert_int_equal(strlen(r->body), r->body_len);
    snprintf(c->body, sizeof(c->body), "%s", r->body);
    snprintf(c->error_msg, sizeof(c->error_msg), "%s", r->error_msg);
    snprintf(c->content_type, sizeof(c->content_type), "%s",
             r->content_type ? r->content_type : "");
    c->retry_after_ms = r->retry_after_ms;
    assert_true(r->error != 0 || r->total_ms > 0);
    c->done++;
    if (c->done == (c->want ? c->want : 1))
        uv_stop(&c->loop);
}

/* Send one request and run until its answer. */
static void fetch(ctx_t *c, const rp_http_request_t *req)
{
    c->done = 0;
    c->want = 1;
    assert_int_equal(rp_http_send(c->http, req, on_resp, c, NULL), 0);
    assert_int_equal(rp_http_inflight(c->http), 1);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    assert_int_equal(c->done, 1);
}

/* ----------------------------------------------------------- tests */

static void test_get_ok(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/ok");
    rp_http_request_t req = {.method = "GET", .url = u, .timeout_ms = 5000};
    fetch(&c, &req);
    assert_int_equal(c.error, 0);
    assert_int_equal(c.status, 200);
    assert_string_equal(c.body, "hello");
    assert_string_equal(c.content_type, "text/plain");
    assert_int_equal(c.retry_after_ms, -1);
    assert_int_equal(rp_http_inflight(c.http), 0);
    ctx_finish(&c);
}

static void test_post_echo(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/echo");
    char body[] = "{\"input\":\"abc\"}";
    const char *headers[] = {"Content-Type: application/json", "X-Test: yes", NULL};
    rp_http_request_t req = {
        .url = u, .headers = headers, .body = body, .body_len = strlen(body), .timeout_ms = 5000};
    assert_int_equal(rp_http_send(c.http, &req, on_resp, &c, NULL), 0);
    /* everything was copied */
    memset(body, 'z', strlen(body));
    c.want = 1;
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.error, 0);
    assert_string_equal(c.body, "{\"input\":\"abc\"}|yes");
    /* a header with a line break is refused, without a callback */
    const char *bad[] = {"X-Evil: a\r\nX-More: b", NULL};
    rp_http_request_t breq = {.url = u, .headers = bad};
    assert_int_equal(rp_http_send(c.http, &breq, on_resp, &c, NULL), RP_EINVAL);
    ctx_finish(&c);
}

static void test_429_retry_after(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/429");
    rp_http_request_t req = {.url = u, .timeout_ms = 5000};
    fetch(&c, &req);
    assert_int_equal(c.error, 0);
    assert_int_equal(c.status, 429);
    assert_int_equal(c.retry_after_ms, 3000);
    assert_string_equal(c.body, "slow down");
    url(&c, u, sizeof(u), "/503");
    fetch(&c, &req);
    assert_int_equal(c.error, 0);
    assert_int_equal(c.status, 503);
    assert_int_equal(c.retry_after_ms, -1);
    assert_string_equal(c.body, "unavailable");
    ctx_finish(&c);
}

static void test_timeout(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/stall");
    rp_http_request_t req = {.url = u, .timeout_ms = 200};
    uint64_t t0 = uv_now(&c.loop);
    fetch(&c, &req);
    uint64_t took = uv_now(&c.loop) - t0;
    assert_int_equal(c.error, RP_ETIMEDOUT);
    assert_int_equal(c.status, 0);
    assert_true(strlen(c.error_msg) > 0);
    assert_true(took >= 190 && took < 2000);
    ctx_finish(&c);
}

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

static void test_refused(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/ok", free_port());
    const char *headers[] = {"Authorization: Bearer sk-secret", NULL};
    rp_http_request_t req = {.url = u, .headers = headers, .timeout_ms = 5000};
    fetch(&c, &req);
    assert_int_equal(c.error, RP_EIO);
    assert_int_equal(c.status, 0);
    assert_true(strlen(c.error_msg) > 0);
    assert_null(strstr(c.error_msg, "sk-secret"));
    ctx_finish(&c);
}

static void test_max_body(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/big");
    rp_http_request_t req = {.url = u, .timeout_ms = 5000, .max_body = 1000};
    fetch(&c, &req);
    assert_int_equal(c.error, RP_EPROTO);
    /* without Content-Length the limit is found while receiving */
    url(&c, u, sizeof(u), "/bigchunked");
    fetch(&c, &req);
    assert_int_equal(c.error, RP_EPROTO);
    assert_non_null(strstr(c.error_msg, "1000"));
    /* under the limit it works */
    req.max_body = 8192;
    fetch(&c, &req);
    assert_int_equal(c.error, 0);
    assert_int_equal(c.status, 200);
    ctx_finish(&c);
}

static void never_called(void *data, const rp_http_resp_t *r)
{
    (void)data;
    (void)r;
    fail_msg("a cancelled request's callback ran");
}

static void cancel_timer(uv_timer_t *t)
{
    ctx_t *c = t->data;
    rp_http_cancel(c->held);
    c->held = NULL;
    c->canceled++;
    uv_stop(&c->loop);
}

static void on_resp_cancel_other(void *data, const rp_http_resp_t *r)
{
    ctx_t *c = data;
    assert_int_equal(r->error, 0);
    /* cancelling another request from a callback is allowed */
    rp_http_cancel(c->held);
    c->held = NULL;
    c->done++;
    uv_stop(&c->loop);
}

static void test_cancel(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/stall");
    rp_http_request_t req = {.url = u, .timeout_ms = 5000};
    /* cancelled before it even started */
    rp_http_req_t *r = NULL;
    assert_int_equal(rp_http_send(c.http, &req, never_called, &c, &r), 0);
    rp_http_cancel(r);
    assert_int_equal(rp_http_inflight(c.http), 0);
    /* cancelled while waiting for the server */
    assert_int_equal(rp_http_send(c.http, &req, never_called, &c, &c.held), 0);
    uv_timer_start(&c.t, cancel_timer, 100, 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.canceled, 1);
    assert_int_equal(rp_http_inflight(c.http), 0);
    /* cancelled from another request's callback */
    assert_int_equal(rp_http_send(c.http, &req, never_called, &c, &c.held), 0);
    char u2[128];
    url(&c, u2, sizeof(u2), "/ok");
    rp_http_request_t ok = {.url = u2, .timeout_ms = 5000};
    assert_int_equal(rp_http_send(c.http, &ok, on_resp_cancel_other, &c, NULL), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.done, 1);
    assert_int_equal(rp_http_inflight(c.http), 0);
    ctx_finish(&c);
}

static void test_concurrent_200(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/ok");
    rp_http_request_t req = {.url = u, .timeout_ms = 10000};
    c.want = 200;
    for (int i = 0; i < 200; i++)
        assert_int_equal(rp_http_send(c.http, &req, on_resp, &c, NULL), 0);
    assert_int_equal(rp_http_inflight(c.http), 200);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.done, 200);
    assert_int_equal(c.srv.requests, 200);
    assert_int_equal(rp_http_inflight(c.http), 0);
    ctx_finish(&c);
}

/* Each answer sends the next request: one kept-alive connection serves all. */
static void on_chain(void *data, const rp_http_resp_t *r)
{
    ctx_t *c = data;
    assert_int_equal(r->error, 0);
    assert_int_equal(r->status, 200);
    c->done++;
    if (--c->chain_left == 0) {
        uv_stop(&c->loop);
        return;
    }
    char u[128];
    url(c, u, sizeof(u), "/ok");
    rp_http_request_t req = {.url = u, .timeout_ms = 5000};
    assert_int_equal(rp_http_send(c->http, &req, on_chain, c, NULL), 0);
}

static void test_keepalive_reuse(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/ok");
    rp_http_request_t req = {.url = u, .timeout_ms = 5000};
    c.chain_left = 20;
    assert_int_equal(rp_http_send(c.http, &req, on_chain, &c, NULL), 0);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.done, 20);
    assert_int_equal(c.srv.accepted, 1);
    ctx_finish(&c);
}

static int on_event(void *data, const rp_sse_event_t *ev)
{
    ctx_t *c = data;
    (void)ev;
    c->events++;
    return 0;
}

static int on_chunk(void *data, const char *chunk, size_t len)
{
    ctx_t *c = data;
    c->chunks++;
    return rp_sse_feed(c->sse, chunk, len) == 0 ? 0 : 1;
}

static int on_chunk_stop(void *data, const char *chunk, size_t len)
{
    ctx_t *c = data;
    (void)chunk;
    (void)len;
    return ++c->chunks >= 2;
}

static void test_stream_chunks(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    c.sse = rp_sse_new(0, on_event, &c);
    char u[128];
    url(&c, u, sizeof(u), "/stream");
    rp_http_request_t req = {.url = u, .timeout_ms = 5000, .on_chunk = on_chunk};
    fetch(&c, &req);
    assert_int_equal(c.error, 0);
    assert_int_equal(c.status, 200);
    assert_string_equal(c.content_type, "text/event-stream");
    assert_true(c.chunks >= 6);    /* the pieces arrived apart, 10 ms from each other */
    assert_int_equal(c.events, 6); /* 5 deltas + [DONE] */
    assert_non_null(strstr(c.body, "data: [DONE]"));
    /* a chunk callback that asks to stop cancels the transfer */
    c.chunks = 0;
    req.on_chunk = on_chunk_stop;
    fetch(&c, &req);
    assert_int_equal(c.error, RP_ECANCELED);
    ctx_finish(&c);
}

static void on_resp_count_cancel(void *data, const rp_http_resp_t *r)
{
    ctx_t *c = data;
    assert_int_equal(r->error, RP_ECANCELED);
    assert_int_equal(
        rp_http_send(c->http, &(rp_http_request_t){.url = "http://127.0.0.1:1/"}, on_resp, c, NULL),
        RP_ECLOSED);
    c->canceled++;
}

static void close_timer(uv_timer_t *t)
{
    ctx_t *c = t->data;
    rp_http_close(c->http, on_closed, c);
    c->http = NULL;
}

static void test_close_with_inflight(void **state)
{
    (void)state;
    ctx_t c;
    ctx_init(&c, NULL);
    char u[128];
    url(&c, u, sizeof(u), "/stall");
    rp_http_request_t req = {.url = u, .timeout_ms = 5000};
    for (int i = 0; i < 5; i++)
        assert_int_equal(rp_http_send(c.http, &req, on_resp_count_cancel, &c, NULL), 0);
    uv_timer_start(&c.t, close_timer, 100, 0);
    /* one more that never started */
    uv_run(&c.loop, UV_RUN_ONCE);
    assert_int_equal(rp_http_send(c.http, &req, on_resp_count_cancel, &c, NULL), 0);
    while (!c.closed)
        uv_run(&c.loop, UV_RUN_ONCE);
    assert_int_equal(c.canceled, 6);
    ctx_finish(&c);
}

/* --- throughput ---------------------------------------------------- */

typedef struct bench {
    ctx_t *c;
    char url[128];
    int sent, done, total;
} bench_t;

static void on_bench(void *data, const rp_http_resp_t *r);

static void bench_send(bench_t *b)
{
    rp_http_request_t req = {.url = b->url, .timeout_ms = 10000};
    assert_int_equal(rp_http_send(b->c->http, &req, on_bench, b, NULL), 0);
    b->sent++;
}

static void on_bench(void *data, const rp_http_resp_t *r)
{
    bench_t *b = data;
    assert_int_equal(r->status, 200);
    b->done++;
    if (b->sent < b->total)
        bench_send(b);
    if (b->done == b->total)
        uv_stop(&b->c->loop);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void test_throughput(void **state)
{
    (void)state;
    ctx_t c;
    rp_http_opts_t o = {.max_connections_per_host = 32};
    ctx_init(&c, &o);
    const char *n_env = getenv("RP_TEST_HTTP_BENCH_N");
    bench_t b = {.c = &c, .total = n_env ? atoi(n_env) : 5000};
    url(&c, b.url, sizeof(b.url), "/ok");
    uint64_t t0 = uv_hrtime();
    double cpu0 = cpu_seconds();
    for (int i = 0; i < 64 && b.sent < b.total; i++)
        bench_send(&b);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    double secs = (double)(uv_hrtime() - t0) / 1e9;
    double cpu = cpu_seconds() - cpu0;
    assert_int_equal(b.done, b.total);
    printf("http throughput: %d requests in %.3f s = %.0f requests/s, %.1f us CPU/request "
           "(client and in-process server together; 64 in flight, %d connections)\n",
           b.total, secs, b.total / secs, cpu * 1e6 / b.total, c.srv.accepted);
    ctx_finish(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_ok),
        cmocka_unit_test(test_post_echo),
        cmocka_unit_test(test_429_retry_after),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_max_body),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_concurrent_200),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_stream_chunks),
        cmocka_unit_test(test_close_with_inflight),
        cmocka_unit_test(test_throughput),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
