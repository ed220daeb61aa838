/*
 * registry.h: the model registry as a worker follows it.
 *
 * public.model_metadata (the reference design's table, sql/0010) names the
 * active chat model: rows with is_active, one per provider ('openai',
 * 'replicate') or with provider NULL for every provider without its own.
 * The registry keeps a small connection of its own that LISTENs to
 * `ragpool_models` (a trigger notifies on every change), loads the active
 * rows at start and after every notification or reconnect, and publishes
 * them as an immutable, reference-counted snapshot: a job takes the
 * snapshot when it starts inferring and keeps it until it ends, so a switch
 * never changes the model under a request in flight, and the next job uses
 * the new model without a restart.
 *
 * Where the table does not exist (schema older than 0010) the snapshot is
 * empty and every provider uses its configured model.
 */
#ifndef RP_WORKER_REGISTRY_H
#define RP_WORKER_REGISTRY_H

#include <stddef.h>
#include <uv.h>

#include "err.h"

typedef struct rp_registry rp_registry_t;
typedef struct rp_models rp_models_t;

typedef struct rp_model {
    const char *provider;   /* "" = any provider */
    const char *model_name; /* OpenAI-compatible: the model; Replicate: owner/name */
    const char *version;    /* Replicate: the version id; elsewhere a label */
    long long id;           /* model_metadata.id */
} rp_model_t;

/* Called when a new snapshot was published (first load included). */
typedef void (*rp_registry_cb)(void *data);

/* Create the registry on conninfo (copied; use a direct or session-mode
 * connection: LISTEN).  Returns owned (rp_registry_close) or NULL with err. */
rp_registry_t *rp_registry_new(uv_loop_t *loop, const char *conninfo, rp_registry_cb on_change,
                               void *data, rp_err_t *err);

/* Connect, LISTEN and load. */
int rp_registry_start(rp_registry_t *r);

/* True once a first load has finished (or failed for good: the table is
 * missing), so jobs need not wait any longer. */
int rp_registry_ready(const rp_registry_t *r);

/* The current snapshot with a new reference (release with rp_models_unref);
 * never NULL once ready (may be empty); NULL before. */
rp_models_t *rp_registry_acquire(rp_registry_t *r);

void rp_models_unref(rp_models_t *m);

/* The active model for provider (most specific first: its own row, else a
 * row with no provider), or NULL.  Borrowed from m. */
const rp_model_t *rp_models_find(const rp_models_t *m, const char *provider);

/* Close the connection; close_cb (may be NULL) runs once everything is
 * freed.  Snapshots still referenced by jobs live on until released. */
void rp_registry_close(rp_registry_t *r, void (*close_cb)(void *data), void *data);

#endif
