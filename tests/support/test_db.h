/*
 * test_db.h: the stack's environment, a fresh database per test, and
 * blocking libpq helpers for integration tests.
 *
 * Integration tests run against the stack that ./dev test starts
 * (deploy/local/stack.sh): its DIR/env is sourced, so RP_TEST_PG_URL (the
 * admin database), OPENAI_BASE_URL, OPENAI_API_KEY and RAGPOOL_* are set.
 * Without it a test program prints SKIP and exits 77, which ctest reports as
 * skipped.  Each test gets its own database (created from a per-program
 * template that is migrated and seeded once), dropped when the test ends or,
 * failing that, when the program exits; so tests may run in parallel.
 *
 * The SQL helpers take printf-style text and fail the current cmocka test
 * on any error: test SQL is written by the test, never built from outside
 * input.  Returned strings are owned by the caller (free with free()).
 */
#ifndef RP_TEST_DB_H
#define RP_TEST_DB_H

#include <libpq-fe.h>

/* Exit 77 (ctest: skipped) with "SKIP: <what> (run through ./dev test)"
 * when the stack's environment is absent. */
void rp_test_require_stack(const char *what);

/* getenv(name), failing the test when unset or empty.  Borrowed. */
const char *rp_test_env(const char *name);

/* Path of a built program: the compile-time path (RP_WORKER_BIN, ...), which
 * the environment variable of the same name overrides.  which is
 * "RP_WORKER_BIN", "RP_DEVMODEL_BIN" or "RP_CLI_BIN".  Fails the test when
 * the program was not built.  Borrowed. */
const char *rp_test_bin(const char *which);

/* A file of the source tree: RP_SOURCE_DIR "/" rel, as a new string. */
char *rp_test_source_path(const char *rel);

/* Create an empty database named after prefix (made unique) and return its
 * URL (owned).  It is dropped by rp_test_db_drop or at exit. */
char *rp_test_db_create(const char *prefix);

/* Create a database that is migrated (`ragpool migrate`) and holds the
 * knowledge base (`ragpool load-knowledge`) and the demo seed: cloned from a
 * template that the first call of the program prepares.  Returns its URL
 * (owned); dropped by rp_test_db_drop or at exit. */
char *rp_test_db_create_ready(const char *prefix);

/* Migrate and seed the database at url (what create_ready does once). */
void rp_test_db_setup(const char *url);

/* Drop the database at url (terminating its sessions) and forget it. */
void rp_test_db_drop(const char *url);

/* Connect (blocking) or fail the test.  Returns owned (PQfinish). */
PGconn *rp_test_pg_connect(const char *url);

/* Run one or more statements; fail the test on error. */
void rp_test_sql_exec(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run statements; return 0, or -1 with *err (may be NULL) set to the
 * server's message (owned).  Never fails the test. */
int rp_test_sql_try(PGconn *c, char **err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The first column of the first row as an integer; fails the test when
 * there is no row or the value is NULL. */
long long rp_test_sql_int(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The first column of the first row as text (owned), or NULL when there
 * is no row or the value is NULL. */
char *rp_test_sql_text(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run a query and return its result (owned: PQclear); fails the test
 * unless it returned rows (PGRES_TUPLES_OK) or a command status. */
PGresult *rp_test_sql_query(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run the query every 100 ms until its first value is true ('t'), for at
 * most timeout_ms.  Returns 1 when it became true, 0 at the deadline. */
int rp_test_sql_wait(PGconn *c, long timeout_ms, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* s as an SQL literal ('...' with quotes doubled), owned. */
char *rp_test_sql_literal(PGconn *c, const char *s);

#endif
