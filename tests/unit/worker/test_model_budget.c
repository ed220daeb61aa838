/* Tests of worker/model_budget.c: RPM/TPM buckets, the chat reserve and
 * the cooldown after a provider's push-back, on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "model_budget.h"

static rp_model_budget_t *budget(double rpm, double tpm, int reserve)
{
    rp_model_budget_opts_t o = {.rpm = rpm,
                                .tpm = tpm,
                                .reserve_pct = reserve,
                                .pause_base_ms = 100,
                                .pause_max_ms = 1000,
                                .retry_after_max_ms = 5000};
    rp_model_budget_t *b = rp_model_budget_new(&o, 0);
    assert_non_null(b);
    return b;
}

static void unlimited_always_passes(void **state)
{
    rp_model_budget_t *b = budget(0, 0, 20);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(rp_model_budget_take(b, RP_BUDGET_BACKGROUND, 1e6, 0), 0);
    rp_model_budget_free(b);
}

static void rpm_bucket_paces_requests(void **state)
{
    /* 600 rpm = 10/s; the bucket holds 10 s = 100 requests. */
    rp_model_budget_t *b = budget(600, 0, 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 0), 0);
    int64_t wait = rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 0);
    assert_true(wait >= 99 && wait <= 101);
    assert_int_equal(rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 100), 0);
    assert_true(rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 100) > 0);
    rp_model_budget_free(b);
}

static void background_leaves_the_reserve_to_chat(void **state)
{
    /* 600 rpm, 20% reserve: background gets 80 of the 100 in the bucket. */
    rp_model_budget_t *b = budget(600, 0, 20);
    int n = 0;
    while (rp_model_budget_take(b, RP_BUDGET_BACKGROUND, 1, 0) == 0)
        n++;
    assert_int_equal(n, 80);
    for (int i = 0; i < 20; i++)
        assert_int_equal(rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 0), 0);
    assert_true(rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 0) > 0);
    rp_model_budget_free(b);
}

static void tpm_bucket_and_large_requests(void **state)
{
    /* 60000 tpm = 1000/s; the bucket holds 10000 tokens. */
    rp_model_budget_t *b = budget(0, 60000, 0);
    assert_int_equal(rp_model_budget_take(b, RP_BUDGET_BACKGROUND, 6000, 0), 0);
    int64_t wait = rp_model_budget_take(b, RP_BUDGET_BACKGROUND, 6000, 0);
    assert_true(wait >= 1999 && wait <= 2001);
    /* Larger than the bucket: waits for a full bucket, then goes into debt. */
    assert_int_equal(rp_model_budget_take(b, RP_BUDGET_BACKGROUND, 20000, 6000), 0);
    wait = rp_model_budget_take(b, RP_BUDGET_BACKGROUND, 1, 6000);
    assert_true(wait >= 10000);
    rp_model_budget_free(b);
}

static void pause_honours_retry_after_and_backs_off(void **state)
{
    rp_model_budget_t *b = budget(0, 0, 0);
    assert_int_equal(rp_model_budget_pause(b, 1000, 0), 1000);
    assert_int_equal(rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 500), 500);
    assert_int_equal(rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 1000), 0);
    /* Without Retry-After: 100, 200, 400 ... capped at 1000. */
    assert_int_equal(rp_model_budget_pause(b, -1, 1000), 200);
    assert_int_equal(rp_model_budget_pause(b, -1, 1200), 400);
    assert_int_equal(rp_model_budget_pause(b, -1, 1600), 800);
    assert_int_equal(rp_model_budget_pause(b, -1, 2400), 1000);
    assert_int_equal(rp_model_budget_pause(b, -1, 3400), 1000);
    rp_model_budget_ok(b);
    assert_int_equal(rp_model_budget_pause(b, -1, 4400), 100);
    /* A hostile Retry-After is capped. */
    assert_int_equal(rp_model_budget_pause(b, 86400000, 10000), 5000);
    assert_int_equal(rp_model_budget_cooldown_ms(b, 12000), 3000);
    rp_model_budget_free(b);
}

static void pause_empties_the_buckets(void **state)
{
    rp_model_budget_t *b = budget(600, 0, 0);
    rp_model_budget_pause(b, 1000, 0);
    /* Sending resumes from an empty bucket at the paced rate (10/s): two
     * seconds later 20 requests have accrued, not the full 100. */
    int n = 0;
    while (rp_model_budget_take(b, RP_BUDGET_CHAT, 1, 2000) == 0)
        n++;
    assert_true(n >= 19 && n <= 21);
    rp_model_budget_free(b);
}

static void bad_options(void **state)
{
    rp_model_budget_opts_t o = {.rpm = -1, .pause_base_ms = 1, .pause_max_ms = 1};
    assert_null(rp_model_budget_new(&o, 0));
    o.rpm = 0;
    o.reserve_pct = 101;
    assert_null(rp_model_budget_new(&o, 0));
    assert_null(rp_model_budget_new(NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(unlimited_always_passes),
        cmocka_unit_test(rpm_bucket_paces_requests),
        cmocka_unit_test(background_leaves_the_reserve_to_chat),
        cmocka_unit_test(tpm_bucket_and_large_requests),
        cmocka_unit_test(pause_honours_retry_after_and_backs_off),
        cmocka_unit_test(pause_empties_the_buckets),
        cmocka_unit_test(bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
