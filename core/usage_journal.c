/*
 * usage_journal.c - encode and decode usage journal bodies (see
 * usage_journal.h for the format).
 */
#include "core/usage_journal.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC_LEN  4
#define VARINT_MAX 10 /* bytes of a 64-bit LEB128 value */
#define NSTRINGS   7

/* ---- encoding ---------------------------------------------------------------- */

typedef struct wbuf {
  unsigned char *b;
  size_t len, cap;
} wbuf_t;

static bool wb_reserve(wbuf_t *w, size_t more) {
  if (w->cap - w->len >= more)
    return true;
  size_t cap = w->cap ? w->cap : 256;
  while (cap - w->len < more)
    cap *= 2;
  unsigned char *b = realloc(w->b, cap);
  if (!b)
    return false;
  w->b = b;
  w->cap = cap;
  return true;
}

/* v >= 0 (the rows were checked). */
static void wb_varint(wbuf_t *w, int64_t v) {
  uint64_t u = (uint64_t)v;
  while (u >= 0x80) {
    w->b[w->len++] = (unsigned char)(u | 0x80);
    u >>= 7;
  }
  w->b[w->len++] = (unsigned char)u;
}

static void row_strings(const tg_usage_row_t *r, const char *out[NSTRINGS]) {
  out[0] = r->key_id;
  out[1] = r->app_id;
  out[2] = r->developer_id;
  out[3] = r->api_id;
  out[4] = r->plan_id;
  out[5] = r->subscription_id;
  out[6] = r->reason;
}

int tg_usage_journal_encode(const tg_usage_row_t *rows, size_t n, unsigned char **out, size_t *len,
                            tg_problem_t *p) {
  *out = NULL;
  *len = 0;
  if (n == 0 || (uint64_t)n > INT64_MAX)
    return tg_problem_set(p, TG_EINVAL, "rows", "no rows");
  wbuf_t w = {NULL, 0, 0};
  if (!wb_reserve(&w, MAGIC_LEN + VARINT_MAX))
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  memcpy(w.b, TG_USAGE_JOURNAL_MAGIC, MAGIC_LEN);
  w.len = MAGIC_LEN;
  wb_varint(&w, (int64_t)n);
  for (size_t i = 0; i < n; i++) {
    const tg_usage_row_t *r = &rows[i];
    int rc = tg_usage_row_check(r, i, p);
    if (rc) {
      free(w.b);
      return rc;
    }
    const char *s[NSTRINGS];
    size_t slen[NSTRINGS], need = (3 + 4 + TG_USAGE_BUCKETS) * VARINT_MAX;
    row_strings(r, s);
    for (int k = 0; k < NSTRINGS; k++) {
      slen[k] = strlen(s[k]);
      need += VARINT_MAX + slen[k] + 1;
    }
    if (!wb_reserve(&w, need)) {
      free(w.b);
      return tg_problem_set(p, TG_ENOMEM, "", NULL);
    }
    wb_varint(&w, r->granularity);
    wb_varint(&w, r->period_start);
    wb_varint(&w, r->status_class);
    for (int k = 0; k < NSTRINGS; k++) {
      wb_varint(&w, (int64_t)slen[k]);
      memcpy(w.b + w.len, s[k], slen[k] + 1); /* with its NUL */
      w.len += slen[k] + 1;
    }
    wb_varint(&w, r->calls);
    wb_varint(&w, r->bytes_in);
    wb_varint(&w, r->bytes_out);
    wb_varint(&w, r->latency_us_sum);
    for (int k = 0; k < TG_USAGE_BUCKETS; k++)
      wb_varint(&w, r->h[k]);
  }
  *out = w.b;
  *len = w.len;
  return TG_OK;
}

/* ---- decoding ------------------------------------------------------------------ */

typedef struct rbuf {
  const unsigned char *b;
  size_t len, off;
  const char *err; /* the first thing found wrong */
} rbuf_t;

/* A varint in 0..INT64_MAX; on error sets r->err and returns 0. */
static int64_t rb_varint(rbuf_t *r) {
  uint64_t u = 0;
  if (r->err)
    return 0; /* keep the first error */
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->off >= r->len) {
      r->err = "it ends inside a number";
      return 0;
    }
    unsigned char c = r->b[r->off++];
    if (shift == 63 && c > 0)
      break; /* would need bit 63 or more */
    u |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      if (u > INT64_MAX)
        break;
      return (int64_t)u;
    }
  }
  r->err = "a number is out of range";
  return 0;
}

/* A string: its length, its bytes and a NUL; points into the body. */
static const char *rb_string(rbuf_t *r) {
  int64_t n = rb_varint(r);
  if (r->err)
    return NULL;
  if ((uint64_t)n >= r->len - r->off) {
    r->err = "it ends inside a string";
    return NULL;
  }
  const char *s = (const char *)r->b + r->off;
  if (s[n] != '\0' || memchr(s, '\0', (size_t)n)) {
    r->err = "a string is not NUL-terminated or holds a NUL";
    return NULL;
  }
  r->off += (size_t)n + 1;
  return s;
}

int tg_usage_journal_decode(const unsigned char *body, size_t len, tg_usage_journal_cb cb,
                            void *ctx, size_t *nrows, tg_problem_t *p) {
  if (nrows)
    *nrows = 0;
  if (!body || len < MAGIC_LEN || memcmp(body, TG_USAGE_JOURNAL_MAGIC, MAGIC_LEN) != 0)
    return tg_problem_set(p, TG_EINVAL, "journal", "not a usage journal body (no %s)",
                          TG_USAGE_JOURNAL_MAGIC);
  rbuf_t r = {body, len, MAGIC_LEN, NULL};
  int64_t n = rb_varint(&r);
  /* a row takes at least 3 + 7 * 2 + 4 + 15 bytes: a count beyond that is
   * a lie, refused before any row is read */
  if (!r.err && (n < 1 || (uint64_t)n > (len - r.off) / (3 + NSTRINGS * 2 + 4 + TG_USAGE_BUCKETS)))
    r.err = "its row count does not fit its size";
  if (r.err)
    return tg_problem_set(p, TG_EINVAL, "journal", "bad body: %s", r.err);
  if (nrows)
    *nrows = (size_t)n;
  for (int64_t i = 0; i < n; i++) {
    tg_usage_row_t row;
    memset(&row, 0, sizeof(row));
    row.granularity = rb_varint(&r);
    row.period_start = rb_varint(&r);
    int64_t sc = rb_varint(&r);
    const char *s[NSTRINGS];
    for (int k = 0; k < NSTRINGS; k++)
      s[k] = r.err ? NULL : rb_string(&r);
    row.calls = rb_varint(&r);
    row.bytes_in = rb_varint(&r);
    row.bytes_out = rb_varint(&r);
    row.latency_us_sum = rb_varint(&r);
    for (int k = 0; k < TG_USAGE_BUCKETS; k++)
      row.h[k] = rb_varint(&r);
    if (r.err)
      return tg_problem_set(p, TG_EINVAL, "journal", "bad body: row %lld: %s", (long long)i, r.err);
    if (sc > 5)
      return tg_problem_set(p, TG_EINVAL, "journal",
                            "bad body: rows[%lld].status_class must be 0 to 5, not %lld",
                            (long long)i, (long long)sc);
    row.status_class = (int)sc;
    row.key_id = s[0];
    row.app_id = s[1];
    row.developer_id = s[2];
    row.api_id = s[3];
    row.plan_id = s[4];
    row.subscription_id = s[5];
    row.reason = s[6];
    tg_problem_t q;
    tg_problem_clear(&q);
    if (tg_usage_row_check(&row, (size_t)i, &q) != TG_OK)
      return tg_problem_set(p, TG_EINVAL, "journal", "bad body: %s %s", q.field, q.detail);
    int rc = cb(&row, ctx);
    if (rc)
      return rc;
  }
  if (r.off != len)
    return tg_problem_set(p, TG_EINVAL, "journal", "bad body: %zu bytes after its last row",
                          len - r.off);
  return TG_OK;
}
