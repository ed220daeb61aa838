/*
 * buf.h: a growable byte buffer, always NUL-terminated.
 *
 * Appends that fail for lack of memory set a sticky error flag instead of
 * returning codes at every call: build the whole text, then check
 * rp_buf_failed() once.
 */
#ifndef RP_BUF_H
#define RP_BUF_H

#include <stddef.h>

typedef struct rp_buf {
    char *data; /* owned; NULL until the first append */
    size_t len; /* bytes used, not counting the NUL */
    size_t cap; /* bytes allocated */
    int failed; /* an allocation failed: the content is incomplete */
} rp_buf_t;

#define RP_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0, 0                                                                              \
    }

void rp_buf_append(rp_buf_t *b, const void *data, size_t len);
void rp_buf_puts(rp_buf_t *b, const char *s);
void rp_buf_putc(rp_buf_t *b, char c);
void rp_buf_printf(rp_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as the inside of a JSON string (quotes not included). */
void rp_buf_json_escape(rp_buf_t *b, const char *s, size_t len);
/* Make room for n more bytes; returns a pointer to write them (then add n
 * to len) or NULL on failure. */
char *rp_buf_reserve(rp_buf_t *b, size_t n);
int rp_buf_failed(const rp_buf_t *b);
/* Hand the data to the caller (free with free()); the buffer is reset.
 * Returns NULL if an append failed. */
char *rp_buf_take(rp_buf_t *b, size_t *len);
void rp_buf_reset(rp_buf_t *b); /* len = 0, memory kept */
void rp_buf_free(rp_buf_t *b);

/* a followed by b, newly allocated (free with free()); NULL when out of
 * memory.  For URLs, headers and key names built once at start-up. */
char *rp_str_concat(const char *a, const char *b);

/* The decimal digits of v written to dst (at least 20 bytes; no NUL);
 * returns how many.  For per-request and per-value formatting, where
 * snprintf costs more than the rest of the work. */
size_t rp_put_decimal(char *dst, unsigned long long v);

#endif
