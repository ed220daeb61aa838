/*
 * config.c: the worker's configuration table.
 *
 * One declarative table (name, type, default, range, help) is the single
 * source of truth for parsing, `--help` and docs/CONFIGURATION.md.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define F(field) offsetof(rp_worker_cfg_t, field)
#define NORANGE 1, 0

const rp_cfg_def_t rp_worker_cfg_defs[] = {
    {"RAGPOOL_QUEUE", RP_CFG_STR, F(queue), "postgres", NORANGE, 0,
     "Where jobs are queued: postgres (table + LISTEN/NOTIFY) or redis (a stream with a consumer "
     "group); answers and error rows go to Postgres either way, dead letters to "
     "ragpool.dead_jobs or <stream>:dead.  Re-embedding and export jobs are queued in "
     "Postgres only."},
    {"REDIS_URL", RP_CFG_STR, F(redis_url), NULL, NORANGE, RP_CFG_SECRET,
     "redis://[:password@]host[:port][/db]; required when RAGPOOL_QUEUE=redis."},
    {"RAGPOOL_REDIS_STREAM", RP_CFG_STR, F(redis_stream), "ragpool:jobs", NORANGE, 0,
     "Stream holding the jobs (RAGPOOL_QUEUE=redis); the delayed set and the dead-letter stream "
     "are named after it (<stream>:delayed, <stream>:dead)."},
    {"RAGPOOL_REDIS_GROUP", RP_CFG_STR, F(redis_group), "ragpool", NORANGE, 0,
     "Consumer group of the workers (RAGPOOL_QUEUE=redis)."},
    {"RAGPOOL_REDIS_BLOCK_MS", RP_CFG_INT, F(redis_block_ms), "2000", 1, 60000, 0,
     "How long one XREADGROUP waits for new entries (RAGPOOL_QUEUE=redis)."},
    {"DATABASE_URL", RP_CFG_STR, F(database_url), NULL, NORANGE, RP_CFG_REQUIRED | RP_CFG_SECRET,
     "Postgres connection (URL or key=value) for the queue, retrieval and answers."},
    {"RAGPOOL_LISTEN_DATABASE_URL", RP_CFG_STR, F(listen_database_url), NULL, NORANGE,
     RP_CFG_SECRET,
     "Direct or session-mode connection used for LISTEN (transaction poolers drop LISTEN); "
     "defaults to DATABASE_URL."},
    {"OPENAI_BASE_URL", RP_CFG_STR, F(openai_base_url), "https://api.openai.com/v1", NORANGE, 0,
     "Base URL of an OpenAI-compatible API (embeddings and chat completions)."},
    {"OPENAI_API_KEY", RP_CFG_STR, F(openai_api_key), NULL, NORANGE, RP_CFG_SECRET,
     "API key, sent as 'Authorization: Bearer'; never logged."},
    {"RAGPOOL_EMBED_MODEL", RP_CFG_STR, F(embed_model), "text-embedding-3-small", NORANGE, 0,
     "Embedding model name."},
    {"RAGPOOL_EMBED_DIMENSIONS", RP_CFG_INT, F(embed_dimensions), "0", 0, 16000, 0,
     "Embedding dimensions requested ('dimensions'); 0 sends none (the model's default)."},
    {"RAGPOOL_EMBED_BATCH", RP_CFG_INT, F(embed_batch), "64", 1, 2048, 0,
     "Most questions embedded in one request (questions arriving together share a request)."},
    {"RAGPOOL_EMBED_ENCODING", RP_CFG_STR, F(embed_encoding), "base64", NORANGE, 0,
     "Embedding encoding_format to request: base64 (compact, what OpenAI's own clients use) or "
     "float."},
    {"RAGPOOL_CHAT_MODEL", RP_CFG_STR, F(chat_model), "gpt-4o-mini", NORANGE, 0,
     "Chat model name; recorded in conversations.model_version."},
    {"RAGPOOL_CHAT_MAX_TOKENS", RP_CFG_INT, F(chat_max_tokens), "0", 0, 1000000, 0,
     "max_tokens sent with each chat request; 0 sends none."},
    {"RAGPOOL_MAX_INFLIGHT", RP_CFG_INT, F(max_inflight), "256", 1, 1000000, 0,
     "Most jobs in flight in this process."},
    {"RAGPOOL_CLAIM_BATCH", RP_CFG_INT, F(claim_batch), "64", 1, 10000, 0,
     "Most jobs claimed by one query."},
    {"RAGPOOL_CLAIMS_IN_FLIGHT", RP_CFG_INT, F(claims_in_flight), "2", 1, 16, 0,
     "Most claim queries outstanding at once while the queue has a backlog (the last claim "
     "came back full); one at a time otherwise, and always with the Redis queue."},
    {"RAGPOOL_MATCH_FUNCTION", RP_CFG_STR, F(match_function), "match_finance_knowledge", NORANGE,
     0, "SQL function used for retrieval: (query_embedding, match_threshold, match_count) -> "
        "(id, content, similarity, ...)."},
    {"RAGPOOL_MATCH_THRESHOLD", RP_CFG_DOUBLE, F(match_threshold), "0.7", -1, 1, 0,
     "Lowest cosine similarity of a context document."},
    {"RAGPOOL_MATCH_COUNT", RP_CFG_INT, F(match_count), "5", 0, 50, 0,
     "Most context documents per question (0 skips retrieval)."},
    {"RAGPOOL_HISTORY_COUNT", RP_CFG_INT, F(history_count), "5", 0, 50, 0,
     "Most recent swaps of the user put in the prompt (0 skips the query)."},
    {"RAGPOOL_PROMPT_TEMPLATE", RP_CFG_STR, F(prompt_template), NULL, NORANGE, 0,
     "File holding a prompt template with {{context}}, {{swaps}} and {{question}}; unset uses "
     "the built-in one."},
    {"RAGPOOL_LEASE_MS", RP_CFG_INT, F(lease_ms), "120000", 100, 86400000, 0,
     "Visibility timeout of a claimed job: after it another worker may take the job."},
    {"RAGPOOL_MODEL_TIMEOUT_MS", RP_CFG_INT, F(model_timeout_ms), "60000", 10, 3600000, 0,
     "Deadline of one model request."},
    {"RAGPOOL_DB_TIMEOUT_MS", RP_CFG_INT, F(db_timeout_ms), "10000", 10, 3600000, 0,
     "Deadline of one database query (also the statement_timeout)."},
    {"RAGPOOL_BACKOFF_BASE_MS", RP_CFG_INT, F(backoff_base_ms), "1000", 1, 3600000, 0,
     "Retry delay after the first failure; doubles each attempt, with jitter."},
    {"RAGPOOL_BACKOFF_MAX_MS", RP_CFG_INT, F(backoff_max_ms), "60000", 1, 86400000, 0,
     "Cap on the computed retry delay."},
    {"RAGPOOL_RETRY_AFTER_MAX_MS", RP_CFG_INT, F(retry_after_max_ms), "300000", 0, 86400000, 0,
     "Cap on a provider's Retry-After."},
    {"RAGPOOL_POLL_MS", RP_CFG_INT, F(poll_ms), "5000", 10, 3600000, 0,
     "Safety-net poll for due jobs when no NOTIFY arrives (also picks up delayed retries)."},
    {"RAGPOOL_COMMIT_BATCH", RP_CFG_INT, F(commit_batch), "256", 1, 10000, 0,
     "Most finished jobs committed in one transaction (group commit)."},
    {"RAGPOOL_DRAIN_TIMEOUT_MS", RP_CFG_INT, F(drain_timeout_ms), "30000", 0, 3600000, 0,
     "On SIGTERM/SIGINT: time given to jobs in flight before the rest are released."},
    {"RAGPOOL_DB_CONNECTIONS", RP_CFG_INT, F(db_connections), "2", 1, 64, 0,
     "Pipelined Postgres connections for queries (LISTEN has its own)."},
    {"RAGPOOL_METRICS_HOST", RP_CFG_STR, F(metrics_host), "127.0.0.1", NORANGE, 0,
     "Address of the worker's /metrics and /healthz endpoint."},
    {"RAGPOOL_METRICS_PORT", RP_CFG_INT, F(metrics_port), "0", 0, 65535, 0,
     "Port of the worker's /metrics (Prometheus) and /healthz endpoint; 0 leaves it off."},
    {"RAGPOOL_MODEL_CONNECTIONS", RP_CFG_INT, F(model_connections), "0", 0, 100000, 0,
     "Most connections to the model server; 0 = no limit beyond RAGPOOL_MAX_INFLIGHT."},
    {"RAGPOOL_WORKER_ID", RP_CFG_STR, F(worker_id), NULL, NORANGE, 0,
     "Name recorded on claimed jobs; defaults to host:pid."},
    {"RAGPOOL_LOG_LEVEL", RP_CFG_STR, F(log_level), "info", NORANGE, 0,
     "debug, info, warn or error."},
    /* providers, registry, streaming, training exports */
    {"RAGPOOL_CHAT_PROVIDERS", RP_CFG_STR, F(chat_providers), "openai", NORANGE, 0,
     "Chat providers in fallback order, comma-separated: openai (OPENAI_BASE_URL's chat "
     "completions), replicate (Replicate predictions)."},
    {"REPLICATE_BASE_URL", RP_CFG_STR, F(replicate_base_url), "https://api.replicate.com/v1",
     NORANGE, 0, "Base URL of the Replicate API (POST <url>/predictions)."},
    {"REPLICATE_API_TOKEN", RP_CFG_STR, F(replicate_api_token), NULL, NORANGE, RP_CFG_SECRET,
     "Replicate API token, sent as 'Authorization: Bearer <token>'."},
    {"RAGPOOL_REPLICATE_VERSION", RP_CFG_STR, F(replicate_version), NULL, NORANGE, 0,
     "Replicate model version id (or owner/name) used when the model registry names none."},
    {"RAGPOOL_REPLICATE_WAIT_S", RP_CFG_INT, F(replicate_wait_s), "5", 0, 60, 0,
     "Seconds sent as 'Prefer: wait=N' when creating a prediction; 0 sends none (always poll)."},
    {"RAGPOOL_REPLICATE_POLL_MS", RP_CFG_INT, F(replicate_poll_ms), "500", 10, 60000, 0,
     "Interval between polls of a prediction that has not finished."},
    {"RAGPOOL_PROVIDER_FAILURES", RP_CFG_INT, F(provider_failures), "3", 1, 1000, 0,
     "Consecutive failures (5xx, timeouts, transport errors) after which a provider is out "
     "(its circuit opens) and the next provider in the chain takes its jobs."},
    {"RAGPOOL_PROVIDER_COOLDOWN_MS", RP_CFG_INT, F(provider_cooldown_ms), "30000", 10, 3600000, 0,
     "How long an open circuit stays open before one trial request is let through."},
    {"RAGPOOL_PROVIDER_429_BUDGET_MS", RP_CFG_INT, F(provider_429_budget_ms), "10000", 0,
     86400000, 0,
     "A 429 asking to wait at most this long is waited out (the job retries on the same "
     "provider); a longer one puts the provider out and the next one takes the job."},
    {"RAGPOOL_MODEL_REGISTRY", RP_CFG_BOOL, F(model_registry), "true", NORANGE, 0,
     "Take the active chat model from public.model_metadata and follow its changes (NOTIFY "
     "ragpool_models) without a restart."},
    {"RAGPOOL_STREAM", RP_CFG_BOOL, F(stream), "false", NORANGE, 0,
     "Stream chat completions (SSE) and push partial answers to the user's Realtime channel "
     "(or ragpool.stream_chunks)."},
    {"RAGPOOL_STREAM_INTERVAL_MS", RP_CFG_INT, F(stream_interval_ms), "100", 0, 60000, 0,
     "Partial text of one answer is pushed at most this often (0: every piece as it arrives)."},
    {"RAGPOOL_EXPORT_DIR", RP_CFG_STR, F(export_dir), NULL, NORANGE, 0,
     "Directory where training-data exports are written as JSONL files; unset writes none."},
    {"RAGPOOL_EXPORT_PAGE", RP_CFG_INT, F(export_page), "500", 1, 100000, 0,
     "Conversations read per query by a training-data export."},
    {"SUPABASE_URL", RP_CFG_STR, F(supabase_url), NULL, NORANGE, 0,
     "Supabase project URL; exports with a bucket are uploaded to <url>/storage/v1/object/."},
    {"SUPABASE_SERVICE_ROLE_KEY", RP_CFG_STR, F(supabase_service_key), NULL, NORANGE,
     RP_CFG_SECRET, "Key for Supabase Storage uploads (sent as Bearer token and apikey)."},
    /* batch re-embedding and provider budgets (worker/reembed.c, worker/model_budget.c) */
    {"RAGPOOL_REEMBED_CHUNKS", RP_CFG_INT, F(reembed_chunks), "4", 1, 1024, 0,
     "Re-embedding chunks this process works on at once (more claimed chunks wait their turn, "
     "their leases kept alive)."},
    {"RAGPOOL_REEMBED_INFLIGHT", RP_CFG_INT, F(reembed_inflight), "8", 1, 4096, 0,
     "Most re-embedding requests in flight in this process."},
    {"RAGPOOL_REEMBED_BATCH_INPUTS", RP_CFG_INT, F(reembed_batch_inputs), "256", 1, 2048, 0,
     "Most texts in one re-embedding request (OpenAI allows 2048)."},
    {"RAGPOOL_REEMBED_BATCH_TOKENS", RP_CFG_INT, F(reembed_batch_tokens), "100000", 1, 10000000,
     0,
     "Most tokens in one re-embedding request, counted approximately (one per 3 bytes; OpenAI "
     "allows 300000)."},
    {"RAGPOOL_REEMBED_REQUEST_ATTEMPTS", RP_CFG_INT, F(reembed_request_attempts), "10", 1, 1000,
     0,
     "Tries of one re-embedding request (429, 5xx, transport errors) before its chunk fails and "
     "is retried through the queue."},
    {"RAGPOOL_MODEL_RPM", RP_CFG_INT, F(model_rpm), "0", 0, 100000000, 0,
     "Re-embedding requests per minute this process sends to the model provider (chat is not "
     "paced; it has priority); 0 = no limit."},
    {"RAGPOOL_MODEL_TPM", RP_CFG_INT, F(model_tpm), "0", 0, 1000000000, 0,
     "Re-embedding tokens per minute this process sends to the model provider; 0 = no limit."},
    {"RAGPOOL_MODEL_RESERVE_PCT", RP_CFG_INT, F(model_reserve_pct), "20", 0, 100, 0,
     "Share of the provider's RPM/TPM that re-embedding leaves unused, for chat traffic."},
};
const size_t rp_worker_cfg_ndefs = sizeof(rp_worker_cfg_defs) / sizeof(rp_worker_cfg_defs[0]);

int rp_sql_name_valid(const char *name)
{
    int parts = 0;
    const char *p = name;
    for (;;) {
        if (!(isalpha((unsigned char)*p) || *p == '_'))
            return 0;
        while (isalnum((unsigned char)*p) || *p == '_')
            p++;
        parts++;
        if (*p == '\0')
            return p - name <= 127;
        if (*p != '.' || parts == 2)
            return 0;
        p++;
    }
}

int rp_worker_cfg_load(rp_worker_cfg_t *cfg, rp_cfg_getenv_fn getenv_fn, void *data,
                       rp_err_t *err)
{
    memset(cfg, 0, sizeof(*cfg));
    int rc = rp_cfg_load(rp_worker_cfg_defs, rp_worker_cfg_ndefs, cfg, getenv_fn, data, err);
    if (rc != 0)
        return rc;
    if (strcmp(cfg->queue, "postgres") != 0 && strcmp(cfg->queue, "redis") != 0)
        return rp_err_set(err, RP_EINVAL, "RAGPOOL_QUEUE=%s is not postgres or redis", cfg->queue);
    if (strcmp(cfg->queue, "redis") == 0 && (cfg->redis_url == NULL || cfg->redis_url[0] == '\0'))
        return rp_err_set(err, RP_EINVAL, "REDIS_URL is required when RAGPOOL_QUEUE=redis");
    if (rp_log_level_parse(cfg->log_level) < 0)
        return rp_err_set(err, RP_EINVAL,
                          "RAGPOOL_LOG_LEVEL=%s is not one of debug, info, warn, error",
                          cfg->log_level);
    if (strncmp(cfg->openai_base_url, "http://", 7) != 0 &&
        strncmp(cfg->openai_base_url, "https://", 8) != 0)
        return rp_err_set(err, RP_EINVAL, "OPENAI_BASE_URL=%s must start with http:// or https://",
                          cfg->openai_base_url);
    size_t n = strlen(cfg->openai_base_url);
    while (n > 0 && cfg->openai_base_url[n - 1] == '/')
        cfg->openai_base_url[--n] = '\0';
    if (!rp_sql_name_valid(cfg->match_function))
        return rp_err_set(err, RP_EINVAL,
                          "RAGPOOL_MATCH_FUNCTION=%s is not a plain [schema.]function name",
                          cfg->match_function);
    if (strcmp(cfg->embed_encoding, "base64") != 0 && strcmp(cfg->embed_encoding, "float") != 0)
        return rp_err_set(err, RP_EINVAL, "RAGPOOL_EMBED_ENCODING=%s is not base64 or float",
                          cfg->embed_encoding);
    if (cfg->embed_model[0] == '\0' || cfg->chat_model[0] == '\0')
        return rp_err_set(err, RP_EINVAL, "%s must not be empty",
                          cfg->embed_model[0] == '\0' ? "RAGPOOL_EMBED_MODEL"
                                                      : "RAGPOOL_CHAT_MODEL");
    if (cfg->backoff_max_ms < cfg->backoff_base_ms)
        return rp_err_set(err, RP_EINVAL,
                          "RAGPOOL_BACKOFF_MAX_MS=%ld is below RAGPOOL_BACKOFF_BASE_MS=%ld",
                          cfg->backoff_max_ms, cfg->backoff_base_ms);
    if (cfg->claim_batch > cfg->max_inflight)
        cfg->claim_batch = cfg->max_inflight;
    if (cfg->database_url[0] == '\0')
        return rp_err_set(err, RP_EINVAL, "DATABASE_URL is empty");
    if (cfg->listen_database_url == NULL || cfg->listen_database_url[0] == '\0') {
        free(cfg->listen_database_url);
        cfg->listen_database_url = strdup(cfg->database_url);
    }
    if (cfg->worker_id == NULL || cfg->worker_id[0] == '\0') {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        char id[300];
        snprintf(id, sizeof(id), "%s:%ld", host, (long)getpid());
        free(cfg->worker_id);
        cfg->worker_id = strdup(id);
    }
    if (cfg->listen_database_url == NULL || cfg->worker_id == NULL)
        return rp_err_set(err, RP_ENOMEM, "out of memory loading the configuration");
    return 0;
}

void rp_worker_cfg_free(rp_worker_cfg_t *cfg)
{
    rp_cfg_free(rp_worker_cfg_defs, rp_worker_cfg_ndefs, cfg);
}
