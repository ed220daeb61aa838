/*
 * buf.c: growable buffer with a sticky allocation-failure flag.
 */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *rp_buf_reserve(rp_buf_t *b, size_t n)
{
    if (b->failed)
        return NULL;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (p == NULL) {
            b->failed = 1;
            return NULL;
        }
        b->data = p;
        b->cap = cap;
    }
    return b->data + b->len;
}

void rp_buf_append(rp_buf_t *b, const void *data, size_t len)
{
    char *p = rp_buf_reserve(b, len);
    if (p == NULL)
        return;
    memcpy(p, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void rp_buf_puts(rp_buf_t *b, const char *s)
{
    rp_buf_append(b, s, strlen(s));
}

void rp_buf_putc(rp_buf_t *b, char c)
{
    rp_buf_append(b, &c, 1);
}

void rp_buf_printf(rp_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        rp_buf_append(b, small, (size_t)n);
        return;
    }
    char *p = rp_buf_reserve(b, (size_t)n);
    if (p == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void rp_buf_json_escape(rp_buf_t *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        rp_buf_append(b, s + start, i - start);
        start = i + 1;
        switch (c) {
        case '"':
            rp_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            rp_buf_append(b, "\\\\", 2);
            break;
        case '\n':
            rp_buf_append(b, "\\n", 2);
            break;
        case '\r':
            rp_buf_append(b, "\\r", 2);
            break;
        case '\t':
            rp_buf_append(b, "\\t", 2);
            break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            rp_buf_append(b, u, 6);
        }
        }
    }
    rp_buf_append(b, s + start, len - start);
}

int rp_buf_failed(const rp_buf_t *b)
{
    return b->failed;
}

char *rp_buf_take(rp_buf_t *b, size_t *len)
{
    if (b->failed) {
        rp_buf_free(b);
        return NULL;
    }
    if (b->data == NULL)
        rp_buf_append(b, "", 0);
    char *d = b->data;
    if (len != NULL)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return d;
}

void rp_buf_reset(rp_buf_t *b)
{
    b->len = 0;
    b->failed = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void rp_buf_free(rp_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}

char *rp_str_concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s != NULL) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

size_t rp_put_decimal(char *dst, unsigned long long v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}
