/*
 * main.c: the operator CLI `ragpool`: configuration, dispatch and help.
 *
 * Configuration comes from the environment through the declarative table
 * below (common/cfg.h), loaded once and then only read.  `--help` anywhere
 * on the command line prints help without needing any configuration, so an
 * operator can always find out what a command wants.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cfg.h"
#include "cli.h"
#include "export_training.h"
#include "reembed.h"

static const rp_cfg_def_t cli_cfg_defs[] = {
    {"DATABASE_URL", RP_CFG_STR, offsetof(rp_cli_cfg_t, database_url), NULL, 0, -1,
     RP_CFG_REQUIRED | RP_CFG_SECRET,
     "Postgres connection string (URL or key=value); for migrate and LISTEN use a direct or "
     "session-mode connection, not a transaction pooler."},
    {"OPENAI_BASE_URL", RP_CFG_STR, offsetof(rp_cli_cfg_t, openai_base_url),
     "https://api.openai.com/v1", 0, -1, 0,
     "Base URL of the OpenAI-compatible API used by load-knowledge (POST <url>/embeddings)."},
    {"OPENAI_API_KEY", RP_CFG_STR, offsetof(rp_cli_cfg_t, openai_api_key), NULL, 0, -1,
     RP_CFG_SECRET, "API key sent as 'Authorization: Bearer <key>' when set."},
    {"RAGPOOL_EMBED_MODEL", RP_CFG_STR, offsetof(rp_cli_cfg_t, embed_model),
     "text-embedding-3-small", 0, -1, 0, "Embedding model for load-knowledge."},
    {"RAGPOOL_EMBED_DIMENSIONS", RP_CFG_INT, offsetof(rp_cli_cfg_t, embed_dimensions), "1536", 1,
     16000, 0,
     "Embedding dimensions: the size of finance_knowledge.embedding created by migrate, and "
     "the `dimensions` asked of the embeddings API."},
    {"RAGPOOL_QUEUE", RP_CFG_STR, offsetof(rp_cli_cfg_t, queue), "postgres", 0, -1, 0,
     "The queue enqueue, status and dead use when --queue is not given: postgres or redis."},
    {"REDIS_URL", RP_CFG_STR, offsetof(rp_cli_cfg_t, redis_url), NULL, 0, -1, RP_CFG_SECRET,
     "redis://[[user]:password@]host[:port][/db]; required with --queue redis."},
    {"RAGPOOL_REDIS_STREAM", RP_CFG_STR, offsetof(rp_cli_cfg_t, redis_stream), "ragpool:jobs", 0,
     -1, 0,
     "The stream of the redis queue (enqueue adds to it; status and dead read it, "
     "<stream>:delayed and <stream>:dead)."},
    {"RAGPOOL_REDIS_GROUP", RP_CFG_STR, offsetof(rp_cli_cfg_t, redis_group), "ragpool", 0, -1, 0,
     "The workers' consumer group (status counts its pending entries as running)."},
};
#define CLI_NCFG (sizeof(cli_cfg_defs) / sizeof(cli_cfg_defs[0]))

typedef struct cli_cmd {
    const char *name;
    const char *summary;
    int (*run)(const rp_cli_cfg_t *cfg, int argc, char **argv);
    void (*usage)(FILE *f);
} cli_cmd_t;

static const cli_cmd_t cli_cmds[] = {
    {"migrate", "apply the pending sql/ migrations (built into this binary)", rp_cli_migrate,
     rp_cli_migrate_usage},
    {"enqueue", "enqueue a chat job, optionally wait for its answer", rp_cli_enqueue,
     rp_cli_enqueue_usage},
    {"status", "queue depth, dead letters and recent answers", rp_cli_status, rp_cli_status_usage},
    {"dead", "list or retry dead-lettered jobs", rp_cli_dead, rp_cli_dead_usage},
    {"load-knowledge", "embed a JSONL file of documents into finance_knowledge",
     rp_cli_load_knowledge, rp_cli_load_knowledge_usage},
    {"export-training", "export conversations rated 1 as fine-tuning JSONL (a worker job)",
     rp_cli_export_training, rp_cli_export_training_usage},
    {"reembed", "re-embed a table's rows in batch, with progress", rp_cli_reembed,
     rp_cli_reembed_usage},
};
#define CLI_NCMDS (sizeof(cli_cmds) / sizeof(cli_cmds[0]))

void rp_cli_env_usage(FILE *f)
{
    rp_cfg_usage(f, cli_cfg_defs, CLI_NCFG);
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: ragpool <command> [options]\n"
               "       ragpool <command> --help\n\n"
               "Operator tool for the ragpool job queue.\n\nCommands:\n");
    for (size_t i = 0; i < CLI_NCMDS; i++)
        fprintf(f, "  %-15s %s\n", cli_cmds[i].name, cli_cmds[i].summary);
    fprintf(f, "\n");
    for (size_t i = 0; i < CLI_NCMDS; i++) {
        cli_cmds[i].usage(f);
        fprintf(f, "\n");
    }
    rp_cli_env_usage(f);
}

static int wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return 0;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return RP_CLI_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return RP_CLI_OK;
    }

    const cli_cmd_t *cmd = NULL;
    for (size_t i = 0; i < CLI_NCMDS; i++) {
        if (strcmp(argv[1], cli_cmds[i].name) == 0)
            cmd = &cli_cmds[i];
    }
    if (cmd == NULL) {
        fprintf(stderr, "ragpool: unknown command '%s' (try ragpool --help)\n", argv[1]);
        return RP_CLI_USAGE;
    }
    if (wants_help(argc - 1, argv + 1)) {
        cmd->usage(stdout);
        fprintf(stdout, "\n");
        rp_cli_env_usage(stdout);
        return RP_CLI_OK;
    }

    rp_cli_cfg_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    rp_err_t err;
    rp_err_clear(&err);
    int rc;
    if (rp_cfg_load(cli_cfg_defs, CLI_NCFG, &cfg, NULL, NULL, &err) != 0) {
        fprintf(stderr, "ragpool: %s\n", err.msg);
        rc = RP_CLI_USAGE;
        goto out;
    }
    if (cfg.database_url == NULL || cfg.database_url[0] == '\0') {
        fprintf(stderr, "ragpool: DATABASE_URL is required but empty\n");
        rc = RP_CLI_USAGE;
        goto out;
    }
    rc = cmd->run(&cfg, argc - 1, argv + 1);
out:
    rp_cfg_free(cli_cfg_defs, CLI_NCFG, &cfg);
    return rc;
}
