/*
 * prompt.c: prompt templates.
 *
 * A template is parsed once at start-up into a list of pieces (literal text
 * or a placeholder), so rendering a prompt per job is a single pass of
 * appends with no searching.
 */
#include "prompt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

const char rp_prompt_default_template[] = "Context from knowledge base:\n"
                                          "{{context}}\n"
                                          "\n"
                                          "User's recent swaps:\n"
                                          "{{swaps}}\n"
                                          "\n"
                                          "User question: {{question}}\n";

typedef enum { PIECE_TEXT, PIECE_CONTEXT, PIECE_SWAPS, PIECE_QUESTION } piece_kind_t;

typedef struct piece {
    piece_kind_t kind;
    size_t off, len; /* literal text: a slice of tmpl->text */
} piece_t;

struct rp_prompt_tmpl {
    char *text;
    piece_t *pieces;
    size_t npieces;
};

static const struct {
    const char *name;
    piece_kind_t kind;
} placeholders[] = {
    {"{{context}}", PIECE_CONTEXT},
    {"{{swaps}}", PIECE_SWAPS},
    {"{{question}}", PIECE_QUESTION},
};

rp_prompt_tmpl_t *rp_prompt_tmpl_new(const char *text, rp_err_t *err)
{
    if (text == NULL)
        text = rp_prompt_default_template;
    rp_prompt_tmpl_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        goto nomem;
    t->text = strdup(text);
    size_t len = strlen(text);
    /* At most one piece per character plus one: a safe bound. */
    t->pieces = calloc(len + 1, sizeof(piece_t));
    if (t->text == NULL || t->pieces == NULL)
        goto nomem;

    int has_question = 0;
    size_t i = 0, lit = 0;
    while (i < len) {
        /* "{{name}}" is a placeholder; any other "{{" is literal text. */
        size_t nlen = 0;
        if (text[i] == '{' && text[i + 1] == '{') {
            while (text[i + 2 + nlen] == '_' ||
                   (text[i + 2 + nlen] >= 'a' && text[i + 2 + nlen] <= 'z'))
                nlen++;
            if (nlen == 0 || text[i + 2 + nlen] != '}' || text[i + 3 + nlen] != '}')
                nlen = 0;
        }
        if (nlen > 0) {
            size_t k;
            size_t nph = sizeof(placeholders) / sizeof(placeholders[0]);
            for (k = 0; k < nph; k++)
                if (strlen(placeholders[k].name) == nlen + 4 &&
                    strncmp(text + i, placeholders[k].name, nlen + 4) == 0)
                    break;
            if (k == nph) {
                rp_err_set(err, RP_EINVAL,
                           "unknown placeholder %.*s in the prompt template (use {{context}}, "
                           "{{swaps}}, {{question}})",
                           (int)(nlen + 4 > 40 ? 40 : nlen + 4), text + i);
                rp_prompt_tmpl_free(t);
                return NULL;
            }
            if (i > lit)
                t->pieces[t->npieces++] = (piece_t){PIECE_TEXT, lit, i - lit};
            t->pieces[t->npieces++] = (piece_t){placeholders[k].kind, 0, 0};
            if (placeholders[k].kind == PIECE_QUESTION)
                has_question = 1;
            i += nlen + 4;
            lit = i;
        } else {
            i++;
        }
    }
    if (len > lit)
        t->pieces[t->npieces++] = (piece_t){PIECE_TEXT, lit, len - lit};
    if (!has_question) {
        rp_err_set(err, RP_EINVAL, "the prompt template has no {{question}} placeholder");
        rp_prompt_tmpl_free(t);
        return NULL;
    }
    return t;
nomem:
    rp_prompt_tmpl_free(t);
    rp_err_set(err, RP_ENOMEM, "out of memory parsing the prompt template");
    return NULL;
}

rp_prompt_tmpl_t *rp_prompt_tmpl_load(const char *path, rp_err_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        rp_err_set(err, RP_EINVAL, "cannot open the prompt template %s", path);
        return NULL;
    }
    rp_buf_t b = RP_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b.len < 1024 * 1024)
        rp_buf_append(&b, chunk, n);
    int bad = ferror(f) || b.len >= 1024 * 1024;
    fclose(f);
    char *text = rp_buf_take(&b, NULL);
    if (bad || text == NULL) {
        free(text);
        rp_err_set(err, RP_EINVAL, "cannot read the prompt template %s (or it exceeds 1 MiB)",
                   path);
        return NULL;
    }
    rp_prompt_tmpl_t *t = rp_prompt_tmpl_new(text, err);
    free(text);
    if (t == NULL) {
        rp_err_t inner = *err;
        rp_err_set(err, inner.code, "%s: %s", path, inner.msg);
    }
    return t;
}

void rp_prompt_tmpl_free(rp_prompt_tmpl_t *t)
{
    if (t == NULL)
        return;
    free(t->text);
    free(t->pieces);
    free(t);
}

char *rp_prompt_render(const rp_prompt_tmpl_t *t, const char *question,
                       const char *const *context, size_t ncontext, const rp_swap_t *swaps,
                       size_t nswaps, size_t *len)
{
    rp_buf_t b = RP_BUF_INIT;
    for (size_t p = 0; p < t->npieces; p++) {
        const piece_t *pc = &t->pieces[p];
        switch (pc->kind) {
        case PIECE_TEXT:
            rp_buf_append(&b, t->text + pc->off, pc->len);
            break;
        case PIECE_CONTEXT:
            for (size_t i = 0; i < ncontext; i++) {
                if (i > 0)
                    rp_buf_putc(&b, '\n');
                rp_buf_puts(&b, context[i]);
            }
            break;
        case PIECE_SWAPS:
            for (size_t i = 0; i < nswaps; i++) {
                if (i > 0)
                    rp_buf_putc(&b, '\n');
                rp_buf_puts(&b, swaps[i].amount);
                rp_buf_putc(&b, ' ');
                rp_buf_puts(&b, swaps[i].from_token);
                rp_buf_puts(&b, " \xe2\x86\x92 "); /* " → " */
                rp_buf_puts(&b, swaps[i].to_token);
            }
            break;
        case PIECE_QUESTION:
            rp_buf_puts(&b, question);
            break;
        }
    }
    return rp_buf_take(&b, len);
}
