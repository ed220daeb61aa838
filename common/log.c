/*
 * log.c: JSON log lines on stderr.
 *
 * The level is the only process-wide setting: it is written once at
 * start-up, before any loop runs, and only read afterwards.  Each line is
 * built in memory and written with one fwrite so lines from several
 * processes sharing a pipe do not interleave.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static rp_log_level_t min_level = RP_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void rp_log_set_level(rp_log_level_t level)
{
    min_level = level;
}

int rp_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

int rp_log_enabled(rp_log_level_t level)
{
    return level >= min_level;
}

static void format_ts(char *buf, size_t len)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03dZ", (int)(tv.tv_usec / 1000));
}

void rp_log_fields(rp_log_level_t level, const char *event, const char *job_id, json_t *fields)
{
    if (!rp_log_enabled(level)) {
        json_decref(fields);
        return;
    }
    char ts[40];
    format_ts(ts, sizeof(ts));
    json_t *line = json_object();
    if (line == NULL) {
        json_decref(fields);
        return;
    }
    json_object_set_new(line, "ts", json_string(ts));
    json_object_set_new(line, "level", json_string(level_names[level]));
    json_object_set_new(line, "event", json_string(event));
    if (job_id != NULL)
        json_object_set_new(line, "job_id", json_string(job_id));
    if (fields != NULL) {
        json_object_update(line, fields);
        json_decref(fields);
    }
    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(line);
    if (text == NULL)
        return;
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the NUL: written with an explicit length */
    fwrite(text, 1, n + 1, stderr);
    free(text);
}

void rp_log(rp_log_level_t level, const char *event, const char *job_id, const char *fmt, ...)
{
    if (!rp_log_enabled(level))
        return;
    json_t *fields = NULL;
    if (fmt != NULL) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        fields = json_object();
        if (fields != NULL)
            json_object_set_new(fields, "msg", json_string(msg));
    }
    rp_log_fields(level, event, job_id, fields);
}
