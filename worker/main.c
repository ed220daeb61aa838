/*
 * main.c: the ragpool-worker process.
 *
 * Loads the configuration (a bad value stops start-up with a message naming
 * the variable), raises the file-descriptor limit (thousands of jobs in
 * flight means thousands of model connections), runs one libuv loop, and
 * turns SIGTERM/SIGINT into a graceful drain (a second signal releases the
 * jobs in flight at once).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "config.h"
#include "log.h"
#include "worker.h"

typedef struct app {
    rp_worker_t *worker;
    uv_signal_t sigterm, sigint;
    int exit_code;
} app_t;

static void usage(FILE *f)
{
    fprintf(f, "Usage: ragpool-worker [--help] [--version]\n\n"
               "Claims jobs from the ragpool queue (Postgres or Redis Streams), answers\n"
               "chat jobs with\n"
               "embedding -> retrieval -> chat completion, and inserts the answer into\n"
               "conversations.  Configured entirely by the environment.\n\n");
    rp_cfg_usage(f, rp_worker_cfg_defs, rp_worker_cfg_ndefs);
}

static void on_signal(uv_signal_t *s, int signum)
{
    app_t *app = s->data;
    rp_log_info("worker.signal", NULL, "received %s", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    rp_worker_stop(app->worker);
}

static void on_stopped(void *data, int exit_code)
{
    app_t *app = data;
    app->exit_code = exit_code;
    uv_close((uv_handle_t *)&app->sigterm, NULL);
    uv_close((uv_handle_t *)&app->sigint, NULL);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("ragpool-worker 0.1.0\n");
            return 0;
        }
        fprintf(stderr, "ragpool-worker: unknown argument '%s' (see --help)\n", argv[i]);
        return 2;
    }

    rp_worker_cfg_t cfg;
    rp_err_t err;
    rp_err_clear(&err);
    if (rp_worker_cfg_load(&cfg, NULL, NULL, &err) != 0) {
        rp_log_error("worker.config_invalid", NULL, "%s", err.msg);
        fprintf(stderr, "ragpool-worker: %s\n", err.msg);
        rp_worker_cfg_free(&cfg);
        return 1;
    }
    rp_log_set_level((rp_log_level_t)rp_log_level_parse(cfg.log_level));
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    uv_loop_t loop;
    uv_loop_init(&loop);
    app_t app = {0};
    app.worker = rp_worker_new(&loop, &cfg, on_stopped, &app, &err);
    if (app.worker == NULL) {
        rp_log_error("worker.start_failed", NULL, "%s", err.msg);
        fprintf(stderr, "ragpool-worker: %s\n", err.msg);
        uv_loop_close(&loop);
        rp_worker_cfg_free(&cfg);
        return 1;
    }
    uv_signal_init(&loop, &app.sigterm);
    uv_signal_init(&loop, &app.sigint);
    app.sigterm.data = app.sigint.data = &app;
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_signal_start(&app.sigint, on_signal, SIGINT);

    char *settings = rp_cfg_dump_json(rp_worker_cfg_defs, rp_worker_cfg_ndefs, &cfg);
    rp_log_fields(RP_LOG_INFO, "worker.starting", NULL,
                  json_pack("{s:o?}", "settings", settings ? json_loads(settings, 0, NULL) : NULL));
    free(settings);

    rp_worker_start(app.worker);
    uv_run(&loop, UV_RUN_DEFAULT);

    rp_worker_free(app.worker);
    int rc = uv_loop_close(&loop);
    if (rc != 0)
        rp_log_error("worker.loop_not_empty", NULL, "%s", uv_strerror(rc));
    rp_worker_cfg_free(&cfg);
    return app.exit_code;
}
