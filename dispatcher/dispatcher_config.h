/*
 * dispatcher_config.h: ragpool-dispatcher's settings, as one declarative table
 * (common/cfg.h).  `ragpool-dispatcher --help` prints the table and
 * docs/DISPATCHER.md documents it.  After rp_dispatcher_cfg_load the struct
 * is const and passed down.
 */
#ifndef RP_DISPATCHER_CONFIG_H
#define RP_DISPATCHER_CONFIG_H

#include <stddef.h>

#include "cfg.h"
#include "err.h"

typedef struct rp_dispatcher_cfg {
    char *host;
    long port;
    char *port_file;
    long threads; /* 0 = automatic (rp_dispatcher_threads) */
    char *queue;  /* "postgres" or "redis" */
    char *database_url;
    char *redis_url;
    char *redis_stream;
    char *redis_group;
    char *jwt_secret;
    char *jwks;
    long jwks_min_refresh_ms;
    long jwks_refresh_ms;
    char *jwt_audience;
    char *jwt_roles;
    long jwt_leeway_s;
    long jwt_cache;
    double rate_limit_rps;
    double rate_limit_burst;
    char *rate_limit_redis;
    long max_body_bytes;
    char *cors_origins;
    long enqueue_timeout_ms;
    long drain_timeout_ms;
    long stats_ttl_ms;
    long max_inflight;
    char *log_level;
} rp_dispatcher_cfg_t;

extern const rp_cfg_def_t rp_dispatcher_cfg_defs[];
extern const size_t rp_dispatcher_cfg_ndefs;

/* Load and cross-check every setting (getenv_fn NULL = getenv).  Returns 0,
 * or RP_EINVAL with err naming the variable; call rp_dispatcher_cfg_free
 * either way. */
int rp_dispatcher_cfg_load(rp_dispatcher_cfg_t *cfg, rp_cfg_getenv_fn getenv_fn, void *data,
                           rp_err_t *err);
void rp_dispatcher_cfg_free(rp_dispatcher_cfg_t *cfg);

/* The Redis URL the rate limiter uses: RAGPOOL_RATE_LIMIT_REDIS, else
 * REDIS_URL; NULL for a local limiter ("off", or neither set).  Borrowed. */
const char *rp_dispatcher_cfg_ratelimit_redis(const rp_dispatcher_cfg_t *cfg);

/* The number of threads to run: RAGPOOL_DISPATCHER_THREADS, or with 0 one
 * for the Postgres queue and the CPUs this process may use
 * (uv_available_parallelism) for Redis. */
int rp_dispatcher_threads(const rp_dispatcher_cfg_t *cfg);

#endif
