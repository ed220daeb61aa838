/* Tests common/job.c: the chat job codec and its validation of hostile payloads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

static int decode(const char *json, rp_chat_payload_t *p, rp_err_t *err)
{
    return rp_chat_payload_decode_json(json, strlen(json), p, err);
}

static void minimal_payload(void **state)
{
    rp_chat_payload_t p;
    rp_err_t err;
    assert_int_equal(
        decode("{\"user_id\":\"00000000-0000-4000-8000-000000000001\",\"message\":\"What is TON?\"}",
               &p, &err),
        0);
    assert_string_equal(p.user_id, "00000000-0000-4000-8000-000000000001");
    assert_string_equal(p.message, "What is TON?");
    assert_int_equal(p.match_count, -1);
    assert_true(isnan(p.match_threshold));
    assert_null(p.model);
    rp_chat_payload_free(&p);
}

static void integer_user_id_and_options(void **state)
{
    rp_chat_payload_t p;
    rp_err_t err;
    assert_int_equal(decode("{\"user_id\":42,\"message\":\"hi\",\"options\":{\"match_count\":3,"
                            "\"match_threshold\":0.25,\"history_count\":0,\"model\":\"m\","
                            "\"max_tokens\":100,\"temperature\":0.5}}",
                            &p, &err),
                     0);
    assert_string_equal(p.user_id, "42");
    assert_int_equal(p.match_count, 3);
    assert_true(p.match_threshold == 0.25);
    assert_int_equal(p.history_count, 0);
    assert_string_equal(p.model, "m");
    assert_int_equal(p.max_tokens, 100);
    assert_true(p.temperature == 0.5);
    /* round trip */
    char *json = rp_chat_payload_encode_json(&p);
    rp_chat_payload_t q;
    assert_int_equal(decode(json, &q, &err), 0);
    assert_string_equal(q.user_id, "42");
    assert_int_equal(q.match_count, 3);
    assert_string_equal(q.model, "m");
    free(json);
    rp_chat_payload_free(&q);
    rp_chat_payload_free(&p);
}

static void bad_payloads_are_named(void **state)
{
    static const char *const cases[][2] = {
        {"not json", "not valid JSON"},
        {"[1,2]", "must be a JSON object"},
        {"{\"nonsense\":true}", "nonsense: unknown field"},
        {"{\"message\":\"x\"}", "user_id: missing"},
        {"{\"user_id\":\"bob\",\"message\":\"x\"}", "user_id: must be a uuid or an integer"},
        {"{\"user_id\":1.5,\"message\":\"x\"}", "user_id: must be a uuid or an integer"},
        {"{\"user_id\":1}", "message: missing"},
        {"{\"user_id\":1,\"message\":5}", "message: must be a string"},
        {"{\"user_id\":1,\"message\":\"\"}", "message: must be 1 to"},
        {"{\"user_id\":1,\"message\":\"a\\u0000b\"}", "NUL"},
        {"{\"user_id\":1,\"message\":\"x\",\"options\":3}", "options: must be an object"},
        {"{\"user_id\":1,\"message\":\"x\",\"options\":{\"match_count\":0}}",
         "options.match_count: must be between"},
        {"{\"user_id\":1,\"message\":\"x\",\"options\":{\"match_count\":\"3\"}}",
         "options.match_count: must be an integer"},
        {"{\"user_id\":1,\"message\":\"x\",\"options\":{\"temperature\":9}}",
         "options.temperature"},
        {"{\"user_id\":1,\"message\":\"x\",\"options\":{\"sql\":\"drop\"}}",
         "options.sql: unknown option"},
        {"{\"user_id\":1,\"user_id\":2,\"message\":\"x\"}", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rp_chat_payload_t p;
        rp_err_t err;
        assert_int_equal(decode(cases[i][0], &p, &err), RP_EINVAL);
        if (strstr(err.msg, cases[i][1]) == NULL)
            fail_msg("case %zu: '%s' does not contain '%s'", i, err.msg, cases[i][1]);
        assert_null(p.user_id);
    }
}

static void oversized_message(void **state)
{
    size_t n = RP_JOB_MESSAGE_MAX + 1;
    char *json = malloc(n + 64);
    strcpy(json, "{\"user_id\":1,\"message\":\"");
    size_t off = strlen(json);
    memset(json + off, 'a', n);
    strcpy(json + off + n, "\"}");
    rp_chat_payload_t p;
    rp_err_t err;
    assert_int_equal(decode(json, &p, &err), RP_EINVAL);
    assert_non_null(strstr(err.msg, "message: must be 1 to"));
    free(json);
}

static void user_ids(void **state)
{
    assert_true(rp_user_id_valid("00000000-0000-4000-8000-000000000001"));
    assert_true(rp_user_id_valid("ABCDEF00-0000-4000-8000-000000000001"));
    assert_true(rp_user_id_valid("42"));
    assert_true(rp_user_id_valid("-7"));
    assert_true(rp_user_id_valid("9223372036854775807"));
    assert_false(rp_user_id_valid("9223372036854775808"));
    assert_false(rp_user_id_valid(""));
    assert_false(rp_user_id_valid("-"));
    assert_false(rp_user_id_valid("00000000-0000-4000-8000-00000000000g"));
    assert_false(rp_user_id_valid("1; drop table conversations"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(minimal_payload),
        cmocka_unit_test(integer_user_id_and_options),
        cmocka_unit_test(bad_payloads_are_named),
        cmocka_unit_test(oversized_message),
        cmocka_unit_test(user_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
