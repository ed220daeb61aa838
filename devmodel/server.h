/*
 * server.h: the development model server: OpenAI-compatible embeddings and
 * chat completions (plain and streamed), Replicate-style predictions, with
 * deterministic answers, configurable latency and injectable faults, over
 * common/httpd.  See docs/DEVMODEL.md for the HTTP interface.
 *
 * One rp_devmodel_t lives on one loop.  Latency is a uv timer per request
 * (the loop never blocks); a stalled request holds only its context until
 * the client goes away.  The runtime settings (latency, faults) can be
 * changed through POST /_admin/config.
 */
#ifndef RP_DEVMODEL_SERVER_H
#define RP_DEVMODEL_SERVER_H

#include <uv.h>

#include "err.h"
#include "fault.h"

typedef struct rp_devmodel rp_devmodel_t;

typedef struct rp_devmodel_opts {
    const char *host;       /* default "127.0.0.1" (copied) */
    int port;               /* 0 = any free port */
    const char *api_key;    /* NULL or "": no authentication (copied) */
    long latency_ms;        /* fixed delay before each model answer */
    long latency_jitter_ms; /* plus uniform 0..jitter */
    double fault_rate;      /* 0..1 */
    rp_fault_kind_t fault_kind;
    int verbose;        /* one log line per request */
    unsigned long seed; /* for latency jitter and fault draws; 0 = from the clock */
} rp_devmodel_opts_t;

/* A new server (not yet listening).  opts is copied.  Returns NULL with err
 * filled on bad options or out of memory. */
rp_devmodel_t *rp_devmodel_new(uv_loop_t *loop, const rp_devmodel_opts_t *opts, rp_err_t *err);

/* Bind and listen; 0 or a negative RP_E* code with err naming the address. */
int rp_devmodel_start(rp_devmodel_t *m, rp_err_t *err);

/* The port actually bound (after rp_devmodel_start). */
int rp_devmodel_port(const rp_devmodel_t *m);

/* Close the server and every connection; requests in progress are dropped.
 * cb (may be NULL) runs once every handle is closed and m is freed. */
void rp_devmodel_close(rp_devmodel_t *m, void (*cb)(void *data), void *data);

#endif
