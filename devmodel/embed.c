/*
 * embed.c: deterministic feature-hashed embeddings and their encoders (see
 * embed.h for the scheme).
 *
 * Everything here is pure and allocation-free so the server can compute and
 * format a 1536-dimension vector in a few microseconds: the vectors are
 * sparse (a few dimensions per word), so most components print as "0".
 */
#include "embed.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "err.h"

/* Short words that carry no topic; kept sorted for the binary search. */
static const char *const stop_words[] = {
    "a",    "about", "an",   "and",   "are",  "as",   "at",    "be",   "but",   "by",    "can",
    "did",  "do",    "does", "for",   "from", "had",  "has",   "have", "how",   "i",     "if",
    "in",   "into",  "is",   "it",    "its",  "me",   "my",    "no",   "not",   "of",    "on",
    "or",   "our",   "so",   "than",  "that", "the",  "their", "them", "then",  "there", "these",
    "they", "this",  "to",   "was",   "we",   "were", "what",  "when", "where", "which", "who",
    "why",  "will",  "with", "would", "you",  "your",
};

static int is_word_byte(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch >= 0x80;
}

static int is_stop_word(const char *w, size_t n)
{
    size_t lo = 0, hi = sizeof(stop_words) / sizeof(stop_words[0]);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *s = stop_words[mid];
        size_t sn = strlen(s);
        int c = memcmp(w, s, n < sn ? n : sn);
        if (c == 0)
            c = n < sn ? -1 : (n > sn ? 1 : 0);
        if (c == 0)
            return 1;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return 0;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Calls fn for each lower-cased word; returns the number of words. */
typedef void (*word_fn)(const char *w, size_t n, void *data);

static int for_each_word(const char *text, size_t len, word_fn fn, void *data)
{
    char word[64];
    int count = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && !is_word_byte((unsigned char)text[i]))
            i++;
        if (i >= len)
            break;
        size_t n = 0;
        while (i < len && is_word_byte((unsigned char)text[i])) {
            unsigned char ch = (unsigned char)text[i++];
            /* Words longer than the buffer are hashed on their first 64 bytes. */
            if (n < sizeof(word))
                word[n++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
        }
        count++;
        if (fn != NULL)
            fn(word, n, data);
    }
    return count;
}

typedef struct embed_acc {
    float *out;
    int dims;
    int used;
} embed_acc_t;

static void add_word(const char *w, size_t n, void *data)
{
    embed_acc_t *acc = data;
    if (is_stop_word(w, n))
        return;
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)w[i];
        h *= 0x100000001b3ULL;
    }
    for (int k = 0; k < RP_DEVMODEL_EMBED_K; k++) {
        uint64_t x = splitmix64(h + (uint64_t)k);
        int dim = (int)((x >> 1) % (uint64_t)acc->dims);
        acc->out[dim] += (x & 1) ? -1.0f : 1.0f;
    }
    acc->used++;
}

int rp_devmodel_embed(const char *text, size_t len, int dims, float *out)
{
    if (dims < 1 || dims > RP_DEVMODEL_DIMS_MAX)
        return RP_EINVAL;
    memset(out, 0, sizeof(float) * (size_t)dims);
    embed_acc_t acc = {out, dims, 0};
    int words = for_each_word(text, len, add_word, &acc);
    double sum = 0;
    for (int i = 0; i < dims; i++)
        sum += (double)out[i] * out[i];
    if (acc.used == 0 || sum == 0) {
        /* No content words (or contributions that cancelled out). */
        float v = (float)(1.0 / sqrt((double)dims));
        for (int i = 0; i < dims; i++)
            out[i] = v;
        return words;
    }
    float inv = (float)(1.0 / sqrt(sum));
    for (int i = 0; i < dims; i++)
        out[i] *= inv;
    return words;
}

int rp_devmodel_count_tokens(const char *text, size_t len)
{
    int n = for_each_word(text, len, NULL, NULL);
    return n > 0 ? n : 1;
}

static char *format_one(char *p, float f)
{
    if (!(f == f) || isinf(f)) {
        *p++ = '0'; /* never produced by rp_devmodel_embed; keeps the JSON valid */
        return p;
    }
    double d = f;
    int neg = d < 0;
    if (neg)
        d = -d;
    if (d >= 1.0) {
        /* Outside a unit vector's range: integer part then 9 decimals. */
        uint64_t ip = (uint64_t)d;
        uint64_t fp = (uint64_t)((d - (double)ip) * 1e9 + 0.5);
        if (fp >= 1000000000ULL) {
            ip++;
            fp -= 1000000000ULL;
        }
        char tmp[24];
        int n = 0;
        do {
            tmp[n++] = (char)('0' + ip % 10);
            ip /= 10;
        } while (ip > 0 && n < 20);
        if (neg)
            *p++ = '-';
        while (n > 0)
            *p++ = tmp[--n];
        if (fp == 0)
            return p;
        *p++ = '.';
        char digits[9];
        for (int i = 8; i >= 0; i--) {
            digits[i] = (char)('0' + fp % 10);
            fp /= 10;
        }
        int last = 8;
        while (digits[last] == '0')
            last--;
        memcpy(p, digits, (size_t)last + 1);
        return p + last + 1;
    }
    uint32_t x = (uint32_t)(d * 1e9 + 0.5);
    if (x == 0) {
        *p++ = '0';
        return p;
    }
    if (neg)
        *p++ = '-';
    if (x >= 1000000000U) {
        *p++ = '1';
        return p;
    }
    *p++ = '0';
    *p++ = '.';
    char digits[9];
    for (int i = 8; i >= 0; i--) {
        digits[i] = (char)('0' + x % 10);
        x /= 10;
    }
    int last = 8;
    while (digits[last] == '0')
        last--;
    memcpy(p, digits, (size_t)last + 1);
    return p + last + 1;
}

size_t rp_devmodel_format_floats(const float *v, int n, char *dst)
{
    char *p = dst;
    *p++ = '[';
    for (int i = 0; i < n; i++) {
        if (i > 0)
            *p++ = ',';
        p = format_one(p, v[i]);
    }
    *p++ = ']';
    return (size_t)(p - dst);
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t rp_devmodel_base64(const void *src, size_t len, char *dst)
{
    const unsigned char *s = src;
    char *p = dst;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *p++ = b64_alphabet[v >> 18];
        *p++ = b64_alphabet[(v >> 12) & 63];
        *p++ = b64_alphabet[(v >> 6) & 63];
        *p++ = b64_alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)s[i + 1] << 8;
        *p++ = b64_alphabet[v >> 18];
        *p++ = b64_alphabet[(v >> 12) & 63];
        *p++ = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    return (size_t)(p - dst);
}

static int b64_value(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

long rp_devmodel_base64_decode(const char *text, size_t len, void *dst, size_t cap)
{
    unsigned char *d = dst;
    size_t out = 0;
    if (len % 4 != 0)
        return RP_EINVAL;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char ch = text[i + k];
            if (ch == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad > 0)
                return RP_EINVAL;
            v[k] = b64_value(ch);
            if (v[k] < 0)
                return RP_EINVAL;
        }
        uint32_t x =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t n = 3 - (size_t)pad;
        if (out + n > cap)
            return RP_EINVAL;
        d[out++] = (unsigned char)(x >> 16);
        if (n > 1)
            d[out++] = (unsigned char)(x >> 8);
        if (n > 2)
            d[out++] = (unsigned char)x;
    }
    return (long)out;
}

size_t rp_devmodel_floats_base64(const float *v, int n, char *dst)
{
    /* Encode three floats (12 bytes, 16 characters) at a time through a
     * small little-endian staging buffer, so no copy of the vector is made. */
    size_t total = 0;
    unsigned char buf[12];
    int i = 0;
    while (i < n) {
        int k = n - i >= 3 ? 3 : n - i;
        for (int j = 0; j < k; j++) {
            uint32_t u;
            memcpy(&u, &v[i + j], 4);
            buf[4 * j] = (unsigned char)u;
            buf[4 * j + 1] = (unsigned char)(u >> 8);
            buf[4 * j + 2] = (unsigned char)(u >> 16);
            buf[4 * j + 3] = (unsigned char)(u >> 24);
        }
        total += rp_devmodel_base64(buf, (size_t)k * 4, dst + total);
        i += k;
    }
    return total;
}
