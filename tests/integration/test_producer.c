/*
 * test_producer.c: integration tests for common/producer.c with both queue
 * backends, against the stack's real Postgres and Redis.
 *
 * Each scenario runs once per backend: 1,000 concurrent enqueues are all
 * acknowledged with distinct ids and are all in the queue (Postgres: rows
 * of ragpool.jobs in a fresh database; Redis: XLEN of a stream private to
 * the test); the same job_id twice gives the same id, existing = 1 and one
 * job; an invalid job is refused (RP_EINVAL, naming the field) while its
 * neighbours in the same batch are enqueued; an unreachable queue is an
 * error within the deadline, not a hang.  test_throughput prints enqueues/s
 * and CPU time per enqueue with 1,000 in flight (RP_TEST_PRODUCER_N jobs,
 * default 50,000).  Without RP_TEST_PG_URL and REDIS_URL the program prints
 * SKIP and exits 77.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "job.h"
#include "producer.h"
#include "redis.h"
#include "test_db.h"

#define USER "00000000-0000-4000-8000-000000000001"

static const char *redis_url;
static char redis_host[64];
static int redis_port;

typedef struct answer {
    int done;
    int err;
    int existing;
    char id[64];
    char msg[256];
} answer_t;

typedef struct world {
    const char *queue; /* "postgres" or "redis" */
    char *db_url;      /* postgres */
    PGconn *db;
    char stream[96]; /* redis */
    redisContext *rh;
} world_t;

typedef struct run {
    uv_loop_t loop;
    uv_timer_t guard;
    rp_producer_t *p;
    int closed;
    int answered;
    int target;
    answer_t *answers;
    /* throughput driver */
    int next, total, inflight, max_inflight, failures;
} run_t;

/* ----------------------------------------------------------- helpers */

static void guard_cb(uv_timer_t *t)
{
    (void)t;
    fail_msg("test took too long");
}

static void on_closed(void *data)
{
    ((run_t *)data)->closed = 1;
}

static void run_init(run_t *r, world_t *w, const char *db_url, const char *rurl, long timeout_ms)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(uv_loop_init(&r->loop), 0);
    uv_timer_init(&r->loop, &r->guard);
    uv_timer_start(&r->guard, guard_cb, 120000, 0);
    uv_unref((uv_handle_t *)&r->guard);
    rp_producer_opts_t o = {
        .queue = w->queue,
        .database_url = db_url ? db_url : w->db_url,
        .redis_url = rurl ? rurl : redis_url,
        .redis_stream = w->stream,
        .timeout_ms = timeout_ms,
    };
    rp_err_t err;
    r->p = rp_producer_new(&r->loop, &o, &err);
    if (r->p == NULL)
        fail_msg("rp_producer_new: %s", err.msg);
    assert_int_equal(rp_producer_start(r->p), 0);
}

static void run_finish(run_t *r)
{
    rp_producer_close(r->p, on_closed, r);
    uv_close((uv_handle_t *)&r->guard, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    assert_int_equal(r->closed, 1);
    assert_int_equal(uv_loop_close(&r->loop), 0);
    free(r->answers);
}

static void answer_cb(void *data, int err, const char *job_id, int existing, const char *message)
{
    answer_t *a = data;
    assert_false(a->done);
    a->done = 1;
    a->err = err;
    a->existing = existing;
    snprintf(a->id, sizeof(a->id), "%s", job_id ? job_id : "");
    snprintf(a->msg, sizeof(a->msg), "%s", message ? message : "");
    if (err == 0)
        assert_true(rp_uuid_valid(job_id));
}

/* Enqueue every job of jobs[0..n) at once and run until all are answered. */
typedef struct slot {
    run_t *r;
    answer_t a;
} slot_t;

static void slot_cb(void *data, int err, const char *job_id, int existing, const char *message)
{
    slot_t *s = data;
    answer_cb(&s->a, err, job_id, existing, message);
    if (++s->r->answered == s->r->target)
        uv_stop(&s->r->loop);
}

static slot_t *enqueue_all(run_t *r, const rp_enqueue_t *jobs, int n)
{
    slot_t *slots = calloc((size_t)n, sizeof(*slots));
    r->answered = 0;
    r->target = n;
    for (int i = 0; i < n; i++) {
        slots[i].r = r;
        assert_int_equal(rp_producer_enqueue(r->p, &jobs[i], slot_cb, &slots[i]), 0);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    assert_int_equal(r->answered, n);
    return slots;
}

static long long queue_count(world_t *w)
{
    if (strcmp(w->queue, "postgres") == 0)
        return rp_test_sql_int(w->db, "select count(*) from ragpool.jobs");
    redisReply *rep = redisCommand(w->rh, "XLEN %s", w->stream);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    long long n = rep->integer;
    freeReplyObject(rep);
    return n;
}

/* Count (and with del, delete) the idempotency keys of w's stream. */
static long long idem_keys(world_t *w, int del)
{
    long long n = 0;
    char cursor[32] = "0";
    do {
        redisReply *rep =
            redisCommand(w->rh, "SCAN %s MATCH %s:idem:* COUNT 1000", cursor, w->stream);
        assert_non_null(rep);
        snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
        n += (long long)rep->element[1]->elements;
        for (size_t i = 0; del && i < rep->element[1]->elements; i++)
            freeReplyObject(redisCommand(w->rh, "DEL %s", rep->element[1]->element[i]->str));
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

/* Delete the private stream and its idempotency keys. */
static void redis_cleanup(world_t *w)
{
    idem_keys(w, 1);
    freeReplyObject(redisCommand(w->rh, "DEL %s", w->stream));
}

static int world_setup(void **state, const char *queue)
{
    world_t *w = calloc(1, sizeof(*w));
    w->queue = queue;
    if (strcmp(queue, "postgres") == 0) {
        w->db_url = rp_test_db_create_ready("producer");
        w->db = rp_test_pg_connect(w->db_url);
    } else {
        static int seq;
        snprintf(w->stream, sizeof(w->stream), "rp-test-producer:%d:%d", (int)getpid(), ++seq);
        w->rh = redisConnect(redis_host, redis_port);
        if (w->rh == NULL || w->rh->err)
            fail_msg("helper connection to Redis failed");
    }
    *state = w;
    return 0;
}

static int setup_pg(void **state)
{
    return world_setup(state, "postgres");
}

static int setup_redis(void **state)
{
    return world_setup(state, "redis");
}

static int teardown(void **state)
{
    world_t *w = *state;
    if (w == NULL)
        return 0;
    if (w->db) {
        PQfinish(w->db);
        rp_test_db_drop(w->db_url);
        free(w->db_url);
    }
    if (w->rh) {
        redis_cleanup(w);
        redisFree(w->rh);
    }
    free(w);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

/* ---------------------------------------------- 1,000 concurrent enqueues */

static void test_concurrent(void **state)
{
    world_t *w = *state;
    run_t r;
    run_init(&r, w, NULL, NULL, 0);
    const int n = 1000;
    rp_enqueue_t *jobs = calloc(n, sizeof(*jobs));
    char(*msgs)[32] = calloc(n, sizeof(*msgs));
    for (int i = 0; i < n; i++) {
        snprintf(msgs[i], sizeof(msgs[i]), "question %d", i);
        jobs[i].user_id = i % 2 ? USER : "00000000-0000-4000-8000-000000000002";
        jobs[i].message = msgs[i];
        jobs[i].options_json = i % 3 ? NULL : "{\"match_count\": 3}";
    }
    slot_t *s = enqueue_all(&r, jobs, n);
    char(*ids)[64] = calloc(n, sizeof(*ids));
    for (int i = 0; i < n; i++) {
        if (s[i].a.err != 0)
            fail_msg("job %d: %s", i, s[i].a.msg);
        assert_int_equal(s[i].a.existing, 0);
        memcpy(ids[i], s[i].a.id, sizeof(ids[i]));
    }
    qsort(ids, n, sizeof(ids[0]), cmp_str);
    for (int i = 1; i < n; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    assert_int_equal(queue_count(w), n);
    if (w->db) {
        assert_int_equal(rp_test_sql_int(w->db, "select count(distinct id) from ragpool.jobs"), n);
        assert_int_equal(rp_test_sql_int(w->db, "select count(*) from ragpool.jobs "
                                                "where payload->'options'->>'match_count' = '3'"),
                         (n + 2) / 3);
    } else {
        /* The entry is in the documented format, readable by the codec. */
        redisReply *rep = redisCommand(w->rh, "XRANGE %s - + COUNT 1", w->stream);
        assert_non_null(rep);
        assert_int_equal(rep->elements, 1);
        redisReply *fields = rep->element[0]->element[1];
        assert_string_equal(fields->element[0]->str, "job");
        rp_job_envelope_t e;
        rp_err_t err;
        assert_int_equal(rp_job_envelope_decode_msgpack(fields->element[1]->str,
                                                        fields->element[1]->len, &e, &err),
                         0);
        assert_string_equal(e.kind, "chat");
        assert_string_equal(e.payload.message, "question 0");
        assert_int_equal(e.payload.match_count, 3);
        assert_int_equal(e.max_attempts, 5);
        assert_int_equal(e.attempt, 0);
        assert_true(e.enqueued_at_ms > 1700000000000LL);
        assert_non_null(bsearch(e.id, ids, n, sizeof(ids[0]), cmp_str));
        rp_job_envelope_free(&e);
        freeReplyObject(rep);
    }
    free(ids);
    free(s);
    free(msgs);
    free(jobs);
    run_finish(&r);
}

/* ----------------------------------------------------- idempotency */

static void test_idempotent(void **state)
{
    world_t *w = *state;
    run_t r;
    run_init(&r, w, NULL, NULL, 0);
    const char *id = "5F0C2A4E-8A39-4D55-9A53-0E8CFB5D2A61"; /* upper case: same key */
    rp_enqueue_t job = {.job_id = id, .user_id = USER, .message = "once", .max_attempts = 3};
    /* twice in one batch ... */
    rp_enqueue_t two[2] = {job, job};
    slot_t *s = enqueue_all(&r, two, 2);
    assert_int_equal(s[0].a.err, 0);
    assert_int_equal(s[1].a.err, 0);
    assert_string_equal(s[0].a.id, "5f0c2a4e-8a39-4d55-9a53-0e8cfb5d2a61");
    assert_string_equal(s[1].a.id, s[0].a.id);
    assert_int_equal(s[0].a.existing + s[1].a.existing, 1);
    free(s);
    /* ... and again later */
    s = enqueue_all(&r, &job, 1);
    assert_int_equal(s[0].a.err, 0);
    assert_string_equal(s[0].a.id, "5f0c2a4e-8a39-4d55-9a53-0e8cfb5d2a61");
    assert_int_equal(s[0].a.existing, 1);
    free(s);
    assert_int_equal(queue_count(w), 1);
    if (w->db)
        assert_int_equal(rp_test_sql_int(w->db, "select max_attempts from ragpool.jobs"), 3);
    run_finish(&r);
}

/* ------------------------------ invalid jobs beside valid ones */

static void test_invalid_beside_valid(void **state)
{
    world_t *w = *state;
    run_t r;
    run_init(&r, w, NULL, NULL, 0);
    rp_enqueue_t jobs[] = {
        {.user_id = USER, .message = "valid 1"},
        {.user_id = "bob", .message = "bad user"},
        {.user_id = USER, .message = "valid 2"},
        {.user_id = USER, .message = ""},
        {.user_id = USER, .message = "x", .options_json = "{\"match_count\": 99}"},
        {.user_id = USER, .message = "x", .options_json = "{not json"},
        {.user_id = USER, .message = "x", .job_id = "not-a-uuid"},
        {.user_id = USER, .message = "\xc3\x28"},
        {.user_id = USER, .message = "x", .max_attempts = 5000},
        /* a valid integer id, which this uuid database refuses */
        {.user_id = "42", .message = "integer id"},
        {.user_id = USER, .message = "valid 3"},
    };
    static const char *const want[] = {
        NULL,
        "user_id: must be a uuid or an integer",
        NULL,
        "message: must be 1 to",
        "options.match_count: must be between",
        "options: not valid JSON",
        "job_id: must be a uuid",
        "message: must be valid UTF-8",
        "max_attempts: must be between",
        "user_id: must be a uuid user id",
        NULL,
    };
    int n = (int)(sizeof(jobs) / sizeof(jobs[0]));
    slot_t *s = enqueue_all(&r, jobs, n);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        if (i == 9 && w->db == NULL) {
            /* Redis does not know the database's user id type: the worker
             * refuses it later. */
            assert_int_equal(s[i].a.err, 0);
            ok++;
            continue;
        }
        if (want[i] == NULL) {
            if (s[i].a.err != 0)
                fail_msg("job %d: %s", i, s[i].a.msg);
            ok++;
            continue;
        }
        if (s[i].a.err != RP_EINVAL || strstr(s[i].a.msg, want[i]) == NULL)
            fail_msg("job %d: err %d '%s', expected '%s'", i, s[i].a.err, s[i].a.msg, want[i]);
    }
    free(s);
    assert_int_equal(queue_count(w), ok);
    /* Missing fields never reach the queue either. */
    rp_enqueue_t none = {.message = "x"};
    s = enqueue_all(&r, &none, 1);
    assert_int_equal(s[0].a.err, RP_EINVAL);
    assert_non_null(strstr(s[0].a.msg, "user_id: missing"));
    free(s);
    assert_int_equal(rp_producer_enqueue(r.p, NULL, slot_cb, NULL), RP_EINVAL);
    run_finish(&r);
}

/* -------------------------------------------------- queue unreachable */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void test_unreachable(void **state)
{
    world_t *w = *state;
    char pg[160], rd[128];
    int port = free_port();
    snprintf(pg, sizeof(pg), "postgresql://postgres@127.0.0.1:%d/postgres?connect_timeout=1", port);
    snprintf(rd, sizeof(rd), "redis://127.0.0.1:%d/0", port);
    run_t r;
    run_init(&r, w, pg, rd, 700);
    rp_enqueue_t jobs[3] = {{.user_id = USER, .message = "a"},
                            {.user_id = USER, .message = "b"},
                            {.user_id = "bob", .message = "c"}};
    uint64_t t0 = uv_hrtime();
    slot_t *s = enqueue_all(&r, jobs, 3);
    double secs = (double)(uv_hrtime() - t0) / 1e9;
    assert_int_equal(s[0].a.err, RP_ETIMEDOUT);
    assert_int_equal(s[1].a.err, RP_ETIMEDOUT);
    assert_int_equal(s[2].a.err, RP_EINVAL); /* refused before trying */
    assert_true(secs < 3.0);
    assert_false(rp_producer_is_up(r.p));
    free(s);
    /* Closing with requests outstanding cancels them. */
    slot_t late = {.r = &r};
    r.target = 1000;
    assert_int_equal(rp_producer_enqueue(r.p, &jobs[0], slot_cb, &late), 0);
    run_finish(&r);
    assert_int_equal(late.a.err, RP_ECANCELED);
}

/* ---------------------- Redis: scripts lost by the server (NOSCRIPT) */

static void test_redis_noscript(void **state)
{
    world_t *w = *state;
    run_t r;
    run_init(&r, w, NULL, NULL, 0);
    rp_enqueue_t job = {.user_id = USER, .message = "before"};
    slot_t *s = enqueue_all(&r, &job, 1);
    assert_int_equal(s[0].a.err, 0);
    free(s);
    assert_true(rp_producer_is_up(r.p));
    freeReplyObject(redisCommand(w->rh, "SCRIPT FLUSH"));
    rp_enqueue_t two[2] = {{.user_id = USER, .message = "after 1"},
                           {.user_id = USER, .message = "after 2"}};
    s = enqueue_all(&r, two, 2);
    assert_int_equal(s[0].a.err, 0);
    assert_int_equal(s[1].a.err, 0);
    free(s);
    assert_int_equal(queue_count(w), 3);
    run_finish(&r);
}

/* The idempotency keys of w's stream. */
static long long idem_count(world_t *w)
{
    return idem_keys(w, 0);
}

/* One batch mixing jobs with and without a caller's id: each is answered
 * for itself, only the caller's ids leave an idempotency key, a repeat
 * inside the batch is found, and the rest keep their order in the stream. */
static void test_redis_mixed_batch(void **state)
{
    world_t *w = *state;
    run_t r;
    run_init(&r, w, NULL, NULL, 0);
    const char *k = "0a1b2c3d-0000-4000-8000-00000000000a";
    const char *l = "0a1b2c3d-0000-4000-8000-00000000000b";
    rp_enqueue_t jobs[] = {
        {.user_id = USER, .message = "fresh 1"},
        {.user_id = USER, .message = "k", .job_id = k},
        {.user_id = USER, .message = "fresh 2"},
        {.user_id = USER, .message = "k again", .job_id = k},
        {.user_id = USER, .message = "l", .job_id = l},
        {.user_id = USER, .message = "fresh 3"},
    };
    slot_t *s = enqueue_all(&r, jobs, 6);
    for (int i = 0; i < 6; i++)
        if (s[i].a.err != 0)
            fail_msg("job %d: %s", i, s[i].a.msg);
    assert_string_equal(s[1].a.id, k);
    assert_string_equal(s[3].a.id, k);
    assert_string_equal(s[4].a.id, l);
    assert_int_equal(s[1].a.existing, 0);
    assert_int_equal(s[3].a.existing, 1);
    assert_int_equal(s[0].a.existing + s[2].a.existing + s[4].a.existing + s[5].a.existing, 0);
    assert_string_not_equal(s[0].a.id, s[2].a.id);
    /* generated ids are time-ordered uuids (v7) */
    assert_int_equal(s[0].a.id[14], '7');
    assert_int_equal(s[5].a.id[14], '7');
    assert_int_equal(queue_count(w), 5);
    assert_int_equal(idem_count(w), 2);
    /* The stream holds the answered ids; the fresh ones in arrival order. */
    redisReply *rep = redisCommand(w->rh, "XRANGE %s - +", w->stream);
    assert_non_null(rep);
    assert_int_equal(rep->elements, 5);
    int fresh_seen = 0;
    for (size_t e = 0; e < rep->elements; e++) {
        redisReply *f = rep->element[e]->element[1];
        assert_int_equal(f->elements, 2);
        rp_job_envelope_t env;
        rp_err_t err;
        assert_int_equal(
            rp_job_envelope_decode_msgpack(f->element[1]->str, f->element[1]->len, &env, &err), 0);
        if (strcmp(env.id, k) != 0 && strcmp(env.id, l) != 0) {
            static const int fresh[] = {0, 2, 5};
            assert_string_equal(env.id, s[fresh[fresh_seen]].a.id);
            fresh_seen++;
        }
        rp_job_envelope_free(&env);
    }
    assert_int_equal(fresh_seen, 3);
    freeReplyObject(rep);
    free(s);
    /* Later, the keyed ids are still known; a fresh job is simply added. */
    rp_enqueue_t again[2] = {{.user_id = USER, .message = "l later", .job_id = l},
                             {.user_id = USER, .message = "fresh 4"}};
    s = enqueue_all(&r, again, 2);
    assert_int_equal(s[0].a.err, 0);
    assert_int_equal(s[0].a.existing, 1);
    assert_int_equal(s[1].a.err, 0);
    assert_int_equal(s[1].a.existing, 0);
    free(s);
    assert_int_equal(queue_count(w), 6);
    assert_int_equal(idem_count(w), 2);
    run_finish(&r);
}

/* Redis refuses every XADD (the stream's key holds a string): each job is
 * answered with Redis's reason, through the script (a batch with a key)
 * and as plain XADDs (a batch without), and no idempotency key is left
 * behind that would make a retry look like a repeat. */
static void test_redis_refused(void **state)
{
    world_t *w = *state;
    run_t r;
    run_init(&r, w, NULL, NULL, 0);
    freeReplyObject(redisCommand(w->rh, "SET %s not-a-stream", w->stream));
    rp_enqueue_t jobs[3] = {
        {.user_id = USER, .message = "a"},
        {.user_id = USER, .message = "b", .job_id = "0a1b2c3d-0000-4000-8000-00000000000c"},
        {.user_id = USER, .message = "c"}};
    slot_t *s = enqueue_all(&r, jobs, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s[i].a.err, RP_EDB);
        if (strstr(s[i].a.msg, "Redis refused the job: WRONGTYPE") == NULL)
            fail_msg("job %d: '%s'", i, s[i].a.msg);
    }
    free(s);
    assert_int_equal(idem_count(w), 0);
    /* A batch without caller-chosen ids goes as plain XADDs: refused the
     * same way, job by job. */
    rp_enqueue_t plain[2] = {{.user_id = USER, .message = "d"}, {.user_id = USER, .message = "e"}};
    s = enqueue_all(&r, plain, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(s[i].a.err, RP_EDB);
        if (strstr(s[i].a.msg, "Redis refused the job: WRONGTYPE") == NULL)
            fail_msg("plain job %d: '%s'", i, s[i].a.msg);
    }
    free(s);
    freeReplyObject(redisCommand(w->rh, "DEL %s", w->stream));
    /* The same keyed job goes in once the stream is usable. */
    s = enqueue_all(&r, &jobs[1], 1);
    assert_int_equal(s[0].a.err, 0);
    assert_int_equal(s[0].a.existing, 0);
    free(s);
    assert_int_equal(queue_count(w), 1);
    run_finish(&r);
}

/* ------------------------------------------------------ throughput */

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void drive_cb(void *data, int err, const char *job_id, int existing, const char *message);

static void drive(run_t *r)
{
    static const rp_enqueue_t job = {.user_id = USER, .message = "How do jettons work?"};
    while (r->inflight < r->max_inflight && r->next < r->total) {
        r->next++;
        r->inflight++;
        assert_int_equal(rp_producer_enqueue(r->p, &job, drive_cb, r), 0);
    }
}

static void drive_cb(void *data, int err, const char *job_id, int existing, const char *message)
{
    run_t *r = data;
    r->inflight--;
    r->answered++;
    if (err != 0 && r->failures++ == 0)
        fprintf(stderr, "enqueue failed: %s\n", message ? message : "?");
    if (r->answered == r->total)
        uv_stop(&r->loop);
    else
        drive(r);
}

static void test_throughput(void **state)
{
    world_t *w = *state;
    run_t r;
    run_init(&r, w, NULL, NULL, 30000);
    /* connect first */
    rp_enqueue_t warm = {.user_id = USER, .message = "warm-up"};
    slot_t *s = enqueue_all(&r, &warm, 1);
    assert_int_equal(s[0].a.err, 0);
    free(s);
    const char *env = getenv("RP_TEST_PRODUCER_N");
    r.total = env ? atoi(env) : 50000;
    r.max_inflight = 1000;
    r.answered = r.next = r.inflight = 0;
    uint64_t t0 = uv_hrtime();
    double cpu0 = cpu_s();
    drive(&r);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    double secs = (double)(uv_hrtime() - t0) / 1e9;
    double cpu = cpu_s() - cpu0;
    assert_int_equal(r.answered, r.total);
    assert_int_equal(r.failures, 0);
    printf("# producer %s: %d enqueues, 1000 in flight, %.2f s = %.0f enqueues/s, "
           "producer CPU %.1f us/enqueue\n",
           w->queue, r.total, secs, r.total / secs, cpu * 1e6 / r.total);
    assert_int_equal(queue_count(w), r.total + 1);
    run_finish(&r);
}

int main(void)
{
    rp_test_require_stack("the producer tests need Postgres and Redis");
    redis_url = getenv("REDIS_URL");
    if (redis_url == NULL || *redis_url == '\0') {
        printf("SKIP: REDIS_URL not set (run through ./dev test)\n");
        return 77;
    }
    if (sscanf(redis_url, "redis://%63[^:/]:%d", redis_host, &redis_port) != 2) {
        printf("REDIS_URL must be redis://HOST:PORT[/db] for this test\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_concurrent, setup_pg, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_idempotent, setup_pg, teardown),
        cmocka_unit_test_setup_teardown(test_idempotent, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_beside_valid, setup_pg, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_beside_valid, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_unreachable, setup_pg, teardown),
        cmocka_unit_test_setup_teardown(test_unreachable, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_redis_noscript, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_redis_mixed_batch, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_redis_refused, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_throughput, setup_pg, teardown),
        cmocka_unit_test_setup_teardown(test_throughput, setup_redis, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
