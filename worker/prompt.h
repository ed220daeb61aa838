/*
 * prompt.h: building the model prompt from the question, the retrieved
 * context and the user's recent swaps.
 *
 * The built-in template is the reference design's ("Context from knowledge
 * base: … User's recent swaps: … User question: …").  A template file
 * (RAGPOOL_PROMPT_TEMPLATE) may replace it; it uses the placeholders
 * {{context}}, {{swaps}} and {{question}}, and must contain {{question}}.
 */
#ifndef RP_PROMPT_H
#define RP_PROMPT_H

#include <stddef.h>

#include "err.h"

typedef struct rp_prompt_tmpl rp_prompt_tmpl_t;

typedef struct rp_swap {
    const char *from_token;
    const char *to_token;
    const char *amount;
} rp_swap_t;

extern const char rp_prompt_default_template[];

/* Parse a template (NULL = the built-in one).  Returns owned (free with
 * rp_prompt_tmpl_free) or NULL with err saying what is wrong (an unknown
 * placeholder, no {{question}}). */
rp_prompt_tmpl_t *rp_prompt_tmpl_new(const char *text, rp_err_t *err);

/* Read a template from a file.  Same contract; err names the file. */
rp_prompt_tmpl_t *rp_prompt_tmpl_load(const char *path, rp_err_t *err);

void rp_prompt_tmpl_free(rp_prompt_tmpl_t *t);

/* Render the prompt.  context: ncontext document texts, one per line;
 * swaps: "amount from → to", one per line.  Returns an owned string (free
 * with free()) and its length, or NULL when out of memory.  Borrows
 * everything it is given. */
char *rp_prompt_render(const rp_prompt_tmpl_t *t, const char *question,
                       const char *const *context, size_t ncontext, const rp_swap_t *swaps,
                       size_t nswaps, size_t *len);

#endif
