/*
 * httpd_testclient.h: a tiny blocking HTTP/1.1 client for unit tests that
 * run a server on a loop in the main thread and talk to it from a second
 * thread with plain sockets.
 *
 * It reads one response at a time (Content-Length, chunked, or until the
 * connection closes), keeping extra bytes for the next response so
 * pipelined answers can be read one by one.  Everything is static: include
 * it in one test file.  It never calls cmocka (assertions belong on the
 * main thread): functions return -1 on failure and tests record results.
 */
#ifndef RP_HTTPD_TESTCLIENT_H
#define RP_HTTPD_TESTCLIENT_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define TC_BUF (4 << 20)

typedef struct tc_conn {
    int fd;
    char *buf;
    size_t len;
} tc_conn_t;

typedef struct tc_resp {
    int status;
    char head[8192]; /* status line and headers, NUL-terminated */
    char *body;      /* malloc'd, NUL-terminated, decoded when chunked */
    size_t blen;
    int chunked;
} tc_resp_t;

static inline int tc_connect(tc_conn_t *c, int port)
{
    c->buf = malloc(TC_BUF);
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || c->buf == NULL)
        return -1;
    struct timeval tv = {5, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return connect(c->fd, (struct sockaddr *)&a, sizeof(a));
}

static inline void tc_close(tc_conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
}

static inline int tc_send(tc_conn_t *c, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static inline int tc_sends(tc_conn_t *c, const char *s)
{
    return tc_send(c, s, strlen(s));
}

/* Read more bytes into the buffer; 0 on EOF, -1 on error or timeout. */
static inline int tc_fill(tc_conn_t *c)
{
    if (c->len >= TC_BUF)
        return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, TC_BUF - c->len, 0);
    if (n < 0)
        return -1;
    c->len += (size_t)n;
    return n > 0 ? 1 : 0;
}

/* Remove the first n buffered bytes. */
static inline void tc_consume(tc_conn_t *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* 1 when the connection is closed by the peer (EOF) within the timeout. */
static inline int tc_wait_closed(tc_conn_t *c)
{
    for (;;) {
        int r = tc_fill(c);
        if (r == 0)
            return 1;
        if (r < 0)
            return errno == ECONNRESET ? 1 : 0;
    }
}

static inline const char *tc_header(const tc_resp_t *r, const char *name)
{
    static char value[1024];
    size_t n = strlen(name);
    const char *p = strstr(r->head, "\r\n");
    while (p != NULL && p[2] != '\0') {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t vl = e != NULL ? (size_t)(e - v) : strlen(v);
            if (vl >= sizeof(value))
                vl = sizeof(value) - 1;
            memcpy(value, v, vl);
            value[vl] = '\0';
            return value;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

/* Read one response; skips 1xx answers.  Returns 0 or -1. */
static inline int tc_read(tc_conn_t *c, tc_resp_t *r)
{
    memset(r, 0, sizeof(*r));
    for (;;) {
        char *end = c->len > 0 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
        if (end != NULL) {
            size_t hl = (size_t)(end - c->buf) + 4;
            if (hl >= sizeof(r->head))
                return -1;
            memcpy(r->head, c->buf, hl);
            r->head[hl] = '\0';
            tc_consume(c, hl);
            if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1)
                return -1;
            if (r->status >= 100 && r->status < 200)
                continue;
            break;
        }
        if (tc_fill(c) <= 0)
            return -1;
    }
    const char *te = tc_header(r, "Transfer-Encoding");
    const char *cl = tc_header(r, "Content-Length");
    if (te != NULL && strcasecmp(te, "chunked") == 0) {
        r->chunked = 1;
        r->body = malloc(TC_BUF);
        for (;;) {
            char *eol;
            while ((eol = c->len > 0 ? memmem(c->buf, c->len, "\r\n", 2) : NULL) == NULL)
                if (tc_fill(c) <= 0)
                    return -1;
            size_t sz = strtoul(c->buf, NULL, 16);
            size_t skip = (size_t)(eol - c->buf) + 2;
            while (c->len < skip + sz + 2)
                if (tc_fill(c) <= 0)
                    return -1;
            memcpy(r->body + r->blen, c->buf + skip, sz);
            r->blen += sz;
            tc_consume(c, skip + sz + 2);
            if (sz == 0)
                break;
        }
        r->body[r->blen] = '\0';
        return 0;
    }
    if (cl != NULL) {
        size_t want = strtoul(cl, NULL, 10);
        while (c->len < want)
            if (tc_fill(c) <= 0)
                return -1;
        r->body = malloc(want + 1);
        memcpy(r->body, c->buf, want);
        r->body[want] = '\0';
        r->blen = want;
        tc_consume(c, want);
        return 0;
    }
    /* Until the connection closes. */
    while (tc_fill(c) > 0)
        ;
    r->body = malloc(c->len + 1);
    memcpy(r->body, c->buf, c->len);
    r->body[c->len] = '\0';
    r->blen = c->len;
    c->len = 0;
    return 0;
}

static inline void tc_resp_free(tc_resp_t *r)
{
    free(r->body);
    r->body = NULL;
}

#endif
