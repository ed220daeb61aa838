/*
 * test_buf.c: common/buf.c -- the growable buffer and the small string
 * helpers beside it.
 */
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"

/* rp_put_decimal writes what printf("%llu") does, without a NUL. */
static void test_put_decimal(void **state)
{
    (void)state;
    unsigned long long values[] = {0, 1, 9, 10, 99, 100, 202, 65535, 4294967296ULL, ULLONG_MAX};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char got[32], want[32];
        memset(got, 'x', sizeof(got));
        size_t n = rp_put_decimal(got, values[i]);
        int w = snprintf(want, sizeof(want), "%llu", values[i]);
        assert_int_equal(n, (size_t)w);
        assert_memory_equal(got, want, n);
        assert_int_equal(got[n], 'x'); /* nothing written past the digits */
    }
}

static void test_buf_basics(void **state)
{
    (void)state;
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_puts(&b, "a\"b");
    rp_buf_putc(&b, ' ');
    rp_buf_json_escape(&b, "q\"\\\n\x01", 5);
    rp_buf_printf(&b, " %d", 42);
    assert_false(rp_buf_failed(&b));
    assert_string_equal(b.data, "a\"b q\\\"\\\\\\n\\u0001 42");
    size_t len = 0;
    char *taken = rp_buf_take(&b, &len);
    assert_int_equal(len, strlen(taken));
    assert_null(b.data);
    free(taken);
    char *c = rp_str_concat("ragpool:", "jobs");
    assert_string_equal(c, "ragpool:jobs");
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_decimal),
        cmocka_unit_test(test_buf_basics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
