/*
 * worker.c: the job pool.
 *
 * Every job is in exactly one state, and every state is a list (pgbouncer
 * style), changed only by rp__job_set_state(), which keeps per-state counts and
 * traces each change: "where is every job now" is always answerable.
 *
 *   CLAIMED -> the kind's stages (chat.c: FETCHING, RETRIEVING, INFERRING;
 *              other kinds: RUNNING)
 *           -> PERSISTING (waiting in / riding a group commit) -> DONE
 *   any stage -> FAILING (the queue decides: retry later or dead-letter) -> DONE
 *   drain timeout -> RELEASING (back to the queue) -> DONE
 *
 * A job is reference-counted: each asynchronous operation it waits for holds
 * a reference, so a callback that arrives after the job moved on (released
 * on drain, failed by a sibling stage) finds it alive, sees the state, and
 * does nothing.  The job is freed when it is DONE and its last reference is
 * dropped, never inside a callback chain that still uses it.
 *
 * The pool claims through worker/queue.h (Postgres or Redis), keeps up to
 * RAGPOOL_MAX_INFLIGHT jobs in flight with one claim outstanding at a time
 * (up to RAGPOOL_CLAIMS_IN_FLIGHT while a backlog keeps claims coming back
 * full, so the pool is fed while a claim runs),
 * and commits finished jobs in groups: while one commit is in flight the next
 * group gathers.  Kinds flush what a loop turn gathered (chat: one
 * embeddings request) from a uv_check handle at the end of the turn.
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
#include "reembed.h"
#include "export.h"
#include "worker_int.h"

static void maybe_claim(rp_worker_t *w);
static void maybe_finish_drain(rp_worker_t *w);
static void commit_flush(rp_worker_t *w);

/* ------------------------------------------------------------------ */
/* Jobs: lists, references, the one state writer                        */
/* ------------------------------------------------------------------ */

const char *const rp__job_state_names[RP__JOB_NSTATES] = {
    "claimed",    "fetching", "retrieving", "inferring", "running",
    "persisting", "failing",  "releasing",  "done",
};

/* The "noop" kind: no work and no row (the queue benchmarks' unit). */
static void noop_start(rp__job_t *j)
{
    rp__job_persist(j);
}

static const rp__kind_t kind_noop = {.name = "noop", .start = noop_start};

static const rp__kind_t *const kinds[] = {&rp__kind_chat, &kind_noop, &rp__kind_reembed_plan,
                                          &rp__kind_embed_chunk, &rp__kind_export};

double rp__ms_between(uint64_t from_ns, uint64_t to_ns)
{
    return to_ns > from_ns ? (double)(to_ns - from_ns) / 1e6 : 0.0;
}

static void list_remove(rp__job_list_t *l, rp__job_t *j)
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

static void list_push(rp__job_list_t *l, rp__job_t *j)
{
    j->prev = NULL;
    j->next = l->head;
    if (l->head != NULL)
        l->head->prev = j;
    l->head = j;
    l->count++;
}

static void job_free(rp__job_t *j)
{
    if (j->ops != NULL && j->ops->cleanup != NULL)
        j->ops->cleanup(j);
    free(j->payload);
    free(j);
}

void rp__job_ref(rp__job_t *j)
{
    j->refs++;
}

void rp__job_unref(rp__job_t *j)
{
    if (--j->refs == 0) {
        rp_worker_t *w = j->w;
        list_remove(&w->lists[RP__JOB_DONE], j);
        job_free(j);
    }
}

/* The only writer of job->state. */
void rp__job_set_state(rp__job_t *j, rp__job_state_t s)
{
    rp_worker_t *w = j->w;
    if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("job.state", j->id, "%s -> %s", rp__job_state_names[j->state],
                     rp__job_state_names[s]);
    list_remove(&w->lists[j->state], j);
    j->state = s;
    list_push(&w->lists[s], j);
    if (s == RP__JOB_DONE) {
        w->inflight--;
        if (w->draining)
            maybe_finish_drain(w);
        else
            maybe_claim(w);
        rp__job_unref(j); /* the pool's reference: callers still hold their own */
    }
}

int rp__job_active(const rp__job_t *j)
{
    return j->state != RP__JOB_DONE && j->state != RP__JOB_RELEASING;
}

/* ------------------------------------------------------------------ */
/* Database helpers                                                     */
/* ------------------------------------------------------------------ */

/* The query connection with the fewest queries waiting. */
rp_pg_t *rp__db_pick(rp_worker_t *w)
{
    return rp_pg_pick(w->db, w->ndb);
}

/* ------------------------------------------------------------------ */
/* Finishing: commit groups, failures, releases                         */
/* ------------------------------------------------------------------ */

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
        rp__job_t *j = cb->jobs[i];
        rp_outcome_t o = i < n ? outcomes[i] : RP_OUTCOME_FAILED;
        rp__observe_job_end(w, j, o);
        if (o == RP_OUTCOME_DONE) {
            w->n_done++;
            if (rp_log_enabled(RP_LOG_INFO)) {
                json_t *f = json_pack(
                    "{s:s, s:i, s:f, s:I, s:I}", "kind", j->kind, "attempt", j->attempts,
                    "total_ms",
                    round((j->queued_ms + rp__ms_between(j->t_claimed, uv_hrtime())) * 10) / 10,
                    "prompt_tokens", (json_int_t)j->chat.prompt_tokens, "completion_tokens",
                    (json_int_t)j->chat.completion_tokens);
                rp_log_fields(RP_LOG_INFO, "job.done", j->id, f);
            }
        } else {
            /* The job keeps its lease; after expiry it runs again, and the
             * unique job_id keeps the effect single. */
            w->n_lost++;
            rp_log_warn("job.lost", j->id,
                        "not committed (%s%s%s): the job returns after its lease",
                        rp_outcome_name(o), err ? ": " : "", err ? rp_strerror(err) : "");
        }
        rp__job_set_state(j, RP__JOB_DONE);
        rp__job_unref(j);
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
    commit_batch_t *cb = calloc(1, sizeof(*cb) + n * sizeof(rp__job_t *));
    if (cb == NULL) {
        rp_log_error("commit.failed", NULL, "out of memory building a group commit");
        return; /* retried at the end of the next loop turn */
    }
    cb->w = w;
    cb->n = n;
    cb->rows = calloc(n, sizeof(char *));
    cb->fins = calloc(n, sizeof(rp_finish_t));
    for (size_t i = 0; i < n; i++) {
        rp__job_t *j = w->commit_head;
        w->commit_head = j->commit_next;
        j->commit_next = NULL;
        cb->jobs[i] = j;
    }
    if (w->commit_head == NULL)
        w->commit_tail = NULL;
    w->commit_queued -= n;

    int rc = cb->rows == NULL || cb->fins == NULL ? RP_ENOMEM : 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rp__job_t *j = cb->jobs[i];
        if (j->ops->row != NULL) {
            cb->rows[i] = j->ops->row(j);
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
        rp__job_set_state(cb->jobs[i], RP__JOB_DONE);
        rp__job_unref(cb->jobs[i]);
    }
    commit_batch_free(cb);
}

void rp__job_persist(rp__job_t *j)
{
    rp_worker_t *w = j->w;
    rp__job_set_state(j, RP__JOB_PERSISTING);
    rp__job_ref(j); /* held by the commit queue and then the commit batch */
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
    rp__job_t *j;
    uint64_t delay_ms;
    char error[512];
} fail_ctx_t;

static void fail_done(void *data, int err, const rp_outcome_t *outcomes, size_t n)
{
    fail_ctx_t *fc = data;
    rp__job_t *j = fc->j;
    rp_worker_t *w = j->w;
    rp_outcome_t o = n > 0 ? outcomes[0] : RP_OUTCOME_FAILED;
    rp__observe_job_end(w, j, o);
    json_t *f = json_pack("{s:s, s:i, s:s}", "error", fc->error, "attempt", j->attempts, "outcome",
                          rp_outcome_name(o));
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
    rp__job_set_state(j, RP__JOB_DONE);
    rp__job_unref(j);
}

/* Record a failure: the queue decides (atomically, under the lease) whether
 * the job is retried later or dead-lettered with an error row.  A malformed
 * job's error starts with "invalid_payload:", the dead letter's reason. */
void rp__job_fail(rp__job_t *j, rp__fail_kind_t kind, int64_t retry_after_ms, const char *fmt, ...)
{
    if (!rp__job_active(j) || j->state == RP__JOB_FAILING || j->state == RP__JOB_PERSISTING)
        return;
    rp_worker_t *w = j->w;
    if (j->ops != NULL && j->ops->abandon != NULL)
        j->ops->abandon(j); /* a sibling request still in flight is of no use now */
    rp__job_set_state(j, RP__JOB_FAILING);
    fail_ctx_t *fc = calloc(1, sizeof(*fc));
    if (fc == NULL) {
        rp_log_error("job.fail_unrecorded", j->id, "out of memory");
        rp__job_set_state(j, RP__JOB_DONE);
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
        .kind = kind == RP__FAIL_TRANSIENT   ? RP_FINISH_RETRY
                : kind == RP__FAIL_PERMANENT ? RP_FINISH_PERMANENT
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
    rp__job_ref(j);
    int rc = w->queue->vtbl->finish(w->queue, &fin, 1, fail_done, fc);
    if (rc != 0) {
        rp_log_error("job.fail_unrecorded", j->id, "%s (%s)", fc->error, rp_strerror(rc));
        free(fc);
        rp__job_set_state(j, RP__JOB_DONE);
        rp__job_unref(j);
    }
}

/* ------------------------------------------------------------------ */
/* Claiming                                                             */
/* ------------------------------------------------------------------ */

static void job_start(rp_worker_t *w, const rp_claimed_t *c)
{
    rp__job_t *j = calloc(1, sizeof(*j));
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
    j->state = RP__JOB_CLAIMED;
    list_push(&w->lists[RP__JOB_CLAIMED], j);
    w->inflight++;

    rp__job_ref(j); /* held across this function: a failure can finish the job at once */
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        if (strcmp(c->kind, kinds[k]->name) == 0)
            j->ops = kinds[k];
    if (j->ops == NULL)
        rp__job_fail(j, RP__FAIL_INVALID, -1, "invalid_payload: unknown job kind '%.40s'", c->kind);
    else
        j->ops->start(j);
    rp__job_unref(j);
}

typedef struct claim_req {
    rp_worker_t *w;
    size_t asked;
    uint64_t wake_seq; /* w->wake_seq when it was sent */
} claim_req_t;

static void claim_done(void *data, int err, const rp_claimed_t *jobs, size_t n)
{
    claim_req_t *c = data;
    rp_worker_t *w = c->w;
    size_t asked = c->asked;
    uint64_t sent_seq = c->wake_seq;
    free(c);
    w->claims_out--;
    w->claims_asked -= asked;
    if (err != 0) {
        w->claim_full = 0;
        maybe_finish_drain(w);
        return; /* the poll timer or the next wake-up tries again */
    }
    if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("claim.done", NULL, "asked %zu, got %zu", asked, n);
    for (size_t i = 0; i < n; i++)
        job_start(w, &jobs[i]);
    /* A full batch means more may be waiting; a short one emptied the
     * queue of due jobs -- unless a wake-up arrived while the claim was in
     * flight: its job may have committed after the claim's snapshot. */
    w->claim_full = n == asked;
    if (n == asked)
        w->work_maybe = 1;
    else if (w->wake_seq == sent_seq && !w->queue->vtbl->claims_block)
        w->work_maybe = 0;
    if (w->draining)
        maybe_finish_drain(w);
    else
        maybe_claim(w);
}

static size_t claim_want(rp_worker_t *w)
{
    size_t cap = (size_t)w->cfg->max_inflight;
    size_t used = w->inflight + w->claims_asked;
    if (used >= cap)
        return 0;
    size_t free_slots = cap - used;
    return free_slots < (size_t)w->cfg->claim_batch ? free_slots : (size_t)w->cfg->claim_batch;
}

static void maybe_claim(rp_worker_t *w)
{
    /* One claim at a time, unless the last one came back full: then up to
     * RAGPOOL_CLAIMS_IN_FLIGHT, each for a whole batch (SKIP LOCKED keeps
     * their jobs apart).  The Redis queue's claim blocks: one at a time. */
    int limit = w->claim_full && !w->queue->vtbl->claims_block ? (int)w->cfg->claims_in_flight : 1;
    while (w->ready && !w->draining && w->work_maybe && w->claims_out < limit) {
        size_t want = claim_want(w);
        if (want == 0 || (w->claims_out > 0 && want < (size_t)w->cfg->claim_batch))
            return;
        claim_req_t *c = malloc(sizeof(*c));
        if (c == NULL) {
            rp_log_error("claim.failed", NULL, "out of memory");
            return;
        }
        c->w = w;
        c->asked = want;
        c->wake_seq = w->wake_seq;
        w->claims_out++;
        w->claims_asked += want;
        int rc = w->queue->vtbl->claim(w->queue, want, claim_done, c);
        if (rc != 0) {
            w->claims_out--;
            w->claims_asked -= want;
            free(c);
            /* RP_EIO: the queue is not up yet (Redis before its consumer
             * group exists, or while Postgres is down); its wake-up claims
             * again. */
            rp_log(rc == RP_EIO ? RP_LOG_DEBUG : RP_LOG_ERROR, "claim.failed", NULL,
                   "cannot send the claim: %s", rp_strerror(rc));
            return;
        }
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
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        if (kinds[k]->flush != NULL)
            kinds[k]->flush(w);
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
    w->user_ids_bigint = strcmp(rp_pg_res_value(res, 0, 1), "bigint") == 0;
    if (!w->ready) {
        w->ready = 1;
        json_t *f = json_pack("{s:s, s:s, s:I, s:s}", "worker_id", w->cfg->worker_id, "vector_type",
                              type, "max_inflight", (json_int_t)w->cfg->max_inflight,
                              "model_base_url", w->cfg->openai_base_url);
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
    if (rp_pg_query(w->db[0],
                    "SELECT ragpool.match_arg_type($1), (SELECT value FROM ragpool.settings "
                    "WHERE key = 'user_id_type')",
                    1, params, 0, check_done, w) !=
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
                              (json_int_t)w->n_retried, "dead", (json_int_t)w->n_dead, "lost_lease",
                              (json_int_t)w->n_lost);
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
    w->handles_open++;
    rp__observe_close(w, handle_closed, w);
    handle_closed(w);
}

static void maybe_finish_drain(rp_worker_t *w)
{
    if (!w->draining || w->closing)
        return;
    if (w->inflight > 0 || w->claims_out > 0 || w->checking)
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
    rp__job_t *j;
    while ((j = w->lists[RP__JOB_RELEASING].head) != NULL)
        rp__job_set_state(j, RP__JOB_DONE);
}

/* Give back every job that has not reached its commit or failure record. */
static void release_unfinished(rp_worker_t *w)
{
    if (w->released_all)
        return;
    w->released_all = 1;
    static const rp__job_state_t states[] = {RP__JOB_CLAIMED, RP__JOB_FETCHING, RP__JOB_RETRIEVING,
                                             RP__JOB_INFERRING, RP__JOB_RUNNING};
    size_t n = 0;
    for (size_t s = 0; s < sizeof(states) / sizeof(states[0]); s++) {
        rp__job_t *j;
        while ((j = w->lists[states[s]].head) != NULL) {
            if (j->ops != NULL && j->ops->abandon != NULL)
                j->ops->abandon(j);
            n++;
            rp__job_set_state(j, RP__JOB_RELEASING);
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
        for (rp__job_t *j = w->lists[RP__JOB_RELEASING].head; j != NULL; j = j->next, i++)
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
                     "%s: the jobs return to the queue when their leases expire", rp_strerror(rc));
        free(ctx);
        free(fins);
        rp__job_t *j;
        while ((j = w->lists[RP__JOB_RELEASING].head) != NULL)
            rp__job_set_state(j, RP__JOB_DONE);
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
    if (w->queue->vtbl->stop_claiming != NULL)
        w->queue->vtbl->stop_claiming(w->queue);
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
    w->embed_url = rp_str_concat(cfg->openai_base_url, "/embeddings");
    w->chat_url = rp_str_concat(cfg->openai_base_url, "/chat/completions");
    w->embed_pending = calloc((size_t)cfg->embed_batch, sizeof(rp__job_t *));
    if (w->embed_url == NULL || w->chat_url == NULL || w->embed_pending == NULL)
        goto nomem;
    size_t nh = 0;
    w->http_headers[nh++] = "Content-Type: application/json";
    w->http_headers[nh++] = "Accept: application/json";
    if (cfg->openai_api_key != NULL && cfg->openai_api_key[0] != '\0') {
        w->auth_header = rp_str_concat("Authorization: Bearer ", cfg->openai_api_key);
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
        w->queue = rp_queue_redis_new(loop, cfg, w->db, w->ndb, err);
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
    rp_err_t err;
    rp_err_clear(&err);
    if (rp__observe_init(w, &err) != 0) {
        fatal(w, "worker.start_failed", err.msg);
        return err.code;
    }
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
