/*
 * vec.c: base64 decoding and fast float formatting for vectors.
 */
#include "vec.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long rp_vec_from_base64(const char *b64, size_t len, float *out, size_t max)
{
    while (len > 0 && b64[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return -1;
    size_t nbytes = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (nbytes % 4 != 0 || nbytes / 4 > max)
        return -1;
    uint8_t word[4];
    size_t wi = 0, nf = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)b64[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            word[wi++] = (uint8_t)(acc >> bits);
            if (wi == 4) {
                uint32_t u = (uint32_t)word[0] | (uint32_t)word[1] << 8 | (uint32_t)word[2] << 16 |
                             (uint32_t)word[3] << 24;
                float f;
                memcpy(&f, &u, sizeof(f));
                if (!isfinite(f))
                    return -1;
                out[nf++] = f;
                wi = 0;
            }
        }
    }
    return (long)nf;
}

static const double pow10_table[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11};

size_t rp_vec_format_float(char *out, float value)
{
    double v = value;
    if (v == 0 || !isfinite(v)) {
        out[0] = '0';
        return 1;
    }
    double a = fabs(v);
    if (a < 1e-4 || a >= 1e6)
        return (size_t)snprintf(out, 32, "%.7g", v);

    /* Digits before the point (0 for a < 1), then decimals so that the
     * total is 7 significant digits. */
    int ipow = 0;
    while (ipow < 6 && a >= pow10_table[ipow + 1])
        ipow++;
    int lead_zeros = 0; /* zeros right after the point for a < 1 */
    if (a < 1)
        while (a * pow10_table[lead_zeros + 1] < 1)
            lead_zeros++;
    int decimals = a >= 1 ? 6 - ipow : 7 + lead_zeros;
    uint64_t m = (uint64_t)llround(a * pow10_table[decimals]);
    uint64_t scale = (uint64_t)pow10_table[decimals];
    uint64_t ip = m / scale, fp = m % scale;

    char *p = out;
    if (v < 0)
        *p++ = '-';
    p += rp_put_decimal(p, ip);
    if (fp != 0) {
        *p++ = '.';
        char frac[16];
        for (int i = decimals - 1; i >= 0; i--) {
            frac[i] = (char)('0' + fp % 10);
            fp /= 10;
        }
        int last = decimals - 1;
        while (last > 0 && frac[last] == '0')
            last--;
        memcpy(p, frac, (size_t)last + 1);
        p += last + 1;
    }
    return (size_t)(p - out);
}

char *rp_vec_format(const float *v, size_t n, rp_vec_format_t fmt, size_t *len)
{
    char *s = malloc(n * 16 + 3);
    if (s == NULL)
        return NULL;
    char *p = s;
    *p++ = fmt == RP_VEC_PGVECTOR ? '[' : '{';
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            *p++ = ',';
        char tmp[32];
        size_t k = rp_vec_format_float(tmp, v[i]);
        memcpy(p, tmp, k);
        p += k;
    }
    *p++ = fmt == RP_VEC_PGVECTOR ? ']' : '}';
    *p = '\0';
    if (len != NULL)
        *len = (size_t)(p - s);
    return s;
}
