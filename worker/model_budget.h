/*
 * model_budget.h: one model provider's rate budget, shared by every job kind
 * of a worker process: requests per minute and tokens per minute (token
 * buckets), and a cooldown after the provider pushed back (429, honouring
 * Retry-After; 5xx and transport errors back off too).
 *
 * Two classes of traffic draw on the same buckets.  Chat (foreground) may
 * use all of them; background work (re-embedding) may use only what is
 * above a reserve (RAGPOOL_MODEL_RESERVE_PCT of each bucket), so a large
 * batch never starves the questions users are waiting for.  A cooldown
 * stops both classes: the provider's limit is one for the whole key.
 *
 * Each bucket holds ten seconds of its per-minute rate (at least one
 * request), so a fresh process may burst that much and is then paced.  A
 * request larger than a bucket may still pass: it waits for the bucket to
 * be as full as its class allows, and leaves it in debt.  The limits are
 * per process: with N workers sharing one key, give each 1/N of it (the
 * cooldown after a 429 is the fleet-wide backstop).
 *
 * Pure logic with the clock passed in (milliseconds on any monotonic
 * clock), so it is unit-tested without sleeping.  Not thread-safe: one per
 * event loop.
 */
#ifndef RP_MODEL_BUDGET_H
#define RP_MODEL_BUDGET_H

#include <stdint.h>

typedef struct rp_model_budget rp_model_budget_t;

typedef enum {
    RP_BUDGET_CHAT = 0,       /* foreground: may use the whole budget */
    RP_BUDGET_BACKGROUND = 1, /* re-embedding: leaves the reserve to chat */
} rp_budget_class_t;

typedef struct rp_model_budget_opts {
    double rpm;                 /* requests per minute; 0 = unlimited */
    double tpm;                 /* tokens per minute; 0 = unlimited */
    int reserve_pct;            /* 0..100: share of each bucket background work leaves */
    int64_t pause_base_ms;      /* first cooldown without Retry-After; doubles per repeat */
    int64_t pause_max_ms;       /* cap on that cooldown */
    int64_t retry_after_max_ms; /* cap on a provider's Retry-After */
} rp_model_budget_opts_t;

/* Returns owned (free with rp_model_budget_free) or NULL when out of memory
 * or an option is out of range.  now_ms starts the buckets full. */
rp_model_budget_t *rp_model_budget_new(const rp_model_budget_opts_t *opts, int64_t now_ms);
void rp_model_budget_free(rp_model_budget_t *b);

/* Take one request of about `tokens` tokens for class c at now_ms.
 * Returns 0 when it may be sent now (the budget is charged), otherwise the
 * milliseconds (>= 1) to wait before asking again (nothing is charged). */
int64_t rp_model_budget_take(rp_model_budget_t *b, rp_budget_class_t c, double tokens,
                             int64_t now_ms);

/* The provider pushed back: a 429 (retry_after_ms from its Retry-After, or
 * -1 when absent), a 5xx or a transport error (-1).  Nothing is sent until
 * the cooldown ends: the larger of Retry-After (capped) and an exponential
 * pause that doubles with each push-back in a row.  The buckets are emptied
 * so sending resumes at the paced rate.  Returns the cooldown in ms. */
int64_t rp_model_budget_pause(rp_model_budget_t *b, int64_t retry_after_ms, int64_t now_ms);

/* A request succeeded: the run of push-backs is over. */
void rp_model_budget_ok(rp_model_budget_t *b);

/* Milliseconds left of the cooldown at now_ms (0 when none). */
int64_t rp_model_budget_cooldown_ms(const rp_model_budget_t *b, int64_t now_ms);

#endif
