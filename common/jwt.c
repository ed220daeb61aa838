/*
 * jwt.c: JWS compact tokens verified with libcrypto (see jwt.h).
 *
 * Order of checks, cheapest and least trusting first: size, shape (three
 * base64url segments), the cache, the header (alg and kid; `crit` refused),
 * the key the algorithm allows, the signature over the first two segments,
 * and only then the claims of the (now authenticated) payload.  JSON is
 * parsed with duplicate keys refused, so two parsers can never disagree
 * about which `alg` or `sub` a token carries.
 *
 * The cache is direct-mapped by a 64-bit FNV-1a hash of the token; a slot
 * holds a copy of the token, so a hit is an exact match, and the key
 * generation it was verified under, so a key change invalidates it.
 */
#include "jwt.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEADER_MAX 1024 /* decoded header bytes */
#define SIG_MAX 1024    /* decoded signature bytes (RSA 8192) */

typedef enum { KEY_RSA = 1, KEY_EC = 2 } key_type_t;

typedef struct jwk {
    char *kid; /* NULL when the JWKS entry has none */
    key_type_t type;
    EVP_PKEY *pkey;
} jwk_t;

typedef struct cache_slot {
    char *token; /* owned copy; NULL = empty */
    size_t len;
    uint64_t gen;
    uint64_t stamp;   /* when stored: of a full pair, the older is replaced */
    int64_t exp, nbf; /* nbf INT64_MIN when absent */
    char sub[RP_JWT_SUB_MAX + 1];
    char role[RP_JWT_ROLE_MAX + 1];
} cache_slot_t;

struct rp_jwt_verifier {
    char *audience;
    char *roles; /* ",a,b," for a cheap membership test; NULL = any */
    long leeway_s;
    size_t max_token;
    unsigned char *secret;
    size_t secret_len;
    jwk_t *keys;
    size_t nkeys;
    uint64_t gen;
    cache_slot_t *cache;
    size_t ncache;
    uint64_t stamps; /* cache stores so far */
};

/* ------------------------------------------------------------------ */
/* base64url                                                           */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int rp_jwt_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *outlen)
{
    if (len % 4 == 1)
        return RP_EINVAL;
    size_t need = len / 4 * 3 + (len % 4 == 0 ? 0 : len % 4 - 1);
    if (need > cap)
        return RP_EINVAL;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0)
            return RP_EINVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Leftover bits must be zero: one encoding per byte string. */
    if (acc != 0)
        return RP_EINVAL;
    *outlen = o;
    return 0;
}

size_t rp_jwt_b64url_encode(const void *in, size_t len, char *out, size_t cap)
{
    const unsigned char *p = in;
    size_t o = 0;
    if (cap < (len + 2) / 3 * 4 + 1)
        return 0;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8);
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

/* ------------------------------------------------------------------ */
/* the verifier                                                        */

static void keys_free(jwk_t *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(keys[i].kid);
        EVP_PKEY_free(keys[i].pkey);
    }
    free(keys);
}

static void cache_clear(rp_jwt_verifier_t *v)
{
    for (size_t i = 0; i < v->ncache; i++) {
        free(v->cache[i].token);
        v->cache[i].token = NULL;
    }
    v->gen++;
}

rp_jwt_verifier_t *rp_jwt_verifier_new(const rp_jwt_policy_t *policy, rp_err_t *err)
{
    rp_jwt_verifier_t *v = calloc(1, sizeof(*v));
    if (v == NULL)
        goto fail;
    v->leeway_s = policy->leeway_s < 0 ? 0 : policy->leeway_s;
    v->max_token = policy->max_token_bytes ? policy->max_token_bytes : RP_JWT_MAX_TOKEN;
    if (policy->audience != NULL && policy->audience[0] != '\0') {
        v->audience = strdup(policy->audience);
        if (v->audience == NULL)
            goto fail;
    }
    if (policy->roles != NULL && policy->roles[0] != '\0') {
        size_t n = strlen(policy->roles);
        v->roles = malloc(n + 3);
        if (v->roles == NULL)
            goto fail;
        /* ",a,b," with blanks removed, so "a, b" works too. */
        size_t o = 0;
        v->roles[o++] = ',';
        for (size_t i = 0; i < n; i++)
            if (policy->roles[i] != ' ')
                v->roles[o++] = policy->roles[i];
        v->roles[o++] = ',';
        v->roles[o] = '\0';
    }
    if (policy->cache_entries > 0) {
        v->cache = calloc(policy->cache_entries, sizeof(*v->cache));
        if (v->cache == NULL)
            goto fail;
        v->ncache = policy->cache_entries;
    }
    return v;
fail:
    rp_jwt_verifier_free(v);
    rp_err_set(err, RP_ENOMEM, "out of memory creating the JWT verifier");
    return NULL;
}

void rp_jwt_verifier_free(rp_jwt_verifier_t *v)
{
    if (v == NULL)
        return;
    cache_clear(v);
    free(v->cache);
    keys_free(v->keys, v->nkeys);
    if (v->secret != NULL)
        OPENSSL_cleanse(v->secret, v->secret_len);
    free(v->secret);
    free(v->audience);
    free(v->roles);
    free(v);
}

int rp_jwt_set_secret(rp_jwt_verifier_t *v, const void *secret, size_t len)
{
    unsigned char *copy = NULL;
    if (len > 0) {
        copy = malloc(len);
        if (copy == NULL)
            return RP_ENOMEM;
        memcpy(copy, secret, len);
    }
    if (v->secret != NULL)
        OPENSSL_cleanse(v->secret, v->secret_len);
    free(v->secret);
    v->secret = copy;
    v->secret_len = len;
    cache_clear(v);
    return 0;
}

size_t rp_jwt_nkeys(const rp_jwt_verifier_t *v)
{
    return v->nkeys;
}

int rp_jwt_has_kid(const rp_jwt_verifier_t *v, const char *kid)
{
    for (size_t i = 0; i < v->nkeys; i++)
        if (v->keys[i].kid != NULL && strcmp(v->keys[i].kid, kid) == 0)
            return 1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* JWKS                                                                */

/* Decode a base64url JWK member into a new BIGNUM (NULL when absent or bad). */
static BIGNUM *jwk_bn(json_t *key, const char *name, size_t max)
{
    const char *s = json_string_value(json_object_get(key, name));
    if (s == NULL)
        return NULL;
    size_t n = strlen(s);
    unsigned char buf[1024];
    size_t len;
    if (n / 4 * 3 + 3 > sizeof(buf) || rp_jwt_b64url_decode(s, n, buf, sizeof(buf), &len) < 0 ||
        len == 0 || len > max)
        return NULL;
    return BN_bin2bn(buf, (int)len, NULL);
}

static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *jwk_rsa(json_t *key)
{
    EVP_PKEY *pkey = NULL;
    BIGNUM *n = jwk_bn(key, "n", 1024), *e = jwk_bn(key, "e", 8);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (n == NULL || e == NULL || bld == NULL || BN_num_bits(n) < 2048)
        goto out;
    if (!OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        goto out;
    pkey = pkey_from_params("RSA", bld);
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return pkey;
}

static EVP_PKEY *jwk_ec(json_t *key)
{
    const char *crv = json_string_value(json_object_get(key, "crv"));
    const char *xs = json_string_value(json_object_get(key, "x"));
    const char *ys = json_string_value(json_object_get(key, "y"));
    unsigned char pub[65];
    size_t xl, yl;
    if (crv == NULL || strcmp(crv, "P-256") != 0 || xs == NULL || ys == NULL)
        return NULL;
    if (rp_jwt_b64url_decode(xs, strlen(xs), pub + 1, 32, &xl) < 0 || xl != 32 ||
        rp_jwt_b64url_decode(ys, strlen(ys), pub + 33, 32, &yl) < 0 || yl != 32)
        return NULL;
    pub[0] = 0x04; /* uncompressed point */
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *pkey = NULL;
    if (bld != NULL &&
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub)))
        pkey = pkey_from_params("EC", bld);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

int rp_jwt_load_jwks(rp_jwt_verifier_t *v, const char *json, size_t len, rp_err_t *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    jwk_t *keys = NULL;
    size_t n = 0;
    int rc;
    json_t *arr = root != NULL ? json_object_get(root, "keys") : NULL;
    if (!json_is_array(arr)) {
        rc = rp_err_set(err, RP_EINVAL,
                        "the JWKS document is not a JSON object with a \"keys\" array");
        goto out;
    }
    keys = calloc(json_array_size(arr) + 1, sizeof(*keys));
    if (keys == NULL) {
        rc = rp_err_set(err, RP_ENOMEM, "out of memory loading the JWKS");
        goto out;
    }
    size_t i;
    json_t *k;
    json_array_foreach(arr, i, k)
    {
        const char *kty = json_string_value(json_object_get(k, "kty"));
        const char *use = json_string_value(json_object_get(k, "use"));
        const char *alg = json_string_value(json_object_get(k, "alg"));
        const char *kid = json_string_value(json_object_get(k, "kid"));
        if (kty == NULL || (use != NULL && strcmp(use, "sig") != 0))
            continue;
        if (kid != NULL && strlen(kid) > RP_JWT_KID_MAX)
            continue;
        EVP_PKEY *pkey = NULL;
        key_type_t type;
        if (strcmp(kty, "RSA") == 0 && (alg == NULL || strcmp(alg, "RS256") == 0)) {
            type = KEY_RSA;
            pkey = jwk_rsa(k);
        } else if (strcmp(kty, "EC") == 0 && (alg == NULL || strcmp(alg, "ES256") == 0)) {
            type = KEY_EC;
            pkey = jwk_ec(k);
        } else {
            continue; /* a type or algorithm we never accept */
        }
        if (pkey == NULL)
            continue;
        keys[n].type = type;
        keys[n].pkey = pkey;
        keys[n].kid = kid != NULL ? strdup(kid) : NULL;
        n++;
        if (kid != NULL && keys[n - 1].kid == NULL) {
            rc = rp_err_set(err, RP_ENOMEM, "out of memory loading the JWKS");
            goto out;
        }
    }
    keys_free(v->keys, v->nkeys);
    v->keys = keys;
    v->nkeys = n;
    keys = NULL;
    cache_clear(v);
    rc = (int)n;
out:
    if (keys != NULL)
        keys_free(keys, n);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------ */
/* verification                                                        */

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* Time checks shared by fresh and cached answers. */
static int check_times(const rp_jwt_verifier_t *v, int64_t exp, int64_t nbf, int64_t now,
                       rp_err_t *err)
{
    if (now > exp + v->leeway_s)
        return rp_err_set(err, RP_EINVAL, "token expired");
    if (nbf != INT64_MIN && now + v->leeway_s < nbf)
        return rp_err_set(err, RP_EINVAL, "token not valid yet");
    return 0;
}

/* Safe characters for a user id: it ends up in keys, logs and SQL
 * parameters, so nothing that needs escaping anywhere. */
static int sub_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RP_JWT_SUB_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':' || c == '@' || c == '|'))
            return 0;
    }
    return 1;
}

static int role_ok(const rp_jwt_verifier_t *v, const char *role)
{
    if (v->roles == NULL)
        return 1;
    size_t n = strlen(role);
    if (n == 0 || strchr(role, ',') != NULL)
        return 0;
    for (const char *p = v->roles; (p = strstr(p, role)) != NULL; p++)
        if (p[-1] == ',' && p[n] == ',')
            return 1;
    return 0;
}

static int aud_ok(const rp_jwt_verifier_t *v, json_t *aud)
{
    if (v->audience == NULL)
        return 1;
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), v->audience) == 0;
    if (json_is_array(aud)) {
        size_t i;
        json_t *a;
        json_array_foreach(aud, i, a)
        {
            if (json_is_string(a) && strcmp(json_string_value(a), v->audience) == 0)
                return 1;
        }
    }
    return 0;
}

/* A NumericDate claim: a JSON number (integer or real), as seconds. */
static int numeric_date(json_t *j, int64_t *out)
{
    if (json_is_integer(j)) {
        json_int_t i = json_integer_value(j);
        /* Far beyond any real date; keeps exp + leeway from overflowing. */
        if (i < -9000000000000000LL || i > 9000000000000000LL)
            return -1;
        *out = (int64_t)i;
        return 0;
    }
    if (json_is_real(j)) {
        double d = json_real_value(j);
        if (!(d > -9.0e15 && d < 9.0e15))
            return -1;
        *out = (int64_t)d;
        return 0;
    }
    return -1;
}

static int verify_hs256(const rp_jwt_verifier_t *v, const char *input, size_t ilen,
                        const unsigned char *sig, size_t slen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    if (slen != 32)
        return -1;
    if (HMAC(EVP_sha256(), v->secret, (int)v->secret_len, (const unsigned char *)input, ilen, mac,
             &mlen) == NULL ||
        mlen != 32)
        return -1;
    return CRYPTO_memcmp(mac, sig, 32) == 0 ? 0 : -1;
}

static int verify_pkey(EVP_PKEY *pkey, const char *input, size_t ilen, const unsigned char *sig,
                       size_t slen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
             EVP_DigestVerify(ctx, sig, slen, (const unsigned char *)input, ilen) == 1;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* JWS carries an ES256 signature as r||s (32 bytes each); EVP wants DER. */
static int verify_es256(EVP_PKEY *pkey, const char *input, size_t ilen, const unsigned char *sig,
                        size_t slen)
{
    if (slen != 64)
        return -1;
    int rc = -1;
    unsigned char *der = NULL;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        goto out;
    }
    int dlen = i2d_ECDSA_SIG(es, &der);
    if (dlen <= 0)
        goto out;
    rc = verify_pkey(pkey, input, ilen, der, (size_t)dlen);
out:
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    return rc;
}

static const jwk_t *find_key(const rp_jwt_verifier_t *v, key_type_t type, const char *kid,
                             int *wrong_type)
{
    const jwk_t *only = NULL;
    size_t count = 0;
    *wrong_type = 0;
    for (size_t i = 0; i < v->nkeys; i++) {
        const jwk_t *k = &v->keys[i];
        if (kid[0] != '\0') {
            if (k->kid != NULL && strcmp(k->kid, kid) == 0) {
                if (k->type == type)
                    return k;
                *wrong_type = 1;
            }
        } else if (k->type == type) {
            only = k;
            count++;
        }
    }
    return count == 1 ? only : NULL;
}

static void cache_store(rp_jwt_verifier_t *v, const char *token, size_t len, uint64_t h,
                        const rp_jwt_claims_t *c, int64_t nbf)
{
    if (v->ncache == 0)
        return;
    /* Two ways: the slot h names, or its neighbour, whichever is free or
     * else older -- so two tokens that share a slot do not evict each
     * other on every request. */
    cache_slot_t *s = &v->cache[h % v->ncache];
    if (s->token != NULL && s->gen == v->gen && v->ncache > 1) {
        cache_slot_t *alt = &v->cache[(h + 1) % v->ncache];
        if (alt->token == NULL || alt->gen != v->gen || alt->stamp < s->stamp)
            s = alt;
    }
    s->stamp = ++v->stamps;
    char *copy = malloc(len);
    if (copy == NULL)
        return; /* the cache is an optimisation: nothing lost */
    memcpy(copy, token, len);
    free(s->token);
    s->token = copy;
    s->len = len;
    s->gen = v->gen;
    s->exp = c->exp;
    s->nbf = nbf;
    memcpy(s->sub, c->sub, sizeof(s->sub));
    memcpy(s->role, c->role, sizeof(s->role));
}

int rp_jwt_verify(rp_jwt_verifier_t *v, const char *token, size_t len, int64_t now,
                  rp_jwt_claims_t *out, rp_err_t *err)
{
    json_t *header = NULL, *payload = NULL;
    unsigned char *pbuf = NULL;
    int rc;
    memset(out, 0, sizeof(*out));
    if (len == 0)
        return rp_err_set(err, RP_EINVAL, "missing token");
    if (len > v->max_token)
        return rp_err_set(err, RP_EINVAL, "token too large");

    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 != NULL ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
        return rp_err_set(err, RP_EINVAL, "malformed token");
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    size_t slen = len - (size_t)(d2 + 1 - token);
    if (hlen == 0 || plen == 0 || slen == 0)
        return rp_err_set(err, RP_EINVAL, "malformed token");

    /* The slot comes from the signature's last bytes: a MAC or signature
     * spreads as well as a hash of the whole token, and the whole token is
     * compared on a hit.  (Hashing all of a 300-byte token byte by byte
     * cost more than the rest of a cached check.) */
    size_t tail = slen < 32 ? slen : 32;
    uint64_t h = fnv1a(token + len - tail, tail) ^ (uint64_t)len;
    for (size_t way = 0; v->ncache > 0 && way < (v->ncache > 1 ? 2 : 1); way++) {
        const cache_slot_t *s = &v->cache[(h + way) % v->ncache];
        if (s->token != NULL && s->gen == v->gen && s->len == len &&
            memcmp(s->token, token, len) == 0) {
            rc = check_times(v, s->exp, s->nbf, now, err);
            if (rc < 0)
                return rc;
            memcpy(out->sub, s->sub, sizeof(out->sub));
            memcpy(out->role, s->role, sizeof(out->role));
            out->exp = s->exp;
            out->cached = 1;
            return 0;
        }
    }

    /* Header. */
    unsigned char hbuf[HEADER_MAX];
    size_t hdec;
    json_error_t jerr;
    if (rp_jwt_b64url_decode(token, hlen, hbuf, sizeof(hbuf), &hdec) < 0)
        return rp_err_set(err, RP_EINVAL, "malformed token header");
    header = json_loadb((const char *)hbuf, hdec, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(header)) {
        rc = rp_err_set(err, RP_EINVAL, "malformed token header");
        goto out;
    }
    const char *alg = json_string_value(json_object_get(header, "alg"));
    json_t *kidj = json_object_get(header, "kid");
    if (alg == NULL) {
        rc = rp_err_set(err, RP_EINVAL, "token header has no alg");
        goto out;
    }
    if (json_object_get(header, "crit") != NULL) {
        rc = rp_err_set(err, RP_EINVAL, "token uses critical extensions");
        goto out;
    }
    if (kidj != NULL) {
        const char *kid = json_string_value(kidj);
        if (kid == NULL || strlen(kid) > RP_JWT_KID_MAX) {
            rc = rp_err_set(err, RP_EINVAL, "malformed token key id");
            goto out;
        }
        memcpy(out->kid, kid, strlen(kid) + 1);
    }

    /* Signature. */
    unsigned char sig[SIG_MAX];
    size_t sdec;
    if (rp_jwt_b64url_decode(d2 + 1, slen, sig, sizeof(sig), &sdec) < 0) {
        rc = rp_err_set(err, RP_EINVAL, "malformed token signature");
        goto out;
    }
    size_t ilen = (size_t)(d2 - token);
    int bad;
    if (strcmp(alg, "HS256") == 0) {
        /* Only ever the shared secret: never a JWKS key (HS/RS confusion). */
        if (v->secret == NULL) {
            rc = rp_err_set(err, RP_EINVAL, "HS256 tokens are not accepted here");
            goto out;
        }
        bad = verify_hs256(v, token, ilen, sig, sdec);
    } else if (strcmp(alg, "RS256") == 0 || strcmp(alg, "ES256") == 0) {
        key_type_t type = alg[0] == 'R' ? KEY_RSA : KEY_EC;
        int wrong_type;
        const jwk_t *k = find_key(v, type, out->kid, &wrong_type);
        if (k == NULL) {
            if (wrong_type)
                rc = rp_err_set(err, RP_EINVAL, "token key id names a key of another type");
            else
                rc = rp_err_set(err, RP_ENOTFOUND, "unknown token signing key");
            goto out;
        }
        bad = type == KEY_RSA ? verify_pkey(k->pkey, token, ilen, sig, sdec)
                              : verify_es256(k->pkey, token, ilen, sig, sdec);
    } else {
        rc = rp_err_set(err, RP_EINVAL, "token algorithm is not accepted");
        goto out;
    }
    if (bad) {
        rc = rp_err_set(err, RP_EINVAL, "invalid token signature");
        goto out;
    }

    /* Claims of the authenticated payload. */
    size_t pcap = plen / 4 * 3 + 3;
    size_t pdec;
    pbuf = malloc(pcap);
    if (pbuf == NULL) {
        rc = rp_err_set(err, RP_ENOMEM, "out of memory");
        goto out;
    }
    if (rp_jwt_b64url_decode(d1 + 1, plen, pbuf, pcap, &pdec) < 0) {
        rc = rp_err_set(err, RP_EINVAL, "malformed token payload");
        goto out;
    }
    payload = json_loadb((const char *)pbuf, pdec, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(payload)) {
        rc = rp_err_set(err, RP_EINVAL, "malformed token payload");
        goto out;
    }
    int64_t exp, nbf = INT64_MIN;
    if (numeric_date(json_object_get(payload, "exp"), &exp) < 0) {
        rc = rp_err_set(err, RP_EINVAL, "token has no valid exp");
        goto out;
    }
    json_t *nbfj = json_object_get(payload, "nbf");
    if (nbfj != NULL && numeric_date(nbfj, &nbf) < 0) {
        rc = rp_err_set(err, RP_EINVAL, "token has an invalid nbf");
        goto out;
    }
    rc = check_times(v, exp, nbf, now, err);
    if (rc < 0)
        goto out;
    if (!aud_ok(v, json_object_get(payload, "aud"))) {
        rc = rp_err_set(err, RP_EINVAL, "token audience is not accepted");
        goto out;
    }
    const char *role = json_string_value(json_object_get(payload, "role"));
    if (role == NULL ? v->roles != NULL : (strlen(role) > RP_JWT_ROLE_MAX || !role_ok(v, role))) {
        rc = rp_err_set(err, RP_EINVAL, "token role is not accepted");
        goto out;
    }
    const char *sub = json_string_value(json_object_get(payload, "sub"));
    if (sub == NULL || !sub_ok(sub)) {
        rc = rp_err_set(err, RP_EINVAL, "token has no usable subject");
        goto out;
    }
    memcpy(out->sub, sub, strlen(sub) + 1);
    if (role != NULL)
        memcpy(out->role, role, strlen(role) + 1);
    out->exp = exp;
    cache_store(v, token, len, h, out, nbf);
    rc = 0;
out:
    free(pbuf);
    json_decref(header);
    json_decref(payload);
    return rc;
}

char *rp_jwt_sign_hs256(const char *claims_json, const void *secret, size_t secret_len)
{
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    size_t clen = strlen(claims_json);
    size_t cap = (sizeof(hdr) + 2) / 3 * 4 + (clen + 2) / 3 * 4 + 64;
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    size_t n = rp_jwt_b64url_encode(hdr, sizeof(hdr) - 1, out, cap);
    out[n++] = '.';
    n += rp_jwt_b64url_encode(claims_json, clen, out + n, cap - n);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mlen = 0;
    if (HMAC(EVP_sha256(), secret, (int)secret_len, (unsigned char *)out, n, mac, &mlen) == NULL) {
        free(out);
        return NULL;
    }
    out[n++] = '.';
    rp_jwt_b64url_encode(mac, mlen, out + n, cap - n);
    return out;
}
