/*
 * worker.h: one worker process's job pool on one libuv loop.
 *
 * The pool claims jobs from the queue (Postgres with LISTEN and a slow poll,
 * or a Redis stream: worker/queue.h), keeps up to RAGPOOL_MAX_INFLIGHT of
 * them in flight, and hands each to its kind (worker/worker_int.h): chat
 * jobs go through embed + history -> retrieve -> infer -> persist.
 * Finished jobs are committed in groups.  Failures are retried through the
 * queue with backoff, and dead-lettered after the last attempt.
 *
 * Lifecycle: rp_worker_new, rp_worker_start, then uv_run.  rp_worker_stop
 * begins a graceful drain (stop claiming, let jobs in flight finish within
 * RAGPOOL_DRAIN_TIMEOUT_MS, release the rest to the queue); when everything
 * is closed on_stopped runs and uv_run returns.  Then rp_worker_free.
 */
#ifndef RP_WORKER_H
#define RP_WORKER_H

#include <uv.h>

#include "config.h"
#include "err.h"

typedef struct rp_worker rp_worker_t;

/* Called once when the worker has stopped and closed all its handles;
 * exit_code is 0 after a clean drain, 1 after a fatal start-up error. */
typedef void (*rp_worker_stopped_cb)(void *data, int exit_code);

/* Create the pool.  Borrows loop and cfg (both must outlive the worker).
 * Returns owned (free with rp_worker_free after it stopped) or NULL with err
 * naming what is wrong (e.g. an unreadable prompt template). */
rp_worker_t *rp_worker_new(uv_loop_t *loop, const rp_worker_cfg_t *cfg,
                           rp_worker_stopped_cb on_stopped, void *data, rp_err_t *err);

/* Connect and start claiming once the database is ready. */
int rp_worker_start(rp_worker_t *w);

/* Begin a graceful stop; a second call releases jobs in flight at once. */
void rp_worker_stop(rp_worker_t *w);

/* Free the worker after on_stopped ran. */
void rp_worker_free(rp_worker_t *w);

#endif
