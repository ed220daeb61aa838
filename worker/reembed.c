/*
 * reembed.c: the job kinds "reembed_plan" and "embed_chunk" (see
 * reembed.h, sql/0009_reembed.sql and docs/REEMBED.md).
 *
 * A chunk job runs through its own stages (all while the pool holds it in
 * RP__JOB_RUNNING), changed only by chunk_set_stage():
 *
 *   WAITING    claimed, waiting for one of RAGPOOL_REEMBED_CHUNKS slots
 *   READING    ragpool.reembed_chunk_rows: its rows, each to embed, unchanged
 *              (content hash) or without text
 *   EMBEDDING  its texts packed into requests (at most
 *              RAGPOOL_REEMBED_BATCH_INPUTS texts and _BATCH_TOKENS
 *              estimated tokens each), sent through the process's request
 *              queue: at most RAGPOOL_REEMBED_INFLIGHT in flight, within the
 *              provider budget (model_budget.h, background class)
 *   COMMITTING ragpool.reembed_chunk_commit: every vector in one UPDATE,
 *              with the checkpoint and the hashes, in one transaction
 *   FINISHED   then rp__job_persist (the ack) or rp__job_fail
 *
 * Requests: a 429, a 5xx or a transport error pauses the whole provider
 * (the budget's cooldown, honouring Retry-After) and puts the request back
 * at the head of the queue; after RAGPOOL_REEMBED_REQUEST_ATTEMPTS tries the
 * chunk fails and the queue retries it later.  A request the model refuses
 * (400, 413, 422) is split in halves until the refused text is alone; that
 * row is recorded as failed with the model's reason and the others go on.
 * Other refusals (401, 403, 404: a wrong key or model) fail the chunk for
 * good: every row would meet the same answer.
 *
 * Leases: every claimed chunk, waiting or not, extends its lease every
 * third of RAGPOOL_LEASE_MS (ragpool.reembed_extend), so a chunk held back
 * by rate limits is not taken over by another worker meanwhile.
 *
 * Memory: a chunk's texts and vectors live from READING to its commit; the
 * chunk slots bound how many chunks hold them at once.  The request queue,
 * the provider budget and the slot count are per worker, in w->reembed_ctx
 * (alive while the worker's chunk jobs are).
 *
 * References: every query and every request in flight holds a job
 * reference; a request cancelled by rp_http_cancel drops its own.  The
 * chunk's two timers are closed in cleanup, and the chunk memory is freed
 * in their close callbacks, after the job itself is gone.
 */
#include "reembed.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "model_budget.h"

/* Chunks planned per planning step (each step is one short statement). */
#define PLAN_CHUNKS_PER_STEP 100

typedef struct rs rs_t;
typedef struct chunk chunk_t;
typedef struct ereq ereq_t;

typedef enum {
    C_WAITING = 0,
    C_READING,
    C_EMBEDDING,
    C_COMMITTING,
    C_PLANNING,
    C_FINISHED,
    C_NSTAGES
} cstage_t;

static const char *const stage_names[C_NSTAGES] = {"waiting",    "reading",  "embedding",
                                                   "committing", "planning", "finished"};

enum { ROW_PENDING = 0, ROW_OK = 1, ROW_FAILED = 2 };

/* One embeddings request: rows [first, first + n) of its chunk. */
struct ereq {
    chunk_t *c;
    size_t first, n;
    double tokens;
    int attempts;
    rp_http_req_t *http;   /* while in flight */
    int queued;            /* in rs's queue */
    ereq_t *qprev, *qnext; /* rs's queue */
    ereq_t *cprev, *cnext; /* the chunk's live requests */
};

struct chunk {
    rp__job_t *j; /* NULL once the job is freed */
    rs_t *rs;
    cstage_t stage;
    int is_plan;
    uv_timer_t beat, wake;
    int closing; /* timers closing: freed when both are closed */
    int beat_inflight;
    uint64_t t_start, t_embed;

    char *model;
    long dims; /* requested dimensions; 0 = the model's default */
    rp_vec_format_t fmt;

    /* rows to embed (the others are only counted) */
    size_t n;
    char **ids, **texts;
    char (*hash)[40];
    double *tokens;
    unsigned char *st;
    char **why;  /* reasons of failed rows */
    float *vecs; /* n * vdims */
    size_t vdims;
    size_t nskipped, nfailed;

    ereq_t *reqs; /* live requests: queued or in flight */
    size_t nreqs;

    int waiting;
    chunk_t *wprev, *wnext; /* rs's waiting chunks */
};

/* What this file keeps per worker. */
struct rs {
    rp_worker_t *w;
    int refs; /* chunk and plan jobs alive */
    rp_model_budget_t *budget;
    ereq_t *qhead, *qtail;
    size_t inflight; /* requests */
    size_t active;   /* chunks READING, EMBEDDING or COMMITTING */
    chunk_t *whead, *wtail;
};


static void chunk_commit(chunk_t *c);
static void rs_pump(rs_t *rs);
static void chunk_activate(chunk_t *c);

/* ------------------------------------------------------------------ */
/* Per-worker state                                                     */
/* ------------------------------------------------------------------ */

static rs_t *rs_get(rp_worker_t *w)
{
    if (w->reembed_ctx != NULL) {
        w->reembed_ctx->refs++;
        return w->reembed_ctx;
    }
    rs_t *rs = calloc(1, sizeof(*rs));
    if (rs == NULL)
        return NULL;
    const rp_worker_cfg_t *cfg = w->cfg;
    rp_model_budget_opts_t o = {
        .rpm = (double)cfg->model_rpm,
        .tpm = (double)cfg->model_tpm,
        .reserve_pct = (int)cfg->model_reserve_pct,
        .pause_base_ms = cfg->backoff_base_ms,
        .pause_max_ms = cfg->backoff_max_ms,
        .retry_after_max_ms = cfg->retry_after_max_ms,
    };
    rs->budget = rp_model_budget_new(&o, (int64_t)uv_now(w->loop));
    if (rs->budget == NULL) {
        free(rs);
        return NULL;
    }
    rs->w = w;
    rs->refs = 1;
    w->reembed_ctx = rs;
    return rs;
}

static void rs_put(rs_t *rs)
{
    if (--rs->refs > 0)
        return;
    if (rs->w->reembed_ctx == rs)
        rs->w->reembed_ctx = NULL;
    rp_model_budget_free(rs->budget);
    free(rs);
}

static void q_remove(rs_t *rs, ereq_t *r)
{
    if (!r->queued)
        return;
    if (r->qprev != NULL)
        r->qprev->qnext = r->qnext;
    else
        rs->qhead = r->qnext;
    if (r->qnext != NULL)
        r->qnext->qprev = r->qprev;
    else
        rs->qtail = r->qprev;
    r->qprev = r->qnext = NULL;
    r->queued = 0;
}

static void q_push(rs_t *rs, ereq_t *r, int front)
{
    r->queued = 1;
    if (front) {
        r->qprev = NULL;
        r->qnext = rs->qhead;
        if (rs->qhead != NULL)
            rs->qhead->qprev = r;
        else
            rs->qtail = r;
        rs->qhead = r;
    } else {
        r->qnext = NULL;
        r->qprev = rs->qtail;
        if (rs->qtail != NULL)
            rs->qtail->qnext = r;
        else
            rs->qhead = r;
        rs->qtail = r;
    }
}

static void wait_remove(rs_t *rs, chunk_t *c)
{
    if (!c->waiting)
        return;
    if (c->wprev != NULL)
        c->wprev->wnext = c->wnext;
    else
        rs->whead = c->wnext;
    if (c->wnext != NULL)
        c->wnext->wprev = c->wprev;
    else
        rs->wtail = c->wprev;
    c->wprev = c->wnext = NULL;
    c->waiting = 0;
}

static void wait_push(rs_t *rs, chunk_t *c)
{
    c->waiting = 1;
    c->wnext = NULL;
    c->wprev = rs->wtail;
    if (rs->wtail != NULL)
        rs->wtail->wnext = c;
    else
        rs->whead = c;
    rs->wtail = c;
}

/* ------------------------------------------------------------------ */
/* Chunks: the stage writer, requests, clean-up                         */
/* ------------------------------------------------------------------ */

static int stage_is_active(cstage_t s)
{
    return s == C_READING || s == C_EMBEDDING || s == C_COMMITTING;
}

/* The only writer of c->stage; keeps rs->active and the waiting list. */
static void chunk_set_stage(chunk_t *c, cstage_t s)
{
    rs_t *rs = c->rs;
    cstage_t old = c->stage;
    if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("chunk.stage", c->j != NULL ? c->j->id : NULL, "%s -> %s", stage_names[old],
                     stage_names[s]);
    c->stage = s;
    if (old == C_WAITING)
        wait_remove(rs, c);
    if (stage_is_active(old) && !stage_is_active(s))
        rs->active--;
    if (!stage_is_active(old) && stage_is_active(s))
        rs->active++;
    if (s == C_FINISHED) {
        uv_timer_stop(&c->beat);
        uv_timer_stop(&c->wake);
    }
    /* A slot came free: the oldest waiting chunk takes it. */
    while (rs->whead != NULL && rs->active < (size_t)rs->w->cfg->reembed_chunks)
        chunk_activate(rs->whead);
}

static void req_free(chunk_t *c, ereq_t *r)
{
    q_remove(c->rs, r);
    if (r->cprev != NULL)
        r->cprev->cnext = r->cnext;
    else
        c->reqs = r->cnext;
    if (r->cnext != NULL)
        r->cnext->cprev = r->cprev;
    c->nreqs--;
    free(r);
}

static ereq_t *req_new(chunk_t *c, size_t first, size_t n)
{
    ereq_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->c = c;
    r->first = first;
    r->n = n;
    for (size_t i = first; i < first + n; i++)
        r->tokens += c->tokens[i];
    r->cnext = c->reqs;
    if (c->reqs != NULL)
        c->reqs->cprev = r;
    c->reqs = r;
    c->nreqs++;
    return r;
}

/* Stop everything the chunk has under way (its job is failing, being
 * released, or done). */
static void chunk_stop(chunk_t *c)
{
    while (c->reqs != NULL) {
        ereq_t *r = c->reqs;
        if (r->http != NULL) {
            rp_http_cancel(r->http); /* its callback never runs: drop its reference here */
            r->http = NULL;
            c->rs->inflight--;
            rp__job_unref(c->j);
        }
        req_free(c, r);
    }
    if (c->stage != C_FINISHED)
        chunk_set_stage(c, C_FINISHED);
}

static void free_rows(chunk_t *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->ids != NULL ? c->ids[i] : NULL);
        free(c->texts != NULL ? c->texts[i] : NULL);
        free(c->why != NULL ? c->why[i] : NULL);
    }
    free(c->ids);
    free(c->texts);
    free(c->why);
    free(c->hash);
    free(c->tokens);
    free(c->st);
    free(c->vecs);
    c->ids = c->texts = c->why = NULL;
    c->hash = NULL;
    c->tokens = NULL;
    c->st = NULL;
    c->vecs = NULL;
    c->n = 0;
}

static void timer_closed(uv_handle_t *h)
{
    chunk_t *c = h->data;
    if (--c->closing > 0)
        return;
    free_rows(c);
    free(c->model);
    free(c);
}

/* The kind's cleanup: the job is being freed. */
static void chunk_cleanup(rp__job_t *j)
{
    chunk_t *c = j->ext;
    if (c == NULL)
        return;
    j->ext = NULL;
    chunk_stop(c); /* nothing should be left; this is the safety net */
    c->j = NULL;
    rs_put(c->rs);
    c->rs = NULL;
    c->closing = 2;
    uv_close((uv_handle_t *)&c->beat, timer_closed);
    uv_close((uv_handle_t *)&c->wake, timer_closed);
}

/* The kind's abandon: the job fails or is released on drain. */
static void chunk_abandon(rp__job_t *j)
{
    chunk_t *c = j->ext;
    if (c != NULL) {
        chunk_stop(c);
        rs_pump(c->rs);
    }
}

static void fail_chunk(chunk_t *c, rp__fail_kind_t kind, int64_t retry_after_ms, const char *what,
                       const char *detail)
{
    rp__job_fail(c->j, kind, retry_after_ms, "%s: %s", what, detail);
}

/* ------------------------------------------------------------------ */
/* Lease heartbeat                                                      */
/* ------------------------------------------------------------------ */

static void beat_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    chunk_t *c = j->ext;
    if (c != NULL) {
        c->beat_inflight = 0;
        if (c->stage != C_FINISHED && rp__job_active(j) && rp_pg_res_error(res) == 0 &&
            strcmp(rp_pg_res_value(res, 0, 0), "f") == 0)
            fail_chunk(c, RP__FAIL_TRANSIENT, -1, "lease", "lost while the chunk was in progress");
    }
    rp__job_unref(j);
}

static void beat_cb(uv_timer_t *t)
{
    chunk_t *c = t->data;
    rp__job_t *j = c->j;
    if (j == NULL || c->stage == C_FINISHED || c->beat_inflight || !rp__job_active(j))
        return;
    char lease[32];
    snprintf(lease, sizeof(lease), "%ld", j->w->cfg->lease_ms);
    const char *params[3] = {j->id, j->lease_id, lease};
    rp__job_ref(j);
    c->beat_inflight = 1;
    if (rp_pg_query(rp__db_pick(j->w), "SELECT ragpool.reembed_extend($1::uuid, $2::uuid, $3::int)",
                    3, params, 0, beat_done, j) != 0) {
        c->beat_inflight = 0;
        rp__job_unref(j);
    }
}

/* ------------------------------------------------------------------ */
/* EMBEDDING                                                            */
/* ------------------------------------------------------------------ */

static void embed_done(void *data, const rp_http_resp_t *resp);

static int req_send(rs_t *rs, ereq_t *r)
{
    chunk_t *c = r->c;
    rp_worker_t *w = rs->w;
    size_t blen = 0;
    char *body =
        rp_openai_embed_request(c->model, (const char *const *)&c->texts[r->first], r->n, c->dims,
                                strcmp(w->cfg->embed_encoding, "base64") == 0, &blen);
    if (body == NULL)
        return RP_ENOMEM;
    rp_http_request_t req = {
        .method = "POST",
        .url = w->embed_url,
        .headers = w->http_headers,
        .body = body,
        .body_len = blen,
        .timeout_ms = w->cfg->model_timeout_ms,
        .max_body = 256u << 20,
    };
    rp__job_ref(c->j);
    int rc = rp_http_send(w->http, &req, embed_done, r, &r->http);
    free(body);
    if (rc != 0) {
        r->http = NULL;
        rp__job_unref(c->j);
        return rc;
    }
    rs->inflight++;
    return 0;
}

static void wake_cb(uv_timer_t *t)
{
    chunk_t *c = t->data;
    if (c->rs != NULL)
        rs_pump(c->rs);
}

/* Send queued requests while slots and budget allow. */
static void rs_pump(rs_t *rs)
{
    rp_worker_t *w = rs->w;
    while (rs->qhead != NULL && rs->inflight < (size_t)w->cfg->reembed_inflight) {
        ereq_t *r = rs->qhead;
        int64_t wait = rp_model_budget_take(rs->budget, RP_BUDGET_BACKGROUND, r->tokens,
                                            (int64_t)uv_now(w->loop));
        if (wait > 0) {
            /* The head request's chunk wakes the queue when the budget
             * allows; a later head re-arms its own chunk's timer. */
            uv_timer_t *t = &r->c->wake;
            if (!uv_is_active((uv_handle_t *)t) || uv_timer_get_due_in(t) > (uint64_t)wait)
                uv_timer_start(t, wake_cb, (uint64_t)wait, 0);
            return;
        }
        q_remove(rs, r);
        int rc = req_send(rs, r);
        if (rc != 0) {
            chunk_t *c = r->c;
            fail_chunk(c, RP__FAIL_TRANSIENT, -1, "cannot send an embeddings request",
                       rp_strerror(rc));
        }
    }
}

/* A try of r failed for a reason worth retrying. */
static void req_retry(chunk_t *c, ereq_t *r, const char *why)
{
    if (++r->attempts >= c->rs->w->cfg->reembed_request_attempts) {
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "embeddings request failed too often", why);
        return;
    }
    if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("reembed.request_retry", c->j->id, "%zu texts, try %d: %s", r->n, r->attempts,
                     why);
    q_push(c->rs, r, 1);
}

/* The model refused r: split it, or record its one row as failed. */
static void req_refused(chunk_t *c, ereq_t *r, const char *desc)
{
    if (r->n == 1) {
        c->st[r->first] = ROW_FAILED;
        c->why[r->first] = strdup(desc);
        c->nfailed++;
        rp_log_warn("reembed.row_failed", c->j->id, "row %s: %s", c->ids[r->first], desc);
        req_free(c, r);
        return;
    }
    size_t half = r->n / 2;
    ereq_t *second = req_new(c, r->first + half, r->n - half);
    if (second == NULL) {
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "embeddings", "out of memory splitting a request");
        return;
    }
    r->n = half;
    r->tokens = 0;
    for (size_t i = r->first; i < r->first + r->n; i++)
        r->tokens += c->tokens[i];
    q_push(c->rs, second, 1);
    q_push(c->rs, r, 1);
}

static void req_ok(chunk_t *c, ereq_t *r, const rp_http_resp_t *resp)
{
    rp_embeddings_t e;
    rp_err_t err;
    size_t expect = c->vdims ? c->vdims : (c->dims > 0 ? (size_t)c->dims : 0);
    if (rp_openai_embed_parse(resp->body, resp->body_len, r->n, expect, &e, &err) != 0) {
        /* A broken body is usually a proxy or a cut transfer: try again. */
        req_retry(c, r, err.msg);
        return;
    }
    if (c->vecs == NULL) {
        c->vdims = e.dims;
        c->vecs = malloc(c->n * e.dims * sizeof(float));
        if (c->vecs == NULL) {
            rp_embeddings_free(&e);
            fail_chunk(c, RP__FAIL_TRANSIENT, -1, "embeddings", "out of memory");
            return;
        }
    }
    memcpy(c->vecs + r->first * c->vdims, e.data, r->n * c->vdims * sizeof(float));
    for (size_t i = r->first; i < r->first + r->n; i++)
        c->st[i] = ROW_OK;
    rp_embeddings_free(&e);
    req_free(c, r);
}

static void embed_done(void *data, const rp_http_resp_t *resp)
{
    ereq_t *r = data;
    chunk_t *c = r->c;
    rs_t *rs = c->rs;
    rp__job_t *j = c->j;
    int64_t now = (int64_t)uv_now(rs->w->loop);
    r->http = NULL;
    rs->inflight--;
    if (c->stage != C_EMBEDDING) {
        /* Cannot happen (stopping a chunk cancels its requests); be safe. */
        req_free(c, r);
        goto out;
    }
    if (resp->error != 0) {
        char why[300];
        snprintf(why, sizeof(why), "%s: %s", rp_strerror(resp->error), resp->error_msg);
        rp_model_budget_pause(rs->budget, -1, now);
        req_retry(c, r, why);
    } else if (resp->status == 200) {
        rp_model_budget_ok(rs->budget);
        req_ok(c, r, resp);
    } else {
        char desc[300];
        rp_openai_describe_error(resp->status, resp->body, resp->body_len, desc, sizeof(desc));
        if (rp_openai_status_retryable(resp->status)) {
            int64_t pause = rp_model_budget_pause(rs->budget, resp->retry_after_ms, now);
            rp_log_warn("reembed.throttled", j->id, "%s: pausing the provider for %lld ms", desc,
                        (long long)pause);
            req_retry(c, r, desc);
        } else if (resp->status == 400 || resp->status == 413 || resp->status == 422) {
            req_refused(c, r, desc);
        } else {
            fail_chunk(c, RP__FAIL_PERMANENT, -1, "embeddings refused", desc);
        }
    }
    if (c->stage == C_EMBEDDING && c->nreqs == 0)
        chunk_commit(c);
out:
    rs_pump(rs);
    rp__job_unref(j);
}

/* Pack the rows to embed into requests and queue them. */
static void chunk_embed(chunk_t *c)
{
    const rp_worker_cfg_t *cfg = c->rs->w->cfg;
    chunk_set_stage(c, C_EMBEDDING);
    c->t_embed = uv_hrtime();
    size_t first = 0;
    while (first < c->n) {
        size_t n = 0;
        double tokens = 0;
        while (first + n < c->n && n < (size_t)cfg->reembed_batch_inputs &&
               (n == 0 || tokens + c->tokens[first + n] <= (double)cfg->reembed_batch_tokens)) {
            tokens += c->tokens[first + n];
            n++;
        }
        ereq_t *r = req_new(c, first, n);
        if (r == NULL) {
            fail_chunk(c, RP__FAIL_TRANSIENT, -1, "embeddings", "out of memory");
            return;
        }
        q_push(c->rs, r, 0);
        first += n;
    }
    if (c->n == 0)
        chunk_commit(c);
    else
        rs_pump(c->rs);
}

/* ------------------------------------------------------------------ */
/* READING                                                              */
/* ------------------------------------------------------------------ */

/* Tokens of a text, approximately: one per 3 bytes (English averages about
 * 4 characters a token; denser scripts about 3 bytes), at least 1. */
static double estimate_tokens(size_t len)
{
    return (double)(len + 2) / 3.0 + 1.0;
}

static void rows_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    chunk_t *c = j->ext;
    if (c == NULL || c->stage != C_READING || !rp__job_active(j))
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        char detail[600];
        snprintf(detail, sizeof(detail), "%s %s", rp_strerror(err), rp_pg_res_message(res));
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "reading the chunk", detail);
        goto out;
    }
    int nt = rp_pg_res_ntuples(res);
    size_t n = 0;
    for (int r = 0; r < nt; r++)
        if (strcmp(rp_pg_res_value(res, r, 1), "e") == 0)
            n++;
    c->nskipped = (size_t)nt - n;
    size_t alloc = n > 0 ? n : 1;
    c->ids = calloc(alloc, sizeof(char *));
    c->texts = calloc(alloc, sizeof(char *));
    c->why = calloc(alloc, sizeof(char *));
    c->hash = calloc(alloc, sizeof(*c->hash));
    c->tokens = calloc(alloc, sizeof(double));
    c->st = calloc(alloc, 1);
    int oom = c->ids == NULL || c->texts == NULL || c->why == NULL || c->hash == NULL ||
              c->tokens == NULL || c->st == NULL;
    for (int r = 0; !oom && r < nt; r++) {
        if (strcmp(rp_pg_res_value(res, r, 1), "e") != 0)
            continue;
        size_t i = c->n++;
        c->ids[i] = strdup(rp_pg_res_value(res, r, 0));
        size_t len = (size_t)rp_pg_res_length(res, r, 2);
        c->texts[i] = malloc(len + 1);
        if (c->ids[i] == NULL || c->texts[i] == NULL) {
            oom = 1;
            break;
        }
        memcpy(c->texts[i], rp_pg_res_value(res, r, 2), len + 1);
        snprintf(c->hash[i], sizeof(c->hash[i]), "%s", rp_pg_res_value(res, r, 3));
        c->tokens[i] = estimate_tokens(len);
    }
    if (oom) {
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "reading the chunk", "out of memory");
        goto out;
    }
    chunk_embed(c);
out:
    rp__job_unref(j);
}

static void chunk_activate(chunk_t *c)
{
    rp__job_t *j = c->j;
    chunk_set_stage(c, C_READING);
    char dims[32];
    snprintf(dims, sizeof(dims), "%ld", c->dims);
    const char *params[4] = {j->id, j->lease_id, c->model, c->dims > 0 ? dims : NULL};
    rp__job_ref(j);
    int rc = rp_pg_query(rp__db_pick(j->w),
                         "SELECT row_id, state, content, hash "
                         "FROM ragpool.reembed_chunk_rows($1::uuid, $2::uuid, $3, $4::int)",
                         4, params, 0, rows_done, j);
    if (rc != 0) {
        rp__job_unref(j);
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "reading the chunk", rp_strerror(rc));
    }
}

/* ------------------------------------------------------------------ */
/* COMMITTING                                                           */
/* ------------------------------------------------------------------ */

/* s as an element of an array literal: "..." with " and \ escaped. */
static void put_array_elem(rp_buf_t *b, const char *s)
{
    rp_buf_putc(b, '"');
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            rp_buf_putc(b, '\\');
        rp_buf_putc(b, *p);
    }
    rp_buf_putc(b, '"');
}

/* The vector of row i as a quoted element: "[a,b]" or "{a,b}". */
static void put_vector_elem(rp_buf_t *b, const chunk_t *c, size_t i)
{
    const float *v = c->vecs + i * c->vdims;
    char *p = rp_buf_reserve(b, c->vdims * 33 + 4);
    if (p == NULL)
        return;
    size_t k = 0;
    p[k++] = '"';
    p[k++] = c->fmt == RP_VEC_PGVECTOR ? '[' : '{';
    for (size_t d = 0; d < c->vdims; d++) {
        if (d > 0)
            p[k++] = ',';
        k += rp_vec_format_float(p + k, v[d]);
    }
    p[k++] = c->fmt == RP_VEC_PGVECTOR ? ']' : '}';
    p[k++] = '"';
    b->len += k;
    b->data[b->len] = '\0';
}

static void commit_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    chunk_t *c = j->ext;
    if (c == NULL || c->stage != C_COMMITTING || !rp__job_active(j))
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        char detail[600];
        snprintf(detail, sizeof(detail), "%s %s", rp_strerror(err), rp_pg_res_message(res));
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "committing the chunk", detail);
        goto out;
    }
    const char *outcome = rp_pg_res_value(res, 0, 0);
    size_t ok = c->n - c->nfailed;
    uint64_t now = uv_hrtime();
    json_t *f =
        json_pack("{s:s, s:I, s:I, s:I, s:f, s:f}", "outcome", outcome, "embedded", (json_int_t)ok,
                  "skipped", (json_int_t)c->nskipped, "failed", (json_int_t)c->nfailed, "embed_ms",
                  round(rp__ms_between(c->t_embed, now) * 10) / 10, "total_ms",
                  round(rp__ms_between(c->t_start, now) * 10) / 10);
    rp_log_fields(RP_LOG_INFO, "reembed.chunk", j->id, f);
    chunk_set_stage(c, C_FINISHED);
    free_rows(c);
    /* 'lost_lease': nothing was written; the ack reports the lost lease
     * too, and the job's new holder does the chunk. */
    rp__job_persist(j);
out:
    rp__job_unref(j);
}

static void chunk_commit(chunk_t *c)
{
    rp__job_t *j = c->j;
    chunk_set_stage(c, C_COMMITTING);
    rp_buf_t ids = RP_BUF_INIT, hashes = RP_BUF_INIT, vecs = RP_BUF_INIT, fids = RP_BUF_INIT,
             fwhy = RP_BUF_INIT;
    size_t nok = 0, nf = 0;
    rp_buf_putc(&ids, '{');
    rp_buf_putc(&hashes, '{');
    rp_buf_putc(&vecs, '{');
    rp_buf_putc(&fids, '{');
    rp_buf_putc(&fwhy, '{');
    for (size_t i = 0; i < c->n; i++) {
        if (c->st[i] == ROW_OK) {
            if (nok++ > 0) {
                rp_buf_putc(&ids, ',');
                rp_buf_putc(&hashes, ',');
                rp_buf_putc(&vecs, ',');
            }
            put_array_elem(&ids, c->ids[i]);
            rp_buf_puts(&hashes, c->hash[i]);
            put_vector_elem(&vecs, c, i);
        } else if (c->st[i] == ROW_FAILED) {
            if (nf++ > 0) {
                rp_buf_putc(&fids, ',');
                rp_buf_putc(&fwhy, ',');
            }
            put_array_elem(&fids, c->ids[i]);
            put_array_elem(&fwhy, c->why[i] != NULL ? c->why[i] : "refused");
        }
    }
    rp_buf_putc(&ids, '}');
    rp_buf_putc(&hashes, '}');
    rp_buf_putc(&vecs, '}');
    rp_buf_putc(&fids, '}');
    rp_buf_putc(&fwhy, '}');
    char dims[32], skipped[32];
    snprintf(dims, sizeof(dims), "%ld", c->dims);
    snprintf(skipped, sizeof(skipped), "%zu", c->nskipped);
    int rc = RP_ENOMEM;
    if (!rp_buf_failed(&ids) && !rp_buf_failed(&hashes) && !rp_buf_failed(&vecs) &&
        !rp_buf_failed(&fids) && !rp_buf_failed(&fwhy)) {
        const char *params[10] = {j->id,     j->lease_id, c->model,  c->dims > 0 ? dims : NULL,
                                  ids.data,  hashes.data, vecs.data, fids.data,
                                  fwhy.data, skipped};
        rp__job_ref(j);
        rc = rp_pg_query(rp__db_pick(j->w),
                         "SELECT ragpool.reembed_chunk_commit($1::uuid, $2::uuid, $3, $4::int, "
                         "$5::text[], $6::uuid[], $7::text[], $8::text[], $9::text[], $10::int)",
                         10, params, 0, commit_done, j);
        if (rc != 0)
            rp__job_unref(j);
    }
    rp_buf_free(&ids);
    rp_buf_free(&hashes);
    rp_buf_free(&vecs);
    rp_buf_free(&fids);
    rp_buf_free(&fwhy);
    if (rc != 0)
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "committing the chunk", rp_strerror(rc));
}

/* ------------------------------------------------------------------ */
/* Start                                                                */
/* ------------------------------------------------------------------ */

static chunk_t *chunk_new(rp__job_t *j, int is_plan)
{
    chunk_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->rs = rs_get(j->w);
    if (c->rs == NULL) {
        free(c);
        return NULL;
    }
    c->j = j;
    c->is_plan = is_plan;
    c->stage = C_FINISHED; /* set properly by the caller */
    c->t_start = uv_hrtime();
    uv_timer_init(j->w->loop, &c->beat);
    uv_timer_init(j->w->loop, &c->wake);
    c->beat.data = c->wake.data = c;
    j->ext = c;
    uint64_t every = (uint64_t)j->w->cfg->lease_ms / 3;
    if (every < 50)
        every = 50;
    uv_timer_start(&c->beat, beat_cb, every, every);
    return c;
}

/* Payload: {"batch": N, "chunk": K | "ids": [...], "model", "dimensions",
 * "vector": "vector"|"array"}. */
static int parse_payload(chunk_t *c, const rp__job_t *j, char *why, size_t whylen)
{
    json_error_t jerr;
    json_t *p = json_loadb(j->payload, j->payload_len, 0, &jerr);
    int rc = -1;
    if (!json_is_object(p)) {
        snprintf(why, whylen, "not a JSON object");
        goto out;
    }
    json_t *batch = json_object_get(p, "batch");
    json_t *model = json_object_get(p, "model");
    json_t *dims = json_object_get(p, "dimensions");
    json_t *vec = json_object_get(p, "vector");
    if (!json_is_integer(batch)) {
        snprintf(why, whylen, "no batch id");
        goto out;
    }
    if (!json_is_integer(json_object_get(p, "chunk")) &&
        !json_is_array(json_object_get(p, "ids"))) {
        snprintf(why, whylen, "neither a chunk number nor ids");
        goto out;
    }
    if (model != NULL && !(json_is_string(model) && json_string_length(model) > 0 &&
                           json_string_length(model) <= 256)) {
        snprintf(why, whylen, "model is not a short string");
        goto out;
    }
    if (dims != NULL && !(json_is_integer(dims) && json_integer_value(dims) >= 1 &&
                          json_integer_value(dims) <= 16000)) {
        snprintf(why, whylen, "dimensions is not 1..16000");
        goto out;
    }
    if (vec != NULL && !(json_is_string(vec) && (strcmp(json_string_value(vec), "vector") == 0 ||
                                                 strcmp(json_string_value(vec), "array") == 0))) {
        snprintf(why, whylen, "vector is not 'vector' or 'array'");
        goto out;
    }
    c->model = strdup(model != NULL ? json_string_value(model) : j->w->cfg->embed_model);
    c->dims = dims != NULL ? (long)json_integer_value(dims) : j->w->cfg->embed_dimensions;
    c->fmt = vec != NULL && strcmp(json_string_value(vec), "vector") == 0 ? RP_VEC_PGVECTOR
                                                                          : RP_VEC_ARRAY;
    if (c->model == NULL) {
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    rc = 0;
out:
    json_decref(p);
    return rc;
}

static void chunk_start(rp__job_t *j)
{
    rp__job_set_state(j, RP__JOB_RUNNING);
    chunk_t *c = chunk_new(j, 0);
    if (c == NULL) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory starting the chunk");
        return;
    }
    char why[200];
    if (parse_payload(c, j, why, sizeof(why)) != 0) {
        rp__job_fail(j, RP__FAIL_INVALID, -1, "invalid_payload: %s", why);
        return;
    }
    c->stage = C_WAITING;
    wait_push(c->rs, c);
    if (c->rs->active < (size_t)j->w->cfg->reembed_chunks)
        chunk_activate(c);
}

/* ------------------------------------------------------------------ */
/* reembed_plan                                                         */
/* ------------------------------------------------------------------ */

static void plan_step(chunk_t *c);

static void plan_done(void *data, const rp_pg_res_t *res)
{
    rp__job_t *j = data;
    chunk_t *c = j->ext;
    if (c == NULL || c->stage != C_PLANNING || !rp__job_active(j))
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        char detail[600];
        snprintf(detail, sizeof(detail), "%s %s", rp_strerror(err), rp_pg_res_message(res));
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "planning the batch", detail);
        goto out;
    }
    const char *outcome = rp_pg_res_value(res, 0, 0);
    if (strcmp(outcome, "more") == 0) {
        plan_step(c);
        goto out;
    }
    rp_log_info("reembed.planned", j->id, "%s (%.1f ms)", outcome,
                rp__ms_between(c->t_start, uv_hrtime()));
    chunk_set_stage(c, C_FINISHED);
    rp__job_persist(j);
out:
    rp__job_unref(j);
}

static void plan_step(chunk_t *c)
{
    rp__job_t *j = c->j;
    char n[16];
    snprintf(n, sizeof(n), "%d", PLAN_CHUNKS_PER_STEP);
    const char *params[3] = {j->id, j->lease_id, n};
    rp__job_ref(j);
    int rc =
        rp_pg_query(rp__db_pick(j->w), "SELECT ragpool.reembed_plan($1::uuid, $2::uuid, $3::int)",
                    3, params, 0, plan_done, j);
    if (rc != 0) {
        rp__job_unref(j);
        fail_chunk(c, RP__FAIL_TRANSIENT, -1, "planning the batch", rp_strerror(rc));
    }
}

static void plan_start(rp__job_t *j)
{
    rp__job_set_state(j, RP__JOB_RUNNING);
    chunk_t *c = chunk_new(j, 1);
    if (c == NULL) {
        rp__job_fail(j, RP__FAIL_TRANSIENT, -1, "out of memory starting the plan");
        return;
    }
    chunk_set_stage(c, C_PLANNING);
    plan_step(c);
}

static void reembed_flush(rp_worker_t *w)
{
    rs_t *rs = w->reembed_ctx;
    if (rs != NULL && rs->qhead != NULL)
        rs_pump(rs);
}

const rp__kind_t rp__kind_reembed_plan = {
    .name = "reembed_plan",
    .start = plan_start,
    .cleanup = chunk_cleanup,
    .abandon = chunk_abandon,
};

const rp__kind_t rp__kind_embed_chunk = {
    .name = "embed_chunk",
    .start = chunk_start,
    .cleanup = chunk_cleanup,
    .abandon = chunk_abandon,
    .flush = reembed_flush,
};
