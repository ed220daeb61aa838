/*
 * test_harness.c: the integration-test harness (tests/support) itself.
 *
 * The other integration tests trust it to run programs with the right
 * environment, report how they ended, find lines in their logs, and kill
 * everything they started; these checks prove that, with plain shell
 * commands, so a harness fault is never mistaken for a ragpool fault.
 * The database helpers are checked too when the stack is available.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_fixture.h"

static void test_env_overrides_and_log(void **state)
{
    const char *argv[] = {"sh", "-c", "echo \"foo=$RPT_FOO home=${HOME:-none}\"; echo oops >&2",
                          NULL};
    const char *env[] = {"RPT_FOO=bar", "HOME", NULL};
    char *out = NULL;
    (void)state;
    assert_int_equal(rp_test_run("env", argv, env, 5000, &out), 0);
    assert_non_null(strstr(out, "foo=bar home=none"));
    assert_non_null(strstr(out, "oops"));
    free(out);
}

static void test_exit_statuses(void **state)
{
    const char *exit3[] = {"sh", "-c", "exit 3", NULL};
    const char *nothere[] = {"/nonexistent/program", NULL};
    const char *sleeper[] = {"sh", "-c", "echo started; exec sleep 30", NULL};
    rp_test_proc_t *p;
    (void)state;
    assert_int_equal(rp_test_run("exit3", exit3, NULL, 5000, NULL), 3);
    assert_int_equal(rp_test_run("nothere", nothere, NULL, 5000, NULL), 127);

    p = rp_test_proc_start("sleeper", sleeper, NULL);
    assert_int_equal(rp_test_proc_wait_log(p, "started", 5000), 0);
    assert_int_equal(rp_test_proc_wait(p, 50), -1);
    assert_true(rp_test_proc_running(p));
    assert_int_equal(rp_test_proc_signal(p, SIGTERM), 0);
    assert_int_equal(rp_test_proc_wait(p, 5000), 128 + SIGTERM);
    /* Reaped: the status stays, and signalling it is refused. */
    assert_int_equal(rp_test_proc_wait(p, 0), 128 + SIGTERM);
    assert_int_equal(rp_test_proc_signal(p, SIGTERM), -1);
    assert_int_equal(rp_test_proc_wait_log(p, "never written", 100), -1);
    rp_test_proc_free(p);
}

static void test_kill_reaches_the_group(void **state)
{
    char pidfile[512];
    char cmd[700];
    const char *argv[] = {"sh", "-c", cmd, NULL};
    rp_test_proc_t *p;
    FILE *f;
    int child = 0;
    (void)state;
    snprintf(pidfile, sizeof pidfile, "%s/grandchild.pid", rp_test_tmpdir());
    snprintf(cmd, sizeof cmd, "sleep 30 & echo $! > %s; echo ready; wait", pidfile);
    p = rp_test_proc_start("group", argv, NULL);
    assert_int_equal(rp_test_proc_wait_log(p, "ready", 5000), 0);
    f = fopen(pidfile, "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%d", &child), 1);
    fclose(f);
    assert_int_equal(kill(child, 0), 0);
    rp_test_proc_kill(p);
    assert_int_equal(rp_test_proc_wait(p, 0), 128 + SIGKILL);
    /* The grandchild went with the group (allow the kernel a moment). */
    {
        long long deadline = rp_test_now_ms() + 5000;
        while (kill(child, 0) == 0 && rp_test_now_ms() < deadline) {
            rp_test_sleep_ms(10);
        }
    }
    assert_int_not_equal(kill(child, 0), 0);
    rp_test_proc_free(p);
}

static void test_sql_helpers(void **state)
{
    char *url, *err = NULL, *text;
    PGconn *c;
    (void)state;
    if (getenv("RP_TEST_PG_URL") == NULL) {
        printf("SKIP test_sql_helpers: RP_TEST_PG_URL not set (run through ./dev test)\n");
        skip();
    }
    url = rp_test_db_create("harness");
    c = rp_test_pg_connect(url);
    rp_test_sql_exec(c, "create table t (x int); insert into t select generate_series(1, %d)", 10);
    assert_int_equal(rp_test_sql_int(c, "select sum(x) from t"), 55);
    text = rp_test_sql_text(c, "select 'it''s'");
    assert_string_equal(text, "it's");
    free(text);
    assert_null(rp_test_sql_text(c, "select null"));
    text = rp_test_sql_literal(c, "it's");
    assert_string_equal(text, "'it''s'");
    free(text);
    assert_int_equal(rp_test_sql_wait(c, 200, "select count(*) = 11 from t"), 0);
    assert_int_equal(rp_test_sql_wait(c, 200, "select count(*) = 10 from t"), 1);
    assert_int_equal(rp_test_sql_try(c, &err, "select no_such_column from t"), -1);
    assert_non_null(strstr(err, "no_such_column"));
    free(err);
    PQfinish(c);
    rp_test_db_drop(url);
    free(url);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_overrides_and_log),
        cmocka_unit_test(test_exit_statuses),
        cmocka_unit_test(test_kill_reaches_the_group),
        cmocka_unit_test(test_sql_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
