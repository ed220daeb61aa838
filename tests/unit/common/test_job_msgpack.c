/* Tests common/job.c, msgpack side: the chat payload and the Redis stream
 * envelope (docs/REDIS.md), round trips, and hostile input: wrong types,
 * truncation, huge declared lengths, deep nesting, unknown and repeated
 * keys, invalid UTF-8.  Inputs are built with msgpack-c's packer (what a
 * client would send) or written byte by byte where the packer would refuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

#define UUID "00000000-0000-4000-8000-000000000001"
#define JOB_ID "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

/* ------------------------------------------------------------ building */

typedef struct mp {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} mp_t;

static void mp_init(mp_t *m)
{
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void s(mp_t *m, const char *str)
{
    size_t n = strlen(str);
    msgpack_pack_str(&m->pk, n);
    msgpack_pack_str_body(&m->pk, str, n);
}

static void i(mp_t *m, int64_t v)
{
    msgpack_pack_int64(&m->pk, v);
}

static void map(mp_t *m, size_t n)
{
    msgpack_pack_map(&m->pk, n);
}

static void mp_done(mp_t *m)
{
    msgpack_sbuffer_destroy(&m->sb);
}

static int decode_payload(mp_t *m, rp_chat_payload_t *p, rp_err_t *err)
{
    return rp_chat_payload_decode_msgpack(m->sb.data, m->sb.size, p, err);
}

static int decode_env(mp_t *m, rp_job_envelope_t *e, rp_err_t *err)
{
    return rp_job_envelope_decode_msgpack(m->sb.data, m->sb.size, e, err);
}

static void expect_payload_error(mp_t *m, const char *want)
{
    rp_chat_payload_t p;
    rp_err_t err;
    memset(&err, 0, sizeof(err));
    int rc = decode_payload(m, &p, &err);
    if (rc != RP_EINVAL)
        fail_msg("expected RP_EINVAL containing '%s', got %d", want, rc);
    if (strstr(err.msg, want) == NULL)
        fail_msg("'%s' does not contain '%s'", err.msg, want);
    assert_null(p.user_id);
    assert_null(p.message);
    assert_null(p.model);
    mp_done(m);
}

static void expect_env_error(mp_t *m, const char *want, const char *want_id)
{
    rp_job_envelope_t e;
    rp_err_t err;
    memset(&err, 0, sizeof(err));
    int rc = decode_env(m, &e, &err);
    if (rc != RP_EINVAL)
        fail_msg("expected RP_EINVAL containing '%s', got %d", want, rc);
    if (strstr(err.msg, want) == NULL)
        fail_msg("'%s' does not contain '%s'", err.msg, want);
    assert_string_equal(e.id, want_id);
    assert_null(e.payload.user_id);
    rp_job_envelope_free(&e);
    mp_done(m);
}

/* ------------------------------------------------------------- payload */

static void minimal_payload(void **state)
{
    mp_t m;
    mp_init(&m);
    map(&m, 2);
    s(&m, "user_id");
    s(&m, UUID);
    s(&m, "message");
    s(&m, "What is TON?");
    rp_chat_payload_t p;
    rp_err_t err;
    assert_int_equal(decode_payload(&m, &p, &err), 0);
    assert_string_equal(p.user_id, UUID);
    assert_string_equal(p.message, "What is TON?");
    assert_int_equal(p.match_count, -1);
    assert_true(isnan(p.match_threshold));
    assert_true(isnan(p.temperature));
    assert_null(p.model);
    rp_chat_payload_free(&p);
    mp_done(&m);
}

static void integer_user_id_options_and_round_trip(void **state)
{
    mp_t m;
    mp_init(&m);
    map(&m, 3);
    s(&m, "options");
    map(&m, 6);
    s(&m, "match_count");
    i(&m, 3);
    s(&m, "match_threshold");
    msgpack_pack_float(&m.pk, 0.25f); /* float32 is a number too */
    s(&m, "history_count");
    i(&m, 0);
    s(&m, "model");
    s(&m, "m");
    s(&m, "max_tokens");
    msgpack_pack_uint16(&m.pk, 100);
    s(&m, "temperature");
    i(&m, 1); /* an integer is a number */
    s(&m, "message");
    s(&m, "hi");
    s(&m, "user_id");
    i(&m, -42);
    rp_chat_payload_t p;
    rp_err_t err;
    assert_int_equal(decode_payload(&m, &p, &err), 0);
    mp_done(&m);
    assert_string_equal(p.user_id, "-42");
    assert_int_equal(p.match_count, 3);
    assert_true(p.match_threshold == 0.25);
    assert_int_equal(p.history_count, 0);
    assert_string_equal(p.model, "m");
    assert_int_equal(p.max_tokens, 100);
    assert_true(p.temperature == 1.0);

    size_t len = 0;
    char *buf = rp_chat_payload_encode_msgpack(&p, &len);
    assert_non_null(buf);
    rp_chat_payload_t q;
    assert_int_equal(rp_chat_payload_decode_msgpack(buf, len, &q, &err), 0);
    assert_string_equal(q.user_id, "-42");
    assert_string_equal(q.message, "hi");
    assert_int_equal(q.match_count, 3);
    assert_true(q.match_threshold == 0.25);
    assert_int_equal(q.history_count, 0);
    assert_string_equal(q.model, "m");
    assert_int_equal(q.max_tokens, 100);
    assert_true(q.temperature == 1.0);
    free(buf);
    rp_chat_payload_free(&q);

    /* The same payload through JSON and back to msgpack. */
    char *json = rp_chat_payload_encode_json(&p);
    rp_chat_payload_t r;
    assert_int_equal(rp_chat_payload_decode_json(json, strlen(json), &r, &err), 0);
    buf = rp_chat_payload_encode_msgpack(&r, &len);
    assert_int_equal(rp_chat_payload_decode_msgpack(buf, len, &q, &err), 0);
    assert_string_equal(q.model, "m");
    free(buf);
    free(json);
    rp_chat_payload_free(&q);
    rp_chat_payload_free(&r);
    rp_chat_payload_free(&p);
}

static void nil_options_mean_not_given(void **state)
{
    mp_t m;
    mp_init(&m);
    map(&m, 3);
    s(&m, "user_id");
    s(&m, "7");
    s(&m, "message");
    s(&m, "x");
    s(&m, "options");
    map(&m, 2);
    s(&m, "model");
    msgpack_pack_nil(&m.pk);
    s(&m, "match_count");
    msgpack_pack_nil(&m.pk);
    rp_chat_payload_t p;
    rp_err_t err;
    assert_int_equal(decode_payload(&m, &p, &err), 0);
    assert_null(p.model);
    assert_int_equal(p.match_count, -1);
    rp_chat_payload_free(&p);
    mp_done(&m);

    mp_init(&m);
    map(&m, 3);
    s(&m, "user_id");
    s(&m, "7");
    s(&m, "message");
    s(&m, "x");
    s(&m, "options");
    msgpack_pack_nil(&m.pk);
    assert_int_equal(decode_payload(&m, &p, &err), 0);
    rp_chat_payload_free(&p);
    mp_done(&m);
}

/* A payload map whose one field `key` holds what `put` writes. */
typedef void (*put_fn)(mp_t *m);

static void payload_with(mp_t *m, const char *key, put_fn put)
{
    mp_init(m);
    int has_uid = strcmp(key, "user_id") == 0, has_msg = strcmp(key, "message") == 0;
    map(m, 2 + (!has_uid && !has_msg));
    if (!has_uid) {
        s(m, "user_id");
        i(m, 1);
    }
    if (!has_msg) {
        s(m, "message");
        s(m, "x");
    }
    s(m, key);
    put(m);
}

static void put_bob(mp_t *m)
{
    s(m, "bob");
}
static void put_float(mp_t *m)
{
    msgpack_pack_double(&m->pk, 1.5);
}
static void put_ubig(mp_t *m)
{
    msgpack_pack_uint64(&m->pk, UINT64_MAX);
}
static void put_int5(mp_t *m)
{
    i(m, 5);
}
static void put_empty(mp_t *m)
{
    s(m, "");
}
static void put_bin(mp_t *m)
{
    msgpack_pack_bin(&m->pk, 2);
    msgpack_pack_bin_body(&m->pk, "hi", 2);
}
static void put_nul(mp_t *m)
{
    msgpack_pack_str(&m->pk, 3);
    msgpack_pack_str_body(&m->pk, "a\0b", 3);
}
static void put_bad_utf8(mp_t *m)
{
    msgpack_pack_str(&m->pk, 2);
    msgpack_pack_str_body(&m->pk, "\xc3\x28", 2);
}
static void put_surrogate(mp_t *m)
{
    msgpack_pack_str(&m->pk, 3);
    msgpack_pack_str_body(&m->pk, "\xed\xa0\x80", 3);
}
static void put_array(mp_t *m)
{
    msgpack_pack_array(&m->pk, 1);
    i(m, 1);
}
static void put_three(mp_t *m)
{
    i(m, 3);
}
static void put_opts_zero(mp_t *m)
{
    map(m, 1);
    s(m, "match_count");
    i(m, 0);
}
static void put_opts_str(mp_t *m)
{
    map(m, 1);
    s(m, "match_count");
    s(m, "3");
}
static void put_opts_float_count(mp_t *m)
{
    map(m, 1);
    s(m, "match_count");
    msgpack_pack_double(&m->pk, 3.0);
}
static void put_opts_temp(mp_t *m)
{
    map(m, 1);
    s(m, "temperature");
    i(m, 9);
}
static void put_opts_nan(mp_t *m)
{
    map(m, 1);
    s(m, "match_threshold");
    msgpack_pack_double(&m->pk, NAN);
}
static void put_opts_unknown(mp_t *m)
{
    map(m, 1);
    s(m, "sql");
    s(m, "drop");
}
static void put_opts_model_int(mp_t *m)
{
    map(m, 1);
    s(m, "model");
    i(m, 1);
}
static void put_opts_model_nested(mp_t *m)
{
    map(m, 1);
    s(m, "model");
    for (int k = 0; k < 10; k++)
        msgpack_pack_array(&m->pk, 1);
    s(m, "m");
}
static void put_opts_int_key(mp_t *m)
{
    map(m, 1);
    i(m, 1);
    i(m, 2);
}

static void bad_payloads_are_named(void **state)
{
    static const struct {
        const char *key;
        put_fn put;
        const char *want;
    } cases[] = {
        {"user_id", put_bob, "user_id: must be a uuid or an integer"},
        {"user_id", put_float, "user_id: must be a uuid or an integer"},
        {"user_id", put_ubig, "user_id: must be a uuid or an integer"},
        {"user_id", put_bin, "user_id: must be a uuid or an integer"},
        {"message", put_int5, "message: must be a string"},
        {"message", put_bin, "message: must be a string"},
        {"message", put_empty, "message: must be 1 to"},
        {"message", put_nul, "NUL"},
        {"message", put_bad_utf8, "message: must be valid UTF-8"},
        {"message", put_surrogate, "message: must be valid UTF-8"},
        {"message", put_array, "message: must be a string"},
        {"options", put_three, "options: must be an object"},
        {"options", put_opts_zero, "options.match_count: must be between"},
        {"options", put_opts_str, "options.match_count: must be an integer"},
        {"options", put_opts_float_count, "options.match_count: must be an integer"},
        {"options", put_opts_temp, "options.temperature"},
        {"options", put_opts_nan, "options.match_threshold: must be between"},
        {"options", put_opts_unknown, "options.sql: unknown option"},
        {"options", put_opts_model_int, "options.model: must be a non-empty string"},
        {"options", put_opts_model_nested, "options.model: must be a non-empty string"},
        {"options", put_opts_int_key, "options: keys must be strings"},
        {"nonsense", put_int5, "nonsense: unknown field"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        mp_t m;
        payload_with(&m, cases[k].key, cases[k].put);
        rp_chat_payload_t p;
        rp_err_t err;
        int rc = decode_payload(&m, &p, &err);
        if (rc != RP_EINVAL || strstr(err.msg, cases[k].want) == NULL)
            fail_msg("case %zu: rc %d, '%s' does not contain '%s'", k, rc, err.msg, cases[k].want);
        assert_null(p.user_id);
        assert_null(p.model);
        mp_done(&m);
    }
}

static void missing_and_repeated_fields(void **state)
{
    mp_t m;
    mp_init(&m);
    map(&m, 1);
    s(&m, "message");
    s(&m, "x");
    expect_payload_error(&m, "user_id: missing");

    mp_init(&m);
    map(&m, 1);
    s(&m, "user_id");
    i(&m, 1);
    expect_payload_error(&m, "message: missing");

    mp_init(&m);
    map(&m, 3);
    s(&m, "user_id");
    i(&m, 1);
    s(&m, "user_id");
    i(&m, 2);
    s(&m, "message");
    s(&m, "x");
    expect_payload_error(&m, "user_id: duplicate field");

    /* Not a map at all, and a map followed by more bytes. */
    mp_init(&m);
    msgpack_pack_array(&m.pk, 2);
    i(&m, 1);
    i(&m, 2);
    expect_payload_error(&m, "payload: must be a msgpack map");

    mp_init(&m);
    map(&m, 2);
    s(&m, "user_id");
    i(&m, 1);
    s(&m, "message");
    s(&m, "x");
    i(&m, 1);
    expect_payload_error(&m, "payload: unexpected bytes after the map");

    /* Unknown fields are refused before anything else is looked at. */
    mp_init(&m);
    map(&m, 2);
    s(&m, "user_id");
    s(&m, "bob");
    s(&m, "evil\n\x01key");
    i(&m, 1);
    expect_payload_error(&m, "evil??key: unknown field");
}

static void oversized_message(void **state)
{
    size_t n = RP_JOB_MESSAGE_MAX + 1;
    char *big = malloc(n);
    memset(big, 'a', n);
    mp_t m;
    mp_init(&m);
    map(&m, 2);
    s(&m, "user_id");
    i(&m, 1);
    s(&m, "message");
    msgpack_pack_str(&m.pk, n);
    msgpack_pack_str_body(&m.pk, big, n);
    free(big);
    expect_payload_error(&m, "message: must be 1 to 32768 bytes (got 32769)");
}

/* Hostile bytes: every prefix of a valid payload is refused, declared
 * lengths far beyond the buffer are refused without allocating, and so is
 * deep nesting, and the byte msgpack never uses. */
static void truncated_and_hostile_bytes(void **state)
{
    mp_t m;
    mp_init(&m);
    map(&m, 3);
    s(&m, "user_id");
    s(&m, UUID);
    s(&m, "message");
    s(&m, "What is TON?");
    s(&m, "options");
    map(&m, 1);
    s(&m, "temperature");
    msgpack_pack_double(&m.pk, 0.5);
    for (size_t cut = 0; cut < m.sb.size; cut++) {
        rp_chat_payload_t p;
        rp_err_t err;
        assert_int_equal(rp_chat_payload_decode_msgpack(m.sb.data, cut, &p, &err), RP_EINVAL);
        assert_null(p.user_id);
    }
    mp_done(&m);

#define B(x) x, sizeof(x) - 1
    static const struct {
        const char *bytes;
        size_t len;
        const char *want;
    } cases[] = {
        /* map32 claiming 4 billion pairs */
        {B("\xdf\xff\xff\xff\xff"), "payload: not valid msgpack (truncated)"},
        /* a str32 key claiming 4 GB */
        {B("\x81\xdb\xff\xff\xff\xff"
           "abc"),
         "payload: not valid msgpack (truncated)"},
        /* {"user_id": 1, "message": str32 of 4 GB} */
        {B("\x82\xa7user_id\x01\xa7message\xdb\xff\xff\xff\xf0xyz"),
         "message: not valid msgpack (truncated)"},
        /* {"options": array32 of 4 billion} */
        {B("\x81\xa7options\xdd\xff\xff\xff\xff\x01\x02"), "options: not valid msgpack"},
        /* the unused byte 0xc1 as a key */
        {B("\x81\xc1\x01"), "payload: not valid msgpack (truncated)"},
        /* an ext value as the message */
        {B("\x82\xa7user_id\x01\xa7message\xd4\x01\x02"), "message: must be a string"},
        /* empty input */
        {B(""), "payload: not valid msgpack (truncated)"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        rp_chat_payload_t p;
        rp_err_t err;
        int rc = rp_chat_payload_decode_msgpack(cases[k].bytes, cases[k].len, &p, &err);
        if (rc != RP_EINVAL || strstr(err.msg, cases[k].want) == NULL)
            fail_msg("case %zu: rc %d, '%s' does not contain '%s'", k, rc, err.msg, cases[k].want);
    }

    /* {"options": [[[[...]]]]} 1000 levels deep */
    size_t depth = 1000;
    char *deep = malloc(16 + depth + 1);
    size_t w = 0;
    memcpy(deep, "\x81\xa7options", 9);
    w = 9;
    for (size_t k = 0; k < depth; k++)
        deep[w++] = (char)0x91;
    deep[w++] = 0x01;
    rp_chat_payload_t p;
    rp_err_t err;
    assert_int_equal(rp_chat_payload_decode_msgpack(deep, w, &p, &err), RP_EINVAL);
    assert_non_null(strstr(err.msg, "options: nested too deeply"));
    free(deep);
}

/* ------------------------------------------------------------ envelope */

static void envelope_head(mp_t *m, size_t n, const char *id)
{
    mp_init(m);
    map(m, n);
    s(m, "id");
    s(m, id);
    s(m, "kind");
    s(m, "chat");
}

static void put_payload(mp_t *m)
{
    s(m, "payload");
    map(m, 3);
    s(m, "user_id");
    s(m, UUID);
    s(m, "message");
    s(m, "What is TON?");
    s(m, "options");
    map(m, 1);
    s(m, "match_count");
    i(m, 4);
}

static void envelope_round_trip(void **state)
{
    mp_t m;
    envelope_head(&m, 6, "1B4E28BA-2FA1-11D2-883F-0016D3CCA427");
    put_payload(&m);
    s(&m, "max_attempts");
    i(&m, 7);
    s(&m, "attempt");
    i(&m, 2);
    s(&m, "enqueued_at_ms");
    i(&m, 1732440662114LL);
    rp_job_envelope_t e;
    rp_err_t err;
    assert_int_equal(decode_env(&m, &e, &err), 0);
    assert_string_equal(e.id, JOB_ID); /* lower-cased */
    assert_string_equal(e.kind, "chat");
    assert_string_equal(e.payload.user_id, UUID);
    assert_string_equal(e.payload.message, "What is TON?");
    assert_int_equal(e.payload.match_count, 4);
    assert_int_equal(e.max_attempts, 7);
    assert_int_equal(e.attempt, 2);
    assert_true(e.enqueued_at_ms == 1732440662114LL);
    /* The raw payload is the payload map's own bytes. */
    assert_non_null(e.payload_raw);
    rp_chat_payload_t raw;
    assert_int_equal(rp_chat_payload_decode_msgpack(e.payload_raw, e.payload_raw_len, &raw, &err),
                     0);
    assert_string_equal(raw.message, "What is TON?");
    rp_chat_payload_free(&raw);
    mp_done(&m);

    size_t len = 0;
    char *buf = rp_job_envelope_encode_msgpack(&e, &len);
    assert_non_null(buf);
    rp_job_envelope_t f;
    assert_int_equal(rp_job_envelope_decode_msgpack(buf, len, &f, &err), 0);
    assert_string_equal(f.id, JOB_ID);
    assert_string_equal(f.payload.user_id, UUID);
    assert_int_equal(f.payload.match_count, 4);
    assert_int_equal(f.max_attempts, 7);
    assert_int_equal(f.attempt, 2);
    assert_true(f.enqueued_at_ms == 1732440662114LL);
    rp_job_envelope_free(&f);
    free(buf);
    rp_job_envelope_free(&e);
    rp_job_envelope_free(&e); /* safe twice */
}

static void envelope_defaults(void **state)
{
    mp_t m;
    envelope_head(&m, 3, JOB_ID);
    put_payload(&m);
    rp_job_envelope_t e;
    rp_err_t err;
    assert_int_equal(decode_env(&m, &e, &err), 0);
    assert_int_equal(e.max_attempts, RP_JOB_DEFAULT_MAX_ATTEMPTS);
    assert_int_equal(e.attempt, 0);
    assert_true(e.enqueued_at_ms == 0);
    rp_job_envelope_free(&e);
    mp_done(&m);
}

static void bad_envelopes_are_named(void **state)
{
    mp_t m;

    /* A bad payload still yields the id, for the dead letter. */
    envelope_head(&m, 3, JOB_ID);
    s(&m, "payload");
    map(&m, 2);
    s(&m, "user_id");
    s(&m, "bob");
    s(&m, "message");
    s(&m, "x");
    expect_env_error(&m, "payload.user_id: must be a uuid or an integer", JOB_ID);

    envelope_head(&m, 3, JOB_ID);
    s(&m, "payload");
    map(&m, 3);
    s(&m, "user_id");
    i(&m, 1);
    s(&m, "message");
    s(&m, "x");
    s(&m, "options");
    map(&m, 1);
    s(&m, "max_tokens");
    i(&m, 0);
    expect_env_error(&m, "payload.options.max_tokens: must be between 1 and 32768", JOB_ID);

    envelope_head(&m, 3, JOB_ID);
    s(&m, "payload");
    s(&m, "{\"user_id\":1}");
    expect_env_error(&m, "payload: must be a msgpack map", JOB_ID);

    envelope_head(&m, 2, JOB_ID);
    expect_env_error(&m, "payload: missing", JOB_ID);

    envelope_head(&m, 3, "not-a-uuid");
    put_payload(&m);
    expect_env_error(&m, "id: must be a uuid string", "");

    envelope_head(&m, 3, "1b4e28ba-2fa1-11d2-883f-0016d3cca42g");
    put_payload(&m);
    expect_env_error(&m, "id: must be a uuid string", "");

    mp_init(&m);
    map(&m, 2);
    s(&m, "kind");
    s(&m, "chat");
    put_payload(&m);
    expect_env_error(&m, "id: missing", "");

    mp_init(&m);
    map(&m, 3);
    s(&m, "id");
    s(&m, JOB_ID);
    s(&m, "kind");
    s(&m, "embed");
    put_payload(&m);
    expect_env_error(&m, "kind: unsupported", JOB_ID);

    mp_init(&m);
    map(&m, 3);
    s(&m, "id");
    s(&m, JOB_ID);
    s(&m, "kind");
    i(&m, 1);
    put_payload(&m);
    expect_env_error(&m, "kind: must be a string", JOB_ID);

    envelope_head(&m, 4, JOB_ID);
    put_payload(&m);
    s(&m, "max_attempts");
    i(&m, 0);
    expect_env_error(&m, "max_attempts: must be between 1 and 1000", JOB_ID);

    envelope_head(&m, 4, JOB_ID);
    put_payload(&m);
    s(&m, "max_attempts");
    s(&m, "5");
    expect_env_error(&m, "max_attempts: must be an integer", JOB_ID);

    envelope_head(&m, 4, JOB_ID);
    put_payload(&m);
    s(&m, "attempt");
    i(&m, -1);
    expect_env_error(&m, "attempt: must be between 0", JOB_ID);

    envelope_head(&m, 4, JOB_ID);
    put_payload(&m);
    s(&m, "enqueued_at_ms");
    msgpack_pack_double(&m.pk, 1.5);
    expect_env_error(&m, "enqueued_at_ms: must be an integer", JOB_ID);

    envelope_head(&m, 4, JOB_ID);
    put_payload(&m);
    s(&m, "priority");
    i(&m, 1);
    expect_env_error(&m, "priority: unknown field", "");

    envelope_head(&m, 4, JOB_ID);
    put_payload(&m);
    s(&m, "id");
    s(&m, JOB_ID);
    expect_env_error(&m, "id: duplicate field", "");

    envelope_head(&m, 4, JOB_ID);
    put_payload(&m);
    s(&m, "attempt");
    for (int k = 0; k < 40; k++)
        map(&m, 1), s(&m, "k");
    i(&m, 1);
    expect_env_error(&m, "attempt: nested too deeply", "");

    mp_init(&m);
    msgpack_pack_nil(&m.pk);
    expect_env_error(&m, "job: must be a msgpack map", "");
}

static void envelope_truncations(void **state)
{
    mp_t m;
    envelope_head(&m, 6, JOB_ID);
    put_payload(&m);
    s(&m, "max_attempts");
    i(&m, 5);
    s(&m, "attempt");
    i(&m, 0);
    s(&m, "enqueued_at_ms");
    i(&m, 1732440662114LL);
    for (size_t cut = 0; cut < m.sb.size; cut++) {
        rp_job_envelope_t e;
        rp_err_t err;
        assert_int_equal(rp_job_envelope_decode_msgpack(m.sb.data, cut, &e, &err), RP_EINVAL);
        assert_null(e.payload.user_id);
        rp_job_envelope_free(&e);
    }
    /* and one byte too many */
    char *more = malloc(m.sb.size + 1);
    memcpy(more, m.sb.data, m.sb.size);
    more[m.sb.size] = 0x01;
    rp_job_envelope_t e;
    rp_err_t err;
    assert_int_equal(rp_job_envelope_decode_msgpack(more, m.sb.size + 1, &e, &err), RP_EINVAL);
    assert_non_null(strstr(err.msg, "unexpected bytes"));
    free(more);
    mp_done(&m);
}

static void uuids(void **state)
{
    assert_true(rp_uuid_valid(JOB_ID));
    assert_true(rp_uuid_valid("1B4E28BA-2FA1-11D2-883F-0016D3CCA427"));
    assert_false(rp_uuid_valid("42"));
    assert_false(rp_uuid_valid("1b4e28ba2fa111d2883f0016d3cca427"));
    assert_false(rp_uuid_valid(""));
}

/* "noop" jobs (the queue benchmarks) carry no payload, or an empty map. */
static void noop_envelope(void **state)
{
    rp_job_envelope_t e;
    memset(&e, 0, sizeof(e));
    snprintf(e.id, sizeof(e.id), "%s", JOB_ID);
    snprintf(e.kind, sizeof(e.kind), "noop");
    e.max_attempts = 3;
    size_t len;
    char *buf = rp_job_envelope_encode_msgpack(&e, &len);
    assert_non_null(buf);
    rp_job_envelope_t d;
    rp_err_t err;
    assert_int_equal(rp_job_envelope_decode_msgpack(buf, len, &d, &err), 0);
    assert_string_equal(d.kind, "noop");
    assert_string_equal(d.id, JOB_ID);
    assert_int_equal(d.max_attempts, 3);
    assert_null(d.payload.user_id);
    rp_job_envelope_free(&d);
    free(buf);

    mp_t m;
    mp_init(&m);
    map(&m, 3);
    s(&m, "id");
    s(&m, JOB_ID);
    s(&m, "kind");
    s(&m, "noop");
    s(&m, "payload");
    map(&m, 1);
    s(&m, "user_id");
    s(&m, "1");
    expect_env_error(&m, "payload: must be an empty map", JOB_ID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(noop_envelope),
        cmocka_unit_test(minimal_payload),
        cmocka_unit_test(integer_user_id_options_and_round_trip),
        cmocka_unit_test(nil_options_mean_not_given),
        cmocka_unit_test(bad_payloads_are_named),
        cmocka_unit_test(missing_and_repeated_fields),
        cmocka_unit_test(oversized_message),
        cmocka_unit_test(truncated_and_hostile_bytes),
        cmocka_unit_test(envelope_round_trip),
        cmocka_unit_test(envelope_defaults),
        cmocka_unit_test(bad_envelopes_are_named),
        cmocka_unit_test(envelope_truncations),
        cmocka_unit_test(uuids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
