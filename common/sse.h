/*
 * sse.h: an incremental parser for Server-Sent Events (text/event-stream),
 * as streamed chat completions send them.
 *
 * The parser is fed the body in arbitrary pieces (split anywhere: mid-line,
 * mid-UTF-8 sequence, between the CR and LF of a CRLF) and emits one event
 * per blank line that follows at least one data field, following the
 * WHATWG "event stream interpretation": lines end in LF, CRLF or CR; a
 * leading byte-order mark is skipped; lines starting with ':' are comments;
 * "field: value" loses one space after the colon; a line without a colon is
 * a field with an empty value; several data lines are joined with "\n";
 * unknown fields are ignored.  The last event id persists across events, as
 * the specification says.  An event (its pending line plus the data
 * collected so far) larger than max_event bytes is an error, and the parser
 * then stays failed: a stream that goes wrong is not resynchronised.
 */
#ifndef RP_SSE_H
#define RP_SSE_H

#include <stddef.h>

typedef struct rp_sse rp_sse_t;

typedef struct rp_sse_event {
    const char *event; /* event type; "message" when the event set none */
    const char *data;  /* data lines joined with "\n", NUL-terminated */
    size_t data_len;
    const char *id; /* last event id seen on this stream, "" when none */
    long retry_ms;  /* last valid "retry" field, -1 when none */
} rp_sse_event_t;

/* Called once per complete event; ev and its strings are valid only during
 * the call.  Return 0 to go on, or a non-zero value (use a negative RP_E*
 * code) to stop: rp_sse_feed then returns that value and the parser stays
 * failed. */
typedef int (*rp_sse_cb)(void *data, const rp_sse_event_t *ev);

/* Create a parser.  max_event bounds one event's size in bytes (0 = 1 MiB).
 * Returns owned (free with rp_sse_free) or NULL when out of memory. */
rp_sse_t *rp_sse_new(size_t max_event, rp_sse_cb cb, void *data);

/* Feed len bytes (borrowed).  Returns 0, RP_ELIMIT when an event grew past
 * max_event, RP_ENOMEM, the callback's non-zero value, or the first such
 * error again once the parser has failed. */
int rp_sse_feed(rp_sse_t *p, const char *buf, size_t len);

/* Number of events emitted so far. */
size_t rp_sse_count(const rp_sse_t *p);

/* True when bytes of an unfinished event are buffered (the stream ended
 * mid-event if this is still true at its end). */
int rp_sse_partial(const rp_sse_t *p);

/* Free the parser (NULL is allowed). */
void rp_sse_free(rp_sse_t *p);

#endif
