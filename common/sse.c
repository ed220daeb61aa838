/*
 * sse.c: the incremental Server-Sent Events parser (see sse.h).
 *
 * Invariants: `line` holds the bytes of the current, unterminated line that
 * arrived in earlier pieces (a line wholly inside one piece is parsed in
 * place, without copying); `data` holds the data lines of the current event,
 * each followed by "\n"; `skip_lf` is set after a CR so that an LF starting
 * the next piece completes a CRLF instead of ending an empty line.  Once
 * `failed` is non-zero every call returns it.
 */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"

#define SSE_DEFAULT_MAX (1024 * 1024)

typedef struct sse_buf {
    char *p;
    size_t len;
    size_t cap;
} sse_buf_t;

struct rp_sse {
    rp_sse_cb cb;
    void *cb_data;
    size_t max_event;
    sse_buf_t line;
    sse_buf_t data;
    sse_buf_t event;
    sse_buf_t id;
    long retry_ms;
    size_t count;
    int bom_pos; /* BOM bytes matched so far; 3 (or -1) once decided */
    int skip_lf; /* the previous piece ended in CR */
    int failed;  /* sticky error code, 0 when fine */
};

static const unsigned char sse_bom[3] = {0xEF, 0xBB, 0xBF};

/* Append n bytes to b, keeping it NUL-terminated.  Returns 0 or RP_ENOMEM. */
static int buf_add(sse_buf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (np == NULL)
            return RP_ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int buf_set(sse_buf_t *b, const char *s, size_t n)
{
    b->len = 0;
    return buf_add(b, s, n);
}

rp_sse_t *rp_sse_new(size_t max_event, rp_sse_cb cb, void *data)
{
    rp_sse_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->cb = cb;
    p->cb_data = data;
    p->max_event = max_event ? max_event : SSE_DEFAULT_MAX;
    p->retry_ms = -1;
    if (buf_set(&p->id, "", 0) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

void rp_sse_free(rp_sse_t *p)
{
    if (p == NULL)
        return;
    free(p->line.p);
    free(p->data.p);
    free(p->event.p);
    free(p->id.p);
    free(p);
}

size_t rp_sse_count(const rp_sse_t *p)
{
    return p->count;
}

int rp_sse_partial(const rp_sse_t *p)
{
    return p->line.len > 0 || p->data.len > 0 || p->event.len > 0;
}

/* A blank line: emit the event if it has data, then start a new one. */
static int sse_dispatch(rp_sse_t *p)
{
    int rc = 0;
    if (p->data.len > 0) {
        /* Every data line was stored with a trailing "\n"; the last one
         * is not part of the event. */
        p->data.len--;
        p->data.p[p->data.len] = '\0';
        rp_sse_event_t ev = {
            .event = p->event.len > 0 ? p->event.p : "message",
            .data = p->data.p,
            .data_len = p->data.len,
            .id = p->id.p,
            .retry_ms = p->retry_ms,
        };
        p->count++;
        rc = p->cb(p->cb_data, &ev);
    }
    p->data.len = 0;
    p->event.len = 0;
    return rc;
}

static int field_is(const char *f, size_t n, const char *name)
{
    return strlen(name) == n && memcmp(f, name, n) == 0;
}

/* Interpret one complete line (without its terminator). */
static int sse_line(rp_sse_t *p, const char *s, size_t n)
{
    if (n == 0)
        return sse_dispatch(p);
    if (s[0] == ':')
        return 0; /* comment, e.g. a keep-alive */
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - v);
    if (vlen > 0 && v[0] == ' ') {
        v++;
        vlen--;
    }
    if (field_is(s, flen, "data")) {
        if (p->data.len + vlen + 1 > p->max_event)
            return RP_ELIMIT;
        int rc = buf_add(&p->data, v, vlen);
        return rc ? rc : buf_add(&p->data, "\n", 1);
    }
    if (field_is(s, flen, "event"))
        return buf_set(&p->event, v, vlen);
    if (field_is(s, flen, "id")) {
        /* An id containing NUL is ignored, as the specification says. */
        if (memchr(v, '\0', vlen) == NULL)
            return buf_set(&p->id, v, vlen);
        return 0;
    }
    if (field_is(s, flen, "retry")) {
        long ms = 0;
        size_t i;
        for (i = 0; i < vlen && v[i] >= '0' && v[i] <= '9' && ms < 100000000L; i++)
            ms = ms * 10 + (v[i] - '0');
        if (vlen > 0 && i == vlen)
            p->retry_ms = ms;
        return 0;
    }
    return 0; /* unknown field: ignored */
}

/* Bytes that began like a BOM but were not one belong to the first line. */
static int sse_bom_step(rp_sse_t *p, const char **s, size_t *n)
{
    while (p->bom_pos >= 0 && p->bom_pos < 3 && *n > 0) {
        if ((unsigned char)**s == sse_bom[p->bom_pos]) {
            p->bom_pos++;
            (*s)++;
            (*n)--;
            continue;
        }
        int matched = p->bom_pos;
        p->bom_pos = -1;
        if (matched > 0)
            return buf_add(&p->line, (const char *)sse_bom, (size_t)matched);
    }
    return 0;
}

int rp_sse_feed(rp_sse_t *p, const char *buf, size_t len)
{
    if (p->failed)
        return p->failed;
    int rc = sse_bom_step(p, &buf, &len);
    if (rc != 0)
        goto fail;
    while (len > 0) {
        if (p->skip_lf) {
            p->skip_lf = 0;
            if (buf[0] == '\n') {
                buf++;
                len--;
                continue;
            }
        }
        size_t i = 0;
        while (i < len && buf[i] != '\n' && buf[i] != '\r')
            i++;
        if (i == len) {
            /* No terminator in this piece: keep the partial line. */
            if (p->line.len + len + p->data.len > p->max_event) {
                rc = RP_ELIMIT;
                goto fail;
            }
            rc = buf_add(&p->line, buf, len);
            if (rc != 0)
                goto fail;
            break;
        }
        if (p->line.len + i + p->data.len > p->max_event) {
            rc = RP_ELIMIT;
            goto fail;
        }
        if (p->line.len > 0) {
            rc = buf_add(&p->line, buf, i);
            if (rc == 0)
                rc = sse_line(p, p->line.p, p->line.len);
            p->line.len = 0;
        } else {
            rc = sse_line(p, buf, i);
        }
        if (rc != 0)
            goto fail;
        if (buf[i] == '\r')
            p->skip_lf = 1;
        buf += i + 1;
        len -= i + 1;
    }
    return 0;
fail:
    p->failed = rc;
    return rc;
}
