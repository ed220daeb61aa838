/*
 * ratelimit.h: per-key token buckets (a key is a user id).
 *
 * A bucket holds up to `burst` tokens and gains `rate` tokens a second; a
 * request takes one or is refused with the time until one is available
 * (for Retry-After).  This module keeps buckets in process memory; when
 * several processes must share the limit, they run rp_ratelimit_lua in Redis
 * instead (EVAL with KEYS[1] = the bucket key, ARGV = rate, burst), which
 * computes the same thing atomically on the server's clock.
 *
 * Memory is bounded: at most max_keys buckets are kept; when the table is
 * full, buckets that have refilled completely (and so hold no state worth
 * keeping) are dropped, and if none has, the request is allowed untracked
 * rather than refused (failing open: a limiter must never lock everyone
 * out).  Not thread-safe: one per event loop.
 */
#ifndef RP_RATELIMIT_H
#define RP_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct rp_ratelimit rp_ratelimit_t;

/* rate > 0 tokens per second, burst >= 1.  Returns owned (free with
 * rp_ratelimit_free) or NULL for bad arguments or no memory. */
rp_ratelimit_t *rp_ratelimit_new(double rate, double burst, size_t max_keys);
void rp_ratelimit_free(rp_ratelimit_t *rl);

/* Take one token from key's bucket at now_ms (a monotonic clock in ms).
 * Returns 0 when allowed, otherwise the milliseconds (>= 1) until a token
 * will be available.  key is copied. */
int64_t rp_ratelimit_take(rp_ratelimit_t *rl, const char *key, int64_t now_ms);

/* Number of buckets held. */
size_t rp_ratelimit_size(const rp_ratelimit_t *rl);

/* The Redis script: KEYS[1] bucket key, ARGV[1] rate (tokens/s), ARGV[2]
 * burst.  Returns {allowed (1/0), retry_ms}.  Uses the server's TIME, so
 * dispatchers with skewed clocks agree; the key expires once the bucket
 * would be full again. */
extern const char rp_ratelimit_lua[];

/* Seconds for a Retry-After header from a wait in ms: ceil, at least 1. */
long rp_ratelimit_retry_after_s(int64_t wait_ms);

#endif
