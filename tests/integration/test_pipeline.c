/*
 * test_pipeline.c: the chat pipeline end to end, as its users see it.
 *
 * Against the local stack (./dev test): a fresh migrated and seeded
 * database, a private development model server and a real ragpool-worker,
 * on the queue RP_TEST_QUEUE names (ctest runs this program once per
 * backend: integration/test_pipeline on Postgres, integration/redis/
 * test_pipeline on a Redis stream of the test's own).  Jobs are enqueued
 * the way an app does (Postgres: ragpool.enqueue_chat; Redis: an XADD of
 * the msgpack envelope), and the assertions read only what users and
 * operators read: conversations rows (in Postgres on both backends), the
 * queue and its dead letters, what RLS lets a signed-in user see, and what
 * logical decoding (which Supabase Realtime reads) carries.
 *
 *  - many jobs, several users: one complete, correct row per job, context
 *    ids on the question's topic, an empty queue, no dead letters;
 *    (row level security and Realtime read only Postgres, but run on both
 *    backends: the row is written by a different path on each);
 *  - row level security: a user sees exactly their own rows;
 *  - Realtime: the insert reaches a wal2json slot with every column;
 *  - the operator's `ragpool enqueue --wait` prints the answer (exit 0) or
 *    reports a failed job (exit 1).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_fixture.h"
#include "test_queue.h"

#define USER_A "00000000-0000-4000-8000-000000000001"
#define USER_B "00000000-0000-4000-8000-000000000002"
#define USER_C "00000000-0000-4000-8000-000000000003"

/* Topics: a question, and a word (a case-insensitive regular expression
 * with word boundaries, so "ton" does not match "token") that a document of
 * every answer's context must contain; deploy/local/knowledge.jsonl has
 * documents on each. */
#define TOPIC_QUESTIONS                                                                            \
    "array['How does slippage work when I swap?', "                                                \
    "'What are Jettons on TON?', 'What is TON token?']"
#define TOPIC_WORDS "array['\\mslippage\\M', '\\mjettons?\\M', '\\mton\\M']"

static int teardown(void **state)
{
    rp_test_ctx_free(*state);
    *state = NULL;
    return 0;
}

/* Enqueue n chat jobs at once (Postgres: one statement; Redis: pipelined
 * XADDs), users A/B/C in turn and the topic questions in turn, recording
 * what was asked in table expected. */
static void enqueue_topics(rp_test_ctx_t *t, int n)
{
    rp_test_sql_exec(t->db,
                     "create table expected as "
                     "select gen_random_uuid() as job_id, "
                     "       u as user_id, q || ' (question ' || i || ')' as message, w as word "
                     "  from (select i, (array['" USER_A "', '" USER_B "', '" USER_C
                     "'])[1 + i %% 3] as u, "
                     "               (" TOPIC_QUESTIONS ")[1 + (i / 3) %% 3] as q, "
                     "               (" TOPIC_WORDS ")[1 + (i / 3) %% 3] as w "
                     "          from generate_series(0, %d) as i) s",
                     n - 1);
    assert_int_equal(rp_test_sql_int(t->db, "select count(distinct job_id) from expected"), n);
    rp_test_enqueue_table(t, "expected");
}

static void test_many_jobs_many_users(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("many", NULL);
    rp_test_proc_t *w;
    const int n = 200;
    *state = t;
    w = rp_test_worker_start(t, NULL);
    enqueue_topics(t, n);

    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS, "select count(*) = %d from conversations", n));

    /* Exactly one row per job, nothing left in the queue, no dead letters. */
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from conversations"), n);
    assert_int_equal(rp_test_sql_int(t->db, "select count(distinct job_id) from conversations"), n);
    assert_int_equal(rp_test_queue_total(t), 0);
    assert_int_equal(rp_test_dead_count(t, NULL), 0);

    /* Each row answers its own job: right user, right message, done. */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from expected e join conversations c using (job_id) "
                        " where c.user_id::text = e.user_id and c.message = e.message "
                        "   and c.status = 'done' and c.error is null"),
        n);
    /* What was measured and which model answered. */
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations "
                                     " where model_version = 'dev-chat' "
                                     "   and length(response) > 0 "
                                     "   and prompt_tokens > 0 and completion_tokens > 0 "
                                     "   and latency_ms >= 0 and attempts = 1 "
                                     "   and jsonb_typeof(context_used) = 'array' "
                                     "   and timings ? 'total_ms' and timings ? 'embed_ms' "
                                     "   and timings ? 'retrieve_ms' and timings ? 'infer_ms' "
                                     "   and (timings ->> 'total_ms')::float8 >= 0"),
                     n);
    /* Retrieval: every answer's context holds a document on its topic. */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from expected e join conversations c using (job_id) "
                        " where not exists ("
                        "   select 1 from jsonb_array_elements_text(c.context_used) x "
                        "     join finance_knowledge k on k.id = x::bigint "
                        "    where k.content ~* e.word)"),
        0);
    /* The users' row counts, as enqueued. */
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from conversations where user_id::text = '%s'",
                        USER_A),
        rp_test_sql_int(t->db, "select count(*) from expected where user_id = '%s'", USER_A));
    /* What the operator reads: one job.done line per job, nothing lost or
     * retried on this happy path. */
    rp_test_assert(t, rp_test_proc_log_count(w, "\"event\":\"job.done\"") == n);
    rp_test_assert(t, rp_test_proc_log_count(w, "\"event\":\"job.lost\"") == 0);
    rp_test_assert(t, rp_test_proc_log_count(w, "\"event\":\"job.retry\"") == 0);
    rp_test_ctx_pass(t);
}

/* Count the conversations rows a signed-in user sees through RLS. */
static long long count_as_user(rp_test_ctx_t *t, const char *user)
{
    long long n;
    rp_test_sql_exec(
        t->db,
        "begin; set local role authenticated; "
        "set local request.jwt.claims = '{\"sub\": \"%s\", \"role\": \"authenticated\"}'",
        user);
    n = rp_test_sql_int(t->db, "select count(*) from conversations");
    /* Every row visible is the user's own. */
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from conversations where user_id::text <> '%s'",
                        user),
        0);
    rp_test_sql_exec(t->db, "rollback");
    return n;
}

static void test_rls_own_rows_only(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("rls", NULL);
    const int n = 12;
    *state = t;
    rp_test_worker_start(t, NULL);
    enqueue_topics(t, n);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS, "select count(*) = %d from conversations", n));

    assert_int_equal(
        count_as_user(t, USER_A),
        rp_test_sql_int(t->db, "select count(*) from conversations where user_id::text = '%s'",
                        USER_A));
    assert_int_equal(count_as_user(t, USER_A), n / 3);
    assert_int_equal(count_as_user(t, USER_B), n / 3);
    /* A user with no questions sees nothing. */
    assert_int_equal(count_as_user(t, "00000000-0000-4000-8000-0000000000ff"), 0);
    rp_test_ctx_pass(t);
}

static void test_realtime_slot_sees_insert(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("realtime", NULL);
    static const char *const columns[] = {"id",
                                          "job_id",
                                          "user_id",
                                          "message",
                                          "response",
                                          "context_used",
                                          "status",
                                          "error",
                                          "model_version",
                                          "prompt_tokens",
                                          "completion_tokens",
                                          "latency_ms",
                                          "attempts",
                                          "timings",
                                          "created_at",
                                          NULL};
    char slot[64];
    char *job;
    int i;
    *state = t;
    snprintf(slot, sizeof slot, "rpt_rt_%d", (int)getpid());
    /* The slot exists before the job, so it sees the insert.  (The database
     * drop removes it if an assertion fails first.) */
    rp_test_sql_exec(t->db, "select pg_create_logical_replication_slot('%s', 'wal2json')", slot);
    rp_test_worker_start(t, NULL);
    job = rp_test_ask(t, USER_A, "What is TON token?");
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 1 from conversations where job_id = '%s'",
                                       job));

    rp_test_sql_exec(t->db,
                     "create temp table changes as "
                     "select data::jsonb as d from pg_logical_slot_get_changes('%s', null, null, "
                     "  'format-version', '2', 'add-tables', 'public.conversations')",
                     slot);
    /* One insert into public.conversations, for this job... */
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from changes where d ->> 'action' = 'I' "
                        "   and d ->> 'schema' = 'public' and d ->> 'table' = 'conversations'"),
        1);
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from changes, jsonb_array_elements(d -> 'columns') col "
                        " where d ->> 'action' = 'I' and col ->> 'name' = 'job_id' "
                        "   and col ->> 'value' = '%s'",
                        job),
        1);
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from changes, jsonb_array_elements(d -> 'columns') col "
                        " where d ->> 'action' = 'I' and col ->> 'name' = 'user_id' "
                        "   and col ->> 'value' = '" USER_A "'"),
        1);
    /* ...carrying every column of the row. */
    for (i = 0; columns[i] != NULL; i++) {
        long long has = rp_test_sql_int(
            t->db,
            "select count(*) from changes, jsonb_array_elements(d -> 'columns') col "
            " where d ->> 'action' = 'I' and col ->> 'name' = '%s'",
            columns[i]);
        if (has != 1) {
            fail_msg("the logical change lacks column %s", columns[i]);
        }
    }
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from changes, jsonb_array_elements(d -> 'columns') col "
                        " where d ->> 'action' = 'I' and col ->> 'name' = 'response' "
                        "   and length(col ->> 'value') > 0"),
        1);
    rp_test_sql_exec(t->db, "select pg_drop_replication_slot('%s')", slot);
    free(job);
    rp_test_ctx_pass(t);
}

/* The README's demo path: `ragpool enqueue --wait` prints the answer and
 * exits 0 once the worker has answered; exit 1 for an answer that failed. */
static void test_cli_enqueue_wait(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("cli", NULL);
    char *db_env, *out = NULL, *job, *response;
    const char *ok_argv[] = {rp_test_bin("RP_CLI_BIN"), "enqueue", "--user",    USER_A, "--message",
                             "What is TON token?",      "--wait",  "--timeout", "60",   NULL};
    const char *bad_argv[] = {rp_test_bin("RP_CLI_BIN"),
                              "enqueue",
                              "--user",
                              USER_A,
                              "--message",
                              "What is TON token? [[fault:chat:400]]",
                              "--wait",
                              "--timeout",
                              "60",
                              NULL};
    const char *env[6];
    int st, k = 0;
    *state = t;
    rp_test_worker_start(t, NULL);
    if (asprintf(&db_env, "DATABASE_URL=%s", t->db_url) < 0) {
        fail_msg("out of memory");
    }
    /* The CLI enqueues on the test's queue (RAGPOOL_QUEUE, the stream). */
    env[k++] = db_env;
    for (const char *const *q = t->queue_env; *q != NULL; q++) {
        env[k++] = *q;
    }
    env[k] = NULL;

    st = rp_test_run("cli-enqueue", ok_argv, env, 90000, &out);
    job = rp_test_sql_text(t->db, "select job_id::text from conversations where status = 'done'");
    response = rp_test_sql_text(t->db, "select response from conversations where status = 'done'");
    if (st != 0 || job == NULL || response == NULL || strstr(out, job) == NULL ||
        strstr(out, response) == NULL) {
        fprintf(stderr, "ragpool enqueue --wait: exit status %d, output:\n%s\n", st, out);
        rp_test_ctx_dump(t);
        fail_msg("enqueue --wait must exit 0 and print the job id and the answer");
    }
    free(out);
    free(job);
    free(response);

    st = rp_test_run("cli-enqueue-fail", bad_argv, env, 90000, &out);
    if (st != 1) {
        fprintf(stderr, "ragpool enqueue --wait (failing job): exit status %d, output:\n%s\n", st,
                out);
        rp_test_ctx_dump(t);
        fail_msg("enqueue --wait must exit 1 when the job failed");
    }
    free(out);
    free(db_env);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_many_jobs_many_users, teardown),
        cmocka_unit_test_teardown(test_cli_enqueue_wait, teardown),
        cmocka_unit_test_teardown(test_rls_own_rows_only, teardown),
        cmocka_unit_test_teardown(test_realtime_slot_sees_insert, teardown),
    };
    rp_test_require_stack("test_pipeline");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
