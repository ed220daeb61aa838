/*
 * provider.h: chat model providers behind one interface, and the chain of
 * providers a job kind falls back along.
 *
 * A provider turns one prompt into one answer over HTTP (common/http.h):
 * "openai" is any OpenAI-compatible chat completions API (plain, or read as
 * server-sent events with partial text handed to the caller as it arrives),
 * "replicate" is the Replicate predictions API (create with version and
 * input, `Prefer: wait=N`, then poll on a libuv timer until the prediction
 * has succeeded, failed or been canceled).  Every call ends with exactly one
 * done callback unless it is cancelled, and reports its outcome as one of a
 * few classes that decide what happens next:
 *
 *   RP_PROVIDER_OK        the answer
 *   RP_PROVIDER_SERVER    5xx, timeout, transport error, a malformed answer or
 *                         a failed prediction: the provider may be out
 *   RP_PROVIDER_RATE      429 (with its Retry-After)
 *   RP_PROVIDER_REQUEST   another 4xx: this request is wrong; another provider
 *                         would refuse it too
 *
 * The chain (rp_chain_t) holds the providers in fallback order, each with a
 * circuit breaker: RAGPOOL_PROVIDER_FAILURES consecutive SERVER outcomes, or
 * a 429 asking to wait longer than RAGPOOL_PROVIDER_429_BUDGET_MS, open it
 * for RAGPOOL_PROVIDER_COOLDOWN_MS (or the Retry-After); after that one
 * trial request per cooldown is let through, and a success closes it.
 * rp_chain_pick never refuses the last provider a job has not tried, so a
 * chain of one behaves exactly like a plain client (the queue's backoff
 * does the waiting).
 *
 * The call object is allocated by the caller (as libuv's requests are), so
 * a plain call costs no allocation of its own; its fields are private.
 */
#ifndef RP_WORKER_PROVIDER_H
#define RP_WORKER_PROVIDER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "err.h"
#include "http.h"
#include "openai.h"

#define RP_PROVIDERS_MAX 8

typedef struct rp_provider rp_provider_t;
typedef struct rp_chain rp_chain_t;

typedef enum {
    RP_PROVIDER_OK = 0,
    RP_PROVIDER_SERVER,
    RP_PROVIDER_RATE,
    RP_PROVIDER_REQUEST,
} rp_provider_status_t;

/* "ok", "server", "rate", "request". */
const char *rp_provider_status_name(rp_provider_status_t s);

typedef struct rp_provider_result {
    rp_provider_status_t status;
    long http_status;       /* 0 when no HTTP answer */
    int64_t retry_after_ms; /* -1 when none was sent */
    char error[320];        /* a sentence, when status != OK */
    rp_chat_result_t chat;  /* when OK: the callee may move its pointers out (and NULL them) */
} rp_provider_result_t;

/* The call ended: res is valid only during the call. */
typedef void (*rp_provider_done_cb)(void *data, rp_provider_result_t *res);
/* Partial text of a streamed answer, in order (valid during the call).
 * Called from inside the HTTP client's data callback: it must not start or
 * cancel requests. */
typedef void (*rp_provider_delta_cb)(void *data, const char *text, size_t len);

typedef struct rp_provider_req {
    const char *prompt; /* borrowed (copied into the request) */
    size_t prompt_len;
    const char *model;             /* openai: model name; replicate: version id, "owner/name" or
                                    * "owner/name:version" */
    long max_tokens;               /* <= 0: none sent */
    double temperature;            /* NAN: none sent */
    rp_provider_delta_cb on_delta; /* non-NULL: stream where the provider can */
} rp_provider_req_t;

/* One call in flight; allocated by the caller, valid until done runs or
 * rp_provider_cancel returns.  All fields are private. */
typedef struct rp_provider_call {
    rp_provider_t *p;
    rp_http_req_t *http;
    void *impl; /* provider state of this call (streaming, polling), or NULL */
    rp_provider_done_cb done;
    rp_provider_delta_cb on_delta;
    void *data;
} rp_provider_call_t;

/* --- providers --- */

/* Create provider `name` ("openai" or "replicate") from cfg (borrowed: must
 * outlive it) using http (borrowed).  Returns owned (rp_provider_free) or
 * NULL with err naming the setting that is wrong. */
rp_provider_t *rp_provider_new(const char *name, uv_loop_t *loop, rp_http_t *http,
                               const rp_worker_cfg_t *cfg, rp_err_t *err);

/* The provider's name ("openai", "replicate"); static. */
const char *rp_provider_name(const rp_provider_t *p);

/* The model this provider asks for when neither the job nor the registry
 * names one (RAGPOOL_CHAT_MODEL, RAGPOOL_REPLICATE_VERSION); may be "". */
const char *rp_provider_default_model(const rp_provider_t *p);

/* Whether the provider reads answers as a stream (calls on_delta). */
int rp_provider_streams(const rp_provider_t *p);

/* Start a call.  Returns 0 (done will run once, never from inside this
 * function) or a negative RP_E* code (done never runs). */
int rp_provider_call(rp_provider_t *p, rp_provider_call_t *call, const rp_provider_req_t *req,
                     rp_provider_done_cb done, void *data);

/* Abandon a call in flight: done never runs.  Safe from any callback. */
void rp_provider_cancel(rp_provider_call_t *call);

/* Free a provider with no call in flight (NULL is allowed). */
void rp_provider_free(rp_provider_t *p);

/* --- the chain --- */

/* Parse RAGPOOL_CHAT_PROVIDERS and create each provider.  Returns owned
 * (rp_chain_free) or NULL with err naming the setting. */
rp_chain_t *rp_chain_new(uv_loop_t *loop, rp_http_t *http, const rp_worker_cfg_t *cfg,
                         rp_err_t *err);
size_t rp_chain_size(const rp_chain_t *c);
rp_provider_t *rp_chain_get(rp_chain_t *c, size_t i);

/* The provider a job should try next: the first one not in tried (bit i =
 * provider i) whose circuit lets a request through at now_ms, else the
 * last one not tried; -1 when every provider was tried. */
int rp_chain_pick(rp_chain_t *c, unsigned tried, uint64_t now_ms);

/* Record the outcome of a call to provider i at now_ms; returns 1 when the
 * outcome puts the provider out for this job (SERVER, or RATE beyond the
 * budget): the next provider should take it. */
int rp_chain_report(rp_chain_t *c, int i, rp_provider_status_t s, int64_t retry_after_ms,
                    uint64_t now_ms);

/* Whether provider i's circuit is open at now_ms (for logs and tests). */
int rp_chain_is_open(const rp_chain_t *c, int i, uint64_t now_ms);

void rp_chain_free(rp_chain_t *c);

/* --- wire formats (pure; unit-tested) --- */

typedef enum {
    RP_PREDICTION_STARTING = 0,
    RP_PREDICTION_PROCESSING,
    RP_PREDICTION_SUCCEEDED,
    RP_PREDICTION_FAILED,
    RP_PREDICTION_CANCELED,
} rp_prediction_status_t;

typedef struct rp_prediction {
    rp_prediction_status_t status;
    char id[128];
    char *output; /* SUCCEEDED: the output pieces joined; owned */
    char error[256];
} rp_prediction_t;

/* Parse a Replicate prediction.  Returns 0 and fills out (free with
 * rp_prediction_free), or RP_EPROTO with err. */
int rp_replicate_parse(const char *body, size_t len, rp_prediction_t *out, rp_err_t *err);
void rp_prediction_free(rp_prediction_t *p);

/* Request body for a prediction (version NULL: a model's own endpoint). */
char *rp_replicate_request(const char *version, const char *prompt, size_t prompt_len,
                           long max_tokens, double temperature, size_t *len);

#endif
