/*
 * reports.c - usage report and billing export times over a seeded ledger
 * (issue 6's bench).
 *
 *   build/bench/reports [APPS] [APIS] [MINUTES]     (defaults 1000 5 2000: 10M minute rows)
 *
 * Seeds a fresh store in a temporary directory: APPS developers with one
 * app each, APIS APIs with a priced plan each, an active subscription of
 * every app to every API, and one minute row per app x API x minute in
 * October 2026 (a closed month), written straight with SQL in one
 * transaction. Then, timed:
 *   1. compaction of all of it into hour and day rows (tollgate-server's job);
 *   2. the month's billing export as CSV, first time (computed and kept)
 *      and second time (served as kept);
 *   3. the month's usage report grouped by app (JSON);
 *   4. a full-range CSV export at minute granularity grouped by app and
 *      API (one output row per ledger row): rows/s.
 * Targets: 2 and 3 each under 1 s, 4 at >= 500,000 rows/s.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/keys.h"
#include "core/report.h"
#include "core/store.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A 30-char id: prefix_ + 26 Crockford chars (the number, zero-padded). */
static void mkid(char out[31], const char *prefix, long n) {
  static const char crock[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  char body[27];
  for (int i = 25; i >= 0; i--) {
    body[i] = crock[n % 32];
    n /= 32;
  }
  body[26] = '\0';
  snprintf(out, 31, "%s_%s", prefix, body);
}

static void die(sqlite3 *db, const char *what) {
  fprintf(stderr, "reports bench: %s: %s\n", what, db ? sqlite3_errmsg(db) : "");
  exit(1);
}

static void exec(sqlite3 *db, const char *sql) {
  if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
    die(db, sql);
}

#define MONTH_START 1790812800L /* 2026-10-01T00:00:00Z */

static void seed(const char *path, long apps, long apis, long minutes) {
  sqlite3 *db;
  if (sqlite3_open(path, &db) != SQLITE_OK)
    die(db, "open");
  exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; BEGIN");
  sqlite3_stmt *st;
  char id[31], id2[31], id3[31];
  for (long a = 0; a < apis; a++) {
    mkid(id, "api", a + 1);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "INSERT INTO apis (id, slug, name, created_at, updated_at) "
             "VALUES ('%s', 'api-%ld', 'API %ld', 1, 1)",
             id, a, a);
    exec(db, sql);
    mkid(id2, "pln", a + 1);
    snprintf(sql, sizeof(sql),
             "INSERT INTO plans (id, api_id, slug, name, monthly_fee_minor, included_calls, "
             "overage_price_micros, created_at, updated_at) VALUES ('%s', '%s', 'pro', 'Pro', "
             "4900, 50000, 1500, 1, 1)",
             id2, id);
    exec(db, sql);
  }
  for (long d = 0; d < apps; d++) {
    char sql[512];
    mkid(id, "dev", d + 1);
    snprintf(sql, sizeof(sql),
             "INSERT INTO developers (id, email, status, created_at, updated_at) "
             "VALUES ('%s', 'dev%ld@example.com', 'active', 1, 1)",
             id, d);
    exec(db, sql);
    mkid(id2, "app", d + 1);
    snprintf(sql, sizeof(sql),
             "INSERT INTO apps (id, developer_id, name, created_at, updated_at) "
             "VALUES ('%s', '%s', 'app', 1, 1)",
             id2, id);
    exec(db, sql);
    for (long a = 0; a < apis; a++) {
      mkid(id3, "sub", d * apis + a + 1);
      char api[31], plan[31];
      mkid(api, "api", a + 1);
      mkid(plan, "pln", a + 1);
      snprintf(sql, sizeof(sql),
               "INSERT INTO subscriptions (id, app_id, api_id, plan_id, created_at, updated_at) "
               "VALUES ('%s', '%s', '%s', '%s', 1, 1)",
               id3, id2, api, plan);
      exec(db, sql);
    }
  }
  if (sqlite3_prepare_v2(db,
                         "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, "
                         "developer_id, api_id, plan_id, subscription_id, status_class, reason, "
                         "calls, bytes_in, bytes_out, latency_us_sum, h03, h05) "
                         "VALUES (60, ?, ?, ?, ?, ?, ?, ?, 2, '', ?, ?, ?, ?, ?, ?)",
                         -1, &st, NULL) != SQLITE_OK)
    die(db, "prepare");
  char key[31], app[31], dev[31], api[31], plan[31], sub[31];
  for (long m = 0; m < minutes; m++)
    for (long d = 0; d < apps; d++) {
      mkid(key, "key", d + 1);
      mkid(app, "app", d + 1);
      mkid(dev, "dev", d + 1);
      for (long a = 0; a < apis; a++) {
        mkid(api, "api", a + 1);
        mkid(plan, "pln", a + 1);
        mkid(sub, "sub", d * apis + a + 1);
        long calls = 1 + (m + d + a) % 7;
        sqlite3_bind_int64(st, 1, MONTH_START + 86400 * 3 + m * 60);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, app, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, dev, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, api, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, plan, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 7, sub, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 8, calls);
        sqlite3_bind_int64(st, 9, calls * 200);
        sqlite3_bind_int64(st, 10, calls * 1500);
        sqlite3_bind_int64(st, 11, calls * 40000);
        sqlite3_bind_int64(st, 12, calls - calls / 3);
        sqlite3_bind_int64(st, 13, calls / 3);
        if (sqlite3_step(st) != SQLITE_DONE)
          die(db, "insert");
        sqlite3_reset(st);
      }
    }
  sqlite3_finalize(st);
  exec(db, "COMMIT");
  sqlite3_close(db);
}

/* Read a report to the end; returns bytes, counts CRLF-ended rows. */
static size_t drain(tg_report_t *r, long *rows) {
  const char *data;
  size_t len, total = 0;
  tg_problem_t p = {0};
  int rc;
  *rows = 0;
  while ((rc = tg_report_read(r, &data, &len, &p)) == 1) {
    total += len;
    for (const char *c = data, *e = data + len; (c = memchr(c, '\n', (size_t)(e - c))); c++)
      ++*rows; /* CSV rows end CRLF; no LF appears inside our cells */
  }
  if (rc < 0) {
    fprintf(stderr, "reports bench: %s\n", p.detail);
    exit(1);
  }
  tg_report_close(r);
  return total;
}

int main(int argc, char **argv) {
  long apps = argc > 1 ? atol(argv[1]) : 1000, apis = argc > 2 ? atol(argv[2]) : 5,
       minutes = argc > 3 ? atol(argv[3]) : 2000;
  if (apps < 1 || apis < 1 || minutes < 1 || apps * apis * minutes > 100000000L) {
    fprintf(stderr, "usage: %s [APPS] [APIS] [MINUTES] (at most 1e8 rows)\n", argv[0]);
    return 2;
  }
  tg_keys_init();
  char dir[] = "/tmp/tollgate-reports-bench.XXXXXX", path[256];
  const char *reuse = getenv("TG_BENCH_DB"); /* a store kept by TG_BENCH_KEEP: skip seeding */
  if (reuse) {
    snprintf(path, sizeof(path), "%s", reuse);
  } else {
    if (!mkdtemp(dir))
      return 1;
    snprintf(path, sizeof(path), "%s/bench.db", dir);
  }
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  tg_store_options_t o = {.path = path, .busy_timeout_ms = 5000, .mode = TG_STORE_OPEN_MIGRATE};
  if (tg_store_open(&o, &s, NULL, NULL, &p) != TG_OK) {
    fprintf(stderr, "reports bench: %s\n", p.detail);
    return 1;
  }
  long rows = apps * apis * minutes;
  printf("seeding %ld minute rows (%ld apps x %ld APIs x %ld minutes)...\n", rows, apps, apis,
         minutes);
  fflush(stdout);
  double t0 = now_s();
  if (!reuse) {
    seed(path, apps, apis, minutes);
    printf("  seeded in %.1f s\n", now_s() - t0);
  }

  t0 = now_s();
  tg_usage_retention_t keep = {0, 0};
  tg_usage_compact_stats_t st, sum = {0};
  do {
    if (tg_store_usage_compact(s, MONTH_START + 40 * 86400, 60, &keep, 240, &st, &p) != TG_OK) {
      fprintf(stderr, "reports bench: compaction: %s\n", p.detail);
      return 1;
    }
    sum.hours += st.hours;
    sum.days += st.days;
  } while (st.more);
  double tc = now_s() - t0;
  printf("compaction: %lld hours and %lld days in %.2f s (%.0f minute rows/s)\n",
         (long long)sum.hours, (long long)sum.days, tc, (double)rows / tc);

  int64_t now = MONTH_START + 40 * 86400;
  for (int round = 0; round < 2; round++) {
    tg_report_t *r = NULL;
    t0 = now_s();
    if (tg_billing_open(s, "2026-10", TG_REPORT_CSV, now, 86400, &r, &p) != TG_OK) {
      fprintf(stderr, "reports bench: billing: %s\n", p.detail);
      return 1;
    }
    long n;
    size_t bytes = drain(r, &n);
    printf("billing export 2026-10 (%s): %ld lines, %zu bytes in %.3f s\n",
           round ? "kept" : "computed and kept", n - 1, bytes, now_s() - t0);
  }

  tg_report_params_t rp = {.q = {.from = MONTH_START,
                                 .to = MONTH_START + 31 * 86400,
                                 .bucket = TG_USAGE_MONTH,
                                 .group_by = TG_USAGE_BY_APP,
                                 .status_class = -1},
                           .format = TG_REPORT_JSON};
  tg_report_t *r = NULL;
  t0 = now_s();
  if (tg_report_open(s, &rp, &r, &p) != TG_OK) {
    fprintf(stderr, "reports bench: report: %s\n", p.detail);
    return 1;
  }
  long n;
  double te;
  size_t bytes = drain(r, &n);
  printf("monthly usage grouped by app (JSON): %zu bytes in %.3f s\n", bytes, now_s() - t0);

  rp.q = (tg_usage_query_t){.from = MONTH_START,
                            .to = MONTH_START + 31 * 86400,
                            .bucket = 60,
                            .group_by = TG_USAGE_BY_APP | TG_USAGE_BY_API,
                            .status_class = -1};
  rp.format = TG_REPORT_CSV;
  /* the same rows without output: how much is reading and summing */
  tg_usage_cursor_t *cur = NULL;
  t0 = now_s();
  if (tg_store_usage_open(s, &rp.q, &cur, &p) != TG_OK) {
    fprintf(stderr, "reports bench: report: %s\n", p.detail);
    return 1;
  }
  tg_usage_total_t tot;
  long nr = 0;
  while (tg_store_usage_next(cur, &tot, &p) == 1)
    nr++;
  tg_store_usage_close(cur);
  te = now_s() - t0;
  printf("  (reading and summing the same %ld rows alone: %.2f s = %.0f rows/s)\n", nr, te,
         (double)nr / te);
  t0 = now_s();
  if (tg_report_open(s, &rp, &r, &p) != TG_OK) {
    fprintf(stderr, "reports bench: report: %s\n", p.detail);
    return 1;
  }
  bytes = drain(r, &n);
  te = now_s() - t0;
  printf("full-range CSV export by minute, app and API: %ld rows, %zu bytes in %.2f s = %.0f "
         "rows/s\n",
         n - 1, bytes, te, (double)(n - 1) / te);
  tg_store_close(s);
  if (getenv("TG_BENCH_KEEP") || reuse) {
    printf("kept %s\n", path);
    return 0;
  }
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "reports bench: could not remove %s\n", dir);
  return 0;
}
