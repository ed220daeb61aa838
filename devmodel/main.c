/*
 * main.c: the ragpool-devmodel process: reads its settings (flags override
 * DEVMODEL_* environment variables), runs the development model server on
 * one libuv loop, writes the bound port to --port-file once listening, and
 * closes everything on SIGINT or SIGTERM so the loop ends with no handle
 * left.  See docs/DEVMODEL.md.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cfg.h"
#include "err.h"
#include "fault.h"
#include "log.h"
#include "server.h"

typedef struct settings {
    char *host;
    long port;
    char *port_file;
    char *api_key;
    long latency_ms;
    long latency_jitter_ms;
    double fault_rate;
    char *fault_kind;
    int verbose;
    long seed;
    char *log_level;
} settings_t;

#define OFF(f) offsetof(settings_t, f)

static const rp_cfg_def_t defs[] = {
    {"DEVMODEL_HOST", RP_CFG_STR, OFF(host), "127.0.0.1", 1, 0, 0,
     "Address to listen on (--host)."},
    {"DEVMODEL_PORT", RP_CFG_INT, OFF(port), "8089", 0, 65535, 0,
     "Port to listen on; 0 picks a free port (--port)."},
    {"DEVMODEL_PORT_FILE", RP_CFG_STR, OFF(port_file), NULL, 1, 0, 0,
     "File to write the bound port to once listening (--port-file)."},
    {"DEVMODEL_API_KEY", RP_CFG_STR, OFF(api_key), NULL, 1, 0, RP_CFG_SECRET,
     "When set, /v1 requests need 'Authorization: Bearer <key>' (--api-key)."},
    {"DEVMODEL_LATENCY_MS", RP_CFG_INT, OFF(latency_ms), "0", 0, 3600000, 0,
     "Fixed delay before every model answer, in ms (--latency-ms)."},
    {"DEVMODEL_LATENCY_JITTER_MS", RP_CFG_INT, OFF(latency_jitter_ms), "0", 0, 3600000, 0,
     "Extra uniform random delay 0..J ms (--latency-jitter-ms)."},
    {"DEVMODEL_FAULT_RATE", RP_CFG_DOUBLE, OFF(fault_rate), "0", 0, 1, 0,
     "Share of model requests answered with the fault kind, 0..1 (--fault-rate)."},
    {"DEVMODEL_FAULT_KIND", RP_CFG_STR, OFF(fault_kind), "500", 1, 0, 0,
     "Fault for --fault-rate: 429, 500, 503, 400, stall, truncate or malformed "
     "(--fault-kind)."},
    {"DEVMODEL_VERBOSE", RP_CFG_BOOL, OFF(verbose), "false", 1, 0, 0,
     "Log one line per request (--verbose)."},
    {"DEVMODEL_SEED", RP_CFG_INT, OFF(seed), "0", 0, 2147483647, 0,
     "Seed for latency jitter and fault draws; 0 seeds from the clock (--seed)."},
    {"DEVMODEL_LOG_LEVEL", RP_CFG_STR, OFF(log_level), "info", 1, 0, 0,
     "Lowest log level written: debug, info, warn or error (--log-level)."},
};
#define NDEFS (sizeof(defs) / sizeof(defs[0]))

/* Command-line flags, each the name of the variable it overrides. */
static const struct {
    const char *flag;
    const char *var;
    int is_switch;
} flags[] = {
    {"--host", "DEVMODEL_HOST", 0},
    {"--port", "DEVMODEL_PORT", 0},
    {"--port-file", "DEVMODEL_PORT_FILE", 0},
    {"--api-key", "DEVMODEL_API_KEY", 0},
    {"--latency-ms", "DEVMODEL_LATENCY_MS", 0},
    {"--latency-jitter-ms", "DEVMODEL_LATENCY_JITTER_MS", 0},
    {"--fault-rate", "DEVMODEL_FAULT_RATE", 0},
    {"--fault-kind", "DEVMODEL_FAULT_KIND", 0},
    {"--verbose", "DEVMODEL_VERBOSE", 1},
    {"--seed", "DEVMODEL_SEED", 0},
    {"--log-level", "DEVMODEL_LOG_LEVEL", 0},
};
#define NFLAGS (sizeof(flags) / sizeof(flags[0]))

typedef struct args {
    const char *values[NFLAGS];
} args_t;

static const char *lookup(const char *name, void *data)
{
    const args_t *a = data;
    for (size_t i = 0; i < NFLAGS; i++)
        if (strcmp(flags[i].var, name) == 0 && a->values[i] != NULL)
            return a->values[i];
    return getenv(name);
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: ragpool-devmodel [options]\n\n"
               "The development model server: OpenAI-compatible /v1/embeddings and\n"
               "/v1/chat/completions (and Replicate-style /v1/predictions) with\n"
               "deterministic answers, configurable latency and injectable faults.\n\n"
               "Options (each overrides the environment variable named below):\n");
    for (size_t i = 0; i < NFLAGS; i++)
        fprintf(f, "  %-22s %s\n", flags[i].flag, flags[i].var);
    fprintf(f, "  %-22s %s\n\n", "--help", "print this help and exit");
    rp_cfg_usage(f, defs, NDEFS);
}

/* Parse argv into a; returns 0, 1 for --help, or -1 after printing why. */
static int parse_args(int argc, char **argv, args_t *a)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return 1;
        size_t k = 0;
        const char *value = NULL;
        for (; k < NFLAGS; k++) {
            size_t n = strlen(flags[k].flag);
            if (strncmp(arg, flags[k].flag, n) != 0)
                continue;
            if (arg[n] == '=') {
                value = arg + n + 1;
                break;
            }
            if (arg[n] == '\0')
                break;
        }
        if (k == NFLAGS) {
            fprintf(stderr, "ragpool-devmodel: unknown option %s (see --help)\n", arg);
            return -1;
        }
        if (value == NULL) {
            if (flags[k].is_switch) {
                value = "true";
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                fprintf(stderr, "ragpool-devmodel: %s needs a value\n", arg);
                return -1;
            }
        }
        a->values[k] = value;
    }
    return 0;
}

typedef struct app {
    uv_loop_t *loop;
    rp_devmodel_t *server;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    int stopping;
} app_t;

static void on_signal(uv_signal_t *h, int signum)
{
    app_t *app = h->data;
    if (app->stopping)
        return;
    app->stopping = 1;
    rp_log_info("devmodel.stopping", NULL, "signal %d", signum);
    uv_close((uv_handle_t *)&app->sigint, NULL);
    uv_close((uv_handle_t *)&app->sigterm, NULL);
    rp_devmodel_close(app->server, NULL, NULL);
}

/* Write the port to path atomically (a temporary file renamed over it), so
 * a script polling for the file never reads half of it. */
static int write_port_file(const char *path, int port)
{
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (tmp == NULL)
        return -1;
    snprintf(tmp, n, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int rc = -1;
    if (f != NULL) {
        int ok = fprintf(f, "%d\n", port) > 0;
        if (fclose(f) == 0 && ok && rename(tmp, path) == 0)
            rc = 0;
    }
    if (rc < 0)
        remove(tmp);
    free(tmp);
    return rc;
}

int main(int argc, char **argv)
{
    args_t a = {{0}};
    settings_t st;
    rp_err_t err = {0};
    app_t app = {0};
    uv_loop_t loop;
    int status = 1;

    memset(&st, 0, sizeof(st));
    int pa = parse_args(argc, argv, &a);
    if (pa != 0) {
        if (pa > 0)
            usage(stdout);
        return pa > 0 ? 0 : 2;
    }
    if (rp_cfg_load(defs, NDEFS, &st, lookup, &a, &err) < 0) {
        fprintf(stderr, "ragpool-devmodel: %s\n", err.msg);
        goto out_cfg;
    }
    int level = rp_log_level_parse(st.log_level);
    if (level < 0) {
        fprintf(stderr, "ragpool-devmodel: DEVMODEL_LOG_LEVEL must be debug, info, warn or "
                        "error\n");
        goto out_cfg;
    }
    rp_log_set_level((rp_log_level_t)level);
    int kind = rp_fault_parse(st.fault_kind, strlen(st.fault_kind));
    if (kind < 0) {
        fprintf(stderr,
                "ragpool-devmodel: DEVMODEL_FAULT_KIND must be one of none, 429, 500, "
                "503, 400, stall, truncate, malformed (got \"%s\")\n",
                st.fault_kind);
        goto out_cfg;
    }

    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "ragpool-devmodel: cannot create the event loop\n");
        goto out_cfg;
    }
    app.loop = &loop;
    rp_devmodel_opts_t opts = {
        .host = st.host,
        .port = (int)st.port,
        .api_key = st.api_key,
        .latency_ms = st.latency_ms,
        .latency_jitter_ms = st.latency_jitter_ms,
        .fault_rate = st.fault_rate,
        .fault_kind = (rp_fault_kind_t)kind,
        .verbose = st.verbose,
        .seed = (unsigned long)st.seed,
    };
    app.server = rp_devmodel_new(&loop, &opts, &err);
    if (app.server == NULL) {
        rp_log_error("devmodel.start_failed", NULL, "%s", err.msg);
        goto out_loop;
    }
    if (rp_devmodel_start(app.server, &err) < 0) {
        rp_log_error("devmodel.start_failed", NULL, "%s", err.msg);
        rp_devmodel_close(app.server, NULL, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    int port = rp_devmodel_port(app.server);
    if (st.port_file != NULL && st.port_file[0] != '\0' &&
        write_port_file(st.port_file, port) < 0) {
        rp_log_error("devmodel.start_failed", NULL, "cannot write the port file %s", st.port_file);
        rp_devmodel_close(app.server, NULL, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    uv_signal_init(&loop, &app.sigint);
    uv_signal_init(&loop, &app.sigterm);
    app.sigint.data = &app;
    app.sigterm.data = &app;
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);

    json_t *fields =
        json_pack("{s:s,s:i,s:I,s:I,s:f,s:s,s:b}", "host", st.host, "port", port, "latency_ms",
                  (json_int_t)st.latency_ms, "latency_jitter_ms", (json_int_t)st.latency_jitter_ms,
                  "fault_rate", st.fault_rate, "fault_kind", rp_fault_name((rp_fault_kind_t)kind),
                  "auth", st.api_key != NULL && st.api_key[0] != '\0');
    rp_log_fields(RP_LOG_INFO, "devmodel.listening", NULL, fields);

    uv_run(&loop, UV_RUN_DEFAULT);
    rp_log_info("devmodel.stopped", NULL, NULL);
    status = 0;

out_loop:
    if (uv_loop_close(&loop) != 0) {
        rp_log_error("devmodel.leak", NULL, "handles left open at exit");
        status = 1;
    }
out_cfg:
    rp_cfg_free(defs, NDEFS, &st);
    return status;
}
