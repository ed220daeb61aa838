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

/* rp_chat_request_parse takes plain bodies without jansson; every answer
 * must equal rp_chat_request_parse_json's.  Bodies are built from pieces
 * that sit on both sides of every rule the plain path checks (keys,
 * escapes, control characters, UTF-8, lengths, null, whitespace, trailing
 * bytes, duplicates, other fields), with a fixed seed. */
static const char *const KEYS[] = {
    "\"message\"", "\"conversation_id\"", "\"options\"", "\"mess\\u0061ge\"",
    "\"Message\"", "\"message \"",        "message"};
static const char *const WS[] = {"", " ", "\n\t", "\r\n  ", "", "", "", "\f", "\xc2\xa0"};

/* Whitespace between tokens: JSON's own, and now and then what is not. */
static const char *ws(unsigned *seed)
{
    unsigned r = (unsigned)rand_r(seed) % 60;
    return WS[r < 58 ? r % 7 : 7 + r % 2];
}

static void put_value(rp_buf_t *b, unsigned *seed)
{
    static const char *const fixed[] = {"null",
                                        "1",
                                        "true",
                                        "{}",
                                        "[]",
                                        "\"\"",
                                        "\"a\\\"b\"",
                                        "\"tab\there\"",
                                        "\"caf\xc3\xa9\"",
                                        "\"\xc3\"",
                                        "\"\xed\xa0\x80\"",
                                        "\"\xf4\x90\x80\x80\"",
                                        "\"\xe2\x82\xac \xf0\x9f\x98\x80\"",
                                        "\"\xc0\xaf\"",
                                        "\"x\x7f\"",
                                        "{\"match_count\":3}",
                                        "\"What is TON token?\"",
                                        "\"nul\\u0000\"",
                                        "\"\x01\"",
                                        "nul",
                                        "\"unterminated"};
    unsigned r = (unsigned)rand_r(seed) % 24;
    if (r < 21) {
        rp_buf_puts(b, fixed[r]);
        return;
    }
    /* Long strings around the limits. */
    size_t sizes[] = {RP_CHAT_MESSAGE_MAX, RP_CHAT_MESSAGE_MAX + 1, RP_CONVERSATION_ID_MAX,
                      RP_CONVERSATION_ID_MAX + 1};
    size_t n = sizes[(unsigned)rand_r(seed) % 4];
    rp_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++)
        rp_buf_putc(b, (char)('a' + i % 26));
    rp_buf_putc(b, '"');
}

static void expect_same(const char *body, size_t len)
{
    rp_chat_request_t a, b;
    rp_buf_t ea = RP_BUF_INIT, eb = RP_BUF_INIT;
    int ra = rp_chat_request_parse(body, len, &a, &ea);
    int rb = rp_chat_request_parse_json(body, len, &b, &eb);
    if (ra != rb || (a.message == NULL) != (b.message == NULL) ||
        (a.message != NULL && strcmp(a.message, b.message) != 0) ||
        (a.conversation_id == NULL) != (b.conversation_id == NULL) ||
        (a.conversation_id != NULL && strcmp(a.conversation_id, b.conversation_id) != 0) ||
        (a.options_json == NULL) != (b.options_json == NULL) ||
        (a.options_json != NULL && strcmp(a.options_json, b.options_json) != 0) ||
        (ea.data == NULL) != (eb.data == NULL) ||
        (ea.data != NULL && strcmp(ea.data, eb.data) != 0))
        fail_msg("the paths differ on %.300s: %d vs %d (%s | %s)", body, ra, rb,
                 ea.data ? ea.data : "-", eb.data ? eb.data : "-");
    rp_chat_request_free(&a);
    rp_chat_request_free(&b);
    rp_buf_free(&ea);
    rp_buf_free(&eb);
}

static void test_plain_path_matches_jansson(void **state)
{
    (void)state;
    unsigned seed = 20261124;
    int plain = 0;
    for (int i = 0; i < 20000; i++) {
        rp_buf_t b = RP_BUF_INIT;
        rp_buf_puts(&b, ws(&seed));
        if (rand_r(&seed) % 20 != 0)
            rp_buf_putc(&b, '{');
        int nfields = 1 + rand_r(&seed) % 3;
        for (int f = 0; f < nfields; f++) {
            if (f > 0 || rand_r(&seed) % 30 == 0)
                rp_buf_puts(&b, rand_r(&seed) % 30 == 0 ? ";" : ",");
            rp_buf_puts(&b, ws(&seed));
            /* Mostly the two plain keys, so whole plain bodies are common. */
            unsigned k = (unsigned)rand_r(&seed) % 20;
            rp_buf_puts(&b, KEYS[k < 10 ? 0 : k < 15 ? 1 : k - 13]);
            rp_buf_puts(&b, ws(&seed));
            if (rand_r(&seed) % 30 != 0)
                rp_buf_putc(&b, ':');
            rp_buf_puts(&b, ws(&seed));
            if (rand_r(&seed) % 4 != 0)
                rp_buf_puts(&b, "\"What is TON token?\"");
            else
                put_value(&b, &seed);
        }
        if (rand_r(&seed) % 20 != 0)
            rp_buf_putc(&b, '}');
        rp_buf_puts(&b, ws(&seed));
        if (rand_r(&seed) % 25 == 0)
            rp_buf_puts(&b, rand_r(&seed) % 2 ? "x" : "{}");
        size_t len = b.len;
        if (rand_r(&seed) % 25 == 0 && len > 0)
            len = (size_t)rand_r(&seed) % len; /* cut short */
        assert_false(rp_buf_failed(&b));
        expect_same(b.data != NULL ? b.data : "", len);
        rp_chat_request_t r;
        rp_buf_t e = RP_BUF_INIT;
        if (rp_chat_request_parse_json(b.data != NULL ? b.data : "", len, &r, &e) == 0) {
            plain++;
            rp_chat_request_free(&r);
        }
        rp_buf_free(&e);
        rp_buf_free(&b);
    }
    /* Enough accepted bodies that the plain path was really compared. */

    assert_true(plain > 2000);
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
        cmocka_unit_test(test_plain_path_matches_jansson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
