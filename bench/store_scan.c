/*
 * store_scan.c - how fast the gateway can load its keys: tg_store_scan over
 * N keys (default 1,000,000) with the columns the gateway reads at start-up
 * (id, app_id, prefix, digest, status, expires_at). The keys are seeded
 * with plain SQL in one transaction (ULID ids as tg_id_new makes them,
 * random digests, every 10th key expiring, every 50th revoked), then the
 * store is reopened and scanned several times; each round prints rows/s,
 * the first one on a fresh connection (cold SQLite page cache, warm OS
 * cache). The database lives in a temp dir that is removed at the end.
 *
 * Id order and insertion (rowid) order decide the cost: the scan walks the
 * id index and looks each row up by rowid, which is cheap when the
 * next row is the next rowid. "spread" (the default) issues one key per
 * millisecond, as keys issued one at a time are; "burst" issues them as
 * fast as the loop runs, so that dozens share a millisecond and their
 * random ULID tails put rowids out of id order (a bulk import): the worst
 * case.
 *
 * Build and run (meson builds it with the project):
 *   ninja -C build bench/store_scan && build/bench/store_scan [keys] [rounds] [spread|burst]
 */
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/keys.h"
#include "core/store.h"
#include "core/util.h"

typedef struct tally {
  int64_t rows, nulls, bytes;
} tally_t;

/* Touch every value, as the gateway's loader would. */
static int count_row(const tg_value_t *vals, int ncols, void *ctx) {
  tally_t *t = ctx;
  for (int i = 0; i < ncols; i++) {
    if (vals[i].type == TG_V_NULL)
      t->nulls++;
    else if (vals[i].type != TG_V_INT)
      t->bytes += (int64_t)vals[i].len + (unsigned char)vals[i].s[0];
  }
  t->rows++;
  return 0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int exec(sqlite3 *db, const char *sql) {
  if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
    fprintf(stderr, "%s: %s\n", sql, sqlite3_errmsg(db));
    return -1;
  }
  return 0;
}

/* One developer, one app and n keys of that app, in one transaction. */
static int seed(const char *path, long n, int burst) {
  sqlite3 *db = NULL;
  sqlite3_stmt *ins = NULL;
  int result = -1;
  char dev[TG_ID_LEN + 1], app[TG_ID_LEN + 1], id[TG_ID_LEN + 1], sql[256];
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
    goto out;
  tg_id_new("dev", dev);
  tg_id_new("app", app);
  /* A cache that holds the random-order digest index: seeding is not what
   * is measured. */
  if (exec(db, "PRAGMA cache_size = -524288") || exec(db, "PRAGMA synchronous = OFF") ||
      exec(db, "BEGIN IMMEDIATE"))
    goto out;
  snprintf(sql, sizeof(sql),
           "INSERT INTO developers (id, email, status, created_at, updated_at) "
           "VALUES ('%s', 'bench@example.com', 'active', 1, 1)",
           dev);
  if (exec(db, sql))
    goto out;
  snprintf(sql, sizeof(sql),
           "INSERT INTO apps (id, developer_id, name, created_at, updated_at) "
           "VALUES ('%s', '%s', 'bench', 1, 1)",
           app, dev);
  if (exec(db, sql))
    goto out;
  if (sqlite3_prepare_v2(db,
                         "INSERT INTO keys (id, app_id, prefix, digest, status, expires_at, "
                         "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         -1, &ins, NULL) != SQLITE_OK)
    goto out;
  int64_t now = tg_now(), start_ms = tg_now_ms() - n;
  for (long i = 0; i < n; i++) {
    unsigned char digest[TG_DIGEST_BYTES];
    char prefix[24];
    randombytes_buf(digest, sizeof(digest));
    if (!burst)
      tg_clock_override_ms(start_ms + i);
    tg_id_new("key", id);
    snprintf(prefix, sizeof(prefix), "tg_live_%.8s", id + 18);
    sqlite3_bind_text(ins, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 2, app, -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 3, prefix, -1, SQLITE_STATIC);
    sqlite3_bind_blob(ins, 4, digest, sizeof(digest), SQLITE_STATIC);
    sqlite3_bind_text(ins, 5, i % 50 == 49 ? "revoked" : "active", -1, SQLITE_STATIC);
    if (i % 10 == 9)
      sqlite3_bind_int64(ins, 6, now + 86400 * 30);
    else
      sqlite3_bind_null(ins, 6);
    sqlite3_bind_int64(ins, 7, now);
    sqlite3_bind_int64(ins, 8, now);
    if (sqlite3_step(ins) != SQLITE_DONE) {
      fprintf(stderr, "insert: %s\n", sqlite3_errmsg(db));
      goto out;
    }
    sqlite3_reset(ins);
  }
  if (exec(db, "COMMIT"))
    goto out;
  result = 0;
out:
  tg_clock_override_ms(0);
  if (result && db)
    fprintf(stderr, "seed: %s\n", sqlite3_errmsg(db));
  sqlite3_finalize(ins);
  sqlite3_close(db);
  return result;
}

static long arg_long(const char *s, long dflt) {
  if (!s)
    return dflt;
  char *end;
  long v = strtol(s, &end, 10);
  return *end || v < 1 ? -1 : v;
}

int main(int argc, char **argv) {
  long n = arg_long(argc > 1 ? argv[1] : NULL, 1000000);
  long rounds = arg_long(argc > 2 ? argv[2] : NULL, 3);
  const char *mode = argc > 3 ? argv[3] : "spread";
  int burst = strcmp(mode, "burst") == 0;
  char dir[] = "/tmp/tg_bench_scan_XXXXXX", path[64], file[80];
  tg_store_t *s = NULL;
  tg_problem_t p = {0};
  int status = 1;
  if (n < 0 || rounds < 0 || (!burst && strcmp(mode, "spread") != 0)) {
    fprintf(stderr, "usage: %s [keys] [rounds] [spread|burst]\n", argv[0]);
    return 2;
  }
  if (tg_keys_init() || !mkdtemp(dir))
    return 1;
  snprintf(path, sizeof(path), "%s/bench.db", dir);
  tg_store_options_t opt = {.path = path, .busy_timeout_ms = 5000, .mode = TG_STORE_OPEN_MIGRATE};
  if (tg_store_open(&opt, &s, NULL, NULL, &p)) {
    fprintf(stderr, "open: %s\n", p.detail);
    goto out;
  }
  tg_store_close(s);
  s = NULL;
  double t0 = now_s();
  if (seed(path, n, burst))
    goto out;
  printf("seeded %ld keys (%s) in %.2f s\n", n, mode, now_s() - t0);

  opt.mode = TG_STORE_OPEN_CURRENT;
  if (tg_store_open(&opt, &s, NULL, NULL, &p)) {
    fprintf(stderr, "open: %s\n", p.detail);
    goto out;
  }
  static const char *const cols[] = {"id", "app_id", "prefix", "digest", "status", "expires_at"};
  double best = 0;
  for (long r = 0; r < rounds; r++) {
    tally_t t = {0};
    t0 = now_s();
    int rc = tg_store_scan(s, TG_ENT_KEY, NULL, cols, 6, count_row, &t, &p);
    double dt = now_s() - t0;
    if (rc || t.rows != n) {
      fprintf(stderr, "scan: %s (%s), %lld rows\n", tg_strerror(rc), p.detail, (long long)t.rows);
      goto out;
    }
    double rate = (double)t.rows / dt;
    if (rate > best)
      best = rate;
    printf("round %ld: %lld rows in %.3f s = %.0f rows/s (%lld NULLs)\n", r + 1, (long long)t.rows,
           dt, rate, (long long)t.nulls);
  }
  printf("store_scan: %ld keys (%s) x 6 columns, best %.0f rows/s (%.3f s per scan)\n", n, mode,
         best, (double)n / best);
  status = 0;
out:
  tg_store_close(s);
  const char *suffix[] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    snprintf(file, sizeof(file), "%s%s", path, suffix[i]);
    unlink(file);
  }
  rmdir(dir);
  return status;
}
