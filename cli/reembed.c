/*
 * reembed.c: `ragpool reembed`: start a batch re-embedding of a table
 * (ragpool.reembed_start: one batch job, which the workers split into
 * key-range chunks), watch its progress, or cancel it; and the batch lines
 * of `ragpool status`.
 *
 * Progress comes from ragpool.reembed_progress, read twice a second.  On a
 * terminal it is one line redrawn in place (a bar, rows done / total,
 * rows/s, ETA, failures); otherwise (a log, a pipe) a plain line every five
 * seconds and whenever the state changes, so logs stay readable.
 */
#include "reembed.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void rp_cli_reembed_usage(FILE *f)
{
    fprintf(f,
            "ragpool reembed --table T --id-column C --text-column C [--text-column C2 ...]\n"
            "                --embedding-column C [--where SQL] [--model M] [--dimensions D]\n"
            "                [--chunk-rows N] [--max-attempts N] [--wait] [--timeout SEC]\n"
            "    Re-embed a table's rows: one batch job, split by the workers into chunks of\n"
            "    --chunk-rows keys (default 1000) embedded in parallel; rows whose text did not\n"
            "    change since their last embedding are skipped.  Prints the batch id.\n"
            "    --text-column   repeat to embed several columns joined by newlines\n"
            "    --where         SQL condition on the table (alias t), e.g. \"t.lang = 'en'\"\n"
            "    --model         embedding model (default: the workers' RAGPOOL_EMBED_MODEL)\n"
            "    --dimensions    dimensions to ask for (default: a vector(D) column's D, else\n"
            "                    the workers' RAGPOOL_EMBED_DIMENSIONS)\n"
            "    --wait          show progress until the batch ends (exit 1 if rows failed or\n"
            "                    chunks were dead-lettered)\n"
            "    --timeout       seconds to wait (default: no limit; exit 3 when reached)\n"
            "ragpool reembed --watch ID [--timeout SEC]\n"
            "    Show the progress of batch ID until it ends.\n"
            "ragpool reembed --cancel ID\n"
            "    Stop batch ID: its queued chunks are dropped; committed rows stay.\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* "1h02m", "3m07s", "12s" into out. */
static void fmt_duration(double s, char *out, size_t len)
{
    if (s < 0) {
        snprintf(out, len, "-");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, len, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(out, len, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(out, len, "%lds", t);
}

typedef struct progress {
    char state[16];
    long long total, done, skipped, failed, chunks_total, chunks_done, chunks_dead;
    double rate, eta, elapsed;
    int has_rate, has_eta;
} progress_t;

static const char *const PROGRESS_SQL =
    "SELECT state, total, done, skipped, failed, chunks_total, chunks_done, chunks_dead, "
    "rows_per_s, eta_s, elapsed_s FROM ragpool.reembed_progress($1::bigint)";

/* Returns 1 and fills p, 0 when there is no such batch, -1 on error. */
static int read_progress(PGconn *conn, const char *id, progress_t *p)
{
    const char *params[] = {id};
    PGresult *res = rp_cli_exec(conn, "read the progress", PROGRESS_SQL, 1, params);
    if (res == NULL)
        return -1;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return 0;
    }
    snprintf(p->state, sizeof(p->state), "%s", PQgetvalue(res, 0, 0));
    long long *f[] = {&p->total,        &p->done,        &p->skipped,    &p->failed,
                      &p->chunks_total, &p->chunks_done, &p->chunks_dead};
    for (int i = 0; i < 7; i++)
        *f[i] = strtoll(PQgetvalue(res, 0, i + 1), NULL, 10);
    p->has_rate = !PQgetisnull(res, 0, 8);
    p->rate = strtod(PQgetvalue(res, 0, 8), NULL);
    p->has_eta = !PQgetisnull(res, 0, 9);
    p->eta = strtod(PQgetvalue(res, 0, 9), NULL);
    p->elapsed = strtod(PQgetvalue(res, 0, 10), NULL);
    PQclear(res);
    return 1;
}

static int finished(const progress_t *p)
{
    return strcmp(p->state, "done") == 0 || strcmp(p->state, "cancelled") == 0 ||
           strcmp(p->state, "stalled") == 0;
}

/* One progress line (without newline) into out. */
static void progress_line(const progress_t *p, int bar, char *out, size_t len)
{
    long long processed = p->done + p->skipped + p->failed;
    double frac = p->total > 0 ? (double)processed / (double)p->total : (finished(p) ? 1.0 : 0.0);
    if (frac > 1)
        frac = 1;
    char eta[32], el[32];
    fmt_duration(p->has_eta ? p->eta : -1, eta, sizeof(eta));
    fmt_duration(p->elapsed, el, sizeof(el));
    char bars[32] = "";
    if (bar) {
        const int width = 24;
        int full = (int)(frac * width + 0.5);
        bars[0] = '[';
        for (int i = 0; i < width; i++)
            bars[1 + i] = i < full ? '#' : '.';
        bars[1 + width] = ']';
        bars[2 + width] = ' ';
        bars[3 + width] = '\0';
    }
    snprintf(out, len,
             "%s%5.1f%%  %lld/%lld rows  %.0f rows/s  ETA %s  elapsed %s  skipped %lld  failed %lld"
             "%s%s",
             bars, frac * 100, processed, p->total, p->has_rate ? p->rate : 0.0, eta, el,
             p->skipped, p->failed, strcmp(p->state, "planning") == 0 ? "  (planning)" : "",
             p->chunks_dead > 0 ? "  (dead chunks!)" : "");
}

/* Watches batch id until it ends; returns an exit status. */
static int watch(PGconn *conn, const char *id, double timeout_s)
{
    int tty = isatty(STDOUT_FILENO);
    double start = now_s(), last_print = -1e9;
    char last_state[16] = "";
    progress_t p;
    for (;;) {
        memset(&p, 0, sizeof(p));
        int rc = read_progress(conn, id, &p);
        if (rc < 0)
            return RP_CLI_FAIL;
        if (rc == 0) {
            fprintf(stderr, "ragpool reembed: no batch %s\n", id);
            return RP_CLI_FAIL;
        }
        char line[256];
        int done = finished(&p);
        if (tty) {
            progress_line(&p, 1, line, sizeof(line));
            printf("\r%s\033[K", line);
            fflush(stdout);
        } else if (done || strcmp(p.state, last_state) != 0 || now_s() - last_print >= 5) {
            progress_line(&p, 0, line, sizeof(line));
            printf("batch %s %s: %s\n", id, p.state, line);
            fflush(stdout);
            last_print = now_s();
        }
        snprintf(last_state, sizeof(last_state), "%s", p.state);
        if (done)
            break;
        if (timeout_s > 0 && now_s() - start >= timeout_s) {
            if (tty)
                printf("\n");
            fprintf(stderr, "ragpool reembed: batch %s not finished after %.0f s\n", id, timeout_s);
            return RP_CLI_TIMEOUT;
        }
        sleep_s(tty ? 0.5 : 1.0);
    }
    if (tty)
        printf("\n");
    printf("batch %s %s: %lld embedded, %lld skipped (unchanged or empty), %lld failed of %lld "
           "rows; %lld/%lld chunks",
           id, p.state, p.done, p.skipped, p.failed, p.total, p.chunks_done, p.chunks_total);
    if (p.chunks_dead > 0)
        printf(", %lld dead-lettered (ragpool dead list; ragpool dead retry --all)", p.chunks_dead);
    printf("\n");
    if (p.failed > 0)
        printf("failed rows: SELECT row_id, reason FROM ragpool.reembed_failures WHERE batch_id = "
               "%s\n",
               id);
    return strcmp(p.state, "done") == 0 && p.failed == 0 ? RP_CLI_OK : RP_CLI_FAIL;
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "ragpool reembed: %s must be %ld to %ld, not '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* The names as a text[] literal ({"a","b"}, quotes and backslashes escaped)
 * into out; returns -1 when it does not fit. */
static int names_literal(const char *const *names, int n, char *out, size_t len)
{
    size_t k = 0;
    out[k++] = '{';
    for (int i = 0; i < n; i++) {
        if (k + 2 * strlen(names[i]) + 4 >= len)
            return -1;
        if (i > 0)
            out[k++] = ',';
        out[k++] = '"';
        for (const char *p = names[i]; *p != '\0'; p++) {
            if (*p == '"' || *p == '\\')
                out[k++] = '\\';
            out[k++] = *p;
        }
        out[k++] = '"';
    }
    out[k++] = '}';
    out[k] = '\0';
    return 0;
}

int rp_cli_reembed(const rp_cli_cfg_t *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"table", required_argument, NULL, 'T'},
        {"id-column", required_argument, NULL, 'i'},
        {"text-column", required_argument, NULL, 'x'},
        {"embedding-column", required_argument, NULL, 'e'},
        {"where", required_argument, NULL, 'w'},
        {"model", required_argument, NULL, 'm'},
        {"dimensions", required_argument, NULL, 'd'},
        {"chunk-rows", required_argument, NULL, 'c'},
        {"max-attempts", required_argument, NULL, 'a'},
        {"wait", no_argument, NULL, 'W'},
        {"timeout", required_argument, NULL, 't'},
        {"watch", required_argument, NULL, 'S'},
        {"cancel", required_argument, NULL, 'C'},
        {NULL, 0, NULL, 0},
    };
    const char *table = NULL, *id_col = NULL, *emb_col = NULL, *where = NULL, *model = NULL;
    const char *watch_id = NULL, *cancel_id = NULL;
    const char *texts[16];
    char text_cols[2048];
    long dims = 0, chunk_rows = 1000, max_attempts = 10, tmp = 0;
    int wait = 0, ntext = 0;
    double timeout_s = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'T':
            table = optarg;
            break;
        case 'i':
            id_col = optarg;
            break;
        case 'x':
            if (ntext == (int)(sizeof(texts) / sizeof(texts[0]))) {
                fprintf(stderr, "ragpool reembed: too many --text-column\n");
                return RP_CLI_USAGE;
            }
            texts[ntext++] = optarg;
            break;
        case 'e':
            emb_col = optarg;
            break;
        case 'w':
            where = optarg;
            break;
        case 'm':
            model = optarg;
            break;
        case 'd':
            if (parse_long("--dimensions", optarg, 1, 16000, &dims) != 0)
                return RP_CLI_USAGE;
            break;
        case 'c':
            if (parse_long("--chunk-rows", optarg, 1, 100000, &chunk_rows) != 0)
                return RP_CLI_USAGE;
            break;
        case 'a':
            if (parse_long("--max-attempts", optarg, 1, 1000, &max_attempts) != 0)
                return RP_CLI_USAGE;
            break;
        case 'W':
            wait = 1;
            break;
        case 't':
            if (parse_long("--timeout", optarg, 1, 30 * 86400, &tmp) != 0)
                return RP_CLI_USAGE;
            timeout_s = (double)tmp;
            break;
        case 'S':
            watch_id = optarg;
            break;
        case 'C':
            cancel_id = optarg;
            break;
        default:
            rp_cli_reembed_usage(stderr);
            return RP_CLI_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "ragpool reembed: unexpected argument '%s'\n", argv[optind]);
        return RP_CLI_USAGE;
    }
    int start = watch_id == NULL && cancel_id == NULL;
    if ((watch_id != NULL) + (cancel_id != NULL) > 1 ||
        (start && (table == NULL || id_col == NULL || ntext == 0 || emb_col == NULL))) {
        fprintf(stderr, "ragpool reembed: give --table, --id-column, --text-column and "
                        "--embedding-column (or --watch ID, or --cancel ID)\n");
        return RP_CLI_USAGE;
    }
    if (start && names_literal(texts, ntext, text_cols, sizeof(text_cols)) != 0) {
        fprintf(stderr, "ragpool reembed: the --text-column names are too long\n");
        return RP_CLI_USAGE;
    }
    for (const char *ids[] = {watch_id, cancel_id}, **p = ids; p < ids + 2; p++) {
        if (*p != NULL && parse_long("the batch id", *p, 1, 0x7fffffffL, &tmp) != 0)
            return RP_CLI_USAGE;
    }

    PGconn *conn = rp_cli_connect(cfg);
    if (conn == NULL)
        return RP_CLI_FAIL;
    int rc = RP_CLI_FAIL;
    if (cancel_id != NULL) {
        const char *params[] = {cancel_id};
        PGresult *res = rp_cli_exec(conn, "cancel the batch",
                                    "SELECT ragpool.reembed_cancel($1::bigint)", 1, params);
        if (res != NULL) {
            int was = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
            printf(was ? "batch %s cancelled\n" : "batch %s is not running\n", cancel_id);
            rc = was ? RP_CLI_OK : RP_CLI_FAIL;
            PQclear(res);
        }
        goto out;
    }
    if (watch_id != NULL) {
        rc = watch(conn, watch_id, timeout_s);
        goto out;
    }

    char d[32], cr[32], ma[32], id[32];
    snprintf(d, sizeof(d), "%ld", dims);
    snprintf(cr, sizeof(cr), "%ld", chunk_rows);
    snprintf(ma, sizeof(ma), "%ld", max_attempts);
    const char *params[] = {table, id_col,          text_cols, emb_col, where,
                            model, dims ? d : NULL, cr,        ma};
    PGresult *res =
        rp_cli_exec(conn, "start the batch",
                    "SELECT ragpool.reembed_start($1::regclass, $2, $3::name[], $4, $5, "
                    "$6, $7::int, $8::int, $9::int)",
                    9, params);
    if (res == NULL)
        goto out;
    snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    printf("%s\n", id);
    fflush(stdout);
    rc = wait ? watch(conn, id, timeout_s) : RP_CLI_OK;
out:
    PQfinish(conn);
    return rc;
}

int rp_cli_reembed_status(PGconn *conn, json_t *out)
{
    PGresult *res = rp_cli_exec(
        conn, "look for re-embedding",
        "SELECT to_regprocedure('ragpool.reembed_progress(bigint)') IS NOT NULL", 0, NULL);
    if (res == NULL)
        return -1;
    int present = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!present)
        return 0; /* a database migrated before re-embedding existed */
    res = rp_cli_exec(
        conn, "read the re-embedding batches",
        "SELECT p.batch_id, p.table_name, p.embedding_column, p.state, p.total, p.done, "
        "p.skipped, p.failed, p.chunks_total, p.chunks_done, p.chunks_dead, p.rows_per_s, "
        "p.eta_s, p.elapsed_s "
        "FROM ragpool.reembed_progress() p "
        "WHERE p.kind = 'batch' "
        "  AND (p.state NOT IN ('done', 'cancelled') "
        "       OR p.finished_at > clock_timestamp() - interval '1 hour') "
        "ORDER BY p.batch_id",
        0, NULL);
    if (res == NULL)
        return -1;
    json_t *a = out != NULL ? json_array() : NULL;
    if (out == NULL && PQntuples(res) > 0)
        printf("reembed:\n");
    for (int i = 0; i < PQntuples(res); i++) {
        progress_t p;
        memset(&p, 0, sizeof(p));
        snprintf(p.state, sizeof(p.state), "%s", PQgetvalue(res, i, 3));
        long long *f[] = {&p.total,        &p.done,        &p.skipped,    &p.failed,
                          &p.chunks_total, &p.chunks_done, &p.chunks_dead};
        for (int k = 0; k < 7; k++)
            *f[k] = strtoll(PQgetvalue(res, i, k + 4), NULL, 10);
        p.has_rate = !PQgetisnull(res, i, 11);
        p.rate = strtod(PQgetvalue(res, i, 11), NULL);
        p.has_eta = !PQgetisnull(res, i, 12);
        p.eta = strtod(PQgetvalue(res, i, 12), NULL);
        p.elapsed = strtod(PQgetvalue(res, i, 13), NULL);
        if (a != NULL) {
            json_array_append_new(
                a,
                json_pack("{s:I, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o}",
                          "batch", (json_int_t)strtoll(PQgetvalue(res, i, 0), NULL, 10), "table",
                          PQgetvalue(res, i, 1), "embedding_column", PQgetvalue(res, i, 2), "state",
                          p.state, "total", (json_int_t)p.total, "done", (json_int_t)p.done,
                          "skipped", (json_int_t)p.skipped, "failed", (json_int_t)p.failed,
                          "chunks_total", (json_int_t)p.chunks_total, "chunks_done",
                          (json_int_t)p.chunks_done, "chunks_dead", (json_int_t)p.chunks_dead,
                          "rows_per_s", p.has_rate ? json_real(p.rate) : json_null(), "eta_s",
                          p.has_eta ? json_real(p.eta) : json_null()));
        } else {
            char line[256];
            progress_line(&p, 0, line, sizeof(line));
            printf("  batch %s %s.%s %s: %s\n", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                   PQgetvalue(res, i, 2), p.state, line);
        }
    }
    if (a != NULL)
        json_object_set_new(out, "reembed", a);
    PQclear(res);
    return 0;
}
