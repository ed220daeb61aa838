/*
 * backoff.h: retry delays.  Pure functions, no clock and no global random
 * state: the caller passes the random draw, so tests are deterministic.
 */
#ifndef RP_BACKOFF_H
#define RP_BACKOFF_H

#include <stdint.h>

typedef struct rp_backoff {
    uint64_t base_ms; /* delay before the 2nd attempt, before jitter */
    uint64_t max_ms;  /* cap on any computed delay */
} rp_backoff_t;

/* Delay before attempt number `attempt` (1-based: the delay after the first
 * failure is for attempt 2) with "equal jitter": a value drawn uniformly from
 * [d/2, d] where d = min(max_ms, base_ms * 2^(attempt-2)).  rnd is any
 * uniformly distributed 32-bit value. */
uint64_t rp_backoff_delay_ms(const rp_backoff_t *b, int attempt, uint32_t rnd);

/* The delay to use when a server sent Retry-After: retry_after_ms < 0 means
 * none was sent (use computed_ms); otherwise the larger of the two, capped at
 * cap_ms, so a hostile or broken server cannot park a job for ever. */
uint64_t rp_backoff_with_retry_after(uint64_t computed_ms, int64_t retry_after_ms, uint64_t cap_ms);

/* Parse a Retry-After header value: delta-seconds ("120") or an HTTP-date
 * ("Wed, 21 Oct 2015 07:28:00 GMT") relative to now_s (Unix seconds).
 * Returns milliseconds (0 for a date in the past), or -1 when the value is
 * neither. */
int64_t rp_retry_after_parse_ms(const char *value, int64_t now_s);

/* A small, fast, seedable generator for jitter (xorshift32); state must be
 * non-zero. */
uint32_t rp_rand32(uint32_t *state);

#endif
