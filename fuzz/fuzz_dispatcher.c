/*
 * fuzz_dispatcher.c: a libFuzzer target for everything the dispatcher does
 * with bytes from the network before they reach the queue: the HTTP
 * request (through Debian's http-parser, the parser rp_httpd uses), the
 * Authorization / Content-Type / Idempotency-Key headers, JWT parsing and
 * verification (HS256, ES256, RS256 keys loaded), the chat body's
 * validation, and JWKS documents.
 *
 * The first byte of an input picks what the rest is:
 *   '0' an HTTP request: parsed, then its headers and body go through the
 *       same functions the dispatcher calls;
 *   '1' a token for rp_jwt_verify;
 *   '2' a chat body for rp_chat_request_parse;
 *   '3' a JWKS document for rp_jwt_load_jwks;
 *   '4' "header JSON\npayload JSON", which the harness signs with the HS256
 *       secret, so the claim checks behind the signature are reached too.
 * Anything else is tried as all of the above.  Build and run: fuzz/run.sh.
 */
#include <http_parser.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "jwt.h"
#include "request.h"

#define SECRET "fuzz-secret"
#define NOW 1700000000

/* Public keys whose private halves signed the seed corpus's tokens. */
static const char JWKS[] =
    "{\"keys\":["
    "{\"kty\":\"EC\",\"kid\":\"fz-ec\",\"crv\":\"P-256\",\"x\":\"gpnq4HsiSEdapQPo_FFudDZS5HDa"
    "jofAqBukwJYdYRA\",\"y\":\"ClbhPnW0G0J-Or4hljx5OL1P5ySzDWsBTY0TFuhi8YE\"}"
    ","
    "{\"kty\":\"RSA\",\"kid\":\"fz-rsa\",\"use\":\"sig\",\"alg\":\"RS256\",\"n\":\"tQ7S3Wokv_"
    "vLV-gu-xGxCnyCqqWhvsADWovE8kCPtv9R1U8F3WiSSjLaaydMXqILNXXa-042pGV1GxEPAMG8FFHO6-LTjAz9Ml"
    "PQqQE97ThXfY18LYRqvcBkHCM5_KrF43HppyyGwISINLRLlbqiDa9BzYvlaGszsoo2ykRmacFTXKk5jCQCIuz4LY"
    "LfjpqRsuOVczvedxWXbNbm6wWMCc2XFOLeVV5e8px1YouXOsLpDPZSsA5tRrJPXTm-U3ndDyPVvGgzhdPhOUf2at"
    "zR0EkOUwOEnrl6p9tId8YPRnCXwW0E9GSPW2hXWu8UKctgB3w41PS4iPRw9RIVXUaPaQ\",\"e\":\"AQAB\"}"
    "]}";

static rp_jwt_verifier_t *verifier(void)
{
    static rp_jwt_verifier_t *v;
    if (v == NULL) {
        rp_jwt_policy_t pol = {.audience = "authenticated",
                               .roles = "authenticated,service_role",
                               .leeway_s = 30,
                               .cache_entries = 16};
        v = rp_jwt_verifier_new(&pol, NULL);
        rp_jwt_set_secret(v, SECRET, strlen(SECRET));
        if (rp_jwt_load_jwks(v, JWKS, strlen(JWKS), NULL) != 2)
            abort();
    }
    return v;
}

static void check_token(const char *tok, size_t len)
{
    rp_jwt_claims_t c;
    rp_err_t err;
    int rc = rp_jwt_verify(verifier(), tok, len, NOW, &c, &err);
    if (rc == 0 && (c.sub[0] == '\0' || strlen(c.sub) > RP_JWT_SUB_MAX))
        abort(); /* an accepted token always has a usable subject */
}

static void check_body(const char *body, size_t len)
{
    rp_chat_request_t r;
    rp_buf_t eb = RP_BUF_INIT;
    int rc = rp_chat_request_parse(body, len, &r, &eb);
    /* The plain-body path and jansson's must agree on everything. */
    rp_chat_request_t j;
    rp_buf_t ej = RP_BUF_INIT;
    int rj = rp_chat_request_parse_json(body, len, &j, &ej);
    if (rc != RP_ENOMEM && rj != RP_ENOMEM &&
        (rc != rj || eb.len != ej.len || (eb.len > 0 && memcmp(eb.data, ej.data, eb.len) != 0) ||
         (rc == 0 &&
          (strcmp(r.message, j.message) != 0 ||
           (r.conversation_id == NULL) != (j.conversation_id == NULL) ||
           (r.conversation_id != NULL && strcmp(r.conversation_id, j.conversation_id) != 0) ||
           (r.options_json == NULL) != (j.options_json == NULL) ||
           (r.options_json != NULL && strcmp(r.options_json, j.options_json) != 0)))))
        abort();
    if (rj == 0)
        rp_chat_request_free(&j);
    rp_buf_free(&ej);
    if (rc == 0) {
        size_t n = strlen(r.message);
        if (n == 0 || n > RP_CHAT_MESSAGE_MAX || eb.len != 0)
            abort();
        rp_chat_request_free(&r);
    } else if (rc != 400 && rc != 422 && rc != RP_ENOMEM) {
        abort();
    } else if (rc > 0 && eb.len == 0) {
        abort(); /* every refusal has a body */
    }
    rp_buf_free(&eb);
}

/* ---- HTTP ---- */

typedef struct hreq {
    char field[256], auth[16384], ctype[256], idem[512];
    char *cur; /* the header value being collected, NULL to skip */
    size_t cur_cap, cur_len;
    int in_value;
    rp_buf_t body;
} hreq_t;

static int on_field(http_parser *p, const char *at, size_t n)
{
    hreq_t *h = p->data;
    if (h->in_value) {
        h->field[0] = '\0';
        h->in_value = 0;
    }
    size_t l = strlen(h->field);
    if (l + n < sizeof(h->field)) {
        memcpy(h->field + l, at, n);
        h->field[l + n] = '\0';
    }
    return 0;
}

static int on_value(http_parser *p, const char *at, size_t n)
{
    hreq_t *h = p->data;
    if (!h->in_value) {
        h->in_value = 1;
        h->cur = NULL;
        if (strcasecmp(h->field, "Authorization") == 0)
            h->cur = h->auth, h->cur_cap = sizeof(h->auth);
        else if (strcasecmp(h->field, "Content-Type") == 0)
            h->cur = h->ctype, h->cur_cap = sizeof(h->ctype);
        else if (strcasecmp(h->field, "Idempotency-Key") == 0)
            h->cur = h->idem, h->cur_cap = sizeof(h->idem);
        h->cur_len = 0;
    }
    if (h->cur != NULL && h->cur_len + n < h->cur_cap) {
        memcpy(h->cur + h->cur_len, at, n);
        h->cur_len += n;
        h->cur[h->cur_len] = '\0';
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    hreq_t *h = p->data;
    if (h->body.len + n > 1024 * 1024)
        return -1;
    rp_buf_append(&h->body, at, n);
    return 0;
}

static int on_complete(http_parser *p)
{
    hreq_t *h = p->data;
    const char *tok;
    size_t len;
    rp_jwt_claims_t c;
    memset(&c, 0, sizeof(c));
    if (rp_bearer_token(h->auth[0] ? h->auth : NULL, &tok, &len) == 0) {
        check_token(tok, len);
        rp_err_t err;
        if (rp_jwt_verify(verifier(), tok, len, NOW, &c, &err) != 0)
            strcpy(c.sub, "anonymous");
    } else {
        strcpy(c.sub, "anonymous");
    }
    (void)rp_content_type_is_json(h->ctype[0] ? h->ctype : NULL);
    if (h->idem[0]) {
        char id[37];
        if (rp_idempotency_job_id(c.sub, h->idem, id) == 0 && strlen(id) != 36)
            abort();
    }
    check_body(h->body.data != NULL ? h->body.data : "", h->body.len);
    rp_buf_reset(&h->body);
    h->auth[0] = h->ctype[0] = h->idem[0] = '\0';
    return 0;
}

static void check_http(const char *data, size_t len)
{
    http_parser_settings s;
    memset(&s, 0, sizeof(s));
    s.on_header_field = on_field;
    s.on_header_value = on_value;
    s.on_body = on_body;
    s.on_message_complete = on_complete;
    hreq_t *h = calloc(1, sizeof(*h));
    http_parser p;
    http_parser_init(&p, HTTP_REQUEST);
    p.data = h;
    http_parser_execute(&p, &s, data, len);
    rp_buf_free(&h->body);
    free(h);
}

/* ---- signed claims ---- */

static void check_signed(const char *data, size_t len)
{
    const char *nl = memchr(data, '\n', len);
    if (nl == NULL)
        return;
    size_t hl = (size_t)(nl - data), pl = len - hl - 1;
    size_t cap = (len + 3) / 3 * 4 + 64;
    char *buf = malloc(cap + 64);
    size_t n = rp_jwt_b64url_encode(data, hl, buf, cap);
    buf[n++] = '.';
    n += rp_jwt_b64url_encode(nl + 1, pl, buf + n, cap - n);
    /* Sign "header.payload" exactly as the verifier will check it. */
    unsigned char mac[32];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)buf, n, mac, &ml);
    buf[n++] = '.';
    n += rp_jwt_b64url_encode(mac, ml, buf + n, cap + 64 - n);
    check_token(buf, n);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *d = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0]) {
    case '0':
        check_http(d, n);
        break;
    case '1':
        check_token(d, n);
        break;
    case '2':
        check_body(d, n);
        break;
    case '3': {
        rp_jwt_policy_t pol = {.audience = "authenticated", .leeway_s = 0};
        rp_jwt_verifier_t *v = rp_jwt_verifier_new(&pol, NULL);
        rp_err_t err;
        (void)rp_jwt_load_jwks(v, d, n, &err);
        rp_jwt_verifier_free(v);
        break;
    }
    case '4':
        check_signed(d, n);
        break;
    default:
        check_token((const char *)data, size);
        check_body((const char *)data, size);
        check_http((const char *)data, size);
        break;
    }
    return 0;
}
