/* Tests worker/provider*.c: the Replicate wire format and the chain's
 * circuit breakers (no I/O: providers are made but never called). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"

static void replicate_parse(void **state)
{
    (void)state;
    rp_prediction_t p;
    rp_err_t err;
    const char *ok =
        "{\"id\":\"abc_1-2\",\"status\":\"succeeded\",\"output\":[\"Hello \",\"world\"]}";
    assert_int_equal(rp_replicate_parse(ok, strlen(ok), &p, &err), 0);
    assert_int_equal(p.status, RP_PREDICTION_SUCCEEDED);
    assert_string_equal(p.output, "Hello world");
    assert_string_equal(p.id, "abc_1-2");
    rp_prediction_free(&p);

    const char *str = "{\"id\":\"x\",\"status\":\"succeeded\",\"output\":\"whole\"}";
    assert_int_equal(rp_replicate_parse(str, strlen(str), &p, &err), 0);
    assert_string_equal(p.output, "whole");
    rp_prediction_free(&p);

    const char *running = "{\"id\":\"x\",\"status\":\"processing\",\"output\":null}";
    assert_int_equal(rp_replicate_parse(running, strlen(running), &p, &err), 0);
    assert_int_equal(p.status, RP_PREDICTION_PROCESSING);
    assert_null(p.output);

    const char *failed = "{\"id\":\"x\",\"status\":\"failed\",\"error\":\"CUDA out of memory\"}";
    assert_int_equal(rp_replicate_parse(failed, strlen(failed), &p, &err), 0);
    assert_int_equal(p.status, RP_PREDICTION_FAILED);
    assert_string_equal(p.error, "CUDA out of memory");

    static const char *const bad[] = {
        "not json",
        "{\"id\":\"x\"}",                                               /* no status */
        "{\"id\":\"../evil\",\"status\":\"starting\"}",                 /* id not a token */
        "{\"id\":\"x\",\"status\":\"succeeded\",\"output\":[1,2]}",     /* not text */
        "{\"id\":\"x\",\"status\":\"succeeded\",\"output\":{\"a\":1}}", /* not text */
        "{\"id\":\"x\",\"status\":\"succeeded\"}",                      /* no output */
        "{\"id\":\"x\",\"status\":\"weird\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(rp_replicate_parse(bad[i], strlen(bad[i]), &p, &err), RP_EPROTO);
}

static void replicate_request(void **state)
{
    (void)state;
    size_t len;
    char *b = rp_replicate_request("v1", "say \"hi\"\n", 9, 50, NAN, &len);
    json_t *j = json_loads(b, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "version")), "v1");
    json_t *in = json_object_get(j, "input");
    assert_string_equal(json_string_value(json_object_get(in, "prompt")), "say \"hi\"\n");
    assert_int_equal(json_integer_value(json_object_get(in, "max_new_tokens")), 50);
    assert_null(json_object_get(in, "temperature"));
    json_decref(j);
    free(b);
    b = rp_replicate_request(NULL, "p", 1, 0, 0.5, &len);
    j = json_loads(b, 0, NULL);
    assert_null(json_object_get(j, "version"));
    json_decref(j);
    free(b);
}

static void chain_breakers(void **state)
{
    (void)state;
    rp_worker_cfg_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.chat_providers = "replicate, openai";
    cfg.openai_base_url = "http://127.0.0.1:1/v1";
    cfg.chat_model = "m";
    cfg.replicate_base_url = "http://127.0.0.1:1/v1";
    cfg.replicate_version = "ver";
    cfg.replicate_wait_s = 5;
    cfg.provider_failures = 2;
    cfg.provider_cooldown_ms = 1000;
    cfg.provider_429_budget_ms = 5000;
    rp_err_t err;
    rp_chain_t *c = rp_chain_new(NULL, NULL, &cfg, &err);
    assert_non_null(c);
    assert_int_equal(rp_chain_size(c), 2);
    assert_string_equal(rp_provider_name(rp_chain_get(c, 0)), "replicate");
    assert_string_equal(rp_provider_default_model(rp_chain_get(c, 0)), "ver");

    uint64_t now = 10000;
    assert_int_equal(rp_chain_pick(c, 0, now), 0);
    /* One server failure: the job moves on, the provider stays in. */
    assert_int_equal(rp_chain_report(c, 0, RP_PROVIDER_SERVER, -1, now), 1);
    assert_int_equal(rp_chain_pick(c, 1u, now), 1);
    assert_int_equal(rp_chain_pick(c, 0, now), 0);
    /* A 429 within the budget: wait for it, no change. */
    assert_int_equal(rp_chain_report(c, 0, RP_PROVIDER_RATE, 1000, now), 0);
    assert_false(rp_chain_is_open(c, 0, now));
    /* The second failure in a row opens it: new jobs start at openai. */
    assert_int_equal(rp_chain_report(c, 0, RP_PROVIDER_SERVER, -1, now), 1);
    assert_true(rp_chain_is_open(c, 0, now));
    assert_int_equal(rp_chain_pick(c, 0, now), 1);
    /* ...but a job that already tried openai still gets the last resort. */
    assert_int_equal(rp_chain_pick(c, 2u, now), 0);
    assert_int_equal(rp_chain_pick(c, 3u, now), -1);
    /* After the cooldown one trial goes through, the next waits. */
    assert_int_equal(rp_chain_pick(c, 0, now + 1000), 0);
    assert_int_equal(rp_chain_pick(c, 0, now + 1001), 1);
    /* A success closes it. */
    assert_int_equal(rp_chain_report(c, 0, RP_PROVIDER_OK, -1, now + 1002), 0);
    assert_int_equal(rp_chain_pick(c, 0, now + 1002), 0);
    /* A 429 beyond the budget puts it out for the Retry-After. */
    assert_int_equal(rp_chain_report(c, 0, RP_PROVIDER_RATE, 60000, now), 1);
    assert_true(rp_chain_is_open(c, 0, now + 59999));
    assert_false(rp_chain_is_open(c, 0, now + 60000));
    /* A request error changes nothing. */
    assert_int_equal(rp_chain_report(c, 1, RP_PROVIDER_REQUEST, -1, now), 0);
    rp_chain_free(c);

    cfg.chat_providers = "openai,bogus";
    assert_null(rp_chain_new(NULL, NULL, &cfg, &err));
    assert_non_null(strstr(err.msg, "RAGPOOL_CHAT_PROVIDERS"));
    cfg.chat_providers = "openai,openai";
    assert_null(rp_chain_new(NULL, NULL, &cfg, &err));
    cfg.chat_providers = " , ";
    assert_null(rp_chain_new(NULL, NULL, &cfg, &err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(replicate_parse),
        cmocka_unit_test(replicate_request),
        cmocka_unit_test(chain_breakers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
