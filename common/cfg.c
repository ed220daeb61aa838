/*
 * cfg.c: the declarative configuration table.
 *
 * Numbers are parsed strictly: the whole value must be a number in range,
 * so "10ms" or "1e99" for an integer is an error that names the variable,
 * never a silent zero.
 */
#include "cfg.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *default_getenv(const char *name, void *data)
{
    (void)data;
    return getenv(name);
}

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static int in_range(const rp_cfg_def_t *d, double v)
{
    return d->min > d->max || (v >= d->min && v <= d->max);
}

static int range_error(const rp_cfg_def_t *d, const char *value, rp_err_t *err)
{
    return rp_err_set(err, RP_EINVAL, "%s=%s is out of range: expected %g to %g", d->name,
                      (d->flags & RP_CFG_SECRET) ? "(secret)" : value, d->min, d->max);
}

static int load_one(const rp_cfg_def_t *d, const char *value, void *out, rp_err_t *err)
{
    char *field = (char *)out + d->offset;
    const char *shown = (d->flags & RP_CFG_SECRET) ? "(secret)" : value;
    char *end = NULL;

    switch (d->type) {
    case RP_CFG_STR: {
        char **dst = (char **)field;
        free(*dst);
        *dst = NULL;
        if (value != NULL) {
            *dst = strdup(value);
            if (*dst == NULL)
                return rp_err_set(err, RP_ENOMEM, "out of memory loading %s", d->name);
        }
        return 0;
    }
    case RP_CFG_INT: {
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno != 0 || end == value || *end != '\0')
            return rp_err_set(err, RP_EINVAL, "%s=%s is not a whole number", d->name, shown);
        if (!in_range(d, (double)v))
            return range_error(d, value, err);
        *(long *)field = v;
        return 0;
    }
    case RP_CFG_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno != 0 || end == value || *end != '\0' || !isfinite(v))
            return rp_err_set(err, RP_EINVAL, "%s=%s is not a number", d->name, shown);
        if (!in_range(d, v))
            return range_error(d, value, err);
        *(double *)field = v;
        return 0;
    }
    case RP_CFG_BOOL: {
        int v;
        if (parse_bool(value, &v) != 0)
            return rp_err_set(err, RP_EINVAL, "%s=%s is not a boolean (true/false)", d->name,
                              shown);
        *(int *)field = v;
        return 0;
    }
    }
    return rp_err_set(err, RP_EINVAL, "%s has an unknown type", d->name);
}

int rp_cfg_load(const rp_cfg_def_t *defs, size_t n, void *out, rp_cfg_getenv_fn getenv_fn,
                void *data, rp_err_t *err)
{
    if (getenv_fn == NULL)
        getenv_fn = default_getenv;
    for (size_t i = 0; i < n; i++) {
        const rp_cfg_def_t *d = &defs[i];
        const char *value = getenv_fn(d->name, data);
        if (value != NULL && value[0] == '\0' && d->type != RP_CFG_STR)
            value = NULL; /* VAR= means "use the default" for numbers and flags */
        if (value == NULL) {
            if (d->flags & RP_CFG_REQUIRED)
                return rp_err_set(err, RP_EINVAL, "%s is required but not set: %s", d->name,
                                  d->help);
            value = d->def;
            if (value == NULL && d->type != RP_CFG_STR)
                continue;
        }
        int rc = load_one(d, value, out, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void rp_cfg_free(const rp_cfg_def_t *defs, size_t n, void *out)
{
    for (size_t i = 0; i < n; i++) {
        if (defs[i].type == RP_CFG_STR) {
            char **field = (char **)((char *)out + defs[i].offset);
            free(*field);
            *field = NULL;
        }
    }
}

void rp_cfg_usage(FILE *f, const rp_cfg_def_t *defs, size_t n)
{
    fprintf(f, "Environment variables:\n");
    for (size_t i = 0; i < n; i++) {
        const rp_cfg_def_t *d = &defs[i];
        fprintf(f, "  %s", d->name);
        if (d->flags & RP_CFG_REQUIRED)
            fprintf(f, " (required)");
        else if (d->def != NULL && d->def[0] != '\0')
            fprintf(f, " (default: %s)", d->def);
        else
            fprintf(f, " (default: unset)");
        fprintf(f, "\n      %s\n", d->help);
    }
}

char *rp_cfg_dump_json(const rp_cfg_def_t *defs, size_t n, const void *cfg)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const rp_cfg_def_t *d = &defs[i];
        const char *field = (const char *)cfg + d->offset;
        json_t *v = NULL;
        switch (d->type) {
        case RP_CFG_STR: {
            const char *s = *(char *const *)field;
            if (s == NULL)
                v = json_null();
            else if (d->flags & RP_CFG_SECRET)
                v = json_string("(set)");
            else
                v = json_string(s);
            break;
        }
        case RP_CFG_INT:
            v = json_integer(*(const long *)field);
            break;
        case RP_CFG_DOUBLE:
            v = json_real(*(const double *)field);
            break;
        case RP_CFG_BOOL:
            v = json_boolean(*(const int *)field);
            break;
        }
        json_object_set_new(o, d->name, v);
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}
