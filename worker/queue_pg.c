/*
 * queue_pg.c: the Postgres queue backend (ragpool.jobs, docs/CONTRACTS.md).
 *
 * Claims go through ragpool.claim_jobs (FOR UPDATE SKIP LOCKED, attempt
 * counted, lease from the server clock).  A group of finished jobs is one
 * statement: ragpool.complete_jobs inserts their conversations rows and
 * deletes the jobs in one transaction (jobs without a row -- 'noop' --
 * go through ragpool.ack_jobs).  Failures go through ragpool.fail_job,
 * which decides retry or dead letter under the lease.  A dedicated LISTEN
 * connection (RAGPOOL_LISTEN_DATABASE_URL, for poolers) turns NOTIFY
 * ragpool_jobs and every reconnect into a wake-up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "queue.h"

typedef struct pg_queue {
    rp_queue_t base;
    uv_loop_t *loop;
    const rp_worker_cfg_t *cfg;
    rp_pg_t *const *db; /* borrowed */
    size_t ndb;
    rp_pg_t *listen; /* owned */
    char kinds[256];
    void (*close_cb)(void *data);
    void *close_data;
} pg_queue_t;

/* One statement in flight for rp_queue_finish / release. */
typedef struct op {
    pg_queue_t *q;
    rp_queue_finish_cb cb;
    void *data;
    size_t n;
    int pending; /* statements still to answer (a mixed group needs two) */
    int err;
    char **ids; /* job ids, to match the answers */
    rp_outcome_t *outcomes;
} op_t;

static rp_pg_t *db_pick(pg_queue_t *q)
{
    return rp_pg_pick(q->db, q->ndb);
}

static void on_listen_event(void *data)
{
    pg_queue_t *q = data;
    if (q->base.on_wake != NULL)
        q->base.on_wake(q->base.wake_data);
}

static void on_notify(void *data, const char *channel, const char *payload)
{
    on_listen_event(data);
}

static void on_disconnect(void *data, const char *why)
{
    rp_log_warn("queue.listen_disconnected", NULL, "%s", why);
}

static int pg_start(rp_queue_t *base)
{
    pg_queue_t *q = (pg_queue_t *)base;
    int rc = rp_pg_listen(q->listen, "ragpool_jobs");
    if (rc == 0)
        rc = rp_pg_start(q->listen);
    return rc;
}

/* --- claim --------------------------------------------------------- */

typedef struct claim_op {
    rp_queue_claim_cb cb;
    void *data;
} claim_op_t;

static void claim_done(void *data, const rp_pg_res_t *res)
{
    claim_op_t *co = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        /* A lost connection is already reported (pg.disconnected) and the
         * claim is simply made again: a warning.  An error from the
         * statement itself is an error. */
        const char *msg = rp_pg_res_message(res);
        int transport = err == RP_EIO || err == RP_ETIMEDOUT;
        if (err != RP_ECANCELED)
            rp_log(transport ? RP_LOG_WARN : RP_LOG_ERROR, "claim.failed", NULL, "%s%s%s",
                   rp_strerror(err), msg != NULL && *msg != '\0' ? ": " : "",
                   msg != NULL ? msg : "");
        co->cb(co->data, err, NULL, 0);
        free(co);
        return;
    }
    int n = rp_pg_res_ntuples(res);
    rp_claimed_t *jobs = calloc(n > 0 ? (size_t)n : 1, sizeof(*jobs));
    if (jobs == NULL) {
        rp_log_error("claim.failed", NULL,
                     "out of memory: %d claimed jobs return after their lease", n);
        co->cb(co->data, RP_ENOMEM, NULL, 0);
        free(co);
        return;
    }
    for (int r = 0; r < n; r++) {
        jobs[r].id = rp_pg_res_value(res, r, 0);
        jobs[r].kind = rp_pg_res_value(res, r, 1);
        jobs[r].payload = rp_pg_res_value(res, r, 2);
        jobs[r].payload_len = (size_t)rp_pg_res_length(res, r, 2);
        jobs[r].format = RP_PAYLOAD_JSON;
        jobs[r].attempts = atoi(rp_pg_res_value(res, r, 3));
        jobs[r].max_attempts = atoi(rp_pg_res_value(res, r, 4));
        jobs[r].lease = rp_pg_res_value(res, r, 5);
        jobs[r].queued_ms = atof(rp_pg_res_value(res, r, 6));
    }
    co->cb(co->data, 0, jobs, (size_t)n);
    free(jobs);
    free(co);
}

static int pg_claim(rp_queue_t *base, size_t n, rp_queue_claim_cb cb, void *data)
{
    pg_queue_t *q = (pg_queue_t *)base;
    claim_op_t *co = malloc(sizeof(*co));
    if (co == NULL)
        return RP_ENOMEM;
    co->cb = cb;
    co->data = data;
    char num[32], lease[32];
    snprintf(num, sizeof(num), "%zu", n);
    snprintf(lease, sizeof(lease), "%ld", q->cfg->lease_ms);
    const char *params[4] = {q->cfg->worker_id, num, lease, q->kinds};
    int rc = rp_pg_query(db_pick(q),
                         "SELECT id, kind, payload, attempts, max_attempts, lease_id, queued_ms "
                         "FROM ragpool.claim_jobs($1, $2::int, $3::int, $4::text[])",
                         4, params, 0, claim_done, co);
    if (rc != 0)
        free(co);
    return rc;
}

/* --- finish and release --------------------------------------------- */

static void op_free(op_t *op)
{
    for (size_t i = 0; op->ids != NULL && i < op->n; i++)
        free(op->ids[i]);
    free(op->ids);
    free(op->outcomes);
    free(op);
}

static op_t *op_new(pg_queue_t *q, const rp_finish_t *jobs, size_t n, rp_queue_finish_cb cb,
                    void *data)
{
    op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return NULL;
    op->q = q;
    op->cb = cb;
    op->data = data;
    op->n = n;
    op->ids = calloc(n, sizeof(char *));
    op->outcomes = calloc(n, sizeof(rp_outcome_t));
    if (op->ids == NULL || op->outcomes == NULL) {
        op_free(op);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        op->ids[i] = strdup(jobs[i].id);
        op->outcomes[i] = RP_OUTCOME_LOST; /* unless the answer says otherwise */
        if (op->ids[i] == NULL) {
            op_free(op);
            return NULL;
        }
    }
    return op;
}

static void op_answered(op_t *op)
{
    if (--op->pending > 0)
        return;
    if (op->err != 0)
        for (size_t i = 0; i < op->n; i++)
            if (op->outcomes[i] == RP_OUTCOME_LOST)
                op->outcomes[i] = RP_OUTCOME_FAILED;
    op->cb(op->data, op->err, op->outcomes, op->n);
    op_free(op);
}

/* Answers of complete_jobs / ack_jobs: (job_id, outcome) rows. */
static void group_done(void *data, const rp_pg_res_t *res)
{
    op_t *op = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        rp_log_error("commit.failed", NULL, "group commit failed: %s %s", rp_strerror(err),
                     rp_pg_res_message(res));
        op->err = err;
        op_answered(op);
        return;
    }
    int nt = rp_pg_res_ntuples(res);
    for (int r = 0; r < nt; r++) {
        const char *id = rp_pg_res_value(res, r, 0);
        const char *outcome = rp_pg_res_value(res, r, 1);
        int done = strcmp(outcome, "done") == 0 || strcmp(outcome, "duplicate") == 0;
        /* The answers come in the order of the group (the functions scan
         * their input in order): try that slot first, and search only when
         * it does not match -- a linear search per row made matching a
         * group of 1,024 half of the worker's CPU on the drain benchmark. */
        size_t i = (size_t)r;
        if (i >= op->n || strcmp(op->ids[i], id) != 0)
            for (i = 0; i < op->n && strcmp(op->ids[i], id) != 0; i++)
                ;
        if (i < op->n)
            op->outcomes[i] = done ? RP_OUTCOME_DONE : RP_OUTCOME_LOST;
    }
    op_answered(op);
}

static void fail_done(void *data, const rp_pg_res_t *res)
{
    op_t *op = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        rp_log_error("job.fail_unrecorded", op->ids[0], "%s %s", rp_strerror(err),
                     rp_pg_res_message(res));
        op->err = err;
    } else {
        const char *outcome = rp_pg_res_value(res, 0, 0);
        if (strcmp(outcome, "retry") == 0)
            op->outcomes[0] = RP_OUTCOME_RETRY;
        else if (strcmp(outcome, "dead") == 0)
            op->outcomes[0] = RP_OUTCOME_DEAD;
    }
    op_answered(op);
}

static void append_lease(rp_buf_t *b, const rp_finish_t *j, int first)
{
    rp_buf_puts(b, first ? "{\"job_id\":\"" : ",{\"job_id\":\"");
    rp_buf_json_escape(b, j->id, strlen(j->id));
    rp_buf_puts(b, "\",\"lease_id\":\"");
    rp_buf_json_escape(b, j->lease, strlen(j->lease));
    rp_buf_puts(b, "\"}");
}

static int send_group(pg_queue_t *q, op_t *op, const char *sql, rp_buf_t *b)
{
    if (rp_buf_failed(b))
        return RP_ENOMEM;
    const char *params[1] = {b->data};
    int rc = rp_pg_query(db_pick(q), sql, 1, params, 0, group_done, op);
    if (rc == 0)
        op->pending++;
    return rc;
}

static int pg_finish(rp_queue_t *base, const rp_finish_t *jobs, size_t n, rp_queue_finish_cb cb,
                     void *data)
{
    pg_queue_t *q = (pg_queue_t *)base;
    if (n == 0 || (jobs[0].kind != RP_FINISH_DONE && n != 1))
        return RP_EINVAL; /* failures are recorded one at a time */
    op_t *op = op_new(q, jobs, n, cb, data);
    if (op == NULL)
        return RP_ENOMEM;

    if (jobs[0].kind != RP_FINISH_DONE) {
        /* Failures are recorded one by one: ragpool.fail_job decides. */
        char delay[32];
        snprintf(delay, sizeof(delay), "%llu", jobs[0].delay_ms);
        const char *params[6] = {jobs[0].id,
                                 jobs[0].lease,
                                 jobs[0].error != NULL ? jobs[0].error : "unknown error",
                                 delay,
                                 jobs[0].kind == RP_FINISH_RETRY ? "false" : "true",
                                 RP_SAFE_ERROR_MESSAGE};
        op->pending = 1;
        int rc = rp_pg_query(db_pick(q),
                             "SELECT ragpool.fail_job($1::uuid, $2::uuid, $3, $4::bigint, "
                             "$5::boolean, $6)",
                             6, params, 0, fail_done, op);
        if (rc != 0)
            op_free(op);
        return rc;
    }

    /* Jobs with a row: ragpool.complete_jobs; without: ragpool.ack_jobs. */
    rp_buf_t rows = RP_BUF_INIT, acks = RP_BUF_INIT;
    size_t nrows = 0, nacks = 0;
    for (size_t i = 0; i < n; i++) {
        if (jobs[i].row_json != NULL) {
            rp_buf_puts(&rows, nrows++ ? "," : "[");
            rp_buf_puts(&rows, jobs[i].row_json);
        } else {
            append_lease(&acks, &jobs[i], nacks++ == 0 ? 1 : 0);
        }
    }
    int rc = 0;
    op->pending = 1; /* held while sending, so an early answer cannot finish op */
    if (nrows > 0) {
        rp_buf_putc(&rows, ']');
        rc = send_group(q, op, "SELECT job_id, outcome FROM ragpool.complete_jobs($1::jsonb)",
                        &rows);
    }
    if (rc == 0 && nacks > 0) {
        rp_buf_t wrapped = RP_BUF_INIT;
        rp_buf_putc(&wrapped, '[');
        rp_buf_append(&wrapped, acks.data, acks.len);
        rp_buf_putc(&wrapped, ']');
        rc = send_group(q, op, "SELECT job_id, outcome FROM ragpool.ack_jobs($1::jsonb)", &wrapped);
        rp_buf_free(&wrapped);
    }
    rp_buf_free(&rows);
    rp_buf_free(&acks);
    if (rc != 0 && op->pending == 1) {
        op_free(op); /* nothing was sent: the caller handles rc */
        return rc;
    }
    if (rc != 0)
        op->err = rc;
    op_answered(op); /* drop the sending hold */
    return 0;
}

static void release_done(void *data, const rp_pg_res_t *res)
{
    op_t *op = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        rp_log_error("worker.release_failed", NULL,
                     "%s %s: the jobs return to the queue when their leases expire",
                     rp_strerror(err), rp_pg_res_message(res));
        op->err = err;
    } else {
        rp_log_info("worker.released", NULL, "%s of %zu jobs released to the queue",
                    rp_pg_res_value(res, 0, 0), op->n);
        for (size_t i = 0; i < op->n; i++)
            op->outcomes[i] = RP_OUTCOME_RETRY;
    }
    op_answered(op);
}

static int pg_release(rp_queue_t *base, const rp_finish_t *jobs, size_t n, rp_queue_finish_cb cb,
                      void *data)
{
    pg_queue_t *q = (pg_queue_t *)base;
    op_t *op = op_new(q, jobs, n, cb, data);
    if (op == NULL)
        return RP_ENOMEM;
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_putc(&b, '[');
    for (size_t i = 0; i < n; i++)
        append_lease(&b, &jobs[i], i == 0);
    rp_buf_putc(&b, ']');
    int rc = RP_ENOMEM;
    if (!rp_buf_failed(&b)) {
        const char *params[1] = {b.data};
        op->pending = 1;
        rc = rp_pg_query(db_pick(q), "SELECT ragpool.release_jobs($1::jsonb)", 1, params, 0,
                         release_done, op);
    }
    rp_buf_free(&b);
    if (rc != 0)
        op_free(op);
    return rc;
}

/* --- lifecycle ------------------------------------------------------- */

static void listen_closed(void *data)
{
    pg_queue_t *q = data;
    void (*cb)(void *) = q->close_cb;
    void *cb_data = q->close_data;
    free(q);
    if (cb != NULL)
        cb(cb_data);
}

static void pg_close(rp_queue_t *base, void (*close_cb)(void *data), void *data)
{
    pg_queue_t *q = (pg_queue_t *)base;
    q->close_cb = close_cb;
    q->close_data = data;
    rp_pg_close(q->listen, listen_closed, q);
}

static const rp_queue_vtbl_t pg_vtbl = {
    .name = "postgres",
    .start = pg_start,
    .claim = pg_claim,
    .finish = pg_finish,
    .release = pg_release,
    .claims_block = 0,
    .close = pg_close,
};

rp_queue_t *rp_queue_pg_new(uv_loop_t *loop, const rp_worker_cfg_t *cfg, rp_pg_t *const *db,
                            size_t ndb, rp_err_t *err)
{
    pg_queue_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    q->base.vtbl = &pg_vtbl;
    q->loop = loop;
    q->cfg = cfg;
    q->db = db;
    q->ndb = ndb;
    snprintf(q->kinds, sizeof(q->kinds), "{chat,noop,reembed_plan,embed_chunk,export_training}");
    rp_pg_opts_t lopts = {
        .connect_timeout_ms = 10000,
        .reconnect_min_ms = 100,
        .reconnect_max_ms = 5000,
        .application_name = "ragpool-worker-listen",
        .on_connect = on_listen_event,
        .on_disconnect = on_disconnect,
        .on_notify = on_notify,
        .data = q,
    };
    q->listen = rp_pg_new(loop, cfg->listen_database_url, &lopts, err);
    if (q->listen == NULL) {
        rp_err_t inner = *err;
        rp_err_set(err, RP_EINVAL, "RAGPOOL_LISTEN_DATABASE_URL: %s", inner.msg);
        free(q);
        return NULL;
    }
    return &q->base;
}

const char *rp_outcome_name(rp_outcome_t o)
{
    switch (o) {
    case RP_OUTCOME_DONE:
        return "done";
    case RP_OUTCOME_RETRY:
        return "retry";
    case RP_OUTCOME_DEAD:
        return "dead";
    case RP_OUTCOME_LOST:
        return "lost_lease";
    case RP_OUTCOME_FAILED:
        return "unrecorded";
    }
    return "unknown";
}
