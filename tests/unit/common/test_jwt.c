/*
 * test_jwt.c: common/jwt.c -- HS256, ES256 and RS256 tokens that must pass,
 * and every way a token must fail: missing, malformed, bad base64,
 * `alg: none`, an unknown algorithm, the wrong key, HS/RS confusion (an
 * HS256 token MACed with the RSA public key), expired, not yet valid,
 * wrong audience, wrong role, no subject, huge; the cache (a hit is
 * re-checked against the clock; a key change empties it); JWKS loading and
 * unknown kids.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "jwt.h"
#include "jwt_testkeys.h"

#define SECRET "super-secret-jwt-token-with-at-least-32-characters-long"
#define USER "6f1c2a8e-530b-4d8a-9e27-b4613cd07519"
#define NOW 1700000000LL

typedef struct fx {
    EVP_PKEY *rsa, *ec, *other_ec;
    rp_jwt_verifier_t *v;
} fx_t;

static rp_jwt_verifier_t *verifier(size_t cache)
{
    rp_jwt_policy_t pol = {.audience = "authenticated",
                           .roles = "authenticated, service_role",
                           .leeway_s = 30,
                           .cache_entries = cache};
    rp_err_t err;
    rp_jwt_verifier_t *v = rp_jwt_verifier_new(&pol, &err);
    assert_non_null(v);
    assert_int_equal(rp_jwt_set_secret(v, SECRET, strlen(SECRET)), 0);
    return v;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    f->rsa = tk_gen_rsa();
    f->ec = tk_gen_ec();
    f->other_ec = tk_gen_ec();
    f->v = verifier(64);
    char *j1 = tk_jwk(f->rsa, "rsa-1"), *j2 = tk_jwk(f->ec, "ec-1");
    char jwks[9000];
    snprintf(jwks, sizeof(jwks), "{\"keys\":[%s,%s]}", j1, j2);
    free(j1);
    free(j2);
    rp_err_t err;
    assert_int_equal(rp_jwt_load_jwks(f->v, jwks, strlen(jwks), &err), 2);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    EVP_PKEY_free(f->rsa);
    EVP_PKEY_free(f->ec);
    EVP_PKEY_free(f->other_ec);
    rp_jwt_verifier_free(f->v);
    free(f);
    return 0;
}

/* Verify tok and return the code; err text in msg (may be NULL). */
static int verify(rp_jwt_verifier_t *v, const char *tok, long long now, rp_jwt_claims_t *c,
                  char *msg)
{
    rp_err_t err = {0};
    rp_jwt_claims_t tmp;
    int rc = rp_jwt_verify(v, tok, strlen(tok), now, c != NULL ? c : &tmp, &err);
    if (msg != NULL)
        strcpy(msg, err.msg);
    return rc;
}

static void expect_fail(rp_jwt_verifier_t *v, char *tok, long long now, const char *needle)
{
    char msg[RP_ERR_MSG_MAX] = "";
    int rc = verify(v, tok, now, NULL, msg);
    if (rc != RP_EINVAL || strstr(msg, needle) == NULL)
        fail_msg("expected RP_EINVAL with \"%s\", got %d \"%s\"", needle, rc, msg);
    free(tok);
}

static void test_valid_tokens(void **state)
{
    fx_t *f = *state;
    char *claims = tk_claims(USER, "authenticated", "authenticated", NOW, 3600, NULL);
    const struct {
        const char *alg;
        EVP_PKEY *k;
        const char *kid;
    } cases[] = {{"HS256", NULL, NULL},
                 {"RS256", f->rsa, "rsa-1"},
                 {"ES256", f->ec, "ec-1"},
                 /* without kid: the only key of the right type */
                 {"RS256", f->rsa, NULL},
                 {"ES256", f->ec, NULL}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *tok = tk_sign(cases[i].alg, cases[i].k, SECRET, strlen(SECRET), cases[i].kid, claims);
        rp_jwt_claims_t c;
        char msg[RP_ERR_MSG_MAX] = "";
        int rc = verify(f->v, tok, NOW, &c, msg);
        if (rc != 0)
            fail_msg("%s: %d %s", cases[i].alg, rc, msg);
        assert_string_equal(c.sub, USER);
        assert_string_equal(c.role, "authenticated");
        assert_int_equal(c.exp, NOW + 3600);
        assert_int_equal(c.cached, 0);
        /* The second time comes from the cache, same answer. */
        assert_int_equal(verify(f->v, tok, NOW, &c, NULL), 0);
        assert_int_equal(c.cached, 1);
        assert_string_equal(c.sub, USER);
        free(tok);
    }
    /* aud as an array, role service_role, a real-valued exp. */
    char *c2 = malloc(512);
    snprintf(c2, 512,
             "{\"sub\":\"42\",\"role\":\"service_role\",\"aud\":[\"x\",\"authenticated\"],\"exp\":%"
             "lld.5}",
             NOW + 10);
    char *tok = tk_sign("HS256", NULL, SECRET, strlen(SECRET), NULL, c2);
    assert_int_equal(verify(f->v, tok, NOW, NULL, NULL), 0);
    free(tok);
    free(c2);
    free(claims);
}

static void test_bad_shapes(void **state)
{
    fx_t *f = *state;
    char msg[RP_ERR_MSG_MAX];
    rp_jwt_claims_t c;
    rp_err_t err;
    assert_int_equal(rp_jwt_verify(f->v, "", 0, NOW, &c, &err), RP_EINVAL);
    assert_non_null(strstr(err.msg, "missing"));
    expect_fail(f->v, strdup("abc"), NOW, "malformed");
    expect_fail(f->v, strdup("a.b"), NOW, "malformed");
    expect_fail(f->v, strdup("a.b.c.d"), NOW, "malformed");
    expect_fail(f->v, strdup("..sig"), NOW, "malformed");
    expect_fail(f->v, strdup("e30.e30."), NOW, "malformed");
    /* bad base64: '+', '/', '=' and '*' are outside the url alphabet */
    expect_fail(f->v, strdup("eyJhbGciOiJIUzI1NiJ9+.e30.abc"), NOW, "header");
    expect_fail(f->v, strdup("eyJhbGciOiJIUzI1NiJ9=.e30.abc"), NOW, "header");
    expect_fail(f->v, strdup("e30*.e30.abc"), NOW, "header");
    /* a header that is not JSON, or not an object, or has no alg */
    char *t = tk_input("not json", "{}");
    size_t n = strlen(t);
    t = realloc(t, n + 8);
    strcpy(t + n, ".c2ln");
    expect_fail(f->v, t, NOW, "header");
    char *claims = tk_claims(USER, "authenticated", "authenticated", NOW, 3600, NULL);
    t = tk_input("[1,2]", claims);
    n = strlen(t);
    t = realloc(t, n + 8);
    strcpy(t + n, ".c2ln");
    expect_fail(f->v, t, NOW, "header");
    t = tk_input("{\"typ\":\"JWT\"}", claims);
    n = strlen(t);
    t = realloc(t, n + 8);
    strcpy(t + n, ".c2ln");
    expect_fail(f->v, t, NOW, "no alg");
    /* duplicate alg: refused rather than guessed */
    t = tk_input("{\"alg\":\"HS256\",\"alg\":\"none\"}", claims);
    n = strlen(t);
    t = realloc(t, n + 8);
    strcpy(t + n, ".c2ln");
    expect_fail(f->v, t, NOW, "header");
    /* bad base64 in the signature */
    t = tk_sign("HS256", NULL, SECRET, strlen(SECRET), NULL, claims);
    t[strlen(t) - 1] = '!';
    expect_fail(f->v, t, NOW, "signature");
    /* huge token */
    char *huge = malloc(100001);
    memset(huge, 'a', 100000);
    huge[100000] = '\0';
    huge[10] = '.';
    huge[20] = '.';
    expect_fail(f->v, huge, NOW, "too large");
    (void)msg;
    free(claims);
}

static void test_algorithms_and_keys(void **state)
{
    fx_t *f = *state;
    char *claims = tk_claims(USER, "authenticated", "authenticated", NOW, 3600, NULL);
    /* alg none, with or without a signature */
    expect_fail(f->v, tk_sign("none", NULL, NULL, 0, NULL, claims), NOW, "malformed");
    char *t = tk_sign("none", NULL, NULL, 0, NULL, claims);
    size_t n = strlen(t);
    t = realloc(t, n + 8);
    strcpy(t + n, "c2ln");
    expect_fail(f->v, t, NOW, "algorithm");
    /* algorithms we never accept */
    expect_fail(f->v, tk_sign("HS512", NULL, SECRET, strlen(SECRET), NULL, claims), NOW,
                "algorithm");
    expect_fail(f->v, tk_sign("PS256", f->rsa, NULL, 0, "rsa-1", claims), NOW, "algorithm");
    /* wrong secret, wrong EC key */
    expect_fail(f->v, tk_sign("HS256", NULL, "another-secret", 14, NULL, claims), NOW, "signature");
    expect_fail(f->v, tk_sign("ES256", f->other_ec, NULL, 0, "ec-1", claims), NOW, "signature");
    /* HS/RS confusion: HS256 MACed with the RSA public key (DER, and the
     * JWK text) must fail -- HS256 only ever uses the secret. */
    size_t dlen;
    unsigned char *der = tk_pub_der(f->rsa, &dlen);
    expect_fail(f->v, tk_sign("HS256", NULL, der, dlen, "rsa-1", claims), NOW, "signature");
    OPENSSL_free(der);
    char *jwk = tk_jwk(f->rsa, "rsa-1");
    expect_fail(f->v, tk_sign("HS256", NULL, jwk, strlen(jwk), "rsa-1", claims), NOW, "signature");
    free(jwk);
    /* kid naming a key of the other type */
    expect_fail(f->v, tk_sign("ES256", f->ec, NULL, 0, "rsa-1", claims), NOW, "another type");
    /* an RS256 token signed by the right key but presented as ES256 */
    t = tk_sign("RS256", f->rsa, NULL, 0, "rsa-1", claims);
    free(t);
    /* unknown kid: RP_ENOTFOUND with the kid, so the caller can re-read */
    t = tk_sign("ES256", f->other_ec, NULL, 0, "ec-2", claims);
    rp_jwt_claims_t c;
    rp_err_t err;
    assert_int_equal(rp_jwt_verify(f->v, t, strlen(t), NOW, &c, &err), RP_ENOTFOUND);
    assert_string_equal(c.kid, "ec-2");
    /* ...and after loading a JWKS that has it, the same token passes. */
    char *j = tk_jwk(f->other_ec, "ec-2");
    char jwks[4200];
    snprintf(jwks, sizeof(jwks), "{\"keys\":[%s]}", j);
    free(j);
    assert_int_equal(rp_jwt_load_jwks(f->v, jwks, strlen(jwks), &err), 1);
    assert_true(rp_jwt_has_kid(f->v, "ec-2"));
    assert_false(rp_jwt_has_kid(f->v, "ec-1"));
    assert_int_equal(rp_jwt_verify(f->v, t, strlen(t), NOW, &c, &err), 0);
    free(t);
    /* HS256 without a secret configured */
    rp_jwt_verifier_t *v2 = verifier(0);
    rp_jwt_set_secret(v2, NULL, 0);
    expect_fail(v2, tk_sign("HS256", NULL, SECRET, strlen(SECRET), NULL, claims), NOW,
                "not accepted");
    rp_jwt_verifier_free(v2);
    free(claims);
}

static void test_claims(void **state)
{
    fx_t *f = *state;
    const char *S = SECRET;
    size_t L = strlen(SECRET);
    /* expired (beyond the 30 s leeway), and within it */
    char *c = tk_claims(USER, "authenticated", "authenticated", NOW, -31, NULL);
    expect_fail(f->v, tk_sign("HS256", NULL, S, L, NULL, c), NOW, "expired");
    free(c);
    c = tk_claims(USER, "authenticated", "authenticated", NOW, -10, NULL);
    char *t = tk_sign("HS256", NULL, S, L, NULL, c);
    assert_int_equal(verify(f->v, t, NOW, NULL, NULL), 0);
    free(t);
    free(c);
    /* not yet valid */
    c = tk_claims(USER, "authenticated", "authenticated", NOW, 3600, "\"nbf\":1700000100");
    expect_fail(f->v, tk_sign("HS256", NULL, S, L, NULL, c), NOW, "not valid yet");
    free(c);
    /* wrong audience, wrong role, anon */
    c = tk_claims(USER, "authenticated", "other", NOW, 3600, NULL);
    expect_fail(f->v, tk_sign("HS256", NULL, S, L, NULL, c), NOW, "audience");
    free(c);
    c = tk_claims(USER, "anon", "authenticated", NOW, 3600, NULL);
    expect_fail(f->v, tk_sign("HS256", NULL, S, L, NULL, c), NOW, "role");
    free(c);
    c = tk_claims(USER, "authenticate", "authenticated", NOW, 3600, NULL);
    expect_fail(f->v, tk_sign("HS256", NULL, S, L, NULL, c), NOW, "role");
    free(c);
    /* no exp; exp a string; no sub; a sub with unsafe characters */
    expect_fail(f->v,
                tk_sign("HS256", NULL, S, L, NULL,
                        "{\"sub\":\"1\",\"role\":\"authenticated\",\"aud\":\"authenticated\"}"),
                NOW, "exp");
    expect_fail(f->v,
                tk_sign("HS256", NULL, S, L, NULL,
                        "{\"sub\":\"1\",\"role\":\"authenticated\",\"aud\":\"authenticated\","
                        "\"exp\":\"1800000000\"}"),
                NOW, "exp");
    expect_fail(
        f->v,
        tk_sign("HS256", NULL, S, L, NULL,
                "{\"role\":\"authenticated\",\"aud\":\"authenticated\",\"exp\":1800000000}"),
        NOW, "subject");
    expect_fail(f->v,
                tk_sign("HS256", NULL, S, L, NULL,
                        "{\"sub\":\"a b\",\"role\":\"authenticated\",\"aud\":\"authenticated\","
                        "\"exp\":1800000000}"),
                NOW, "subject");
    /* a payload that is not JSON, signed correctly */
    char *in = malloc(64);
    strcpy(in, "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24");
    unsigned char mac[32];
    unsigned int ml;
    HMAC(EVP_sha256(), S, (int)L, (unsigned char *)in, strlen(in), mac, &ml);
    expect_fail(f->v, tk_join(in, mac, ml), NOW, "payload");
}

static void test_cache_rechecks_time_and_keys(void **state)
{
    fx_t *f = *state;
    char *c = tk_claims(USER, "authenticated", "authenticated", NOW, 60, NULL);
    char *t = tk_sign("HS256", NULL, SECRET, strlen(SECRET), NULL, c);
    rp_jwt_claims_t cl;
    assert_int_equal(verify(f->v, t, NOW, &cl, NULL), 0);
    assert_int_equal(verify(f->v, t, NOW, &cl, NULL), 0);
    assert_int_equal(cl.cached, 1);
    /* a cached token expires like any other */
    char msg[RP_ERR_MSG_MAX];
    assert_int_equal(verify(f->v, t, NOW + 200, &cl, msg), RP_EINVAL);
    assert_non_null(strstr(msg, "expired"));
    /* a new secret empties the cache: the old token no longer passes */
    rp_jwt_set_secret(f->v, "rotated", 7);
    assert_int_equal(verify(f->v, t, NOW, &cl, msg), RP_EINVAL);
    rp_jwt_set_secret(f->v, SECRET, strlen(SECRET));
    free(t);
    free(c);
}

/* Tokens that land on one slot share it (two ways): with 64 users' tokens
 * in a 2-slot cache, the last two verified are both answered from it, and
 * in a 256-slot cache all 64 are (a direct-mapped cache thrashed on the
 * pairs that collided). */
static void test_cache_two_ways(void **state)
{
    (void)state;
    size_t sizes[] = {2, 256};
    for (size_t z = 0; z < 2; z++) {
        rp_jwt_verifier_t *v = verifier(sizes[z]);
        char *tok[64];
        rp_jwt_claims_t cl;
        for (int i = 0; i < 64; i++) {
            char sub[64];
            snprintf(sub, sizeof(sub), "00000000-0000-4000-8000-%012d", i);
            char *c = tk_claims(sub, "authenticated", "authenticated", NOW, 3600, NULL);
            tok[i] = tk_sign("HS256", NULL, SECRET, strlen(SECRET), NULL, c);
            free(c);
            assert_int_equal(verify(v, tok[i], NOW, &cl, NULL), 0);
        }
        int hits = 0;
        int from = sizes[z] == 2 ? 62 : 0;
        for (int i = from; i < 64; i++) {
            assert_int_equal(verify(v, tok[i], NOW, &cl, NULL), 0);
            hits += cl.cached;
        }
        if (sizes[z] == 2)
            assert_int_equal(hits, 2);
        else
            assert_true(hits >= 60); /* three-way collisions may still evict */
        for (int i = 0; i < 64; i++)
            free(tok[i]);
        rp_jwt_verifier_free(v);
    }
}

static void test_jwks_documents(void **state)
{
    (void)state;
    rp_jwt_verifier_t *v = verifier(0);
    rp_err_t err;
    const char *bad[] = {"", "[]", "{}", "{\"keys\":{}}", "not json"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(rp_jwt_load_jwks(v, bad[i], strlen(bad[i]), &err), RP_EINVAL);
    /* keys we skip: oct, wrong use, other curves, RSA too short, junk */
    const char *skipped = "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"},"
                          "{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"},"
                          "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"},"
                          "{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
                          "{\"kty\":\"RSA\",\"use\":\"enc\"},{},1,\"x\"]}";
    assert_int_equal(rp_jwt_load_jwks(v, skipped, strlen(skipped), &err), 0);
    assert_int_equal(rp_jwt_nkeys(v), 0);
    rp_jwt_verifier_free(v);
}

static void test_base64url(void **state)
{
    (void)state;
    unsigned char out[16];
    size_t n;
    assert_int_equal(rp_jwt_b64url_decode("aGk", 3, out, sizeof(out), &n), 0);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "hi", 2);
    assert_int_equal(rp_jwt_b64url_decode("aGk=", 4, out, sizeof(out), &n), RP_EINVAL);
    assert_int_equal(rp_jwt_b64url_decode("a", 1, out, sizeof(out), &n), RP_EINVAL);
    /* non-canonical trailing bits */
    assert_int_equal(rp_jwt_b64url_decode("aGl", 3, out, sizeof(out), &n), RP_EINVAL);
    /* output beyond cap */
    assert_int_equal(rp_jwt_b64url_decode("aGVsbG8", 7, out, 4, &n), RP_EINVAL);
    char enc[16];
    assert_int_equal(rp_jwt_b64url_encode("\xfb\xff", 2, enc, sizeof(enc)), 3);
    assert_string_equal(enc, "-_8");
    /* round trip of every length 0..40 */
    unsigned char src[40], back[40];
    for (int i = 0; i < 40; i++)
        src[i] = (unsigned char)(i * 37 + 11);
    for (size_t len = 0; len <= 40; len++) {
        char e[64];
        size_t el = rp_jwt_b64url_encode(src, len, e, sizeof(e));
        assert_int_equal(rp_jwt_b64url_decode(e, el, back, sizeof(back), &n), 0);
        assert_int_equal(n, len);
        assert_memory_equal(back, src, len);
    }
    /* rp_jwt_sign_hs256 makes tokens the verifier accepts */
    rp_jwt_verifier_t *v = verifier(0);
    char claims[256];
    snprintf(claims, sizeof(claims),
             "{\"sub\":\"%s\",\"role\":\"authenticated\",\"aud\":\"authenticated\",\"exp\":%lld}",
             USER, NOW + 5);
    char *t = rp_jwt_sign_hs256(claims, SECRET, strlen(SECRET));
    assert_int_equal(verify(v, t, NOW, NULL, NULL), 0);
    free(t);
    rp_jwt_verifier_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_valid_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_algorithms_and_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_rechecks_time_and_keys, setup, teardown),
        cmocka_unit_test(test_cache_two_ways),
        cmocka_unit_test(test_jwks_documents),
        cmocka_unit_test(test_base64url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
