/*
 * backoff.c: exponential backoff with jitter, and Retry-After parsing.
 */
#include "backoff.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t rp_backoff_delay_ms(const rp_backoff_t *b, int attempt, uint32_t rnd)
{
    if (attempt < 2)
        attempt = 2;
    uint64_t d = b->base_ms;
    /* Double without overflowing: stop as soon as the cap is reached. */
    for (int i = 2; i < attempt && d < b->max_ms; i++)
        d = d > UINT64_MAX / 2 ? UINT64_MAX : d * 2;
    if (d > b->max_ms)
        d = b->max_ms;
    uint64_t half = d / 2;
    return half + (d - half) * (uint64_t)rnd / UINT32_MAX;
}

uint64_t rp_backoff_with_retry_after(uint64_t computed_ms, int64_t retry_after_ms, uint64_t cap_ms)
{
    uint64_t d = computed_ms;
    if (retry_after_ms >= 0 && (uint64_t)retry_after_ms > d)
        d = (uint64_t)retry_after_ms;
    return d > cap_ms ? cap_ms : d;
}

int64_t rp_retry_after_parse_ms(const char *value, int64_t now_s)
{
    if (value == NULL)
        return -1;
    while (isspace((unsigned char)*value))
        value++;
    if (*value == '\0')
        return -1;
    if (isdigit((unsigned char)*value)) {
        int64_t s = 0;
        const char *p = value;
        for (; isdigit((unsigned char)*p); p++) {
            if (s > INT64_MAX / 10000)
                return INT64_MAX / 1000 * 1000; /* absurdly large: the caller caps it */
            s = s * 10 + (*p - '0');
        }
        while (isspace((unsigned char)*p))
            p++;
        return *p == '\0' ? s * 1000 : -1;
    }
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(value, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL)
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    if (*end != '\0')
        return -1;
    int64_t t = (int64_t)timegm(&tm);
    return t <= now_s ? 0 : (t - now_s) * 1000;
}

uint32_t rp_rand32(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}
