/*
 * csv.c - see csv.h. Every writer measures what it will append, reserves
 * that much (the one place that allocates) and only then writes, so a
 * failed call leaves the buffer and its row state as they were.
 */
#include "core/csv.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"

#define CSV_BUF_FIRST_CAP 4096

/* tg_time_format goes through time_t; years up to 9999 need 64 bits. */
_Static_assert(sizeof(time_t) >= 8, "time_t must hold years up to 9999");

#define CSV_TIME_MIN ((int64_t)-30610224000) /* 1000-01-01T00:00:00Z */
#define CSV_TIME_MAX ((int64_t)253402300799) /* 9999-12-31T23:59:59Z */

/* U+FFFD REPLACEMENT CHARACTER, for each byte that is not text. */
static const char replacement[3] = {'\xEF', '\xBF', '\xBD'};

void tg_csv_buf_init(tg_csv_buf_t *b, size_t max) {
  memset(b, 0, sizeof(*b));
  if (max == 0)
    max = TG_CSV_BUF_MAX_DEFAULT;
  b->max = max > TG_CSV_BUF_MAX_LIMIT ? TG_CSV_BUF_MAX_LIMIT : max;
}

void tg_csv_buf_dispose(tg_csv_buf_t *b) {
  if (!b)
    return;
  size_t max = b->max;
  free(b->data);
  memset(b, 0, sizeof(*b));
  b->max = max;
}

void tg_csv_buf_reset(tg_csv_buf_t *b) {
  b->len = 0;
  if (b->data)
    b->data[0] = '\0';
}

/*
 * Make room for `add` more bytes of output plus the NUL after them.
 * Capacity doubles up to max + 1. TG_ETOOBIG past max, TG_ENOMEM when
 * realloc fails; either way the buffer is unchanged.
 */
static int reserve(tg_csv_buf_t *b, size_t add) {
  if (add > b->max - b->len)
    return TG_ETOOBIG;
  size_t need = b->len + add + 1; /* <= max + 1 <= TG_CSV_BUF_MAX_LIMIT + 1 */
  if (need <= b->cap)
    return TG_OK;
  size_t cap = b->cap ? b->cap : CSV_BUF_FIRST_CAP;
  while (cap < need)
    cap = cap > (b->max + 1) / 2 ? b->max + 1 : cap * 2;
  char *p = realloc(b->data, cap);
  if (!p)
    return TG_ENOMEM;
  b->data = p;
  b->cap = cap;
  return TG_OK;
}

static void put(tg_csv_buf_t *b, const void *s, size_t n) {
  memcpy(b->data + b->len, s, n);
  b->len += n;
}

static void put_byte(tg_csv_buf_t *b, char c) {
  b->data[b->len++] = c;
}

/* OWASP: a cell starting with one of these may run as a formula. */
static bool formula_lead(unsigned char c) {
  return c == '=' || c == '+' || c == '-' || c == '@' || c == '\t' || c == '\r' || c == '\0';
}

/* Bytes of the text unit at s copied as they are, or 0 when s[0] becomes
 * U+FFFD (NUL, or not the start of a well-formed UTF-8 sequence). */
static size_t text_unit(const unsigned char *s, size_t avail) {
  return s[0] == '\0' ? 0 : tg_utf8_seq_len(s, avail);
}

/* Append a field that needs no transformation: separator, then s. */
static int put_token(tg_csv_buf_t *b, const char *s, size_t n) {
  size_t sep = b->nfields ? 1 : 0;
  int rc = reserve(b, sep + n);
  if (rc)
    return rc;
  if (sep)
    put_byte(b, ',');
  put(b, s, n);
  b->data[b->len] = '\0';
  b->nfields++;
  return TG_OK;
}

int tg_csv_field(tg_csv_buf_t *b, const char *s, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  if (!b || (!s && len))
    return TG_EINVAL;
  if (len > TG_CSV_BUF_MAX_LIMIT) /* also keeps the sums below from overflowing */
    return TG_ETOOBIG;

  /* Fast path, the common case (ids, slugs, words): printable ASCII that
   * needs no quoting, no prefix and no repair goes out as it is. */
  bool plain = len > 0 && !formula_lead(u[0]) && u[0] != ' ' && u[len - 1] != ' ';
  for (size_t i = 0; plain && i < len; i++)
    plain = u[i] > 0x20 && u[i] < 0x7f && u[i] != ',' && u[i] != '"';
  if (plain)
    return put_token(b, s, len);

  /* Measure: output bytes of the text, quotes to double, need to quote. */
  bool prefix = len > 0 && formula_lead(u[0]);
  bool special = false;
  size_t text = 0, dquotes = 0;
  for (size_t i = 0; i < len;) {
    size_t n = text_unit(u + i, len - i);
    if (n == 0) {
      text += sizeof(replacement);
      i++;
      continue;
    }
    if (u[i] == '"')
      dquotes++;
    if (u[i] == ',' || u[i] == '"' || u[i] == '\r' || u[i] == '\n')
      special = true;
    text += n;
    i += n;
  }
  /* ASCII bytes are always units of their own, so the ends of the output
   * are known from the input: a leading TAB was prefixed above. */
  bool quote = special || (len == 0 && b->nfields == 0) ||
               (len > 0 && (u[0] == ' ' || u[len - 1] == ' ' || u[len - 1] == '\t'));
  size_t sep = b->nfields ? 1 : 0;
  int rc = reserve(b, sep + (prefix ? 1 : 0) + text + dquotes + (quote ? 2 : 0));
  if (rc)
    return rc;

  /* Write. */
  if (sep)
    put_byte(b, ',');
  if (quote)
    put_byte(b, '"');
  if (prefix)
    put_byte(b, '\'');
  for (size_t i = 0; i < len;) {
    size_t n = text_unit(u + i, len - i);
    if (n == 0) {
      put(b, replacement, sizeof(replacement));
      i++;
      continue;
    }
    if (u[i] == '"')
      put_byte(b, '"');
    put(b, u + i, n);
    i += n;
  }
  if (quote)
    put_byte(b, '"');
  b->data[b->len] = '\0';
  b->nfields++;
  return TG_OK;
}

int tg_csv_int(tg_csv_buf_t *b, int64_t v) {
  char tmp[24];
  if (!b)
    return TG_EINVAL;
  /* by hand: exports write tens of millions of these, snprintf is slow */
  char *e = tmp + sizeof(tmp), *q = e;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  do {
    *--q = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0)
    *--q = '-';
  return put_token(b, q, (size_t)(e - q));
}

int tg_csv_time(tg_csv_buf_t *b, int64_t unix_seconds) {
  char tmp[21];
  if (!b || unix_seconds < CSV_TIME_MIN || unix_seconds > CSV_TIME_MAX)
    return TG_EINVAL;
  tg_time_format(unix_seconds, tmp);
  if (strlen(tmp) != 20) /* NEVER: the range above gives 4-digit years */
    return TG_EINVAL;
  return put_token(b, tmp, 20);
}

int tg_csv_raw(tg_csv_buf_t *b, const char *s, size_t len) {
  if (!b || !s || len == 0)
    return TG_EINVAL;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x21 || c > 0x7E || c == ',' || c == '"')
      return TG_EINVAL;
  }
  return put_token(b, s, len);
}

int tg_csv_end_row(tg_csv_buf_t *b) {
  if (!b || b->nfields == 0)
    return TG_EINVAL;
  int rc = reserve(b, 2);
  if (rc)
    return rc;
  put(b, "\r\n", 2); /* RFC 4180 section 2, rule 1 */
  b->data[b->len] = '\0';
  b->nfields = 0;
  return TG_OK;
}

void tg_record_id_start(tg_record_id_state_t *s) {
  crypto_generichash_init(&s->st, NULL, 0, crypto_generichash_BYTES);
}

void tg_record_id_add(tg_record_id_state_t *s, const char *part, size_t len) {
  unsigned char le[8];
  for (int k = 0; k < 8; k++)
    le[k] = (unsigned char)((uint64_t)len >> (8 * k));
  crypto_generichash_update(&s->st, le, sizeof(le));
  crypto_generichash_update(&s->st, (const unsigned char *)part, len);
}

void tg_record_id_end(tg_record_id_state_t *s, char out[TG_RECORD_ID_LEN + 1]) {
  unsigned char h[crypto_generichash_BYTES];
  _Static_assert(crypto_generichash_BYTES == 32, "BLAKE2b-256");
  _Static_assert(TG_RECORD_ID_LEN == 2 * 16, "16 bytes in hex");
  crypto_generichash_final(&s->st, h, sizeof(h));
  sodium_bin2hex(out, TG_RECORD_ID_LEN + 1, h, TG_RECORD_ID_LEN / 2);
}

int tg_record_id(char out[TG_RECORD_ID_LEN + 1], const char *const *parts, size_t n) {
  out[0] = '\0';
  if (!parts && n > 0)
    return TG_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!parts[i])
      return TG_EINVAL;
  tg_record_id_state_t st;
  tg_record_id_start(&st);
  for (size_t i = 0; i < n; i++)
    tg_record_id_add(&st, parts[i], strlen(parts[i]));
  tg_record_id_end(&st, out);
  return TG_OK;
}
