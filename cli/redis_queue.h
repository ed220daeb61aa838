/*
 * redis_queue.h: the CLI's view of the Redis Streams queue (status and dead
 * letters); see redis_queue.c.
 */
#ifndef RP_CLI_REDIS_QUEUE_H
#define RP_CLI_REDIS_QUEUE_H

#include "cli.h"

typedef struct rp_cli_redis_counts {
    long long queued;    /* entries in the stream not delivered yet */
    long long running;   /* delivered to a consumer, not acknowledged (XPENDING) */
    long long scheduled; /* retries waiting in <stream>:delayed */
    long long dead;      /* entries of <stream>:dead */
    double oldest_s;     /* age of the oldest entry in the stream, 0 when empty */
} rp_cli_redis_counts_t;

/* Read the counts of cfg's stream and consumer group.  Returns RP_CLI_OK,
 * or RP_CLI_FAIL after printing why. */
int rp_cli_redis_status(const rp_cli_cfg_t *cfg, const char *group, rp_cli_redis_counts_t *out);

/* `ragpool dead list` for <stream>:dead, newest first. */
int rp_cli_redis_dead_list(const rp_cli_cfg_t *cfg, int json, long limit);

/* `ragpool dead retry (ID | --all)` for <stream>:dead: each dead letter's
 * error row is removed from conversations (conn), then the job goes back
 * to the stream with its attempts reset. */
int rp_cli_redis_dead_retry(const rp_cli_cfg_t *cfg, PGconn *conn, const char *id, int all);

#endif
