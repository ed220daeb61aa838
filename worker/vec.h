/*
 * vec.h: embedding vectors on the wire and in SQL text.
 *
 * Providers send float32 vectors as JSON arrays or base64 (little-endian
 * float32); Postgres takes them as pgvector text "[a,b]" or as a real[]
 * literal "{a,b}".  Formatting is on the hot path of every chat job (one
 * vector of hundreds of numbers per retrieval), so it avoids printf.
 */
#ifndef RP_VEC_H
#define RP_VEC_H

#include <stddef.h>

typedef enum { RP_VEC_PGVECTOR, RP_VEC_ARRAY } rp_vec_format_t;

/* Decode base64 (standard alphabet, padding optional) holding little-endian
 * float32 values into out (room for max floats).  Returns the number of
 * floats, or -1 if the text is not valid base64, its length is not a
 * multiple of 4 bytes, more than max floats, or a value is not finite. */
long rp_vec_from_base64(const char *b64, size_t len, float *out, size_t max);

/* Write v as the shortest text with 7 significant digits that reads back
 * within float precision of v ("0.0123457", "-1", "1.5e-07").  out must
 * hold 32 bytes; returns the length written (no NUL). */
size_t rp_vec_format_float(char *out, float v);

/* Format n values as "[a,b,...]" (pgvector) or "{a,b,...}" (real[]).
 * Returns an owned NUL-terminated string (free with free()) or NULL. */
char *rp_vec_format(const float *v, size_t n, rp_vec_format_t fmt, size_t *len);

#endif
