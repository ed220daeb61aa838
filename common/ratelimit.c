/*
 * ratelimit.c: token buckets in a hash table (see ratelimit.h).
 *
 * Open hashing with chains; the table doubles up to the size that keeps
 * chains short for max_keys entries.  A bucket's state is its token count
 * and the time it was last updated; refilling is computed lazily on take.
 */
#include "ratelimit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    struct bucket *next;
    uint64_t hash;
    double tokens;
    int64_t last_ms;
    char key[];
} bucket_t;

struct rp_ratelimit {
    double rate; /* tokens per ms */
    double burst;
    size_t max_keys;
    bucket_t **table;
    size_t nslots; /* power of two */
    size_t n;
};

const char rp_ratelimit_lua[] =
    "local rate = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens = tonumber(b[1])\n"
    "local ts = tonumber(b[2])\n"
    "if tokens == nil or ts == nil then tokens = burst; ts = now end\n"
    "local dt = now - ts\n"
    "if dt < 0 then dt = 0 end\n"
    "tokens = math.min(burst, tokens + dt * rate / 1000)\n"
    "local allowed = 0\n"
    "local wait = 0\n"
    "if tokens >= 1 then\n"
    "  tokens = tokens - 1\n"
    "  allowed = 1\n"
    "else\n"
    "  wait = math.ceil((1 - tokens) * 1000 / rate)\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)\n"
    "return {allowed, wait}\n";

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

rp_ratelimit_t *rp_ratelimit_new(double rate, double burst, size_t max_keys)
{
    if (!(rate > 0) || !(burst >= 1) || !isfinite(rate) || !isfinite(burst) || max_keys == 0)
        return NULL;
    rp_ratelimit_t *rl = calloc(1, sizeof(*rl));
    if (rl == NULL)
        return NULL;
    rl->rate = rate / 1000.0;
    rl->burst = burst;
    rl->max_keys = max_keys;
    rl->nslots = 64;
    rl->table = calloc(rl->nslots, sizeof(bucket_t *));
    if (rl->table == NULL) {
        free(rl);
        return NULL;
    }
    return rl;
}

void rp_ratelimit_free(rp_ratelimit_t *rl)
{
    if (rl == NULL)
        return;
    for (size_t i = 0; i < rl->nslots; i++) {
        bucket_t *b = rl->table[i];
        while (b != NULL) {
            bucket_t *next = b->next;
            free(b);
            b = next;
        }
    }
    free(rl->table);
    free(rl);
}

size_t rp_ratelimit_size(const rp_ratelimit_t *rl)
{
    return rl->n;
}

static void refill(const rp_ratelimit_t *rl, bucket_t *b, int64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * rl->rate;
        if (b->tokens > rl->burst)
            b->tokens = rl->burst;
        b->last_ms = now_ms;
    }
}

/* Drop every bucket that is full again: it holds nothing a fresh one would not. */
static void sweep(rp_ratelimit_t *rl, int64_t now_ms)
{
    for (size_t i = 0; i < rl->nslots; i++) {
        bucket_t **pp = &rl->table[i];
        while (*pp != NULL) {
            bucket_t *b = *pp;
            refill(rl, b, now_ms);
            if (b->tokens >= rl->burst) {
                *pp = b->next;
                free(b);
                rl->n--;
            } else {
                pp = &b->next;
            }
        }
    }
}

static void grow(rp_ratelimit_t *rl)
{
    size_t nslots = rl->nslots * 2;
    bucket_t **t = calloc(nslots, sizeof(*t));
    if (t == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < rl->nslots; i++) {
        bucket_t *b = rl->table[i];
        while (b != NULL) {
            bucket_t *next = b->next;
            size_t k = b->hash & (nslots - 1);
            b->next = t[k];
            t[k] = b;
            b = next;
        }
    }
    free(rl->table);
    rl->table = t;
    rl->nslots = nslots;
}

int64_t rp_ratelimit_take(rp_ratelimit_t *rl, const char *key, int64_t now_ms)
{
    uint64_t h = hash_key(key);
    bucket_t *b = rl->table[h & (rl->nslots - 1)];
    while (b != NULL && !(b->hash == h && strcmp(b->key, key) == 0))
        b = b->next;
    if (b == NULL) {
        if (rl->n >= rl->max_keys) {
            sweep(rl, now_ms);
            if (rl->n >= rl->max_keys)
                return 0; /* fail open, untracked */
        }
        size_t klen = strlen(key) + 1;
        b = malloc(sizeof(*b) + klen);
        if (b == NULL)
            return 0;
        memcpy(b->key, key, klen);
        b->hash = h;
        b->tokens = rl->burst;
        b->last_ms = now_ms;
        if (rl->n + 1 > rl->nslots && rl->nslots < rl->max_keys)
            grow(rl);
        size_t k = h & (rl->nslots - 1);
        b->next = rl->table[k];
        rl->table[k] = b;
        rl->n++;
    }
    refill(rl, b, now_ms);
    if (b->tokens >= 1) {
        b->tokens -= 1;
        return 0;
    }
    int64_t wait = (int64_t)ceil((1 - b->tokens) / rl->rate);
    return wait < 1 ? 1 : wait;
}

long rp_ratelimit_retry_after_s(int64_t wait_ms)
{
    long s = (long)((wait_ms + 999) / 1000);
    return s < 1 ? 1 : s;
}
