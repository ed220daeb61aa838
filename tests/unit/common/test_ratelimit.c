/*
 * test_ratelimit.c: common/ratelimit.c -- a bucket allows `burst` requests
 * at once, then one per 1/rate seconds, says how long to wait (and the
 * Retry-After that makes), keeps users apart, stays within max_keys by
 * dropping refilled buckets and fails open when it cannot; and the Redis
 * script text is present.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ratelimit.h"

static void test_burst_then_rate(void **state)
{
    (void)state;
    rp_ratelimit_t *rl = rp_ratelimit_new(2, 3, 100); /* 2/s, burst 3 */
    int64_t t = 1000;
    for (int i = 0; i < 3; i++)
        assert_int_equal(rp_ratelimit_take(rl, "u1", t), 0);
    int64_t wait = rp_ratelimit_take(rl, "u1", t);
    assert_true(wait >= 499 && wait <= 500);
    assert_int_equal(rp_ratelimit_retry_after_s(wait), 1);
    /* another user is not affected */
    assert_int_equal(rp_ratelimit_take(rl, "u2", t), 0);
    /* after 500 ms one token is back, and only one */
    assert_int_equal(rp_ratelimit_take(rl, "u1", t + 500), 0);
    assert_true(rp_ratelimit_take(rl, "u1", t + 500) > 0);
    /* a long pause refills to burst, never beyond */
    t += 100000;
    for (int i = 0; i < 3; i++)
        assert_int_equal(rp_ratelimit_take(rl, "u1", t), 0);
    assert_true(rp_ratelimit_take(rl, "u1", t) > 0);
    assert_int_equal(rp_ratelimit_size(rl), 2);
    rp_ratelimit_free(rl);
}

static void test_slow_rate_retry_after(void **state)
{
    (void)state;
    rp_ratelimit_t *rl = rp_ratelimit_new(0.1, 1, 10); /* one per 10 s */
    assert_int_equal(rp_ratelimit_take(rl, "u", 0), 0);
    int64_t wait = rp_ratelimit_take(rl, "u", 0);
    assert_int_equal(wait, 10000);
    assert_int_equal(rp_ratelimit_retry_after_s(wait), 10);
    assert_int_equal(rp_ratelimit_retry_after_s(1), 1);
    assert_int_equal(rp_ratelimit_retry_after_s(1001), 2);
    rp_ratelimit_free(rl);
}

static void test_bounded_memory(void **state)
{
    (void)state;
    rp_ratelimit_t *rl = rp_ratelimit_new(1, 1, 50);
    char key[32];
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "user-%d", i);
        assert_int_equal(rp_ratelimit_take(rl, key, 0), 0);
    }
    assert_int_equal(rp_ratelimit_size(rl), 50);
    /* full, nothing refilled: a new user is let through untracked */
    assert_int_equal(rp_ratelimit_take(rl, "newcomer", 0), 0);
    assert_int_equal(rp_ratelimit_take(rl, "newcomer", 0), 0);
    assert_int_equal(rp_ratelimit_size(rl), 50);
    /* later every bucket is full again: they are dropped for the newcomer */
    assert_int_equal(rp_ratelimit_take(rl, "newcomer", 5000), 0);
    assert_int_equal(rp_ratelimit_size(rl), 1);
    assert_true(rp_ratelimit_take(rl, "newcomer", 5000) > 0);
    rp_ratelimit_free(rl);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    assert_null(rp_ratelimit_new(0, 1, 10));
    assert_null(rp_ratelimit_new(1, 0.5, 10));
    assert_null(rp_ratelimit_new(1, 1, 0));
    assert_non_null(strstr(rp_ratelimit_lua, "redis.call('TIME')"));
    assert_non_null(strstr(rp_ratelimit_lua, "PEXPIRE"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_rate),
        cmocka_unit_test(test_slow_rate_retry_after),
        cmocka_unit_test(test_bounded_memory),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
