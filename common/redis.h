/*
 * redis.h: one asynchronous Redis connection (hiredis 0.14) driven by a
 * libuv loop, with our own adapter, connect and per-command timers, and
 * reconnection with backoff (RECIPES.md section 3 says why Debian's
 * adapters/libuv.h cannot be used).
 *
 * The URL is redis://[:password@]host[:port][/db] (or user:password@,
 * Redis 6 ACL); AUTH and SELECT are sent on every (re)connect before any
 * queued command.  Commands submitted while disconnected wait (up to their
 * deadline) and are sent after reconnecting; commands in flight when the
 * connection drops fail with RP_EIO.  A blocking command (XREADGROUP BLOCK)
 * needs its own rp_redis_t, with a timeout longer than its BLOCK time.
 * Callers never see hiredis types.
 *
 * Callback contract: rp_redis_command returns 0 and calls cb exactly once
 * later (never from inside rp_redis_command), or returns a negative RP_E*
 * code and never calls cb.  The reply is valid only until cb returns.
 * Callbacks may call rp_redis_command and rp_redis_close.
 *
 * Failures: on_disconnect(data, why) runs whenever an established
 * connection is lost AND whenever a connection attempt fails, before the
 * next attempt is scheduled, so a program starting up can tell why it is
 * not connected.  why is one line: "authentication refused: WRONGPASS ..."
 * (AUTH refused) or "authentication required (no password given): NOAUTH
 * ..." (the server wants a password) for credentials, "SELECT <db>
 * refused: ..." for a bad database index, otherwise the transport error
 * ("Connection refused", "connect timed out", "could not resolve host
 * ...").  A refused AUTH is logged once (redis.auth_failed) until a
 * connection succeeds; the connection keeps retrying with backoff.
 */
#ifndef RP_REDIS_H
#define RP_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "err.h"

typedef struct rp_redis rp_redis_t;
typedef struct rp_redis_reply rp_redis_reply_t;

typedef struct rp_redis_opts {
    long connect_timeout_ms;        /* per attempt; 0 = 5000 */
    long command_timeout_ms;        /* default per-command deadline; 0 = 10000 */
    long reconnect_min_ms;          /* 0 = 100 */
    long reconnect_max_ms;          /* 0 = 5000 */
    void (*on_connect)(void *data); /* after AUTH/SELECT succeed */
    void (*on_disconnect)(void *data, const char *why);
    void *data;
} rp_redis_opts_t;

typedef enum {
    RP_REDIS_NIL = 0,
    RP_REDIS_STRING, /* bulk or simple string */
    RP_REDIS_INTEGER,
    RP_REDIS_ARRAY,
    RP_REDIS_STATUS,
    RP_REDIS_ERROR, /* the server answered with an error: see rp_redis_reply_str */
} rp_redis_type_t;

typedef void (*rp_redis_cb)(void *data, int err, const rp_redis_reply_t *reply);

/* Parse url and create the connection object (not yet connecting).
 * Returns owned (close with rp_redis_close) or NULL with err naming what is
 * wrong with the URL (never printing the password). */
rp_redis_t *rp_redis_new(uv_loop_t *loop, const char *url, const rp_redis_opts_t *opts,
                         rp_err_t *err);
/* Start connecting (and keep reconnecting with backoff).  Returns 0, or
 * RP_ECLOSED after rp_redis_close. */
int rp_redis_start(rp_redis_t *r);
/* True when connected, authenticated and the database selected. */
int rp_redis_is_up(const rp_redis_t *r);
/* Number of commands submitted whose callback has not run. */
size_t rp_redis_pending(const rp_redis_t *r);
/* Why the last attempt or connection failed ("" when none did); the same
 * text on_disconnect received.  Borrowed, valid until the next failure. */
const char *rp_redis_last_error(const rp_redis_t *r);

/* Send a command given as argc binary-safe arguments (copied; argvlen may
 * be NULL for NUL-terminated arguments).  err in the callback: 0 (reply may
 * still be RP_REDIS_ERROR), RP_EIO (the connection dropped while the
 * command was in flight: it may or may not have run), RP_ETIMEDOUT (its
 * deadline passed; if it was in flight the connection is dropped and
 * re-made, and the others in flight get RP_EIO), RP_ECANCELED (closing).
 * reply is NULL whenever err != 0.  timeout_ms 0 uses
 * opts.command_timeout_ms; the deadline runs from this call, so it
 * includes any wait for a connection.  Commands are sent in the order
 * submitted, pipelined (everything submitted in one loop turn goes out in
 * one write).  Returns 0, RP_EINVAL, RP_ENOMEM or RP_ECLOSED. */
int rp_redis_command(rp_redis_t *r, int argc, const char *const *argv, const size_t *argvlen,
                     long timeout_ms, rp_redis_cb cb, void *data);

/* Fail every pending command with RP_ECANCELED (callbacks run), disconnect
 * and close the handles; close_cb (may be NULL) runs once all is freed. */
void rp_redis_close(rp_redis_t *r, void (*close_cb)(void *data), void *data);

/* --- reply accessors (valid during the callback only) --- */
rp_redis_type_t rp_redis_reply_type(const rp_redis_reply_t *rep);
/* String, status or error text (NUL-terminated; len may be NULL); NULL otherwise. */
const char *rp_redis_reply_str(const rp_redis_reply_t *rep, size_t *len);
long long rp_redis_reply_int(const rp_redis_reply_t *rep);
size_t rp_redis_reply_len(const rp_redis_reply_t *rep); /* array length, 0 otherwise */
const rp_redis_reply_t *rp_redis_reply_at(const rp_redis_reply_t *rep,
                                          size_t i); /* NULL out of range */

#endif
