/*
 * cfg.h: configuration from the environment, as one declarative table.
 *
 * Each program describes its settings as an array of rp_cfg_def_t (name,
 * type, default, range, help) and loads them into its own struct with
 * rp_cfg_load.  A bad value stops start-up with a message naming the
 * variable; `--help` prints the same table with rp_cfg_usage.  After
 * loading, the struct is treated as const and passed down.
 */
#ifndef RP_CFG_H
#define RP_CFG_H

#include <stddef.h>
#include <stdio.h>

#include "err.h"

typedef enum {
    RP_CFG_STR,    /* char * (owned by the struct; freed by rp_cfg_free) */
    RP_CFG_INT,    /* long */
    RP_CFG_DOUBLE, /* double */
    RP_CFG_BOOL,   /* int: 1/0, from true/false/1/0/yes/no/on/off */
} rp_cfg_type_t;

enum {
    RP_CFG_REQUIRED = 1 << 0, /* start-up fails when unset */
    RP_CFG_SECRET = 1 << 1,   /* never printed or logged */
};

typedef struct rp_cfg_def {
    const char *name;   /* environment variable */
    rp_cfg_type_t type;
    size_t offset;      /* offsetof(the program's struct, field) */
    const char *def;    /* default, as text; NULL leaves a string NULL */
    double min, max;    /* inclusive range for numbers; ignored when min > max */
    int flags;          /* RP_CFG_* */
    const char *help;   /* one sentence */
} rp_cfg_def_t;

/* Looks a variable up; getenv by default, a fake in unit tests. */
typedef const char *(*rp_cfg_getenv_fn)(const char *name, void *data);

/* Load every setting of defs into out.  getenv_fn may be NULL (getenv).
 * Returns 0, or RP_EINVAL with err naming the variable and what is wrong
 * (out is then partly filled: call rp_cfg_free on it anyway). */
int rp_cfg_load(const rp_cfg_def_t *defs, size_t n, void *out, rp_cfg_getenv_fn getenv_fn,
                void *data, rp_err_t *err);

/* Free the strings rp_cfg_load stored in out. */
void rp_cfg_free(const rp_cfg_def_t *defs, size_t n, void *out);

/* Print the table: variable, default and help, one setting a paragraph. */
void rp_cfg_usage(FILE *f, const rp_cfg_def_t *defs, size_t n);

/* Write the effective settings as a JSON object text into a new string
 * (free with free()); secrets appear as "(set)" or null. */
char *rp_cfg_dump_json(const rp_cfg_def_t *defs, size_t n, const void *cfg);

#endif
