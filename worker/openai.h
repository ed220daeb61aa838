/*
 * openai.h: the OpenAI-compatible wire format (embeddings and chat
 * completions): request bodies and validated parsing of responses.
 *
 * Pure functions: no I/O, so every malformed or hostile response shape is
 * unit-tested.  Responses are untrusted: sizes, types and counts are all
 * checked, and an error says what was wrong without echoing the body.
 */
#ifndef RP_OPENAI_H
#define RP_OPENAI_H

#include <stddef.h>

#include "err.h"

typedef struct rp_embeddings {
    float *data;        /* n * dims floats, row i is input i; owned */
    size_t n, dims;
    long prompt_tokens; /* -1 when not reported */
} rp_embeddings_t;

typedef struct rp_chat_result {
    char *content;       /* the answer; owned */
    char *model;         /* the model that answered (may differ from requested); owned */
    char *finish_reason; /* owned, may be NULL */
    long prompt_tokens, completion_tokens; /* -1 when not reported */
} rp_chat_result_t;

/* Request body for POST /embeddings.  dims <= 0 sends no "dimensions".
 * Returns owned JSON text (free with free()) or NULL. */
char *rp_openai_embed_request(const char *model, const char *const *inputs, size_t n, long dims,
                              int base64, size_t *len);

/* Parse an embeddings response that must hold exactly expect_n vectors of
 * equal, non-zero dimension (expect_dims when > 0), as float arrays or
 * base64.  Returns 0 and fills out (free with rp_embeddings_free), or
 * RP_EPROTO with err saying what was wrong. */
int rp_openai_embed_parse(const char *body, size_t len, size_t expect_n, size_t expect_dims,
                          rp_embeddings_t *out, rp_err_t *err);
void rp_embeddings_free(rp_embeddings_t *e);

/* Request body for POST /chat/completions with one user message.
 * max_tokens <= 0 and temperature NAN are left out. */
char *rp_openai_chat_request(const char *model, const char *prompt, size_t prompt_len,
                             long max_tokens, double temperature, size_t *len);

/* Parse a (non-streamed) chat completion.  Returns 0 and fills out (free
 * with rp_chat_result_free), or RP_EPROTO with err. */
int rp_openai_chat_parse(const char *body, size_t len, rp_chat_result_t *out, rp_err_t *err);
void rp_chat_result_free(rp_chat_result_t *r);

/* Whether an HTTP status is worth retrying: 408, 409, 425, 429 and 5xx. */
int rp_openai_status_retryable(long status);

/* A short description of an error response for logs and dead letters:
 * "HTTP 429: Rate limit reached…" using the body's error.message when it
 * has one (cut to fit out), never the whole body. */
void rp_openai_describe_error(long status, const char *body, size_t len, char *out,
                              size_t outlen);

#endif
