/*
 * test_request.c: dispatcher/request.c -- the chat body's strict
 * validation (400 for malformed JSON, 422 naming every unknown or invalid
 * field, the options' ranges agreeing with the worker's payload decoder),
 * Authorization and Content-Type parsing, Idempotency-Key to a stable
 * version-5 job id, and the error body's shape.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "job.h"
#include "request.h"

static int parse(const char *body, rp_chat_request_t *out, char **err_out)
{
    rp_buf_t eb = RP_BUF_INIT;
    int rc = rp_chat_request_parse(body, strlen(body), out, &eb);
    *err_out = eb.data != NULL ? rp_buf_take(&eb, NULL) : strdup("");
    return rc;
}

/* The error body must be {"error":{"code":code,...}}; returns its message. */
static char *error_message(const char *body, const char *code)
{
    json_error_t je;
    json_t *j = json_loads(body, 0, &je);
    if (j == NULL)
        fail_msg("error body is not JSON: %s", body);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    assert_non_null(c);
    assert_non_null(m);
    assert_string_equal(c, code);
    char *msg = strdup(m);
    json_decref(j);
    return msg;
}

static void test_valid_bodies(void **state)
{
    (void)state;
    rp_chat_request_t r;
    char *eb;
    assert_int_equal(parse("{\"message\":\"What is TON?\"}", &r, &eb), 0);
    assert_string_equal(r.message, "What is TON?");
    assert_null(r.conversation_id);
    assert_null(r.options_json);
    rp_chat_request_free(&r);
    free(eb);

    const char *full =
        "{\"message\":\"hi\",\"conversation_id\":\"c-1\",\"options\":"
        "{\"match_count\":5,\"match_threshold\":0.5,\"history_count\":0,"
        "\"model\":\"m\",\"max_tokens\":100,\"temperature\":1.5,\"max_tokens\":null}}";
    /* duplicate key: refused as malformed */
    assert_int_equal(parse(full, &r, &eb), 400);
    free(eb);
    full = "{\"message\":\"hi\",\"conversation_id\":\"c-1\",\"options\":"
           "{\"match_count\":5,\"match_threshold\":0.5,\"history_count\":0,"
           "\"model\":\"m\",\"max_tokens\":100,\"temperature\":null}}";
    assert_int_equal(parse(full, &r, &eb), 0);
    assert_string_equal(r.conversation_id, "c-1");
    assert_non_null(r.options_json);
    assert_null(strstr(r.options_json, "temperature")); /* nulls dropped */
    /* What the dispatcher accepts, the worker's decoder accepts too. */
    char payload[1024];
    snprintf(
        payload, sizeof(payload),
        "{\"user_id\":\"6f1c2a8e-530b-4d8a-9e27-b4613cd07519\",\"message\":\"hi\",\"options\":%s}",
        r.options_json);
    rp_chat_payload_t p;
    rp_err_t err;
    assert_int_equal(rp_chat_payload_decode_json(payload, strlen(payload), &p, &err), 0);
    assert_int_equal(p.match_count, 5);
    assert_int_equal(p.max_tokens, 100);
    rp_chat_payload_free(&p);
    rp_chat_request_free(&r);
    free(eb);

    /* a message of exactly 32768 bytes, multi-byte UTF-8 inside */
    char *big = malloc(32768 + 32);
    strcpy(big, "{\"message\":\"\xc3\xa9");
    size_t n = strlen(big);
    memset(big + n, 'a', 32768 - 2);
    strcpy(big + n + 32768 - 2, "\"}");
    assert_int_equal(parse(big, &r, &eb), 0);
    assert_int_equal(strlen(r.message), 32768);
    rp_chat_request_free(&r);
    free(eb);
    /* one byte more is 422 */
    big[n] = 'b';
    memmove(big + n + 1, big + n, strlen(big + n) + 1);
    big[n] = 'a';
    assert_int_equal(parse(big, &r, &eb), 422);
    free(eb);
    free(big);
}

static void test_malformed_is_400(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         "{",
                         "{\"message\":}",
                         "nul",
                         "{\"message\":\"a\"} x",
                         "{\"message\":\"\\u0000\"}",
                         "{\"message\":\"\xff\"}",
                         "{\"message\":\"a\",\"message\":\"b\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rp_chat_request_t r;
        char *eb;
        int rc = parse(bad[i], &r, &eb);
        if (rc != 400)
            fail_msg("body %zu: expected 400, got %d", i, rc);
        free(error_message(eb, "malformed_json"));
        free(eb);
    }
}

static void test_invalid_fields_are_422_and_named(void **state)
{
    (void)state;
    rp_chat_request_t r;
    char *eb;
    assert_int_equal(
        parse("{\"message\":\"hi\",\"user_id\":\"x\",\"extra\":1,"
              "\"options\":{\"match_count\":0,\"bogus\":true,\"temperature\":\"hot\"}}",
              &r, &eb),
        422);
    char *msg = error_message(eb, "invalid_fields");
    /* every problem is named: a client can fix them all at once */
    assert_non_null(strstr(msg, "user_id: unknown field"));
    assert_non_null(strstr(msg, "extra: unknown field"));
    assert_non_null(strstr(msg, "options.match_count: must be between 1 and 50"));
    assert_non_null(strstr(msg, "options.bogus: unknown option"));
    assert_non_null(strstr(msg, "options.temperature: must be a number"));
    json_t *j = json_loads(eb, 0, NULL);
    json_t *fields = json_object_get(json_object_get(j, "error"), "fields");
    assert_true(json_is_array(fields));
    assert_int_equal(json_array_size(fields), 5);
    json_decref(j);
    free(msg);
    free(eb);

    const struct {
        const char *body;
        const char *needle;
    } cases[] = {
        {"[1]", "JSON object"},
        {"{}", "message: required"},
        {"{\"message\":\"\"}", "message: must be 1 to 32768 bytes"},
        {"{\"message\":7}", "message: must be a string"},
        {"{\"message\":\"a\",\"conversation_id\":5}", "conversation_id"},
        {"{\"message\":\"a\",\"options\":[]}", "options: must be an object"},
        {"{\"message\":\"a\",\"options\":{\"match_count\":2.5}}", "must be an integer"},
        {"{\"message\":\"a\",\"options\":{\"match_threshold\":1.5}}", "between -1 and 1"},
        {"{\"message\":\"a\",\"options\":{\"history_count\":51}}", "between 0 and 50"},
        {"{\"message\":\"a\",\"options\":{\"max_tokens\":0}}", "between 1 and 32768"},
        {"{\"message\":\"a\",\"options\":{\"model\":\"\"}}", "options.model"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = parse(cases[i].body, &r, &eb);
        if (rc != 422)
            fail_msg("%s: expected 422, got %d", cases[i].body, rc);
        msg = error_message(eb, cases[i].body[0] == '[' ? "invalid_request" : "invalid_fields");
        if (strstr(msg, cases[i].needle) == NULL)
            fail_msg("%s: message \"%s\" lacks \"%s\"", cases[i].body, msg, cases[i].needle);
        free(msg);
        free(eb);
    }
    /* many unknown fields: the list is bounded */
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_puts(&b, "{\"message\":\"a\"");
    for (int i = 0; i < 1000; i++)
        rp_buf_printf(&b, ",\"f%d\":1", i);
    rp_buf_putc(&b, '}');
    assert_int_equal(parse(b.data, &r, &eb), 422);
    assert_true(strlen(eb) < 2000);
    free(eb);
    rp_buf_free(&b);
}

static void test_headers(void **state)
{
    (void)state;
    const char *tok;
    size_t len;
    assert_int_equal(rp_bearer_token("Bearer abc.def.ghi", &tok, &len), 0);
    assert_int_equal(len, 11);
    assert_memory_equal(tok, "abc.def.ghi", 11);
    assert_int_equal(rp_bearer_token("  bearer   x  ", &tok, &len), 0);
    assert_int_equal(len, 1);
    assert_int_equal(rp_bearer_token(NULL, &tok, &len), -1);
    assert_int_equal(rp_bearer_token("", &tok, &len), -1);
    assert_int_equal(rp_bearer_token("Bearer", &tok, &len), -1);
    assert_int_equal(rp_bearer_token("Bearer ", &tok, &len), -1);
    assert_int_equal(rp_bearer_token("Basic dXNlcjpwYXNz", &tok, &len), -1);
    assert_int_equal(rp_bearer_token("Bearerabc", &tok, &len), -1);
    assert_int_equal(rp_bearer_token("Bearer a b", &tok, &len), -1);

    assert_true(rp_content_type_is_json("application/json"));
    assert_true(rp_content_type_is_json("Application/JSON; charset=utf-8"));
    assert_false(rp_content_type_is_json(NULL));
    assert_false(rp_content_type_is_json("text/plain"));
    assert_false(rp_content_type_is_json("application/jsonx"));
    assert_false(rp_content_type_is_json("application/x-www-form-urlencoded"));

    assert_true(rp_uuid_valid("6f1c2a8e-530b-4d8a-9e27-b4613cd07519"));
    assert_true(rp_uuid_valid("6F1C2A8E-530B-4D8A-9E27-B4613CD07519"));
    assert_false(rp_uuid_valid("6f1c2a8e530b4d8a9e27b4613cd07519"));
    assert_false(rp_uuid_valid("6f1c2a8e-530b-4d8a-9e27-b4613cd0751g"));
    assert_false(rp_uuid_valid("../../etc/passwd"));
}

static void test_idempotency_ids(void **state)
{
    (void)state;
    char a[37], b[37], c[37], d[37];
    assert_int_equal(rp_idempotency_job_id("user-1", "key-1", a), 0);
    assert_int_equal(rp_idempotency_job_id("user-1", "key-1", b), 0);
    assert_int_equal(rp_idempotency_job_id("user-2", "key-1", c), 0);
    assert_int_equal(rp_idempotency_job_id("user-1", "key-2", d), 0);
    assert_string_equal(a, b);     /* a retry gets the same id */
    assert_string_not_equal(a, c); /* users never collide */
    assert_string_not_equal(a, d);
    assert_true(rp_uuid_valid(a));
    assert_int_equal(a[14], '5');               /* version 5 */
    assert_true(strchr("89ab", a[19]) != NULL); /* RFC 4122 variant */
    /* the separator keeps ("ab","c") and ("a","bc") apart */
    assert_int_equal(rp_idempotency_job_id("ab", "c", a), 0);
    assert_int_equal(rp_idempotency_job_id("a", "bc", b), 0);
    assert_string_not_equal(a, b);
    assert_int_equal(rp_idempotency_job_id("u", "", a), RP_EINVAL);
    assert_int_equal(rp_idempotency_job_id("u", "has space", a), RP_EINVAL);
    char longkey[300];
    memset(longkey, 'k', 299);
    longkey[299] = '\0';
    assert_int_equal(rp_idempotency_job_id("u", longkey, a), RP_EINVAL);
    longkey[255] = '\0';
    assert_int_equal(rp_idempotency_job_id("u", longkey, a), 0);
}

static void test_error_json(void **state)
{
    (void)state;
    rp_buf_t b = RP_BUF_INIT;
    rp_error_json(&b, "invalid_token", "token \"expired\"\n", NULL);
    assert_string_equal(
        b.data,
        "{\"error\":{\"code\":\"invalid_token\",\"message\":\"token \\\"expired\\\"\\n\"}}");
    rp_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_bodies),
        cmocka_unit_test(test_malformed_is_400),
        cmocka_unit_test(test_invalid_fields_are_422_and_named),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_idempotency_ids),
        cmocka_unit_test(test_error_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
