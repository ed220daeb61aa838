/*
 * job.c: decoding and validating job payloads.
 *
 * Everything in a payload comes from outside (an app, an edge function, a
 * SQL trigger), so each field is checked for type and range, unknown
 * top-level fields are refused (a typo should not be silently ignored), and
 * the first problem found is reported as "field: what is wrong".
 */
#include "job.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int rp_user_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 36) {
        for (size_t i = 0; i < 36; i++) {
            int dash = (i == 8 || i == 13 || i == 18 || i == 23);
            if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
                return 0;
        }
        return 1;
    }
    if (n == 0 || n > 20)
        return 0;
    const char *p = s;
    if (*p == '-')
        p++;
    if (*p == '\0')
        return 0;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return 0;
    errno = 0;
    (void)strtoll(s, NULL, 10);
    return errno == 0;
}

static int get_int_option(json_t *opts, const char *name, long min, long max, int *out,
                          rp_err_t *err)
{
    json_t *v = json_object_get(opts, name);
    *out = -1;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return rp_err_set(err, RP_EINVAL, "options.%s: must be an integer", name);
    json_int_t i = json_integer_value(v);
    if (i < min || i > max)
        return rp_err_set(err, RP_EINVAL, "options.%s: must be between %ld and %ld", name, min,
                          max);
    *out = (int)i;
    return 0;
}

static int get_real_option(json_t *opts, const char *name, double min, double max, double *out,
                           rp_err_t *err)
{
    json_t *v = json_object_get(opts, name);
    *out = NAN;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return rp_err_set(err, RP_EINVAL, "options.%s: must be a number", name);
    double d = json_number_value(v);
    if (!(d >= min && d <= max))
        return rp_err_set(err, RP_EINVAL, "options.%s: must be between %g and %g", name, min,
                          max);
    *out = d;
    return 0;
}

static int decode_options(json_t *opts, rp_chat_payload_t *out, rp_err_t *err)
{
    static const char *const known[] = {"match_count", "match_threshold", "history_count",
                                        "model",       "max_tokens",      "temperature"};
    const char *key;
    json_t *val;
    json_object_foreach(opts, key, val)
    {
        size_t i;
        for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            if (strcmp(key, known[i]) == 0)
                break;
        if (i == sizeof(known) / sizeof(known[0]))
            return rp_err_set(err, RP_EINVAL, "options.%.64s: unknown option", key);
    }
    int rc = get_int_option(opts, "match_count", 1, 50, &out->match_count, err);
    if (rc == 0)
        rc = get_real_option(opts, "match_threshold", -1, 1, &out->match_threshold, err);
    if (rc == 0)
        rc = get_int_option(opts, "history_count", 0, 50, &out->history_count, err);
    if (rc == 0)
        rc = get_int_option(opts, "max_tokens", 1, 32768, &out->max_tokens, err);
    if (rc == 0)
        rc = get_real_option(opts, "temperature", 0, 2, &out->temperature, err);
    if (rc != 0)
        return rc;
    json_t *model = json_object_get(opts, "model");
    if (model != NULL && !json_is_null(model)) {
        const char *m = json_string_value(model);
        if (m == NULL || m[0] == '\0' || strlen(m) > 200)
            return rp_err_set(err, RP_EINVAL, "options.model: must be a non-empty string");
        out->model = strdup(m);
        if (out->model == NULL)
            return rp_err_set(err, RP_ENOMEM, "out of memory");
    }
    return 0;
}

int rp_chat_payload_decode_json(const char *json, size_t len, rp_chat_payload_t *out,
                                rp_err_t *err)
{
    memset(out, 0, sizeof(*out));
    out->match_count = out->history_count = out->max_tokens = -1;
    out->match_threshold = out->temperature = NAN;

    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return rp_err_set(err, RP_EINVAL, "payload: not valid JSON (%s)", jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = rp_err_set(err, RP_EINVAL, "payload: must be a JSON object");
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "user_id") != 0 && strcmp(key, "message") != 0 &&
            strcmp(key, "options") != 0) {
            rc = rp_err_set(err, RP_EINVAL, "%.64s: unknown field", key);
            goto out;
        }
    }

    json_t *uid = json_object_get(root, "user_id");
    char buf[32];
    const char *uid_text = NULL;
    if (json_is_string(uid)) {
        uid_text = json_string_value(uid);
    } else if (json_is_integer(uid)) {
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(uid));
        uid_text = buf;
    } else {
        rc = rp_err_set(err, RP_EINVAL, "user_id: %s",
                        uid == NULL ? "missing" : "must be a uuid or an integer");
        goto out;
    }
    if (!rp_user_id_valid(uid_text)) {
        rc = rp_err_set(err, RP_EINVAL, "user_id: must be a uuid or an integer");
        goto out;
    }

    json_t *msg = json_object_get(root, "message");
    if (!json_is_string(msg)) {
        rc = rp_err_set(err, RP_EINVAL, "message: %s",
                        msg == NULL ? "missing" : "must be a string");
        goto out;
    }
    size_t mlen = json_string_length(msg);
    if (mlen == 0 || mlen > RP_JOB_MESSAGE_MAX) {
        rc = rp_err_set(err, RP_EINVAL, "message: must be 1 to %d bytes (got %zu)",
                        RP_JOB_MESSAGE_MAX, mlen);
        goto out;
    }
    if (memchr(json_string_value(msg), '\0', mlen) != NULL) {
        rc = rp_err_set(err, RP_EINVAL, "message: must not contain NUL characters");
        goto out;
    }

    json_t *opts = json_object_get(root, "options");
    if (opts != NULL && !json_is_null(opts)) {
        if (!json_is_object(opts)) {
            rc = rp_err_set(err, RP_EINVAL, "options: must be an object");
            goto out;
        }
        rc = decode_options(opts, out, err);
        if (rc != 0)
            goto out;
    }

    out->user_id = strdup(uid_text);
    out->message = strdup(json_string_value(msg));
    if (out->user_id == NULL || out->message == NULL)
        rc = rp_err_set(err, RP_ENOMEM, "out of memory");
out:
    json_decref(root);
    if (rc != 0)
        rp_chat_payload_free(out);
    return rc;
}

char *rp_chat_payload_encode_json(const rp_chat_payload_t *p)
{
    json_t *root = json_object();
    json_t *opts = json_object();
    if (root == NULL || opts == NULL) {
        json_decref(root);
        json_decref(opts);
        return NULL;
    }
    json_object_set_new(root, "user_id", json_string(p->user_id));
    json_object_set_new(root, "message", json_string(p->message));
    if (p->match_count >= 0)
        json_object_set_new(opts, "match_count", json_integer(p->match_count));
    if (!isnan(p->match_threshold))
        json_object_set_new(opts, "match_threshold", json_real(p->match_threshold));
    if (p->history_count >= 0)
        json_object_set_new(opts, "history_count", json_integer(p->history_count));
    if (p->model != NULL)
        json_object_set_new(opts, "model", json_string(p->model));
    if (p->max_tokens >= 0)
        json_object_set_new(opts, "max_tokens", json_integer(p->max_tokens));
    if (!isnan(p->temperature))
        json_object_set_new(opts, "temperature", json_real(p->temperature));
    json_object_set_new(root, "options", opts);
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

void rp_chat_payload_free(rp_chat_payload_t *p)
{
    free(p->user_id);
    free(p->message);
    free(p->model);
    p->user_id = p->message = p->model = NULL;
}
