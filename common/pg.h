/*
 * pg.h: one asynchronous Postgres connection (libpq in non-blocking pipeline
 * mode) driven by a libuv loop.
 *
 * Queries are sent with parameters (never string concatenation) as soon as
 * they are submitted: several can be in flight on one connection, each
 * followed by its own sync point, so each is its own implicit transaction
 * and an error in one does not abort the others.  Results come back in
 * order.  The connection reconnects by itself with backoff; queries
 * submitted while it is down wait (up to their deadline) and are sent once
 * it is up; queries in flight when it drops fail with RP_EIO (the caller
 * decides whether to retry).  LISTEN channels are re-issued on every
 * reconnect, and on_connect runs after that so the owner can rescan.
 * Callers never see libpq types.
 *
 * Callback contract: rp_pg_query returns 0 and calls cb exactly once later
 * (never from inside rp_pg_query), or returns a negative RP_E* code and never
 * calls cb.  The result is valid only until cb returns: copy what you keep.
 */
#ifndef RP_PG_H
#define RP_PG_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "err.h"

typedef struct rp_pg rp_pg_t;
typedef struct rp_pg_res rp_pg_res_t;

typedef struct rp_pg_opts {
    long connect_timeout_ms; /* per attempt; 0 = 10000 */
    long query_timeout_ms;   /* default per-query deadline (also sent as statement_timeout); 0 = none */
    long reconnect_min_ms;   /* first reconnect delay; 0 = 100 */
    long reconnect_max_ms;   /* cap; 0 = 5000 */
    const char *application_name; /* copied; NULL = "ragpool" */
    /* Called after each successful (re)connect, after LISTENs are re-issued. */
    void (*on_connect)(void *data);
    /* Called when the connection is lost (before reconnecting). */
    void (*on_disconnect)(void *data, const char *why);
    /* Called for each NOTIFY on a channel this connection LISTENs to;
     * payload is "" when none.  Valid only during the call. */
    void (*on_notify)(void *data, const char *channel, const char *payload);
    void *data;
} rp_pg_opts_t;

typedef void (*rp_pg_cb)(void *data, const rp_pg_res_t *res);

/* Create the connection object; conninfo is a URL or key=value string
 * (copied).  Returns owned (close with rp_pg_close) or NULL with err filled
 * (e.g. an unparsable conninfo). */
rp_pg_t *rp_pg_new(uv_loop_t *loop, const char *conninfo, const rp_pg_opts_t *opts, rp_err_t *err);

/* Start connecting (and keep reconnecting).  Returns 0. */
int rp_pg_start(rp_pg_t *pg);

/* True when connected and ready. */
int rp_pg_is_up(const rp_pg_t *pg);

/* Number of queries submitted and not yet completed. */
size_t rp_pg_pending(const rp_pg_t *pg);

/* Of n connections (n >= 1), the one with the fewest queries waiting: how a
 * program spreads its queries over a few pipelined connections. */
rp_pg_t *rp_pg_pick(rp_pg_t *const *conns, size_t n);

/* Submit sql with nparams text parameters (params[i] may be NULL for SQL
 * NULL; copied).  timeout_ms 0 uses opts.query_timeout_ms. */
int rp_pg_query(rp_pg_t *pg, const char *sql, int nparams, const char *const *params,
                long timeout_ms, rp_pg_cb cb, void *data);

/* Like rp_pg_query, as the named prepared statement name (1..63 bytes,
 * unique per program for this sql): the first use on a session sends the
 * Parse in the same pipeline, later uses only Bind/Execute, so the server
 * keeps the plan.  Sessions forget their statements on reconnect; they are
 * prepared again on first use. */
int rp_pg_query_prepared(rp_pg_t *pg, const char *name, const char *sql, int nparams,
                         const char *const *params, long timeout_ms, rp_pg_cb cb, void *data);

/* LISTEN to channel now and after every reconnect.  Returns RP_EINVAL for an
 * empty channel or one longer than 63 bytes (the server would truncate it). */
int rp_pg_listen(rp_pg_t *pg, const char *channel);

/* Fail every pending query with RP_ECANCELED (their callbacks run), finish
 * the connection and close the libuv handles; close_cb (may be NULL) runs
 * once everything is freed. */
void rp_pg_close(rp_pg_t *pg, void (*close_cb)(void *data), void *data);

/* --- result accessors (valid during the callback only) --- */

/* 0 when the statement succeeded; otherwise RP_EDB (the server reported an
 * error: see sqlstate), RP_EIO (connection lost, including SQLSTATE class 08
 * and 57P01-57P03), RP_ETIMEDOUT (the deadline, or statement_timeout:
 * SQLSTATE 57014) or RP_ECANCELED.  A per-query timeout_ms longer than
 * opts.query_timeout_ms does not help: the server stops the statement at
 * query_timeout_ms. */
int rp_pg_res_error(const rp_pg_res_t *res);
const char *rp_pg_res_sqlstate(const rp_pg_res_t *res); /* "" when none */
const char *rp_pg_res_message(const rp_pg_res_t *res);  /* "" when none */
int rp_pg_res_ntuples(const rp_pg_res_t *res);
int rp_pg_res_nfields(const rp_pg_res_t *res);
/* Text value; "" for NULL (check rp_pg_res_isnull). */
const char *rp_pg_res_value(const rp_pg_res_t *res, int row, int col);
int rp_pg_res_length(const rp_pg_res_t *res, int row, int col);
int rp_pg_res_isnull(const rp_pg_res_t *res, int row, int col);
/* Column number by name, -1 when absent. */
int rp_pg_res_column(const rp_pg_res_t *res, const char *name);

#endif
