/*
 * queue.h: the job queue as the worker sees it, whatever holds it.
 *
 * A backend (Postgres: queue_pg.c; Redis Streams: queue_redis.c) claims jobs
 * with a lease and records each job's end: completed (its conversations row
 * written), failed (retried later or dead-lettered, with an error row), or
 * released (back to the queue without counting the attempt).  Answers are
 * always recorded in Postgres; a backend decides how the acknowledgement
 * travels with them (Postgres: the same transaction; Redis: XACK after the
 * row has committed, so a duplicate delivery only meets ON CONFLICT).
 *
 * Every operation is asynchronous and calls its callback exactly once,
 * never from inside the call, unless the call returns a negative code.
 * Data passed to callbacks is valid only until the callback returns.
 */
#ifndef RP_QUEUE_H
#define RP_QUEUE_H

#include <stddef.h>
#include <uv.h>

#include "config.h"
#include "err.h"
#include "pg.h"

typedef struct rp_queue rp_queue_t;

/* What a user is shown when a job failed for good (the details go to the
 * dead letter and the logs, never to the user). */
#define RP_SAFE_ERROR_MESSAGE                                                                      \
    "Sorry, I could not answer your question right now. Please try again in a moment."

typedef enum { RP_PAYLOAD_JSON, RP_PAYLOAD_MSGPACK } rp_payload_format_t;

/* A claimed job, as the backend hands it over (borrowed during the callback). */
typedef struct rp_claimed {
    const char *id;      /* job id: a uuid */
    const char *lease;   /* opaque token proving the claim (Postgres lease_id,
                          * Redis stream entry id) */
    const char *kind;    /* "chat", ... */
    const char *payload; /* the job's payload */
    size_t payload_len;
    rp_payload_format_t format;
    int attempts; /* this attempt's number, from 1 */
    int max_attempts;
    double queued_ms; /* enqueue -> claim */
} rp_claimed_t;

/* The end of one job, for rp_queue_finish. */
typedef enum {
    RP_FINISH_DONE,      /* row: status 'done' */
    RP_FINISH_RETRY,     /* transient failure: retry after delay_ms if attempts remain */
    RP_FINISH_PERMANENT, /* permanent failure: dead letter + error row */
    RP_FINISH_INVALID,   /* malformed job: dead letter (reason invalid_payload) */
} rp_finish_kind_t;

typedef struct rp_finish {
    rp_finish_kind_t kind;
    const char *id, *lease;
    int attempts, max_attempts;
    const char *row_json;        /* DONE: the conversations row as a JSON object (see
                                  * docs/CONTRACTS.md, complete_jobs element) */
    const char *error;           /* failures: the error, for the dead letter and logs */
    unsigned long long delay_ms; /* RETRY */
    /* For failures the backend may need the payload (to re-add or to write
     * the error row): */
    const char *payload;
    size_t payload_len;
    rp_payload_format_t format;
    const char *kind_name;
} rp_finish_t;

/* Outcome of one finished job, reported back per job. */
typedef enum {
    RP_OUTCOME_DONE,   /* row written (or already there: a duplicate) */
    RP_OUTCOME_RETRY,  /* will run again */
    RP_OUTCOME_DEAD,   /* dead-lettered (error row written when possible) */
    RP_OUTCOME_LOST,   /* the lease was no longer ours: nothing written */
    RP_OUTCOME_FAILED, /* the backend could not record it: the job comes back after its lease */
} rp_outcome_t;

const char *rp_outcome_name(rp_outcome_t o);

typedef void (*rp_queue_claim_cb)(void *data, int err, const rp_claimed_t *jobs, size_t n);
typedef void (*rp_queue_finish_cb)(void *data, int err, const rp_outcome_t *outcomes, size_t n);
typedef void (*rp_queue_wake_cb)(void *data);

typedef struct rp_queue_vtbl {
    const char *name;
    int (*start)(rp_queue_t *q);
    /* Claim up to n due jobs for at most lease_ms. */
    int (*claim)(rp_queue_t *q, size_t n, rp_queue_claim_cb cb, void *data);
    /* Record n job ends; outcomes[i] answers jobs[i]. */
    int (*finish)(rp_queue_t *q, const rp_finish_t *jobs, size_t n, rp_queue_finish_cb cb,
                  void *data);
    /* Give n claimed jobs back without counting the attempt. */
    int (*release)(rp_queue_t *q, const rp_finish_t *jobs, size_t n, rp_queue_finish_cb cb,
                   void *data);
    /* Stop claiming (drain): cut a blocking claim short (may be NULL). */
    void (*stop_claiming)(rp_queue_t *q);
    /* Whether a claim may block server-side (the worker then keeps one in
     * flight at all times instead of waiting for wake-ups). */
    int claims_block;
    void (*close)(rp_queue_t *q, void (*close_cb)(void *data), void *data);
} rp_queue_vtbl_t;

struct rp_queue {
    const rp_queue_vtbl_t *vtbl;
    rp_queue_wake_cb on_wake; /* jobs may be due: a NOTIFY, a reconnect */
    void *wake_data;
};

/* The Postgres backend: claims with ragpool.claim_jobs over db (borrowed,
 * shared with the worker's other queries), wakes on LISTEN ragpool_jobs on
 * listen (borrowed; its on_notify/on_connect must call rp_queue_pg_wake). */
rp_queue_t *rp_queue_pg_new(uv_loop_t *loop, const rp_worker_cfg_t *cfg, rp_pg_t *const *db,
                            size_t ndb, rp_err_t *err);

/* The Redis Streams backend (queue_redis.c): REDIS_URL, RAGPOOL_REDIS_*;
 * answers and error rows go to Postgres over db (borrowed). */
rp_queue_t *rp_queue_redis_new(uv_loop_t *loop, const rp_worker_cfg_t *cfg,
                               rp_pg_t *const *db, size_t ndb, rp_err_t *err);

#endif
