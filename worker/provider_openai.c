/*
 * provider_openai.c: the "openai" provider -- any OpenAI-compatible chat
 * completions API (OPENAI_BASE_URL, OPENAI_API_KEY, RAGPOOL_CHAT_MODEL).
 *
 * A plain call is one POST whose body is parsed by worker/openai.c; it
 * allocates nothing of its own (the call object is the caller's).  A
 * streamed call (the caller gave on_delta) asks for `"stream": true` with
 * usage, feeds the body to an SSE parser as it arrives, hands each
 * `choices[0].delta.content` to on_delta, and assembles the whole answer;
 * a stream that ends without `[DONE]` or a finish_reason is a SERVER
 * failure (the transfer was cut), as is an error event inside the stream.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "provider_int.h"
#include "sse.h"

typedef struct oa_stream {
    rp_provider_call_t *call;
    rp_sse_t *sse;
    rp_buf_t content;
    char *model, *finish;
    long prompt_tokens, completion_tokens;
    int done_seen; /* data: [DONE] */
    int bad;       /* an event we cannot use: the transfer was aborted */
    char err[200];
} oa_stream_t;

static void stream_free(oa_stream_t *st)
{
    if (st == NULL)
        return;
    rp_sse_free(st->sse);
    rp_buf_free(&st->content);
    free(st->model);
    free(st->finish);
    free(st);
}

static long usage_value(json_t *usage, const char *name)
{
    json_t *v = json_object_get(usage, name);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (long)json_integer_value(v) : -1;
}

/* One SSE event of a streamed completion. */
static int on_event(void *data, const rp_sse_event_t *ev)
{
    oa_stream_t *st = data;
    if (ev->data_len == 6 && memcmp(ev->data, "[DONE]", 6) == 0) {
        st->done_seen = 1;
        return 0;
    }
    json_t *root = json_loadb(ev->data, ev->data_len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        snprintf(st->err, sizeof(st->err), "streamed chat event is not a JSON object");
        return RP_EPROTO;
    }
    json_t *error = json_object_get(root, "error");
    if (error != NULL && !json_is_null(error)) {
        json_t *msg = json_object_get(error, "message");
        snprintf(st->err, sizeof(st->err), "error inside the stream: %.150s",
                 json_is_string(msg) ? json_string_value(msg) : "(no message)");
        json_decref(root);
        return RP_EPROTO;
    }
    if (st->model == NULL && json_is_string(json_object_get(root, "model")))
        st->model = strdup(json_string_value(json_object_get(root, "model")));
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    json_t *content = json_object_get(json_object_get(choice, "delta"), "content");
    if (json_is_string(content) && json_string_length(content) > 0) {
        size_t n = json_string_length(content);
        rp_buf_append(&st->content, json_string_value(content), n);
        if (st->call->on_delta != NULL)
            st->call->on_delta(st->call->data, json_string_value(content), n);
    }
    json_t *fr = json_object_get(choice, "finish_reason");
    if (json_is_string(fr) && st->finish == NULL)
        st->finish = strdup(json_string_value(fr));
    json_t *usage = json_object_get(root, "usage");
    if (json_is_object(usage)) {
        st->prompt_tokens = usage_value(usage, "prompt_tokens");
        st->completion_tokens = usage_value(usage, "completion_tokens");
    }
    json_decref(root);
    return 0;
}

static int on_chunk(void *data, const char *chunk, size_t len)
{
    rp_provider_call_t *call = data;
    oa_stream_t *st = call->impl;
    int rc = rp_sse_feed(st->sse, chunk, len);
    if (rc != 0) {
        st->bad = 1;
        if (st->err[0] == '\0')
            snprintf(st->err, sizeof(st->err), "unreadable event stream: %s", rp_strerror(rc));
    }
    return rc;
}

static void call_done(void *data, const rp_http_resp_t *resp)
{
    rp_provider_call_t *call = data;
    oa_stream_t *st = call->impl;
    call->http = NULL;
    call->impl = NULL;
    call->p = NULL;
    rp_provider_result_t res;
    memset(&res, 0, sizeof(res));
    res.retry_after_ms = -1;
    res.chat.prompt_tokens = res.chat.completion_tokens = -1;
    rp_err_t err;
    if (resp->error == 0 && resp->status != 200) {
        rp__provider_http_error(&res, "chat completion", resp);
    } else if (st != NULL && st->bad) {
        res.status = RP_PROVIDER_SERVER;
        res.http_status = resp->status;
        snprintf(res.error, sizeof(res.error), "chat completion: %s", st->err);
    } else if (resp->error != 0) {
        rp__provider_http_error(&res, "chat completion", resp);
    } else if (st == NULL) {
        res.http_status = 200;
        if (rp_openai_chat_parse(resp->body, resp->body_len, &res.chat, &err) != 0) {
            /* A broken body is usually a proxy or a truncated transfer. */
            res.status = RP_PROVIDER_SERVER;
            snprintf(res.error, sizeof(res.error), "chat completion: %s", err.msg);
        }
    } else if (!st->done_seen && st->finish == NULL) {
        res.status = RP_PROVIDER_SERVER;
        res.http_status = 200;
        snprintf(res.error, sizeof(res.error),
                 "chat completion: the stream ended before its last event");
    } else if (rp_buf_failed(&st->content)) {
        res.status = RP_PROVIDER_SERVER;
        snprintf(res.error, sizeof(res.error), "chat completion: out of memory");
    } else {
        res.http_status = 200;
        res.chat.content = st->content.data != NULL ? rp_buf_take(&st->content, NULL) : strdup("");
        res.chat.model = st->model;
        res.chat.finish_reason = st->finish;
        st->model = st->finish = NULL;
        res.chat.prompt_tokens = st->prompt_tokens;
        res.chat.completion_tokens = st->completion_tokens;
        if (res.chat.content == NULL) {
            res.status = RP_PROVIDER_SERVER;
            snprintf(res.error, sizeof(res.error), "chat completion: out of memory");
        }
    }
    stream_free(st);
    call->done(call->data, &res); /* may free call */
    rp_chat_result_free(&res.chat);
}

static int oa_call(rp_provider_t *p, rp_provider_call_t *call, const rp_provider_req_t *req)
{
    const char *model = req->model != NULL && req->model[0] != '\0' ? req->model : p->default_model;
    size_t blen = 0;
    char *body = rp_openai_chat_request(model, req->prompt, req->prompt_len, req->max_tokens,
                                        req->temperature, &blen);
    if (body == NULL)
        return RP_ENOMEM;
    oa_stream_t *st = NULL;
    if (call->on_delta != NULL) {
        /* Same body, asking for a stream with usage at its end. */
        static const char extra[] = ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
        char *b2 = realloc(body, blen + sizeof(extra));
        st = calloc(1, sizeof(*st));
        if (b2 != NULL)
            body = b2;
        if (b2 == NULL || st == NULL) {
            free(body);
            free(st);
            return RP_ENOMEM;
        }
        memcpy(body + blen - 1, extra, sizeof(extra)); /* replaces the closing brace */
        blen += sizeof(extra) - 2;
        st->call = call;
        st->prompt_tokens = st->completion_tokens = -1;
        st->sse = rp_sse_new(1u << 20, on_event, st);
        if (st->sse == NULL) {
            free(body);
            free(st);
            return RP_ENOMEM;
        }
    }
    rp_http_request_t hr = {
        .method = "POST",
        .url = p->url,
        .headers = p->headers,
        .body = body,
        .body_len = blen,
        .timeout_ms = p->cfg->model_timeout_ms,
        .on_chunk = st != NULL ? on_chunk : NULL,
    };
    call->impl = st;
    int rc = rp_http_send(p->http, &hr, call_done, call, &call->http);
    free(body);
    if (rc != 0) {
        call->impl = NULL;
        call->http = NULL;
        stream_free(st);
    }
    return rc;
}

static void oa_cancel(rp_provider_call_t *call)
{
    if (call->http != NULL)
        rp_http_cancel(call->http);
    call->http = NULL;
    stream_free(call->impl);
    call->impl = NULL;
}

static int oa_init(rp_provider_t *p, rp_err_t *err)
{
    const rp_worker_cfg_t *cfg = p->cfg;
    p->url = rp_str_concat(cfg->openai_base_url, "/chat/completions");
    if (p->url == NULL)
        return rp_err_set(err, RP_ENOMEM, "out of memory");
    size_t nh = 0;
    p->headers[nh++] = "Content-Type: application/json";
    if (cfg->openai_api_key != NULL && cfg->openai_api_key[0] != '\0') {
        p->auth = rp_str_concat("Authorization: Bearer ", cfg->openai_api_key);
        if (p->auth == NULL)
            return rp_err_set(err, RP_ENOMEM, "out of memory");
        p->headers[nh++] = p->auth;
    }
    p->headers[nh] = NULL;
    p->default_model = cfg->chat_model;
    return 0;
}

const rp_provider_ops_t rp__provider_openai = {
    .name = "openai",
    .streams = 1,
    .init = oa_init,
    .call = oa_call,
    .cancel = oa_cancel,
};
