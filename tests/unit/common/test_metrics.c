/*
 * test_metrics.c: common/metrics.c -- the Prometheus text rendering of
 * counters, gauges and histograms (HELP/TYPE lines, label escaping,
 * cumulative buckets, +Inf, _sum and _count), series identity, collect
 * hooks, and that mistakes (bad names, duplicate families, wrong label
 * counts) return NULL instead of breaking anything.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static char *render(rp_metrics_t *m)
{
    rp_buf_t b = RP_BUF_INIT;
    rp_metrics_render(m, &b);
    assert_false(rp_buf_failed(&b));
    return rp_buf_take(&b, NULL);
}

static void test_counter_and_gauge(void **state)
{
    (void)state;
    rp_metrics_t *m = rp_metrics_new();
    rp_metric_t *req =
        rp_metrics_counter(m, "x_requests_total", "Requests by route.", "route,status");
    rp_metric_t *g = rp_metrics_gauge(m, "x_inflight", "In flight.", NULL);
    rp_metric_t *plain = rp_metrics_counter(m, "x_errors_total", "Errors.", NULL);
    assert_non_null(req);
    assert_non_null(g);
    assert_non_null(plain);
    rp_series_t *a = rp_metric_labels(req, (const char *const[]){"chat", "202"});
    rp_series_t *a2 = rp_metric_labels(req, (const char *const[]){"chat", "202"});
    rp_series_t *b = rp_metric_labels(req, (const char *const[]){"we\"ird\\\n", "500"});
    assert_ptr_equal(a, a2);
    rp_series_inc(a);
    rp_series_add(a, 2);
    rp_series_add(a, -5); /* ignored: counters never go down */
    rp_series_inc(b);
    rp_series_set(rp_metric_labels(g, NULL), 3.5);
    assert_true(rp_series_value(a) == 3);
    char *text = render(m);
    const char *want = "# HELP x_requests_total Requests by route.\n"
                       "# TYPE x_requests_total counter\n"
                       "x_requests_total{route=\"chat\",status=\"202\"} 3\n"
                       "x_requests_total{route=\"we\\\"ird\\\\\\n\",status=\"500\"} 1\n"
                       "# HELP x_inflight In flight.\n"
                       "# TYPE x_inflight gauge\n"
                       "x_inflight 3.5\n"
                       "# HELP x_errors_total Errors.\n"
                       "# TYPE x_errors_total counter\n"
                       "x_errors_total 0\n";
    assert_string_equal(text, want);
    free(text);
    rp_metrics_free(m);
}

static void test_histogram(void **state)
{
    (void)state;
    rp_metrics_t *m = rp_metrics_new();
    const double bounds[] = {0.1, 1, 10};
    rp_metric_t *h = rp_metrics_histogram(m, "x_seconds", "Latency.", "route", bounds, 3);
    rp_series_t *s = rp_metric_labels(h, (const char *const[]){"chat"});
    rp_series_observe(s, 0.05);
    rp_series_observe(s, 0.1); /* le is inclusive */
    rp_series_observe(s, 5);
    rp_series_observe(s, 50);
    char *text = render(m);
    const char *want = "# HELP x_seconds Latency.\n"
                       "# TYPE x_seconds histogram\n"
                       "x_seconds_bucket{route=\"chat\",le=\"0.1\"} 2\n"
                       "x_seconds_bucket{route=\"chat\",le=\"1\"} 2\n"
                       "x_seconds_bucket{route=\"chat\",le=\"10\"} 3\n"
                       "x_seconds_bucket{route=\"chat\",le=\"+Inf\"} 4\n"
                       "x_seconds_sum 55.149999999999999\n";
    /* the _sum line carries the labels too: check the parts that matter */
    assert_non_null(strstr(text, "x_seconds_bucket{route=\"chat\",le=\"+Inf\"} 4\n"));
    assert_non_null(strstr(text, "x_seconds_bucket{route=\"chat\",le=\"1\"} 2\n"));
    assert_non_null(strstr(text, "x_seconds_bucket{route=\"chat\",le=\"10\"} 3\n"));
    assert_non_null(strstr(text, "x_seconds_count{route=\"chat\"} 4\n"));
    assert_non_null(strstr(text, "x_seconds_sum{route=\"chat\"} 55.1"));
    assert_non_null(strstr(text, "# TYPE x_seconds histogram\n"));
    (void)want;
    free(text);
    /* an unlabelled histogram renders le alone */
    rp_metric_t *h2 = rp_metrics_histogram(m, "y_seconds", "Y.", NULL, bounds, 1);
    rp_series_observe(rp_metric_labels(h2, NULL), 0.01);
    text = render(m);
    assert_non_null(
        strstr(text, "y_seconds_bucket{le=\"+Inf\"} 1\ny_seconds_sum 0.01\ny_seconds_count 1\n"));
    free(text);
    rp_metrics_free(m);
}

static void test_mistakes_are_harmless(void **state)
{
    (void)state;
    rp_metrics_t *m = rp_metrics_new();
    assert_null(rp_metrics_counter(m, "9bad", "x", NULL));
    assert_null(rp_metrics_counter(m, "bad-name", "x", NULL));
    assert_null(rp_metrics_counter(m, "ok", "x", "bad-label"));
    assert_null(rp_metrics_counter(m, "ok2", "x", "le"));
    assert_non_null(rp_metrics_counter(m, "ok", "x", NULL));
    assert_null(rp_metrics_gauge(m, "ok", "duplicate", NULL));
    const double unsorted[] = {1, 0.5};
    assert_null(rp_metrics_histogram(m, "h", "x", NULL, unsorted, 2));
    rp_metric_t *two = rp_metrics_counter(m, "two", "x", "a,b");
    assert_null(rp_metric_labels(two, NULL));
    assert_null(rp_metric_labels(two, (const char *const[]){"x", NULL}));
    rp_series_inc(NULL);
    rp_series_set(NULL, 1);
    rp_series_observe(NULL, 1);
    assert_null(rp_metric_labels(NULL, NULL));
    rp_metrics_free(m);
}

static void collect(void *data, rp_metrics_t *m)
{
    (void)m;
    rp_series_set(data, 42);
}

static void test_collect_hook(void **state)
{
    (void)state;
    rp_metrics_t *m = rp_metrics_new();
    rp_series_t *s = rp_metric_labels(rp_metrics_gauge(m, "depth", "Queue depth.", "state"),
                                      (const char *const[]){"queued"});
    assert_int_equal(rp_metrics_on_collect(m, collect, s), 0);
    char *text = render(m);
    assert_non_null(strstr(text, "depth{state=\"queued\"} 42\n"));
    free(text);
    rp_metrics_free(m);
}

/* A shared registry: several threads count into the same series, create
 * series and render at once; nothing is lost.  (Under ASan/UBSan in CI.) */
typedef struct hammer {
    rp_metrics_t *m;
    rp_series_t *c, *h;
    rp_metric_t *labelled;
    int id;
} hammer_t;

#define HAMMER_THREADS 4
#define HAMMER_ROUNDS 20000

static void *hammer(void *arg)
{
    hammer_t *a = arg;
    char id[16];
    snprintf(id, sizeof(id), "t%d", a->id);
    rp_series_t *mine = rp_metric_labels(a->labelled, (const char *const[]){id});
    for (int i = 0; i < HAMMER_ROUNDS; i++) {
        rp_metrics_hold(a->m);
        rp_series_inc(a->c);
        rp_series_observe(a->h, 0.002);
        rp_metrics_release(a->m);
        rp_series_inc(mine);
        if (i % 5000 == 0)
            free(render(a->m));
    }
    return NULL;
}

static void test_shared_registry(void **state)
{
    (void)state;
    rp_metrics_t *m = rp_metrics_new_shared();
    assert_non_null(m);
    rp_series_t *c = rp_metric_labels(rp_metrics_counter(m, "hits_total", "Hits.", NULL), NULL);
    rp_series_t *h = rp_metric_labels(rp_metrics_histogram(m, "lat_seconds", "Latency.", NULL,
                                                           rp_metrics_latency_bounds,
                                                           rp_metrics_latency_nbounds),
                                      NULL);
    rp_metric_t *labelled = rp_metrics_counter(m, "by_thread_total", "By thread.", "thread");
    assert_int_equal(rp_metrics_on_collect(m, collect, c), 0);
    pthread_t th[HAMMER_THREADS];
    hammer_t args[HAMMER_THREADS];
    for (int i = 0; i < HAMMER_THREADS; i++) {
        args[i] = (hammer_t){.m = m, .c = c, .h = h, .labelled = labelled, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &args[i]), 0);
    }
    for (int i = 0; i < HAMMER_THREADS; i++)
        pthread_join(th[i], NULL);
    /* The collect hook set the counter to 42 on every render; count from a
     * series the hook leaves alone. */
    assert_int_equal((long)rp_series_value(h), (long)HAMMER_THREADS * HAMMER_ROUNDS);
    char *text = render(m);
    char want[64];
    for (int i = 0; i < HAMMER_THREADS; i++) {
        snprintf(want, sizeof(want), "by_thread_total{thread=\"t%d\"} %d\n", i, HAMMER_ROUNDS);
        assert_non_null(strstr(text, want));
    }
    snprintf(want, sizeof(want), "lat_seconds_bucket{le=\"0.0025\"} %d\n",
             HAMMER_THREADS * HAMMER_ROUNDS);
    assert_non_null(strstr(text, want));
    free(text);
    rp_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_and_gauge),     cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_mistakes_are_harmless), cmocka_unit_test(test_collect_hook),
        cmocka_unit_test(test_shared_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
