/*
 * status.c: `ragpool status` (queue depth, dead letters, recent answers) and
 * `ragpool dead list|retry`, human readable or, with --json, one JSON
 * document for machines.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "job.h"
#include "redis_queue.h"
#include "reembed.h"

void rp_cli_status_usage(FILE *f)
{
    fprintf(f, "ragpool status [--json] [--queue postgres|redis]\n"
               "    Jobs queued (due now), scheduled (waiting to retry), running, dead letters,\n"
               "    and conversations rows (done, error) written in the last minute.  With the\n"
               "    redis queue: the stream's undelivered entries, pending entries (running),\n"
               "    <stream>:delayed and <stream>:dead.\n");
}

void rp_cli_dead_usage(FILE *f)
{
    fprintf(f, "ragpool dead list [--limit N] [--json] [--queue postgres|redis]\n"
               "    The newest dead-lettered jobs (default 20): id, kind, attempts, reason,\n"
               "    last error, when (ragpool.dead_jobs, or <stream>:dead for redis).\n"
               "ragpool dead retry (ID | --all) [--queue postgres|redis]\n"
               "    Move one (or every) dead job back to the queue with its attempts reset;\n"
               "    the error row it left in conversations is removed.\n"
               "--queue defaults to $RAGPOOL_QUEUE (postgres).\n");
}

/* Prints one JSON value (taking ownership of it) on stdout. */
static int print_json(json_t *v)
{
    if (v == NULL) {
        fprintf(stderr, "ragpool: out of memory\n");
        return RP_CLI_FAIL;
    }
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(v);
    if (s == NULL) {
        fprintf(stderr, "ragpool: out of memory\n");
        return RP_CLI_FAIL;
    }
    printf("%s\n", s);
    free(s);
    return RP_CLI_OK;
}

/* --queue's value, checked: "postgres" or "redis"; NULL when wrong. */
static const char *check_queue(const char *q)
{
    if (q != NULL && (strcmp(q, "postgres") == 0 || strcmp(q, "redis") == 0))
        return q;
    fprintf(stderr, "ragpool: the queue must be postgres or redis, not '%s'\n", q ? q : "");
    return NULL;
}

static const char *default_queue(const rp_cli_cfg_t *cfg)
{
    return cfg->queue != NULL && cfg->queue[0] != '\0' ? cfg->queue : "postgres";
}

static int parse_json_flag(int argc, char **argv, int *json, long *limit, const char **queue)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"limit", required_argument, NULL, 'l'},
        {"queue", required_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'j':
            *json = 1;
            break;
        case 'q':
            *queue = optarg;
            break;
        case 'l': {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (limit == NULL || end == optarg || *end != '\0' || v < 1 || v > 100000) {
                fprintf(stderr, "ragpool: --limit must be 1 to 100000\n");
                return -1;
            }
            *limit = v;
            break;
        }
        default:
            return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "ragpool: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    return check_queue(*queue) != NULL ? 0 : -1;
}

/* The Redis queue's counts in the shape of ragpool.queue_stats(), so
 * the same printing serves both queues. */
static int redis_counts(const rp_cli_cfg_t *cfg, char vals[4][32], char *oldest, size_t cap)
{
    rp_cli_redis_counts_t n;
    const char *group =
        cfg->redis_group != NULL && cfg->redis_group[0] ? cfg->redis_group : "ragpool";
    if (rp_cli_redis_status(cfg, group, &n) != RP_CLI_OK)
        return -1;
    snprintf(vals[0], 32, "%lld", n.queued);
    snprintf(vals[1], 32, "%lld", n.scheduled);
    snprintf(vals[2], 32, "%lld", n.running);
    snprintf(vals[3], 32, "%lld", n.dead);
    snprintf(oldest, cap, "%.1f", n.oldest_s);
    return 0;
}

int rp_cli_status(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    int json = 0;
    const char *queue = default_queue(cfg);
    if (parse_json_flag(argc, argv, &json, NULL, &queue) != 0) {
        rp_cli_status_usage(stderr);
        return RP_CLI_USAGE;
    }
    int redis = strcmp(queue, "redis") == 0;
    char rvals[4][32], roldest[32];
    if (redis && redis_counts(cfg, rvals, roldest, sizeof(roldest)) != 0)
        return RP_CLI_FAIL;
    PGconn *conn = rp_cli_connect(cfg);
    if (conn == NULL)
        return RP_CLI_FAIL;
    int rc = RP_CLI_FAIL;
    PGresult *res = rp_cli_exec(
        conn, "read the queue",
        "SELECT s.queued, s.scheduled, s.running, s.dead, "
        "  (SELECT count(*) FROM public.conversations c "
        "    WHERE c.created_at > now() - interval '1 minute' AND c.status = 'done'), "
        "  (SELECT count(*) FROM public.conversations c "
        "    WHERE c.created_at > now() - interval '1 minute' AND c.status = 'error'), "
        "  (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(j.run_at)), "
        "0)::numeric(12,1) "
        "     FROM ragpool.jobs j WHERE j.state = 'queued' AND j.run_at <= clock_timestamp()) "
        "FROM ragpool.queue_stats() s",
        0, NULL);
    if (res == NULL)
        goto out;
    /* Columns 0-3 and 6 describe the queue (Postgres' unless redis). */
    const char *v[7];
    for (int i = 0; i < 7; i++)
        v[i] = PQgetvalue(res, 0, i);
    if (redis) {
        for (int i = 0; i < 4; i++)
            v[i] = rvals[i];
        v[6] = roldest;
    }
    static const char *const names[] = {"queued",        "scheduled",       "running",     "dead",
                                        "done_last_min", "errors_last_min", "oldest_due_s"};
    if (json) {
        json_t *o = json_object();
        if (o != NULL)
            json_object_set_new(o, "queue", json_string(queue));
        for (int i = 0; i < 7 && o != NULL; i++)
            json_object_set_new(o, names[i],
                                i == 6 ? json_real(strtod(v[i], NULL))
                                       : json_integer(strtoll(v[i], NULL, 10)));
        int batches = o != NULL ? rp_cli_reembed_status(conn, o) : 0;
        rc = print_json(o);
        if (batches != 0)
            rc = RP_CLI_FAIL;
    } else {
        if (redis)
            printf("queue:   %s waiting in %s, %s scheduled (retry later), %s running "
                   "(pending)\n",
                   v[0], cfg->redis_stream, v[1], v[2]);
        else
            printf("queue:   %s queued, %s scheduled (retry later), %s running\n", v[0], v[1],
                   v[2]);
        printf("oldest:  %s s %s\n", v[6], redis ? "since the oldest entry was added" : "waiting");
        printf("dead:    %s dead letters (ragpool dead list%s)\n", v[3],
               redis ? " --queue redis" : "");
        printf("answers: %s done, %s errors in the last minute\n", v[4], v[5]);
        rc = rp_cli_reembed_status(conn, NULL) == 0 ? RP_CLI_OK : RP_CLI_FAIL;
    }
    PQclear(res);
out:
    PQfinish(conn);
    return rc;
}

static int dead_list(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    int json = 0;
    long limit = 20;
    const char *queue = default_queue(cfg);
    if (parse_json_flag(argc, argv, &json, &limit, &queue) != 0) {
        rp_cli_dead_usage(stderr);
        return RP_CLI_USAGE;
    }
    if (strcmp(queue, "redis") == 0)
        return rp_cli_redis_dead_list(cfg, json, limit);
    PGconn *conn = rp_cli_connect(cfg);
    if (conn == NULL)
        return RP_CLI_FAIL;
    char lim[32];
    snprintf(lim, sizeof(lim), "%ld", limit);
    const char *params[] = {lim};
    PGresult *res = rp_cli_exec(conn, "list dead jobs",
                                "SELECT id, kind, attempts, reason, coalesce(last_error, ''), "
                                "to_char(failed_at AT TIME ZONE 'UTC', "
                                "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') "
                                "FROM ragpool.dead_jobs ORDER BY failed_at DESC LIMIT $1::int",
                                1, params);
    if (res == NULL) {
        PQfinish(conn);
        return RP_CLI_FAIL;
    }
    int rc;
    if (json) {
        json_t *a = json_array();
        for (int i = 0; i < PQntuples(res) && a != NULL; i++) {
            json_array_append_new(
                a, json_pack("{s:s, s:s, s:I, s:s, s:s, s:s}", "id", PQgetvalue(res, i, 0), "kind",
                             PQgetvalue(res, i, 1), "attempts",
                             (json_int_t)strtoll(PQgetvalue(res, i, 2), NULL, 10), "reason",
                             PQgetvalue(res, i, 3), "last_error", PQgetvalue(res, i, 4),
                             "failed_at", PQgetvalue(res, i, 5)));
        }
        rc = print_json(a);
    } else {
        if (PQntuples(res) == 0)
            printf("no dead letters\n");
        for (int i = 0; i < PQntuples(res); i++) {
            printf("%s  %s  %s attempts  %s  %s\n    %s\n", PQgetvalue(res, i, 0),
                   PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), PQgetvalue(res, i, 3),
                   PQgetvalue(res, i, 5), PQgetvalue(res, i, 4));
        }
        rc = RP_CLI_OK;
    }
    PQclear(res);
    PQfinish(conn);
    return rc;
}

static int dead_retry(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    const char *id = NULL;
    const char *queue = default_queue(cfg);
    int all = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--all") == 0)
            all = 1;
        else if (strcmp(argv[i], "--queue") == 0 && i + 1 < argc)
            queue = argv[++i];
        else if (strncmp(argv[i], "--queue=", 8) == 0)
            queue = argv[i] + 8;
        else if (id == NULL && argv[i][0] != '-')
            id = argv[i];
        else {
            fprintf(stderr, "ragpool dead retry: unexpected argument '%s'\n", argv[i]);
            return RP_CLI_USAGE;
        }
    }
    if (all == (id != NULL)) {
        fprintf(stderr, "ragpool dead retry: give one job id or --all\n");
        return RP_CLI_USAGE;
    }
    if (check_queue(queue) == NULL)
        return RP_CLI_USAGE;
    if (id != NULL && !rp_uuid_valid(id)) {
        fprintf(stderr, "ragpool dead retry: '%s' is not a job id (a uuid)\n", id);
        return RP_CLI_USAGE;
    }
    PGconn *conn = rp_cli_connect(cfg);
    if (conn == NULL)
        return RP_CLI_FAIL;
    if (strcmp(queue, "redis") == 0) {
        int rc = rp_cli_redis_dead_retry(cfg, conn, id, all);
        PQfinish(conn);
        return rc;
    }
    const char *params[] = {id};
    PGresult *res =
        rp_cli_exec(conn, "retry dead jobs", "SELECT ragpool.retry_dead($1::uuid)", 1, params);
    PQfinish(conn);
    if (res == NULL)
        return RP_CLI_FAIL;
    long n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    printf("requeued %ld job%s\n", n, n == 1 ? "" : "s");
    if (id != NULL && n == 0) {
        fprintf(stderr, "ragpool dead retry: no dead job %s\n", id);
        return RP_CLI_FAIL;
    }
    return RP_CLI_OK;
}

int rp_cli_dead(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "list") != 0 && strcmp(argv[1], "retry") != 0)) {
        rp_cli_dead_usage(stderr);
        return RP_CLI_USAGE;
    }
    return strcmp(argv[1], "list") == 0 ? dead_list(cfg, argc - 1, argv + 1)
                                        : dead_retry(cfg, argc - 1, argv + 1);
}
