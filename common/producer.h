/*
 * producer.h: enqueueing jobs from a libuv program (the dispatcher; the CLI
 * runs a loop for it too), into either queue backend.
 *
 * Postgres: concurrent enqueues are gathered for one loop turn and written
 * by one statement (ragpool.enqueue_chat_batch), so a synchronous-commit
 * server pays one commit for many jobs ("group commit").  Redis: likewise
 * gathered, one script call (an XADD per job) per batch, the job encoded in
 * msgpack (docs/REDIS.md).  The
 * callback runs once the job is durable (committed / written to Redis), or
 * with an error; a refused job leaves nothing behind.
 *
 * Idempotency: a request with job_id set returns that id, and enqueues
 * nothing new, when a job with this id was already accepted.
 */
#ifndef RP_PRODUCER_H
#define RP_PRODUCER_H

#include <stddef.h>
#include <uv.h>

#include "err.h"

typedef struct rp_producer rp_producer_t;

typedef struct rp_producer_opts {
    const char *queue;        /* "postgres" or "redis" */
    const char *database_url; /* postgres */
    const char *redis_url;    /* redis */
    const char *redis_stream; /* default "ragpool:jobs" */
    const char *redis_group;  /* the workers' consumer group, for rp_producer_depth; "ragpool" */
    long timeout_ms;          /* per enqueue; 0 = 10000 */
    size_t max_batch;         /* most jobs per statement or script call; 0 = 512 */
} rp_producer_opts_t;

typedef struct rp_enqueue {
    const char *job_id;       /* optional uuid (idempotency key); NULL = new */
    const char *user_id;      /* uuid or integer, as text */
    const char *message;
    const char *options_json; /* JSON object text or NULL */
    int max_attempts;         /* 0 = the queue's default */
} rp_enqueue_t;

/* err 0: job_id is the accepted job's id (existing == 1 when an earlier
 * request with the same job_id had created it).  Otherwise RP_EINVAL (the
 * job was refused -- by the producer's own check with the job codec's
 * rules, or by the database, e.g. an integer user id in a uuid database --
 * and nothing was enqueued: message names the field), RP_EIO /
 * RP_ETIMEDOUT (the queue could not be reached: the job may or may not
 * exist; retry with the same job_id), RP_EDB (the queue answered with an
 * error: Postgres not migrated, Redis out of memory; message says which),
 * RP_EPROTO (an answer we could not use), RP_ECANCELED (closing).
 * job_id is NULL when no id is known (a refused job without job_id);
 * message is NULL on success.  Both are valid only during the callback.
 * The callback runs exactly once, never from inside rp_producer_enqueue,
 * and may enqueue or close. */
typedef void (*rp_producer_cb)(void *data, int err, const char *job_id, int existing,
                               const char *message);

/* Create a producer for opts->queue (copied).  Returns owned (close with
 * rp_producer_close) or NULL with err saying what is wrong (unknown queue,
 * missing or malformed URL; passwords never shown). */
rp_producer_t *rp_producer_new(uv_loop_t *loop, const rp_producer_opts_t *opts, rp_err_t *err);
/* Start connecting (and reconnecting).  Returns 0 or RP_ECLOSED. */
int rp_producer_start(rp_producer_t *p);
/* Whether the queue is reachable now (for /healthz). */
int rp_producer_is_up(const rp_producer_t *p);
/* Enqueue one chat job.  Copies everything in e.  Returns 0 (cb will run),
 * or RP_EINVAL (e or cb NULL), RP_ENOMEM, RP_ECLOSED without calling cb;
 * a job that fails validation is answered through cb (RP_EINVAL). */
int rp_producer_enqueue(rp_producer_t *p, const rp_enqueue_t *e, rp_producer_cb cb, void *data);
/* How many jobs the Redis queue holds, by state: entries of the stream not
 * delivered yet (queued), delivered and not acknowledged (running: the
 * group's XPENDING count; 0 before the group exists), retries waiting in
 * <stream>:delayed (scheduled) and dead letters in <stream>:dead. */
typedef struct rp_queue_depth {
    long long queued, scheduled, running, dead;
    long long oldest_ms; /* Unix ms of the stream's oldest entry (its id); 0 when empty */
} rp_queue_depth_t;

/* err 0 with depth filled, or RP_E* (depth NULL). */
typedef void (*rp_producer_depth_cb)(void *data, int err, const rp_queue_depth_t *depth);

/* Read the Redis queue's depth (five pipelined commands on the producer's
 * connection).  Returns 0 (cb will run, never from inside this call), or
 * RP_EINVAL for a Postgres producer (read ragpool.queue_stats() instead),
 * RP_ENOMEM, RP_ECLOSED. */
int rp_producer_depth(rp_producer_t *p, rp_producer_depth_cb cb, void *data);

/* Answer every outstanding enqueue RP_ECANCELED (callbacks run), close the
 * connection and handles; close_cb (may be NULL) runs once all is freed. */
void rp_producer_close(rp_producer_t *p, void (*close_cb)(void *data), void *data);

#endif
