/*
 * test_pipeline_faults.c: what users see when the model server or the job
 * itself is at fault.
 *
 * Faults are injected by markers in the question (docs/CONTRACTS.md): the
 * development model server answers a request carrying
 * `[[fault:chat:429x2]]` with 429 the first two times it sees that body.
 *  - transient faults (429 with Retry-After, 503) are retried and the user
 *    gets one normal answer, with the attempts counted;
 *  - a permanent fault (400) and a fault that outlasts max_attempts (500)
 *    end in a dead letter with the error, and in an error row with a safe
 *    message, so the user is never left waiting;
 *  - malformed jobs are dead-lettered as invalid_payload at once and the
 *    worker keeps serving.
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

/* Enqueue one chat question for user A; returns its job id (owned). */
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

static void test_transient_faults_are_retried(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("retry", NULL);
    char *j429, *j503;
    json_t *stats;
    char *text;
    *state = t;
    rp_test_worker_start(t, NULL);
    j429 = ask(t, "What is TON token? [[fault:chat:429x2]]");
    j503 = ask(t, "What are Jettons? [[fault:chat:503x1]]");
    wait_row(t, j429);
    wait_row(t, j503);

    /* One normal answer each, after 3 and 2 attempts. */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from conversations where job_id = '%s' "
                        "and status = 'done' and attempts = 3 and length(response) > 0",
                        j429),
        1);
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from conversations where job_id = '%s' "
                        "and status = 'done' and attempts = 2 and length(response) > 0",
                        j503),
        1);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), 2);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs"), 0);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs"), 0);

    /* The model server did answer with those faults: 2 x 429 and 1 x 503. */
    stats = rp_test_devmodel_stats(t);
    text = json_dumps(stats, JSON_COMPACT | JSON_SORT_KEYS);
    if (rp_test_json_number(stats, "faults.429") < 2 ||
        rp_test_json_number(stats, "faults.503") < 1) {
        fprintf(stderr, "model server stats: %s\n", text);
        fail_msg("the model server's stats do not show 2 x 429 and 1 x 503");
    }
    free(text);
    json_decref(stats);
    free(j429);
    free(j503);
    rp_test_ctx_pass(t);
}

static void test_permanent_and_exhausted_failures(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("dead", NULL);
    char *j400, *j500;
    *state = t;
    rp_test_worker_start(t, NULL);
    j400 = ask(t, "What is TON token? [[fault:chat:400]]");
    j500 = rp_test_sql_text(t->db, "select ragpool.enqueue('chat', jsonb_build_object("
                                   "  'user_id', '" USER_A
                                   "', 'message', 'What are Jettons? [[fault:chat:500]]', "
                                   "  'options', '{}'::jsonb), max_attempts => 3)");
    assert_non_null(j500);
    wait_row(t, j400);
    wait_row(t, j500);

    /* 400 is permanent: dead at once, with the error. */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from ragpool.dead_jobs where id = '%s' "
                        "and reason = 'permanent' and attempts = 1 and last_error like '%%400%%'",
                        j400),
        1);
    /* 500 every time: dead after its 3 attempts. */
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from ragpool.dead_jobs where id = '%s' "
                                     "and reason = 'max_attempts' and attempts = 3 "
                                     "and last_error like '%%500%%'",
                                     j500),
                     1);
    /* Each user still got a row: status error, a safe non-empty message. */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from conversations where job_id in ('%s', '%s') "
                        "and status = 'error' and length(response) > 0 "
                        "and user_id = '" USER_A "' and error is not null",
                        j400, j500),
        2);
    /* The safe message does not leak the raw error. */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from conversations where job_id in ('%s', '%s') "
                        "and response = error",
                        j400, j500),
        0);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs"), 0);
    free(j400);
    free(j500);
    rp_test_ctx_pass(t);
}

static void test_poison_payloads(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("poison", NULL);
    char *normal;
    *state = t;
    rp_test_worker_start(t, NULL);
    rp_test_sql_exec(
        t->db,
        "create table poison as select * from (values "
        " (ragpool.enqueue('chat', '{\"nonsense\": true}')),"
        " (ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A "', "
        "    'message', repeat('x', 1048576), 'options', '{}'::jsonb))),"
        " (ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A "', "
        "    'message', 42))),"
        " (ragpool.enqueue('chat', jsonb_build_object('user_id', '" USER_A "', "
        "    'message', 'What is TON token?', 'options', '{\"match_count\": \"many\"}'::jsonb))),"
        " (ragpool.enqueue('chat', '[1, 2, 3]'))"
        ") as v(job_id)");
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 5 from ragpool.dead_jobs d join poison p "
                                       "on p.job_id = d.id"));
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from ragpool.dead_jobs where reason = 'invalid_payload' "
                        "and attempts = 1 and last_error is not null"),
        5);

    /* The worker is still serving: a normal question gets its answer. */
    normal = rp_test_sql_text(t->db, "select ragpool.enqueue_chat('" USER_A
                                     "'::uuid, 'What is TON token?')");
    assert_non_null(normal);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = '%s' "
                                       "and status = 'done'",
                                       normal));
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs"), 0);
    free(normal);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_transient_faults_are_retried, teardown),
        cmocka_unit_test_teardown(test_permanent_and_exhausted_failures, teardown),
        cmocka_unit_test_teardown(test_poison_payloads, teardown),
    };
    rp_test_require_stack("test_pipeline_faults");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
