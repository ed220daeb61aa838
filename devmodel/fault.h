/*
 * fault.h: the development model server's injected faults.
 *
 * Two sources: a rate (every request on a model endpoint faults with
 * probability R, with one configured kind), and markers inside the request
 * (docs/CONTRACTS.md): `[[fault:<endpoint>:<kind>[x<n>]]]` makes the first n
 * requests with that exact body on that endpoint fail with that kind (every
 * one without `x<n>`), then the same body is answered normally.  The memory
 * of how often each (endpoint, body) was seen is an rp_devmodel_faultmem_t.
 */
#ifndef RP_DEVMODEL_FAULT_H
#define RP_DEVMODEL_FAULT_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    RP_FAULT_NONE = 0,
    RP_FAULT_429, /* 429 with Retry-After: 1 */
    RP_FAULT_500,
    RP_FAULT_503,
    RP_FAULT_400,
    RP_FAULT_STALL,     /* never answer; the client gives up */
    RP_FAULT_TRUNCATE,  /* Content-Length larger than the bytes sent, then close */
    RP_FAULT_MALFORMED, /* 200 with a body that is not JSON */
    RP_FAULT_NKINDS
} rp_fault_kind_t;

/* "429", "500", "503", "400", "stall", "truncate", "malformed" (and "none"). */
const char *rp_fault_name(rp_fault_kind_t k);

/* Parse a kind name (as rp_fault_name prints it); returns RP_FAULT_NONE for
 * "none" and -1 for anything unknown.  name borrows n bytes. */
int rp_fault_parse(const char *name, size_t n);

typedef struct rp_fault_marker {
    rp_fault_kind_t kind;
    int times; /* 0 = every time */
} rp_fault_marker_t;

/* Find the first marker for endpoint ("embed" or "chat") in text[0..len).
 * Markers for other endpoints and malformed markers are ignored.  Returns 1
 * and fills out when one is found, 0 otherwise. */
int rp_fault_marker_find(const char *text, size_t len, const char *endpoint,
                         rp_fault_marker_t *out);

typedef struct rp_devmodel_faultmem rp_devmodel_faultmem_t;

/* A new, empty memory (free with rp_devmodel_faultmem_free); NULL when out
 * of memory. */
rp_devmodel_faultmem_t *rp_devmodel_faultmem_new(void);
void rp_devmodel_faultmem_free(rp_devmodel_faultmem_t *m);
/* Forget every body seen. */
void rp_devmodel_faultmem_reset(rp_devmodel_faultmem_t *m);

/* Count one more sighting of body[0..len) on endpoint and say whether the
 * marker applies to it: 1 while the body has been seen at most
 * marker->times times (always when times is 0), else 0.  When out of
 * memory it answers 1 (the fault) without remembering. */
int rp_devmodel_faultmem_hit(rp_devmodel_faultmem_t *m, const char *endpoint, const char *body,
                             size_t len, const rp_fault_marker_t *marker);

/* The 64-bit key under which a body is remembered (FNV-1a over endpoint,
 * a NUL, then the body). */
uint64_t rp_devmodel_fault_key(const char *endpoint, const char *body, size_t len);

#endif
