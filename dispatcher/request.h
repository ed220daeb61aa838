/*
 * request.h: the dispatcher's pure request logic -- no I/O, so it is unit
 * tested and fuzzed directly: the chat body's strict validation, the
 * Authorization and Content-Type headers, Idempotency-Key to job id, path
 * ids, and the JSON error bodies.
 *
 * The chat body is {"message": string, "conversation_id"?: string,
 * "options"?: {...}}; the options are those of the chat job payload
 * (docs/CONTRACTS.md) with the same ranges the worker enforces, so a job
 * the dispatcher accepts is never dead-lettered as invalid_payload.
 */
#ifndef RP_DISPATCHER_REQUEST_H
#define RP_DISPATCHER_REQUEST_H

#include <stddef.h>

#include "buf.h"
#include "job.h" /* rp_uuid_valid */

#define RP_CHAT_MESSAGE_MAX 32768
#define RP_CONVERSATION_ID_MAX 128
#define RP_IDEMPOTENCY_KEY_MAX 255

typedef struct rp_chat_request {
    char *message;         /* owned, 1..RP_CHAT_MESSAGE_MAX bytes, valid UTF-8, no NUL */
    char *conversation_id; /* owned or NULL */
    char *options_json;    /* owned compact JSON object of the given options, or NULL */
} rp_chat_request_t;

/* Validate a chat body.  Returns 0 and fills out (free with
 * rp_chat_request_free); 400 when the body is not one JSON value (malformed,
 * duplicate keys, invalid UTF-8); 422 when it is JSON but not a valid
 * request -- every unknown or invalid field is named.  For 400 and 422 the
 * complete error body (rp_error_json) is appended to errbody and out holds
 * nothing.  Returns RP_ENOMEM (negative) when out of memory. */
int rp_chat_request_parse(const char *body, size_t len, rp_chat_request_t *out, rp_buf_t *errbody);
/* The same answer through jansson only (rp_chat_request_parse takes plain
 * bodies without building a tree, and hands everything else to this);
 * for the tests that compare the two. */
int rp_chat_request_parse_json(const char *body, size_t len, rp_chat_request_t *out,
                               rp_buf_t *errbody);
void rp_chat_request_free(rp_chat_request_t *r);

/* From an Authorization header value, the token of "Bearer <token>" (scheme
 * case-insensitive, surrounding blanks ignored).  Returns 0 with *tok and *len
 * pointing into value, or -1 when value is NULL or not a Bearer token. */
int rp_bearer_token(const char *value, const char **tok, size_t *len);

/* True for "application/json", optionally with parameters ("; charset=utf-8"),
 * case-insensitive. */
int rp_content_type_is_json(const char *value);

/* True for a key of 1..RP_IDEMPOTENCY_KEY_MAX visible ASCII characters. */
int rp_idempotency_key_valid(const char *key);

/* The job id for (user_id, key): a name-based UUID (version 5, SHA-1) in
 * ragpool's namespace, so the same user retrying with the same key gets the
 * same id and two users never collide.  out receives 36 characters and a
 * NUL.  Returns 0 or RP_EINVAL (invalid key). */
int rp_idempotency_job_id(const char *user_id, const char *key, char out[37]);

/* Append {"error":{"code":code,"message":message}} to out; fields (may be
 * NULL) is a JSON array text added as "fields". */
void rp_error_json(rp_buf_t *out, const char *code, const char *message, const char *fields);

#endif
