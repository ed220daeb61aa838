/*
 * enqueue.c: `ragpool enqueue`: enqueue one chat job into the Postgres or
 * the Redis queue (--queue, default $RAGPOOL_QUEUE, else postgres) through
 * the library's producer (common/producer.h, run on a small libuv loop of
 * its own) and, with --wait, wait for its conversations row in Postgres
 * (where answers are recorded whatever the queue) and print it in a
 * readable form.  The Redis queue takes REDIS_URL and RAGPOOL_REDIS_STREAM
 * from the environment.
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
#include <uv.h>

#include "cli.h"
#include "log.h"
#include "producer.h"

#define ENQUEUE_TIMEOUT_MS 10000

void rp_cli_enqueue_usage(FILE *f)
{
    fprintf(f, "ragpool enqueue --user ID --message TEXT [--options JSON] [--job-id UUID]\n"
               "                [--max-attempts N] [--queue postgres|redis] [--wait] [--timeout SEC]\n"
               "    Enqueue a chat job and print its id.\n"
               "    --user      user id (uuid, or integer in bigint mode)\n"
               "    --message   the question\n"
               "    --options   JSON object: match_count, match_threshold, history_count, model,\n"
               "                max_tokens, temperature\n"
               "    --job-id    idempotency key: a known id is not enqueued again\n"
               "    --max-attempts  attempts before the job is dead-lettered (default 5)\n"
               "    --queue     postgres (ragpool.jobs) or redis (the stream RAGPOOL_REDIS_STREAM,\n"
               "                default ragpool:jobs, at REDIS_URL); default $RAGPOOL_QUEUE, else\n"
               "                postgres\n"
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

typedef struct enq_result {
    int done;
    int err;
    int existing;
    char id[64];
    char msg[512];
} enq_result_t;

static void enq_cb(void *data, int err, const char *job_id, int existing, const char *message)
{
    enq_result_t *r = data;
    r->done = 1;
    r->err = err;
    r->existing = existing;
    snprintf(r->id, sizeof(r->id), "%s", job_id ? job_id : "");
    snprintf(r->msg, sizeof(r->msg), "%s", message ? message : rp_strerror(err));
}

/* Enqueue e into queue with the producer on a loop of our own; fills
 * id_out.  Returns an exit status (errors printed). */
static int enqueue_with_producer(const rp_cli_cfg_t *cfg, const char *queue,
                                 const rp_enqueue_t *e, char *id_out, size_t cap)
{
    const char *redis_url = cfg->redis_url;
    const char *stream = cfg->redis_stream;
    if (strcmp(queue, "redis") == 0 && (redis_url == NULL || *redis_url == '\0')) {
        fprintf(stderr, "ragpool enqueue: REDIS_URL is required for --queue redis\n");
        return RP_CLI_USAGE;
    }
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "ragpool enqueue: cannot create an event loop\n");
        return RP_CLI_FAIL;
    }
    /* The connection's own progress lines are for services, not for a
     * one-shot command: only warnings and errors (a refused AUTH) show. */
    rp_log_set_level(RP_LOG_WARN);
    rp_producer_opts_t o = {.queue = queue,
                            .database_url = cfg->database_url,
                            .redis_url = redis_url,
                            .redis_stream = stream,
                            .timeout_ms = ENQUEUE_TIMEOUT_MS,
                            .max_batch = 1};
    rp_err_t err;
    int rc = RP_CLI_FAIL;
    enq_result_t res;
    memset(&res, 0, sizeof(res));
    rp_producer_t *p = rp_producer_new(&loop, &o, &err);
    if (p == NULL) {
        fprintf(stderr, "ragpool enqueue: %s\n", err.msg);
        rc = err.code == RP_EINVAL ? RP_CLI_USAGE : RP_CLI_FAIL;
        goto out;
    }
    int prc = rp_producer_start(p);
    if (prc == 0)
        prc = rp_producer_enqueue(p, e, enq_cb, &res);
    if (prc != 0) {
        fprintf(stderr, "ragpool enqueue: %s\n", rp_strerror(prc));
    } else {
        while (!res.done && uv_run(&loop, UV_RUN_ONCE) != 0)
            ;
        if (!res.done) {
            fprintf(stderr, "ragpool enqueue: no answer from the %s queue\n", queue);
        } else if (res.err != 0) {
            fprintf(stderr, "ragpool enqueue: %s queue: %s%s\n", queue, res.msg,
                    res.err == RP_ETIMEDOUT || res.err == RP_EIO
                        ? " (is it reachable? retry with --job-id to stay idempotent)"
                        : "");
        } else {
            snprintf(id_out, cap, "%s", res.id);
            if (res.existing)
                fprintf(stderr, "ragpool: job %s was already enqueued\n", res.id);
            rc = RP_CLI_OK;
        }
    }
    rp_producer_close(p, NULL, NULL);
out:
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        fprintf(stderr, "ragpool enqueue: the event loop did not close cleanly\n");
    return rc;
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
        {"queue", required_argument, NULL, 'q'},
        {"max-attempts", required_argument, NULL, 'a'},
        {NULL, 0, NULL, 0},
    };
    const char *user = NULL, *message = NULL, *options = "{}", *job_id = NULL;
    const char *queue = cfg->queue != NULL && cfg->queue[0] != '\0' ? cfg->queue : "postgres";
    int max_attempts = 0;
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
        case 'q':
            queue = optarg;
            break;
        case 'a': {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || v < 1 || v > 1000) {
                fprintf(stderr, "ragpool enqueue: --max-attempts must be 1 to 1000, not '%s'\n",
                        optarg);
                return RP_CLI_USAGE;
            }
            max_attempts = (int)v;
            break;
        }
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

    if (strcmp(queue, "postgres") != 0 && strcmp(queue, "redis") != 0) {
        fprintf(stderr,
                "ragpool enqueue: the queue must be postgres or redis, not '%s' "
                "(--queue or RAGPOOL_QUEUE)\n",
                queue);
        return RP_CLI_USAGE;
    }

    rp_enqueue_t e = {.job_id = job_id,
                      .user_id = user,
                      .message = message,
                      .options_json = options,
                      .max_attempts = max_attempts};
    char id[64];
    int rc = enqueue_with_producer(cfg, queue, &e, id, sizeof(id));
    if (rc != RP_CLI_OK)
        return rc;
    printf("%s\n", id);
    fflush(stdout);
    if (!wait)
        return RP_CLI_OK;
    PGconn *conn = rp_cli_connect(cfg);
    if (conn == NULL)
        return RP_CLI_FAIL;
    rc = wait_for(conn, id, timeout_s);
    PQfinish(conn);
    return rc;
}
