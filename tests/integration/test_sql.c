/*
 * test_sql.c: the sql/ migrations and the queue functions of
 * docs/CONTRACTS.md, against a real Postgres 15 (no pgvector: the real[]
 * fallback).
 *
 * Needs RP_TEST_PG_URL, a superuser URL to a server started with
 * wal_level=logical (./dev test provides it); without it the test skips
 * (exit 77).  It creates its own databases (rp_test_sql_<pid>, and
 * rp_test_sql_<pid>_big for bigint user ids), migrates them with the CLI
 * binary (twice: the second run must apply nothing), checks every queue
 * rule with plain libpq, and drops them at the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#ifndef RP_CLI_BIN
#define RP_CLI_BIN "ragpool"
#endif

#define USER_A "00000000-0000-4000-8000-00000000000a"
#define USER_B "00000000-0000-4000-8000-00000000000b"

static const char *admin_url;
static char db_main[64], db_big[64];
static PGconn *conn; /* superuser connection to db_main */

/* ---- helpers ------------------------------------------------------------ */

static PGconn *connect_db(const char *dbname)
{
    const char *const keys[] = {"dbname", "dbname", NULL};
    const char *const vals[] = {admin_url, dbname, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect %s: %s", dbname, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    return c;
}

/* Runs sql (with text params) and fails the test unless it succeeds. */
static PGresult *q(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *res = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        fail_msg("query failed: %s\n  %s", PQerrorMessage(c), sql);
    }
    return res;
}

/* First value of sql's result as a new string (free it); NULL for SQL NULL. */
static char *qv(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *res = q(c, sql, n, params);
    char *v = NULL;
    if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
        v = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

static void assert_qv(PGconn *c, const char *want, const char *sql, int n,
                      const char *const *params)
{
    char *v = qv(c, sql, n, params);
    if (v == NULL || strcmp(v, want) != 0) {
        char got[256];
        snprintf(got, sizeof(got), "%s", v ? v : "NULL");
        free(v); /* fail_msg does not return */
        fail_msg("want '%s', got '%s' from: %s", want, got, sql);
    }
    free(v);
}

/* The SQLSTATE sql fails with, "" when it succeeds (copied into out). */
static void sqlstate_of(PGconn *c, const char *sql, int n, const char *const *params, char out[6])
{
    PGresult *res = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    snprintf(out, 6, "%s", s ? s : "");
    PQclear(res);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A key=value conninfo for dbname, built from what libpq actually used. */
static char *conninfo_for(const char *dbname)
{
    PGconn *c = connect_db(dbname);
    if (c == NULL)
        return NULL;
    PQconninfoOption *opts = PQconninfo(c);
    size_t cap = 4096, len = 0;
    char *s = calloc(1, cap);
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL && s != NULL; o++) {
        if (o->val == NULL || o->val[0] == '\0')
            continue;
        len += (size_t)snprintf(s + len, cap - len, "%s='", o->keyword);
        for (const char *p = o->val; *p && len + 4 < cap; p++) {
            if (*p == '\'' || *p == '\\')
                s[len++] = '\\';
            s[len++] = *p;
        }
        len += (size_t)snprintf(s + len, cap - len, "' ");
    }
    PQconninfoFree(opts);
    PQfinish(c);
    return s;
}

/* Runs the CLI with DATABASE_URL pointing at dbname; returns its exit status
 * and its output (stdout and stderr) in out. */
static int run_cli(const char *dbname, const char *args, char *out, size_t outsz)
{
    char *ci = conninfo_for(dbname);
    if (ci == NULL)
        return -1;
    setenv("DATABASE_URL", ci, 1);
    free(ci);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1", RP_CLI_BIN, args);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    size_t len = fread(out, 1, outsz - 1, p);
    out[len] = '\0';
    int st = pclose(p);
    unsetenv("DATABASE_URL");
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void exec_admin(const char *sql)
{
    PGconn *a = connect_db("postgres");
    assert_non_null(a);
    PQclear(q(a, sql, 0, NULL));
    PQfinish(a);
}

static void reset_queue(void)
{
    PQclear(q(conn, "DELETE FROM ragpool.jobs", 0, NULL));
    PQclear(q(conn, "DELETE FROM ragpool.dead_jobs", 0, NULL));
    PQclear(q(conn, "DELETE FROM public.conversations", 0, NULL));
}

/* Claims up to n jobs; returns the result (PQclear it). */
static PGresult *claim(PGconn *c, int n, int lease_ms)
{
    char ns[16], ls[16];
    snprintf(ns, sizeof(ns), "%d", n);
    snprintf(ls, sizeof(ls), "%d", lease_ms);
    const char *p[] = {ns, ls};
    return q(c,
             "SELECT id, lease_id, attempts, payload::text FROM ragpool.claim_jobs('test', "
             "$1::int, $2::int)",
             2, p);
}

static char *enqueue_chat(PGconn *c, const char *user, const char *msg)
{
    const char *p[] = {user, msg};
    return qv(c, "SELECT ragpool.enqueue_chat($1, $2)", 2, p);
}

/* complete_jobs for one job; returns the outcome (free it). */
static char *complete_one(PGconn *c, const char *id, const char *lease)
{
    const char *p[] = {id, lease};
    return qv(c,
              "SELECT outcome FROM ragpool.complete_jobs(jsonb_build_array(jsonb_build_object("
              "'job_id', $1::text, 'lease_id', $2::text, 'response', 'an answer', "
              "'context_used', '[1,2]'::jsonb, 'model_version', 'test-model', 'status', 'done', "
              "'prompt_tokens', 11, 'completion_tokens', 7, "
              "'timings', '{\"queue_ms\":1,\"total_ms\":9}'::jsonb)))",
              2, p);
}

static char *fail_one(PGconn *c, const char *id, const char *lease, const char *err,
                      const char *delay_ms, const char *permanent)
{
    const char *p[] = {id, lease, err, delay_ms, permanent};
    return qv(c,
              "SELECT ragpool.fail_job($1::uuid, $2::uuid, $3, $4::bigint, $5::boolean, "
              "'Sorry, no answer this time.')",
              5, p);
}

/* ---- setup -------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    snprintf(db_main, sizeof(db_main), "rp_test_sql_%d", (int)getpid());
    snprintf(db_big, sizeof(db_big), "rp_test_sql_%d_big", (int)getpid());
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", db_main);
    exec_admin(sql);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db_main);
    exec_admin(sql);

    char out[8192];
    int rc = run_cli(db_main, "migrate", out, sizeof(out));
    if (rc != 0 || strstr(out, "applied 0001") == NULL) {
        fprintf(stderr, "first migrate failed (%d):\n%s", rc, out);
        return -1;
    }
    rc = run_cli(db_main, "migrate", out, sizeof(out));
    if (rc != 0 || strstr(out, "up to date") == NULL || strstr(out, "applied") != NULL) {
        fprintf(stderr, "second migrate was not a no-op (%d):\n%s", rc, out);
        return -1;
    }
    conn = connect_db(db_main);
    return conn ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (conn != NULL) {
        PQclear(PQexec(conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                             "WHERE slot_name LIKE 'rp_test_sql_%'"));
        PQfinish(conn);
    }
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", db_main);
    exec_admin(sql);
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", db_big);
    exec_admin(sql);
    return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_schema(void **state)
{
    (void)state;
    assert_qv(conn, "real[]", "SELECT ragpool.match_arg_type('match_finance_knowledge')", 0, NULL);
    assert_qv(conn, "real[]", "SELECT ragpool.match_arg_type('public.match_finance_knowledge')", 0,
              NULL);
    /* One row per migration file in sql/. */
    glob_t g;
    assert_int_equal(glob(RP_SOURCE_DIR "/sql/[0-9]*.sql", 0, NULL, &g), 0);
    char nfiles[16];
    snprintf(nfiles, sizeof(nfiles), "%zu", g.gl_pathc);
    globfree(&g);
    assert_qv(conn, nfiles, "SELECT count(*) FROM ragpool.schema_migrations", 0, NULL);
    assert_qv(conn, "uuid", "SELECT value FROM ragpool.settings WHERE key = 'user_id_type'", 0,
              NULL);
    assert_qv(conn, "t",
              "SELECT relrowsecurity AND relreplident = 'f' FROM pg_class "
              "WHERE oid = 'public.conversations'::regclass",
              0, NULL);
    assert_qv(conn, "1",
              "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'supabase_realtime' "
              "AND tablename = 'conversations'",
              0, NULL);
    char st[6];
    sqlstate_of(conn, "SELECT ragpool.match_arg_type('no_such_function')", 0, NULL, st);
    assert_string_equal(st, "42883");
}

static void test_round_trip(void **state)
{
    (void)state;
    reset_queue();
    char *id = enqueue_chat(conn, USER_A, "What is TON?");
    assert_non_null(id);
    /* The same job id again is the same job. */
    const char *p[] = {USER_A, id};
    assert_qv(conn, id, "SELECT ragpool.enqueue_chat($1, 'again', '{}', $2::uuid)", 2, p);
    assert_qv(conn, "1", "SELECT count(*) FROM ragpool.jobs", 0, NULL);

    PGresult *c = claim(conn, 10, 30000);
    assert_int_equal(PQntuples(c), 1);
    assert_string_equal(PQgetvalue(c, 0, 0), id);
    assert_string_equal(PQgetvalue(c, 0, 2), "1");
    char *lease = strdup(PQgetvalue(c, 0, 1));
    PQclear(c);

    char *o = complete_one(conn, id, lease);
    assert_string_equal(o, "done");
    free(o);
    const char *pi[] = {id};
    assert_qv(conn, "1|true|an answer|done|11|7|[1, 2]|test-model|" USER_A,
              "SELECT attempts || '|' || (latency_ms >= 0) || '|' || response || '|' || status "
              "|| '|' || prompt_tokens || '|' || completion_tokens || '|' || context_used::text "
              "|| '|' || model_version || '|' || user_id FROM public.conversations WHERE job_id = "
              "$1::uuid",
              1, pi);
    assert_qv(conn, "0", "SELECT count(*) FROM ragpool.jobs", 0, NULL);

    /* Completing again changes nothing. */
    o = complete_one(conn, id, lease);
    assert_string_equal(o, "duplicate");
    free(o);
    assert_qv(conn, "1", "SELECT count(*) FROM public.conversations", 0, NULL);
    /* A finished job id is still known to enqueue. */
    assert_qv(conn, id, "SELECT ragpool.enqueue_chat($1, 'again', '{}', $2::uuid)", 2, p);
    assert_qv(conn, "0", "SELECT count(*) FROM ragpool.jobs", 0, NULL);
    free(lease);
    free(id);
}

static void test_lost_lease(void **state)
{
    (void)state;
    reset_queue();
    char *id = enqueue_chat(conn, USER_A, "slow worker");
    PGresult *c = claim(conn, 10, 50);
    assert_int_equal(PQntuples(c), 1);
    char *lease = strdup(PQgetvalue(c, 0, 1));
    PQclear(c);
    sleep_ms(150);
    char *o = complete_one(conn, id, lease);
    assert_string_equal(o, "lost_lease");
    free(o);
    o = fail_one(conn, id, lease, "boom", "0", "false");
    assert_string_equal(o, "lost_lease");
    free(o);
    /* A wrong lease id is no lease either. */
    const char *pi[] = {id};
    o = complete_one(conn, id, "00000000-0000-0000-0000-000000000000");
    assert_string_equal(o, "lost_lease");
    free(o);
    assert_qv(conn, "0", "SELECT count(*) FROM public.conversations WHERE job_id = $1::uuid", 1,
              pi);
    free(lease);
    free(id);
}

static void test_fail_transient(void **state)
{
    (void)state;
    reset_queue();
    char *id = enqueue_chat(conn, USER_A, "flaky model");
    PGresult *c = claim(conn, 10, 30000);
    char *lease = strdup(PQgetvalue(c, 0, 1));
    PQclear(c);
    char *o = fail_one(conn, id, lease, "HTTP 503 from chat", "60000", "false");
    assert_string_equal(o, "retry");
    free(o);
    const char *pi[] = {id};
    assert_qv(conn, "queued|true|HTTP 503 from chat|1",
              "SELECT state || '|' || (run_at > clock_timestamp() + interval '50 seconds') || '|' "
              "|| last_error || '|' || attempts FROM ragpool.jobs WHERE id = $1::uuid",
              1, pi);
    c = claim(conn, 10, 30000);
    assert_int_equal(PQntuples(c), 0);
    PQclear(c);
    assert_qv(conn, "0|1|0|0",
              "SELECT queued || '|' || scheduled || '|' || running || '|' || dead FROM "
              "ragpool.queue_stats()",
              0, NULL);
    free(lease);
    free(id);
}

static void test_fail_max_attempts(void **state)
{
    (void)state;
    reset_queue();
    char *id = qv(conn,
                  "SELECT ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A
                  "', 'message', 'doomed', 'options', '{}'::jsonb), NULL, 2)",
                  0, NULL);
    for (int attempt = 1; attempt <= 2; attempt++) {
        PGresult *c = claim(conn, 10, 30000);
        assert_int_equal(PQntuples(c), 1);
        assert_int_equal(atoi(PQgetvalue(c, 0, 2)), attempt);
        char *lease = strdup(PQgetvalue(c, 0, 1));
        PQclear(c);
        char *o = fail_one(conn, id, lease, "HTTP 500 from chat", "0", "false");
        assert_string_equal(o, attempt == 1 ? "retry" : "dead");
        free(o);
        free(lease);
    }
    const char *pi[] = {id};
    assert_qv(conn, "max_attempts|HTTP 500 from chat|2",
              "SELECT reason || '|' || last_error || '|' || attempts FROM ragpool.dead_jobs WHERE "
              "id = $1::uuid",
              1, pi);
    assert_qv(
        conn, "error|Sorry, no answer this time.|HTTP 500 from chat|doomed|2",
        "SELECT status || '|' || response || '|' || error || '|' || message || '|' || attempts "
        "FROM public.conversations WHERE job_id = $1::uuid",
        1, pi);
    assert_qv(conn, "0", "SELECT count(*) FROM ragpool.jobs", 0, NULL);

    /* retry_dead puts it back with attempts 0 and removes the error row. */
    assert_qv(conn, "1", "SELECT ragpool.retry_dead($1::uuid)", 1, pi);
    assert_qv(conn, "0|queued",
              "SELECT attempts || '|' || state FROM ragpool.jobs WHERE id = $1::uuid", 1, pi);
    assert_qv(conn, "0", "SELECT count(*) FROM public.conversations WHERE job_id = $1::uuid", 1,
              pi);
    assert_qv(conn, "0", "SELECT count(*) FROM ragpool.dead_jobs", 0, NULL);
    free(id);
}

static void test_fail_permanent(void **state)
{
    (void)state;
    reset_queue();
    char *id = enqueue_chat(conn, USER_A, "bad request");
    PGresult *c = claim(conn, 10, 30000);
    char *lease = strdup(PQgetvalue(c, 0, 1));
    PQclear(c);
    char *o = fail_one(conn, id, lease, "HTTP 400 from chat", "1000", "true");
    assert_string_equal(o, "dead");
    free(o);
    const char *pi[] = {id};
    assert_qv(conn, "permanent|1",
              "SELECT reason || '|' || attempts FROM ragpool.dead_jobs WHERE id = $1::uuid", 1, pi);
    assert_qv(conn, "error", "SELECT status FROM public.conversations WHERE job_id = $1::uuid", 1,
              pi);
    free(lease);
    free(id);
}

static void test_malformed_payload(void **state)
{
    (void)state;
    reset_queue();
    char *id =
        qv(conn, "SELECT ragpool.enqueue('chat', '{\"user_id\": \"not-a-user\", \"message\": 5}')",
           0, NULL);
    PGresult *c = claim(conn, 10, 30000);
    assert_int_equal(PQntuples(c), 1);
    char *lease = strdup(PQgetvalue(c, 0, 1));
    PQclear(c);
    char *o = fail_one(conn, id, lease, "invalid_payload: user_id is not a user id", "0", "true");
    assert_string_equal(o, "dead");
    free(o);
    const char *pi[] = {id};
    assert_qv(conn, "invalid_payload", "SELECT reason FROM ragpool.dead_jobs WHERE id = $1::uuid",
              1, pi);
    assert_qv(conn, "0", "SELECT count(*) FROM public.conversations", 0, NULL);
    /* enqueue_chat refuses a user id of the wrong form outright. */
    char st[6];
    const char *pb[] = {"42"};
    sqlstate_of(conn, "SELECT ragpool.enqueue_chat($1, 'hi')", 1, pb, st);
    assert_string_equal(st, "22P02");
    free(lease);
    free(id);
}

static void test_lease_expired(void **state)
{
    (void)state;
    reset_queue();
    char *dead = qv(conn,
                    "SELECT ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A
                    "', 'message', 'crashes its worker'), NULL, 1)",
                    0, NULL);
    char *again = qv(conn,
                     "SELECT ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A
                     "', 'message', 'worker paused'), NULL, 3)",
                     0, NULL);
    PGresult *c = claim(conn, 10, 50);
    assert_int_equal(PQntuples(c), 2);
    PQclear(c);
    sleep_ms(150);
    c = claim(conn, 10, 30000);
    /* The max_attempts=1 job is dead; the other is claimed again. */
    assert_int_equal(PQntuples(c), 1);
    assert_string_equal(PQgetvalue(c, 0, 0), again);
    assert_string_equal(PQgetvalue(c, 0, 2), "2");
    PQclear(c);
    const char *pd[] = {dead};
    assert_qv(conn, "lease_expired|1",
              "SELECT reason || '|' || attempts FROM ragpool.dead_jobs WHERE id = $1::uuid", 1, pd);
    assert_qv(conn, "error", "SELECT status FROM public.conversations WHERE job_id = $1::uuid", 1,
              pd);
    free(dead);
    free(again);
}

/* Ids ragpool generates are time-ordered (uuid v7: Unix milliseconds, then
 * random bits, RFC 9562 variant); ids a caller gives are kept. */
static void test_job_ids(void **state)
{
    (void)state;
    reset_queue();
    /* version 7, RFC 9562 variant, the clock within 5 s, increasing */
    assert_qv(
        conn, "t",
        "WITH a AS (SELECT ragpool.new_job_id()::text AS x), "
        "w AS (SELECT pg_sleep(0.003) FROM a), "
        "b AS (SELECT ragpool.new_job_id()::text AS x FROM w) "
        "SELECT substr(a.x, 15, 1) = '7' AND substr(a.x, 20, 1) IN ('8', '9', 'a', 'b') "
        "   AND substr(b.x, 15, 1) = '7' AND b.x > a.x "
        "   AND abs(('x' || lpad(replace(substr(a.x, 1, 13), '-', ''), 16, '0'))::bit(64)::bigint "
        "           - (extract(epoch FROM clock_timestamp()) * 1000)::bigint) < 5000 "
        "  FROM a, b",
        0, NULL);
    char *e1 = qv(conn, "SELECT ragpool.enqueue('noop', '{}')", 0, NULL);
    sleep_ms(3);
    char *e2 = enqueue_chat(conn, USER_A, "second");
    assert_non_null(e1);
    assert_non_null(e2);
    assert_int_equal(e1[14], '7');
    assert_int_equal(e2[14], '7');
    assert_true(strcmp(e1, e2) < 0);
    char *b = qv(conn,
                 "SELECT job_id::text FROM ragpool.enqueue_chat_batch('[{\"user_id\": \"" USER_A
                 "\", \"message\": \"third\"}]')",
                 0, NULL);
    assert_non_null(b);
    assert_int_equal(b[14], '7');
    assert_true(strcmp(e2, b) < 0);
    const char *given = "5f0c2a4e-8a39-4d55-9a53-0e8cfb5d2a61";
    const char *pg[] = {given};
    assert_qv(conn, given, "SELECT ragpool.enqueue('noop', '{}', $1::uuid)", 1, pg);
    assert_qv(conn, "4", "SELECT count(*) FROM ragpool.jobs", 0, NULL);
    free(e1);
    free(e2);
    free(b);
}

/* The jobs of one claim share its lease id; another claim -- and a claim
 * of the same jobs after their lease expired -- draws a new one, so the
 * earlier holder can no longer finish them. */
static void test_claim_leases(void **state)
{
    (void)state;
    reset_queue();
    PQclear(q(conn,
              "SELECT ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A
              "', 'message', 'm' || g)) FROM generate_series(1, 3) g",
              0, NULL));
    PGresult *c1 = claim(conn, 2, 50);
    assert_int_equal(PQntuples(c1), 2);
    assert_string_equal(PQgetvalue(c1, 0, 1), PQgetvalue(c1, 1, 1));
    PGresult *c2 = claim(conn, 1, 30000);
    assert_int_equal(PQntuples(c2), 1);
    assert_string_not_equal(PQgetvalue(c2, 0, 1), PQgetvalue(c1, 0, 1));
    sleep_ms(150);
    PGresult *c3 = claim(conn, 10, 30000);
    assert_int_equal(PQntuples(c3), 2); /* the two expired ones, again */
    assert_string_equal(PQgetvalue(c3, 0, 1), PQgetvalue(c3, 1, 1));
    assert_string_not_equal(PQgetvalue(c3, 0, 1), PQgetvalue(c1, 0, 1));
    for (int i = 0; i < 2; i++) {
        const char *id = PQgetvalue(c3, i, 0);
        char *o = complete_one(conn, id, PQgetvalue(c1, 0, 1));
        assert_string_equal(o, "lost_lease");
        free(o);
        o = complete_one(conn, id, PQgetvalue(c3, i, 1));
        assert_string_equal(o, "done");
        free(o);
    }
    char *o = complete_one(conn, PQgetvalue(c2, 0, 0), PQgetvalue(c2, 0, 1));
    assert_string_equal(o, "done");
    free(o);
    assert_qv(conn, "3", "SELECT count(*) FROM public.conversations", 0, NULL);
    assert_qv(conn, "0", "SELECT count(*) FROM ragpool.jobs", 0, NULL);
    PQclear(c1);
    PQclear(c2);
    PQclear(c3);
}

static void test_skip_locked(void **state)
{
    (void)state;
    reset_queue();
    PQclear(q(conn,
              "SELECT ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A
              "', 'message', 'm' || g)) FROM generate_series(1, 300) g",
              0, NULL));
    PGconn *c1 = connect_db(db_main), *c2 = connect_db(db_main);
    assert_non_null(c1);
    assert_non_null(c2);
    /* c1 holds its claim open in a transaction while c2 claims. */
    PQclear(q(c1, "BEGIN", 0, NULL));
    PGresult *r1 = claim(c1, 100, 30000);
    PGresult *r2 = claim(c2, 100, 30000);
    PQclear(q(c1, "COMMIT", 0, NULL));
    assert_int_equal(PQntuples(r1), 100);
    assert_int_equal(PQntuples(r2), 100);
    /* Then both at once, racing. */
    const char *sql = "SELECT id FROM ragpool.claim_jobs('race', 60, 30000)";
    assert_int_equal(PQsendQuery(c1, sql), 1);
    assert_int_equal(PQsendQuery(c2, sql), 1);
    PGresult *r3 = PQgetResult(c1), *r4 = PQgetResult(c2);
    assert_int_equal(PQresultStatus(r3), PGRES_TUPLES_OK);
    assert_int_equal(PQresultStatus(r4), PGRES_TUPLES_OK);
    PQclear(PQgetResult(c1));
    PQclear(PQgetResult(c2));
    assert_int_equal(PQntuples(r3) + PQntuples(r4), 100);

    /* No id twice across the four claims. */
    PGresult *all[] = {r1, r2, r3, r4};
    int total = 0;
    char **ids = calloc(300, sizeof(char *));
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < PQntuples(all[k]); i++) {
            for (int j = 0; j < total; j++)
                assert_string_not_equal(ids[j], PQgetvalue(all[k], i, 0));
            ids[total++] = PQgetvalue(all[k], i, 0);
        }
    }
    assert_int_equal(total, 300);
    free(ids);
    for (int k = 0; k < 4; k++)
        PQclear(all[k]);
    assert_qv(conn, "300",
              "SELECT count(*) FROM ragpool.jobs WHERE state = 'running' AND attempts = 1", 0,
              NULL);
    PQfinish(c1);
    PQfinish(c2);
}

static void test_release(void **state)
{
    (void)state;
    reset_queue();
    PQclear(q(conn,
              "SELECT ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A
              "', 'message', 'm' || g)) FROM generate_series(1, 3) g",
              0, NULL));
    PQclear(claim(conn, 10, 30000));
    const char *rel = "SELECT ragpool.release_jobs((SELECT jsonb_agg(jsonb_build_object("
                      "'job_id', id, 'lease_id', lease_id)) FROM ragpool.jobs))";
    char *held =
        qv(conn,
           "SELECT jsonb_agg(jsonb_build_object('job_id', id, 'lease_id', lease_id))::text "
           "FROM ragpool.jobs",
           0, NULL);
    assert_qv(conn, "3", rel, 0, NULL);
    assert_qv(conn, "3",
              "SELECT count(*) FROM ragpool.jobs WHERE state = 'queued' AND attempts = 0", 0, NULL);
    /* The old leases are gone: releasing with them again does nothing. */
    const char *ph[] = {held};
    assert_qv(conn, "0", "SELECT ragpool.release_jobs($1::jsonb)", 1, ph);
    free(held);
    PGresult *c = claim(conn, 10, 30000);
    assert_int_equal(PQntuples(c), 3);
    assert_string_equal(PQgetvalue(c, 0, 2), "1");
    PQclear(c);
}

static void test_rls(void **state)
{
    (void)state;
    reset_queue();
    PQclear(q(conn, "DELETE FROM public.swap_history", 0, NULL));
    PQclear(q(conn,
              "INSERT INTO public.conversations (user_id, message, response, job_id) VALUES "
              "('" USER_A "', 'a1', 'r', gen_random_uuid()), ('" USER_A
              "', 'a2', 'r', gen_random_uuid()), "
              "('" USER_B "', 'b1', 'r', gen_random_uuid())",
              0, NULL));
    PQclear(q(conn,
              "INSERT INTO public.swap_history (user_id, from_token, to_token, amount) VALUES "
              "('" USER_A "', 'TON', 'USDT', 100), ('" USER_B "', 'ETH', 'USDC', 1)",
              0, NULL));
    PGconn *u = connect_db(db_main);
    assert_non_null(u);
    PQclear(q(u, "SET ROLE authenticated", 0, NULL));
    PQclear(q(u,
              "SELECT set_config('request.jwt.claims', '{\"sub\":\"" USER_A
              "\",\"role\":\"authenticated\"}', false)",
              0, NULL));
    assert_qv(u, "2|2",
              "SELECT count(*) || '|' || count(*) FILTER (WHERE user_id = '" USER_A
              "') FROM public.conversations",
              0, NULL);
    assert_qv(u, "1|TON", "SELECT count(*) || '|' || min(from_token) FROM public.swap_history", 0,
              NULL);
    /* Feedback on one's own rows only. */
    assert_qv(u, "2",
              "WITH u AS (UPDATE public.conversations SET feedback = 1 RETURNING 1) SELECT "
              "count(*) FROM u",
              0, NULL);
    char st[6];
    sqlstate_of(u, "DELETE FROM public.conversations", 0, NULL, st);
    assert_string_equal(st, "42501");

    /* enqueue_chat by RPC: for oneself only. */
    const char *pb[] = {USER_B};
    sqlstate_of(u, "SELECT ragpool.enqueue_chat($1::uuid, 'for someone else')", 1, pb, st);
    assert_string_equal(st, "42501");
    const char *pa[] = {USER_A};
    char *id = qv(u, "SELECT ragpool.enqueue_chat($1::uuid, 'for me')", 1, pa);
    assert_non_null(id);
    free(id);
    sqlstate_of(u, "SELECT * FROM ragpool.claim_jobs('x', 1, 1000)", 0, NULL, st);
    assert_string_equal(st, "42501");
    sqlstate_of(u, "SELECT * FROM ragpool.record_results('[]')", 0, NULL, st);
    assert_string_equal(st, "42501");
    /* The knowledge base is readable, not writable; the model registry and
     * the training data are neither (0011). */
    sqlstate_of(u, "SELECT count(*) FROM public.finance_knowledge", 0, NULL, st);
    assert_string_equal(st, "");
    sqlstate_of(u, "INSERT INTO public.finance_knowledge (content) VALUES ('spam')", 0, NULL, st);
    assert_string_equal(st, "42501");
    sqlstate_of(u, "SELECT count(*) FROM public.model_metadata", 0, NULL, st);
    assert_string_equal(st, "42501");
    sqlstate_of(u, "SELECT count(*) FROM public.training_data", 0, NULL, st);
    assert_string_equal(st, "42501");
    /* The older per-claim setting works too. */
    PQclear(q(u,
              "SELECT set_config('request.jwt.claims', '', false), "
              "set_config('request.jwt.claim.sub', '" USER_B "', false)",
              0, NULL));
    assert_qv(u, "1", "SELECT count(*) FROM public.conversations", 0, NULL);
    PQfinish(u);
    assert_qv(conn, "1", "SELECT count(*) FROM ragpool.jobs", 0, NULL);
}

static void test_bigint_mode(void **state)
{
    (void)state;
    char sql[256], out[8192];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db_big);
    exec_admin(sql);
    int rc = run_cli(db_big, "migrate --user-id-type bigint", out, sizeof(out));
    if (rc != 0)
        fail_msg("migrate --user-id-type bigint: %s", out);
    rc = run_cli(db_big, "migrate --user-id-type uuid", out, sizeof(out));
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "bigint"));

    PGconn *b = connect_db(db_big);
    assert_non_null(b);
    assert_qv(b, "bigint",
              "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = "
              "'public.conversations'::regclass AND attname = 'user_id'",
              0, NULL);
    char *id1 = qv(b, "SELECT ragpool.enqueue_chat(42, 'bigint overload')", 0, NULL);
    char *id2 = qv(b, "SELECT ragpool.enqueue_chat('43', 'text overload')", 0, NULL);
    assert_non_null(id1);
    assert_non_null(id2);
    char st[6];
    const char *pu[] = {USER_A};
    sqlstate_of(b, "SELECT ragpool.enqueue_chat($1::uuid, 'uuid in bigint mode')", 1, pu, st);
    assert_string_equal(st, "22P02");
    PGresult *c = claim(b, 10, 30000);
    assert_int_equal(PQntuples(c), 2);
    for (int i = 0; i < 2; i++) {
        char *o = complete_one(b, PQgetvalue(c, i, 0), PQgetvalue(c, i, 1));
        assert_string_equal(o, "done");
        free(o);
    }
    PQclear(c);
    assert_qv(b, "42,43",
              "SELECT string_agg(user_id::text, ',' ORDER BY user_id) FROM public.conversations", 0,
              NULL);
    PQclear(q(b,
              "INSERT INTO public.swap_history (user_id, from_token, to_token, amount, created_at) "
              "VALUES "
              "(42, 'TON', 'USDT', 100, now() - interval '1 day'), (42, 'USDT', 'TON', 5, now()), "
              "(43, 'BTC', 'USDT', 1, now())",
              0, NULL));
    assert_qv(b, "2", "SELECT count(*) FROM ragpool.recent_swaps('42', 5)", 0, NULL);
    assert_qv(b, "USDT", "SELECT from_token FROM ragpool.recent_swaps('42', 1)", 0, NULL);

    /* RLS maps the JWT's user_id claim to the bigint id. */
    PQclear(q(b, "SET ROLE authenticated", 0, NULL));
    PQclear(q(b,
              "SELECT set_config('request.jwt.claims', '{\"sub\":\"" USER_A
              "\",\"user_id\":\"42\"}', false)",
              0, NULL));
    assert_qv(b, "1|42", "SELECT count(*) || '|' || min(user_id) FROM public.conversations", 0,
              NULL);
    sqlstate_of(b, "SELECT ragpool.enqueue_chat(43, 'not mine')", 0, NULL, st);
    assert_string_equal(st, "42501");
    PQclear(q(b, "RESET ROLE", 0, NULL));
    PQfinish(b);
    free(id1);
    free(id2);
    snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", db_big);
    exec_admin(sql);
}

static void test_match_fallback(void **state)
{
    (void)state;
    PQclear(q(conn, "DELETE FROM public.finance_knowledge", 0, NULL));
    PQclear(
        q(conn,
          "INSERT INTO public.finance_knowledge (content, embedding, token_symbol) VALUES "
          "('east', '{1,0,0}', 'A'), ('north-east', '{0.7,0.7,0}', 'B'), ('up', '{0,0,1}', 'C'), "
          "('west', '{-1,0,0}', 'D'), ('no vector', NULL, 'E'), ('zero', '{0,0,0}', 'F')",
          0, NULL));
    assert_qv(conn, "east,north-east,up,west",
              "SELECT string_agg(content, ',' ORDER BY ord) FROM "
              "public.match_finance_knowledge('{1,0.1,0}'::real[], -2, 10) WITH ORDINALITY m(id, "
              "content, s, t, ord)",
              0, NULL);
    assert_qv(conn, "east,north-east",
              "SELECT string_agg(content, ',' ORDER BY ord) FROM "
              "public.match_finance_knowledge('{1,0.1,0}'::real[], 0.5, 10) WITH ORDINALITY m(id, "
              "content, s, t, ord)",
              0, NULL);
    assert_qv(
        conn, "east|A|true",
        "SELECT content || '|' || token_symbol || '|' || (abs(similarity - 0.99503719) < 1e-5) "
        "FROM public.match_finance_knowledge('{1,0.1,0}'::real[], 0.7, 1)",
        0, NULL);
    /* The default arguments are the reference design's. */
    assert_qv(conn, "2", "SELECT count(*) FROM public.match_finance_knowledge('{1,0.1,0}'::real[])",
              0, NULL);
    assert_qv(conn, "t", "SELECT abs(ragpool.cosine_similarity('{1,2,3}', '{2,4,6}') - 1) < 1e-6",
              0, NULL);
}

static void test_wal2json(void **state)
{
    (void)state;
    char *level = qv(conn, "SHOW wal_level", 0, NULL);
    int logical = level && strcmp(level, "logical") == 0;
    free(level);
    if (!logical) {
        fprintf(stderr, "SKIP wal2json: the server runs without wal_level=logical\n");
        skip();
    }
    reset_queue();
    char slot[96];
    snprintf(slot, sizeof(slot), "%s_slot", db_main);
    const char *ps[] = {slot};
    PGresult *sr = PQexecParams(conn, "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
                                1, NULL, ps, NULL, NULL, 0);
    if (PQresultStatus(sr) != PGRES_TUPLES_OK) {
        /* Some builds only load listed output plugins: the server must be
         * started with wal2json in output_plugin_libraries. */
        fail_msg("cannot create a wal2json slot (is wal2json allowed as an output plugin, "
                 "e.g. -c output_plugin_libraries=pgoutput,test_decoding,wal2json?): %s",
                 PQerrorMessage(conn));
    }
    PQclear(sr);
    char *id = enqueue_chat(conn, USER_A, "realtime please");
    PGresult *c = claim(conn, 1, 30000);
    char *o = complete_one(conn, PQgetvalue(c, 0, 0), PQgetvalue(c, 0, 1));
    assert_string_equal(o, "done");
    free(o);
    PQclear(c);
    char *changes =
        qv(conn,
           "SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes($1, NULL, NULL, "
           "'add-tables', 'public.conversations')",
           1, ps);
    PQclear(q(conn, "SELECT pg_drop_replication_slot($1)", 1, ps));
    assert_non_null(changes);
    static const char *const cols[] = {"\"id\"",
                                       "\"user_id\"",
                                       "\"message\"",
                                       "\"response\"",
                                       "\"context_used\"",
                                       "\"model_version\"",
                                       "\"feedback\"",
                                       "\"created_at\"",
                                       "\"job_id\"",
                                       "\"status\"",
                                       "\"error\"",
                                       "\"prompt_tokens\"",
                                       "\"completion_tokens\"",
                                       "\"latency_ms\"",
                                       "\"attempts\"",
                                       "\"timings\""};
    assert_non_null(strstr(changes, "\"kind\":\"insert\""));
    assert_non_null(strstr(changes, "\"table\":\"conversations\""));
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
        if (strstr(changes, cols[i]) == NULL)
            fail_msg("column %s missing from wal2json output: %s", cols[i], changes);
    }
    assert_non_null(strstr(changes, id));
    assert_non_null(strstr(changes, USER_A));
    free(changes);
    free(id);
}

int main(void)
{
    admin_url = getenv("RP_TEST_PG_URL");
    if (admin_url == NULL || admin_url[0] == '\0') {
        printf("SKIP: RP_TEST_PG_URL not set (run through ./dev test)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_lost_lease),
        cmocka_unit_test(test_claim_leases),
        cmocka_unit_test(test_job_ids),
        cmocka_unit_test(test_fail_transient),
        cmocka_unit_test(test_fail_max_attempts),
        cmocka_unit_test(test_fail_permanent),
        cmocka_unit_test(test_malformed_payload),
        cmocka_unit_test(test_lease_expired),
        cmocka_unit_test(test_skip_locked),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_rls),
        cmocka_unit_test(test_bigint_mode),
        cmocka_unit_test(test_match_fallback),
        cmocka_unit_test(test_wal2json),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
