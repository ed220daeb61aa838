/*
 * test_request.c: blocking HTTP requests for the front-end tests (libcurl
 * easy: a test may block).
 */
#include "test_request.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

static size_t grow(char *p, size_t size, size_t n, void *ud)
{
    char **s = ud;
    size_t old = *s != NULL ? strlen(*s) : 0;
    char *ns = realloc(*s, old + size * n + 1);
    if (ns == NULL)
        return 0;
    memcpy(ns + old, p, size * n);
    ns[old + size * n] = '\0';
    *s = ns;
    return size * n;
}

rp_test_resp_t rp_test_request(const char *method, const char *url, const char *const *headers,
                               const char *body, size_t body_len)
{
    rp_test_resp_t r = {0, strdup(""), strdup("")};
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        h = curl_slist_append(h, headers[i]);
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body_len);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, grow);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, grow);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.headers);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return r;
}

void rp_test_resp_free(rp_test_resp_t *r)
{
    free(r->body);
    free(r->headers);
    r->body = r->headers = NULL;
}

int rp_test_resp_has_header(const rp_test_resp_t *r, const char *line_prefix)
{
    return strcasestr(r->headers, line_prefix) != NULL;
}
