/*
 * pg.c: one asynchronous Postgres connection (libpq 15, non-blocking,
 * pipeline mode) on a libuv loop.  See pg.h for the contract.
 *
 * Shape.  The connection is a small state machine (pg_set_state is the only
 * writer): IDLE -> CONNECTING -> UP, back to WAITING (backoff timer) when the
 * connection is lost or an attempt fails, and CLOSING -> CLOSED once
 * rp_pg_close ran.  Queries live on exactly one of two lists:
 *   - `waiting`: submitted, not yet sent (connection down, or sent on the
 *     next loop turn by the `sender` prepare handle, which batches what one
 *     turn submits and keeps libpq out of the callers' call stacks);
 *   - `inflight`: sent, each followed by its own PQpipelineSync, in the
 *     order the server will answer them (the app-side FIFO of pipeline
 *     mode).  Results are matched to its head: result(s), NULL, then
 *     PGRES_PIPELINE_SYNC, after which the head is freed.
 * A query whose deadline passes gets RP_ETIMEDOUT at once; if it was in
 * flight it stays in the FIFO as an orphan (cb == NULL) until its answer
 * arrives and is discarded.  The server enforces the default deadline
 * (opts.query_timeout_ms) through statement_timeout, set once per
 * connection, because PQcancel blocks; so a query given a longer timeout_ms
 * than the default is still stopped by the server at the default (SQLSTATE
 * 57014, reported as RP_ETIMEDOUT), and one given a shorter timeout_ms keeps
 * the connection busy until the server finishes it.  Deadlines sit on a
 * third list sorted by time; queries that share a timeout are appended in
 * O(1), and one uv_timer serves them all.
 *
 * Connecting: PQconnectStart would resolve a host name with a blocking
 * getaddrinfo, so a single host name is resolved first with uv_getaddrinfo
 * and libpq is given every address found (host and hostaddr lists), keeping
 * its fail-over across addresses and the name for TLS.  Multi-host lists
 * are left to libpq.
 *
 * Handles: `timer` (connect deadline, then reconnect backoff), `qtimer`
 * (query deadlines), `sender` (uv_prepare) are embedded; the uv_poll_t for
 * the socket is allocated per socket, because libpq may change sockets while
 * connecting and a poll handle cannot move to another fd.  A poll handle is
 * always stopped and closed before the PGconn it watches is finished: the
 * PGconn travels with the closing poll handle and PQfinish runs in its close
 * callback.  The object is freed when its last handle is closed.
 *
 * Re-entrancy: user callbacks may call rp_pg_query, rp_pg_listen and
 * rp_pg_close.  Every loop over results or queries re-checks the state
 * after each user callback and stops if the connection was reset or closed;
 * memory is only released in close callbacks or after the callback that
 * could have used it has returned.
 */
#include "pg.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "log.h"

typedef enum {
    PG_IDLE = 0,
    PG_CONNECTING,
    PG_UP,
    PG_WAITING,
    PG_CLOSING,
    PG_CLOSED,
} pg_state_t;

static const char *const pg_state_names[] = {"idle",    "connecting", "up",
                                             "waiting", "closing",    "closed"};

typedef enum {
    Q_WAITING = 0, /* on pg->waiting */
    Q_PREPARING,   /* in flight, collecting the result of its statement's Parse */
    Q_RESULTS,     /* in flight, collecting the result(s) */
    Q_SYNC,        /* in flight, result delivered, expecting PIPELINE_SYNC */
} pg_qphase_t;

typedef struct pg_query pg_query_t;
struct pg_query {
    pg_query_t *prev, *next;       /* waiting list or in-flight FIFO */
    pg_query_t *dl_prev, *dl_next; /* deadline list (only when deadline != 0) */
    uint64_t deadline;             /* loop time in ms; 0 = none */
    rp_pg_cb cb;                   /* NULL once answered (an orphan in flight) */
    void *data;
    PGresult *res; /* the result being collected */
    pg_qphase_t phase;
    int internal; /* SET/LISTEN sent by this module */
    int nparams;
    const char *stmt;    /* prepared statement name (owned), NULL for none */
    int preparing;       /* a Parse for stmt was sent with this query */
    int reprepared;      /* already sent again after "no such statement" */
    const char *sql;     /* into storage */
    const char **params; /* into storage */
    char storage[];      /* params array, then sql, then values */
};

typedef struct pg_list {
    pg_query_t *head, *tail;
    size_t n;
} pg_list_t;

typedef struct pg_poll {
    uv_poll_t handle;
    rp_pg_t *pg;
    PGconn *finish; /* finished in the close callback, after the poll stopped */
    int fd;
    int events; /* events currently requested, 0 when stopped */
} pg_poll_t;

struct rp_pg {
    uv_loop_t *loop;
    pg_state_t state;
    char *conninfo;
    char *app_name;
    char *timeout_setting;       /* statement_timeout value, NULL when none */
    char *resolve_host;          /* host name we resolve ourselves, NULL when not needed */
    uv_getaddrinfo_t *resolving; /* the lookup in progress, NULL when none */
    rp_pg_opts_t opts;

    PGconn *conn;        /* non-NULL only while CONNECTING or UP */
    pg_poll_t *poll;     /* watches PQsocket(conn); non-NULL iff conn != NULL */
    uv_timer_t timer;    /* connect deadline / reconnect backoff */
    uv_timer_t qtimer;   /* earliest query deadline */
    uint64_t qtimer_due; /* when qtimer fires, 0 when stopped */
    uv_prepare_t sender;

    pg_list_t waiting;
    pg_list_t inflight;
    pg_query_t *dl_head, *dl_tail;
    size_t npending; /* user queries whose callback has not run */

    char **listens; /* channels to LISTEN to, in the order given */
    size_t nlistens;

    /* Statements prepared on the current session (names; reset on every
     * reconnect).  A handful per program: a linear search is fine. */
    char **prepared;
    size_t nprepared, capprepared;

    rp_backoff_t backoff;
    int attempt; /* failed attempts since the last success */
    uint32_t rnd;
    int nconnects; /* successful connects, for logs */
    int nhandles;  /* open libuv handles, including closing poll handles */
    char why[256]; /* why the last attempt or connection failed */

    void (*close_cb)(void *data);
    void *close_data;
};

struct rp_pg_res {
    int error;
    const char *sqlstate;
    const char *message;
    PGresult *res;
};

/* ---------------------------------------------------------------- lists */

static void list_push(pg_list_t *l, pg_query_t *q)
{
    q->next = NULL;
    q->prev = l->tail;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->n++;
}

static void list_unlink(pg_list_t *l, pg_query_t *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        l->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        l->tail = q->prev;
    q->prev = q->next = NULL;
    l->n--;
}

static pg_query_t *list_pop(pg_list_t *l)
{
    pg_query_t *q = l->head;
    if (q)
        list_unlink(l, q);
    return q;
}

/* ------------------------------------------------------------ deadlines */

static void qtimer_cb(uv_timer_t *t);

/* Arm qtimer for the earliest deadline unless it already fires sooner.
 * Removing a deadline never re-arms: an early wake-up finds nothing due and
 * re-arms, which is cheaper than restarting the timer per answer. */
static void qtimer_arm(rp_pg_t *pg)
{
    if (pg->dl_head == NULL || pg->state >= PG_CLOSING)
        return;
    uint64_t due = pg->dl_head->deadline;
    if (pg->qtimer_due != 0 && pg->qtimer_due <= due)
        return;
    uint64_t now = uv_now(pg->loop);
    pg->qtimer_due = due;
    uv_timer_start(&pg->qtimer, qtimer_cb, due > now ? due - now : 1, 0);
}

static void dl_insert(rp_pg_t *pg, pg_query_t *q)
{
    /* Walk back from the tail: O(1) when queries share one timeout. */
    pg_query_t *after = pg->dl_tail;
    while (after && after->deadline > q->deadline)
        after = after->dl_prev;
    q->dl_prev = after;
    q->dl_next = after ? after->dl_next : pg->dl_head;
    if (q->dl_next)
        q->dl_next->dl_prev = q;
    else
        pg->dl_tail = q;
    if (after)
        after->dl_next = q;
    else
        pg->dl_head = q;
    qtimer_arm(pg);
}

static void dl_remove(rp_pg_t *pg, pg_query_t *q)
{
    if (q->deadline == 0)
        return;
    if (q->dl_prev)
        q->dl_prev->dl_next = q->dl_next;
    else
        pg->dl_head = q->dl_next;
    if (q->dl_next)
        q->dl_next->dl_prev = q->dl_prev;
    else
        pg->dl_tail = q->dl_prev;
    q->dl_prev = q->dl_next = NULL;
    q->deadline = 0;
}

/* -------------------------------------------------------------- helpers */

static void pg_set_state(rp_pg_t *pg, pg_state_t s)
{
    if (pg->state == s)
        return;
    if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("pg.state", NULL, "%s -> %s", pg_state_names[pg->state], pg_state_names[s]);
    pg->state = s;
}

/* Copy a libpq message into pg->why as one line: libpq's messages span
 * several lines ("...\n\tThis probably means..."), a log line must not. */
static void pg_set_why(rp_pg_t *pg, const char *msg)
{
    if (msg == NULL || *msg == '\0')
        msg = "connection lost";
    size_t w = 0;
    for (const char *r = msg; *r && w + 1 < sizeof(pg->why); r++) {
        char ch = *r == '\n' || *r == '\t' ? ' ' : *r;
        if (ch == ' ' && (w == 0 || pg->why[w - 1] == ' '))
            continue;
        pg->why[w++] = ch;
    }
    while (w > 0 && pg->why[w - 1] == ' ')
        w--;
    pg->why[w] = '\0';
}

static void pg_forget_prepared(rp_pg_t *pg);

static void pg_free_query(pg_query_t *q)
{
    if (q->res)
        PQclear(q->res);
    free((char *)q->stmt);
    free(q);
}

/* Build a query object holding copies of sql and params, in one block. */
static pg_query_t *pg_query_make(const char *sql, int nparams, const char *const *params)
{
    size_t sql_len = strlen(sql) + 1;
    size_t total = sizeof(pg_query_t) + (size_t)nparams * sizeof(char *) + sql_len;
    for (int i = 0; i < nparams; i++)
        if (params[i])
            total += strlen(params[i]) + 1;
    pg_query_t *q = malloc(total);
    if (q == NULL)
        return NULL;
    memset(q, 0, sizeof(*q));
    q->nparams = nparams;
    q->params = (const char **)(void *)q->storage;
    char *p = q->storage + (size_t)nparams * sizeof(char *);
    memcpy(p, sql, sql_len);
    q->sql = p;
    p += sql_len;
    for (int i = 0; i < nparams; i++) {
        if (params[i] == NULL) {
            q->params[i] = NULL;
            continue;
        }
        size_t n = strlen(params[i]) + 1;
        memcpy(p, params[i], n);
        q->params[i] = p;
        p += n;
    }
    return q;
}

/* Run q's callback once with a synthetic error (no PGresult). */
static void pg_answer_error(rp_pg_t *pg, pg_query_t *q, int code, const char *msg)
{
    rp_pg_cb cb = q->cb;
    dl_remove(pg, q);
    if (cb == NULL)
        return;
    q->cb = NULL;
    if (!q->internal)
        pg->npending--;
    rp_pg_res_t res = {.error = code, .sqlstate = "", .message = msg, .res = NULL};
    cb(q->data, &res);
}

/* SQLSTATEs that mean the session is gone rather than the statement failed:
 * class 08 (connection exception) and 57P01..57P03 (shutdown, terminated). */
static int sqlstate_is_disconnect(const char *s)
{
    if (s == NULL)
        return 0;
    if (strncmp(s, "08", 2) == 0)
        return 1;
    return strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0;
}

/* Deliver the collected result of the FIFO head; it then waits for its
 * PIPELINE_SYNC.  The PGresult is detached first so that a callback that
 * closes the connection cannot free it under us. */
static int pg_submit(rp_pg_t *pg, const char *stmt, const char *sql, int nparams,
                     const char *const *params, long timeout_ms, rp_pg_cb cb, void *data);

/* A prepared query sent while its statement's Parse (on the same session)
 * was still in flight meets "prepared statement does not exist" (26000)
 * when that Parse failed: send it once more with its own Parse, so its
 * caller gets the real error (or an answer) instead.  Returns 1 when q was
 * handed over to a new query. */
static int pg_reprepare(rp_pg_t *pg, pg_query_t *q, PGresult *r)
{
    if (q->stmt == NULL || q->reprepared || q->cb == NULL || r == NULL)
        return 0;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state == NULL || strcmp(state, "26000") != 0)
        return 0;
    long left = 0;
    if (q->deadline != 0) {
        uint64_t now = uv_now(pg->loop);
        if (q->deadline <= now)
            return 0;
        left = (long)(q->deadline - now);
    }
    rp_pg_cb cb = q->cb;
    void *data = q->data;
    if (pg_submit(pg, q->stmt, q->sql, q->nparams, q->params, left, cb, data) != 0)
        return 0;
    pg->waiting.tail->reprepared = 1;
    /* The old query becomes an orphan: its sync is still to come. */
    q->cb = NULL;
    if (!q->internal)
        pg->npending--;
    return 1;
}

static void pg_answer(rp_pg_t *pg, pg_query_t *q)
{
    if (pg_reprepare(pg, q, q->res)) {
        PQclear(q->res);
        q->res = NULL;
        q->phase = Q_SYNC;
        dl_remove(pg, q);
        return;
    }
    PGresult *r = q->res;
    q->res = NULL;
    q->phase = Q_SYNC;
    rp_pg_cb cb = q->cb;
    dl_remove(pg, q);
    if (cb == NULL) {
        PQclear(r); /* timed out earlier: discard */
        return;
    }
    q->cb = NULL;
    if (!q->internal)
        pg->npending--;
    rp_pg_res_t res = {.error = 0, .sqlstate = "", .message = "", .res = r};
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    switch (st) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY:
        break;
    case PGRES_PIPELINE_ABORTED:
        res.error = RP_EDB;
        res.message = "pipeline aborted by an earlier error";
        break;
    default: {
        const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        if (msg == NULL && r != NULL)
            msg = PQresultErrorMessage(r);
        res.sqlstate = state ? state : "";
        res.message = msg && *msg ? msg : "query failed";
        if (state && strcmp(state, "57014") == 0) {
            /* statement_timeout (or an operator's cancel): a deadline. */
            res.error = RP_ETIMEDOUT;
            break;
        }
        int gone =
            state == NULL || sqlstate_is_disconnect(state) || PQstatus(pg->conn) == CONNECTION_BAD;
        res.error = gone ? RP_EIO : RP_EDB;
        break;
    }
    }
    cb(q->data, &res);
    PQclear(r);
}

/* ------------------------------------------------------------- handles */

static void pg_maybe_free(rp_pg_t *pg)
{
    if (pg->state != PG_CLOSING || pg->nhandles > 0)
        return;
    pg_set_state(pg, PG_CLOSED);
    void (*cb)(void *) = pg->close_cb;
    void *data = pg->close_data;
    for (size_t i = 0; i < pg->nlistens; i++)
        free(pg->listens[i]);
    free(pg->listens);
    pg_forget_prepared(pg);
    free(pg->prepared);
    free(pg->conninfo);
    free(pg->app_name);
    free(pg->timeout_setting);
    free(pg->resolve_host);
    free(pg);
    if (cb)
        cb(data);
}

static void handle_closed(uv_handle_t *h)
{
    rp_pg_t *pg = h->data;
    pg->nhandles--;
    pg_maybe_free(pg);
}

static void poll_closed(uv_handle_t *h)
{
    pg_poll_t *pp = h->data;
    rp_pg_t *pg = pp->pg;
    if (pp->finish)
        PQfinish(pp->finish);
    free(pp);
    pg->nhandles--;
    pg_maybe_free(pg);
}

/* Stop and close the current poll handle; conn (may be NULL) is finished
 * once the handle is closed. */
static void pg_poll_drop(rp_pg_t *pg, PGconn *conn)
{
    pg_poll_t *pp = pg->poll;
    pg->poll = NULL;
    if (pp == NULL) {
        if (conn)
            PQfinish(conn);
        return;
    }
    pp->finish = conn;
    uv_close((uv_handle_t *)&pp->handle, poll_closed);
}

static void poll_cb(uv_poll_t *h, int status, int events);

static int pg_poll_new(rp_pg_t *pg, int fd)
{
    pg_poll_t *pp = calloc(1, sizeof(*pp));
    if (pp == NULL)
        return RP_ENOMEM;
    int rc = uv_poll_init_socket(pg->loop, &pp->handle, fd);
    if (rc != 0) {
        free(pp);
        return RP_EIO;
    }
    pp->handle.data = pp;
    pp->pg = pg;
    pp->fd = fd;
    pg->poll = pp;
    pg->nhandles++;
    return 0;
}

static void pg_poll_want(rp_pg_t *pg, int events)
{
    pg_poll_t *pp = pg->poll;
    if (pp == NULL || pp->events == events)
        return;
    pp->events = events;
    uv_poll_start(&pp->handle, events, poll_cb);
}

/* ------------------------------------------------------ connection loss */

static void pg_connect_start(rp_pg_t *pg);

static void timer_retry_cb(uv_timer_t *t)
{
    rp_pg_t *pg = t->data;
    if (pg->state == PG_WAITING)
        pg_connect_start(pg);
}

/* Schedule the next attempt with exponential backoff and jitter. */
static void pg_schedule_retry(rp_pg_t *pg)
{
    pg->attempt++;
    uint64_t d = rp_backoff_delay_ms(&pg->backoff, pg->attempt + 1, rp_rand32(&pg->rnd));
    if (d == 0)
        d = 1;
    pg_set_state(pg, PG_WAITING);
    uv_timer_start(&pg->timer, timer_retry_cb, d, 0);
}

/* The connection (or the attempt) failed: drop it, fail what was in
 * flight, tell the owner, and schedule a reconnect.  Queries still waiting
 * stay queued for the next connection. */
static void pg_lost(rp_pg_t *pg, const char *why)
{
    if (pg->state != PG_CONNECTING && pg->state != PG_UP)
        return;
    int was_up = pg->state == PG_UP;
    pg_set_why(pg, why);
    pg->resolving = NULL; /* a lookup still running is abandoned: see resolved_cb */
    PGconn *conn = pg->conn;
    pg->conn = NULL;
    pg_poll_drop(pg, conn); /* stop watching before the socket is closed */
    uv_timer_stop(&pg->timer);
    uv_prepare_stop(&pg->sender);
    pg_set_state(pg, PG_WAITING);
    /* While the server stays down, log attempts 1, 2, 4, 8, ... at warn
     * level and the others at debug level, so the log is not flooded. */
    int n = pg->attempt + 1;
    if (was_up)
        rp_log_warn("pg.disconnected", NULL, "%s", pg->why);
    else
        rp_log(((n & (n - 1)) == 0) ? RP_LOG_WARN : RP_LOG_DEBUG, "pg.connect_failed", NULL,
               "attempt %d: %s", n, pg->why);

    /* Queries in flight may or may not have run: the owner decides. */
    pg_query_t *q;
    while ((q = list_pop(&pg->inflight)) != NULL) {
        pg_answer_error(pg, q, RP_EIO, pg->why);
        pg_free_query(q);
        if (pg->state != PG_WAITING)
            return; /* closed from a callback */
    }
    /* Internal statements still waiting are re-issued after reconnecting. */
    pg_query_t *next;
    for (q = pg->waiting.head; q; q = next) {
        next = q->next;
        if (q->internal) {
            list_unlink(&pg->waiting, q);
            pg_free_query(q);
        }
    }
    if (was_up && pg->opts.on_disconnect) {
        pg->opts.on_disconnect(pg->opts.data, pg->why);
        if (pg->state != PG_WAITING)
            return;
    }
    pg_schedule_retry(pg);
}

/* ------------------------------------------------------------- sending */

/* Send one query followed by its own sync point.  Returns 0 or -1 when
 * libpq refused (the connection is broken). */
static int pg_is_prepared(const rp_pg_t *pg, const char *name)
{
    for (size_t i = 0; i < pg->nprepared; i++)
        if (strcmp(pg->prepared[i], name) == 0)
            return 1;
    return 0;
}

static void pg_set_prepared(rp_pg_t *pg, const char *name, int on)
{
    for (size_t i = 0; i < pg->nprepared; i++) {
        if (strcmp(pg->prepared[i], name) == 0) {
            if (!on) {
                free(pg->prepared[i]);
                pg->prepared[i] = pg->prepared[--pg->nprepared];
            }
            return;
        }
    }
    if (!on)
        return;
    if (pg->nprepared == pg->capprepared) {
        size_t cap = pg->capprepared ? pg->capprepared * 2 : 8;
        char **p = realloc(pg->prepared, cap * sizeof(char *));
        if (p == NULL)
            return; /* prepared again next time: harmless */
        pg->prepared = p;
        pg->capprepared = cap;
    }
    char *copy = strdup(name);
    if (copy != NULL)
        pg->prepared[pg->nprepared++] = copy;
}

static void pg_forget_prepared(rp_pg_t *pg)
{
    for (size_t i = 0; i < pg->nprepared; i++)
        free(pg->prepared[i]);
    pg->nprepared = 0;
}

static int pg_send_one(rp_pg_t *pg, pg_query_t *q)
{
    q->preparing = 0;
    if (q->stmt != NULL) {
        /* Parse once per session, in the same pipeline as the first use:
         * the statement's plan is then cached by the server. */
        if (!pg_is_prepared(pg, q->stmt)) {
            if (!PQsendPrepare(pg->conn, q->stmt, q->sql, q->nparams, NULL))
                return -1;
            q->preparing = 1;
            pg_set_prepared(pg, q->stmt, 1);
        }
        if (!PQsendQueryPrepared(pg->conn, q->stmt, q->nparams, q->params, NULL, NULL, 0))
            return -1;
    } else if (!PQsendQueryParams(pg->conn, q->sql, q->nparams, NULL, q->params, NULL, NULL,
                                  0)) {
        return -1;
    }
    if (!PQpipelineSync(pg->conn))
        return -1;
    q->phase = q->preparing ? Q_PREPARING : Q_RESULTS;
    list_push(&pg->inflight, q);
    return 0;
}

/* Arm the poll for reading, and for writing only while libpq has output
 * queued (leaving writable armed would spin). */
static int pg_flush(rp_pg_t *pg)
{
    int rc = PQflush(pg->conn);
    if (rc < 0) {
        pg_lost(pg, PQerrorMessage(pg->conn));
        return -1;
    }
    pg_poll_want(pg, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
    return 0;
}

/* Send everything waiting, then flush. */
static void pg_send_waiting(rp_pg_t *pg)
{
    pg_query_t *q;
    while (pg->state == PG_UP && (q = pg->waiting.head) != NULL) {
        list_unlink(&pg->waiting, q);
        if (pg_send_one(pg, q) != 0) {
            /* Not sent: keep it first in line for the next connection. */
            q->next = pg->waiting.head;
            q->prev = NULL;
            if (pg->waiting.head)
                pg->waiting.head->prev = q;
            else
                pg->waiting.tail = q;
            pg->waiting.head = q;
            pg->waiting.n++;
            pg_lost(pg, PQerrorMessage(pg->conn));
            return;
        }
    }
    if (pg->state == PG_UP)
        pg_flush(pg);
}

static void sender_cb(uv_prepare_t *h)
{
    rp_pg_t *pg = h->data;
    uv_prepare_stop(h);
    if (pg->state == PG_UP)
        pg_send_waiting(pg);
}

static void pg_kick(rp_pg_t *pg)
{
    if (pg->state == PG_UP)
        uv_prepare_start(&pg->sender, sender_cb);
}

/* ------------------------------------------------------------- reading */

/* Match results to the FIFO head until libpq needs more input. */
static void pg_read_results(rp_pg_t *pg)
{
    while (pg->state == PG_UP && pg->inflight.head != NULL) {
        if (PQisBusy(pg->conn))
            return;
        PGresult *r = PQgetResult(pg->conn);
        pg_query_t *q = pg->inflight.head;
        if (q->phase == Q_PREPARING) {
            /* The Parse's own result, then NULL; then the query's. */
            if (r == NULL) {
                q->phase = Q_RESULTS;
                continue;
            }
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                /* Keep the error for the caller (the query after it is
                 * aborted), and prepare again next time. */
                pg_set_prepared(pg, q->stmt, 0);
                if (q->res)
                    PQclear(q->res);
                q->res = r;
                q->preparing = 2;
                continue;
            }
            PQclear(r);
            continue;
        }
        if (q->phase == Q_RESULTS) {
            if (r == NULL) {
                pg_answer(pg, q);
                continue;
            }
            if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
                /* A sync with no result before it: libpq and the FIFO
                 * disagree; the only safe thing is a new session. */
                PQclear(r);
                pg_lost(pg, "pipeline out of step with its queries");
                return;
            }
            if (q->preparing == 2) {
                PQclear(r); /* aborted after a failed Parse: report the Parse's error */
                continue;
            }
            if (q->res)
                PQclear(q->res); /* keep the last result of the statement */
            q->res = r;
            continue;
        }
        /* Q_SYNC */
        if (r == NULL) {
            pg_lost(pg, "pipeline out of step with its queries");
            return;
        }
        ExecStatusType st = PQresultStatus(r);
        PQclear(r);
        if (st == PGRES_PIPELINE_SYNC) {
            list_unlink(&pg->inflight, q);
            pg_free_query(q);
        }
    }
}

static void pg_read_notifies(rp_pg_t *pg)
{
    PGnotify *n;
    while (pg->state == PG_UP && (n = PQnotifies(pg->conn)) != NULL) {
        if (pg->opts.on_notify)
            pg->opts.on_notify(pg->opts.data, n->relname, n->extra ? n->extra : "");
        PQfreemem(n);
    }
}

static void pg_io(rp_pg_t *pg, int status, int events)
{
    if (status < 0 || (events & UV_READABLE)) {
        /* On a socket error libuv stopped the handle: let libpq read so it
         * reports the real error. */
        if (status < 0)
            pg->poll->events = 0;
        if (!PQconsumeInput(pg->conn)) {
            pg_lost(pg, PQerrorMessage(pg->conn));
            return;
        }
        pg_read_results(pg);
        pg_read_notifies(pg);
        if (pg->state != PG_UP)
            return;
        if (PQstatus(pg->conn) == CONNECTION_BAD) {
            pg_lost(pg, PQerrorMessage(pg->conn));
            return;
        }
    }
    pg_flush(pg);
}

/* ---------------------------------------------------------- connecting */

static void internal_cb(void *data, const rp_pg_res_t *res)
{
    const char *what = data;
    if (res->error != 0 && res->error != RP_ECANCELED && res->error != RP_EIO)
        rp_log_error("pg.setup_failed", NULL, "%s: %s (%s)", what, res->message, res->sqlstate);
}

/* A LISTEN statement for channel, quoted by libpq for this connection's
 * encoding.  Returns an internal query or NULL. */
static pg_query_t *pg_listen_query(rp_pg_t *pg, const char *channel)
{
    char *id = PQescapeIdentifier(pg->conn, channel, strlen(channel));
    if (id == NULL)
        return NULL;
    char *sql = malloc(strlen(id) + sizeof("LISTEN "));
    pg_query_t *q = NULL;
    if (sql != NULL) {
        sprintf(sql, "LISTEN %s", id);
        q = pg_query_make(sql, 0, NULL);
    }
    free(sql);
    PQfreemem(id);
    if (q == NULL)
        return NULL;
    q->internal = 1;
    q->cb = internal_cb;
    q->data = (void *)"listen";
    q->phase = Q_WAITING;
    return q;
}

/* Send an internal statement at once (session setup).  Returns 0, or an
 * error after which the connection was reset. */
static int pg_send_internal(rp_pg_t *pg, pg_query_t *q)
{
    if (q == NULL) {
        pg_lost(pg, "out of memory preparing the session");
        return RP_ENOMEM;
    }
    if (pg_send_one(pg, q) != 0) {
        pg_free_query(q);
        pg_lost(pg, PQerrorMessage(pg->conn));
        return RP_EIO;
    }
    return 0;
}

static void pg_connected(rp_pg_t *pg)
{
    uv_timer_stop(&pg->timer);
    pg_forget_prepared(pg); /* a new session knows none */
    if (PQsetnonblocking(pg->conn, 1) != 0 || !PQenterPipelineMode(pg->conn)) {
        pg_lost(pg, PQerrorMessage(pg->conn));
        return;
    }
    pg_set_state(pg, PG_UP);
    pg->attempt = 0;
    pg->nconnects++;
    rp_log_info("pg.connected", NULL, "connection %d, server %d", pg->nconnects,
                PQserverVersion(pg->conn));
    /* Session setup goes first in the pipeline: the server's own deadline,
     * then every LISTEN, so anything the owner sends from on_connect (a
     * rescan) runs after the LISTENs took effect. */
    if (pg->timeout_setting) {
        const char *p[1] = {pg->timeout_setting};
        pg_query_t *q = pg_query_make("select set_config('statement_timeout', $1, false)", 1, p);
        if (q) {
            q->internal = 1;
            q->cb = internal_cb;
            q->data = (void *)"statement_timeout";
        }
        if (pg_send_internal(pg, q) != 0)
            return;
    }
    for (size_t i = 0; i < pg->nlistens; i++)
        if (pg_send_internal(pg, pg_listen_query(pg, pg->listens[i])) != 0)
            return;
    if (pg_flush(pg) != 0)
        return;
    if (pg->opts.on_connect) {
        pg->opts.on_connect(pg->opts.data);
        if (pg->state != PG_UP)
            return;
    }
    if (pg->waiting.head)
        pg_kick(pg);
}

/* One PQconnectPoll step; libpq may have moved to a new socket. */
static void pg_connect_step(rp_pg_t *pg)
{
    PostgresPollingStatusType st = PQconnectPoll(pg->conn);
    if (st == PGRES_POLLING_FAILED) {
        pg_lost(pg, PQerrorMessage(pg->conn));
        return;
    }
    int fd = PQsocket(pg->conn);
    /* A new socket can reuse the old descriptor number, so also treat a
     * fresh connection attempt (CONNECTION_STARTED) as a new socket. */
    if (fd < 0) {
        pg_lost(pg, "no socket while connecting");
        return;
    }
    if (pg->poll == NULL || pg->poll->fd != fd || PQstatus(pg->conn) == CONNECTION_STARTED) {
        pg_poll_drop(pg, NULL);
        if (pg_poll_new(pg, fd) != 0) {
            pg_lost(pg, "cannot watch the connection's socket");
            return;
        }
    }
    switch (st) {
    case PGRES_POLLING_READING:
        pg_poll_want(pg, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        pg_poll_want(pg, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        pg_connected(pg);
        break;
    default:
        break;
    }
}

static void timer_connect_cb(uv_timer_t *t)
{
    rp_pg_t *pg = t->data;
    if (pg->state == PG_CONNECTING)
        pg_lost(pg, "connect timed out");
}

/* Start libpq's connection.  hosts/hostaddrs (both NULL, or equally long
 * comma-separated lists) replace the conninfo's host with the addresses we
 * resolved for it, so libpq still tries each address in turn. */
static void pg_connect_libpq(rp_pg_t *pg, const char *hosts, const char *hostaddrs)
{
    /* application_name comes before dbname so that a value in the conninfo
     * itself wins; host/hostaddr come after it so that ours win. */
    const char *keys[] = {"application_name", "dbname", "host", "hostaddr", NULL};
    const char *vals[] = {pg->app_name, pg->conninfo, hosts, hostaddrs, NULL};
    if (hosts == NULL)
        keys[2] = NULL;
    pg->conn = PQconnectStartParams(keys, vals, 1);
    if (pg->conn == NULL) {
        pg_lost(pg, "out of memory");
        return;
    }
    if (PQstatus(pg->conn) == CONNECTION_BAD || PQsocket(pg->conn) < 0 ||
        pg_poll_new(pg, PQsocket(pg->conn)) != 0) {
        pg_lost(pg, PQerrorMessage(pg->conn));
        return;
    }
    /* libpq's first wait after PQconnectStart is for writability. */
    pg_poll_want(pg, UV_WRITABLE);
}

#define PG_MAX_ADDRS 8

static void resolved_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    rp_pg_t *pg = req->data;
    int current = pg->resolving == req;
    free(req);
    pg->nhandles--;
    if (!current) {
        /* Abandoned (the attempt timed out or the object is closing). */
        if (res)
            uv_freeaddrinfo(res);
        pg_maybe_free(pg);
        return;
    }
    pg->resolving = NULL;
    /* Every distinct address, in the resolver's order, as parallel lists. */
    size_t hlen = strlen(pg->resolve_host) + 1;
    char *hosts = malloc(PG_MAX_ADDRS * hlen);
    char *addrs = malloc(PG_MAX_ADDRS * 48);
    int n = 0;
    if (hosts && addrs && status == 0) {
        hosts[0] = addrs[0] = '\0';
        for (struct addrinfo *ai = res; ai && n < PG_MAX_ADDRS; ai = ai->ai_next) {
            char a[48] = "";
            if (ai->ai_family == AF_INET6)
                uv_ip6_name((const struct sockaddr_in6 *)(void *)ai->ai_addr, a, sizeof(a));
            else if (ai->ai_family == AF_INET)
                uv_ip4_name((const struct sockaddr_in *)(void *)ai->ai_addr, a, sizeof(a));
            if (a[0] == '\0')
                continue;
            /* skip duplicates (one per socket type or protocol) */
            int dup = 0;
            for (const char *p = addrs; *p && !dup; p = strchr(p, ',') ? strchr(p, ',') + 1 : "")
                dup =
                    strncmp(p, a, strlen(a)) == 0 && (p[strlen(a)] == ',' || p[strlen(a)] == '\0');
            if (dup)
                continue;
            if (n > 0) {
                strcat(hosts, ",");
                strcat(addrs, ",");
            }
            strcat(hosts, pg->resolve_host);
            strcat(addrs, a);
            n++;
        }
    }
    if (res)
        uv_freeaddrinfo(res);
    if (n == 0) {
        char why[200];
        snprintf(why, sizeof(why), "could not resolve host \"%s\": %s", pg->resolve_host,
                 status < 0       ? uv_strerror(status)
                 : hosts && addrs ? "no address"
                                  : "out of memory");
        free(hosts);
        free(addrs);
        pg_lost(pg, why);
        return;
    }
    pg_connect_libpq(pg, hosts, addrs);
    free(hosts);
    free(addrs);
}

static void pg_connect_start(rp_pg_t *pg)
{
    pg_set_state(pg, PG_CONNECTING);
    /* One deadline covers the lookup and the whole handshake. */
    uv_timer_start(&pg->timer, timer_connect_cb, (uint64_t)pg->opts.connect_timeout_ms, 0);
    if (pg->resolve_host == NULL) {
        pg_connect_libpq(pg, NULL, NULL);
        return;
    }
    /* PQconnectStart would call getaddrinfo and block the loop: resolve on
     * libuv's thread pool instead and hand libpq the address. */
    uv_getaddrinfo_t *req = malloc(sizeof(*req));
    if (req == NULL) {
        pg_lost(pg, "out of memory");
        return;
    }
    req->data = pg;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(pg->loop, req, resolved_cb, pg->resolve_host, NULL, &hints);
    if (rc != 0) {
        free(req);
        char why[200];
        snprintf(why, sizeof(why), "could not resolve host \"%s\": %s", pg->resolve_host,
                 uv_strerror(rc));
        pg_lost(pg, why);
        return;
    }
    pg->resolving = req;
    pg->nhandles++;
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    pg_poll_t *pp = h->data;
    rp_pg_t *pg = pp->pg;
    if (pg->poll != pp)
        return; /* a handle being replaced */
    switch (pg->state) {
    case PG_CONNECTING:
        /* On an error libuv stopped the handle; PQconnectPoll reports why. */
        if (status < 0)
            pp->events = 0;
        pg_connect_step(pg);
        break;
    case PG_UP:
        pg_io(pg, status, events);
        break;
    default:
        break;
    }
}

/* ----------------------------------------------------------- deadlines */

static void qtimer_cb(uv_timer_t *t)
{
    rp_pg_t *pg = t->data;
    pg->qtimer_due = 0;
    uint64_t now = uv_now(pg->loop);
    pg_query_t *q;
    while (pg->state < PG_CLOSING && (q = pg->dl_head) != NULL && q->deadline <= now) {
        if (q->phase == Q_WAITING) {
            list_unlink(&pg->waiting, q);
            pg_answer_error(pg, q, RP_ETIMEDOUT, "query timed out");
            pg_free_query(q);
        } else {
            /* In flight: answer now, discard the server's answer later. */
            pg_answer_error(pg, q, RP_ETIMEDOUT, "query timed out");
        }
    }
    qtimer_arm(pg);
}

/* ---------------------------------------------------------------- API */

/* True when a token libpq quoted in a parse error can be shown: a short
 * piece of punctuation ("=", "]"), or a name made of letters, digits and
 * '_' that appears in the conninfo only as a name, never right after '='
 * or ':' (where a value, such as a password, would be). */
static int token_is_safe(const char *conninfo, const char *tok, size_t n)
{
    if (n <= 2) {
        for (size_t i = 0; i < n; i++)
            if ((tok[i] >= 'A' && tok[i] <= 'Z') || (tok[i] >= 'a' && tok[i] <= 'z') ||
                (tok[i] >= '0' && tok[i] <= '9'))
                return 0;
        return 1;
    }
    if (n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = tok[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '_'))
            return 0;
    }
    for (const char *p = conninfo; *p; p++) {
        if (strncmp(p, tok, n) != 0)
            continue;
        if (p > conninfo && (p[-1] == '=' || p[-1] == ':' || p[-1] == '\''))
            return 0;
    }
    return 1;
}

/* Copy a libpq parse message into out, replacing each "quoted" token that
 * might be a value with "...": libpq quotes the offending text, which can
 * be a password (a whole URI, for instance). */
static void redact_quoted(char *out, size_t cap, const char *in, const char *conninfo)
{
    size_t w = 0;
    while (*in && w + 8 < cap) {
        if (*in == '\n') {
            in++;
            continue;
        }
        if (*in != '"') {
            out[w++] = *in++;
            continue;
        }
        const char *end = strchr(in + 1, '"');
        size_t n = end ? (size_t)(end - in - 1) : strlen(in + 1);
        if (end && token_is_safe(conninfo, in + 1, n) && w + n + 2 + 8 < cap) {
            memcpy(out + w, in, n + 2);
            w += n + 2;
        } else {
            memcpy(out + w, "\"...\"", 5);
            w += 5;
        }
        in = end ? end + 1 : in + 1 + n;
    }
    out[w] = '\0';
}

/* True when host is one DNS name that libpq would resolve with a blocking
 * call: not a socket directory, not a list (libpq's multi-host fail-over
 * is left to libpq), not already an address, and no hostaddr given. */
static int needs_lookup(const char *host, const char *hostaddr)
{
    if (host == NULL || *host == '\0' || (hostaddr && *hostaddr))
        return 0;
    if (host[0] == '/' || host[0] == '@' || strchr(host, ',') != NULL)
        return 0;
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1)
        return 0;
    return 1;
}

rp_pg_t *rp_pg_new(uv_loop_t *loop, const char *conninfo, const rp_pg_opts_t *opts, rp_err_t *err)
{
    char *perr = NULL;
    if (conninfo == NULL || *conninfo == '\0') {
        rp_err_set(err, RP_EINVAL, "the Postgres connection string is empty");
        return NULL;
    }
    PQconninfoOption *parsed = PQconninfoParse(conninfo, &perr);
    if (parsed == NULL) {
        char msg[200];
        redact_quoted(msg, sizeof(msg), perr ? perr : "out of memory", conninfo);
        rp_err_set(err, perr ? RP_EINVAL : RP_ENOMEM, "invalid Postgres connection string: %s",
                   msg);
        PQfreemem(perr);
        return NULL;
    }
    const char *host = NULL, *hostaddr = NULL;
    for (PQconninfoOption *o = parsed; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    }
    char *resolve = NULL;
    if (needs_lookup(host, hostaddr)) {
        resolve = strdup(host);
        if (resolve == NULL) {
            PQconninfoFree(parsed);
            goto oom;
        }
    }
    PQconninfoFree(parsed);

    rp_pg_t *pg = calloc(1, sizeof(*pg));
    if (pg == NULL) {
        free(resolve);
        goto oom;
    }
    pg->resolve_host = resolve;
    pg->loop = loop;
    if (opts)
        pg->opts = *opts;
    if (pg->opts.connect_timeout_ms <= 0)
        pg->opts.connect_timeout_ms = 10000;
    if (pg->opts.reconnect_min_ms <= 0)
        pg->opts.reconnect_min_ms = 100;
    if (pg->opts.reconnect_max_ms <= 0)
        pg->opts.reconnect_max_ms = 5000;
    if (pg->opts.reconnect_max_ms < pg->opts.reconnect_min_ms)
        pg->opts.reconnect_max_ms = pg->opts.reconnect_min_ms;
    pg->backoff.base_ms = (uint64_t)pg->opts.reconnect_min_ms;
    pg->backoff.max_ms = (uint64_t)pg->opts.reconnect_max_ms;
    pg->rnd = (uint32_t)(uv_hrtime() ^ (uintptr_t)pg) | 1u;
    pg->conninfo = strdup(conninfo);
    pg->app_name = strdup(pg->opts.application_name ? pg->opts.application_name : "ragpool");
    pg->opts.application_name = pg->app_name;
    if (pg->conninfo == NULL || pg->app_name == NULL)
        goto oom_free;
    if (pg->opts.query_timeout_ms > 0) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%ld", pg->opts.query_timeout_ms);
        pg->timeout_setting = strdup(buf);
        if (pg->timeout_setting == NULL)
            goto oom_free;
    }
    uv_timer_init(loop, &pg->timer);
    uv_timer_init(loop, &pg->qtimer);
    uv_prepare_init(loop, &pg->sender);
    pg->timer.data = pg;
    pg->qtimer.data = pg;
    pg->sender.data = pg;
    pg->nhandles = 3;
    return pg;

oom_free:
    free(pg->resolve_host);
    free(pg->conninfo);
    free(pg->app_name);
    free(pg->timeout_setting);
    free(pg);
oom:
    rp_err_set(err, RP_ENOMEM, "out of memory creating a Postgres connection");
    return NULL;
}

int rp_pg_start(rp_pg_t *pg)
{
    if (pg->state != PG_IDLE)
        return pg->state >= PG_CLOSING ? RP_ECLOSED : 0;
    pg_connect_start(pg);
    return 0;
}

int rp_pg_is_up(const rp_pg_t *pg)
{
    return pg->state == PG_UP;
}

size_t rp_pg_pending(const rp_pg_t *pg)
{
    return pg->npending;
}

rp_pg_t *rp_pg_pick(rp_pg_t *const *conns, size_t n)
{
    rp_pg_t *best = conns[0];
    for (size_t i = 1; i < n; i++)
        if (rp_pg_pending(conns[i]) < rp_pg_pending(best))
            best = conns[i];
    return best;
}

static int pg_submit(rp_pg_t *pg, const char *stmt, const char *sql, int nparams,
                     const char *const *params, long timeout_ms, rp_pg_cb cb, void *data)
{
    if (pg->state >= PG_CLOSING)
        return RP_ECLOSED;
    if (sql == NULL || cb == NULL || nparams < 0 || nparams > 65535 ||
        (nparams > 0 && params == NULL) || (stmt != NULL && (stmt[0] == '\0' || strlen(stmt) > 63)))
        return RP_EINVAL;
    pg_query_t *q = pg_query_make(sql, nparams, params);
    if (q == NULL)
        return RP_ENOMEM;
    if (stmt != NULL) {
        q->stmt = strdup(stmt);
        if (q->stmt == NULL) {
            pg_free_query(q);
            return RP_ENOMEM;
        }
    }
    q->cb = cb;
    q->data = data;
    q->phase = Q_WAITING;
    if (timeout_ms <= 0)
        timeout_ms = pg->opts.query_timeout_ms;
    list_push(&pg->waiting, q);
    pg->npending++;
    if (timeout_ms > 0) {
        q->deadline = uv_now(pg->loop) + (uint64_t)timeout_ms;
        dl_insert(pg, q);
    }
    pg_kick(pg);
    return 0;
}

int rp_pg_query(rp_pg_t *pg, const char *sql, int nparams, const char *const *params,
                long timeout_ms, rp_pg_cb cb, void *data)
{
    return pg_submit(pg, NULL, sql, nparams, params, timeout_ms, cb, data);
}

int rp_pg_query_prepared(rp_pg_t *pg, const char *name, const char *sql, int nparams,
                         const char *const *params, long timeout_ms, rp_pg_cb cb, void *data)
{
    return pg_submit(pg, name, sql, nparams, params, timeout_ms, cb, data);
}

int rp_pg_listen(rp_pg_t *pg, const char *channel)
{
    if (pg->state >= PG_CLOSING)
        return RP_ECLOSED;
    if (channel == NULL || *channel == '\0')
        return RP_EINVAL;
    /* Identifiers longer than NAMEDATALEN-1 would be truncated by the
     * server and then never match a NOTIFY. */
    if (strlen(channel) > 63)
        return RP_EINVAL;
    char *copy = strdup(channel);
    if (copy == NULL)
        return RP_ENOMEM;
    char **nl = realloc(pg->listens, (pg->nlistens + 1) * sizeof(*nl));
    if (nl == NULL) {
        free(copy);
        return RP_ENOMEM;
    }
    pg->listens = nl;
    pg->listens[pg->nlistens++] = copy;
    if (pg->state == PG_UP) {
        pg_query_t *q = pg_listen_query(pg, copy);
        if (q == NULL)
            return RP_ENOMEM; /* remembered: issued on the next connect */
        list_push(&pg->waiting, q);
        pg_kick(pg);
    }
    return 0;
}

void rp_pg_close(rp_pg_t *pg, void (*close_cb)(void *data), void *data)
{
    if (pg->state >= PG_CLOSING)
        return;
    pg_set_state(pg, PG_CLOSING);
    pg->close_cb = close_cb;
    pg->close_data = data;
    uv_timer_stop(&pg->timer);
    uv_timer_stop(&pg->qtimer);
    uv_prepare_stop(&pg->sender);
    if (pg->resolving) {
        /* Its callback still runs (with UV_ECANCELED if it had not
         * started) and frees it; the object waits for it. */
        uv_cancel((uv_req_t *)pg->resolving);
        pg->resolving = NULL;
    }
    /* Stop watching the socket before any callback runs; the PGconn is
     * finished once the poll handle is closed. */
    PGconn *conn = pg->conn;
    pg->conn = NULL;
    pg_poll_drop(pg, conn);
    pg_query_t *q;
    while ((q = list_pop(&pg->inflight)) != NULL) {
        pg_answer_error(pg, q, RP_ECANCELED, "connection closed");
        pg_free_query(q);
    }
    while ((q = list_pop(&pg->waiting)) != NULL) {
        pg_answer_error(pg, q, RP_ECANCELED, "connection closed");
        pg_free_query(q);
    }
    uv_close((uv_handle_t *)&pg->timer, handle_closed);
    uv_close((uv_handle_t *)&pg->qtimer, handle_closed);
    uv_close((uv_handle_t *)&pg->sender, handle_closed);
}

/* ------------------------------------------------------------ results */

int rp_pg_res_error(const rp_pg_res_t *res)
{
    return res->error;
}

const char *rp_pg_res_sqlstate(const rp_pg_res_t *res)
{
    return res->sqlstate ? res->sqlstate : "";
}

const char *rp_pg_res_message(const rp_pg_res_t *res)
{
    return res->message ? res->message : "";
}

int rp_pg_res_ntuples(const rp_pg_res_t *res)
{
    return res->res && res->error == 0 ? PQntuples(res->res) : 0;
}

int rp_pg_res_nfields(const rp_pg_res_t *res)
{
    return res->res && res->error == 0 ? PQnfields(res->res) : 0;
}

static int res_in_range(const rp_pg_res_t *res, int row, int col)
{
    return res->res && res->error == 0 && row >= 0 && col >= 0 && row < PQntuples(res->res) &&
           col < PQnfields(res->res);
}

const char *rp_pg_res_value(const rp_pg_res_t *res, int row, int col)
{
    return res_in_range(res, row, col) ? PQgetvalue(res->res, row, col) : "";
}

int rp_pg_res_length(const rp_pg_res_t *res, int row, int col)
{
    return res_in_range(res, row, col) ? PQgetlength(res->res, row, col) : 0;
}

int rp_pg_res_isnull(const rp_pg_res_t *res, int row, int col)
{
    return res_in_range(res, row, col) ? PQgetisnull(res->res, row, col) : 1;
}

int rp_pg_res_column(const rp_pg_res_t *res, const char *name)
{
    return res->res && res->error == 0 ? PQfnumber(res->res, name) : -1;
}
