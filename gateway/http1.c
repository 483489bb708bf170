/*
 * http1.c - strict HTTP/1.1 framing: request heads (RFC 9112 section 3),
 * response heads (section 4), header fields (section 5, RFC 9110 section
 * 5) and the chunked transfer coding (RFC 9112 section 7.1). The rules
 * and statuses are tabled in http1.h.
 *
 * Invariants:
 * - One forward pass over the bytes. Every scan loop is bounded by both
 *   `len` and the limit of the line it is in, so nothing is read past
 *   buf[len) and a line that can no longer fit its limit is reported as
 *   soon as its first byte beyond the limit is seen.
 * - The first violation in byte order decides the error; semantic checks
 *   (Host, Content-Length, ...) run as soon as their line is complete.
 * - Nothing allocates; parsed heads point into the caller's buffer.
 * - The input is not NUL-terminated and never passed to str* functions.
 * - A prefix of a valid head returns 0, never -1, so the caller may parse
 *   again from the start when more bytes arrive. On 0 or -1, *out is
 *   unspecified.
 * - The chunked decoder is a byte-at-a-time state machine: the same input
 *   split anywhere gives the same data spans, the same verdict and the
 *   same end.
 */
#include "gateway/http1.h"

#include <limits.h>
#include <string.h>

#include "core/util.h" /* tg_hex_digit: inline, nothing to link */

/*
 * Byte classes, one table lookup per byte. Generated from the RFC ABNF;
 * tests/unit/http1 checks every byte of every class through the API.
 */
enum {
  C_TCHAR = 1 << 0,  /* RFC 9110 5.6.2 tchar */
  C_FVAL = 1 << 1,   /* RFC 9110 5.5 field-vchar / obs-text, SP, HTAB */
  C_PATH = 1 << 2,   /* RFC 3986 3.3 pchar minus pct-encoded, and "/" */
  C_HEX = 1 << 3,    /* HEXDIG */
  C_HOST = 1 << 4,   /* RFC 3986 3.2.2 reg-name: unreserved / sub-delims but "," */
  C_QDTEXT = 1 << 5, /* RFC 9110 5.6.4 qdtext */
  C_VCHAR = 1 << 6,  /* VCHAR / obs-text */
};

/* clang-format off */
static const unsigned char cls[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x22, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x22, 0x77, 0x42, 0x63, 0x77, 0x63, 0x77, 0x77, 0x76, 0x76, 0x77, 0x77, 0x66, 0x77, 0x77, 0x66,
    0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x66, 0x76, 0x62, 0x76, 0x62, 0x62,
    0x66, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
    0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x62, 0x42, 0x62, 0x63, 0x77,
    0x63, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
    0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x62, 0x63, 0x62, 0x77, 0x00,
    0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62,
    0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62,
    0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62,
    0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62,
    0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62,
    0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62,
    0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62,
    0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62, 0x62,
};
/* clang-format on */

#define IS(c, k)           ((cls[(unsigned char)(c)] & (k)) != 0)
#define CL_MAX             ((int64_t)1 << 62) /* largest Content-Length we accept */
#define CHUNK_LINE_MAX     4096               /* a chunk-size or trailer line, CRLF included */
#define CHUNK_TRAILERS_MAX 64
#define CHUNK_SIZE_DIGITS  15 /* 16^15 = 2^60: no overflow of uint64_t */

static int fail(gw_parse_error_t *err, int status, const char *reason) {
  if (err) {
    err->status = status;
    err->reason = reason;
  }
  return -1;
}

static size_t sat_sub(size_t a, size_t b) {
  return a > b ? a - b : 0;
}

static bool is_ows(unsigned char c) {
  return c == ' ' || c == '\t';
}

static unsigned char lower(unsigned char c) {
  return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* s[0..n) equals the lowercase literal `lit` of length n, ignoring case. */
static bool ieq(const unsigned char *s, const char *lit, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (lower(s[i]) != (unsigned char)lit[i])
      return false;
  return true;
}

/*
 * Where a scan loop stopped. A line's content must end at `cb` (its CR at
 * cb at the latest, so that CRLF fits the line's limit). The loops run to
 * min(len, cb), so p <= cb, except at a line start already past cb.
 */
enum { AT_BYTE, AT_END, AT_LIMIT };

static int stopped(const unsigned char *b, size_t len, size_t p, size_t cb) {
  if (p >= len)
    return AT_END;
  if (p > cb || (p == cb && b[p] != '\r'))
    return AT_LIMIT;
  return AT_BYTE;
}

/*
 * The end of a run of field-value bytes (C_FVAL) in b[p..e). Header values
 * are most of a head's bytes, so eight at a time (SWAR): a word is clean
 * when no byte is below 0x20 and none is 0x7f. The lowest flagged byte is
 * exact (borrows only flag bytes above a true hit), so on little-endian
 * machines it is found with a count of trailing zeros; HTAB, the one
 * allowed byte below 0x20, is stepped over.
 */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SWAR_LE 1
#endif

static size_t scan_value(const unsigned char *b, size_t p, size_t e) {
  const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  while (p + 8 <= e) {
    uint64_t v, d, hit;
    memcpy(&v, b + p, 8);
    d = v ^ (ones * 0x7f);
    hit = (((v - ones * 0x20) & ~v) | ((d - ones) & ~d)) & highs;
    if (!hit) {
      p += 8;
      continue;
    }
#ifdef SWAR_LE
    p += (size_t)__builtin_ctzll(hit) >> 3;
#else
    while (IS(b[p], C_FVAL))
      p++;
#endif
    if (b[p] != '\t')
      return p;
    p++;
  }
  while (p < e && IS(b[p], C_FVAL))
    p++;
  return p;
}

/* Reason for a byte that ends a line's content but is not CR (RFC 9112 2.2). */
static const char *bad_byte_reason(unsigned char c) {
  if (c == '\n')
    return "Lines must end in CRLF; a bare LF was received.";
  if (c == 0)
    return "NUL bytes are not allowed in a message head.";
  return "Control characters are not allowed in a message head.";
}

/* ------------------------------------------------------------------------
 * Field values with meaning for framing
 * ---------------------------------------------------------------------- */

/* RFC 9110 8.6: 1*DIGIT, one value, at most CL_MAX. */
static bool parse_content_length(const unsigned char *v, size_t n, int64_t *out) {
  int64_t x = 0;
  if (n == 0)
    return false;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return false;
    int d = v[i] - '0';
    if (x > (CL_MAX - d) / 10)
      return false;
    x = x * 10 + d;
  }
  *out = x;
  return true;
}

/* RFC 3986 3.2.2 dec-octet "." dec-octet "." dec-octet "." dec-octet */
static bool ipv4_ok(const unsigned char *s, size_t n) {
  size_t i = 0;
  for (int part = 0; part < 4; part++) {
    size_t st = i;
    unsigned v = 0;
    while (i < n && i - st < 4 && s[i] >= '0' && s[i] <= '9')
      v = v * 10 + (unsigned)(s[i++] - '0');
    if (i == st || i - st > 3 || v > 255 || (i - st > 1 && s[st] == '0'))
      return false;
    if (part < 3) {
      if (i == n || s[i] != '.')
        return false;
      i++;
    }
  }
  return i == n;
}

/* RFC 3986 3.2.2 IPv6address (no zone identifier, no IPvFuture). */
static bool ipv6_ok(const unsigned char *s, size_t n) {
  unsigned groups = 0;
  bool elided = false;
  size_t i = 0;
  if (n >= 2 && s[0] == ':' && s[1] == ':') {
    elided = true;
    i = 2;
  } else if (n == 0 || s[0] == ':') {
    return false;
  }
  while (i < n) {
    size_t st = i;
    while (i < n && i - st < 5 && IS(s[i], C_HEX))
      i++;
    if (i < n && s[i] == '.') { /* an IPv4 tail is the last 32 bits */
      if (!ipv4_ok(s + st, n - st))
        return false;
      groups += 2;
      break;
    }
    if (i == st || i - st > 4)
      return false;
    groups++;
    if (i == n)
      break;
    if (s[i] != ':')
      return false;
    if (++i == n)
      return false;
    if (s[i] == ':') {
      if (elided)
        return false;
      elided = true;
      i++;
    }
  }
  return elided ? groups <= 7 : groups == 8;
}

/*
 * RFC 9110 7.2: Host = uri-host [ ":" port ]; uri-host is a reg-name, an
 * IPv4 address or "[" IPv6 "]". No userinfo ("@" is not a reg-name byte),
 * not empty, port 1..5 digits and at most 65535. One narrowing of RFC 3986:
 * no "," in a reg-name, so that no upstream can read the Host as a list
 * (RFC 9110 5.3) and route by its first element while we routed by all.
 */
static bool host_ok(const unsigned char *v, size_t n) {
  size_t i = 0;
  if (n == 0)
    return false;
  if (v[0] == '[') {
    while (i < n && v[i] != ']')
      i++;
    if (i == n || !ipv6_ok(v + 1, i - 1))
      return false;
    i++;
  } else {
    while (i < n && v[i] != ':') {
      if (IS(v[i], C_HOST))
        i++;
      else if (v[i] == '%' && i + 2 < n && IS(v[i + 1], C_HEX) && IS(v[i + 2], C_HEX))
        i += 3;
      else
        return false;
    }
    if (i == 0)
      return false;
  }
  if (i == n)
    return true;
  if (v[i++] != ':' || i == n || n - i > 5)
    return false;
  unsigned port = 0;
  for (; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return false;
    port = port * 10 + (unsigned)(v[i] - '0');
  }
  return port <= 65535;
}

/* RFC 9110 7.6.1: Connection = #connection-option; options are tokens. */
static bool parse_connection(const unsigned char *v, size_t n, unsigned *flags) {
  size_t i = 0;
  for (;;) {
    while (i < n && is_ows(v[i]))
      i++;
    size_t st = i;
    while (i < n && IS(v[i], C_TCHAR))
      i++;
    size_t tl = i - st;
    while (i < n && is_ows(v[i]))
      i++;
    if (tl == 10 && ieq(v + st, "keep-alive", 10))
      *flags |= GW_CONN_KEEP_ALIVE;
    else if (tl == 7 && ieq(v + st, "upgrade", 7))
      *flags |= GW_CONN_UPGRADE;
    else if (tl > 0) /* "close" too: a field named Close is reserved, not hop-by-hop */
      *flags |= GW_CONN_NAMES | (tl == 5 && ieq(v + st, "close", 5) ? GW_CONN_CLOSE : 0);
    if (i == n)
      return true;
    if (v[i] != ',')
      return false;
    i++;
  }
}

/* ------------------------------------------------------------------------
 * Header fields, shared by requests and responses (RFC 9112 section 5)
 * ---------------------------------------------------------------------- */

typedef struct fields {
  gw_header_t *h; /* the head's array */
  unsigned n;
  int host;
  int64_t content_length;
  bool te;
  bool chunked;
  bool expect_continue;
  unsigned conn;
} fields_t;

/*
 * n[0..len), a header name already checked to be a token, equals the
 * literal `lit` (lowercase letters and '-' only), ignoring case. Eight
 * bytes at a time: OR-ing 0x20 lowercases a letter and, among token
 * bytes, turns nothing else into a letter or '-' (only CR would become
 * '-', and CR is no token byte).
 */
static bool name_is(const unsigned char *n, const char *lit, size_t len) {
  const uint64_t low = 0x2020202020202020u;
  uint64_t a, b;
  if (len < 8) {
    for (size_t i = 0; i < len; i++)
      if ((n[i] | 0x20) != (unsigned char)lit[i])
        return false;
    return true;
  }
  for (size_t i = 0; i + 8 <= len; i += 8) {
    memcpy(&a, n + i, 8);
    memcpy(&b, lit + i, 8);
    if ((a | low) != b)
      return false;
  }
  memcpy(&a, n + len - 8, 8); /* the last 8 bytes, overlapping */
  memcpy(&b, lit + len - 8, 8);
  return (a | low) == b;
}

/* Which of the names the gateway acts on n[0..nl) is (gw_header_id_t):
 * by length first, so most names are told apart by one comparison. */
static uint8_t header_id(const unsigned char *n, size_t nl) {
  switch (nl) {
  case 2: return name_is(n, "te", 2) ? GW_H_TE : GW_H_OTHER;
  case 3: return name_is(n, "via", 3) ? GW_H_VIA : GW_H_OTHER;
  case 4: return name_is(n, "host", 4) ? GW_H_HOST : GW_H_OTHER;
  case 6: return name_is(n, "expect", 6) ? GW_H_EXPECT : GW_H_OTHER;
  case 7:
    return name_is(n, "trailer", 7)   ? GW_H_TRAILER
           : name_is(n, "upgrade", 7) ? GW_H_UPGRADE
                                      : GW_H_OTHER;
  case 9: return name_is(n, "forwarded", 9) ? GW_H_FORWARDED : GW_H_OTHER;
  case 10:
    return name_is(n, "connection", 10)   ? GW_H_CONNECTION
           : name_is(n, "keep-alive", 10) ? GW_H_KEEP_ALIVE
                                          : GW_H_OTHER;
  case 11: return name_is(n, "traceparent", 11) ? GW_H_TRACEPARENT : GW_H_OTHER;
  case 12: return name_is(n, "x-request-id", 12) ? GW_H_X_REQUEST_ID : GW_H_OTHER;
  case 13: return name_is(n, "authorization", 13) ? GW_H_AUTHORIZATION : GW_H_OTHER;
  case 14: return name_is(n, "content-length", 14) ? GW_H_CONTENT_LENGTH : GW_H_OTHER;
  case 15: return name_is(n, "x-forwarded-for", 15) ? GW_H_X_FORWARDED_FOR : GW_H_OTHER;
  case 16:
    return name_is(n, "x-forwarded-host", 16)   ? GW_H_X_FORWARDED_HOST
           : name_is(n, "proxy-connection", 16) ? GW_H_PROXY_CONNECTION
                                                : GW_H_OTHER;
  case 17:
    return name_is(n, "transfer-encoding", 17)   ? GW_H_TRANSFER_ENCODING
           : name_is(n, "x-forwarded-proto", 17) ? GW_H_X_FORWARDED_PROTO
                                                 : GW_H_OTHER;
  case 19: return name_is(n, "proxy-authorization", 19) ? GW_H_PROXY_AUTHORIZATION : GW_H_OTHER;
  default: return GW_H_OTHER;
  }
}

/* The meaning of one complete field line; statuses are a request's. */
static int field_semantics(fields_t *f, uint8_t id, const unsigned char *v, size_t vl, int minor,
                           bool request, gw_parse_error_t *err) {
  switch (id) {
  case GW_H_HOST: /* RFC 9110 7.2: a request has at most one Host */
    if (request) {
      if (f->host >= 0)
        return fail(err, 400, "A request must have exactly one Host header.");
      if (!host_ok(v, vl))
        return fail(err, 400, "The Host header is not a valid host[:port].");
      f->host = (int)f->n;
    }
    break;
  case GW_H_EXPECT: /* RFC 9110 10.1.1: 100-continue is the only expectation */
    if (request) {
      if (vl != 12 || !ieq(v, "100-continue", 12))
        return fail(err, 417, "The only supported expectation is 100-continue.");
      f->expect_continue = true;
    }
    break;
  case GW_H_CONNECTION: /* RFC 9110 7.6.1: several Connection lines form one list */
    if (!parse_connection(v, vl, &f->conn))
      return fail(err, 400, "The Connection header must be a list of tokens.");
    break;
  case GW_H_CONTENT_LENGTH: /* RFC 9112 6.3 items 4-5: one Content-Length, one value */
    if (f->content_length >= 0)
      return fail(err, 400, "Content-Length must appear only once.");
    if (!parse_content_length(v, vl, &f->content_length))
      return fail(err, 400, "Content-Length must be a single decimal number.");
    if (f->te)
      return fail(err, 400, "Content-Length and Transfer-Encoding must not be combined.");
    break;
  case GW_H_TRANSFER_ENCODING: /* RFC 9112 6.1: chunked, exactly once, HTTP/1.1 only */
    if (minor == 0)
      return fail(err, 400, "Transfer-Encoding is not allowed in an HTTP/1.0 message.");
    if (f->te)
      return fail(err, 400, "Transfer-Encoding must appear only once.");
    f->te = true;
    if (vl == 0)
      return fail(err, 400, "Transfer-Encoding must not be empty.");
    if (vl != 7 || !ieq(v, "chunked", 7))
      return fail(err, 501, "The only supported Transfer-Encoding is chunked.");
    f->chunked = true;
    if (f->content_length >= 0)
      return fail(err, 400, "Content-Length and Transfer-Encoding must not be combined.");
    break;
  default: break;
  }
  return 0;
}

/*
 * Field lines from b[p] up to and including the empty line (RFC 9112 2.1:
 * *( field-line CRLF ) CRLF). Sets *head_len on 1.
 */
static int parse_fields(const unsigned char *b, size_t len, size_t p, size_t max_head,
                        unsigned max_headers, int minor, bool request, fields_t *f,
                        size_t *head_len, gw_parse_error_t *err) {
  static const char too_big[] = "The message head is larger than the configured limit.";
  const size_t cb = sat_sub(max_head, 4); /* a field line, then the final CRLF */
  const size_t e = len < cb ? len : cb;
  int k;
  for (;;) {
    const size_t ls = p;
    if (p == len)
      return 0;
    if (b[p] == '\r') {
      if (p + 1 == len)
        return 0;
      if (b[p + 1] != '\n')
        return fail(err, 400, "A bare CR was received in the message head.");
      if (p + 2 > max_head) /* never: every line before kept room for this one */
        return fail(err, 431, too_big);
      *head_len = p + 2;
      return 1;
    }
    /* RFC 9112 5.2: obs-fold, and RFC 9112 2.2: space after the start line */
    if (is_ows(b[p]))
      return fail(err, 400, "Folded header lines (obs-fold) are not allowed.");
    if (f->n >= max_headers)
      return fail(err, 431, "The message has more header fields than the configured limit.");

    /* field-name ":" with no whitespace between (RFC 9112 5.1) */
    while (p < e && IS(b[p], C_TCHAR))
      p++;
    if ((k = stopped(b, len, p, cb)) != AT_BYTE)
      return k == AT_END ? 0 : fail(err, 431, too_big);
    if (b[p] != ':') {
      if (is_ows(b[p]))
        return fail(err, 400, "Whitespace between a header name and the colon is not allowed.");
      if (b[p] == '\r' || b[p] == '\n' || b[p] < 0x20 || b[p] == 0x7f)
        return fail(err, 400, p == ls ? bad_byte_reason(b[p]) : "A header line has no colon.");
      return fail(err, 400, "A header name contains a character that is not a token.");
    }
    if (p == ls)
      return fail(err, 400, "A header line has an empty name.");
    const size_t nl = p - ls;
    if (nl > UINT16_MAX)
      return fail(err, 431, too_big);
    p++;

    /* OWS field-value OWS (RFC 9110 5.5) */
    while (p < e && is_ows(b[p]))
      p++;
    const size_t vs = p;
    p = scan_value(b, p, e);
    if ((k = stopped(b, len, p, cb)) != AT_BYTE)
      return k == AT_END ? 0 : fail(err, 431, too_big);
    if (b[p] != '\r')
      return fail(err, 400, bad_byte_reason(b[p]));
    if (p + 1 == len)
      return 0;
    if (b[p + 1] != '\n')
      return fail(err, 400, "A bare CR was received in the message head.");
    size_t ve = p;
    while (ve > vs && is_ows(b[ve - 1]))
      ve--;
    if (ve - vs > UINT32_MAX)
      return fail(err, 431, too_big);
    const uint8_t id = header_id(b + ls, nl);
    if (id != GW_H_OTHER && field_semantics(f, id, b + vs, ve - vs, minor, request, err) < 0)
      return -1;
    gw_header_t *h = &f->h[f->n++];
    h->name = (const char *)(b + ls);
    h->name_len = (uint16_t)nl;
    h->id = id;
    h->value = (const char *)(b + vs);
    h->value_len = (uint32_t)(ve - vs);
    p += 2;
  }
}

/* ------------------------------------------------------------------------
 * Requests (RFC 9112 section 3)
 * ---------------------------------------------------------------------- */

static bool method_of(const unsigned char *m, size_t n, gw_method_t *out) {
  /* RFC 9110 9.1: method names are case-sensitive */
  switch (n) {
  case 3:
    if (memcmp(m, "GET", 3) == 0)
      *out = GW_GET;
    else if (memcmp(m, "PUT", 3) == 0)
      *out = GW_PUT;
    else
      return false;
    return true;
  case 4:
    if (memcmp(m, "POST", 4) == 0)
      *out = GW_POST;
    else if (memcmp(m, "HEAD", 4) == 0)
      *out = GW_HEAD;
    else
      return false;
    return true;
  case 5:
    if (memcmp(m, "PATCH", 5) != 0)
      return false;
    *out = GW_PATCH;
    return true;
  case 6:
    if (memcmp(m, "DELETE", 6) != 0)
      return false;
    *out = GW_DELETE;
    return true;
  case 7:
    if (memcmp(m, "OPTIONS", 7) != 0)
      return false;
    *out = GW_OPTIONS;
    return true;
  default: return false;
  }
}

/*
 * RFC 9112 2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT, case-sensitive.
 * Returns the minor version for 1.0/1.1, -505 for another version we know
 * of but do not speak (1.2-1.9, 2.x, 3.x), -400 for anything else.
 */
static int request_version(const unsigned char *v, size_t n) {
  if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' ||
      v[7] < '0' || v[7] > '9')
    return -400;
  if (v[5] == '1' && (v[7] == '0' || v[7] == '1'))
    return v[7] - '0';
  if (v[5] >= '1' && v[5] <= '3')
    return -505;
  return -400;
}

int gw_http1_parse_request(const char *buf, size_t len, const gw_limits_t *lim,
                           gw_request_head_t *out, gw_parse_error_t *err) {
  const unsigned char *b = (const unsigned char *)buf;
  size_t p = 0;
  int k;

  if (len == 0)
    return 0;
  /* RFC 9112 2.2: a server SHOULD ignore at least one empty line before the
   * request-line (clients that add CRLF after a POST body). One, no more. */
  if (b[0] == '\r') {
    if (len == 1)
      return 0;
    if (b[1] != '\n')
      return fail(err, 400, "A bare CR was received in the message head.");
    p = 2;
  }

  /* The line's limit: max_line, or what max_head leaves for the final CRLF. */
  const size_t ls = p;
  size_t cap = sat_sub(lim->max_head, 2);
  int lstatus = 431;
  const char *lreason = "The request head is larger than the configured limit.";
  if (lim->max_line <= sat_sub(cap, ls)) {
    cap = ls + lim->max_line;
    lstatus = 414;
    lreason = "The request line is longer than the configured limit.";
  }
  const size_t cb = sat_sub(cap, 2);
  const size_t e = len < cb ? len : cb;

  /* method SP (RFC 9112 3.1) */
  while (p < e && IS(b[p], C_TCHAR))
    p++;
  if ((k = stopped(b, len, p, cb)) != AT_BYTE)
    return k == AT_END ? 0 : fail(err, lstatus, lreason);
  if (b[p] != ' ' || p == ls) {
    if (p == ls && b[p] == ' ')
      return fail(err, 400, "The request line starts with whitespace.");
    if (b[p] == '\r' || b[p] == '\n' || b[p] < 0x20 || b[p] == 0x7f)
      return fail(err, 400, p == ls ? bad_byte_reason(b[p]) : "The request line is incomplete.");
    return fail(err, 400, "The method is not a token.");
  }
  gw_method_t method;
  if (!method_of(b + ls, p - ls, &method))
    return fail(err, 501, "The method is not supported.");
  out->method = method;
  out->method_str = buf + ls;
  out->method_len = (uint16_t)(p - ls);
  p++;

  /* origin-form = absolute-path [ "?" query ] (RFC 9112 3.2.1) */
  const size_t ts = p;
  size_t q = 0;
  if ((k = stopped(b, len, p, cb)) != AT_BYTE)
    return k == AT_END ? 0 : fail(err, lstatus, lreason);
  if (b[p] != '/') {
    if (b[p] == '*')
      return fail(err, 400, "The asterisk-form target is not accepted.");
    if (b[p] == ' ')
      return fail(err, 400, "Method and target must be separated by a single space.");
    return fail(err, 400, "The target must be an absolute path (origin-form).");
  }
  for (;;) {
    while (p < e && IS(b[p], C_PATH))
      p++;
    if ((k = stopped(b, len, p, cb)) != AT_BYTE)
      return k == AT_END ? 0 : fail(err, lstatus, lreason);
    if (b[p] == '?') {
      if (!q)
        q = p;
      p++;
      continue;
    }
    if (b[p] != '%')
      break;
    /* pct-encoded = "%" HEXDIG HEXDIG (RFC 3986 2.1) */
    if (p + 2 >= cb)
      return fail(err, lstatus, lreason);
    for (size_t i = 1; i <= 2; i++) {
      if (p + i == len)
        return 0;
      if (!IS(b[p + i], C_HEX))
        return fail(err, 400, "The target has an invalid percent-encoding.");
    }
    p += 3;
  }
  if (b[p] != ' ') {
    if (b[p] == '#')
      return fail(err, 400, "The target must not contain a fragment.");
    if (b[p] == '\r')
      return fail(err, 400, "The request line has no HTTP version (HTTP/0.9).");
    return fail(err, 400, "The target contains a character that is not allowed.");
  }
  if (p - ts > UINT32_MAX)
    return fail(err, lstatus, lreason);
  out->target = buf + ts;
  out->target_len = (uint32_t)(p - ts);
  out->path_len = (uint32_t)((q ? q : p) - ts);
  out->query = q ? buf + q + 1 : NULL;
  out->query_len = q ? (uint32_t)(p - q - 1) : 0;
  p++;

  /* HTTP-version CRLF */
  const size_t vs = p;
  while (p < e && IS(b[p], C_VCHAR))
    p++;
  if ((k = stopped(b, len, p, cb)) != AT_BYTE)
    return k == AT_END ? 0 : fail(err, lstatus, lreason);
  if (b[p] != '\r') {
    if (b[p] == ' ')
      return fail(err, 400,
                  p == vs ? "Target and version must be separated by a single space."
                          : "The request line has extra text after the version.");
    return fail(err, 400, bad_byte_reason(b[p]));
  }
  int minor = request_version(b + vs, p - vs);
  if (minor == -505)
    return fail(err, 505, "Only HTTP/1.1 and HTTP/1.0 are supported.");
  if (minor < 0)
    return fail(err, 400, "The request line has an invalid HTTP version.");
  if (p + 1 == len)
    return 0;
  if (b[p + 1] != '\n')
    return fail(err, 400, "A bare CR was received in the message head.");
  p += 2;
  out->minor = minor;

  fields_t f = {out->headers, 0, -1, -1, false, false, false, 0};
  unsigned max_headers = lim->max_headers < GW_MAX_HEADERS ? lim->max_headers : GW_MAX_HEADERS;
  int rc =
      parse_fields(b, len, p, lim->max_head, max_headers, minor, true, &f, &out->head_len, err);
  if (rc != 1)
    return rc;

  /* RFC 9112 3.2: a 1.1 request without Host is a 400 */
  if (minor == 1 && f.host < 0)
    return fail(err, 400, "A request must have exactly one Host header.");
  /* RFC 9112 6.3 item 7 would make these zero-length; a body-carrying
   * method without framing is far more likely a broken client: 411. */
  if (!f.chunked && f.content_length < 0 &&
      (method == GW_POST || method == GW_PUT || method == GW_PATCH))
    return fail(err, 411, "This method needs a Content-Length or chunked body.");

  /* RFC 9112 9.3: persistence */
  if (minor == 0 && !(f.conn & GW_CONN_KEEP_ALIVE))
    f.conn |= GW_CONN_CLOSE;
  out->nheaders = f.n;
  out->host = f.host;
  out->content_length = f.content_length;
  out->chunked = f.chunked;
  /* RFC 9110 10.1.1: ignored in HTTP/1.0; and a 100 (Continue) only makes
   * sense when there is content to wait for. */
  out->expect_continue = f.expect_continue && minor == 1 && (f.chunked || f.content_length > 0);
  out->conn_flags = f.conn;
  out->keep_alive = !(f.conn & GW_CONN_CLOSE);
  return 1;
}

void gw_http1_request_rebase(gw_request_head_t *h, const char *from, const char *to) {
#define REBASE(ptr) ((ptr) = (ptr) ? to + ((ptr)-from) : NULL)
  REBASE(h->method_str);
  REBASE(h->target);
  REBASE(h->query);
  for (unsigned i = 0; i < h->nheaders; i++) {
    REBASE(h->headers[i].name);
    REBASE(h->headers[i].value);
  }
#undef REBASE
}

/* ------------------------------------------------------------------------
 * Responses (RFC 9112 section 4)
 * ---------------------------------------------------------------------- */

bool gw_http1_response_has_body(gw_method_t method, int status) {
  /* RFC 9112 6.3 item 1 */
  return method != GW_HEAD && status >= 200 && status != 204 && status != 304;
}

static int parse_response(const unsigned char *b, size_t len, const gw_limits_t *lim,
                          gw_response_head_t *out, gw_parse_error_t *err) {
  static const char too_big[] = "The response head is larger than the configured limit.";
  static const char bad_line[] = "The status line is malformed.";
  size_t p = 0;
  int k;

  size_t cap = sat_sub(lim->max_head, 2);
  if (lim->max_line <= cap)
    cap = lim->max_line;
  const size_t cb = sat_sub(cap, 2);
  const size_t e = len < cb ? len : cb;

  /* HTTP-version SP (RFC 9112 4); any 1.x is read as the 1.1 we speak */
  while (p < e && IS(b[p], C_VCHAR))
    p++;
  if ((k = stopped(b, len, p, cb)) != AT_BYTE)
    return k == AT_END ? 0 : fail(err, 502, too_big);
  if (b[p] != ' ' || p != 8 || memcmp(b, "HTTP/1.", 7) != 0 || b[7] < '0' || b[7] > '9')
    return fail(err, 502, b[p] == '\n' ? bad_byte_reason(b[p]) : bad_line);
  out->minor = b[7] - '0';
  p++;

  /* status-code = 3DIGIT, then SP reason-phrase, or nothing at all */
  const size_t ss = p;
  while (p < e && p - ss < 4 && b[p] >= '0' && b[p] <= '9')
    p++;
  if (p - ss > 3)
    return fail(err, 502, bad_line);
  if ((k = stopped(b, len, p, cb)) != AT_BYTE)
    return k == AT_END ? 0 : fail(err, 502, too_big);
  if (p - ss != 3 || b[ss] < '1' || b[ss] > '5' || (b[p] != ' ' && b[p] != '\r'))
    return fail(err, 502, b[p] == '\n' ? bad_byte_reason(b[p]) : bad_line);
  out->status = (b[ss] - '0') * 100 + (b[ss + 1] - '0') * 10 + (b[ss + 2] - '0');
  out->reason = (const char *)(b + p);
  out->reason_len = 0;
  if (b[p] == ' ') {
    const size_t rs = ++p;
    while (p < e && IS(b[p], C_FVAL))
      p++;
    if ((k = stopped(b, len, p, cb)) != AT_BYTE)
      return k == AT_END ? 0 : fail(err, 502, too_big);
    if (b[p] != '\r')
      return fail(err, 502, bad_byte_reason(b[p]));
    out->reason = (const char *)(b + rs);
    out->reason_len = (uint32_t)(p - rs);
  }
  if (p + 1 == len)
    return 0;
  if (b[p + 1] != '\n')
    return fail(err, 502, "A bare CR was received in the message head.");
  p += 2;

  fields_t f = {out->headers, 0, -1, -1, false, false, false, 0};
  unsigned max_headers = lim->max_headers < GW_MAX_HEADERS ? lim->max_headers : GW_MAX_HEADERS;
  int rc = parse_fields(b, len, p, lim->max_head, max_headers, out->minor, false, &f,
                        &out->head_len, err);
  if (rc != 1)
    return rc;

  /* RFC 9112 9.3: persistence */
  if (out->minor == 0 && !(f.conn & GW_CONN_KEEP_ALIVE))
    f.conn |= GW_CONN_CLOSE;
  out->nheaders = f.n;
  out->content_length = f.content_length;
  out->chunked = f.chunked;
  out->conn_flags = f.conn;
  out->keep_alive = !(f.conn & GW_CONN_CLOSE);
  /* RFC 9112 6.3 item 8: with neither CL nor chunked, a body runs to the
   * close. The method is not known here: for a HEAD response the caller
   * may use !(conn_flags & GW_CONN_CLOSE) instead, which this leaves alone. */
  if (!f.chunked && f.content_length < 0 && gw_http1_response_has_body(GW_GET, out->status))
    out->keep_alive = false;
  return 1;
}

int gw_http1_parse_response(const char *buf, size_t len, const gw_limits_t *lim,
                            gw_response_head_t *out, gw_parse_error_t *err) {
  int rc = parse_response((const unsigned char *)buf, len, lim, out, err);
  if (rc < 0 && err)
    err->status = 502; /* whatever the upstream did wrong, the client sees a 502 */
  return rc;
}

int gw_header_find(const gw_header_t *hs, unsigned n, gw_header_id_t id) {
  for (unsigned i = 0; i < n; i++)
    if (hs[i].id == id)
      return (int)i;
  return -1;
}

bool gw_header_is(const gw_header_t *h, const char *lower_name) {
  /* the first letters differ for almost every pair a request compares
   * (each header against the hop-by-hop list, our own names, ...): decide
   * those without measuring the name */
  unsigned char c = (unsigned char)h->name[0];
  if (h->name_len == 0 || (c >= 'A' && c <= 'Z' ? c + 32 : c) != (unsigned char)lower_name[0])
    return false;
  size_t n = strlen(lower_name);
  return h->name_len == n && ieq((const unsigned char *)h->name, lower_name, n);
}

/* ------------------------------------------------------------------------
 * Chunked transfer coding (RFC 9112 section 7.1)
 * ---------------------------------------------------------------------- */

enum {
  CH_SIZE,       /* chunk-size = 1*HEXDIG */
  CH_EXT,        /* chunk-ext after ";": tokens, "=", ";", BWS */
  CH_EXT_QUOTED, /* a quoted-string value */
  CH_EXT_ESCAPE, /* after "\" in a quoted-string */
  CH_SIZE_LF,    /* the size line's CR was seen */
  CH_DATA,       /* `remaining` bytes of chunk-data */
  CH_DATA_CR,    /* CRLF after chunk-data */
  CH_DATA_LF,
  CH_TRAILER,      /* start of a trailer line, or the final CRLF */
  CH_TRAILER_NAME, /* field-name ":" */
  CH_TRAILER_VALUE,
  CH_TRAILER_LF,
  CH_FINAL_LF,
  CH_DONE,
  CH_ERROR,
};

void gw_chunked_init(gw_chunked_t *c) {
  memset(c, 0, sizeof(*c));
  c->state = CH_SIZE;
}

static long chunk_fail(gw_chunked_t *c, gw_parse_error_t *err, const char *reason) {
  c->state = CH_ERROR;
  fail(err, 400, reason);
  return -1;
}

long gw_chunked_decode(gw_chunked_t *c, const char *in, size_t len, const char **data,
                       size_t *data_len, bool *done, gw_parse_error_t *err) {
  const unsigned char *b = (const unsigned char *)in;
  size_t i = 0;
  *data = NULL;
  *data_len = 0;
  *done = c->state == CH_DONE;
  if (c->state == CH_ERROR) {
    fail(err, 400, "The chunked body is malformed.");
    return -1;
  }
  if (len > (size_t)LONG_MAX)
    len = (size_t)LONG_MAX;

  while (i < len && c->state != CH_DONE) {
    const unsigned char ch = b[i];
    if (c->state == CH_DATA) {
      size_t n = len - i;
      if ((uint64_t)n > c->remaining)
        n = (size_t)c->remaining;
      *data = in + i;
      *data_len = n;
      c->remaining -= n;
      if (c->remaining == 0)
        c->state = CH_DATA_CR;
      return (long)(i + n);
    }
    /* every other state but the CRLF after data is inside a size or trailer line */
    if (c->state != CH_DATA_CR && c->state != CH_DATA_LF && ++c->line_len > CHUNK_LINE_MAX)
      return chunk_fail(c, err, "A chunk-size or trailer line is too long.");
    i++;
    switch (c->state) {
    case CH_SIZE:
      if (IS(ch, C_HEX)) {
        if (c->digits == CHUNK_SIZE_DIGITS)
          return chunk_fail(c, err, "A chunk size has more than 15 hex digits.");
        c->remaining = c->remaining << 4 | (uint64_t)tg_hex_digit(ch);
        c->digits++;
      } else if (c->digits == 0) {
        return chunk_fail(c, err, "A chunk size must start with a hex digit.");
      } else if (ch == ';') {
        c->state = CH_EXT;
      } else if (ch == '\r') {
        c->state = CH_SIZE_LF;
      } else {
        return chunk_fail(c, err, "A chunk size is followed by an invalid character.");
      }
      break;
    case CH_EXT: /* RFC 9112 7.1.1: BWS ";" BWS name [ BWS "=" BWS value ] */
      if (ch == '"')
        c->state = CH_EXT_QUOTED;
      else if (ch == '\r')
        c->state = CH_SIZE_LF;
      else if (!IS(ch, C_TCHAR) && ch != '=' && ch != ';' && !is_ows(ch))
        return chunk_fail(c, err, "A chunk extension contains an invalid character.");
      break;
    case CH_EXT_QUOTED: /* RFC 9110 5.6.4 */
      if (ch == '"')
        c->state = CH_EXT;
      else if (ch == '\\')
        c->state = CH_EXT_ESCAPE;
      else if (!IS(ch, C_QDTEXT))
        return chunk_fail(c, err, "A chunk extension contains an invalid quoted string.");
      break;
    case CH_EXT_ESCAPE:
      if (!IS(ch, C_FVAL))
        return chunk_fail(c, err, "A chunk extension contains an invalid quoted string.");
      c->state = CH_EXT_QUOTED;
      break;
    case CH_SIZE_LF:
      if (ch != '\n')
        return chunk_fail(c, err, "A chunk-size line must end in CRLF.");
      c->state = c->remaining ? CH_DATA : CH_TRAILER; /* last-chunk = 1*"0" */
      c->digits = 0;
      c->line_len = 0;
      break;
    case CH_DATA_CR:
      if (ch != '\r')
        return chunk_fail(c, err, "Chunk data must be followed by CRLF.");
      c->state = CH_DATA_LF;
      break;
    case CH_DATA_LF:
      if (ch != '\n')
        return chunk_fail(c, err, "Chunk data must be followed by CRLF.");
      c->state = CH_SIZE;
      c->line_len = 0;
      break;
    case CH_TRAILER: /* RFC 9112 7.1.2: trailer-section, checked like fields */
      if (ch == '\r') {
        c->state = CH_FINAL_LF;
      } else if (is_ows(ch)) {
        return chunk_fail(c, err, "Folded trailer lines (obs-fold) are not allowed.");
      } else if (!IS(ch, C_TCHAR)) {
        return chunk_fail(c, err, "A trailer name contains a character that is not a token.");
      } else if (c->trailers == CHUNK_TRAILERS_MAX) {
        return chunk_fail(c, err, "The chunked body has too many trailer fields.");
      } else {
        c->trailers++;
        c->state = CH_TRAILER_NAME;
      }
      break;
    case CH_TRAILER_NAME:
      if (ch == ':')
        c->state = CH_TRAILER_VALUE;
      else if (!IS(ch, C_TCHAR))
        return chunk_fail(c, err, "A trailer name contains a character that is not a token.");
      break;
    case CH_TRAILER_VALUE:
      if (ch == '\r')
        c->state = CH_TRAILER_LF;
      else if (!IS(ch, C_FVAL))
        return chunk_fail(c, err, "A trailer value contains an invalid character.");
      break;
    case CH_TRAILER_LF:
      if (ch != '\n')
        return chunk_fail(c, err, "A trailer line must end in CRLF.");
      c->state = CH_TRAILER;
      c->line_len = 0;
      break;
    case CH_FINAL_LF:
      if (ch != '\n')
        return chunk_fail(c, err, "The chunked body must end in CRLF.");
      c->state = CH_DONE;
      break;
    default: return chunk_fail(c, err, "The chunked decoder is in an invalid state.");
    }
  }
  *done = c->state == CH_DONE;
  return (long)i;
}
