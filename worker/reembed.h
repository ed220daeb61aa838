/*
 * reembed.h: the job kinds of batch re-embedding and automatic embeddings
 * (reembed.c; the SQL side is sql/0009_reembed.sql, the guide
 * docs/REEMBED.md).
 *
 *   "reembed_plan"  splits a batch into key-range chunks, a step at a time
 *                   (ragpool.reembed_plan), each chunk an "embed_chunk" job.
 *   "embed_chunk"   embeds one chunk (a key range of a batch, or the ids an
 *                   embed_on_change trigger enqueued) and commits it with
 *                   its checkpoint in one transaction.
 */
#ifndef RP_REEMBED_H
#define RP_REEMBED_H

#include "worker_int.h"

extern const rp__kind_t rp__kind_reembed_plan;
extern const rp__kind_t rp__kind_embed_chunk;

#endif
