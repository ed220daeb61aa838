/* Tests common/cfg.c: defaults, strict numbers, ranges, required and secret settings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "cfg.h"

typedef struct conf {
    char *url;
    char *key;
    long n;
    double ratio;
    int flag;
} conf_t;

static const rp_cfg_def_t defs[] = {
    {"T_URL", RP_CFG_STR, offsetof(conf_t, url), NULL, 1, 0, RP_CFG_REQUIRED, "the url"},
    {"T_KEY", RP_CFG_STR, offsetof(conf_t, key), NULL, 1, 0, RP_CFG_SECRET, "a secret"},
    {"T_N", RP_CFG_INT, offsetof(conf_t, n), "42", 1, 100, 0, "a number"},
    {"T_RATIO", RP_CFG_DOUBLE, offsetof(conf_t, ratio), "0.5", 0, 1, 0, "a ratio"},
    {"T_FLAG", RP_CFG_BOOL, offsetof(conf_t, flag), "false", 1, 0, 0, "a flag"},
};
#define NDEFS (sizeof(defs) / sizeof(defs[0]))

/* A fake environment: "NAME=value" strings, NULL-terminated. */
static const char *fake_getenv(const char *name, void *data)
{
    const char *const *env = data;
    size_t n = strlen(name);
    for (; *env != NULL; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

static int load(const char *const *env, conf_t *c, rp_err_t *err)
{
    memset(c, 0, sizeof(*c));
    return rp_cfg_load(defs, NDEFS, c, fake_getenv, (void *)env, err);
}

static void defaults_apply(void **state)
{
    const char *env[] = {"T_URL=postgres://x", NULL};
    conf_t c;
    rp_err_t err;
    assert_int_equal(load(env, &c, &err), 0);
    assert_string_equal(c.url, "postgres://x");
    assert_null(c.key);
    assert_int_equal(c.n, 42);
    assert_true(c.ratio == 0.5);
    assert_int_equal(c.flag, 0);
    rp_cfg_free(defs, NDEFS, &c);
}

static void values_parse(void **state)
{
    const char *env[] = {"T_URL=u", "T_N=7", "T_RATIO=1", "T_FLAG=yes", "T_KEY=s3cret", NULL};
    conf_t c;
    rp_err_t err;
    assert_int_equal(load(env, &c, &err), 0);
    assert_int_equal(c.n, 7);
    assert_true(c.ratio == 1.0);
    assert_int_equal(c.flag, 1);
    char *dump = rp_cfg_dump_json(defs, NDEFS, &c);
    assert_non_null(dump);
    assert_null(strstr(dump, "s3cret"));
    assert_non_null(strstr(dump, "\"T_KEY\":\"(set)\""));
    free(dump);
    rp_cfg_free(defs, NDEFS, &c);
}

static void bad_values_name_the_variable(void **state)
{
    static const char *const cases[][3] = {
        {"T_URL=u", "T_N=abc", "T_N=abc is not a whole number"},
        {"T_URL=u", "T_N=10ms", "T_N=10ms is not a whole number"},
        {"T_URL=u", "T_N=1000", "T_N=1000 is out of range"},
        {"T_URL=u", "T_RATIO=2", "T_RATIO=2 is out of range"},
        {"T_URL=u", "T_RATIO=nan", "T_RATIO=nan is not a number"},
        {"T_URL=u", "T_FLAG=maybe", "T_FLAG=maybe is not a boolean"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *env[] = {cases[i][0], cases[i][1], NULL};
        conf_t c;
        rp_err_t err;
        assert_int_equal(load(env, &c, &err), RP_EINVAL);
        assert_non_null(strstr(err.msg, cases[i][2]));
        rp_cfg_free(defs, NDEFS, &c);
    }
}

static void required_missing(void **state)
{
    const char *env[] = {NULL};
    conf_t c;
    rp_err_t err;
    assert_int_equal(load(env, &c, &err), RP_EINVAL);
    assert_non_null(strstr(err.msg, "T_URL is required"));
    rp_cfg_free(defs, NDEFS, &c);
}

static void empty_number_means_default(void **state)
{
    const char *env[] = {"T_URL=u", "T_N=", NULL};
    conf_t c;
    rp_err_t err;
    assert_int_equal(load(env, &c, &err), 0);
    assert_int_equal(c.n, 42);
    rp_cfg_free(defs, NDEFS, &c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_apply),
        cmocka_unit_test(values_parse),
        cmocka_unit_test(bad_values_name_the_variable),
        cmocka_unit_test(required_missing),
        cmocka_unit_test(empty_number_means_default),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
