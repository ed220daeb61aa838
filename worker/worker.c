/*
 * worker.c: the job pool and the chat job state machine.
 *
 * Every job is in exactly one state, and every state is a list (pgbouncer
 * style), changed only by job_set_state(), which keeps per-state counts and
 * traces each change: "where is every job now" is always answerable.
 *
 *   CLAIMED -> FETCHING (embedding and recent swaps at the same time)
 *           -> RETRIEVING (match function) -> INFERRING (chat completion)
 *           -> PERSISTING (waiting in / riding a group commit) -> DONE
 *   any stage -> FAILING (ragpool.fail_job: retry later or dead-letter) -> DONE
 *   drain timeout -> RELEASING (ragpool.release_jobs) -> DONE
 *
 * A job is reference-counted: each asynchronous operation it waits for holds
 * a reference, so a callback that arrives after the job moved on (released
 * on drain, failed by a sibling stage) finds it alive, sees the state, and
 * does nothing.  The job is freed when it is DONE and its last reference is
 * dropped, never inside a callback chain that still uses it.
 *
 * Questions of jobs that reach FETCHING in the same loop turn share one
 * embeddings request (flushed from a uv_check handle at the end of the
 * turn).  Finished jobs are committed by ragpool.complete_jobs in groups:
 * while one commit is in flight the next group gathers.
 */
#include "worker.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "buf.h"
#include "http.h"
#include "job.h"
#include "log.h"
#include "openai.h"
#include "pg.h"
#include "prompt.h"
#include "queue.h"
#include "vec.h"

typedef enum {
    JOB_CLAIMED = 0,
    JOB_FETCHING,
    JOB_RETRIEVING,
    JOB_INFERRING,
    JOB_PERSISTING,
    JOB_FAILING,
    JOB_RELEASING,
    JOB_DONE,
    JOB_NSTATES
} job_state_t;

static const char *const job_state_names[JOB_NSTATES] = {
    "claimed", "fetching", "retrieving", "inferring", "persisting", "failing", "releasing", "done",
};

typedef enum { FAIL_TRANSIENT, FAIL_PERMANENT, FAIL_INVALID } fail_kind_t;

typedef struct job job_t;

typedef struct job_list {
    job_t *head;
    size_t count;
} job_list_t;

struct job {
    rp_worker_t *w;
    job_t *prev, *next; /* in w->lists[state] */
    job_state_t state;
    int refs;

    char id[40];
    char lease_id[64];    /* the queue's lease token */
    char kind[16];
    char *payload;        /* owned copy: a backend may need it to re-queue the job */
    size_t payload_len;
    rp_payload_format_t format;
    int attempts, max_attempts;
    double queued_ms;
    rp_chat_payload_t p;

    /* FETCHING */
    int embed_done, history_done;
    float *embedding; /* owned, dims floats */
    size_t dims;
    rp_swap_t *swaps; /* owned: one block holding the array and its strings */
    size_t nswaps;

    /* RETRIEVING */
    char **ctx_ids; /* owned strings */
    char **ctx_text;
    size_t nctx;

    /* INFERRING */
    rp_http_req_t *chat_req;
    rp_chat_result_t chat;

    /* timings, from uv_hrtime() (ns) */
    uint64_t t_claimed, t_fetch, t_embed_end, t_history_end, t_retrieve, t_retrieve_end, t_infer,
        t_infer_end;
    double embed_ms;

    job_t *commit_next; /* in w->commit_queue */
};

/* One embeddings request shared by the jobs that asked in one loop turn. */
typedef struct embed_batch {
    rp_worker_t *w;
    size_t n;
    uint64_t t_start;
    job_t *jobs[]; /* each holds a reference */
} embed_batch_t;

/* One group commit in flight. */
typedef struct commit_batch {
    rp_worker_t *w;
    size_t n;
    char **rows;     /* each job's conversations row as JSON, NULL for row-less kinds */
    rp_finish_t *fins;
    job_t *jobs[];
} commit_batch_t;

struct rp_worker {
    uv_loop_t *loop;
    const rp_worker_cfg_t *cfg;
    rp_worker_stopped_cb on_stopped;
    void *on_stopped_data;

    rp_http_t *http;
    rp_pg_t **db; /* query connections */
    size_t ndb;
    rp_queue_t *queue;
    rp_prompt_tmpl_t *tmpl;
    rp_backoff_t backoff;
    uint32_t rnd;

    char *auth_header;    /* "Authorization: Bearer …" or NULL */
    char *embed_url, *chat_url;
    const char *http_headers[4];

    rp_vec_format_t vec_format;
    int ready;            /* schema checked, claiming allowed */
    int checking;         /* start-up check in flight */
    int draining;
    int released_all;     /* the drain timeout passed */
    int closing;
    int exit_code;
    int handles_open;

    job_list_t lists[JOB_NSTATES];
    size_t inflight; /* jobs not DONE */

    int claim_inflight;
    size_t claim_asked;
    int work_maybe;         /* a NOTIFY, poll or full claim says more jobs may be due */
    uint64_t wake_seq;      /* counts wake-ups (NOTIFY, poll, retry timer, reconnect) */
    uint64_t claim_wake_seq; /* wake_seq when the claim in flight was sent */

    job_t **embed_pending;
    size_t n_embed_pending;

    job_t *commit_head, *commit_tail;
    size_t commit_queued;
    int commit_inflight;

    uv_check_t flush_check;
    uv_timer_t poll_timer;
    uv_timer_t drain_timer;
    uv_timer_t retry_timer;
    uint64_t *wakeups; /* min-heap of loop times (ms) when retries this worker scheduled are due */
    size_t nwakeups, capwakeups;

    /* totals for the stop line */
    uint64_t n_done, n_retried, n_dead, n_lost;
};

static void job_advance(job_t *j);
static void job_fail(job_t *j, fail_kind_t kind, int64_t retry_after_ms, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void maybe_claim(rp_worker_t *w);
static void maybe_finish_drain(rp_worker_t *w);
static void commit_flush(rp_worker_t *w);
static void embed_send(rp_worker_t *w, job_t *const *jobs, size_t n);

/* ------------------------------------------------------------------ */
/* Jobs: lists, references, the one state writer                        */
/* ------------------------------------------------------------------ */

static double ms_between(uint64_t from_ns, uint64_t to_ns)
{
    return to_ns > from_ns ? (double)(to_ns - from_ns) / 1e6 : 0.0;
}

static void list_remove(job_list_t *l, job_t *j)
{
    if (j->prev != NULL)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    j->prev = j->next = NULL;
    l->count--;
}

static void list_push(job_list_t *l, job_t *j)
{
    j->prev = NULL;
    j->next = l->head;
    if (l->head != NULL)
        l->head->prev = j;
    l->head = j;
    l->count++;
}

static void job_free(job_t *j)
{
    rp_chat_payload_free(&j->p);
    free(j->payload);
    free(j->embedding);
    free(j->swaps);
    for (size_t i = 0; i < j->nctx; i++) {
        free(j->ctx_ids[i]);
        free(j->ctx_text[i]);
    }
    free(j->ctx_ids);
    free(j->ctx_text);
    rp_chat_result_free(&j->chat);
    free(j);
}

static void job_ref(job_t *j)
{
    j->refs++;
}

static void job_unref(job_t *j)
{
    if (--j->refs == 0) {
        rp_worker_t *w = j->w;
        list_remove(&w->lists[JOB_DONE], j);
        job_free(j);
    }
}

/* The only writer of job->state. */
static void job_set_state(job_t *j, job_state_t s)
{
    rp_worker_t *w = j->w;
    if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("job.state", j->id, "%s -> %s", job_state_names[j->state],
                     job_state_names[s]);
    list_remove(&w->lists[j->state], j);
    j->state = s;
    list_push(&w->lists[s], j);
    if (s == JOB_DONE) {
        w->inflight--;
        if (w->draining)
            maybe_finish_drain(w);
        else
            maybe_claim(w);
        job_unref(j); /* the pool's reference: callers still hold their own */
    }
}

static int job_active(const job_t *j)
{
    return j->state != JOB_DONE && j->state != JOB_RELEASING;
}

/* ------------------------------------------------------------------ */
/* Database helpers                                                     */
/* ------------------------------------------------------------------ */

/* The query connection with the fewest queries waiting. */
static rp_pg_t *db_pick(rp_worker_t *w)
{
    rp_pg_t *best = w->db[0];
    for (size_t i = 1; i < w->ndb; i++)
        if (rp_pg_pending(w->db[i]) < rp_pg_pending(best))
            best = w->db[i];
    return best;
}

/* ------------------------------------------------------------------ */
/* Finishing: commit groups, failures, releases                         */
/* ------------------------------------------------------------------ */

static void append_json_number_or_null(rp_buf_t *b, long v)
{
    if (v < 0)
        rp_buf_puts(b, "null");
    else
        rp_buf_printf(b, "%ld", v);
}

static void append_result(rp_buf_t *b, const job_t *j)
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
                  j->queued_ms, j->embed_ms, ms_between(j->t_fetch, j->t_history_end),
                  ms_between(j->t_retrieve, j->t_retrieve_end),
                  ms_between(j->t_infer, j->t_infer_end),
                  j->queued_ms + ms_between(j->t_claimed, uv_hrtime()));
}

static void commit_batch_free(commit_batch_t *cb)
{
    for (size_t i = 0; cb->rows != NULL && i < cb->n; i++)
        free(cb->rows[i]);
    free(cb->rows);
    free(cb->fins);
    free(cb);
}

static void commit_done(void *data, int err, const rp_outcome_t *outcomes, size_t n)
{
    commit_batch_t *cb = data;
    rp_worker_t *w = cb->w;
    w->commit_inflight = 0;
    for (size_t i = 0; i < cb->n; i++) {
        job_t *j = cb->jobs[i];
        rp_outcome_t o = i < n ? outcomes[i] : RP_OUTCOME_FAILED;
        if (o == RP_OUTCOME_DONE) {
            w->n_done++;
            if (rp_log_enabled(RP_LOG_INFO)) {
                json_t *f = json_pack("{s:s, s:i, s:f, s:I, s:I}", "kind", j->kind, "attempt",
                                      j->attempts, "total_ms",
                                      round((j->queued_ms +
                                             ms_between(j->t_claimed, uv_hrtime())) * 10) / 10,
                                      "prompt_tokens", (json_int_t)j->chat.prompt_tokens,
                                      "completion_tokens",
                                      (json_int_t)j->chat.completion_tokens);
                rp_log_fields(RP_LOG_INFO, "job.done", j->id, f);
            }
        } else {
            /* The job keeps its lease; after expiry it runs again, and the
             * unique job_id keeps the effect single. */
            w->n_lost++;
            rp_log_warn("job.lost", j->id, "not committed (%s%s%s): the job returns after its lease",
                        rp_outcome_name(o), err ? ": " : "", err ? rp_strerror(err) : "");
        }
        job_set_state(j, JOB_DONE);
        job_unref(j);
    }
    commit_batch_free(cb);
    if (w->commit_queued > 0)
        commit_flush(w);
}

/* Send the queued finished jobs to the queue as one group. */
static void commit_flush(rp_worker_t *w)
{
    if (w->commit_inflight || w->commit_queued == 0)
        return;
    size_t n = w->commit_queued;
    if (n > (size_t)w->cfg->commit_batch)
        n = (size_t)w->cfg->commit_batch;
    commit_batch_t *cb = calloc(1, sizeof(*cb) + n * sizeof(job_t *));
    if (cb == NULL) {
        rp_log_error("commit.failed", NULL, "out of memory building a group commit");
        return; /* retried at the end of the next loop turn */
    }
    cb->w = w;
    cb->n = n;
    cb->rows = calloc(n, sizeof(char *));
    cb->fins = calloc(n, sizeof(rp_finish_t));
    for (size_t i = 0; i < n; i++) {
        job_t *j = w->commit_head;
        w->commit_head = j->commit_next;
        j->commit_next = NULL;
        cb->jobs[i] = j;
    }
    if (w->commit_head == NULL)
        w->commit_tail = NULL;
    w->commit_queued -= n;

    int rc = cb->rows == NULL || cb->fins == NULL ? RP_ENOMEM : 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        job_t *j = cb->jobs[i];
        if (strcmp(j->kind, "chat") == 0) {
            rp_buf_t b = RP_BUF_INIT;
            append_result(&b, j);
            cb->rows[i] = rp_buf_take(&b, NULL);
            if (cb->rows[i] == NULL)
                rc = RP_ENOMEM;
        }
        cb->fins[i] = (rp_finish_t){
            .kind = RP_FINISH_DONE,
            .id = j->id,
            .lease = j->lease_id,
            .attempts = j->attempts,
            .max_attempts = j->max_attempts,
            .row_json = cb->rows[i],
            .payload = j->payload,
            .payload_len = j->payload_len,
            .format = j->format,
            .kind_name = j->kind,
        };
    }
    if (rc == 0)
        rc = w->queue->vtbl->finish(w->queue, cb->fins, n, commit_done, cb);
    if (rc == 0) {
        w->commit_inflight = 1;
        return;
    }
    rp_log_error("commit.failed", NULL, "cannot send a group commit of %zu jobs: %s", n,
                 rp_strerror(rc));
    for (size_t i = 0; i < n; i++) {
        job_set_state(cb->jobs[i], JOB_DONE);
        job_unref(cb->jobs[i]);
    }
    commit_batch_free(cb);
}

static void job_persist(job_t *j)
{
    rp_worker_t *w = j->w;
    job_set_state(j, JOB_PERSISTING);
    job_ref(j); /* held by the commit queue and then the commit batch */
    if (w->commit_tail != NULL)
        w->commit_tail->commit_next = j;
    else
        w->commit_head = j;
    w->commit_tail = j;
    w->commit_queued++;
    /* Flushed at the end of this loop turn (flush_check) or when the commit
     * in flight returns: that is what makes the groups. */
    if (w->commit_queued >= (size_t)w->cfg->commit_batch)
        commit_flush(w);
}

/* Retries this worker scheduled: a min-heap of due times drives one timer,
 * so the worker looks for jobs again when each is due (other workers'
 * retries are found by their own timers or by the poll). */
static void heap_push(rp_worker_t *w, uint64_t due)
{
    if (w->nwakeups == w->capwakeups) {
        size_t cap = w->capwakeups ? w->capwakeups * 2 : 64;
        uint64_t *p = realloc(w->wakeups, cap * sizeof(uint64_t));
        if (p == NULL)
            return; /* the poll timer still finds the job */
        w->wakeups = p;
        w->capwakeups = cap;
    }
    size_t i = w->nwakeups++;
    while (i > 0 && w->wakeups[(i - 1) / 2] > due) {
        w->wakeups[i] = w->wakeups[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->wakeups[i] = due;
}

static void heap_pop(rp_worker_t *w)
{
    uint64_t last = w->wakeups[--w->nwakeups];
    size_t i = 0, n = w->nwakeups;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && w->wakeups[c + 1] < w->wakeups[c])
            c++;
        if (w->wakeups[c] >= last)
            break;
        w->wakeups[i] = w->wakeups[c];
        i = c;
    }
    if (n > 0)
        w->wakeups[i] = last;
}

/* Something says jobs may be due: a NOTIFY, the poll, a retry coming due,
 * a reconnect. */
static void wake(rp_worker_t *w)
{
    w->wake_seq++;
    w->work_maybe = 1;
    maybe_claim(w);
}

static void retry_timer_cb(uv_timer_t *t)
{
    rp_worker_t *w = t->data;
    uint64_t now = uv_now(w->loop);
    int due = 0;
    while (w->nwakeups > 0 && w->wakeups[0] <= now) {
        heap_pop(w);
        due = 1;
    }
    if (w->nwakeups > 0)
        uv_timer_start(&w->retry_timer, retry_timer_cb, w->wakeups[0] - now, 0);
    if (due)
        wake(w);
}

static void schedule_wakeup(rp_worker_t *w, uint64_t delay_ms)
{
    /* A few ms late, so the job's run_at (set by the server) has passed. */
    uint64_t due = uv_now(w->loop) + delay_ms + 5;
    int earliest = w->nwakeups == 0 || due < w->wakeups[0];
    heap_push(w, due);
    if (earliest && !w->draining)
        uv_timer_start(&w->retry_timer, retry_timer_cb, due - uv_now(w->loop), 0);
}

typedef struct fail_ctx {
    job_t *j;
    uint64_t delay_ms;
    char error[512];
} fail_ctx_t;

static void fail_done(void *data, int err, const rp_outcome_t *outcomes, size_t n)
{
    fail_ctx_t *fc = data;
    job_t *j = fc->j;
    rp_worker_t *w = j->w;
    rp_outcome_t o = n > 0 ? outcomes[0] : RP_OUTCOME_FAILED;
    json_t *f = json_pack("{s:s, s:i, s:s}", "error", fc->error, "attempt", j->attempts,
                          "outcome", rp_outcome_name(o));
    if (o == RP_OUTCOME_RETRY) {
        w->n_retried++;
        json_object_set_new(f, "retry_in_ms", json_integer((json_int_t)fc->delay_ms));
        rp_log_fields(RP_LOG_WARN, "job.retry", j->id, f);
        schedule_wakeup(w, fc->delay_ms);
    } else if (o == RP_OUTCOME_DEAD) {
        w->n_dead++;
        rp_log_fields(RP_LOG_ERROR, "job.dead", j->id, f);
    } else {
        /* Lease lost, or the queue unreachable: the job comes back after
         * its lease and is counted as another attempt. */
        if (err != 0)
            json_object_set_new(f, "queue_error", json_string(rp_strerror(err)));
        rp_log_fields(RP_LOG_WARN, "job.fail_unrecorded", j->id, f);
    }
    free(fc);
    job_set_state(j, JOB_DONE);
    job_unref(j);
}

/* Record a failure: the queue decides (atomically, under the lease) whether
 * the job is retried later or dead-lettered with an error row.  A malformed
 * job's error starts with "invalid_payload:", the dead letter's reason. */
static void job_fail(job_t *j, fail_kind_t kind, int64_t retry_after_ms, const char *fmt, ...)
{
    if (!job_active(j) || j->state == JOB_FAILING || j->state == JOB_PERSISTING)
        return;
    rp_worker_t *w = j->w;
    if (j->chat_req != NULL) {
        rp_http_cancel(j->chat_req);
        j->chat_req = NULL;
        job_unref(j);
    }
    job_set_state(j, JOB_FAILING);
    fail_ctx_t *fc = calloc(1, sizeof(*fc));
    if (fc == NULL) {
        rp_log_error("job.fail_unrecorded", j->id, "out of memory");
        job_set_state(j, JOB_DONE);
        return;
    }
    fc->j = j;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fc->error, sizeof(fc->error), fmt, ap);
    va_end(ap);
    uint64_t computed = rp_backoff_delay_ms(&w->backoff, j->attempts + 1, rp_rand32(&w->rnd));
    fc->delay_ms = rp_backoff_with_retry_after(computed, retry_after_ms,
                                               (uint64_t)w->cfg->retry_after_max_ms > computed
                                                   ? (uint64_t)w->cfg->retry_after_max_ms
                                                   : computed);
    rp_finish_t fin = {
        .kind = kind == FAIL_TRANSIENT   ? RP_FINISH_RETRY
                : kind == FAIL_PERMANENT ? RP_FINISH_PERMANENT
                                         : RP_FINISH_INVALID,
        .id = j->id,
        .lease = j->lease_id,
        .attempts = j->attempts,
        .max_attempts = j->max_attempts,
        .error = fc->error,
        .delay_ms = fc->delay_ms,
        .payload = j->payload,
        .payload_len = j->payload_len,
        .format = j->format,
        .kind_name = j->kind,
    };
    job_ref(j);
    int rc = w->queue->vtbl->finish(w->queue, &fin, 1, fail_done, fc);
    if (rc != 0) {
        rp_log_error("job.fail_unrecorded", j->id, "%s (%s)", fc->error, rp_strerror(rc));
        free(fc);
        job_set_state(j, JOB_DONE);
        job_unref(j);
    }
}

/* ------------------------------------------------------------------ */
/* Stage: INFERRING                                                     */
/* ------------------------------------------------------------------ */

static void chat_done(void *data, const rp_http_resp_t *resp)
{
    job_t *j = data;
    j->chat_req = NULL;
    j->t_infer_end = uv_hrtime();
    if (j->state != JOB_INFERRING)
        goto out;
    if (resp->error != 0) {
        job_fail(j, FAIL_TRANSIENT, -1, "chat request failed: %s: %s", rp_strerror(resp->error),
                 resp->error_msg);
        goto out;
    }
    if (resp->status != 200) {
        char desc[300];
        rp_openai_describe_error(resp->status, resp->body, resp->body_len, desc, sizeof(desc));
        job_fail(j, rp_openai_status_retryable(resp->status) ? FAIL_TRANSIENT : FAIL_PERMANENT,
                 resp->retry_after_ms, "chat completion: %s", desc);
        goto out;
    }
    rp_err_t err;
    if (rp_openai_chat_parse(resp->body, resp->body_len, &j->chat, &err) != 0) {
        /* A broken body is usually a proxy or a truncated transfer: retry. */
        job_fail(j, FAIL_TRANSIENT, -1, "chat completion: %s", err.msg);
        goto out;
    }
    job_advance(j);
out:
    job_unref(j);
}

static void job_infer(job_t *j)
{
    rp_worker_t *w = j->w;
    job_set_state(j, JOB_INFERRING);
    const char **ctx = (const char **)j->ctx_text;
    size_t plen = 0;
    char *prompt =
        rp_prompt_render(w->tmpl, j->p.message, ctx, j->nctx, j->swaps, j->nswaps, &plen);
    long max_tokens = j->p.max_tokens > 0 ? j->p.max_tokens : w->cfg->chat_max_tokens;
    size_t blen = 0;
    char *body = prompt == NULL ? NULL
                                : rp_openai_chat_request(
                                      j->p.model != NULL ? j->p.model : w->cfg->chat_model,
                                      prompt, plen, max_tokens, j->p.temperature, &blen);
    free(prompt);
    if (body == NULL) {
        job_fail(j, FAIL_TRANSIENT, -1, "out of memory building the chat request");
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
    job_ref(j);
    int rc = rp_http_send(w->http, &req, chat_done, j, &j->chat_req);
    free(body);
    if (rc != 0) {
        j->chat_req = NULL;
        job_unref(j);
        job_fail(j, FAIL_TRANSIENT, -1, "cannot send the chat request: %s", rp_strerror(rc));
    }
}

/* ------------------------------------------------------------------ */
/* Stage: RETRIEVING                                                    */
/* ------------------------------------------------------------------ */

static void retrieve_done(void *data, const rp_pg_res_t *res)
{
    job_t *j = data;
    j->t_retrieve_end = uv_hrtime();
    if (j->state != JOB_RETRIEVING)
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        job_fail(j, FAIL_TRANSIENT, -1, "retrieval with %s failed: %s %s",
                 j->w->cfg->match_function, rp_strerror(err), rp_pg_res_message(res));
        goto out;
    }
    int n = rp_pg_res_ntuples(res);
    j->ctx_ids = calloc((size_t)n + 1, sizeof(char *));
    j->ctx_text = calloc((size_t)n + 1, sizeof(char *));
    if (j->ctx_ids == NULL || j->ctx_text == NULL) {
        job_fail(j, FAIL_TRANSIENT, -1, "out of memory reading the context");
        goto out;
    }
    for (int r = 0; r < n; r++) {
        j->ctx_ids[r] = strdup(rp_pg_res_value(res, r, 0));
        j->ctx_text[r] = strdup(rp_pg_res_value(res, r, 1));
        j->nctx++;
        if (j->ctx_ids[r] == NULL || j->ctx_text[r] == NULL) {
            job_fail(j, FAIL_TRANSIENT, -1, "out of memory reading the context");
            goto out;
        }
    }
    job_advance(j);
out:
    job_unref(j);
}

static void job_retrieve(job_t *j)
{
    rp_worker_t *w = j->w;
    job_set_state(j, JOB_RETRIEVING);
    j->t_retrieve = uv_hrtime();
    long count = j->p.match_count >= 0 ? j->p.match_count : w->cfg->match_count;
    double threshold = !isnan(j->p.match_threshold) ? j->p.match_threshold
                                                     : w->cfg->match_threshold;
    char *vec = rp_vec_format(j->embedding, j->dims, w->vec_format, NULL);
    if (vec == NULL) {
        job_fail(j, FAIL_TRANSIENT, -1, "out of memory formatting the query vector");
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
    job_ref(j);
    int rc = rp_pg_query(db_pick(w), sql, 3, params, 0, retrieve_done, j);
    free(vec);
    if (rc != 0) {
        job_unref(j);
        job_fail(j, FAIL_TRANSIENT, -1, "cannot send the retrieval query: %s", rp_strerror(rc));
    }
}

/* ------------------------------------------------------------------ */
/* Stage: FETCHING (embedding + recent swaps)                           */
/* ------------------------------------------------------------------ */

static void history_done(void *data, const rp_pg_res_t *res)
{
    job_t *j = data;
    j->t_history_end = uv_hrtime();
    if (j->state != JOB_FETCHING)
        goto out;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        job_fail(j, FAIL_TRANSIENT, -1, "loading recent swaps failed: %s %s", rp_strerror(err),
                 rp_pg_res_message(res));
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
        job_fail(j, FAIL_TRANSIENT, -1, "out of memory reading recent swaps");
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
    job_unref(j);
}

static void embed_done(void *data, const rp_http_resp_t *resp)
{
    embed_batch_t *eb = data;
    rp_worker_t *w = eb->w;
    uint64_t now = uv_hrtime();
    double took = ms_between(eb->t_start, now);
    rp_embeddings_t e = {0};
    rp_err_t err;
    rp_err_clear(&err);
    fail_kind_t kind = FAIL_TRANSIENT;
    int64_t retry_after = -1;
    int ok = 0;
    if (resp->error != 0) {
        rp_err_set(&err, resp->error, "embedding request failed: %s: %s",
                   rp_strerror(resp->error), resp->error_msg);
    } else if (resp->status != 200) {
        char desc[300];
        rp_openai_describe_error(resp->status, resp->body, resp->body_len, desc, sizeof(desc));
        rp_err_set(&err, RP_EPROTO, "embedding: %s", desc);
        kind = rp_openai_status_retryable(resp->status) ? FAIL_TRANSIENT : FAIL_PERMANENT;
        retry_after = resp->retry_after_ms;
    } else if (rp_openai_embed_parse(resp->body, resp->body_len, eb->n,
                                     w->cfg->embed_dimensions > 0
                                         ? (size_t)w->cfg->embed_dimensions
                                         : 0,
                                     &e, &err) == 0) {
        ok = 1;
    }
    if (!ok && kind == FAIL_PERMANENT && eb->n > 1) {
        /* The provider refused the whole request (one input too long, say):
         * ask again one question per request, so only the culprit fails. */
        rp_log_warn("embed.split", NULL, "%s: retrying %zu questions one by one", err.msg,
                    eb->n);
        for (size_t i = 0; i < eb->n; i++) {
            if (eb->jobs[i]->state == JOB_FETCHING)
                embed_send(w, &eb->jobs[i], 1); /* takes over the reference */
            else
                job_unref(eb->jobs[i]);
        }
        free(eb);
        return;
    }
    for (size_t i = 0; i < eb->n; i++) {
        job_t *j = eb->jobs[i];
        j->t_embed_end = now;
        j->embed_ms = took;
        if (j->state == JOB_FETCHING) {
            if (!ok) {
                job_fail(j, kind, retry_after, "%s", err.msg);
            } else {
                j->embedding = malloc(e.dims * sizeof(float));
                if (j->embedding == NULL) {
                    job_fail(j, FAIL_TRANSIENT, -1, "out of memory");
                } else {
                    memcpy(j->embedding, e.data + i * e.dims, e.dims * sizeof(float));
                    j->dims = e.dims;
                    j->embed_done = 1;
                    job_advance(j);
                }
            }
        }
        job_unref(j);
    }
    rp_embeddings_free(&e);
    free(eb);
}

/* Send one embeddings request for n jobs, each of which holds a reference
 * that the request takes over. */
static void embed_send(rp_worker_t *w, job_t *const *jobs, size_t n)
{
    embed_batch_t *eb = malloc(sizeof(*eb) + n * sizeof(job_t *));
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
        job_fail(jobs[i], FAIL_TRANSIENT, -1, "cannot send the embedding request: %s",
                 rp_strerror(rc));
        job_unref(jobs[i]);
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

static void job_fetch(job_t *j)
{
    rp_worker_t *w = j->w;
    job_set_state(j, JOB_FETCHING);
    j->t_fetch = uv_hrtime();
    long match_count = j->p.match_count >= 0 ? j->p.match_count : w->cfg->match_count;
    long history = j->p.history_count >= 0 ? j->p.history_count : w->cfg->history_count;

    /* Retrieval needs the embedding; without it there is nothing to embed. */
    if (match_count > 0) {
        job_ref(j);
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
        job_ref(j);
        int rc = rp_pg_query(db_pick(w),
                             "SELECT from_token, to_token, amount FROM ragpool.recent_swaps($1, "
                             "$2::int)",
                             2, params, 0, history_done, j);
        if (rc != 0) {
            job_unref(j);
            job_fail(j, FAIL_TRANSIENT, -1, "cannot send the history query: %s",
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
static void job_advance(job_t *j)
{
    switch (j->state) {
    case JOB_CLAIMED:
        job_fetch(j);
        break;
    case JOB_FETCHING:
        if (!j->embed_done || !j->history_done)
            break;
        if (j->embedding != NULL)
            job_retrieve(j);
        else
            job_infer(j);
        break;
    case JOB_RETRIEVING:
        job_infer(j);
        break;
    case JOB_INFERRING:
        job_persist(j);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------ */
/* Claiming                                                             */
/* ------------------------------------------------------------------ */

static void job_start(rp_worker_t *w, const rp_claimed_t *c)
{
    job_t *j = calloc(1, sizeof(*j));
    char *payload = malloc(c->payload_len + 1);
    if (j == NULL || payload == NULL) {
        free(j);
        free(payload);
        rp_log_error("job.claim", c->id, "out of memory: the job returns after its lease");
        return;
    }
    memcpy(payload, c->payload, c->payload_len);
    payload[c->payload_len] = '\0';
    j->w = w;
    j->refs = 1; /* the pool's own reference, dropped when the job is DONE */
    snprintf(j->id, sizeof(j->id), "%s", c->id);
    snprintf(j->lease_id, sizeof(j->lease_id), "%s", c->lease);
    snprintf(j->kind, sizeof(j->kind), "%s", c->kind);
    j->payload = payload;
    j->payload_len = c->payload_len;
    j->format = c->format;
    j->attempts = c->attempts;
    j->max_attempts = c->max_attempts;
    j->queued_ms = c->queued_ms;
    j->t_claimed = uv_hrtime();
    j->state = JOB_CLAIMED;
    list_push(&w->lists[JOB_CLAIMED], j);
    w->inflight++;

    job_ref(j); /* held across this function: a failure can finish the job at once */
    rp_err_t err;
    if (strcmp(c->kind, "noop") == 0) {
        /* A job with no work and no row: the queue benchmarks' unit. */
        job_persist(j);
    } else if (strcmp(c->kind, "chat") != 0) {
        job_fail(j, FAIL_INVALID, -1, "invalid_payload: unknown job kind '%.40s'", c->kind);
    } else if (c->format != RP_PAYLOAD_JSON) {
        job_fail(j, FAIL_INVALID, -1, "invalid_payload: unsupported payload encoding");
    } else if (rp_chat_payload_decode_json(c->payload, c->payload_len, &j->p, &err) != 0) {
        job_fail(j, FAIL_INVALID, -1, "invalid_payload: %s", err.msg);
    } else {
        job_advance(j);
    }
    job_unref(j);
}

static void claim_done(void *data, int err, const rp_claimed_t *jobs, size_t n)
{
    rp_worker_t *w = data;
    w->claim_inflight = 0;
    if (err != 0) {
        maybe_finish_drain(w);
        return; /* the poll timer or the next wake-up tries again */
    }
    if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("claim.done", NULL, "asked %zu, got %zu", w->claim_asked, n);
    for (size_t i = 0; i < n; i++)
        job_start(w, &jobs[i]);
    /* A full batch means more may be waiting; a short one emptied the
     * queue of due jobs -- unless a wake-up arrived while the claim was in
     * flight: its job may have committed after the claim's snapshot. */
    if (n < w->claim_asked && w->wake_seq == w->claim_wake_seq && !w->queue->vtbl->claims_block)
        w->work_maybe = 0;
    if (w->draining)
        maybe_finish_drain(w);
    else
        maybe_claim(w);
}

static size_t claim_want(rp_worker_t *w)
{
    size_t cap = (size_t)w->cfg->max_inflight;
    if (w->inflight >= cap)
        return 0;
    size_t free_slots = cap - w->inflight;
    return free_slots < (size_t)w->cfg->claim_batch ? free_slots : (size_t)w->cfg->claim_batch;
}

static void maybe_claim(rp_worker_t *w)
{
    if (!w->ready || w->draining || w->claim_inflight || !w->work_maybe)
        return;
    size_t want = claim_want(w);
    if (want == 0)
        return;
    w->claim_inflight = 1;
    w->claim_asked = want;
    w->claim_wake_seq = w->wake_seq;
    int rc = w->queue->vtbl->claim(w->queue, want, claim_done, w);
    if (rc != 0) {
        w->claim_inflight = 0;
        rp_log_error("claim.failed", NULL, "cannot send the claim: %s", rp_strerror(rc));
    }
}

static void on_queue_wake(void *data)
{
    wake(data);
}

static void poll_timer_cb(uv_timer_t *t)
{
    wake(t->data);
}

/* End of every loop turn: send what this turn gathered. */
static void flush_check_cb(uv_check_t *c)
{
    rp_worker_t *w = c->data;
    embed_flush(w);
    commit_flush(w);
}

/* ------------------------------------------------------------------ */
/* Start-up check and connections                                       */
/* ------------------------------------------------------------------ */

static void fatal(rp_worker_t *w, const char *event, const char *msg)
{
    rp_log_error(event, NULL, "%s", msg);
    w->exit_code = 1;
    rp_worker_stop(w);
    rp_worker_stop(w);
}

static void check_done(void *data, const rp_pg_res_t *res)
{
    rp_worker_t *w = data;
    w->checking = 0;
    int err = rp_pg_res_error(res);
    if (w->draining) {
        maybe_finish_drain(w);
        return;
    }
    if (err == RP_EIO || err == RP_ETIMEDOUT || err == RP_ECANCELED)
        return; /* the connection will come back and on_connect checks again */
    if (err != 0) {
        const char *state = rp_pg_res_sqlstate(res);
        char msg[600];
        if (strcmp(state, "3F000") == 0 || strcmp(state, "42883") == 0)
            snprintf(msg, sizeof(msg),
                     "the ragpool schema is missing or outdated in this database (%s): run "
                     "'ragpool migrate' first",
                     rp_pg_res_message(res));
        else
            snprintf(msg, sizeof(msg), "start-up check failed: %s", rp_pg_res_message(res));
        fatal(w, "worker.start_failed", msg);
        return;
    }
    if (rp_pg_res_isnull(res, 0, 0)) {
        char msg[300];
        snprintf(msg, sizeof(msg),
                 "RAGPOOL_MATCH_FUNCTION=%s: no such function in this database (run 'ragpool "
                 "migrate', or create your own match function)",
                 w->cfg->match_function);
        fatal(w, "worker.start_failed", msg);
        return;
    }
    const char *type = rp_pg_res_value(res, 0, 0);
    w->vec_format = strcmp(type, "vector") == 0 ? RP_VEC_PGVECTOR : RP_VEC_ARRAY;
    if (!w->ready) {
        w->ready = 1;
        json_t *f = json_pack("{s:s, s:s, s:I, s:s}", "worker_id", w->cfg->worker_id,
                              "vector_type", type, "max_inflight",
                              (json_int_t)w->cfg->max_inflight, "model_base_url",
                              w->cfg->openai_base_url);
        rp_log_fields(RP_LOG_INFO, "worker.ready", NULL, f);
        uv_timer_start(&w->poll_timer, poll_timer_cb, (uint64_t)w->cfg->poll_ms,
                       (uint64_t)w->cfg->poll_ms);
    }
    wake(w);
}

static void start_check(rp_worker_t *w)
{
    if (w->checking || w->draining)
        return;
    const char *params[1] = {w->cfg->match_function};
    w->checking = 1;
    if (rp_pg_query(w->db[0], "SELECT ragpool.match_arg_type($1)", 1, params, 0, check_done, w) !=
        0)
        w->checking = 0;
}

static void on_db_connect(void *data)
{
    rp_worker_t *w = data;
    start_check(w);
}

static void on_disconnect(void *data, const char *why)
{
    rp_log_warn("db.disconnected", NULL, "%s", why);
}

/* ------------------------------------------------------------------ */
/* Draining and closing                                                 */
/* ------------------------------------------------------------------ */

static void handle_closed(void *data)
{
    rp_worker_t *w = data;
    if (--w->handles_open == 0 && w->on_stopped != NULL) {
        json_t *f = json_pack("{s:I, s:I, s:I, s:I}", "done", (json_int_t)w->n_done, "retried",
                              (json_int_t)w->n_retried, "dead", (json_int_t)w->n_dead,
                              "lost_lease", (json_int_t)w->n_lost);
        rp_log_fields(RP_LOG_INFO, "worker.stopped", NULL, f);
        w->on_stopped(w->on_stopped_data, w->exit_code);
    }
}

static void uv_handle_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void close_all(rp_worker_t *w)
{
    if (w->closing)
        return;
    w->closing = 1;
    w->handles_open = 1; /* guard: released at the end of this function */
    uv_handle_t *handles[] = {(uv_handle_t *)&w->flush_check, (uv_handle_t *)&w->poll_timer,
                              (uv_handle_t *)&w->drain_timer, (uv_handle_t *)&w->retry_timer};
    for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++) {
        w->handles_open++;
        uv_close(handles[i], uv_handle_closed);
    }
    for (size_t i = 0; i < w->ndb; i++) {
        w->handles_open++;
        rp_pg_close(w->db[i], handle_closed, w);
    }
    w->handles_open++;
    w->queue->vtbl->close(w->queue, handle_closed, w);
    w->handles_open++;
    rp_http_close(w->http, handle_closed, w);
    handle_closed(w);
}

static void maybe_finish_drain(rp_worker_t *w)
{
    if (!w->draining || w->closing)
        return;
    if (w->inflight > 0 || w->claim_inflight || w->checking)
        return;
    close_all(w);
}

typedef struct release_ctx {
    rp_worker_t *w;
    rp_finish_t *fins;
} release_ctx_t;

static void release_done(void *data, int err, const rp_outcome_t *outcomes, size_t n)
{
    release_ctx_t *rc = data;
    rp_worker_t *w = rc->w;
    free(rc->fins);
    free(rc);
    job_t *j;
    while ((j = w->lists[JOB_RELEASING].head) != NULL)
        job_set_state(j, JOB_DONE);
}

/* Give back every job that has not reached its commit or failure record. */
static void release_unfinished(rp_worker_t *w)
{
    if (w->released_all)
        return;
    w->released_all = 1;
    static const job_state_t states[] = {JOB_CLAIMED, JOB_FETCHING, JOB_RETRIEVING,
                                         JOB_INFERRING};
    size_t n = 0;
    for (size_t s = 0; s < sizeof(states) / sizeof(states[0]); s++) {
        job_t *j;
        while ((j = w->lists[states[s]].head) != NULL) {
            if (j->chat_req != NULL) {
                rp_http_cancel(j->chat_req);
                j->chat_req = NULL;
                job_unref(j);
            }
            n++;
            job_set_state(j, JOB_RELEASING);
        }
    }
    if (n == 0) {
        maybe_finish_drain(w);
        return;
    }
    rp_log_warn("worker.releasing", NULL, "drain deadline reached: releasing %zu jobs", n);
    release_ctx_t *ctx = calloc(1, sizeof(*ctx));
    rp_finish_t *fins = calloc(n, sizeof(*fins));
    int rc = RP_ENOMEM;
    if (ctx != NULL && fins != NULL) {
        size_t i = 0;
        for (job_t *j = w->lists[JOB_RELEASING].head; j != NULL; j = j->next, i++)
            fins[i] = (rp_finish_t){
                .kind = RP_FINISH_RETRY,
                .id = j->id,
                .lease = j->lease_id,
                .attempts = j->attempts,
                .max_attempts = j->max_attempts,
                .payload = j->payload,
                .payload_len = j->payload_len,
                .format = j->format,
                .kind_name = j->kind,
            };
        ctx->w = w;
        ctx->fins = fins;
        rc = w->queue->vtbl->release(w->queue, fins, n, release_done, ctx);
    }
    if (rc != 0) {
        rp_log_error("worker.release_failed", NULL,
                     "%s: the jobs return to the queue when their leases expire",
                     rp_strerror(rc));
        free(ctx);
        free(fins);
        job_t *j;
        while ((j = w->lists[JOB_RELEASING].head) != NULL)
            job_set_state(j, JOB_DONE);
    }
}

static void drain_timer_cb(uv_timer_t *t)
{
    release_unfinished(t->data);
}

void rp_worker_stop(rp_worker_t *w)
{
    if (w->closing)
        return;
    if (w->draining) {
        release_unfinished(w);
        return;
    }
    w->draining = 1;
    uv_timer_stop(&w->poll_timer);
    uv_timer_stop(&w->retry_timer);
    rp_log_info("worker.draining", NULL, "%zu jobs in flight, deadline %ld ms", w->inflight,
                w->cfg->drain_timeout_ms);
    if (w->inflight > 0)
        uv_timer_start(&w->drain_timer, drain_timer_cb, (uint64_t)w->cfg->drain_timeout_ms, 0);
    maybe_finish_drain(w);
}

/* ------------------------------------------------------------------ */
/* Construction                                                         */
/* ------------------------------------------------------------------ */

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s != NULL) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

rp_worker_t *rp_worker_new(uv_loop_t *loop, const rp_worker_cfg_t *cfg,
                           rp_worker_stopped_cb on_stopped, void *data, rp_err_t *err)
{
    rp_worker_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    w->loop = loop;
    w->cfg = cfg;
    w->on_stopped = on_stopped;
    w->on_stopped_data = data;
    w->backoff = (rp_backoff_t){(uint64_t)cfg->backoff_base_ms, (uint64_t)cfg->backoff_max_ms};
    w->rnd = (uint32_t)(uv_hrtime() ^ (uint64_t)getpid() << 16) | 1u;

    w->tmpl = cfg->prompt_template != NULL && cfg->prompt_template[0] != '\0'
                  ? rp_prompt_tmpl_load(cfg->prompt_template, err)
                  : rp_prompt_tmpl_new(NULL, err);
    if (w->tmpl == NULL) {
        rp_err_t inner = *err;
        rp_err_set(err, RP_EINVAL, "RAGPOOL_PROMPT_TEMPLATE: %s", inner.msg);
        goto fail;
    }
    w->embed_url = concat(cfg->openai_base_url, "/embeddings");
    w->chat_url = concat(cfg->openai_base_url, "/chat/completions");
    w->embed_pending = calloc((size_t)cfg->embed_batch, sizeof(job_t *));
    if (w->embed_url == NULL || w->chat_url == NULL || w->embed_pending == NULL)
        goto nomem;
    size_t nh = 0;
    w->http_headers[nh++] = "Content-Type: application/json";
    w->http_headers[nh++] = "Accept: application/json";
    if (cfg->openai_api_key != NULL && cfg->openai_api_key[0] != '\0') {
        w->auth_header = concat("Authorization: Bearer ", cfg->openai_api_key);
        if (w->auth_header == NULL)
            goto nomem;
        w->http_headers[nh++] = w->auth_header;
    }
    w->http_headers[nh] = NULL;

    rp_http_opts_t hopts = {
        .max_connections_per_host = cfg->model_connections,
        .max_total_connections = cfg->model_connections,
        .connect_timeout_ms = 10000,
        .http2 = 1,
    };
    w->http = rp_http_new(loop, &hopts, err);
    if (w->http == NULL)
        goto fail;

    rp_pg_opts_t popts = {
        .connect_timeout_ms = 10000,
        .query_timeout_ms = cfg->db_timeout_ms,
        .reconnect_min_ms = 100,
        .reconnect_max_ms = 5000,
        .application_name = "ragpool-worker",
        .on_connect = on_db_connect,
        .on_disconnect = on_disconnect,
        .data = w,
    };
    w->ndb = (size_t)cfg->db_connections;
    w->db = calloc(w->ndb, sizeof(rp_pg_t *));
    if (w->db == NULL)
        goto nomem;
    for (size_t i = 0; i < w->ndb; i++) {
        w->db[i] = rp_pg_new(loop, cfg->database_url, &popts, err);
        if (w->db[i] == NULL) {
            rp_err_t inner = *err;
            rp_err_set(err, RP_EINVAL, "DATABASE_URL: %s", inner.msg);
            goto fail;
        }
        popts.on_connect = NULL; /* the start-up check runs on db[0] */
    }
    if (strcmp(cfg->queue, "postgres") == 0) {
        w->queue = rp_queue_pg_new(loop, cfg, w->db, w->ndb, err);
    } else {
        rp_err_set(err, RP_EINVAL, "RAGPOOL_QUEUE=%s is not supported by this build", cfg->queue);
    }
    if (w->queue == NULL)
        goto fail;
    w->queue->on_wake = on_queue_wake;
    w->queue->wake_data = w;

    uv_check_init(loop, &w->flush_check);
    uv_timer_init(loop, &w->poll_timer);
    uv_timer_init(loop, &w->drain_timer);
    uv_timer_init(loop, &w->retry_timer);
    w->flush_check.data = w->poll_timer.data = w->drain_timer.data = w->retry_timer.data = w;
    return w;

nomem:
    rp_err_set(err, RP_ENOMEM, "out of memory");
fail:
    /* Nothing has run on the loop yet: objects that own handles are closed
     * and the loop run briefly so their close callbacks free them. */
    if (w->http != NULL)
        rp_http_close(w->http, NULL, NULL);
    for (size_t i = 0; w->db != NULL && i < w->ndb; i++)
        if (w->db[i] != NULL)
            rp_pg_close(w->db[i], NULL, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    rp_prompt_tmpl_free(w->tmpl);
    free(w->embed_url);
    free(w->chat_url);
    free(w->embed_pending);
    free(w->auth_header);
    free(w->db);
    free(w);
    return NULL;
}

int rp_worker_start(rp_worker_t *w)
{
    uv_check_start(&w->flush_check, flush_check_cb);
    int rc = w->queue->vtbl->start(w->queue);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < w->ndb; i++)
        rp_pg_start(w->db[i]);
    return 0;
}

void rp_worker_free(rp_worker_t *w)
{
    if (w == NULL)
        return;
    /* Jobs still referenced here would be a bug: close_all runs only when
     * none is in flight; DONE jobs have dropped their references. */
    rp_prompt_tmpl_free(w->tmpl);
    free(w->embed_url);
    free(w->chat_url);
    free(w->embed_pending);
    free(w->auth_header);
    free(w->wakeups);
    free(w->db);
    free(w);
}
