/*
 * test_pipeline_lifecycle.c: workers that die or are stopped while jobs are
 * in flight lose nothing and duplicate nothing.
 *
 *  - kill -9: the dead worker's jobs come back when their leases expire and
 *    a second worker finishes them; every job has exactly one row;
 *  - SIGTERM with time to drain: the worker finishes its jobs in flight and
 *    exits 0;
 *  - SIGTERM with too little time: the worker releases the unfinished jobs
 *    (back to queued, the attempt not counted) and exits; a new worker
 *    answers them all, each on its first counted attempt.
 *
 * The model server is slowed down (--latency-ms applies to each embedding
 * and each chat answer) so that jobs are reliably in flight when the
 * signal arrives.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>

#include <cmocka.h>

#include "test_fixture.h"

#define USER_A "00000000-0000-4000-8000-000000000001"

static int teardown(void **state)
{
    rp_test_ctx_free(*state);
    *state = NULL;
    return 0;
}

static void enqueue_n(rp_test_ctx_t *t, int n)
{
    rp_test_sql_exec(t->db,
                     "select ragpool.enqueue_chat('" USER_A "'::uuid, 'What is TON token? #' || i) "
                     "from generate_series(1, %d) i",
                     n);
}

static void test_kill9_lease_expiry(void **state)
{
    /* A job takes about 2 x 1000 ms (embedding, then chat), within the
     * 4000 ms lease, so the second worker's own leases never expire. */
    static const char *const dm[] = {"--latency-ms", "1000", NULL};
    static const char *const env[] = {"RAGPOOL_LEASE_MS=4000", NULL};
    rp_test_ctx_t *t = rp_test_ctx_new("kill9", dm);
    rp_test_proc_t *w1;
    const int n = 50;
    *state = t;
    w1 = rp_test_worker_start(t, env);
    enqueue_n(t, n);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                            "select count(*) > 0 from ragpool.jobs where state = 'running'"));
    rp_test_proc_kill(w1);
    assert_int_equal(rp_test_proc_wait(w1, 5000), 128 + SIGKILL);
    /* Some jobs were taken down with it. */
    assert_true(
        rp_test_sql_int(t->db, "select count(*) from ragpool.jobs where state = 'running'") > 0);

    rp_test_worker_start(t, env);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS, "select count(*) = %d from conversations", n));
    /* Let a late duplicate show up, if there were to be one. */
    rp_test_sleep_ms(500);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), n);
    assert_int_equal(rp_test_sql_int(t->db, "select count(distinct job_id) from conversations"), n);
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from conversations where status = 'done'"), n);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs"), 0);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs"), 0);
    /* The jobs the first worker held were answered on a later attempt. */
    assert_true(rp_test_sql_int(t->db, "select count(*) from conversations where attempts >= 2") >
                0);
    rp_test_ctx_pass(t);
}

static void test_sigterm_drains_in_flight(void **state)
{
    static const char *const dm[] = {"--latency-ms", "1500", NULL};
    static const char *const env[] = {"RAGPOOL_DRAIN_TIMEOUT_MS=10000", NULL};
    rp_test_ctx_t *t = rp_test_ctx_new("drain", dm);
    rp_test_proc_t *w;
    const int n = 20;
    long long t0;
    int st;
    *state = t;
    w = rp_test_worker_start(t, env);
    enqueue_n(t, n);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                            "select count(*) = %d from ragpool.jobs where state = 'running'", n));
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), 0);

    t0 = rp_test_now_ms();
    assert_int_equal(rp_test_proc_signal(w, SIGTERM), 0);
    st = rp_test_proc_wait(w, 15000);
    rp_test_assert(t, st == 0);
    /* It waited for the model rather than dropping the work. */
    assert_true(rp_test_now_ms() - t0 < 15000);
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from conversations where status = 'done'"), n);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs"), 0);
    rp_test_assert(t, rp_test_proc_log_count(w, "worker.draining") >= 1);
    rp_test_assert(t, rp_test_proc_log_count(w, "worker.stopped") >= 1);
    rp_test_ctx_pass(t);
}

static void test_sigterm_short_drain_releases(void **state)
{
    static const char *const dm[] = {"--latency-ms", "5000", NULL};
    static const char *const env[] = {"RAGPOOL_DRAIN_TIMEOUT_MS=200", NULL};
    rp_test_ctx_t *t = rp_test_ctx_new("release", dm);
    rp_test_proc_t *w;
    const int n = 20;
    int st;
    *state = t;
    w = rp_test_worker_start(t, env);
    enqueue_n(t, n);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                            "select count(*) = %d from ragpool.jobs where state = 'running'", n));

    assert_int_equal(rp_test_proc_signal(w, SIGTERM), 0);
    st = rp_test_proc_wait(w, 10000);
    /* It stopped on its own, promptly, rather than waiting for the model,
     * and releasing is a clean drain. */
    rp_test_assert(t, st == 0);
    /* Every unfinished job is queued again, its attempt not counted. */
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), 0);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from ragpool.jobs where state = 'queued' "
                                     "and attempts = 0 and locked_by is null"),
                     n);

    /* A new worker answers them all, each on its first counted attempt. */
    rp_test_worker_start(t, NULL);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS, "select count(*) = %d from conversations", n));
    assert_int_equal(
        rp_test_sql_int(
            t->db, "select count(*) from conversations where status = 'done' and attempts = 1"),
        n);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs"), 0);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_kill9_lease_expiry, teardown),
        cmocka_unit_test_teardown(test_sigterm_drains_in_flight, teardown),
        cmocka_unit_test_teardown(test_sigterm_short_drain_releases, teardown),
    };
    rp_test_require_stack("test_pipeline_lifecycle");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
