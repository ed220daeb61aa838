/*
 * export_training.c: `ragpool export-training` -- queue an export of the
 * conversations users rated 1 as fine-tuning data (JSONL in the reference
 * format and in OpenAI's chat format; see docs/TRAINING.md) and, with
 * --wait, print its progress (rows done / total) until it is done.
 *
 * The export itself runs in a worker (job kind "export_training"); this
 * command only creates it through ragpool.enqueue_training_export and reads
 * ragpool.training_exports.
 */
#include "export_training.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

void rp_cli_export_training_usage(FILE *f)
{
    fprintf(f, "ragpool export-training [--from TIME] [--to TIME] [--model VERSION] [--name NAME]\n"
               "                        [--bucket BUCKET] [--wait [--timeout SECONDS]]\n"
               "  Export the conversations rated 1 (feedback = 1, status done) created in\n"
               "  [--from, --to) and answered by --model (conversations.model_version) to\n"
               "  training_data and to <NAME>.jsonl (instruction/input/output) and\n"
               "  <NAME>.openai.jsonl (chat messages): files in the worker's RAGPOOL_EXPORT_DIR,\n"
               "  and Supabase Storage bucket BUCKET when given.  Prints the export id; with\n"
               "  --wait, the progress and the outputs (exit 1 if it failed, 3 on timeout).\n");
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int rp_cli_export_training(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    const char *from = NULL, *to = NULL, *model = NULL, *name = NULL, *bucket = NULL;
    int wait = 0;
    long timeout_s = 3600;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = strcmp(a, "--from") == 0     ? &from
                           : strcmp(a, "--to") == 0     ? &to
                           : strcmp(a, "--model") == 0  ? &model
                           : strcmp(a, "--name") == 0   ? &name
                           : strcmp(a, "--bucket") == 0 ? &bucket
                                                        : NULL;
        if (dst != NULL && i + 1 < argc) {
            *dst = argv[++i];
        } else if (strcmp(a, "--wait") == 0) {
            wait = 1;
        } else if (strcmp(a, "--timeout") == 0 && i + 1 < argc) {
            char *end;
            timeout_s = strtol(argv[++i], &end, 10);
            if (*end != '\0' || timeout_s <= 0) {
                fprintf(stderr, "ragpool export-training: --timeout needs a positive number\n");
                return RP_CLI_USAGE;
            }
        } else {
            fprintf(stderr, "ragpool export-training: unexpected argument '%s'\n", a);
            rp_cli_export_training_usage(stderr);
            return RP_CLI_USAGE;
        }
    }
    PGconn *conn = rp_cli_connect(cfg);
    if (conn == NULL)
        return RP_CLI_FAIL;
    int rc = RP_CLI_FAIL;
    const char *params[5] = {from, to, model, name, bucket};
    PGresult *res = rp_cli_exec(conn, "export-training",
                                "SELECT ragpool.enqueue_training_export($1::timestamptz, "
                                "$2::timestamptz, $3, $4, $5)",
                                5, params);
    if (res == NULL)
        goto out;
    char id[32];
    snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    printf("export %s queued\n", id);
    fflush(stdout);
    if (!wait) {
        rc = RP_CLI_OK;
        goto out;
    }
    const char *p1[1] = {id};
    long long last_done = -1;
    time_t deadline = time(NULL) + timeout_s;
    for (;;) {
        res = rp_cli_exec(conn, "export-training",
                          "SELECT status, rows_done, coalesce(rows_total, -1), "
                          "coalesce(outputs::text, ''), coalesce(error, '') "
                          "FROM ragpool.training_exports WHERE id = $1::bigint",
                          1, p1);
        if (res == NULL || PQntuples(res) != 1)
            goto out_res;
        const char *status = PQgetvalue(res, 0, 0);
        long long done = atoll(PQgetvalue(res, 0, 1));
        long long total = atoll(PQgetvalue(res, 0, 2));
        if (done != last_done && total >= 0) {
            printf("rows %lld/%lld\n", done, total);
            fflush(stdout);
            last_done = done;
        }
        if (strcmp(status, "done") == 0) {
            printf("done: %s\n", PQgetvalue(res, 0, 3));
            rc = RP_CLI_OK;
            goto out_res;
        }
        if (strcmp(status, "failed") == 0) {
            fprintf(stderr, "ragpool export-training: export %s failed: %s\n", id,
                    PQgetvalue(res, 0, 4));
            goto out_res;
        }
        PQclear(res);
        res = NULL;
        if (time(NULL) >= deadline) {
            fprintf(stderr, "ragpool export-training: export %s not done after %ld s\n", id,
                    timeout_s);
            rc = RP_CLI_TIMEOUT;
            goto out;
        }
        sleep_ms(300);
    }
out_res:
    PQclear(res);
out:
    PQfinish(conn);
    return rc;
}
