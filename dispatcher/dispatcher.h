/*
 * dispatcher.h: ragpool-dispatcher's HTTP front end on one libuv loop:
 * authenticates Supabase JWTs, validates chat requests, rate-limits per
 * user, enqueues through common/producer.h and answers 202 once the job is
 * durable; job status, /healthz and /metrics.  docs/DISPATCHER.md is the
 * user's description; this is the program's.
 */
#ifndef RP_DISPATCHER_H
#define RP_DISPATCHER_H

#include <uv.h>

#include "dispatcher_config.h"
#include "err.h"

typedef struct rp_dispatcher rp_dispatcher_t;

/* What the dispatchers of one process share, one dispatcher per thread:
 * the /metrics registry, the local rate limiter, the count of requests in
 * flight (RAGPOOL_MAX_INFLIGHT is per process) and the listening port.
 * nthreads: how many dispatchers will use it (more than one listens with
 * SO_REUSEPORT).  cfg is borrowed.  Free it after every dispatcher is gone.
 * Returns owned or NULL with err filled. */
typedef struct rp_dispatcher_shared rp_dispatcher_shared_t;
rp_dispatcher_shared_t *rp_dispatcher_shared_new(const rp_dispatcher_cfg_t *cfg, int nthreads,
                                                 rp_err_t *err);
void rp_dispatcher_shared_free(rp_dispatcher_shared_t *sh);

/* Create dispatcher number index (0 first) on loop, with its own
 * connections (not yet started).  cfg and sh are borrowed and must outlive
 * the dispatcher.  A JWKS file is read here, so a bad one stops start-up
 * (err names RAGPOOL_JWKS).  Returns owned (ends with
 * rp_dispatcher_shutdown) or NULL with err filled.  A dispatcher is used
 * from its loop's thread only; create and start it before that loop runs
 * or from that thread. */
rp_dispatcher_t *rp_dispatcher_new(uv_loop_t *loop, const rp_dispatcher_cfg_t *cfg,
                                   rp_dispatcher_shared_t *sh, int index, rp_err_t *err);

/* Connect to the queue and the database (in the background) and listen.
 * Dispatcher 0 must be started first: the others listen on the port it
 * bound.  Returns 0 or a negative code with err naming the address; after a
 * failure call rp_dispatcher_shutdown all the same. */
int rp_dispatcher_start(rp_dispatcher_t *d, rp_err_t *err);

/* The port listened on. */
int rp_dispatcher_port(const rp_dispatcher_t *d);

/* Graceful stop: stop accepting, let requests in progress finish (up to
 * RAGPOOL_DRAIN_TIMEOUT_MS), then close every connection and handle.  done
 * (may be NULL) runs once d is freed; the loop then has nothing of ours
 * left.  Calling it again does nothing. */
void rp_dispatcher_shutdown(rp_dispatcher_t *d, void (*done)(void *data), void *data);

#endif
