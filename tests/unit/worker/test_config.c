/* Tests worker/config.c: the worker's settings, cross-checks and their messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "config.h"

static const char *fake_getenv(const char *name, void *data)
{
    const char *const *env = data;
    size_t n = strlen(name);
    for (; *env != NULL; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

static void defaults(void **state)
{
    const char *env[] = {"DATABASE_URL=postgresql://localhost/db",
                         "OPENAI_BASE_URL=http://127.0.0.1:8089/v1/", NULL};
    rp_worker_cfg_t c;
    rp_err_t err;
    assert_int_equal(rp_worker_cfg_load(&c, fake_getenv, (void *)env, &err), 0);
    assert_string_equal(c.openai_base_url, "http://127.0.0.1:8089/v1"); /* slash trimmed */
    assert_string_equal(c.listen_database_url, c.database_url);
    assert_string_equal(c.match_function, "match_finance_knowledge");
    assert_int_equal(c.max_inflight, 256);
    assert_true(c.match_threshold == 0.7);
    assert_non_null(strchr(c.worker_id, ':'));
    rp_worker_cfg_free(&c);
}

static void bad_settings_name_the_variable(void **state)
{
    static const char *const cases[][2] = {
        {"RAGPOOL_MAX_INFLIGHT=abc", "RAGPOOL_MAX_INFLIGHT"},
        {"RAGPOOL_MAX_INFLIGHT=0", "RAGPOOL_MAX_INFLIGHT"},
        {"RAGPOOL_MATCH_THRESHOLD=1.5", "RAGPOOL_MATCH_THRESHOLD"},
        {"RAGPOOL_MATCH_FUNCTION=f(); drop table x", "RAGPOOL_MATCH_FUNCTION"},
        {"RAGPOOL_LOG_LEVEL=loud", "RAGPOOL_LOG_LEVEL"},
        {"OPENAI_BASE_URL=ftp://x", "OPENAI_BASE_URL"},
        {"RAGPOOL_EMBED_ENCODING=hex", "RAGPOOL_EMBED_ENCODING"},
        {"RAGPOOL_BACKOFF_MAX_MS=10", "RAGPOOL_BACKOFF_MAX_MS"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *env[] = {"DATABASE_URL=postgresql://x/y", cases[i][0], NULL};
        rp_worker_cfg_t c;
        rp_err_t err;
        assert_int_equal(rp_worker_cfg_load(&c, fake_getenv, (void *)env, &err), RP_EINVAL);
        if (strstr(err.msg, cases[i][1]) == NULL)
            fail_msg("case %zu: '%s'", i, err.msg);
        rp_worker_cfg_free(&c);
    }
    const char *env[] = {NULL};
    rp_worker_cfg_t c;
    rp_err_t err;
    assert_int_equal(rp_worker_cfg_load(&c, fake_getenv, (void *)env, &err), RP_EINVAL);
    assert_non_null(strstr(err.msg, "DATABASE_URL is required"));
    rp_worker_cfg_free(&c);
}

static void sql_names(void **state)
{
    assert_true(rp_sql_name_valid("match_finance_knowledge"));
    assert_true(rp_sql_name_valid("public.match_docs2"));
    assert_false(rp_sql_name_valid("a.b.c"));
    assert_false(rp_sql_name_valid("1abc"));
    assert_false(rp_sql_name_valid("x;y"));
    assert_false(rp_sql_name_valid(""));
    assert_false(rp_sql_name_valid("x."));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults),
        cmocka_unit_test(bad_settings_name_the_variable),
        cmocka_unit_test(sql_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
