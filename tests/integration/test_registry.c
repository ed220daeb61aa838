/*
 * test_registry.c: the model registry (public.model_metadata).
 *
 *  - The worker takes the active model at start: a job is answered with
 *    the active row's model and records its version in model_version.
 *  - Switching the active model (ragpool.activate_model, which the trigger
 *    turns into NOTIFY ragpool_models) is followed without a restart: the
 *    same worker process answers the next job with the new model; the old
 *    row is no longer active.
 *  - With no active row, the configured model (RAGPOOL_CHAT_MODEL) answers.
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

static char *ask_and_wait(rp_test_ctx_t *t, const char *message)
{
    char *lit = rp_test_sql_literal(t->db, message);
    char *job = rp_test_sql_text(t->db, "select ragpool.enqueue_chat('" USER_A "'::uuid, %s)", lit);
    free(lit);
    assert_non_null(job);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = '%s'",
                                       job));
    return job;
}

static void test_active_model_switch_without_restart(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("registry", NULL);
    *state = t;
    long long a = rp_test_sql_int(t->db, "insert into model_metadata (model_name, version, "
                                         "base_model, is_active, deployed_at) values "
                                         "('dev-chat-a', 'finance-a-v1', 'dev-chat', true, now()) "
                                         "returning id");
    long long b = rp_test_sql_int(t->db, "insert into model_metadata (model_name, version, "
                                         "base_model) values ('dev-chat-b', 'finance-b-v2', "
                                         "'dev-chat') returning id");
    rp_test_proc_t *w = rp_test_worker_start(t, NULL);
    int pid = (int)rp_test_proc_pid(w);

    char *j1 = ask_and_wait(t, "What is TON token?");
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations where job_id = '%s' and "
                                     "status = 'done' and model_version = 'finance-a-v1'",
                                     j1),
                     1);

    /* Switch: one transaction deactivates a and activates b. */
    int loads = rp_test_proc_log_count(w, "\"registry.loaded\"");
    rp_test_sql_exec(t->db, "select ragpool.activate_model(%lld)", b);
    long long deadline = rp_test_now_ms() + RP_TEST_WAIT_MS;
    while (rp_test_proc_log_count(w, "\"registry.loaded\"") <= loads && rp_test_now_ms() < deadline)
        rp_test_sleep_ms(20);
    rp_test_assert(t, rp_test_proc_log_count(w, "finance-b-v2") >= 1);

    char *j2 = ask_and_wait(t, "What are Jettons?");
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations where job_id = '%s' and "
                                     "status = 'done' and model_version = 'finance-b-v2'",
                                     j2),
                     1);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from model_metadata where is_active and "
                                     "id = %lld",
                                     b),
                     1);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from model_metadata where is_active and "
                                     "id = %lld",
                                     a),
                     0);

    /* No active row: the configured model answers. */
    rp_test_sql_exec(t->db, "update model_metadata set is_active = false");
    loads = rp_test_proc_log_count(w, "\"registry.loaded\"");
    deadline = rp_test_now_ms() + RP_TEST_WAIT_MS;
    while (rp_test_proc_log_count(w, "\"registry.loaded\"") <= loads && rp_test_now_ms() < deadline)
        rp_test_sleep_ms(20);
    char *j3 = ask_and_wait(t, "What is slippage?");
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations where job_id = '%s' and "
                                     "status = 'done' and model_version = 'dev-chat'",
                                     j3),
                     1);

    /* The same process all along. */
    assert_true(rp_test_proc_running(w));
    assert_int_equal((int)rp_test_proc_pid(w), pid);
    free(j1);
    free(j2);
    free(j3);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_active_model_switch_without_restart, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
