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
 *
 * One definition, both queues: RP_TEST_QUEUE picks the backend (ctest runs
 * integration/test_pipeline_faults and integration/redis/
 * test_pipeline_faults); dead letters are read from ragpool.dead_jobs or
 * from the stream <stream>:dead, and the error rows from conversations on
 * both.  On Redis the poison test also adds entries no client library
 * would write: bytes that are not msgpack, and an entry without a job
 * field.
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
#include "test_queue.h"

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
    return rp_test_ask(t, USER_A, message);
}

/* Assert that job has a dead letter with this reason and attempts, whose
 * error contains needle. */
static void assert_dead(rp_test_ctx_t *t, const char *job, const char *reason, int attempts,
                        const char *needle)
{
    char *why = NULL, *error = NULL;
    int n = -1;
    if (!rp_test_dead_get(t, job, &why, &error, &n)) {
        rp_test_ctx_dump(t);
        fail_msg("job %s has no dead letter", job);
    }
    if (strcmp(why, reason) != 0 || n != attempts || strstr(error, needle) == NULL) {
        rp_test_ctx_dump(t);
        fail_msg("dead letter of %s: reason %s (want %s), attempts %d (want %d), error '%s' "
                 "(want it to mention %s)",
                 job, why, reason, n, attempts, error, needle);
    }
    free(why);
    free(error);
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
    assert_int_equal(rp_test_dead_count(t, NULL), 0);
    assert_int_equal(rp_test_queue_total(t), 0);

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
    rp_test_job_t always500 = {
        .user_id = USER_A, .message = "What are Jettons? [[fault:chat:500]]", .max_attempts = 3};
    *state = t;
    rp_test_worker_start(t, NULL);
    j400 = ask(t, "What is TON token? [[fault:chat:400]]");
    j500 = rp_test_enqueue(t, &always500);
    wait_row(t, j400);
    wait_row(t, j500);

    /* 400 is permanent: dead at once, with the error. */
    assert_dead(t, j400, "permanent", 1, "400");
    /* 500 every time: dead after its 3 attempts. */
    assert_dead(t, j500, "max_attempts", 3, "500");
    assert_int_equal(rp_test_dead_count(t, NULL), 2);
    /* The error rows count the attempts too. */
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations where job_id = '%s' "
                                     "and attempts = 3",
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
    assert_int_equal(rp_test_queue_total(t), 0);
    free(j400);
    free(j500);
    rp_test_ctx_pass(t);
}

/* Run the CLI on the test's queue; returns its exit status, *out its output. */
static int cli(rp_test_ctx_t *t, const char *name, const char *const *args, char **out)
{
    const char *argv[12];
    const char *env[8];
    int a = 0, k = 0;
    char *db_env;
    if (asprintf(&db_env, "DATABASE_URL=%s", t->db_url) < 0) {
        fail_msg("out of memory");
    }
    argv[a++] = rp_test_bin("RP_CLI_BIN");
    for (const char *const *p = args; *p != NULL && a < 11; p++) {
        argv[a++] = *p;
    }
    argv[a] = NULL;
    env[k++] = db_env;
    for (const char *const *q = t->queue_env; *q != NULL && k < 7; q++) {
        env[k++] = *q;
    }
    env[k] = NULL;
    int st = rp_test_run(name, argv, env, 60000, out);
    free(db_env);
    return st;
}

/* The operator's view of dead letters, on either queue: `ragpool status`
 * counts a job that died after its attempts, `ragpool dead list` shows it
 * with its reason, and `ragpool dead retry` runs it again (attempts reset):
 * its answer replaces the error row, and the dead letter is gone. */
static void test_cli_dead_letters(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("clidead", NULL);
    rp_test_job_t flaky = {
        .user_id = USER_A, .message = "What is TON token? [[fault:chat:500x2]]", .max_attempts = 2};
    char *job, *out = NULL;
    *state = t;
    rp_test_worker_start(t, NULL);
    job = rp_test_enqueue(t, &flaky);
    wait_row(t, job);
    assert_dead(t, job, "max_attempts", 2, "500");

    static const char *const status[] = {"status", "--json", NULL};
    if (cli(t, "cli-status", status, &out) != 0 || strstr(out, "\"dead\": 1,") == NULL ||
        strstr(out, t->queue) == NULL) {
        fail_msg("ragpool status --json must count the dead letter; got:\n%s", out);
    }
    free(out);
    static const char *const list[] = {"dead", "list", "--json", NULL};
    if (cli(t, "cli-dead-list", list, &out) != 0 || strstr(out, job) == NULL ||
        strstr(out, "\"reason\": \"max_attempts\"") == NULL || strstr(out, "500") == NULL) {
        fail_msg("ragpool dead list --json must show %s; got:\n%s", job, out);
    }
    free(out);
    const char *retry[] = {"dead", "retry", job, NULL};
    if (cli(t, "cli-dead-retry", retry, &out) != 0 || strstr(out, "requeued 1 job") == NULL) {
        fail_msg("ragpool dead retry %s must requeue it; got:\n%s", job, out);
    }
    free(out);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = "
                                       "'%s' and status = 'done' and attempts = 1",
                                       job));
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), 1);
    assert_int_equal(rp_test_dead_count(t, NULL), 0);
    /* Nothing left to retry. */
    assert_int_equal(cli(t, "cli-dead-retry-again", retry, &out), 1);
    free(out);
    free(job);
    rp_test_ctx_pass(t);
}

static void test_poison_payloads(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("poison", NULL);
    static const char *const poison[] = {
        "{\"nonsense\": true}",
        NULL, /* a 1 MB message, built below */
        "{\"user_id\": \"" USER_A "\", \"message\": 42}",
        "{\"user_id\": \"" USER_A "\", \"message\": \"What is TON token?\", "
        "\"options\": {\"match_count\": \"many\"}}",
        "[1, 2, 3]",
    };
    char *ids[5];
    char *big;
    long long want;
    char *normal;
    *state = t;
    rp_test_worker_start(t, NULL);
    big = malloc(1048576 + 100);
    assert_non_null(big);
    {
        int n = snprintf(big, 100, "{\"user_id\": \"%s\", \"message\": \"", USER_A);
        memset(big + n, 'x', 1048576);
        strcpy(big + n + 1048576, "\"}");
    }
    for (int i = 0; i < 5; i++) {
        ids[i] = rp_test_enqueue_payload(t, poison[i] != NULL ? poison[i] : big);
    }
    free(big);
    want = 5;
    if (t->stream != NULL) {
        /* What no client library writes: bytes that are not msgpack, a
         * msgpack value that is not a map, and an entry without the job
         * field. */
        char *e1 = rp_test_redis_add_raw(t, "\xc1garbage", 8);
        char *e2 = rp_test_redis_add_raw(t, "\x93\x01\x02\x03", 4);
        char *e3 = rp_test_redis_add_raw(t, NULL, 0);
        free(e1);
        free(e2);
        free(e3);
        want += 3;
    }
    {
        long long deadline = rp_test_now_ms() + RP_TEST_WAIT_MS;
        while (rp_test_dead_count(t, "invalid_payload") < want && rp_test_now_ms() < deadline) {
            rp_test_sleep_ms(100);
        }
    }
    rp_test_assert(t, rp_test_dead_count(t, "invalid_payload") == want);
    rp_test_assert(t, rp_test_dead_count(t, NULL) == want);
    /* Each enqueued job is dead under its own id, on its first attempt. */
    for (int i = 0; i < 5; i++) {
        char *error = NULL;
        int attempts = -1;
        rp_test_assert(t, rp_test_dead_get(t, ids[i], NULL, &error, &attempts) == 1);
        rp_test_assert(t, attempts == 1 && error != NULL && error[0] != '\0');
        free(error);
    }

    /* As on Postgres, a dead job whose payload names a usable user still
     * answers that user with an error row (the 1 MB message, the number as
     * message, the bad option); the others name no user. */
    rp_test_assert(t, rp_test_sql_wait(t->db, 10000,
                                       "select count(*) = 3 from conversations where job_id in "
                                       "('%s', '%s', '%s') and status = 'error' "
                                       "and user_id = '" USER_A "'",
                                       ids[1], ids[2], ids[3]));

    /* The worker is still serving: a normal question gets its answer. */
    normal = rp_test_ask(t, USER_A, "What is TON token?");
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = '%s' "
                                       "and status = 'done'",
                                       normal));
    assert_int_equal(rp_test_queue_total(t), 0);
    for (int i = 0; i < 5; i++) {
        free(ids[i]);
    }
    free(normal);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_transient_faults_are_retried, teardown),
        cmocka_unit_test_teardown(test_permanent_and_exhausted_failures, teardown),
        cmocka_unit_test_teardown(test_poison_payloads, teardown),
        cmocka_unit_test_teardown(test_cli_dead_letters, teardown),
    };
    rp_test_require_stack("test_pipeline_faults");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
