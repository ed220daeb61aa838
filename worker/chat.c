/*
 * chat.c: the "chat" job kind -- the reference design's pipeline.
 *
 *   FETCHING   embedding of the question and the user's recent swaps, at once
 *   RETRIEVING the match function (pgvector or the real[] fallback)
 *   INFERRING  the provider chain (provider.h): the first provider whose
 *              circuit is closed answers; when it is out (5xx, timeout, 429
 *              beyond its budget) the next one takes the job in the same
 *              attempt; with RAGPOOL_STREAM the answer's text is pushed to
 *              the user's channel as it arrives (stream.h)
 *   then rp__job_persist with the conversations row (chat_row), which
 *   records the provider and model that answered.
 *
 * Questions of jobs that reach FETCHING in the same loop turn share one
 * embeddings request (chat_flush runs at the end of every turn); a request
 * the provider refuses as a whole is retried one question per request, so
 * only the culprit fails.  Every stage callback holds a job reference and
 * first checks that the job is still in that stage (a sibling stage may
 * have failed it, or the drain released it).
 *
 * Per worker, the kind keeps a context (chat_ctx_t): the provider chain,
 * the model registry (registry.h) and the streamer, in w->chat_ctx; it is
 * made at the first loop turn, and an unreferenced uv_prepare handle closes
 * it once the pool has closed (w->closing), before the loop can end.  Per job, the
 * INFERRING stage keeps a chat_ext_t in j->ext (one allocation: the
 * provider call lives inside it).  A job reaching INFERRING before the
 * registry's first load waits for it ("takes the active model at start").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "provider.h"
#include "registry.h"
#include "stream.h"
#include "worker_int.h"

/* One embeddings request shared by the jobs that asked in one loop turn. */
typedef struct embed_batch {
    rp_worker_t *w;
    size_t n;
    uint64_t t_start;
    rp__job_t *jobs[]; /* each holds a reference */
} embed_batch_t;

/* The kind's state for one worker. */
typedef struct chat_ctx {
    rp_worker_t *w;
    rp_chain_t *chain;
    rp_registry_t *registry; /* NULL with RAGPOOL_MODEL_REGISTRY=false */
    rp_stream_t *stream;     /* NULL unless RAGPOOL_STREAM */
    rp__job_t **parked;      /* waiting for the registry's first load; each holds a ref */
    size_t nparked, capparked;
    uv_prepare_t watch; /* closes the context after the pool closed */
    int failed;         /* could not be made: the worker is stopping */
    int closing, open;
} chat_ctx_t;

/* One job's INFERRING stage (j->ext). */
typedef struct chat_ext {
    rp_provider_call_t call;
    int calling;    /* call in flight: holds a job reference */
    int provider;   /* chain index of the provider asked last (-1: none yet) */
    unsigned tried; /* providers asked in this attempt */
    int parked;
    rp_models_t *models; /* registry snapshot (a reference), or NULL */
    const char *model;   /* what the provider is asked for */
    const char *label;   /* conversations.model_version */
    rp_stream_job_t *sj; /* partial answers, or NULL */
    char *prompt;
    size_t prompt_len;
} chat_ext_t;


static void job_advance(rp__job_t *j);
static void embed_send(rp_worker_t *w, rp__job_t *const *jobs, size_t n);
static void infer_try(rp__job_t *j);

static void append_json_number_or_null(rp_buf_t *b, long v)
{
    if (v < 0)
        rp_buf_puts(b, "null");
    else
        rp_buf_printf(b, "%ld", v);
}

static void append_result(rp_buf_t *b, const rp__job_t *j)
{
    const rp_worker_cfg_t *cfg = j->w->cfg;
    rp_buf_puts(b, "{\"job_id\":\"");
    rp_buf_puts(b, j->id);
    rp_buf_puts(b, "\",\"lease_id\":\"");
    rp_buf_puts(b, j->lease_id);
    rp_buf_puts(b, "\",\"user_id\":\"");
    rp_buf_json_escape(b, j->p.user_id, strlen(j->p.user_id));
    rp_buf_puts(b, "\",\"message\":\"");
    rp_buf_json_escape(b, j->p.message, strlen(j->p.message));
    rp_buf_puts(b, "\",\"response\":\"");
    rp_buf_json_escape(b, j->chat.content, strlen(j->chat.content));
    rp_buf_puts(b, "\",\"context_used\":[");
    for (size_t i = 0; i < j->nctx; i++) {
        if (i > 0)
            rp_buf_putc(b, ',');
        /* ids come from the match function: numbers stay numbers, anything
         * else (a uuid key, say) is written as a string */
        const char *id = j->ctx_ids[i];
        int numeric = id[0] != '\0' && strspn(id, "0123456789") == strlen(id);
        if (numeric) {
            rp_buf_puts(b, id);
        } else {
            rp_buf_putc(b, '"');
            rp_buf_json_escape(b, id, strlen(id));
            rp_buf_putc(b, '"');
        }
    }
    rp_buf_puts(b, "],\"model_version\":\"");
    const chat_ext_t *x = j->ext;
    const char *model = x != NULL && x->label != NULL ? x->label
                        : j->p.model != NULL          ? j->p.model
                                                      : cfg->chat_model;
    rp_buf_json_escape(b, model, strlen(model));
    if (x != NULL && x->provider >= 0) {
        chat_ctx_t *c = j->w->chat_ctx;
        if (c != NULL && c->chain != NULL) {
            rp_buf_puts(b, "\",\"provider\":\"");
            rp_buf_puts(b, rp_provider_name(rp_chain_get(c->chain, (size_t)x->provider)));
        }
    }
    rp_buf_puts(b, "\",\"status\":\"done\",\"error\":null,\"prompt_tokens\":");
    append_json_number_or_null(b, j->chat.prompt_tokens);
    rp_buf_puts(b, ",\"completion_tokens\":");
    append_json_number_or_null(b, j->chat.completion_tokens);
    rp_buf_printf(b,
                  ",\"timings\":{\"queue_ms\":%.1f,\"embed_ms\":%.1f,\"history_ms\":%.1f,"
                  "\"retrieve_ms\":%.1f,\"infer_ms\":%.1f,\"total_ms\":%.1f}}",
                  j->queued_ms, j->embed_ms, rp__ms_between(j->t_fetch, j->t_history_end),
                  rp__ms_between(j->t_retrieve, j->t_retrieve_end),
                  rp__ms_between(j->t_infer, j->t_infer_end),
                  j->queued_ms + rp__ms_between(j->t_claimed, uv_hrtime()));
}

/* ------------------------------------------------------------------ */
/* The kind's per-worker context                                        */
/* ------------------------------------------------------------------ */

static void infer_go(rp__job_t *j);

static chat_ctx_t *ctx_find(const rp_worker_t *w)
{
    return w->chat_ctx;
}

static void ctx_release_parked(chat_ctx_t *c, int resume)
{
    rp__job_t **parked = c->parked;
    size_t n = c->nparked;
    c->parked = NULL;
    c->nparked = c->capparked = 0;
    for (size_t i = 0; i < n; i++) {
        rp__job_t *j = parked[i];
        chat_ext_t *x = j->ext;
        x->parked = 0;
        if (resume && j->state == RP__JOB_INFERRING)
            infer_go(j);
        rp__job_unref(j);
    }
    free(parked);
}

/* The registry published a snapshot: jobs that waited for it go on. */
static void on_models(void *data)
{
    chat_ctx_t *c = data;
    if (c->nparked > 0)
        ctx_release_parked(c, 1);
}

static void ctx_closed_one(void *data)
{
    chat_ctx_t *c = data;
    if (--c->open > 0)
        return;
    if (c->w->chat_ctx == c)
        c->w->chat_ctx = NULL;
    rp_chain_free(c->chain);
    free(c);
}

static void watch_closed(uv_handle_t *h)
{
    ctx_closed_one(h->data);
}

static void ctx_close(chat_ctx_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    ctx_release_parked(c, 0);
    c->open = 1; /* guard, dropped at the end */
    c->open++;
    uv_close((uv_handle_t *)&c->watch, watch_closed);
    if (c->registry != NULL) {
        c->open++;
        rp_registry_close(c->registry, ctx_closed_one, c);
        c->registry = NULL;
    }
    if (c->stream != NULL) {
        c->open++;
        rp_stream_close(c->stream, ctx_closed_one, c);
        c->stream = NULL;
    }
    ctx_closed_one(c);
}

/* Before every poll: once the pool has closed its own handles, close ours,
 * so the loop can end. */
static void watch_cb(uv_prepare_t *h)
{
    chat_ctx_t *c = h->data;
    if (c->w->closing)
        ctx_close(c);
}

static void ctx_fatal(rp_worker_t *w, const char *msg)
{
    rp_log_error("worker.start_failed", NULL, "%s", msg);
    fprintf(stderr, "ragpool-worker: %s\n", msg);
    w->exit_code = 1;
    rp_worker_stop(w);
    rp_worker_stop(w);
}

/* The worker's context, made at the first call. */
static chat_ctx_t *ctx_get(rp_worker_t *w)
{
    chat_ctx_t *c = ctx_find(w);
    if (c != NULL)
        return c->failed || c->closing ? NULL : c;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->w = w;
    w->chat_ctx = c;
    uv_prepare_init(w->loop, &c->watch);
    c->watch.data = c;
    uv_prepare_start(&c->watch, watch_cb);
    uv_unref((uv_handle_t *)&c->watch);
    const rp_worker_cfg_t *cfg = w->cfg;
    rp_err_t err;
    rp_err_clear(&err);
    c->chain = rp_chain_new(w->loop, w->http, cfg, &err);
    if (c->chain == NULL)
        goto fail;
    if (cfg->model_registry) {
        c->registry = rp_registry_new(w->loop, cfg->listen_database_url, on_models, c, &err);
        if (c->registry == NULL)
            goto fail;
        rp_registry_start(c->registry);
    }
    if (cfg->stream) {
        c->stream = rp_stream_new(w->loop, cfg->database_url, cfg->stream_interval_ms, &err);
        if (c->stream == NULL)
            goto fail;
        rp_stream_start(c->stream);
    }
    json_t *names = json_array();
    for (size_t i = 0; i < rp_chain_size(c->chain); i++)
        json_array_append_new(names, json_string(rp_provider_name(rp_chain_get(c->chain, i))));
    rp_log_fields(RP_LOG_INFO, "chat.providers", NULL,
                  json_pack("{s:o,s:b,s:b,s:I}", "providers", names, "registry",
                            c->registry != NULL, "stream", c->stream != NULL, "stream_interval_ms",
                            (json_int_t)cfg->stream_interval_ms));
    return c;
fail:
    c->failed = 1;
    ctx_fatal(w, err.msg);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Stage: INFERRING                                                     */
/* ------------------------------------------------------------------ */

static void on_delta(void *data, const char *text, size_t len)
{
    rp__job_t *j = data;
    chat_ext_t *x = j->ext;
    if (j->state == RP__JOB_INFERRING && x->sj != NULL)
        rp_stream_job_text(x->sj, text, len);
}

static void infer_done(void *data, rp_provider_result_t *res)
{
    rp__job_t *j = data;
    chat_ext_t *x = j->ext;
    chat_ctx_t *c = ctx_find(j->w);
    x->calling = 0;
    j->t_infer_end = uv_hrtime();
    if (j->state != RP__JOB_INFERRING || c == NULL)
        goto out;
    rp_provider_t *p = rp_chain_get(c->chain, (size_t)x->provider);
    const char *name = rp_provider_name(p);
    uint64_t now = uv_now(j->w->loop);
    int out_for_job = rp_chain_report(c->chain, x->provider, res->status, res->retry_after_ms, now);
    if (res->status == RP_PROVIDER_OK) {
        j->chat = res->chat;
        memset(&res->chat, 0, sizeof(res->chat));
        if (x->sj != NULL) {
            if (!rp_provider_streams(p))
                rp_stream_job_text(x->sj, j->chat.content, strlen(j->chat.content));
            rp_stream_job_finish(x->sj);
            x->sj = NULL;
        }
        job_advance(j);
        goto out;
    }
    if (res->status == RP_PROVIDER_REQUEST) {
        rp__job_fail(j, RP__FAIL_PERMANENT, -1, "%s: %s", name, res->error);
        goto out;
    }
    if (!out_for_job) {
        /* A 429 within the budget: wait for this provider. */
        rp__job_fail(j, RP__FAIL_TRANSIENT, res->retry_after_ms, "%s: %s", name, res->error);
        goto out;
    }
    int next = rp_chain_pick(c->chain, x->tried, now);
    if (next < 0 || (x->sj != NULL && rp_stream_job_pushed(x->sj) > 0)) {
        /* Nobody left, or subscribers already hold part of this answer: a
         * new attempt (with its own stream) starts over. */
        rp__job_fail(j, RP__FAIL_TRANSIENT, res->retry_after_ms, "%s: %s", name, res->error);
        goto out;
    }
    if (rp_log_enabled(RP_LOG_WARN))
        rp_log_fields(RP_LOG_WARN, "provider.fallback", j->id,
                      json_pack("{s:s,s:s,s:s}", "from", name, "to",
                                rp_provider_name(rp_chain_get(c->chain, (size_t)next)), "error",
                                res->error));
    infer_try(j);
out:
    rp__job_unref(j);
}

/* Ask the next provider of the chain. */
static void infer_try(rp__job_t *j)
{
    rp_worker_t *w = j->w;
    chat_ext_t *x = j->ext;
    chat_ctx_t *c = ctx_find(w);
    for (;;) {
        int idx = c != NULL ? rp_chain_pick(c->chain, x->tried, uv_now(w->loop)) : -1;
        if (idx < 0) {
            rp__job_fail(j, RP__FAIL_TRANSIENT, -1,
                         "no chat provider could take the request (see RAGPOOL_CHAT_PROVIDERS)");
            return;
        }
        x->provider = idx;
        x->tried |= 1u << idx;
        rp_provider_t *p = rp_chain_get(c->chain, (size_t)idx);
        const char *name = rp_provider_name(p);
        int replicate = !rp_provider_streams(p);
        const rp_model_t *m = rp_models_find(x->models, name);
        if (j->p.model != NULL) {
            x->model = x->label = j->p.model;
        } else if (m != NULL) {
            /* Replicate runs a version id (or a model's own endpoint);
             * OpenAI-compatible servers take the model name. */
            x->model = replicate && m->version[0] != '\0' ? m->version : m->model_name;
            x->label = m->version[0] != '\0' ? m->version : m->model_name;
        } else {
            x->model = x->label = rp_provider_default_model(p);
        }
        rp_provider_req_t req = {
            .prompt = x->prompt,
            .prompt_len = x->prompt_len,
            .model = x->model,
            .max_tokens = j->p.max_tokens > 0 ? j->p.max_tokens : w->cfg->chat_max_tokens,
            .temperature = j->p.temperature,
            .on_delta = x->sj != NULL ? on_delta : NULL,
        };
        rp__job_ref(j);
        x->calling = 1;
        int rc = rp_provider_call(p, &x->call, &req, infer_done, j);
        if (rc == 0)
            return;
        x->calling = 0;
        rp__job_unref(j);
        rp_log_warn("provider.skipped", j->id, "%s cannot take the request: %s", name,
                    rc == RP_EINVAL ? "no model configured" : rp_strerror(rc));
    }
}

/* The registry is ready (or not used): take its snapshot and start. */
static void infer_go(rp__job_t *j)
{
    chat_ext_t *x = j->ext;
    chat_ctx_t *c = ctx_find(j->w);
    if (c != NULL && c->registry != NULL && x->models == NULL)
        x->models = rp_registry_acquire(c->registry);
    if (c != NULL && c->stream != NULL && x->sj == NULL)
        x->sj = rp_stream_job_new(c->stream, j->id, j->attempts, j->p.user_id);
    j->t_infer = uv_hrtime();
    infer_try(j);
}

static void job_infer(rp__job_t *j)
{
    rp_worker_t *w = j->w;
    rp__job_set_state(j, RP__JOB_INFERRING);
    chat_ctx_t *c = ctx_get(w);
    chat_ext_t *x = calloc(1, sizeof(*x));
    if (c == NULL || x == NULL) {
        free(x);
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "%s",
                     c == NULL ? "the chat providers are not available" : "out of memory");
        return;
    }
    x->provider = -1;
    j->ext = x;
    const char **ctx = (const char **)j->ctx_text;
    x->prompt =
        rp_prompt_render(w->tmpl, j->p.message, ctx, j->nctx, j->swaps, j->nswaps, &x->prompt_len);
    if (x->prompt == NULL) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory building the prompt");
        return;
    }
    if (c->registry != NULL && !rp_registry_ready(c->registry)) {
        if (c->nparked == c->capparked) {
            size_t cap = c->capparked ? c->capparked * 2 : 64;
            rp__job_t **p = realloc(c->parked, cap * sizeof(*p));
            if (p == NULL) {
                rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory");
                return;
            }
            c->parked = p;
            c->capparked = cap;
        }
        rp__job_ref(j);
        x->parked = 1;
        c->parked[c->nparked++] = j;
        return;
    }
    infer_go(j);
}

/* ------------------------------------------------------------------ */
/* Stage: RETRIEVING                                                    */
/* ------------------------------------------------------------------ */

static void retrieve_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    j->t_retrieve_end = uv_hrtime();
    if (j->state != RP__JOB_RETRIEVING)
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "retrieval with %s failed: %s %s",
                     j->w->cfg->match_function, rp_strerror(err), rp_pg_res_message(res));
        goto out;
    }
    int n = rp_pg_res_ntuples(res);
    j->ctx_ids = calloc((size_t)n + 1, sizeof(char *));
    j->ctx_text = calloc((size_t)n + 1, sizeof(char *));
    if (j->ctx_ids == NULL || j->ctx_text == NULL) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory reading the context");
        goto out;
    }
    for (int r = 0; r < n; r++) {
        j->ctx_ids[r] = strdup(rp_pg_res_value(res, r, 0));
        j->ctx_text[r] = strdup(rp_pg_res_value(res, r, 1));
        j->nctx++;
        if (j->ctx_ids[r] == NULL || j->ctx_text[r] == NULL) {
            rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory reading the context");
            goto out;
        }
    }
    job_advance(j);
out:
    rp__job_unref(j);
}

static void job_retrieve(rp__job_t *j)
{
    rp_worker_t *w = j->w;
    rp__job_set_state(j, RP__JOB_RETRIEVING);
    j->t_retrieve = uv_hrtime();
    long count = j->p.match_count >= 0 ? j->p.match_count : w->cfg->match_count;
    double threshold =
        !isnan(j->p.match_threshold) ? j->p.match_threshold : w->cfg->match_threshold;
    char *vec = rp_vec_format(j->embedding, j->dims, w->vec_format, NULL);
    if (vec == NULL) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory formatting the query vector");
        return;
    }
    char thr[32], cnt[32], sql[256];
    snprintf(thr, sizeof(thr), "%.6f", threshold);
    snprintf(cnt, sizeof(cnt), "%ld", count);
    /* The function name was validated as a plain identifier at start-up;
     * everything else is a parameter. */
    snprintf(sql, sizeof(sql), "SELECT id, content FROM %s($1, $2::float8, $3::int)",
             w->cfg->match_function);
    const char *params[3] = {vec, thr, cnt};
    rp__job_ref(j);
    /* Not prepared: the server's generic plan of an inlined match function
     * cannot fold the query vector, and ran 1.5-3x slower than planning
     * each call (measured with the real[] fallback). */
    int rc = rp_pg_query(rp__db_pick(w), sql, 3, params, 0, retrieve_done, j);
    free(vec);
    if (rc != 0) {
        rp__job_unref(j);
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "cannot send the retrieval query: %s",
                     rp_strerror(rc));
    }
}

/* ------------------------------------------------------------------ */
/* Stage: FETCHING (embedding + recent swaps)                           */
/* ------------------------------------------------------------------ */

static void history_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    j->t_history_end = uv_hrtime();
    if (j->state != RP__JOB_FETCHING)
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "loading recent swaps failed: %s %s",
                     rp_strerror(err), rp_pg_res_message(res));
        goto out;
    }
    int n = rp_pg_res_ntuples(res);
    size_t bytes = (size_t)n * sizeof(rp_swap_t);
    for (int r = 0; r < n; r++)
        for (int c = 0; c < 3; c++)
            bytes += (size_t)rp_pg_res_length(res, r, c) + 1;
    /* One block: the array, then the strings it points to. */
    char *block = malloc(bytes ? bytes : 1);
    if (block == NULL) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory reading recent swaps");
        goto out;
    }
    rp_swap_t *swaps = (rp_swap_t *)(void *)block;
    char *p = block + (size_t)n * sizeof(rp_swap_t);
    for (int r = 0; r < n; r++) {
        const char *vals[3];
        for (int c = 0; c < 3; c++) {
            size_t len = (size_t)rp_pg_res_length(res, r, c);
            memcpy(p, rp_pg_res_value(res, r, c), len);
            p[len] = '\0';
            vals[c] = p;
            p += len + 1;
        }
        swaps[r] = (rp_swap_t){vals[0], vals[1], vals[2]};
    }
    j->swaps = swaps;
    j->nswaps = (size_t)n;
    j->history_done = 1;
    job_advance(j);
out:
    rp__job_unref(j);
}

static void embed_done(void *data, const rp_http_resp_t *resp)
{
    embed_batch_t *eb = data;
    rp_worker_t *w = eb->w;
    uint64_t now = uv_hrtime();
    double took = rp__ms_between(eb->t_start, now);
    rp_embeddings_t e = {0};
    rp_err_t err;
    rp_err_clear(&err);
    rp__fail_kind_t kind = RP__FAIL_TRANSIENT;
    int64_t retry_after = -1;
    int ok = 0;
    if (resp->error != 0) {
        rp_err_set(&err, resp->error, "embedding request failed: %s: %s", rp_strerror(resp->error),
                   resp->error_msg);
    } else if (resp->status != 200) {
        char desc[300];
        rp_openai_describe_error(resp->status, resp->body, resp->body_len, desc, sizeof(desc));
        rp_err_set(&err, RP_EPROTO, "embedding: %s", desc);
        kind = rp_openai_status_retryable(resp->status) ? RP__FAIL_TRANSIENT : RP__FAIL_PERMANENT;
        retry_after = resp->retry_after_ms;
    } else if (rp_openai_embed_parse(resp->body, resp->body_len, eb->n,
                                     w->cfg->embed_dimensions > 0 ? (size_t)w->cfg->embed_dimensions
                                                                  : 0,
                                     &e, &err) == 0) {
        ok = 1;
    }
    if (!ok && kind == RP__FAIL_PERMANENT && eb->n > 1) {
        /* The provider refused the whole request (one input too long, say):
         * ask again one question per request, so only the culprit fails. */
        rp_log_warn("embed.split", NULL, "%s: retrying %zu questions one by one", err.msg, eb->n);
        for (size_t i = 0; i < eb->n; i++) {
            if (eb->jobs[i]->state == RP__JOB_FETCHING)
                embed_send(w, &eb->jobs[i], 1); /* takes over the reference */
            else
                rp__job_unref(eb->jobs[i]);
        }
        free(eb);
        return;
    }
    for (size_t i = 0; i < eb->n; i++) {
        rp__job_t *j = eb->jobs[i];
        j->t_embed_end = now;
        j->embed_ms = took;
        if (j->state == RP__JOB_FETCHING) {
            if (!ok) {
                rp__job_fail(j, kind, retry_after, "%s", err.msg);
            } else {
                j->embedding = malloc(e.dims * sizeof(float));
                if (j->embedding == NULL) {
                    rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory");
                } else {
                    memcpy(j->embedding, e.data + i * e.dims, e.dims * sizeof(float));
                    j->dims = e.dims;
                    j->embed_done = 1;
                    job_advance(j);
                }
            }
        }
        rp__job_unref(j);
    }
    rp_embeddings_free(&e);
    free(eb);
}

/* Send one embeddings request for n jobs, each of which holds a reference
 * that the request takes over. */
static void embed_send(rp_worker_t *w, rp__job_t *const *jobs, size_t n)
{
    embed_batch_t *eb = malloc(sizeof(*eb) + n * sizeof(rp__job_t *));
    const char **inputs = calloc(n, sizeof(char *));
    char *body = NULL;
    size_t blen = 0;
    int rc = RP_ENOMEM;
    if (eb == NULL || inputs == NULL)
        goto fail;
    eb->w = w;
    eb->n = n;
    for (size_t i = 0; i < n; i++) {
        eb->jobs[i] = jobs[i];
        inputs[i] = jobs[i]->p.message;
    }
    body = rp_openai_embed_request(w->cfg->embed_model, inputs, n, w->cfg->embed_dimensions,
                                   strcmp(w->cfg->embed_encoding, "base64") == 0, &blen);
    if (body == NULL)
        goto fail;
    rp_http_request_t req = {
        .method = "POST",
        .url = w->embed_url,
        .headers = w->http_headers,
        .body = body,
        .body_len = blen,
        .timeout_ms = w->cfg->model_timeout_ms,
    };
    eb->t_start = uv_hrtime();
    rc = rp_http_send(w->http, &req, embed_done, eb, NULL);
    free(body);
    free(inputs);
    if (rc == 0)
        return;
    body = NULL;
    inputs = NULL;
fail:
    free(body);
    free(inputs);
    free(eb);
    for (size_t i = 0; i < n; i++) {
        rp__job_fail(jobs[i], RP__FAIL_TRANSIENT, -1, "cannot send the embedding request: %s",
                     rp_strerror(rc));
        rp__job_unref(jobs[i]);
    }
}

/* Send the questions gathered in this loop turn as one embeddings request. */
static void embed_flush(rp_worker_t *w)
{
    size_t n = w->n_embed_pending;
    if (n == 0)
        return;
    w->n_embed_pending = 0;
    embed_send(w, w->embed_pending, n);
}

static void job_fetch(rp__job_t *j)
{
    rp_worker_t *w = j->w;
    rp__job_set_state(j, RP__JOB_FETCHING);
    j->t_fetch = uv_hrtime();
    long match_count = j->p.match_count >= 0 ? j->p.match_count : w->cfg->match_count;
    long history = j->p.history_count >= 0 ? j->p.history_count : w->cfg->history_count;

    /* Retrieval needs the embedding; without it there is nothing to embed. */
    if (match_count > 0) {
        rp__job_ref(j);
        w->embed_pending[w->n_embed_pending++] = j;
        if (w->n_embed_pending == (size_t)w->cfg->embed_batch)
            embed_flush(w);
    } else {
        j->embed_done = 1;
        j->t_embed_end = j->t_fetch;
    }
    if (history > 0) {
        char n[32];
        snprintf(n, sizeof(n), "%ld", history);
        const char *params[2] = {j->p.user_id, n};
        rp__job_ref(j);
        int rc = rp_pg_query_prepared(rp__db_pick(w), "rp_recent_swaps",
                                      "SELECT from_token, to_token, amount FROM "
                                      "ragpool.recent_swaps($1, $2::int)",
                                      2, params, 0, history_done, j);
        if (rc != 0) {
            rp__job_unref(j);
            rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "cannot send the history query: %s",
                         rp_strerror(rc));
            return;
        }
    } else {
        j->history_done = 1;
        j->t_history_end = j->t_fetch;
    }
    if (j->embed_done && j->history_done)
        job_advance(j);
}

/* Move a job to its next stage once the current one is complete. */
static void job_advance(rp__job_t *j)
{
    switch (j->state) {
    case RP__JOB_CLAIMED:
        job_fetch(j);
        break;
    case RP__JOB_FETCHING:
        if (!j->embed_done || !j->history_done)
            break;
        if (j->embedding != NULL)
            job_retrieve(j);
        else
            job_infer(j);
        break;
    case RP__JOB_RETRIEVING:
        job_infer(j);
        break;
    case RP__JOB_INFERRING:
        rp__job_persist(j);
        break;
    default:
        break;
    }
}

static void chat_start(rp__job_t *j)
{
    rp_err_t err;
    if (j->format != RP_PAYLOAD_JSON)
        rp__job_fail(j, RP__FAIL_INVALID, -1, "invalid_payload: unsupported payload encoding");
    else if (rp_chat_payload_decode_json(j->payload, j->payload_len, &j->p, &err) != 0)
        rp__job_fail(j, RP__FAIL_INVALID, -1, "invalid_payload: %s", err.msg);
    else if ((strchr(j->p.user_id, '-') != NULL && strlen(j->p.user_id) == 36) ==
             j->w->user_ids_bigint)
        /* A queue that does not check ids against the schema (Redis) can
         * carry an id the conversations table cannot hold: refuse it now,
         * rather than answer a question no row can record. */
        rp__job_fail(j, RP__FAIL_INVALID, -1,
                     "invalid_payload: user_id: this database uses %s user ids",
                     j->w->user_ids_bigint ? "integer" : "uuid");
    else
        job_advance(j);
}

static char *chat_row(const rp__job_t *j)
{
    rp_buf_t b = RP_BUF_INIT;
    append_result(&b, j);
    return rp_buf_take(&b, NULL);
}

static void ext_free(rp__job_t *j)
{
    chat_ext_t *x = j->ext;
    if (x == NULL)
        return;
    if (x->calling) {
        rp_provider_cancel(&x->call);
        x->calling = 0;
    }
    rp_stream_job_end(x->sj);
    rp_models_unref(x->models);
    free(x->prompt);
    free(x);
    j->ext = NULL;
}

static void chat_cleanup(rp__job_t *j)
{
    rp_chat_payload_free(&j->p);
    free(j->embedding);
    free(j->swaps);
    for (size_t i = 0; i < j->nctx; i++) {
        free(j->ctx_ids[i]);
        free(j->ctx_text[i]);
    }
    free(j->ctx_ids);
    free(j->ctx_text);
    rp_chat_result_free(&j->chat);
    ext_free(j);
}

/* The job failed or is being released: stop its model call and push the
 * text its stream still holds. */
static void chat_abandon(rp__job_t *j)
{
    chat_ext_t *x = j->ext;
    if (x == NULL)
        return;
    if (x->calling) {
        rp_provider_cancel(&x->call);
        x->calling = 0;
        rp__job_unref(j); /* the call's reference; the caller still holds one */
    }
    rp_stream_job_end(x->sj);
    x->sj = NULL;
}

/* End of every loop turn: the embeddings request of this turn, and the
 * partial answers gathered in it. */
static void chat_flush(rp_worker_t *w)
{
    chat_ctx_t *c = ctx_get(w);
    embed_flush(w);
    if (c != NULL && c->stream != NULL)
        rp_stream_flush(c->stream);
}

const rp__kind_t rp__kind_chat = {
    .name = "chat",
    .start = chat_start,
    .row = chat_row,
    .cleanup = chat_cleanup,
    .abandon = chat_abandon,
    .flush = chat_flush,
};
