/*
 * fuzz_csv.c - the CSV export writer over arbitrary fields.
 *
 * The input is split on 0x1e (record separator) into fields, written as
 * one row: a field starting with 0x1d is an integer and one starting with
 * 0x1c a time (from the next up to 8 bytes, little-endian); the rest are
 * text. The row is parsed back with a strict RFC 4180 parser and must give
 * exactly the fields written, each equal to its input after the documented
 * transformations (csv.h), quoted exactly when csv.h says, ending with
 * CRLF, with no bare CR or LF outside quotes, and well-formed UTF-8 with
 * no NUL. The row is then written again through a small buffer that is
 * flushed and reset whenever it is full: every failure must leave the
 * buffer as it was, and the flushed pieces must make the same bytes.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/csv.h"
#include "core/util.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

enum kind { TEXT, INT, TIME };

typedef struct field {
  enum kind kind;
  const unsigned char *s; /* text: the input bytes */
  size_t len;
  int64_t v;
} field_t;

/* A growable byte string for expected and parsed values. */
typedef struct str {
  unsigned char *p;
  size_t len, cap;
} str_t;

static void str_add(str_t *s, const void *b, size_t n) {
  if (n == 0)
    return;
  if (s->len + n > s->cap) {
    size_t cap = s->cap ? s->cap : 64;
    while (cap < s->len + n)
      cap *= 2;
    unsigned char *p = realloc(s->p, cap);
    if (!p)
      abort();
    s->p = p;
    s->cap = cap;
  }
  memcpy(s->p + s->len, b, n);
  s->len += n;
}

static int64_t le_int(const unsigned char *s, size_t len) {
  uint64_t v = 0;
  for (size_t i = 0; i < len && i < 8; i++)
    v |= (uint64_t)s[i] << (8 * i);
  return (int64_t)v;
}

/* OWASP's list, as csv.h takes it. */
static bool formula_lead(unsigned char c) {
  return memchr("=+-@\t\r", c, 7) != NULL; /* the 7th byte is the NUL */
}

/* The text field's content as csv.h documents it, written independently. */
static void expect_text(const unsigned char *s, size_t len, str_t *out) {
  out->len = 0;
  if (len > 0 && formula_lead(s[0]))
    str_add(out, "'", 1);
  for (size_t i = 0; i < len;) {
    size_t n = s[i] ? tg_utf8_seq_len(s + i, len - i) : 0;
    if (n == 0) {
      str_add(out, "\xEF\xBF\xBD", 3);
      i++;
    } else {
      str_add(out, s + i, n);
      i += n;
    }
  }
}

static bool must_quote(const str_t *c, bool first) {
  if (c->len == 0)
    return first;
  for (size_t i = 0; i < c->len; i++)
    if (c->p[i] == ',' || c->p[i] == '"' || c->p[i] == '\r' || c->p[i] == '\n')
      return true;
  unsigned char a = c->p[0], z = c->p[c->len - 1];
  return a == ' ' || a == '\t' || z == ' ' || z == '\t';
}

/*
 * Parse the next field of a strict RFC 4180 row at *pos into out; *quoted
 * says how it was written. Returns 1 when a comma follows, 0 at the final
 * CRLF (which must end the data). Aborts on anything else.
 */
static int parse_field(const char *d, size_t len, size_t *pos, str_t *out, bool *quoted) {
  size_t i = *pos;
  out->len = 0;
  *quoted = i < len && d[i] == '"';
  if (*quoted) {
    for (i++;; i++) {
      if (i >= len)
        abort(); /* unterminated quotes */
      if (d[i] == '"') {
        if (i + 1 < len && d[i + 1] == '"') {
          str_add(out, "\"", 1);
          i++;
          continue;
        }
        i++;
        break;
      }
      str_add(out, d + i, 1);
    }
  } else {
    for (; i < len && d[i] != ',' && d[i] != '\r'; i++) {
      if (d[i] == '"' || d[i] == '\n')
        abort(); /* a quote or bare LF in an unquoted field */
      str_add(out, d + i, 1);
    }
  }
  if (i < len && d[i] == ',') {
    *pos = i + 1;
    return 1;
  }
  if (i + 2 != len || d[i] != '\r' || d[i + 1] != '\n')
    abort(); /* a bare CR, or the row does not end in exactly one CRLF */
  *pos = len;
  return 0;
}

static int write_field(tg_csv_buf_t *b, const field_t *f) {
  switch (f->kind) {
  case INT: return tg_csv_int(b, f->v);
  case TIME: return tg_csv_time(b, f->v);
  default: return tg_csv_field(b, (const char *)f->s, f->len);
  }
}

/* Write the row through a buffer of max `max`, flushing into `out`. False
 * when some field does not fit even in an empty buffer. */
static bool write_streamed(const field_t *fs, size_t n, size_t max, str_t *out) {
  tg_csv_buf_t b;
  bool ok = true;
  tg_csv_buf_init(&b, max);
  for (size_t i = 0; i <= n && ok; i++) {
    for (int attempt = 0;; attempt++) {
      size_t len = b.len, nf = b.nfields;
      int rc = i < n ? write_field(&b, &fs[i]) : tg_csv_end_row(&b);
      if (rc == TG_OK)
        break;
      if (rc != TG_ETOOBIG || b.len != len || b.nfields != nf || (b.data && b.data[len]))
        abort();
      if (attempt > 0) {
        ok = false;
        break;
      }
      str_add(out, b.data, b.len);
      tg_csv_buf_reset(&b);
    }
  }
  if (ok)
    str_add(out, b.data, b.len);
  tg_csv_buf_dispose(&b);
  return ok;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  size_t n = 1;
  for (size_t i = 0; i < size; i++)
    n += data[i] == 0x1e;
  field_t *fs = calloc(n, sizeof(*fs));
  if (!fs)
    return 0;

  /* Split, and drop times the writer refuses (checked here). */
  size_t nf = 0, start = 0;
  tg_csv_buf_t probe;
  tg_csv_buf_init(&probe, 0);
  for (size_t i = 0; i <= size; i++) {
    if (i < size && data[i] != 0x1e)
      continue;
    field_t f = {.kind = TEXT, .s = data + start, .len = i - start};
    if (f.len > 0 && (f.s[0] == 0x1d || f.s[0] == 0x1c)) {
      f.kind = f.s[0] == 0x1d ? INT : TIME;
      f.v = le_int(f.s + 1, f.len - 1);
      if (f.kind == TIME) {
        tg_csv_buf_reset(&probe);
        int rc = tg_csv_time(&probe, f.v);
        bool in_range = f.v >= -30610224000 && f.v <= 253402300799;
        if (rc != (in_range ? TG_OK : TG_EINVAL) || probe.nfields != (in_range ? 1u : 0u))
          abort();
        if (in_range && tg_csv_end_row(&probe) != TG_OK)
          abort();
        if (!in_range)
          f.kind = TEXT; /* write the bytes as text instead */
      }
    }
    fs[nf++] = f;
    start = i + 1;
  }
  tg_csv_buf_dispose(&probe);

  /* One row, in one buffer. */
  tg_csv_buf_t b;
  tg_csv_buf_init(&b, 0);
  for (size_t i = 0; i < nf; i++)
    if (write_field(&b, &fs[i]) != TG_OK || b.nfields != i + 1)
      abort();
  if (tg_csv_end_row(&b) != TG_OK || b.nfields != 0 || b.data[b.len] != '\0')
    abort();
  if (!tg_utf8_valid(b.data, b.len, true)) /* also: no NUL */
    abort();

  /* Parse it back. */
  str_t got = {0}, want = {0};
  size_t pos = 0, parsed = 0;
  int more = 1;
  while (more) {
    bool quoted;
    more = parse_field(b.data, b.len, &pos, &got, &quoted);
    if (parsed >= nf)
      abort(); /* more fields than written */
    const field_t *f = &fs[parsed];
    if (f->kind == TEXT) {
      expect_text(f->s, f->len, &want);
      if (quoted != must_quote(&want, parsed == 0))
        abort();
      if (got.len > 0 && formula_lead(got.p[0]))
        abort(); /* a formula lead got through */
    } else {
      char tmp[32];
      if (f->kind == INT)
        snprintf(tmp, sizeof(tmp), "%" PRId64, f->v);
      else
        tg_time_format(f->v, tmp);
      want.len = 0;
      str_add(&want, tmp, strlen(tmp));
      if (quoted)
        abort();
    }
    if (got.len != want.len || (got.len && memcmp(got.p, want.p, got.len) != 0))
      abort();
    parsed++;
  }
  if (parsed != nf)
    abort();

  /* Again through a small buffer, flushed when full. */
  str_t streamed = {0};
  size_t max = 8 + (size ? data[0] % 64 : 0);
  if (write_streamed(fs, nf, max, &streamed) &&
      (streamed.len != b.len || memcmp(streamed.p, b.data, b.len) != 0))
    abort();

  free(streamed.p);
  free(got.p);
  free(want.p);
  tg_csv_buf_dispose(&b);
  free(fs);
  return 0;
}
