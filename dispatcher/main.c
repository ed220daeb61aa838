/*
 * main.c: the ragpool-dispatcher process: reads its settings from the
 * environment (dispatcher_config.c; `--help` prints them), runs one
 * dispatcher per thread (RAGPOOL_DISPATCHER_THREADS), each on its own libuv
 * loop and all on one port, writes the bound port to
 * RAGPOOL_DISPATCHER_PORT_FILE once every thread listens, and drains on
 * SIGTERM or SIGINT (a second signal stops at once) so every loop ends with
 * no handle left.
 *
 * Every dispatcher is created and started here, on the main thread, before
 * any loop runs; then each lane but the first gets its thread.  Signals
 * arrive on the main loop (lane 0), which wakes the other lanes with their
 * `stop` async; each lane reports back through `lane_done` once drained.
 *
 * Exit status: 0 after a clean stop, 1 on a start-up error (the message
 * names the setting), 2 on usage errors.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "dispatcher_config.h"
#include "dispatcher.h"
#include "log.h"

/* One thread's share: its loop and dispatcher.  Lane 0 runs on the main
 * thread, which also handles the signals; the others get their own thread
 * and a `stop` wake-up the main thread sends them. */
typedef struct lane {
    struct app *app;
    int index;
    uv_loop_t loop;
    int loop_on;
    rp_dispatcher_t *d;
    uv_async_t stop;
    uv_thread_t thread;
    int thread_on;
} lane_t;

typedef struct app {
    lane_t *lanes;
    int n;
    rp_dispatcher_shared_t *sh;
    uv_signal_t sigint, sigterm;
    uv_async_t lane_done; /* on the main loop: a lane finished its drain */
    int signals;
    atomic_int stopped; /* lanes whose dispatcher is gone */
    atomic_int hard;    /* a second signal: stop every loop now */
} app_t;

static void usage(FILE *f)
{
    fprintf(f, "Usage: ragpool-dispatcher [--help]\n\n"
               "The HTTP front end of ragpool: POST /v1/chat (Supabase JWT, 202 {job_id}),\n"
               "GET /v1/jobs/{id}, GET /healthz, GET /metrics.  See docs/DISPATCHER.md.\n\n");
    rp_cfg_usage(f, rp_dispatcher_cfg_defs, rp_dispatcher_cfg_ndefs);
}

/* On the main loop: once every lane is stopped, close what keeps the main
 * loop alive so uv_run returns. */
static void on_lane_done(uv_async_t *h)
{
    app_t *app = h->data;
    if (atomic_load(&app->stopped) < app->n)
        return;
    uv_close((uv_handle_t *)&app->sigint, NULL);
    uv_close((uv_handle_t *)&app->sigterm, NULL);
    uv_close((uv_handle_t *)&app->lane_done, NULL);
}

/* A lane's dispatcher is gone (on that lane's thread). */
static void on_lane_stopped(void *data)
{
    lane_t *lane = data;
    app_t *app = lane->app;
    lane->d = NULL;
    if (lane->index > 0)
        uv_close((uv_handle_t *)&lane->stop, NULL);
    atomic_fetch_add(&app->stopped, 1);
    uv_async_send(&app->lane_done);
}

/* On a lane's thread: the main thread asks it to drain (or, after a second
 * signal, to stop at once). */
static void on_stop(uv_async_t *h)
{
    lane_t *lane = h->data;
    if (atomic_load(&lane->app->hard))
        uv_stop(&lane->loop);
    else if (lane->d != NULL)
        rp_dispatcher_shutdown(lane->d, on_lane_stopped, lane);
}

static void run_lane(void *arg)
{
    lane_t *lane = arg;
    uv_run(&lane->loop, UV_RUN_DEFAULT);
}

static void on_signal(uv_signal_t *h, int signum)
{
    app_t *app = h->data;
    app->signals++;
    if (app->signals == 1) {
        rp_log_info("dispatcher.signal", NULL, "signal %d: draining", signum);
        for (int i = 1; i < app->n; i++)
            uv_async_send(&app->lanes[i].stop);
        if (app->lanes[0].d != NULL)
            rp_dispatcher_shutdown(app->lanes[0].d, on_lane_stopped, &app->lanes[0]);
    } else {
        rp_log_warn("dispatcher.signal", NULL, "second signal %d: stopping now", signum);
        atomic_store(&app->hard, 1);
        for (int i = 1; i < app->n; i++)
            uv_async_send(&app->lanes[i].stop);
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

/* Shut down and run to the end lanes [0, n) whose threads never started
 * (a start-up failure). */
static void unwind(app_t *app, int n)
{
    for (int i = 0; i < n; i++) {
        lane_t *lane = &app->lanes[i];
        if (lane->d != NULL) {
            rp_dispatcher_shutdown(lane->d, NULL, NULL);
            lane->d = NULL;
        }
        if (lane->loop_on)
            uv_run(&lane->loop, UV_RUN_DEFAULT);
    }
}

/* Close every loop; returns 0, or -1 when one still had handles. */
static int close_loops(app_t *app)
{
    int rc = 0;
    for (int i = 0; i < app->n; i++) {
        if (app->lanes[i].loop_on && uv_loop_close(&app->lanes[i].loop) != 0) {
            rp_log_error("dispatcher.leak", NULL, "handles left open at exit (thread %d)", i);
            rc = -1;
        }
    }
    return rc;
}

int main(int argc, char **argv)
{
    rp_dispatcher_cfg_t cfg;
    rp_err_t err = {0};
    app_t app = {0};
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

    app.n = rp_dispatcher_threads(&cfg);
    atomic_init(&app.stopped, 0);
    atomic_init(&app.hard, 0);
    app.lanes = calloc((size_t)app.n, sizeof(*app.lanes));
    app.sh = rp_dispatcher_shared_new(&cfg, app.n, &err);
    if (app.lanes == NULL || app.sh == NULL) {
        fprintf(stderr, "ragpool-dispatcher: %s\n", app.sh == NULL ? err.msg : "out of memory");
        goto out_app;
    }
    for (int i = 0; i < app.n; i++) {
        lane_t *lane = &app.lanes[i];
        lane->app = &app;
        lane->index = i;
        if (uv_loop_init(&lane->loop) != 0) {
            fprintf(stderr, "ragpool-dispatcher: cannot create the event loop\n");
            unwind(&app, i);
            goto out_loops;
        }
        lane->loop_on = 1;
        lane->d = rp_dispatcher_new(&lane->loop, &cfg, app.sh, i, &err);
        if (lane->d == NULL) {
            fprintf(stderr, "ragpool-dispatcher: %s\n", err.msg);
            unwind(&app, i + 1);
            goto out_loops;
        }
    }
    /* In order: dispatcher 0 binds the port the others share. */
    for (int i = 0; i < app.n; i++) {
        if (rp_dispatcher_start(app.lanes[i].d, &err) < 0) {
            fprintf(stderr, "ragpool-dispatcher: %s\n", err.msg);
            unwind(&app, app.n);
            goto out_loops;
        }
    }
    int port = rp_dispatcher_port(app.lanes[0].d);
    if (cfg.port_file != NULL && cfg.port_file[0] != '\0' &&
        write_port_file(cfg.port_file, port) < 0) {
        fprintf(stderr, "ragpool-dispatcher: RAGPOOL_DISPATCHER_PORT_FILE: cannot write %s\n",
                cfg.port_file);
        unwind(&app, app.n);
        goto out_loops;
    }
    uv_loop_t *main_loop = &app.lanes[0].loop;
    uv_signal_init(main_loop, &app.sigint);
    uv_signal_init(main_loop, &app.sigterm);
    uv_async_init(main_loop, &app.lane_done, on_lane_done);
    app.sigint.data = &app;
    app.sigterm.data = &app;
    app.lane_done.data = &app;
    for (int i = 1; i < app.n; i++) {
        lane_t *lane = &app.lanes[i];
        uv_async_init(&lane->loop, &lane->stop, on_stop);
        lane->stop.data = lane;
        if (uv_thread_create(&lane->thread, run_lane, lane) != 0) {
            /* The lanes already running are stopped; the process exits
             * without draining anything (nothing was accepted yet: the
             * port file may be written, but no request was answered). */
            fprintf(stderr, "ragpool-dispatcher: cannot start thread %d of %d\n", i, app.n);
            atomic_store(&app.hard, 1);
            for (int k = 1; k < i; k++)
                uv_async_send(&app.lanes[k].stop);
            for (int k = 1; k < i; k++)
                uv_thread_join(&app.lanes[k].thread);
            return 1;
        }
        lane->thread_on = 1;
    }
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    rp_log_fields(RP_LOG_INFO, "dispatcher.ready", NULL,
                  json_pack("{s:s,s:i,s:s,s:i}", "host", cfg.host, "port", port, "queue", cfg.queue,
                            "threads", app.n));

    uv_run(main_loop, UV_RUN_DEFAULT);
    if (atomic_load(&app.hard)) {
        /* A second signal stopped the loops mid-drain: exit without waiting. */
        rp_log_warn("dispatcher.stopped", NULL, "stopped before the drain finished");
        return 1;
    }
    for (int i = 1; i < app.n; i++)
        if (app.lanes[i].thread_on)
            uv_thread_join(&app.lanes[i].thread);
    rp_log_info("dispatcher.stopped", NULL, NULL);
    status = 0;

out_loops:
    if (close_loops(&app) < 0)
        status = 1;
out_app:
    rp_dispatcher_shared_free(app.sh);
    free(app.lanes);
out_cfg:
    rp_dispatcher_cfg_free(&cfg);
    return status;
}
