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
 *  - kill -9 again and again: a job that takes every worker down with it
 *    is dead-lettered (reason lease_expired) once it has been delivered
 *    max_attempts times, with an error row for its user.
 *
 * The model server is slowed down (--latency-ms applies to each embedding
 * and each chat answer) so that jobs are reliably in flight when the
 * signal arrives.  One definition, both queues (RP_TEST_QUEUE): "in
 * flight" is ragpool.jobs state running on Postgres and the consumer
 * group's pending entries (XPENDING) on Redis; a released job is a queued
 * row with no attempt counted, or a stream entry whose envelope says
 * attempt 0.
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
#include "test_queue.h"

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
                     "create table expected as select gen_random_uuid() as job_id, "
                     "'" USER_A "'::text as user_id, 'What is TON token? #' || i as message "
                     "from generate_series(1, %d) i",
                     n);
    rp_test_enqueue_table(t, "expected");
}

/* A backlog larger than the in-flight limit, claimed in batches with two
 * claims outstanding: the jobs held at once (state running / pending
 * entries) fill up to RAGPOOL_MAX_INFLIGHT and never pass it, and every
 * job is answered once. */
static void test_inflight_limit(void **state)
{
    static const char *const dm[] = {"--latency-ms", "150", NULL};
    static const char *const env[] = {"RAGPOOL_MAX_INFLIGHT=40", "RAGPOOL_CLAIM_BATCH=20",
                                      "RAGPOOL_CLAIMS_IN_FLIGHT=2", NULL};
    rp_test_ctx_t *t = rp_test_ctx_new("inflight", dm);
    const int n = 300;
    long long peak = 0;
    *state = t;
    enqueue_n(t, n);
    rp_test_worker_start(t, env);
    for (int i = 0; i < 3000; i++) {
        long long running = rp_test_queue_counts(t).running;
        if (running > peak) {
            peak = running;
        }
        if (rp_test_sql_int(t->db, "select count(*) from conversations") == n) {
            break;
        }
        rp_test_sleep_ms(20);
    }
    if (peak > 40 || peak < 30) {
        rp_test_ctx_dump(t);
        fail_msg("peak in flight %lld: expected up to the limit of 40, and near it", peak);
    }
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), n);
    assert_int_equal(rp_test_sql_int(t->db, "select count(distinct job_id) from conversations"), n);
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from conversations where status = 'done'"), n);
    assert_int_equal(rp_test_queue_total(t), 0);
    rp_test_ctx_pass(t);
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
    rp_test_assert(t, rp_test_wait_running(t, RP_TEST_WAIT_MS, 1));
    rp_test_proc_kill(w1);
    assert_int_equal(rp_test_proc_wait(w1, 5000), 128 + SIGKILL);
    /* Some jobs were taken down with it. */
    assert_true(rp_test_queue_counts(t).running > 0);

    rp_test_worker_start(t, env);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS, "select count(*) = %d from conversations", n));
    /* Let a late duplicate show up, if there were to be one. */
    rp_test_sleep_ms(500);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), n);
    assert_int_equal(rp_test_sql_int(t->db, "select count(distinct job_id) from conversations"), n);
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from conversations where status = 'done'"), n);
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from expected join conversations using (job_id)"),
        n);
    assert_int_equal(rp_test_queue_total(t), 0);
    assert_int_equal(rp_test_dead_count(t, NULL), 0);
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
    rp_test_assert(t, rp_test_wait_running(t, RP_TEST_WAIT_MS, n));
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), 0);

    t0 = rp_test_now_ms();
    assert_int_equal(rp_test_proc_signal(w, SIGTERM), 0);
    st = rp_test_proc_wait(w, 15000);
    rp_test_assert(t, st == 0);
    /* It waited for the model rather than dropping the work. */
    assert_true(rp_test_now_ms() - t0 < 15000);
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from conversations where status = 'done'"), n);
    assert_int_equal(rp_test_queue_total(t), 0);
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
    rp_test_assert(t, rp_test_wait_running(t, RP_TEST_WAIT_MS, n));

    assert_int_equal(rp_test_proc_signal(w, SIGTERM), 0);
    st = rp_test_proc_wait(w, 10000);
    /* It stopped on its own, promptly, rather than waiting for the model,
     * and releasing is a clean drain. */
    rp_test_assert(t, st == 0);
    /* Every unfinished job is queued again, its attempt not counted. */
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), 0);
    rp_test_assert(t, rp_test_queued_fresh(t) == n);
    rp_test_assert(t, rp_test_queue_total(t) == n);
    rp_test_assert(t, rp_test_proc_log_count(w, "worker.released") >= 1);

    /* A new worker answers them all, each on its first counted attempt. */
    rp_test_worker_start(t, NULL);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS, "select count(*) = %d from conversations", n));
    assert_int_equal(
        rp_test_sql_int(
            t->db, "select count(*) from conversations where status = 'done' and attempts = 1"),
        n);
    assert_int_equal(rp_test_queue_total(t), 0);
    rp_test_ctx_pass(t);
}

/* A job that kills every worker that takes it (here: the worker is killed
 * while it holds the job) must not loop for ever: once it has been
 * delivered max_attempts times and its lease expires again, it is
 * dead-lettered (reason lease_expired) and its user gets an error row. */
static void test_kill9_loop_dead_letters(void **state)
{
    static const char *const dm[] = {"--latency-ms", "3000", NULL};
    static const char *const env[] = {"RAGPOOL_LEASE_MS=1500", NULL};
    rp_test_ctx_t *t = rp_test_ctx_new("kill9loop", dm);
    rp_test_job_t job = {.user_id = USER_A, .message = "What is TON token?", .max_attempts = 2};
    char *id, *reason = NULL;
    int attempts = -1;
    *state = t;
    id = rp_test_enqueue(t, &job);
    /* Attempts 1 and 2: each worker takes the job and is killed with it. */
    for (int i = 0; i < 2; i++) {
        rp_test_proc_t *w = rp_test_worker_start(t, env);
        rp_test_assert(t, rp_test_wait_running(t, RP_TEST_WAIT_MS, 1));
        /* On a retake the job is still pending from the previous worker:
         * wait until this one logged taking it (Redis) or it is claimed. */
        if (i > 0) {
            long long deadline = rp_test_now_ms() + RP_TEST_WAIT_MS;
            while (rp_test_now_ms() < deadline &&
                   (t->stream != NULL ? rp_test_proc_log_count(w, "queue.reclaimed") == 0
                                      : rp_test_sql_int(t->db, "select coalesce(max(attempts), 0) "
                                                               "from ragpool.jobs") < 2)) {
                rp_test_sleep_ms(100);
            }
        }
        rp_test_sleep_ms(300);
        rp_test_proc_kill(w);
        assert_int_equal(rp_test_proc_wait(w, 5000), 128 + SIGKILL);
    }
    /* A third worker finds the lease expired again, at max_attempts. */
    rp_test_worker_start(t, env);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = '%s'",
                                       id));
    rp_test_assert(t, rp_test_dead_get(t, id, &reason, NULL, &attempts) == 1);
    rp_test_assert(t, strcmp(reason, "lease_expired") == 0);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations where job_id = '%s' "
                                     "and status = 'error' and user_id = '" USER_A "'",
                                     id),
                     1);
    assert_int_equal(rp_test_queue_total(t), 0);
    free(reason);
    free(id);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_inflight_limit, teardown),
        cmocka_unit_test_teardown(test_kill9_lease_expiry, teardown),
        cmocka_unit_test_teardown(test_sigterm_drains_in_flight, teardown),
        cmocka_unit_test_teardown(test_sigterm_short_drain_releases, teardown),
        cmocka_unit_test_teardown(test_kill9_loop_dead_letters, teardown),
    };
    rp_test_require_stack("test_pipeline_lifecycle");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
