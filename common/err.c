/*
 * err.c: the error record.  Never allocates, so it is safe on the
 * out-of-memory path.
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int rp_err_set(rp_err_t *err, int code, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void rp_err_clear(rp_err_t *err)
{
    if (err != NULL) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

const char *rp_strerror(int code)
{
    switch (code) {
    case RP_OK:
        return "success";
    case RP_ENOMEM:
        return "out of memory";
    case RP_EINVAL:
        return "invalid input";
    case RP_EIO:
        return "transport error";
    case RP_ETIMEDOUT:
        return "timed out";
    case RP_EPROTO:
        return "protocol error";
    case RP_EDB:
        return "database error";
    case RP_ECLOSED:
        return "closed";
    case RP_ECANCELED:
        return "cancelled";
    case RP_ELIMIT:
        return "limit reached";
    case RP_ENOTFOUND:
        return "not found";
    default:
        return "unknown error";
    }
}
