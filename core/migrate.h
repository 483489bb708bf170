/*
 * migrate.h - schema migrations for the SQLite store.
 *
 * Migration N (schema/NNNN_*.sql, embedded at build time by
 * schema/embed.py) takes PRAGMA user_version from N-1 to N. Each runs in
 * its own transaction together with the user_version bump, so a failure
 * anywhere in a migration leaves the database exactly as it was before
 * that migration. Internal to store_sqlite.c and its tests.
 */
#ifndef TG_MIGRATE_H
#define TG_MIGRATE_H

#include <sqlite3.h>

#include "core/error.h"

typedef struct tg_migration {
  int version;
  const char *name;
  const char *sql;
} tg_migration_t;

/* The migrations compiled into this binary, versions 1..count in order. */
extern const tg_migration_t tg_schema_migrations[];
extern const int tg_schema_migration_count;

/*
 * Bring `db` up to migrations[count-1].version. *from and *to (may be NULL)
 * receive the versions before and after. A database newer than the list
 * gives TG_ESCHEMA and is not touched. On a failing migration, that
 * migration is rolled back (earlier ones stay applied) and TG_ESTORE is
 * returned with the migration's name and SQLite's message in p.
 */
int tg_migrate_apply(sqlite3 *db, const tg_migration_t *migrations, int count, int *from, int *to,
                     tg_problem_t *p);

/* PRAGMA user_version of db, or a negative tg_err_t. */
int tg_migrate_version(sqlite3 *db);

#endif
