/*
 * test_dispatcher.c: ragpool-dispatcher as a client and an operator see
 * it, against the real program, a real Postgres and (for the shared limit
 * and the Redis queue) a real Redis.  Keys are made at test time: an HS256
 * secret, an EC P-256 and an RSA 2048 key published in a JWKS file.
 *
 *  - every refusal has its status and JSON body: 400, 401 (missing,
 *    malformed, alg none, expired, wrong audience, wrong role, wrong key,
 *    HS/RS confusion; with WWW-Authenticate), 404, 405 (with Allow), 413,
 *    415, 422; and a refused request leaves no job;
 *  - 202 with HS256, ES256 and RS256 tokens; the job exists with the
 *    token's subject as user; a key added to the JWKS after start is found
 *    by re-reading it on the unknown kid; GET /v1/jobs/{id} shows the job,
 *    and the answer once a worker has written it; another user gets 404;
 *  - Idempotency-Key: a retry gets the same id and makes one job;
 *  - rate limit: 429 with Retry-After, locally and shared through Redis by
 *    two dispatchers;
 *  - /healthz (200, and 503 naming Postgres when it is unreachable),
 *    /metrics, CORS preflight, SIGTERM ends with status 0;
 *  - RAGPOOL_QUEUE=redis: 202 once the entry is in the stream;
 *  - RAGPOOL_DISPATCHER_THREADS=4: connections are spread over the threads,
 *    /metrics counts every thread's answers, the local rate limit is one
 *    bucket per user for the whole process, SIGTERM drains every thread.
 *
 * ctest runs this program twice: with the automatic number of threads
 * (one for the Postgres queue, one per CPU for Redis) and as
 * integration/threads2/test_dispatcher with two for every test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "test_request.h"
#include "test_fixture.h"
#include "../unit/common/jwt_testkeys.h"

#define SECRET "integration-secret-0123456789abcdef0123456789"
#define USER_A "00000000-0000-4000-8000-0000000000a1"
#define USER_B "00000000-0000-4000-8000-0000000000b2"

typedef struct world {
    rp_test_ctx_t *t;
    EVP_PKEY *ec, *rsa, *late;
    char *jwks_path;
} world_t;

/* ------------------------------------------------------------------ */
/* helpers                                                             */

typedef struct disp {
    rp_test_proc_t *p;
    char base[64];
} disp_t;

/* Start a dispatcher for w with extra env overrides; wait until it listens
 * and, when healthy is set, until /healthz says its connections are up. */
static disp_t disp_start_x(world_t *w, const char *name, const char *const *extra, int healthy)
{
    static int seq;
    char port_file[512], db[600], jwks[600], pf[600];
    snprintf(port_file, sizeof(port_file), "%s/%s.%d.port", rp_test_tmpdir(), name, ++seq);
    snprintf(db, sizeof(db), "DATABASE_URL=%s", w->t->db_url);
    snprintf(jwks, sizeof(jwks), "RAGPOOL_JWKS=%s", w->jwks_path);
    snprintf(pf, sizeof(pf), "RAGPOOL_DISPATCHER_PORT_FILE=%s", port_file);
    const char *env[32] = {db,
                           "SUPABASE_JWT_SECRET=" SECRET,
                           jwks,
                           pf,
                           "RAGPOOL_DISPATCHER_PORT=0",
                           "RAGPOOL_JWKS_MIN_REFRESH_MS=0",
                           "RAGPOOL_RATE_LIMIT_REDIS=off",
                           "RAGPOOL_RATE_LIMIT_RPS=1000",
                           "RAGPOOL_RATE_LIMIT_BURST=1000",
                           "RAGPOOL_MAX_BODY_BYTES=65536",
                           "RAGPOOL_LOG_LEVEL=debug"};
    size_t n = 11;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 31; i++)
        env[n++] = extra[i];
    env[n] = NULL;
    const char *argv[] = {RP_DISPATCHER_BIN, NULL};
    disp_t d;
    d.p = rp_test_proc_start(name, argv, env);
    rp_test_ctx_adopt(w->t, d.p);
    if (rp_test_proc_wait_log(d.p, "dispatcher.ready", RP_TEST_WAIT_MS) < 0) {
        rp_test_ctx_dump(w->t);
        fail_msg("%s did not become ready", name);
    }
    FILE *f = fopen(port_file, "r");
    int port = 0;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%d", &port), 1);
    fclose(f);
    snprintf(d.base, sizeof(d.base), "http://127.0.0.1:%d", port);
    /* "ready" means listening; the connections to Postgres and Redis come
     * up in the background.  Wait until /healthz says every part is up,
     * on several connections in a row (each may land on another thread),
     * unless this dispatcher is meant to find its database down. */
    if (!healthy)
        return d;
    char *u = malloc(strlen(d.base) + 16);
    sprintf(u, "%s/healthz", d.base);
    int ok = 0;
    for (long waited = 0; ok < 8 && waited < RP_TEST_WAIT_MS; waited += 20) {
        rp_test_resp_t r = rp_test_request("GET", u, NULL, NULL, 0);
        ok = r.status == 200 ? ok + 1 : 0;
        rp_test_resp_free(&r);
        if (ok < 8)
            usleep(20 * 1000);
    }
    free(u);
    if (ok < 8) {
        rp_test_ctx_dump(w->t);
        fail_msg("%s did not report healthy", name);
    }
    return d;
}

static disp_t disp_start(world_t *w, const char *name, const char *const *extra)
{
    return disp_start_x(w, name, extra, 1);
}

/* SIGTERM must end a dispatcher with status 0 (under the sanitizers this
 * also proves it freed everything). */
static void stop_clean(world_t *w, disp_t *d)
{
    rp_test_proc_signal(d->p, SIGTERM);
    rp_test_assert(w->t, rp_test_proc_wait(d->p, 20000) == 0);
    rp_test_assert(w->t, rp_test_proc_log_count(d->p, "dispatcher.stopped") == 1);
}

static char *url(const disp_t *d, const char *path)
{
    char *u = malloc(strlen(d->base) + strlen(path) + 1);
    sprintf(u, "%s%s", d->base, path);
    return u;
}

static char *hs_token(const char *sub, const char *aud, const char *role, long exp_in)
{
    char *c = tk_claims(sub, role, aud, (long long)time(NULL), exp_in, NULL);
    char *t = tk_sign("HS256", NULL, SECRET, strlen(SECRET), NULL, c);
    free(c);
    return t;
}

/* POST /v1/chat with token (may be NULL), content type (may be NULL),
 * idempotency key (may be NULL) and body. */
static rp_test_resp_t chat(const disp_t *d, const char *token, const char *ctype, const char *idem,
                           const char *body)
{
    char auth[9000], ct[128], ik[300];
    const char *h[4];
    size_t n = 0;
    if (token != NULL) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        h[n++] = auth;
    }
    if (ctype != NULL) {
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
        h[n++] = ct;
    }
    if (idem != NULL) {
        snprintf(ik, sizeof(ik), "Idempotency-Key: %s", idem);
        h[n++] = ik;
    }
    h[n] = NULL;
    char *u = url(d, "/v1/chat");
    rp_test_resp_t r = rp_test_request("POST", u, h, body, strlen(body));
    free(u);
    return r;
}

static rp_test_resp_t get_job(const disp_t *d, const char *token, const char *id)
{
    char auth[9000], path[128];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    snprintf(path, sizeof(path), "/v1/jobs/%s", id);
    const char *h[] = {auth, NULL};
    char *u = url(d, path);
    rp_test_resp_t r = rp_test_request("GET", u, h, NULL, 0);
    free(u);
    return r;
}

/* The response must have this status and, for errors, a JSON body
 * {"error":{"code":code,"message":...}}. */
static void expect_error(world_t *w, rp_test_resp_t r, long status, const char *code)
{
    json_t *j = json_loads(r.body, 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    if (r.status != status || c == NULL || strcmp(c, code) != 0 || m == NULL) {
        rp_test_ctx_dump(w->t);
        fail_msg("expected %ld %s, got %ld %s", status, code, r.status, r.body);
    }
    if (!rp_test_resp_has_header(&r, "Content-Type: application/json")) {
        rp_test_ctx_dump(w->t);
        fail_msg("an error without a JSON content type: %s", r.headers);
    }
    json_decref(j);
    rp_test_resp_free(&r);
}

/* The job id of a 202 answer (owned). */
static char *expect_accepted(world_t *w, rp_test_resp_t r)
{
    json_t *j = json_loads(r.body, 0, NULL);
    const char *id = json_string_value(json_object_get(j, "job_id"));
    const char *st = json_string_value(json_object_get(j, "status"));
    if (r.status != 202 || id == NULL || st == NULL || strcmp(st, "queued") != 0) {
        rp_test_ctx_dump(w->t);
        fail_msg("expected 202 queued, got %ld %s", r.status, r.body);
    }
    char *out = strdup(id);
    json_decref(j);
    rp_test_resp_free(&r);
    return out;
}

static void write_jwks(world_t *w, int with_late)
{
    char *e = tk_jwk(w->ec, "ec-1"), *r = tk_jwk(w->rsa, "rsa-1");
    char *l = with_late ? tk_jwk(w->late, "ec-late") : strdup("");
    char tmp[700];
    snprintf(tmp, sizeof(tmp), "%s.tmp", w->jwks_path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fprintf(f, "{\"keys\":[%s,%s%s%s]}", e, r, with_late ? "," : "", l);
    fclose(f);
    assert_int_equal(rename(tmp, w->jwks_path), 0);
    free(e);
    free(r);
    free(l);
}

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof(*w));
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;
    rp_test_ctx_free(w->t);
    EVP_PKEY_free(w->ec);
    EVP_PKEY_free(w->rsa);
    EVP_PKEY_free(w->late);
    free(w->jwks_path);
    free(w);
    return 0;
}

static world_t *world(void **state, const char *name)
{
    world_t *w = *state;
    w->t = rp_test_ctx_new(name, NULL);
    w->ec = tk_gen_ec();
    w->rsa = tk_gen_rsa();
    w->late = tk_gen_ec();
    w->jwks_path = malloc(512);
    snprintf(w->jwks_path, 512, "%s/%s.jwks.json", rp_test_tmpdir(), name);
    write_jwks(w, 0);
    return w;
}

static long long jobs_count(world_t *w)
{
    return rp_test_sql_int(w->t->db, "select count(*) from ragpool.jobs");
}

/* ------------------------------------------------------------------ */
/* tests                                                               */

/* The sum of the /metrics lines starting with prefix. */
static long long metric_sum(const char *text, const char *prefix)
{
    long long sum = 0;
    size_t n = strlen(prefix);
    for (const char *p = text; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, n) == 0) {
            const char *sp = strchr(p, ' ');
            if (sp != NULL)
                sum += atoll(sp + 1);
        }
    return sum;
}

/* The value of the first /metrics line starting with prefix, or -1. */
static long long metric(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, n) == 0 && p[n] == ' ')
            return atoll(p + n + 1);
    return -1;
}

/* A user id no other run shares (the shared limit's buckets live in the
 * one Redis every test program uses, and ctest runs this program twice at
 * once). */
static void fresh_user(char out[64])
{
    static int seq;
    snprintf(out, 64, "00000000-0000-4000-8000-%06d%06d", (int)(getpid() % 1000000),
             (int)((time(NULL) * 10 + ++seq) % 1000000));
}

static void test_every_refusal(void **state)
{
    world_t *w = world(state, "disp_errors");
    disp_t d = disp_start(w, "dispatcher", NULL);
    const char *ok = "{\"message\":\"What is TON?\"}";
    const char *J = "application/json";
    char *good = hs_token(USER_A, "authenticated", "authenticated", 3600);

    /* 401: missing, not Bearer, malformed, alg none, expired, wrong
     * audience, wrong role, wrong secret, HS/RS confusion, huge */
    rp_test_resp_t r = chat(&d, NULL, J, NULL, ok);
    assert_true(rp_test_resp_has_header(&r, "WWW-Authenticate: Bearer"));
    expect_error(w, r, 401, "missing_token");
    expect_error(w, chat(&d, "not-a-jwt", J, NULL, ok), 401, "invalid_token");
    char *c =
        tk_claims(USER_A, "authenticated", "authenticated", (long long)time(NULL), 3600, NULL);
    char *t = tk_sign("none", NULL, NULL, 0, NULL, c);
    expect_error(w, chat(&d, t, J, NULL, ok), 401, "invalid_token");
    free(t);
    t = tk_sign("HS256", NULL, "the-wrong-secret", 16, NULL, c);
    expect_error(w, chat(&d, t, J, NULL, ok), 401, "invalid_token");
    free(t);
    size_t dlen;
    unsigned char *der = tk_pub_der(w->rsa, &dlen);
    t = tk_sign("HS256", NULL, der, dlen, "rsa-1", c);
    OPENSSL_free(der);
    r = chat(&d, t, J, NULL, ok);
    assert_true(rp_test_resp_has_header(&r, "error=\"invalid_token\""));
    expect_error(w, r, 401, "invalid_token");
    free(t);
    t = tk_sign("ES256", w->late, NULL, 0, "ec-1", c); /* right kid, wrong key */
    expect_error(w, chat(&d, t, J, NULL, ok), 401, "invalid_token");
    free(t);
    free(c);
    t = hs_token(USER_A, "authenticated", "authenticated", -3600);
    expect_error(w, chat(&d, t, J, NULL, ok), 401, "invalid_token");
    free(t);
    t = hs_token(USER_A, "somebody-else", "authenticated", 3600);
    expect_error(w, chat(&d, t, J, NULL, ok), 401, "invalid_token");
    free(t);
    t = hs_token(USER_A, "authenticated", "anon", 3600);
    expect_error(w, chat(&d, t, J, NULL, ok), 401, "invalid_token");
    free(t);
    char *huge = malloc(8001);
    memset(huge, 'a', 8000);
    huge[8000] = '\0';
    huge[100] = '.';
    huge[200] = '.';
    expect_error(w, chat(&d, huge, J, NULL, ok), 401, "invalid_token");
    free(huge);

    /* 404, 405 */
    char *u = url(&d, "/nope");
    expect_error(w, rp_test_request("GET", u, NULL, NULL, 0), 404, "not_found");
    free(u);
    u = url(&d, "/v1/chat");
    r = rp_test_request("GET", u, NULL, NULL, 0);
    assert_true(rp_test_resp_has_header(&r, "Allow: POST"));
    expect_error(w, r, 405, "method_not_allowed");
    free(u);
    r = get_job(&d, good, "not-a-uuid");
    expect_error(w, r, 404, "not_found");

    /* 415, 400, 422, 413 */
    expect_error(w, chat(&d, good, NULL, NULL, ok), 415, "unsupported_media_type");
    expect_error(w, chat(&d, good, "text/plain", NULL, ok), 415, "unsupported_media_type");
    expect_error(w, chat(&d, good, J, NULL, "{\"message\":"), 400, "malformed_json");
    r = chat(&d, good, J, NULL, "{\"message\":\"hi\",\"user_id\":\"" USER_B "\"}");
    assert_non_null(strstr(r.body, "user_id"));
    expect_error(w, r, 422, "invalid_fields");
    expect_error(w,
                 chat(&d, good, J, NULL, "{\"message\":\"hi\",\"options\":{\"match_count\":99}}"),
                 422, "invalid_fields");
    expect_error(w, chat(&d, good, J, "bad key with spaces", ok), 422, "invalid_idempotency_key");
    char *big = malloc(70000);
    memset(big, 'x', 69999);
    big[69999] = '\0';
    memcpy(big, "{\"message\":\"", 12);
    big[69997] = '"';
    big[69998] = '}';
    expect_error(w, chat(&d, good, J, NULL, big), 413, "payload_too_large");
    free(big);

    /* Nothing above left a job behind. */
    rp_test_assert(w->t, jobs_count(w) == 0);
    free(good);
    rp_test_ctx_pass(w->t);
}

static void test_accept_status_and_answer(void **state)
{
    world_t *w = world(state, "disp_accept");
    disp_t d = disp_start(w, "dispatcher", NULL);
    const char *J = "application/json";
    char *a = hs_token(USER_A, "authenticated", "authenticated", 3600);
    char *b = hs_token(USER_B, "authenticated", "authenticated", 3600);

    char *id = expect_accepted(
        w, chat(&d, a, J, NULL,
                "{\"message\":\"What is TON token?\",\"options\":{\"match_count\":3}}"));
    /* The job exists, for the token's subject, with the options. */
    char *uid = rp_test_sql_text(
        w->t->db, "select payload->>'user_id' from ragpool.jobs where id = '%s'", id);
    rp_test_assert(w->t, uid != NULL && strcmp(uid, USER_A) == 0);
    free(uid);
    rp_test_assert(w->t, rp_test_sql_int(w->t->db,
                                         "select (payload->'options'->>'match_count')::int from "
                                         "ragpool.jobs where id = '%s'",
                                         id) == 3);
    /* Its owner sees it queued; anyone else gets 404. */
    rp_test_resp_t r = get_job(&d, a, id);
    rp_test_assert(w->t, r.status == 200 && strstr(r.body, "\"status\":\"queued\"") != NULL);
    rp_test_resp_free(&r);
    expect_error(w, get_job(&d, b, id), 404, "not_found");
    expect_error(w, get_job(&d, a, "00000000-0000-4000-8000-00000000dead"), 404, "not_found");

    /* ES256 and RS256 tokens from the JWKS file. */
    char *c =
        tk_claims(USER_B, "authenticated", "authenticated", (long long)time(NULL), 3600, NULL);
    char *t = tk_sign("ES256", w->ec, NULL, 0, "ec-1", c);
    free(expect_accepted(w, chat(&d, t, J, NULL, "{\"message\":\"es\"}")));
    free(t);
    t = tk_sign("RS256", w->rsa, NULL, 0, "rsa-1", c);
    free(expect_accepted(w, chat(&d, t, J, NULL, "{\"message\":\"rs\"}")));
    free(t);
    /* A key published after start: found by re-reading on its kid. */
    t = tk_sign("ES256", w->late, NULL, 0, "ec-late", c);
    expect_error(w, chat(&d, t, J, NULL, "{\"message\":\"late\"}"), 401, "invalid_token");
    write_jwks(w, 1);
    free(expect_accepted(w, chat(&d, t, J, NULL, "{\"message\":\"late\"}")));
    free(t);
    free(c);
    rp_test_assert(w->t, jobs_count(w) == 4);

    /* A worker answers; the owner then sees the answer. */
    rp_test_worker_start(w->t, NULL);
    rp_test_assert(w->t, rp_test_sql_wait(w->t->db, RP_TEST_WAIT_MS,
                                          "select exists (select 1 from conversations where "
                                          "job_id = '%s')",
                                          id));
    r = get_job(&d, a, id);
    json_t *j = json_loads(r.body, 0, NULL);
    json_t *ans = json_object_get(j, "answer");
    rp_test_assert(w->t, r.status == 200);
    rp_test_assert(w->t, strcmp(json_string_value(json_object_get(j, "status")), "done") == 0);
    rp_test_assert(w->t, json_string_length(json_object_get(ans, "response")) > 0);
    rp_test_assert(w->t, json_is_array(json_object_get(ans, "context_used")));
    json_decref(j);
    rp_test_resp_free(&r);
    expect_error(w, get_job(&d, b, id), 404, "not_found");
    stop_clean(w, &d);
    free(id);
    free(a);
    free(b);
    rp_test_ctx_pass(w->t);
}

static void test_idempotency_key(void **state)
{
    world_t *w = world(state, "disp_idem");
    disp_t d = disp_start(w, "dispatcher", NULL);
    const char *J = "application/json";
    char *a = hs_token(USER_A, "authenticated", "authenticated", 3600);
    char *b = hs_token(USER_B, "authenticated", "authenticated", 3600);
    const char *body = "{\"message\":\"once only\"}";
    char *id1 = expect_accepted(w, chat(&d, a, J, "retry-me-1", body));
    char *id2 = expect_accepted(w, chat(&d, a, J, "retry-me-1", body));
    char *id3 = expect_accepted(w, chat(&d, b, J, "retry-me-1", body));
    rp_test_assert(w->t, strcmp(id1, id2) == 0);
    rp_test_assert(w->t, strcmp(id1, id3) != 0); /* another user's key is another job */
    rp_test_assert(w->t, jobs_count(w) == 2);
    free(id1);
    free(id2);
    free(id3);
    free(a);
    free(b);
    rp_test_ctx_pass(w->t);
}

static void test_rate_limit(void **state)
{
    world_t *w = world(state, "disp_ratelimit");
    const char *J = "application/json";
    const char *body = "{\"message\":\"limited\"}";
    static const char *const local[] = {"RAGPOOL_RATE_LIMIT_RPS=0.01", "RAGPOOL_RATE_LIMIT_BURST=2",
                                        NULL};
    disp_t d = disp_start(w, "dispatcher-local", local);
    char *a = hs_token(USER_A, "authenticated", "authenticated", 3600);
    free(expect_accepted(w, chat(&d, a, J, NULL, body)));
    free(expect_accepted(w, chat(&d, a, J, NULL, body)));
    rp_test_resp_t r = chat(&d, a, J, NULL, body);
    rp_test_assert(w->t, rp_test_resp_has_header(&r, "Retry-After: "));
    expect_error(w, r, 429, "rate_limited");
    rp_test_assert(w->t, jobs_count(w) == 2);

    /* Shared through Redis: two dispatchers, one bucket per user. */
    char user[64], rl[300];
    fresh_user(user);
    snprintf(rl, sizeof(rl), "RAGPOOL_RATE_LIMIT_REDIS=%s", rp_test_env("REDIS_URL"));
    const char *shared[] = {"RAGPOOL_RATE_LIMIT_RPS=0.01", "RAGPOOL_RATE_LIMIT_BURST=2", rl, NULL};
    /* Used the moment they listen: the limit waits for Redis's first
     * connection rather than deciding locally (no fallback counted). */
    disp_t d1 = disp_start_x(w, "dispatcher-r1", shared, 0);
    disp_t d2 = disp_start_x(w, "dispatcher-r2", shared, 0);
    char *u = hs_token(user, "authenticated", "authenticated", 3600);
    free(expect_accepted(w, chat(&d1, u, J, NULL, body)));
    free(expect_accepted(w, chat(&d2, u, J, NULL, body)));
    expect_error(w, chat(&d1, u, J, NULL, body), 429, "rate_limited");
    expect_error(w, chat(&d2, u, J, NULL, body), 429, "rate_limited");
    char *m = url(&d1, "/metrics");
    rp_test_resp_t mr = rp_test_request("GET", m, NULL, NULL, 0);
    rp_test_assert(w->t, strstr(mr.body, "ragpool_dispatcher_rate_limited_total 1") != NULL);
    rp_test_assert(w->t,
                   strstr(mr.body, "ragpool_dispatcher_rate_limit_fallbacks_total 0") != NULL);
    rp_test_resp_free(&mr);
    free(m);

    /* The limiter's Redis unreachable from the start: the first decision
     * waits for that first attempt, fails over to the local bucket (one
     * fallback counted per thread), and the next ones are local at once. */
    const char *down[] = {"RAGPOOL_RATE_LIMIT_RPS=0.01", "RAGPOOL_RATE_LIMIT_BURST=2",
                          "RAGPOOL_RATE_LIMIT_REDIS=redis://127.0.0.1:9", NULL};
    disp_t d3 = disp_start_x(w, "dispatcher-rl-down", down, 0);
    char user3[64];
    fresh_user(user3);
    char *u3 = hs_token(user3, "authenticated", "authenticated", 3600);
    free(expect_accepted(w, chat(&d3, u3, J, NULL, body)));
    free(expect_accepted(w, chat(&d3, u3, J, NULL, body)));
    expect_error(w, chat(&d3, u3, J, NULL, body), 429, "rate_limited");
    m = url(&d3, "/metrics");
    mr = rp_test_request("GET", m, NULL, NULL, 0);
    /* One per thread that took a request (each waits for its own first
     * connection); ctest's second run has two threads. */
    const char *tenv = getenv("RAGPOOL_DISPATCHER_THREADS");
    long long fallbacks = metric(mr.body, "ragpool_dispatcher_rate_limit_fallbacks_total");
    rp_test_assert(w->t, fallbacks >= 1 && fallbacks <= (tenv != NULL ? atoll(tenv) : 1));
    rp_test_resp_free(&mr);
    free(m);

    stop_clean(w, &d);
    stop_clean(w, &d1);
    stop_clean(w, &d2);
    stop_clean(w, &d3);
    free(u);
    free(u3);
    free(a);
    rp_test_ctx_pass(w->t);
}

static void test_health_metrics_cors_sigterm(void **state)
{
    world_t *w = world(state, "disp_ops");
    disp_t d = disp_start(w, "dispatcher", NULL);
    char *a = hs_token(USER_A, "authenticated", "authenticated", 3600);
    free(expect_accepted(w, chat(&d, a, "application/json", NULL, "{\"message\":\"m\"}")));

    char *u = url(&d, "/healthz");
    rp_test_resp_t r = rp_test_request("GET", u, NULL, NULL, 0);
    rp_test_assert(w->t, r.status == 200 && strstr(r.body, "\"postgres\":\"up\"") != NULL);
    rp_test_resp_free(&r);
    free(u);

    u = url(&d, "/metrics");
    r = rp_test_request("GET", u, NULL, NULL, 0);
    rp_test_assert(w->t, r.status == 200);
    rp_test_assert(w->t, rp_test_resp_has_header(&r, "Content-Type: text/plain; version=0.0.4"));
    rp_test_assert(
        w->t, strstr(r.body,
                     "ragpool_dispatcher_requests_total{route=\"chat\",status=\"202\"} 1") != NULL);
    rp_test_assert(
        w->t,
        strstr(
            r.body,
            "ragpool_dispatcher_request_duration_seconds_bucket{route=\"chat\",le=\"+Inf\"} 1") !=
            NULL);
    rp_test_assert(w->t, strstr(r.body, "ragpool_queue_jobs{state=\"queued\"} 1") != NULL);
    rp_test_assert(w->t, strstr(r.body, "ragpool_dispatcher_enqueue_errors_total 0") != NULL);
    rp_test_resp_free(&r);
    free(u);

    /* CORS preflight, as browsers send it */
    u = url(&d, "/v1/chat");
    const char *pre[] = {"Origin: https://app.example", "Access-Control-Request-Method: POST",
                         NULL};
    r = rp_test_request("OPTIONS", u, pre, NULL, 0);
    rp_test_assert(w->t, r.status == 204);
    rp_test_assert(w->t, rp_test_resp_has_header(&r, "Access-Control-Allow-Origin: *"));
    rp_test_assert(
        w->t,
        rp_test_resp_has_header(
            &r,
            "Access-Control-Allow-Headers: authorization, x-client-info, apikey, content-type"));
    rp_test_assert(w->t, rp_test_resp_has_header(&r, "Access-Control-Allow-Methods:"));
    rp_test_resp_free(&r);
    free(u);

    /* Postgres unreachable: 503 naming it (start-up does not need it). */
    static const char *const nodb[] = {
        "DATABASE_URL=postgresql://postgres@127.0.0.1:9/none?connect_timeout=1", NULL};
    disp_t bad = disp_start_x(w, "dispatcher-nodb", nodb, 0);
    u = url(&bad, "/healthz");
    r = rp_test_request("GET", u, NULL, NULL, 0);
    rp_test_assert(w->t, r.status == 503 && strstr(r.body, "\"postgres\":\"down\"") != NULL);
    rp_test_resp_free(&r);
    free(u);
    /* ... and a chat request to it is 503, not lost silently */
    rp_test_resp_t c = chat(&bad, a, "application/json", NULL, "{\"message\":\"m\"}");
    expect_error(w, c, 503, "queue_unavailable");

    /* SIGTERM: a clean stop */
    stop_clean(w, &d);
    stop_clean(w, &bad);
    free(a);
    rp_test_ctx_pass(w->t);
}

static void test_threads(void **state)
{
    world_t *w = world(state, "disp_threads");
    const char *J = "application/json";
    static const char *const four[] = {"RAGPOOL_DISPATCHER_THREADS=4", NULL};
    disp_t d = disp_start(w, "dispatcher-4", four);
    rp_test_assert(w->t, rp_test_proc_log_count(d.p, "\"threads\":4") == 1);
    char *a = hs_token(USER_A, "authenticated", "authenticated", 3600);
    /* Each request is a new connection: the kernel spreads them. */
    for (int i = 0; i < 40; i++)
        free(expect_accepted(w, chat(&d, a, J, NULL, "{\"message\":\"spread\"}")));
    rp_test_assert(w->t, jobs_count(w) == 40);
    char *u = url(&d, "/metrics");
    rp_test_resp_t r = rp_test_request("GET", u, NULL, NULL, 0);
    rp_test_assert(w->t, r.status == 200);
    rp_test_assert(w->t, metric(r.body, "ragpool_dispatcher_requests_total{route=\"chat\","
                                        "status=\"202\"}") == 40);
    long long sum = 0;
    int busy = 0;
    for (int i = 0; i < 4; i++) {
        char name[96];
        snprintf(name, sizeof(name), "ragpool_dispatcher_thread_requests_total{thread=\"%d\"}", i);
        long long v = metric(r.body, name);
        rp_test_assert(w->t, v >= 0);
        sum += v > 0 ? v : 0;
        busy += v > 0;
    }
    /* Every request answered (40 chats, the health checks of disp_start,
     * this /metrics request) counted once by the thread that answered it,
     * and more than one thread busy (all on one of 4: about 4^-47). */
    long long answered = metric_sum(r.body, "ragpool_dispatcher_requests_total{");
    rp_test_assert(w->t, answered >= 41 && sum == answered);
    rp_test_assert(w->t, busy >= 2);
    rp_test_resp_free(&r);
    free(u);

    /* The local limit is the process's, not each thread's: burst 2 over
     * eight connections lets exactly two through. */
    char user[64];
    fresh_user(user);
    static const char *const limited[] = {"RAGPOOL_DISPATCHER_THREADS=4",
                                          "RAGPOOL_RATE_LIMIT_RPS=0.01",
                                          "RAGPOOL_RATE_LIMIT_BURST=2", NULL};
    disp_t l = disp_start(w, "dispatcher-4-limited", limited);
    char *b = hs_token(user, "authenticated", "authenticated", 3600);
    int accepted = 0, refused = 0;
    for (int i = 0; i < 8; i++) {
        rp_test_resp_t c = chat(&l, b, J, NULL, "{\"message\":\"limited\"}");
        if (c.status == 202) {
            accepted++;
            rp_test_resp_free(&c);
        } else {
            refused++;
            expect_error(w, c, 429, "rate_limited");
        }
    }
    rp_test_assert(w->t, accepted == 2 && refused == 6);
    rp_test_assert(w->t, jobs_count(w) == 42);
    u = url(&l, "/metrics");
    r = rp_test_request("GET", u, NULL, NULL, 0);
    rp_test_assert(w->t, metric(r.body, "ragpool_dispatcher_rate_limited_total") == 6);
    rp_test_resp_free(&r);
    free(u);

    /* SIGTERM: every thread drains, one "stopped" line, status 0. */
    stop_clean(w, &d);
    stop_clean(w, &l);
    rp_test_assert(w->t, rp_test_proc_log_count(d.p, "\"event\":\"dispatcher.closing\"") == 4);
    free(a);
    free(b);
    rp_test_ctx_pass(w->t);
}

static void test_redis_queue(void **state)
{
    world_t *w = world(state, "disp_redis");
    char stream[128], sv[200];
    snprintf(stream, sizeof(stream), "ragpool:test:%d:%lld", (int)getpid(), (long long)time(NULL));
    snprintf(sv, sizeof(sv), "RAGPOOL_REDIS_STREAM=%s", stream);
    const char *env[] = {"RAGPOOL_QUEUE=redis", sv, NULL};
    disp_t d = disp_start(w, "dispatcher-redis", env);
    char *a = hs_token(USER_A, "authenticated", "authenticated", 3600);
    char *id1 =
        expect_accepted(w, chat(&d, a, "application/json", "k1", "{\"message\":\"via redis\"}"));
    char *id2 =
        expect_accepted(w, chat(&d, a, "application/json", "k1", "{\"message\":\"via redis\"}"));
    rp_test_assert(w->t, strcmp(id1, id2) == 0);
    free(expect_accepted(w, chat(&d, a, "application/json", NULL, "{\"message\":\"again\"}")));
    char *url_s = strdup(rp_test_env("REDIS_URL"));
    const char *argv[] = {"redis-cli", "-u", url_s, "XLEN", stream, NULL};
    char *out = NULL;
    rp_test_assert(w->t, rp_test_run("redis-cli", argv, NULL, 10000, &out) == 0);
    rp_test_assert(w->t, atoi(out) == 2);
    free(out);
    /* /metrics counts the Redis queue (no worker: both entries waiting). */
    char *u = url(&d, "/metrics");
    rp_test_resp_t r = rp_test_request("GET", u, NULL, NULL, 0);
    rp_test_assert(w->t, r.status == 200);
    rp_test_assert(w->t, strstr(r.body, "ragpool_queue_jobs{state=\"queued\"} 2") != NULL);
    rp_test_assert(w->t, strstr(r.body, "ragpool_queue_jobs{state=\"running\"} 0") != NULL);
    rp_test_assert(w->t, strstr(r.body, "ragpool_queue_jobs{state=\"dead\"} 0") != NULL);
    rp_test_resp_free(&r);
    free(u);
    const char *del[] = {"redis-cli", "-u", url_s, "DEL", stream, NULL};
    rp_test_run("redis-cli", del, NULL, 10000, NULL);
    free(url_s);
    rp_test_assert(w->t, jobs_count(w) == 0); /* nothing in Postgres */
    stop_clean(w, &d);
    free(id1);
    free(id2);
    free(a);
    rp_test_ctx_pass(w->t);
}

int main(void)
{
    rp_test_require_stack("test_dispatcher");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_refusal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accept_status_and_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_metrics_cors_sigterm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
