/*
 * metrics.c: the registry behind rp_metrics_* (see metrics.h).
 *
 * Families form a list in registration order; each has a growable array of
 * series pointers (the series themselves never move, so callers may keep
 * them).  A series is one allocation: its values, then its label values as
 * NUL-separated text.  A histogram series keeps per-bucket counts (not yet
 * cumulative: render sums them) plus sum and count.
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double rp_metrics_latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                            0.1,    0.25,  0.5,    1,     2.5,  5,     10};
const size_t rp_metrics_latency_nbounds =
    sizeof(rp_metrics_latency_bounds) / sizeof(rp_metrics_latency_bounds[0]);

#define MAX_LABELS 8

typedef enum { M_COUNTER = 0, M_GAUGE, M_HISTOGRAM } mtype_t;

struct rp_series {
    rp_metric_t *f;
    double value; /* counter, gauge */
    double sum;   /* histogram */
    uint64_t count;
    uint64_t *buckets; /* histogram: nbounds + 1 (the last is +Inf) */
    const char *values[MAX_LABELS];
};

struct rp_metric {
    rp_metrics_t *m;
    rp_metric_t *next;
    mtype_t type;
    char *name;
    char *help;
    size_t nlabels;
    char *labels[MAX_LABELS];
    double *bounds;
    size_t nbounds;
    rp_series_t **series;
    size_t nseries, cap;
};

typedef struct collector {
    void (*cb)(void *data, rp_metrics_t *m);
    void *data;
} collector_t;

struct rp_metrics {
    rp_metric_t *head, *tail;
    collector_t *collectors;
    size_t ncollectors;
    int shared; /* every operation holds lock (recursive: collectors set series) */
    pthread_mutex_t lock;
};

rp_metrics_t *rp_metrics_new(void)
{
    return calloc(1, sizeof(rp_metrics_t));
}

rp_metrics_t *rp_metrics_new_shared(void)
{
    rp_metrics_t *m = calloc(1, sizeof(rp_metrics_t));
    pthread_mutexattr_t a;
    if (m == NULL)
        return NULL;
    if (pthread_mutexattr_init(&a) != 0) {
        free(m);
        return NULL;
    }
    int rc = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    if (rc == 0)
        rc = pthread_mutex_init(&m->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) {
        free(m);
        return NULL;
    }
    m->shared = 1;
    return m;
}

static void m_lock(rp_metrics_t *m)
{
    if (m->shared)
        pthread_mutex_lock(&m->lock);
}

static void m_unlock(rp_metrics_t *m)
{
    if (m->shared)
        pthread_mutex_unlock(&m->lock);
}

void rp_metrics_hold(rp_metrics_t *m)
{
    if (m != NULL)
        m_lock(m);
}

void rp_metrics_release(rp_metrics_t *m)
{
    if (m != NULL)
        m_unlock(m);
}

static void family_free(rp_metric_t *f)
{
    for (size_t i = 0; i < f->nseries; i++)
        free(f->series[i]);
    free(f->series);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->bounds);
    free(f->name);
    free(f->help);
    free(f);
}

void rp_metrics_free(rp_metrics_t *m)
{
    if (m == NULL)
        return;
    rp_metric_t *f = m->head;
    while (f != NULL) {
        rp_metric_t *next = f->next;
        family_free(f);
        f = next;
    }
    free(m->collectors);
    if (m->shared)
        pthread_mutex_destroy(&m->lock);
    free(m);
}

static int name_ok(const char *s, int colon)
{
    if (s == NULL || s[0] == '\0' || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || (colon && c == ':')))
            return 0;
    }
    return 1;
}

static rp_metric_t *family_new(rp_metrics_t *m, mtype_t type, const char *name, const char *help,
                               const char *labels)
{
    if (m == NULL || !name_ok(name, 1))
        return NULL;
    for (rp_metric_t *g = m->head; g != NULL; g = g->next)
        if (strcmp(g->name, name) == 0)
            return NULL;
    rp_metric_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->m = m;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help != NULL ? help : "");
    if (f->name == NULL || f->help == NULL)
        goto fail;
    /* Help text is one line: newlines would break the format. */
    for (char *p = f->help; *p; p++)
        if (*p == '\n' || *p == '\\')
            *p = ' ';
    if (labels != NULL && labels[0] != '\0') {
        const char *p = labels;
        while (*p) {
            const char *comma = strchr(p, ',');
            size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
            if (f->nlabels == MAX_LABELS)
                goto fail;
            f->labels[f->nlabels] = strndup(p, n);
            if (f->labels[f->nlabels] == NULL)
                goto fail;
            if (!name_ok(f->labels[f->nlabels], 0) || strcmp(f->labels[f->nlabels], "le") == 0) {
                f->nlabels++;
                goto fail;
            }
            f->nlabels++;
            p += n;
            if (*p == ',')
                p++;
        }
    }
    return f;
fail:
    family_free(f);
    return NULL;
}

static void family_link(rp_metrics_t *m, rp_metric_t *f)
{
    m_lock(m);
    if (m->tail != NULL)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    m_unlock(m);
}

rp_metric_t *rp_metrics_counter(rp_metrics_t *m, const char *name, const char *help,
                                const char *labels)
{
    rp_metric_t *f = family_new(m, M_COUNTER, name, help, labels);
    if (f != NULL)
        family_link(m, f);
    return f;
}

rp_metric_t *rp_metrics_gauge(rp_metrics_t *m, const char *name, const char *help,
                              const char *labels)
{
    rp_metric_t *f = family_new(m, M_GAUGE, name, help, labels);
    if (f != NULL)
        family_link(m, f);
    return f;
}

rp_metric_t *rp_metrics_histogram(rp_metrics_t *m, const char *name, const char *help,
                                  const char *labels, const double *bounds, size_t nbounds)
{
    if (bounds == NULL || nbounds == 0)
        return NULL;
    for (size_t i = 0; i < nbounds; i++)
        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
            return NULL;
    rp_metric_t *f = family_new(m, M_HISTOGRAM, name, help, labels);
    if (f == NULL)
        return NULL;
    f->bounds = malloc(nbounds * sizeof(double));
    if (f->bounds == NULL) {
        family_free(f);
        return NULL;
    }
    memcpy(f->bounds, bounds, nbounds * sizeof(double));
    f->nbounds = nbounds;
    family_link(m, f);
    return f;
}

static rp_series_t *series_find_or_add(rp_metric_t *f, const char *const *values);

rp_series_t *rp_metric_labels(rp_metric_t *f, const char *const *values)
{
    if (f == NULL || (f->nlabels > 0 && values == NULL))
        return NULL;
    for (size_t i = 0; i < f->nlabels; i++)
        if (values[i] == NULL)
            return NULL;
    m_lock(f->m);
    rp_series_t *s = series_find_or_add(f, values);
    m_unlock(f->m);
    return s;
}

static rp_series_t *series_find_or_add(rp_metric_t *f, const char *const *values)
{
    for (size_t i = 0; i < f->nseries; i++) {
        rp_series_t *s = f->series[i];
        size_t k = 0;
        while (k < f->nlabels && strcmp(s->values[k], values[k]) == 0)
            k++;
        if (k == f->nlabels)
            return s;
    }
    if (f->nseries == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        rp_series_t **a = realloc(f->series, cap * sizeof(*a));
        if (a == NULL)
            return NULL;
        f->series = a;
        f->cap = cap;
    }
    size_t text = 0;
    for (size_t i = 0; i < f->nlabels; i++)
        text += strlen(values[i]) + 1;
    size_t nb = f->type == M_HISTOGRAM ? f->nbounds + 1 : 0;
    rp_series_t *s = calloc(1, sizeof(*s) + nb * sizeof(uint64_t) + text);
    if (s == NULL)
        return NULL;
    s->f = f;
    char *p = (char *)(s + 1) + nb * sizeof(uint64_t);
    if (nb > 0)
        s->buckets = (uint64_t *)(s + 1);
    for (size_t i = 0; i < f->nlabels; i++) {
        size_t n = strlen(values[i]) + 1;
        memcpy(p, values[i], n);
        s->values[i] = p;
        p += n;
    }
    f->series[f->nseries++] = s;
    return s;
}

void rp_series_inc(rp_series_t *s)
{
    rp_series_add(s, 1);
}

void rp_series_add(rp_series_t *s, double v)
{
    if (s == NULL || s->f->type == M_HISTOGRAM)
        return;
    if (s->f->type == M_COUNTER && !(v >= 0))
        return; /* counters only go up */
    m_lock(s->f->m);
    s->value += v;
    m_unlock(s->f->m);
}

void rp_series_set(rp_series_t *s, double v)
{
    if (s == NULL || s->f->type == M_HISTOGRAM)
        return;
    m_lock(s->f->m);
    s->value = v;
    m_unlock(s->f->m);
}

void rp_series_observe(rp_series_t *s, double v)
{
    if (s == NULL || s->f->type != M_HISTOGRAM || isnan(v))
        return;
    const rp_metric_t *f = s->f;
    size_t i = 0;
    while (i < f->nbounds && v > f->bounds[i])
        i++;
    m_lock(f->m);
    s->buckets[i]++;
    s->count++;
    s->sum += v;
    m_unlock(f->m);
}

double rp_series_value(const rp_series_t *s)
{
    if (s == NULL)
        return 0;
    m_lock(s->f->m);
    double v = s->f->type == M_HISTOGRAM ? (double)s->count : s->value;
    m_unlock(s->f->m);
    return v;
}

int rp_metrics_on_collect(rp_metrics_t *m, void (*cb)(void *data, rp_metrics_t *m), void *data)
{
    m_lock(m);
    collector_t *a = realloc(m->collectors, (m->ncollectors + 1) * sizeof(*a));
    if (a == NULL) {
        m_unlock(m);
        return RP_ENOMEM;
    }
    m->collectors = a;
    a[m->ncollectors].cb = cb;
    a[m->ncollectors].data = data;
    m->ncollectors++;
    m_unlock(m);
    return 0;
}

/* ------------------------------------------------------------------ */
/* rendering                                                           */

static void put_number(rp_buf_t *out, double v)
{
    if (isnan(v))
        rp_buf_puts(out, "NaN");
    else if (isinf(v))
        rp_buf_puts(out, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        rp_buf_printf(out, "%.0f", v);
    else {
        /* The shortest form that reads back as the same double. */
        char tmp[40];
        snprintf(tmp, sizeof(tmp), "%.15g", v);
        if (strtod(tmp, NULL) != v)
            snprintf(tmp, sizeof(tmp), "%.17g", v);
        rp_buf_puts(out, tmp);
    }
}

static void put_label_value(rp_buf_t *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            rp_buf_puts(out, "\\\\");
        else if (*p == '"')
            rp_buf_puts(out, "\\\"");
        else if (*p == '\n')
            rp_buf_puts(out, "\\n");
        else
            rp_buf_putc(out, *p);
    }
}

/* name{labels[,le="x"]} */
static void put_series_name(rp_buf_t *out, const rp_metric_t *f, const rp_series_t *s,
                            const char *suffix, const char *le)
{
    rp_buf_puts(out, f->name);
    if (suffix != NULL)
        rp_buf_puts(out, suffix);
    if (f->nlabels == 0 && le == NULL)
        return;
    rp_buf_putc(out, '{');
    for (size_t i = 0; i < f->nlabels; i++) {
        if (i > 0)
            rp_buf_putc(out, ',');
        rp_buf_puts(out, f->labels[i]);
        rp_buf_puts(out, "=\"");
        put_label_value(out, s->values[i]);
        rp_buf_putc(out, '"');
    }
    if (le != NULL) {
        if (f->nlabels > 0)
            rp_buf_putc(out, ',');
        rp_buf_puts(out, "le=\"");
        rp_buf_puts(out, le);
        rp_buf_putc(out, '"');
    }
    rp_buf_putc(out, '}');
}

static void render(rp_metrics_t *m, rp_buf_t *out);

void rp_metrics_render(rp_metrics_t *m, rp_buf_t *out)
{
    m_lock(m);
    render(m, out);
    m_unlock(m);
}

static void render(rp_metrics_t *m, rp_buf_t *out)
{
    static const char *const tnames[] = {"counter", "gauge", "histogram"};
    for (size_t i = 0; i < m->ncollectors; i++)
        m->collectors[i].cb(m->collectors[i].data, m);
    for (const rp_metric_t *f = m->head; f != NULL; f = f->next) {
        rp_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                      tnames[f->type]);
        /* A family without labels always shows its one series, even at 0. */
        if (f->nlabels == 0 && f->nseries == 0)
            (void)rp_metric_labels((rp_metric_t *)f, NULL);
        for (size_t k = 0; k < f->nseries; k++) {
            const rp_series_t *s = f->series[k];
            if (f->type != M_HISTOGRAM) {
                put_series_name(out, f, s, NULL, NULL);
                rp_buf_putc(out, ' ');
                put_number(out, s->value);
                rp_buf_putc(out, '\n');
                continue;
            }
            uint64_t cum = 0;
            for (size_t b = 0; b <= f->nbounds; b++) {
                char le[40];
                cum += s->buckets[b];
                if (b < f->nbounds) {
                    rp_buf_t tmp = RP_BUF_INIT;
                    put_number(&tmp, f->bounds[b]);
                    snprintf(le, sizeof(le), "%s", tmp.data != NULL ? tmp.data : "0");
                    rp_buf_free(&tmp);
                } else {
                    snprintf(le, sizeof(le), "+Inf");
                }
                put_series_name(out, f, s, "_bucket", le);
                rp_buf_printf(out, " %llu\n", (unsigned long long)cum);
            }
            put_series_name(out, f, s, "_sum", NULL);
            rp_buf_putc(out, ' ');
            put_number(out, s->sum);
            rp_buf_putc(out, '\n');
            put_series_name(out, f, s, "_count", NULL);
            rp_buf_printf(out, " %llu\n", (unsigned long long)s->count);
        }
    }
}

int rp_metrics_respond(rp_metrics_t *m, rp_httpd_req_t *req)
{
    static const char *const hdrs[] = {"Content-Type: " RP_METRICS_CONTENT_TYPE,
                                       "Cache-Control: no-store", NULL};
    static const char *const plain[] = {"Content-Type: text/plain", NULL};
    rp_buf_t b = RP_BUF_INIT;
    rp_metrics_render(m, &b);
    int rc;
    if (rp_buf_failed(&b))
        rc = rp_httpd_respond(req, 500, plain, "out of memory\n", 14);
    else
        rc = rp_httpd_respond(req, 200, hdrs, b.data != NULL ? b.data : "", b.len);
    rp_buf_free(&b);
    return rc;
}
