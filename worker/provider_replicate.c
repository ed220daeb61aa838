/*
 * provider_replicate.c: the "replicate" provider -- Replicate's predictions
 * API (REPLICATE_BASE_URL, REPLICATE_API_TOKEN, RAGPOOL_REPLICATE_VERSION).
 *
 *   create  POST <base>/predictions {"version", "input": {"prompt", ...}}
 *           (or POST <base>/models/<owner>/<name>/predictions for a model
 *           named without a version), with `Prefer: wait=N` so a quick model
 *           answers in the same request;
 *   poll    while the prediction is starting or processing, GET
 *           <base>/predictions/<id> every RAGPOOL_REPLICATE_POLL_MS, on a
 *           libuv timer, until it has succeeded (output pieces joined),
 *           failed or been canceled, or RAGPOOL_MODEL_TIMEOUT_MS has passed
 *           since the create (then the prediction is canceled, without
 *           waiting for the answer, so it stops costing money).
 *
 * The poll URL is built from the configured base and the prediction's id
 * (checked to be a plain token), never taken from the answer's `urls`, so a
 * response cannot point the worker's token at another host.  A poll state
 * (timer) exists only while a prediction is unfinished; its memory is freed
 * in the timer's close callback.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "provider_int.h"

typedef struct rep_poll {
    uv_timer_t timer;
    rp_provider_call_t *call; /* NULL once the call was cancelled or ended */
    char id[128];
    uint64_t deadline; /* loop ms */
} rep_poll_t;

typedef struct rep_kind {
    char *prefer; /* "Prefer: wait=N" or NULL */
    const char *create_headers[6];
    const char *get_headers[4];
} rep_kind_t;

static rep_kind_t *kind_of(rp_provider_t *p)
{
    return p->kind;
}

/* ------------------------------------------------------------------ */
/* Wire format                                                          */
/* ------------------------------------------------------------------ */

char *rp_replicate_request(const char *version, const char *prompt, size_t prompt_len,
                           long max_tokens, double temperature, size_t *len)
{
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_putc(&b, '{');
    if (version != NULL) {
        rp_buf_puts(&b, "\"version\":\"");
        rp_buf_json_escape(&b, version, strlen(version));
        rp_buf_puts(&b, "\",");
    }
    rp_buf_puts(&b, "\"input\":{\"prompt\":\"");
    rp_buf_json_escape(&b, prompt, prompt_len);
    rp_buf_putc(&b, '"');
    if (max_tokens > 0)
        rp_buf_printf(&b, ",\"max_new_tokens\":%ld", max_tokens);
    if (!isnan(temperature))
        rp_buf_printf(&b, ",\"temperature\":%.3g", temperature);
    rp_buf_puts(&b, "}}");
    return rp_buf_take(&b, len);
}

static int id_ok(const char *s, size_t n)
{
    if (n == 0 || n >= 128)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

int rp_replicate_parse(const char *body, size_t len, rp_prediction_t *out, rp_err_t *err)
{
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return rp_err_set(err, RP_EPROTO, "prediction is not a JSON object");
    }
    int rc = 0;
    json_t *st = json_object_get(root, "status");
    json_t *id = json_object_get(root, "id");
    const char *s = json_is_string(st) ? json_string_value(st) : "";
    if (strcmp(s, "starting") == 0)
        out->status = RP_PREDICTION_STARTING;
    else if (strcmp(s, "processing") == 0)
        out->status = RP_PREDICTION_PROCESSING;
    else if (strcmp(s, "succeeded") == 0)
        out->status = RP_PREDICTION_SUCCEEDED;
    else if (strcmp(s, "failed") == 0)
        out->status = RP_PREDICTION_FAILED;
    else if (strcmp(s, "canceled") == 0)
        out->status = RP_PREDICTION_CANCELED;
    else {
        rc = rp_err_set(err, RP_EPROTO, "prediction has no known status");
        goto out;
    }
    if (!json_is_string(id) || !id_ok(json_string_value(id), json_string_length(id))) {
        rc = rp_err_set(err, RP_EPROTO, "prediction has no usable id");
        goto out;
    }
    memcpy(out->id, json_string_value(id), json_string_length(id) + 1);
    json_t *e = json_object_get(root, "error");
    if (json_is_string(e))
        snprintf(out->error, sizeof(out->error), "%s", json_string_value(e));
    else if (json_is_object(e) && json_is_string(json_object_get(e, "message")))
        snprintf(out->error, sizeof(out->error), "%s",
                 json_string_value(json_object_get(e, "message")));
    if (out->status != RP_PREDICTION_SUCCEEDED)
        goto out;
    json_t *o = json_object_get(root, "output");
    rp_buf_t b = RP_BUF_INIT;
    if (json_is_string(o)) {
        rp_buf_append(&b, json_string_value(o), json_string_length(o));
    } else if (json_is_array(o)) {
        size_t i;
        json_t *piece;
        json_array_foreach(o, i, piece)
        {
            if (!json_is_string(piece)) {
                rp_buf_free(&b);
                rc = rp_err_set(err, RP_EPROTO, "prediction output %zu is not text", i);
                goto out;
            }
            rp_buf_append(&b, json_string_value(piece), json_string_length(piece));
        }
    } else {
        rc = rp_err_set(err, RP_EPROTO, "prediction succeeded without a text output");
        goto out;
    }
    out->output = b.data != NULL ? rp_buf_take(&b, NULL) : strdup("");
    if (out->output == NULL)
        rc = rp_err_set(err, RP_ENOMEM, "out of memory");
out:
    json_decref(root);
    if (rc != 0)
        rp_prediction_free(out);
    return rc;
}

void rp_prediction_free(rp_prediction_t *p)
{
    free(p->output);
    p->output = NULL;
}

/* ------------------------------------------------------------------ */
/* Calls                                                                */
/* ------------------------------------------------------------------ */

static void poll_closed(uv_handle_t *h)
{
    free(h->data);
}

static void poll_stop(rp_provider_call_t *call)
{
    rep_poll_t *pl = call->impl;
    if (pl == NULL)
        return;
    call->impl = NULL;
    pl->call = NULL;
    uv_timer_stop(&pl->timer);
    uv_close((uv_handle_t *)&pl->timer, poll_closed);
}

static void finish(rp_provider_call_t *call, rp_provider_result_t *res)
{
    poll_stop(call);
    call->p = NULL;
    call->done(call->data, res); /* may free call */
    rp_chat_result_free(&res->chat);
}

static void ignore_answer(void *data, const rp_http_resp_t *resp)
{
    (void)data;
    (void)resp;
}

/* Ask Replicate to stop a prediction we no longer wait for. */
static void cancel_prediction(rp_provider_t *p, const char *id)
{
    char url[512];
    snprintf(url, sizeof(url), "%s/predictions/%s/cancel", p->url, id);
    rp_http_request_t hr = {
        .method = "POST",
        .url = url,
        .headers = kind_of(p)->get_headers,
        .body = "",
        .body_len = 0,
        .timeout_ms = 10000,
    };
    rp_http_send(p->http, &hr, ignore_answer, NULL, NULL);
}

static void poll_send(rep_poll_t *pl);

static void on_answer(void *data, const rp_http_resp_t *resp)
{
    rp_provider_call_t *call = data;
    rp_provider_t *p = call->p;
    call->http = NULL;
    rp_provider_result_t res;
    memset(&res, 0, sizeof(res));
    res.retry_after_ms = -1;
    res.chat.prompt_tokens = res.chat.completion_tokens = -1;
    if (resp->error != 0 || (resp->status != 200 && resp->status != 201)) {
        rp__provider_http_error(&res, "prediction", resp);
        finish(call, &res);
        return;
    }
    rp_prediction_t pr;
    rp_err_t err;
    if (rp_replicate_parse(resp->body, resp->body_len, &pr, &err) != 0) {
        res.status = RP_PROVIDER_SERVER;
        res.http_status = resp->status;
        snprintf(res.error, sizeof(res.error), "prediction: %s", err.msg);
        finish(call, &res);
        return;
    }
    res.http_status = resp->status;
    switch (pr.status) {
    case RP_PREDICTION_SUCCEEDED:
        res.chat.content = pr.output;
        pr.output = NULL;
        finish(call, &res);
        break;
    case RP_PREDICTION_FAILED:
    case RP_PREDICTION_CANCELED:
        res.status = RP_PROVIDER_SERVER;
        snprintf(res.error, sizeof(res.error), "prediction %.40s %s: %.200s", pr.id,
                 pr.status == RP_PREDICTION_FAILED ? "failed" : "was canceled",
                 pr.error[0] != '\0' ? pr.error : "(no error given)");
        finish(call, &res);
        break;
    default: {
        rep_poll_t *pl = call->impl;
        if (pl == NULL) {
            pl = calloc(1, sizeof(*pl));
            if (pl == NULL) {
                cancel_prediction(p, pr.id);
                res.status = RP_PROVIDER_SERVER;
                snprintf(res.error, sizeof(res.error), "prediction: out of memory");
                finish(call, &res);
                break;
            }
            uv_timer_init(p->loop, &pl->timer);
            pl->timer.data = pl;
            pl->call = call;
            pl->deadline = uv_now(p->loop) + (uint64_t)p->cfg->model_timeout_ms;
            snprintf(pl->id, sizeof(pl->id), "%s", pr.id);
            call->impl = pl;
        }
        if (uv_now(p->loop) >= pl->deadline) {
            cancel_prediction(p, pl->id);
            res.status = RP_PROVIDER_SERVER;
            snprintf(res.error, sizeof(res.error),
                     "prediction %s did not finish within %ld ms (canceled)", pl->id,
                     p->cfg->model_timeout_ms);
            finish(call, &res);
            break;
        }
        uv_timer_start(&pl->timer, (uv_timer_cb)poll_send, (uint64_t)p->cfg->replicate_poll_ms, 0);
        break;
    }
    }
    rp_prediction_free(&pr);
}

static void poll_send(rep_poll_t *pl)
{
    rp_provider_call_t *call = pl->call;
    if (call == NULL)
        return;
    rp_provider_t *p = call->p;
    char url[512];
    snprintf(url, sizeof(url), "%s/predictions/%s", p->url, pl->id);
    uint64_t left = pl->deadline > uv_now(p->loop) ? pl->deadline - uv_now(p->loop) : 1;
    rp_http_request_t hr = {
        .method = "GET",
        .url = url,
        .headers = kind_of(p)->get_headers,
        .timeout_ms = (long)(left < 30000 ? left + 1000 : 30000),
    };
    int rc = rp_http_send(p->http, &hr, on_answer, call, &call->http);
    if (rc != 0) {
        call->http = NULL;
        rp_provider_result_t res;
        memset(&res, 0, sizeof(res));
        res.retry_after_ms = -1;
        res.status = RP_PROVIDER_SERVER;
        snprintf(res.error, sizeof(res.error), "cannot poll prediction %s: %s", pl->id,
                 rp_strerror(rc));
        finish(call, &res);
    }
}

static int rep_call(rp_provider_t *p, rp_provider_call_t *call, const rp_provider_req_t *req)
{
    const char *model = req->model != NULL && req->model[0] != '\0' ? req->model : p->default_model;
    if (model == NULL || model[0] == '\0')
        return RP_EINVAL; /* no version configured: the chain moves on */
    char url[640];
    const char *version = model;
    const char *colon = strchr(model, ':');
    const char *slash = strchr(model, '/');
    if (colon != NULL) {
        version = colon + 1; /* "owner/name:version" */
        snprintf(url, sizeof(url), "%s/predictions", p->url);
    } else if (slash != NULL) {
        if (strlen(model) > 256 || strstr(model, "..") != NULL)
            return RP_EINVAL;
        version = NULL; /* the model's own endpoint runs its latest version */
        snprintf(url, sizeof(url), "%s/models/%s/predictions", p->url, model);
    } else {
        snprintf(url, sizeof(url), "%s/predictions", p->url);
    }
    size_t blen = 0;
    char *body = rp_replicate_request(version, req->prompt, req->prompt_len, req->max_tokens,
                                      req->temperature, &blen);
    if (body == NULL)
        return RP_ENOMEM;
    rp_http_request_t hr = {
        .method = "POST",
        .url = url,
        .headers = kind_of(p)->create_headers,
        .body = body,
        .body_len = blen,
        .timeout_ms = p->cfg->model_timeout_ms,
    };
    int rc = rp_http_send(p->http, &hr, on_answer, call, &call->http);
    free(body);
    if (rc != 0)
        call->http = NULL;
    return rc;
}

static void rep_cancel(rp_provider_call_t *call)
{
    if (call->http != NULL)
        rp_http_cancel(call->http);
    call->http = NULL;
    rep_poll_t *pl = call->impl;
    if (pl != NULL && call->p != NULL)
        cancel_prediction(call->p, pl->id);
    poll_stop(call);
}

static int rep_init(rp_provider_t *p, rp_err_t *err)
{
    const rp_worker_cfg_t *cfg = p->cfg;
    const char *base = cfg->replicate_base_url != NULL ? cfg->replicate_base_url : "";
    if (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0)
        return rp_err_set(err, RP_EINVAL,
                          "REPLICATE_BASE_URL=%s must start with http:// or https://", base);
    p->url = strdup(base);
    rep_kind_t *k = calloc(1, sizeof(*k));
    if (p->url == NULL || k == NULL) {
        free(k);
        return rp_err_set(err, RP_ENOMEM, "out of memory");
    }
    p->kind = k;
    size_t n = strlen(p->url);
    while (n > 0 && p->url[n - 1] == '/')
        p->url[--n] = '\0';
    if (cfg->replicate_api_token != NULL && cfg->replicate_api_token[0] != '\0') {
        p->auth = rp_str_concat("Authorization: Bearer ", cfg->replicate_api_token);
        if (p->auth == NULL)
            return rp_err_set(err, RP_ENOMEM, "out of memory");
    }
    if (cfg->replicate_wait_s > 0) {
        char prefer[64];
        snprintf(prefer, sizeof(prefer), "Prefer: wait=%ld", cfg->replicate_wait_s);
        k->prefer = strdup(prefer);
        if (k->prefer == NULL)
            return rp_err_set(err, RP_ENOMEM, "out of memory");
    }
    size_t nc = 0, ng = 0;
    k->create_headers[nc++] = "Content-Type: application/json";
    k->get_headers[ng++] = "Accept: application/json";
    if (p->auth != NULL) {
        k->create_headers[nc++] = p->auth;
        k->get_headers[ng++] = p->auth;
    }
    if (k->prefer != NULL)
        k->create_headers[nc++] = k->prefer;
    k->create_headers[nc] = NULL;
    k->get_headers[ng] = NULL;
    p->default_model = cfg->replicate_version != NULL ? cfg->replicate_version : "";
    return 0;
}

static void rep_fini(rp_provider_t *p)
{
    rep_kind_t *k = kind_of(p);
    if (k != NULL)
        free(k->prefer);
    free(k);
    p->kind = NULL;
}

const rp_provider_ops_t rp__provider_replicate = {
    .name = "replicate",
    .streams = 0,
    .init = rep_init,
    .call = rep_call,
    .cancel = rep_cancel,
    .fini = rep_fini,
};
