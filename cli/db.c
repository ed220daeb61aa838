/*
 * db.c: the CLI's blocking libpq helpers: connect, and run one
 * parameterised statement with errors printed once, in one format.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

PGconn *rp_cli_connect(const rp_cli_cfg_t *cfg)
{
    /* expand_dbname lets DATABASE_URL be a URL or key=value text; the
     * fallback name never overrides one the operator chose. */
    const char *const keys[] = {"dbname", "fallback_application_name", NULL};
    const char *const vals[] = {cfg->database_url, "ragpool-cli", NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (conn == NULL) {
        fprintf(stderr, "ragpool: cannot connect to Postgres: out of memory\n");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        /* libpq's message names host and port, never the password. */
        fprintf(stderr, "ragpool: cannot connect to Postgres (DATABASE_URL): %s",
                PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    PGresult *res = PQexec(conn, "SET client_min_messages = warning");
    PQclear(res);
    return conn;
}

PGresult *rp_cli_exec(PGconn *conn, const char *what, const char *sql, int nparams,
                      const char *const *params)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (msg == NULL)
        msg = PQerrorMessage(conn);
    fprintf(stderr, "ragpool: %s: %s%s", what, msg,
            (msg[0] != '\0' && msg[strlen(msg) - 1] == '\n') ? "" : "\n");
    PQclear(res);
    return NULL;
}
