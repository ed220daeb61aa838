/*
 * test_queue.h: backend-neutral queue helpers for integration tests, so one
 * test definition runs against the Postgres queue and the Redis queue.
 *
 * The backend is chosen by RP_TEST_QUEUE ("postgres", the default, or
 * "redis"; ctest registers each pipeline test once per backend) and lives
 * in the test's context (test_fixture.h: t->queue, t->stream).  The
 * helpers enqueue the way an app would on each backend -- Postgres:
 * ragpool.enqueue / enqueue_chat; Redis: an XADD of the msgpack envelope of
 * docs/REDIS.md on the test's own stream -- and read what an operator
 * reads: dead letters (Postgres: ragpool.dead_jobs; Redis: XRANGE
 * <stream>:dead) and the jobs still queued, delayed or in flight
 * (Postgres: ragpool.jobs states; Redis: XLEN, XPENDING, ZCARD
 * <stream>:delayed).  Answers are in Postgres either way (t->db).
 *
 * Redis assertions use a blocking hiredis connection (t->rh), made on first
 * use.  Like the SQL helpers, every helper fails the current cmocka test on
 * an error; returned strings are owned by the caller (free with free()).
 * Also here: a private redis-server for tests that must stop and restart
 * one (appendonly yes, noeviction, on a free loopback port).
 */
#ifndef RP_TEST_QUEUE_H
#define RP_TEST_QUEUE_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "test_fixture.h"

/* RP_TEST_QUEUE: "postgres" (also when unset or empty) or "redis"; any
 * other value fails the test.  Static string. */
const char *rp_test_queue_name(void);

/* True when RP_TEST_QUEUE selects Redis. */
int rp_test_queue_is_redis(void);

/* One chat job.  user_id, message are required; the rest may be 0/NULL:
 * options_json (a JSON object's text, default {}), max_attempts (0 = the
 * queue's default, 5), job_id (a uuid; NULL = a new one). */
typedef struct rp_test_job {
    const char *user_id;
    const char *message;
    const char *options_json;
    int max_attempts;
    const char *job_id;
} rp_test_job_t;

/* Enqueue one chat job on t's queue; returns its id (owned). */
char *rp_test_enqueue(rp_test_ctx_t *t, const rp_test_job_t *job);

/* Shorthand: enqueue message for user_id with the defaults; id owned. */
char *rp_test_ask(rp_test_ctx_t *t, const char *user_id, const char *message);

/* Enqueue one chat job per row of table (in t->db), which must have the
 * columns job_id uuid, user_id text and message text: in one statement on
 * Postgres, as pipelined XADDs on Redis. */
void rp_test_enqueue_table(rp_test_ctx_t *t, const char *table);

/* Enqueue a chat job whose payload is payload_json as it stands (valid
 * JSON, not necessarily a valid payload: poison).  Postgres:
 * ragpool.enqueue('chat', payload); Redis: an envelope whose payload is the
 * JSON converted to msgpack.  Returns the job id (owned). */
char *rp_test_enqueue_payload(rp_test_ctx_t *t, const char *payload_json);

/* Redis only: XADD an entry whose job field holds bytes[0..len) (not an
 * envelope); bytes NULL adds an entry without a job field.  Returns the
 * entry id (owned). */
char *rp_test_redis_add_raw(rp_test_ctx_t *t, const char *bytes, size_t len);

/* Dead letters with this reason (NULL: all). */
long long rp_test_dead_count(rp_test_ctx_t *t, const char *reason);

/* The dead letter of job_id: returns 1 and sets what is asked for (owned
 * strings; pointers may be NULL), or 0 when there is none.  attempts is the
 * attempts the job had made (Postgres dead_jobs.attempts; Redis the dead
 * letter's attempts field). */
int rp_test_dead_get(rp_test_ctx_t *t, const char *job_id, char **reason, char **error,
                     int *attempts);

/* Jobs still in the queue. */
typedef struct rp_test_queue_counts {
    long long queued;  /* due and not claimed (Postgres: state queued, due; Redis: XLEN - pending) */
    long long delayed; /* waiting for a retry (Postgres: queued, not yet due; Redis: ZCARD delayed) */
    long long running; /* claimed, under a lease (Postgres: state running; Redis: XPENDING) */
} rp_test_queue_counts_t;

rp_test_queue_counts_t rp_test_queue_counts(rp_test_ctx_t *t);

/* queued + delayed + running. */
long long rp_test_queue_total(rp_test_ctx_t *t);

/* Wait until at least n jobs are in flight (running); 1 when reached, 0 at
 * the deadline. */
int rp_test_wait_running(rp_test_ctx_t *t, long timeout_ms, long long n);

/* Jobs queued, not held by anyone, with no attempt counted (what a drain
 * release leaves behind).  Redis: entries none of which is pending whose
 * envelope says attempt 0 (0 when any entry is pending). */
long long rp_test_queued_fresh(rp_test_ctx_t *t);

/* The helper connection to t's Redis (made on first use, SELECTing the
 * URL's database).  Borrowed. */
redisContext *rp_test_redis(rp_test_ctx_t *t);

/* Run a command on the helper connection; fails the test on a transport
 * error (not on an error reply).  Returns owned (freeReplyObject). */
redisReply *rp_test_redis_cmd(rp_test_ctx_t *t, const char *fmt, ...);

/* Close the helper connection (the next use reconnects). */
void rp_test_redis_disconnect(rp_test_ctx_t *t);

/* Delete t's stream, its delayed set, its dead letters and its idempotency
 * keys; errors are ignored (the teardown calls it). */
void rp_test_redis_cleanup(rp_test_ctx_t *t);

/* A private redis-server: appendonly yes, noeviction, no RDB snapshots,
 * bound to 127.0.0.1 on a free port, its files in a directory of the
 * test's temporary directory. */
typedef struct rp_test_redis_server {
    int port;
    char *dir;             /* owned */
    char *url;             /* redis://127.0.0.1:PORT/0, owned */
    rp_test_proc_t *proc;  /* the running server, or NULL when stopped */
} rp_test_redis_server_t;

/* Start a server on a free port; waits until it answers PING.  Returns
 * owned (rp_test_redis_server_free); the process is adopted by t. */
rp_test_redis_server_t *rp_test_redis_server_start(rp_test_ctx_t *t);

/* SHUTDOWN (the AOF is flushed) and wait for the process to exit. */
void rp_test_redis_server_shutdown(rp_test_redis_server_t *s);

/* Start it again on the same port and directory (the AOF is reloaded);
 * waits until it answers PING. */
void rp_test_redis_server_restart(rp_test_ctx_t *t, rp_test_redis_server_t *s);

/* Free s (its process, if running, is killed with t's). */
void rp_test_redis_server_free(rp_test_redis_server_t *s);

/* A new random (version 4) uuid, lower-case, owned. */
char *rp_test_uuid(void);

#endif
