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

/* Bytes a trusted token may hold, and the bytes of a text field that goes
 * out as it is: printable ASCII but SP , and " (0x80-0xff: none). A
 * table: exports test some hundred bytes per row with it. */
static const unsigned char token_bytes[256] = {
    /* 0x00 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x10 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x20 */ 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* SP " , */
    /* 0x30 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x40 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x50 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x60 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x70 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, /* DEL */
};

/* Whether s[0..len) is all token bytes. */
static bool all_token_bytes(const unsigned char *s, size_t len) {
  unsigned char ok = 1;
  for (size_t i = 0; i < len; i++)
    ok &= token_bytes[s[i]];
  return ok;
}

int tg_csv_field(tg_csv_buf_t *b, const char *s, size_t len) {
  const unsigned char *u = (const unsigned char *)s;
  if (!b || (!s && len))
    return TG_EINVAL;
  if (len > TG_CSV_BUF_MAX_LIMIT) /* also keeps the sums below from overflowing */
    return TG_ETOOBIG;

  /* Fast path, the common case (ids, slugs, words): printable ASCII that
   * needs no quoting, no prefix and no repair goes out as it is. */
  if (len > 0 && !formula_lead(u[0]) && all_token_bytes(u, len))
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
  if (!all_token_bytes((const unsigned char *)s, len))
    return TG_EINVAL;
  return put_token(b, s, len);
}

/* Decimal digits of u (1 for 0). */
static size_t digits(uint64_t u) {
  size_t n = 1;
  for (; u >= 10000; u /= 10000)
    n += 4;
  return n + (u >= 10) + (u >= 100) + (u >= 1000);
}

int tg_csv_ints(tg_csv_buf_t *b, const int64_t *v, size_t n) {
  if (!b || (!v && n))
    return TG_EINVAL;
  if (n == 0)
    return TG_OK;
  if (n > TG_CSV_BUF_MAX_LIMIT) /* a byte each at least: past any maximum */
    return TG_ETOOBIG;
  /* measure (at most 21 bytes each with its separator), reserve, write */
  size_t sep = b->nfields ? 1 : 0, need = sep + n - 1;
  for (size_t i = 0; i < n; i++) {
    uint64_t u = v[i] < 0 ? (uint64_t)0 - (uint64_t)v[i] : (uint64_t)v[i];
    need += digits(u) + (v[i] < 0);
  }
  int rc = reserve(b, need);
  if (rc)
    return rc;
  char *q = b->data + b->len + need;
  for (size_t i = n; i-- > 0;) {
    uint64_t u = v[i] < 0 ? (uint64_t)0 - (uint64_t)v[i] : (uint64_t)v[i];
    do {
      *--q = (char)('0' + u % 10);
      u /= 10;
    } while (u);
    if (v[i] < 0)
      *--q = '-';
    if (i > 0 || sep)
      *--q = ',';
  }
  b->len += need;
  b->data[b->len] = '\0';
  b->nfields += n;
  return TG_OK;
}

int tg_csv_raws(tg_csv_buf_t *b, const char *const *s, const size_t *len, size_t n) {
  if (!b || (n && (!s || !len)))
    return TG_EINVAL;
  if (n == 0)
    return TG_OK;
  if (n > TG_CSV_BUF_MAX_LIMIT)
    return TG_ETOOBIG;
  size_t sep = b->nfields ? 1 : 0, need = sep + n - 1;
  for (size_t i = 0; i < n; i++) {
    if (!s[i] || len[i] == 0 || len[i] > TG_CSV_BUF_MAX_LIMIT)
      return TG_EINVAL;
    if (!all_token_bytes((const unsigned char *)s[i], len[i]))
      return TG_EINVAL;
    if (len[i] > TG_CSV_BUF_MAX_LIMIT - need) /* need stays within the limit */
      return TG_ETOOBIG;
    need += len[i];
  }
  int rc = reserve(b, need);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++) {
    if (i > 0 || sep)
      put_byte(b, ',');
    put(b, s[i], len[i]);
  }
  b->data[b->len] = '\0';
  b->nfields += n;
  return TG_OK;
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

void tg_record_id_addv(tg_record_id_state_t *s, const char *const *parts, const size_t *lens,
                       size_t n) {
  /* the same bytes as n tg_record_id_add calls, in as few updates as fit
   * the buffer (each update has a cost of its own, per row of an export) */
  unsigned char buf[512];
  size_t used = 0;
  for (size_t i = 0; i < n; i++) {
    if (8 + lens[i] > sizeof(buf) - used) {
      crypto_generichash_update(&s->st, buf, used);
      used = 0;
    }
    if (8 + lens[i] > sizeof(buf)) {
      tg_record_id_add(s, parts[i], lens[i]);
      continue;
    }
    for (int k = 0; k < 8; k++)
      buf[used++] = (unsigned char)((uint64_t)lens[i] >> (8 * k));
    memcpy(buf + used, parts[i], lens[i]);
    used += lens[i];
  }
  if (used)
    crypto_generichash_update(&s->st, buf, used);
}

void tg_record_id_end(tg_record_id_state_t *s, char out[TG_RECORD_ID_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  unsigned char h[crypto_generichash_BYTES];
  _Static_assert(crypto_generichash_BYTES == 32, "BLAKE2b-256");
  _Static_assert(TG_RECORD_ID_LEN == 2 * 16, "16 bytes in hex");
  crypto_generichash_final(&s->st, h, sizeof(h));
  /* lowercase hex by table: an id is public, sodium_bin2hex's constant
   * time buys nothing here */
  for (int i = 0; i < TG_RECORD_ID_LEN / 2; i++) {
    out[2 * i] = hex[h[i] >> 4];
    out[2 * i + 1] = hex[h[i] & 15];
  }
  out[TG_RECORD_ID_LEN] = '\0';
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
