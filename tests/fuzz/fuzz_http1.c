/*
 * fuzz_http1.c - gateway/http1.c over arbitrary bytes: the input is parsed
 * as a request head (with small limits, so the limit paths are reached),
 * its chunked body (if any) is decoded, the whole input is also decoded as
 * a chunked body and parsed as a response head.
 *
 * Invariants checked (abort on violation):
 * - no read outside the input (a private exact-size copy, under ASan);
 * - verdicts are -1, 0 or 1; errors carry a documented status and a
 *   reason; a parsed head lies inside the input, within the limits, ends
 *   in CRLF CRLF, and its fields agree with each other;
 * - verdicts are monotonic in the input length: the head alone parses to
 *   the same head, one byte less is incomplete, and the input minus its
 *   last byte is incomplete or the same error;
 * - the chunked decoder never consumes more than it is given, returns
 *   spans inside what it consumed, uses all its input unless it returns a
 *   span or finishes, and gives the same result however the input is
 *   split (random step sizes derived from the input).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/http1.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      abort();                                                                                     \
  } while (0)

static uint64_t fnv1a(uint64_t h, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)p[i];
    h *= 0x100000001b3u;
  }
  return h;
}

static uint64_t xorshift(uint64_t x) {
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

static bool inside(const char *p, size_t n, const char *buf, size_t len) {
  return p >= buf && p <= buf + len && n <= (size_t)(buf + len - p);
}

static bool is_request_status(int s) {
  return s == 400 || s == 411 || s == 414 || s == 417 || s == 431 || s == 501 || s == 505;
}

static void check_headers(const gw_header_t *h, unsigned n, const char *buf, size_t head_len) {
  for (unsigned i = 0; i < n; i++) {
    CHECK(h[i].name_len > 0);
    CHECK(inside(h[i].name, h[i].name_len, buf, head_len));
    CHECK(inside(h[i].value, h[i].value_len, buf, head_len));
    CHECK(h[i].value > h[i].name + h[i].name_len); /* after the colon */
    if (h[i].value_len) {                          /* OWS trimmed */
      CHECK(h[i].value[0] != ' ' && h[i].value[0] != '\t');
      CHECK(h[i].value[h[i].value_len - 1] != ' ' && h[i].value[h[i].value_len - 1] != '\t');
    }
  }
}

typedef struct run {
  uint64_t hash; /* of the concatenated data spans */
  size_t data_len;
  size_t consumed;
  int rc;
  bool done;
} run_t;

/* Decode in[0..len) in steps of 1..17 bytes chosen by `seed`, or whole if 0. */
static void run_decoder(const char *in, size_t len, uint64_t seed, run_t *r) {
  gw_chunked_t c;
  gw_chunked_init(&c);
  memset(r, 0, sizeof(*r));
  r->hash = 0xcbf29ce484222325u;
  size_t off = 0;
  while (off < len) {
    size_t step = len - off;
    if (seed) {
      seed = xorshift(seed);
      if (step > 1 + seed % 17)
        step = 1 + seed % 17;
    }
    const char *d = (const char *)1;
    size_t dl = 1;
    bool done = false;
    gw_parse_error_t err = {0, NULL};
    long n = gw_chunked_decode(&c, in + off, step, &d, &dl, &done, &err);
    if (n < 0) {
      CHECK(n == -1 && err.status == 400 && err.reason);
      r->rc = -1;
      break;
    }
    CHECK((size_t)n <= step);
    if (d) {
      CHECK(dl > 0 && inside(d, dl, in + off, (size_t)n));
      r->hash = fnv1a(r->hash, d, dl);
      r->data_len += dl;
    } else {
      CHECK(dl == 0);
      CHECK(done || (size_t)n == step);
    }
    off += (size_t)n;
    if (done) {
      r->done = true;
      break;
    }
  }
  r->consumed = off;
  if (r->rc == 0 && !r->done)
    CHECK(off == len);
}

static void check_decoder(const char *in, size_t len, uint64_t seed) {
  run_t whole, split;
  run_decoder(in, len, 0, &whole);
  run_decoder(in, len, seed | 1, &split);
  CHECK(whole.rc == split.rc && whole.done == split.done);
  CHECK(whole.hash == split.hash && whole.data_len == split.data_len);
  if (whole.rc == 0)
    CHECK(whole.consumed == split.consumed);
  CHECK(whole.data_len <= len && whole.consumed <= len);
}

static void check_request(const char *buf, size_t len, const gw_limits_t *lim, uint64_t seed) {
  static gw_request_head_t h, h2;
  gw_parse_error_t err = {0, NULL}, err2 = {0, NULL};
  int rc = gw_http1_parse_request(buf, len, lim, &h, &err);
  CHECK(rc >= -1 && rc <= 1);
  if (rc == -1) {
    CHECK(is_request_status(err.status) && err.reason);
    if (len > 0) { /* one byte less: incomplete, or the same error */
      int prc = gw_http1_parse_request(buf, len - 1, lim, &h2, &err2);
      CHECK(prc == 0 || (prc == -1 && err2.status == err.status));
    }
    return;
  }
  if (rc == 0) {
    if (len > 0)
      CHECK(gw_http1_parse_request(buf, len - 1, lim, &h2, &err2) == 0);
    return;
  }
  CHECK(h.head_len >= 18 && h.head_len <= len && h.head_len <= lim->max_head);
  CHECK(memcmp(buf + h.head_len - 4, "\r\n\r\n", 4) == 0);
  CHECK(h.method <= GW_OPTIONS);
  CHECK(inside(h.method_str, h.method_len, buf, h.head_len));
  CHECK(inside(h.target, h.target_len, buf, h.head_len) && h.target_len >= 1);
  CHECK(h.target[0] == '/' && h.path_len <= h.target_len);
  if (h.query) {
    CHECK(h.query == h.target + h.path_len + 1);
    CHECK(h.path_len + 1 + h.query_len == h.target_len);
  } else {
    CHECK(h.path_len == h.target_len && h.query_len == 0);
  }
  CHECK(h.minor == 0 || h.minor == 1);
  CHECK(h.nheaders <= lim->max_headers && h.nheaders <= GW_MAX_HEADERS);
  check_headers(h.headers, h.nheaders, buf, h.head_len);
  CHECK(h.host >= -1 && h.host < (int)h.nheaders);
  if (h.minor == 1)
    CHECK(h.host >= 0);
  if (h.host >= 0)
    CHECK(gw_header_is(&h.headers[h.host], "host"));
  CHECK(!(h.chunked && h.content_length >= 0));
  CHECK(h.content_length >= -1 && h.content_length <= ((int64_t)1 << 62));
  CHECK(!h.chunked || h.minor == 1);
  CHECK(h.keep_alive == !(h.conn_flags & GW_CONN_CLOSE));
  if (h.method == GW_POST || h.method == GW_PUT || h.method == GW_PATCH)
    CHECK(h.chunked || h.content_length >= 0);

  /* the head alone is the same head; one byte less is incomplete */
  CHECK(gw_http1_parse_request(buf, h.head_len, lim, &h2, &err2) == 1);
  CHECK(h2.head_len == h.head_len && h2.nheaders == h.nheaders && h2.target == h.target);
  CHECK(gw_http1_parse_request(buf, h.head_len - 1, lim, &h2, &err2) == 0);

  if (h.chunked)
    check_decoder(buf + h.head_len, len - h.head_len, seed);
}

static void check_response(const char *buf, size_t len, const gw_limits_t *lim) {
  static gw_response_head_t h, h2;
  gw_parse_error_t err = {0, NULL}, err2 = {0, NULL};
  int rc = gw_http1_parse_response(buf, len, lim, &h, &err);
  CHECK(rc >= -1 && rc <= 1);
  if (rc == -1) {
    CHECK(err.status == 502 && err.reason);
    if (len > 0) {
      int prc = gw_http1_parse_response(buf, len - 1, lim, &h2, &err2);
      CHECK(prc == 0 || (prc == -1 && err2.status == 502));
    }
    return;
  }
  if (rc == 0) {
    if (len > 0)
      CHECK(gw_http1_parse_response(buf, len - 1, lim, &h2, &err2) == 0);
    return;
  }
  CHECK(h.head_len >= 14 && h.head_len <= len && h.head_len <= lim->max_head);
  CHECK(memcmp(buf + h.head_len - 4, "\r\n\r\n", 4) == 0);
  CHECK(h.status >= 100 && h.status <= 599);
  CHECK(h.minor >= 0 && h.minor <= 9);
  CHECK(inside(h.reason, h.reason_len, buf, h.head_len));
  CHECK(h.nheaders <= lim->max_headers);
  check_headers(h.headers, h.nheaders, buf, h.head_len);
  CHECK(!(h.chunked && h.content_length >= 0));
  if (gw_http1_response_has_body(GW_GET, h.status) && !h.chunked && h.content_length < 0)
    CHECK(!h.keep_alive); /* close-delimited */
  else
    CHECK(h.keep_alive == !(h.conn_flags & GW_CONN_CLOSE));
  CHECK(gw_http1_parse_response(buf, h.head_len, lim, &h2, &err2) == 1);
  CHECK(h2.head_len == h.head_len && h2.status == h.status);
  CHECK(gw_http1_parse_response(buf, h.head_len - 1, lim, &h2, &err2) == 0);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  /* a private copy with no terminator, so overreads are caught */
  char *buf = malloc(size ? size : 1);
  if (!buf)
    return 0;
  memcpy(buf, data, size);
  uint64_t seed = fnv1a(0xcbf29ce484222325u, buf, size);

  /* usual small limits, or tiny ones that most inputs hit */
  static const gw_limits_t small = {.max_line = 256, .max_head = 1024, .max_headers = 16};
  static const gw_limits_t tiny = {.max_line = 40, .max_head = 96, .max_headers = 3};
  const gw_limits_t *lim = (seed & 0x300) == 0 ? &tiny : &small;

  check_request(buf, size, lim, seed);
  check_response(buf, size, lim);
  check_decoder(buf, size, seed >> 1);
  free(buf);
  return 0;
}
