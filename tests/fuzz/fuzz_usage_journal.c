/*
 * fuzz_usage_journal.c - tg_usage_journal_decode over arbitrary bytes.
 *
 * Any input either fails with TG_EINVAL on field "journal" or decodes to
 * the rows it declares, each passing the ledger's rules and with strings
 * that lie inside the body. A second, independent reading of the format
 * (below, from usage_journal.h) must agree: the same verdict, and the same
 * rows seen before it. A body that decodes is encoded again from its
 * rows: the encoding must succeed, be no longer than the input (it writes
 * the shortest varints; the same length means the same bytes), decode to
 * the same rows (same strings, same numbers) and encode again to the same
 * bytes. A callback that stops at some row must stop the decoding there
 * with its own return value.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/usage_journal.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* The smallest row: 3 one-byte numbers, 7 empty strings, 4 + 15 numbers. */
#define MIN_ROW (3 + 7 * 2 + 4 + TG_USAGE_BUCKETS)

/* Decoded rows; their strings are borrowed from the body decoded. */
typedef struct rows {
  tg_usage_row_t *r;
  size_t n, cap;
  const unsigned char *body; /* the strings must point into body[0..len) */
  size_t len;
} rows_t;

static bool inside(const rows_t *rs, const char *s) {
  uintptr_t a = (uintptr_t)s, b = (uintptr_t)rs->body;
  return s && a >= b && a < b + rs->len && memchr(s, '\0', b + rs->len - a) != NULL;
}

static int collect_cb(const tg_usage_row_t *row, void *ctx) {
  rows_t *rs = ctx;
  const char *s[] = {row->key_id,  row->app_id,          row->developer_id, row->api_id,
                     row->plan_id, row->subscription_id, row->reason};
  for (size_t k = 0; k < sizeof(s) / sizeof(s[0]); k++)
    if (!inside(rs, s[k]))
      abort();
  if (tg_usage_row_check(row, rs->n, NULL) != TG_OK)
    abort(); /* the decoder let a bad row through */
  if (rs->n == rs->cap) {
    size_t cap = rs->cap ? rs->cap * 2 : 8;
    tg_usage_row_t *r = realloc(rs->r, cap * sizeof(*r));
    if (!r)
      abort();
    rs->r = r;
    rs->cap = cap;
  }
  rs->r[rs->n++] = *row;
  return 0;
}

typedef struct stop {
  size_t seen, at;
} stop_t;

static int stop_cb(const tg_usage_row_t *row, void *ctx) {
  (void)row;
  stop_t *st = ctx;
  return ++st->seen == st->at ? 1000 + (int)st->at : 0;
}

/* ---- the format as usage_journal.h states it ------------------------------- */

typedef struct ref {
  const unsigned char *b;
  size_t len, off;
  bool bad;
} ref_t;

__extension__ typedef unsigned __int128 u128; /* room for 10 bytes of 7 bits */

/* An unsigned LEB128 number that fits an int64: at most 10 bytes. */
static int64_t ref_num(ref_t *r) {
  u128 v = 0;
  for (int i = 0;; i++) {
    if (r->bad || i == 10 || r->off == r->len) {
      r->bad = true;
      return 0;
    }
    unsigned char c = r->b[r->off++];
    v |= (u128)(c & 0x7f) << (7 * i);
    if (!(c & 0x80))
      break;
  }
  if (v > INT64_MAX) {
    r->bad = true;
    return 0;
  }
  return (int64_t)v;
}

/* Its length, its bytes and a NUL, with no NUL among the bytes. */
static const char *ref_str(ref_t *r) {
  int64_t n = ref_num(r);
  if (r->bad || (uint64_t)n >= r->len - r->off) {
    r->bad = true;
    return "";
  }
  const char *s = (const char *)r->b + r->off;
  if (strnlen(s, (size_t)n + 1) != (size_t)n) {
    r->bad = true;
    return "";
  }
  r->off += (size_t)n + 1;
  return s;
}

/* Read rows into *rs until the body ends or is found bad: true when it is
 * a whole, good body. */
static bool ref_decode(const unsigned char *body, size_t len, rows_t *rs) {
  ref_t r = {body, len, 4, len < 4 || memcmp(body, "TGJ1", 4) != 0};
  int64_t n = ref_num(&r);
  if (r.bad || n < 1 || (uint64_t)n > (len - r.off) / MIN_ROW)
    return false;
  for (int64_t i = 0; i < n; i++) {
    tg_usage_row_t row = {0};
    row.granularity = ref_num(&r);
    row.period_start = ref_num(&r);
    int64_t sc = ref_num(&r);
    row.status_class = sc > 5 ? -1 : (int)sc;
    const char **s[] = {&row.key_id,  &row.app_id,          &row.developer_id, &row.api_id,
                        &row.plan_id, &row.subscription_id, &row.reason};
    for (size_t k = 0; k < sizeof(s) / sizeof(s[0]); k++)
      *s[k] = ref_str(&r);
    row.calls = ref_num(&r);
    row.bytes_in = ref_num(&r);
    row.bytes_out = ref_num(&r);
    row.latency_us_sum = ref_num(&r);
    for (int k = 0; k < TG_USAGE_BUCKETS; k++)
      row.h[k] = ref_num(&r);
    if (r.bad || tg_usage_row_check(&row, (size_t)i, NULL) != TG_OK)
      return false;
    collect_cb(&row, rs);
  }
  return r.off == len;
}

static bool same_str(const char *a, const char *b) {
  return strcmp(a, b) == 0;
}

static bool same_row(const tg_usage_row_t *a, const tg_usage_row_t *b) {
  if (a->granularity != b->granularity || a->period_start != b->period_start ||
      a->status_class != b->status_class || a->calls != b->calls || a->bytes_in != b->bytes_in ||
      a->bytes_out != b->bytes_out || a->latency_us_sum != b->latency_us_sum)
    return false;
  for (int k = 0; k < TG_USAGE_BUCKETS; k++)
    if (a->h[k] != b->h[k])
      return false;
  return same_str(a->key_id, b->key_id) && same_str(a->app_id, b->app_id) &&
         same_str(a->developer_id, b->developer_id) && same_str(a->api_id, b->api_id) &&
         same_str(a->plan_id, b->plan_id) && same_str(a->subscription_id, b->subscription_id) &&
         same_str(a->reason, b->reason);
}

/* Decode body[0..len) into *rs; aborts unless the result is a valid one. */
static int decode(const unsigned char *body, size_t len, rows_t *rs) {
  tg_problem_t p = {0};
  size_t nrows = SIZE_MAX;
  memset(rs, 0, sizeof(*rs));
  rs->body = body;
  rs->len = len;
  int rc = tg_usage_journal_decode(body, len, collect_cb, rs, &nrows, &p);
  if (nrows > len / MIN_ROW)
    abort(); /* unset, or a count the body cannot hold */
  if (rc != TG_OK) {
    if (rc != TG_EINVAL || p.code != TG_EINVAL || strcmp(p.field, "journal") != 0 || !p.detail[0])
      abort();
    if (rs->n > nrows)
      abort();
    return rc;
  }
  if (p.code != TG_OK || nrows == 0 || rs->n != nrows)
    abort();
  return rc;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  /* a private copy with nothing after it, so overreads are caught */
  unsigned char *body = malloc(size ? size : 1);
  if (!body)
    return 0;
  memcpy(body, data, size);
  rows_t got, again, ref = {.body = body, .len = size};
  unsigned char *enc = NULL, *enc2 = NULL;
  size_t enc_len = 0, enc2_len = 0;
  memset(&again, 0, sizeof(again));
  int rc = decode(body, size, &got);
  if (ref_decode(body, size, &ref) != (rc == TG_OK) || ref.n != got.n)
    abort(); /* the decoder and the format disagree */
  for (size_t i = 0; i < got.n; i++)
    if (!same_row(&got.r[i], &ref.r[i]))
      abort();
  if (rc != TG_OK)
    goto out;

  tg_problem_t p = {0};
  if (tg_usage_journal_encode(got.r, got.n, &enc, &enc_len, &p) != TG_OK || !enc)
    abort(); /* rows the decoder accepted must encode */
  if (enc_len > size || (enc_len == size && memcmp(enc, body, size) != 0))
    abort();
  if (decode(enc, enc_len, &again) != TG_OK || again.n != got.n)
    abort();
  for (size_t i = 0; i < got.n; i++)
    if (!same_row(&got.r[i], &again.r[i]))
      abort();
  if (tg_usage_journal_encode(again.r, again.n, &enc2, &enc2_len, &p) != TG_OK ||
      enc2_len != enc_len || memcmp(enc2, enc, enc_len) != 0)
    abort();

  /* Stop at a row chosen by the input: nothing after it is seen. */
  stop_t st = {0, 1 + (size_t)body[size - 1] % got.n};
  size_t nrows = 0;
  tg_problem_clear(&p);
  if (tg_usage_journal_decode(body, size, stop_cb, &st, &nrows, &p) != 1000 + (int)st.at ||
      st.seen != st.at || nrows != got.n || p.code != TG_OK)
    abort();

out:
  free(enc2);
  free(enc);
  free(again.r);
  free(ref.r);
  free(got.r);
  free(body);
  return 0;
}
