/*
 * chat.c: the "chat" job kind -- the reference design's pipeline.
 *
 *   FETCHING   embedding of the question and the user's recent swaps, at once
 *   RETRIEVING the match function (pgvector or the real[] fallback)
 *   INFERRING  chat completion
 *   then rp__job_persist with the conversations row (chat_row).
 *
 * Questions of jobs that reach FETCHING in the same loop turn share one
 * embeddings request (chat_flush runs at the end of every turn); a request
 * the provider refuses as a whole is retried one question per request, so
 * only the culprit fails.  Every stage callback holds a job reference and
 * first checks that the job is still in that stage (a sibling stage may
 * have failed it, or the drain released it).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "worker_int.h"

/* One embeddings request shared by the jobs that asked in one loop turn. */
typedef struct embed_batch {
    rp_worker_t *w;
    size_t n;
    uint64_t t_start;
    rp__job_t *jobs[]; /* each holds a reference */
} embed_batch_t;

static void job_advance(rp__job_t *j);
static void embed_send(rp_worker_t *w, rp__job_t *const *jobs, size_t n);

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
    const char *model = j->p.model != NULL ? j->p.model : cfg->chat_model;
    rp_buf_json_escape(b, model, strlen(model));
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
/* Stage: INFERRING                                                     */
/* ------------------------------------------------------------------ */

static void chat_done(void *data, const rp_http_resp_t *resp)
{
    rp__job_t *j = data;
    j->chat_req = NULL;
    j->t_infer_end = uv_hrtime();
    if (j->state != RP__JOB_INFERRING)
        goto out;
    if (resp->error != 0) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "chat request failed: %s: %s",
                     rp_strerror(resp->error), resp->error_msg);
        goto out;
    }
    if (resp->status != 200) {
        char desc[300];
        rp_openai_describe_error(resp->status, resp->body, resp->body_len, desc, sizeof(desc));
        rp__job_fail(
            j, rp_openai_status_retryable(resp->status) ? RP__FAIL_TRANSIENT : RP__FAIL_PERMANENT,
            resp->retry_after_ms, "chat completion: %s", desc);
        goto out;
    }
    rp_err_t err;
    if (rp_openai_chat_parse(resp->body, resp->body_len, &j->chat, &err) != 0) {
        /* A broken body is usually a proxy or a truncated transfer: retry. */
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "chat completion: %s", err.msg);
        goto out;
    }
    job_advance(j);
out:
    rp__job_unref(j);
}

static void job_infer(rp__job_t *j)
{
    rp_worker_t *w = j->w;
    rp__job_set_state(j, RP__JOB_INFERRING);
    const char **ctx = (const char **)j->ctx_text;
    size_t plen = 0;
    char *prompt =
        rp_prompt_render(w->tmpl, j->p.message, ctx, j->nctx, j->swaps, j->nswaps, &plen);
    long max_tokens = j->p.max_tokens > 0 ? j->p.max_tokens : w->cfg->chat_max_tokens;
    size_t blen = 0;
    char *body = prompt == NULL
                     ? NULL
                     : rp_openai_chat_request(j->p.model != NULL ? j->p.model : w->cfg->chat_model,
                                              prompt, plen, max_tokens, j->p.temperature, &blen);
    free(prompt);
    if (body == NULL) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory building the chat request");
        return;
    }
    rp_http_request_t req = {
        .method = "POST",
        .url = w->chat_url,
        .headers = w->http_headers,
        .body = body,
        .body_len = blen,
        .timeout_ms = w->cfg->model_timeout_ms,
    };
    j->t_infer = uv_hrtime();
    rp__job_ref(j);
    int rc = rp_http_send(w->http, &req, chat_done, j, &j->chat_req);
    free(body);
    if (rc != 0) {
        j->chat_req = NULL;
        rp__job_unref(j);
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "cannot send the chat request: %s",
                     rp_strerror(rc));
    }
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
        int rc = rp_pg_query(rp__db_pick(w),
                             "SELECT from_token, to_token, amount FROM ragpool.recent_swaps($1, "
                             "$2::int)",
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
    else
        job_advance(j);
}

static char *chat_row(const rp__job_t *j)
{
    rp_buf_t b = RP_BUF_INIT;
    append_result(&b, j);
    return rp_buf_take(&b, NULL);
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
}

static void chat_abandon(rp__job_t *j)
{
    if (j->chat_req != NULL) {
        rp_http_cancel(j->chat_req);
        j->chat_req = NULL;
        rp__job_unref(j);
    }
}

const rp__kind_t rp__kind_chat = {
    .name = "chat",
    .start = chat_start,
    .row = chat_row,
    .cleanup = chat_cleanup,
    .abandon = chat_abandon,
    .flush = embed_flush,
};
