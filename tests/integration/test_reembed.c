/*
 * test_reembed.c: batch re-embedding and automatic embeddings against real
 * servers (the test's own database and development model server).
 *
 *  - 10,000 rows across 2 worker processes (`ragpool reembed --wait`):
 *    every stored embedding equals the development model's vector for its
 *    row's text (devmodel/embed.h), every row committed exactly once, and
 *    both workers did chunks; a second run skips every row (content hash);
 *  - kill -9 of a worker in the middle of a batch: a second worker finishes
 *    it; done + skipped + failed = total, every row embedded, and no
 *    committed row embedded again (embed_count = 1 everywhere);
 *  - a row the model refuses ([[fault:embed:400]]) is recorded as failed
 *    with the model's reason while every other row is embedded, and
 *    `--wait` exits 1;
 *  - a 429 storm (a third of all requests answered 429 with Retry-After:
 *    1): the worker pauses and retries, the batch completes with no chunk
 *    failed or dead, and the number of requests stays bounded;
 *  - embed_on_change: an INSERT of 300 rows is one job (coalesced); the
 *    rows get their vectors; an UPDATE of the text clears the stale
 *    embedding at once and re-embeds those rows only; an UPDATE of another
 *    column enqueues nothing and embeds nothing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "embed.h"
#include "test_fixture.h"

#define DIMS 64

static int teardown(void **state)
{
    rp_test_ctx_free(*state);
    *state = NULL;
    return 0;
}

/* A knowledge-like table of n rows with varied words. */
static void make_table(rp_test_ctx_t *t, const char *name, int n)
{
    rp_test_sql_exec(
        t->db,
        "create table %s (id bigint primary key, body text, tag text, "
        "embedding real[]);"
        "insert into %s select i, 'document ' || i || ' about '"
        " || (array['ton','jettons','slippage','staking','wallets','bridges'])[1 + i %% 6]"
        " || ' and ' || md5(i::text) from generate_series(1, %d) i",
        name, name, n);
}

/* Every row of table has the development model's vector for its text.
 * Returns the number of rows checked. */
static long check_vectors(rp_test_ctx_t *t, const char *table, const char *text_col)
{
    PGresult *res = rp_test_sql_query(
        t->db, "select id, %s, array_to_string(embedding, ',') from %s where embedding is not null",
        text_col, table);
    float want[DIMS];
    long bad = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *text = PQgetvalue(res, r, 1);
        rp_devmodel_embed(text, strlen(text), DIMS, want);
        const char *p = PQgetvalue(res, r, 2);
        int d = 0;
        while (*p != '\0' && d < DIMS) {
            char *end = NULL;
            double v = strtod(p, &end);
            if (fabs(v - want[d]) > 1e-5)
                break;
            d++;
            p = *end == ',' ? end + 1 : end;
        }
        if (d != DIMS || *p != '\0') {
            if (bad++ < 3)
                fprintf(stderr, "row %s: stored vector differs from the model's at %d\n",
                        PQgetvalue(res, r, 0), d);
        }
    }
    long n = PQntuples(res);
    PQclear(res);
    rp_test_assert(t, bad == 0);
    return n;
}

/* Runs `ragpool reembed ... --wait` on table; returns its exit status and
 * its output in *out (owned). */
static int run_reembed(rp_test_ctx_t *t, const char *table, const char *chunk_rows, char **out)
{
    char *db_env = NULL;
    if (asprintf(&db_env, "DATABASE_URL=%s", t->db_url) < 0)
        fail_msg("out of memory");
    const char *env[] = {db_env, NULL};
    const char *argv[] = {rp_test_bin("RP_CLI_BIN"),
                          "reembed",
                          "--table",
                          table,
                          "--id-column",
                          "id",
                          "--text-column",
                          "body",
                          "--embedding-column",
                          "embedding",
                          "--dimensions",
                          "64",
                          "--chunk-rows",
                          chunk_rows,
                          "--wait",
                          "--timeout",
                          "240",
                          NULL};
    int st = rp_test_run("cli-reembed", argv, env, 300000, out);
    free(db_env);
    return st;
}

static void test_two_workers_10k(void **state)
{
    static const char *const env[] = {"RAGPOOL_CLAIM_BATCH=2", NULL};
    rp_test_ctx_t *t = rp_test_ctx_new("reembed10k", NULL);
    *state = t;
    make_table(t, "kb", 10000);
    rp_test_proc_t *w1 = rp_test_worker_start(t, env);
    rp_test_proc_t *w2 = rp_test_worker_start(t, env);
    char *out = NULL;
    int st = run_reembed(t, "kb", "500", &out);
    if (st != 0)
        fprintf(stderr, "%s\n", out);
    rp_test_assert(t, st == 0);
    rp_test_assert(t, strstr(out, "10000 embedded, 0 skipped") != NULL);
    free(out);

    assert_int_equal(check_vectors(t, "kb", "body"), 10000);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from kb where embedding is null"), 0);
    /* Each row committed once. */
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.embedding_hashes "
                                            "where embed_count = 1"),
                     10000);
    assert_int_equal(
        rp_test_sql_int(t->db, "select count(*) from ragpool.reembed_progress() where state = "
                               "'done' and done = 10000 and total = 10000 and failed = 0"),
        1);
    /* Both processes took part. */
    rp_test_assert(t, rp_test_proc_log_count(w1, "\"reembed.chunk\"") > 0);
    rp_test_assert(t, rp_test_proc_log_count(w2, "\"reembed.chunk\"") > 0);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs"), 0);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs"), 0);

    /* Nothing changed: a second run embeds nothing. */
    json_t *before = rp_test_devmodel_stats(t);
    st = run_reembed(t, "kb", "1000", &out);
    rp_test_assert(t, st == 0);
    rp_test_assert(t, strstr(out, "0 embedded, 10000 skipped") != NULL);
    free(out);
    json_t *after = rp_test_devmodel_stats(t);
    assert_true(rp_test_json_number(after, "requests.embeddings") ==
                rp_test_json_number(before, "requests.embeddings"));
    json_decref(before);
    json_decref(after);
    rp_test_ctx_pass(t);
}

static void test_kill9_resumes(void **state)
{
    /* 200 ms a request and small chunks: the batch takes a few seconds,
     * so the kill lands in the middle of it. */
    static const char *const dm[] = {"--latency-ms", "200", NULL};
    static const char *const env[] = {"RAGPOOL_LEASE_MS=3000", "RAGPOOL_REEMBED_BATCH_INPUTS=50",
                                      "RAGPOOL_REEMBED_INFLIGHT=4", "RAGPOOL_REEMBED_CHUNKS=2",
                                      NULL};
    rp_test_ctx_t *t = rp_test_ctx_new("reembedkill", dm);
    *state = t;
    make_table(t, "kb", 4000);
    rp_test_proc_t *w1 = rp_test_worker_start(t, env);
    rp_test_sql_exec(t->db, "select ragpool.reembed_start('kb', 'id', array['body'], "
                            "'embedding', null, null, 64, 200)");
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select chunks_done >= 3 from ragpool.reembed_batches"));
    rp_test_proc_kill(w1);
    assert_int_equal(rp_test_proc_wait(w1, 5000), 128 + SIGKILL);
    long long done_at_kill =
        rp_test_sql_int(t->db, "select chunks_done from ragpool.reembed_batches");
    long long total_chunks =
        rp_test_sql_int(t->db, "select chunks_total from ragpool.reembed_batches");
    assert_true(done_at_kill < total_chunks);

    rp_test_worker_start(t, env);
    rp_test_assert(
        t, rp_test_sql_wait(t->db, 120000, "select state = 'done' from ragpool.reembed_batches"));
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.reembed_progress() "
                                            "where done + skipped + failed = total "
                                            "and total = 4000 and failed = 0"),
                     1);
    assert_int_equal(check_vectors(t, "kb", "body"), 4000);
    /* No committed row was embedded again. */
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.embedding_hashes "
                                            "where embed_count = 1"),
                     4000);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.reembed_chunks "
                                            "where rows_done + rows_skipped + rows_failed "
                                            "<> planned_rows"),
                     0);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs"), 0);
    rp_test_ctx_pass(t);
}

static void test_refused_row(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("reembedrefused", NULL);
    *state = t;
    make_table(t, "kb", 1000);
    rp_test_sql_exec(t->db, "update kb set body = 'a text the model refuses [[fault:embed:400]]' "
                            "where id = 500");
    rp_test_worker_start(t, NULL);
    char *out = NULL;
    int st = run_reembed(t, "kb", "1000", &out);
    rp_test_assert(t, st == 1);
    rp_test_assert(t,
                   strstr(out, "999 embedded, 0 skipped (unchanged or empty), 1 failed") != NULL);
    free(out);
    char *why = rp_test_sql_text(t->db, "select reason from ragpool.reembed_failures "
                                        "where row_id = '500'");
    rp_test_assert(t, why != NULL && strstr(why, "400") != NULL);
    free(why);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from kb where embedding is null"), 1);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from kb where id = 500 and "
                                            "embedding is null"),
                     1);
    assert_int_equal(check_vectors(t, "kb", "body"), 999);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs"), 0);
    rp_test_ctx_pass(t);
}

static void test_429_storm(void **state)
{
    static const char *const dm[] = {
        "--fault-rate", "0.3", "--fault-kind", "429", "--seed", "7", NULL};
    static const char *const env[] = {"RAGPOOL_REEMBED_BATCH_INPUTS=50", NULL};
    rp_test_ctx_t *t = rp_test_ctx_new("reembed429", dm);
    *state = t;
    make_table(t, "kb", 2000);
    rp_test_proc_t *w = rp_test_worker_start(t, env);
    char *out = NULL;
    int st = run_reembed(t, "kb", "250", &out);
    if (st != 0)
        fprintf(stderr, "%s\n", out);
    rp_test_assert(t, st == 0);
    free(out);
    assert_int_equal(check_vectors(t, "kb", "body"), 2000);
    /* 40 requests were needed; at a 30% fault rate about 17 more are
     * expected.  A worker that did not back off would not stay near it. */
    json_t *stats = rp_test_devmodel_stats(t);
    double reqs = rp_test_json_number(stats, "requests.embeddings");
    double f429 = rp_test_json_number(stats, "faults.429");
    json_decref(stats);
    fprintf(stderr, "429 storm: %.0f embedding requests, %.0f answered 429\n", reqs, f429);
    rp_test_assert(t, f429 >= 1);
    rp_test_assert(t, reqs <= 40 + 3 * f429 && reqs <= 200);
    rp_test_assert(t, rp_test_proc_log_count(w, "reembed.throttled") >= 1);
    /* Every chunk succeeded on its first attempt: nothing failed or dead. */
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs"), 0);
    assert_int_equal(rp_test_proc_log_count(w, "\"job.retry\""), 0);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.embedding_hashes "
                                            "where embed_count = 1"),
                     2000);
    rp_test_ctx_pass(t);
}

static void test_triggers(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("embedtriggers", NULL);
    *state = t;
    rp_test_sql_exec(t->db, "create table notes (id bigint generated always as identity primary "
                            "key, body text, tag text, embedding real[]);"
                            "select ragpool.embed_on_change('notes', 'id', array['body'], "
                            "'embedding', dimensions => 64)");
    /* One statement, 300 rows: one job, not 300. */
    rp_test_sql_exec(t->db, "insert into notes (body) select 'note ' || i || ' on '"
                            " || (array['ton','staking','bridges'])[1 + i %% 3] "
                            "from generate_series(1, 300) i");
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs "
                                            "where kind = 'embed_chunk'"),
                     1);
    rp_test_worker_start(t, NULL);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 300 from notes "
                                       "where embedding is not null"));
    assert_int_equal(check_vectors(t, "notes", "body"), 300);

    /* Update of the text: the stale vector is cleared in the same
     * statement, and only those rows are embedded again. */
    PGresult *res = rp_test_sql_query(t->db, "begin;"
                                             "update notes set body = body || ' changed' "
                                             "where id <= 10;");
    PQclear(res);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from notes where embedding is null"),
                     10);
    rp_test_sql_exec(t->db, "commit");
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 10 from ragpool.embedding_hashes "
                                       "where embed_count = 2"));
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 0 from notes where embedding is null"));
    assert_int_equal(check_vectors(t, "notes", "body"), 300);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.embedding_hashes "
                                            "where embed_count = 2"),
                     10);

    /* Update of another column: no job, no request, no new embedding. */
    rp_test_assert(
        t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS, "select count(*) = 0 from ragpool.jobs"));
    json_t *before = rp_test_devmodel_stats(t);
    rp_test_sql_exec(t->db, "update notes set tag = 'reviewed'");
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.jobs"), 0);
    rp_test_sleep_ms(1000);
    json_t *after = rp_test_devmodel_stats(t);
    assert_true(rp_test_json_number(after, "requests.embeddings") ==
                rp_test_json_number(before, "requests.embeddings"));
    json_decref(before);
    json_decref(after);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from notes where embedding is null"),
                     0);
    assert_int_equal(
        rp_test_sql_int(t->db, "select sum(embed_count) from ragpool.embedding_hashes"), 310);
    assert_int_equal(rp_test_sql_int(t->db, "select count(*) from ragpool.dead_jobs"), 0);
    rp_test_ctx_pass(t);
}

int main(void)
{
    rp_test_require_stack("test_reembed");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_two_workers_10k, teardown),
        cmocka_unit_test_teardown(test_kill9_resumes, teardown),
        cmocka_unit_test_teardown(test_refused_row, teardown),
        cmocka_unit_test_teardown(test_429_storm, teardown),
        cmocka_unit_test_teardown(test_triggers, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
