/* Tests worker/openai.c: request bodies and validation of model responses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "openai.h"

static void embed_request_body(void **state)
{
    const char *inputs[] = {"What is \"TON\"?", "line\nbreak"};
    size_t len;
    char *body = rp_openai_embed_request("m", inputs, 2, 384, 1, &len);
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "m");
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "input"), 0)),
                        "What is \"TON\"?");
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "input"), 1)),
                        "line\nbreak");
    assert_int_equal(json_integer_value(json_object_get(j, "dimensions")), 384);
    assert_string_equal(json_string_value(json_object_get(j, "encoding_format")), "base64");
    json_decref(j);
    free(body);
    body = rp_openai_embed_request("m", inputs, 1, 0, 0, NULL);
    assert_null(strstr(body, "dimensions"));
    free(body);
}

static void embed_parse_float_and_base64(void **state)
{
    const char *body = "{\"data\":[{\"index\":1,\"embedding\":\"AACAPwAAAMA=\"},"
                       "{\"index\":0,\"embedding\":[0.5,0.25]}],\"usage\":{\"prompt_tokens\":7}}";
    rp_embeddings_t e;
    rp_err_t err;
    assert_int_equal(rp_openai_embed_parse(body, strlen(body), 2, 0, &e, &err), 0);
    assert_int_equal(e.n, 2);
    assert_int_equal(e.dims, 2);
    assert_true(e.data[0] == 0.5f && e.data[1] == 0.25f); /* index 0 */
    assert_true(e.data[2] == 1.0f && e.data[3] == -2.0f); /* index 1 */
    assert_int_equal(e.prompt_tokens, 7);
    rp_embeddings_free(&e);
}

static void embed_parse_rejects(void **state)
{
    static const char *const cases[][2] = {
        {"{", "not valid JSON"},
        {"{\"data\":[]}", "has 0 vectors, expected 1"},
        {"{\"data\":[{\"embedding\":[]}]}", "has 0 values"},
        {"{\"data\":[{\"embedding\":[1,\"x\"]}]}", "value 1 is not a number"},
        {"{\"data\":[{\"embedding\":\"@@@@\"}]}", "not valid base64"},
        {"{\"data\":[{\"embedding\":{}}]}", "neither an array"},
        {"{\"data\":[{\"index\":5,\"embedding\":[1]}]}", "bad index"},
        {"{\"data\":[{\"embedding\":[1,2,3]}]}", "expected 2"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rp_embeddings_t e;
        rp_err_t err;
        size_t dims = i == 7 ? 2 : 0;
        assert_int_equal(
            rp_openai_embed_parse(cases[i][0], strlen(cases[i][0]), 1, dims, &e, &err),
            RP_EPROTO);
        if (strstr(err.msg, cases[i][1]) == NULL)
            fail_msg("case %zu: '%s'", i, err.msg);
        assert_null(e.data);
    }
    const char *dup = "{\"data\":[{\"index\":0,\"embedding\":[1]},{\"index\":0,\"embedding\":[2]}]}";
    rp_embeddings_t e;
    rp_err_t err;
    assert_int_equal(rp_openai_embed_parse(dup, strlen(dup), 2, 0, &e, &err), RP_EPROTO);
    assert_non_null(strstr(err.msg, "appears twice"));
    const char *mixed = "{\"data\":[{\"embedding\":[1]},{\"embedding\":[2,3]}]}";
    assert_int_equal(rp_openai_embed_parse(mixed, strlen(mixed), 2, 0, &e, &err), RP_EPROTO);
    assert_non_null(strstr(err.msg, "different dimensions"));
}

static void embed_parse_json_syntax(void **state)
{
    /* Accepted: whitespace anywhere, escaped slashes in base64, unknown
     * fields of any shape, exponents in float arrays, fields in any order. */
    const char *ok[] = {
        " { \"usage\" : {\"prompt_tokens\": 3, \"x\": [1, {\"y\": null}]},\n"
        "   \"data\" : [ { \"embedding\" : \"AACAPwAAAMA=\" , \"index\" : 0, "
        "\"object\": \"embedding\", \"extra\": [true, false, -1.5e3, \"s\\u00e9\\n\"] } ],"
        " \"model\": \"m\" } \n",
        "{\"data\":[{\"embedding\":\"AACAPwAA\\/MA=\"}]}",
        "{\"data\":[{\"embedding\":[1e0,-2E+0]}]}",
    };
    for (size_t i = 0; i < 3; i++) {
        rp_embeddings_t e;
        rp_err_t err;
        int rc = rp_openai_embed_parse(ok[i], strlen(ok[i]), 1, 0, &e, &err);
        if (rc != 0)
            fail_msg("case %zu: %s", i, err.msg);
        assert_int_equal(e.dims, 2);
        assert_true(e.data[0] == 1.0f);
        if (i != 1)
            assert_true(e.data[1] == -2.0f);
        if (i == 0)
            assert_int_equal(e.prompt_tokens, 3);
        rp_embeddings_free(&e);
    }
    /* Refused: anything that is not one valid JSON document. */
    const char *bad[] = {
        "{\"data\":[{\"embedding\":[1,2]}]} trailing",
        "{\"data\":[{\"embedding\":[1,2]}],}",
        "{\"data\":[{\"embedding\":[1,2],}]}",
        "{\"data\":[{\"embedding\":[01]}]}",
        "{\"data\":[{\"embedding\":[1.]}]}",
        "{\"data\":[{\"embedding\":\"AACA\tPw==\"}]}",
        "{\"data\":[{\"embedding\":[1,2]}],\"x\":\"\\q\"}",
        "{\"data\":[{\"embedding\":[1,2]}],\"x\":tru}",
        "{\"data\":[{\"embedding\":[1,2]}]",
        "",
        "[]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rp_embeddings_t e;
        rp_err_t err;
        if (rp_openai_embed_parse(bad[i], strlen(bad[i]), 1, 0, &e, &err) != RP_EPROTO)
            fail_msg("case %zu was accepted", i);
        assert_null(e.data);
    }
    /* Deep nesting is refused, not a stack overflow. */
    char deep[20000];
    size_t k = 0;
    k += (size_t)sprintf(deep, "{\"data\":[{\"embedding\":[1]}],\"x\":");
    for (int i = 0; i < 5000; i++)
        deep[k++] = '[';
    for (int i = 0; i < 5000; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    rp_embeddings_t e;
    rp_err_t err;
    assert_int_equal(rp_openai_embed_parse(deep, k, 1, 0, &e, &err), RP_EPROTO);
    assert_non_null(strstr(err.msg, "nested too deeply"));
    /* Too many vectors are counted in the message. */
    const char *many = "{\"data\":[{\"embedding\":[1]},{\"embedding\":[2]},{\"embedding\":[3]}]}";
    assert_int_equal(rp_openai_embed_parse(many, strlen(many), 1, 0, &e, &err), RP_EPROTO);
    assert_non_null(strstr(err.msg, "has 3 vectors, expected 1"));
}

static void chat_request_and_parse(void **state)
{
    char *body = rp_openai_chat_request("gpt", "Q?\n\"x\"", 6, 128, 0.5, NULL);
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    json_t *msg = json_array_get(json_object_get(j, "messages"), 0);
    assert_string_equal(json_string_value(json_object_get(msg, "role")), "user");
    assert_string_equal(json_string_value(json_object_get(msg, "content")), "Q?\n\"x\"");
    assert_int_equal(json_integer_value(json_object_get(j, "max_tokens")), 128);
    assert_true(json_real_value(json_object_get(j, "temperature")) == 0.5);
    json_decref(j);
    free(body);
    body = rp_openai_chat_request("gpt", "Q", 1, 0, NAN, NULL);
    assert_null(strstr(body, "max_tokens"));
    assert_null(strstr(body, "temperature"));
    free(body);

    const char *resp = "{\"model\":\"dev-chat\",\"choices\":[{\"message\":{\"role\":\"assistant\","
                       "\"content\":\"TON is...\"},\"finish_reason\":\"stop\"}],"
                       "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3}}";
    rp_chat_result_t r;
    rp_err_t err;
    assert_int_equal(rp_openai_chat_parse(resp, strlen(resp), &r, &err), 0);
    assert_string_equal(r.content, "TON is...");
    assert_string_equal(r.model, "dev-chat");
    assert_string_equal(r.finish_reason, "stop");
    assert_int_equal(r.prompt_tokens, 12);
    assert_int_equal(r.completion_tokens, 3);
    rp_chat_result_free(&r);

    const char *bad[] = {"{\"choices\":[]}", "{\"choices\":[{\"message\":{\"content\":5}}]}",
                         "<html>502</html>", "{\"choices\":[{\"message\":{\"content\":\"x\""};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(rp_openai_chat_parse(bad[i], strlen(bad[i]), &r, &err), RP_EPROTO);
        assert_null(r.content);
    }
}

static void errors_are_classified_and_described(void **state)
{
    assert_true(rp_openai_status_retryable(429));
    assert_true(rp_openai_status_retryable(500));
    assert_true(rp_openai_status_retryable(503));
    assert_true(rp_openai_status_retryable(408));
    assert_false(rp_openai_status_retryable(400));
    assert_false(rp_openai_status_retryable(401));
    assert_false(rp_openai_status_retryable(404));
    char out[128];
    const char *body = "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"x\"}}";
    rp_openai_describe_error(429, body, strlen(body), out, sizeof(out));
    assert_string_equal(out, "HTTP 429: Rate limit reached");
    rp_openai_describe_error(502, "<html>bad gateway</html>", 24, out, sizeof(out));
    assert_string_equal(out, "HTTP 502");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(embed_request_body),
        cmocka_unit_test(embed_parse_float_and_base64),
        cmocka_unit_test(embed_parse_rejects),
        cmocka_unit_test(embed_parse_json_syntax),
        cmocka_unit_test(chat_request_and_parse),
        cmocka_unit_test(errors_are_classified_and_described),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
