/*
 * enqueue.c: `ragpool enqueue`: enqueue one chat job through
 * ragpool.enqueue_chat and, with --wait, wait for its conversations row and
 * print it in a readable form.
 *
 * Waiting follows the LISTEN rules: LISTEN ragpool_done first, then look
 * for the row (it may already be there), then look again on every
 * notification and once a second regardless (a notification is a hint, the
 * table is the truth).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "cli.h"

void rp_cli_enqueue_usage(FILE *f)
{
    fprintf(f, "ragpool enqueue --user ID --message TEXT [--options JSON] [--job-id UUID]\n"
               "                [--wait] [--timeout SEC]\n"
               "    Enqueue a chat job (ragpool.enqueue_chat) and print its id.\n"
               "    --user      user id (uuid, or integer in bigint mode)\n"
               "    --message   the question\n"
               "    --options   JSON object: match_count, match_threshold, history_count, model,\n"
               "                max_tokens, temperature\n"
               "    --job-id    idempotency key: a known id is not enqueued again\n"
               "    --wait      wait for the answer and print it (exit 1 if the job failed)\n"
               "    --timeout   seconds to wait (default 60; exit 3 when reached)\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prints the timings object's stages in pipeline order, then any others. */
static void print_timings(const char *text)
{
    static const char *const order[] = {"queue_ms",    "embed_ms", "history_ms",
                                        "retrieve_ms", "infer_ms", "total_ms"};
    json_error_t jerr;
    json_t *t = json_loads(text, 0, &jerr);
    if (!json_is_object(t)) {
        printf("timings:       %s\n", text);
        json_decref(t);
        return;
    }
    printf("timings:\n");
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        json_t *v = json_object_get(t, order[i]);
        if (json_is_number(v))
            printf("  %-12s %10.1f\n", order[i], json_number_value(v));
    }
    const char *key;
    json_t *v;
    json_object_foreach(t, key, v)
    {
        int known = 0;
        for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
            known |= strcmp(key, order[i]) == 0;
        if (!known && json_is_number(v))
            printf("  %-12s %10.1f\n", key, json_number_value(v));
    }
    json_decref(t);
}

/* Looks for the job's row; prints it and sets *status_error when found.
 * Returns 1 found, 0 not yet, -1 query failed (printed). */
static int show_result(PGconn *conn, const char *job_id, int *status_error)
{
    const char *params[] = {job_id};
    PGresult *res = rp_cli_exec(
        conn, "read the answer",
        "SELECT status, response, error, model_version, prompt_tokens, completion_tokens, "
        "attempts, latency_ms, timings::text, user_id::text "
        "FROM public.conversations WHERE job_id = $1::uuid",
        1, params);
    if (res == NULL)
        return -1;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return 0;
    }
    const char *status = PQgetvalue(res, 0, 0);
    *status_error = strcmp(status, "done") != 0;
    printf("job:           %s\n", job_id);
    printf("user:          %s\n", PQgetvalue(res, 0, 9));
    printf("status:        %s\n", status);
    if (!PQgetisnull(res, 0, 2))
        printf("error:         %s\n", PQgetvalue(res, 0, 2));
    printf("model_version: %s\n", PQgetisnull(res, 0, 3) ? "-" : PQgetvalue(res, 0, 3));
    printf("tokens:        prompt %s, completion %s\n",
           PQgetisnull(res, 0, 4) ? "-" : PQgetvalue(res, 0, 4),
           PQgetisnull(res, 0, 5) ? "-" : PQgetvalue(res, 0, 5));
    printf("attempts:      %s\n", PQgetisnull(res, 0, 6) ? "-" : PQgetvalue(res, 0, 6));
    printf("latency_ms:    %s\n", PQgetisnull(res, 0, 7) ? "-" : PQgetvalue(res, 0, 7));
    if (!PQgetisnull(res, 0, 8))
        print_timings(PQgetvalue(res, 0, 8));
    printf("answer:\n%s\n", PQgetvalue(res, 0, 1));
    PQclear(res);

    /* context_used holds knowledge ids (numbers, numeric strings, or objects
     * with an id); anything else is shown as it is. */
    res = rp_cli_exec(
        conn, "read the context",
        "SELECT x.v::text, f.id, array_to_string((regexp_split_to_array(btrim(f.content), "
        "'\\s+'))[1:8], ' ') "
        "FROM public.conversations c "
        "CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(c.context_used) "
        "  WHEN 'array' THEN c.context_used ELSE '[]'::jsonb END) WITH ORDINALITY AS x(v, ord) "
        "LEFT JOIN public.finance_knowledge f ON f.id = CASE "
        "  WHEN btrim(x.v::text, '\"') ~ '^[0-9]{1,18}$' THEN btrim(x.v::text, '\"')::bigint "
        "  WHEN jsonb_typeof(x.v) = 'object' AND x.v->>'id' ~ '^[0-9]{1,18}$' "
        "    THEN (x.v->>'id')::bigint END "
        "WHERE c.job_id = $1::uuid ORDER BY x.ord",
        1, params);
    if (res == NULL)
        return 1;
    printf("context:       %d document%s\n", PQntuples(res), PQntuples(res) == 1 ? "" : "s");
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 1))
            printf("  %s (not in finance_knowledge)\n", PQgetvalue(res, i, 0));
        else
            printf("  #%s %s ...\n", PQgetvalue(res, i, 1), PQgetvalue(res, i, 2));
    }
    PQclear(res);
    return 1;
}

/* Waits for the row; returns an exit status. */
static int wait_for(PGconn *conn, const char *job_id, double timeout_s)
{
    PGresult *res = rp_cli_exec(conn, "listen", "LISTEN ragpool_done", 0, NULL);
    if (res == NULL)
        return RP_CLI_FAIL;
    PQclear(res);
    double deadline = now_s() + timeout_s;
    int status_error = 0;
    for (;;) {
        int found = show_result(conn, job_id, &status_error);
        if (found < 0)
            return RP_CLI_FAIL;
        if (found > 0)
            return status_error ? RP_CLI_FAIL : RP_CLI_OK;
        double left = deadline - now_s();
        if (left <= 0) {
            fprintf(stderr, "ragpool: no answer for job %s after %.0f s\n", job_id, timeout_s);
            return RP_CLI_TIMEOUT;
        }
        double wait = left < 1.0 ? left : 1.0;
        int fd = PQsocket(conn);
        if (fd < 0) {
            fprintf(stderr, "ragpool: lost the database connection\n");
            return RP_CLI_FAIL;
        }
        fd_set rfds;
        FD_ZERO(&rfds);
        FD_SET(fd, &rfds);
        struct timeval tv = {(time_t)wait, (suseconds_t)((wait - (double)(time_t)wait) * 1e6)};
        int n = select(fd + 1, &rfds, NULL, NULL, &tv);
        if (n < 0 && errno != EINTR) {
            perror("ragpool: select");
            return RP_CLI_FAIL;
        }
        if (n > 0 && PQconsumeInput(conn) == 0) {
            fprintf(stderr, "ragpool: lost the database connection: %s", PQerrorMessage(conn));
            return RP_CLI_FAIL;
        }
        PGnotify *note;
        while ((note = PQnotifies(conn)) != NULL)
            PQfreemem(note);
    }
}

int rp_cli_enqueue(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"user", required_argument, NULL, 'u'},
        {"message", required_argument, NULL, 'm'},
        {"options", required_argument, NULL, 'o'},
        {"job-id", required_argument, NULL, 'j'},
        {"wait", no_argument, NULL, 'w'},
        {"timeout", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    const char *user = NULL, *message = NULL, *options = "{}", *job_id = NULL;
    int wait = 0;
    double timeout_s = 60;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u':
            user = optarg;
            break;
        case 'm':
            message = optarg;
            break;
        case 'o':
            options = optarg;
            break;
        case 'j':
            job_id = optarg;
            break;
        case 'w':
            wait = 1;
            break;
        case 't': {
            char *end = NULL;
            timeout_s = strtod(optarg, &end);
            if (end == optarg || *end != '\0' || !(timeout_s > 0 && timeout_s <= 86400)) {
                fprintf(stderr, "ragpool enqueue: --timeout must be 0 to 86400 seconds, not '%s'\n",
                        optarg);
                return RP_CLI_USAGE;
            }
            break;
        }
        default:
            rp_cli_enqueue_usage(stderr);
            return RP_CLI_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "ragpool enqueue: unexpected argument '%s'\n", argv[optind]);
        return RP_CLI_USAGE;
    }
    if (user == NULL || message == NULL) {
        fprintf(stderr, "ragpool enqueue: --user and --message are required\n");
        return RP_CLI_USAGE;
    }

    PGconn *conn = rp_cli_connect(cfg);
    if (conn == NULL)
        return RP_CLI_FAIL;
    int rc = RP_CLI_FAIL;
    const char *params[] = {user, message, options, job_id};
    PGresult *res = rp_cli_exec(
        conn, "enqueue", "SELECT ragpool.enqueue_chat($1::text, $2::text, $3::jsonb, $4::uuid)", 4,
        params);
    if (res == NULL)
        goto out;
    char id[64];
    snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    printf("%s\n", id);
    fflush(stdout);
    rc = wait ? wait_for(conn, id, timeout_s) : RP_CLI_OK;
out:
    PQfinish(conn);
    return rc;
}
