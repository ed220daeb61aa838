/*
 * log.h: JSON logs, one object per line on stderr.
 *
 * Every line has "ts" (RFC 3339, UTC, milliseconds), "level", "event" and,
 * for lines about a job, "job_id".  Callers never pass secrets: the
 * configuration module redacts secret settings before they are logged, and
 * HTTP modules never log headers.
 */
#ifndef RP_LOG_H
#define RP_LOG_H

#include <jansson.h>

typedef enum { RP_LOG_DEBUG = 0, RP_LOG_INFO, RP_LOG_WARN, RP_LOG_ERROR } rp_log_level_t;

/* Set the lowest level that is written (default RP_LOG_INFO).  Called once
 * at start-up, before the loop runs. */
void rp_log_set_level(rp_log_level_t level);

/* Parse "debug", "info", "warn" or "error"; returns -1 for anything else. */
int rp_log_level_parse(const char *s);

/* True when a line at this level would be written (to skip building fields). */
int rp_log_enabled(rp_log_level_t level);

/* Write one line: event is a dotted name ("job.done"), job_id may be NULL,
 * msg is printf-style and may be NULL. */
void rp_log(rp_log_level_t level, const char *event, const char *job_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Write one line with extra fields.  Takes ownership of fields (a JSON
 * object, may be NULL); its keys are added beside ts/level/event/job_id. */
void rp_log_fields(rp_log_level_t level, const char *event, const char *job_id, json_t *fields);

#define rp_log_debug(...) rp_log(RP_LOG_DEBUG, __VA_ARGS__)
#define rp_log_info(...) rp_log(RP_LOG_INFO, __VA_ARGS__)
#define rp_log_warn(...) rp_log(RP_LOG_WARN, __VA_ARGS__)
#define rp_log_error(...) rp_log(RP_LOG_ERROR, __VA_ARGS__)

#endif
