/*
 * test_db.c: databases and blocking SQL for integration tests (see
 * test_db.h).
 *
 * Preparing a database runs the real CLI (`ragpool migrate`,
 * `ragpool load-knowledge`) and psql on the demo seed, exactly as the demo
 * does, so the tests exercise the shipped migrations.  That takes seconds
 * (the knowledge base is embedded through the model server), so it is done
 * once per test program into a template database that each test clones with
 * CREATE DATABASE ... TEMPLATE.  The list of databases to drop at exit is a
 * process-wide registry for the same reason as the process registry in
 * test_proc.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_db.h"
#include "test_proc.h"

#ifndef RP_WORKER_BIN
#define RP_WORKER_BIN NULL
#endif
#ifndef RP_DEVMODEL_BIN
#define RP_DEVMODEL_BIN NULL
#endif
#ifndef RP_CLI_BIN
#define RP_CLI_BIN NULL
#endif
#ifndef RP_SOURCE_DIR
#define RP_SOURCE_DIR "."
#endif

#define RP_TEST_MAX_DBS 64
#define RP_TEST_SETUP_TIMEOUT_MS 180000

/* Databases to drop at exit (see the file comment). */
static char *g_dbs[RP_TEST_MAX_DBS];
static int g_dbs_atexit;
static char *g_template;
static int g_db_seq;

void rp_test_require_stack(const char *what)
{
    const char *url = getenv("RP_TEST_PG_URL");
    if (url == NULL || url[0] == '\0') {
        printf("SKIP: %s needs the local stack (run through ./dev test)\n", what);
        fflush(stdout);
        exit(77);
    }
}

const char *rp_test_env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0') {
        fail_msg("%s is not set (run through ./dev test, or source the stack's env)", name);
    }
    return v;
}

const char *rp_test_bin(const char *which)
{
    const char *v = getenv(which);
    if (v != NULL && v[0] != '\0') {
        return v;
    }
    if (strcmp(which, "RP_WORKER_BIN") == 0) {
        v = RP_WORKER_BIN;
    } else if (strcmp(which, "RP_DEVMODEL_BIN") == 0) {
        v = RP_DEVMODEL_BIN;
    } else if (strcmp(which, "RP_CLI_BIN") == 0) {
        v = RP_CLI_BIN;
    }
    if (v == NULL || access(v, X_OK) != 0) {
        fail_msg("%s: program not built (%s)", which, v != NULL ? v : "no target");
    }
    return v;
}

char *rp_test_source_path(const char *rel)
{
    char *s;
    if (asprintf(&s, "%s/%s", RP_SOURCE_DIR, rel) < 0) {
        fail_msg("out of memory");
    }
    return s;
}

/* The URL of database name on the same server as base (base's path
 * replaced).  Returns owned. */
static char *url_with_db(const char *base, const char *name)
{
    const char *scheme = strstr(base, "://");
    const char *path, *query;
    char *out;
    assert_non_null(scheme);
    path = strchr(scheme + 3, '/');
    if (path == NULL) {
        path = base + strlen(base);
    }
    query = strchr(path, '?');
    if (asprintf(&out, "%.*s/%s%s", (int)(path - base), base, name, query != NULL ? query : "") <
        0) {
        fail_msg("out of memory");
    }
    return out;
}

/* The database name of url (owned). */
static char *db_of_url(const char *url)
{
    const char *scheme = strstr(url, "://");
    const char *path = scheme != NULL ? strchr(scheme + 3, '/') : NULL;
    size_t n;
    char *s;
    assert_non_null(path);
    path++;
    n = strcspn(path, "?");
    s = strndup(path, n);
    assert_non_null(s);
    return s;
}

PGconn *rp_test_pg_connect(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        PQfinish(c);
        fail_msg("cannot connect to %s: %s", url, msg);
    }
    /* Keep NOTICEs (e.g. from idempotent migrations) out of test output. */
    PQsetNoticeProcessor(c, NULL, NULL);
    {
        PGresult *r = PQexec(c, "set client_min_messages = warning");
        PQclear(r);
    }
    return c;
}

static void drop_all_at_exit(void)
{
    int i;
    for (i = 0; i < RP_TEST_MAX_DBS; i++) {
        if (g_dbs[i] != NULL) {
            rp_test_db_drop(g_dbs[i]);
        }
    }
}

static void remember_db(const char *url)
{
    int i;
    if (!g_dbs_atexit) {
        atexit(drop_all_at_exit);
        g_dbs_atexit = 1;
    }
    for (i = 0; i < RP_TEST_MAX_DBS; i++) {
        if (g_dbs[i] == NULL) {
            g_dbs[i] = strdup(url);
            return;
        }
    }
}

static void forget_db(const char *url)
{
    int i;
    for (i = 0; i < RP_TEST_MAX_DBS; i++) {
        if (g_dbs[i] != NULL && strcmp(g_dbs[i], url) == 0) {
            free(g_dbs[i]);
            g_dbs[i] = NULL;
        }
    }
}

static char *create_db(const char *prefix, const char *template_name)
{
    const char *admin_url = rp_test_env("RP_TEST_PG_URL");
    PGconn *admin = rp_test_pg_connect(admin_url);
    char name[64];
    char *url;
    snprintf(name, sizeof name, "rpt_%.24s_%d_%d", prefix, (int)getpid(), ++g_db_seq);
    if (template_name != NULL) {
        rp_test_sql_exec(admin, "create database %s template %s", name, template_name);
    } else {
        rp_test_sql_exec(admin, "create database %s", name);
    }
    PQfinish(admin);
    url = url_with_db(admin_url, name);
    remember_db(url);
    return url;
}

char *rp_test_db_create(const char *prefix)
{
    return create_db(prefix, NULL);
}

/* Run the CLI with DATABASE_URL=url; fail the test with its output unless
 * it exits 0. */
static void run_cli(const char *url, const char *const *args)
{
    const char *argv[8];
    char *env_db, *out = NULL;
    const char *env[2];
    size_t i;
    int st;
    argv[0] = rp_test_bin("RP_CLI_BIN");
    for (i = 0; args[i] != NULL && i < 6; i++) {
        argv[i + 1] = args[i];
    }
    argv[i + 1] = NULL;
    if (asprintf(&env_db, "DATABASE_URL=%s", url) < 0) {
        fail_msg("out of memory");
    }
    env[0] = env_db;
    env[1] = NULL;
    st = rp_test_run("ragpool-cli", argv, env, RP_TEST_SETUP_TIMEOUT_MS, &out);
    free(env_db);
    if (st != 0) {
        fprintf(stderr, "ragpool %s exited %d:\n%s\n", args[0], st, out);
        free(out);
        fail_msg("ragpool %s failed", args[0]);
    }
    free(out);
}

void rp_test_db_setup(const char *url)
{
    static const char *const migrate[] = {"migrate", NULL};
    char *knowledge = rp_test_source_path("deploy/local/knowledge.jsonl");
    char *seed = rp_test_source_path("deploy/local/demo_seed.sql");
    const char *load[] = {"load-knowledge", "--file", knowledge, NULL};
    const char *psql[] = {"psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", seed, NULL};
    char *out = NULL;
    int st;

    run_cli(url, migrate);
    run_cli(url, load);
    st = rp_test_run("psql-seed", psql, NULL, RP_TEST_SETUP_TIMEOUT_MS, &out);
    if (st != 0) {
        fprintf(stderr, "psql -f %s exited %d:\n%s\n", seed, st, out);
        free(out);
        fail_msg("loading the demo seed failed");
    }
    free(out);
    free(knowledge);
    free(seed);
}

/* Take an exclusive lock on a file beside the stack (or in /tmp); returns
 * the descriptor to pass to unlock_stack, -1 when locking is impossible
 * (then tests merely lose the serialisation). */
static int lock_stack(const char *name)
{
    const char *dir = getenv("RP_STACK_DIR");
    char path[512];
    int fd;
    snprintf(path, sizeof path, "%s/%s", dir != NULL && dir[0] != '\0' ? dir : "/tmp", name);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd >= 0 && flock(fd, LOCK_EX) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void unlock_stack(int fd)
{
    if (fd >= 0) {
        flock(fd, LOCK_UN);
        close(fd);
    }
}

char *rp_test_db_create_ready(const char *prefix)
{
    char *tname;
    char *url;
    if (g_template == NULL) {
        char *turl = create_db("template", NULL);
        /* Migrations create cluster-wide roles (anon, authenticated, ...)
         * "if not exists": two programs migrating at once could both try to
         * create them, so test programs take turns. */
        int lock = lock_stack("test-migrate.lock");
        rp_test_db_setup(turl);
        unlock_stack(lock);
        /* Stays registered, so it is dropped at exit like the clones. */
        g_template = turl;
    }
    tname = db_of_url(g_template);
    url = create_db(prefix, tname);
    free(tname);
    return url;
}

void rp_test_db_drop(const char *url)
{
    const char *admin_url = getenv("RP_TEST_PG_URL");
    PGconn *admin;
    char *name;
    char *copy;
    PGresult *r;
    char sql[256];
    if (admin_url == NULL) {
        return;
    }
    copy = strdup(url);
    name = db_of_url(copy);
    forget_db(copy);
    admin = PQconnectdb(admin_url);
    if (PQstatus(admin) == CONNECTION_OK) {
        /* A logical slot (the Realtime test's) would keep the drop from
         * succeeding when the test failed before dropping it. */
        snprintf(sql, sizeof sql,
                 "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                 "where database = '%s' and not active",
                 name);
        PQclear(PQexec(admin, sql));
        snprintf(sql, sizeof sql, "drop database if exists %s with (force)", name);
        r = PQexec(admin, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "warning: %s: %s", sql, PQerrorMessage(admin));
        }
        PQclear(r);
    }
    PQfinish(admin);
    free(name);
    free(copy);
}

static char *vformat(const char *fmt, va_list ap)
{
    char *s;
    if (vasprintf(&s, fmt, ap) < 0) {
        fail_msg("out of memory");
    }
    return s;
}

/* Execute sql; returns the result (owned) or fails the test. */
static PGresult *exec_or_fail(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        PQclear(r);
        fail_msg("SQL failed: %.300s\n  error: %s", sql, msg);
    }
    return r;
}

void rp_test_sql_exec(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);
    PQclear(exec_or_fail(c, sql));
    free(sql);
}

int rp_test_sql_try(PGconn *c, char **err, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    PGresult *r;
    ExecStatusType st;
    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);
    r = PQexec(c, sql);
    st = PQresultStatus(r);
    free(sql);
    PQclear(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        if (err != NULL) {
            *err = NULL;
        }
        return 0;
    }
    if (err != NULL) {
        *err = strdup(PQerrorMessage(c));
    }
    return -1;
}

PGresult *rp_test_sql_query(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    PGresult *r;
    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);
    r = exec_or_fail(c, sql);
    free(sql);
    return r;
}

long long rp_test_sql_int(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    PGresult *r;
    long long v;
    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);
    r = exec_or_fail(c, sql);
    if (PQntuples(r) < 1 || PQnfields(r) < 1 || PQgetisnull(r, 0, 0)) {
        PQclear(r);
        fail_msg("SQL returned no value: %.300s", sql);
    }
    v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    free(sql);
    return v;
}

char *rp_test_sql_text(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    PGresult *r;
    char *v = NULL;
    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);
    r = exec_or_fail(c, sql);
    if (PQntuples(r) >= 1 && PQnfields(r) >= 1 && !PQgetisnull(r, 0, 0)) {
        v = strdup(PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    free(sql);
    return v;
}

int rp_test_sql_wait(PGconn *c, long timeout_ms, const char *fmt, ...)
{
    va_list ap;
    char *sql;
    long long deadline = rp_test_now_ms() + timeout_ms;
    int ok = 0;
    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);
    for (;;) {
        PGresult *r = exec_or_fail(c, sql);
        ok = PQntuples(r) >= 1 && !PQgetisnull(r, 0, 0) && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (ok || rp_test_now_ms() >= deadline) {
            break;
        }
        rp_test_sleep_ms(100);
    }
    free(sql);
    return ok;
}

char *rp_test_sql_literal(PGconn *c, const char *s)
{
    char *lit = PQescapeLiteral(c, s, strlen(s));
    char *out;
    if (lit == NULL) {
        fail_msg("PQescapeLiteral: %s", PQerrorMessage(c));
    }
    out = strdup(lit);
    PQfreemem(lit);
    return out;
}
