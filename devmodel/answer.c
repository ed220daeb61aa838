/*
 * answer.c: builds the development model's answers from the prompt's
 * sections (see answer.h).  Plain string work over a copy of the prompt;
 * nothing here is on a hot path beyond one pass over the prompt.
 */
#include "answer.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_LINES 2      /* context lines (and swaps) quoted */
#define MAX_QUOTE 360    /* bytes of context quoted at most */
#define MAX_QUESTION 300 /* bytes of the question quoted at most */

typedef struct line {
    const char *p;
    size_t n;
} line_t;

typedef struct sections {
    line_t context[MAX_LINES];
    int ncontext;
    line_t swaps[MAX_LINES];
    int nswaps;
    line_t question;
    int structured; /* any section heading was found */
} sections_t;

/* A growable string; on allocation failure it remembers and stops. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int failed;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf_t *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static line_t trim(const char *p, size_t n)
{
    while (n > 0 && isspace((unsigned char)*p)) {
        p++;
        n--;
    }
    while (n > 0 && isspace((unsigned char)p[n - 1]))
        n--;
    line_t l = {p, n};
    return l;
}

/* Drop list decorations: "- ", "* ", "• ", "1. ", "[1] ". */
static line_t strip_bullet(line_t l)
{
    const char *p = l.p;
    size_t n = l.n;
    if (n >= 2 && (p[0] == '-' || p[0] == '*') && p[1] == ' ')
        return trim(p + 2, n - 2);
    if (n >= 4 && memcmp(p, "\xe2\x80\xa2 ", 4) == 0)
        return trim(p + 4, n - 4);
    size_t i = 0;
    if (n > 0 && p[0] == '[') {
        i = 1;
        while (i < n && isdigit((unsigned char)p[i]))
            i++;
        if (i > 1 && i < n && p[i] == ']')
            return trim(p + i + 1, n - i - 1);
        return l;
    }
    while (i < n && isdigit((unsigned char)p[i]))
        i++;
    if (i > 0 && i + 1 < n && (p[i] == '.' || p[i] == ')') && p[i + 1] == ' ')
        return trim(p + i + 2, n - i - 2);
    return l;
}

static int starts_with_ci(line_t l, const char *prefix)
{
    size_t n = strlen(prefix);
    return l.n >= n && strncasecmp(l.p, prefix, n) == 0;
}

/* Placeholder lines a prompt builder may write for an empty section. */
static int is_placeholder(line_t l)
{
    return l.n == 0 || starts_with_ci(l, "none") || starts_with_ci(l, "no ") ||
           starts_with_ci(l, "(none") || starts_with_ci(l, "(no ") || starts_with_ci(l, "n/a");
}

typedef enum { SEC_NONE, SEC_CONTEXT, SEC_SWAPS, SEC_QUESTION } sec_t;

static void split_sections(const char *prompt, size_t len, sections_t *s)
{
    memset(s, 0, sizeof(*s));
    sec_t sec = SEC_NONE;
    const char *q_start = NULL;
    const char *end = prompt + len;
    const char *p = prompt;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl != NULL ? nl : end;
        line_t l = trim(p, (size_t)(le - p));
        if (starts_with_ci(l, "Context from knowledge base:")) {
            sec = SEC_CONTEXT;
            s->structured = 1;
            /* Text on the heading line itself counts as the first line. */
            l = trim(l.p + 28, l.n - 28);
        } else if (starts_with_ci(l, "User's recent swaps:") ||
                   starts_with_ci(l, "User\xe2\x80\x99s recent swaps:")) {
            size_t hl = l.p[4] == '\'' ? 20 : 22;
            sec = SEC_SWAPS;
            s->structured = 1;
            l = trim(l.p + hl, l.n - hl);
        } else if (starts_with_ci(l, "User question:")) {
            sec = SEC_QUESTION;
            s->structured = 1;
            q_start = l.p + 14;
            break;
        }
        l = strip_bullet(l);
        if (sec == SEC_CONTEXT && !is_placeholder(l) && s->ncontext < MAX_LINES)
            s->context[s->ncontext++] = l;
        else if (sec == SEC_SWAPS && !is_placeholder(l) && s->nswaps < MAX_LINES)
            s->swaps[s->nswaps++] = l;
        p = nl != NULL ? nl + 1 : end;
    }
    if (q_start != NULL)
        s->question = trim(q_start, (size_t)(end - q_start));
    else if (!s->structured)
        s->question = trim(prompt, len);
}

/* Append at most max bytes of l, cutting at a UTF-8 character boundary and
 * preferring a word boundary; adds "…" when cut. */
static void put_clipped(sbuf_t *b, line_t l, size_t max)
{
    if (l.n <= max) {
        sb_put(b, l.p, l.n);
        return;
    }
    size_t n = max;
    while (n > 0 && ((unsigned char)l.p[n] & 0xC0) == 0x80)
        n--;
    size_t sp = n;
    while (sp > max / 2 && l.p[sp] != ' ')
        sp--;
    if (l.p[sp] == ' ')
        n = sp;
    sb_put(b, l.p, n);
    sb_str(b, "\xe2\x80\xa6");
}

/* The quoted context: the first lines joined, cut after two sentences. */
static void put_context(sbuf_t *b, const sections_t *s)
{
    sbuf_t joined = {0};
    for (int i = 0; i < s->ncontext; i++) {
        if (i > 0)
            sb_str(&joined, " ");
        sb_put(&joined, s->context[i].p, s->context[i].n);
    }
    if (joined.failed || joined.p == NULL) {
        b->failed |= joined.failed;
        free(joined.p);
        return;
    }
    /* Cut after the second sentence end ('.', '!' or '?' then a space). */
    size_t n = joined.len;
    int sentences = 0;
    for (size_t i = 0; i < joined.len; i++) {
        char ch = joined.p[i];
        if ((ch == '.' || ch == '!' || ch == '?') &&
            (i + 1 == joined.len || joined.p[i + 1] == ' ')) {
            if (++sentences == 2) {
                n = i + 1;
                break;
            }
        }
    }
    line_t l = trim(joined.p, n);
    /* Drop a final full stop: the caller adds its own punctuation. */
    if (l.n > 0 && l.p[l.n - 1] == '.')
        l.n--;
    put_clipped(b, l, MAX_QUOTE);
    free(joined.p);
}

char *rp_devmodel_answer(const char *prompt, size_t len)
{
    sections_t s;
    sbuf_t b = {0};
    split_sections(prompt, len, &s);
    if (s.ncontext > 0) {
        sb_str(&b, "Based on the knowledge base: ");
        put_context(&b, &s);
        sb_str(&b, ".");
    } else {
        sb_str(&b, "I could not find anything about this in the knowledge base, "
                   "but I am happy to help");
        if (s.question.n > 0) {
            sb_str(&b, " with your question: \"");
            put_clipped(&b, s.question, MAX_QUESTION);
            sb_str(&b, "\"");
        }
        sb_str(&b, ".");
    }
    if (s.nswaps > 0) {
        sb_str(&b, " You recently swapped ");
        for (int i = 0; i < s.nswaps; i++) {
            if (i > 0)
                sb_str(&b, " and ");
            put_clipped(&b, s.swaps[i], 80);
        }
        sb_str(&b, ".");
    }
    if (s.ncontext > 0 && s.question.n > 0) {
        sb_str(&b, " (answer to: ");
        put_clipped(&b, s.question, MAX_QUESTION);
        sb_str(&b, ")");
    }
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static int word_byte(unsigned char ch)
{
    return isalnum(ch) || ch >= 0x80;
}

int rp_devmodel_truncate_words(char *s, int max_words)
{
    int words = 0;
    size_t i = 0;
    while (s[i] != '\0') {
        while (s[i] != '\0' && !word_byte((unsigned char)s[i]))
            i++;
        if (s[i] == '\0')
            break;
        if (words == max_words) {
            /* Cut before this word, dropping the separators before it. */
            while (i > 0 && isspace((unsigned char)s[i - 1]))
                i--;
            s[i] = '\0';
            return 1;
        }
        while (s[i] != '\0' && word_byte((unsigned char)s[i]))
            i++;
        words++;
    }
    return 0;
}
