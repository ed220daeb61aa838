/*
 * server.c: the development model server's HTTP service (see server.h and
 * docs/DEVMODEL.md).
 *
 * Each request is routed, checked (method, key, faults, body) and turned
 * into one reply_t: a status, a content type and a finished body (for a
 * streamed chat answer, the whole event stream).  deliver() then sends it
 * at once, or parks it in a pending_t whose timer sends it after the
 * configured latency; a stalled request is parked without a timer.  Every
 * pending_t registers an on_abort callback, so a client that goes away (or
 * the server closing) frees it through its timer's close callback, and the
 * request is never touched after that.
 *
 * Hot paths: embeddings are formatted straight into one buffer (no jansson
 * value per component); chat answers are small and built with jansson.
 * Request bodies are parsed with jansson.
 */
#include "server.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "answer.h"
#include "embed.h"
#include "httpd.h"
#include "log.h"

#define MAX_INPUTS 2048 /* embedding inputs per request, as OpenAI allows */
#define MAX_BODY (32u << 20)
#define MAX_STATUS 600

typedef enum {
    EP_EMBED = 0,
    EP_CHAT,
    EP_PREDICT,
    EP_MODELS,
    EP_HEALTH,
    EP_ADMIN,
    EP_OTHER,
    EP_STORAGE,
    EP_N
} ep_t;

static const char *const ep_names[EP_N] = {"embeddings", "chat",  "predictions", "models",
                                           "healthz",    "admin", "other",       "storage"};

typedef enum { OUT_PLAIN = 0, OUT_SSE, OUT_RAW, OUT_STALL } out_kind_t;

typedef struct reply {
    out_kind_t kind;
    int status;
    const char *ctype;
    int retry_after;
    char *body; /* owned (malloc) */
    size_t len;
    long delay_ms; /* extra delay before sending (a prediction that takes time) */
} reply_t;

/* A Replicate-style prediction: answered at ready_at (loop ms). */
typedef struct prediction {
    struct prediction *next;
    char id[32];
    uint64_t created, ready_at;
    int fail, canceled;
    char model[256];
    json_t *version; /* string or NULL */
    json_t *output;  /* array of pieces */
} prediction_t;

/* An object uploaded through the Storage API, kept for /_admin/storage. */
typedef struct stored_object {
    struct stored_object *next;
    char *key; /* "<bucket>/<path>" */
    char *ctype;
    char *data;
    size_t len;
} stored_object_t;

/* A streamed answer written one event at a time (stream_piece_ms). */
typedef struct pacer {
    uv_timer_t timer;
    rp_devmodel_t *m;
    rp_httpd_req_t *req; /* NULL once ended or aborted */
    char *body;
    size_t len, pos;
} pacer_t;

typedef struct pending {
    uv_timer_t timer;
    rp_devmodel_t *m;
    rp_httpd_req_t *req; /* NULL once answered or aborted */
    struct pending *prev, *next;
    reply_t reply;
    ep_t ep;
    uint64_t start;
} pending_t;

struct rp_devmodel {
    uv_loop_t *loop;
    rp_httpd_t *httpd;
    char host[64];
    int port;
    char *api_key;
    /* runtime settings, changed by POST /_admin/config */
    long latency_ms;
    long jitter_ms;
    double fault_rate;
    rp_fault_kind_t fault_kind;
    long stream_piece_ms; /* delay between the events of a streamed answer */
    long prediction_ms;   /* how long a prediction takes */
    prediction_t *predictions;
    stored_object_t *objects;
    int verbose;
    uint64_t rng;
    rp_devmodel_faultmem_t *faults;
    /* counters for GET /_admin/stats */
    uint64_t requests_total;
    uint64_t by_ep[EP_N];
    uint64_t by_status[MAX_STATUS];
    uint64_t faults_total;
    uint64_t faults_by_kind[RP_FAULT_NKINDS];
    /* parked requests and their open timers */
    pending_t *pending;
    size_t open_timers;
    int closing;
    int httpd_closed;
    void (*close_cb)(void *data);
    void *close_data;
    float vec[RP_DEVMODEL_DIMS_MAX];
};

/* ------------------------------------------------------------------ */
/* small helpers                                                       */

static uint64_t rng_next(rp_devmodel_t *m)
{
    /* xorshift64*: plenty for jitter and fault draws. */
    uint64_t x = m->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    m->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double rng_unit(rp_devmodel_t *m)
{
    return (double)(rng_next(m) >> 11) * (1.0 / 9007199254740992.0);
}

static void reply_json(reply_t *r, int status, json_t *obj)
{
    r->kind = OUT_PLAIN;
    r->status = status;
    r->ctype = "application/json";
    r->body = obj != NULL ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    r->len = r->body != NULL ? strlen(r->body) : 0;
    json_decref(obj);
    if (r->body == NULL && status < 500) {
        r->status = 500;
    }
}

/* An OpenAI-style error: {"error":{"message","type","param","code"}}. */
static void reply_error(reply_t *r, int status, const char *type, const char *param,
                        const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void reply_error(reply_t *r, int status, const char *type, const char *param,
                        const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *err = json_object();
    json_object_set_new(err, "message", json_string(msg));
    json_object_set_new(err, "type", json_string(type));
    json_object_set_new(err, "param", param != NULL ? json_string(param) : json_null());
    json_object_set_new(err, "code", code != NULL ? json_string(code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", err);
    reply_json(r, status, root);
}

static void reply_invalid(reply_t *r, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply_invalid(reply_t *r, const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    reply_error(r, 400, "invalid_request_error", param, NULL, "%s", msg);
}

/* Append s as a JSON string (with quotes) at p; p must have 6 * len + 2
 * bytes free.  Returns the new end. */
static char *put_json_string(char *p, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    *p++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *p++ = '\\';
            *p++ = (char)ch;
        } else if (ch < 0x20) {
            memcpy(p, "\\u00", 4);
            p[4] = hex[ch >> 4];
            p[5] = hex[ch & 15];
            p += 6;
        } else {
            *p++ = (char)ch;
        }
    }
    *p++ = '"';
    return p;
}

/* ------------------------------------------------------------------ */
/* faults                                                              */

static void reply_fault(rp_devmodel_t *m, reply_t *r, rp_fault_kind_t kind, ep_t ep)
{
    m->faults_total++;
    m->faults_by_kind[kind]++;
    switch (kind) {
    case RP_FAULT_429:
        reply_error(r, 429, "requests", NULL, "rate_limit_exceeded",
                    "Rate limit reached for requests (injected fault). Please try again in 1s.");
        r->retry_after = 1;
        break;
    case RP_FAULT_500:
        reply_error(r, 500, "server_error", NULL, NULL,
                    "The server had an error while processing your request (injected fault).");
        break;
    case RP_FAULT_503:
        reply_error(r, 503, "server_error", NULL, NULL,
                    "The engine is currently overloaded, please try again later (injected "
                    "fault).");
        break;
    case RP_FAULT_400:
        reply_error(r, 400, "invalid_request_error", NULL, "injected_fault",
                    "The request was rejected (injected fault).");
        break;
    case RP_FAULT_STALL:
        r->kind = OUT_STALL;
        r->status = 0;
        break;
    case RP_FAULT_TRUNCATE: {
        /* Announce far more than is sent, then close: the client sees a
         * transfer cut short in the middle of a JSON document. */
        const char *part = ep == EP_EMBED
                               ? "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\","
                                 "\"index\":0,\"embedding\":[0.0123,-0.0456,"
                               : "{\"id\":\"chatcmpl-truncated\",\"object\":\"chat.completion\","
                                 "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                                 "\"content\":\"Based on the";
        char *buf = malloc(512);
        if (buf == NULL) {
            reply_error(r, 500, "server_error", NULL, NULL, "Out of memory.");
            break;
        }
        int n = snprintf(buf, 512,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: 4096\r\nConnection: close\r\n\r\n%s",
                         part);
        r->kind = OUT_RAW;
        r->status = 200;
        r->body = buf;
        r->len = (size_t)n;
        break;
    }
    case RP_FAULT_MALFORMED: {
        const char *bad = ep == EP_EMBED
                              ? "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\","
                                "\"embedding\":[0.1,0.2,}}<<not json>>"
                              : "{\"id\":\"chatcmpl-malformed\",\"choices\":[{"
                                "\"message\":{\"content\":\"oops\"<<not json>>";
        r->kind = OUT_PLAIN;
        r->status = 200;
        r->ctype = "application/json";
        r->body = strdup(bad);
        r->len = r->body != NULL ? strlen(bad) : 0;
        break;
    }
    default:
        break;
    }
}

/* Apply a marker in the body, then the configured rate.  Returns 1 when r
 * now holds a fault. */
static int check_faults(rp_devmodel_t *m, ep_t ep, const char *body, size_t len, reply_t *r)
{
    const char *marker_ep = ep == EP_EMBED ? "embed" : "chat";
    rp_fault_marker_t mk;
    if (rp_fault_marker_find(body, len, marker_ep, &mk) &&
        rp_devmodel_faultmem_hit(m->faults, marker_ep, body, len, &mk)) {
        reply_fault(m, r, mk.kind, ep);
        return 1;
    }
    if (m->fault_rate > 0 && m->fault_kind != RP_FAULT_NONE && rng_unit(m) < m->fault_rate) {
        reply_fault(m, r, m->fault_kind, ep);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* embeddings                                                          */

static void handle_embeddings(rp_devmodel_t *m, json_t *root, reply_t *r)
{
    json_t *input = json_object_get(root, "input");
    json_t *model = json_object_get(root, "model");
    json_t *dims_j = json_object_get(root, "dimensions");
    json_t *fmt_j = json_object_get(root, "encoding_format");
    int dims = RP_DEVMODEL_DIMS_DEFAULT;
    int b64 = 0;

    if (model == NULL || !json_is_string(model) || json_string_length(model) == 0) {
        reply_invalid(r, "model", "you must provide a model parameter (a non-empty string)");
        return;
    }
    if (json_string_length(model) > 256) {
        reply_invalid(r, "model", "model must be at most 256 characters");
        return;
    }
    if (input == NULL) {
        reply_invalid(r, "input", "you must provide an input parameter");
        return;
    }
    size_t n;
    if (json_is_string(input)) {
        n = 1;
    } else if (json_is_array(input)) {
        n = json_array_size(input);
        if (n == 0 || n > MAX_INPUTS) {
            reply_invalid(r, "input", "input must be a string or an array of 1 to %d strings",
                          MAX_INPUTS);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (!json_is_string(json_array_get(input, i))) {
                reply_invalid(r, "input", "input[%zu] must be a string", i);
                return;
            }
        }
    } else {
        reply_invalid(r, "input", "input must be a string or an array of strings");
        return;
    }
    if (dims_j != NULL && !json_is_null(dims_j)) {
        if (!json_is_integer(dims_j) || json_integer_value(dims_j) < 1 ||
            json_integer_value(dims_j) > RP_DEVMODEL_DIMS_MAX) {
            reply_invalid(r, "dimensions", "dimensions must be an integer from 1 to %d",
                          RP_DEVMODEL_DIMS_MAX);
            return;
        }
        dims = (int)json_integer_value(dims_j);
    }
    if (fmt_j != NULL && !json_is_null(fmt_j)) {
        const char *f = json_is_string(fmt_j) ? json_string_value(fmt_j) : "";
        if (strcmp(f, "base64") == 0) {
            b64 = 1;
        } else if (strcmp(f, "float") != 0) {
            reply_invalid(r, "encoding_format", "encoding_format must be \"float\" or \"base64\"");
            return;
        }
    }

    size_t per =
        64 + (b64 ? RP_DEVMODEL_B64_LEN(4 * (size_t)dims) + 2 : RP_DEVMODEL_FLOATS_MAX(dims));
    size_t mlen = json_string_length(model);
    size_t cap = 64 + n * per + 6 * mlen + 128;
    char *buf = malloc(cap);
    if (buf == NULL) {
        reply_error(r, 500, "server_error", NULL, NULL, "Out of memory.");
        return;
    }
    char *p = buf;
    static const char head[] = "{\"object\":\"list\",\"data\":[";
    memcpy(p, head, sizeof(head) - 1);
    p += sizeof(head) - 1;
    long tokens = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_string(input) ? input : json_array_get(input, i);
        const char *text = json_string_value(s);
        size_t tlen = json_string_length(s);
        int words = rp_devmodel_embed(text, tlen, dims, m->vec);
        tokens += words > 0 ? words : 1;
        p += sprintf(
            p, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", i > 0 ? "," : "", i);
        if (b64) {
            *p++ = '"';
            p += rp_devmodel_floats_base64(m->vec, dims, p);
            *p++ = '"';
        } else {
            p += rp_devmodel_format_floats(m->vec, dims, p);
        }
        *p++ = '}';
    }
    memcpy(p, "],\"model\":", 10);
    p += 10;
    p = put_json_string(p, json_string_value(model), mlen);
    p += sprintf(p, ",\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld}}", tokens, tokens);
    r->kind = OUT_PLAIN;
    r->status = 200;
    r->ctype = "application/json";
    r->body = buf;
    r->len = (size_t)(p - buf);
}

/* ------------------------------------------------------------------ */
/* chat completions                                                    */

/* The text of a message's content: a string, or the "text" parts of an
 * array of content parts (joined with newlines into *owned).  Returns NULL
 * for a wrong type. */
static const char *content_text(json_t *content, char **owned, size_t *len)
{
    *owned = NULL;
    if (content == NULL || json_is_null(content)) {
        *len = 0;
        return "";
    }
    if (json_is_string(content)) {
        *len = json_string_length(content);
        return json_string_value(content);
    }
    if (!json_is_array(content))
        return NULL;
    size_t total = 0, i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *t = json_object_get(part, "text");
        if (!json_is_object(part) || (t != NULL && !json_is_string(t)))
            return NULL;
        if (t != NULL)
            total += json_string_length(t) + 1;
    }
    char *s = malloc(total + 1);
    if (s == NULL)
        return NULL;
    size_t off = 0;
    json_array_foreach(content, i, part)
    {
        json_t *t = json_object_get(part, "text");
        if (t == NULL)
            continue;
        if (off > 0)
            s[off++] = '\n';
        memcpy(s + off, json_string_value(t), json_string_length(t));
        off += json_string_length(t);
    }
    s[off] = '\0';
    *owned = s;
    *len = off;
    return s;
}

typedef struct chat_req {
    const char *model;
    char *prompt; /* owned copy of the last user message */
    size_t prompt_len;
    long prompt_tokens;
    long max_tokens; /* 0 = no limit */
    int stream;
    int include_usage;
} chat_req_t;

/* Validate a chat request into cr; on error fills r and returns -1. */
static int chat_parse(json_t *root, chat_req_t *cr, reply_t *r)
{
    memset(cr, 0, sizeof(*cr));
    json_t *model = json_object_get(root, "model");
    json_t *messages = json_object_get(root, "messages");
    if (model == NULL || !json_is_string(model) || json_string_length(model) == 0) {
        reply_invalid(r, "model", "you must provide a model parameter (a non-empty string)");
        return -1;
    }
    cr->model = json_string_value(model);
    if (messages == NULL || !json_is_array(messages) || json_array_size(messages) == 0) {
        reply_invalid(r, "messages", "messages must be a non-empty array");
        return -1;
    }
    size_t i;
    json_t *msg;
    const char *last_text = NULL;
    size_t last_len = 0;
    char *last_owned = NULL;
    int last_is_user = 0;
    json_array_foreach(messages, i, msg)
    {
        json_t *role = json_object_get(msg, "role");
        if (!json_is_object(msg) || role == NULL || !json_is_string(role)) {
            free(last_owned);
            reply_invalid(r, "messages", "messages[%zu] must be an object with a string role", i);
            return -1;
        }
        char *owned;
        size_t len;
        const char *text = content_text(json_object_get(msg, "content"), &owned, &len);
        if (text == NULL) {
            free(last_owned);
            reply_invalid(r, "messages",
                          "messages[%zu].content must be a string or an array of text parts", i);
            return -1;
        }
        cr->prompt_tokens += rp_devmodel_count_tokens(text, len);
        /* The question is the last user message, or the last message of
         * any role when there is no user message. */
        int is_user = strcmp(json_string_value(role), "user") == 0;
        if (is_user || !last_is_user) {
            free(last_owned);
            last_owned = owned;
            last_text = text;
            last_len = len;
            last_is_user = is_user;
        } else {
            free(owned);
        }
    }
    cr->prompt = malloc(last_len + 1);
    if (cr->prompt == NULL) {
        free(last_owned);
        reply_error(r, 500, "server_error", NULL, NULL, "Out of memory.");
        return -1;
    }
    memcpy(cr->prompt, last_text, last_len);
    cr->prompt[last_len] = '\0';
    cr->prompt_len = last_len;
    free(last_owned);

    json_t *mt = json_object_get(root, "max_completion_tokens");
    if (mt == NULL || json_is_null(mt))
        mt = json_object_get(root, "max_tokens");
    if (mt != NULL && !json_is_null(mt)) {
        if (!json_is_integer(mt) || json_integer_value(mt) < 1) {
            reply_invalid(r, "max_tokens", "max_tokens must be a positive integer");
            goto fail;
        }
        cr->max_tokens = (long)json_integer_value(mt);
    }
    json_t *temp = json_object_get(root, "temperature");
    if (temp != NULL && !json_is_null(temp)) {
        if (!json_is_number(temp) || json_number_value(temp) < 0 || json_number_value(temp) > 2) {
            reply_invalid(r, "temperature", "temperature must be a number from 0 to 2");
            goto fail;
        }
    }
    json_t *stream = json_object_get(root, "stream");
    if (stream != NULL && !json_is_null(stream)) {
        if (!json_is_boolean(stream)) {
            reply_invalid(r, "stream", "stream must be a boolean");
            goto fail;
        }
        cr->stream = json_is_true(stream);
    }
    json_t *so = json_object_get(root, "stream_options");
    if (so != NULL && !json_is_null(so)) {
        if (!json_is_object(so)) {
            reply_invalid(r, "stream_options", "stream_options must be an object");
            goto fail;
        }
        cr->include_usage = json_is_true(json_object_get(so, "include_usage"));
    }
    return 0;
fail:
    free(cr->prompt);
    cr->prompt = NULL;
    return -1;
}

/* Split the answer into pieces of about three words for streaming; calls
 * fn(piece, len) for each. */
static void for_each_piece(const char *s, void (*fn)(const char *, size_t, void *), void *data)
{
    size_t i = 0, start = 0;
    int words = 0;
    while (s[i] != '\0') {
        if (s[i] == ' ' && ++words % 3 == 0) {
            fn(s + start, i + 1 - start, data);
            start = i + 1;
        }
        i++;
    }
    if (i > start)
        fn(s + start, i - start, data);
}

typedef struct sse {
    char *p;
    size_t len, cap;
    int failed;
    json_t *chunk;  /* the chunk template */
    json_t *delta;  /* its choices[0].delta */
    json_t *choice; /* its choices[0] */
} sse_t;

static void sse_put(sse_t *s, const char *p, size_t n)
{
    if (s->failed)
        return;
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 2048;
        while (cap < s->len + n)
            cap *= 2;
        char *q = realloc(s->p, cap);
        if (q == NULL) {
            s->failed = 1;
            return;
        }
        s->p = q;
        s->cap = cap;
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
}

static void sse_event(sse_t *s, json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text == NULL) {
        s->failed = 1;
        return;
    }
    sse_put(s, "data: ", 6);
    sse_put(s, text, strlen(text));
    sse_put(s, "\n\n", 2);
    free(text);
}

static void sse_piece(const char *piece, size_t n, void *data)
{
    sse_t *s = data;
    json_object_set_new(s->delta, "content", json_stringn(piece, n));
    sse_event(s, s->chunk);
}

static json_t *usage_json(long prompt, long completion)
{
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                     (json_int_t)completion, "total_tokens", (json_int_t)(prompt + completion));
}

static void handle_chat(rp_devmodel_t *m, json_t *root, const char *body, size_t blen,
                        reply_t *r)
{
    chat_req_t cr;
    if (chat_parse(root, &cr, r) < 0)
        return;
    char *answer = rp_devmodel_answer(cr.prompt, cr.prompt_len);
    free(cr.prompt);
    if (answer == NULL) {
        reply_error(r, 500, "server_error", NULL, NULL, "Out of memory.");
        return;
    }
    const char *finish = "stop";
    if (cr.max_tokens > 0 && rp_devmodel_truncate_words(answer, (int)cr.max_tokens))
        finish = "length";
    long completion = rp_devmodel_count_tokens(answer, strlen(answer));
    char id[40];
    snprintf(id, sizeof(id), "chatcmpl-%016llx", (unsigned long long)rng_next(m));
    json_int_t created = (json_int_t)time(NULL);

    if (!cr.stream) {
        json_t *root_out =
            json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:s},s:n,s:s}],s:o}", "id", id, "object",
                      "chat.completion", "created", created, "model", cr.model, "choices", "index",
                      0, "message", "role", "assistant", "content", answer, "logprobs",
                      "finish_reason", finish, "usage", usage_json(cr.prompt_tokens, completion));
        free(answer);
        reply_json(r, 200, root_out);
        return;
    }

    sse_t s = {0};
    s.delta = json_pack("{s:s,s:s}", "role", "assistant", "content", "");
    s.choice =
        json_pack("{s:i,s:O,s:n,s:n}", "index", 0, "delta", s.delta, "logprobs", "finish_reason");
    s.chunk = json_pack("{s:s,s:s,s:I,s:s,s:[O]}", "id", id, "object", "chat.completion.chunk",
                        "created", created, "model", cr.model, "choices", s.choice);
    if (s.delta == NULL || s.choice == NULL || s.chunk == NULL) {
        s.failed = 1;
    } else {
        sse_event(&s, s.chunk); /* the role, with empty content */
        json_object_del(s.delta, "role");
        /* [[fault:stream:truncate]]: the stream stops half way, without its
         * finish_reason and [DONE], as when a connection is cut. */
        rp_fault_marker_t mk;
        if (rp_fault_marker_find(body, blen, "stream", &mk) && mk.kind == RP_FAULT_TRUNCATE &&
            rp_devmodel_faultmem_hit(m->faults, "stream", body, blen, &mk)) {
            size_t half = strlen(answer) / 2;
            while (half > 0 && answer[half] != ' ')
                half--;
            answer[half] = '\0';
            for_each_piece(answer, sse_piece, &s);
            m->faults_total++;
            m->faults_by_kind[RP_FAULT_TRUNCATE]++;
            goto streamed;
        }
        for_each_piece(answer, sse_piece, &s);
        json_object_del(s.delta, "content");
        json_object_set_new(s.choice, "finish_reason", json_string(finish));
        sse_event(&s, s.chunk);
        if (cr.include_usage) {
            json_object_set_new(s.chunk, "choices", json_array());
            json_object_set_new(s.chunk, "usage", usage_json(cr.prompt_tokens, completion));
            sse_event(&s, s.chunk);
        }
        sse_put(&s, "data: [DONE]\n\n", 14);
    }
streamed:
    json_decref(s.chunk);
    json_decref(s.choice);
    json_decref(s.delta);
    free(answer);
    if (s.failed) {
        free(s.p);
        reply_error(r, 500, "server_error", NULL, NULL, "Out of memory.");
        return;
    }
    r->kind = OUT_SSE;
    r->status = 200;
    r->ctype = "text/event-stream";
    r->body = s.p;
    r->len = s.len;
}

/* ------------------------------------------------------------------ */
/* Replicate-style predictions                                         */

static void piece_to_array(const char *piece, size_t n, void *data)
{
    json_array_append_new((json_t *)data, json_stringn(piece, n));
}

static void maybe_closed(rp_devmodel_t *m);
static void reply_method(reply_t *r, const char *allowed);

/* `Prefer: wait=N` (seconds) as ms; 0 when absent. */
static long prefer_wait_ms(rp_httpd_req_t *req)
{
    const char *h = rp_httpd_header(req, "Prefer");
    const char *w = h != NULL ? strstr(h, "wait") : NULL;
    if (w == NULL)
        return 0;
    w += 4;
    if (*w != '=')
        return 60000; /* bare "wait": Replicate's default of 60 s */
    long s = strtol(w + 1, NULL, 10);
    return s > 0 && s <= 60 ? s * 1000 : 0;
}

/* The prediction as Replicate shows it at loop time now. */
static json_t *prediction_json(const prediction_t *p, uint64_t now)
{
    const char *status = "succeeded";
    if (p->canceled)
        status = "canceled";
    else if (now < p->ready_at)
        status = now - p->created < 50 ? "starting" : "processing";
    else if (p->fail)
        status = "failed";
    int done = strcmp(status, "succeeded") == 0;
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S.000Z", &tm);
    return json_pack("{s:s,s:s,s:O?,s:s,s:O?,s:s?,s:s,s:{s:f},s:s,s:{s:s,s:s}}", "id", p->id,
                     "model", p->model, "version", p->version, "status", status, "output",
                     done ? p->output : NULL, "error",
                     strcmp(status, "failed") == 0 ? "injected failure (devmodel)" : NULL, "logs",
                     "", "metrics", "predict_time", (double)(p->ready_at - p->created) / 1000.0,
                     "created_at", ts, "urls", "get", "", "cancel", "");
}

static void prediction_free(prediction_t *p)
{
    json_decref(p->version);
    json_decref(p->output);
    free(p);
}

static void predictions_free(rp_devmodel_t *m)
{
    while (m->predictions != NULL) {
        prediction_t *p = m->predictions;
        m->predictions = p->next;
        prediction_free(p);
    }
}

/* A number after `marker` in text (e.g. "[[prediction:ms=" ... "]]"), or -1. */
static long marker_number(const char *text, size_t len, const char *marker)
{
    const char *at = memmem(text, len, marker, strlen(marker));
    if (at == NULL)
        return -1;
    return strtol(at + strlen(marker), NULL, 10);
}

/* POST predictions.  Markers in the prompt: [[prediction:failed]] makes it
 * fail, [[prediction:ms=N]] makes it take N ms (default: prediction_ms).
 * A prediction that takes no longer than the client's `Prefer: wait` is
 * answered finished after that time; a longer one is answered at once
 * ("starting") or after the wait ("processing"), and then polled. */
static void handle_prediction(rp_devmodel_t *m, json_t *root, const char *path, long wait_ms,
                              reply_t *r)
{
    json_t *input = json_object_get(root, "input");
    json_t *prompt = json_is_object(input) ? json_object_get(input, "prompt") : NULL;
    if (prompt == NULL || !json_is_string(prompt)) {
        reply_invalid(r, "input", "input.prompt must be a string");
        return;
    }
    const char *ptext = json_string_value(prompt);
    size_t plen = json_string_length(prompt);
    char *answer = rp_devmodel_answer(ptext, plen);
    prediction_t *p = calloc(1, sizeof(*p));
    if (answer == NULL || p == NULL) {
        free(answer);
        free(p);
        reply_error(r, 500, "server_error", NULL, NULL, "Out of memory.");
        return;
    }
    json_t *mt = json_object_get(input, "max_new_tokens");
    if (mt == NULL)
        mt = json_object_get(input, "max_tokens");
    if (json_is_integer(mt) && json_integer_value(mt) > 0)
        rp_devmodel_truncate_words(answer, (int)json_integer_value(mt));
    /* "/v1/models/<owner>/<name>/predictions" names the model; the plain
     * endpoint takes a version instead. */
    snprintf(p->model, sizeof(p->model), "ragpool/devmodel");
    if (strncmp(path, "/v1/models/", 11) == 0) {
        const char *end = strstr(path + 11, "/predictions");
        size_t n = end != NULL ? (size_t)(end - (path + 11)) : 0;
        if (n > 0 && n < sizeof(p->model)) {
            memcpy(p->model, path + 11, n);
            p->model[n] = '\0';
        }
    }
    json_t *version = json_object_get(root, "version");
    p->version = json_is_string(version) ? json_incref(version) : NULL;
    snprintf(p->id, sizeof(p->id), "%016llx", (unsigned long long)rng_next(m));
    p->output = json_array();
    for_each_piece(answer, piece_to_array, p->output);
    free(answer);
    long ms = marker_number(ptext, plen, "[[prediction:ms=");
    if (ms < 0)
        ms = m->prediction_ms;
    p->fail = memmem(ptext, plen, "[[prediction:failed]]", 21) != NULL;
    uint64_t now = uv_now(m->loop);
    p->created = now;
    p->ready_at = now + (uint64_t)ms;
    /* Forget predictions nobody asked about for ten minutes. */
    for (prediction_t **pp = &m->predictions; *pp != NULL;) {
        prediction_t *old = *pp;
        if (old->ready_at + 600000 < now) {
            *pp = old->next;
            prediction_free(old);
        } else {
            pp = &old->next;
        }
    }
    p->next = m->predictions;
    m->predictions = p;
    if (ms == 0) {
        reply_json(r, 201, prediction_json(p, now));
    } else if (wait_ms >= ms) {
        reply_json(r, 201, prediction_json(p, p->ready_at));
        r->delay_ms = ms;
    } else {
        reply_json(r, 201, prediction_json(p, now + (uint64_t)wait_ms));
        r->delay_ms = wait_ms;
    }
}

/* GET /v1/predictions/<id>, POST /v1/predictions/<id>/cancel. */
static void handle_prediction_get(rp_devmodel_t *m, const char *rest, int get, int post,
                                  reply_t *r)
{
    char id[64];
    size_t n = strcspn(rest, "/");
    int cancel = strcmp(rest + n, "/cancel") == 0;
    if (n == 0 || n >= sizeof(id) || (rest[n] != '\0' && !cancel)) {
        reply_error(r, 404, "invalid_request_error", NULL, "unknown_url", "Unknown prediction.");
        return;
    }
    if ((cancel && !post) || (!cancel && !get)) {
        reply_method(r, cancel ? "POST" : "GET");
        return;
    }
    memcpy(id, rest, n);
    id[n] = '\0';
    prediction_t *p = m->predictions;
    while (p != NULL && strcmp(p->id, id) != 0)
        p = p->next;
    if (p == NULL) {
        reply_error(r, 404, "invalid_request_error", NULL, "not_found", "No prediction %s.", id);
        return;
    }
    uint64_t now = uv_now(m->loop);
    if (cancel && now < p->ready_at)
        p->canceled = 1;
    reply_json(r, 200, prediction_json(p, now));
}

/* ------------------------------------------------------------------ */
/* Supabase Storage uploads (kept in memory for /_admin/storage)       */

static void objects_free(rp_devmodel_t *m)
{
    while (m->objects != NULL) {
        stored_object_t *o = m->objects;
        m->objects = o->next;
        free(o->key);
        free(o->ctype);
        free(o->data);
        free(o);
    }
}

static stored_object_t *object_find(rp_devmodel_t *m, const char *key)
{
    stored_object_t *o = m->objects;
    while (o != NULL && strcmp(o->key, key) != 0)
        o = o->next;
    return o;
}

/* POST (create; with `x-upsert: true` also replace) or PUT (replace)
 * /storage/v1/object/<bucket>/<path>. */
static void handle_storage_put(rp_devmodel_t *m, rp_httpd_req_t *req, const char *key, int post,
                               reply_t *r)
{
    if (strchr(key, '/') == NULL || key[0] == '/' || strstr(key, "..") != NULL) {
        reply_json(r, 400,
                   json_pack("{s:s,s:s,s:s}", "statusCode", "400", "error", "Invalid key",
                             "message", "The object path must be <bucket>/<path>"));
        return;
    }
    const char *upsert = rp_httpd_header(req, "x-upsert");
    stored_object_t *o = object_find(m, key);
    if (o != NULL && post && (upsert == NULL || strcasecmp(upsert, "true") != 0)) {
        reply_json(r, 409,
                   json_pack("{s:s,s:s,s:s}", "statusCode", "409", "error", "Duplicate",
                             "message", "The resource already exists"));
        return;
    }
    size_t len;
    const char *body = rp_httpd_body(req, &len);
    const char *ct = rp_httpd_header(req, "Content-Type");
    char *data = malloc(len + 1);
    char *ctype = strdup(ct != NULL ? ct : "application/octet-stream");
    if (o == NULL) {
        o = calloc(1, sizeof(*o));
        if (o != NULL) {
            o->key = strdup(key);
            if (o->key == NULL) {
                free(o);
                o = NULL;
            } else {
                o->next = m->objects;
                m->objects = o;
            }
        }
    }
    if (o == NULL || data == NULL || ctype == NULL) {
        free(data);
        free(ctype);
        reply_error(r, 500, "server_error", NULL, NULL, "Out of memory.");
        return;
    }
    memcpy(data, body, len);
    data[len] = '\0';
    free(o->data);
    free(o->ctype);
    o->data = data;
    o->len = len;
    o->ctype = ctype;
    char id[40];
    snprintf(id, sizeof(id), "%016llx", (unsigned long long)rng_next(m));
    reply_json(r, 200, json_pack("{s:s,s:s}", "Key", key, "Id", id));
}

/* GET /_admin/storage/<bucket>/<path>: the bytes as uploaded. */
static void handle_storage_get(rp_devmodel_t *m, const char *key, reply_t *r)
{
    stored_object_t *o = object_find(m, key);
    if (o == NULL) {
        reply_error(r, 404, "invalid_request_error", NULL, "not_found", "No object %s.", key);
        return;
    }
    r->kind = OUT_PLAIN;
    r->status = 200;
    r->ctype = "application/octet-stream";
    r->body = malloc(o->len + 1);
    if (r->body == NULL) {
        reply_error(r, 500, "server_error", NULL, NULL, "Out of memory.");
        return;
    }
    memcpy(r->body, o->data, o->len);
    r->len = o->len;
}

/* ------------------------------------------------------------------ */
/* Paced streaming: one event per stream_piece_ms                      */

static void pacer_closed(uv_handle_t *h)
{
    pacer_t *pc = h->data;
    rp_devmodel_t *m = pc->m;
    free(pc->body);
    free(pc);
    m->open_timers--;
    maybe_closed(m);
}

static void pacer_stop(pacer_t *pc)
{
    uv_timer_stop(&pc->timer);
    uv_close((uv_handle_t *)&pc->timer, pacer_closed);
}

static void pacer_on_abort(void *data)
{
    pacer_t *pc = data;
    pc->req = NULL;
    pacer_stop(pc);
}

/* Write the next event (up to and including its blank line). */
static void pacer_tick(uv_timer_t *t)
{
    pacer_t *pc = t->data;
    if (pc->req == NULL)
        return;
    const char *start = pc->body + pc->pos;
    const char *end = memmem(start, pc->len - pc->pos, "\n\n", 2);
    size_t n = end != NULL ? (size_t)(end - start) + 2 : pc->len - pc->pos;
    rp_httpd_write(pc->req, start, n);
    pc->pos += n;
    if (pc->pos >= pc->len) {
        rp_httpd_req_t *req = pc->req;
        pc->req = NULL;
        rp_httpd_on_abort(req, NULL, NULL);
        rp_httpd_end(req);
        pacer_stop(pc);
    }
}

/* Begin a streamed answer whose events go out one per stream_piece_ms;
 * takes r's body. */
static void pace_start(rp_devmodel_t *m, rp_httpd_req_t *req, reply_t *r,
                       const char *const *headers)
{
    pacer_t *pc = calloc(1, sizeof(*pc));
    if (rp_httpd_begin(req, r->status, headers) != 0) {
        free(pc);
        return;
    }
    if (pc == NULL) {
        /* Out of memory: the whole stream at once. */
        rp_httpd_write(req, r->body, r->len);
        rp_httpd_end(req);
        return;
    }
    pc->m = m;
    pc->req = req;
    pc->body = r->body;
    pc->len = r->len;
    r->body = NULL; /* ours now */
    uv_timer_init(m->loop, &pc->timer);
    pc->timer.data = pc;
    m->open_timers++;
    rp_httpd_on_abort(req, pacer_on_abort, pc);
    uv_timer_start(&pc->timer, pacer_tick, 0, (uint64_t)m->stream_piece_ms);
}

/* ------------------------------------------------------------------ */
/* admin                                                               */

static json_t *config_json(const rp_devmodel_t *m)
{
    return json_pack("{s:I,s:I,s:f,s:s,s:I,s:I}", "latency_ms", (json_int_t)m->latency_ms,
                     "latency_jitter_ms", (json_int_t)m->jitter_ms, "fault_rate", m->fault_rate,
                     "fault_kind", rp_fault_name(m->fault_kind), "stream_piece_ms",
                     (json_int_t)m->stream_piece_ms, "prediction_ms",
                     (json_int_t)m->prediction_ms);
}

static void handle_stats(rp_devmodel_t *m, reply_t *r)
{
    json_t *req = json_object();
    json_object_set_new(req, "total", json_integer((json_int_t)m->requests_total));
    for (int i = 0; i < EP_N; i++)
        json_object_set_new(req, ep_names[i], json_integer((json_int_t)m->by_ep[i]));
    json_t *st = json_object();
    for (int i = 0; i < MAX_STATUS; i++) {
        if (m->by_status[i] > 0) {
            char k[8];
            snprintf(k, sizeof(k), "%d", i);
            json_object_set_new(st, k, json_integer((json_int_t)m->by_status[i]));
        }
    }
    json_t *f = json_object();
    json_object_set_new(f, "total", json_integer((json_int_t)m->faults_total));
    for (int k = 1; k < RP_FAULT_NKINDS; k++)
        json_object_set_new(f, rp_fault_name((rp_fault_kind_t)k),
                            json_integer((json_int_t)m->faults_by_kind[k]));
    size_t parked = 0;
    for (pending_t *p = m->pending; p != NULL; p = p->next)
        parked++;
    json_t *root = json_pack("{s:o,s:o,s:o,s:I,s:o}", "requests", req, "status", st, "faults", f,
                             "pending", (json_int_t)parked, "config", config_json(m));
    reply_json(r, 200, root);
}

static void handle_config(rp_devmodel_t *m, json_t *root, reply_t *r)
{
    json_t *lat = json_object_get(root, "latency_ms");
    json_t *jit = json_object_get(root, "latency_jitter_ms");
    json_t *rate = json_object_get(root, "fault_rate");
    json_t *kind = json_object_get(root, "fault_kind");
    json_t *piece = json_object_get(root, "stream_piece_ms");
    json_t *pred = json_object_get(root, "prediction_ms");
    int k = -1;
    if (piece != NULL && (!json_is_integer(piece) || json_integer_value(piece) < 0 ||
                          json_integer_value(piece) > 60000)) {
        reply_invalid(r, "stream_piece_ms", "stream_piece_ms must be an integer from 0 to 60000");
        return;
    }
    if (pred != NULL && (!json_is_integer(pred) || json_integer_value(pred) < 0 ||
                         json_integer_value(pred) > 3600000)) {
        reply_invalid(r, "prediction_ms", "prediction_ms must be an integer from 0 to 3600000");
        return;
    }
    if (lat != NULL && (!json_is_integer(lat) || json_integer_value(lat) < 0 ||
                        json_integer_value(lat) > 3600000)) {
        reply_invalid(r, "latency_ms", "latency_ms must be an integer from 0 to 3600000");
        return;
    }
    if (jit != NULL && (!json_is_integer(jit) || json_integer_value(jit) < 0 ||
                        json_integer_value(jit) > 3600000)) {
        reply_invalid(r, "latency_jitter_ms",
                      "latency_jitter_ms must be an integer from 0 to 3600000");
        return;
    }
    if (rate != NULL &&
        (!json_is_number(rate) || json_number_value(rate) < 0 || json_number_value(rate) > 1)) {
        reply_invalid(r, "fault_rate", "fault_rate must be a number from 0 to 1");
        return;
    }
    if (kind != NULL) {
        if (json_is_string(kind))
            k = rp_fault_parse(json_string_value(kind), json_string_length(kind));
        else if (json_is_integer(kind)) {
            char num[16];
            snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(kind));
            k = rp_fault_parse(num, strlen(num));
        }
        if (k < 0) {
            reply_invalid(r, "fault_kind",
                          "fault_kind must be one of none, 429, 500, 503, 400, stall, truncate, "
                          "malformed");
            return;
        }
    }
    if (lat != NULL)
        m->latency_ms = (long)json_integer_value(lat);
    if (jit != NULL)
        m->jitter_ms = (long)json_integer_value(jit);
    if (rate != NULL)
        m->fault_rate = json_number_value(rate);
    if (k >= 0)
        m->fault_kind = (rp_fault_kind_t)k;
    if (piece != NULL)
        m->stream_piece_ms = (long)json_integer_value(piece);
    if (pred != NULL)
        m->prediction_ms = (long)json_integer_value(pred);
    rp_log_fields(RP_LOG_INFO, "devmodel.config", NULL, config_json(m));
    reply_json(r, 200, config_json(m));
}

static void handle_reset(rp_devmodel_t *m, reply_t *r)
{
    m->requests_total = 0;
    memset(m->by_ep, 0, sizeof(m->by_ep));
    memset(m->by_status, 0, sizeof(m->by_status));
    m->faults_total = 0;
    memset(m->faults_by_kind, 0, sizeof(m->faults_by_kind));
    rp_devmodel_faultmem_reset(m->faults);
    reply_json(r, 200, json_pack("{s:b}", "reset", 1));
}

/* ------------------------------------------------------------------ */
/* delivery                                                            */

static void send_reply(rp_devmodel_t *m, rp_httpd_req_t *req, reply_t *r, ep_t ep, uint64_t start)
{
    if (ep != EP_ADMIN && r->status > 0 && r->status < MAX_STATUS)
        m->by_status[r->status]++;
    if (m->verbose) {
        json_t *f = json_pack("{s:s,s:s,s:i,s:I}", "method", rp_httpd_method(req), "path",
                              rp_httpd_path(req), "status", r->status, "ms",
                              (json_int_t)(uv_now(m->loop) - start));
        rp_log_fields(RP_LOG_INFO, "devmodel.request", NULL, f);
    }
    char ctype[64];
    snprintf(ctype, sizeof(ctype), "Content-Type: %s", r->ctype != NULL ? r->ctype : "text/plain");
    const char *headers[4] = {ctype, NULL, NULL, NULL};
    switch (r->kind) {
    case OUT_PLAIN:
        if (r->retry_after)
            headers[1] = "Retry-After: 1";
        rp_httpd_respond(req, r->status, headers, r->body != NULL ? r->body : "", r->len);
        break;
    case OUT_SSE:
        headers[1] = "Cache-Control: no-cache";
        if (m->stream_piece_ms > 0) {
            pace_start(m, req, r, headers);
            break;
        }
        if (rp_httpd_begin(req, r->status, headers) == 0) {
            rp_httpd_write(req, r->body, r->len);
            rp_httpd_end(req);
        }
        break;
    case OUT_RAW:
        rp_httpd_respond_raw_and_close(req, r->body, r->len);
        break;
    case OUT_STALL:
        break;
    }
}

static void maybe_closed(rp_devmodel_t *m)
{
    if (!m->closing || !m->httpd_closed || m->open_timers > 0)
        return;
    void (*cb)(void *) = m->close_cb;
    void *data = m->close_data;
    rp_devmodel_faultmem_free(m->faults);
    predictions_free(m);
    objects_free(m);
    free(m->api_key);
    free(m);
    if (cb != NULL)
        cb(data);
}

static void pending_on_close(uv_handle_t *h)
{
    pending_t *p = h->data;
    rp_devmodel_t *m = p->m;
    free(p->reply.body);
    free(p);
    m->open_timers--;
    maybe_closed(m);
}

static void pending_unlink_and_close(pending_t *p)
{
    rp_devmodel_t *m = p->m;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        m->pending = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, pending_on_close);
}

static void pending_on_abort(void *data)
{
    pending_t *p = data;
    p->req = NULL; /* gone: never touched again */
    pending_unlink_and_close(p);
}

static void pending_on_timer(uv_timer_t *t)
{
    pending_t *p = t->data;
    rp_httpd_req_t *req = p->req;
    p->req = NULL;
    /* The request is answered before the timer goes, so no abort can arrive
     * for it any more. */
    rp_httpd_on_abort(req, NULL, NULL);
    pending_unlink_and_close(p);
    send_reply(p->m, req, &p->reply, p->ep, p->start);
}

/* Send r now, or park it: after the latency, or for ever (a stall).
 * Takes ownership of r->body. */
static void deliver(rp_devmodel_t *m, rp_httpd_req_t *req, reply_t *r, ep_t ep, uint64_t start)
{
    long delay = 0;
    if (ep == EP_EMBED || ep == EP_CHAT || ep == EP_PREDICT) {
        delay = m->latency_ms;
        if (m->jitter_ms > 0)
            delay += (long)(rng_next(m) % (uint64_t)(m->jitter_ms + 1));
    }
    delay += r->delay_ms;
    if (r->kind != OUT_STALL && delay <= 0) {
        send_reply(m, req, r, ep, start);
        free(r->body);
        return;
    }
    pending_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        /* Out of memory: answer at once rather than lose the request. */
        if (r->kind == OUT_STALL)
            reply_error(r, 503, "server_error", NULL, NULL, "Out of memory.");
        send_reply(m, req, r, ep, start);
        free(r->body);
        return;
    }
    /* Bodies are formatted into a worst-case buffer (an embedding's is
     * several times its final size): give the slack back while parked. */
    if (r->body != NULL && r->len > 0) {
        char *shrunk = realloc(r->body, r->len);
        if (shrunk != NULL)
            r->body = shrunk;
    }
    p->m = m;
    p->req = req;
    p->reply = *r;
    p->ep = ep;
    p->start = start;
    uv_timer_init(m->loop, &p->timer);
    p->timer.data = p;
    m->open_timers++;
    p->next = m->pending;
    if (m->pending != NULL)
        m->pending->prev = p;
    m->pending = p;
    rp_httpd_on_abort(req, pending_on_abort, p);
    if (r->kind != OUT_STALL)
        uv_timer_start(&p->timer, pending_on_timer, (uint64_t)delay, 0);
}

/* ------------------------------------------------------------------ */
/* routing                                                             */

static int authorized(const rp_devmodel_t *m, rp_httpd_req_t *req)
{
    if (m->api_key == NULL)
        return 1;
    const char *h = rp_httpd_header(req, "Authorization");
    if (h == NULL)
        return 0;
    if (strncasecmp(h, "Bearer ", 7) == 0)
        h += 7;
    else if (strncasecmp(h, "Token ", 6) == 0)
        h += 6;
    else
        return 0;
    size_t a = strlen(h), b = strlen(m->api_key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < a && i < b; i++)
        diff |= (unsigned char)(h[i] ^ m->api_key[i]);
    return diff == 0;
}

static void reply_method(reply_t *r, const char *allowed)
{
    reply_error(r, 405, "invalid_request_error", NULL, "method_not_allowed",
                "This endpoint accepts %s only.", allowed);
}

static ep_t route(const char *path)
{
    if (strcmp(path, "/v1/embeddings") == 0 || strcmp(path, "/embeddings") == 0)
        return EP_EMBED;
    if (strcmp(path, "/v1/chat/completions") == 0 || strcmp(path, "/chat/completions") == 0)
        return EP_CHAT;
    if (strcmp(path, "/v1/predictions") == 0 || strncmp(path, "/v1/predictions/", 16) == 0 ||
        (strncmp(path, "/v1/models/", 11) == 0 && strstr(path + 11, "/predictions") != NULL))
        return EP_PREDICT;
    if (strncmp(path, "/storage/v1/object/", 19) == 0)
        return EP_STORAGE;
    if (strcmp(path, "/v1/models") == 0)
        return EP_MODELS;
    if (strcmp(path, "/healthz") == 0)
        return EP_HEALTH;
    if (strncmp(path, "/_admin/", 8) == 0)
        return EP_ADMIN;
    return EP_OTHER;
}

static void handle_model(rp_devmodel_t *m, rp_httpd_req_t *req, ep_t ep, reply_t *r)
{
    size_t len;
    const char *body = rp_httpd_body(req, &len);
    if (!authorized(m, req)) {
        reply_error(r, 401, "invalid_request_error", NULL, "invalid_api_key",
                    "Incorrect API key provided.");
        return;
    }
    if (check_faults(m, ep, body, len, r))
        return;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (root == NULL) {
        reply_invalid(r, NULL, "The request body is not valid JSON: %s (line %d, column %d).",
                      jerr.text, jerr.line, jerr.column);
        return;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        reply_invalid(r, NULL, "The request body must be a JSON object.");
        return;
    }
    if (ep == EP_EMBED)
        handle_embeddings(m, root, r);
    else if (ep == EP_CHAT)
        handle_chat(m, root, body, len, r);
    else
        handle_prediction(m, root, rp_httpd_path(req), prefer_wait_ms(req), r);
    json_decref(root);
}

static void on_request(void *data, rp_httpd_req_t *req)
{
    rp_devmodel_t *m = data;
    uint64_t start = uv_now(m->loop);
    const char *path = rp_httpd_path(req);
    const char *method = rp_httpd_method(req);
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int post = strcmp(method, "POST") == 0;
    ep_t ep = route(path);
    reply_t r = {0};
    m->requests_total++;
    m->by_ep[ep]++;
    switch (ep) {
    case EP_PREDICT:
        if (strncmp(path, "/v1/predictions/", 16) == 0) {
            if (!authorized(m, req))
                reply_error(&r, 401, "invalid_request_error", NULL, "invalid_api_key",
                            "Incorrect API key provided.");
            else
                handle_prediction_get(m, path + 16, get, post, &r);
            break;
        }
        /* fall through */
    case EP_EMBED:
    case EP_CHAT:
        if (!post)
            reply_method(&r, "POST");
        else
            handle_model(m, req, ep, &r);
        break;
    case EP_STORAGE:
        if (!post && strcmp(method, "PUT") != 0)
            reply_method(&r, "POST or PUT");
        else if (!authorized(m, req))
            reply_error(&r, 401, "invalid_request_error", NULL, "invalid_api_key",
                        "Incorrect API key provided.");
        else
            handle_storage_put(m, req, path + 19, post, &r);
        break;
    case EP_MODELS:
        if (!get)
            reply_method(&r, "GET");
        else if (!authorized(m, req))
            reply_error(&r, 401, "invalid_request_error", NULL, "invalid_api_key",
                        "Incorrect API key provided.");
        else
            reply_json(&r, 200,
                       json_pack("{s:s,s:[{s:s,s:s,s:s},{s:s,s:s,s:s}]}", "object", "list", "data",
                                 "id", "devmodel-embed", "object", "model", "owned_by", "ragpool",
                                 "id", "devmodel-chat", "object", "model", "owned_by", "ragpool"));
        break;
    case EP_HEALTH:
        if (!get)
            reply_method(&r, "GET");
        else
            reply_json(&r, 200, json_pack("{s:s}", "status", "ok"));
        break;
    case EP_ADMIN:
        if (strncmp(path, "/_admin/storage/", 16) == 0) {
            if (!get)
                reply_method(&r, "GET");
            else
                handle_storage_get(m, path + 16, &r);
        } else if (strcmp(path, "/_admin/stats") == 0) {
            if (!get)
                reply_method(&r, "GET");
            else
                handle_stats(m, &r);
        } else if (strcmp(path, "/_admin/config") == 0 || strcmp(path, "/_admin/reset") == 0) {
            if (!post) {
                reply_method(&r, "POST");
            } else if (path[8] == 'r') {
                handle_reset(m, &r);
            } else {
                size_t len;
                const char *body = rp_httpd_body(req, &len);
                json_t *root = json_loadb(body, len, 0, NULL);
                if (!json_is_object(root))
                    reply_invalid(&r, NULL, "The request body must be a JSON object.");
                else
                    handle_config(m, root, &r);
                json_decref(root);
            }
        } else {
            reply_error(&r, 404, "invalid_request_error", NULL, "unknown_url",
                        "Unknown admin URL: %s", path);
        }
        break;
    default:
        reply_error(&r, 404, "invalid_request_error", NULL, "unknown_url",
                    "Unknown request URL: %s %s.", method, path);
        break;
    }
    deliver(m, req, &r, ep, start);
}

/* ------------------------------------------------------------------ */
/* life cycle                                                          */

rp_devmodel_t *rp_devmodel_new(uv_loop_t *loop, const rp_devmodel_opts_t *opts, rp_err_t *err)
{
    if (opts->fault_rate < 0 || opts->fault_rate > 1 || opts->latency_ms < 0 ||
        opts->latency_jitter_ms < 0 || (int)opts->fault_kind < 0 ||
        opts->fault_kind >= RP_FAULT_NKINDS) {
        rp_err_set(err, RP_EINVAL, "Invalid development model settings.");
        return NULL;
    }
    rp_devmodel_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        goto oom;
    m->loop = loop;
    snprintf(m->host, sizeof(m->host), "%s",
             opts->host != NULL && opts->host[0] != '\0' ? opts->host : "127.0.0.1");
    m->port = opts->port;
    if (opts->api_key != NULL && opts->api_key[0] != '\0') {
        m->api_key = strdup(opts->api_key);
        if (m->api_key == NULL)
            goto oom_m;
    }
    m->latency_ms = opts->latency_ms;
    m->jitter_ms = opts->latency_jitter_ms;
    m->fault_rate = opts->fault_rate;
    m->fault_kind = opts->fault_kind;
    m->verbose = opts->verbose;
    m->rng =
        opts->seed != 0 ? (uint64_t)opts->seed : (uint64_t)uv_hrtime() ^ ((uint64_t)getpid() << 32);
    if (m->rng == 0)
        m->rng = 0x9e3779b97f4a7c15ULL;
    m->faults = rp_devmodel_faultmem_new();
    if (m->faults == NULL)
        goto oom_key;
    rp_httpd_opts_t ho = {
        .host = m->host,
        .port = m->port,
        .backlog = 4096,
        .max_body_bytes = MAX_BODY,
        .idle_timeout_ms = 120000,
        .handler = on_request,
        .data = m,
    };
    m->httpd = rp_httpd_new(loop, &ho, err);
    if (m->httpd == NULL)
        goto fail_faults;
    return m;

fail_faults:
    rp_devmodel_faultmem_free(m->faults);
    free(m->api_key);
    free(m);
    return NULL;
oom_key:
    free(m->api_key);
oom_m:
    free(m);
oom:
    rp_err_set(err, RP_ENOMEM, "Out of memory creating the development model server.");
    return NULL;
}

int rp_devmodel_start(rp_devmodel_t *m, rp_err_t *err)
{
    int rc = rp_httpd_start(m->httpd, err);
    if (rc < 0)
        return rc;
    m->port = rp_httpd_port(m->httpd);
    return 0;
}

int rp_devmodel_port(const rp_devmodel_t *m)
{
    return m->port;
}

static void httpd_on_closed(void *data)
{
    rp_devmodel_t *m = data;
    m->httpd_closed = 1;
    m->httpd = NULL;
    maybe_closed(m);
}

void rp_devmodel_close(rp_devmodel_t *m, void (*cb)(void *data), void *data)
{
    if (m->closing)
        return;
    m->closing = 1;
    m->close_cb = cb;
    m->close_data = data;
    /* Closing the HTTP server aborts every parked request, which closes its
     * timer; m goes once both the server and the timers are gone. */
    rp_httpd_close(m->httpd, httpd_on_closed, m);
}
