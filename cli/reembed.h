/*
 * reembed.h: `ragpool reembed` (start, watch or cancel a batch
 * re-embedding) and the batch lines of `ragpool status` (reembed.c).
 */
#ifndef RP_CLI_REEMBED_H
#define RP_CLI_REEMBED_H

#include <jansson.h>
#include <libpq-fe.h>

#include "cli.h"

/* The command; borrows cfg and argv (argv[0] is "reembed"). */
int rp_cli_reembed(const rp_cli_cfg_t *cfg, int argc, char **argv);
void rp_cli_reembed_usage(FILE *f);

/* Batches running, or finished in the last hour, for `ragpool status`:
 * printed as text, or (when out is not NULL) added to out as "reembed": [...].
 * Prints nothing on a database without the re-embedding schema.  Returns 0,
 * or -1 after printing the query's error. */
int rp_cli_reembed_status(PGconn *conn, json_t *out);

#endif
