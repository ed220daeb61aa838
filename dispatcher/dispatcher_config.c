/*
 * dispatcher_config.c: the dispatcher's settings table and the checks that involve
 * more than one setting (see dispatcher_config.h).
 */
#include "dispatcher_config.h"

#include <string.h>
#include <uv.h>

#include "log.h"

#define OFF(f) offsetof(rp_dispatcher_cfg_t, f)

const rp_cfg_def_t rp_dispatcher_cfg_defs[] = {
    {"RAGPOOL_DISPATCHER_HOST", RP_CFG_STR, OFF(host), "127.0.0.1", 1, 0, 0,
     "Address to listen on."},
    {"RAGPOOL_DISPATCHER_PORT", RP_CFG_INT, OFF(port), "8080", 0, 65535, 0,
     "Port to listen on; 0 picks a free port."},
    {"RAGPOOL_DISPATCHER_PORT_FILE", RP_CFG_STR, OFF(port_file), NULL, 1, 0, 0,
     "File to write the bound port to once listening (for scripts and tests)."},
    {"RAGPOOL_DISPATCHER_THREADS", RP_CFG_INT, OFF(threads), "0", 0, 256, 0,
     "Event-loop threads serving requests, each with its own queue and database connections, "
     "all on the one port (SO_REUSEPORT); 0 = automatic: one per CPU this process may use with "
     "RAGPOOL_QUEUE=redis, one with postgres (a single loop commits the most jobs per "
     "transaction)."},
    {"RAGPOOL_QUEUE", RP_CFG_STR, OFF(queue), "postgres", 1, 0, 0,
     "Queue backend jobs are enqueued to: postgres or redis."},
    {"DATABASE_URL", RP_CFG_STR, OFF(database_url), NULL, 1, 0, RP_CFG_REQUIRED | RP_CFG_SECRET,
     "Postgres connection (URL or key=value): the queue with RAGPOOL_QUEUE=postgres, and "
     "job status and health in every mode."},
    {"REDIS_URL", RP_CFG_STR, OFF(redis_url), NULL, 1, 0, RP_CFG_SECRET,
     "Redis connection (redis://[:password@]host[:port][/db]): the queue with "
     "RAGPOOL_QUEUE=redis, and the shared rate limiter unless RAGPOOL_RATE_LIMIT_REDIS says "
     "otherwise."},
    {"RAGPOOL_REDIS_STREAM", RP_CFG_STR, OFF(redis_stream), "ragpool:jobs", 1, 0, 0,
     "Redis stream jobs are added to (RAGPOOL_QUEUE=redis)."},
    {"RAGPOOL_REDIS_GROUP", RP_CFG_STR, OFF(redis_group), "ragpool", 1, 0, 0,
     "The workers' consumer group (RAGPOOL_QUEUE=redis): /metrics counts its pending entries "
     "as running."},
    {"SUPABASE_JWT_SECRET", RP_CFG_STR, OFF(jwt_secret), NULL, 1, 0, RP_CFG_SECRET,
     "The project's JWT secret: HS256 tokens are verified with it (as raw bytes)."},
    {"RAGPOOL_JWKS", RP_CFG_STR, OFF(jwks), NULL, 1, 0, 0,
     "JWKS for RS256/ES256 tokens: a file path or an http(s) URL (e.g. "
     "https://<project>.supabase.co/auth/v1/.well-known/jwks.json); re-read on an unknown kid."},
    {"RAGPOOL_JWKS_MIN_REFRESH_MS", RP_CFG_INT, OFF(jwks_min_refresh_ms), "10000", 0, 86400000, 0,
     "Least time between two JWKS re-reads caused by unknown kids."},
    {"RAGPOOL_JWKS_REFRESH_MS", RP_CFG_INT, OFF(jwks_refresh_ms), "600000", 0, 86400000, 0,
     "Re-read the JWKS this often even without unknown kids; 0 = never."},
    {"RAGPOOL_JWT_AUDIENCE", RP_CFG_STR, OFF(jwt_audience), "authenticated", 1, 0, 0,
     "Required aud claim; empty = not checked."},
    {"RAGPOOL_JWT_ROLES", RP_CFG_STR, OFF(jwt_roles), "authenticated", 1, 0, 0,
     "Comma-separated roles (role claim) that may use the API; empty = any."},
    {"RAGPOOL_JWT_LEEWAY_S", RP_CFG_INT, OFF(jwt_leeway_s), "30", 0, 600, 0,
     "Clock skew allowed when checking exp and nbf, in seconds."},
    {"RAGPOOL_JWT_CACHE", RP_CFG_INT, OFF(jwt_cache), "4096", 0, 1048576, 0,
     "Verified tokens remembered (re-checked against the clock on every use); 0 = none."},
    {"RAGPOOL_RATE_LIMIT_RPS", RP_CFG_DOUBLE, OFF(rate_limit_rps), "10", 0, 1e9, 0,
     "Chat requests a user may make per second (token bucket rate); 0 = no limit."},
    {"RAGPOOL_RATE_LIMIT_BURST", RP_CFG_DOUBLE, OFF(rate_limit_burst), "20", 1, 1e9, 0,
     "Token bucket size: requests a user may make at once."},
    {"RAGPOOL_RATE_LIMIT_REDIS", RP_CFG_STR, OFF(rate_limit_redis), NULL, 1, 0, RP_CFG_SECRET,
     "Redis URL where dispatchers share the rate limit; unset = REDIS_URL when set; 'off' = "
     "each dispatcher limits on its own."},
    {"RAGPOOL_MAX_BODY_BYTES", RP_CFG_INT, OFF(max_body_bytes), "65536", 1024, 16777216, 0,
     "Largest request body accepted (413 beyond)."},
    {"RAGPOOL_CORS_ORIGINS", RP_CFG_STR, OFF(cors_origins), "*", 1, 0, 0,
     "Origins allowed by CORS: '*' or a comma-separated list; empty = no CORS headers."},
    {"RAGPOOL_ENQUEUE_TIMEOUT_MS", RP_CFG_INT, OFF(enqueue_timeout_ms), "5000", 100, 600000, 0,
     "Deadline for the queue to accept a job (503 beyond)."},
    {"RAGPOOL_DRAIN_TIMEOUT_MS", RP_CFG_INT, OFF(drain_timeout_ms), "10000", 0, 3600000, 0,
     "On SIGTERM, how long requests in progress may take to finish."},
    {"RAGPOOL_QUEUE_STATS_TTL_MS", RP_CFG_INT, OFF(stats_ttl_ms), "5000", 0, 3600000, 0,
     "How long /metrics reuses the queue depth it read (ragpool.queue_stats, or the Redis "
     "queue's keys)."},
    {"RAGPOOL_MAX_INFLIGHT", RP_CFG_INT, OFF(max_inflight), "65536", 1, 10000000, 0,
     "Requests in progress at once over all threads; beyond, new ones get 503."},
    {"RAGPOOL_LOG_LEVEL", RP_CFG_STR, OFF(log_level), "info", 1, 0, 0,
     "Lowest log level written: debug, info, warn or error."},
};
const size_t rp_dispatcher_cfg_ndefs =
    sizeof(rp_dispatcher_cfg_defs) / sizeof(rp_dispatcher_cfg_defs[0]);

static int set(const char *s)
{
    return s != NULL && s[0] != '\0';
}

int rp_dispatcher_cfg_load(rp_dispatcher_cfg_t *cfg, rp_cfg_getenv_fn getenv_fn, void *data,
                           rp_err_t *err)
{
    memset(cfg, 0, sizeof(*cfg));
    int rc =
        rp_cfg_load(rp_dispatcher_cfg_defs, rp_dispatcher_cfg_ndefs, cfg, getenv_fn, data, err);
    if (rc < 0)
        return rc;
    if (strcmp(cfg->queue, "postgres") != 0 && strcmp(cfg->queue, "redis") != 0)
        return rp_err_set(err, RP_EINVAL, "RAGPOOL_QUEUE must be postgres or redis (got \"%.40s\")",
                          cfg->queue);
    if (strcmp(cfg->queue, "redis") == 0 && !set(cfg->redis_url))
        return rp_err_set(err, RP_EINVAL, "REDIS_URL must be set when RAGPOOL_QUEUE is redis");
    if (!set(cfg->database_url))
        return rp_err_set(err, RP_EINVAL, "DATABASE_URL must be set");
    if (!set(cfg->jwt_secret) && !set(cfg->jwks))
        return rp_err_set(err, RP_EINVAL,
                          "SUPABASE_JWT_SECRET or RAGPOOL_JWKS must be set: no token could be "
                          "verified otherwise");
    if (rp_log_level_parse(cfg->log_level) < 0)
        return rp_err_set(err, RP_EINVAL,
                          "RAGPOOL_LOG_LEVEL must be debug, info, warn or error (got \"%.40s\")",
                          cfg->log_level);
    if (cfg->rate_limit_rps > 0 && cfg->rate_limit_burst < 1)
        return rp_err_set(err, RP_EINVAL, "RAGPOOL_RATE_LIMIT_BURST must be at least 1");
    const char *rl = cfg->rate_limit_redis;
    if (set(rl) && strcmp(rl, "off") != 0 && strncmp(rl, "redis://", 8) != 0)
        return rp_err_set(err, RP_EINVAL,
                          "RAGPOOL_RATE_LIMIT_REDIS must be a redis:// URL or 'off'");
    return 0;
}

void rp_dispatcher_cfg_free(rp_dispatcher_cfg_t *cfg)
{
    rp_cfg_free(rp_dispatcher_cfg_defs, rp_dispatcher_cfg_ndefs, cfg);
}

const char *rp_dispatcher_cfg_ratelimit_redis(const rp_dispatcher_cfg_t *cfg)
{
    if (set(cfg->rate_limit_redis))
        return strcmp(cfg->rate_limit_redis, "off") == 0 ? NULL : cfg->rate_limit_redis;
    return set(cfg->redis_url) ? cfg->redis_url : NULL;
}

int rp_dispatcher_threads(const rp_dispatcher_cfg_t *cfg)
{
    if (cfg->threads > 0)
        return (int)cfg->threads;
    /* With Postgres the commit is the bound, and each thread commits its
     * own group: two threads halve the group and cost Postgres more per
     * job (bench/dispatcher: 25,000/s with one, 18,700/s with two). */
    if (strcmp(cfg->queue, "postgres") == 0)
        return 1;
    unsigned n = uv_available_parallelism();
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}
