/*
 * provider_int.h: what the provider files share (not an API): the provider
 * record and each kind's operations.  provider.c dispatches and runs the
 * chain; provider_openai.c and provider_replicate.c are the two kinds.
 */
#ifndef RP_WORKER_PROVIDER_INT_H
#define RP_WORKER_PROVIDER_INT_H

#include "provider.h"

typedef struct rp_provider_ops {
    const char *name;
    int streams;
    /* Fill p's kind fields from cfg; 0 or RP_E* with err. */
    int (*init)(rp_provider_t *p, rp_err_t *err);
    int (*call)(rp_provider_t *p, rp_provider_call_t *call, const rp_provider_req_t *req);
    void (*cancel)(rp_provider_call_t *call);
    void (*fini)(rp_provider_t *p);
} rp_provider_ops_t;

struct rp_provider {
    const rp_provider_ops_t *ops;
    uv_loop_t *loop;
    rp_http_t *http;
    const rp_worker_cfg_t *cfg;
    char *url;              /* openai: <base>/chat/completions; replicate: <base> */
    char *auth;             /* "Authorization: Bearer …" or NULL */
    const char *headers[6]; /* plain requests */
    const char *default_model;
    void *kind; /* the kind's own fields (replicate: headers), owned by the kind */

    /* circuit breaker (provider.c) */
    int failures;        /* consecutive SERVER outcomes */
    uint64_t open_until; /* loop ms; 0 = closed */
};

extern const rp_provider_ops_t rp__provider_openai;
extern const rp_provider_ops_t rp__provider_replicate;

/* Classify a non-200 HTTP answer into res (status, error, retry-after). */
void rp__provider_http_error(rp_provider_result_t *res, const char *what,
                             const rp_http_resp_t *resp);

#endif
