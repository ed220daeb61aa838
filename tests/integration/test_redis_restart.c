/*
 * test_redis_restart.c: the Redis queue keeps every job it acknowledged to
 * a client across a Redis restart, and spends no attempts while Postgres
 * (where the answers go) is unreachable.
 *
 *  - restart: jobs are enqueued through the producer (common/producer.h,
 *    what the dispatcher and `ragpool enqueue` use) into a private
 *    redis-server (appendonly yes, noeviction, a free loopback port, so the
 *    stack's Redis is untouched); while a worker is draining them the
 *    server is shut down (SHUTDOWN: the AOF is flushed) and started again
 *    on the same port and directory, with more enqueues issued while it is
 *    down and after it is back.  Every job the producer acknowledged ends
 *    in exactly one conversations row, nothing is left in the stream, and
 *    the worker reconnected by itself (it is the same process throughout).
 *  - Postgres unreachable: with the worker's database closed to
 *    connections, jobs stay in the stream unclaimed (no attempt spent, no
 *    dead letter); once it is open again each is answered on its first
 *    attempt.
 *
 * Both always use the Redis queue, whatever RP_TEST_QUEUE says.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "producer.h"
#include "test_fixture.h"
#include "test_queue.h"

#define USER_A "00000000-0000-4000-8000-000000000001"

static int teardown(void **state)
{
    rp_test_ctx_free(*state);
    *state = NULL;
    return 0;
}

/* ------------------------------------------------------------ a producer */

typedef struct slot {
    struct prod *pr;
    int done, err;
    char id[40];
} slot_t;

typedef struct prod {
    uv_loop_t loop;
    uv_timer_t timer;
    rp_producer_t *p;
    slot_t *slots;
    int n, answered, closed;
} prod_t;

static void prod_init(prod_t *pr, rp_test_ctx_t *t, int capacity)
{
    rp_err_t err;
    rp_producer_opts_t o = {
        .queue = "redis",
        .redis_url = t->redis_url,
        .redis_stream = t->stream,
        .timeout_ms = 10000,
    };
    memset(pr, 0, sizeof(*pr));
    assert_int_equal(uv_loop_init(&pr->loop), 0);
    uv_timer_init(&pr->loop, &pr->timer);
    pr->slots = calloc((size_t)capacity, sizeof(slot_t));
    assert_non_null(pr->slots);
    pr->p = rp_producer_new(&pr->loop, &o, &err);
    if (pr->p == NULL) {
        fail_msg("rp_producer_new: %s", err.msg);
    }
    assert_int_equal(rp_producer_start(pr->p), 0);
}

static void on_enqueued(void *data, int err, const char *job_id, int existing, const char *msg)
{
    slot_t *s = data;
    (void)existing;
    (void)msg;
    s->done = 1;
    s->err = err;
    snprintf(s->id, sizeof(s->id), "%s", err == 0 && job_id != NULL ? job_id : "");
    s->pr->answered++;
}

/* Issue n enqueues (not waiting for them). */
static void prod_enqueue(prod_t *pr, int n, const char *tag)
{
    for (int i = 0; i < n; i++) {
        char msg[96];
        slot_t *s = &pr->slots[pr->n++];
        snprintf(msg, sizeof(msg), "What is TON token? (%s %d)", tag, i);
        rp_enqueue_t e = {.user_id = USER_A, .message = msg};
        s->pr = pr;
        assert_int_equal(rp_producer_enqueue(pr->p, &e, on_enqueued, s), 0);
    }
}

static void stop_loop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Run the loop for ms, or until every enqueue issued is answered. */
static void prod_run(prod_t *pr, long ms)
{
    long long deadline = rp_test_now_ms() + ms;
    while (pr->answered < pr->n && rp_test_now_ms() < deadline) {
        uv_timer_start(&pr->timer, stop_loop, 50, 0);
        uv_run(&pr->loop, UV_RUN_DEFAULT);
    }
}

static void on_closed(void *data)
{
    ((prod_t *)data)->closed = 1;
}

static void prod_free(prod_t *pr)
{
    rp_producer_close(pr->p, on_closed, pr);
    uv_close((uv_handle_t *)&pr->timer, NULL);
    uv_run(&pr->loop, UV_RUN_DEFAULT);
    assert_int_equal(pr->closed, 1);
    assert_int_equal(uv_loop_close(&pr->loop), 0);
    free(pr->slots);
}

/* The acknowledged jobs into table acked(job_id). */
static int record_acked(rp_test_ctx_t *t, prod_t *pr)
{
    int acked = 0;
    rp_test_sql_exec(t->db, "create table if not exists acked (job_id uuid primary key)");
    for (int i = 0; i < pr->n; i++) {
        if (pr->slots[i].done && pr->slots[i].err == 0) {
            rp_test_sql_exec(t->db, "insert into acked values ('%s') on conflict do nothing",
                             pr->slots[i].id);
            acked++;
        }
    }
    return acked;
}

/* ------------------------------------------------------------ tests */

static void test_restart_loses_no_acknowledged_job(void **state)
{
    /* 100 ms a model call, 16 jobs in flight: about 80 jobs/s, so the
     * worker is busy when the server goes down; a short lease so that the
     * jobs whose acknowledgement was cut off come back soon. */
    static const char *const dm[] = {"--latency-ms", "100", NULL};
    static const char *const env[] = {"RAGPOOL_MAX_INFLIGHT=16", "RAGPOOL_LEASE_MS=3000",
                                      "RAGPOOL_REDIS_BLOCK_MS=500", NULL};
    rp_test_ctx_t *t;
    rp_test_redis_server_t *srv;
    rp_test_proc_t *w;
    prod_t pr;
    int acked, during_ok = 0;
    setenv("RP_TEST_QUEUE", "redis", 1);
    t = rp_test_ctx_new("restart", dm);
    *state = t;
    srv = rp_test_redis_server_start(t);
    rp_test_ctx_set_redis_url(t, srv->url);
    prod_init(&pr, t, 600);

    /* 300 jobs, acknowledged before the worker starts. */
    prod_enqueue(&pr, 300, "before");
    prod_run(&pr, 30000);
    for (int i = 0; i < 300; i++) {
        assert_int_equal(pr.slots[i].err, 0);
    }
    w = rp_test_worker_start(t, env);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) >= 40 from conversations"));

    /* Down mid-run; enqueues keep coming while it is down. */
    rp_test_redis_disconnect(t);
    rp_test_redis_server_shutdown(srv);
    rp_test_assert(t, rp_test_sql_int(t->db, "select count(*) from conversations") < 300);
    prod_enqueue(&pr, 50, "during");
    prod_run(&pr, 1500);
    rp_test_redis_server_restart(t, srv);
    prod_run(&pr, 15000);
    for (int i = 300; i < 350; i++) {
        during_ok += pr.slots[i].err == 0;
    }
    /* And after it is back: the producer reconnected by itself too. */
    prod_enqueue(&pr, 100, "after");
    prod_run(&pr, 30000);
    for (int i = 350; i < 450; i++) {
        assert_int_equal(pr.slots[i].err, 0);
    }
    acked = record_acked(t, &pr);
    fprintf(stderr, "restart: %d jobs acknowledged (%d of the 50 issued while Redis was down)\n",
            acked, during_ok);

    /* Every acknowledged job: exactly one row, answered. */
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = %d from acked join conversations "
                                       "using (job_id)",
                                       acked));
    rp_test_sleep_ms(500);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) - count(distinct job_id) from "
                                            "conversations"),
                     0);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from acked join conversations c "
                                            "using (job_id) where c.status = 'done'"),
                     acked);
    /* Rows only for jobs that were enqueued (at most the unacknowledged
     * ones besides). */
    rp_test_assert(t, rp_test_sql_int(t->db, "select count(*) from conversations") <= pr.n);
    /* Nothing left behind, no dead letters; the same worker throughout. */
    {
        long long deadline = rp_test_now_ms() + RP_TEST_WAIT_MS;
        while (rp_test_queue_total(t) > 0 && rp_test_now_ms() < deadline) {
            rp_test_sleep_ms(200);
        }
    }
    rp_test_assert(t, rp_test_queue_total(t) == 0);
    rp_test_assert(t, rp_test_dead_count(t, NULL) == 0);
    rp_test_assert(t, rp_test_proc_running(w));
    rp_test_assert(t, rp_test_proc_log_count(w, "queue.redis_disconnected") >= 1);
    prod_free(&pr);
    rp_test_redis_server_free(srv);
    rp_test_ctx_pass(t);
}

static void test_postgres_down_spends_no_attempts(void **state)
{
    rp_test_ctx_t *t;
    rp_test_proc_t *w;
    char *dbname;
    PGconn *admin;
    const int n = 20;
    setenv("RP_TEST_QUEUE", "redis", 1);
    t = rp_test_ctx_new("pgdown", NULL);
    *state = t;
    w = rp_test_worker_start(t, NULL);
    dbname = rp_test_sql_text(t->db, "select current_database()");

    /* Postgres unreachable for the worker: its sessions are ended and the
     * database refuses new ones (this test's own session stays). */
    admin = rp_test_pg_connect(rp_test_env("RP_TEST_PG_URL"));
    rp_test_sql_exec(admin, "alter database \"%s\" with allow_connections false", dbname);
    rp_test_sql_exec(admin,
                     "select pg_terminate_backend(pid) from pg_stat_activity "
                     "where datname = '%s' and application_name like 'ragpool-worker%%'",
                     dbname);
    rp_test_assert(t, rp_test_proc_wait_log(w, "\"level\":\"warn\"", 10000) == 0);
    rp_test_sql_exec(t->db,
                     "create table expected as select gen_random_uuid() as job_id, "
                     "'" USER_A "'::text as user_id, 'What is TON token? #' || i as message "
                     "from generate_series(1, %d) i",
                     n);
    rp_test_enqueue_table(t, "expected");
    rp_test_sleep_ms(3000);
    /* Nothing was claimed: no attempt spent, nothing dead. */
    {
        rp_test_queue_counts_t c = rp_test_queue_counts(t);
        rp_test_assert(t, c.queued == n && c.running == 0 && c.delayed == 0);
    }
    rp_test_assert(t, rp_test_dead_count(t, NULL) == 0);

    /* Back: every job answered on its first attempt. */
    rp_test_sql_exec(admin, "alter database \"%s\" with allow_connections true", dbname);
    PQfinish(admin);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = %d from expected join conversations "
                                       "using (job_id) where status = 'done' and attempts = 1",
                                       n));
    rp_test_assert(t, rp_test_queue_total(t) == 0);
    rp_test_assert(t, rp_test_proc_running(w));
    free(dbname);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_restart_loses_no_acknowledged_job, teardown),
        cmocka_unit_test_teardown(test_postgres_down_spends_no_attempts, teardown),
    };
    rp_test_require_stack("test_redis_restart");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
