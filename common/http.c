/*
 * http.c: the HTTP client on libcurl's multi interface and libuv (see
 * http.h for the contract, and RECIPES.md §1 for the traps it avoids).
 *
 * Shape.  One CURLM, one uv_timer_t (curl's timeout) and one uv_idle_t
 * (deferred work) per rp_http_t.  Each socket curl uses gets a context with
 * its own uv_poll_t, made on the first CURL_POLL_IN/OUT for that socket and
 * remembered with curl_multi_assign; CURL_POLL_REMOVE stops and closes it
 * (freed in its close callback) and forgets it.  A request is on exactly one
 * list:
 *   - `queued`: accepted by rp_http_send, added to the multi by the idle
 *     callback on the next loop turn (so a send from any callback, even one
 *     curl is running, never re-enters curl);
 *   - `active`: added to the multi;
 *   - `doomed`: cancelled while curl or our completion loop was on the
 *     stack; removed from the multi at the next safe point.
 * Code that calls into curl, or runs user callbacks from curl's results,
 * runs between http_enter and http_leave; rp_http_cancel and rp_http_close
 * only defer while that depth is non-zero, and http_leave performs what was
 * deferred once the depth is back to zero.  Nothing is freed while a curl
 * callback or our own loop over curl's messages could still use it.
 *
 * Easy handles are reused from a small pool (curl_easy_reset keeps nothing
 * of the previous request but avoids re-allocating); connections live in
 * the multi's cache, so they are reused whatever easy handle runs next.
 *
 * curl_global_init runs once per process, guarded by a static flag: it is
 * not thread-safe and must precede any other curl call, and ragpool runs
 * one loop per process (the one documented exception to "no mutable
 * globals").
 */
#include "http.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backoff.h"
#include "log.h"

#define HTTP_DEFAULT_MAX_BODY (16u * 1024u * 1024u)
#define HTTP_POOL_MAX 64
#define HTTP_RETRY_AFTER_CAP_MS (24LL * 3600 * 1000)

typedef enum { REQ_QUEUED = 0, REQ_ACTIVE, REQ_DOOMED, REQ_DONE } req_where_t;

typedef struct req_list {
    rp_http_req_t *head, *tail;
    size_t n;
} req_list_t;

typedef struct http_sock http_sock_t;
struct http_sock {
    uv_poll_t poll;
    rp_http_t *h;
    curl_socket_t fd;
    int events; /* uv events requested */
    int closing;
    http_sock_t *prev, *next; /* h->socks */
};

struct rp_http_req {
    rp_http_t *h;
    rp_http_req_t *prev, *next;
    req_where_t where;
    CURL *easy;
    struct curl_slist *headers;
    char *body; /* our copy of the request body */
    rp_http_cb cb;
    rp_http_chunk_cb on_chunk;
    void *data;
    char *buf; /* response body, NUL-terminated */
    size_t len, cap, max;
    int too_big;     /* the write callback refused: max_body */
    int chunk_abort; /* on_chunk asked to stop */
    char errbuf[CURL_ERROR_SIZE];
};

struct rp_http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    uv_idle_t idle;
    rp_http_opts_t opts;
    req_list_t queued, active, doomed;
    http_sock_t *socks;
    CURL *pool[HTTP_POOL_MAX];
    int npool;
    int depth; /* > 0 while curl or our completion loop is on the stack */
    int closing;
    int close_pending; /* rp_http_close was called at depth > 0 */
    int nhandles;      /* open libuv handles (timer, idle, socket polls) */
    void (*close_cb)(void *data);
    void *close_data;
};

static int curl_ready;

/* ---------------------------------------------------------------- lists */

static void rl_push(req_list_t *l, rp_http_req_t *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

static void rl_unlink(req_list_t *l, rp_http_req_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
    l->n--;
}

static req_list_t *req_list_of(rp_http_t *h, rp_http_req_t *r)
{
    switch (r->where) {
    case REQ_QUEUED:
        return &h->queued;
    case REQ_ACTIVE:
        return &h->active;
    default:
        return &h->doomed;
    }
}

static void req_move(rp_http_req_t *r, req_where_t to)
{
    rl_unlink(req_list_of(r->h, r), r);
    r->where = to;
    rl_push(req_list_of(r->h, r), r);
}

/* ------------------------------------------------------------- requests */

/* Give the easy handle back to the pool (or clean it up) and free r.  The
 * handle must not be in the multi any more. */
static void req_free(rp_http_req_t *r)
{
    rp_http_t *h = r->h;
    if (r->easy) {
        if (h->npool < HTTP_POOL_MAX && !h->closing) {
            curl_easy_reset(r->easy);
            h->pool[h->npool++] = r->easy;
        } else {
            curl_easy_cleanup(r->easy);
        }
    }
    curl_slist_free_all(r->headers);
    free(r->body);
    free(r->buf);
    free(r);
}

/* Take r off its list and out of the multi, then free it. */
static void req_discard(rp_http_req_t *r)
{
    rp_http_t *h = r->h;
    if (r->where != REQ_QUEUED && h->multi)
        curl_multi_remove_handle(h->multi, r->easy);
    rl_unlink(req_list_of(h, r), r);
    req_free(r);
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    rp_http_req_t *r = ud;
    size_t n = size * nmemb;
    if (r->where == REQ_DOOMED)
        return 0; /* cancelled: stop the transfer */
    if (n > r->max - r->len || r->len + n + 1 < r->len) {
        r->too_big = 1;
        return 0;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *nb = realloc(r->buf, cap);
        if (nb == NULL)
            return 0;
        r->buf = nb;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, ptr, n);
    r->len += n;
    r->buf[r->len] = '\0';
    if (r->on_chunk && r->on_chunk(r->data, ptr, n) != 0) {
        r->chunk_abort = 1;
        return 0;
    }
    return n;
}

/* ------------------------------------------------------ deferred work */

static void http_do_close(rp_http_t *h);
static void idle_cb(uv_idle_t *idle);

static void http_enter(rp_http_t *h)
{
    h->depth++;
}

/* Leave a section that may have had curl on the stack; at depth zero,
 * perform the cancels and the close that were deferred meanwhile. */
static void http_leave(rp_http_t *h)
{
    if (--h->depth > 0)
        return;
    while (h->doomed.head)
        req_discard(h->doomed.head);
    if (h->close_pending) {
        h->close_pending = 0;
        http_do_close(h);
    }
}

static void http_wake(rp_http_t *h)
{
    if (!h->closing)
        uv_idle_start(&h->idle, idle_cb);
}

/* -------------------------------------------------------- completions */

static int64_t retry_after_ms(CURL *easy)
{
    struct curl_header *hdr = NULL;
    if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &hdr) != CURLHE_OK ||
        hdr == NULL)
        return -1;
    curl_off_t secs = 0;
    int64_t ms;
    if (curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &secs) == CURLE_OK && secs > 0)
        ms = secs > HTTP_RETRY_AFTER_CAP_MS / 1000 ? HTTP_RETRY_AFTER_CAP_MS : (int64_t)secs * 1000;
    else
        ms = rp_retry_after_parse_ms(hdr->value, (int64_t)time(NULL)); /* "0", or unparsable */
    if (ms > HTTP_RETRY_AFTER_CAP_MS)
        ms = HTTP_RETRY_AFTER_CAP_MS;
    return ms;
}

/* A transfer finished: gather what curl knows, take it out of the multi,
 * and run the callback (unless the request was cancelled meanwhile). */
static void req_done(rp_http_t *h, rp_http_req_t *r, CURLcode rc)
{
    rp_http_resp_t resp = {.error = 0, .error_msg = "", .retry_after_ms = -1, .body = ""};
    curl_off_t total_us = 0;
    curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &total_us);
    resp.total_ms = (double)total_us / 1000.0;
    char msg[CURL_ERROR_SIZE + 64];
    msg[0] = '\0';
    if (rc == CURLE_OK) {
        long status = 0;
        char *ct = NULL;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(r->easy, CURLINFO_CONTENT_TYPE, &ct);
        resp.status = status;
        resp.content_type = ct;
        resp.retry_after_ms = retry_after_ms(r->easy);
        if (r->buf) {
            resp.body = r->buf;
            resp.body_len = r->len;
        }
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        resp.error = RP_ETIMEDOUT;
        snprintf(msg, sizeof(msg), "request timed out: %s",
                 r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
    } else if ((rc == CURLE_WRITE_ERROR && r->too_big) || rc == CURLE_FILESIZE_EXCEEDED) {
        resp.error = RP_EPROTO;
        snprintf(msg, sizeof(msg), "response body larger than %zu bytes", r->max);
    } else if ((rc == CURLE_WRITE_ERROR && r->chunk_abort) || rc == CURLE_ABORTED_BY_CALLBACK) {
        resp.error = RP_ECANCELED;
        snprintf(msg, sizeof(msg), "transfer stopped by its owner");
    } else if (rc == CURLE_OUT_OF_MEMORY || rc == CURLE_WRITE_ERROR) {
        /* A write error we did not flag is our failed realloc. */
        resp.error = RP_ENOMEM;
        snprintf(msg, sizeof(msg), "out of memory receiving the response");
    } else {
        /* curl's error buffer names the host and the failure, never the
         * request headers (where the API key is). */
        resp.error = RP_EIO;
        snprintf(msg, sizeof(msg), "%s", r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
    }
    if (resp.error != 0) {
        resp.error_msg = msg;
        resp.body = "";
        resp.body_len = 0;
    }
    /* Take it out of the multi before the callback, so a callback that
     * closes the client does not see it; the response still points into
     * r (and into the easy handle for content_type), freed afterwards. */
    curl_multi_remove_handle(h->multi, r->easy);
    rl_unlink(&h->active, r);
    r->where = REQ_DONE; /* off every list; rp_http_cancel ignores it now */
    if (r->cb)
        r->cb(r->data, &resp);
    req_free(r);
}

/* Read every finished transfer.  Called after each curl_multi_socket_action,
 * unconditionally: a transfer that ended by timing out is only reported
 * here. */
static void http_drain(rp_http_t *h)
{
    CURLMsg *m;
    int left;
    /* Once closing, the rest get RP_ECANCELED from http_do_close. */
    while (!h->closing && (m = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result;
        rp_http_req_t *r = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
        if (r == NULL)
            continue;
        if (r->where == REQ_DOOMED)
            req_discard(r);
        else
            req_done(h, r, rc);
    }
}

static void http_action(rp_http_t *h, curl_socket_t fd, int flags)
{
    int running = 0;
    curl_multi_socket_action(h->multi, fd, flags, &running);
    http_drain(h);
}

/* ------------------------------------------------------- libuv → curl */

static void poll_cb(uv_poll_t *p, int status, int events)
{
    http_sock_t *s = p->data;
    rp_http_t *h = s->h;
    if (s->closing || h->multi == NULL)
        return;
    int flags = 0;
    if (status < 0) {
        /* libuv stopped the handle; let curl find out what happened. */
        flags = CURL_CSELECT_ERR;
        s->events = 0;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    http_enter(h);
    http_action(h, s->fd, flags);
    http_leave(h);
}

static void timer_cb(uv_timer_t *t)
{
    rp_http_t *h = t->data;
    if (h->multi == NULL)
        return;
    http_enter(h);
    http_action(h, CURL_SOCKET_TIMEOUT, 0);
    http_leave(h);
}

/* Start what rp_http_send queued: add the handles and let curl begin at
 * once (rather than after a 1 ms timer). */
static void idle_cb(uv_idle_t *idle)
{
    rp_http_t *h = idle->data;
    uv_idle_stop(idle);
    if (h->multi == NULL)
        return;
    http_enter(h);
    rp_http_req_t *r;
    int added = 0;
    while ((r = h->queued.head) != NULL) {
        req_move(r, REQ_ACTIVE);
        CURLMcode mc = curl_multi_add_handle(h->multi, r->easy);
        if (mc != CURLM_OK) {
            rl_unlink(&h->active, r);
            r->where = REQ_DONE;
            rp_http_resp_t resp = {.error = RP_EIO, .retry_after_ms = -1, .body = ""};
            resp.error_msg = curl_multi_strerror(mc);
            if (r->cb)
                r->cb(r->data, &resp);
            req_free(r);
            continue;
        }
        added++;
    }
    if (added)
        http_action(h, CURL_SOCKET_TIMEOUT, 0);
    http_leave(h);
}

/* ------------------------------------------------------- curl → libuv */

/* One of our libuv handles is closed.  The timer and the idle handle are
 * only closed by http_do_close, so the count reaches zero only when the
 * client is closing and everything else is gone. */
static void http_handle_gone(rp_http_t *h)
{
    if (--h->nhandles > 0)
        return;
    void (*cb)(void *) = h->close_cb;
    void *data = h->close_data;
    free(h);
    if (cb)
        cb(data);
}

static void sock_closed(uv_handle_t *hd)
{
    http_sock_t *s = hd->data;
    rp_http_t *h = s->h;
    free(s);
    http_handle_gone(h);
}

static void sock_drop(rp_http_t *h, http_sock_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        h->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->closing = 1;
    /* uv_close stops the poll (and removes the fd from epoll) now, before
     * curl closes the socket. */
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    rp_http_t *h = userp;
    http_sock_t *s = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(h->multi, fd, NULL);
            sock_drop(h, s);
        }
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return -1;
        if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->h = h;
        s->fd = fd;
        s->next = h->socks;
        if (h->socks)
            h->socks->prev = s;
        h->socks = s;
        h->nhandles++;
        curl_multi_assign(h->multi, fd, s);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    if (events != s->events) {
        s->events = events;
        uv_poll_start(&s->poll, events, poll_cb);
    }
    return 0;
}

static int timerfn_cb(CURLM *multi, long timeout_ms, void *userp)
{
    rp_http_t *h = userp;
    (void)multi;
    if (timeout_ms < 0) {
        uv_timer_stop(&h->timer);
        return 0;
    }
    /* 0 becomes 1 ms: a 0 ms timer restarted from its own callback runs
     * again in the same loop pass on libuv 1.44 and can spin. */
    uv_timer_start(&h->timer, timer_cb, timeout_ms > 0 ? (uint64_t)timeout_ms : 1, 0);
    return 0;
}

/* ---------------------------------------------------------------- API */

static void handle_closed(uv_handle_t *hd)
{
    http_handle_gone(hd->data);
}

rp_http_t *rp_http_new(uv_loop_t *loop, const rp_http_opts_t *opts, rp_err_t *err)
{
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            rp_err_set(err, RP_EIO, "libcurl could not be initialised");
            return NULL;
        }
        curl_ready = 1;
    }
    rp_http_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory creating the HTTP client");
        return NULL;
    }
    h->loop = loop;
    if (opts)
        h->opts = *opts;
    if (h->opts.connect_timeout_ms <= 0)
        h->opts.connect_timeout_ms = 10000;
    h->multi = curl_multi_init();
    if (h->multi == NULL) {
        free(h);
        rp_err_set(err, RP_ENOMEM, "out of memory creating the HTTP client");
        return NULL;
    }
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timerfn_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    if (h->opts.max_connections_per_host > 0)
        curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                          h->opts.max_connections_per_host);
    if (h->opts.max_total_connections > 0) {
        curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, h->opts.max_total_connections);
        /* Keep as many idle connections as may be open, for reuse. */
        curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, h->opts.max_total_connections);
    }
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING,
                      h->opts.http2 ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING);
    uv_timer_init(loop, &h->timer);
    uv_idle_init(loop, &h->idle);
    h->timer.data = h;
    h->idle.data = h;
    h->nhandles = 2;
    return h;
}

/* Configure r->easy from req.  Returns 0 or RP_ENOMEM / RP_EINVAL. */
static int req_setup(rp_http_t *h, rp_http_req_t *r, const rp_http_request_t *req)
{
    CURL *e = r->easy;
    const char *method = req->method ? req->method : (req->body ? "POST" : "GET");
    if (curl_easy_setopt(e, CURLOPT_URL, req->url) != CURLE_OK)
        return RP_ENOMEM;
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, h->opts.connect_timeout_ms);
    if (req->timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    if (h->opts.http2) {
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        /* Wait for a connection that can multiplex rather than open more --
         * only over TLS, where ALPN may offer HTTP/2.  Over plain http://
         * there is no HTTP/2 here, and waiting would hold every new request
         * until the first one answered (a whole model latency). */
        if (strncmp(req->url, "https://", 8) == 0)
            curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    }
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        if (req->body || strcmp(method, "POST") == 0) {
            size_t n = req->body ? req->body_len : 0;
            r->body = malloc(n + 1);
            if (r->body == NULL)
                return RP_ENOMEM;
            if (n > 0)
                memcpy(r->body, req->body, n);
            r->body[n] = '\0';
            curl_easy_setopt(e, CURLOPT_POST, 1L);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
        }
    }
    /* No "Expect: 100-continue" round trip for large bodies. */
    struct curl_slist *l = curl_slist_append(NULL, "Expect:");
    if (l == NULL)
        return RP_ENOMEM;
    r->headers = l;
    for (const char *const *hp = req->headers; hp && *hp; hp++) {
        l = curl_slist_append(r->headers, *hp);
        if (l == NULL)
            return RP_ENOMEM;
        r->headers = l;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    return 0;
}

int rp_http_send(rp_http_t *h, const rp_http_request_t *req, rp_http_cb cb, void *data,
                 rp_http_req_t **out)
{
    if (h->closing)
        return RP_ECLOSED;
    if (req == NULL || req->url == NULL || cb == NULL)
        return RP_EINVAL;
    if (req->method && (*req->method == '\0' || strpbrk(req->method, " \r\n") != NULL))
        return RP_EINVAL;
    for (const char *const *hp = req->headers; hp && *hp; hp++)
        if (strpbrk(*hp, "\r\n") != NULL)
            return RP_EINVAL; /* header injection */
    rp_http_req_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return RP_ENOMEM;
    r->h = h;
    r->cb = cb;
    r->data = data;
    r->on_chunk = req->on_chunk;
    r->max = req->max_body ? req->max_body : HTTP_DEFAULT_MAX_BODY;
    r->easy = h->npool > 0 ? h->pool[--h->npool] : curl_easy_init();
    int rc = RP_ENOMEM;
    if (r->easy == NULL)
        goto fail;
    rc = req_setup(h, r, req);
    if (rc != 0)
        goto fail;
    r->where = REQ_QUEUED;
    rl_push(&h->queued, r);
    http_wake(h);
    if (out)
        *out = r;
    return 0;
fail:
    req_free(r);
    return rc;
}

void rp_http_cancel(rp_http_req_t *r)
{
    if (r == NULL || r->where == REQ_DOOMED || r->where == REQ_DONE)
        return;
    rp_http_t *h = r->h;
    r->cb = NULL;
    r->on_chunk = NULL;
    if (r->where == REQ_QUEUED) {
        rl_unlink(&h->queued, r);
        req_free(r);
        return;
    }
    if (h->depth > 0) {
        /* curl (or our loop over its messages) is on the stack: remove the
         * handle once it is not. */
        req_move(r, REQ_DOOMED);
        return;
    }
    req_discard(r);
}

size_t rp_http_inflight(const rp_http_t *h)
{
    return h->queued.n + h->active.n;
}

/* Cancel everything, release curl, close our handles. */
static void http_do_close(rp_http_t *h)
{
    rp_http_req_t *r;
    rp_http_resp_t resp = {.error = RP_ECANCELED,
                           .error_msg = "the HTTP client is closing",
                           .retry_after_ms = -1,
                           .body = ""};
    /* Pop one at a time: a callback may cancel another request. */
    while ((r = h->queued.head) != NULL || (r = h->active.head) != NULL) {
        if (r->where == REQ_ACTIVE)
            curl_multi_remove_handle(h->multi, r->easy);
        rl_unlink(req_list_of(h, r), r);
        r->where = REQ_DONE;
        rp_http_cb cb = r->cb;
        r->cb = NULL;
        if (cb)
            cb(r->data, &resp);
        req_free(r);
    }
    while (h->doomed.head)
        req_discard(h->doomed.head);
    /* Stop watching every socket before curl closes them. */
    while (h->socks) {
        curl_multi_assign(h->multi, h->socks->fd, NULL);
        sock_drop(h, h->socks);
    }
    curl_multi_cleanup(h->multi);
    h->multi = NULL;
    while (h->npool > 0)
        curl_easy_cleanup(h->pool[--h->npool]);
    uv_close((uv_handle_t *)&h->timer, handle_closed);
    uv_close((uv_handle_t *)&h->idle, handle_closed);
}

void rp_http_close(rp_http_t *h, void (*close_cb)(void *data), void *data)
{
    if (h->closing)
        return;
    h->closing = 1;
    h->close_cb = close_cb;
    h->close_data = data;
    uv_idle_stop(&h->idle);
    if (h->depth > 0) {
        h->close_pending = 1;
        return;
    }
    http_do_close(h);
}
