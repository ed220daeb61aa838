/*
 * model_budget.c: requests-per-minute and tokens-per-minute buckets with a
 * reserve for chat, and the cooldown after a provider's push-back (see
 * model_budget.h).
 *
 * A bucket's level is refilled lazily from the elapsed time on each call;
 * it may go negative when a request larger than the bucket passed (the
 * debt is paid back by waiting).  All times are milliseconds from the
 * caller's monotonic clock.
 */
#include "model_budget.h"

#include <math.h>
#include <stdlib.h>

/* Seconds of the per-minute rate a bucket holds. */
#define BUCKET_SECONDS 10.0

typedef struct bucket {
    double rate; /* per ms; 0 = unlimited */
    double cap;
    double level;
} bucket_t;

struct rp_model_budget {
    bucket_t req, tok;
    double reserve; /* 0..1 */
    int64_t last_ms;
    int64_t cooldown_until;
    int pushbacks; /* in a row */
    rp_model_budget_opts_t o;
};

static void bucket_init(bucket_t *k, double per_minute)
{
    k->rate = per_minute > 0 ? per_minute / 60000.0 : 0;
    k->cap = per_minute > 0 ? fmax(1.0, per_minute * BUCKET_SECONDS / 60.0) : 0;
    k->level = k->cap;
}

static void bucket_refill(bucket_t *k, int64_t elapsed_ms)
{
    if (k->rate > 0 && elapsed_ms > 0)
        k->level = fmin(k->cap, k->level + k->rate * (double)elapsed_ms);
}

/* Milliseconds until k can give cost to class floor (0 = now). */
static double bucket_wait(const bucket_t *k, double cost, double reserve)
{
    if (k->rate <= 0)
        return 0;
    double floor = k->cap * reserve;
    /* A request larger than what the class may use waits for the bucket
     * to be as full as the class allows, and leaves it in debt. */
    double need = fmin(cost, k->cap - floor);
    double have = k->level - floor;
    if (have >= need)
        return 0;
    return (need - have) / k->rate;
}

rp_model_budget_t *rp_model_budget_new(const rp_model_budget_opts_t *opts, int64_t now_ms)
{
    if (opts == NULL || opts->rpm < 0 || opts->tpm < 0 || opts->reserve_pct < 0 ||
        opts->reserve_pct > 100 || opts->pause_base_ms < 1 || opts->pause_max_ms < 1)
        return NULL;
    rp_model_budget_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->o = *opts;
    bucket_init(&b->req, opts->rpm);
    bucket_init(&b->tok, opts->tpm);
    b->reserve = opts->reserve_pct / 100.0;
    b->last_ms = now_ms;
    b->cooldown_until = now_ms;
    return b;
}

void rp_model_budget_free(rp_model_budget_t *b)
{
    free(b);
}

static void refill(rp_model_budget_t *b, int64_t now_ms)
{
    if (now_ms > b->last_ms) {
        bucket_refill(&b->req, now_ms - b->last_ms);
        bucket_refill(&b->tok, now_ms - b->last_ms);
        b->last_ms = now_ms;
    }
}

int64_t rp_model_budget_take(rp_model_budget_t *b, rp_budget_class_t c, double tokens,
                             int64_t now_ms)
{
    if (now_ms < b->cooldown_until)
        return b->cooldown_until - now_ms;
    refill(b, now_ms);
    double reserve = c == RP_BUDGET_BACKGROUND ? b->reserve : 0.0;
    if (tokens < 1)
        tokens = 1;
    double wait = fmax(bucket_wait(&b->req, 1.0, reserve), bucket_wait(&b->tok, tokens, reserve));
    if (wait > 0) {
        double ms = ceil(wait);
        return ms < 1 ? 1 : (int64_t)ms;
    }
    if (b->req.rate > 0)
        b->req.level -= 1.0;
    if (b->tok.rate > 0)
        b->tok.level -= tokens;
    return 0;
}

int64_t rp_model_budget_pause(rp_model_budget_t *b, int64_t retry_after_ms, int64_t now_ms)
{
    refill(b, now_ms);
    if (b->pushbacks < 30)
        b->pushbacks++;
    int64_t pause = b->o.pause_base_ms;
    for (int i = 1; i < b->pushbacks && pause < b->o.pause_max_ms; i++)
        pause *= 2;
    if (pause > b->o.pause_max_ms)
        pause = b->o.pause_max_ms;
    if (retry_after_ms >= 0) {
        int64_t ra = retry_after_ms;
        if (b->o.retry_after_max_ms > 0 && ra > b->o.retry_after_max_ms)
            ra = b->o.retry_after_max_ms;
        if (ra > pause)
            pause = ra;
    }
    if (now_ms + pause > b->cooldown_until)
        b->cooldown_until = now_ms + pause;
    /* The provider says we were faster than it allows: start again from
     * an empty bucket, i.e. at the paced rate. */
    if (b->req.level > 0)
        b->req.level = 0;
    if (b->tok.level > 0)
        b->tok.level = 0;
    return b->cooldown_until - now_ms;
}

void rp_model_budget_ok(rp_model_budget_t *b)
{
    b->pushbacks = 0;
}

int64_t rp_model_budget_cooldown_ms(const rp_model_budget_t *b, int64_t now_ms)
{
    return now_ms < b->cooldown_until ? b->cooldown_until - now_ms : 0;
}
