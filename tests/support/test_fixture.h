/*
 * test_fixture.h: one integration test's world: a fresh migrated and seeded
 * database, a private development model server, and the workers the test
 * starts against them.
 *
 * Usage, with cmocka (the teardown runs even when an assertion fails):
 *
 *     static int teardown(void **state) { rp_test_ctx_free(*state); return 0; }
 *     static void test_x(void **state) {
 *         static const char *const dm[] = {"--latency-ms", "200", NULL};
 *         rp_test_ctx_t *t = rp_test_ctx_new("x", dm);
 *         *state = t;
 *         rp_test_worker_start(t, NULL);
 *         ...
 *         rp_test_ctx_pass(t);
 *     }
 *
 * rp_test_ctx_free prints the logs of every process the test started
 * unless rp_test_ctx_pass was called, kills them all, and drops the
 * database.  Workers get the stack's environment plus: DATABASE_URL of the
 * test database, OPENAI_BASE_URL of the private model server, quick retries
 * (RAGPOOL_BACKOFF_BASE_MS=100, RAGPOOL_BACKOFF_MAX_MS=1000) and
 * RAGPOOL_POLL_MS=500; the test's overrides come last and win.
 *
 * The queue backend comes from RP_TEST_QUEUE ("postgres", the default, or
 * "redis"): with redis, workers (and the CLI, through t->queue_env) also get
 * RAGPOOL_QUEUE=redis, REDIS_URL and a stream of the test's own
 * (RAGPOOL_REDIS_STREAM=rp-test:<name>:<pid>:<n>), so tests of one program
 * or of several run in parallel on one Redis; the stream, its delayed set,
 * its dead-letter stream and its idempotency keys are deleted by
 * rp_test_ctx_free.  test_queue.h has the backend-neutral helpers
 * (enqueue, dead letters, queue counts).
 */
#ifndef RP_TEST_FIXTURE_H
#define RP_TEST_FIXTURE_H

#include <jansson.h>
#include <libpq-fe.h>

#include "test_db.h"
#include "test_proc.h"

#define RP_TEST_MAX_PROCS 16

/* Default deadline for a test's waits, in milliseconds. */
#define RP_TEST_WAIT_MS 60000

typedef struct rp_test_ctx {
    char *name;
    char *db_url;                             /* the test's database */
    PGconn *db;                               /* a connection to it, for assertions */
    rp_test_proc_t *devmodel;                 /* the private model server */
    char *devmodel_url;                       /* http://127.0.0.1:PORT */
    char *openai_base_url;                    /* devmodel_url + "/v1" */
    rp_test_proc_t *procs[RP_TEST_MAX_PROCS]; /* everything started, for logs and clean-up */
    int nprocs;
    int nworkers;
    int passed;
    int dumped;                  /* logs already printed */
    const char *queue;           /* "postgres" or "redis" (static) */
    char *stream;                /* redis: the test's stream (RAGPOOL_REDIS_STREAM) */
    char *redis_url;             /* redis: REDIS_URL for workers and helpers */
    struct redisContext *rh;     /* redis: helper connection (test_queue.c), or NULL */
    char *queue_env_buf[3];      /* owned strings behind queue_env */
    const char *queue_env[4];    /* NULL-terminated env overrides naming the queue */
} rp_test_ctx_t;

/* Require the stack (exit 77 otherwise), create the database and start a
 * private model server with the extra flags devmodel_args (NULL-terminated,
 * may be NULL).  Returns owned (rp_test_ctx_free); fails the test on error. */
rp_test_ctx_t *rp_test_ctx_new(const char *name, const char *const *devmodel_args);

/* Point t's workers and helpers at another Redis (e.g. a private
 * redis-server of the test); url is copied.  Only with the redis queue. */
void rp_test_ctx_set_redis_url(rp_test_ctx_t *t, const char *url);

/* Mark the test as passed (its logs are then not printed). */
void rp_test_ctx_pass(rp_test_ctx_t *t);

/* Dump logs unless passed, stop every process, drop the database, free.
 * t may be NULL. */
void rp_test_ctx_free(rp_test_ctx_t *t);

/* Start a worker against the test's database and model server with env
 * overrides (NULL-terminated "NAME=value"/"NAME", may be NULL) and wait for
 * its worker.ready line.  Returns a process owned by t. */
rp_test_proc_t *rp_test_worker_start(rp_test_ctx_t *t, const char *const *env);

/* Start a worker without waiting for it to be ready (for start-up errors).
 * Returns a process owned by t. */
rp_test_proc_t *rp_test_worker_spawn(rp_test_ctx_t *t, const char *const *env);

/* Add a process started by the test to t (for logs and clean-up). */
void rp_test_ctx_adopt(rp_test_ctx_t *t, rp_test_proc_t *p);

/* Start a development model server with extra flags; wait until /healthz
 * answers.  *url_out receives "http://127.0.0.1:PORT" (owned).  Returns
 * owned (rp_test_proc_free). */
rp_test_proc_t *rp_test_devmodel_start(const char *name, const char *const *args, char **url_out);

/* Blocking HTTP request (method "GET"/"POST"; body may be NULL) with a 10 s
 * deadline.  Returns the body (owned) and sets *status (0 when no answer). */
char *rp_test_http(const char *method, const char *url, const char *body, long *status);

/* GET {devmodel}/_admin/stats as JSON (owned: json_decref); fails the test
 * when it is not a JSON object. */
json_t *rp_test_devmodel_stats(rp_test_ctx_t *t);

/* Look a number up in a JSON document by a dotted path ("chat.faults.429");
 * returns -1 when absent or not a number. */
double rp_test_json_number(const json_t *doc, const char *path);

/* Print every log of t to stderr now (e.g. before a failing assertion). */
void rp_test_ctx_dump(rp_test_ctx_t *t);

/* Assert with the logs of t printed on failure. */
#define rp_test_assert(t, cond)                                                                    \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            rp_test_ctx_dump(t);                                                                   \
            fail_msg("%s:%d: assertion failed: %s", __FILE__, __LINE__, #cond);                    \
        }                                                                                          \
    } while (0)

#endif
