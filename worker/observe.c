/*
 * observe.c: the worker's /metrics (Prometheus text) and /healthz.
 *
 * Served on RAGPOOL_METRICS_HOST:RAGPOOL_METRICS_PORT when the port is set
 * (0 leaves the endpoint off, so several workers on one host need distinct
 * ports).  Counters are bumped by the pool as jobs end; gauges that are
 * cheaper to read on demand (jobs by state, in flight, connections up) are
 * filled in by a collect hook at render time.  Nothing here is on the hot
 * path beyond a few additions per finished job.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "log.h"
#include "metrics.h"
#include "worker_int.h"

struct rp__observe {
    rp_worker_t *w;
    rp_metrics_t *m;
    rp_httpd_t *httpd;
    rp_metric_t *jobs_state;
    rp_series_t *inflight, *ready, *db_up, *draining;
    rp_series_t *done, *retried, *dead, *lost, *unrecorded;
    rp_series_t *stage[6]; /* queue, embed, history, retrieve, infer, total */
};

static void collect(void *data, rp_metrics_t *m)
{
    rp__observe_t *o = data;
    rp_worker_t *w = o->w;
    for (int s = 0; s < RP__JOB_NSTATES; s++) {
        const char *labels[1] = {rp__job_state_names[s]};
        rp_series_set(rp_metric_labels(o->jobs_state, labels), (double)w->lists[s].count);
    }
    rp_series_set(o->inflight, (double)w->inflight);
    rp_series_set(o->ready, w->ready ? 1 : 0);
    rp_series_set(o->draining, w->draining ? 1 : 0);
    size_t up = 0;
    for (size_t i = 0; i < w->ndb; i++)
        up += rp_pg_is_up(w->db[i]) ? 1 : 0;
    rp_series_set(o->db_up, (double)up);
}

static void respond_json(rp_httpd_req_t *req, int status, const char *body)
{
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    rp_httpd_respond(req, status, hdrs, body, strlen(body));
}

static void handle(void *data, rp_httpd_req_t *req)
{
    rp__observe_t *o = data;
    rp_worker_t *w = o->w;
    const char *path = rp_httpd_path(req);
    const char *method = rp_httpd_method(req);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static const char *const hdrs[] = {"Content-Type: application/json", "Allow: GET, HEAD",
                                           NULL};
        const char *body = "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"use GET\"}}";
        rp_httpd_respond(req, 405, hdrs, body, strlen(body));
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        rp_metrics_respond(o->m, req);
        return;
    }
    if (strcmp(path, "/healthz") == 0) {
        size_t up = 0;
        for (size_t i = 0; i < w->ndb; i++)
            up += rp_pg_is_up(w->db[i]) ? 1 : 0;
        char body[256];
        int ok = w->ready && !w->draining && up == w->ndb;
        snprintf(body, sizeof(body),
                 "{\"status\":\"%s\",\"ready\":%s,\"draining\":%s,\"db_connections_up\":%zu,"
                 "\"db_connections\":%zu,\"inflight\":%zu,\"queue\":\"%s\"}",
                 ok ? "ok" : "unavailable", w->ready ? "true" : "false",
                 w->draining ? "true" : "false", up, w->ndb, w->inflight,
                 w->queue->vtbl->name);
        respond_json(req, ok ? 200 : 503, body);
        return;
    }
    respond_json(req, 404,
                 "{\"error\":{\"code\":\"not_found\",\"message\":\"try /metrics or /healthz\"}}");
}

int rp__observe_init(rp_worker_t *w, rp_err_t *err)
{
    const rp_worker_cfg_t *cfg = w->cfg;
    rp__observe_t *o = calloc(1, sizeof(*o));
    if (o == NULL || (o->m = rp_metrics_new()) == NULL) {
        free(o);
        return rp_err_set(err, RP_ENOMEM, "out of memory");
    }
    o->w = w;
    rp_metrics_t *m = o->m;
    o->jobs_state = rp_metrics_gauge(m, "ragpool_worker_jobs", "Jobs in this process by state.",
                                     "state");
    o->inflight = rp_metric_labels(
        rp_metrics_gauge(m, "ragpool_worker_inflight", "Jobs in flight in this process.", NULL),
        NULL);
    o->ready = rp_metric_labels(
        rp_metrics_gauge(m, "ragpool_worker_ready", "1 once the schema was checked and claiming began.",
                         NULL),
        NULL);
    o->draining = rp_metric_labels(
        rp_metrics_gauge(m, "ragpool_worker_draining", "1 while draining on SIGTERM.", NULL), NULL);
    o->db_up = rp_metric_labels(rp_metrics_gauge(m, "ragpool_worker_db_connections_up",
                                                 "Query connections to Postgres that are up.",
                                                 NULL),
                                NULL);
    rp_metric_t *ends = rp_metrics_counter(m, "ragpool_worker_job_ends_total",
                                           "Jobs ended by this process, by outcome: done "
                                           "(answered), retry (scheduled again), dead "
                                           "(dead-lettered), lost_lease, unrecorded.",
                                           "outcome");
    const char *l[1];
    l[0] = "done";
    o->done = rp_metric_labels(ends, l);
    l[0] = "retry";
    o->retried = rp_metric_labels(ends, l);
    l[0] = "dead";
    o->dead = rp_metric_labels(ends, l);
    l[0] = "lost_lease";
    o->lost = rp_metric_labels(ends, l);
    l[0] = "unrecorded";
    o->unrecorded = rp_metric_labels(ends, l);
    rp_metric_t *stages = rp_metrics_histogram(
        m, "ragpool_worker_stage_seconds",
        "Time of each stage of answered chat jobs (queue: enqueue to claim).", "stage",
        rp_metrics_latency_bounds, rp_metrics_latency_nbounds);
    static const char *const names[6] = {"queue", "embed", "history", "retrieve", "infer",
                                         "total"};
    for (int i = 0; i < 6; i++) {
        l[0] = names[i];
        o->stage[i] = rp_metric_labels(stages, l);
    }
    rp_metrics_on_collect(m, collect, o);
    w->obs = o;

    if (cfg->metrics_port <= 0)
        return 0;
    rp_httpd_opts_t hopts = {
        .host = cfg->metrics_host,
        .port = (int)cfg->metrics_port,
        .max_body_bytes = 1024,
        .handler = handle,
        .data = o,
    };
    o->httpd = rp_httpd_new(w->loop, &hopts, err);
    if (o->httpd == NULL)
        return err->code != 0 ? err->code : RP_ENOMEM;
    int rc = rp_httpd_start(o->httpd, err);
    if (rc != 0) {
        rp_err_t inner = *err;
        return rp_err_set(err, RP_EINVAL, "RAGPOOL_METRICS_PORT=%ld: %s", cfg->metrics_port,
                          inner.msg);
    }
    rp_log_info("worker.metrics", NULL, "serving /metrics and /healthz on %s:%d",
                cfg->metrics_host, rp_httpd_port(o->httpd));
    return 0;
}

void rp__observe_job_end(rp_worker_t *w, const rp__job_t *j, rp_outcome_t outcome)
{
    rp__observe_t *o = w->obs;
    if (o == NULL)
        return;
    switch (outcome) {
    case RP_OUTCOME_DONE:
        rp_series_inc(o->done);
        if (j->t_infer_end != 0) {
            rp_series_observe(o->stage[0], j->queued_ms / 1000);
            rp_series_observe(o->stage[1], j->embed_ms / 1000);
            rp_series_observe(o->stage[2], rp__ms_between(j->t_fetch, j->t_history_end) / 1000);
            rp_series_observe(o->stage[3],
                              rp__ms_between(j->t_retrieve, j->t_retrieve_end) / 1000);
            rp_series_observe(o->stage[4], rp__ms_between(j->t_infer, j->t_infer_end) / 1000);
            rp_series_observe(o->stage[5],
                              (j->queued_ms + rp__ms_between(j->t_claimed, uv_hrtime())) / 1000);
        }
        break;
    case RP_OUTCOME_RETRY:
        rp_series_inc(o->retried);
        break;
    case RP_OUTCOME_DEAD:
        rp_series_inc(o->dead);
        break;
    case RP_OUTCOME_LOST:
        rp_series_inc(o->lost);
        break;
    case RP_OUTCOME_FAILED:
        rp_series_inc(o->unrecorded);
        break;
    }
}

typedef struct close_ctx {
    rp__observe_t *o;
    void (*cb)(void *data);
    void *data;
} close_ctx_t;

static void httpd_closed(void *data)
{
    close_ctx_t *c = data;
    rp_metrics_free(c->o->m);
    free(c->o);
    c->cb(c->data);
    free(c);
}

void rp__observe_close(rp_worker_t *w, void (*cb)(void *data), void *data)
{
    rp__observe_t *o = w->obs;
    w->obs = NULL;
    close_ctx_t *c = malloc(sizeof(*c));
    if (o == NULL || c == NULL) {
        free(c);
        if (o != NULL) {
            rp_metrics_free(o->m);
            free(o);
        }
        cb(data);
        return;
    }
    c->o = o;
    c->cb = cb;
    c->data = data;
    if (o->httpd != NULL)
        rp_httpd_close(o->httpd, httpd_closed, c);
    else
        httpd_closed(c);
}
