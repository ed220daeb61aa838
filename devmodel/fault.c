/*
 * fault.c: fault kinds, marker parsing and the per-body fault memory.
 *
 * The memory is an open-addressing hash table of (key, count) keyed by
 * rp_devmodel_fault_key; it only ever holds bodies that carried a marker,
 * so it stays small, and it grows by doubling at half load.  Key 0 marks an
 * empty slot (a real key of 0 is stored as 1: a collision we accept).
 */
#include "fault.h"

#include <stdlib.h>
#include <string.h>

static const char *const kind_names[RP_FAULT_NKINDS] = {
    "none", "429", "500", "503", "400", "stall", "truncate", "malformed",
};

const char *rp_fault_name(rp_fault_kind_t k)
{
    if ((int)k < 0 || k >= RP_FAULT_NKINDS)
        return "unknown";
    return kind_names[k];
}

int rp_fault_parse(const char *name, size_t n)
{
    for (int k = 0; k < RP_FAULT_NKINDS; k++)
        if (strlen(kind_names[k]) == n && memcmp(kind_names[k], name, n) == 0)
            return k;
    return -1;
}

/* Parse one marker body "<endpoint>:<kind>[x<n>]" in p[0..n). */
static int parse_marker(const char *p, size_t n, const char *endpoint, rp_fault_marker_t *out)
{
    size_t elen = strlen(endpoint);
    if (n <= elen + 1 || memcmp(p, endpoint, elen) != 0 || p[elen] != ':')
        return 0;
    p += elen + 1;
    n -= elen + 1;
    size_t kn = n;
    int times = 0;
    const char *x = memchr(p, 'x', n);
    if (x != NULL) {
        kn = (size_t)(x - p);
        size_t dn = n - kn - 1;
        if (dn == 0 || dn > 6)
            return 0;
        for (size_t i = 0; i < dn; i++) {
            if (x[1 + i] < '0' || x[1 + i] > '9')
                return 0;
            times = times * 10 + (x[1 + i] - '0');
        }
        if (times == 0)
            return 0;
    }
    int kind = rp_fault_parse(p, kn);
    if (kind <= RP_FAULT_NONE)
        return 0;
    out->kind = (rp_fault_kind_t)kind;
    out->times = times;
    return 1;
}

int rp_fault_marker_find(const char *text, size_t len, const char *endpoint, rp_fault_marker_t *out)
{
    static const char open[] = "[[fault:";
    const size_t olen = sizeof(open) - 1;
    const char *p = text;
    const char *end = text + len;
    while ((size_t)(end - p) > olen) {
        const char *m = memmem(p, (size_t)(end - p), open, olen);
        if (m == NULL)
            return 0;
        const char *body = m + olen;
        const char *close = memmem(body, (size_t)(end - body), "]]", 2);
        if (close == NULL)
            return 0;
        if (close - body <= 32 && parse_marker(body, (size_t)(close - body), endpoint, out))
            return 1;
        p = body;
    }
    return 0;
}

typedef struct slot {
    uint64_t key;
    uint64_t count;
} slot_t;

struct rp_devmodel_faultmem {
    slot_t *slots;
    size_t cap; /* power of two */
    size_t used;
};

#define FAULTMEM_INITIAL 64

rp_devmodel_faultmem_t *rp_devmodel_faultmem_new(void)
{
    rp_devmodel_faultmem_t *m = malloc(sizeof(*m));
    if (m == NULL)
        return NULL;
    m->slots = calloc(FAULTMEM_INITIAL, sizeof(slot_t));
    if (m->slots == NULL) {
        free(m);
        return NULL;
    }
    m->cap = FAULTMEM_INITIAL;
    m->used = 0;
    return m;
}

void rp_devmodel_faultmem_free(rp_devmodel_faultmem_t *m)
{
    if (m == NULL)
        return;
    free(m->slots);
    free(m);
}

void rp_devmodel_faultmem_reset(rp_devmodel_faultmem_t *m)
{
    memset(m->slots, 0, m->cap * sizeof(slot_t));
    m->used = 0;
}

uint64_t rp_devmodel_fault_key(const char *endpoint, const char *body, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *e = endpoint; *e != '\0'; e++) {
        h ^= (unsigned char)*e;
        h *= 0x100000001b3ULL;
    }
    h *= 0x100000001b3ULL; /* a NUL byte between endpoint and body */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)body[i];
        h *= 0x100000001b3ULL;
    }
    return h != 0 ? h : 1;
}

static slot_t *find_slot(slot_t *slots, size_t cap, uint64_t key)
{
    size_t i = (size_t)(key ^ (key >> 29)) & (cap - 1);
    while (slots[i].key != 0 && slots[i].key != key)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

static int grow(rp_devmodel_faultmem_t *m)
{
    size_t cap = m->cap * 2;
    slot_t *slots = calloc(cap, sizeof(slot_t));
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key != 0)
            *find_slot(slots, cap, m->slots[i].key) = m->slots[i];
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return 0;
}

int rp_devmodel_faultmem_hit(rp_devmodel_faultmem_t *m, const char *endpoint, const char *body,
                             size_t len, const rp_fault_marker_t *marker)
{
    if (marker->times == 0)
        return 1;
    if (2 * (m->used + 1) > m->cap && grow(m) < 0)
        return 1;
    uint64_t key = rp_devmodel_fault_key(endpoint, body, len);
    slot_t *s = find_slot(m->slots, m->cap, key);
    if (s->key == 0) {
        s->key = key;
        s->count = 0;
        m->used++;
    }
    s->count++;
    return s->count <= (uint64_t)marker->times;
}
