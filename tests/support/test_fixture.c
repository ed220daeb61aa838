/*
 * test_fixture.c: a test's database, model server and workers (see
 * test_fixture.h).
 *
 * Every process of a test is recorded in its context so that, whatever
 * happens, the teardown can show what they logged and kill them; the model
 * server is private to the test so latency, faults and counters never leak
 * from one test into another, and it listens on a port the kernel picks
 * (--port 0, read back from --port-file), so parallel tests cannot collide.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "test_fixture.h"
#include "test_queue.h"

#define RP_TEST_READY_MS 60000
#define RP_TEST_LOG_TAIL 24000

static int g_curl_ready;
static int g_proc_seq;

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int r;
    va_start(ap, fmt);
    r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0) {
        fail_msg("out of memory");
    }
    return s;
}

typedef struct body_buf {
    char *data;
    size_t len;
} body_buf_t;

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    body_buf_t *b = userdata;
    size_t n = size * nmemb;
    char *nd = realloc(b->data, b->len + n + 1);
    if (nd == NULL) {
        return 0;
    }
    b->data = nd;
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

char *rp_test_http(const char *method, const char *url, const char *body, long *status)
{
    CURL *c;
    body_buf_t b = {NULL, 0};
    struct curl_slist *hdrs = NULL;
    const char *key = getenv("OPENAI_API_KEY");
    char *auth = NULL;
    if (!g_curl_ready) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        g_curl_ready = 1;
    }
    *status = 0;
    c = curl_easy_init();
    assert_non_null(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    if (key != NULL && key[0] != '\0') {
        auth = xasprintf("Authorization: Bearer %s", key);
        hdrs = curl_slist_append(hdrs, auth);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    if (curl_easy_perform(c) == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    free(auth);
    if (b.data == NULL) {
        b.data = strdup("");
    }
    return b.data;
}

/* Read a positive port number from path; 0 while it is absent or partial. */
static int read_port(const char *path)
{
    FILE *f = fopen(path, "r");
    char buf[32] = {0};
    size_t n;
    long v;
    char *end;
    if (f == NULL) {
        return 0;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    v = strtol(buf, &end, 10);
    if (end == buf || v <= 0 || v > 65535) {
        return 0;
    }
    return (int)v;
}

rp_test_proc_t *rp_test_devmodel_start(const char *name, const char *const *args, char **url_out)
{
    const char *argv[40];
    char *port_file = xasprintf("%s/%s.%d.port", rp_test_tmpdir(), name, ++g_proc_seq);
    const char *key = getenv("OPENAI_API_KEY");
    rp_test_proc_t *p;
    long long deadline;
    int n = 0, port = 0;
    char *url = NULL, *health;

    argv[n++] = rp_test_bin("RP_DEVMODEL_BIN");
    argv[n++] = "--host";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = port_file;
    if (key != NULL && key[0] != '\0') {
        argv[n++] = "--api-key";
        argv[n++] = key;
    }
    while (args != NULL && *args != NULL && n < 39) {
        argv[n++] = *args++;
    }
    argv[n] = NULL;
    unlink(port_file);
    p = rp_test_proc_start(name, argv, NULL);

    deadline = rp_test_now_ms() + RP_TEST_READY_MS;
    while (rp_test_now_ms() < deadline) {
        if (!rp_test_proc_running(p)) {
            break;
        }
        if (port == 0) {
            port = read_port(port_file);
        }
        if (port != 0) {
            long status;
            char *body;
            free(url);
            url = xasprintf("http://127.0.0.1:%d", port);
            health = xasprintf("%s/healthz", url);
            body = rp_test_http("GET", health, NULL, &status);
            free(body);
            free(health);
            if (status == 200) {
                free(port_file);
                *url_out = url;
                return p;
            }
        }
        rp_test_sleep_ms(20);
    }
    rp_test_proc_dump_log(p, stderr, RP_TEST_LOG_TAIL);
    rp_test_proc_free(p);
    free(url);
    free(port_file);
    fail_msg("the development model server did not answer /healthz");
    return NULL;
}

/* (Re)build t->queue_env from t->queue, t->redis_url and t->stream. */
static void queue_env_build(rp_test_ctx_t *t)
{
    int i, n = 0;
    for (i = 0; i < 3; i++) {
        free(t->queue_env_buf[i]);
        t->queue_env_buf[i] = NULL;
    }
    t->queue_env_buf[0] = xasprintf("RAGPOOL_QUEUE=%s", t->queue);
    if (t->stream != NULL) {
        t->queue_env_buf[1] = xasprintf("RAGPOOL_REDIS_STREAM=%s", t->stream);
        t->queue_env_buf[2] = xasprintf("REDIS_URL=%s", t->redis_url);
    }
    for (i = 0; i < 3; i++) {
        if (t->queue_env_buf[i] != NULL) {
            t->queue_env[n++] = t->queue_env_buf[i];
        }
    }
    t->queue_env[n] = NULL;
}

void rp_test_ctx_set_redis_url(rp_test_ctx_t *t, const char *url)
{
    assert_non_null(t->stream);
    free(t->redis_url);
    t->redis_url = strdup(url);
    rp_test_redis_disconnect(t);
    queue_env_build(t);
}

rp_test_ctx_t *rp_test_ctx_new(const char *name, const char *const *devmodel_args)
{
    rp_test_ctx_t *t;
    char *dm_name;
    rp_test_require_stack(name);
    t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->name = strdup(name);
    t->db_url = rp_test_db_create_ready(name);
    t->db = rp_test_pg_connect(t->db_url);
    t->queue = rp_test_queue_name();
    if (rp_test_queue_is_redis()) {
        static int seq;
        t->stream = xasprintf("rp-test:%s:%d:%d", name, (int)getpid(), ++seq);
        t->redis_url = strdup(rp_test_env("REDIS_URL"));
    }
    queue_env_build(t);
    dm_name = xasprintf("devmodel-%s", name);
    t->devmodel = rp_test_devmodel_start(dm_name, devmodel_args, &t->devmodel_url);
    free(dm_name);
    rp_test_ctx_adopt(t, t->devmodel);
    t->openai_base_url = xasprintf("%s/v1", t->devmodel_url);
    return t;
}

void rp_test_ctx_adopt(rp_test_ctx_t *t, rp_test_proc_t *p)
{
    if (t->nprocs >= RP_TEST_MAX_PROCS) {
        fail_msg("too many processes in one test (max %d)", RP_TEST_MAX_PROCS);
    }
    t->procs[t->nprocs++] = p;
}

void rp_test_ctx_pass(rp_test_ctx_t *t)
{
    t->passed = 1;
}

void rp_test_ctx_dump(rp_test_ctx_t *t)
{
    int i;
    if (t == NULL) {
        return;
    }
    fprintf(stderr, "===== logs of test %s (database %s) =====\n", t->name, t->db_url);
    for (i = 0; i < t->nprocs; i++) {
        rp_test_proc_dump_log(t->procs[i], stderr, RP_TEST_LOG_TAIL);
    }
    fflush(stderr);
    /* Printed once: the teardown need not print them again. */
    t->dumped = 1;
}

void rp_test_ctx_free(rp_test_ctx_t *t)
{
    int i;
    if (t == NULL) {
        return;
    }
    if (!t->passed && !t->dumped) {
        rp_test_ctx_dump(t);
    }
    /* Workers first (they talk to the model server), the model server last. */
    for (i = t->nprocs - 1; i >= 0; i--) {
        rp_test_proc_free(t->procs[i]);
    }
    if (t->stream != NULL) {
        rp_test_redis_cleanup(t);
    }
    rp_test_redis_disconnect(t);
    if (t->db != NULL) {
        PQfinish(t->db);
    }
    if (t->db_url != NULL) {
        rp_test_db_drop(t->db_url);
    }
    free(t->db_url);
    free(t->devmodel_url);
    free(t->openai_base_url);
    free(t->stream);
    free(t->redis_url);
    for (i = 0; i < 3; i++) {
        free(t->queue_env_buf[i]);
    }
    free(t->name);
    free(t);
}

rp_test_proc_t *rp_test_worker_spawn(rp_test_ctx_t *t, const char *const *env)
{
    const char *argv[2];
    const char *full[64];
    char *db = xasprintf("DATABASE_URL=%s", t->db_url);
    char *base = xasprintf("OPENAI_BASE_URL=%s", t->openai_base_url);
    char *id = xasprintf("RAGPOOL_WORKER_ID=%s-w%d", t->name, t->nworkers + 1);
    char *label = xasprintf("worker-%s-%d", t->name, t->nworkers + 1);
    rp_test_proc_t *p;
    int n = 0;

    full[n++] = db;
    full[n++] = base;
    full[n++] = id;
    full[n++] = "RAGPOOL_LISTEN_DATABASE_URL";
    full[n++] = "RAGPOOL_POLL_MS=500";
    full[n++] = "RAGPOOL_BACKOFF_BASE_MS=100";
    full[n++] = "RAGPOOL_BACKOFF_MAX_MS=1000";
    for (const char *const *q = t->queue_env; *q != NULL; q++) {
        full[n++] = *q;
    }
    while (env != NULL && *env != NULL && n < 63) {
        full[n++] = *env++;
    }
    full[n] = NULL;
    argv[0] = rp_test_bin("RP_WORKER_BIN");
    argv[1] = NULL;
    p = rp_test_proc_start(label, argv, full);
    rp_test_ctx_adopt(t, p);
    t->nworkers++;
    free(db);
    free(base);
    free(id);
    free(label);
    return p;
}

rp_test_proc_t *rp_test_worker_start(rp_test_ctx_t *t, const char *const *env)
{
    rp_test_proc_t *p = rp_test_worker_spawn(t, env);
    if (rp_test_proc_wait_log(p, "worker.ready", RP_TEST_READY_MS) != 0) {
        rp_test_ctx_dump(t);
        fail_msg("%s did not log worker.ready (exit status %d)", rp_test_proc_name(p),
                 rp_test_proc_wait(p, 0));
    }
    /* Redis: ready to claim once its consumer group exists. */
    if (t->stream != NULL &&
        rp_test_proc_wait_log(p, "queue.redis_ready", RP_TEST_READY_MS) != 0) {
        rp_test_ctx_dump(t);
        fail_msg("%s did not log queue.redis_ready (exit status %d)", rp_test_proc_name(p),
                 rp_test_proc_wait(p, 0));
    }
    return p;
}

json_t *rp_test_devmodel_stats(rp_test_ctx_t *t)
{
    char *url = xasprintf("%s/_admin/stats", t->devmodel_url);
    long status;
    char *body = rp_test_http("GET", url, NULL, &status);
    json_error_t jerr;
    json_t *doc = json_loads(body, 0, &jerr);
    if (status != 200 || !json_is_object(doc)) {
        fprintf(stderr, "GET %s -> %ld: %s\n", url, status, body);
        json_decref(doc);
        free(body);
        free(url);
        fail_msg("the model server's stats are not a JSON object");
    }
    free(body);
    free(url);
    return doc;
}

double rp_test_json_number(const json_t *doc, const char *path)
{
    char *copy = strdup(path);
    char *save = NULL, *part;
    const json_t *cur = doc;
    double v = -1;
    for (part = strtok_r(copy, ".", &save); part != NULL && cur != NULL;
         part = strtok_r(NULL, ".", &save)) {
        cur = json_is_object(cur) ? json_object_get(cur, part) : NULL;
    }
    if (cur != NULL && json_is_number(cur)) {
        v = json_number_value(cur);
    }
    free(copy);
    return v;
}
