/*
 * migrate.c - apply embedded schema migrations (see migrate.h).
 */
#include "core/migrate.h"

#include <stdio.h>

int tg_migrate_version(sqlite3 *db) {
  sqlite3_stmt *st = NULL;
  int version = TG_ESTORE;
  if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
    goto out;
  if (sqlite3_step(st) == SQLITE_ROW)
    version = sqlite3_column_int(st, 0);
out:
  sqlite3_finalize(st);
  return version;
}

static int apply_one(sqlite3 *db, const tg_migration_t *m, tg_problem_t *p) {
  int result = TG_ESTORE;
  char *err = NULL;
  char bump[64];
  if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &err) != SQLITE_OK) {
    result = tg_problem_set(p, sqlite3_errcode(db) == SQLITE_BUSY ? TG_EBUSY : TG_ESTORE, "",
                            "migration %s: cannot lock the database: %s", m->name, err ? err : "?");
    goto out;
  }
  /* Another process may have migrated while we waited for the lock. */
  if (tg_migrate_version(db) >= m->version) {
    result = TG_OK;
    goto commit;
  }
  if (sqlite3_exec(db, m->sql, NULL, NULL, &err) != SQLITE_OK) {
    tg_problem_set(p, TG_ESTORE, "", "migration %s failed: %s", m->name, err ? err : "?");
    goto rollback;
  }
  snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", m->version);
  if (sqlite3_exec(db, bump, NULL, NULL, &err) != SQLITE_OK) {
    tg_problem_set(p, TG_ESTORE, "", "migration %s: %s", m->name, err ? err : "?");
    goto rollback;
  }
  result = TG_OK;
commit:
  if (sqlite3_exec(db, "COMMIT", NULL, NULL, &err) != SQLITE_OK) {
    result = tg_problem_set(p, TG_ESTORE, "", "migration %s: commit failed: %s", m->name,
                            err ? err : "?");
    goto rollback;
  }
  goto out;
rollback:
  sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
out:
  sqlite3_free(err);
  return result;
}

int tg_migrate_apply(sqlite3 *db, const tg_migration_t *migrations, int count, int *from, int *to,
                     tg_problem_t *p) {
  int latest = count > 0 ? migrations[count - 1].version : 0;
  int v = tg_migrate_version(db);
  if (from)
    *from = v;
  if (to)
    *to = v;
  if (v < 0)
    return tg_problem_set(p, TG_ESTORE, "", "cannot read the schema version: %s",
                          sqlite3_errmsg(db));
  if (v > latest)
    return tg_problem_set(p, TG_ESCHEMA, "",
                          "database schema version %d is newer than this binary knows (%d): "
                          "use a newer tollgate",
                          v, latest);
  for (int i = 0; i < count; i++) {
    if (migrations[i].version <= v)
      continue;
    int rc = apply_one(db, &migrations[i], p);
    if (rc)
      return rc;
    v = migrations[i].version;
    if (to)
      *to = v;
  }
  return TG_OK;
}
