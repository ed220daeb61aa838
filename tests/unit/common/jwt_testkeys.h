/*
 * jwt_testkeys.h: test-only helpers for JWTs: generate RSA 2048 and EC P-256
 * keys with libcrypto, export their public halves as JWKs, and sign tokens
 * (HS256, RS256, ES256, or deliberately broken ones: `alg: none`, wrong
 * key, HS256 signed with an RSA public key).  Used by the JWT unit tests,
 * the dispatcher's integration tests and the fuzzer's seed generation.
 * Header-only (static functions) so each test program takes what it uses.
 * Returned strings are owned by the caller (free with free()).
 */
#ifndef RP_JWT_TESTKEYS_H
#define RP_JWT_TESTKEYS_H

#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"

static inline EVP_PKEY *tk_gen_rsa(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
}

static inline EVP_PKEY *tk_gen_ec(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

static inline char *tk_b64(const void *p, size_t n)
{
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (out != NULL)
        rp_jwt_b64url_encode(p, n, out, (n + 2) / 3 * 4 + 1);
    return out;
}

static inline char *tk_bn_b64(EVP_PKEY *k, const char *name)
{
    BIGNUM *bn = NULL;
    unsigned char buf[1024];
    if (EVP_PKEY_get_bn_param(k, name, &bn) != 1)
        return NULL;
    int n = BN_bn2bin(bn, buf);
    BN_free(bn);
    return tk_b64(buf, (size_t)n);
}

/* The public JWK of k as a JSON object text; kid may be NULL. */
static inline char *tk_jwk(EVP_PKEY *k, const char *kid)
{
    char *out = malloc(4096);
    char kidpart[160] = "";
    if (kid != NULL)
        snprintf(kidpart, sizeof(kidpart), "\"kid\":\"%s\",", kid);
    if (EVP_PKEY_is_a(k, "RSA")) {
        char *n = tk_bn_b64(k, OSSL_PKEY_PARAM_RSA_N), *e = tk_bn_b64(k, OSSL_PKEY_PARAM_RSA_E);
        snprintf(out, 4096,
                 "{\"kty\":\"RSA\",%s\"use\":\"sig\",\"alg\":\"RS256\",\"n\":\"%s\",\"e\":\"%s\"}",
                 kidpart, n, e);
        free(n);
        free(e);
    } else {
        unsigned char pub[65];
        size_t len = 0;
        EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub), &len);
        char *x = tk_b64(pub + 1, 32), *y = tk_b64(pub + 33, 32);
        snprintf(out, 4096, "{\"kty\":\"EC\",%s\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}",
                 kidpart, x, y);
        free(x);
        free(y);
    }
    return out;
}

/* The DER SubjectPublicKeyInfo of k (for the HS/RS confusion attack). */
static inline unsigned char *tk_pub_der(EVP_PKEY *k, size_t *len)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(k, &der);
    *len = n > 0 ? (size_t)n : 0;
    return der; /* OPENSSL_free */
}

/* header.payload of a token with this header JSON and claims JSON. */
static inline char *tk_input(const char *header, const char *claims)
{
    char *h = tk_b64(header, strlen(header)), *c = tk_b64(claims, strlen(claims));
    size_t n = strlen(h) + strlen(c) + 2;
    char *out = malloc(n);
    snprintf(out, n, "%s.%s", h, c);
    free(h);
    free(c);
    return out;
}

static inline char *tk_join(char *input, const unsigned char *sig, size_t slen)
{
    char *s = tk_b64(sig, slen);
    size_t n = strlen(input) + strlen(s) + 2;
    char *out = malloc(n);
    snprintf(out, n, "%s.%s", input, s);
    free(s);
    free(input);
    return out;
}

/* A token with alg in the header (and kid when not NULL): HS256 uses
 * secret, RS256/ES256 use k (an HS256 with k == NULL and secret set
 * signs with the secret, as does any alg with k == NULL; "none" gets an
 * empty signature). */
static inline char *tk_sign(const char *alg, EVP_PKEY *k, const void *secret, size_t secret_len,
                            const char *kid, const char *claims)
{
    char header[256];
    if (kid != NULL)
        snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg,
                 kid);
    else
        snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
    char *input = tk_input(header, claims);
    if (strcmp(alg, "none") == 0) {
        size_t n = strlen(input) + 2;
        char *out = malloc(n);
        snprintf(out, n, "%s.", input);
        free(input);
        return out;
    }
    if (strcmp(alg, "HS256") == 0 || k == NULL) {
        unsigned char mac[32];
        unsigned int mlen = 0;
        HMAC(EVP_sha256(), secret, (int)secret_len, (unsigned char *)input, strlen(input), mac,
             &mlen);
        return tk_join(input, mac, mlen);
    }
    unsigned char sig[1024];
    size_t slen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k);
    EVP_DigestSign(ctx, sig, &slen, (unsigned char *)input, strlen(input));
    EVP_MD_CTX_free(ctx);
    if (strcmp(alg, "ES256") == 0) {
        const unsigned char *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)slen);
        unsigned char raw[64];
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
        ECDSA_SIG_free(es);
        return tk_join(input, raw, 64);
    }
    return tk_join(input, sig, slen);
}

/* Claims for sub/role/aud with exp = now + exp_in (seconds); extra (may be
 * NULL) is more members, e.g. "\"nbf\": 123". */
static inline char *tk_claims(const char *sub, const char *role, const char *aud, long long now,
                              long exp_in, const char *extra)
{
    char *out = malloc(1024);
    snprintf(out, 1024,
             "{\"sub\":\"%s\",\"role\":\"%s\",\"aud\":\"%s\",\"exp\":%lld,\"iat\":%lld%s%s}", sub,
             role, aud, now + exp_in, now, extra != NULL ? "," : "", extra != NULL ? extra : "");
    return out;
}

#endif
