/*
 * httpd.c: the HTTP/1.1 server behind rp_httpd_* (see httpd.h).
 *
 * Structure.  A server owns one listening uv_tcp_t and a list of
 * connections.  A connection owns a uv_tcp_t, an idle timer, an http_parser
 * and a FIFO of requests that have been completely received but whose
 * answers have not yet been fully handed to libuv.  Requests are answered in
 * that order whatever order the handler answers them in: output for a
 * request that is not at the head of the FIFO waits in the request (a list
 * of write blocks) until every earlier request is done.
 *
 * Memory.  A request is one allocation (the struct with an inline area for
 * URL, header text and small bodies); a larger body is a second one.  Each
 * answer is serialised into one write block (one allocation) that is first
 * offered to uv_try_write and, for whatever the kernel did not take, queued
 * with uv_write using the block's own uv_write_t; the block is freed by the
 * write callback.  Reads go into one buffer per server: the parser copies
 * everything it keeps before the read callback returns, so the buffer is
 * free again when the next connection reads.
 *
 * Lifetimes.  A connection is freed only in the close callbacks of its two
 * handles (libuv cancels pending writes before calling the close callback,
 * so no write callback can see a freed connection).  A request leaves the
 * handler's hands when it is answered, or, when the client goes away first,
 * when its on_abort callback returns.  A request the handler owns and that
 * has no on_abort callback is detached instead: it stays allocated (on the
 * server's orphan list) until the handler answers it, and that answer is
 * dropped.  The server struct is freed after the last handle is closed,
 * just after the user's close callback.
 *
 * Limits.  Header bytes (URL plus header names and values) above
 * max_header_bytes give 431, a body above max_body_bytes gives 413 (at once
 * when Content-Length announces it), any parse error gives 400; all three
 * close the connection after the answer.  At most RP_HTTPD_MAX_PIPELINE
 * requests wait per connection: beyond that the connection stops reading
 * until answers go out.
 */
#include "httpd.h"

#include <errno.h>
#include <http_parser.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"

#define RP_HTTPD_READ_BUF (64 * 1024)
#define RP_HTTPD_INLINE 2048      /* inline bytes per request (text and small bodies) */
#define RP_HTTPD_INLINE_HDRS 24   /* header slots before the table moves to the heap */
#define RP_HTTPD_MAX_PIPELINE 128 /* waiting requests per connection before reads pause */
#define RP_HTTPD_LINGER_MS 2000   /* wait for the client's EOF after our last answer */

typedef struct conn conn_t;

/* Output bytes waiting to be written, and then being written.  The uv_write_t
 * is first so the write callback can recover the block. */
typedef struct wblock {
    uv_write_t w;
    conn_t *c;
    struct wblock *next;
    size_t len;
    size_t off; /* bytes already taken by uv_try_write */
    char data[];
} wblock_t;

typedef enum {
    REQ_PARSING = 0, /* headers or body still arriving (conn->cur) */
    REQ_HANDLER,     /* complete; the handler owns it, no answer yet */
    REQ_STREAMING,   /* rp_httpd_begin called, rp_httpd_end not yet */
    REQ_DONE,        /* the whole answer has been produced */
    REQ_ORPHAN,      /* the client left; kept until the handler answers */
} req_state_t;

typedef struct hdr_off {
    uint32_t name;
    uint32_t value;
} hdr_off_t;

typedef enum { LAST_NONE = 0, LAST_FIELD, LAST_VALUE } last_cb_t;

struct rp_httpd_req {
    conn_t *c; /* NULL once orphaned */
    rp_httpd_t *s;
    struct rp_httpd_req *next; /* FIFO on the connection, or the orphan list */
    struct rp_httpd_req *prev; /* orphan list only */
    req_state_t state;
    unsigned keepalive : 1;
    unsigned close_after : 1; /* close the connection once this answer is out */
    unsigned head_only : 1;   /* HEAD: no body in the answer */
    unsigned chunked : 1;     /* streaming with chunked encoding (HTTP/1.1) */
    unsigned http10 : 1;
    unsigned expect_continue : 1;
    unsigned headers_done : 1;
    last_cb_t last;
    const char *method;
    /* text: URL, then NUL-terminated header names and values */
    char *text;
    size_t tlen, tcap;
    size_t path_off, query_off; /* query_off == SIZE_MAX: no query */
    hdr_off_t *hdrs;
    size_t nhdrs, hcap;
    char *body;
    size_t blen, bcap;
    int body_heap;
    /* output held back while earlier requests are unanswered */
    wblock_t *out_head, *out_tail;
    void (*abort_cb)(void *data);
    void *abort_data;
    hdr_off_t inline_hdrs[RP_HTTPD_INLINE_HDRS];
    char inline_buf[RP_HTTPD_INLINE];
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown;
    rp_httpd_t *s;
    conn_t *prev, *next;
    http_parser parser;
    rp_httpd_req_t *cur;   /* request being parsed */
    rp_httpd_req_t *qhead; /* oldest request not yet fully handed to libuv */
    rp_httpd_req_t *qtail;
    size_t nq;
    size_t header_bytes;
    int err_status; /* 413/431 decided inside a parser callback */
    int open_handles;
    unsigned closing : 1;
    unsigned no_input : 1; /* ignore further input (last request seen, or an error) */
    unsigned shutting : 1; /* uv_shutdown issued: close once the writes are out */
    unsigned reading : 1;
    unsigned in_parse : 1;
    uint64_t last_active;
    char peer[64];
};

struct rp_httpd {
    uv_loop_t *loop;
    uv_tcp_t listener;
    rp_httpd_opts_t opts;
    char host[64];
    int port;
    int listening;
    int stopping;
    int closing;
    int listener_open;
    size_t open_handles;
    conn_t *conns;
    rp_httpd_req_t *orphans;
    void (*close_cb)(void *data);
    void *close_data;
    http_parser_settings settings;
    char rbuf[RP_HTTPD_READ_BUF];
};

static void conn_close(conn_t *c);
static void conn_flush(conn_t *c);
static void server_maybe_done(rp_httpd_t *s);

/* ------------------------------------------------------------------ */
/* requests                                                            */

static rp_httpd_req_t *req_new(conn_t *c)
{
    rp_httpd_req_t *r = malloc(sizeof(*r));
    if (r == NULL)
        return NULL;
    /* Only the header part needs zeroing; the inline areas are written before read. */
    memset(r, 0, offsetof(rp_httpd_req_t, inline_hdrs));
    r->c = c;
    r->s = c->s;
    r->state = REQ_PARSING;
    r->text = r->inline_buf;
    r->tcap = RP_HTTPD_INLINE;
    r->hdrs = r->inline_hdrs;
    r->hcap = RP_HTTPD_INLINE_HDRS;
    r->query_off = SIZE_MAX;
    r->method = "GET";
    return r;
}

static void wblocks_free(wblock_t *b)
{
    while (b != NULL) {
        wblock_t *n = b->next;
        free(b);
        b = n;
    }
}

static void req_free(rp_httpd_req_t *r)
{
    wblocks_free(r->out_head);
    if (r->text != r->inline_buf)
        free(r->text);
    if (r->hdrs != r->inline_hdrs)
        free(r->hdrs);
    if (r->body_heap)
        free(r->body);
    free(r);
}

/* Append to the text area; returns 0 or -1 when out of memory.  Offsets
 * (not pointers) are kept while parsing because the area may move. */
static int req_text_append(rp_httpd_req_t *r, const char *p, size_t n)
{
    if (r->tlen + n + 1 > r->tcap) {
        size_t cap = r->tcap * 2;
        while (cap < r->tlen + n + 1)
            cap *= 2;
        char *t;
        if (r->text == r->inline_buf) {
            t = malloc(cap);
            if (t != NULL)
                memcpy(t, r->text, r->tlen);
        } else {
            t = realloc(r->text, cap);
        }
        if (t == NULL)
            return -1;
        r->text = t;
        r->tcap = cap;
    }
    memcpy(r->text + r->tlen, p, n);
    r->tlen += n;
    return 0;
}

static int req_text_nul(rp_httpd_req_t *r)
{
    char z = '\0';
    return req_text_append(r, &z, 1);
}

/* The client left while the handler still owns r and no on_abort callback
 * was set: keep r (without its output) until the handler answers it. */
static void orphan_add(rp_httpd_req_t *r)
{
    rp_httpd_t *s = r->s;
    r->c = NULL;
    r->state = REQ_ORPHAN;
    wblocks_free(r->out_head);
    r->out_head = r->out_tail = NULL;
    r->prev = NULL;
    r->next = s->orphans;
    if (s->orphans != NULL)
        s->orphans->prev = r;
    s->orphans = r;
}

/* The handler answered an orphan: unlink and free it.  Returns RP_ECLOSED
 * for the caller to pass on. */
static int orphan_drop(rp_httpd_req_t *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        r->s->orphans = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    req_free(r);
    return RP_ECLOSED;
}

/* ------------------------------------------------------------------ */
/* output                                                              */

static wblock_t *wblock_new(size_t len)
{
    wblock_t *b = malloc(sizeof(*b) + len);
    if (b == NULL)
        return NULL;
    b->c = NULL;
    b->next = NULL;
    b->len = len;
    b->off = 0;
    return b;
}

static void on_write(uv_write_t *w, int status)
{
    wblock_t *b = (wblock_t *)w;
    conn_t *c = b->c;
    free(b);
    if (status < 0 && status != UV_ECANCELED)
        conn_close(c);
}

/* Hand one block to libuv: uv_try_write first (most answers fit in the
 * socket buffer, so no write request is queued at all), then uv_write of
 * the rest.  Takes ownership of b. */
static void conn_send(conn_t *c, wblock_t *b)
{
    if (c->closing) {
        free(b);
        return;
    }
    b->c = c;
    b->next = NULL;
    uv_buf_t buf = uv_buf_init(b->data, (unsigned)b->len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
    if (n >= 0 && (size_t)n == b->len) {
        free(b);
        return;
    }
    if (n > 0)
        b->off = (size_t)n;
    /* On a hard error uv_write fails too, and reports it through on_write
     * on a later loop turn, which closes the connection there. */
    buf = uv_buf_init(b->data + b->off, (unsigned)(b->len - b->off));
    if (uv_write(&b->w, (uv_stream_t *)&c->tcp, &buf, 1, on_write) < 0) {
        free(b);
        conn_close(c);
    }
}

/* Queue a block for request r: straight to the socket when r is the oldest
 * request on its connection, held in r otherwise.  Takes ownership of b. */
static void req_emit(rp_httpd_req_t *r, wblock_t *b)
{
    conn_t *c = r->c;
    if (c->qhead == r && r->out_head == NULL) {
        conn_send(c, b);
        return;
    }
    b->next = NULL;
    if (r->out_tail != NULL)
        r->out_tail->next = b;
    else
        r->out_head = b;
    r->out_tail = b;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_timer(uv_timer_t *t);

static void conn_shutdown_cb(uv_shutdown_t *sd, int status)
{
    conn_t *c = sd->data;
    if (status < 0 || c->closing) {
        conn_close(c);
        return;
    }
    /* Lingering close: our side is shut; wait (briefly) for the client's
     * EOF while discarding its input.  Closing at once with unread input
     * would make the kernel send a reset, which can destroy the answer
     * before the client reads it. */
    uv_timer_start(&c->timer, on_timer, RP_HTTPD_LINGER_MS, 0);
}

/* The connection ends after the answers already queued: libuv's shutdown
 * waits for pending writes, then the lingering close follows. */
static void conn_finish(conn_t *c)
{
    if (c->closing || c->shutting)
        return;
    c->shutting = 1;
    c->no_input = 1;
    if (!c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
    }
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, conn_shutdown_cb) < 0)
        conn_close(c);
}

static void conn_start_timer(conn_t *c);

/* Send every answer that can go now, in request order. */
static void conn_flush(conn_t *c)
{
    while (!c->closing && c->qhead != NULL) {
        rp_httpd_req_t *r = c->qhead;
        while (r->out_head != NULL) {
            wblock_t *b = r->out_head;
            r->out_head = b->next;
            conn_send(c, b);
            if (c->closing)
                return;
        }
        r->out_tail = NULL;
        if (r->state != REQ_DONE)
            break;
        c->qhead = r->next;
        if (c->qhead == NULL)
            c->qtail = NULL;
        c->nq--;
        int close_after = r->close_after;
        req_free(r);
        if (close_after) {
            conn_finish(c);
            return;
        }
    }
    if (c->closing || c->shutting)
        return;
    if (c->qhead == NULL && (c->no_input || (c->s->stopping && c->cur == NULL))) {
        conn_finish(c);
        return;
    }
    if (!c->reading && !c->no_input && c->nq < RP_HTTPD_MAX_PIPELINE / 2 && !c->in_parse) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
    }
    if (c->qhead == NULL)
        conn_start_timer(c);
}

/* Serialise status line and headers into dst (or just count when dst is
 * NULL); returns the length. */
static size_t head_format(char *dst, int status, const char *const *headers, const char *extra1,
                          const char *extra2)
{
    char line[32];
    memcpy(line, "HTTP/1.1 ", 9);
    size_t n = 9 + rp_put_decimal(line + 9, status >= 100 && status <= 999 ? (size_t)status : 500);
    line[n++] = ' ';
    const char *reason = rp_httpd_reason(status);
    size_t len = 0;
#define PUT(p, l)                                                                                  \
    do {                                                                                           \
        if (dst != NULL)                                                                           \
            memcpy(dst + len, (p), (l));                                                           \
        len += (l);                                                                                \
    } while (0)
    PUT(line, n);
    PUT(reason, strlen(reason));
    PUT("\r\n", 2);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        PUT(headers[i], strlen(headers[i]));
        PUT("\r\n", 2);
    }
    if (extra1 != NULL)
        PUT(extra1, strlen(extra1));
    if (extra2 != NULL)
        PUT(extra2, strlen(extra2));
    PUT("\r\n", 2);
#undef PUT
    return len;
}

/* ------------------------------------------------------------------ */
/* error answers produced by the server itself                         */

static void conn_queue_req(conn_t *c, rp_httpd_req_t *r)
{
    r->next = NULL;
    if (c->qtail != NULL)
        c->qtail->next = r;
    else
        c->qhead = r;
    c->qtail = r;
    c->nq++;
}

/* Answer with status and close: used for 400, 413 and 431.  Input after
 * this point is ignored. */
static void conn_fail(conn_t *c, int status)
{
    rp_httpd_req_t *r = c->cur;
    c->cur = NULL;
    if (r == NULL)
        r = req_new(c);
    if (r == NULL) {
        conn_close(c);
        return;
    }
    c->no_input = 1; /* input is read and discarded from now on */
    conn_queue_req(c, r);
    r->state = REQ_HANDLER;
    char body[96];
    int blen = snprintf(body, sizeof(body), "%d %s\n", status, rp_httpd_reason(status));
    static const char *const hdrs[] = {"Content-Type: text/plain", NULL};
    r->keepalive = 0;
    rp_httpd_respond(r, status, hdrs, body, (size_t)blen);
}

/* ------------------------------------------------------------------ */
/* parser callbacks                                                    */

static int cb_message_begin(http_parser *p)
{
    conn_t *c = p->data;
    c->header_bytes = 0;
    c->cur = req_new(c);
    return c->cur == NULL ? -1 : 0;
}

static int header_budget(conn_t *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->s->opts.max_header_bytes) {
        c->err_status = 431;
        return -1;
    }
    return 0;
}

static int cb_url(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (header_budget(c, n) < 0)
        return -1;
    return req_text_append(c->cur, at, n);
}

static int cb_header_field(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    rp_httpd_req_t *r = c->cur;
    if (header_budget(c, n + 4) < 0)
        return -1;
    if (r->last != LAST_FIELD) {
        /* A new header starts: close the previous string (URL or value). */
        if (req_text_nul(r) < 0)
            return -1;
        if (r->nhdrs == r->hcap) {
            size_t cap = r->hcap * 2;
            hdr_off_t *h;
            if (r->hdrs == r->inline_hdrs) {
                h = malloc(cap * sizeof(*h));
                if (h != NULL)
                    memcpy(h, r->hdrs, r->nhdrs * sizeof(*h));
            } else {
                h = realloc(r->hdrs, cap * sizeof(*h));
            }
            if (h == NULL)
                return -1;
            r->hdrs = h;
            r->hcap = cap;
        }
        r->hdrs[r->nhdrs].name = (uint32_t)r->tlen;
        r->hdrs[r->nhdrs].value = UINT32_MAX;
        r->nhdrs++;
        r->last = LAST_FIELD;
    }
    return req_text_append(r, at, n);
}

static int cb_header_value(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    rp_httpd_req_t *r = c->cur;
    if (header_budget(c, n) < 0)
        return -1;
    if (r->last != LAST_VALUE) {
        if (req_text_nul(r) < 0)
            return -1;
        r->hdrs[r->nhdrs - 1].value = (uint32_t)r->tlen;
        r->last = LAST_VALUE;
    }
    return req_text_append(r, at, n);
}

static const char *req_text_at(const rp_httpd_req_t *r, uint32_t off)
{
    return off == UINT32_MAX ? "" : r->text + off;
}

static int cb_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    rp_httpd_req_t *r = c->cur;
    if (req_text_nul(r) < 0)
        return -1;
    if (r->nhdrs > 0 && r->hdrs[r->nhdrs - 1].value == UINT32_MAX) {
        /* A header with an empty value: point it at its name's terminator. */
        r->hdrs[r->nhdrs - 1].value = (uint32_t)(r->tlen - 1);
    }
    r->method = http_method_str((enum http_method)p->method);
    r->head_only = p->method == HTTP_HEAD;
    r->http10 = p->http_major == 1 && p->http_minor == 0;

    /* Split the URL (the first string) into path and query.  An absolute
     * form ("http://host/path") is reduced to its path. */
    char *url = r->text;
    size_t path = 0;
    if (url[0] != '/' && url[0] != '*') {
        char *scheme = strstr(url, "://");
        if (scheme != NULL) {
            char *slash = strchr(scheme + 3, '/');
            path = slash != NULL ? (size_t)(slash - url) : strlen(url);
        }
    }
    r->path_off = path;
    char *q = strchr(url + path, '?');
    if (q != NULL) {
        *q = '\0';
        r->query_off = (size_t)(q + 1 - url);
        char *frag = strchr(q + 1, '#');
        if (frag != NULL)
            *frag = '\0';
    } else {
        char *frag = strchr(url + path, '#');
        if (frag != NULL)
            *frag = '\0';
    }

    const rp_httpd_opts_t *o = &c->s->opts;
    int has_length = (p->flags & F_CONTENTLENGTH) != 0;
    if (has_length && p->content_length > o->max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    size_t want = has_length ? (size_t)p->content_length : 0;
    /* A small body goes in the inline area after the text; a larger one
     * gets exactly the size announced (or grows when chunked). */
    if (r->text == r->inline_buf && r->tlen + want + 1 <= RP_HTTPD_INLINE) {
        r->body = r->inline_buf + r->tlen;
        r->bcap = RP_HTTPD_INLINE - r->tlen;
    } else if (want > 0) {
        r->body = malloc(want + 1);
        if (r->body == NULL)
            return -1;
        r->body_heap = 1;
        r->bcap = want + 1;
    }
    const char *expect = rp_httpd_header(r, "Expect");
    r->expect_continue = expect != NULL && strcasecmp(expect, "100-continue") == 0;
    r->headers_done = 1;
    return 0;
}

static int cb_body(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    rp_httpd_req_t *r = c->cur;
    if (r->blen + n > c->s->opts.max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    if (r->blen + n + 1 > r->bcap) {
        size_t cap = r->bcap > 0 ? r->bcap * 2 : 4096;
        while (cap < r->blen + n + 1)
            cap *= 2;
        char *b;
        if (!r->body_heap) {
            b = malloc(cap);
            if (b != NULL && r->blen > 0)
                memcpy(b, r->body, r->blen);
        } else {
            b = realloc(r->body, cap);
        }
        if (b == NULL)
            return -1;
        r->body = b;
        r->bcap = cap;
        r->body_heap = 1;
    }
    memcpy(r->body + r->blen, at, n);
    r->blen += n;
    return 0;
}

static int cb_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    rp_httpd_req_t *r = c->cur;
    c->cur = NULL;
    if (r->body == NULL) {
        r->body = r->text + r->tlen; /* the text's final NUL: an empty string */
    } else {
        r->body[r->blen] = '\0';
    }
    r->keepalive = http_should_keep_alive(p) && !c->s->stopping;
    r->state = REQ_HANDLER;
    conn_queue_req(c, r);
    int last = !r->keepalive;
    /* r may be freed by the handler (an answer at once): not used below. */
    c->s->opts.handler(c->s->opts.data, r);
    /* The handler may have closed the connection or the server; stop
     * parsing then (the pause makes http_parser_execute return). */
    if (c->closing || c->shutting || last) {
        c->no_input = 1;
        http_parser_pause(p, 1);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* connection I/O                                                      */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    buf->base = c->s->rbuf;
    buf->len = sizeof(c->s->rbuf);
}

/* Send "100 Continue" for a request that asked for it, once its headers are
 * in: curl waits a second for it before sending a body otherwise. */
static void req_send_continue(rp_httpd_req_t *r)
{
    static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
    wblock_t *b = wblock_new(sizeof(msg) - 1);
    if (b == NULL)
        return;
    memcpy(b->data, msg, sizeof(msg) - 1);
    /* The request is not yet in the FIFO; it will be the next one queued,
     * so it may write now only when nothing is waiting before it. */
    if (r->c->qhead == NULL)
        conn_send(r->c, b);
    else
        free(b); /* pipelining with Expect: the client sends the body anyway */
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = stream->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        /* EOF or reset: the client is gone, answered or not. */
        conn_close(c);
        return;
    }
    c->last_active = uv_now(c->s->loop);
    if (c->no_input)
        return;
    c->in_parse = 1;
    size_t n = http_parser_execute(&c->parser, &c->s->settings, buf->base, (size_t)nread);
    c->in_parse = 0;
    if (c->closing)
        return;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
        /* Stopped on purpose after a last request (Connection: close) or a
         * close by the handler: what follows is discarded; the connection
         * ends after the answers still due. */
        return;
    }
    if (e != HPE_OK) {
        int status = c->err_status;
        if (status == 0)
            status = e == HPE_HEADER_OVERFLOW ? 431 : 400;
        conn_fail(c, status);
        return;
    }
    if (c->parser.upgrade || n != (size_t)nread) {
        conn_fail(c, 400);
        return;
    }
    if (c->cur != NULL && c->cur->expect_continue && c->cur->headers_done && c->cur->blen == 0) {
        c->cur->expect_continue = 0;
        req_send_continue(c->cur);
    }
    if (c->nq >= RP_HTTPD_MAX_PIPELINE && c->reading) {
        uv_read_stop(stream);
        c->reading = 0;
    }
}

static void on_timer(uv_timer_t *t)
{
    conn_t *c = t->data;
    if (c->shutting) {
        conn_close(c); /* the lingering close is over */
        return;
    }
    if (c->closing || c->qhead != NULL)
        return; /* answers pending: the timer restarts when they are out */
    uint64_t now = uv_now(c->s->loop);
    uint64_t idle = (uint64_t)c->s->opts.idle_timeout_ms;
    if (now - c->last_active >= idle) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timer, idle - (now - c->last_active), 0);
}

/* Arm the idle timer unless it already runs: it checks the last activity
 * when it fires, so reads need not restart it. */
static void conn_start_timer(conn_t *c)
{
    if (c->s->opts.idle_timeout_ms <= 0 || uv_is_active((uv_handle_t *)&c->timer))
        return;
    c->last_active = uv_now(c->s->loop);
    uv_timer_start(&c->timer, on_timer, (uint64_t)c->s->opts.idle_timeout_ms, 0);
}

static void conn_on_close(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    rp_httpd_t *s = c->s;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    free(c);
    s->open_handles -= 2;
    server_maybe_done(s);
}

/* Close the connection now.  Requests the handler still owns are aborted
 * (or orphaned); everything else is dropped. */
static void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->reading = 0;
    if (c->cur != NULL) {
        req_free(c->cur);
        c->cur = NULL;
    }
    rp_httpd_req_t *r = c->qhead;
    c->qhead = c->qtail = NULL;
    c->nq = 0;
    while (r != NULL) {
        rp_httpd_req_t *next = r->next;
        if (r->state == REQ_HANDLER || r->state == REQ_STREAMING) {
            if (r->abort_cb != NULL) {
                void (*cb)(void *) = r->abort_cb;
                void *data = r->abort_data;
                req_free(r);
                cb(data);
            } else {
                orphan_add(r);
            }
        } else {
            req_free(r);
        }
        r = next;
    }
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
}

static void on_connection(uv_stream_t *server, int status)
{
    rp_httpd_t *s = server->data;
    if (status < 0 || s->stopping || s->closing)
        return;
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return; /* out of memory: the connection stays unaccepted */
    c->s = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    s->open_handles += 2;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->closing = 1;
        uv_close((uv_handle_t *)&c->tcp, conn_on_close);
        uv_close((uv_handle_t *)&c->timer, conn_on_close);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        conn_close(c);
        return;
    }
    c->reading = 1;
    conn_start_timer(c);
}

/* ------------------------------------------------------------------ */
/* server                                                              */

rp_httpd_t *rp_httpd_new(uv_loop_t *loop, const rp_httpd_opts_t *opts, rp_err_t *err)
{
    if (loop == NULL || opts == NULL || opts->handler == NULL) {
        rp_err_set(err, RP_EINVAL, "The HTTP server needs a loop and a handler.");
        return NULL;
    }
    rp_httpd_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        rp_err_set(err, RP_ENOMEM, "Out of memory creating the HTTP server.");
        return NULL;
    }
    s->loop = loop;
    s->opts = *opts;
    snprintf(s->host, sizeof(s->host), "%s",
             opts->host != NULL && opts->host[0] != '\0' ? opts->host : "127.0.0.1");
    s->opts.host = s->host;
    if (s->opts.backlog <= 0)
        s->opts.backlog = 4096;
    if (s->opts.max_header_bytes == 0)
        s->opts.max_header_bytes = 16 * 1024;
    if (s->opts.max_body_bytes == 0)
        s->opts.max_body_bytes = 1024 * 1024;
    if (s->opts.idle_timeout_ms == 0)
        s->opts.idle_timeout_ms = 60000;
    s->settings.on_message_begin = cb_message_begin;
    s->settings.on_url = cb_url;
    s->settings.on_header_field = cb_header_field;
    s->settings.on_header_value = cb_header_value;
    s->settings.on_headers_complete = cb_headers_complete;
    s->settings.on_body = cb_body;
    s->settings.on_message_complete = cb_message_complete;
    return s;
}

/* libuv 1.44 cannot set SO_REUSEPORT: make the socket ourselves and hand it
 * over before the bind. */
static int reuse_port_socket(uv_tcp_t *listener, int family)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return uv_translate_sys_error(errno);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        int rc = uv_translate_sys_error(errno);
        close(fd);
        return rc;
    }
    int rc = uv_tcp_open(listener, fd);
    if (rc < 0)
        close(fd);
    return rc;
}

int rp_httpd_start(rp_httpd_t *s, rp_err_t *err)
{
    struct sockaddr_storage addr;
    int rc;
    if (s->listener_open || s->closing)
        return rp_err_set(err, RP_EINVAL, "The HTTP server is already started or closing.");
    if (strchr(s->host, ':') != NULL)
        rc = uv_ip6_addr(s->host, s->opts.port, (struct sockaddr_in6 *)&addr);
    else
        rc = uv_ip4_addr(s->host, s->opts.port, (struct sockaddr_in *)&addr);
    if (rc < 0)
        return rp_err_set(err, RP_EINVAL, "Invalid listen address %s:%d: %s.", s->host,
                          s->opts.port, uv_strerror(rc));
    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listener_open = 1;
    s->open_handles++;
    rc = s->opts.reuse_port ? reuse_port_socket(&s->listener, addr.ss_family) : 0;
    if (rc == 0)
        rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, s->opts.backlog, on_connection);
    if (rc < 0) {
        rp_err_set(err, RP_EIO, "Cannot listen on %s:%d: %s.", s->host, s->opts.port,
                   uv_strerror(rc));
        return rc == UV_EINVAL ? RP_EINVAL : RP_EIO;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen) == 0) {
        if (bound.ss_family == AF_INET6)
            s->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
        else
            s->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    }
    s->listening = 1;
    return 0;
}

int rp_httpd_port(const rp_httpd_t *s)
{
    return s->port;
}

static void listener_on_close(uv_handle_t *h)
{
    rp_httpd_t *s = h->data;
    s->open_handles--;
    server_maybe_done(s);
}

static void server_close_listener(rp_httpd_t *s)
{
    if (s->listener_open) {
        s->listener_open = 0;
        s->listening = 0;
        uv_close((uv_handle_t *)&s->listener, listener_on_close);
    }
}

void rp_httpd_stop(rp_httpd_t *s)
{
    if (s->stopping || s->closing)
        return;
    s->stopping = 1;
    server_close_listener(s);
    conn_t *c = s->conns;
    while (c != NULL) {
        conn_t *next = c->next;
        if (!c->closing && c->qhead == NULL && c->cur == NULL)
            conn_close(c);
        c = next;
    }
}

static void server_maybe_done(rp_httpd_t *s)
{
    if (!s->closing || s->open_handles > 0)
        return;
    void (*cb)(void *) = s->close_cb;
    void *data = s->close_data;
    free(s);
    if (cb != NULL)
        cb(data);
}

void rp_httpd_close(rp_httpd_t *s, void (*close_cb)(void *data), void *data)
{
    if (s->closing)
        return;
    s->stopping = 1;
    s->closing = 1;
    s->close_cb = close_cb;
    s->close_data = data;
    server_close_listener(s);
    for (conn_t *c = s->conns; c != NULL; c = c->next)
        conn_close(c);
    rp_httpd_req_t *r = s->orphans;
    s->orphans = NULL;
    while (r != NULL) {
        rp_httpd_req_t *next = r->next;
        req_free(r);
        r = next;
    }
    if (s->open_handles == 0) {
        /* Never started: no handle to wait for, so the callback runs now. */
        server_maybe_done(s);
    }
}

/* ------------------------------------------------------------------ */
/* request accessors                                                   */

const char *rp_httpd_method(const rp_httpd_req_t *r)
{
    return r->method;
}

const char *rp_httpd_path(const rp_httpd_req_t *r)
{
    return r->text + r->path_off;
}

const char *rp_httpd_query(const rp_httpd_req_t *r)
{
    return r->query_off == SIZE_MAX ? "" : r->text + r->query_off;
}

const char *rp_httpd_header(const rp_httpd_req_t *r, const char *name)
{
    for (size_t i = 0; i < r->nhdrs; i++)
        if (strcasecmp(r->text + r->hdrs[i].name, name) == 0)
            return req_text_at(r, r->hdrs[i].value);
    return NULL;
}

size_t rp_httpd_nheaders(const rp_httpd_req_t *r)
{
    return r->nhdrs;
}

rp_httpd_header_t rp_httpd_header_at(const rp_httpd_req_t *r, size_t i)
{
    rp_httpd_header_t h = {NULL, NULL};
    if (i < r->nhdrs) {
        h.name = r->text + r->hdrs[i].name;
        h.value = req_text_at(r, r->hdrs[i].value);
    }
    return h;
}

const char *rp_httpd_body(const rp_httpd_req_t *r, size_t *len)
{
    if (len != NULL)
        *len = r->blen;
    return r->body;
}

const char *rp_httpd_peer(const rp_httpd_req_t *r)
{
    conn_t *c = r->c;
    if (c == NULL)
        return "";
    if (c->peer[0] == '\0') {
        struct sockaddr_storage a;
        int alen = sizeof(a);
        char ip[INET6_ADDRSTRLEN] = "";
        int port = 0;
        if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&a, &alen) == 0) {
            if (a.ss_family == AF_INET6) {
                uv_ip6_name((struct sockaddr_in6 *)&a, ip, sizeof(ip));
                port = ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
            } else {
                uv_ip4_name((struct sockaddr_in *)&a, ip, sizeof(ip));
                port = ntohs(((struct sockaddr_in *)&a)->sin_port);
            }
        }
        snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
    }
    return c->peer;
}

void rp_httpd_on_abort(rp_httpd_req_t *r, void (*cb)(void *data), void *data)
{
    r->abort_cb = cb;
    r->abort_data = data;
}

/* ------------------------------------------------------------------ */
/* answers                                                             */

static void req_finish(rp_httpd_req_t *r)
{
    conn_t *c = r->c;
    r->state = REQ_DONE;
    if (!r->keepalive)
        r->close_after = 1;
    if (c->qhead == r)
        conn_flush(c);
}

int rp_httpd_respond(rp_httpd_req_t *r, int status, const char *const *headers, const char *body,
                     size_t len)
{
    if (r->state == REQ_ORPHAN)
        return orphan_drop(r);
    if (r->state != REQ_HANDLER)
        return RP_EINVAL;
    char extra[96];
    memcpy(extra, "Content-Length: ", 16);
    size_t n = 16 + rp_put_decimal(extra + 16, len);
    const char *conn =
        r->keepalive ? "\r\nConnection: keep-alive\r\n" : "\r\nConnection: close\r\n";
    memcpy(extra + n, conn, strlen(conn) + 1);
    size_t hlen = head_format(NULL, status, headers, extra, NULL);
    size_t blen = r->head_only ? 0 : len;
    wblock_t *b = wblock_new(hlen + blen);
    if (b == NULL) {
        r->keepalive = 0;
        b = wblock_new(0);
        if (b == NULL) {
            conn_t *c = r->c;
            r->state = REQ_DONE;
            conn_close(c);
            return RP_ENOMEM;
        }
    } else {
        head_format(b->data, status, headers, extra, NULL);
        if (blen > 0)
            memcpy(b->data + hlen, body, blen);
    }
    req_emit(r, b);
    req_finish(r);
    return 0;
}

int rp_httpd_begin(rp_httpd_req_t *r, int status, const char *const *headers)
{
    if (r->state == REQ_ORPHAN)
        return RP_ECLOSED;
    if (r->state != REQ_HANDLER)
        return RP_EINVAL;
    /* HTTP/1.0 has no chunked encoding: the body ends with the connection. */
    r->chunked = !r->http10;
    if (!r->chunked)
        r->keepalive = 0;
    const char *extra = r->chunked ? "Transfer-Encoding: chunked\r\n" : NULL;
    const char *conn_hdr = r->keepalive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
    size_t hlen = head_format(NULL, status, headers, extra, conn_hdr);
    wblock_t *b = wblock_new(hlen);
    if (b == NULL)
        return RP_ENOMEM;
    head_format(b->data, status, headers, extra, conn_hdr);
    r->state = REQ_STREAMING;
    req_emit(r, b);
    return 0;
}

int rp_httpd_write(rp_httpd_req_t *r, const char *data, size_t len)
{
    if (r->state == REQ_ORPHAN)
        return RP_ECLOSED;
    if (r->state != REQ_STREAMING)
        return RP_EINVAL;
    if (len == 0 || r->head_only)
        return 0; /* an empty chunk would end the body */
    char size[24];
    int n = r->chunked ? snprintf(size, sizeof(size), "%zx\r\n", len) : 0;
    wblock_t *b = wblock_new((size_t)n + len + (r->chunked ? 2 : 0));
    if (b == NULL)
        return RP_ENOMEM;
    memcpy(b->data, size, (size_t)n);
    memcpy(b->data + n, data, len);
    if (r->chunked)
        memcpy(b->data + n + len, "\r\n", 2);
    req_emit(r, b);
    return 0;
}

int rp_httpd_end(rp_httpd_req_t *r)
{
    if (r->state == REQ_ORPHAN)
        return orphan_drop(r);
    if (r->state != REQ_STREAMING)
        return RP_EINVAL;
    if (r->chunked && !r->head_only) {
        wblock_t *b = wblock_new(5);
        if (b == NULL) {
            r->keepalive = 0;
        } else {
            memcpy(b->data, "0\r\n\r\n", 5);
            req_emit(r, b);
        }
    }
    req_finish(r);
    return 0;
}

int rp_httpd_respond_raw_and_close(rp_httpd_req_t *r, const char *bytes, size_t len)
{
    if (r->state == REQ_ORPHAN)
        return orphan_drop(r);
    if (r->state != REQ_HANDLER)
        return RP_EINVAL;
    wblock_t *b = wblock_new(len);
    if (b != NULL) {
        memcpy(b->data, bytes, len);
        req_emit(r, b);
    }
    r->keepalive = 0;
    req_finish(r);
    return b == NULL ? RP_ENOMEM : 0;
}

const char *rp_httpd_reason(int status)
{
    switch (status) {
#define XX(num, name, string)                                                                      \
    case num:                                                                                      \
        return #string;
        HTTP_STATUS_MAP(XX)
#undef XX
    default:
        return "Unknown";
    }
}
