/*
 * test_request.h: a blocking HTTP request with headers, for tests that talk
 * to ragpool's HTTP front ends (the dispatcher, the Edge Function).
 */
#ifndef RP_TEST_REQUEST_H
#define RP_TEST_REQUEST_H

#include <stddef.h>

typedef struct rp_test_resp {
    long status;   /* 0 when no answer arrived */
    char *body;    /* owned, NUL-terminated */
    char *headers; /* owned: the raw header lines */
} rp_test_resp_t;

/* Send method to url with headers (NULL-terminated "Name: value", may be
 * NULL) and body (may be NULL); 20 s deadline.  Free with rp_test_resp_free. */
rp_test_resp_t rp_test_request(const char *method, const char *url, const char *const *headers,
                               const char *body, size_t body_len);
void rp_test_resp_free(rp_test_resp_t *r);
/* True when a header line starts with line_prefix (case-insensitive). */
int rp_test_resp_has_header(const rp_test_resp_t *r, const char *line_prefix);

#endif
