/*
 * config.h: the worker's settings, loaded once from the environment at
 * start-up (common/cfg.h) and read-only afterwards.  docs/CONFIGURATION.md
 * and `ragpool-worker --help` describe every variable.
 */
#ifndef RP_WORKER_CONFIG_H
#define RP_WORKER_CONFIG_H

#include <stddef.h>

#include "cfg.h"

typedef struct rp_worker_cfg {
    char *queue;
    char *redis_url;
    char *redis_stream;
    char *redis_group;
    long redis_block_ms;
    char *database_url;
    char *listen_database_url;
    char *openai_base_url;
    char *openai_api_key;
    char *embed_model;
    long embed_dimensions;
    long embed_batch;
    char *embed_encoding;
    char *chat_model;
    long chat_max_tokens;
    long max_inflight;
    long claim_batch;
    long claims_in_flight;
    char *match_function;
    double match_threshold;
    long match_count;
    long history_count;
    char *prompt_template;
    long lease_ms;
    long model_timeout_ms;
    long db_timeout_ms;
    long backoff_base_ms;
    long backoff_max_ms;
    long retry_after_max_ms;
    long poll_ms;
    long commit_batch;
    long drain_timeout_ms;
    long db_connections;
    char *metrics_host;
    long metrics_port;
    long model_connections;
    char *worker_id;
    char *log_level;
    /* providers, registry, streaming, training exports (issue 6) */
    char *chat_providers;
    char *replicate_base_url;
    char *replicate_api_token;
    char *replicate_version;
    long replicate_wait_s;
    long replicate_poll_ms;
    long provider_failures;
    long provider_cooldown_ms;
    long provider_429_budget_ms;
    int model_registry;
    int stream;
    long stream_interval_ms;
    char *export_dir;
    long export_page;
    char *supabase_url;
    char *supabase_service_key;
    /* batch re-embedding and provider budgets (issue 5) */
    long reembed_chunks;
    long reembed_inflight;
    long reembed_batch_inputs;
    long reembed_batch_tokens;
    long reembed_request_attempts;
    long model_rpm;
    long model_tpm;
    long model_reserve_pct;
} rp_worker_cfg_t;

extern const rp_cfg_def_t rp_worker_cfg_defs[];
extern const size_t rp_worker_cfg_ndefs;

/* Load and cross-check the settings (getenv_fn NULL = the environment).
 * Returns 0, or RP_EINVAL with err naming the variable; free with
 * rp_worker_cfg_free either way. */
int rp_worker_cfg_load(rp_worker_cfg_t *cfg, rp_cfg_getenv_fn getenv_fn, void *data,
                       rp_err_t *err);
void rp_worker_cfg_free(rp_worker_cfg_t *cfg);

/* True when name is a safe SQL function name: [schema.]identifier of
 * letters, digits and underscores, not starting with a digit. */
int rp_sql_name_valid(const char *name);

#endif
