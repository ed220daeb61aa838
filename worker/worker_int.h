/*
 * worker_int.h: what the worker's files share (not an API): the job record,
 * its states, the pool object, and the job-kind interface.
 *
 * worker.c is the pool: it claims jobs, owns every job's lifecycle (the one
 * state writer, references, group commits, failures, releases, drain) and
 * the connections.  A job kind (chat.c for "chat"; others beside it) does
 * the work between claim and finish through rp__kind_t, and ends each job
 * with rp__job_persist (done) or rp__job_fail.
 */
#ifndef RP_WORKER_INT_H
#define RP_WORKER_INT_H

#include <stdint.h>
#include <uv.h>

#include "backoff.h"
#include "http.h"
#include "job.h"
#include "openai.h"
#include "pg.h"
#include "prompt.h"
#include "queue.h"
#include "vec.h"
#include "worker.h"

typedef enum {
    RP__JOB_CLAIMED = 0,
    RP__JOB_FETCHING,
    RP__JOB_RETRIEVING,
    RP__JOB_INFERRING,
    RP__JOB_RUNNING, /* kinds other than chat, between claim and finish */
    RP__JOB_PERSISTING,
    RP__JOB_FAILING,
    RP__JOB_RELEASING,
    RP__JOB_DONE,
    RP__JOB_NSTATES
} rp__job_state_t;

typedef enum { RP__FAIL_TRANSIENT, RP__FAIL_PERMANENT, RP__FAIL_INVALID } rp__fail_kind_t;

typedef struct job rp__job_t;

typedef struct job_list {
    rp__job_t *head;
    size_t count;
} rp__job_list_t;

struct job {
    rp_worker_t *w;
    rp__job_t *prev, *next; /* in w->lists[state] */
    rp__job_state_t state;
    int refs;

    char id[40];
    char lease_id[64]; /* the queue's lease token */
    char kind[16];
    char *payload; /* owned copy: a backend may need it to re-queue the job */
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

    rp__job_t *commit_next;     /* in w->commit_queue */
    const struct rp__kind *ops; /* the job kind's operations */
    void *ext;                  /* the kind's own data for this job (owned by the kind) */
};

/* One group commit in flight. */
typedef struct commit_batch {
    rp_worker_t *w;
    size_t n;
    char **rows; /* each job's conversations row as JSON, NULL for row-less kinds */
    rp_finish_t *fins;
    rp__job_t *jobs[];
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

    char *auth_header; /* "Authorization: Bearer …" or NULL */
    char *embed_url, *chat_url;
    const char *http_headers[4];

    rp_vec_format_t vec_format;
    int user_ids_bigint;  /* the database's conversations.user_id is bigint, not uuid */
    int ready;    /* schema checked, claiming allowed */
    int checking; /* start-up check in flight */
    int draining;
    int released_all; /* the drain timeout passed */
    int closing;
    int exit_code;
    int handles_open;

    rp__job_list_t lists[RP__JOB_NSTATES];
    size_t inflight; /* jobs not DONE */

    int claims_out;      /* claim queries in flight */
    size_t claims_asked; /* jobs they asked for (counted against RAGPOOL_MAX_INFLIGHT) */
    int claim_full;      /* the last claim answered came back full: a backlog */
    int work_maybe;      /* a NOTIFY, poll or full claim says more jobs may be due */
    uint64_t wake_seq;   /* counts wake-ups (NOTIFY, poll, retry timer, reconnect) */

    rp__job_t **embed_pending; /* chat: questions of this loop turn (chat.c) */
    size_t n_embed_pending;

    rp__job_t *commit_head, *commit_tail;
    size_t commit_queued;
    int commit_inflight;

    uv_check_t flush_check;
    uv_timer_t poll_timer;
    uv_timer_t drain_timer;
    uv_timer_t retry_timer;
    uint64_t *wakeups; /* min-heap of loop times (ms) when retries this worker scheduled are due */
    size_t nwakeups, capwakeups;

    struct rp__observe *obs; /* /metrics and /healthz (observe.c) */
    /* Per-worker state of job kinds, owned by their files (NULL until
     * first used): chat.c's providers/registry/stream, reembed.c's queue
     * of requests and provider budget. */
    struct chat_ctx *chat_ctx;
    struct rs *reembed_ctx;

    /* totals for the stop line */
    uint64_t n_done, n_retried, n_dead, n_lost;
};

extern const char *const rp__job_state_names[RP__JOB_NSTATES];

/* A job kind.  Every callback gets a job that holds a reference for the
 * duration of the call. */
typedef struct rp__kind {
    const char *name;
    /* Begin the work of a claimed job (state CLAIMED): decode the payload
     * (a malformed one: rp__job_fail(j, RP__FAIL_INVALID, ...)), move on
     * with rp__job_set_state, and end with rp__job_persist or rp__job_fail. */
    void (*start)(rp__job_t *j);
    /* The job's conversations row as a JSON object (owned; free()), or NULL
     * when the kind writes none. */
    char *(*row)(const rp__job_t *j);
    /* Free what the kind keeps in the job (may be NULL). */
    void (*cleanup)(rp__job_t *j);
    /* The job is being released on drain: cancel what can be cancelled
     * (may be NULL). */
    void (*abandon)(rp__job_t *j);
    /* End of every loop turn: send what this turn gathered (may be NULL). */
    void (*flush)(rp_worker_t *w);
} rp__kind_t;

extern const rp__kind_t rp__kind_chat;

void rp__job_ref(rp__job_t *j);
void rp__job_unref(rp__job_t *j);
/* The only writer of job->state. */
void rp__job_set_state(rp__job_t *j, rp__job_state_t s);
/* True until the job is released or done. */
int rp__job_active(const rp__job_t *j);
/* The job is done: queue it for the next group commit. */
void rp__job_persist(rp__job_t *j);
/* Record a failure (the queue decides retry or dead letter). */
void rp__job_fail(rp__job_t *j, rp__fail_kind_t kind, int64_t retry_after_ms, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The query connection with the fewest queries waiting. */
rp_pg_t *rp__db_pick(rp_worker_t *w);
double rp__ms_between(uint64_t from_ns, uint64_t to_ns);

/* observe.c: metrics of the pool, served with /healthz on
 * RAGPOOL_METRICS_PORT when set. */
typedef struct rp__observe rp__observe_t;
int rp__observe_init(rp_worker_t *w, rp_err_t *err);
void rp__observe_job_end(rp_worker_t *w, const rp__job_t *j, rp_outcome_t outcome);
void rp__observe_close(rp_worker_t *w, void (*cb)(void *data), void *data);

#endif
