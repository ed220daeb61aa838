/*
 * test_worker_config.c: how ragpool-worker treats its configuration, as an
 * operator sees it.
 *
 *  - a bad value stops start-up with exit status 1 and a message naming the
 *    variable (before any connection is tried);
 *  - `--help` prints every variable of the documented table
 *    (docs/CONTRACTS.md, "Worker environment") and exits 0;
 *  - an unknown option is a usage error (exit status 2).
 *
 * These need no servers, so they run even outside ./dev test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "test_fixture.h"

/* Nothing listens there: a worker that got past its configuration would
 * fail differently (and later). */
#define NO_DB "DATABASE_URL=postgresql://postgres@127.0.0.1:9/none?connect_timeout=1"

static void expect_bad_setting(const char *assignment, const char *name)
{
    const char *argv[] = {rp_test_bin("RP_WORKER_BIN"), NULL};
    const char *env[] = {NO_DB, assignment, NULL};
    char *out = NULL;
    int st = rp_test_run("worker-badcfg", argv, env, 20000, &out);
    if (st != 1 || strstr(out, name) == NULL) {
        fprintf(stderr, "%s: exit status %d, output:\n%s\n", assignment, st, out);
        free(out);
        fail_msg("a bad %s must stop start-up with status 1 and name the variable", name);
    }
    free(out);
}

static void test_bad_values_name_the_setting(void **state)
{
    (void)state;
    expect_bad_setting("RAGPOOL_MAX_INFLIGHT=abc", "RAGPOOL_MAX_INFLIGHT");
    expect_bad_setting("RAGPOOL_MAX_INFLIGHT=-5", "RAGPOOL_MAX_INFLIGHT");
    expect_bad_setting("RAGPOOL_LEASE_MS=soon", "RAGPOOL_LEASE_MS");
    expect_bad_setting("RAGPOOL_MATCH_THRESHOLD=high", "RAGPOOL_MATCH_THRESHOLD");
    expect_bad_setting("RAGPOOL_LOG_LEVEL=chatty", "RAGPOOL_LOG_LEVEL");
}

static void test_missing_database_url(void **state)
{
    const char *argv[] = {rp_test_bin("RP_WORKER_BIN"), NULL};
    const char *env[] = {"DATABASE_URL", NULL};
    char *out = NULL;
    int st;
    (void)state;
    st = rp_test_run("worker-nodb", argv, env, 20000, &out);
    if (st != 1 || strstr(out, "DATABASE_URL") == NULL) {
        fprintf(stderr, "exit status %d, output:\n%s\n", st, out);
        free(out);
        fail_msg("without DATABASE_URL the worker must exit 1 naming it");
    }
    free(out);
}

static void test_help_lists_every_variable(void **state)
{
    /* Every entry of the worker's configuration table: the table is what
     * the worker parses, so --help and the table cannot drift apart.
     * (docs/CONFIGURATION.md is checked against the same table by
     * tests/unit/worker/test_config_docs.c.) */
    const char *argv[] = {rp_test_bin("RP_WORKER_BIN"), "--help", NULL};
    char *out = NULL;
    int st, i, missing = 0;
    (void)state;
    st = rp_test_run("worker-help", argv, NULL, 20000, &out);
    for (i = 0; (size_t)i < rp_worker_cfg_ndefs; i++) {
        char needle[128];
        snprintf(needle, sizeof(needle), "  %s (", rp_worker_cfg_defs[i].name);
        if (strstr(out, needle) == NULL) {
            fprintf(stderr, "--help does not mention %s\n", rp_worker_cfg_defs[i].name);
            missing++;
        }
    }
    if (st != 0 || missing > 0) {
        fprintf(stderr, "ragpool-worker --help: exit status %d, output:\n%s\n", st, out);
        free(out);
        fail_msg("--help must exit 0 and list every variable (%d missing)", missing);
    }
    free(out);
}

static void test_unknown_option_is_usage_error(void **state)
{
    const char *argv[] = {rp_test_bin("RP_WORKER_BIN"), "--no-such-option", NULL};
    const char *env[] = {NO_DB, NULL};
    char *out = NULL;
    int st;
    (void)state;
    st = rp_test_run("worker-usage", argv, env, 20000, &out);
    if (st != 2) {
        fprintf(stderr, "exit status %d, output:\n%s\n", st, out);
        free(out);
        fail_msg("an unknown option must exit 2");
    }
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_values_name_the_setting),
        cmocka_unit_test(test_missing_database_url),
        cmocka_unit_test(test_help_lists_every_variable),
        cmocka_unit_test(test_unknown_option_is_usage_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
