/*
 * main.c: the ragpool-dispatcher process: reads its settings from the
 * environment (dispatcher_config.c; `--help` prints them), runs the dispatcher on one
 * libuv loop, writes the bound port to RAGPOOL_DISPATCHER_PORT_FILE once
 * listening, and drains on SIGTERM or SIGINT (a second signal stops at
 * once) so the loop ends with no handle left.
 *
 * Exit status: 0 after a clean stop, 1 on a start-up error (the message
 * names the setting), 2 on usage errors.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "dispatcher_config.h"
#include "dispatcher.h"
#include "log.h"

typedef struct app {
    rp_dispatcher_t *d;
    uv_signal_t sigint, sigterm;
    int signals;
} app_t;

static void usage(FILE *f)
{
    fprintf(f, "Usage: ragpool-dispatcher [--help]\n\n"
               "The HTTP front end of ragpool: POST /v1/chat (Supabase JWT, 202 {job_id}),\n"
               "GET /v1/jobs/{id}, GET /healthz, GET /metrics.  See docs/DISPATCHER.md.\n\n");
    rp_cfg_usage(f, rp_dispatcher_cfg_defs, rp_dispatcher_cfg_ndefs);
}

static void on_stopped(void *data)
{
    app_t *app = data;
    app->d = NULL;
    uv_close((uv_handle_t *)&app->sigint, NULL);
    uv_close((uv_handle_t *)&app->sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    app_t *app = h->data;
    app->signals++;
    if (app->d == NULL)
        return;
    if (app->signals == 1) {
        rp_log_info("dispatcher.signal", NULL, "signal %d: draining", signum);
        rp_dispatcher_shutdown(app->d, on_stopped, app);
    } else {
        rp_log_warn("dispatcher.signal", NULL, "second signal %d: stopping now", signum);
        uv_stop(h->loop);
    }
}

static int write_port_file(const char *path, int port)
{
    size_t n = strlen(path) + 8;
    char *tmp = malloc(n);
    int rc = -1;
    if (tmp == NULL)
        return -1;
    snprintf(tmp, n, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
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
    rp_dispatcher_cfg_t cfg;
    rp_err_t err = {0};
    app_t app = {0};
    uv_loop_t loop;
    int status = 1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        fprintf(stderr, "ragpool-dispatcher: unknown option %s (see --help)\n", argv[i]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (rp_dispatcher_cfg_load(&cfg, NULL, NULL, &err) < 0) {
        fprintf(stderr, "ragpool-dispatcher: %s\n", err.msg);
        goto out_cfg;
    }
    rp_log_set_level((rp_log_level_t)rp_log_level_parse(cfg.log_level));
    char *dump = rp_cfg_dump_json(rp_dispatcher_cfg_defs, rp_dispatcher_cfg_ndefs, &cfg);
    if (dump != NULL) {
        json_t *settings = json_loads(dump, 0, NULL);
        free(dump);
        if (settings != NULL)
            rp_log_fields(RP_LOG_INFO, "dispatcher.starting", NULL,
                          json_pack("{s:o}", "settings", settings));
    }

    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "ragpool-dispatcher: cannot create the event loop\n");
        goto out_cfg;
    }
    app.d = rp_dispatcher_new(&loop, &cfg, &err);
    if (app.d == NULL) {
        fprintf(stderr, "ragpool-dispatcher: %s\n", err.msg);
        goto out_loop;
    }
    uv_signal_init(&loop, &app.sigint);
    uv_signal_init(&loop, &app.sigterm);
    app.sigint.data = &app;
    app.sigterm.data = &app;
    if (rp_dispatcher_start(app.d, &err) < 0) {
        fprintf(stderr, "ragpool-dispatcher: %s\n", err.msg);
        rp_dispatcher_shutdown(app.d, on_stopped, &app);
        uv_run(&loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    int port = rp_dispatcher_port(app.d);
    if (cfg.port_file != NULL && cfg.port_file[0] != '\0' &&
        write_port_file(cfg.port_file, port) < 0) {
        fprintf(stderr, "ragpool-dispatcher: RAGPOOL_DISPATCHER_PORT_FILE: cannot write %s\n",
                cfg.port_file);
        rp_dispatcher_shutdown(app.d, on_stopped, &app);
        uv_run(&loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    rp_log_fields(RP_LOG_INFO, "dispatcher.ready", NULL,
                  json_pack("{s:s,s:i,s:s}", "host", cfg.host, "port", port, "queue", cfg.queue));

    uv_run(&loop, UV_RUN_DEFAULT);
    if (app.d != NULL) {
        /* A second signal stopped the loop mid-drain: exit without waiting. */
        rp_log_warn("dispatcher.stopped", NULL, "stopped before the drain finished");
        return 1;
    }
    rp_log_info("dispatcher.stopped", NULL, NULL);
    status = 0;

out_loop:
    if (uv_loop_close(&loop) != 0) {
        rp_log_error("dispatcher.leak", NULL, "handles left open at exit");
        status = 1;
    }
out_cfg:
    rp_dispatcher_cfg_free(&cfg);
    return status;
}
