/*
 * test_streaming.c: partial answers pushed while the model writes them.
 *
 * The test database has no `realtime` schema, so chunks land in
 * ragpool.stream_chunks with a NOTIFY ragpool_stream each (what a local
 * client follows).  The model server writes its streamed answer one piece
 * every 20 ms; the worker coalesces at 100 ms.
 *
 *  - In order: an answer's chunks have seq 1..n without gaps, in commit
 *    order, only the last has done = true, their texts concatenate to the
 *    final row's response, they are fewer than the model's pieces
 *    (coalescing), and a LISTENer received a notification for each.
 *  - Across a retry: a stream cut half way (`[[fault:stream:truncatex1]]`)
 *    fails attempt 1 after it pushed some text (no chunk of it is done);
 *    attempt 2 streams the whole answer, its chunks concatenate to the
 *    row's response, and the row records attempts = 2.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libpq-fe.h>

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

static void slow_stream(rp_test_ctx_t *t)
{
    char url[300];
    long status = 0;
    snprintf(url, sizeof(url), "%s/_admin/config", t->devmodel_url);
    char *body = rp_test_http("POST", url, "{\"stream_piece_ms\":20}", &status);
    free(body);
    assert_int_equal(status, 200);
}

static const char *const stream_env[] = {"RAGPOOL_STREAM=true", "RAGPOOL_STREAM_INTERVAL_MS=100",
                                         NULL};

static void test_chunks_in_order(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("stream", NULL);
    *state = t;
    slow_stream(t);
    PGconn *listener = rp_test_pg_connect(t->db_url);
    PQclear(PQexec(listener, "LISTEN ragpool_stream"));
    rp_test_worker_start(t, stream_env);
    char *job = ask(t, "What is TON token?");
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from ragpool.stream_chunks where "
                                       "job_id = '%s' and done",
                                       job));
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = '%s'",
                                       job));
    long long n = rp_test_sql_int(t->db,
                                  "select count(*) from ragpool.stream_chunks where job_id "
                                  "= '%s'",
                                  job);
    rp_test_assert(t, n >= 2);
    /* seq 1..n in commit (id) order, one attempt, done only on the last. */
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from (select seq, row_number() over (order "
                                     "by id) rn, done, attempt from ragpool.stream_chunks where "
                                     "job_id = '%s') x where seq = rn and attempt = 1 and done = "
                                     "(seq = %lld)",
                                     job, n),
                     n);
    /* They concatenate to the final answer. */
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations c where job_id = '%s' "
                                     "and response = (select string_agg(text, '' order by seq) "
                                     "from ragpool.stream_chunks s where s.job_id = c.job_id)",
                                     job),
                     1);
    /* Coalesced: fewer chunks than the model's pieces of about 3 words. */
    long long words = rp_test_sql_int(
        t->db,
        "select array_length(regexp_split_to_array(response, ' '), 1) from conversations "
        "where job_id = '%s'",
        job);
    rp_test_assert(t, n < words / 3);
    /* A LISTENer heard each chunk, with its (job_id, attempt, seq). */
    long long deadline = rp_test_now_ms() + 5000;
    long long heard = 0, last_seq = 0;
    while (heard < n && rp_test_now_ms() < deadline) {
        PQconsumeInput(listener);
        PGnotify *nt;
        while ((nt = PQnotifies(listener)) != NULL) {
            json_t *p = json_loads(nt->extra, 0, NULL);
            assert_non_null(p);
            assert_string_equal(json_string_value(json_object_get(p, "job_id")), job);
            long long seq = json_integer_value(json_object_get(p, "seq"));
            assert_int_equal(seq, last_seq + 1);
            last_seq = seq;
            heard++;
            json_decref(p);
            PQfreemem(nt);
        }
        rp_test_sleep_ms(20);
    }
    assert_int_equal(heard, n);
    PQfinish(listener);
    free(job);
    rp_test_ctx_pass(t);
}

static void test_stream_across_retry(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("stream_retry", NULL);
    *state = t;
    slow_stream(t);
    rp_test_worker_start(t, stream_env);
    char *job = ask(t, "What is TON token? [[fault:stream:truncatex1]]");
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = '%s'",
                                       job));
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from ragpool.stream_chunks where "
                                       "job_id = '%s' and done",
                                       job));
    /* The row is attempt 2's answer. */
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations where job_id = '%s' and "
                                     "status = 'done' and attempts = 2",
                                     job),
                     1);
    /* Attempt 1 pushed text, and none of it claims to be complete. */
    rp_test_assert(t, rp_test_sql_int(t->db,
                                      "select count(*) from ragpool.stream_chunks where job_id = "
                                      "'%s' and attempt = 1",
                                      job) >= 1);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from ragpool.stream_chunks where job_id = "
                                     "'%s' and attempt = 1 and done",
                                     job),
                     0);
    /* Attempt 2's chunks: seq from 1 without gaps, ending done, and they
     * concatenate to the row's response; attempt 1's text is shorter. */
    long long n2 = rp_test_sql_int(t->db,
                                   "select count(*) from ragpool.stream_chunks where job_id = "
                                   "'%s' and attempt = 2",
                                   job);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select max(seq) from ragpool.stream_chunks where job_id = "
                                     "'%s' and attempt = 2",
                                     job),
                     n2);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations c where job_id = '%s' "
                                     "and response = (select string_agg(text, '' order by seq) "
                                     "from ragpool.stream_chunks s where s.job_id = c.job_id and "
                                     "s.attempt = 2) and length(response) > (select "
                                     "length(string_agg(text, '' order by seq)) from "
                                     "ragpool.stream_chunks s where s.job_id = c.job_id and "
                                     "s.attempt = 1)",
                                     job),
                     1);
    free(job);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_chunks_in_order, teardown),
        cmocka_unit_test_teardown(test_stream_across_retry, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
