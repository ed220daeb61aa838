/*
 * stream.c: coalesced partial answers (see stream.h).
 *
 * Every job stream with unpushed text that is not yet due sits in the
 * `waiting` list; one repeating timer (a quarter of the interval) pushes
 * those whose interval has passed and stops when the list is empty, so an
 * idle worker has no timer running.  Chunks are appended as JSON to one
 * outgoing array that rp_stream_flush sends at the end of the loop turn;
 * nothing here blocks, and a push that fails is logged and dropped (the
 * final conversations row is the record, partial text is a courtesy).
 */
#include "stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "pg.h"

struct rp_stream_job {
    rp_stream_t *s;
    rp_stream_job_t *prev, *next; /* in s->waiting */
    int waiting;
    int attempt;
    uint32_t seq;       /* chunks pushed */
    uint64_t last_push; /* loop ms of the last push; 0 = none yet */
    rp_buf_t pending;   /* text not pushed yet */
    char job_id[40];
    char user_id[]; /* NUL-terminated */
};

struct rp_stream {
    uv_loop_t *loop;
    rp_pg_t *pg;
    uint64_t interval;
    uv_timer_t tick;
    int ticking;
    rp_stream_job_t *waiting;
    rp_buf_t out; /* "[chunk,chunk" while nout > 0 */
    size_t nout;
    uint64_t chunks, statements, failed;
    int closing, handles;
    void (*close_cb)(void *data);
    void *close_data;
};

static void waiting_remove(rp_stream_job_t *sj)
{
    if (!sj->waiting)
        return;
    rp_stream_t *s = sj->s;
    if (sj->prev != NULL)
        sj->prev->next = sj->next;
    else
        s->waiting = sj->next;
    if (sj->next != NULL)
        sj->next->prev = sj->prev;
    sj->prev = sj->next = NULL;
    sj->waiting = 0;
}

/* Append one chunk with the pending text to the outgoing array. */
static void emit(rp_stream_job_t *sj, int done)
{
    rp_stream_t *s = sj->s;
    waiting_remove(sj);
    sj->seq++;
    sj->last_push = uv_now(s->loop);
    rp_buf_t *b = &s->out;
    rp_buf_puts(b, s->nout++ == 0 ? "[{\"topic\":\"ragpool:user:" : ",{\"topic\":\"ragpool:user:");
    rp_buf_json_escape(b, sj->user_id, strlen(sj->user_id));
    rp_buf_puts(b, "\",\"user_id\":\"");
    rp_buf_json_escape(b, sj->user_id, strlen(sj->user_id));
    rp_buf_printf(b, "\",\"job_id\":\"%s\",\"attempt\":%d,\"seq\":%u,\"text\":\"", sj->job_id,
                  sj->attempt, sj->seq);
    if (sj->pending.len > 0)
        rp_buf_json_escape(b, sj->pending.data, sj->pending.len);
    rp_buf_puts(b, done ? "\",\"done\":true}" : "\",\"done\":false}");
    rp_buf_reset(&sj->pending);
    s->chunks++;
}

static void tick_cb(uv_timer_t *t)
{
    rp_stream_t *s = t->data;
    uint64_t now = uv_now(s->loop);
    rp_stream_job_t *sj = s->waiting;
    while (sj != NULL) {
        rp_stream_job_t *next = sj->next;
        if (now - sj->last_push >= s->interval)
            emit(sj, 0);
        sj = next;
    }
    if (s->waiting == NULL) {
        uv_timer_stop(&s->tick);
        s->ticking = 0;
    }
}

rp_stream_job_t *rp_stream_job_new(rp_stream_t *s, const char *job_id, int attempt,
                                   const char *user_id)
{
    size_t ul = strlen(user_id);
    rp_stream_job_t *sj = calloc(1, sizeof(*sj) + ul + 1);
    if (sj == NULL)
        return NULL;
    sj->s = s;
    sj->attempt = attempt;
    snprintf(sj->job_id, sizeof(sj->job_id), "%s", job_id);
    memcpy(sj->user_id, user_id, ul + 1);
    return sj;
}

void rp_stream_job_text(rp_stream_job_t *sj, const char *text, size_t len)
{
    rp_stream_t *s = sj->s;
    rp_buf_append(&sj->pending, text, len);
    uint64_t now = uv_now(s->loop);
    if (s->interval == 0 || sj->seq == 0 || now - sj->last_push >= s->interval) {
        emit(sj, 0);
        return;
    }
    if (!sj->waiting) {
        sj->waiting = 1;
        sj->prev = NULL;
        sj->next = s->waiting;
        if (s->waiting != NULL)
            s->waiting->prev = sj;
        s->waiting = sj;
    }
    if (!s->ticking && !s->closing) {
        uint64_t period = s->interval / 4 > 0 ? s->interval / 4 : 1;
        uv_timer_start(&s->tick, tick_cb, period, period);
        s->ticking = 1;
    }
}

uint32_t rp_stream_job_pushed(const rp_stream_job_t *sj)
{
    return sj->seq;
}

static void job_free(rp_stream_job_t *sj)
{
    waiting_remove(sj);
    rp_buf_free(&sj->pending);
    free(sj);
}

void rp_stream_job_finish(rp_stream_job_t *sj)
{
    emit(sj, 1);
    job_free(sj);
}

void rp_stream_job_end(rp_stream_job_t *sj)
{
    if (sj == NULL)
        return;
    if (sj->pending.len > 0)
        emit(sj, 0);
    job_free(sj);
}

static void maybe_close(rp_stream_t *s);

static void push_done(void *data, const rp_pg_res_t *res)
{
    rp_stream_t *s = data;
    int err = rp_pg_res_error(res);
    if (err != 0) {
        /* Log the first failure and then every 1000th: a database that
         * refuses pushes must not flood the log. */
        if (s->failed++ % 1000 == 0)
            rp_log_warn("stream.push_failed", NULL, "%s %s (%llu failed pushes so far)",
                        rp_strerror(err), rp_pg_res_message(res), (unsigned long long)s->failed);
    }
    if (s->closing)
        maybe_close(s);
}

void rp_stream_flush(rp_stream_t *s)
{
    if (s->nout == 0)
        return;
    rp_buf_putc(&s->out, ']');
    if (!rp_buf_failed(&s->out)) {
        const char *params[1] = {s->out.data};
        if (rp_pg_query(s->pg, "SELECT ragpool.stream_push($1::jsonb)", 1, params, 0, push_done,
                        s) == 0)
            s->statements++;
    } else {
        rp_log_warn("stream.push_failed", NULL, "out of memory: %zu chunks dropped", s->nout);
    }
    rp_buf_reset(&s->out);
    s->out.failed = 0;
    s->nout = 0;
}

uint64_t rp_stream_chunks(const rp_stream_t *s)
{
    return s->chunks;
}

uint64_t rp_stream_statements(const rp_stream_t *s)
{
    return s->statements;
}

rp_stream_t *rp_stream_new(uv_loop_t *loop, const char *conninfo, long interval_ms, rp_err_t *err)
{
    rp_stream_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory");
        return NULL;
    }
    s->loop = loop;
    s->interval = interval_ms > 0 ? (uint64_t)interval_ms : 0;
    rp_pg_opts_t o = {
        .connect_timeout_ms = 10000,
        .query_timeout_ms = 10000,
        .reconnect_min_ms = 100,
        .reconnect_max_ms = 5000,
        .application_name = "ragpool-worker-stream",
    };
    s->pg = rp_pg_new(loop, conninfo, &o, err);
    if (s->pg == NULL) {
        free(s);
        return NULL;
    }
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    return s;
}

int rp_stream_start(rp_stream_t *s)
{
    return rp_pg_start(s->pg);
}

static void closed_one(void *data)
{
    rp_stream_t *s = data;
    if (--s->handles > 0)
        return;
    void (*cb)(void *) = s->close_cb;
    void *cb_data = s->close_data;
    rp_buf_free(&s->out);
    free(s);
    if (cb != NULL)
        cb(cb_data);
}

static void tick_closed(uv_handle_t *h)
{
    closed_one(h->data);
}

/* Close once the pushes in flight have answered (closing the connection
 * would cancel them, and they hold the last words of answers). */
static void maybe_close(rp_stream_t *s)
{
    if (s->handles > 0 || rp_pg_pending(s->pg) > 0)
        return;
    s->handles = 2;
    uv_close((uv_handle_t *)&s->tick, tick_closed);
    rp_pg_close(s->pg, closed_one, s);
}

void rp_stream_close(rp_stream_t *s, void (*close_cb)(void *data), void *data)
{
    if (s->closing)
        return;
    s->closing = 1;
    s->close_cb = close_cb;
    s->close_data = data;
    uv_timer_stop(&s->tick);
    s->ticking = 0;
    rp_stream_flush(s);
    maybe_close(s);
}
