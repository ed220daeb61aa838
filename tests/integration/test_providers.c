/*
 * test_providers.c: chat providers beside the OpenAI-compatible API.
 *
 *  - Replicate predictions: a quick prediction is answered within the
 *    create request (`Prefer: wait`); a slow one is polled until it has
 *    succeeded; a failed one is retried through the queue and finally
 *    dead-lettered with the prediction's error, and the user gets an error
 *    row.  Every row records provider 'replicate' and the configured
 *    version as model_version.
 *  - Fallback: with the chain "replicate,openai" and a Replicate that
 *    answers 503, every job is answered by the second provider in its first
 *    attempt, and the row says so (provider 'openai', model 'dev-chat');
 *    after RAGPOOL_PROVIDER_FAILURES failures the circuit opens and later
 *    jobs no longer ask Replicate at all.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_fixture.h"

#define USER_A "00000000-0000-4000-8000-000000000001"

static int teardown(void **state)
{
    rp_test_ctx_free(*state);
    *state = NULL;
    return 0;
}

static char *ask(rp_test_ctx_t *t, const char *message)
{
    char *lit = rp_test_sql_literal(t->db, message);
    char *job = rp_test_sql_text(t->db, "select ragpool.enqueue_chat('" USER_A "'::uuid, %s)", lit);
    free(lit);
    assert_non_null(job);
    return job;
}

static void wait_row(rp_test_ctx_t *t, const char *job)
{
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = '%s'",
                                       job));
}

static void test_replicate_answered_slow_failed(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("replicate", NULL);
    *state = t;
    char rep_url[300], *quick, *slow, *failed, *lit;
    snprintf(rep_url, sizeof(rep_url), "REPLICATE_BASE_URL=%s", t->openai_base_url);
    const char *env[] = {"RAGPOOL_CHAT_PROVIDERS=replicate",
                         rep_url,
                         "REPLICATE_API_TOKEN=dev-key",
                         "RAGPOOL_REPLICATE_VERSION=ver-1",
                         "RAGPOOL_REPLICATE_WAIT_S=1",
                         "RAGPOOL_REPLICATE_POLL_MS=100",
                         NULL};
    rp_test_worker_start(t, env);

    quick = ask(t, "What is TON token?");
    slow = ask(t, "What are Jettons? [[prediction:ms=2500]]");
    lit = rp_test_sql_text(t->db,
                           "select ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A
                           "', 'message', 'What is slippage? [[prediction:failed]]'), NULL, 2)");
    failed = lit;
    wait_row(t, quick);
    wait_row(t, slow);
    wait_row(t, failed);

    /* Answered within the create request, by Replicate, with its version. */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from conversations where job_id = '%s' and status = "
                        "'done' and provider = 'replicate' and model_version = 'ver-1' "
                        "and response like '%%TON%%' and attempts = 1",
                        quick),
        1);
    /* Slow: 2.5 s, beyond the 1 s wait, so polled until it succeeded. */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from conversations where job_id = '%s' and status = "
                        "'done' and provider = 'replicate' and attempts = 1 "
                        "and (timings->>'infer_ms')::float >= 2400 and length(response) > 0",
                        slow),
        1);
    json_t *stats = rp_test_devmodel_stats(t);
    /* Four creates (quick, slow, failed twice) and the slow one's polls. */
    rp_test_assert(t, rp_test_json_number(stats, "requests.predictions") >= 4 + 5);
    json_decref(stats);

    /* Failed twice (max_attempts 2): dead, with the prediction's error, and
     * an error row for the user. */
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from ragpool.dead_jobs where id = '%s' and "
                                     "reason = 'max_attempts' and last_error like "
                                     "'%%replicate%%failed%%injected failure%%'",
                                     failed),
                     1);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations where job_id = '%s' and "
                                     "status = 'error' and attempts = 2",
                                     failed),
                     1);
    free(quick);
    free(slow);
    free(failed);
    rp_test_ctx_pass(t);
}

static void test_fallback_to_second_provider(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("fallback", NULL);
    *state = t;
    /* A second model server whose every answer is 503 plays a Replicate
     * that is down. */
    static const char *const broken_args[] = {"--fault-rate", "1", "--fault-kind", "503", NULL};
    char *broken_url = NULL;
    rp_test_proc_t *broken = rp_test_devmodel_start("broken", broken_args, &broken_url);
    rp_test_ctx_adopt(t, broken);
    char rep_url[300];
    snprintf(rep_url, sizeof(rep_url), "REPLICATE_BASE_URL=%s/v1", broken_url);
    const char *env[] = {"RAGPOOL_CHAT_PROVIDERS=replicate,openai",
                         rep_url,
                         "REPLICATE_API_TOKEN=dev-key",
                         "RAGPOOL_REPLICATE_VERSION=ver-1",
                         "RAGPOOL_PROVIDER_FAILURES=3",
                         "RAGPOOL_PROVIDER_COOLDOWN_MS=600000",
                         NULL};
    rp_test_proc_t *w = rp_test_worker_start(t, env);

    /* First wave: each job meets the 503, then openai answers it. */
    char *first[3];
    for (int i = 0; i < 3; i++) {
        char msg[64];
        snprintf(msg, sizeof(msg), "What is TON token? (wave 1, %d)", i);
        first[i] = ask(t, msg);
        wait_row(t, first[i]);
    }
    rp_test_assert(t, rp_test_proc_wait_log(w, "\"provider.open\"", RP_TEST_WAIT_MS) == 0);
    long status = 0;
    char *body;
    char stats_url[300];
    snprintf(stats_url, sizeof(stats_url), "%s/_admin/stats", broken_url);
    body = rp_test_http("GET", stats_url, NULL, &status);
    json_t *st = json_loads(body, 0, NULL);
    free(body);
    double before = rp_test_json_number(st, "requests.predictions");
    json_decref(st);
    rp_test_assert(t, before == 3);

    /* Second wave: the circuit is open, so Replicate is not asked at all. */
    for (int i = 0; i < 20; i++) {
        char msg[64];
        snprintf(msg, sizeof(msg), "What are Jettons? (wave 2, %d)", i);
        char *j = ask(t, msg);
        free(j);
    }
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS, "select count(*) = 23 from conversations"));
    body = rp_test_http("GET", stats_url, NULL, &status);
    st = json_loads(body, 0, NULL);
    free(body);
    rp_test_assert(t, rp_test_json_number(st, "requests.predictions") == before);
    json_decref(st);

    /* Every answer came from the second provider, first time, and says so. */
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations where status = "
                                            "'done' and provider = 'openai' and model_version = "
                                            "'dev-chat' and attempts = 1"),
                     23);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs"), 0);
    rp_test_assert(t, rp_test_proc_log_count(w, "\"provider.fallback\"") == 3);
    for (int i = 0; i < 3; i++)
        free(first[i]);
    free(broken_url);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_replicate_answered_slow_failed, teardown),
        cmocka_unit_test_teardown(test_fallback_to_second_provider, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
