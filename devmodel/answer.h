/*
 * answer.h: the development model's "inference": a short, deterministic
 * answer built from the prompt, so the demo reads sensibly.
 *
 * The worker's prompt has up to three sections (as in the reference design):
 *
 *     Context from knowledge base:
 *     <one document per line>
 *
 *     User's recent swaps:
 *     <one swap per line, e.g. "100 TON → USDT">
 *
 *     User question: <the question>
 *
 * The answer quotes the first one or two context lines (cut to about two
 * sentences), mentions the most recent swaps, and ends with the question it
 * answers.  A prompt without context gets a polite generic answer that
 * quotes the question; a prompt without any section is taken as the
 * question itself.
 */
#ifndef RP_DEVMODEL_ANSWER_H
#define RP_DEVMODEL_ANSWER_H

#include <stddef.h>

/* Build the answer to prompt[0..len) (borrowed, need not be NUL-terminated).
 * Returns a NUL-terminated string owned by the caller (free with free()),
 * or NULL when out of memory. */
char *rp_devmodel_answer(const char *prompt, size_t len);

/* Cut s (NUL-terminated, modified in place) after its first max_words
 * words, counted as rp_devmodel_count_tokens counts them.  Returns 1 when
 * something was cut, 0 otherwise. */
int rp_devmodel_truncate_words(char *s, int max_words);

#endif
