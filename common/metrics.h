/*
 * metrics.h: a small metrics registry rendered in the Prometheus text
 * exposition format (version 0.0.4), for the dispatcher and the worker.
 *
 * A registry holds families (counters, gauges, histograms), each with a
 * fixed list of label names; a family's series (one per label-value tuple)
 * are created on first use and live as long as the registry.  Look a series
 * up once and keep the pointer when the labels are known in advance (the
 * lookup is a linear scan with string compares: fine for tens of series).
 * Values that are cheaper to read on demand (queue depth, jobs by state)
 * are set by collect hooks, which run at the start of every render.
 *
 * A registry from rp_metrics_new is not thread-safe: one per event loop.
 * One from rp_metrics_new_shared may be used by several threads at once
 * (the dispatcher's loops): every operation takes the registry's lock, and
 * collect hooks run under it.  Register families before sharing it.
 * Programming errors (a bad metric name, the wrong number of label values)
 * return NULL, and every series operation accepts NULL and does nothing,
 * so a metrics mistake never takes the service down.
 */
#ifndef RP_METRICS_H
#define RP_METRICS_H

#include <stddef.h>

#include "buf.h"
#include "httpd.h"

typedef struct rp_metrics rp_metrics_t;
typedef struct rp_metric rp_metric_t; /* a family: name, help, type, label names */
typedef struct rp_series rp_series_t; /* one tuple of label values */

/* The Content-Type of the rendering. */
#define RP_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Bucket bounds in seconds suited to request latencies (0.5 ms .. 10 s). */
extern const double rp_metrics_latency_bounds[];
extern const size_t rp_metrics_latency_nbounds;

/* Returns owned (rp_metrics_free) or NULL when out of memory. */
rp_metrics_t *rp_metrics_new(void);
rp_metrics_t *rp_metrics_new_shared(void);
void rp_metrics_free(rp_metrics_t *m);

/* Register a family.  name: [a-zA-Z_:][a-zA-Z0-9_:]*; help: one line
 * (copied); labels: comma-separated label names ("route,status") or NULL
 * for none.  histogram bounds: strictly increasing upper bounds (copied;
 * +Inf is implicit).  Returns a family owned by m, or NULL for invalid
 * arguments, a duplicate name or no memory. */
rp_metric_t *rp_metrics_counter(rp_metrics_t *m, const char *name, const char *help,
                                const char *labels);
rp_metric_t *rp_metrics_gauge(rp_metrics_t *m, const char *name, const char *help,
                              const char *labels);
rp_metric_t *rp_metrics_histogram(rp_metrics_t *m, const char *name, const char *help,
                                  const char *labels, const double *bounds, size_t nbounds);

/* The series for these label values (as many as the family has label
 * names; NULL for a family without labels); values are copied on first
 * use.  Returns a series owned by the family, or NULL (f NULL, no memory). */
rp_series_t *rp_metric_labels(rp_metric_t *f, const char *const *values);

/* Counters: add a non-negative amount.  Gauges: set or add.  Histograms:
 * record one observation.  All accept s == NULL. */
void rp_series_inc(rp_series_t *s);
void rp_series_add(rp_series_t *s, double v);
void rp_series_set(rp_series_t *s, double v);
void rp_series_observe(rp_series_t *s, double v);
double rp_series_value(const rp_series_t *s); /* counter/gauge value; histogram count */

/* Hold a shared registry's lock across several updates, so they take one
 * lock and a render sees all or none of them (nothing for an unshared one).
 * Calls nest. */
void rp_metrics_hold(rp_metrics_t *m);
void rp_metrics_release(rp_metrics_t *m);
/* Run cb(data, m) at the start of every render, in registration order. */
int rp_metrics_on_collect(rp_metrics_t *m, void (*cb)(void *data, rp_metrics_t *m), void *data);

/* Append the whole registry, in registration order, to out (check
 * rp_buf_failed(out) afterwards). */
void rp_metrics_render(rp_metrics_t *m, rp_buf_t *out);

/* Answer an HTTP request with the rendering (200, or 500 when out of
 * memory).  After this call req is gone.  Returns rp_httpd_respond's code. */
int rp_metrics_respond(rp_metrics_t *m, rp_httpd_req_t *req);

#endif
