/* Tests common/backoff.c: delays, jitter bounds, Retry-After parsing and capping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <time.h>

#include "backoff.h"

static void delay_grows_and_caps(void **state)
{
    rp_backoff_t b = {1000, 60000};
    /* rnd = max gives the full delay, rnd = 0 half of it. */
    assert_int_equal(rp_backoff_delay_ms(&b, 2, UINT32_MAX), 1000);
    assert_int_equal(rp_backoff_delay_ms(&b, 3, UINT32_MAX), 2000);
    assert_int_equal(rp_backoff_delay_ms(&b, 4, UINT32_MAX), 4000);
    assert_int_equal(rp_backoff_delay_ms(&b, 2, 0), 500);
    assert_int_equal(rp_backoff_delay_ms(&b, 20, UINT32_MAX), 60000);
    assert_int_equal(rp_backoff_delay_ms(&b, 1000000, UINT32_MAX), 60000);
    assert_int_equal(rp_backoff_delay_ms(&b, 1, UINT32_MAX), 1000);
}

static void jitter_stays_in_bounds(void **state)
{
    rp_backoff_t b = {100, 10000};
    uint32_t s = 12345;
    for (int i = 0; i < 10000; i++) {
        int attempt = 2 + i % 10;
        uint64_t full = 100ull << (attempt - 2);
        if (full > 10000)
            full = 10000;
        uint64_t d = rp_backoff_delay_ms(&b, attempt, rp_rand32(&s));
        assert_true(d >= full / 2 && d <= full);
    }
}

static void retry_after_wins_but_is_capped(void **state)
{
    assert_int_equal(rp_backoff_with_retry_after(500, -1, 300000), 500);
    assert_int_equal(rp_backoff_with_retry_after(500, 3000, 300000), 3000);
    assert_int_equal(rp_backoff_with_retry_after(5000, 3000, 300000), 5000);
    assert_int_equal(rp_backoff_with_retry_after(500, 999999999, 300000), 300000);
}

static void retry_after_parsing(void **state)
{
    assert_int_equal(rp_retry_after_parse_ms("120", 0), 120000);
    assert_int_equal(rp_retry_after_parse_ms(" 3 ", 0), 3000);
    assert_int_equal(rp_retry_after_parse_ms("0", 0), 0);
    assert_int_equal(rp_retry_after_parse_ms("", 0), -1);
    assert_int_equal(rp_retry_after_parse_ms("-5", 0), -1);
    assert_int_equal(rp_retry_after_parse_ms("12abc", 0), -1);
    assert_int_equal(rp_retry_after_parse_ms(NULL, 0), -1);
    /* Wed, 21 Oct 2015 07:28:00 GMT = 1445412480 */
    assert_int_equal(rp_retry_after_parse_ms("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470), 10000);
    assert_int_equal(rp_retry_after_parse_ms("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490), 0);
    assert_int_equal(rp_retry_after_parse_ms("Wed, 21 Oct 2015 07:28:00", 0), -1);
    /* absurd values do not overflow: the caller caps them */
    assert_true(rp_retry_after_parse_ms("99999999999999999999999", 0) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(delay_grows_and_caps),
        cmocka_unit_test(jitter_stays_in_bounds),
        cmocka_unit_test(retry_after_wins_but_is_capped),
        cmocka_unit_test(retry_after_parsing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
