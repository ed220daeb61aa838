/*
 * redis.c: one asynchronous Redis connection (hiredis 0.14.1) on a libuv
 * loop, with our own event adapter, timers and reconnection.  See redis.h
 * for the contract and RECIPES.md section 3 for the traps it avoids.
 *
 * Shape.  The connection is a state machine (redis_set_state is the only
 * writer): IDLE -> CONNECTING (name lookup, TCP connect) -> HANDSHAKE (AUTH,
 * SELECT or PING) -> UP; any failure -> WAITING (backoff timer) ->
 * CONNECTING again; CLOSING -> CLOSED once rp_redis_close ran.  A command
 * is on exactly one of two lists:
 *   - `waiting`: submitted, not yet handed to hiredis (the connection is not
 *     up, or it goes on the next loop turn: the `sender` idle handle hands
 *     over everything one turn submitted, so hiredis is never entered from
 *     a caller's stack and one write carries many commands; an idle handle
 *     rather than a prepare handle because a prepare handle armed from
 *     another prepare callback would wait for the next wake-up);
 *   - `inflight`: handed to hiredis (redisAsyncFormattedCommand with the
 *     command as privdata).  From then on hiredis owns the command's
 *     lifetime: it calls on_reply exactly once, with the reply or, when the
 *     context goes away, with NULL, and only there is the command freed.  A
 *     command answered earlier (deadline, close) stays on the list as an
 *     orphan (cb == NULL) until then.
 * Deadlines sit on a third list sorted by time (O(1) for commands sharing a
 * timeout) served by one uv_timer.  An in-flight command whose deadline
 * passes is answered RP_ETIMEDOUT and the connection is dropped
 * (redisAsyncFree): Redis answers in order, so a stuck command blocks all
 * behind it, and a new connection is the only way past it.  The others in
 * flight then get NULL replies, reported as RP_EIO.
 *
 * hiredis contexts.  hiredis frees a context itself after a failed connect
 * and after any disconnect; we free one (redisAsyncFree) only when we drop
 * it on purpose, after clearing r->ac so that nothing reaches it again.  A
 * context that hiredis tears down is noticed at the first of: a NULL reply,
 * onConnect(REDIS_ERR), the adapter's cleanup hook, onDisconnect; that
 * first notice clears r->ac ("detach") and the cleanup hook, which runs
 * after every pending reply callback, turns it into a reconnect
 * (redis_fail).  Commands are never sent from hiredis' callbacks, and user
 * code is never called from onConnect (where redisAsyncFree is unsafe in
 * 0.14): the handshake starts from the `sender`.
 *
 * The adapter.  Each context gets a redis_poll_t holding a uv_poll_t on its
 * socket; hiredis' addRead/delRead/addWrite/delWrite hooks change the
 * watched events, a poll error (status < 0, libuv stopped the handle) is
 * passed to hiredis as readable and writable so that it reads the error
 * and tears down, and the cleanup hook clears the back-pointers and closes
 * the handle before hiredis closes the socket.  The poll is freed in its
 * close callback; the rp_redis_t is freed when its last handle is closed,
 * which is always after the context it served is gone.
 *
 * Replies are handed to callbacks as rp_redis_reply_t pointers that are the
 * hiredis replies themselves (no copy): only this file looks inside.
 */
#include "redis.h"

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "log.h"

typedef enum {
    R_IDLE = 0,
    R_CONNECTING,
    R_HANDSHAKE,
    R_UP,
    R_WAITING,
    R_CLOSING,
    R_CLOSED,
} redis_state_t;

static const char *const redis_state_names[] = {"idle",    "connecting", "handshake", "up",
                                                "waiting", "closing",    "closed"};

typedef enum { CMD_WAITING = 0, CMD_INFLIGHT } cmd_where_t;

/* Handshake commands, sent on every (re)connect before anything else. */
typedef enum { HS_NONE = 0, HS_AUTH, HS_SELECT, HS_PING } hs_kind_t;

typedef struct redis_cmd redis_cmd_t;
struct redis_cmd {
    redis_cmd_t *prev, *next;       /* waiting list or in-flight list */
    redis_cmd_t *dl_prev, *dl_next; /* deadline list (deadline != 0) */
    rp_redis_t *r;
    uint64_t deadline; /* loop time in ms; 0 = none */
    rp_redis_cb cb;    /* NULL once answered */
    void *data;
    cmd_where_t where;
    hs_kind_t hs; /* HS_NONE for the owner's commands */
    size_t len;
    char buf[]; /* the command in RESP */
};

typedef struct cmd_list {
    redis_cmd_t *head, *tail;
    size_t n;
} cmd_list_t;

typedef struct redis_poll {
    uv_poll_t handle;
    rp_redis_t *r;
    redisAsyncContext *ac; /* NULL once hiredis cleaned up */
    int events;            /* events requested, 0 when stopped */
    int closing;
} redis_poll_t;

struct rp_redis {
    uv_loop_t *loop;
    redis_state_t state;
    rp_redis_opts_t opts;

    /* from the URL */
    char *host; /* as written (without brackets) */
    int port;
    char *user;     /* NULL = none */
    char *password; /* NULL = none */
    long db;
    int resolve; /* host is a name: look it up on the thread pool */

    redisAsyncContext *ac;       /* the live context, NULL when none */
    uv_getaddrinfo_t *resolving; /* lookup in progress, NULL when none */
    uv_timer_t timer;            /* connect deadline / reconnect backoff */
    uv_timer_t qtimer;           /* earliest command deadline */
    uint64_t qtimer_due;
    uv_idle_t sender; /* deferred sends: an idle handle, so the loop never blocks in poll
                       * while it is armed, whatever phase armed it */

    cmd_list_t waiting;
    cmd_list_t inflight;
    redis_cmd_t *dl_head, *dl_tail;
    size_t npending; /* owner commands whose callback has not run */
    int hs_left;     /* handshake replies still expected */

    rp_backoff_t backoff;
    int attempt; /* failed attempts since the last success */
    uint32_t rnd;
    int nconnects;
    int nhandles;
    int lost_by_hiredis; /* detached by a hiredis teardown, not yet handled */
    int auth_failed;     /* the last failure was a refused AUTH/NOAUTH */
    int auth_logged;     /* that failure has been logged */
    int reconnect_now;   /* the next attempt starts without backoff */
    char why[256];

    void (*close_cb)(void *data);
    void *close_data;
};

/* ---------------------------------------------------------------- lists */

static void list_push(cmd_list_t *l, redis_cmd_t *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->n++;
}

static void list_unlink(cmd_list_t *l, redis_cmd_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->n--;
}

/* ------------------------------------------------------------ deadlines */

static void qtimer_cb(uv_timer_t *t);

/* Arm qtimer for the earliest deadline unless it already fires sooner;
 * removing a deadline never re-arms (an early wake-up just re-arms). */
static void qtimer_arm(rp_redis_t *r)
{
    if (r->dl_head == NULL || r->state >= R_CLOSING)
        return;
    uint64_t due = r->dl_head->deadline;
    if (r->qtimer_due != 0 && r->qtimer_due <= due)
        return;
    uint64_t now = uv_now(r->loop);
    r->qtimer_due = due;
    uv_timer_start(&r->qtimer, qtimer_cb, due > now ? due - now : 1, 0);
}

static void dl_insert(rp_redis_t *r, redis_cmd_t *c)
{
    redis_cmd_t *after = r->dl_tail;
    while (after && after->deadline > c->deadline)
        after = after->dl_prev;
    c->dl_prev = after;
    c->dl_next = after ? after->dl_next : r->dl_head;
    if (c->dl_next)
        c->dl_next->dl_prev = c;
    else
        r->dl_tail = c;
    if (after)
        after->dl_next = c;
    else
        r->dl_head = c;
    qtimer_arm(r);
}

static void dl_remove(rp_redis_t *r, redis_cmd_t *c)
{
    if (c->deadline == 0)
        return;
    if (c->dl_prev)
        c->dl_prev->dl_next = c->dl_next;
    else
        r->dl_head = c->dl_next;
    if (c->dl_next)
        c->dl_next->dl_prev = c->dl_prev;
    else
        r->dl_tail = c->dl_prev;
    c->dl_prev = c->dl_next = NULL;
    c->deadline = 0;
}

/* -------------------------------------------------------------- helpers */

static void redis_set_state(rp_redis_t *r, redis_state_t s)
{
    if (r->state == s)
        return;
    if (rp_log_enabled(RP_LOG_DEBUG))
        rp_log_debug("redis.state", NULL, "%s -> %s", redis_state_names[r->state],
                     redis_state_names[s]);
    r->state = s;
}

/* Remember why the connection failed, as one line. */
static void redis_set_why(rp_redis_t *r, const char *fmt_prefix, const char *msg)
{
    if (msg == NULL || *msg == '\0')
        msg = "connection lost";
    snprintf(r->why, sizeof(r->why), "%s%s", fmt_prefix ? fmt_prefix : "", msg);
    for (char *p = r->why; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
}

static size_t u64_digits(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static char *put_u64(char *p, uint64_t v)
{
    size_t n = u64_digits(v);
    for (size_t i = n; i > 0; i--) {
        p[i - 1] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + n;
}

/* Build a command holding argv in RESP ("*<argc>\r\n" then "$<len>\r\n<arg>\r\n"
 * per argument), in one allocation. */
static redis_cmd_t *cmd_make(int argc, const char *const *argv, const size_t *argvlen)
{
    size_t total = 1 + u64_digits((uint64_t)argc) + 2;
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen ? argvlen[i] : strlen(argv[i]);
        total += 1 + u64_digits(n) + 2 + n + 2;
    }
    redis_cmd_t *c = malloc(sizeof(*c) + total);
    if (c == NULL)
        return NULL;
    memset(c, 0, sizeof(*c));
    char *p = c->buf;
    *p++ = '*';
    p = put_u64(p, (uint64_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen ? argvlen[i] : strlen(argv[i]);
        *p++ = '$';
        p = put_u64(p, n);
        *p++ = '\r';
        *p++ = '\n';
        if (n > 0)
            memcpy(p, argv[i], n);
        p += n;
        *p++ = '\r';
        *p++ = '\n';
    }
    c->len = total;
    return c;
}

/* Run c's callback once with an error and no reply. */
static void cmd_answer_error(rp_redis_t *r, redis_cmd_t *c, int code)
{
    rp_redis_cb cb = c->cb;
    dl_remove(r, c);
    if (cb == NULL)
        return;
    c->cb = NULL;
    r->npending--;
    cb(c->data, code, NULL);
}

/* ------------------------------------------------------------- handles */

static void redis_maybe_free(rp_redis_t *r)
{
    if (r->state != R_CLOSING || r->nhandles > 0)
        return;
    redis_set_state(r, R_CLOSED);
    void (*cb)(void *) = r->close_cb;
    void *data = r->close_data;
    free(r->host);
    free(r->user);
    if (r->password) {
        memset(r->password, 0, strlen(r->password));
        free(r->password);
    }
    free(r);
    if (cb)
        cb(data);
}

static void handle_closed(uv_handle_t *h)
{
    rp_redis_t *r = h->data;
    r->nhandles--;
    redis_maybe_free(r);
}

static void poll_closed(uv_handle_t *h)
{
    redis_poll_t *p = h->data;
    rp_redis_t *r = p->r;
    free(p);
    r->nhandles--;
    redis_maybe_free(r);
}

static void poll_close(redis_poll_t *p)
{
    if (p->closing)
        return;
    p->closing = 1;
    uv_close((uv_handle_t *)&p->handle, poll_closed);
}

/* ------------------------------------------------------------ adapter */

static void poll_cb(uv_poll_t *h, int status, int events)
{
    redis_poll_t *p = h->data;
    redisAsyncContext *ac = p->ac;
    if (ac == NULL || p->closing)
        return;
    if (status < 0) {
        /* libuv stopped the handle; hiredis must read to see the error
         * (a refused connect, a reset) and tear the context down. */
        p->events = 0;
        events = UV_READABLE | UV_WRITABLE;
    }
    if (events & UV_READABLE)
        redisAsyncHandleRead(ac);
    /* The read may have freed the context (the cleanup hook cleared p->ac). */
    if (p->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(ac);
}

static void ev_want(redis_poll_t *p, int events)
{
    if (p == NULL || p->closing || p->events == events)
        return;
    p->events = events;
    if (events != 0)
        uv_poll_start(&p->handle, events, poll_cb);
    else
        uv_poll_stop(&p->handle);
}

static void ev_add_read(void *privdata)
{
    redis_poll_t *p = privdata;
    if (p)
        ev_want(p, p->events | UV_READABLE);
}

static void ev_del_read(void *privdata)
{
    redis_poll_t *p = privdata;
    if (p)
        ev_want(p, p->events & ~UV_READABLE);
}

static void ev_add_write(void *privdata)
{
    redis_poll_t *p = privdata;
    if (p)
        ev_want(p, p->events | UV_WRITABLE);
}

static void ev_del_write(void *privdata)
{
    redis_poll_t *p = privdata;
    if (p)
        ev_want(p, p->events & ~UV_WRITABLE);
}

static void redis_fail(rp_redis_t *r, redisAsyncContext *to_free, int immediate);

/* hiredis is tearing down ac on its own: forget it (first notice only). */
static void redis_detach(rp_redis_t *r, const redisAsyncContext *ac, const char *prefix)
{
    if (r->ac != ac || ac == NULL)
        return;
    r->ac = NULL;
    r->lost_by_hiredis = 1;
    /* The context's own error: ac->errstr is only copied from it later. */
    redis_set_why(r, prefix, ac->c.err ? ac->c.errstr : ac->errstr);
}

/* Called by hiredis just before it closes the socket and frees ac, after
 * every pending reply callback ran. */
static void ev_cleanup(void *privdata)
{
    redis_poll_t *p = privdata;
    if (p == NULL)
        return;
    redisAsyncContext *ac = p->ac;
    rp_redis_t *r = p->r;
    p->ac = NULL;
    if (ac != NULL)
        ac->ev.data = NULL; /* later hooks of this context do nothing */
    /* Stop watching before hiredis closes the socket. */
    poll_close(p);
    if (ac != NULL)
        redis_detach(r, ac, NULL);
    if (r->lost_by_hiredis) {
        r->lost_by_hiredis = 0;
        redis_fail(r, NULL, 0);
    }
}

/* ------------------------------------------------------ connection loss */

static void redis_connect_start(rp_redis_t *r);

static void timer_retry_cb(uv_timer_t *t)
{
    rp_redis_t *r = t->data;
    if (r->state == R_WAITING)
        redis_connect_start(r);
}

/* The connection or the attempt failed (r->why says why): drop the context
 * when we are the ones dropping it, tell the owner, schedule a reconnect.
 * Commands in flight get RP_EIO from their NULL replies; commands waiting
 * stay queued for the next connection. */
static void redis_fail(rp_redis_t *r, redisAsyncContext *to_free, int immediate)
{
    if (r->state != R_CONNECTING && r->state != R_HANDSHAKE && r->state != R_UP) {
        if (to_free)
            redisAsyncFree(to_free);
        return;
    }
    int was_up = r->state == R_UP;
    uv_timer_stop(&r->timer);
    uv_idle_stop(&r->sender);
    if (r->resolving) {
        uv_cancel((uv_req_t *)r->resolving); /* resolved_cb frees it */
        r->resolving = NULL;
    }
    redis_set_state(r, R_WAITING);
    int n = r->attempt + 1;
    if (r->auth_failed) {
        /* A wrong password does not fix itself: say it once, loudly. */
        if (!r->auth_logged)
            rp_log_error("redis.auth_failed", NULL, "%s:%d: %s", r->host, r->port, r->why);
        r->auth_logged = 1;
    } else if (was_up) {
        rp_log_warn("redis.disconnected", NULL, "%s:%d: %s", r->host, r->port, r->why);
    } else {
        /* While the server stays away, log attempts 1, 2, 4, 8, ... at warn
         * level and the others at debug level. */
        rp_log(((n & (n - 1)) == 0) ? RP_LOG_WARN : RP_LOG_DEBUG, "redis.connect_failed", NULL,
               "%s:%d: attempt %d: %s", r->host, r->port, n, r->why);
    }
    /* NULL replies (RP_EIO) run now, from outside any hiredis callback, or
     * after the current one when we are inside one. */
    if (to_free)
        redisAsyncFree(to_free);
    if (r->state != R_WAITING)
        return; /* closed by a callback */
    if (r->opts.on_disconnect) {
        r->opts.on_disconnect(r->opts.data, r->why);
        if (r->state != R_WAITING)
            return;
    }
    uint64_t d;
    if (immediate || r->reconnect_now) {
        d = 1;
        r->reconnect_now = 0;
    } else {
        r->attempt++;
        d = rp_backoff_delay_ms(&r->backoff, r->attempt + 1, rp_rand32(&r->rnd));
        if (d == 0)
            d = 1;
    }
    uv_timer_start(&r->timer, timer_retry_cb, d, 0);
}

/* Drop the live context on purpose (a deadline, a refused handshake). */
static void redis_drop(rp_redis_t *r, const char *prefix, const char *why, int immediate)
{
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    redis_set_why(r, prefix, why);
    redis_fail(r, ac, immediate);
}

/* ------------------------------------------------------------- replies */

static void redis_up(rp_redis_t *r)
{
    uv_timer_stop(&r->timer);
    redis_set_state(r, R_UP);
    r->attempt = 0;
    r->auth_failed = 0;
    r->auth_logged = 0;
    r->nconnects++;
    rp_log_info("redis.connected", NULL, "%s:%d db %ld, connection %d", r->host, r->port, r->db,
                r->nconnects);
    if (r->opts.on_connect)
        r->opts.on_connect(r->opts.data);
}

static void sender_cb(uv_idle_t *h);

static void redis_kick(rp_redis_t *r)
{
    if (r->state == R_UP || r->state == R_HANDSHAKE)
        uv_idle_start(&r->sender, sender_cb);
}

static void handshake_reply(rp_redis_t *r, redis_cmd_t *c, const redisReply *rep)
{
    if (r->state != R_HANDSHAKE)
        return;
    if (rep->type == REDIS_REPLY_ERROR) {
        const char *msg = rep->str ? rep->str : "error";
        char prefix[64];
        if (c->hs == HS_AUTH) {
            r->auth_failed = 1;
            snprintf(prefix, sizeof(prefix), "authentication refused: ");
        } else if (strncmp(msg, "NOAUTH", 6) == 0) {
            r->auth_failed = 1;
            snprintf(prefix, sizeof(prefix), "authentication required (no password given): ");
        } else if (c->hs == HS_SELECT) {
            snprintf(prefix, sizeof(prefix), "SELECT %ld refused: ", r->db);
        } else {
            snprintf(prefix, sizeof(prefix), "handshake refused: ");
        }
        /* Inside a hiredis callback: redisAsyncFree is deferred by hiredis
         * until this callback returns, which is safe. */
        redis_drop(r, prefix, msg, 0);
        return;
    }
    if (--r->hs_left == 0) {
        redis_up(r);
        if (r->state == R_UP && r->waiting.head)
            redis_kick(r);
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_cmd_t *c = privdata;
    rp_redis_t *r = c->r;
    list_unlink(&r->inflight, c);
    if (reply == NULL) {
        /* The context is going away: ours to forget if hiredis started it. */
        redis_detach(r, ac, NULL);
        if (c->hs == HS_NONE)
            cmd_answer_error(r, c, r->state >= R_CLOSING ? RP_ECANCELED : RP_EIO);
        free(c);
        return;
    }
    if (c->hs != HS_NONE) {
        handshake_reply(r, c, reply);
        free(c);
        return;
    }
    rp_redis_cb cb = c->cb;
    dl_remove(r, c);
    if (cb != NULL) {
        c->cb = NULL;
        r->npending--;
        cb(c->data, 0, (const rp_redis_reply_t *)reply);
    }
    free(c);
}

/* ---------------------------------------------------------- connecting */

static void on_connect(const redisAsyncContext *ac, int status)
{
    rp_redis_t *r = ac->data;
    if (r == NULL || r->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees ac right after this returns. */
        redis_detach(r, ac, NULL);
        return;
    }
    /* Never call user code or redisAsyncFree here (0.14 would use the
     * context after a free): the sender starts the handshake. */
    redis_set_state(r, R_HANDSHAKE);
    r->hs_left = 0;
    redis_kick(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rp_redis_t *r = ac->data;
    if (r != NULL)
        redis_detach(r, ac, NULL);
}

/* Hand c to hiredis.  Returns 0, or -1 when hiredis refused (the context
 * is going away). */
static int redis_send(rp_redis_t *r, redis_cmd_t *c)
{
    if (redisAsyncFormattedCommand(r->ac, on_reply, c, c->buf, c->len) != REDIS_OK)
        return -1;
    c->where = CMD_INFLIGHT;
    list_push(&r->inflight, c);
    return 0;
}

static int redis_send_internal(rp_redis_t *r, hs_kind_t hs, int argc, const char *const *argv)
{
    redis_cmd_t *c = cmd_make(argc, argv, NULL);
    if (c == NULL)
        return RP_ENOMEM;
    c->r = r;
    c->hs = hs;
    if (redis_send(r, c) != 0) {
        free(c);
        return RP_EIO;
    }
    r->hs_left++;
    return 0;
}

static void redis_handshake(rp_redis_t *r)
{
    int rc = 0;
    if (r->password) {
        if (r->user) {
            const char *argv[] = {"AUTH", r->user, r->password};
            rc = redis_send_internal(r, HS_AUTH, 3, argv);
        } else {
            const char *argv[] = {"AUTH", r->password};
            rc = redis_send_internal(r, HS_AUTH, 2, argv);
        }
    }
    if (rc == 0 && r->db != 0) {
        char db[24];
        snprintf(db, sizeof(db), "%ld", r->db);
        const char *argv[] = {"SELECT", db};
        rc = redis_send_internal(r, HS_SELECT, 2, argv);
    }
    /* Without AUTH, a PING finds out now whether the server wants one. */
    if (rc == 0 && r->password == NULL) {
        const char *argv[] = {"PING"};
        rc = redis_send_internal(r, HS_PING, 1, argv);
    }
    if (rc != 0)
        redis_drop(r, NULL, rc == RP_ENOMEM ? "out of memory" : "cannot send the handshake", 0);
}

static void sender_cb(uv_idle_t *h)
{
    rp_redis_t *r = h->data;
    uv_idle_stop(h);
    if (r->state == R_HANDSHAKE && r->hs_left == 0 && r->ac != NULL) {
        redis_handshake(r);
        return;
    }
    if (r->state != R_UP || r->ac == NULL)
        return;
    redis_cmd_t *c;
    while (r->state == R_UP && (c = r->waiting.head) != NULL) {
        list_unlink(&r->waiting, c);
        if (redis_send(r, c) != 0) {
            /* Keep it first in line for the next connection. */
            c->next = r->waiting.head;
            if (r->waiting.head)
                r->waiting.head->prev = c;
            else
                r->waiting.tail = c;
            r->waiting.head = c;
            r->waiting.n++;
            return;
        }
    }
}

static void timer_connect_cb(uv_timer_t *t)
{
    rp_redis_t *r = t->data;
    if (r->state == R_CONNECTING || r->state == R_HANDSHAKE)
        redis_drop(r, NULL, "connect timed out", 0);
}

static void redis_connect_ip(rp_redis_t *r, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, r->port);
    if (ac == NULL) {
        redis_set_why(r, NULL, "out of memory");
        redis_fail(r, NULL, 0);
        return;
    }
    if (ac->err) {
        redis_set_why(r, NULL, ac->errstr);
        redisAsyncFree(ac); /* no hooks, no callbacks yet */
        redis_fail(r, NULL, 0);
        return;
    }
    redis_poll_t *p = calloc(1, sizeof(*p));
    if (p == NULL || uv_poll_init_socket(r->loop, &p->handle, ac->c.fd) != 0) {
        free(p);
        redisAsyncFree(ac);
        redis_set_why(r, NULL, "cannot watch the connection's socket");
        redis_fail(r, NULL, 0);
        return;
    }
    p->handle.data = p;
    p->r = r;
    p->ac = ac;
    r->nhandles++;
    ac->data = r;
    ac->ev.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    r->ac = ac;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Setting the connect callback arms writability: the connect's outcome
     * arrives as the first write event. */
    redisAsyncSetConnectCallback(ac, on_connect);
}

static void resolved_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    rp_redis_t *r = req->data;
    int current = r->resolving == req;
    free(req);
    r->nhandles--;
    if (!current) {
        if (res)
            uv_freeaddrinfo(res);
        redis_maybe_free(r);
        return;
    }
    r->resolving = NULL;
    char ip[64] = "";
    /* Prefer IPv4 (Redis binds 127.0.0.1 by default), else the first. */
    for (int pass = 0; pass < 2 && ip[0] == '\0'; pass++) {
        for (struct addrinfo *ai = res; ai && ip[0] == '\0'; ai = ai->ai_next) {
            if (ai->ai_family == AF_INET)
                uv_ip4_name((const struct sockaddr_in *)(void *)ai->ai_addr, ip, sizeof(ip));
            else if (pass == 1 && ai->ai_family == AF_INET6)
                uv_ip6_name((const struct sockaddr_in6 *)(void *)ai->ai_addr, ip, sizeof(ip));
        }
    }
    if (res)
        uv_freeaddrinfo(res);
    if (ip[0] == '\0') {
        char why[200];
        snprintf(why, sizeof(why), "could not resolve host \"%s\": %s", r->host,
                 status < 0 ? uv_strerror(status) : "no address");
        redis_set_why(r, NULL, why);
        redis_fail(r, NULL, 0);
        return;
    }
    redis_connect_ip(r, ip);
}

static void redis_connect_start(rp_redis_t *r)
{
    redis_set_state(r, R_CONNECTING);
    r->hs_left = 0;
    uv_timer_start(&r->timer, timer_connect_cb, (uint64_t)r->opts.connect_timeout_ms, 0);
    if (!r->resolve) {
        redis_connect_ip(r, r->host);
        return;
    }
    /* hiredis would call getaddrinfo and block the loop. */
    uv_getaddrinfo_t *req = malloc(sizeof(*req));
    if (req == NULL) {
        redis_set_why(r, NULL, "out of memory");
        redis_fail(r, NULL, 0);
        return;
    }
    req->data = r;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(r->loop, req, resolved_cb, r->host, NULL, &hints);
    if (rc != 0) {
        free(req);
        char why[200];
        snprintf(why, sizeof(why), "could not resolve host \"%s\": %s", r->host, uv_strerror(rc));
        redis_set_why(r, NULL, why);
        redis_fail(r, NULL, 0);
        return;
    }
    r->resolving = req;
    r->nhandles++;
}

/* ----------------------------------------------------------- deadlines */

static void qtimer_cb(uv_timer_t *t)
{
    rp_redis_t *r = t->data;
    r->qtimer_due = 0;
    uint64_t now = uv_now(r->loop);
    int stuck = 0;
    redis_cmd_t *c;
    while (r->state < R_CLOSING && (c = r->dl_head) != NULL && c->deadline <= now) {
        if (c->where == CMD_WAITING) {
            list_unlink(&r->waiting, c);
            cmd_answer_error(r, c, RP_ETIMEDOUT);
            free(c);
        } else {
            /* Stays in flight as an orphan until hiredis hands it back. */
            cmd_answer_error(r, c, RP_ETIMEDOUT);
            stuck = 1;
        }
    }
    if (stuck && r->state == R_UP && r->ac != NULL) {
        /* Everything behind the late command waits for it: start over on
         * a new connection at once (the server itself is answering). */
        redis_drop(r, NULL, "a command timed out", 1);
    }
    qtimer_arm(r);
}

/* ------------------------------------------------------------ the URL */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decode [s, s+n) into a new string; NULL on a bad escape or OOM
 * (*bad set for the former). */
static char *pct_decode(const char *s, size_t n, int *bad)
{
    char *out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                free(out);
                *bad = 1;
                return NULL;
            }
            int a = hexval((unsigned char)s[i + 1]), b = hexval((unsigned char)s[i + 2]);
            if (a < 0 || b < 0 || (a == 0 && b == 0)) {
                free(out);
                *bad = 1;
                return NULL;
            }
            out[w++] = (char)(a * 16 + b);
            i += 2;
        } else {
            out[w++] = s[i];
        }
    }
    out[w] = '\0';
    return out;
}

/* Parse redis://[[user]:password@]host[:port][/db].  Messages never show
 * the user information. */
static int parse_url(rp_redis_t *r, const char *url, rp_err_t *err)
{
    if (url == NULL || *url == '\0')
        return rp_err_set(err, RP_EINVAL, "the Redis URL is empty");
    if (strncasecmp(url, "rediss://", 9) == 0)
        return rp_err_set(err, RP_EINVAL,
                          "invalid Redis URL: TLS (rediss://) is not supported; use redis://");
    if (strncasecmp(url, "redis://", 8) != 0)
        return rp_err_set(err, RP_EINVAL,
                          "invalid Redis URL: it must start with redis:// "
                          "(redis://[[user]:password@]host[:port][/db])");
    const char *s = url + 8;
    const char *end = s + strcspn(s, "/?#");
    /* The user information ends at the last '@' before the path. */
    const char *at = NULL;
    for (const char *p = s; p < end; p++)
        if (*p == '@')
            at = p;
    int bad = 0;
    if (at != NULL) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        if (colon == NULL)
            return rp_err_set(err, RP_EINVAL,
                              "invalid Redis URL: the user information has no password "
                              "(write redis://:password@host or redis://user:password@host)");
        if (colon > s) {
            r->user = pct_decode(s, (size_t)(colon - s), &bad);
            if (r->user == NULL)
                goto bad_userinfo;
        }
        r->password = pct_decode(colon + 1, (size_t)(at - colon - 1), &bad);
        if (r->password == NULL)
            goto bad_userinfo;
        if (r->password[0] == '\0') {
            free(r->password);
            r->password = NULL;
            if (r->user)
                return rp_err_set(err, RP_EINVAL,
                                  "invalid Redis URL: a user name needs a password");
        }
        s = at + 1;
    }
    const char *hs = s, *he;
    const char *port_s = NULL;
    if (*s == '[') {
        he = memchr(s, ']', (size_t)(end - s));
        if (he == NULL)
            return rp_err_set(err, RP_EINVAL, "invalid Redis URL: unterminated [IPv6 address]");
        hs = s + 1;
        if (he + 1 < end) {
            if (he[1] != ':')
                return rp_err_set(err, RP_EINVAL,
                                  "invalid Redis URL: unexpected text after the IPv6 address");
            port_s = he + 2;
        }
    } else {
        const char *colon = memchr(s, ':', (size_t)(end - s));
        he = colon ? colon : end;
        if (colon)
            port_s = colon + 1;
    }
    if (he == hs)
        return rp_err_set(err, RP_EINVAL, "invalid Redis URL: the host is missing");
    r->host = strndup(hs, (size_t)(he - hs));
    if (r->host == NULL)
        return rp_err_set(err, RP_ENOMEM, "out of memory");
    r->port = 6379;
    if (port_s != NULL) {
        long port = 0;
        const char *p = port_s;
        if (p == end)
            return rp_err_set(err, RP_EINVAL, "invalid Redis URL: the port is empty");
        for (; p < end; p++) {
            if (*p < '0' || *p > '9' || port > 65535)
                return rp_err_set(err, RP_EINVAL,
                                  "invalid Redis URL: the port must be a number from 1 to 65535");
            port = port * 10 + (*p - '0');
        }
        if (port < 1 || port > 65535)
            return rp_err_set(err, RP_EINVAL,
                              "invalid Redis URL: the port must be a number from 1 to 65535");
        r->port = (int)port;
    }
    r->db = 0;
    const char *rest = end;
    if (*rest == '/') {
        const char *p = rest + 1;
        long db = 0;
        for (; *p && *p != '?' && *p != '#'; p++) {
            if (*p < '0' || *p > '9' || db > 1000000)
                return rp_err_set(err, RP_EINVAL,
                                  "invalid Redis URL: the database (after the host) must be "
                                  "a number, e.g. redis://host:6379/0");
            db = db * 10 + (*p - '0');
        }
        r->db = db;
        rest = p;
    }
    if (*rest != '\0')
        return rp_err_set(err, RP_EINVAL,
                          "invalid Redis URL: query parameters and fragments are not supported");
    unsigned char buf[sizeof(struct in6_addr)];
    r->resolve = !(inet_pton(AF_INET, r->host, buf) == 1 || inet_pton(AF_INET6, r->host, buf) == 1);
    return 0;

bad_userinfo:
    if (bad)
        return rp_err_set(err, RP_EINVAL,
                          "invalid Redis URL: bad %%-escape in the user information");
    return rp_err_set(err, RP_ENOMEM, "out of memory");
}

/* ---------------------------------------------------------------- API */

rp_redis_t *rp_redis_new(uv_loop_t *loop, const char *url, const rp_redis_opts_t *opts,
                         rp_err_t *err)
{
    rp_redis_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        rp_err_set(err, RP_ENOMEM, "out of memory creating a Redis connection");
        return NULL;
    }
    if (parse_url(r, url, err) != 0) {
        free(r->host);
        free(r->user);
        free(r->password);
        free(r);
        return NULL;
    }
    r->loop = loop;
    if (opts)
        r->opts = *opts;
    if (r->opts.connect_timeout_ms <= 0)
        r->opts.connect_timeout_ms = 5000;
    if (r->opts.command_timeout_ms <= 0)
        r->opts.command_timeout_ms = 10000;
    if (r->opts.reconnect_min_ms <= 0)
        r->opts.reconnect_min_ms = 100;
    if (r->opts.reconnect_max_ms <= 0)
        r->opts.reconnect_max_ms = 5000;
    if (r->opts.reconnect_max_ms < r->opts.reconnect_min_ms)
        r->opts.reconnect_max_ms = r->opts.reconnect_min_ms;
    r->backoff.base_ms = (uint64_t)r->opts.reconnect_min_ms;
    r->backoff.max_ms = (uint64_t)r->opts.reconnect_max_ms;
    r->rnd = (uint32_t)(uv_hrtime() ^ (uintptr_t)r) | 1u;
    uv_timer_init(loop, &r->timer);
    uv_timer_init(loop, &r->qtimer);
    uv_idle_init(loop, &r->sender);
    r->timer.data = r;
    r->qtimer.data = r;
    r->sender.data = r;
    r->nhandles = 3;
    return r;
}

int rp_redis_start(rp_redis_t *r)
{
    if (r->state != R_IDLE)
        return r->state >= R_CLOSING ? RP_ECLOSED : 0;
    redis_connect_start(r);
    return 0;
}

int rp_redis_is_up(const rp_redis_t *r)
{
    return r->state == R_UP;
}

size_t rp_redis_pending(const rp_redis_t *r)
{
    return r->npending;
}

const char *rp_redis_last_error(const rp_redis_t *r)
{
    return r->why;
}

int rp_redis_command(rp_redis_t *r, int argc, const char *const *argv, const size_t *argvlen,
                     long timeout_ms, rp_redis_cb cb, void *data)
{
    if (r->state >= R_CLOSING)
        return RP_ECLOSED;
    if (argc < 1 || argv == NULL || cb == NULL)
        return RP_EINVAL;
    for (int i = 0; i < argc; i++)
        if (argv[i] == NULL && (argvlen == NULL || argvlen[i] != 0))
            return RP_EINVAL;
    redis_cmd_t *c = cmd_make(argc, argv, argvlen);
    if (c == NULL)
        return RP_ENOMEM;
    c->r = r;
    c->cb = cb;
    c->data = data;
    c->where = CMD_WAITING;
    list_push(&r->waiting, c);
    r->npending++;
    if (timeout_ms <= 0)
        timeout_ms = r->opts.command_timeout_ms;
    c->deadline = uv_now(r->loop) + (uint64_t)timeout_ms;
    dl_insert(r, c);
    if (r->state == R_UP)
        uv_idle_start(&r->sender, sender_cb);
    return 0;
}

void rp_redis_close(rp_redis_t *r, void (*close_cb)(void *data), void *data)
{
    if (r->state >= R_CLOSING)
        return;
    redis_set_state(r, R_CLOSING);
    r->close_cb = close_cb;
    r->close_data = data;
    uv_timer_stop(&r->timer);
    uv_timer_stop(&r->qtimer);
    uv_idle_stop(&r->sender);
    if (r->resolving) {
        uv_cancel((uv_req_t *)r->resolving);
        r->resolving = NULL;
    }
    /* Answer everything first; commands in flight stay with hiredis until
     * it hands them back (NULL replies) and frees nothing of ours. */
    for (redis_cmd_t *c = r->inflight.head; c; c = c->next)
        if (c->hs == HS_NONE)
            cmd_answer_error(r, c, RP_ECANCELED);
    redis_cmd_t *c;
    while ((c = r->waiting.head) != NULL) {
        list_unlink(&r->waiting, c);
        cmd_answer_error(r, c, RP_ECANCELED);
        free(c);
    }
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    r->lost_by_hiredis = 0;
    if (ac)
        redisAsyncFree(ac); /* deferred by hiredis when inside its callback */
    uv_close((uv_handle_t *)&r->timer, handle_closed);
    uv_close((uv_handle_t *)&r->qtimer, handle_closed);
    uv_close((uv_handle_t *)&r->sender, handle_closed);
}

/* ------------------------------------------------------------ replies */

static const redisReply *as_reply(const rp_redis_reply_t *rep)
{
    return (const redisReply *)(const void *)rep;
}

rp_redis_type_t rp_redis_reply_type(const rp_redis_reply_t *rep)
{
    if (rep == NULL)
        return RP_REDIS_NIL;
    switch (as_reply(rep)->type) {
    case REDIS_REPLY_STRING:
        return RP_REDIS_STRING;
    case REDIS_REPLY_INTEGER:
        return RP_REDIS_INTEGER;
    case REDIS_REPLY_ARRAY:
        return RP_REDIS_ARRAY;
    case REDIS_REPLY_STATUS:
        return RP_REDIS_STATUS;
    case REDIS_REPLY_ERROR:
        return RP_REDIS_ERROR;
    default:
        return RP_REDIS_NIL;
    }
}

const char *rp_redis_reply_str(const rp_redis_reply_t *rep, size_t *len)
{
    const redisReply *r = as_reply(rep);
    if (r == NULL || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS &&
                      r->type != REDIS_REPLY_ERROR)) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = (size_t)r->len;
    return r->str;
}

long long rp_redis_reply_int(const rp_redis_reply_t *rep)
{
    const redisReply *r = as_reply(rep);
    return r != NULL && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
}

size_t rp_redis_reply_len(const rp_redis_reply_t *rep)
{
    const redisReply *r = as_reply(rep);
    return r != NULL && r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
}

const rp_redis_reply_t *rp_redis_reply_at(const rp_redis_reply_t *rep, size_t i)
{
    const redisReply *r = as_reply(rep);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || i >= r->elements)
        return NULL;
    return (const rp_redis_reply_t *)(const void *)r->element[i];
}
