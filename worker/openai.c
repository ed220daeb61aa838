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
    rp_buf_puts(&b, base64 ? ",\"encoding_format\":\"base64\"}" : ",\"encoding_format\":\"float\"}");
    return rp_buf_take(&b, len);
}

static long usage_field(json_t *root, const char *name)
{
    json_t *v = json_object_get(json_object_get(root, "usage"), name);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (long)json_integer_value(v) : -1;
}

/* Decode one embedding (array or base64 string) into a fresh array. */
static int decode_vector(json_t *emb, float **out, size_t *dims, rp_err_t *err)
{
    *out = NULL;
    if (json_is_array(emb)) {
        size_t n = json_array_size(emb);
        if (n == 0 || n > MAX_DIMS)
            return rp_err_set(err, RP_EPROTO, "embedding has %zu values", n);
        float *v = malloc(n * sizeof(float));
        if (v == NULL)
            return rp_err_set(err, RP_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *x = json_array_get(emb, i);
            if (!json_is_number(x) || !isfinite(json_number_value(x))) {
                free(v);
                return rp_err_set(err, RP_EPROTO, "embedding value %zu is not a number", i);
            }
            v[i] = (float)json_number_value(x);
        }
        *out = v;
        *dims = n;
        return 0;
    }
    if (json_is_string(emb)) {
        size_t slen = json_string_length(emb);
        size_t max = slen / 4 * 3 / 4 + 1;
        if (max > MAX_DIMS)
            return rp_err_set(err, RP_EPROTO, "embedding is too large");
        float *v = malloc(max * sizeof(float));
        if (v == NULL)
            return rp_err_set(err, RP_ENOMEM, "out of memory");
        long n = rp_vec_from_base64(json_string_value(emb), slen, v, max);
        if (n <= 0) {
            free(v);
            return rp_err_set(err, RP_EPROTO, "embedding is not valid base64 float32 data");
        }
        *out = v;
        *dims = (size_t)n;
        return 0;
    }
    return rp_err_set(err, RP_EPROTO, "embedding is neither an array nor a base64 string");
}

int rp_openai_embed_parse(const char *body, size_t len, size_t expect_n, size_t expect_dims,
                          rp_embeddings_t *out, rp_err_t *err)
{
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (root == NULL)
        return rp_err_set(err, RP_EPROTO, "embeddings response is not valid JSON (%s)", jerr.text);
    int rc = 0;
    json_t *data = json_object_get(root, "data");
    if (!json_is_array(data) || json_array_size(data) != expect_n) {
        rc = rp_err_set(err, RP_EPROTO, "embeddings response has %zu vectors, expected %zu",
                        json_is_array(data) ? json_array_size(data) : 0, expect_n);
        goto out;
    }
    unsigned char *seen = calloc(expect_n ? expect_n : 1, 1);
    if (seen == NULL) {
        rc = rp_err_set(err, RP_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < expect_n; i++) {
        json_t *item = json_array_get(data, i);
        json_t *jidx = json_object_get(item, "index");
        size_t idx = i;
        if (jidx != NULL) {
            if (!json_is_integer(jidx) || json_integer_value(jidx) < 0 ||
                (size_t)json_integer_value(jidx) >= expect_n) {
                rc = rp_err_set(err, RP_EPROTO, "embedding %zu has a bad index", i);
                break;
            }
            idx = (size_t)json_integer_value(jidx);
        }
        if (seen[idx]) {
            rc = rp_err_set(err, RP_EPROTO, "embedding index %zu appears twice", idx);
            break;
        }
        seen[idx] = 1;
        float *v = NULL;
        size_t dims = 0;
        rc = decode_vector(json_object_get(item, "embedding"), &v, &dims, err);
        if (rc != 0)
            break;
        if (out->data == NULL) {
            if (expect_dims > 0 && dims != expect_dims) {
                free(v);
                rc = rp_err_set(err, RP_EPROTO, "embedding has %zu dimensions, expected %zu",
                                dims, expect_dims);
                break;
            }
            out->dims = dims;
            out->data = calloc(expect_n * dims, sizeof(float));
            if (out->data == NULL) {
                free(v);
                rc = rp_err_set(err, RP_ENOMEM, "out of memory");
                break;
            }
        } else if (dims != out->dims) {
            free(v);
            rc = rp_err_set(err, RP_EPROTO, "embeddings have different dimensions (%zu, %zu)",
                            out->dims, dims);
            break;
        }
        memcpy(out->data + idx * dims, v, dims * sizeof(float));
        free(v);
    }
    free(seen);
    if (rc == 0) {
        out->n = expect_n;
        out->prompt_tokens = usage_field(root, "prompt_tokens");
    }
out:
    json_decref(root);
    if (rc != 0)
        rp_embeddings_free(out);
    return rc;
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

void rp_openai_describe_error(long status, const char *body, size_t len, char *out,
                              size_t outlen)
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
