/*
 * test_sse.c: unit tests for common/sse.c, the incremental Server-Sent
 * Events parser.  Every stream is also fed split at every byte offset (and
 * one byte at a time) to prove the result does not depend on how the body
 * arrives.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "sse.h"

/* Events collected as "event|id|data" lines joined by '\n'. */
typedef struct collect {
    char out[8192];
    size_t n;
} collect_t;

static int on_event(void *data, const rp_sse_event_t *ev)
{
    collect_t *c = data;
    assert_int_equal(strlen(ev->data), ev->data_len);
    int w =
        snprintf(c->out + c->n, sizeof(c->out) - c->n, "%s|%s|%s\n", ev->event, ev->id, ev->data);
    assert_true(w > 0 && (size_t)w < sizeof(c->out) - c->n);
    c->n += (size_t)w;
    return 0;
}

/* Parse s in one piece, then split at every offset, then byte by byte, and
 * check each gives `want`. */
static void check_stream(const char *s, size_t len, const char *want)
{
    collect_t c;
    /* one piece */
    memset(&c, 0, sizeof(c));
    rp_sse_t *p = rp_sse_new(0, on_event, &c);
    assert_non_null(p);
    assert_int_equal(rp_sse_feed(p, s, len), 0);
    assert_string_equal(c.out, want);
    rp_sse_free(p);
    /* two pieces, split at every offset */
    for (size_t cut = 0; cut <= len; cut++) {
        memset(&c, 0, sizeof(c));
        p = rp_sse_new(0, on_event, &c);
        assert_int_equal(rp_sse_feed(p, s, cut), 0);
        assert_int_equal(rp_sse_feed(p, s + cut, len - cut), 0);
        if (strcmp(c.out, want) != 0)
            fail_msg("split at %zu: got [%s] want [%s]", cut, c.out, want);
        rp_sse_free(p);
    }
    /* three pieces at every pair of offsets (short streams only) */
    if (len <= 64) {
        for (size_t a = 0; a <= len; a++) {
            for (size_t b = a; b <= len; b++) {
                memset(&c, 0, sizeof(c));
                p = rp_sse_new(0, on_event, &c);
                assert_int_equal(rp_sse_feed(p, s, a), 0);
                assert_int_equal(rp_sse_feed(p, s + a, b - a), 0);
                assert_int_equal(rp_sse_feed(p, s + b, len - b), 0);
                if (strcmp(c.out, want) != 0)
                    fail_msg("split at %zu,%zu: got [%s]", a, b, c.out);
                rp_sse_free(p);
            }
        }
    }
    /* byte by byte */
    memset(&c, 0, sizeof(c));
    p = rp_sse_new(0, on_event, &c);
    for (size_t i = 0; i < len; i++)
        assert_int_equal(rp_sse_feed(p, s + i, 1), 0);
    assert_string_equal(c.out, want);
    rp_sse_free(p);
}

#define CHECK(s, want) check_stream(s, sizeof(s) - 1, want)

static void test_openai_stream(void **state)
{
    (void)state;
    const char *s = "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"
                    "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n"
                    "data: [DONE]\n\n";
    check_stream(s, strlen(s),
                 "message||{\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n"
                 "message||{\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n"
                 "message||[DONE]\n");
}

static void test_line_endings(void **state)
{
    (void)state;
    CHECK("data: a\r\n\r\ndata: b\r\rdata: c\n\n", "message||a\nmessage||b\nmessage||c\n");
    /* CR then LF in the next line is still one CRLF, never an empty line. */
    CHECK("data: x\r\ndata: y\r\n\r\n", "message||x\ny\n");
    /* mixed */
    CHECK("data: 1\rdata: 2\ndata: 3\r\n\n", "message||1\n2\n3\n");
}

static void test_multiline_event_id(void **state)
{
    (void)state;
    CHECK("event: delta\nid: 7\ndata: one\ndata: two\n\n"
          "data: three\n\n",
          "delta|7|one\ntwo\nmessage|7|three\n");
    /* no space after the colon; only one space is removed */
    CHECK("data:x\ndata:  y\n\n", "message||x\n y\n");
    /* a field without a colon has an empty value: "data" alone adds an empty line */
    CHECK("data\ndata\n\n", "message||\n\n");
    CHECK("data\n\n", "message||\n");
}

static void test_comments_and_unknown(void **state)
{
    (void)state;
    CHECK(": keep-alive\n\n: ping\ndata: a\nfoo: bar\nretry: 1500\n\n", "message||a\n");
    /* an event with no data is not dispatched, and its type does not leak */
    CHECK("event: x\n\ndata: y\n\n", "message||y\n");
}

static void test_bom(void **state)
{
    (void)state;
    CHECK("\xEF\xBB\xBF"
          "data: b\n\n",
          "message||b\n");
    /* only a leading BOM is skipped */
    CHECK("data: \xEF\xBB\xBF\n\n", "message||\xEF\xBB\xBF\n");
    /* a BOM-like prefix that is not a BOM stays part of the line */
    CHECK("\xEF"
          "data: c\n\n",
          "");
}

static int capture_retry(void *data, const rp_sse_event_t *ev)
{
    *(long *)data = ev->retry_ms;
    return 0;
}

static void test_retry_value(void **state)
{
    (void)state;
    long seen = -2;
    rp_sse_t *p = rp_sse_new(0, capture_retry, &seen);
    assert_int_equal(rp_sse_feed(p, "data: a\n\n", 9), 0);
    assert_int_equal(seen, -1);
    const char *s = "retry: 2500\ndata: b\n\nretry: 12x\ndata: c\n\n";
    assert_int_equal(rp_sse_feed(p, s, strlen(s)), 0);
    assert_int_equal(seen, 2500);
    assert_int_equal(rp_sse_count(p), 3);
    rp_sse_free(p);
}

static void test_limit(void **state)
{
    (void)state;
    collect_t c;
    memset(&c, 0, sizeof(c));
    rp_sse_t *p = rp_sse_new(32, on_event, &c);
    assert_int_equal(rp_sse_feed(p, "data: short\n\n", 13), 0);
    /* many small data lines add up */
    int rc = 0;
    for (int i = 0; i < 20 && rc == 0; i++)
        rc = rp_sse_feed(p, "data: 0123\n", 11);
    assert_int_equal(rc, RP_ELIMIT);
    /* sticky */
    assert_int_equal(rp_sse_feed(p, "\n", 1), RP_ELIMIT);
    assert_string_equal(c.out, "message||short\n");
    rp_sse_free(p);

    /* one long line without a terminator, fed in pieces */
    memset(&c, 0, sizeof(c));
    p = rp_sse_new(32, on_event, &c);
    rc = 0;
    for (int i = 0; i < 20 && rc == 0; i++)
        rc = rp_sse_feed(p, "data: aaaa", 10);
    assert_int_equal(rc, RP_ELIMIT);
    rp_sse_free(p);
}

static int stop_cb(void *data, const rp_sse_event_t *ev)
{
    (void)ev;
    int *n = data;
    return ++*n == 2 ? RP_ECANCELED : 0;
}

static void test_callback_stops(void **state)
{
    (void)state;
    int n = 0;
    rp_sse_t *p = rp_sse_new(0, stop_cb, &n);
    const char *s = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    assert_int_equal(rp_sse_feed(p, s, strlen(s)), RP_ECANCELED);
    assert_int_equal(n, 2);
    assert_int_equal(rp_sse_feed(p, "data: 4\n\n", 9), RP_ECANCELED);
    assert_int_equal(n, 2);
    rp_sse_free(p);
}

static void test_partial(void **state)
{
    (void)state;
    int n = 0;
    rp_sse_t *p = rp_sse_new(0, stop_cb, &n);
    assert_false(rp_sse_partial(p));
    assert_int_equal(rp_sse_feed(p, "data: {\"a\"", 10), 0);
    assert_true(rp_sse_partial(p));
    assert_int_equal(rp_sse_feed(p, ":1}\n\n", 5), 0);
    assert_false(rp_sse_partial(p));
    assert_int_equal(n, 1);
    rp_sse_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_stream),
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_multiline_event_id),
        cmocka_unit_test(test_comments_and_unknown),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_retry_value),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_partial),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
