/*
 * test_training.c: feedback and training-data exports.
 *
 *  - Feedback: as role authenticated, a user sets the feedback of their
 *    own conversation with ragpool.set_feedback; another user's
 *    conversation (or a bad value) is refused.
 *  - Export: 1,000 conversations over two users, four feedback values,
 *    thirty days, two models and both statuses; an export of those rated 1,
 *    done, created in [2026-01-10, 2026-01-20) by model m-a selects exactly
 *    the expected ones (training_data and progress rows_done = rows_total),
 *    and the bytes uploaded to the model server's Storage endpoint, and the
 *    files written to RAGPOOL_EXPORT_DIR, hold one line per conversation in
 *    id order, in the reference format (instruction, input, output) and in
 *    OpenAI's chat fine-tuning format (messages).
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
#include <libpq-fe.h>

#include "test_fixture.h"

#define USER_A "00000000-0000-4000-8000-000000000001"
#define USER_B "00000000-0000-4000-8000-000000000002"

static int teardown(void **state)
{
    rp_test_ctx_free(*state);
    *state = NULL;
    return 0;
}

static void test_feedback_owner_only(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("feedback", NULL);
    *state = t;
    long long a = rp_test_sql_int(t->db, "insert into conversations (user_id, message, response) "
                                         "values ('" USER_A "', 'q', 'a') returning id");
    long long b = rp_test_sql_int(t->db, "insert into conversations (user_id, message, response) "
                                         "values ('" USER_B "', 'q', 'a') returning id");
    rp_test_sql_exec(t->db, "set role authenticated; select set_config('request.jwt.claims', "
                            "'{\"sub\":\"" USER_A "\"}', false)");
    rp_test_sql_exec(t->db, "select ragpool.set_feedback(%lld, 1)", a);
    char *err = NULL;
    assert_int_equal(rp_test_sql_try(t->db, &err, "select ragpool.set_feedback(%lld, 1)", b), -1);
    assert_non_null(strstr(err, "no conversation"));
    free(err);
    err = NULL;
    assert_int_equal(rp_test_sql_try(t->db, &err, "select ragpool.set_feedback(%lld, 5)", a), -1);
    free(err);
    rp_test_sql_exec(t->db, "reset role");
    assert_int_equal(
        rp_test_sql_int(t->db, "select feedback from conversations where id = %lld", a), 1);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from conversations where id = %lld and "
                                     "feedback is null",
                                     b),
                     1);
    rp_test_ctx_pass(t);
}

/* Each line of doc, parsed; fails the test on a line that is not JSON. */
static json_t *lines_of(const char *doc)
{
    json_t *arr = json_array();
    const char *p = doc;
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        json_error_t e;
        json_t *v = json_loadb(p, (size_t)(nl - p), 0, &e);
        if (v == NULL)
            fail_msg("export line is not JSON: %s", e.text);
        json_array_append_new(arr, v);
        p = nl + 1;
    }
    return arr;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void test_export_selects_exactly_the_right_ones(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("export", NULL);
    *state = t;
    char dir[512], dir_env[600], url_env[400];
    snprintf(dir, sizeof(dir), "%s/exports-%d", rp_test_tmpdir(), (int)getpid());
    char mk[600];
    snprintf(mk, sizeof(mk), "mkdir -p '%s'", dir);
    assert_int_equal(system(mk), 0);
    snprintf(dir_env, sizeof(dir_env), "RAGPOOL_EXPORT_DIR=%s", dir);
    snprintf(url_env, sizeof(url_env), "SUPABASE_URL=%s", t->devmodel_url);
    const char *env[] = {dir_env, url_env, "SUPABASE_SERVICE_ROLE_KEY=dev-key",
                         "RAGPOOL_EXPORT_PAGE=64", NULL};

    /* 1,000 conversations: i % 4 -> feedback 1, 0, -1, NULL; i % 3 -> model
     * m-a, m-b, m-a; every 7th is an error row; day i % 30 of January. */
    rp_test_sql_exec(
        t->db, "insert into conversations (user_id, message, response, model_version, status, "
               "feedback, created_at) "
               "select (case when i %% 2 = 0 then '" USER_A "' else '" USER_B "' end)::uuid, "
               "'question ' || i || E' with \"quotes\", a tab\\t and a newline\\n', "
               "'answer ' || i || ' — ünïcode', "
               "case when i %% 3 = 1 then 'm-b' else 'm-a' end, "
               "case when i %% 7 = 0 then 'error' else 'done' end, "
               "case i %% 4 when 0 then 1 when 1 then 0 when 2 then -1 end, "
               "'2026-01-01T00:00:00Z'::timestamptz + ((i %% 30) || ' days')::interval "
               "+ (i || ' seconds')::interval "
               "from generate_series(1, 1000) i");
    long long expected = rp_test_sql_int(
        t->db, "select count(*) from conversations where feedback = 1 and status = 'done' and "
               "model_version = 'm-a' and created_at >= '2026-01-10T00:00:00Z' and created_at < "
               "'2026-01-20T00:00:00Z'");
    rp_test_assert(t, expected > 20 && expected < 200);

    rp_test_worker_start(t, env);
    long long eid =
        rp_test_sql_int(t->db, "select ragpool.enqueue_training_export('2026-01-10T00:00:00Z', "
                               "'2026-01-20T00:00:00Z', 'm-a', 'datasets/run-1', 'training')");
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select status in ('done', 'failed') from "
                                       "ragpool.training_exports where id = %lld",
                                       eid));
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from ragpool.training_exports where id = "
                                     "%lld and status = 'done' and rows_total = %lld and "
                                     "rows_done = %lld and jsonb_array_length(outputs) = 4",
                                     eid, expected, expected),
                     1);
    /* training_data: exactly the expected conversations, once each. */
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from training_data where export_id = %lld", eid),
        expected);
    assert_int_equal(
        rp_test_sql_int(t->db,
                        "select count(*) from ((select id from conversations where feedback = 1 "
                        "and status = 'done' and model_version = 'm-a' and created_at >= "
                        "'2026-01-10T00:00:00Z' and created_at < '2026-01-20T00:00:00Z') "
                        "except (select conversation_id from training_data where export_id = %lld)"
                        ") x",
                        eid),
        0);
    assert_int_equal(rp_test_sql_int(t->db,
                                     "select count(*) from training_data t join conversations c "
                                     "on c.id = t.conversation_id where t.export_id = %lld and "
                                     "t.instruction = c.message and t.output = c.response and "
                                     "t.input = '' and t.source = 'conversation'",
                                     eid),
                     expected);

    /* The uploaded bytes, read back from the model server. */
    PGresult *rows = rp_test_sql_query(
        t->db, "select message, response from conversations where feedback = 1 and status = "
               "'done' and model_version = 'm-a' and created_at >= '2026-01-10T00:00:00Z' and "
               "created_at < '2026-01-20T00:00:00Z' order by id");
    static const char *const names[2] = {"datasets/run-1.jsonl", "datasets/run-1.openai.jsonl"};
    static const char *const files[2] = {"datasets_run-1.jsonl", "datasets_run-1.openai.jsonl"};
    for (int f = 0; f < 2; f++) {
        char url[512], path[700];
        long status = 0;
        snprintf(url, sizeof(url), "%s/_admin/storage/training/%s", t->devmodel_url, names[f]);
        char *doc = rp_test_http("GET", url, NULL, &status);
        assert_int_equal(status, 200);
        snprintf(path, sizeof(path), "%s/%s", dir, files[f]);
        char *file = read_file(path);
        assert_non_null(file);
        assert_string_equal(file, doc);
        json_t *lines = lines_of(doc);
        assert_int_equal(json_array_size(lines), (size_t)expected);
        for (int i = 0; i < PQntuples(rows); i++) {
            json_t *l = json_array_get(lines, (size_t)i);
            const char *msg = PQgetvalue(rows, i, 0), *ans = PQgetvalue(rows, i, 1);
            if (f == 0) {
                assert_int_equal(json_object_size(l), 3);
                assert_string_equal(json_string_value(json_object_get(l, "instruction")), msg);
                assert_string_equal(json_string_value(json_object_get(l, "input")), "");
                assert_string_equal(json_string_value(json_object_get(l, "output")), ans);
            } else {
                json_t *m = json_object_get(l, "messages");
                assert_int_equal(json_array_size(m), 2);
                json_t *u = json_array_get(m, 0), *a = json_array_get(m, 1);
                assert_string_equal(json_string_value(json_object_get(u, "role")), "user");
                assert_string_equal(json_string_value(json_object_get(u, "content")), msg);
                assert_string_equal(json_string_value(json_object_get(a, "role")), "assistant");
                assert_string_equal(json_string_value(json_object_get(a, "content")), ans);
            }
        }
        json_decref(lines);
        free(doc);
        free(file);
    }
    PQclear(rows);
    rp_test_ctx_pass(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_feedback_owner_only, teardown),
        cmocka_unit_test_teardown(test_export_selects_exactly_the_right_ones, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
