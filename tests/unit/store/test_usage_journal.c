/*
 * test_usage_journal.c - the usage journal's body format
 * (core/usage_journal.h): rows survive an encode/decode round trip at the
 * ledger's limits, the bytes are laid out as the header says, the encoder
 * refuses what the ledger refuses, and the decoder refuses every kind of
 * broken body with TG_EINVAL on field "journal" (bodies built byte by byte
 * here, independently of the encoder).
 *
 * Nothing here allocates past the end of a test except encoded bodies,
 * which are released by teardown() before the next test and at exit.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/store-int.h" /* TG_USAGE_ID_MAX, TG_USAGE_REASON_MAX */
#include "core/usage_journal.h"
#include "tg_test.h"

static unsigned char *ENC; /* the body a test encoded */
static size_t ENC_LEN;

static void teardown(void) {
  free(ENC);
  ENC = NULL;
  ENC_LEN = 0;
}

/* ---- rows --------------------------------------------------------------------- */

/* A served row (status_class 2) of `calls` requests, all in bucket 0. */
static tg_usage_row_t served(int64_t calls) {
  tg_usage_row_t r = {
      .granularity = 60,
      .period_start = 1700000040,
      .key_id = "key_01",
      .app_id = "app_01",
      .developer_id = "dev_01",
      .api_id = "api_01",
      .plan_id = "pln_01",
      .subscription_id = "sub_01",
      .status_class = 2,
      .reason = "",
      .calls = calls,
      .bytes_in = calls * 10,
      .bytes_out = calls * 100,
      .latency_us_sum = calls * 1000,
  };
  r.h[0] = calls;
  return r;
}

/* Decoded rows, deep-copied so that they outlive the body. */
#define GOT_MAX 8

typedef struct got_row {
  tg_usage_row_t r;
  char s[7][TG_USAGE_ID_MAX + 1];
} got_row_t;

typedef struct got {
  got_row_t rows[GOT_MAX];
  size_t n;
  size_t stop_at; /* return 42 from this row (1-based); 0: never */
} got_t;

static void keep(char *dst, const char *src) {
  size_t n = strlen(src);
  if (n > TG_USAGE_ID_MAX)
    abort(); /* the decoder let a too long string through */
  memcpy(dst, src, n + 1);
}

static int collect_cb(const tg_usage_row_t *row, void *ctx) {
  got_t *g = ctx;
  if (g->n == GOT_MAX)
    abort();
  got_row_t *d = &g->rows[g->n++];
  d->r = *row;
  const char *src[7] = {row->key_id,  row->app_id,          row->developer_id, row->api_id,
                        row->plan_id, row->subscription_id, row->reason};
  const char **dst[7] = {&d->r.key_id,  &d->r.app_id,          &d->r.developer_id, &d->r.api_id,
                         &d->r.plan_id, &d->r.subscription_id, &d->r.reason};
  for (int k = 0; k < 7; k++) {
    keep(d->s[k], src[k]);
    *dst[k] = d->s[k];
  }
  return g->stop_at && g->n == g->stop_at ? 42 : 0;
}

static void assert_same_row(const tg_usage_row_t *a, const tg_usage_row_t *b) {
  ASSERT_INT_EQ(a->granularity, b->granularity);
  ASSERT_INT_EQ(a->period_start, b->period_start);
  ASSERT_STR_EQ(a->key_id, b->key_id);
  ASSERT_STR_EQ(a->app_id, b->app_id);
  ASSERT_STR_EQ(a->developer_id, b->developer_id);
  ASSERT_STR_EQ(a->api_id, b->api_id);
  ASSERT_STR_EQ(a->plan_id, b->plan_id);
  ASSERT_STR_EQ(a->subscription_id, b->subscription_id);
  ASSERT_INT_EQ(a->status_class, b->status_class);
  ASSERT_STR_EQ(a->reason, b->reason);
  ASSERT_INT_EQ(a->calls, b->calls);
  ASSERT_INT_EQ(a->bytes_in, b->bytes_in);
  ASSERT_INT_EQ(a->bytes_out, b->bytes_out);
  ASSERT_INT_EQ(a->latency_us_sum, b->latency_us_sum);
  for (int k = 0; k < TG_USAGE_BUCKETS; k++)
    ASSERT_INT_EQ(a->h[k], b->h[k]);
}

/* ---- bodies built by hand ------------------------------------------------------ */

typedef struct body {
  unsigned char b[2048];
  size_t len;
} body_t;

static void put(body_t *b, const void *p, size_t n) {
  if (b->len + n > sizeof(b->b))
    abort();
  memcpy(b->b + b->len, p, n);
  b->len += n;
}

/* Unsigned LEB128, shortest form. */
static void put_u(body_t *b, uint64_t v) {
  while (v >= 0x80) {
    unsigned char c = (unsigned char)(v | 0x80);
    put(b, &c, 1);
    v >>= 7;
  }
  unsigned char c = (unsigned char)v;
  put(b, &c, 1);
}

static void put_s(body_t *b, const char *s) {
  put_u(b, strlen(s));
  put(b, s, strlen(s) + 1);
}

static void put_head(body_t *b, uint64_t nrows) {
  b->len = 0;
  put(b, "TGJ1", 4);
  put_u(b, nrows);
}

/* granularity, period_start, status_class and the six ids: key_id, then
 * five "". */
static void put_row_start_key(body_t *b, uint64_t status_class, const char *key_id) {
  put_u(b, 60);
  put_u(b, 1700000040);
  put_u(b, status_class);
  put_s(b, key_id);
  for (int k = 0; k < 5; k++)
    put_s(b, "");
}

static void put_row_start(body_t *b, uint64_t status_class) {
  put_row_start_key(b, status_class, "");
}

/* calls, bytes_in, bytes_out, latency_us_sum, then h0 = h0v and the other
 * buckets 0. */
static void put_row_end(body_t *b, uint64_t calls, uint64_t h0v) {
  put_u(b, calls);
  put_u(b, 5);
  put_u(b, 6);
  put_u(b, 7);
  put_u(b, h0v);
  for (int k = 1; k < TG_USAGE_BUCKETS; k++)
    put_u(b, 0);
}

/* A whole valid served row of `calls` requests. */
static void put_row(body_t *b, uint64_t calls) {
  put_row_start(b, 2);
  put_s(b, "");
  put_row_end(b, calls, calls);
}

/* Decode and expect TG_EINVAL on "journal" with `detail` in its detail;
 * returns how many rows the callback saw. */
static size_t refused(const void *body, size_t len, const char *detail, size_t *nrows) {
  got_t g = {0};
  tg_problem_t p;
  tg_problem_clear(&p);
  int rc = tg_usage_journal_decode(body, len, collect_cb, &g, nrows, &p);
  if (rc != TG_EINVAL || strcmp(p.field, "journal") != 0 || !strstr(p.detail, detail))
    fprintf(stderr, "  decode gave %d, field \"%s\", detail \"%s\"\n", rc, p.field, p.detail);
  ASSERT_INT_EQ(rc, TG_EINVAL);
  ASSERT_INT_EQ(p.code, TG_EINVAL);
  ASSERT_STR_EQ(p.field, "journal");
  ASSERT_STR_CONTAINS(p.detail, detail);
  return g.n;
}

/* ---- round trips --------------------------------------------------------------- */

TG_TEST(round_trip_at_the_limits) {
  teardown();
  static char id[TG_USAGE_ID_MAX + 1], reason[TG_USAGE_REASON_MAX + 1];
  memset(id, 'x', TG_USAGE_ID_MAX);
  memset(reason, 'r', TG_USAGE_REASON_MAX);
  const int64_t big = INT64_MAX;
  tg_usage_row_t rows[5];

  /* 0: every string empty (a served row has no reason) */
  rows[0] = served(3);
  rows[0].key_id = rows[0].app_id = rows[0].developer_id = "";
  rows[0].api_id = rows[0].plan_id = rows[0].subscription_id = "";
  /* 1: 64-byte ids, a rejected request with a 32-byte reason */
  rows[1] = served(2);
  rows[1].granularity = 3600;
  rows[1].period_start = 1699999200;
  rows[1].key_id = rows[1].app_id = rows[1].developer_id = id;
  rows[1].api_id = rows[1].plan_id = rows[1].subscription_id = id;
  rows[1].status_class = 0;
  rows[1].reason = reason;
  /* 2: int64 at its top, in calls, bytes and the last bucket */
  rows[2] = served(0);
  rows[2].granularity = 86400;
  rows[2].period_start = INT64_MAX / 86400 * 86400;
  rows[2].status_class = 5;
  rows[2].calls = big;
  rows[2].bytes_in = big;
  rows[2].bytes_out = big - 1;
  rows[2].latency_us_sum = big;
  rows[2].h[0] = 0;
  rows[2].h[TG_USAGE_BUCKETS - 1] = big - 1;
  rows[2].h[TG_USAGE_BUCKETS - 2] = 1;
  /* 3: every bucket counted, each a different number */
  rows[3] = served(0);
  rows[3].status_class = 4;
  rows[3].reason = "";
  rows[3].key_id = "key_\xc3\xa9"; /* bytes are bytes */
  for (int k = 0; k < TG_USAGE_BUCKETS; k++) {
    rows[3].h[k] = (int64_t)1 << (k * 4);
    rows[3].calls += rows[3].h[k];
  }
  /* 4: zeros where zero is allowed */
  rows[4] = served(0);
  rows[4].period_start = 0;
  rows[4].status_class = 1;

  tg_problem_t p;
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_encode(rows, 5, &ENC, &ENC_LEN, &p), TG_OK);
  ASSERT(ENC != NULL);
  ASSERT(ENC_LEN > 5 && memcmp(ENC, "TGJ1\x05", 5) == 0);

  got_t g = {0};
  size_t nrows = 99;
  ASSERT_INT_EQ(tg_usage_journal_decode(ENC, ENC_LEN, collect_cb, &g, &nrows, &p), TG_OK);
  ASSERT_INT_EQ(p.code, TG_OK);
  ASSERT_INT_EQ(nrows, 5);
  ASSERT_INT_EQ(g.n, 5);
  for (size_t i = 0; i < 5; i++)
    assert_same_row(&g.rows[i].r, &rows[i]);
  ASSERT_INT_EQ(strlen(g.rows[1].r.key_id), TG_USAGE_ID_MAX);
  ASSERT_INT_EQ(g.rows[2].r.calls, INT64_MAX);

  /* nrows may be NULL */
  g.n = 0;
  ASSERT_INT_EQ(tg_usage_journal_decode(ENC, ENC_LEN, collect_cb, &g, NULL, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 5);
  teardown();
}

TG_TEST(layout_as_documented) {
  teardown();
  tg_usage_row_t r = served(300);
  r.granularity = 3600;
  r.period_start = 1699999200;
  r.key_id = "k";
  r.app_id = r.developer_id = r.api_id = r.plan_id = r.subscription_id = "";
  r.status_class = 0;
  r.reason = "ab";
  r.bytes_in = 1;
  r.bytes_out = 2;
  r.latency_us_sum = 3;
  r.h[0] = 0;
  r.h[14] = 300;
  static const unsigned char want[] = {
      'T',  'G',  'J',  '1',  0x01,                   /* magic, 1 row */
      0x90, 0x1c,                                     /* 3600 */
      0xe0, 0xdb, 0xcf, 0xaa, 0x06,                   /* 1699999200 */
      0x00,                                           /* status_class */
      0x01, 'k',  0x00,                               /* key_id */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* app_id .. plan_id */
      0x00, 0x00,                                     /* subscription_id */
      0x02, 'a',  'b',  0x00,                         /* reason */
      0xac, 0x02, 0x01, 0x02, 0x03,                   /* calls, bytes, latency */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* h */
      0xac, 0x02,                                                                         /* h14 */
  };
  tg_problem_t p;
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_encode(&r, 1, &ENC, &ENC_LEN, &p), TG_OK);
  ASSERT_INT_EQ(ENC_LEN, sizeof(want));
  for (size_t i = 0; i < sizeof(want); i++)
    ASSERT_INT_EQ(ENC[i], want[i]);
  teardown();
}

TG_TEST(decode_the_largest_number) {
  body_t b;
  put_head(&b, 1);
  put_row(&b, INT64_MAX); /* nine bytes: ff x8 7f */
  got_t g = {0};
  size_t nrows = 0;
  tg_problem_t p;
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_decode(b.b, b.len, collect_cb, &g, &nrows, &p), TG_OK);
  ASSERT_INT_EQ(nrows, 1);
  ASSERT_INT_EQ(g.n, 1);
  ASSERT_INT_EQ(g.rows[0].r.calls, INT64_MAX);
  ASSERT_INT_EQ(g.rows[0].r.h[0], INT64_MAX);
  ASSERT_INT_EQ(g.rows[0].r.bytes_out, 6);
}

/* ---- the encoder refuses ------------------------------------------------------- */

TG_TEST(encode_refuses_no_rows) {
  teardown();
  tg_usage_row_t r = served(1);
  tg_problem_t p;
  tg_problem_clear(&p);
  unsigned char sentinel, *out = &sentinel;
  size_t len = 7;
  ASSERT_INT_EQ(tg_usage_journal_encode(&r, 0, &out, &len, &p), TG_EINVAL);
  ASSERT(out == NULL);
  ASSERT_INT_EQ(len, 0);
  ASSERT_INT_EQ(p.code, TG_EINVAL);
  ASSERT_STR_EQ(p.field, "rows");
}

TG_TEST(encode_refuses_a_bad_row_naming_it) {
  teardown();
  tg_usage_row_t rows[3] = {served(1), served(2), served(3)};
  rows[1].reason = "quota_exceeded"; /* a served row with a reason */
  tg_problem_t p;
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_encode(rows, 3, &ENC, &ENC_LEN, &p), TG_EINVAL);
  ASSERT(ENC == NULL);
  ASSERT_INT_EQ(ENC_LEN, 0);
  ASSERT_STR_EQ(p.field, "rows[1].reason");

  rows[1] = served(2);
  rows[2].h[0] = 2; /* buckets count fewer than calls */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_encode(rows, 3, &ENC, &ENC_LEN, &p), TG_EINVAL);
  ASSERT(ENC == NULL);
  ASSERT_STR_EQ(p.field, "rows[2].h");

  rows[2] = served(3);
  rows[0].status_class = 0; /* rejected without a reason */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_encode(rows, 3, &ENC, &ENC_LEN, &p), TG_EINVAL);
  ASSERT_STR_EQ(p.field, "rows[0].reason");

  rows[0] = served(1);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_encode(rows, 3, &ENC, &ENC_LEN, &p), TG_OK);
  ASSERT(ENC != NULL);
  teardown();
}

/* ---- the decoder refuses ------------------------------------------------------- */

TG_TEST(decode_refuses_wrong_magic) {
  body_t b;
  put_head(&b, 1);
  put_row(&b, 1);
  got_t g = {0};
  tg_problem_t p;
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_decode(b.b, b.len, collect_cb, &g, NULL, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 1);
  const char *bad[] = {"TGJ2", "tgj1", "TGJ\0", "XGJ1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memcpy(b.b, bad[i], 4);
    size_t nrows = 99;
    ASSERT_INT_EQ(refused(b.b, b.len, "not a usage journal body (no TGJ1)", &nrows), 0);
    ASSERT_INT_EQ(nrows, 0);
  }
}

TG_TEST(decode_refuses_short_input) {
  size_t nrows = 99;
  ASSERT_INT_EQ(refused("", 0, "not a usage journal", &nrows), 0);
  ASSERT_INT_EQ(nrows, 0);
  ASSERT_INT_EQ(refused("TGJ", 3, "not a usage journal", NULL), 0);
  ASSERT_INT_EQ(refused(NULL, 0, "not a usage journal", NULL), 0);
  ASSERT_INT_EQ(refused("TGJ1", 4, "ends inside a number", NULL), 0);
  ASSERT_INT_EQ(refused("TGJ1\x01", 5, "row count", NULL), 0);
}

TG_TEST(decode_refuses_every_prefix) {
  teardown();
  tg_usage_row_t rows[3] = {served(1), served(200), served(3)};
  rows[1].status_class = 0;
  rows[1].reason = "rate_limited";
  rows[2].period_start = 0;
  rows[2].key_id = "";
  tg_problem_t p;
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_encode(rows, 3, &ENC, &ENC_LEN, &p), TG_OK);
  got_t g = {0};
  ASSERT_INT_EQ(tg_usage_journal_decode(ENC, ENC_LEN, collect_cb, &g, NULL, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 3);
  for (size_t len = 0; len < ENC_LEN; len++) {
    /* an exact-size copy, so that ASan sees a read past its end */
    unsigned char *cut = malloc(len ? len : 1);
    ASSERT(cut != NULL);
    memcpy(cut, ENC, len);
    g.n = 0;
    tg_problem_clear(&p);
    int rc = tg_usage_journal_decode(cut, len, collect_cb, &g, NULL, &p);
    free(cut);
    if (rc != TG_EINVAL || strcmp(p.field, "journal") != 0)
      TG_FAIL_("prefix of %zu of %zu bytes: %d \"%s\" \"%s\"", len, ENC_LEN, rc, p.field, p.detail);
    ASSERT(g.n < 3);
  }
  teardown();
}

TG_TEST(decode_refuses_trailing_bytes) {
  body_t b;
  put_head(&b, 2);
  put_row(&b, 1);
  put_row(&b, 2);
  put(&b, "\0", 1);
  size_t nrows = 0;
  /* the rows were good: the callback saw them before the end was checked */
  ASSERT_INT_EQ(refused(b.b, b.len, "1 bytes after its last row", &nrows), 2);
  ASSERT_INT_EQ(nrows, 2);
}

TG_TEST(decode_refuses_a_number_above_int64_max) {
  body_t b;
  put_head(&b, 1);
  put_row_start(&b, 2);
  put_s(&b, "");
  put_row_end(&b, (uint64_t)INT64_MAX + 1, (uint64_t)INT64_MAX + 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "row 0: a number is out of range", NULL), 0);

  /* 2^64 (0 if the top bits were dropped) and 2^64 * 63 + 1 in ten bytes */
  static const char *const wide[] = {"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02",
                                     "\x81\x80\x80\x80\x80\x80\x80\x80\x80\x7e"};
  for (size_t i = 0; i < 2; i++) {
    put_head(&b, 1);
    put_row_start(&b, 2);
    put_s(&b, "");
    put(&b, wide[i], 10); /* calls */
    put_u(&b, 5);
    put_u(&b, 6);
    put_u(&b, 7);
    put_u(&b, i); /* h0: calls as it would be with the top bits dropped */
    for (int k = 1; k < TG_USAGE_BUCKETS; k++)
      put_u(&b, 0);
    ASSERT_INT_EQ(refused(b.b, b.len, "row 0: a number is out of range", NULL), 0);
  }

  /* and in the row count */
  put_head(&b, UINT64_MAX);
  put_row(&b, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "a number is out of range", NULL), 0);
}

TG_TEST(decode_refuses_an_11_byte_number) {
  /* 0 written in 11 bytes as bytes_in: no 64-bit number takes that many */
  body_t b;
  put_head(&b, 1);
  put_row_start(&b, 2);
  put_s(&b, "");
  put_u(&b, 1);
  put(&b, "\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00", 11);
  put_u(&b, 0);
  put_u(&b, 0);
  put_u(&b, 1);
  for (int k = 1; k < TG_USAGE_BUCKETS; k++)
    put_u(&b, 0);
  ASSERT_INT_EQ(refused(b.b, b.len, "row 0: a number is out of range", NULL), 0);
}

TG_TEST(decode_refuses_a_string_without_its_nul) {
  body_t b;
  put_head(&b, 1);
  put_row_start(&b, 2);
  put_u(&b, 3); /* reason: "abc", then 'X' where its NUL should be */
  put(&b, "abcX", 4);
  put_row_end(&b, 1, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "row 0: a string is not NUL-terminated", NULL), 0);

  /* a string cut off by the end of the body */
  put_head(&b, 1);
  put_row_start(&b, 2);
  put_u(&b, 40);
  put(&b, "abc", 3);
  for (int k = 0; k < 36; k++)
    put(&b, "x", 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "row 0: it ends inside a string", NULL), 0);
}

TG_TEST(decode_refuses_a_string_with_a_nul_inside) {
  body_t b;
  put_head(&b, 1);
  put_u(&b, 60);
  put_u(&b, 1700000040);
  put_u(&b, 2);
  put_u(&b, 3); /* key_id: "a\0c" */
  put(&b, "a\0c\0", 4);
  for (int k = 0; k < 5; k++)
    put_s(&b, "");
  put_s(&b, "");
  put_row_end(&b, 1, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "holds a NUL", NULL), 0);
}

TG_TEST(decode_refuses_a_row_count_the_body_cannot_hold) {
  body_t b;
  size_t nrows = 99;
  put_head(&b, 2); /* two rows declared, one there */
  put_row(&b, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "row count does not fit its size", &nrows), 0);
  ASSERT_INT_EQ(nrows, 0);

  put_head(&b, (uint64_t)1 << 40);
  put_row(&b, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "row count does not fit its size", NULL), 0);

  put_head(&b, 0);
  put_row(&b, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "row count does not fit its size", NULL), 0);

  /* two declared, room for two by size, but only one: the second row is
   * cut short after the callback saw the first */
  put_head(&b, 2);
  put_row_start_key(&b, 2, "a key_id long enough for the body to hold two small rows");
  put_s(&b, "");
  put_row_end(&b, 1, 1);
  put_u(&b, 60); /* the second row stops after its granularity */
  nrows = 99;
  ASSERT_INT_EQ(refused(b.b, b.len, "row 1: it ends inside a number", &nrows), 1);
  ASSERT_INT_EQ(nrows, 2);
}

TG_TEST(decode_refuses_status_class_9) {
  body_t b;
  put_head(&b, 1);
  put_row_start(&b, 9);
  put_s(&b, "");
  put_row_end(&b, 1, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "rows[0].status_class", NULL), 0);
}

TG_TEST(decode_refuses_rows_against_the_ledger_rules) {
  body_t b;
  /* the histogram sums to 4, calls says 5 */
  put_head(&b, 1);
  put_row_start(&b, 2);
  put_s(&b, "");
  put_row_end(&b, 5, 4);
  ASSERT_INT_EQ(refused(b.b, b.len, "rows[0].h", NULL), 0);

  /* more in the buckets than calls */
  put_head(&b, 1);
  put_row_start(&b, 2);
  put_s(&b, "");
  put_row_end(&b, 5, 6);
  ASSERT_INT_EQ(refused(b.b, b.len, "rows[0].h", NULL), 0);

  /* a served row with a reason, as the second row: the first was seen */
  put_head(&b, 2);
  put_row(&b, 1);
  put_row_start(&b, 3);
  put_s(&b, "no_route");
  put_row_end(&b, 1, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "rows[1].reason", NULL), 1);

  /* a 65-byte id */
  char id[TG_USAGE_ID_MAX + 2];
  memset(id, 'i', sizeof(id) - 1);
  id[sizeof(id) - 1] = '\0';
  put_head(&b, 1);
  put_u(&b, 60);
  put_u(&b, 0);
  put_u(&b, 2);
  put_s(&b, id);
  for (int k = 0; k < 6; k++)
    put_s(&b, "");
  put_row_end(&b, 1, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "rows[0].key_id", NULL), 0);

  /* a granularity the ledger does not keep */
  put_head(&b, 1);
  put_u(&b, 61);
  put_u(&b, 0);
  put_u(&b, 2);
  for (int k = 0; k < 7; k++)
    put_s(&b, "");
  put_row_end(&b, 1, 1);
  ASSERT_INT_EQ(refused(b.b, b.len, "rows[0].granularity", NULL), 0);
}

/* ---- the callback -------------------------------------------------------------- */

TG_TEST(callback_stops_the_decoding) {
  body_t b;
  put_head(&b, 3);
  put_row(&b, 1);
  put_row(&b, 2);
  put_row(&b, 3);
  got_t g = {.stop_at = 2};
  size_t nrows = 0;
  tg_problem_t p;
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_usage_journal_decode(b.b, b.len, collect_cb, &g, &nrows, &p), 42);
  ASSERT_INT_EQ(g.n, 2);
  ASSERT_INT_EQ(g.rows[1].r.calls, 2);
  ASSERT_INT_EQ(nrows, 3);
  ASSERT_INT_EQ(p.code, TG_OK); /* the callback's verdict, not a problem */

  /* the same body, not stopped */
  g = (got_t){0};
  ASSERT_INT_EQ(tg_usage_journal_decode(b.b, b.len, collect_cb, &g, &nrows, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 3);
  ASSERT_INT_EQ(g.rows[2].r.calls, 3);
  ASSERT_INT_EQ(g.rows[2].r.bytes_in, 5);
  ASSERT_INT_EQ(g.rows[2].r.latency_us_sum, 7);
}

int main(int argc, char **argv) {
  int rc = tg_test_main(argc, argv);
  teardown();
  return rc;
}
