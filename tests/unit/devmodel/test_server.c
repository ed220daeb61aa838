/*
 * test_server.c: devmodel/server.c run in-process on port 0 and driven
 * over real HTTP from a client thread (plain sockets): embeddings (float
 * and base64), chat (plain and streamed), errors, marker faults, the API
 * key, latency, a stalled request whose client leaves, and the admin
 * endpoints.  The client thread records what it saw; the main thread runs
 * the loop and asserts afterwards, and the loop must close with no handle
 * left.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "../common/httpd_testclient.h"
#include "embed.h"
#include "server.h"

#define MAXR 16

typedef struct fixture {
    uv_loop_t loop;
    rp_devmodel_t *m;
    uv_async_t done;
    pthread_t thread;
    int port;
    void (*client)(struct fixture *f);
    int closed;
    /* what the client saw */
    int status[MAXR];
    char *body[MAXR];
    char retry_after[MAXR][16];
    char ctype[MAXR][64];
    double elapsed_ms[MAXR];
    int n;
} fixture_t;

static void on_closed(void *data)
{
    ((fixture_t *)data)->closed = 1;
}

static void on_done(uv_async_t *a)
{
    fixture_t *f = a->data;
    rp_devmodel_close(f->m, on_closed, f);
    uv_close((uv_handle_t *)&f->done, NULL);
}

static void *client_main(void *arg)
{
    fixture_t *f = arg;
    f->client(f);
    uv_async_send(&f->done);
    return NULL;
}

static void run(fixture_t *f, const rp_devmodel_opts_t *o, void (*client)(fixture_t *))
{
    rp_err_t err = {0};
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->m = rp_devmodel_new(&f->loop, o, &err);
    assert_non_null(f->m);
    assert_int_equal(rp_devmodel_start(f->m, &err), 0);
    f->port = rp_devmodel_port(f->m);
    assert_true(f->port > 0);
    f->client = client;
    uv_async_init(&f->loop, &f->done, on_done);
    f->done.data = f;
    assert_int_equal(pthread_create(&f->thread, NULL, client_main, f), 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    pthread_join(f->thread, NULL);
    assert_true(f->closed);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void fixture_free(fixture_t *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->body[i]);
}

/* One request on connection c; records status, body and a few headers. */
static void call(fixture_t *f, tc_conn_t *c, const char *method, const char *path, const char *auth,
                 const char *body)
{
    char head[512];
    snprintf(head, sizeof(head),
             "%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s%s%s"
             "Content-Length: %zu\r\n\r\n",
             method, path, auth != NULL ? "Authorization: Bearer " : "", auth != NULL ? auth : "",
             auth != NULL ? "\r\n" : "", body != NULL ? strlen(body) : 0);
    int i = f->n++;
    f->status[i] = -1;
    uint64_t t0 = uv_hrtime();
    if (tc_sends(c, head) < 0 || (body != NULL && tc_sends(c, body) < 0))
        return;
    tc_resp_t r;
    if (tc_read(c, &r) < 0)
        return;
    f->elapsed_ms[i] = (double)(uv_hrtime() - t0) / 1e6;
    f->status[i] = r.status;
    f->body[i] = r.body;
    const char *h = tc_header(&r, "Retry-After");
    snprintf(f->retry_after[i], sizeof(f->retry_after[i]), "%.15s", h != NULL ? h : "");
    h = tc_header(&r, "Content-Type");
    snprintf(f->ctype[i], sizeof(f->ctype[i]), "%.63s", h != NULL ? h : "");
}

static const char chat_ctx[] =
    "{\"model\":\"dev-chat\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
    "{\"role\":\"user\",\"content\":\"Context from knowledge base:\\nTON (Toncoin) is the native "
    "token of The Open Network.\\n\\nUser's recent swaps:\\n100 TON \\u2192 USDT\\n\\nUser "
    "question: What is TON token?\\n\"}]}";

static void client_main_flows(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    call(f, &c, "POST", "/v1/embeddings", NULL,
         "{\"model\":\"dev-embed\",\"input\":[\"What is TON token?\",\"\"],\"dimensions\":16}");
    call(f, &c, "POST", "/v1/embeddings", NULL,
         "{\"model\":\"dev-embed\",\"input\":\"What is TON token?\",\"dimensions\":16,"
         "\"encoding_format\":\"base64\"}");
    call(f, &c, "POST", "/v1/chat/completions", NULL, chat_ctx);
    call(f, &c, "POST", "/v1/chat/completions", NULL,
         "{\"model\":\"dev-chat\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
         "\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}]}");
    call(f, &c, "POST", "/v1/chat/completions", NULL, "{\"model\":\"dev-chat\",\"messages\":");
    call(f, &c, "POST", "/v1/embeddings", NULL, "{\"model\":\"dev-embed\",\"input\":42}");
    const char *marked = "{\"model\":\"dev-chat\",\"messages\":[{\"role\":\"user\","
                         "\"content\":\"[[fault:chat:429x1]] hi\"}]}";
    call(f, &c, "POST", "/v1/chat/completions", NULL, marked);
    call(f, &c, "POST", "/v1/chat/completions", NULL, marked);
    call(f, &c, "GET", "/v1/chat/completions", NULL, NULL);
    call(f, &c, "GET", "/nowhere", NULL, NULL);
    call(f, &c, "GET", "/_admin/stats", NULL, NULL);
    tc_close(&c);
}

static json_t *parse(const char *s)
{
    assert_non_null(s);
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    return j;
}

static void test_main_flows(void **state)
{
    fixture_t f = {0};
    rp_devmodel_opts_t o = {.port = 0, .seed = 7};
    run(&f, &o, client_main_flows);
    assert_int_equal(f.n, 11);

    /* Embeddings, float: the numbers are rp_devmodel_embed's. */
    assert_int_equal(f.status[0], 200);
    json_t *j = parse(f.body[0]);
    json_t *data = json_object_get(j, "data");
    assert_int_equal(json_array_size(data), 2);
    json_t *e0 = json_object_get(json_array_get(data, 0), "embedding");
    assert_int_equal(json_array_size(e0), 16);
    float want[16];
    rp_devmodel_embed("What is TON token?", 18, 16, want);
    for (int i = 0; i < 16; i++)
        assert_true(fabs(json_real_value(json_array_get(e0, (size_t)i)) +
                         (double)json_integer_value(json_array_get(e0, (size_t)i)) - want[i]) <
                    1e-7);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 1), "index")), 1);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "dev-embed");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")), 5);
    json_decref(j);

    /* Embeddings, base64: little-endian float32. */
    assert_int_equal(f.status[1], 200);
    j = parse(f.body[1]);
    const char *b64 = json_string_value(
        json_object_get(json_array_get(json_object_get(j, "data"), 0), "embedding"));
    assert_non_null(b64);
    unsigned char raw[64];
    assert_int_equal(rp_devmodel_base64_decode(b64, strlen(b64), raw, sizeof(raw)), 64);
    float got[16];
    memcpy(got, raw, sizeof(got)); /* the test machine is little-endian */
    assert_memory_equal(got, want, sizeof(got));
    json_decref(j);

    /* Chat with context. */
    assert_int_equal(f.status[2], 200);
    j = parse(f.body[2]);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "dev-chat");
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    const char *content =
        json_string_value(json_object_get(json_object_get(choice, "message"), "content"));
    assert_non_null(strstr(content, "Based on the knowledge base: TON (Toncoin)"));
    assert_non_null(strstr(content, "You recently swapped 100 TON \xe2\x86\x92 USDT."));
    assert_non_null(strstr(content, "What is TON token?"));
    assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), "stop");
    assert_true(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) > 5);
    json_decref(j);

    /* Streamed chat: SSE chunks, a usage chunk, then [DONE]. */
    assert_int_equal(f.status[3], 200);
    assert_string_equal(f.ctype[3], "text/event-stream");
    assert_non_null(strstr(f.body[3], "\"object\":\"chat.completion.chunk\""));
    assert_non_null(strstr(f.body[3], "\"finish_reason\":\"stop\""));
    assert_non_null(strstr(f.body[3], "\"usage\":{\"prompt_tokens\":2"));
    assert_non_null(strstr(f.body[3], "Hello "));
    size_t bl = strlen(f.body[3]);
    assert_true(bl > 14);
    assert_string_equal(f.body[3] + bl - 14, "data: [DONE]\n\n");

    /* Errors. */
    assert_int_equal(f.status[4], 400);
    j = parse(f.body[4]);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "type")),
                        "invalid_request_error");
    json_decref(j);
    assert_int_equal(f.status[5], 400);
    j = parse(f.body[5]);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "param")),
                        "input");
    json_decref(j);

    /* Marker fault: 429 with Retry-After the first time, then an answer. */
    assert_int_equal(f.status[6], 429);
    assert_string_equal(f.retry_after[6], "1");
    assert_int_equal(f.status[7], 200);

    assert_int_equal(f.status[8], 405);
    assert_int_equal(f.status[9], 404);

    /* Stats. */
    assert_int_equal(f.status[10], 200);
    j = parse(f.body[10]);
    json_t *req = json_object_get(j, "requests");
    assert_int_equal(json_integer_value(json_object_get(req, "embeddings")), 3);
    assert_int_equal(json_integer_value(json_object_get(req, "chat")), 6);
    json_t *st = json_object_get(j, "status");
    assert_int_equal(json_integer_value(json_object_get(st, "200")), 5);
    assert_int_equal(json_integer_value(json_object_get(st, "400")), 2);
    assert_int_equal(json_integer_value(json_object_get(st, "429")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "faults"), "429")), 1);
    json_decref(j);
    fixture_free(&f);
}

static void client_key_latency_stall(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    const char *emb = "{\"model\":\"e\",\"input\":\"hello\"}";
    call(f, &c, "POST", "/v1/embeddings", NULL, emb);
    call(f, &c, "POST", "/v1/embeddings", "wrong", emb);
    call(f, &c, "POST", "/v1/embeddings", "sekret", emb); /* 60 ms latency */
    call(f, &c, "GET", "/healthz", NULL, NULL);
    /* A stalled request whose client gives up. */
    tc_conn_t s;
    if (tc_connect(&s, f->port) == 0) {
        const char *stall = "{\"model\":\"e\",\"input\":\"[[fault:embed:stall]]\"}";
        char head[256];
        snprintf(head, sizeof(head),
                 "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 strlen(stall), stall);
        tc_sends(&s, head);
        usleep(150 * 1000);
        tc_close(&s);
        usleep(50 * 1000);
    }
    call(f, &c, "POST", "/_admin/config", NULL,
         "{\"latency_ms\":0,\"fault_rate\":1,\"fault_kind\":\"503\"}");
    call(f, &c, "POST", "/v1/embeddings", "sekret", emb);
    call(f, &c, "POST", "/_admin/config", NULL, "{\"fault_kind\":\"teapot\"}");
    call(f, &c, "GET", "/_admin/stats", NULL, NULL);
    call(f, &c, "POST", "/_admin/reset", NULL, "");
    call(f, &c, "GET", "/_admin/stats", NULL, NULL);
    tc_close(&c);
}

static void test_key_latency_stall_admin(void **state)
{
    fixture_t f = {0};
    rp_devmodel_opts_t o = {.port = 0, .api_key = "sekret", .latency_ms = 60, .seed = 1};
    run(&f, &o, client_key_latency_stall);
    assert_int_equal(f.n, 10);
    assert_int_equal(f.status[0], 401);
    assert_int_equal(f.status[1], 401);
    assert_int_equal(f.status[2], 200);
    assert_true(f.elapsed_ms[2] >= 55);
    assert_int_equal(f.status[3], 200);
    assert_int_equal(f.status[4], 200);
    assert_int_equal(f.status[5], 503);
    assert_int_equal(f.status[6], 400);
    json_t *j = parse(f.body[7]);
    assert_int_equal(json_integer_value(json_object_get(j, "pending")), 0);
    json_t *faults = json_object_get(j, "faults");
    assert_int_equal(json_integer_value(json_object_get(faults, "stall")), 1);
    assert_int_equal(json_integer_value(json_object_get(faults, "503")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "status"), "401")), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "config"), "fault_kind")), "503");
    json_decref(j);
    assert_int_equal(f.status[8], 200);
    j = parse(f.body[9]);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "faults"), "total")), 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "requests"), "embeddings")), 0);
    json_decref(j);
    fixture_free(&f);
}

static void client_truncate_malformed(fixture_t *f)
{
    tc_conn_t c;
    if (tc_connect(&c, f->port) < 0)
        return;
    call(f, &c, "POST", "/v1/chat/completions", NULL,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"[[fault:chat:malformed]]"
         "\"}]}");
    json_t *j = f->body[0] != NULL ? json_loads(f->body[0], 0, NULL) : NULL;
    f->status[MAXR - 1] = j == NULL; /* 1 when the body is not JSON, as wanted */
    json_decref(j);
    /* Truncated: announced 4096 bytes, fewer sent, then the close. */
    const char *t = "{\"model\":\"m\",\"input\":\"[[fault:embed:truncatex1]]\"}";
    char head[256];
    snprintf(head, sizeof(head),
             "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s", strlen(t),
             t);
    tc_sends(&c, head);
    f->status[MAXR - 2] = tc_wait_closed(&c);
    f->status[MAXR - 3] = (int)c.len;
    tc_close(&c);
    if (tc_connect(&c, f->port) == 0) {
        call(f, &c, "POST", "/v1/embeddings", NULL, t); /* second time: answered */
        tc_close(&c);
    }
}

static void test_truncate_and_malformed(void **state)
{
    fixture_t f = {0};
    rp_devmodel_opts_t o = {.port = 0};
    run(&f, &o, client_truncate_malformed);
    assert_int_equal(f.status[0], 200);
    assert_int_equal(f.status[MAXR - 1], 1);
    assert_int_equal(f.status[MAXR - 2], 1);
    assert_true(f.status[MAXR - 3] > 0 && f.status[MAXR - 3] < 4096);
    assert_int_equal(f.status[1], 200);
    fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_main_flows),
        cmocka_unit_test(test_key_latency_stall_admin),
        cmocka_unit_test(test_truncate_and_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
