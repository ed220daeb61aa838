/*
 * http.h: an HTTP client on libcurl's multi interface, driven by a libuv loop.
 *
 * One rp_http_t per loop owns one CURLM and one uv_timer_t; each request is
 * one easy handle.  Connections are reused across requests (and multiplexed
 * over HTTP/2 where the server offers it).  DNS uses curl's threaded
 * resolver, so nothing here blocks the loop.  Callers never see curl types.
 *
 * Callback contract: rp_http_send either returns 0 and later calls cb
 * exactly once (unless the request is cancelled with rp_http_cancel, which
 * then never calls it), or returns a negative RP_E* code and never calls cb.
 * The response passed to cb, and everything it points to, is valid only
 * until cb returns: copy what you keep.  cb may call rp_http_send (the new
 * transfer is started on the next loop turn, never from inside curl).
 */
#ifndef RP_HTTP_H
#define RP_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "err.h"

typedef struct rp_http rp_http_t;
typedef struct rp_http_req rp_http_req_t;

typedef struct rp_http_opts {
    long max_connections_per_host; /* 0 = curl's default (unlimited) */
    long max_total_connections;    /* 0 = unlimited */
    long connect_timeout_ms;       /* 0 = 10000 */
    int http2;                     /* try HTTP/2 (ALPN over TLS, prior knowledge never) */
} rp_http_opts_t;

typedef struct rp_http_resp {
    int error;               /* 0, or RP_EIO / RP_ETIMEDOUT / RP_ENOMEM / RP_EPROTO (max_body
                              * exceeded) / RP_ECANCELED: no usable HTTP answer */
    const char *error_msg;   /* sentence describing error, "" when none */
    long status;             /* HTTP status, 0 when error != 0 */
    const char *body;        /* response body, NUL-terminated (body[body_len] == 0) */
    size_t body_len;
    int64_t retry_after_ms;  /* parsed Retry-After, -1 when absent or unparsable */
    const char *content_type; /* may be NULL */
    double total_ms;         /* wall time of the transfer */
} rp_http_resp_t;

typedef void (*rp_http_cb)(void *data, const rp_http_resp_t *resp);

/* Called with each piece of the body as it arrives, for streaming (SSE).
 * Returning non-zero aborts the transfer (cb then gets RP_ECANCELED). */
typedef int (*rp_http_chunk_cb)(void *data, const char *chunk, size_t len);

typedef struct rp_http_request {
    const char *method;           /* "GET", "POST"; NULL means POST when body != NULL */
    const char *url;              /* copied */
    const char *const *headers;   /* "Name: value" strings, NULL-terminated; copied */
    const char *body;             /* copied; may be NULL */
    size_t body_len;
    long timeout_ms;              /* whole-transfer deadline; 0 = none */
    size_t max_body;              /* larger responses fail with RP_EPROTO; 0 = 16 MiB */
    rp_http_chunk_cb on_chunk;    /* optional; the body is still collected for cb */
} rp_http_request_t;

/* Create the client on loop.  Returns owned (close with rp_http_close) or
 * NULL with err filled. */
rp_http_t *rp_http_new(uv_loop_t *loop, const rp_http_opts_t *opts, rp_err_t *err);

/* Start a request.  req and everything it points to is copied, so it may be
 * a stack object.  On success *out (if out != NULL) is a handle valid until
 * cb is called or rp_http_cancel returns. */
int rp_http_send(rp_http_t *h, const rp_http_request_t *req, rp_http_cb cb, void *data,
                 rp_http_req_t **out);

/* Abort a request in flight; its callback is never called.  Safe to call
 * from any callback, including another request's. */
void rp_http_cancel(rp_http_req_t *r);

/* Number of requests in flight. */
size_t rp_http_inflight(const rp_http_t *h);

/* Abort every request (their callbacks get RP_ECANCELED), release curl and
 * close the libuv handles; close_cb (may be NULL) runs once everything is
 * freed, after which the loop has no handle of ours left. */
void rp_http_close(rp_http_t *h, void (*close_cb)(void *data), void *data);

#endif
