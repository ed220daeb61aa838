/*
 * stream.h: partial answers pushed to subscribers while a model writes them.
 *
 * With RAGPOOL_STREAM on, the chat kind reads completions as server-sent
 * events and hands every piece of text to the job's rp_stream_job_t.  Text
 * is coalesced: a job pushes at once when it has not pushed for
 * RAGPOOL_STREAM_INTERVAL_MS (so the first words go out without delay), and
 * otherwise waits until that interval has passed, so one answer causes at
 * most one push per interval however fast the model writes.  A push is one
 * chunk `{"topic","user_id","job_id","attempt","seq","text","done"}`:
 * `seq` counts from 1 within an attempt, so a subscriber orders chunks by
 * (attempt, seq), drops duplicates, and knows that chunks of a higher
 * attempt replace those of a failed one; the last chunk of an answer has
 * `done: true`.  Concatenating an attempt's texts gives the answer.
 *
 * Chunks of all jobs gathered in one loop turn go to Postgres in one
 * statement, `ragpool.stream_push(chunks)` (sql/0010): Supabase Realtime
 * Broadcast (`realtime.send`, event `chat_chunk`, private topic
 * `ragpool:user:<user_id>`) where the realtime schema exists, else
 * ragpool.stream_chunks plus NOTIFY ragpool_stream.  They travel on one
 * connection of their own, so they commit in the order they were pushed.
 */
#ifndef RP_WORKER_STREAM_H
#define RP_WORKER_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "err.h"

typedef struct rp_stream rp_stream_t;
typedef struct rp_stream_job rp_stream_job_t;

/* Create the streamer on conninfo (copied).  interval_ms 0 pushes every
 * piece as it arrives.  Returns owned (rp_stream_close) or NULL with err. */
rp_stream_t *rp_stream_new(uv_loop_t *loop, const char *conninfo, long interval_ms, rp_err_t *err);
int rp_stream_start(rp_stream_t *s);

/* A stream for one attempt of one job; strings are copied.  Returns owned
 * (end it with rp_stream_job_finish or rp_stream_job_end) or NULL when out
 * of memory. */
rp_stream_job_t *rp_stream_job_new(rp_stream_t *s, const char *job_id, int attempt,
                                   const char *user_id);

/* More text of the answer (borrowed).  Must not be called after the end. */
void rp_stream_job_text(rp_stream_job_t *sj, const char *text, size_t len);

/* Chunks pushed so far by this attempt. */
uint32_t rp_stream_job_pushed(const rp_stream_job_t *sj);

/* The answer is complete: push what is pending with done = true, then free
 * sj. */
void rp_stream_job_finish(rp_stream_job_t *sj);

/* The attempt failed or was abandoned: push what is pending (done = false)
 * so subscribers see all the text it produced, then free sj (NULL ok). */
void rp_stream_job_end(rp_stream_job_t *sj);

/* End of a loop turn: send the chunks gathered since the last flush. */
void rp_stream_flush(rp_stream_t *s);

/* Totals since start: chunks pushed, statements sent. */
uint64_t rp_stream_chunks(const rp_stream_t *s);
uint64_t rp_stream_statements(const rp_stream_t *s);

/* Send what is gathered, then close the connection; close_cb (may be NULL)
 * runs once everything is freed.  Jobs must have ended their streams. */
void rp_stream_close(rp_stream_t *s, void (*close_cb)(void *data), void *data);

#endif
