/*
 * cli.h: what the commands of the operator CLI `ragpool` share.
 *
 * The CLI is a short-lived, blocking program (plain libpq and libcurl easy
 * calls): it is never on the workers' event loop.  Each command is one
 * function taking the loaded configuration and its own arguments (argv[0]
 * is the command name) and returning the process exit status.  Secrets
 * (the password inside DATABASE_URL, OPENAI_API_KEY) are never printed:
 * errors show libpq's and the server's messages, which do not contain them.
 */
#ifndef RP_CLI_H
#define RP_CLI_H

#include <libpq-fe.h>
#include <stdio.h>

/* Exit statuses. */
enum {
    RP_CLI_OK = 0,
    RP_CLI_FAIL = 1,    /* the operation failed (or the job ended in error) */
    RP_CLI_USAGE = 2,   /* bad command line or configuration */
    RP_CLI_TIMEOUT = 3, /* --wait gave up */
};

typedef struct rp_cli_cfg {
    char *database_url;
    char *openai_base_url;
    char *openai_api_key;
    char *embed_model;
    long embed_dimensions;
    char *queue;        /* RAGPOOL_QUEUE: enqueue's default queue */
    char *redis_url;    /* REDIS_URL */
    char *redis_stream; /* RAGPOOL_REDIS_STREAM */
    char *redis_group;  /* RAGPOOL_REDIS_GROUP */
} rp_cli_cfg_t;

/* Connect to cfg->database_url (blocking), with client notices off.
 * Returns an owned connection (PQfinish it) or NULL after printing why to
 * stderr. */
PGconn *rp_cli_connect(const rp_cli_cfg_t *cfg);

/* Run sql with text parameters (params may contain NULL for SQL NULL).
 * Returns an owned result of status PGRES_TUPLES_OK or PGRES_COMMAND_OK
 * (PQclear it), or NULL after printing "ragpool: <what>: <server message>"
 * to stderr. */
PGresult *rp_cli_exec(PGconn *conn, const char *what, const char *sql, int nparams,
                      const char *const *params);

/* Print the environment variables (the configuration table) to f. */
void rp_cli_env_usage(FILE *f);

/* The commands.  Each borrows cfg and argv; argv[0] is the command name. */
int rp_cli_migrate(const rp_cli_cfg_t *cfg, int argc, char **argv);
int rp_cli_enqueue(const rp_cli_cfg_t *cfg, int argc, char **argv);
int rp_cli_status(const rp_cli_cfg_t *cfg, int argc, char **argv);
int rp_cli_dead(const rp_cli_cfg_t *cfg, int argc, char **argv);
int rp_cli_load_knowledge(const rp_cli_cfg_t *cfg, int argc, char **argv);

/* Usage text of each command, for `ragpool --help` and `<cmd> --help`. */
void rp_cli_migrate_usage(FILE *f);
void rp_cli_enqueue_usage(FILE *f);
void rp_cli_status_usage(FILE *f);
void rp_cli_dead_usage(FILE *f);
void rp_cli_load_knowledge_usage(FILE *f);

#endif
