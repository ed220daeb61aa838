/*
 * request.c: chat body validation and the small header parsers of the
 * dispatcher (see request.h).
 *
 * Validation collects every problem rather than stopping at the first, so a
 * client fixing a request sees the whole list at once; the list is bounded
 * (MAX_PROBLEMS names, each cut to 64 bytes) so a hostile body cannot make
 * the answer large.
 */
#include "request.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"

#define MAX_PROBLEMS 16

typedef struct problems {
    rp_buf_t msg;    /* "a: why; b: why" */
    rp_buf_t fields; /* ["a","b"] without the brackets */
    int n;
    int more;
} problems_t;

static void problem(problems_t *p, const char *prefix, const char *field, const char *why)
{
    if (p->n == MAX_PROBLEMS) {
        p->more = 1;
        return;
    }
    char name[160];
    snprintf(name, sizeof(name), "%s%.64s", prefix, field);
    if (p->n > 0) {
        rp_buf_puts(&p->msg, "; ");
        rp_buf_putc(&p->fields, ',');
    }
    rp_buf_puts(&p->msg, name);
    rp_buf_puts(&p->msg, ": ");
    rp_buf_puts(&p->msg, why);
    rp_buf_putc(&p->fields, '"');
    rp_buf_json_escape(&p->fields, name, strlen(name));
    rp_buf_putc(&p->fields, '"');
    p->n++;
}

void rp_error_json(rp_buf_t *out, const char *code, const char *message, const char *fields)
{
    rp_buf_puts(out, "{\"error\":{\"code\":\"");
    rp_buf_json_escape(out, code, strlen(code));
    rp_buf_puts(out, "\",\"message\":\"");
    rp_buf_json_escape(out, message, strlen(message));
    rp_buf_putc(out, '"');
    if (fields != NULL) {
        rp_buf_puts(out, ",\"fields\":");
        rp_buf_puts(out, fields);
    }
    rp_buf_puts(out, "}}");
}

static void check_int(problems_t *p, json_t *v, const char *name, json_int_t min, json_int_t max)
{
    char why[96];
    if (!json_is_integer(v)) {
        problem(p, "options.", name, "must be an integer");
    } else if (json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(why, sizeof(why), "must be between %lld and %lld", (long long)min, (long long)max);
        problem(p, "options.", name, why);
    }
}

static void check_real(problems_t *p, json_t *v, const char *name, double min, double max)
{
    char why[96];
    if (!json_is_number(v)) {
        problem(p, "options.", name, "must be a number");
    } else {
        double d = json_number_value(v);
        if (!(d >= min && d <= max)) {
            snprintf(why, sizeof(why), "must be between %g and %g", min, max);
            problem(p, "options.", name, why);
        }
    }
}

static void check_options(problems_t *p, json_t *opts)
{
    const char *key;
    json_t *v;
    json_object_foreach(opts, key, v)
    {
        if (json_is_null(v))
            continue; /* "not given" (dropped from the job) */
        if (strcmp(key, "match_count") == 0)
            check_int(p, v, key, 1, 50);
        else if (strcmp(key, "history_count") == 0)
            check_int(p, v, key, 0, 50);
        else if (strcmp(key, "max_tokens") == 0)
            check_int(p, v, key, 1, 32768);
        else if (strcmp(key, "match_threshold") == 0)
            check_real(p, v, key, -1, 1);
        else if (strcmp(key, "temperature") == 0)
            check_real(p, v, key, 0, 2);
        else if (strcmp(key, "model") == 0) {
            const char *m = json_string_value(v);
            if (m == NULL || m[0] == '\0' || strlen(m) > 200)
                problem(p, "options.", key, "must be a string of 1 to 200 bytes");
        } else {
            problem(p, "options.", key, "unknown option");
        }
    }
}

/* ------------------------------------------------------------------ */
/* the common body, without a tree                                     */

/* Almost every chat body is {"message":"...","conversation_id":"..."}
 * with plain strings.  simple_body takes exactly such bodies -- an object
 * whose keys are "message" (required) and "conversation_id" (a string or
 * null), each at most once, string values without backslashes or control
 * characters, valid UTF-8, within the length limits, JSON whitespace
 * anywhere between tokens and nothing after the object -- and fills out
 * the way the general path would.  Anything else, valid or not, returns 1
 * and goes to rp_chat_request_parse_json, which alone decides errors: the
 * answers are the same either way (test_request.c compares the two on
 * generated bodies), only cheaper: no jansson tree, one copy per field. */

typedef struct span {
    const char *p;
    size_t n;
} span_t;

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* A string without escapes or control characters at *pp (after the
 * opening quote is checked); moves *pp past the closing quote. */
static int plain_string(const char **pp, const char *end, span_t *out)
{
    const char *p = *pp;
    if (p >= end || *p != '"')
        return -1;
    const char *start = ++p;
    while (p < end && *p != '"') {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c == '\\')
            return -1;
        p++;
    }
    if (p >= end)
        return -1;
    out->p = start;
    out->n = (size_t)(p - start);
    *pp = p + 1;
    return 0;
}

static int simple_body(const char *body, size_t len, rp_chat_request_t *out)
{
    const char *p = body, *end = body + len;
    span_t msg = {NULL, 0}, conv = {NULL, 0};
    int have_msg = 0, have_conv = 0;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{')
        return 1;
    for (;;) {
        span_t key, val;
        p = skip_ws(p, end);
        if (plain_string(&p, end, &key) < 0)
            return 1;
        p = skip_ws(p, end);
        if (p >= end || *p++ != ':')
            return 1;
        p = skip_ws(p, end);
        if (key.n == 7 && memcmp(key.p, "message", 7) == 0 && !have_msg) {
            if (plain_string(&p, end, &val) < 0)
                return 1;
            msg = val;
            have_msg = 1;
        } else if (key.n == 15 && memcmp(key.p, "conversation_id", 15) == 0 && !have_conv) {
            if ((size_t)(end - p) >= 4 && memcmp(p, "null", 4) == 0) {
                p += 4;
                conv.p = NULL;
            } else if (plain_string(&p, end, &val) < 0) {
                return 1;
            } else {
                conv = val;
            }
            have_conv = 1;
        } else {
            return 1;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == '}') {
            p++;
            break;
        }
        return 1;
    }
    if (skip_ws(p, end) != end || !have_msg || msg.n == 0 || msg.n > RP_CHAT_MESSAGE_MAX ||
        !rp_utf8_valid(msg.p, msg.n))
        return 1;
    if (conv.p != NULL &&
        (conv.n == 0 || conv.n > RP_CONVERSATION_ID_MAX || !rp_utf8_valid(conv.p, conv.n)))
        return 1;
    out->message = strndup(msg.p, msg.n);
    if (out->message == NULL)
        return RP_ENOMEM;
    if (conv.p != NULL) {
        out->conversation_id = strndup(conv.p, conv.n);
        if (out->conversation_id == NULL) {
            rp_chat_request_free(out);
            return RP_ENOMEM;
        }
    }
    return 0;
}

int rp_chat_request_parse(const char *body, size_t len, rp_chat_request_t *out, rp_buf_t *errbody)
{
    memset(out, 0, sizeof(*out));
    int rc = simple_body(body, len, out);
    return rc <= 0 ? rc : rp_chat_request_parse_json(body, len, out, errbody);
}

/* ------------------------------------------------------------------ */
/* every body, through jansson                                          */

int rp_chat_request_parse_json(const char *body, size_t len, rp_chat_request_t *out,
                               rp_buf_t *errbody)
{
    problems_t p = {RP_BUF_INIT, RP_BUF_INIT, 0, 0};
    json_error_t jerr;
    int rc;
    memset(out, 0, sizeof(*out));
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        char msg[256];
        snprintf(msg, sizeof(msg), "the body is not valid JSON: %.160s", jerr.text);
        rp_error_json(errbody, "malformed_json", msg, NULL);
        return 400;
    }
    if (!json_is_object(root)) {
        rp_error_json(errbody, "invalid_request", "the body must be a JSON object", "[]");
        rc = 422;
        goto out;
    }
    json_t *msg = NULL, *conv = NULL, *opts = NULL;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "message") == 0)
            msg = v;
        else if (strcmp(key, "conversation_id") == 0)
            conv = v;
        else if (strcmp(key, "options") == 0)
            opts = v;
        else
            problem(&p, "", key, "unknown field");
    }
    if (msg == NULL) {
        problem(&p, "", "message", "required");
    } else if (!json_is_string(msg)) {
        problem(&p, "", "message", "must be a string");
    } else if (json_string_length(msg) == 0 || json_string_length(msg) > RP_CHAT_MESSAGE_MAX) {
        problem(&p, "", "message", "must be 1 to 32768 bytes");
    }
    if (conv != NULL && !json_is_null(conv)) {
        if (!json_is_string(conv) || json_string_length(conv) == 0 ||
            json_string_length(conv) > RP_CONVERSATION_ID_MAX)
            problem(&p, "", "conversation_id", "must be a string of 1 to 128 bytes");
    }
    if (opts != NULL && !json_is_null(opts)) {
        if (!json_is_object(opts))
            problem(&p, "", "options", "must be an object");
        else
            check_options(&p, opts);
    }
    if (p.n > 0) {
        if (p.more)
            rp_buf_puts(&p.msg, "; ...");
        rp_buf_t fields = RP_BUF_INIT;
        rp_buf_putc(&fields, '[');
        if (p.fields.data != NULL)
            rp_buf_puts(&fields, p.fields.data);
        rp_buf_putc(&fields, ']');
        rp_error_json(errbody, "invalid_fields", p.msg.data != NULL ? p.msg.data : "",
                      fields.data != NULL ? fields.data : "[]");
        rp_buf_free(&fields);
        rc = 422;
        goto out;
    }

    out->message = strdup(json_string_value(msg));
    if (out->message == NULL)
        goto nomem;
    if (conv != NULL && json_is_string(conv)) {
        out->conversation_id = strdup(json_string_value(conv));
        if (out->conversation_id == NULL)
            goto nomem;
    }
    if (opts != NULL && json_is_object(opts) && json_object_size(opts) > 0) {
        /* Only the options actually given: nulls mean "default". */
        json_t *clean = json_object();
        if (clean == NULL)
            goto nomem;
        json_object_foreach(opts, key, v)
        {
            if (!json_is_null(v) && json_object_set(clean, key, v) != 0) {
                json_decref(clean);
                goto nomem;
            }
        }
        out->options_json = json_dumps(clean, JSON_COMPACT);
        json_decref(clean);
        if (out->options_json == NULL)
            goto nomem;
    }
    rc = 0;
    goto out;
nomem:
    rp_chat_request_free(out);
    rc = RP_ENOMEM;
out:
    rp_buf_free(&p.msg);
    rp_buf_free(&p.fields);
    json_decref(root);
    return rc;
}

void rp_chat_request_free(rp_chat_request_t *r)
{
    free(r->message);
    free(r->conversation_id);
    free(r->options_json);
    memset(r, 0, sizeof(*r));
}

int rp_bearer_token(const char *value, const char **tok, size_t *len)
{
    if (value == NULL)
        return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (strncasecmp(value, "Bearer", 6) != 0 || (value[6] != ' ' && value[6] != '\t'))
        return -1;
    const char *p = value + 7;
    while (*p == ' ' || *p == '\t')
        p++;
    /* The token runs to the first blank; only blanks may follow it.
     * (strcspn and strspn scan a word at a time: this runs per request.) */
    size_t n = strcspn(p, " \t");
    if (n == 0 || p[n + strspn(p + n, " \t")] != '\0')
        return -1;
    *tok = p;
    *len = n;
    return 0;
}

int rp_content_type_is_json(const char *value)
{
    if (value == NULL)
        return 0;
    while (*value == ' ')
        value++;
    if (strncasecmp(value, "application/json", 16) != 0)
        return 0;
    const char *rest = value + 16;
    while (*rest == ' ')
        rest++;
    return *rest == '\0' || *rest == ';';
}

int rp_idempotency_key_valid(const char *key)
{
    size_t n = key != NULL ? strlen(key) : 0;
    if (n == 0 || n > RP_IDEMPOTENCY_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e)
            return 0;
    return 1;
}

int rp_idempotency_job_id(const char *user_id, const char *key, char out[37])
{
    /* ragpool's namespace for idempotency keys (a fixed random UUID). */
    static const unsigned char ns[16] = {0x6f, 0x1c, 0x2a, 0x8e, 0x53, 0x0b, 0x4d, 0x8a,
                                         0x9e, 0x27, 0xb4, 0x61, 0x3c, 0xd0, 0x75, 0x19};
    if (!rp_idempotency_key_valid(key))
        return RP_EINVAL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, ns, sizeof(ns)) == 1 &&
             EVP_DigestUpdate(ctx, user_id, strlen(user_id)) == 1 &&
             /* a separator no user id contains, so ("a","bc") != ("ab","c") */
             EVP_DigestUpdate(ctx, "\n", 1) == 1 && EVP_DigestUpdate(ctx, key, strlen(key)) == 1 &&
             EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen >= 16;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return RP_ENOMEM;
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x50); /* version 5 */
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[md[i] >> 4];
        out[o++] = hex[md[i] & 15];
    }
    out[o] = '\0';
    return 0;
}
