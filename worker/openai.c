/*
 * openai.c: OpenAI-compatible request bodies and response parsing.
 *
 * Request bodies are written directly into a buffer (the prompt can be
 * kilobytes; building a jansson tree and dumping it would copy it twice).
 * Responses are parsed with jansson and checked field by field.
 */
#include "openai.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "vec.h"

#define MAX_DIMS 65536

char *rp_openai_embed_request(const char *model, const char *const *inputs, size_t n, long dims,
                              int base64, size_t *len)
{
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_puts(&b, "{\"model\":\"");
    rp_buf_json_escape(&b, model, strlen(model));
    rp_buf_puts(&b, "\",\"input\":[");
    for (size_t i = 0; i < n; i++) {
        rp_buf_puts(&b, i ? ",\"" : "\"");
        rp_buf_json_escape(&b, inputs[i], strlen(inputs[i]));
        rp_buf_putc(&b, '"');
    }
    rp_buf_putc(&b, ']');
    if (dims > 0)
        rp_buf_printf(&b, ",\"dimensions\":%ld", dims);
    rp_buf_puts(&b,
                base64 ? ",\"encoding_format\":\"base64\"}" : ",\"encoding_format\":\"float\"}");
    return rp_buf_take(&b, len);
}

static long usage_field(json_t *root, const char *name)
{
    json_t *v = json_object_get(json_object_get(root, "usage"), name);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (long)json_integer_value(v) : -1;
}

/*
 * The embeddings response is parsed by a small strict scanner rather than
 * jansson: a batch answer is mostly base64 text (about 2 KB per question at
 * 384 dimensions), and building a jansson tree of it cost ~60 us per
 * question -- a third of the worker's CPU per chat job.  The scanner still
 * validates the whole document (RFC 8259 syntax, depth limit, nothing after
 * the value) but materialises only data[].index, data[].embedding and
 * usage.prompt_tokens, decoding each embedding straight into the result.
 */
#define SCAN_MAX_DEPTH 64

typedef struct scan {
    const char *p, *end;
    int depth;
    const char *err; /* first error, a static string */
} scan_t;

static int scan_fail(scan_t *s, const char *msg)
{
    if (s->err == NULL)
        s->err = msg;
    return -1;
}

static void scan_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int scan_lit(scan_t *s, char c)
{
    scan_ws(s);
    if (s->p >= s->end || *s->p != c)
        return scan_fail(s, "unexpected character");
    s->p++;
    return 0;
}

/* A string; *start and *len get its raw contents (escapes left as they are) and
 * *escaped whether it has any.  Control characters are refused. */
static int scan_string(scan_t *s, const char **start, size_t *len, int *escaped)
{
    scan_ws(s);
    if (s->p >= s->end || *s->p != '"')
        return scan_fail(s, "expected a string");
    const char *q = ++s->p;
    int esc = 0;
    while (q < s->end && *q != '"') {
        unsigned char c = (unsigned char)*q;
        if (c < 0x20)
            return scan_fail(s, "control character in a string");
        if (c == '\\') {
            esc = 1;
            if (q + 1 >= s->end)
                break;
            char e = q[1];
            if (e == 'u') {
                for (int i = 2; i < 6; i++)
                    if (q + i >= s->end ||
                        !((q[i] >= '0' && q[i] <= '9') || (q[i] >= 'a' && q[i] <= 'f') ||
                          (q[i] >= 'A' && q[i] <= 'F')))
                        return scan_fail(s, "bad \\u escape");
                q += 6;
                continue;
            }
            if (strchr("\"\\/bfnrt", e) == NULL)
                return scan_fail(s, "bad escape");
            q += 2;
            continue;
        }
        q++;
    }
    if (q >= s->end)
        return scan_fail(s, "unterminated string");
    if (start != NULL) {
        *start = s->p;
        *len = (size_t)(q - s->p);
        *escaped = esc;
    }
    s->p = q + 1;
    return 0;
}

static int scan_key_is(const char *k, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(k, want, len) == 0;
}

/* A number; its text in *start and *len. */
static int scan_number(scan_t *s, const char **start, size_t *len)
{
    scan_ws(s);
    const char *q = s->p;
    if (q < s->end && *q == '-')
        q++;
    if (q >= s->end || !(*q >= '0' && *q <= '9'))
        return scan_fail(s, "bad number");
    if (*q == '0')
        q++;
    else
        while (q < s->end && *q >= '0' && *q <= '9')
            q++;
    if (q < s->end && *q == '.') {
        q++;
        if (q >= s->end || !(*q >= '0' && *q <= '9'))
            return scan_fail(s, "bad number");
        while (q < s->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < s->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < s->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= s->end || !(*q >= '0' && *q <= '9'))
            return scan_fail(s, "bad number");
        while (q < s->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (start != NULL) {
        *start = s->p;
        *len = (size_t)(q - s->p);
    }
    s->p = q;
    return 0;
}

static int scan_value(scan_t *s);

/* Skip any value, validating it. */
static int scan_value(scan_t *s)
{
    scan_ws(s);
    if (s->p >= s->end)
        return scan_fail(s, "unexpected end");
    char c = *s->p;
    if (c == '"')
        return scan_string(s, NULL, NULL, NULL);
    if (c == '{' || c == '[') {
        if (++s->depth > SCAN_MAX_DEPTH)
            return scan_fail(s, "nested too deeply");
        char close = c == '{' ? '}' : ']';
        s->p++;
        scan_ws(s);
        if (s->p < s->end && *s->p == close) {
            s->p++;
            s->depth--;
            return 0;
        }
        for (;;) {
            if (c == '{' && (scan_string(s, NULL, NULL, NULL) != 0 || scan_lit(s, ':') != 0))
                return -1;
            if (scan_value(s) != 0)
                return -1;
            scan_ws(s);
            if (s->p < s->end && *s->p == ',') {
                s->p++;
                continue;
            }
            if (scan_lit(s, close) != 0)
                return -1;
            s->depth--;
            return 0;
        }
    }
    static const char *const lits[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if ((size_t)(s->end - s->p) >= n && memcmp(s->p, lits[i], n) == 0) {
            s->p += n;
            return 0;
        }
    }
    return scan_number(s, NULL, NULL);
}

/* Iterate an object: calls field(s, key, keylen, ctx) positioned at each value,
 * which must consume it. */
typedef int (*scan_field_fn)(scan_t *s, const char *key, size_t keylen, void *ctx);

static int scan_object(scan_t *s, scan_field_fn field, void *ctx)
{
    if (scan_lit(s, '{') != 0)
        return -1;
    if (++s->depth > SCAN_MAX_DEPTH)
        return scan_fail(s, "nested too deeply");
    scan_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        s->depth--;
        return 0;
    }
    for (;;) {
        const char *k;
        size_t klen;
        int esc;
        if (scan_string(s, &k, &klen, &esc) != 0 || scan_lit(s, ':') != 0)
            return -1;
        if (field(s, esc ? "" : k, esc ? 0 : klen, ctx) != 0)
            return -1;
        scan_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (scan_lit(s, '}') != 0)
            return -1;
        s->depth--;
        return 0;
    }
}

static int scan_long(scan_t *s, long *out)
{
    const char *t;
    size_t n;
    if (scan_number(s, &t, &n) != 0)
        return -1;
    char buf[32];
    if (n >= sizeof(buf))
        return scan_fail(s, "number too long");
    memcpy(buf, t, n);
    buf[n] = '\0';
    char *endp;
    long v = strtol(buf, &endp, 10);
    if (*endp != '\0')
        return scan_fail(s, "expected an integer");
    *out = v;
    return 0;
}

typedef struct embed_ctx {
    rp_embeddings_t *out;
    size_t expect_n, expect_dims, got;
    unsigned char *seen;
    float *tmp; /* one vector being decoded */
    size_t tmp_cap;
    long index;
    int has_index, has_emb;
    size_t dims;
    rp_err_t *err;
    int failed; /* err already set */
} embed_ctx_t;

static int ctx_fail(embed_ctx_t *c, scan_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Record a semantic error (the first one wins) and stop the scan. */
static int ctx_fail(embed_ctx_t *c, scan_t *s, const char *fmt, ...)
{
    if (!c->failed) {
        va_list ap;
        va_start(ap, fmt);
        char msg[RP_ERR_MSG_MAX];
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        rp_err_set(c->err, strcmp(msg, "out of memory") == 0 ? RP_ENOMEM : RP_EPROTO, "%s", msg);
        c->failed = 1;
    }
    return scan_fail(s, "semantic");
}

/* The embedding: base64 text or an array of numbers, into c->tmp. */
static int scan_embedding(scan_t *s, embed_ctx_t *c)
{
    scan_ws(s);
    if (s->p < s->end && *s->p == '"') {
        const char *t;
        size_t n;
        int esc;
        if (scan_string(s, &t, &n, &esc) != 0)
            return -1;
        char *unesc = NULL;
        if (esc) {
            /* Only "\/" can appear in base64 text. */
            unesc = malloc(n + 1);
            if (unesc == NULL)
                return ctx_fail(c, s, "out of memory");
            size_t k = 0;
            for (size_t i = 0; i < n; i++) {
                if (t[i] == '\\' && i + 1 < n && t[i + 1] == '/')
                    i++;
                else if (t[i] == '\\') {
                    free(unesc);
                    return ctx_fail(c, s, "embedding is not valid base64 float32 data");
                }
                unesc[k++] = t[i];
            }
            t = unesc;
            n = k;
        }
        size_t max = n / 4 * 3 / 4 + 1;
        if (max > MAX_DIMS) {
            free(unesc);
            return ctx_fail(c, s, "embedding is too large");
        }
        if (max > c->tmp_cap) {
            float *p = realloc(c->tmp, max * sizeof(float));
            if (p == NULL) {
                free(unesc);
                return ctx_fail(c, s, "out of memory");
            }
            c->tmp = p;
            c->tmp_cap = max;
        }
        long got = rp_vec_from_base64(t, n, c->tmp, max);
        free(unesc);
        if (got <= 0)
            return ctx_fail(c, s, "embedding is not valid base64 float32 data");
        c->dims = (size_t)got;
        c->has_emb = 1;
        return 0;
    }
    if (scan_lit(s, '[') != 0)
        return ctx_fail(c, s, "embedding is neither an array nor a base64 string");
    size_t n = 0;
    scan_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return ctx_fail(c, s, "embedding has %zu values", (size_t)0);
    }
    for (;;) {
        const char *t;
        size_t len;
        scan_ws(s);
        if (scan_number(s, &t, &len) != 0)
            return ctx_fail(c, s, "embedding value %zu is not a number", n);
        if (n >= MAX_DIMS)
            return ctx_fail(c, s, "embedding has %zu values", n);
        if (n >= c->tmp_cap) {
            size_t cap = c->tmp_cap ? c->tmp_cap * 2 : 512;
            float *p = realloc(c->tmp, cap * sizeof(float));
            if (p == NULL)
                return ctx_fail(c, s, "out of memory");
            c->tmp = p;
            c->tmp_cap = cap;
        }
        char buf[64];
        if (len >= sizeof(buf))
            return ctx_fail(c, s, "embedding value %zu is not a number", n);
        memcpy(buf, t, len);
        buf[len] = '\0';
        double v = strtod(buf, NULL);
        if (!isfinite(v))
            return ctx_fail(c, s, "embedding value %zu is not a number", n);
        c->tmp[n++] = (float)v;
        scan_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (scan_lit(s, ']') != 0)
            return -1;
        break;
    }
    c->dims = n;
    c->has_emb = 1;
    return 0;
}

static int item_field(scan_t *s, const char *key, size_t keylen, void *ctx)
{
    embed_ctx_t *c = ctx;
    if (scan_key_is(key, keylen, "index")) {
        scan_ws(s);
        long v;
        if (s->p >= s->end || !(*s->p == '-' || (*s->p >= '0' && *s->p <= '9')) ||
            scan_long(s, &v) != 0)
            return ctx_fail(c, s, "embedding %zu has a bad index", c->got);
        c->index = v;
        c->has_index = 1;
        return 0;
    }
    if (scan_key_is(key, keylen, "embedding"))
        return scan_embedding(s, c);
    return scan_value(s);
}

/* One element of data[]: place its vector in the result. */
static int scan_item(scan_t *s, embed_ctx_t *c)
{
    c->has_index = c->has_emb = 0;
    c->index = 0;
    if (c->got >= c->expect_n) {
        /* Count them all for the message. */
        size_t n = c->got;
        while (scan_value(s) == 0) {
            n++;
            scan_ws(s);
            if (s->p < s->end && *s->p == ',') {
                s->p++;
                continue;
            }
            break;
        }
        return ctx_fail(c, s, "embeddings response has %zu vectors, expected %zu", n, c->expect_n);
    }
    scan_ws(s);
    if (s->p >= s->end || *s->p != '{')
        return ctx_fail(c, s, "embedding is neither an array nor a base64 string");
    if (scan_object(s, item_field, c) != 0)
        return -1;
    size_t idx = c->has_index ? (size_t)c->index : c->got;
    if (c->has_index && (c->index < 0 || (size_t)c->index >= c->expect_n))
        return ctx_fail(c, s, "embedding %zu has a bad index", c->got);
    if (!c->has_emb)
        return ctx_fail(c, s, "embedding is neither an array nor a base64 string");
    if (c->seen[idx])
        return ctx_fail(c, s, "embedding index %zu appears twice", idx);
    c->seen[idx] = 1;
    rp_embeddings_t *out = c->out;
    if (out->data == NULL) {
        if (c->expect_dims > 0 && c->dims != c->expect_dims)
            return ctx_fail(c, s, "embedding has %zu dimensions, expected %zu", c->dims,
                            c->expect_dims);
        out->dims = c->dims;
        out->data = calloc(c->expect_n * c->dims, sizeof(float));
        if (out->data == NULL)
            return ctx_fail(c, s, "out of memory");
    } else if (c->dims != out->dims) {
        return ctx_fail(c, s, "embeddings have different dimensions (%zu, %zu)", out->dims,
                        c->dims);
    }
    memcpy(out->data + idx * out->dims, c->tmp, out->dims * sizeof(float));
    c->got++;
    return 0;
}

static int usage_field_scan(scan_t *s, const char *key, size_t keylen, void *ctx)
{
    embed_ctx_t *c = ctx;
    scan_ws(s);
    if (scan_key_is(key, keylen, "prompt_tokens") && s->p < s->end && *s->p >= '0' &&
        *s->p <= '9') {
        long v;
        if (scan_long(s, &v) != 0)
            return -1;
        c->out->prompt_tokens = v;
        return 0;
    }
    return scan_value(s);
}

static int top_field(scan_t *s, const char *key, size_t keylen, void *ctx)
{
    embed_ctx_t *c = ctx;
    if (scan_key_is(key, keylen, "data")) {
        scan_ws(s);
        if (s->p >= s->end || *s->p != '[')
            return ctx_fail(c, s, "embeddings response has %zu vectors, expected %zu", (size_t)0,
                            c->expect_n);
        s->p++;
        scan_ws(s);
        if (s->p < s->end && *s->p == ']') {
            s->p++;
        } else {
            for (;;) {
                if (scan_item(s, c) != 0)
                    return -1;
                scan_ws(s);
                if (s->p < s->end && *s->p == ',') {
                    s->p++;
                    continue;
                }
                if (scan_lit(s, ']') != 0)
                    return -1;
                break;
            }
        }
        if (c->got != c->expect_n)
            return ctx_fail(c, s, "embeddings response has %zu vectors, expected %zu", c->got,
                            c->expect_n);
        c->has_index = 2; /* marks: data seen */
        return 0;
    }
    if (scan_key_is(key, keylen, "usage")) {
        scan_ws(s);
        if (s->p < s->end && *s->p == '{')
            return scan_object(s, usage_field_scan, c);
        return scan_value(s);
    }
    return scan_value(s);
}

int rp_openai_embed_parse(const char *body, size_t len, size_t expect_n, size_t expect_dims,
                          rp_embeddings_t *out, rp_err_t *err)
{
    memset(out, 0, sizeof(*out));
    out->prompt_tokens = -1;
    embed_ctx_t c = {.out = out, .expect_n = expect_n, .expect_dims = expect_dims, .err = err};
    c.seen = calloc(expect_n ? expect_n : 1, 1);
    if (c.seen == NULL)
        return rp_err_set(err, RP_ENOMEM, "out of memory");
    scan_t s = {.p = body, .end = body + len};
    int rc = scan_object(&s, top_field, &c);
    if (rc == 0) {
        scan_ws(&s);
        if (s.p != s.end)
            rc = scan_fail(&s, "text after the document");
    }
    if (rc == 0 && c.got != expect_n && !c.failed)
        ctx_fail(&c, &s, "embeddings response has %zu vectors, expected %zu", c.got, expect_n);
    free(c.seen);
    free(c.tmp);
    if (rc != 0 || c.failed) {
        if (!c.failed)
            rp_err_set(err, RP_EPROTO, "embeddings response is not valid JSON (%s)",
                       s.err != NULL ? s.err : "?");
        rp_embeddings_free(out);
        return err != NULL && err->code == RP_ENOMEM ? RP_ENOMEM : RP_EPROTO;
    }
    out->n = expect_n;
    return 0;
}

void rp_embeddings_free(rp_embeddings_t *e)
{
    free(e->data);
    memset(e, 0, sizeof(*e));
}

char *rp_openai_chat_request(const char *model, const char *prompt, size_t prompt_len,
                             long max_tokens, double temperature, size_t *len)
{
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_puts(&b, "{\"model\":\"");
    rp_buf_json_escape(&b, model, strlen(model));
    rp_buf_puts(&b, "\",\"messages\":[{\"role\":\"user\",\"content\":\"");
    rp_buf_json_escape(&b, prompt, prompt_len);
    rp_buf_puts(&b, "\"}]");
    if (max_tokens > 0)
        rp_buf_printf(&b, ",\"max_tokens\":%ld", max_tokens);
    if (!isnan(temperature))
        rp_buf_printf(&b, ",\"temperature\":%.3g", temperature);
    rp_buf_putc(&b, '}');
    return rp_buf_take(&b, len);
}

int rp_openai_chat_parse(const char *body, size_t len, rp_chat_result_t *out, rp_err_t *err)
{
    memset(out, 0, sizeof(*out));
    out->prompt_tokens = out->completion_tokens = -1;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (root == NULL)
        return rp_err_set(err, RP_EPROTO, "chat response is not valid JSON (%s)", jerr.text);
    int rc = 0;
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    json_t *content = json_object_get(json_object_get(choice, "message"), "content");
    if (!json_is_string(content)) {
        rc = rp_err_set(err, RP_EPROTO, "chat response has no choices[0].message.content");
        goto out;
    }
    out->content = strdup(json_string_value(content));
    json_t *model = json_object_get(root, "model");
    if (json_is_string(model))
        out->model = strdup(json_string_value(model));
    json_t *fr = json_object_get(choice, "finish_reason");
    if (json_is_string(fr))
        out->finish_reason = strdup(json_string_value(fr));
    out->prompt_tokens = usage_field(root, "prompt_tokens");
    out->completion_tokens = usage_field(root, "completion_tokens");
    if (out->content == NULL)
        rc = rp_err_set(err, RP_ENOMEM, "out of memory");
out:
    json_decref(root);
    if (rc != 0)
        rp_chat_result_free(out);
    return rc;
}

void rp_chat_result_free(rp_chat_result_t *r)
{
    free(r->content);
    free(r->model);
    free(r->finish_reason);
    r->content = r->model = r->finish_reason = NULL;
}

int rp_openai_status_retryable(long status)
{
    return status == 408 || status == 409 || status == 425 || status == 429 || status >= 500;
}

void rp_openai_describe_error(long status, const char *body, size_t len, char *out, size_t outlen)
{
    const char *msg = NULL;
    json_t *root = body != NULL && len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
    json_t *m = json_object_get(json_object_get(root, "error"), "message");
    if (json_is_string(m))
        msg = json_string_value(m);
    else if (json_is_string(json_object_get(root, "error")))
        msg = json_string_value(json_object_get(root, "error"));
    else if (json_is_string(json_object_get(root, "detail")))
        msg = json_string_value(json_object_get(root, "detail"));
    if (msg != NULL)
        snprintf(out, outlen, "HTTP %ld: %.200s", status, msg);
    else
        snprintf(out, outlen, "HTTP %ld", status);
    json_decref(root);
}
