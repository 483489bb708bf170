/*
 * test_usage.c - the usage ledger (usage_rollups): tg_store_usage_add
 * inserts, then adds onto existing rows (every counter and histogram
 * bucket), refuses bad rows naming them, is all or nothing, and reports a
 * locked store as TG_EBUSY; tg_store_usage_calls_since sums what counts
 * against quotas. Raw sqlite3 reads check what really landed in the table.
 *
 * Everything a test allocates is released by teardown(), which also runs
 * before the next test and at exit, so a failing assertion leaks nothing.
 */
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store_fixture.h"
#include "tg_test.h"

static store_fixture_t FX;
static tg_store_t *S;
static tg_store_t *S2;      /* a second connection, when a test needs one */
static sqlite3 *RAW;        /* read-only view of the file */
static char *WANT, *BEFORE; /* ledger dumps (journal_the_batches) */

static void teardown(void) {
  free(WANT);
  free(BEFORE);
  WANT = BEFORE = NULL;
  sqlite3_close(RAW);
  RAW = NULL;
  tg_store_close(S2);
  S2 = NULL;
  tg_store_close(S);
  S = NULL;
  fixture_remove(&FX, NULL);
}

static void fresh(void) {
  teardown();
  S = fixture_open(&FX, "tg_usage");
  if (sqlite3_open_v2(FX.path, &RAW, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
    abort();
}

#define MIN0 1700000040 /* a minute start (and 1699999200 an hour start) */

/* A served minute row of `calls` requests, all in bucket 3. */
static tg_usage_row_t urow(const char *key, const char *sub, int status_class, const char *reason,
                           int64_t calls) {
  tg_usage_row_t r = {
      .granularity = 60,
      .period_start = MIN0,
      .key_id = key,
      .app_id = "app_01",
      .developer_id = "dev_01",
      .api_id = "api_01",
      .plan_id = "pln_01",
      .subscription_id = sub,
      .status_class = status_class,
      .reason = reason,
      .calls = calls,
      .bytes_in = calls * 100,
      .bytes_out = calls * 1000,
      .latency_us_sum = calls * 5000,
  };
  r.h[3] = calls;
  return r;
}

/* One ledger row as stored: ints[0..18) are calls, bytes_in, bytes_out,
 * latency_us_sum, h00..h14; texts are app_id, developer_id,
 * subscription_id. Returns false when there is no such row. */
typedef struct stored {
  int64_t ints[4 + TG_USAGE_BUCKETS];
  char texts[3][72];
} stored_t;

static bool read_row(const tg_usage_row_t *k, stored_t *out) {
  sqlite3_stmt *q = NULL;
  memset(out, 0, sizeof(*out));
  if (sqlite3_prepare_v2(RAW,
                         "SELECT calls, bytes_in, bytes_out, latency_us_sum, h00, h01, h02, h03, "
                         "h04, h05, h06, h07, h08, h09, h10, h11, h12, h13, h14, app_id, "
                         "developer_id, subscription_id FROM usage_rollups "
                         "WHERE granularity = ? AND period_start = ? AND key_id = ? "
                         "AND api_id = ? AND plan_id = ? AND status_class = ? AND reason = ?",
                         -1, &q, NULL) != SQLITE_OK)
    TG_FAIL_("prepare: %s", sqlite3_errmsg(RAW));
  sqlite3_bind_int64(q, 1, k->granularity);
  sqlite3_bind_int64(q, 2, k->period_start);
  sqlite3_bind_text(q, 3, k->key_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(q, 4, k->api_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(q, 5, k->plan_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(q, 6, k->status_class);
  sqlite3_bind_text(q, 7, k->reason, -1, SQLITE_STATIC);
  bool found = sqlite3_step(q) == SQLITE_ROW;
  if (found) {
    for (int i = 0; i < 4 + TG_USAGE_BUCKETS; i++)
      out->ints[i] = sqlite3_column_int64(q, i);
    for (int i = 0; i < 3; i++)
      snprintf(out->texts[i], sizeof(out->texts[i]), "%s",
               (const char *)sqlite3_column_text(q, 4 + TG_USAGE_BUCKETS + i));
  }
  sqlite3_finalize(q);
  return found;
}

/* Rows of a table (usage_rollups, usage_journal), read raw. */
static int64_t rows_in(const char *table) {
  sqlite3_stmt *q = NULL;
  char sql[64];
  int64_t n = -1;
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
  if (sqlite3_prepare_v2(RAW, sql, -1, &q, NULL) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
    n = sqlite3_column_int64(q, 0);
  sqlite3_finalize(q);
  return n;
}

static int64_t ledger_rows(void) {
  return rows_in("usage_rollups");
}

static void assert_stored(const stored_t *got, const tg_usage_row_t *want) {
  ASSERT_INT_EQ(got->ints[0], want->calls);
  ASSERT_INT_EQ(got->ints[1], want->bytes_in);
  ASSERT_INT_EQ(got->ints[2], want->bytes_out);
  ASSERT_INT_EQ(got->ints[3], want->latency_us_sum);
  for (int k = 0; k < TG_USAGE_BUCKETS; k++)
    ASSERT_INT_EQ(got->ints[4 + k], want->h[k]);
  ASSERT_STR_EQ(got->texts[0], want->app_id);
  ASSERT_STR_EQ(got->texts[1], want->developer_id);
  ASSERT_STR_EQ(got->texts[2], want->subscription_id);
}

#define EXPECT_RC(call, code, fld)                                                                 \
  do {                                                                                             \
    tg_problem_clear(&p);                                                                          \
    int rc_ = (call);                                                                              \
    if (rc_ != (code) || strcmp(p.field, (fld)) != 0)                                              \
      TG_FAIL_("%s: expected %s on \"%s\", got %s on \"%s\" (%s)", #call, tg_strerror(code),       \
               (fld), tg_strerror(rc_), p.field, p.detail);                                        \
  } while (0)

TG_TEST(usage_add_inserts_then_adds_onto_existing_rows) {
  fresh();
  tg_problem_t p = {0};
  tg_usage_row_t first[] = {
      urow("key_A", "sub_A", 2, "", 3),
      urow("key_A", "sub_A", 0, "rate_limited", 4),
  };
  EXPECT_RC(tg_store_usage_add(S, first, 2, &p), TG_OK, "");
  ASSERT_INT_EQ(ledger_rows(), 2);
  stored_t got;
  ASSERT(read_row(&first[0], &got));
  assert_stored(&got, &first[0]);
  ASSERT(read_row(&first[1], &got));
  assert_stored(&got, &first[1]);

  /* Same primary key, every counter and bucket different; new ids. Given
   * twice in one batch: both add up. */
  tg_usage_row_t more = urow("key_A", "sub_B", 2, "", 0);
  more.app_id = "app_02";
  more.developer_id = "dev_02";
  more.h[3] = 0;
  for (int k = 0; k < TG_USAGE_BUCKETS; k++) {
    more.h[k] = k + 1;
    more.calls += k + 1;
  }
  more.bytes_in = 7;
  more.bytes_out = 11;
  more.latency_us_sum = 13;
  tg_usage_row_t twice[] = {more, more};
  EXPECT_RC(tg_store_usage_add(S, twice, 2, &p), TG_OK, "");
  ASSERT_INT_EQ(ledger_rows(), 2);
  tg_usage_row_t want = more;
  want.calls = first[0].calls + 2 * more.calls;
  want.bytes_in = first[0].bytes_in + 2 * more.bytes_in;
  want.bytes_out = first[0].bytes_out + 2 * more.bytes_out;
  want.latency_us_sum = first[0].latency_us_sum + 2 * more.latency_us_sum;
  for (int k = 0; k < TG_USAGE_BUCKETS; k++)
    want.h[k] = first[0].h[k] + 2 * more.h[k];
  want.app_id = first[0].app_id; /* app and developer: those of the first write */
  want.developer_id = first[0].developer_id;
  ASSERT(read_row(&more, &got));
  assert_stored(&got, &want); /* the subscription: the new one */
  /* the rejected row is a different key (status_class, reason): untouched */
  ASSERT(read_row(&first[1], &got));
  assert_stored(&got, &first[1]);

  /* Each primary-key column separates rows; the other columns do not. */
  tg_usage_row_t apart[6];
  for (int i = 0; i < 6; i++)
    apart[i] = urow("key_A", "sub_A", 2, "", 1);
  apart[0].granularity = 3600;
  apart[0].period_start = 1699999200;
  apart[1].period_start = MIN0 + 60;
  apart[2].key_id = "key_B";
  apart[3].api_id = "api_02";
  apart[4].plan_id = "pln_02";
  apart[5].status_class = 5;
  EXPECT_RC(tg_store_usage_add(S, apart, 6, &p), TG_OK, "");
  ASSERT_INT_EQ(ledger_rows(), 8);
  /* nothing to add is fine */
  EXPECT_RC(tg_store_usage_add(S, NULL, 0, &p), TG_OK, "");
  ASSERT_INT_EQ(ledger_rows(), 8);
}

/* A bad row: break one rule of `urow` and expect TG_EINVAL naming it. */
typedef struct bad_case {
  const char *field; /* expected problem field, for the row at index 1 */
  void (*spoil)(tg_usage_row_t *r);
} bad_case_t;

static void bad_granularity(tg_usage_row_t *r) {
  r->granularity = 120;
}
static void bad_unaligned(tg_usage_row_t *r) {
  r->period_start = MIN0 + 1;
}
static void bad_unaligned_hour(tg_usage_row_t *r) {
  r->granularity = 3600; /* MIN0 is a minute, not an hour start */
}
static void bad_negative_start(tg_usage_row_t *r) {
  r->period_start = -60;
}
static void bad_status_high(tg_usage_row_t *r) {
  r->status_class = 6;
}
static void bad_status_low(tg_usage_row_t *r) {
  r->status_class = -1;
}
static void bad_reject_without_reason(tg_usage_row_t *r) {
  r->status_class = 0;
}
static void bad_served_with_reason(tg_usage_row_t *r) {
  r->reason = "quota";
}
static void bad_null_key(tg_usage_row_t *r) {
  r->key_id = NULL;
}
static void bad_null_sub(tg_usage_row_t *r) {
  r->subscription_id = NULL;
}
static void bad_null_reason(tg_usage_row_t *r) {
  r->reason = NULL;
}
/* Text of exactly n bytes (n < 80), in one of two static buffers. */
static const char *text_of(int which, size_t n) {
  static char buf[2][80];
  memset(buf[which], 'x', n);
  buf[which][n] = '\0';
  return buf[which];
}
static void bad_long_api(tg_usage_row_t *r) {
  r->api_id = text_of(0, 65);
}
static void bad_long_reason(tg_usage_row_t *r) {
  r->status_class = 0;
  r->reason = text_of(0, 33);
}
static void bad_negative_calls(tg_usage_row_t *r) {
  r->calls = -1;
  r->h[3] = -1;
}
static void bad_negative_bytes(tg_usage_row_t *r) {
  r->bytes_out = -5;
}
static void bad_negative_latency(tg_usage_row_t *r) {
  r->latency_us_sum = -5;
}
static void bad_hist_short(tg_usage_row_t *r) {
  r->h[3] -= 1;
}
static void bad_hist_long(tg_usage_row_t *r) {
  r->h[14] = 1;
}
static void bad_hist_negative(tg_usage_row_t *r) {
  r->h[0] = -1;
  r->h[1] = 1;
}
static void bad_hist_overflow(tg_usage_row_t *r) {
  r->calls = 1;
  r->h[0] = INT64_MAX;
  r->h[1] = INT64_MAX;
  r->h[2] = 3; /* a wrapping sum would come to 1 */
  r->h[3] = 0;
}

TG_TEST(usage_add_refuses_bad_rows_naming_them_and_adds_nothing) {
  fresh();
  tg_problem_t p = {0};
  static const bad_case_t cases[] = {
      {"rows[1].granularity", bad_granularity},
      {"rows[1].period_start", bad_unaligned},
      {"rows[1].period_start", bad_unaligned_hour},
      {"rows[1].period_start", bad_negative_start},
      {"rows[1].status_class", bad_status_high},
      {"rows[1].status_class", bad_status_low},
      {"rows[1].reason", bad_reject_without_reason},
      {"rows[1].reason", bad_served_with_reason},
      {"rows[1].key_id", bad_null_key},
      {"rows[1].subscription_id", bad_null_sub},
      {"rows[1].reason", bad_null_reason},
      {"rows[1].api_id", bad_long_api},
      {"rows[1].reason", bad_long_reason},
      {"rows[1].calls", bad_negative_calls},
      {"rows[1].bytes_out", bad_negative_bytes},
      {"rows[1].latency_us_sum", bad_negative_latency},
      {"rows[1].h", bad_hist_short},
      {"rows[1].h", bad_hist_long},
      {"rows[1].h", bad_hist_negative},
      {"rows[1].h", bad_hist_overflow},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    tg_usage_row_t rows[3] = {
        urow("key_A", "sub_A", 2, "", 5),
        urow("key_B", "sub_A", 2, "", 5),
        urow("key_C", "sub_A", 2, "", 5),
    };
    cases[i].spoil(&rows[1]);
    EXPECT_RC(tg_store_usage_add(S, rows, 3, &p), TG_EINVAL, cases[i].field);
    ASSERT(p.detail[0] != '\0');
    ASSERT_INT_EQ(ledger_rows(), 0);
  }
  EXPECT_RC(tg_store_usage_add(S, NULL, 1, &p), TG_EINVAL, "rows");
  /* the limits themselves are fine: 64-byte ids, a 32-byte reason */
  tg_usage_row_t edge = urow(text_of(0, 64), "", 0, text_of(1, 32), 0);
  EXPECT_RC(tg_store_usage_add(S, &edge, 1, &p), TG_OK, "");
  ASSERT_INT_EQ(ledger_rows(), 1);
}

TG_TEST(usage_add_rolls_back_the_whole_batch_when_the_store_refuses_a_row) {
  fresh();
  tg_problem_t p = {0};
  tg_usage_row_t seed = urow("key_A", "sub_A", 2, "", 1);
  EXPECT_RC(tg_store_usage_add(S, &seed, 1, &p), TG_OK, "");
  /* Valid on its own, but adding it to the seeded row overflows calls:
   * the store refuses it after the first row of the batch went in. */
  tg_usage_row_t batch[2] = {urow("key_B", "sub_A", 2, "", 5), urow("key_A", "sub_A", 2, "", 0)};
  batch[1].calls = INT64_MAX;
  batch[1].h[3] = INT64_MAX;
  tg_problem_clear(&p);
  int rc = tg_store_usage_add(S, batch, 2, &p);
  ASSERT_INT_NE(rc, TG_OK);
  ASSERT_INT_NE(rc, TG_EBUSY);
  ASSERT_STR_CONTAINS(p.detail, "rows[1]");
  ASSERT_INT_EQ(ledger_rows(), 1); /* key_B's row is gone too */
  stored_t got;
  ASSERT(read_row(&seed, &got));
  assert_stored(&got, &seed);

  /* Inside the caller's transaction the batch is a savepoint: it goes,
   * what the transaction did before stays. */
  EXPECT_RC(tg_store_begin(S, &p), TG_OK, "");
  tg_usage_row_t ok = urow("key_C", "sub_A", 3, "", 2);
  EXPECT_RC(tg_store_usage_add(S, &ok, 1, &p), TG_OK, "");
  tg_problem_clear(&p);
  ASSERT_INT_NE(tg_store_usage_add(S, batch, 2, &p), TG_OK);
  EXPECT_RC(tg_store_commit(S, &p), TG_OK, "");
  ASSERT_INT_EQ(ledger_rows(), 2);
  ASSERT(read_row(&ok, &got));
  assert_stored(&got, &ok);
  /* and a rolled-back transaction takes the batch with it */
  EXPECT_RC(tg_store_begin(S, &p), TG_OK, "");
  tg_usage_row_t gone = urow("key_D", "sub_A", 3, "", 2);
  EXPECT_RC(tg_store_usage_add(S, &gone, 1, &p), TG_OK, "");
  tg_store_rollback(S);
  ASSERT_INT_EQ(ledger_rows(), 2);
}

/* The metering thread's pause: what another connection sees mid-flush. */
static int pauses, seen_mid_flush = -1;
static void count_pause(void) {
  if (pauses++ == 0)
    seen_mid_flush = ledger_rows();
}

TG_TEST(usage_add_paced_pauses_between_slices_of_one_transaction) {
  fresh();
  tg_problem_t p = {0};
  static char keys[10][8];
  tg_usage_row_t rows[10];
  for (int i = 0; i < 10; i++) {
    snprintf(keys[i], sizeof(keys[i]), "key_%d", i);
    rows[i] = urow(keys[i], "sub_A", 2, "", i + 1);
  }
  pauses = 0;
  seen_mid_flush = -1;
  EXPECT_RC(tg_store_usage_add_paced(S, rows, 10, 3, count_pause, &p), TG_OK, "");
  ASSERT_INT_EQ(pauses, 3);         /* after rows 3, 6 and 9; not after the last */
  ASSERT_INT_EQ(seen_mid_flush, 0); /* nothing committed until the end */
  ASSERT_INT_EQ(ledger_rows(), 10);
  stored_t got;
  ASSERT(read_row(&rows[9], &got));
  assert_stored(&got, &rows[9]);

  /* A bad row is found before anything is written or paused for. */
  pauses = 0;
  rows[7].status_class = 9;
  EXPECT_RC(tg_store_usage_add_paced(S, rows, 10, 3, count_pause, &p), TG_EINVAL,
            "rows[7].status_class");
  ASSERT_INT_EQ(pauses, 0);
  /* An overflow only the store sees rolls back rows already written and
   * paused over. */
  rows[7].status_class = 2;
  rows[8].calls = INT64_MAX;
  rows[8].h[3] = INT64_MAX;
  tg_problem_clear(&p);
  ASSERT_INT_NE(tg_store_usage_add_paced(S, rows, 10, 3, count_pause, &p), TG_OK);
  ASSERT_INT_EQ(pauses, 2);
  ASSERT(read_row(&rows[0], &got));
  ASSERT_INT_EQ(got.ints[0], 1); /* calls: the first add only */
}

TG_TEST(usage_add_on_a_locked_store_is_busy_and_can_be_retried) {
  fresh();
  tg_problem_t p = {0};
  tg_store_options_t opt = {.path = FX.path, .busy_timeout_ms = 50, .mode = TG_STORE_OPEN_CURRENT};
  EXPECT_RC(tg_store_open(&opt, &S2, NULL, NULL, &p), TG_OK, "");
  tg_usage_row_t rows[2] = {urow("key_A", "sub_A", 2, "", 3), urow("key_B", "sub_A", 4, "", 2)};
  /* S holds the write lock: S2 waits 50 ms, then gives up. */
  EXPECT_RC(tg_store_begin(S, &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_add(S2, rows, 2, &p), TG_EBUSY, "");
  EXPECT_RC(tg_store_usage_add(S2, rows, 2, &p), TG_EBUSY, "");
  tg_store_rollback(S);
  ASSERT_INT_EQ(ledger_rows(), 0);
  /* the caller kept its rows: the retry adds them once */
  EXPECT_RC(tg_store_usage_add(S2, rows, 2, &p), TG_OK, "");
  ASSERT_INT_EQ(ledger_rows(), 2);
  stored_t got;
  ASSERT(read_row(&rows[0], &got));
  assert_stored(&got, &rows[0]);
}

/* Totals the callback saw, in order. */
typedef struct totals {
  char sub[8][72];
  int64_t calls[8];
  int n;
  int stop; /* non-zero: return it from the first call */
} totals_t;

static int collect_total(const char *sub, int64_t calls, void *ctx) {
  totals_t *t = ctx;
  if (t->n == 8)
    return 99;
  snprintf(t->sub[t->n], sizeof(t->sub[0]), "%s", sub);
  t->calls[t->n++] = calls;
  return t->stop;
}

TG_TEST(usage_calls_since_counts_served_minutes_per_subscription) {
  fresh();
  tg_problem_t p = {0};
  const int64_t since = 1699999200; /* an hour (and so a minute) start */
  tg_usage_row_t rows[12];
  int n = 0;
  rows[n++] = urow("key_A", "sub_A", 2, "", 10); /* counted: A */
  rows[n - 1].period_start = since;
  rows[n++] = urow("key_A", "sub_A", 4, "", 5); /* counted: A (4xx let through) */
  rows[n++] = urow("key_A", "sub_A", 5, "", 2); /* counted: A */
  rows[n - 1].period_start = since + 3540;
  rows[n++] = urow("key_B", "sub_A", 1, "", 3);        /* counted: A (another key) */
  rows[n++] = urow("key_A", "sub_A", 0, "quota", 100); /* rejected: not counted */
  rows[n++] = urow("key_A", "sub_A", 2, "", 1000);     /* before since */
  rows[n - 1].period_start = since - 60;
  rows[n++] = urow("key_A", "sub_A", 2, "", 20); /* the hour row of the same traffic */
  rows[n - 1].granularity = 3600;
  rows[n - 1].period_start = since;
  rows[n++] = urow("key_A", "sub_A", 2, "", 20); /* and the day row */
  rows[n - 1].granularity = 86400;
  rows[n - 1].period_start = since - since % 86400 + 86400;
  rows[n++] = urow("key_C", "sub_B", 2, "", 7); /* counted: B */
  rows[n++] = urow("", "", 2, "", 50);          /* no subscription: not counted */
  rows[n++] = urow("key_D", "", 3, "", 40);     /* no subscription: not counted */
  EXPECT_RC(tg_store_usage_add(S, rows, (size_t)n, &p), TG_OK, "");

  totals_t t = {0};
  EXPECT_RC(tg_store_usage_calls_since(S, since, collect_total, &t, &p), TG_OK, "");
  ASSERT_INT_EQ(t.n, 2);
  ASSERT_STR_EQ(t.sub[0], "sub_A");
  ASSERT_INT_EQ(t.calls[0], 10 + 5 + 2 + 3);
  ASSERT_STR_EQ(t.sub[1], "sub_B");
  ASSERT_INT_EQ(t.calls[1], 7);
  /* since is inclusive: one minute earlier takes in the 1000 */
  memset(&t, 0, sizeof(t));
  EXPECT_RC(tg_store_usage_calls_since(S, since - 60, collect_total, &t, &p), TG_OK, "");
  ASSERT_INT_EQ(t.calls[0], 1020);
  /* a later since sees only the last minute of the hour */
  memset(&t, 0, sizeof(t));
  EXPECT_RC(tg_store_usage_calls_since(S, since + 3540, collect_total, &t, &p), TG_OK, "");
  ASSERT_INT_EQ(t.n, 1);
  ASSERT_INT_EQ(t.calls[0], 2);
  /* nothing yet */
  memset(&t, 0, sizeof(t));
  EXPECT_RC(tg_store_usage_calls_since(S, since + 86400 * 2, collect_total, &t, &p), TG_OK, "");
  ASSERT_INT_EQ(t.n, 0);
  /* the callback stops it, and its value comes back */
  memset(&t, 0, sizeof(t));
  t.stop = 9;
  EXPECT_RC(tg_store_usage_calls_since(S, since, collect_total, &t, &p), 9, "");
  ASSERT_INT_EQ(t.n, 1);
  EXPECT_RC(tg_store_usage_calls_since(S, since, NULL, NULL, &p), TG_EINVAL, "cb");
}

/* ---- compaction and reports --------------------------------------------- */

#define DAY0 1699920000 /* 2023-11-14 00:00:00 UTC, a day start */

/* Traffic over two days: minute rows for two keys on two APIs, served and
 * refused, at minutes spread over the hours. */
static int64_t seed_two_days(void) {
  tg_problem_t p = {0};
  tg_usage_row_t rows[64];
  int n = 0;
  int64_t total = 0;
  for (int d = 0; d < 2; d++)
    for (int h = 0; h < 24; h += 5)
      for (int m = 0; m < 60; m += 29) {
        int64_t t = DAY0 + d * 86400 + h * 3600 + m * 60;
        rows[n] = urow(h % 2 ? "key_A" : "key_B", "sub_A", m == 0 ? 2 : m == 29 ? 4 : 5, "", 3 + h);
        rows[n].period_start = t;
        rows[n].api_id = d ? "api_02" : "api_01";
        total += rows[n].calls;
        n++;
        rows[n] = urow("", "", 0, m ? "invalid_key" : "rate_limited", 1 + m % 3);
        rows[n].period_start = t;
        rows[n].api_id = d ? "api_02" : "api_01";
        total += rows[n].calls;
        n++;
      }
  if (tg_store_usage_add(S, rows, (size_t)n, &p) != TG_OK)
    abort();
  return total;
}

typedef struct sums {
  int64_t calls, billable, e4, e5, rejected, invalid, limited, bytes_in, lat, h[TG_USAGE_BUCKETS];
  int rows;
} sums_t;

static int report(tg_usage_query_t q, sums_t *out) {
  tg_problem_t p = {0};
  tg_usage_cursor_t *cur = NULL;
  memset(out, 0, sizeof(*out));
  int rc = tg_store_usage_open(S, &q, &cur, &p);
  if (rc)
    return rc;
  tg_usage_total_t t;
  while ((rc = tg_store_usage_next(cur, &t, &p)) == 1) {
    out->rows++;
    out->calls += t.calls;
    out->billable += t.billable;
    out->e4 += t.errors_4xx;
    out->e5 += t.errors_5xx;
    out->rejected += t.rejected;
    out->invalid += t.rejected_by[1];
    out->limited += t.rejected_by[5];
    out->bytes_in += t.bytes_in;
    out->lat += t.latency_us_sum;
    for (int k = 0; k < TG_USAGE_BUCKETS; k++)
      out->h[k] += t.h[k];
  }
  tg_store_usage_close(cur);
  return rc;
}

static void assert_same(const sums_t *a, const sums_t *b) {
  ASSERT_INT_EQ(a->calls, b->calls);
  ASSERT_INT_EQ(a->billable, b->billable);
  ASSERT_INT_EQ(a->e4, b->e4);
  ASSERT_INT_EQ(a->e5, b->e5);
  ASSERT_INT_EQ(a->rejected, b->rejected);
  ASSERT_INT_EQ(a->invalid, b->invalid);
  ASSERT_INT_EQ(a->limited, b->limited);
  ASSERT_INT_EQ(a->bytes_in, b->bytes_in);
  ASSERT_INT_EQ(a->lat, b->lat);
  for (int k = 0; k < TG_USAGE_BUCKETS; k++)
    ASSERT_INT_EQ(a->h[k], b->h[k]);
}

static int64_t count_rows(int64_t g) {
  sqlite3_stmt *q = NULL;
  sqlite3_prepare_v2(RAW, "SELECT count(*) FROM usage_rollups WHERE granularity = ?", -1, &q, NULL);
  sqlite3_bind_int64(q, 1, g);
  int64_t n = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
  sqlite3_finalize(q);
  return n;
}

static tg_usage_compact_stats_t compact_all(int64_t now, tg_usage_retention_t ret) {
  tg_problem_t p = {0};
  tg_usage_compact_stats_t st = {0}, one;
  for (int i = 0; i < 1000; i++) {
    if (tg_store_usage_compact(S, now, 60, &ret, 10, &one, &p) != TG_OK)
      abort();
    st.hours += one.hours;
    st.days += one.days;
    st.minute_rows_deleted += one.minute_rows_deleted;
    st.hour_rows_deleted += one.hour_rows_deleted;
    st.compacted_hours = one.compacted_hours;
    st.compacted_days = one.compacted_days;
    if (!one.more)
      break;
  }
  return st;
}

TG_TEST(usage_reports_give_the_same_totals_from_every_granularity) {
  fresh();
  int64_t total = seed_two_days();
  tg_usage_query_t q = {.from = DAY0, .to = DAY0 + 2 * 86400, .bucket = 60, .status_class = -1};
  sums_t by_minute, x;
  ASSERT_INT_EQ(report(q, &by_minute), 0);
  ASSERT_INT_EQ(by_minute.calls, total);
  ASSERT(by_minute.rejected > 0 && by_minute.billable > 0 && by_minute.e5 > 0 && by_minute.e4 > 0);
  ASSERT_INT_EQ(by_minute.calls, by_minute.billable + by_minute.e5 + by_minute.rejected);
  ASSERT_INT_EQ(by_minute.rejected, by_minute.invalid + by_minute.limited);
  /* compact everything (now: a day after the traffic) */
  tg_usage_retention_t keep = {0, 0};
  tg_usage_compact_stats_t st = compact_all(DAY0 + 3 * 86400, keep);
  ASSERT_INT_EQ(st.hours, 71); /* the last hour ends less than `lag` before now */
  ASSERT_INT_EQ(st.days, 2);
  ASSERT(count_rows(3600) > 0 && count_rows(86400) > 0);
  /* the same totals whichever rows serve the report */
  int64_t buckets[] = {60, 3600, 86400, 0};
  for (size_t i = 0; i < 4; i++) {
    q.bucket = buckets[i];
    ASSERT_INT_EQ(report(q, &x), 0);
    assert_same(&x, &by_minute);
  }
  q.bucket = 86400;
  ASSERT_INT_EQ(report(q, &x), 0);
  ASSERT_INT_EQ(x.rows, 2); /* one row per day */
  /* an unaligned range mixes minute, hour and day rows, still exact */
  q = (tg_usage_query_t){.from = DAY0 + 3600 * 5 + 29 * 60,
                         .to = DAY0 + 86400 + 3600 * 10 + 60,
                         .bucket = 60,
                         .status_class = -1};
  sums_t fine;
  ASSERT_INT_EQ(report(q, &fine), 0);
  q.bucket = 0;
  ASSERT_INT_EQ(report(q, &x), 0);
  assert_same(&x, &fine);
  /* running compaction again changes nothing */
  int64_t hours = count_rows(3600), days = count_rows(86400);
  st = compact_all(DAY0 + 3 * 86400, keep);
  ASSERT_INT_EQ(st.hours + st.days, 0);
  ASSERT_INT_EQ(count_rows(3600), hours);
  ASSERT_INT_EQ(count_rows(86400), days);
}

TG_TEST(usage_compaction_is_idempotent_after_a_crash_halfway) {
  fresh();
  seed_two_days();
  tg_problem_t p = {0};
  tg_usage_retention_t keep = {0, 0};
  tg_usage_compact_stats_t st;
  /* a few periods, then "crash": a recompute of the same period is harmless */
  EXPECT_RC(tg_store_usage_compact(S, DAY0 + 3 * 86400, 60, &keep, 7, &st, &p), TG_OK, "");
  ASSERT(st.more);
  ASSERT_INT_EQ(st.hours, 7);
  /* redo the last compacted hour by hand, as a crash before its watermark would */
  EXPECT_RC(tg_store_meta_set(S, "usage.compacted.3600", "1699941600", &p), TG_OK, "");
  compact_all(DAY0 + 3 * 86400, keep);
  tg_usage_query_t q = {.from = DAY0, .to = DAY0 + 2 * 86400, .bucket = 60, .status_class = -1};
  sums_t a, b;
  ASSERT_INT_EQ(report(q, &a), 0);
  q.bucket = 86400;
  ASSERT_INT_EQ(report(q, &b), 0);
  assert_same(&a, &b);
}

TG_TEST(usage_late_minutes_reach_compacted_hours_and_days) {
  fresh();
  seed_two_days();
  tg_usage_retention_t keep = {0, 0};
  compact_all(DAY0 + 3 * 86400, keep);
  tg_problem_t p = {0};
  tg_usage_row_t late = urow("key_A", "sub_A", 2, "", 11);
  late.period_start = DAY0 + 3600 * 7 + 120; /* an hour compacted long ago */
  EXPECT_RC(tg_store_usage_add(S, &late, 1, &p), TG_OK, "");
  tg_usage_query_t q = {.from = DAY0, .to = DAY0 + 2 * 86400, .bucket = 60, .status_class = -1};
  sums_t a, b, c;
  ASSERT_INT_EQ(report(q, &a), 0);
  q.bucket = 3600;
  ASSERT_INT_EQ(report(q, &b), 0);
  q.bucket = 86400;
  ASSERT_INT_EQ(report(q, &c), 0);
  assert_same(&a, &b);
  assert_same(&a, &c);
}

TG_TEST(usage_retention_removes_only_what_coarser_rows_hold) {
  fresh();
  int64_t total = seed_two_days();
  /* now: ten days later; keep minutes 7 days, hours forever */
  tg_usage_retention_t ret = {7 * 86400, 0};
  tg_usage_compact_stats_t st = compact_all(DAY0 + 10 * 86400, ret);
  ASSERT(st.minute_rows_deleted > 0);
  ASSERT_INT_EQ(count_rows(60), 0);
  tg_usage_query_t q = {.from = DAY0, .to = DAY0 + 2 * 86400, .bucket = 60, .status_class = -1};
  sums_t x;
  tg_problem_t p = {0};
  tg_usage_cursor_t *cur = NULL;
  EXPECT_RC(tg_store_usage_open(S, &q, &cur, &p), TG_EINVAL, "from");
  ASSERT(cur == NULL);
  q.bucket = 3600;
  ASSERT_INT_EQ(report(q, &x), 0);
  ASSERT_INT_EQ(x.calls, total);
  /* quotas still count everything in the month */
  totals_t t = {0};
  EXPECT_RC(tg_store_usage_calls_since(S, DAY0 - 13 * 86400, collect_total, &t, &p), TG_OK, "");
  ASSERT_INT_EQ(t.n, 1);
  ASSERT_INT_EQ(t.calls[0], x.billable + x.e5);
  /* hours kept 3 days: gone too, days remain */
  ret.hours_s = 3 * 86400;
  compact_all(DAY0 + 10 * 86400, ret);
  ASSERT_INT_EQ(count_rows(3600), 0);
  EXPECT_RC(tg_store_usage_open(S, &q, &cur, &p), TG_EINVAL, "from");
  q.bucket = 86400;
  ASSERT_INT_EQ(report(q, &x), 0);
  ASSERT_INT_EQ(x.calls, total);
}

TG_TEST(usage_report_groups_and_filters) {
  fresh();
  seed_two_days();
  tg_problem_t p = {0};
  tg_usage_query_t q = {.from = DAY0,
                        .to = DAY0 + 2 * 86400,
                        .bucket = 86400,
                        .group_by = TG_USAGE_BY_KEY | TG_USAGE_BY_API | TG_USAGE_BY_STATUS_CLASS,
                        .status_class = -1};
  tg_usage_cursor_t *cur = NULL;
  EXPECT_RC(tg_store_usage_open(S, &q, &cur, &p), TG_OK, "");
  tg_usage_total_t t, prev = {0};
  int n = 0;
  int64_t sum = 0;
  char pk[64] = "", pa[64] = "";
  int pc = -2;
  while (tg_store_usage_next(cur, &t, &p) == 1) {
    /* ordered by bucket, then key, api, status class */
    if (n) {
      int cmp = t.period_start != prev.period_start ? (t.period_start > prev.period_start ? 1 : -1)
                : strcmp(t.key_id, pk)              ? strcmp(t.key_id, pk)
                : strcmp(t.api_id, pa)              ? strcmp(t.api_id, pa)
                                                    : t.status_class - pc;
      ASSERT(cmp > 0);
    }
    ASSERT_STR_EQ(t.app_id, ""); /* not grouped */
    ASSERT(t.status_class >= 0);
    ASSERT_STR_EQ(t.api_id, t.period_start == DAY0 ? "api_01" : "api_02");
    snprintf(pk, sizeof(pk), "%s", t.key_id);
    snprintf(pa, sizeof(pa), "%s", t.api_id);
    pc = t.status_class;
    prev = t;
    sum += t.calls;
    n++;
  }
  tg_store_usage_close(cur);
  ASSERT(n > 4);
  q.group_by = 0;
  q.bucket = 0;
  sums_t all, f;
  ASSERT_INT_EQ(report(q, &all), 0);
  ASSERT_INT_EQ(all.calls, sum);
  q.key_id = "key_A";
  q.api_id = "api_02";
  ASSERT_INT_EQ(report(q, &f), 0);
  ASSERT(f.calls > 0 && f.calls < all.calls);
  ASSERT_INT_EQ(f.rejected, 0);
  q.key_id = q.api_id = NULL;
  q.status_class = 0;
  ASSERT_INT_EQ(report(q, &f), 0);
  ASSERT_INT_EQ(f.calls, all.rejected);
  /* month buckets and bad queries */
  q = (tg_usage_query_t){.from = 1698796800,
                         .to = 1701388800,
                         .bucket = TG_USAGE_MONTH,
                         .status_class = -1}; /* November 2023 */
  ASSERT_INT_EQ(report(q, &f), 0);
  ASSERT_INT_EQ(f.rows, 1);
  ASSERT_INT_EQ(f.calls, all.calls);
  q.from += 86400;
  EXPECT_RC(tg_store_usage_open(S, &q, &cur, &p), TG_EINVAL, "from");
  memset(&p, 0, sizeof(p));
  q = (tg_usage_query_t){.from = DAY0, .to = DAY0, .bucket = 60, .status_class = -1};
  EXPECT_RC(tg_store_usage_open(S, &q, &cur, &p), TG_EINVAL, "to");
  memset(&p, 0, sizeof(p));
  q = (tg_usage_query_t){.from = DAY0 + 60, .to = DAY0 + 86400, .bucket = 3600, .status_class = -1};
  EXPECT_RC(tg_store_usage_open(S, &q, &cur, &p), TG_EINVAL, "from");
  memset(&p, 0, sizeof(p));
  q = (tg_usage_query_t){.from = DAY0, .to = DAY0 + 86400, .bucket = 7, .status_class = -1};
  EXPECT_RC(tg_store_usage_open(S, &q, &cur, &p), TG_EINVAL, "bucket");
}

/* ---- the usage journal ---------------------------------------------------------- */

/* Every ledger row, in primary-key order, as one malloc'd string. */
static char *dump_ledger(void) {
  sqlite3_stmt *q = NULL;
  size_t cap = 4096, len = 0;
  char *out = calloc(1, cap);
  if (!out || sqlite3_prepare_v2(RAW,
                                 "SELECT granularity, period_start, key_id, app_id, developer_id, "
                                 "api_id, plan_id, subscription_id, status_class, reason, calls, "
                                 "bytes_in, bytes_out, latency_us_sum, h00, h01, h02, h03, h04, "
                                 "h05, h06, h07, h08, h09, h10, h11, h12, h13, h14 "
                                 "FROM usage_rollups ORDER BY granularity, period_start, key_id, "
                                 "api_id, plan_id, status_class, reason",
                                 -1, &q, NULL) != SQLITE_OK)
    abort();
  while (sqlite3_step(q) == SQLITE_ROW) {
    for (int i = 0; i < sqlite3_column_count(q); i++) {
      const char *v = (const char *)sqlite3_column_text(q, i);
      size_t n = strlen(v ? v : "") + 2;
      if (len + n + 1 > cap) {
        cap = (len + n + 1) * 2;
        if (!(out = realloc(out, cap)))
          abort();
      }
      len += (size_t)snprintf(out + len, cap - len, "%s%c", v ? v : "", i + 1 < 29 ? '|' : '\n');
    }
  }
  sqlite3_finalize(q);
  return out;
}

static int64_t journal_entries(void) {
  return rows_in("usage_journal");
}

/* Three flushes as the gateway would write them: rows that add onto each
 * other within and across flushes (a new subscription, a different app
 * given later), several primary keys, a refusal, and a minute late for
 * an hour and a day already compacted. */
#define NB1 4
#define NB2 3
#define NB3 2
static void journal_batches(tg_usage_row_t b1[NB1], tg_usage_row_t b2[NB2],
                            tg_usage_row_t b3[NB3]) {
  b1[0] = urow("key_A", "sub_A", 2, "", 3);
  b1[1] = urow("key_A", "sub_A", 0, "rate_limited", 4);
  b1[2] = urow("key_B", "sub_B", 5, "", 1);
  b1[3] = urow("key_A", "sub_A", 2, "", 2); /* the same row twice in one flush */
  b2[0] = urow("key_A", "sub_C", 2, "", 5); /* a new subscription: the newest wins */
  b2[0].app_id = "app_09";                  /* the first app stays */
  b2[0].h[3] = 0;
  b2[0].h[0] = 2;
  b2[0].h[14] = 3;
  b2[1] = urow("key_B", "sub_B", 5, "", 7);
  b2[1].period_start = MIN0 + 60;
  b2[2] = urow("key_C", "sub_A", 4, "", 2);
  b2[2].period_start = DAY0 + 3600 * 7 + 120; /* late: hour and day compacted */
  b3[0] = urow("key_A", "sub_D", 2, "", 1);
  b3[1] = urow("key_C", "sub_A", 4, "", 9);
  b3[1].period_start = DAY0 + 3600 * 7 + 180;
}

/* WANT: the ledger usage_add gives for the three batches, BEFORE: the
 * ledger without them (both after seed and compaction, as dump_ledger
 * text); then a fresh store with the batches journaled, nothing folded. */
static void journal_the_batches(void) {
  tg_problem_t p = {0};
  tg_usage_row_t b1[NB1], b2[NB2], b3[NB3];
  journal_batches(b1, b2, b3);
  tg_usage_retention_t keep = {0, 0};
  fresh();
  seed_two_days();
  compact_all(DAY0 + 3 * 86400, keep);
  if (tg_store_usage_add(S, b1, NB1, &p) || tg_store_usage_add(S, b2, NB2, &p) ||
      tg_store_usage_add(S, b3, NB3, &p))
    abort();
  char *want = dump_ledger();
  fresh(); /* frees the last WANT and BEFORE */
  seed_two_days();
  compact_all(DAY0 + 3 * 86400, keep);
  WANT = want;
  BEFORE = dump_ledger();
  if (tg_store_usage_journal(S, b1, NB1, MIN0, &p) ||
      tg_store_usage_journal(S, b2, NB2, MIN0 + 1, &p) ||
      tg_store_usage_journal(S, b3, NB3, MIN0 + 2, &p))
    abort();
}

static char *meta_mark(void) {
  char *v = NULL;
  tg_problem_t p = {0};
  if (tg_store_meta_get(S, "usage.fold", &v, &p) != TG_OK)
    return strdup("(none)");
  return v;
}

/* Whether the ledger is `want` (a dump_ledger text); says how not. */
static bool ledger_is(const char *want) {
  char *got = dump_ledger();
  bool same = strcmp(got, want) == 0;
  if (!same)
    fprintf(stderr, "want:\n%s\ngot:\n%s\n", want, got);
  free(got);
  return same;
}

TG_TEST(usage_journal_folds_into_what_usage_add_gives) {
  tg_problem_t p = {0};
  journal_the_batches();
  ASSERT_INT_EQ(journal_entries(), 3);
  ASSERT(ledger_is(BEFORE)); /* the journal alone does not touch the ledger */
  tg_usage_fold_stats_t st = {0, 0};
  EXPECT_RC(tg_store_usage_fold(S, 0, NULL, &st, &p), TG_OK, "");
  ASSERT(ledger_is(WANT));
  ASSERT_INT_EQ(st.entries, 3);
  ASSERT_INT_EQ(st.rows, 6); /* A 2xx, A refused, B, B +1 min, C late, C late +1 min */
  ASSERT_INT_EQ(journal_entries(), 0);
  /* nothing left: a second fold is a no-op */
  st = (tg_usage_fold_stats_t){0, 0};
  EXPECT_RC(tg_store_usage_fold(S, 0, NULL, &st, &p), TG_OK, "");
  ASSERT_INT_EQ(st.entries, 0);
}

TG_TEST(usage_journal_counts_in_reports_quotas_and_compaction_at_once) {
  fresh();
  tg_problem_t p = {0};
  tg_usage_row_t b1[NB1], b2[NB2], b3[NB3];
  journal_batches(b1, b2, b3);
  EXPECT_RC(tg_store_usage_journal(S, b1, NB1, MIN0, &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_journal(S, b2, NB2, MIN0, &p), TG_OK, "");
  ASSERT_INT_EQ(ledger_rows(), 0);
  /* quotas: a report, which folds first */
  totals_t t;
  memset(&t, 0, sizeof(t));
  EXPECT_RC(tg_store_usage_calls_since(S, MIN0, collect_total, &t, &p), TG_OK, "");
  ASSERT_INT_EQ(journal_entries(), 0);
  int64_t sub_a = 0, sub_b = 0, sub_c = 0;
  for (int i = 0; i < t.n; i++) {
    sub_a += strcmp(t.sub[i], "sub_A") == 0 ? t.calls[i] : 0;
    sub_b += strcmp(t.sub[i], "sub_B") == 0 ? t.calls[i] : 0;
    sub_c += strcmp(t.sub[i], "sub_C") == 0 ? t.calls[i] : 0;
  }
  ASSERT_INT_EQ(sub_a, 0); /* key_A's 2xx row now carries sub_C; its refusals never count */
  ASSERT_INT_EQ(sub_c, 3 + 2 + 5);
  ASSERT_INT_EQ(sub_b, 1 + 7);
  /* compaction folds first too */
  EXPECT_RC(tg_store_usage_journal(S, b3, NB3, MIN0, &p), TG_OK, "");
  tg_usage_retention_t keep = {0, 0};
  compact_all(DAY0 + 3 * 86400, keep);
  ASSERT_INT_EQ(journal_entries(), 0);
  stored_t got;
  ASSERT(read_row(&b3[0], &got));
  ASSERT_INT_EQ(got.ints[0], 3 + 2 + 5 + 1);
  ASSERT_STR_EQ(got.texts[2], "sub_D");
}

TG_TEST(usage_journal_refuses_bad_rows_and_writes_nothing) {
  fresh();
  tg_problem_t p = {0};
  tg_usage_row_t rows[2] = {urow("key_A", "sub_A", 2, "", 3), urow("key_A", "sub_A", 2, "x", 3)};
  EXPECT_RC(tg_store_usage_journal(S, rows, 2, MIN0, &p), TG_EINVAL, "rows[1].reason");
  rows[1] = urow("key_A", "sub_A", 2, "", 3);
  rows[1].h[0] = 1;
  EXPECT_RC(tg_store_usage_journal(S, rows, 2, MIN0, &p), TG_EINVAL, "rows[1].h");
  EXPECT_RC(tg_store_usage_journal(S, rows, 1, -1, &p), TG_EINVAL, "now");
  EXPECT_RC(tg_store_usage_journal(S, NULL, 2, MIN0, &p), TG_EINVAL, "rows");
  EXPECT_RC(tg_store_usage_journal(S, rows, 0, MIN0, &p), TG_OK, "");
  ASSERT_INT_EQ(journal_entries(), 0);
}

TG_TEST(usage_fold_stops_at_a_damaged_entry_and_changes_nothing) {
  fresh();
  tg_problem_t p = {0};
  tg_usage_row_t b1[NB1], b2[NB2], b3[NB3];
  journal_batches(b1, b2, b3);
  EXPECT_RC(tg_store_usage_journal(S, b1, NB1, MIN0, &p), TG_OK, "");
  sqlite3 *w = NULL;
  ASSERT_INT_EQ(sqlite3_open(FX.path, &w), SQLITE_OK);
  /* a body that says 5 rows and holds none of them */
  ASSERT_INT_EQ(sqlite3_exec(w,
                             "INSERT INTO usage_journal (id, written_at, nrows, body) "
                             "VALUES (7, 1, 5, X'54474A3105000000000000000000000000000000000000"
                             "00000000000000000000000000000000000000000000000000000000000000"
                             "00000000000000000000000000000000000000000000000000000000000000"
                             "00000000000000000000000000000000000000000000000000000000000000')",
                             NULL, NULL, NULL),
                SQLITE_OK);
  EXPECT_RC(tg_store_usage_journal(S, b2, NB2, MIN0, &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_fold(S, 0, NULL, NULL, &p), TG_ESTORE, "usage");
  ASSERT(strstr(p.detail, "entry 7 is damaged") != NULL);
  ASSERT_INT_EQ(ledger_rows(), 0); /* not even the good entry before it */
  ASSERT_INT_EQ(journal_entries(), 3);
  /* reports say so rather than leave the entries out */
  tg_usage_query_t q = {.from = MIN0 - 60, .to = MIN0 + 120, .bucket = 60, .status_class = -1};
  tg_usage_cursor_t *cur = NULL;
  EXPECT_RC(tg_store_usage_open(S, &q, &cur, &p), TG_ESTORE, "usage");
  ASSERT(cur == NULL);
  /* the operator removes it: the rest folds */
  ASSERT_INT_EQ(sqlite3_exec(w, "DELETE FROM usage_journal WHERE id = 7", NULL, NULL, NULL),
                SQLITE_OK);
  sqlite3_close(w);
  tg_usage_fold_stats_t st = {0, 0};
  EXPECT_RC(tg_store_usage_fold(S, 0, NULL, &st, &p), TG_OK, "");
  ASSERT_INT_EQ(st.entries, 2);
  ASSERT_INT_EQ(journal_entries(), 0);
  stored_t got;
  ASSERT(read_row(&b1[0], &got));
  ASSERT_INT_EQ(got.ints[0], 3 + 2 + 5);
}

TG_TEST(usage_fold_on_a_locked_store_is_busy_and_keeps_the_journal) {
  fresh();
  tg_problem_t p = {0};
  tg_store_options_t opt = {.path = FX.path, .busy_timeout_ms = 50, .mode = TG_STORE_OPEN_CURRENT};
  EXPECT_RC(tg_store_open(&opt, &S2, NULL, NULL, &p), TG_OK, "");
  tg_usage_row_t rows[2] = {urow("key_A", "sub_A", 2, "", 3), urow("key_B", "sub_A", 4, "", 2)};
  EXPECT_RC(tg_store_usage_journal(S2, rows, 2, MIN0, &p), TG_OK, "");
  EXPECT_RC(tg_store_begin(S, &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_journal(S2, rows, 2, MIN0, &p), TG_EBUSY, "");
  EXPECT_RC(tg_store_usage_fold(S2, 0, NULL, NULL, &p), TG_EBUSY, "");
  tg_store_rollback(S);
  ASSERT_INT_EQ(journal_entries(), 1);
  ASSERT_INT_EQ(ledger_rows(), 0);
  EXPECT_RC(tg_store_usage_fold(S2, 0, NULL, NULL, &p), TG_OK, "");
  stored_t got;
  ASSERT(read_row(&rows[1], &got));
  assert_stored(&got, &rows[1]);
}

TG_TEST(usage_fold_runs_in_batches_paced_like_usage_add) {
  fresh();
  tg_problem_t p = {0};
  /* more entries than one fold transaction takes (FOLD_MAX_ENTRIES) */
  static char keys[20][8];
  tg_usage_row_t rows[20];
  for (int i = 0; i < 20; i++) {
    snprintf(keys[i], sizeof(keys[i]), "key_%02d", i);
    rows[i] = urow(keys[i], "sub_A", 2, "", 1);
  }
  EXPECT_RC(tg_store_begin(S, &p), TG_OK, "");
  for (int e = 0; e < 1205; e++)
    EXPECT_RC(tg_store_usage_journal(S, &rows[e % 20], 1, MIN0, &p), TG_OK, "");
  EXPECT_RC(tg_store_commit(S, &p), TG_OK, "");
  pauses = 0;
  tg_usage_fold_stats_t st = {0, 0};
  EXPECT_RC(tg_store_usage_fold(S, 4, count_pause, &st, &p), TG_OK, "");
  ASSERT_INT_EQ(st.entries, 1205);
  ASSERT_INT_EQ(st.rows, 20 + 20); /* 20 keys in each of two batches */
  ASSERT_INT_EQ(pauses, 4 + 4);    /* after 4, 8, 12, 16 rows of each batch's 20 */
  ASSERT_INT_EQ(journal_entries(), 0);
  stored_t got;
  ASSERT(read_row(&rows[4], &got));
  ASSERT_INT_EQ(got.ints[0], 61); /* entries 4, 24, ... 1204 */
  ASSERT(read_row(&rows[5], &got));
  ASSERT_INT_EQ(got.ints[0], 60);
}

TG_TEST(usage_journal_read_only_store_reports_only_when_folded) {
  fresh();
  tg_problem_t p = {0};
  tg_store_options_t opt = {.path = FX.path, .busy_timeout_ms = 50, .mode = TG_STORE_OPEN_READONLY};
  EXPECT_RC(tg_store_open(&opt, &S2, NULL, NULL, &p), TG_OK, "");
  tg_usage_query_t q = {.from = MIN0, .to = MIN0 + 60, .bucket = 60, .status_class = -1};
  sums_t x;
  tg_usage_cursor_t *cur = NULL;
  EXPECT_RC(tg_store_usage_open(S2, &q, &cur, &p), TG_OK, ""); /* nothing waiting */
  tg_store_usage_close(cur);
  tg_usage_row_t row = urow("key_A", "sub_A", 2, "", 3);
  EXPECT_RC(tg_store_usage_journal(S, &row, 1, MIN0, &p), TG_OK, "");
  cur = NULL;
  EXPECT_RC(tg_store_usage_open(S2, &q, &cur, &p), TG_ESTORE, "usage");
  ASSERT(cur == NULL);
  ASSERT(strstr(p.detail, "read-only") != NULL);
  ASSERT_INT_EQ(report(q, &x), 0); /* S folds */
  ASSERT_INT_EQ(x.calls, 3);
  EXPECT_RC(tg_store_usage_open(S2, &q, &cur, &p), TG_OK, "");
  tg_store_usage_close(cur);
}

TG_TEST(usage_fold_in_steps_gives_what_usage_add_gives) {
  tg_problem_t p = {0};
  journal_the_batches();
  tg_usage_fold_t *f = NULL;
  pauses = 0;
  EXPECT_RC(tg_store_usage_fold_start(S, 0, count_pause, &f, &p), TG_OK, "");
  ASSERT(f != NULL);
  ASSERT_INT_EQ(pauses, 3); /* one per entry read */
  /* a flush during the fold: not part of it, left in the journal */
  tg_usage_row_t late = urow("key_D", "sub_A", 2, "", 4);
  EXPECT_RC(tg_store_usage_journal(S, &late, 1, MIN0, &p), TG_OK, "");
  tg_usage_fold_stats_t st = {0, 0};
  int steps = 0, rc;
  char *mark = NULL;
  while ((rc = tg_store_usage_fold_step(S, f, 2, &st, &p)) == 1) {
    if (++steps == 1) {
      mark = meta_mark();
      ASSERT_INT_EQ(journal_entries(), 4); /* all of them until the last step */
    }
  }
  tg_store_usage_fold_end(S, f);
  ASSERT_INT_EQ(rc, 0);
  ASSERT_INT_EQ(steps, 2); /* 6 rows, 2 a step: the third step is the last */
  ASSERT_INT_EQ(st.rows, 6);
  ASSERT_INT_EQ(st.entries, 3);
  bool mark_ok = mark && strcmp(mark, "3 2") == 0; /* entries up to id 3, 2 rows written */
  free(mark);
  ASSERT(mark_ok);
  ASSERT_INT_EQ(journal_entries(), 1); /* the late flush */
  mark = meta_mark();
  mark_ok = strcmp(mark, "") == 0;
  free(mark);
  ASSERT(mark_ok);
  /* the late flush folds as usual; then the ledger is what usage_add gives */
  EXPECT_RC(tg_store_usage_fold(S, 0, NULL, NULL, &p), TG_OK, "");
  ASSERT(read_row(&late, &(stored_t){0}));
  /* remove the late row again to compare with the batches alone */
  sqlite3 *w = NULL;
  ASSERT_INT_EQ(sqlite3_open(FX.path, &w), SQLITE_OK);
  ASSERT_INT_EQ(
      sqlite3_exec(w, "DELETE FROM usage_rollups WHERE key_id = 'key_D'", NULL, NULL, NULL),
      SQLITE_OK);
  sqlite3_close(w);
  ASSERT(ledger_is(WANT));
}

TG_TEST(usage_fold_in_steps_yields_to_a_reader_that_folds_meanwhile) {
  tg_problem_t p = {0};
  journal_the_batches();
  /* a reader folds after the first step: it finishes the batch from the
   * mark; the gateway's next step finds that out and writes nothing */
  tg_usage_fold_t *f = NULL;
  EXPECT_RC(tg_store_usage_fold_start(S, 0, NULL, &f, &p), TG_OK, "");
  tg_usage_fold_stats_t st = {0, 0};
  EXPECT_RC(tg_store_usage_fold_step(S, f, 2, &st, &p), 1, "");
  totals_t t;
  memset(&t, 0, sizeof(t));
  EXPECT_RC(tg_store_usage_calls_since(S, MIN0, collect_total, &t, &p), TG_OK, "");
  ASSERT_INT_EQ(journal_entries(), 0);
  EXPECT_RC(tg_store_usage_fold_step(S, f, 2, &st, &p), TG_ECONFLICT, "usage");
  tg_store_usage_fold_end(S, f);
  ASSERT(ledger_is(WANT));

  /* a reader folds before the first step: the same */
  journal_the_batches();
  f = NULL;
  EXPECT_RC(tg_store_usage_fold_start(S, 0, NULL, &f, &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_fold(S, 0, NULL, NULL, &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_fold_step(S, f, 2, &st, &p), TG_ECONFLICT, "usage");
  tg_store_usage_fold_end(S, f);
  ASSERT(ledger_is(WANT));
}

TG_TEST(usage_fold_in_steps_is_finished_after_a_crash_half_way) {
  tg_problem_t p = {0};
  journal_the_batches();
  tg_usage_fold_t *f = NULL;
  EXPECT_RC(tg_store_usage_fold_start(S, 0, NULL, &f, &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_fold_step(S, f, 4, NULL, &p), 1, "");
  tg_store_usage_fold_end(S, f); /* the gateway dies here: the mark stays */
  tg_store_close(S);
  tg_store_options_t opt = {
      .path = FX.path, .busy_timeout_ms = 2000, .mode = TG_STORE_OPEN_CURRENT};
  S = NULL;
  EXPECT_RC(tg_store_open(&opt, &S, NULL, NULL, &p), TG_OK, "");
  /* the next gateway's fold finishes it first, then finds nothing left */
  f = NULL;
  EXPECT_RC(tg_store_usage_fold_start(S, 0, NULL, &f, &p), TG_OK, "");
  ASSERT(f == NULL);
  ASSERT_INT_EQ(journal_entries(), 0);
  ASSERT(ledger_is(WANT));
  /* a damaged mark stops every fold, named */
  tg_usage_row_t row = urow("key_A", "sub_A", 2, "", 1);
  EXPECT_RC(tg_store_usage_journal(S, &row, 1, MIN0, &p), TG_OK, "");
  EXPECT_RC(tg_store_meta_set(S, "usage.fold", "7 x", &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_fold(S, 0, NULL, NULL, &p), TG_ESTORE, "usage");
  ASSERT(strstr(p.detail, "usage.fold") != NULL);
  EXPECT_RC(tg_store_meta_set(S, "usage.fold", "", &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_fold(S, 0, NULL, NULL, &p), TG_OK, "");
}

TG_TEST(usage_writer_connection_keeps_the_checks_off) {
  fresh();
  tg_problem_t p = {0};
  static char big[5000];
  memset(big, 'x', sizeof(big) - 1);
  /* an ordinary connection: the schema refuses a meta value over 4096 */
  tg_problem_clear(&p);
  ASSERT_INT_NE(tg_store_meta_set(S, "bench.big", big, &p), TG_OK);
  tg_store_options_t opt = {.path = FX.path,
                            .busy_timeout_ms = 2000,
                            .mode = TG_STORE_OPEN_CURRENT,
                            .usage_writer = true};
  EXPECT_RC(tg_store_open(&opt, &S2, NULL, NULL, &p), TG_OK, "");
  tg_usage_row_t rows[2] = {urow("key_A", "sub_A", 2, "", 3), urow("key_A", "sub_A", 2, "", 4)};
  EXPECT_RC(tg_store_usage_add(S2, rows, 1, &p), TG_OK, "");
  EXPECT_RC(tg_store_usage_add(S2, rows + 1, 1, &p), TG_OK, "");
  stored_t got;
  ASSERT(read_row(&rows[0], &got));
  ASSERT_INT_EQ(got.ints[0], 7);
  /* ...and on a usage writer the CHECKs stay off after a usage write:
   * what store.h warns about */
  EXPECT_RC(tg_store_meta_set(S2, "bench.big", big, &p), TG_OK, "");
  /* the ordinary connection still checks */
  tg_problem_clear(&p);
  ASSERT_INT_NE(tg_store_meta_set(S, "bench.big2", big, &p), TG_OK);
}

int main(int argc, char **argv) {
  int rc = tg_test_main(argc, argv);
  teardown();
  return rc;
}
