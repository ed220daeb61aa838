/*
 * migrations.h: the sql/ migrations compiled into the ragpool binary.
 *
 * cli/embed_sql.cmake generates the table from every sql/[0-9]*.sql, sorted
 * by name, so `ragpool migrate` needs no files beside the binary.  The
 * strings are static and NUL-terminated.
 */
#ifndef RP_CLI_MIGRATIONS_H
#define RP_CLI_MIGRATIONS_H

#include <stddef.h>

typedef struct {
    const char *name; /* file name, e.g. "0001_base.sql" */
    const char *sql;  /* the file's whole text */
} rp_migration_t;

extern const rp_migration_t rp_migrations[];
extern const size_t rp_migrations_count;

#endif
