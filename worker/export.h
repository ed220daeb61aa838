/*
 * export.h: the "export_training" job kind (export.c; SQL in
 * sql/0010_models_streaming_training.sql, guide docs/TRAINING.md): exports
 * the conversations users rated 1 as fine-tuning data.
 */
#ifndef RP_WORKER_EXPORT_H
#define RP_WORKER_EXPORT_H

#include "worker_int.h"

extern const rp__kind_t rp__kind_export;

#endif
