/*
 * embed.h: the development model server's deterministic embeddings, and the
 * encoders that put them on the wire.
 *
 * A text is split into lower-case words (runs of ASCII letters and digits;
 * bytes >= 0x80 count as letters so UTF-8 words stay whole), a short list
 * of English stop words is dropped, and every remaining word adds +1 or -1
 * to RP_DEVMODEL_EMBED_K dimensions chosen by hashing the word (FNV-1a,
 * then splitmix64 per slot).  The sum is L2-normalised.  Texts that share
 * words therefore have a positive cosine similarity and unrelated texts a
 * near-zero one, which makes retrieval over these vectors meaningful.  A
 * text without any (non-stop) word gets the fixed unit vector whose
 * components are all 1/sqrt(dims).
 *
 * Other parts of ragpool (tests that check stored embeddings) call
 * rp_devmodel_embed to get exactly what the server would answer.
 */
#ifndef RP_DEVMODEL_EMBED_H
#define RP_DEVMODEL_EMBED_H

#include <stddef.h>

#define RP_DEVMODEL_EMBED_K 4 /* hashed dimensions per word */
#define RP_DEVMODEL_DIMS_DEFAULT 1536
#define RP_DEVMODEL_DIMS_MAX 4096

/* Compute the embedding of text[0..len) into out[0..dims).  text borrows
 * (need not be NUL-terminated); out is written by the caller's buffer.
 * Returns the number of words in the text (stop words included, at least
 * 0), or RP_EINVAL when dims is outside 1..RP_DEVMODEL_DIMS_MAX. */
int rp_devmodel_embed(const char *text, size_t len, int dims, float *out);

/* Number of words in text[0..len) as the server counts tokens (at least 1). */
int rp_devmodel_count_tokens(const char *text, size_t len);

/* Largest number of bytes rp_devmodel_format_floats writes for n values. */
#define RP_DEVMODEL_FLOATS_MAX(n) ((size_t)(n)*14 + 2)

/* Write v[0..n) as a JSON array ("[0.125,-0.5,0]") into dst, which must hold
 * RP_DEVMODEL_FLOATS_MAX(n) bytes; no NUL is added.  Returns the length.
 * Values are printed with 9 decimals (trailing zeros dropped), which is
 * exact enough for float32 components of a unit vector. */
size_t rp_devmodel_format_floats(const float *v, int n, char *dst);

/* Bytes needed to base64-encode len bytes (with padding, no NUL). */
#define RP_DEVMODEL_B64_LEN(len) ((((size_t)(len) + 2) / 3) * 4)

/* Standard base64 (RFC 4648, with padding) of src[0..len) into dst, which
 * must hold RP_DEVMODEL_B64_LEN(len) bytes; no NUL is added.  Returns the
 * length written. */
size_t rp_devmodel_base64(const void *src, size_t len, char *dst);

/* Decode standard base64 text[0..len) into dst (capacity cap bytes).
 * Returns the number of bytes decoded or RP_EINVAL for bad input or a
 * too-small dst. */
long rp_devmodel_base64_decode(const char *text, size_t len, void *dst, size_t cap);

/* Little-endian float32 bytes of v[0..n) then base64, into dst (capacity
 * RP_DEVMODEL_B64_LEN(4 * n)); the encoding_format "base64" of the
 * embeddings API.  Returns the length written. */
size_t rp_devmodel_floats_base64(const float *v, int n, char *dst);

#endif
