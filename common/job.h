/*
 * job.h: the job codec.  A chat job's payload is JSON in the Postgres queue
 * and msgpack in the Redis queue; this module validates it and turns it
 * into an rp_chat_payload_t, or says precisely what is wrong so the job can
 * be dead-lettered with that reason.  The contract of the payload is in
 * docs/CONTRACTS.md; the Redis stream entry (the msgpack envelope around
 * the payload: id, kind, attempts, enqueue time) is in docs/REDIS.md.
 *
 * Both decoders apply the same rules and report the same messages
 * ("field: what is wrong"); the msgpack one also refuses what msgpack can
 * carry and JSON cannot (binary strings, invalid UTF-8, non-string keys)
 * and never trusts a declared length: every length is checked against the
 * bytes actually present before anything is read or allocated.
 */
#ifndef RP_JOB_H
#define RP_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define RP_JOB_MESSAGE_MAX 32768 /* bytes */
#define RP_JOB_USER_ID_MAX 64    /* bytes of the textual user id */
#define RP_JOB_ID_LEN 36         /* a uuid as text: 8-4-4-4-12 hex digits */
#define RP_JOB_MAX_ATTEMPTS_MAX 1000
#define RP_JOB_DEFAULT_MAX_ATTEMPTS 5

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

/* Decode and validate a chat payload from msgpack (a map with user_id,
 * message and optionally options, exactly as the JSON form; user_id may be
 * a string or an integer, a nil option means "not given").  Same contract
 * and messages as rp_chat_payload_decode_json: 0 and out filled (free with
 * rp_chat_payload_free), or RP_EINVAL/RP_ENOMEM with err naming the field
 * and out holding nothing to free.  The whole buffer must be one map. */
int rp_chat_payload_decode_msgpack(const char *buf, size_t len, rp_chat_payload_t *out,
                                   rp_err_t *err);

/* Encode as msgpack: {"user_id": str, "message": str, "options": {...}}
 * with only the options that are set.  Returns an owned buffer (free with
 * free()) and its length in *len, or NULL when out of memory. */
char *rp_chat_payload_encode_msgpack(const rp_chat_payload_t *p, size_t *len);

/* A job as it travels in a Redis stream entry (docs/REDIS.md):
 * {"id", "kind", "payload", "max_attempts", "attempt", "enqueued_at_ms"}. */
typedef struct rp_job_envelope {
    char id[RP_JOB_ID_LEN + 1]; /* the job id (idempotency key), lower-case uuid */
    char kind[16];              /* "chat", or "noop" (no payload: the queue benchmarks) */
    rp_chat_payload_t payload;  /* owned */
    int max_attempts;           /* 1..RP_JOB_MAX_ATTEMPTS_MAX; default 5 when absent */
    int attempt;                /* attempts already made, 0..RP_JOB_MAX_ATTEMPTS_MAX; 0 when absent */
    int64_t enqueued_at_ms;     /* Unix time in ms when first enqueued; 0 when absent */
    /* Decode only: the payload's own msgpack bytes inside the input buffer
     * (borrowed: valid as long as the input is), for re-adding the job or
     * writing a dead letter without re-encoding.  NULL when absent. */
    const char *payload_raw;
    size_t payload_raw_len;
} rp_job_envelope_t;

/* Decode and validate a stream entry's job.  Returns 0 with out filled
 * (free with rp_job_envelope_free), or RP_EINVAL/RP_ENOMEM with err naming
 * the field ("payload.user_id: ..." for the payload's fields).  Even on
 * error, out->id holds the job id when the id itself was valid ("" when
 * not), so a malformed job can be dead-lettered under its id; out->payload
 * then holds nothing, and rp_job_envelope_free is still safe to call. */
int rp_job_envelope_decode_msgpack(const char *buf, size_t len, rp_job_envelope_t *out,
                                   rp_err_t *err);

/* Encode e (payload_raw is ignored).  Returns an owned buffer (free with
 * free()) and its length in *len, or NULL when out of memory. */
char *rp_job_envelope_encode_msgpack(const rp_job_envelope_t *e, size_t *len);

/* Free what an envelope owns (its payload) and clear it. */
void rp_job_envelope_free(rp_job_envelope_t *e);

/* True when s is a uuid written 8-4-4-4-12 with hexadecimal digits. */
int rp_uuid_valid(const char *s);

/* True when s[0..n) is UTF-8 that Postgres text accepts: no overlong
 * forms, surrogates or code points past U+10FFFF (NUL is allowed here). */
int rp_utf8_valid(const char *s, size_t n);

/* True when s is a user id ragpool accepts: a uuid (8-4-4-4-12 hex) or a
 * decimal integer that fits in 64 bits. */
int rp_user_id_valid(const char *s);

#endif
