/*
 * migrate.c: `ragpool migrate`: apply the built-in sql/ migrations.
 *
 * Runs under a session advisory lock, so any number of CLIs and workers may
 * migrate at once: one applies, the others wait and then find nothing to do.
 * Each pending file runs in its own transaction together with its row in
 * ragpool.schema_migrations (name, checksum, applied_at).  The checksum is
 * the SHA-256 of the file's text, computed by the server; an applied file
 * whose text changed since is an error that names it, and nothing after it
 * is applied.  The files are idempotent on their own as well.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "migrations.h"

/* Any fixed key works; this one spells "ragpool" loosely. */
#define MIGRATE_LOCK_KEY "7298465746510"

void rp_cli_migrate_usage(FILE *f)
{
    fprintf(
        f,
        "ragpool migrate [--user-id-type uuid|bigint]\n"
        "    Apply the pending migrations in order, each in a transaction, under an\n"
        "    advisory lock; print what was applied, or \"up to date\".\n"
        "    --user-id-type  column type of conversations.user_id and swap_history.user_id,\n"
        "                    chosen by the first migration (default uuid, Supabase Auth ids;\n"
        "                    bigint for the reference design's own ids).  It cannot change later.\n"
        "    RAGPOOL_EMBED_DIMENSIONS sizes finance_knowledge.embedding on the first run.\n");
}

static int exec_simple(PGconn *conn, const char *what, const char *sql)
{
    PGresult *res = rp_cli_exec(conn, what, sql, 0, NULL);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

/* Applies one migration in a transaction.  Returns 0 or -1 (printed). */
static int apply_one(PGconn *conn, const rp_migration_t *m)
{
    if (exec_simple(conn, "begin", "BEGIN") != 0)
        return -1;
    /* PQexec: a file is many statements, which only the simple protocol runs. */
    PGresult *res = PQexec(conn, m->sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        const char *ctx = res ? PQresultErrorField(res, PG_DIAG_CONTEXT) : NULL;
        fprintf(stderr, "ragpool: migration %s failed: %s\n", m->name,
                msg ? msg : PQerrorMessage(conn));
        if (ctx != NULL)
            fprintf(stderr, "ragpool: (context: %s)\n", ctx);
        PQclear(res);
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    PQclear(res);
    const char *params[] = {m->name, m->sql};
    res = rp_cli_exec(conn, "record migration",
                      "INSERT INTO ragpool.schema_migrations (name, checksum) "
                      "VALUES ($1, encode(sha256(convert_to($2, 'UTF8')), 'hex'))",
                      2, params);
    if (res == NULL) {
        PQclear(PQexec(conn, "ROLLBACK"));
        return -1;
    }
    PQclear(res);
    return exec_simple(conn, "commit", "COMMIT");
}

/* Fails when the database already uses another user id type than asked. */
static int check_user_id_type(PGconn *conn, const char *wanted)
{
    PGresult *res = rp_cli_exec(conn, "look for ragpool.settings",
                                "SELECT to_regclass('ragpool.settings') IS NOT NULL", 0, NULL);
    if (res == NULL)
        return -1;
    int exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!exists)
        return 0; /* the first migration will record the choice */
    res = rp_cli_exec(conn, "read settings",
                      "SELECT value FROM ragpool.settings WHERE key = 'user_id_type'", 0, NULL);
    if (res == NULL)
        return -1;
    int rc = 0;
    if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), wanted) != 0) {
        fprintf(stderr,
                "ragpool: this database already uses %s user ids; --user-id-type %s cannot "
                "change that\n",
                PQgetvalue(res, 0, 0), wanted);
        rc = -1;
    }
    PQclear(res);
    return rc;
}

int rp_cli_migrate(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"user-id-type", required_argument, NULL, 'u'},
        {NULL, 0, NULL, 0},
    };
    const char *user_id_type = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u':
            user_id_type = optarg;
            break;
        default:
            rp_cli_migrate_usage(stderr);
            return RP_CLI_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "ragpool migrate: unexpected argument '%s'\n", argv[optind]);
        return RP_CLI_USAGE;
    }
    if (user_id_type != NULL && strcmp(user_id_type, "uuid") != 0 &&
        strcmp(user_id_type, "bigint") != 0) {
        fprintf(stderr, "ragpool migrate: --user-id-type must be uuid or bigint, not '%s'\n",
                user_id_type);
        return RP_CLI_USAGE;
    }

    PGconn *conn = rp_cli_connect(cfg);
    if (conn == NULL)
        return RP_CLI_FAIL;
    int rc = RP_CLI_FAIL;
    int locked = 0;
    size_t applied = 0;
    PGresult *done = NULL;
    char dims[32];
    snprintf(dims, sizeof(dims), "%ld", cfg->embed_dimensions);

    if (exec_simple(conn, "take the migration lock",
                    "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")") != 0)
        goto out;
    locked = 1;
    if (exec_simple(conn, "create schema ragpool", "CREATE SCHEMA IF NOT EXISTS ragpool") != 0 ||
        exec_simple(conn, "create ragpool.schema_migrations",
                    "CREATE TABLE IF NOT EXISTS ragpool.schema_migrations ("
                    " name text PRIMARY KEY, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())") != 0)
        goto out;
    {
        const char *params[] = {dims, user_id_type ? user_id_type : ""};
        PGresult *res = rp_cli_exec(conn, "set migration settings",
                                    "SELECT set_config('ragpool.embedding_dimensions', $1, false), "
                                    "set_config('ragpool.user_id_type', $2, false)",
                                    2, params);
        if (res == NULL)
            goto out;
        PQclear(res);
    }
    if (user_id_type != NULL && check_user_id_type(conn, user_id_type) != 0)
        goto out;

    for (size_t i = 0; i < rp_migrations_count; i++) {
        const rp_migration_t *m = &rp_migrations[i];
        const char *params[] = {m->name, m->sql};
        PQclear(done);
        done = rp_cli_exec(conn, "read applied migrations",
                           "SELECT checksum, encode(sha256(convert_to($2, 'UTF8')), 'hex') "
                           "FROM ragpool.schema_migrations WHERE name = $1",
                           2, params);
        if (done == NULL)
            goto out;
        if (PQntuples(done) == 1) {
            if (strcmp(PQgetvalue(done, 0, 0), PQgetvalue(done, 0, 1)) != 0) {
                fprintf(stderr,
                        "ragpool: migration %s was changed after it was applied "
                        "(checksum %.12s... in the database, %.12s... now); "
                        "add a new migration instead of editing an applied one\n",
                        m->name, PQgetvalue(done, 0, 0), PQgetvalue(done, 0, 1));
                goto out;
            }
            continue;
        }
        if (apply_one(conn, m) != 0)
            goto out;
        printf("applied %s\n", m->name);
        applied++;
    }
    if (applied == 0)
        printf("up to date (%zu migrations)\n", rp_migrations_count);
    rc = RP_CLI_OK;
out:
    PQclear(done);
    if (locked)
        PQclear(PQexec(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
    PQfinish(conn);
    return rc;
}
