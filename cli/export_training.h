/*
 * export_training.h: `ragpool export-training` (export_training.c).
 */
#ifndef RP_CLI_EXPORT_TRAINING_H
#define RP_CLI_EXPORT_TRAINING_H

#include <stdio.h>

#include "cli.h"

/* Queue a training-data export (ragpool.enqueue_training_export) and, with
 * --wait, follow its progress until it ends.  Borrows cfg and argv. */
int rp_cli_export_training(const rp_cli_cfg_t *cfg, int argc, char **argv);
void rp_cli_export_training_usage(FILE *f);

#endif
