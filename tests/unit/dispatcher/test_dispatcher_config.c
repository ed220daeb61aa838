/*
 * test_dispatcher_config.c: dispatcher/dispatcher_config.c -- defaults, and that every bad value
 * or missing combination stops start-up with a message naming the
 * variable; which Redis the rate limiter uses.
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

#include "dispatcher_config.h"

/* A fake environment: NULL-terminated "NAME=value" list. */
static const char *fake_getenv(const char *name, void *data)
{
    const char *const *env = data;
    size_t n = strlen(name);
    for (size_t i = 0; env[i] != NULL; i++)
        if (strncmp(env[i], name, n) == 0 && env[i][n] == '=')
            return env[i] + n + 1;
    return NULL;
}

static int load(const char *const *env, rp_dispatcher_cfg_t *cfg, rp_err_t *err)
{
    return rp_dispatcher_cfg_load(cfg, fake_getenv, (void *)env, err);
}

static void test_defaults(void **state)
{
    (void)state;
    const char *env[] = {"DATABASE_URL=postgresql://x/db", "SUPABASE_JWT_SECRET=s", NULL};
    rp_dispatcher_cfg_t cfg;
    rp_err_t err = {0};
    assert_int_equal(load(env, &cfg, &err), 0);
    assert_string_equal(cfg.host, "127.0.0.1");
    assert_string_equal(cfg.queue, "postgres");
    assert_string_equal(cfg.jwt_audience, "authenticated");
    assert_string_equal(cfg.jwt_roles, "authenticated");
    assert_string_equal(cfg.cors_origins, "*");
    assert_null(rp_dispatcher_cfg_ratelimit_redis(&cfg));
    rp_dispatcher_cfg_free(&cfg);
}

static void expect_bad(const char *const *env, const char *name);

/* Automatic threads: one for the Postgres queue (one commit group), one
 * per CPU for Redis; a number given is taken as it is. */
static void test_threads(void **state)
{
    (void)state;
    const char *pg[] = {"DATABASE_URL=postgresql://x/db", "SUPABASE_JWT_SECRET=s", NULL};
    const char *redis[] = {"DATABASE_URL=postgresql://x/db", "SUPABASE_JWT_SECRET=s",
                           "RAGPOOL_QUEUE=redis", "REDIS_URL=redis://127.0.0.1:6379", NULL};
    const char *three[] = {"DATABASE_URL=postgresql://x/db", "SUPABASE_JWT_SECRET=s",
                           "RAGPOOL_DISPATCHER_THREADS=3", NULL};
    rp_dispatcher_cfg_t cfg;
    rp_err_t err = {0};
    assert_int_equal(load(pg, &cfg, &err), 0);
    assert_int_equal(rp_dispatcher_threads(&cfg), 1);
    rp_dispatcher_cfg_free(&cfg);
    assert_int_equal(load(redis, &cfg, &err), 0);
    assert_int_equal(rp_dispatcher_threads(&cfg), (int)uv_available_parallelism());
    rp_dispatcher_cfg_free(&cfg);
    assert_int_equal(load(three, &cfg, &err), 0);
    assert_int_equal(rp_dispatcher_threads(&cfg), 3);
    rp_dispatcher_cfg_free(&cfg);
    const char *bad[] = {"DATABASE_URL=postgresql://x/db", "SUPABASE_JWT_SECRET=s",
                         "RAGPOOL_DISPATCHER_THREADS=-1", NULL};
    expect_bad(bad, "RAGPOOL_DISPATCHER_THREADS");
}

static void expect_bad(const char *const *env, const char *name)
{
    rp_dispatcher_cfg_t cfg;
    rp_err_t err = {0};
    int rc = load(env, &cfg, &err);
    if (rc != RP_EINVAL || strstr(err.msg, name) == NULL)
        fail_msg("expected an error naming %s, got %d \"%s\"", name, rc, err.msg);
    rp_dispatcher_cfg_free(&cfg);
}

static void test_bad_values_name_the_variable(void **state)
{
    (void)state;
#define DB "DATABASE_URL=postgresql://x/db"
#define SEC "SUPABASE_JWT_SECRET=s"
    expect_bad((const char *[]){SEC, NULL}, "DATABASE_URL");
    expect_bad((const char *[]){DB, NULL}, "SUPABASE_JWT_SECRET");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_QUEUE=kafka", NULL}, "RAGPOOL_QUEUE");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_QUEUE=redis", NULL}, "REDIS_URL");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_DISPATCHER_PORT=http", NULL},
               "RAGPOOL_DISPATCHER_PORT");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_DISPATCHER_PORT=70000", NULL},
               "RAGPOOL_DISPATCHER_PORT");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_RATE_LIMIT_RPS=fast", NULL},
               "RAGPOOL_RATE_LIMIT_RPS");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_RATE_LIMIT_BURST=0", NULL},
               "RAGPOOL_RATE_LIMIT_BURST");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_LOG_LEVEL=chatty", NULL}, "RAGPOOL_LOG_LEVEL");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_MAX_BODY_BYTES=10", NULL},
               "RAGPOOL_MAX_BODY_BYTES");
    expect_bad((const char *[]){DB, SEC, "RAGPOOL_RATE_LIMIT_REDIS=localhost", NULL},
               "RAGPOOL_RATE_LIMIT_REDIS");
}

static void test_rate_limit_redis_choice(void **state)
{
    (void)state;
    rp_dispatcher_cfg_t cfg;
    rp_err_t err;
    const char *a[] = {DB, SEC, "REDIS_URL=redis://127.0.0.1:1/0", NULL};
    assert_int_equal(load(a, &cfg, &err), 0);
    assert_string_equal(rp_dispatcher_cfg_ratelimit_redis(&cfg), "redis://127.0.0.1:1/0");
    rp_dispatcher_cfg_free(&cfg);
    const char *b[] = {DB, SEC, "REDIS_URL=redis://127.0.0.1:1/0", "RAGPOOL_RATE_LIMIT_REDIS=off",
                       NULL};
    assert_int_equal(load(b, &cfg, &err), 0);
    assert_null(rp_dispatcher_cfg_ratelimit_redis(&cfg));
    rp_dispatcher_cfg_free(&cfg);
    const char *c[] = {DB, "RAGPOOL_JWKS=/tmp/jwks.json",
                       "RAGPOOL_RATE_LIMIT_REDIS=redis://127.0.0.1:2/1", NULL};
    assert_int_equal(load(c, &cfg, &err), 0);
    assert_string_equal(rp_dispatcher_cfg_ratelimit_redis(&cfg), "redis://127.0.0.1:2/1");
    rp_dispatcher_cfg_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_bad_values_name_the_variable),
        cmocka_unit_test(test_rate_limit_redis_choice),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
