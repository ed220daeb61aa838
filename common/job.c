/*
 * job.c: decoding and validating job payloads.
 *
 * Everything in a payload comes from outside (an app, an edge function, a
 * SQL trigger), so each field is checked for type and range, unknown
 * top-level fields are refused (a typo should not be silently ignored), and
 * the first problem found is reported as "field: what is wrong".
 */
#include "job.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

int rp_user_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 36) {
        for (size_t i = 0; i < 36; i++) {
            int dash = (i == 8 || i == 13 || i == 18 || i == 23);
            if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
                return 0;
        }
        return 1;
    }
    if (n == 0 || n > 20)
        return 0;
    const char *p = s;
    if (*p == '-')
        p++;
    if (*p == '\0')
        return 0;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return 0;
    errno = 0;
    (void)strtoll(s, NULL, 10);
    return errno == 0;
}

static int get_int_option(json_t *opts, const char *name, long min, long max, int *out,
                          rp_err_t *err)
{
    json_t *v = json_object_get(opts, name);
    *out = -1;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return rp_err_set(err, RP_EINVAL, "options.%s: must be an integer", name);
    json_int_t i = json_integer_value(v);
    if (i < min || i > max)
        return rp_err_set(err, RP_EINVAL, "options.%s: must be between %ld and %ld", name, min,
                          max);
    *out = (int)i;
    return 0;
}

static int get_real_option(json_t *opts, const char *name, double min, double max, double *out,
                           rp_err_t *err)
{
    json_t *v = json_object_get(opts, name);
    *out = NAN;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return rp_err_set(err, RP_EINVAL, "options.%s: must be a number", name);
    double d = json_number_value(v);
    if (!(d >= min && d <= max))
        return rp_err_set(err, RP_EINVAL, "options.%s: must be between %g and %g", name, min, max);
    *out = d;
    return 0;
}

static int decode_options(json_t *opts, rp_chat_payload_t *out, rp_err_t *err)
{
    static const char *const known[] = {"match_count", "match_threshold", "history_count",
                                        "model",       "max_tokens",      "temperature"};
    const char *key;
    json_t *val;
    json_object_foreach(opts, key, val)
    {
        size_t i;
        for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            if (strcmp(key, known[i]) == 0)
                break;
        if (i == sizeof(known) / sizeof(known[0]))
            return rp_err_set(err, RP_EINVAL, "options.%.64s: unknown option", key);
    }
    int rc = get_int_option(opts, "match_count", 1, 50, &out->match_count, err);
    if (rc == 0)
        rc = get_real_option(opts, "match_threshold", -1, 1, &out->match_threshold, err);
    if (rc == 0)
        rc = get_int_option(opts, "history_count", 0, 50, &out->history_count, err);
    if (rc == 0)
        rc = get_int_option(opts, "max_tokens", 1, 32768, &out->max_tokens, err);
    if (rc == 0)
        rc = get_real_option(opts, "temperature", 0, 2, &out->temperature, err);
    if (rc != 0)
        return rc;
    json_t *model = json_object_get(opts, "model");
    if (model != NULL && !json_is_null(model)) {
        const char *m = json_string_value(model);
        if (m == NULL || m[0] == '\0' || strlen(m) > 200)
            return rp_err_set(err, RP_EINVAL, "options.model: must be a non-empty string");
        out->model = strdup(m);
        if (out->model == NULL)
            return rp_err_set(err, RP_ENOMEM, "out of memory");
    }
    return 0;
}

int rp_chat_payload_decode_json(const char *json, size_t len, rp_chat_payload_t *out, rp_err_t *err)
{
    memset(out, 0, sizeof(*out));
    out->match_count = out->history_count = out->max_tokens = -1;
    out->match_threshold = out->temperature = NAN;

    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return rp_err_set(err, RP_EINVAL, "payload: not valid JSON (%s)", jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = rp_err_set(err, RP_EINVAL, "payload: must be a JSON object");
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "user_id") != 0 && strcmp(key, "message") != 0 &&
            strcmp(key, "options") != 0) {
            rc = rp_err_set(err, RP_EINVAL, "%.64s: unknown field", key);
            goto out;
        }
    }

    json_t *uid = json_object_get(root, "user_id");
    char buf[32];
    const char *uid_text = NULL;
    if (json_is_string(uid)) {
        uid_text = json_string_value(uid);
    } else if (json_is_integer(uid)) {
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(uid));
        uid_text = buf;
    } else {
        rc = rp_err_set(err, RP_EINVAL, "user_id: %s",
                        uid == NULL ? "missing" : "must be a uuid or an integer");
        goto out;
    }
    if (!rp_user_id_valid(uid_text)) {
        rc = rp_err_set(err, RP_EINVAL, "user_id: must be a uuid or an integer");
        goto out;
    }

    json_t *msg = json_object_get(root, "message");
    if (!json_is_string(msg)) {
        rc =
            rp_err_set(err, RP_EINVAL, "message: %s", msg == NULL ? "missing" : "must be a string");
        goto out;
    }
    size_t mlen = json_string_length(msg);
    if (mlen == 0 || mlen > RP_JOB_MESSAGE_MAX) {
        rc = rp_err_set(err, RP_EINVAL, "message: must be 1 to %d bytes (got %zu)",
                        RP_JOB_MESSAGE_MAX, mlen);
        goto out;
    }
    if (memchr(json_string_value(msg), '\0', mlen) != NULL) {
        rc = rp_err_set(err, RP_EINVAL, "message: must not contain NUL characters");
        goto out;
    }

    json_t *opts = json_object_get(root, "options");
    if (opts != NULL && !json_is_null(opts)) {
        if (!json_is_object(opts)) {
            rc = rp_err_set(err, RP_EINVAL, "options: must be an object");
            goto out;
        }
        rc = decode_options(opts, out, err);
        if (rc != 0)
            goto out;
    }

    out->user_id = strdup(uid_text);
    out->message = strdup(json_string_value(msg));
    if (out->user_id == NULL || out->message == NULL)
        rc = rp_err_set(err, RP_ENOMEM, "out of memory");
out:
    json_decref(root);
    if (rc != 0)
        rp_chat_payload_free(out);
    return rc;
}

char *rp_chat_payload_encode_json(const rp_chat_payload_t *p)
{
    json_t *root = json_object();
    json_t *opts = json_object();
    if (root == NULL || opts == NULL) {
        json_decref(root);
        json_decref(opts);
        return NULL;
    }
    json_object_set_new(root, "user_id", json_string(p->user_id));
    json_object_set_new(root, "message", json_string(p->message));
    if (p->match_count >= 0)
        json_object_set_new(opts, "match_count", json_integer(p->match_count));
    if (!isnan(p->match_threshold))
        json_object_set_new(opts, "match_threshold", json_real(p->match_threshold));
    if (p->history_count >= 0)
        json_object_set_new(opts, "history_count", json_integer(p->history_count));
    if (p->model != NULL)
        json_object_set_new(opts, "model", json_string(p->model));
    if (p->max_tokens >= 0)
        json_object_set_new(opts, "max_tokens", json_integer(p->max_tokens));
    if (!isnan(p->temperature))
        json_object_set_new(opts, "temperature", json_real(p->temperature));
    json_object_set_new(root, "options", opts);
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

void rp_chat_payload_free(rp_chat_payload_t *p)
{
    free(p->user_id);
    free(p->message);
    free(p->model);
    p->user_id = p->message = p->model = NULL;
}

/* ------------------------------------------------------------------------
 * msgpack (the Redis queue).  Decoding walks the bytes with a cursor of our
 * own rather than msgpack-c's unpacker: the unpacker allocates an array or
 * map's element table from the declared count before reading it, so five
 * hostile bytes could ask for gigabytes.  Here every length is checked
 * against the bytes that are really there, nothing is allocated while
 * walking, and nesting is bounded.  Maps are read in two passes: the first
 * finds each known key's value (refusing unknown and repeated keys, skipping
 * values without recursion), the second decodes the values in a fixed
 * order, so the first problem reported does not depend on key order.
 * Encoding uses msgpack-c's packer.
 */

#include <msgpack.h>

#define MP_MAX_DEPTH 16 /* nesting allowed inside a value we skip */

typedef enum {
    MP_NIL = 0,
    MP_BOOL,
    MP_INT,  /* fits in int64 */
    MP_UBIG, /* unsigned above INT64_MAX */
    MP_FLOAT,
    MP_STR,
    MP_BIN,
    MP_ARRAY,
    MP_MAP,
    MP_EXT,
} mp_type_t;

typedef struct mp_val {
    mp_type_t type;
    int64_t i;
    double d;
    const char *s; /* MP_STR, MP_BIN, MP_EXT: the body */
    uint32_t n;    /* body length, or element/pair count */
} mp_val_t;

typedef struct mp_cur {
    const unsigned char *p, *end;
} mp_cur_t;

static int mp_need(const mp_cur_t *c, size_t n)
{
    return (size_t)(c->end - c->p) >= n;
}

static uint64_t mp_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Read one value's header; a string, binary or extension body is consumed
 * (after checking it is all there), an array's or map's elements are not.
 * Returns 0, or -1 when the bytes end early or hold the unused 0xc1. */
static int mp_read(mp_cur_t *c, mp_val_t *v)
{
    if (!mp_need(c, 1))
        return -1;
    unsigned b = *c->p++;
    memset(v, 0, sizeof(*v));
    size_t lenbytes = 0; /* bytes of a length that follows */
    size_t body = 0;     /* fixed body bytes (ext type byte included) */
    if (b <= 0x7f) {
        v->type = MP_INT;
        v->i = (int64_t)b;
        return 0;
    }
    if (b >= 0xe0) {
        v->type = MP_INT;
        v->i = (int64_t)(int8_t)(uint8_t)b;
        return 0;
    }
    if ((b & 0xf0) == 0x80 || (b & 0xf0) == 0x90) {
        v->type = (b & 0xf0) == 0x80 ? MP_MAP : MP_ARRAY;
        v->n = b & 0x0f;
        return 0;
    }
    if ((b & 0xe0) == 0xa0) {
        v->type = MP_STR;
        v->n = b & 0x1f;
        goto take_body;
    }
    switch (b) {
    case 0xc0:
        v->type = MP_NIL;
        return 0;
    case 0xc2:
    case 0xc3:
        v->type = MP_BOOL;
        v->i = b == 0xc3;
        return 0;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        v->type = MP_BIN;
        lenbytes = (size_t)1 << (b - 0xc4);
        break;
    case 0xc7:
    case 0xc8:
    case 0xc9:
        v->type = MP_EXT;
        lenbytes = (size_t)1 << (b - 0xc7);
        body = 1;
        break;
    case 0xca:
    case 0xcb: {
        int n = b == 0xca ? 4 : 8;
        if (!mp_need(c, (size_t)n))
            return -1;
        uint64_t raw = mp_be(c->p, n);
        c->p += n;
        v->type = MP_FLOAT;
        if (n == 4) {
            uint32_t r32 = (uint32_t)raw;
            float f;
            memcpy(&f, &r32, sizeof(f));
            v->d = f;
        } else {
            memcpy(&v->d, &raw, sizeof(v->d));
        }
        return 0;
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: {
        int n = 1 << (b - 0xcc);
        if (!mp_need(c, (size_t)n))
            return -1;
        uint64_t u = mp_be(c->p, n);
        c->p += n;
        if (u > (uint64_t)INT64_MAX) {
            v->type = MP_UBIG;
        } else {
            v->type = MP_INT;
            v->i = (int64_t)u;
        }
        return 0;
    }
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        int n = 1 << (b - 0xd0);
        if (!mp_need(c, (size_t)n))
            return -1;
        uint64_t u = mp_be(c->p, n);
        c->p += n;
        v->type = MP_INT;
        if (n == 1)
            v->i = (int8_t)(uint8_t)u;
        else if (n == 2)
            v->i = (int16_t)(uint16_t)u;
        else if (n == 4)
            v->i = (int32_t)(uint32_t)u;
        else
            v->i = (int64_t)u;
        return 0;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        v->type = MP_EXT;
        v->n = 1u << (b - 0xd4);
        body = 1;
        goto take_body;
    case 0xd9:
    case 0xda:
    case 0xdb:
        v->type = MP_STR;
        lenbytes = (size_t)1 << (b - 0xd9);
        break;
    case 0xdc:
    case 0xdd:
    case 0xde:
    case 0xdf: {
        int n = (b == 0xdc || b == 0xde) ? 2 : 4;
        if (!mp_need(c, (size_t)n))
            return -1;
        v->n = (uint32_t)mp_be(c->p, n);
        c->p += n;
        v->type = b <= 0xdd ? MP_ARRAY : MP_MAP;
        return 0;
    }
    default: /* 0xc1: never used */
        return -1;
    }
    if (!mp_need(c, lenbytes))
        return -1;
    v->n = (uint32_t)mp_be(c->p, (int)lenbytes);
    c->p += lenbytes;
take_body:
    if (!mp_need(c, (size_t)v->n + body))
        return -1;
    v->s = (const char *)c->p + body;
    c->p += (size_t)v->n + body;
    return 0;
}

/* Skip the elements of an array or map whose header v was just read.
 * Returns 0, -1 when the bytes end early, -2 when nested too deeply. */
static int mp_skip_children(mp_cur_t *c, const mp_val_t *v)
{
    uint64_t left[MP_MAX_DEPTH]; /* values still to skip at each level */
    int depth = 0;
    if (v->type != MP_ARRAY && v->type != MP_MAP)
        return 0;
    left[0] = v->type == MP_MAP ? 2 * (uint64_t)v->n : v->n;
    while (depth >= 0) {
        if (left[depth] == 0) {
            depth--;
            continue;
        }
        left[depth]--;
        mp_val_t e;
        if (mp_read(c, &e) != 0)
            return -1;
        if (e.type == MP_ARRAY || e.type == MP_MAP) {
            if (depth + 1 >= MP_MAX_DEPTH)
                return -2;
            left[++depth] = e.type == MP_MAP ? 2 * (uint64_t)e.n : e.n;
        }
    }
    return 0;
}

/* Valid UTF-8 without overlong forms, surrogates or code points past
 * U+10FFFF (what Postgres text accepts). */
int rp_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char ch = s[i];
        if (ch < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if (ch >= 0xc2 && ch <= 0xdf) {
            k = 1;
            cp = ch & 0x1f;
        } else if (ch >= 0xe0 && ch <= 0xef) {
            k = 2;
            cp = ch & 0x0f;
        } else if (ch >= 0xf0 && ch <= 0xf4) {
            k = 3;
            cp = ch & 0x07;
        } else {
            return 0;
        }
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* A key for an error message: at most 64 bytes, printable ASCII only. */
static void key_for_msg(char *out, size_t cap, const char *s, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n && w + 1 < cap && i < 64; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[w++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    out[w] = '\0';
}

/* Pass one over a map: for each of the n known names, the cursor position
 * of its value (NULL when absent).  c must be at the map's header; what is
 * a map is `what` in messages ("payload"), fields are named prefix+key.
 * unknown_msg is "unknown field" or "unknown option".  On success the
 * cursor is past the map. */
static int mp_map_fields(mp_cur_t *c, const char *what, const char *prefix,
                         const char *const *names, size_t n, const char *unknown_msg,
                         const unsigned char **at, rp_err_t *err)
{
    for (size_t i = 0; i < n; i++)
        at[i] = NULL;
    mp_val_t m;
    if (mp_read(c, &m) != 0)
        return rp_err_set(err, RP_EINVAL, "%s: not valid msgpack (truncated)", what);
    if (m.type != MP_MAP)
        return rp_err_set(err, RP_EINVAL, "%s: must be a msgpack map", what);
    for (uint32_t k = 0; k < m.n; k++) {
        mp_val_t key;
        if (mp_read(c, &key) != 0)
            return rp_err_set(err, RP_EINVAL, "%s: not valid msgpack (truncated)", what);
        if (key.type != MP_STR)
            return rp_err_set(err, RP_EINVAL, "%s: keys must be strings", what);
        char shown[72];
        key_for_msg(shown, sizeof(shown), key.s, key.n);
        size_t i;
        for (i = 0; i < n; i++)
            if (strlen(names[i]) == key.n && memcmp(names[i], key.s, key.n) == 0)
                break;
        if (i == n)
            return rp_err_set(err, RP_EINVAL, "%s%s: %s", prefix, shown, unknown_msg);
        if (at[i] != NULL)
            return rp_err_set(err, RP_EINVAL, "%s%s: duplicate field", prefix, shown);
        at[i] = c->p;
        mp_val_t val;
        if (mp_read(c, &val) != 0)
            return rp_err_set(err, RP_EINVAL, "%s%s: not valid msgpack (truncated)", prefix, shown);
        int rc = mp_skip_children(c, &val);
        if (rc == -1)
            return rp_err_set(err, RP_EINVAL, "%s%s: not valid msgpack (truncated)", prefix, shown);
        if (rc == -2)
            return rp_err_set(err, RP_EINVAL, "%s%s: nested too deeply", prefix, shown);
    }
    return 0;
}

/* Read the value at `at` (from pass one; the map was fully walked, so the
 * read cannot run past the end). */
static void mp_value_at(const unsigned char *at, const unsigned char *end, mp_val_t *v)
{
    mp_cur_t c = {at, end};
    if (mp_read(&c, v) != 0)
        v->type = MP_NIL; /* unreachable: pass one read it already */
}

static int mp_int_option(const unsigned char *at, const unsigned char *end, const char *prefix,
                         const char *name, long min, long max, int *out, rp_err_t *err)
{
    *out = -1;
    if (at == NULL)
        return 0;
    mp_val_t v;
    mp_value_at(at, end, &v);
    if (v.type == MP_NIL)
        return 0;
    if (v.type != MP_INT && v.type != MP_UBIG)
        return rp_err_set(err, RP_EINVAL, "%soptions.%s: must be an integer", prefix, name);
    if (v.type == MP_UBIG || v.i < min || v.i > max)
        return rp_err_set(err, RP_EINVAL, "%soptions.%s: must be between %ld and %ld", prefix, name,
                          min, max);
    *out = (int)v.i;
    return 0;
}

static int mp_real_option(const unsigned char *at, const unsigned char *end, const char *prefix,
                          const char *name, double min, double max, double *out, rp_err_t *err)
{
    *out = NAN;
    if (at == NULL)
        return 0;
    mp_val_t v;
    mp_value_at(at, end, &v);
    if (v.type == MP_NIL)
        return 0;
    double d;
    if (v.type == MP_INT)
        d = (double)v.i;
    else if (v.type == MP_UBIG)
        d = 1e19;
    else if (v.type == MP_FLOAT)
        d = v.d;
    else
        return rp_err_set(err, RP_EINVAL, "%soptions.%s: must be a number", prefix, name);
    if (!(d >= min && d <= max))
        return rp_err_set(err, RP_EINVAL, "%soptions.%s: must be between %g and %g", prefix, name,
                          min, max);
    *out = d;
    return 0;
}

/* Decode a chat payload map at the cursor; fields are named prefix+name. */
static int mp_decode_chat(mp_cur_t *c, const char *what, const char *prefix, rp_chat_payload_t *out,
                          rp_err_t *err)
{
    static const char *const fields[] = {"user_id", "message", "options"};
    static const char *const known[] = {"match_count", "match_threshold", "history_count",
                                        "model",       "max_tokens",      "temperature"};
    const unsigned char *at[3], *opt_at[6];
    memset(out, 0, sizeof(*out));
    out->match_count = out->history_count = out->max_tokens = -1;
    out->match_threshold = out->temperature = NAN;

    int rc = mp_map_fields(c, what, prefix, fields, 3, "unknown field", at, err);
    if (rc != 0)
        return rc;
    const unsigned char *end = c->p;

    /* user_id: a string or an integer */
    char uid[RP_JOB_USER_ID_MAX + 8];
    const char *uid_text = NULL;
    size_t uid_len = 0;
    mp_val_t v;
    if (at[0] == NULL)
        return rp_err_set(err, RP_EINVAL, "%suser_id: missing", prefix);
    mp_value_at(at[0], end, &v);
    if (v.type == MP_INT) {
        snprintf(uid, sizeof(uid), "%" PRId64, v.i);
        uid_text = uid;
        uid_len = strlen(uid);
    } else if (v.type == MP_STR && v.n <= RP_JOB_USER_ID_MAX && memchr(v.s, '\0', v.n) == NULL) {
        memcpy(uid, v.s, v.n);
        uid[v.n] = '\0';
        uid_text = uid;
        uid_len = v.n;
    }
    if (uid_text == NULL || !rp_user_id_valid(uid_text))
        return rp_err_set(err, RP_EINVAL, "%suser_id: must be a uuid or an integer", prefix);

    /* message */
    if (at[1] == NULL)
        return rp_err_set(err, RP_EINVAL, "%smessage: missing", prefix);
    mp_value_at(at[1], end, &v);
    if (v.type != MP_STR)
        return rp_err_set(err, RP_EINVAL, "%smessage: must be a string", prefix);
    if (v.n == 0 || v.n > RP_JOB_MESSAGE_MAX)
        return rp_err_set(err, RP_EINVAL, "%smessage: must be 1 to %d bytes (got %u)", prefix,
                          RP_JOB_MESSAGE_MAX, (unsigned)v.n);
    if (memchr(v.s, '\0', v.n) != NULL)
        return rp_err_set(err, RP_EINVAL, "%smessage: must not contain NUL characters", prefix);
    if (!rp_utf8_valid(v.s, v.n))
        return rp_err_set(err, RP_EINVAL, "%smessage: must be valid UTF-8", prefix);
    const char *msg = v.s;
    size_t msg_len = v.n;

    /* options */
    if (at[2] != NULL) {
        mp_value_at(at[2], end, &v);
        if (v.type != MP_NIL) {
            char owhat[32];
            snprintf(owhat, sizeof(owhat), "%soptions", prefix);
            if (v.type != MP_MAP)
                return rp_err_set(err, RP_EINVAL, "%s: must be an object", owhat);
            mp_cur_t oc = {at[2], end};
            char oprefix[40];
            snprintf(oprefix, sizeof(oprefix), "%soptions.", prefix);
            rc = mp_map_fields(&oc, owhat, oprefix, known, 6, "unknown option", opt_at, err);
            if (rc != 0)
                return rc;
            const unsigned char *oend = oc.p;
            rc = mp_int_option(opt_at[0], oend, prefix, "match_count", 1, 50, &out->match_count,
                               err);
            if (rc == 0)
                rc = mp_real_option(opt_at[1], oend, prefix, "match_threshold", -1, 1,
                                    &out->match_threshold, err);
            if (rc == 0)
                rc = mp_int_option(opt_at[2], oend, prefix, "history_count", 0, 50,
                                   &out->history_count, err);
            if (rc == 0)
                rc = mp_int_option(opt_at[4], oend, prefix, "max_tokens", 1, 32768,
                                   &out->max_tokens, err);
            if (rc == 0)
                rc = mp_real_option(opt_at[5], oend, prefix, "temperature", 0, 2, &out->temperature,
                                    err);
            if (rc != 0)
                return rc;
            if (opt_at[3] != NULL) {
                mp_value_at(opt_at[3], oend, &v);
                if (v.type != MP_NIL) {
                    if (v.type != MP_STR || v.n == 0 || v.n > 200 ||
                        memchr(v.s, '\0', v.n) != NULL || !rp_utf8_valid(v.s, v.n))
                        return rp_err_set(err, RP_EINVAL,
                                          "%soptions.model: must be a non-empty string", prefix);
                    out->model = strndup(v.s, v.n);
                    if (out->model == NULL)
                        return rp_err_set(err, RP_ENOMEM, "out of memory");
                }
            }
        }
    }
    out->user_id = strndup(uid_text, uid_len);
    out->message = strndup(msg, msg_len);
    if (out->user_id == NULL || out->message == NULL)
        return rp_err_set(err, RP_ENOMEM, "out of memory");
    return 0;
}

int rp_chat_payload_decode_msgpack(const char *buf, size_t len, rp_chat_payload_t *out,
                                   rp_err_t *err)
{
    mp_cur_t c = {(const unsigned char *)buf, (const unsigned char *)buf + len};
    int rc = mp_decode_chat(&c, "payload", "", out, err);
    if (rc == 0 && c.p != c.end)
        rc = rp_err_set(err, RP_EINVAL, "payload: unexpected bytes after the map");
    if (rc != 0)
        rp_chat_payload_free(out);
    return rc;
}

int rp_uuid_valid(const char *s)
{
    return strlen(s) == RP_JOB_ID_LEN && rp_user_id_valid(s);
}

/* An optional integer field of the envelope. */
static int mp_env_int(const unsigned char *at, const unsigned char *end, const char *name,
                      int64_t min, int64_t max, int64_t dflt, int64_t *out, rp_err_t *err)
{
    *out = dflt;
    if (at == NULL)
        return 0;
    mp_val_t v;
    mp_value_at(at, end, &v);
    if (v.type == MP_NIL)
        return 0;
    if (v.type != MP_INT && v.type != MP_UBIG)
        return rp_err_set(err, RP_EINVAL, "%s: must be an integer", name);
    if (v.type == MP_UBIG || v.i < min || v.i > max)
        return rp_err_set(err, RP_EINVAL, "%s: must be between %" PRId64 " and %" PRId64, name, min,
                          max);
    *out = v.i;
    return 0;
}

int rp_job_envelope_decode_msgpack(const char *buf, size_t len, rp_job_envelope_t *out,
                                   rp_err_t *err)
{
    static const char *const fields[] = {"id",           "kind",    "payload",
                                         "max_attempts", "attempt", "enqueued_at_ms"};
    const unsigned char *at[6];
    memset(out, 0, sizeof(*out));
    out->payload.match_count = out->payload.history_count = out->payload.max_tokens = -1;
    out->payload.match_threshold = out->payload.temperature = NAN;
    out->max_attempts = RP_JOB_DEFAULT_MAX_ATTEMPTS;

    mp_cur_t c = {(const unsigned char *)buf, (const unsigned char *)buf + len};
    int rc = mp_map_fields(&c, "job", "", fields, 6, "unknown field", at, err);
    if (rc != 0)
        return rc;
    if (c.p != c.end)
        return rp_err_set(err, RP_EINVAL, "job: unexpected bytes after the map");
    const unsigned char *end = c.p;
    mp_val_t v;

    if (at[0] == NULL)
        return rp_err_set(err, RP_EINVAL, "id: missing");
    mp_value_at(at[0], end, &v);
    if (v.type != MP_STR || v.n != RP_JOB_ID_LEN)
        return rp_err_set(err, RP_EINVAL, "id: must be a uuid string");
    char id[RP_JOB_ID_LEN + 1];
    memcpy(id, v.s, RP_JOB_ID_LEN);
    id[RP_JOB_ID_LEN] = '\0';
    if (!rp_uuid_valid(id))
        return rp_err_set(err, RP_EINVAL, "id: must be a uuid string");
    for (int i = 0; i < RP_JOB_ID_LEN; i++)
        id[i] = (char)tolower((unsigned char)id[i]);
    memcpy(out->id, id, sizeof(id));

    if (at[1] == NULL)
        return rp_err_set(err, RP_EINVAL, "kind: missing");
    mp_value_at(at[1], end, &v);
    if (v.type != MP_STR)
        return rp_err_set(err, RP_EINVAL, "kind: must be a string");
    int noop = v.n == 4 && memcmp(v.s, "noop", 4) == 0;
    if (!noop && (v.n != 4 || memcmp(v.s, "chat", 4) != 0))
        return rp_err_set(err, RP_EINVAL,
                          "kind: unsupported (the kinds are \"chat\" and \"noop\")");
    memcpy(out->kind, noop ? "noop" : "chat", 5);

    int64_t x;
    if ((rc = mp_env_int(at[3], end, "max_attempts", 1, RP_JOB_MAX_ATTEMPTS_MAX,
                         RP_JOB_DEFAULT_MAX_ATTEMPTS, &x, err)) != 0)
        return rc;
    out->max_attempts = (int)x;
    if ((rc = mp_env_int(at[4], end, "attempt", 0, RP_JOB_MAX_ATTEMPTS_MAX, 0, &x, err)) != 0)
        return rc;
    out->attempt = (int)x;
    if ((rc = mp_env_int(at[5], end, "enqueued_at_ms", 0, INT64_MAX, 0, &x, err)) != 0)
        return rc;
    out->enqueued_at_ms = x;

    if (noop) {
        /* A job with no work (the queue benchmarks): no payload, or {}. */
        if (at[2] != NULL && *at[2] != 0x80)
            return rp_err_set(err, RP_EINVAL, "payload: must be an empty map for kind \"noop\"");
        out->payload_raw = at[2] != NULL ? (const char *)at[2] : NULL;
        out->payload_raw_len = at[2] != NULL ? 1 : 0;
        return 0;
    }
    if (at[2] == NULL)
        return rp_err_set(err, RP_EINVAL, "payload: missing");
    mp_cur_t pc = {at[2], end};
    rc = mp_decode_chat(&pc, "payload", "payload.", &out->payload, err);
    if (rc != 0) {
        rp_chat_payload_free(&out->payload);
        return rc;
    }
    out->payload_raw = (const char *)at[2];
    out->payload_raw_len = (size_t)(pc.p - at[2]);
    return 0;
}

static int mp_pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) | msgpack_pack_str_body(pk, s, n);
}

static int mp_pack_chat(msgpack_packer *pk, const rp_chat_payload_t *p)
{
    int rc = msgpack_pack_map(pk, 3);
    rc |= mp_pack_cstr(pk, "user_id") | mp_pack_cstr(pk, p->user_id ? p->user_id : "");
    rc |= mp_pack_cstr(pk, "message") | mp_pack_cstr(pk, p->message ? p->message : "");
    size_t nopts = (p->match_count >= 0) + !isnan(p->match_threshold) + (p->history_count >= 0) +
                   (p->model != NULL) + (p->max_tokens >= 0) + !isnan(p->temperature);
    rc |= mp_pack_cstr(pk, "options") | msgpack_pack_map(pk, nopts);
    if (p->match_count >= 0)
        rc |= mp_pack_cstr(pk, "match_count") | msgpack_pack_int(pk, p->match_count);
    if (!isnan(p->match_threshold))
        rc |= mp_pack_cstr(pk, "match_threshold") | msgpack_pack_double(pk, p->match_threshold);
    if (p->history_count >= 0)
        rc |= mp_pack_cstr(pk, "history_count") | msgpack_pack_int(pk, p->history_count);
    if (p->model != NULL)
        rc |= mp_pack_cstr(pk, "model") | mp_pack_cstr(pk, p->model);
    if (p->max_tokens >= 0)
        rc |= mp_pack_cstr(pk, "max_tokens") | msgpack_pack_int(pk, p->max_tokens);
    if (!isnan(p->temperature))
        rc |= mp_pack_cstr(pk, "temperature") | msgpack_pack_double(pk, p->temperature);
    return rc;
}

/* The packer writes into an rp_buf_t sized for a usual job: the library's
 * own buffer starts at 8 KiB, which a job waiting in a batch would hold. */
static int mp_write(void *data, const char *buf, size_t len)
{
    rp_buf_append(data, buf, len);
    return rp_buf_failed(data) ? -1 : 0;
}

static void mp_start(rp_buf_t *b, msgpack_packer *pk)
{
    (void)rp_buf_reserve(b, 256);
    msgpack_packer_init(pk, b, mp_write);
}

static char *mp_finish(rp_buf_t *b, int rc, size_t *len)
{
    if (rc != 0 || rp_buf_failed(b) || b->data == NULL) {
        rp_buf_free(b);
        return NULL;
    }
    return rp_buf_take(b, len);
}

char *rp_chat_payload_encode_msgpack(const rp_chat_payload_t *p, size_t *len)
{
    rp_buf_t sb = RP_BUF_INIT;
    msgpack_packer pk;
    mp_start(&sb, &pk);
    int rc = mp_pack_chat(&pk, p);
    return mp_finish(&sb, rc, len);
}

char *rp_job_envelope_encode_msgpack(const rp_job_envelope_t *e, size_t *len)
{
    rp_buf_t sb = RP_BUF_INIT;
    msgpack_packer pk;
    mp_start(&sb, &pk);
    int rc = msgpack_pack_map(&pk, 6);
    rc |= mp_pack_cstr(&pk, "id") | mp_pack_cstr(&pk, e->id);
    rc |= mp_pack_cstr(&pk, "kind") | mp_pack_cstr(&pk, e->kind[0] ? e->kind : "chat");
    if (strcmp(e->kind, "noop") == 0)
        rc |= mp_pack_cstr(&pk, "payload") | msgpack_pack_map(&pk, 0);
    else
        rc |= mp_pack_cstr(&pk, "payload") | mp_pack_chat(&pk, &e->payload);
    rc |= mp_pack_cstr(&pk, "max_attempts") | msgpack_pack_int(&pk, e->max_attempts);
    rc |= mp_pack_cstr(&pk, "attempt") | msgpack_pack_int(&pk, e->attempt);
    rc |= mp_pack_cstr(&pk, "enqueued_at_ms") | msgpack_pack_int64(&pk, e->enqueued_at_ms);
    return mp_finish(&sb, rc, len);
}

void rp_job_envelope_free(rp_job_envelope_t *e)
{
    rp_chat_payload_free(&e->payload);
    e->payload_raw = NULL;
    e->payload_raw_len = 0;
}
