/*
 * provider.c: provider dispatch, the chain and its circuit breakers.
 *
 * The breaker of a provider is two numbers: consecutive SERVER failures and
 * the loop time until which the circuit is open.  Opening happens at the
 * RAGPOOL_PROVIDER_FAILURES-th consecutive failure (for the cooldown) or on a
 * 429 whose Retry-After exceeds the budget (for that long).  While open the
 * provider is skipped by rp_chain_pick unless it is the last the job has not
 * tried; once the time has passed, the next pick lets one trial through and
 * moves the reopening point a cooldown ahead, so at most one trial per
 * cooldown goes out even if its job never reports back.  Any success closes
 * the circuit.  All of this runs on the loop thread: no locking.
 */
#include "provider.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "provider_int.h"

struct rp_chain {
    rp_provider_t *p[RP_PROVIDERS_MAX];
    size_t n;
    const rp_worker_cfg_t *cfg;
};

const char *rp_provider_status_name(rp_provider_status_t s)
{
    switch (s) {
    case RP_PROVIDER_OK:
        return "ok";
    case RP_PROVIDER_SERVER:
        return "server";
    case RP_PROVIDER_RATE:
        return "rate";
    case RP_PROVIDER_REQUEST:
        return "request";
    }
    return "unknown";
}

void rp__provider_http_error(rp_provider_result_t *res, const char *what,
                             const rp_http_resp_t *resp)
{
    res->http_status = resp->status;
    res->retry_after_ms = resp->retry_after_ms;
    if (resp->error != 0) {
        res->status = RP_PROVIDER_SERVER;
        snprintf(res->error, sizeof(res->error), "%s failed: %s: %s", what,
                 rp_strerror(resp->error), resp->error_msg);
        return;
    }
    char desc[300];
    rp_openai_describe_error(resp->status, resp->body, resp->body_len, desc, sizeof(desc));
    snprintf(res->error, sizeof(res->error), "%s: %s", what, desc);
    if (resp->status == 429)
        res->status = RP_PROVIDER_RATE;
    else if (rp_openai_status_retryable(resp->status))
        res->status = RP_PROVIDER_SERVER;
    else
        res->status = RP_PROVIDER_REQUEST;
}

rp_provider_t *rp_provider_new(const char *name, uv_loop_t *loop, rp_http_t *http,
                               const rp_worker_cfg_t *cfg, rp_err_t *err)
{
    const rp_provider_ops_t *ops = NULL;
    if (strcmp(name, "openai") == 0)
        ops = &rp__provider_openai;
    else if (strcmp(name, "replicate") == 0)
        ops = &rp__provider_replicate;
    if (ops == NULL) {
        rp_err_set(err, RP_EINVAL,
                   "RAGPOOL_CHAT_PROVIDERS: unknown provider '%s' (openai or replicate)", name);
        return NULL;
    }
    rp_provider_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    p->ops = ops;
    p->loop = loop;
    p->http = http;
    p->cfg = cfg;
    p->default_model = "";
    if (ops->init(p, err) != 0) {
        rp_provider_free(p);
        return NULL;
    }
    return p;
}

const char *rp_provider_name(const rp_provider_t *p)
{
    return p->ops->name;
}

const char *rp_provider_default_model(const rp_provider_t *p)
{
    return p->default_model != NULL ? p->default_model : "";
}

int rp_provider_streams(const rp_provider_t *p)
{
    return p->ops->streams;
}

int rp_provider_call(rp_provider_t *p, rp_provider_call_t *call, const rp_provider_req_t *req,
                     rp_provider_done_cb done, void *data)
{
    memset(call, 0, sizeof(*call));
    call->p = p;
    call->done = done;
    call->data = data;
    call->on_delta = p->ops->streams ? req->on_delta : NULL;
    return p->ops->call(p, call, req);
}

void rp_provider_cancel(rp_provider_call_t *call)
{
    if (call->p != NULL)
        call->p->ops->cancel(call);
    call->p = NULL;
}

void rp_provider_free(rp_provider_t *p)
{
    if (p == NULL)
        return;
    if (p->ops->fini != NULL)
        p->ops->fini(p);
    free(p->url);
    free(p->auth);
    free(p);
}

/* ------------------------------------------------------------------ */
/* The chain                                                            */
/* ------------------------------------------------------------------ */

rp_chain_t *rp_chain_new(uv_loop_t *loop, rp_http_t *http, const rp_worker_cfg_t *cfg,
                         rp_err_t *err)
{
    rp_chain_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    c->cfg = cfg;
    const char *s = cfg->chat_providers != NULL ? cfg->chat_providers : "openai";
    while (*s != '\0') {
        while (*s == ',' || isspace((unsigned char)*s))
            s++;
        if (*s == '\0')
            break;
        char name[32];
        size_t n = 0;
        while (s[n] != '\0' && s[n] != ',' && !isspace((unsigned char)s[n]))
            n++;
        if (n >= sizeof(name)) {
            rp_err_set(err, RP_EINVAL, "RAGPOOL_CHAT_PROVIDERS: '%.*s' is not a provider", (int)n,
                       s);
            goto fail;
        }
        memcpy(name, s, n);
        name[n] = '\0';
        s += n;
        for (size_t i = 0; i < c->n; i++) {
            if (strcmp(rp_provider_name(c->p[i]), name) == 0) {
                rp_err_set(err, RP_EINVAL, "RAGPOOL_CHAT_PROVIDERS: '%s' appears twice", name);
                goto fail;
            }
        }
        if (c->n == RP_PROVIDERS_MAX) {
            rp_err_set(err, RP_EINVAL, "RAGPOOL_CHAT_PROVIDERS: more than %d providers",
                       RP_PROVIDERS_MAX);
            goto fail;
        }
        c->p[c->n] = rp_provider_new(name, loop, http, cfg, err);
        if (c->p[c->n] == NULL)
            goto fail;
        c->n++;
    }
    if (c->n == 0) {
        rp_err_set(err, RP_EINVAL, "RAGPOOL_CHAT_PROVIDERS names no provider");
        goto fail;
    }
    return c;
fail:
    rp_chain_free(c);
    return NULL;
}

size_t rp_chain_size(const rp_chain_t *c)
{
    return c->n;
}

rp_provider_t *rp_chain_get(rp_chain_t *c, size_t i)
{
    return i < c->n ? c->p[i] : NULL;
}

int rp_chain_is_open(const rp_chain_t *c, int i, uint64_t now_ms)
{
    return i >= 0 && (size_t)i < c->n && c->p[i]->open_until > now_ms;
}

int rp_chain_pick(rp_chain_t *c, unsigned tried, uint64_t now_ms)
{
    int last = -1;
    for (size_t i = 0; i < c->n; i++) {
        if (tried & (1u << i))
            continue;
        last = (int)i;
        rp_provider_t *p = c->p[i];
        if (p->open_until == 0)
            return (int)i;
        if (p->open_until <= now_ms) {
            /* Half open: this job is the trial; the next one waits a cooldown. */
            p->open_until = now_ms + (uint64_t)c->cfg->provider_cooldown_ms;
            rp_log_info("provider.trial", NULL, "%s: trying again after its cooldown",
                        rp_provider_name(p));
            return (int)i;
        }
    }
    /* Every untried provider is out: the last one still gets the job, so a
     * job never fails without having asked anyone. */
    for (int i = (int)c->n - 1; i >= 0; i--)
        if (!(tried & (1u << i)))
            return i;
    return last;
}

int rp_chain_report(rp_chain_t *c, int i, rp_provider_status_t s, int64_t retry_after_ms,
                    uint64_t now_ms)
{
    if (i < 0 || (size_t)i >= c->n)
        return 0;
    rp_provider_t *p = c->p[i];
    switch (s) {
    case RP_PROVIDER_OK:
        if (p->open_until != 0)
            rp_log_info("provider.closed", NULL, "%s answers again", rp_provider_name(p));
        p->failures = 0;
        p->open_until = 0;
        return 0;
    case RP_PROVIDER_REQUEST:
        return 0;
    case RP_PROVIDER_RATE:
        if (retry_after_ms <= c->cfg->provider_429_budget_ms)
            return 0; /* wait it out on this provider */
        p->open_until = now_ms + (uint64_t)retry_after_ms;
        rp_log_warn("provider.open", NULL, "%s: rate limited for %lld ms, beyond the budget",
                    rp_provider_name(p), (long long)retry_after_ms);
        return 1;
    case RP_PROVIDER_SERVER:
        p->failures++;
        if (p->failures >= c->cfg->provider_failures) {
            int was_open = p->open_until != 0;
            p->open_until = now_ms + (uint64_t)c->cfg->provider_cooldown_ms;
            if (!was_open)
                rp_log_warn("provider.open", NULL, "%s: %d failures in a row, out for %ld ms",
                            rp_provider_name(p), p->failures, c->cfg->provider_cooldown_ms);
        }
        return 1;
    }
    return 0;
}

void rp_chain_free(rp_chain_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++)
        rp_provider_free(c->p[i]);
    free(c);
}
