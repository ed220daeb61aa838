/*
 * job.h: the job codec.  A chat job's payload is JSON in the Postgres queue
 * (and msgpack in the Redis queue); this module validates it and turns it
 * into an rp_chat_payload_t, or says precisely what is wrong so the job can
 * be dead-lettered with that reason.  The contract of the payload is in
 * docs/CONTRACTS.md.
 */
#ifndef RP_JOB_H
#define RP_JOB_H

#include <stddef.h>

#include "err.h"

#define RP_JOB_MESSAGE_MAX 32768 /* bytes */
#define RP_JOB_USER_ID_MAX 64    /* bytes of the textual user id */

typedef struct rp_chat_payload {
    char *user_id;          /* uuid or integer, as text; owned */
    char *message;          /* owned, 1..RP_JOB_MESSAGE_MAX bytes */
    /* Options: a negative value (or NULL) means "not given, use the default". */
    int match_count;        /* 1..50 */
    double match_threshold; /* -1..1; NAN when not given */
    int history_count;      /* 0..50 */
    char *model;            /* chat model; owned */
    int max_tokens;         /* 1..32768 */
    double temperature;     /* 0..2; NAN when not given */
} rp_chat_payload_t;

/* Decode and validate a chat payload from JSON text.  On success fills out
 * (free with rp_chat_payload_free) and returns 0; otherwise returns RP_EINVAL
 * with err naming the field and the problem, and out holds nothing to free. */
int rp_chat_payload_decode_json(const char *json, size_t len, rp_chat_payload_t *out,
                                rp_err_t *err);

/* Encode as JSON text; returns an owned string (free with free()) or NULL. */
char *rp_chat_payload_encode_json(const rp_chat_payload_t *p);

/* Free what a payload owns and zero it. */
void rp_chat_payload_free(rp_chat_payload_t *p);

/* True when s is a user id ragpool accepts: a uuid (8-4-4-4-12 hex) or a
 * decimal integer that fits in 64 bits. */
int rp_user_id_valid(const char *s);

#endif
