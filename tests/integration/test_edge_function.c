/*
 * test_edge_function.c: the Supabase Edge Function
 * (deploy/supabase/functions/ai-enqueue) run for real with Deno against the
 * test's own migrated database, as a client and an operator see it.
 *
 * Deno comes from the npm registry (npm package `deno`, pinned by
 * deploy/supabase/package.json): deploy/supabase/install-deno.sh installs
 * it into <build tree>/deno once and caches the function's npm modules
 * (postgres.js, ioredis, @msgpack/msgpack) in <build tree>/deno/cache, the
 * DENO_DIR the function then runs with (--cached-only: no network while
 * testing).  RP_DENO_BIN (with RP_DENO_DIR) uses another Deno instead.  When
 * Deno cannot be installed the program prints "SKIP: <why>" and exits 77.
 *
 *  - a valid HS256 token -> 202 {"job_id", "status": "queued"}; the job is
 *    in ragpool.jobs for the token's `sub` with the options, whatever user
 *    id the body names; conversation_id is echoed; a worker answers it
 *    (a conversations row for that user); an Idempotency-Key retry gets the
 *    same id -- the one ragpool-dispatcher computes -- and makes one job;
 *  - refusals with the dispatcher's status and code: 401 (missing,
 *    malformed, alg none, RS256, wrong secret, expired, not yet valid,
 *    wrong audience, wrong role, with WWW-Authenticate), 405 (with Allow),
 *    415, 400, 413, 422 (invalid fields, not an object, bad Idempotency-Key,
 *    a subject that is not a user id of this database); none leaves a job;
 *  - CORS: the OPTIONS preflight answers "ok" with the reference design's
 *    headers, and every answer carries Access-Control-Allow-Origin;
 *  - Postgres unreachable: 503 queue_unavailable with Retry-After;
 *  - RAGPOOL_QUEUE=redis: 202 once the entry is in the stream (idempotent
 *    retry: the same id, "existing": true, one entry) and a worker reading
 *    that stream answers it;
 *  - SIGTERM stops the function with status 0 and its counters.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "request.h" /* rp_idempotency_job_id: the dispatcher's ids */
#include "test_request.h"
#include "test_fixture.h"
#include "../unit/common/jwt_testkeys.h"

#define SECRET "edge-secret-0123456789abcdef0123456789abcdef"
#define USER_A "00000000-0000-4000-8000-0000000000a1"
#define USER_B "00000000-0000-4000-8000-0000000000b2"
#define JSON_CT "application/json"

static char *g_deno;     /* the deno executable */
static char *g_deno_dir; /* its DENO_DIR, holding the function's npm modules */
static char *g_fn;       /* deploy/supabase/functions/ai-enqueue */

/* ------------------------------------------------------------------ */
/* Deno                                                                */

/* <build tree>/deno: the directory above this program's own. */
static char *tools_dir(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NULL;
    exe[n] = '\0';
    char *tree = dirname(dirname(exe));
    char *out = malloc(strlen(tree) + 8);
    sprintf(out, "%s/deno", tree);
    return out;
}

/* Find or install Deno; exit 77 with the reason when it cannot be had. */
static void require_deno(void)
{
    g_fn = rp_test_source_path("deploy/supabase/functions/ai-enqueue");
    const char *bin = getenv("RP_DENO_BIN");
    if (bin != NULL && bin[0] != '\0') {
        const char *dir = getenv("RP_DENO_DIR");
        g_deno = strdup(bin);
        g_deno_dir = strdup(dir != NULL && dir[0] != '\0' ? dir : rp_test_tmpdir());
        return;
    }
    char *dir = tools_dir();
    char *script = rp_test_source_path("deploy/supabase/install-deno.sh");
    if (dir == NULL) {
        printf("SKIP: test_edge_function: cannot find the build tree\n");
        exit(77);
    }
    const char *argv[] = {"bash", script, dir, NULL};
    char *out = NULL;
    int rc = rp_test_run("install-deno", argv, NULL, 600000, &out);
    if (rc != 0) {
        /* The reason is in the last lines (npm's or Deno's own error). */
        size_t len = strlen(out);
        const char *tail = len > 1500 ? out + len - 1500 : out;
        printf("SKIP: test_edge_function: Deno could not be installed from npm (install-deno.sh "
               "exited %d):\n%s\n",
               rc, tail);
        free(out);
        free(script);
        free(dir);
        exit(77);
    }
    /* The last line is the executable. */
    size_t len = strlen(out);
    while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == '\r'))
        out[--len] = '\0';
    char *nl = strrchr(out, '\n');
    g_deno = strdup(nl != NULL ? nl + 1 : out);
    g_deno_dir = malloc(strlen(dir) + 8);
    sprintf(g_deno_dir, "%s/cache", dir);
    free(out);
    free(script);
    free(dir);
}

typedef struct edge {
    rp_test_proc_t *p;
    char base[64];
} edge_t;

/* Start the function against t's database with extra env overrides; wait
 * until it listens. */
static edge_t edge_start(rp_test_ctx_t *t, const char *name, const char *const *extra)
{
    static int seq;
    char port_file[512], db[600], dd[600], pf[600], wr[600], cfg[600], entry[600];
    snprintf(port_file, sizeof(port_file), "%s/%s.%d.port", rp_test_tmpdir(), name, ++seq);
    snprintf(db, sizeof(db), "DATABASE_URL=%s", t->db_url);
    snprintf(dd, sizeof(dd), "DENO_DIR=%s", g_deno_dir);
    snprintf(pf, sizeof(pf), "RAGPOOL_EDGE_PORT_FILE=%s", port_file);
    snprintf(wr, sizeof(wr), "--allow-write=%s", rp_test_tmpdir());
    snprintf(cfg, sizeof(cfg), "%s/deno.json", g_fn);
    snprintf(entry, sizeof(entry), "%s/index.ts", g_fn);
    const char *env[24] = {dd,
                           db,
                           pf,
                           "SUPABASE_JWT_SECRET=" SECRET,
                           "RAGPOOL_JWT_SECRET",
                           "RAGPOOL_QUEUE=postgres",
                           "RAGPOOL_EDGE_PORT=0",
                           "RAGPOOL_MAX_BODY_BYTES=65536",
                           "RAGPOOL_CORS_ORIGINS",
                           "NO_COLOR=1"};
    size_t n = 10;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 23; i++)
        env[n++] = extra[i];
    env[n] = NULL;
    const char *argv[] = {g_deno, "run",         "--cached-only", "--frozen", "--config",
                          cfg,    "--allow-net", "--allow-env",   wr,         entry,
                          NULL};
    edge_t e;
    e.p = rp_test_proc_start(name, argv, env);
    rp_test_ctx_adopt(t, e.p);
    if (rp_test_proc_wait_log(e.p, "ai-enqueue.ready", RP_TEST_WAIT_MS) < 0) {
        rp_test_ctx_dump(t);
        fail_msg("%s did not become ready", name);
    }
    FILE *f = fopen(port_file, "r");
    int port = 0;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%d", &port), 1);
    fclose(f);
    snprintf(e.base, sizeof(e.base), "http://127.0.0.1:%d", port);
    return e;
}

/* SIGTERM must end the function with status 0 and its counters. */
static void edge_stop(rp_test_ctx_t *t, edge_t *e)
{
    rp_test_proc_signal(e->p, SIGTERM);
    rp_test_assert(t, rp_test_proc_wait(e->p, 20000) == 0);
    rp_test_assert(t, rp_test_proc_log_count(e->p, "ai-enqueue.stopped") == 1);
}

/* ------------------------------------------------------------------ */
/* HTTP                                                                */

/* POST to the function with token, content type and Idempotency-Key (each
 * may be NULL) and body (length len, or strlen when len is 0). */
static rp_test_resp_t post(const edge_t *e, const char *token, const char *ctype, const char *idem,
                           const char *body, size_t len)
{
    char *auth = NULL, ct[128], ik[400];
    const char *h[4];
    size_t n = 0;
    if (token != NULL) {
        auth = malloc(strlen(token) + 32);
        sprintf(auth, "Authorization: Bearer %s", token);
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
    char u[128];
    snprintf(u, sizeof(u), "%s/ai-enqueue", e->base);
    rp_test_resp_t r = rp_test_request("POST", u, h, body, len != 0 ? len : strlen(body));
    free(auth);
    return r;
}

static char *hs_token_at(const char *secret, const char *sub, const char *aud, const char *role,
                         long long now, long exp_in, const char *extra)
{
    char *c = tk_claims(sub, role, aud, now, exp_in, extra);
    char *t = tk_sign("HS256", NULL, secret, strlen(secret), NULL, c);
    free(c);
    return t;
}

static char *hs_token(const char *sub)
{
    return hs_token_at(SECRET, sub, "authenticated", "authenticated", (long long)time(NULL), 3600,
                       NULL);
}

/* The answer must be this status with {"error":{"code":code,"message":...}},
 * JSON, with the CORS origin header.  Frees r. */
static void expect_error(rp_test_ctx_t *t, rp_test_resp_t r, long status, const char *code)
{
    json_t *j = json_loads(r.body, 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    if (r.status != status || c == NULL || strcmp(c, code) != 0 || m == NULL) {
        rp_test_ctx_dump(t);
        fail_msg("expected %ld %s, got %ld %s", status, code, r.status, r.body);
    }
    if (!rp_test_resp_has_header(&r, "Content-Type: application/json") ||
        !rp_test_resp_has_header(&r, "Access-Control-Allow-Origin: *")) {
        rp_test_ctx_dump(t);
        fail_msg("an error without JSON or CORS headers: %s", r.headers);
    }
    json_decref(j);
    rp_test_resp_free(&r);
}

/* The answer must be 202 {"job_id": uuid, "status": "queued"}; returns the
 * parsed body (owned: json_decref).  Frees r. */
static json_t *expect_accepted(rp_test_ctx_t *t, rp_test_resp_t r)
{
    json_t *j = json_loads(r.body, 0, NULL);
    const char *id = json_string_value(json_object_get(j, "job_id"));
    const char *st = json_string_value(json_object_get(j, "status"));
    if (r.status != 202 || id == NULL || strlen(id) != 36 || st == NULL ||
        strcmp(st, "queued") != 0) {
        rp_test_ctx_dump(t);
        fail_msg("expected 202 queued, got %ld %s", r.status, r.body);
    }
    rp_test_assert(t, rp_test_resp_has_header(&r, "Access-Control-Allow-Origin: *"));
    rp_test_resp_free(&r);
    return j;
}

static char *accepted_id(rp_test_ctx_t *t, rp_test_resp_t r)
{
    json_t *j = expect_accepted(t, r);
    char *id = strdup(json_string_value(json_object_get(j, "job_id")));
    json_decref(j);
    return id;
}

static long long jobs_count(rp_test_ctx_t *t)
{
    return rp_test_sql_int(t->db, "select count(*) from ragpool.jobs");
}

/* The same handler under `deno serve --parallel serve.ts` (Deno's own
 * server, a worker per CPU; bench/dispatcher measures it): listening once
 * it says so, on the port it prints. */
static edge_t edge_serve_parallel(rp_test_ctx_t *t, const char *name)
{
    char db[600], dd[600], cfg[600], entry[600];
    snprintf(db, sizeof(db), "DATABASE_URL=%s", t->db_url);
    snprintf(dd, sizeof(dd), "DENO_DIR=%s", g_deno_dir);
    snprintf(cfg, sizeof(cfg), "%s/deno.json", g_fn);
    snprintf(entry, sizeof(entry), "%s/serve.ts", g_fn);
    const char *env[] = {
        dd,           db,  "SUPABASE_JWT_SECRET=" SECRET, "RAGPOOL_QUEUE=postgres", "DENO_JOBS=2",
        "NO_COLOR=1", NULL};
    const char *argv[] = {g_deno,      "serve",  "--parallel",  "--cached-only", "--frozen",
                          "--config",  cfg,      "--allow-net", "--allow-env",   "--host",
                          "127.0.0.1", "--port", "0",           entry,           NULL};
    edge_t e;
    e.p = rp_test_proc_start(name, argv, env);
    rp_test_ctx_adopt(t, e.p);
    if (rp_test_proc_wait_log(e.p, "Listening on http://127.0.0.1:", RP_TEST_WAIT_MS) < 0) {
        rp_test_ctx_dump(t);
        fail_msg("%s did not become ready", name);
    }
    char *log = rp_test_proc_log(e.p);
    const char *at = strstr(log, "Listening on http://127.0.0.1:");
    int port = at != NULL ? atoi(at + strlen("Listening on http://127.0.0.1:")) : 0;
    free(log);
    rp_test_assert(t, port > 0);
    snprintf(e.base, sizeof(e.base), "http://127.0.0.1:%d", port);
    return e;
}

static int teardown(void **state)
{
    rp_test_ctx_free(*state);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                               */

static void test_accept_and_answer(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("edge_accept", NULL);
    *state = t;
    edge_t e = edge_start(t, "ai-enqueue", NULL);
    char *a = hs_token(USER_A);

    /* The body names another user (as the reference design's clients do):
     * ignored, the job is the token's subject's. */
    json_t *j = expect_accepted(
        t, post(&e, a, JSON_CT, NULL,
                "{\"message\":\"What is TON token?\",\"options\":{\"match_count\":3,"
                "\"temperature\":null},\"userId\":\"" USER_B "\",\"user_id\":\"" USER_B
                "\",\"conversation_id\":\"conv-7\"}",
                0));
    char *id = strdup(json_string_value(json_object_get(j, "job_id")));
    rp_test_assert(t,
                   strcmp(json_string_value(json_object_get(j, "conversation_id")), "conv-7") == 0);
    json_decref(j);
    char *uid =
        rp_test_sql_text(t->db, "select payload->>'user_id' from ragpool.jobs where id = '%s'", id);
    rp_test_assert(t, uid != NULL && strcmp(uid, USER_A) == 0);
    free(uid);
    char *opts =
        rp_test_sql_text(t->db, "select payload->>'options' from ragpool.jobs where id = '%s'", id);
    rp_test_assert(t, opts != NULL && strcmp(opts, "{\"match_count\": 3}") == 0);
    free(opts);

    /* Idempotency-Key: a retry gets the same id and makes no second job;
     * the id is the dispatcher's for the same user and key. */
    char *k1 = accepted_id(t, post(&e, a, JSON_CT, "edge-retry-1", "{\"message\":\"once\"}", 0));
    char *k2 = accepted_id(t, post(&e, a, JSON_CT, "edge-retry-1", "{\"message\":\"once\"}", 0));
    char want[37];
    assert_int_equal(rp_idempotency_job_id(USER_A, "edge-retry-1", want), 0);
    rp_test_assert(t, strcmp(k1, k2) == 0);
    rp_test_assert(t, strcmp(k1, want) == 0);
    rp_test_assert(t, jobs_count(t) == 2);

    /* A worker answers; the answer is the token's user's. */
    static const char *const wenv[] = {"RAGPOOL_QUEUE=postgres", NULL};
    rp_test_worker_start(t, wenv);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 2 from conversations where job_id in "
                                       "('%s', '%s') and status = 'done' and user_id::text = '%s'",
                                       id, k1, USER_A));
    char *resp =
        rp_test_sql_text(t->db, "select response from conversations where job_id = '%s'", id);
    rp_test_assert(t, resp != NULL && resp[0] != '\0');
    free(resp);
    rp_test_assert(t, rp_test_sql_int(t->db,
                                      "select count(*) from conversations where "
                                      "user_id::text = '%s'",
                                      USER_B) == 0);

    /* CORS preflight as browsers send it: the reference design's answer. */
    char u[128];
    snprintf(u, sizeof(u), "%s/ai-enqueue", e.base);
    const char *pre[] = {"Origin: https://app.example", "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: authorization, content-type", NULL};
    rp_test_resp_t r = rp_test_request("OPTIONS", u, pre, NULL, 0);
    rp_test_assert(t, r.status == 200 && strcmp(r.body, "ok") == 0);
    rp_test_assert(t, rp_test_resp_has_header(&r, "Access-Control-Allow-Origin: *"));
    rp_test_assert(t, rp_test_resp_has_header(
                          &r, "Access-Control-Allow-Headers: authorization, x-client-info, apikey, "
                              "content-type"));
    rp_test_assert(t, rp_test_resp_has_header(&r, "Access-Control-Allow-Methods: POST, OPTIONS"));
    rp_test_resp_free(&r);

    edge_stop(t, &e);
    rp_test_assert(t, rp_test_proc_log_count(e.p, "\"202\":3") == 1);
    free(id);
    free(k1);
    free(k2);
    free(a);
    rp_test_ctx_pass(t);
}

static void test_every_refusal(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("edge_errors", NULL);
    *state = t;
    edge_t e = edge_start(t, "ai-enqueue", NULL);
    const char *ok = "{\"message\":\"What is TON?\"}";
    long long now = (long long)time(NULL);
    char *good = hs_token(USER_A);

    /* 401: missing, not Bearer, malformed, alg none, RS256, wrong secret,
     * expired, not yet valid, wrong audience, wrong role, no subject. */
    rp_test_resp_t r = post(&e, NULL, JSON_CT, NULL, ok, 0);
    rp_test_assert(t, rp_test_resp_has_header(&r, "WWW-Authenticate: Bearer realm=\"ragpool\""));
    expect_error(t, r, 401, "missing_token");
    char u[128];
    snprintf(u, sizeof(u), "%s/ai-enqueue", e.base);
    const char *basic[] = {"Authorization: Basic dXNlcjpwYXNz", "Content-Type: application/json",
                           NULL};
    expect_error(t, rp_test_request("POST", u, basic, ok, strlen(ok)), 401, "missing_token");
    r = post(&e, "not-a-jwt", JSON_CT, NULL, ok, 0);
    rp_test_assert(t, rp_test_resp_has_header(&r, "error=\"invalid_token\""));
    expect_error(t, r, 401, "invalid_token");
    char *c = tk_claims(USER_A, "authenticated", "authenticated", now, 3600, NULL);
    char *tok = tk_sign("none", NULL, NULL, 0, NULL, c);
    expect_error(t, post(&e, tok, JSON_CT, NULL, ok, 0), 401, "invalid_token");
    free(tok);
    EVP_PKEY *rsa = tk_gen_rsa();
    tok = tk_sign("RS256", rsa, NULL, 0, "rsa-1", c);
    expect_error(t, post(&e, tok, JSON_CT, NULL, ok, 0), 401, "invalid_token");
    free(tok);
    EVP_PKEY_free(rsa);
    tok = tk_sign("HS256", NULL, "the-wrong-secret", 16, NULL, c);
    expect_error(t, post(&e, tok, JSON_CT, NULL, ok, 0), 401, "invalid_token");
    free(tok);
    free(c);
    struct {
        const char *sub, *aud, *role;
        long long iat;
        long exp_in;
        const char *extra;
    } bad[] = {
        {USER_A, "authenticated", "authenticated", now, -3600, NULL}, /* expired */
        {USER_A, "somebody-else", "authenticated", now, 3600, NULL},  /* audience */
        {USER_A, "authenticated", "anon", now, 3600, NULL},           /* role */
        {"", "authenticated", "authenticated", now, 3600, NULL},      /* subject */
        {"a b", "authenticated", "authenticated", now, 3600, NULL},   /* subject */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tok = hs_token_at(SECRET, bad[i].sub, bad[i].aud, bad[i].role, bad[i].iat, bad[i].exp_in,
                          bad[i].extra);
        expect_error(t, post(&e, tok, JSON_CT, NULL, ok, 0), 401, "invalid_token");
        free(tok);
    }
    /* not yet valid: nbf an hour ahead (beyond the 30 s leeway) */
    char nbf[64];
    snprintf(nbf, sizeof(nbf), "\"nbf\":%lld", now + 3600);
    tok = hs_token_at(SECRET, USER_A, "authenticated", "authenticated", now, 7200, nbf);
    expect_error(t, post(&e, tok, JSON_CT, NULL, ok, 0), 401, "invalid_token");
    free(tok);
    /* a valid signature over a tampered payload */
    tok = hs_token(USER_B);
    char *dot = strchr(tok, '.');
    char *dot2 = strchr(dot + 1, '.');
    char *g1 = strchr(good, '.');
    size_t plen = (size_t)(strchr(g1 + 1, '.') - g1);
    char *forged = malloc(strlen(tok) + strlen(good) + 1);
    memcpy(forged, good, (size_t)(g1 - good));               /* A's header */
    memcpy(forged + (g1 - good), dot, (size_t)(dot2 - dot)); /* B's claims */
    strcpy(forged + (g1 - good) + (dot2 - dot), g1 + plen);  /* A's signature */
    expect_error(t, post(&e, forged, JSON_CT, NULL, ok, 0), 401, "invalid_token");
    free(forged);
    free(tok);

    /* 405 with Allow */
    r = rp_test_request("GET", u, NULL, NULL, 0);
    rp_test_assert(t, rp_test_resp_has_header(&r, "Allow: POST"));
    expect_error(t, r, 405, "method_not_allowed");

    /* 415, 400, 422, 413 */
    expect_error(t, post(&e, good, NULL, NULL, ok, 0), 415, "unsupported_media_type");
    expect_error(t, post(&e, good, "text/plain", NULL, ok, 0), 415, "unsupported_media_type");
    expect_error(t, post(&e, good, JSON_CT, NULL, "{\"message\":", 0), 400, "malformed_json");
    expect_error(t, post(&e, good, JSON_CT, NULL, "{\"message\":\"\xff\"}", 0), 400,
                 "malformed_json");
    expect_error(t, post(&e, good, JSON_CT, NULL, "{\"message\":\"a\\u0000b\"}", 0), 400,
                 "malformed_json");
    expect_error(t, post(&e, good, JSON_CT, NULL, "[1,2]", 0), 422, "invalid_request");
    r = post(&e, good, JSON_CT, NULL, "{\"message\":\"hi\",\"mesage\":\"typo\"}", 0);
    rp_test_assert(t, strstr(r.body, "\"fields\":[\"mesage\"]") != NULL);
    expect_error(t, r, 422, "invalid_fields");
    expect_error(t, post(&e, good, JSON_CT, NULL, "{\"message\":\"\"}", 0), 422, "invalid_fields");
    expect_error(t, post(&e, good, JSON_CT, NULL, "{\"message\":42}", 0), 422, "invalid_fields");
    expect_error(t, post(&e, good, JSON_CT, NULL, "{}", 0), 422, "invalid_fields");
    r = post(&e, good, JSON_CT, NULL,
             "{\"message\":\"hi\",\"options\":{\"match_count\":99,\"temperature\":\"hot\","
             "\"colour\":1}}",
             0);
    rp_test_assert(t, strstr(r.body, "options.match_count") != NULL);
    rp_test_assert(t, strstr(r.body, "options.temperature") != NULL);
    rp_test_assert(t, strstr(r.body, "options.colour") != NULL);
    expect_error(t, r, 422, "invalid_fields");
    expect_error(t, post(&e, good, JSON_CT, NULL, "{\"message\":\"hi\",\"options\":[]}", 0), 422,
                 "invalid_fields");
    /* 32769 bytes of message: one too many (32768 is accepted) */
    size_t mlen = 32769;
    char *big = malloc(mlen + 32);
    memcpy(big, "{\"message\":\"", 12);
    memset(big + 12, 'x', mlen);
    strcpy(big + 12 + mlen, "\"}");
    expect_error(t, post(&e, good, JSON_CT, NULL, big, 0), 422, "invalid_fields");
    strcpy(big + 12 + mlen - 1, "\"}");
    free(accepted_id(t, post(&e, good, JSON_CT, NULL, big, 0)));
    free(big);
    rp_test_sql_exec(t->db, "delete from ragpool.jobs");
    /* a body above RAGPOOL_MAX_BODY_BYTES (65536) */
    big = malloc(70001);
    memset(big, ' ', 70000);
    memcpy(big, "{\"message\":\"hi\"}", 16);
    big[70000] = '\0';
    expect_error(t, post(&e, good, JSON_CT, NULL, big, 0), 413, "payload_too_large");
    free(big);
    expect_error(t, post(&e, good, JSON_CT, "bad key with spaces", ok, 0), 422,
                 "invalid_idempotency_key");
    /* a subject this database cannot use as a user id: refused by the queue */
    tok = hs_token("not-a-uuid");
    expect_error(t, post(&e, tok, JSON_CT, NULL, ok, 0), 422, "rejected");
    free(tok);

    /* Nothing above left a job behind. */
    rp_test_assert(t, jobs_count(t) == 0);
    edge_stop(t, &e);
    free(good);
    rp_test_ctx_pass(t);
}

static void test_queue_unavailable(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("edge_nodb", NULL);
    *state = t;
    static const char *const nodb[] = {"DATABASE_URL=postgresql://postgres@127.0.0.1:9/none",
                                       "RAGPOOL_ENQUEUE_TIMEOUT_MS=3000", NULL};
    edge_t e = edge_start(t, "ai-enqueue-nodb", nodb);
    char *a = hs_token(USER_A);
    rp_test_resp_t r = post(&e, a, JSON_CT, NULL, "{\"message\":\"m\"}", 0);
    rp_test_assert(t, rp_test_resp_has_header(&r, "Retry-After: 1"));
    expect_error(t, r, 503, "queue_unavailable");
    rp_test_assert(t, rp_test_proc_log_count(e.p, "ai-enqueue.enqueue_failed") == 1);
    edge_stop(t, &e);
    free(a);
    rp_test_ctx_pass(t);
}

/* Run redis-cli against the stack's Redis; returns its output (owned). */
static char *redis_cli(rp_test_ctx_t *t, const char *const *args)
{
    const char *argv[16] = {"redis-cli", "-u", rp_test_env("REDIS_URL")};
    size_t n = 3;
    for (size_t i = 0; args[i] != NULL && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char *out = NULL;
    rp_test_assert(t, rp_test_run("redis-cli", argv, NULL, 10000, &out) == 0);
    return out;
}

static void test_redis_queue(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("edge_redis", NULL);
    *state = t;
    char stream[128], sv[200], rv[300];
    snprintf(stream, sizeof(stream), "rp-test:edge:%d:%lld", (int)getpid(), (long long)time(NULL));
    snprintf(sv, sizeof(sv), "RAGPOOL_REDIS_STREAM=%s", stream);
    snprintf(rv, sizeof(rv), "REDIS_URL=%s", rp_test_env("REDIS_URL"));
    const char *env[] = {"RAGPOOL_QUEUE=redis", sv, rv, NULL};
    edge_t e = edge_start(t, "ai-enqueue-redis", env);
    char *a = hs_token(USER_A);

    char *id1 = accepted_id(t, post(&e, a, JSON_CT, "k1", "{\"message\":\"via redis\"}", 0));
    json_t *j = expect_accepted(t, post(&e, a, JSON_CT, "k1", "{\"message\":\"via redis\"}", 0));
    rp_test_assert(t, strcmp(json_string_value(json_object_get(j, "job_id")), id1) == 0);
    rp_test_assert(t, json_is_true(json_object_get(j, "existing")));
    json_decref(j);
    char *id2 =
        accepted_id(t, post(&e, a, JSON_CT, NULL,
                            "{\"message\":\"What is TON token?\",\"user_id\":\"" USER_B "\"}", 0));
    const char *xlen[] = {"XLEN", stream, NULL};
    char *out = redis_cli(t, xlen);
    rp_test_assert(t, atoi(out) == 2);
    free(out);
    /* a subject that is no user id: refused before it reaches the stream */
    char *bad = hs_token("not-a-user-id");
    expect_error(t, post(&e, bad, JSON_CT, NULL, "{\"message\":\"m\"}", 0), 422, "rejected");
    free(bad);
    rp_test_assert(t, jobs_count(t) == 0); /* nothing in Postgres */

    /* A worker reading the stream answers both, for the token's user. */
    const char *wenv[] = {"RAGPOOL_QUEUE=redis", sv, rv, NULL};
    rp_test_worker_start(t, wenv);
    rp_test_assert(t, rp_test_sql_wait(t->db, RP_TEST_WAIT_MS,
                                       "select count(*) = 2 from conversations where job_id in "
                                       "('%s', '%s') and status = 'done' and user_id::text = '%s'",
                                       id1, id2, USER_A));
    edge_stop(t, &e);

    /* Clean up what the stream left in the shared Redis. */
    char k1[200], k2[200], dead[160], delayed[160];
    snprintf(k1, sizeof(k1), "%s:idem:%s", stream, id1);
    snprintf(k2, sizeof(k2), "%s:idem:%s", stream, id2);
    snprintf(dead, sizeof(dead), "%s:dead", stream);
    snprintf(delayed, sizeof(delayed), "%s:delayed", stream);
    const char *del[] = {"DEL", stream, k1, k2, dead, delayed, NULL};
    free(redis_cli(t, del));
    free(id1);
    free(id2);
    free(a);
    rp_test_ctx_pass(t);
}

static void test_deno_serve_parallel(void **state)
{
    rp_test_ctx_t *t = rp_test_ctx_new("edge_parallel", NULL);
    *state = t;
    edge_t e = edge_serve_parallel(t, "ai-enqueue-parallel");
    char *a = hs_token(USER_A);
    /* Several requests, several connections: whichever worker takes one
     * answers like index.ts does. */
    for (int i = 0; i < 6; i++)
        free(accepted_id(t, post(&e, a, "application/json", NULL, "{\"message\":\"hi\"}", 0)));
    rp_test_assert(t, jobs_count(t) == 6);
    rp_test_assert(t, rp_test_sql_int(t->db,
                                      "select count(*) from ragpool.jobs where "
                                      "payload->>'user_id' = '%s'",
                                      USER_A) == 6);
    expect_error(t, post(&e, "not.a.token", "application/json", NULL, "{\"message\":\"hi\"}", 0),
                 401, "invalid_token");
    expect_error(t, post(&e, a, "application/json", NULL, "{\"message\":1}", 0), 422,
                 "invalid_fields");
    rp_test_assert(t, jobs_count(t) == 6);
    /* `deno serve` does not drain on SIGTERM (index.ts does, under deno
     * run); nothing here is in flight any more. */
    rp_test_proc_kill(e.p);
    free(a);
    rp_test_ctx_pass(t);
}

int main(void)
{
    rp_test_require_stack("test_edge_function");
    require_deno();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_accept_and_answer, teardown),
        cmocka_unit_test_teardown(test_every_refusal, teardown),
        cmocka_unit_test_teardown(test_queue_unavailable, teardown),
        cmocka_unit_test_teardown(test_redis_queue, teardown),
        cmocka_unit_test_teardown(test_deno_serve_parallel, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    free(g_deno);
    free(g_deno_dir);
    free(g_fn);
    return rc;
}
