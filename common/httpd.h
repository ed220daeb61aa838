/*
 * httpd.h: a small HTTP/1.1 server on libuv, parsing with Debian's
 * http-parser (never by hand).  Used by the development model server, the
 * dispatcher and the workers' /metrics and /healthz.
 *
 * Keep-alive and pipelined requests are supported; each request is handed
 * to the handler once complete (headers and body).  The handler answers
 * with rp_httpd_respond, at once or later (asynchronously); responses on a
 * connection go out in request order.  Limits (header size, body size)
 * produce 431/413 answers before the handler sees anything.  Malformed
 * requests get 400 and the connection is closed.
 */
#ifndef RP_HTTPD_H
#define RP_HTTPD_H

#include <stddef.h>
#include <uv.h>

#include "err.h"

typedef struct rp_httpd rp_httpd_t;
typedef struct rp_httpd_req rp_httpd_req_t;

typedef struct rp_httpd_header {
    const char *name; /* as received; compare case-insensitively */
    const char *value;
} rp_httpd_header_t;

/* Called once per complete request.  req stays valid until rp_httpd_respond
 * is called for it (or until the connection closes: see on_abort). */
typedef void (*rp_httpd_handler)(void *data, rp_httpd_req_t *req);

typedef struct rp_httpd_opts {
    const char *host;        /* bind address; default "127.0.0.1" */
    int port;                /* 0 = pick a free port (see rp_httpd_port) */
    int backlog;             /* default 4096 */
    size_t max_header_bytes; /* default 16 KiB */
    size_t max_body_bytes;   /* default 1 MiB */
    long idle_timeout_ms;    /* close idle keep-alive connections; 0 = 60000, negative = never */
    int reuse_port;          /* SO_REUSEPORT: servers on several loops (threads) listen on
                              * the same port and the kernel spreads new connections */
    rp_httpd_handler handler;
    void *data;
} rp_httpd_opts_t;

rp_httpd_t *rp_httpd_new(uv_loop_t *loop, const rp_httpd_opts_t *opts, rp_err_t *err);
/* Bind and listen; returns 0 or a negative code with err naming the address. */
int rp_httpd_start(rp_httpd_t *s, rp_err_t *err);
/* The port actually bound. */
int rp_httpd_port(const rp_httpd_t *s);
/* Stop accepting; close idle connections; let requests in progress finish. */
void rp_httpd_stop(rp_httpd_t *s);
/* Close everything; close_cb runs once all handles are freed (at once for a
 * server that was never started). */
void rp_httpd_close(rp_httpd_t *s, void (*close_cb)(void *data), void *data);

/* --- request accessors (valid until the request is answered) --- */
const char *rp_httpd_method(const rp_httpd_req_t *r); /* "GET", "POST", ... */
const char *rp_httpd_path(const rp_httpd_req_t *r);   /* path without the query */
const char *rp_httpd_query(const rp_httpd_req_t *r);  /* query string without '?', "" if none */
const char *rp_httpd_header(const rp_httpd_req_t *r, const char *name); /* NULL if absent */
size_t rp_httpd_nheaders(const rp_httpd_req_t *r);
rp_httpd_header_t rp_httpd_header_at(const rp_httpd_req_t *r, size_t i);
const char *rp_httpd_body(const rp_httpd_req_t *r, size_t *len); /* NUL-terminated */
const char *rp_httpd_peer(const rp_httpd_req_t *r);              /* "127.0.0.1:5678" */

/* Called if the client disconnects before the request is answered; after it
 * returns req is gone and must not be answered. */
void rp_httpd_on_abort(rp_httpd_req_t *r, void (*cb)(void *data), void *data);

/* Answer the request.  headers: "Name: value" strings, NULL-terminated
 * (Content-Length and Connection are added); body copied.  After this call
 * req is gone. */
int rp_httpd_respond(rp_httpd_req_t *r, int status, const char *const *headers, const char *body,
                     size_t len);

/* Streaming answer: send the status and headers with chunked transfer
 * encoding, then any number of chunks, then end.  After rp_httpd_end req is
 * gone. */
int rp_httpd_begin(rp_httpd_req_t *r, int status, const char *const *headers);
int rp_httpd_write(rp_httpd_req_t *r, const char *data, size_t len);
int rp_httpd_end(rp_httpd_req_t *r);

/* Deliberately broken answers for fault injection (the development model
 * server only): send exactly these bytes and close the connection. */
int rp_httpd_respond_raw_and_close(rp_httpd_req_t *r, const char *bytes, size_t len);

/* Standard reason phrase for a status code ("Too Many Requests"). */
const char *rp_httpd_reason(int status);

#endif
