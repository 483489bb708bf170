/*
 * test_migrate.c - migrations: order, idempotence, all-or-nothing per
 * migration, and refusal of schemas newer than the binary.
 */
#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/keys.h"
#include "core/migrate.h"
#include "core/store.h"
#include "tg_test.h"

static char dir[64], path[128];

static sqlite3 *fresh_db(void) {
  snprintf(dir, sizeof(dir), "/tmp/tg_migrate_XXXXXX");
  if (!mkdtemp(dir))
    abort();
  snprintf(path, sizeof(path), "%s/m.db", dir);
  sqlite3 *db = NULL;
  if (sqlite3_open(path, &db) != SQLITE_OK)
    abort();
  return db;
}

static void cleanup(sqlite3 *db) {
  char f[160];
  sqlite3_close(db);
  const char *suffix[] = {"", "-wal", "-shm", "-journal"};
  for (int i = 0; i < 4; i++) {
    snprintf(f, sizeof(f), "%s%s", path, suffix[i]);
    unlink(f);
  }
  rmdir(dir);
}

static int table_exists(sqlite3 *db, const char *name) {
  sqlite3_stmt *st;
  int found = 0;
  sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", -1, &st,
                     NULL);
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  found = sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  return found;
}

TG_TEST(embedded_migrations_are_numbered_without_gaps) {
  ASSERT(tg_schema_migration_count >= 1);
  for (int i = 0; i < tg_schema_migration_count; i++) {
    ASSERT_INT_EQ(tg_schema_migrations[i].version, i + 1);
    ASSERT(strlen(tg_schema_migrations[i].sql) > 0);
  }
  ASSERT_INT_EQ(tg_store_schema_latest(), tg_schema_migration_count);
}

TG_TEST(applies_in_order_and_is_idempotent) {
  sqlite3 *db = fresh_db();
  tg_problem_t p = {0};
  int from = -1, to = -1;
  ASSERT_INT_EQ(
      tg_migrate_apply(db, tg_schema_migrations, tg_schema_migration_count, &from, &to, &p), TG_OK);
  ASSERT_INT_EQ(from, 0);
  ASSERT_INT_EQ(to, tg_schema_migration_count);
  ASSERT(table_exists(db, "keys"));
  ASSERT(table_exists(db, "usage_rollups"));
  ASSERT_INT_EQ(
      tg_migrate_apply(db, tg_schema_migrations, tg_schema_migration_count, &from, &to, &p), TG_OK);
  ASSERT_INT_EQ(from, to);
  cleanup(db);
}

TG_TEST(failed_migration_leaves_database_as_it_was) {
  static const tg_migration_t ms[] = {
      {1, "0001_a.sql", "CREATE TABLE a (x INTEGER) STRICT; INSERT INTO a VALUES (1);"},
      {2, "0002_b.sql",
       "CREATE TABLE b (x INTEGER) STRICT; INSERT INTO a VALUES (2); "
       "INSERT INTO no_such_table VALUES (3); CREATE TABLE c (x INTEGER);"},
  };
  sqlite3 *db = fresh_db();
  tg_problem_t p = {0};
  int from = -1, to = -1;
  ASSERT_INT_EQ(tg_migrate_apply(db, ms, 2, &from, &to, &p), TG_ESTORE);
  ASSERT_STR_CONTAINS(p.detail, "0002_b.sql");
  ASSERT_STR_CONTAINS(p.detail, "no_such_table");
  ASSERT_INT_EQ(from, 0);
  ASSERT_INT_EQ(to, 1);
  ASSERT_INT_EQ(tg_migrate_version(db), 1);
  ASSERT(table_exists(db, "a"));
  ASSERT(!table_exists(db, "b")); /* created before the failure, rolled back */
  ASSERT(!table_exists(db, "c"));
  sqlite3_stmt *st;
  sqlite3_prepare_v2(db, "SELECT count(*) FROM a", -1, &st, NULL);
  ASSERT_INT_EQ(sqlite3_step(st), SQLITE_ROW);
  ASSERT_INT_EQ(sqlite3_column_int(st, 0), 1); /* the insert of migration 2 was undone */
  sqlite3_finalize(st);
  cleanup(db);
}

TG_TEST(newer_schema_is_refused_untouched) {
  sqlite3 *db = fresh_db();
  tg_problem_t p = {0};
  ASSERT_INT_EQ(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
  ASSERT_INT_EQ(
      tg_migrate_apply(db, tg_schema_migrations, tg_schema_migration_count, NULL, NULL, &p),
      TG_ESCHEMA);
  ASSERT_STR_CONTAINS(p.detail, "newer");
  ASSERT_INT_EQ(tg_migrate_version(db), 99);
  ASSERT(!table_exists(db, "apis"));
  /* through the store interface too, in every mode */
  tg_store_open_mode_t modes[] = {TG_STORE_OPEN_MIGRATE, TG_STORE_OPEN_CURRENT,
                                  TG_STORE_OPEN_READONLY};
  for (int i = 0; i < 3; i++) {
    tg_store_options_t opt = {.path = path, .busy_timeout_ms = 100, .mode = modes[i]};
    tg_store_t *s = NULL;
    tg_problem_clear(&p);
    ASSERT_INT_EQ(tg_store_open(&opt, &s, NULL, NULL, &p), TG_ESCHEMA);
    ASSERT(s == NULL);
    ASSERT_STR_CONTAINS(p.detail, "newer");
  }
  ASSERT_INT_EQ(tg_migrate_version(db), 99);
  cleanup(db);
}

TG_TEST(older_schema_needs_migrate) {
  sqlite3 *db = fresh_db();
  tg_problem_t p = {0};
  tg_store_options_t opt = {.path = path, .busy_timeout_ms = 100, .mode = TG_STORE_OPEN_CURRENT};
  tg_store_t *s = NULL;
  ASSERT_INT_EQ(tg_store_open(&opt, &s, NULL, NULL, &p), TG_ESCHEMA);
  ASSERT_STR_CONTAINS(p.detail, "tollgate migrate");
  ASSERT_INT_EQ(tg_migrate_version(db), 0);
  opt.mode = TG_STORE_OPEN_MIGRATE;
  int from = -1, to = -1;
  ASSERT_INT_EQ(tg_store_open(&opt, &s, &from, &to, &p), TG_OK);
  ASSERT_INT_EQ(from, 0);
  ASSERT_INT_EQ(to, tg_store_schema_latest());
  tg_store_close(s);
  cleanup(db);
}

TG_TEST(not_a_database_is_refused) {
  sqlite3 *db = fresh_db();
  sqlite3_close(db);
  FILE *f = fopen(path, "w");
  ASSERT(f != NULL);
  fputs("this is not a database, it is a text file that is long enough to have a header page\n", f);
  fclose(f);
  tg_store_options_t opt = {.path = path, .busy_timeout_ms = 100, .mode = TG_STORE_OPEN_MIGRATE};
  tg_store_t *s = NULL;
  tg_problem_t p = {0};
  ASSERT_INT_NE(tg_store_open(&opt, &s, NULL, NULL, &p), TG_OK);
  ASSERT_STR_CONTAINS(p.detail, "not a Tollgate database");
  cleanup(NULL);
}

int main(int argc, char **argv) {
  if (tg_keys_init())
    return 2;
  return tg_test_main(argc, argv);
}
