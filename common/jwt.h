/*
 * jwt.h: verifying the JSON Web Tokens that Supabase Auth issues (JWS
 * compact form), with OpenSSL's libcrypto.
 *
 * A verifier holds the keys and the policy:
 *  - HS256 with the project's JWT secret (SUPABASE_JWT_SECRET, used as raw
 *    bytes, as Supabase does);
 *  - RS256 and ES256 (P-256) with public keys from a JWKS document, chosen
 *    by the token's `kid` (or the only key of the right type when the token
 *    names none).
 * Each algorithm is tied to one key type: an HS256 token is only ever
 * checked against the secret and never against a JWKS key, so a public key
 * can never serve as an HMAC secret (the HS/RS confusion attack); `none` and
 * every other algorithm are refused.  Claims: `exp` is required, `nbf` is
 * honoured, both with a small leeway; `aud` must contain the configured
 * audience; `role` must be one of the accepted roles; `sub` (the user id)
 * must be a non-empty string of safe characters.
 *
 * Speed: verified tokens are remembered in a small direct-mapped cache keyed
 * by their exact bytes (so a client that sends the same token with every
 * request costs one hash and one memcmp), and re-checked against the clock
 * on every hit.  Loading new keys empties the cache.  Parsed keys are kept
 * as EVP_PKEY objects, never re-parsed per request.
 *
 * Not thread-safe: one verifier per event loop.
 */
#ifndef RP_JWT_H
#define RP_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define RP_JWT_SUB_MAX 128    /* bytes of the user id (sub claim) */
#define RP_JWT_ROLE_MAX 63    /* bytes of the role claim */
#define RP_JWT_KID_MAX 127    /* bytes of a key id */
#define RP_JWT_MAX_TOKEN 8192 /* default limit on a whole token */

typedef struct rp_jwt_verifier rp_jwt_verifier_t;

typedef struct rp_jwt_policy {
    const char *audience;   /* required `aud` value; NULL or "" = not checked (copied) */
    const char *roles;      /* comma-separated accepted roles; NULL or "" = any (copied) */
    long leeway_s;          /* allowed clock skew for exp/nbf, seconds */
    size_t max_token_bytes; /* 0 = RP_JWT_MAX_TOKEN */
    size_t cache_entries;   /* verified-token cache slots; 0 = no cache */
} rp_jwt_policy_t;

typedef struct rp_jwt_claims {
    char sub[RP_JWT_SUB_MAX + 1]; /* the user id */
    char role[RP_JWT_ROLE_MAX + 1];
    char kid[RP_JWT_KID_MAX + 1]; /* the token's key id ("" when none); set on RP_ENOTFOUND */
    int64_t exp;                  /* expiry, Unix seconds */
    int cached;                   /* 1 when the answer came from the cache */
} rp_jwt_claims_t;

/* Create a verifier with no keys.  policy is copied.  Returns owned (free
 * with rp_jwt_verifier_free) or NULL with err filled. */
rp_jwt_verifier_t *rp_jwt_verifier_new(const rp_jwt_policy_t *policy, rp_err_t *err);
void rp_jwt_verifier_free(rp_jwt_verifier_t *v);

/* Set (or, with len 0, remove) the HS256 secret; copied.  Empties the cache.
 * Returns 0 or RP_ENOMEM. */
int rp_jwt_set_secret(rp_jwt_verifier_t *v, const void *secret, size_t len);

/* Replace the JWKS keys with those of a JWKS document (`{"keys": [...]}`).
 * Usable keys: kty RSA (n, e; at least 2048 bits) for RS256 and kty EC
 * crv P-256 (x, y) for ES256; a key whose `use` is not "sig" or whose `alg`
 * is another algorithm is skipped, as are other key types.  On success
 * returns the number of usable keys (>= 0) and empties the cache; on a
 * malformed document returns RP_EINVAL with err saying why and keeps the
 * keys it had. */
int rp_jwt_load_jwks(rp_jwt_verifier_t *v, const char *json, size_t len, rp_err_t *err);

/* Number of JWKS keys held, and whether one has this kid. */
size_t rp_jwt_nkeys(const rp_jwt_verifier_t *v);
int rp_jwt_has_kid(const rp_jwt_verifier_t *v, const char *kid);

/* Verify token (len bytes, not necessarily NUL-terminated) at time now
 * (Unix seconds).  Returns 0 and fills out; RP_ENOTFOUND when the token is
 * well formed but names a kid (or, without kid, needs a key type) that no
 * loaded key has -- out->kid is set and the caller may refresh the JWKS and
 * try again; otherwise RP_EINVAL with err a short sentence fit for the
 * client ("token expired").  Never logs the token. */
int rp_jwt_verify(rp_jwt_verifier_t *v, const char *token, size_t len, int64_t now,
                  rp_jwt_claims_t *out, rp_err_t *err);

/* Strict base64url decoding without padding (RFC 7515 section 2): returns
 * 0 and the length in *outlen, or RP_EINVAL for a character outside the
 * alphabet, padding, an impossible length or output beyond cap. */
int rp_jwt_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap,
                         size_t *outlen);

/* base64url encoding without padding into out (cap must hold
 * 4*ceil(len/3)+1 bytes); returns the length written (NUL-terminated). */
size_t rp_jwt_b64url_encode(const void *in, size_t len, char *out, size_t cap);

/* Sign an HS256 token for claims_json (a JSON object text) with secret;
 * for tests and tools.  Returns an owned string (free with free()) or NULL. */
char *rp_jwt_sign_hs256(const char *claims_json, const void *secret, size_t secret_len);

#endif
