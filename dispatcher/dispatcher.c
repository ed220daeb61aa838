/*
 * dispatcher.c: the dispatcher's routes and request state machine (see
 * dispatcher.h and docs/DISPATCHER.md).
 *
 * A request is an rq_t that lives from the handler call until its answer;
 * it waits in at most one place at a time, named by its state:
 *
 *   NEW -> (WAIT_JWKS) -> chat:   (WAIT_LIMIT) -> WAIT_ENQUEUE -> answered
 *                         job:    WAIT_STATUS -> answered
 *          healthz: WAIT_HEALTH;  metrics: (WAIT_STATS) -> answered
 *
 * Every answer goes through rq_respond, which adds the CORS headers,
 * counts the request for /metrics and frees the rq; so "in flight" is
 * simply the number of live rq_t, and the drain on SIGTERM waits for it to
 * reach zero.  A client that disconnects early needs no special case: the
 * HTTP server keeps the request until we answer and drops the answer.
 *
 * Order of checks for POST /v1/chat: method (405), token (401; may wait for
 * a JWKS re-read on an unknown kid), Content-Type (415), body (400/422),
 * Idempotency-Key (422), rate limit (429), enqueue (503/422 from the
 * queue), 202 only once the producer says the job is durable.  A request
 * refused anywhere leaves no job.
 *
 * Closing: the back ends (producer, Postgres, Redis, HTTP client) are
 * closed first -- their cancelled callbacks still answer through the HTTP
 * server -- and the HTTP server last, once they are all gone.
 *
 * Threads: a process runs one dispatcher per thread, each on its own loop
 * with its own connections, all listening on one port (SO_REUSEPORT).
 * What they share is an rp_dispatcher_shared_t: the metrics registry (its
 * own lock), the local rate limiter (rl_lock), the process-wide count of
 * requests in flight (atomic) and the port.  Nothing else crosses threads.
 */
#include "dispatcher.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "buf.h"
#include "http.h"
#include "httpd.h"
#include "jwt.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "producer.h"
#include "ratelimit.h"
#include "redis.h"
#include "request.h"

#define JWKS_MAX_BYTES (1024 * 1024)
#define JWKS_TIMEOUT_MS 5000
#define HEALTH_TIMEOUT_MS 1000
#define STATS_TIMEOUT_MS 1000
#define STATUS_TIMEOUT_MS 5000
#define LIMIT_TIMEOUT_MS 500
#define MAX_HEADERS 12

typedef enum {
    ROUTE_CHAT = 0,
    ROUTE_JOB,
    ROUTE_HEALTH,
    ROUTE_METRICS,
    ROUTE_OTHER,
    NROUTES
} route_t;
static const char *const route_names[NROUTES] = {"chat", "job", "healthz", "metrics", "other"};

typedef enum {
    RQ_NEW = 0,
    RQ_WAIT_JWKS,
    RQ_WAIT_LIMIT,
    RQ_WAIT_ENQUEUE,
    RQ_WAIT_STATUS,
    RQ_WAIT_HEALTH,
    RQ_WAIT_STATS,
} rq_state_t;

typedef struct rq rq_t;

struct rq {
    rp_dispatcher_t *d;
    rp_httpd_req_t *req;
    route_t route;
    rq_state_t state;
    uint64_t t0; /* uv_hrtime at arrival */
    rp_jwt_claims_t claims;
    rp_chat_request_t body;
    char job_id[37]; /* from Idempotency-Key, "" when none */
    char path_id[37];
    int limit_eval; /* the rate-limit command carried the script (EVAL) */
    rq_t *next;     /* on a wait list (JWKS, stats) */
};

struct rp_dispatcher_shared {
    const rp_dispatcher_cfg_t *cfg;
    int nthreads;
    int port; /* bound by the first dispatcher; the others listen on it too */

    /* the local rate limiter (NULL without a limit) */
    rp_ratelimit_t *rl;
    pthread_mutex_t rl_lock;
    int rl_lock_on;

    atomic_size_t inflight; /* live requests over every thread */

    /* metrics */
    rp_metrics_t *metrics;
    rp_metric_t *m_requests;
    rp_metric_t *m_thread;
    rp_series_t *s_latency[NROUTES];
    rp_series_t *s_enqueue_errors;
    rp_series_t *s_rate_limited;
    rp_series_t *s_auth_failed;
    rp_series_t *s_inflight;
    rp_series_t *s_queue[4];
    rp_series_t *s_jwks[2]; /* ok, failed */
    rp_series_t *s_rl_fallback;
};

struct rp_dispatcher {
    uv_loop_t *loop;
    const rp_dispatcher_cfg_t *cfg;
    rp_dispatcher_shared_t *sh;
    int index; /* the thread's number, from 0 */
    rp_httpd_t *httpd;
    rp_producer_t *producer;
    rp_pg_t *pg;
    rp_redis_t *rl_redis;
    rp_http_t *http;
    rp_jwt_verifier_t *jwt;

    /* this thread's handles on shared series */
    rp_series_t *s_requests[NROUTES][600];
    rp_series_t *s_thread; /* requests answered by this thread */

    /* JWKS */
    int jwks_is_url;
    int jwks_fetching;
    uint64_t jwks_last_ms;
    rq_t *jwks_waiters;
    uv_timer_t jwks_timer;
    int jwks_timer_on;

    /* queue depth cache */
    uint64_t stats_at_ms;
    int stats_valid;
    int stats_fetching;
    rq_t *stats_waiters;

    /* rate limit script */
    char rl_sha[41];
    int rl_use_eval; /* the server lost the script: send it whole */
    int rl_first;    /* RL_FIRST_*: how the first connection to Redis went */

    /* lifecycle */
    size_t inflight;
    int draining;
    int closing;
    int pending_closes;
    uv_timer_t drain_timer;
    int drain_timer_on;
    void (*done)(void *data);
    void *done_data;
};

static void rq_authenticate(rq_t *rq, int retried);
static void on_drain_deadline(uv_timer_t *t);

static uint64_t now_ms(const rp_dispatcher_t *d)
{
    return uv_now(d->loop);
}

/* ------------------------------------------------------------------ */
/* answers                                                             */

static rp_series_t *requests_series(rp_dispatcher_t *d, route_t route, int status);

/* Count an answer for /metrics: by route and status, its latency, and the
 * thread that gave it (one hold of the registry's lock for the three). */
static void count_answer(rp_dispatcher_t *d, const rq_t *rq, int status)
{
    double secs = (double)(uv_hrtime() - rq->t0) / 1e9;
    rp_series_t *s = requests_series(d, rq->route, status);
    rp_metrics_hold(d->sh->metrics);
    rp_series_inc(s);
    rp_series_observe(d->sh->s_latency[rq->route], secs);
    rp_series_inc(d->s_thread);
    rp_metrics_release(d->sh->metrics);
}

static rp_series_t *requests_series(rp_dispatcher_t *d, route_t route, int status)
{
    if (status < 100 || status >= 600)
        status = 500;
    rp_series_t **slot = &d->s_requests[route][status];
    if (*slot == NULL) {
        char code[8];
        snprintf(code, sizeof(code), "%d", status);
        *slot =
            rp_metric_labels(d->sh->m_requests, (const char *const[]){route_names[route], code});
    }
    return *slot;
}

static void rq_free(rq_t *rq)
{
    rp_dispatcher_t *d = rq->d;
    rp_chat_request_free(&rq->body);
    free(rq);
    d->inflight--;
    atomic_fetch_sub_explicit(&d->sh->inflight, 1, memory_order_relaxed);
    if (d->draining && !d->closing && d->inflight == 0 && d->drain_timer_on) {
        /* Close on the next turn: we may be inside a back end's callback,
         * and a library must not be closed from its own callback. */
        uv_timer_start(&d->drain_timer, on_drain_deadline, 1, 0);
    }
}

/* Answer rq with status, the CORS headers, extra headers (NULL-terminated,
 * may be NULL) and a JSON body; then free rq. */
static void rq_respond(rq_t *rq, int status, const char *const *extra, const char *body, size_t len)
{
    rp_dispatcher_t *d = rq->d;
    const char *hdrs[MAX_HEADERS + 1];
    char origin_line[320];
    size_t n = 0;
    hdrs[n++] = "Content-Type: application/json";
    const char *cors = d->cfg->cors_origins;
    if (cors != NULL && cors[0] != '\0') {
        if (strcmp(cors, "*") == 0) {
            hdrs[n++] = "Access-Control-Allow-Origin: *";
        } else {
            const char *origin = rp_httpd_header(rq->req, "Origin");
            size_t olen = origin != NULL ? strlen(origin) : 0;
            for (const char *p = cors; origin != NULL && olen < 256 && *p;) {
                const char *comma = strchr(p, ',');
                size_t plen = comma != NULL ? (size_t)(comma - p) : strlen(p);
                while (plen > 0 && *p == ' ') {
                    p++;
                    plen--;
                }
                while (plen > 0 && p[plen - 1] == ' ')
                    plen--;
                if (plen == olen && strncmp(p, origin, olen) == 0) {
                    snprintf(origin_line, sizeof(origin_line), "Access-Control-Allow-Origin: %s",
                             origin);
                    hdrs[n++] = origin_line;
                    break;
                }
                if (comma == NULL)
                    break;
                p = comma + 1;
            }
            hdrs[n++] = "Vary: Origin";
        }
        hdrs[n++] = "Access-Control-Allow-Headers: authorization, x-client-info, apikey, "
                    "content-type, idempotency-key";
        hdrs[n++] = "Access-Control-Expose-Headers: Retry-After";
    }
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < MAX_HEADERS; i++)
        hdrs[n++] = extra[i];
    hdrs[n] = NULL;

    count_answer(d, rq, status);
    if (status >= 500)
        rp_log_warn("http.error", rq->job_id[0] ? rq->job_id : NULL, "%s %s -> %d",
                    rp_httpd_method(rq->req), route_names[rq->route], status);
    else if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("http.request", rq->job_id[0] ? rq->job_id : NULL, "%s %s -> %d",
                     rp_httpd_method(rq->req), route_names[rq->route], status);
    rp_httpd_respond(rq->req, status, hdrs, body, len);
    rq->req = NULL;
    rq_free(rq);
}

static void rq_error(rq_t *rq, int status, const char *code, const char *message,
                     const char *const *extra)
{
    rp_buf_t b = RP_BUF_INIT;
    rp_error_json(&b, code, message, NULL);
    if (rp_buf_failed(&b))
        rq_respond(rq, 500, NULL,
                   "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}", 59);
    else
        rq_respond(rq, status, extra, b.data, b.len);
    rp_buf_free(&b);
}

static void rq_unauthorized(rq_t *rq, const char *code, const char *message)
{
    static const char *const missing[] = {"WWW-Authenticate: Bearer realm=\"ragpool\"", NULL};
    static const char *const invalid[] = {
        "WWW-Authenticate: Bearer realm=\"ragpool\", error=\"invalid_token\"", NULL};
    rp_series_inc(rq->d->sh->s_auth_failed);
    rq_error(rq, 401, code, message, strcmp(code, "missing_token") == 0 ? missing : invalid);
}

static void rq_unavailable(rq_t *rq, const char *code, const char *message)
{
    static const char *const retry[] = {"Retry-After: 1", NULL};
    rq_error(rq, 503, code, message, retry);
}

/* ------------------------------------------------------------------ */
/* chat: enqueue                                                       */

static void on_enqueued(void *data, int err, const char *job_id, int existing, const char *message)
{
    rq_t *rq = data;
    rp_dispatcher_t *d = rq->d;
    if (err == 0) {
        rp_buf_t b = RP_BUF_INIT;
        rp_buf_puts(&b, "{\"job_id\":\"");
        rp_buf_json_escape(&b, job_id, strlen(job_id));
        rp_buf_puts(&b, "\",\"status\":\"queued\"");
        if (existing)
            rp_buf_puts(&b, ",\"existing\":true");
        if (rq->body.conversation_id != NULL) {
            rp_buf_puts(&b, ",\"conversation_id\":\"");
            rp_buf_json_escape(&b, rq->body.conversation_id, strlen(rq->body.conversation_id));
            rp_buf_putc(&b, '"');
        }
        rp_buf_putc(&b, '}');
        if (!rp_buf_failed(&b)) {
            size_t n = strnlen(job_id, sizeof(rq->job_id) - 1);
            memcpy(rq->job_id, job_id, n);
            rq->job_id[n] = '\0';
            rq_respond(rq, 202, NULL, b.data, b.len);
        } else {
            /* The job is durable but we cannot say so: the client retries
             * (with its Idempotency-Key, harmlessly). */
            rq_unavailable(rq, "internal", "out of memory");
        }
        rp_buf_free(&b);
        return;
    }
    rp_series_inc(d->sh->s_enqueue_errors);
    if (err == RP_EINVAL) {
        rq_error(rq, 422, "rejected",
                 message != NULL && message[0] ? message : "the queue refused the job", NULL);
        return;
    }
    rp_log_warn("dispatcher.enqueue_failed", rq->job_id[0] ? rq->job_id : NULL, "%s: %s",
                rp_strerror(err), message != NULL ? message : "");
    rq_unavailable(rq, "queue_unavailable", "the queue cannot take the job now; retry later");
}

static void chat_enqueue(rq_t *rq)
{
    rp_dispatcher_t *d = rq->d;
    rp_enqueue_t e = {
        .job_id = rq->job_id[0] ? rq->job_id : NULL,
        .user_id = rq->claims.sub,
        .message = rq->body.message,
        .options_json = rq->body.options_json,
        .max_attempts = 0,
    };
    rq->state = RQ_WAIT_ENQUEUE;
    int rc = d->closing ? RP_ECLOSED : rp_producer_enqueue(d->producer, &e, on_enqueued, rq);
    if (rc < 0) {
        rp_series_inc(d->sh->s_enqueue_errors);
        rq_unavailable(rq, "queue_unavailable", "the queue cannot take the job now; retry later");
    }
}

/* ------------------------------------------------------------------ */
/* chat: rate limit                                                    */

static void rq_too_many(rq_t *rq, int64_t wait_ms)
{
    char retry[48];
    snprintf(retry, sizeof(retry), "Retry-After: %ld", rp_ratelimit_retry_after_s(wait_ms));
    const char *extra[] = {retry, NULL};
    rp_series_inc(rq->d->sh->s_rate_limited);
    rq_error(rq, 429, "rate_limited", "too many requests; retry after the time in Retry-After",
             extra);
}

static void chat_limit_local(rq_t *rq)
{
    rp_dispatcher_shared_t *sh = rq->d->sh;
    pthread_mutex_lock(&sh->rl_lock);
    int64_t wait = rp_ratelimit_take(sh->rl, rq->claims.sub, (int64_t)now_ms(rq->d));
    pthread_mutex_unlock(&sh->rl_lock);
    if (wait > 0)
        rq_too_many(rq, wait);
    else
        chat_enqueue(rq);
}

static void send_limit_command(rq_t *rq);

/* Until Redis has answered once, the limit waits for its first connection
 * (a command queues while it connects, for at most LIMIT_TIMEOUT_MS)
 * instead of deciding locally: at start-up every dispatcher would
 * otherwise let a whole burst through on its own.  If that first attempt
 * fails, decisions are local at once until Redis is up. */
enum { RL_FIRST_PENDING = 0, RL_FIRST_ANSWERED, RL_FIRST_FAILED };

static void on_limit_reply(void *data, int err, const rp_redis_reply_t *reply)
{
    rq_t *rq = data;
    rp_dispatcher_t *d = rq->d;
    if (err == 0)
        d->rl_first = RL_FIRST_ANSWERED;
    else if (d->rl_first == RL_FIRST_PENDING)
        d->rl_first = RL_FIRST_FAILED;
    if (err == 0 && rp_redis_reply_type(reply) == RP_REDIS_ERROR) {
        const char *msg = rp_redis_reply_str(reply, NULL);
        if (msg != NULL && strncmp(msg, "NOSCRIPT", 8) == 0 && !rq->limit_eval) {
            /* The server forgot the script (restart, SCRIPT FLUSH): EVAL
             * loads it again, and EVALSHA works after that. */
            d->rl_use_eval = 1;
            send_limit_command(rq);
            return;
        }
    }
    if (err == 0 && rp_redis_reply_type(reply) == RP_REDIS_ARRAY &&
        rp_redis_reply_len(reply) == 2) {
        const rp_redis_reply_t *a = rp_redis_reply_at(reply, 0), *w = rp_redis_reply_at(reply, 1);
        if (rp_redis_reply_type(a) == RP_REDIS_INTEGER &&
            rp_redis_reply_type(w) == RP_REDIS_INTEGER) {
            if (rq->limit_eval)
                d->rl_use_eval = 0; /* the script is loaded again */
            if (rp_redis_reply_int(a) == 1)
                chat_enqueue(rq);
            else
                rq_too_many(rq, rp_redis_reply_int(w));
            return;
        }
    }
    /* Redis is unreachable or answered nonsense: limit locally rather than
     * refuse everyone or let everyone through. */
    rp_series_inc(d->sh->s_rl_fallback);
    chat_limit_local(rq);
}

static void send_limit_command(rq_t *rq)
{
    rp_dispatcher_t *d = rq->d;
    char key[RP_JWT_SUB_MAX + 16], rate[32], burst[32];
    snprintf(key, sizeof(key), "ragpool:rl:%s", rq->claims.sub);
    snprintf(rate, sizeof(rate), "%.9g", d->cfg->rate_limit_rps);
    snprintf(burst, sizeof(burst), "%.9g", d->cfg->rate_limit_burst);
    const char *argv[6] = {d->rl_use_eval ? "EVAL" : "EVALSHA",
                           d->rl_use_eval ? rp_ratelimit_lua : d->rl_sha,
                           "1",
                           key,
                           rate,
                           burst};
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    rq->limit_eval = d->rl_use_eval;
    rq->state = RQ_WAIT_LIMIT;
    int rc = d->closing ? RP_ECLOSED
                        : rp_redis_command(d->rl_redis, 6, argv, lens, LIMIT_TIMEOUT_MS,
                                           on_limit_reply, rq);
    if (rc < 0) {
        rp_series_inc(d->sh->s_rl_fallback);
        chat_limit_local(rq);
    }
}

static void chat_limit(rq_t *rq)
{
    rp_dispatcher_t *d = rq->d;
    if (d->sh->rl == NULL)
        chat_enqueue(rq);
    else if (d->rl_redis != NULL &&
             (rp_redis_is_up(d->rl_redis) || d->rl_first == RL_FIRST_PENDING))
        send_limit_command(rq);
    else
        chat_limit_local(rq);
}

/* ------------------------------------------------------------------ */
/* chat: body                                                          */

static void chat_authorized(rq_t *rq)
{
    if (!rp_content_type_is_json(rp_httpd_header(rq->req, "Content-Type"))) {
        rq_error(rq, 415, "unsupported_media_type", "Content-Type must be application/json", NULL);
        return;
    }
    size_t len;
    const char *body = rp_httpd_body(rq->req, &len);
    if (len > (size_t)rq->d->cfg->max_body_bytes) {
        rq_error(rq, 413, "payload_too_large", "the request body is too large", NULL);
        return;
    }
    rp_buf_t eb = RP_BUF_INIT;
    int rc = rp_chat_request_parse(body, len, &rq->body, &eb);
    if (rc != 0) {
        if (rc < 0 || rp_buf_failed(&eb))
            rq_unavailable(rq, "internal", "out of memory");
        else
            rq_respond(rq, rc, NULL, eb.data, eb.len);
        rp_buf_free(&eb);
        return;
    }
    rp_buf_free(&eb);
    const char *key = rp_httpd_header(rq->req, "Idempotency-Key");
    if (key != NULL) {
        if (rp_idempotency_job_id(rq->claims.sub, key, rq->job_id) < 0) {
            rq_error(rq, 422, "invalid_idempotency_key",
                     "Idempotency-Key must be 1 to 255 visible ASCII characters", NULL);
            return;
        }
    }
    chat_limit(rq);
}

/* ------------------------------------------------------------------ */
/* job status                                                          */

static void put_field(rp_buf_t *b, const rp_pg_res_t *res, const char *name, const char *as,
                      int raw)
{
    int col = rp_pg_res_column(res, name);
    if (col < 0)
        return;
    rp_buf_printf(b, ",\"%s\":", as);
    if (rp_pg_res_isnull(res, 0, col)) {
        rp_buf_puts(b, "null");
        return;
    }
    const char *v = rp_pg_res_value(res, 0, col);
    if (raw) {
        rp_buf_puts(b, v); /* a number or JSON from the database */
    } else {
        rp_buf_putc(b, '"');
        rp_buf_json_escape(b, v, (size_t)rp_pg_res_length(res, 0, col));
        rp_buf_putc(b, '"');
    }
}

static void on_status(void *data, const rp_pg_res_t *res)
{
    rq_t *rq = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        rp_log_warn("dispatcher.status_failed", rq->path_id, "%s: %s", rp_strerror(err),
                    rp_pg_res_message(res));
        rq_unavailable(rq, "database_unavailable", "job status is not available now; retry later");
        return;
    }
    if (rp_pg_res_ntuples(res) == 0) {
        rq_error(rq, 404, "not_found", "no such job", NULL);
        return;
    }
    rp_buf_t b = RP_BUF_INIT;
    rp_buf_puts(&b, "{\"job_id\":\"");
    rp_buf_json_escape(&b, rq->path_id, strlen(rq->path_id));
    rp_buf_putc(&b, '"');
    put_field(&b, res, "state", "status", 0);
    put_field(&b, res, "attempts", "attempts", 1);
    put_field(&b, res, "max_attempts", "max_attempts", 1);
    put_field(&b, res, "created_at", "created_at", 0);
    put_field(&b, res, "run_at", "run_at", 0);
    put_field(&b, res, "dead_reason", "dead_reason", 0);
    int col = rp_pg_res_column(res, "response");
    if (col >= 0 && !rp_pg_res_isnull(res, 0, col)) {
        rp_buf_puts(&b, ",\"answer\":{\"response\":\"");
        rp_buf_json_escape(&b, rp_pg_res_value(res, 0, col), (size_t)rp_pg_res_length(res, 0, col));
        rp_buf_putc(&b, '"');
        put_field(&b, res, "answer_status", "status", 0);
        put_field(&b, res, "context_used", "context_used", 1);
        put_field(&b, res, "model_version", "model_version", 0);
        put_field(&b, res, "answered_at", "created_at", 0);
        rp_buf_putc(&b, '}');
    } else {
        rp_buf_puts(&b, ",\"answer\":null");
    }
    rp_buf_putc(&b, '}');
    if (rp_buf_failed(&b))
        rq_unavailable(rq, "internal", "out of memory");
    else
        rq_respond(rq, 200, NULL, b.data, b.len);
    rp_buf_free(&b);
}

static void job_authorized(rq_t *rq)
{
    rp_dispatcher_t *d = rq->d;
    const char *params[2] = {rq->path_id, rq->claims.sub};
    rq->state = RQ_WAIT_STATUS;
    int rc = d->closing ? RP_ECLOSED
                        : rp_pg_query(d->pg,
                                      "SELECT state, attempts, max_attempts, "
                                      "to_json(created_at) #>> '{}' AS created_at, "
                                      "to_json(run_at) #>> '{}' AS run_at, response, "
                                      "answer_status, context_used, model_version, "
                                      "to_json(answered_at) #>> '{}' AS answered_at, "
                                      "dead_reason FROM ragpool.job_status($1, $2)",
                                      2, params, STATUS_TIMEOUT_MS, on_status, rq);
    if (rc < 0)
        rq_unavailable(rq, "database_unavailable", "job status is not available now; retry later");
}

/* ------------------------------------------------------------------ */
/* authentication and JWKS                                             */

static void jwks_loaded(rp_dispatcher_t *d, int ok)
{
    rp_series_inc(d->sh->s_jwks[ok ? 0 : 1]);
    rq_t *w = d->jwks_waiters;
    d->jwks_waiters = NULL;
    while (w != NULL) {
        rq_t *next = w->next;
        w->next = NULL;
        rq_authenticate(w, 1);
        w = next;
    }
}

static int jwks_apply(rp_dispatcher_t *d, const char *text, size_t len, rp_err_t *err)
{
    int n = rp_jwt_load_jwks(d->jwt, text, len, err);
    if (n >= 0)
        rp_log_info("dispatcher.jwks_loaded", NULL, "%d usable keys", n);
    return n;
}

/* Read the JWKS file (small; a blocking read is acceptable at start-up and
 * on a rate-limited re-read). */
static int jwks_read_file(rp_dispatcher_t *d, rp_err_t *err)
{
    FILE *f = fopen(d->cfg->jwks, "rb");
    if (f == NULL)
        return rp_err_set(err, RP_EINVAL, "RAGPOOL_JWKS: cannot open %s", d->cfg->jwks);
    char *buf = malloc(JWKS_MAX_BYTES + 1);
    size_t n = buf != NULL ? fread(buf, 1, JWKS_MAX_BYTES + 1, f) : 0;
    int rc;
    fclose(f);
    if (buf == NULL) {
        rc = rp_err_set(err, RP_ENOMEM, "out of memory reading RAGPOOL_JWKS");
    } else if (n > JWKS_MAX_BYTES) {
        rc = rp_err_set(err, RP_EINVAL, "RAGPOOL_JWKS: %s is larger than 1 MiB", d->cfg->jwks);
    } else {
        rp_err_t e2 = {0};
        rc = jwks_apply(d, buf, n, &e2);
        if (rc < 0)
            rp_err_set(err, rc, "RAGPOOL_JWKS: %s", e2.msg);
    }
    free(buf);
    return rc;
}

static void on_jwks_fetched(void *data, const rp_http_resp_t *resp)
{
    rp_dispatcher_t *d = data;
    d->jwks_fetching = 0;
    int ok = 0;
    if (resp->error != 0) {
        rp_log_warn("dispatcher.jwks_failed", NULL, "RAGPOOL_JWKS: %s", resp->error_msg);
    } else if (resp->status != 200) {
        rp_log_warn("dispatcher.jwks_failed", NULL, "RAGPOOL_JWKS: HTTP status %ld", resp->status);
    } else {
        rp_err_t err = {0};
        if (jwks_apply(d, resp->body, resp->body_len, &err) < 0)
            rp_log_warn("dispatcher.jwks_failed", NULL, "RAGPOOL_JWKS: %s", err.msg);
        else
            ok = 1;
    }
    jwks_loaded(d, ok);
}

/* Start a re-read; waiters are re-authenticated when it ends. */
static void jwks_refresh(rp_dispatcher_t *d)
{
    if (d->jwks_fetching || d->closing)
        return;
    d->jwks_last_ms = now_ms(d);
    if (!d->jwks_is_url) {
        rp_err_t err = {0};
        int rc = jwks_read_file(d, &err);
        if (rc < 0)
            rp_log_warn("dispatcher.jwks_failed", NULL, "%s", err.msg);
        jwks_loaded(d, rc >= 0);
        return;
    }
    static const char *const hdrs[] = {"Accept: application/json", NULL};
    rp_http_request_t r = {
        .method = "GET",
        .url = d->cfg->jwks,
        .headers = hdrs,
        .timeout_ms = JWKS_TIMEOUT_MS,
        .max_body = JWKS_MAX_BYTES,
    };
    if (rp_http_send(d->http, &r, on_jwks_fetched, d, NULL) == 0) {
        d->jwks_fetching = 1;
    } else {
        rp_log_warn("dispatcher.jwks_failed", NULL, "RAGPOOL_JWKS: cannot start the request");
        jwks_loaded(d, 0);
    }
}

static void on_jwks_timer(uv_timer_t *t)
{
    jwks_refresh(t->data);
}

static void rq_authorized(rq_t *rq)
{
    if (rq->route == ROUTE_CHAT)
        chat_authorized(rq);
    else
        job_authorized(rq);
}

static void rq_authenticate(rq_t *rq, int retried)
{
    rp_dispatcher_t *d = rq->d;
    const char *tok;
    size_t len;
    if (rp_bearer_token(rp_httpd_header(rq->req, "Authorization"), &tok, &len) < 0) {
        rq_unauthorized(rq, "missing_token", "an Authorization: Bearer <JWT> header is required");
        return;
    }
    rp_err_t err = {0};
    int rc = rp_jwt_verify(d->jwt, tok, len, (int64_t)time(NULL), &rq->claims, &err);
    if (rc == RP_ENOTFOUND && !retried && d->cfg->jwks != NULL && d->cfg->jwks[0] != '\0' &&
        !d->closing &&
        (d->jwks_fetching || d->jwks_last_ms == 0 ||
         now_ms(d) - d->jwks_last_ms >= (uint64_t)d->cfg->jwks_min_refresh_ms)) {
        /* An unknown kid: the keys may have rotated.  Wait for one re-read
         * (shared by every request that needs it). */
        rq->state = RQ_WAIT_JWKS;
        rq->next = d->jwks_waiters;
        d->jwks_waiters = rq;
        jwks_refresh(d);
        return;
    }
    if (rc < 0) {
        rq_unauthorized(rq, "invalid_token", err.msg);
        return;
    }
    rq_authorized(rq);
}

/* ------------------------------------------------------------------ */
/* health and metrics                                                  */

static void on_health(void *data, const rp_pg_res_t *res)
{
    rq_t *rq = data;
    rp_dispatcher_t *d = rq->d;
    int pg_ok = res != NULL && rp_pg_res_error(res) == 0;
    int queue_ok = d->producer != NULL && rp_producer_is_up(d->producer);
    int redis_used = d->rl_redis != NULL;
    int redis_ok = redis_used && rp_redis_is_up(d->rl_redis);
    int is_redis_queue = strcmp(d->cfg->queue, "redis") == 0;
    int ok = pg_ok && queue_ok && (!redis_used || redis_ok);
    char body[256];
    int n = snprintf(body, sizeof(body),
                     "{\"status\":\"%s\",\"postgres\":\"%s\",\"queue\":\"%s\",\"queue_backend\":"
                     "\"%s\"%s%s%s}",
                     ok ? "ok" : "unavailable", pg_ok ? "up" : "down", queue_ok ? "up" : "down",
                     is_redis_queue ? "redis" : "postgres",
                     redis_used ? ",\"rate_limit_redis\":\"" : "",
                     redis_used ? (redis_ok ? "up" : "down") : "", redis_used ? "\"" : "");
    rq_respond(rq, ok ? 200 : 503, NULL, body, (size_t)n);
}

static void health(rq_t *rq)
{
    rp_dispatcher_t *d = rq->d;
    rq->state = RQ_WAIT_HEALTH;
    if (d->closing || !rp_pg_is_up(d->pg) ||
        rp_pg_query(d->pg, "SELECT 1", 0, NULL, HEALTH_TIMEOUT_MS, on_health, rq) < 0)
        on_health(rq, NULL);
}

static void on_collect(void *data, rp_metrics_t *m)
{
    rp_dispatcher_shared_t *sh = data;
    (void)m;
    rp_series_set(sh->s_inflight,
                  (double)atomic_load_explicit(&sh->inflight, memory_order_relaxed));
}

/* The metrics answer is text, not JSON: answered here, not by rq_respond. */
static void metrics_answer(rq_t *rq)
{
    rp_dispatcher_t *d = rq->d;
    count_answer(d, rq, 200);
    rp_metrics_respond(d->sh->metrics, rq->req);
    rq->req = NULL;
    rq_free(rq);
}

/* The queue depth was read (ok) or not: answer the /metrics requests that
 * waited for it. */
static void stats_answered(rp_dispatcher_t *d, int ok)
{
    d->stats_fetching = 0;
    if (ok) {
        d->stats_at_ms = now_ms(d);
        d->stats_valid = 1;
    }
    rq_t *w = d->stats_waiters;
    d->stats_waiters = NULL;
    while (w != NULL) {
        rq_t *next = w->next;
        metrics_answer(w);
        w = next;
    }
}

static void on_stats(void *data, const rp_pg_res_t *res)
{
    rp_dispatcher_t *d = data;
    int ok =
        rp_pg_res_error(res) == 0 && rp_pg_res_ntuples(res) == 1 && rp_pg_res_nfields(res) == 4;
    for (int i = 0; ok && i < 4; i++)
        rp_series_set(d->sh->s_queue[i], strtod(rp_pg_res_value(res, 0, i), NULL));
    stats_answered(d, ok);
}

static void on_depth(void *data, int err, const rp_queue_depth_t *depth)
{
    rp_dispatcher_t *d = data;
    if (err == 0) {
        rp_series_set(d->sh->s_queue[0], (double)depth->queued);
        rp_series_set(d->sh->s_queue[1], (double)depth->scheduled);
        rp_series_set(d->sh->s_queue[2], (double)depth->running);
        rp_series_set(d->sh->s_queue[3], (double)depth->dead);
    }
    stats_answered(d, err == 0);
}

static void metrics(rq_t *rq)
{
    rp_dispatcher_t *d = rq->d;
    int stale = !d->stats_valid || now_ms(d) - d->stats_at_ms >= (uint64_t)d->cfg->stats_ttl_ms;
    int redis = strcmp(d->cfg->queue, "redis") == 0;
    int up = redis ? rp_producer_is_up(d->producer) : rp_pg_is_up(d->pg);
    if (stale && !d->closing && up) {
        rq->state = RQ_WAIT_STATS;
        rq->next = d->stats_waiters;
        d->stats_waiters = rq;
        if (d->stats_fetching)
            return;
        /* The depth of the queue jobs go to: Postgres' queue_stats(), or
         * the Redis stream, its group and its delayed and dead keys. */
        int rc = redis ? rp_producer_depth(d->producer, on_depth, d)
                       : rp_pg_query(d->pg,
                                     "SELECT queued, scheduled, running, dead "
                                     "FROM ragpool.queue_stats()",
                                     0, NULL, STATS_TIMEOUT_MS, on_stats, d);
        if (rc == 0) {
            d->stats_fetching = 1;
            return;
        }
        d->stats_waiters = rq->next;
    }
    metrics_answer(rq);
}

/* ------------------------------------------------------------------ */
/* routing                                                             */

static void preflight(rq_t *rq)
{
    static const char *const extra[] = {"Access-Control-Allow-Methods: GET, POST, OPTIONS",
                                        "Access-Control-Max-Age: 86400", NULL};
    rq_respond(rq, 204, extra, "", 0);
}

static void method_not_allowed(rq_t *rq, const char *allow)
{
    const char *extra[] = {allow, NULL};
    rq_error(rq, 405, "method_not_allowed", "this method is not allowed here", extra);
}

static void on_request(void *data, rp_httpd_req_t *req)
{
    rp_dispatcher_t *d = data;
    rq_t *rq = calloc(1, sizeof(*rq));
    if (rq == NULL) {
        static const char *const h[] = {"Content-Type: application/json", "Retry-After: 1", NULL};
        static const char b[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        rp_httpd_respond(req, 503, h, b, sizeof(b) - 1);
        return;
    }
    rq->d = d;
    rq->req = req;
    rq->t0 = uv_hrtime();
    rq->route = ROUTE_OTHER;
    d->inflight++;
    size_t all = atomic_fetch_add_explicit(&d->sh->inflight, 1, memory_order_relaxed) + 1;

    const char *method = rp_httpd_method(req);
    const char *path = rp_httpd_path(req);
    int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int is_options = strcmp(method, "OPTIONS") == 0;

    if (strcmp(path, "/v1/chat") == 0) {
        rq->route = ROUTE_CHAT;
    } else if (strncmp(path, "/v1/jobs/", 9) == 0) {
        rq->route = ROUTE_JOB;
    } else if (strcmp(path, "/healthz") == 0) {
        rq->route = ROUTE_HEALTH;
    } else if (strcmp(path, "/metrics") == 0) {
        rq->route = ROUTE_METRICS;
    } else {
        if (is_options)
            preflight(rq);
        else
            rq_error(rq, 404, "not_found", "no such endpoint", NULL);
        return;
    }
    if (is_options) {
        preflight(rq);
        return;
    }
    if (d->closing || all > (size_t)d->cfg->max_inflight) {
        rq_unavailable(rq, "overloaded", "the dispatcher is busy or stopping; retry later");
        return;
    }
    switch (rq->route) {
    case ROUTE_CHAT:
        if (strcmp(method, "POST") != 0)
            method_not_allowed(rq, "Allow: POST, OPTIONS");
        else
            rq_authenticate(rq, 0);
        break;
    case ROUTE_JOB:
        if (!is_get) {
            method_not_allowed(rq, "Allow: GET, OPTIONS");
            break;
        }
        if (!rp_uuid_valid(path + 9)) {
            rq_error(rq, 404, "not_found", "no such job", NULL);
            break;
        }
        for (int i = 0; i < 36; i++) {
            char c = path[9 + i];
            rq->path_id[i] = (char)(c >= 'A' && c <= 'F' ? c + 32 : c);
        }
        rq->path_id[36] = '\0';
        rq_authenticate(rq, 0);
        break;
    case ROUTE_HEALTH:
        if (!is_get)
            method_not_allowed(rq, "Allow: GET, HEAD");
        else
            health(rq);
        break;
    case ROUTE_METRICS:
        if (!is_get)
            method_not_allowed(rq, "Allow: GET, HEAD");
        else
            metrics(rq);
        break;
    default:
        rq_error(rq, 404, "not_found", "no such endpoint", NULL);
        break;
    }
}

/* ------------------------------------------------------------------ */
/* life cycle                                                          */

static int metrics_init(rp_dispatcher_shared_t *sh)
{
    rp_metrics_t *m = rp_metrics_new_shared();
    if (m == NULL)
        return RP_ENOMEM;
    sh->metrics = m;
    sh->m_requests =
        rp_metrics_counter(m, "ragpool_dispatcher_requests_total",
                           "HTTP requests answered, by route and status.", "route,status");
    rp_metric_t *lat =
        rp_metrics_histogram(m, "ragpool_dispatcher_request_duration_seconds",
                             "Time from a request's arrival to its answer, by route.", "route",
                             rp_metrics_latency_bounds, rp_metrics_latency_nbounds);
    for (int r = 0; r < NROUTES; r++)
        sh->s_latency[r] = rp_metric_labels(lat, (const char *const[]){route_names[r]});
    sh->s_enqueue_errors = rp_metric_labels(
        rp_metrics_counter(m, "ragpool_dispatcher_enqueue_errors_total",
                           "Jobs the queue did not accept (unreachable, timed out or refused).",
                           NULL),
        NULL);
    sh->s_rate_limited = rp_metric_labels(
        rp_metrics_counter(m, "ragpool_dispatcher_rate_limited_total",
                           "Chat requests refused with 429 by the per-user rate limit.", NULL),
        NULL);
    sh->s_auth_failed = rp_metric_labels(
        rp_metrics_counter(m, "ragpool_dispatcher_auth_failures_total",
                           "Requests refused with 401 (missing or invalid token).", NULL),
        NULL);
    sh->s_rl_fallback = rp_metric_labels(
        rp_metrics_counter(m, "ragpool_dispatcher_rate_limit_fallbacks_total",
                           "Rate-limit decisions made locally because Redis did not answer.", NULL),
        NULL);
    rp_metric_t *jwks = rp_metrics_counter(m, "ragpool_dispatcher_jwks_loads_total",
                                           "JWKS reads, by result.", "result");
    sh->s_jwks[0] = rp_metric_labels(jwks, (const char *const[]){"ok"});
    sh->s_jwks[1] = rp_metric_labels(jwks, (const char *const[]){"failed"});
    sh->s_inflight =
        rp_metric_labels(rp_metrics_gauge(m, "ragpool_dispatcher_requests_in_flight",
                                          "Requests received and not yet answered.", NULL),
                         NULL);
    sh->m_thread =
        rp_metrics_counter(m, "ragpool_dispatcher_thread_requests_total",
                           "HTTP requests answered, by the thread that answered.", "thread");
    rp_metric_t *depth = rp_metrics_gauge(
        m, "ragpool_queue_jobs",
        "Jobs in the queue by state (Postgres: ragpool.queue_stats(); Redis: the stream, its "
        "group's pending entries, <stream>:delayed and <stream>:dead), cached briefly.",
        "state");
    static const char *const states[4] = {"queued", "scheduled", "running", "dead"};
    for (int i = 0; i < 4; i++)
        sh->s_queue[i] = rp_metric_labels(depth, (const char *const[]){states[i]});
    if (sh->m_requests == NULL || lat == NULL || sh->s_inflight == NULL || sh->s_queue[3] == NULL ||
        sh->m_thread == NULL || rp_metrics_on_collect(m, on_collect, sh) < 0)
        return RP_ENOMEM;
    return 0;
}

static void script_sha1(const char *text, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    static const char hex[] = "0123456789abcdef";
    out[0] = '\0';
    if (EVP_Digest(text, strlen(text), md, &n, EVP_sha1(), NULL) != 1 || n != 20)
        return;
    for (unsigned int i = 0; i < 20; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[40] = '\0';
}

void rp_dispatcher_shared_free(rp_dispatcher_shared_t *sh)
{
    if (sh == NULL)
        return;
    rp_ratelimit_free(sh->rl);
    if (sh->rl_lock_on)
        pthread_mutex_destroy(&sh->rl_lock);
    rp_metrics_free(sh->metrics);
    free(sh);
}

rp_dispatcher_shared_t *rp_dispatcher_shared_new(const rp_dispatcher_cfg_t *cfg, int nthreads,
                                                 rp_err_t *err)
{
    rp_dispatcher_shared_t *sh = calloc(1, sizeof(*sh));
    if (sh == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    sh->cfg = cfg;
    sh->nthreads = nthreads > 0 ? nthreads : 1;
    atomic_init(&sh->inflight, 0);
    if (pthread_mutex_init(&sh->rl_lock, NULL) != 0) {
        rp_err_set(err, RP_ENOMEM, "cannot create a lock");
        goto fail;
    }
    sh->rl_lock_on = 1;
    if (metrics_init(sh) < 0) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        goto fail;
    }
    if (cfg->rate_limit_rps > 0) {
        sh->rl = rp_ratelimit_new(cfg->rate_limit_rps, cfg->rate_limit_burst, 1000000);
        if (sh->rl == NULL) {
            rp_err_set(err, RP_EINVAL, "RAGPOOL_RATE_LIMIT_RPS/BURST: cannot make the limiter");
            goto fail;
        }
    }
    return sh;
fail:
    rp_dispatcher_shared_free(sh);
    return NULL;
}

static void free_parts(rp_dispatcher_t *d)
{
    rp_jwt_verifier_free(d->jwt);
    free(d);
}

rp_dispatcher_t *rp_dispatcher_new(uv_loop_t *loop, const rp_dispatcher_cfg_t *cfg,
                                   rp_dispatcher_shared_t *sh, int index, rp_err_t *err)
{
    rp_dispatcher_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    d->loop = loop;
    d->cfg = cfg;
    d->sh = sh;
    d->index = index;
    char thread[16];
    snprintf(thread, sizeof(thread), "%d", index);
    d->s_thread = rp_metric_labels(sh->m_thread, (const char *const[]){thread});
    rp_jwt_policy_t pol = {
        .audience = cfg->jwt_audience,
        .roles = cfg->jwt_roles,
        .leeway_s = cfg->jwt_leeway_s,
        .max_token_bytes = RP_JWT_MAX_TOKEN,
        .cache_entries = (size_t)cfg->jwt_cache,
    };
    d->jwt = rp_jwt_verifier_new(&pol, err);
    if (d->jwt == NULL)
        goto fail;
    if (cfg->jwt_secret != NULL && cfg->jwt_secret[0] != '\0' &&
        rp_jwt_set_secret(d->jwt, cfg->jwt_secret, strlen(cfg->jwt_secret)) < 0) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        goto fail;
    }
    if (cfg->jwks != NULL && cfg->jwks[0] != '\0') {
        d->jwks_is_url =
            strncmp(cfg->jwks, "http://", 7) == 0 || strncmp(cfg->jwks, "https://", 8) == 0;
        if (!d->jwks_is_url) {
            if (jwks_read_file(d, err) < 0)
                goto fail;
            d->jwks_last_ms = now_ms(d);
        }
    }
    if (sh->rl != NULL)
        script_sha1(rp_ratelimit_lua, d->rl_sha);
    return d;
fail:
    free_parts(d);
    return NULL;
}

int rp_dispatcher_start(rp_dispatcher_t *d, rp_err_t *err)
{
    const rp_dispatcher_cfg_t *cfg = d->cfg;
    rp_pg_opts_t po = {
        .query_timeout_ms = 10000,
        .application_name = "ragpool-dispatcher",
    };
    d->pg = rp_pg_new(d->loop, cfg->database_url, &po, err);
    if (d->pg == NULL)
        return err->code ? err->code : RP_EINVAL;
    rp_pg_start(d->pg);

    rp_producer_opts_t prod = {
        .queue = cfg->queue,
        .database_url = cfg->database_url,
        .redis_url = cfg->redis_url,
        .redis_stream = cfg->redis_stream,
        .redis_group = cfg->redis_group,
        .timeout_ms = cfg->enqueue_timeout_ms,
    };
    d->producer = rp_producer_new(d->loop, &prod, err);
    if (d->producer == NULL)
        return err->code ? err->code : RP_EINVAL;
    int rc = rp_producer_start(d->producer);
    if (rc < 0)
        return rp_err_set(err, rc, "cannot start the %s producer", cfg->queue);

    const char *rl_url = rp_dispatcher_cfg_ratelimit_redis(cfg);
    if (d->sh->rl != NULL && rl_url != NULL) {
        rp_redis_opts_t ro = {.command_timeout_ms = LIMIT_TIMEOUT_MS};
        d->rl_redis = rp_redis_new(d->loop, rl_url, &ro, err);
        if (d->rl_redis == NULL)
            return err->code ? err->code : RP_EINVAL;
        rp_redis_start(d->rl_redis);
    }

    if (d->jwks_is_url) {
        rp_http_opts_t ho = {.connect_timeout_ms = JWKS_TIMEOUT_MS};
        d->http = rp_http_new(d->loop, &ho, err);
        if (d->http == NULL)
            return err->code ? err->code : RP_EINVAL;
        jwks_refresh(d);
    }
    uv_timer_init(d->loop, &d->jwks_timer);
    d->jwks_timer.data = d;
    d->jwks_timer_on = 1;
    if (cfg->jwks != NULL && cfg->jwks[0] != '\0' && cfg->jwks_refresh_ms > 0)
        uv_timer_start(&d->jwks_timer, on_jwks_timer, (uint64_t)cfg->jwks_refresh_ms,
                       (uint64_t)cfg->jwks_refresh_ms);
    uv_timer_init(d->loop, &d->drain_timer);
    d->drain_timer.data = d;
    d->drain_timer_on = 1;

    /* The server's own body limit sits above ours, so a body slightly too
     * large still gets our JSON 413; far larger ones are cut off early. */
    rp_httpd_opts_t ho = {
        .host = cfg->host,
        .port = d->index > 0 && d->sh->port > 0 ? d->sh->port : (int)cfg->port,
        .max_body_bytes = (size_t)cfg->max_body_bytes * 2 + 4096,
        .reuse_port = d->sh->nthreads > 1,
        .handler = on_request,
        .data = d,
    };
    d->httpd = rp_httpd_new(d->loop, &ho, err);
    if (d->httpd == NULL)
        return err->code ? err->code : RP_EINVAL;
    rc = rp_httpd_start(d->httpd, err);
    if (rc == 0 && d->index == 0)
        d->sh->port = rp_httpd_port(d->httpd);
    return rc;
}

int rp_dispatcher_port(const rp_dispatcher_t *d)
{
    return d->httpd != NULL ? rp_httpd_port(d->httpd) : -1;
}

static void on_httpd_closed(void *data)
{
    rp_dispatcher_t *d = data;
    void (*done)(void *) = d->done;
    void *done_data = d->done_data;
    free_parts(d);
    if (done != NULL)
        done(done_data);
}

static void part_closed(rp_dispatcher_t *d)
{
    if (--d->pending_closes > 0)
        return;
    if (d->httpd != NULL)
        rp_httpd_close(d->httpd, on_httpd_closed, d);
    else
        on_httpd_closed(d);
}

static void on_part_closed(void *data)
{
    part_closed(data);
}

static void on_timer_closed(uv_handle_t *h)
{
    part_closed(h->data);
}

static void close_all(rp_dispatcher_t *d)
{
    if (d->closing)
        return;
    d->closing = 1;
    rp_log_info("dispatcher.closing", NULL, "%zu requests in flight", d->inflight);
    /* One extra count so nothing finishes before every close is started. */
    d->pending_closes = 1;
    if (d->producer != NULL) {
        d->pending_closes++;
        rp_producer_close(d->producer, on_part_closed, d);
    }
    if (d->pg != NULL) {
        d->pending_closes++;
        rp_pg_close(d->pg, on_part_closed, d);
    }
    if (d->rl_redis != NULL) {
        d->pending_closes++;
        rp_redis_close(d->rl_redis, on_part_closed, d);
    }
    if (d->http != NULL) {
        d->pending_closes++;
        rp_http_close(d->http, on_part_closed, d);
    }
    if (d->jwks_timer_on) {
        d->jwks_timer_on = 0;
        d->pending_closes++;
        uv_close((uv_handle_t *)&d->jwks_timer, on_timer_closed);
    }
    if (d->drain_timer_on) {
        d->drain_timer_on = 0;
        d->pending_closes++;
        uv_close((uv_handle_t *)&d->drain_timer, on_timer_closed);
    }
    part_closed(d);
}

static void on_drain_deadline(uv_timer_t *t)
{
    rp_dispatcher_t *d = t->data;
    if (d->inflight > 0)
        rp_log_warn("dispatcher.drain_timeout", NULL, "%zu requests still in flight", d->inflight);
    close_all(d);
}

void rp_dispatcher_shutdown(rp_dispatcher_t *d, void (*done)(void *data), void *data)
{
    if (d->draining)
        return;
    d->draining = 1;
    d->done = done;
    d->done_data = data;
    rp_log_info("dispatcher.draining", NULL, "%zu requests in flight", d->inflight);
    if (d->httpd != NULL)
        rp_httpd_stop(d->httpd);
    if (d->jwks_timer_on)
        uv_timer_stop(&d->jwks_timer);
    if (d->inflight == 0 || !d->drain_timer_on) {
        close_all(d);
        return;
    }
    uv_timer_start(&d->drain_timer, on_drain_deadline, (uint64_t)d->cfg->drain_timeout_ms, 0);
}
