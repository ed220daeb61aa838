/*
 * err.h: error codes and the error record shared by every ragpool module.
 *
 * Functions return 0 on success and a negative RP_E* code on failure.
 * Functions that return a pointer return NULL on failure and fill an
 * rp_err_t, whose message is a complete sentence fit for a log line or a
 * start-up message.  Library errors (CURLcode, SQLSTATE, hiredis err) are
 * translated into these codes once, by the module that wraps the library.
 */
#ifndef RP_ERR_H
#define RP_ERR_H

#include <stddef.h>

enum {
    RP_OK = 0,
    RP_ENOMEM = -1,     /* out of memory */
    RP_EINVAL = -2,     /* invalid argument, setting or input */
    RP_EIO = -3,        /* transport failure: connect, reset, DNS, TLS */
    RP_ETIMEDOUT = -4,  /* a deadline passed */
    RP_EPROTO = -5,     /* the peer answered something we cannot use */
    RP_EDB = -6,        /* the database reported an error */
    RP_ECLOSED = -7,    /* the object is closing or closed */
    RP_ECANCELED = -8,  /* the operation was cancelled by its owner */
    RP_ELIMIT = -9,     /* a limit (in-flight, size, rate) was reached */
    RP_ENOTFOUND = -10, /* no such object */
};

#define RP_ERR_MSG_MAX 256

typedef struct rp_err {
    int code;                 /* one of the RP_E* codes, 0 when no error */
    char msg[RP_ERR_MSG_MAX]; /* NUL-terminated sentence */
} rp_err_t;

/* Fill err (which may be NULL) with code and a printf-style message, and
 * return code, so a caller can write `return rp_err_set(err, RP_EINVAL, ...)`. */
int rp_err_set(rp_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clear err to "no error". */
void rp_err_clear(rp_err_t *err);

/* A static, lower-case name for an RP_E* code ("timed out", "database error"). */
const char *rp_strerror(int code);

#endif
