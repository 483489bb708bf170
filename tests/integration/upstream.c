/*
 * tollgate-test-upstream: a small HTTP/1.1 origin server that the gateway integration tests put
 * behind the gateway. It reports exactly what it received and misbehaves on demand.
 *
 * Usage:
 *   upstream [--listen 127.0.0.1:0] [--log FILE] [--name NAME] [--idle-timeout MS]
 *
 *   --listen HOST:PORT  HOST is 127.0.0.1, localhost (= 127.0.0.1) or [::1]; anything else is
 *                       refused (exit 2). PORT 0 picks a free port. Default 127.0.0.1:0.
 *   --log FILE          append one JSON line per request (O_APPEND, flushed per line).
 *   --name NAME         printable ASCII, at most 200 bytes; default "upstream".
 *   --idle-timeout MS   close a connection that sends nothing for MS while a request head or
 *                       body is awaited (keep-alive idle included); 0 = never. Default 120000.
 *
 * Start-up prints exactly one line to stdout, "listening on 127.0.0.1:PORT" (or
 * "listening on [::1]:PORT"), and flushes it. SIGTERM or SIGINT exits 0. Build:
 *   cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -pthread tests/integration/upstream.c -o upstream
 *
 * Connections: one detached thread each, at most 512 at once (further connections wait in the
 * listen backlog). TCP_NODELAY. HTTP/1.1 keep-alive and pipelining (requests answered in order);
 * HTTP/1.0 closes after the response unless it sent "Connection: keep-alive". Heads: at most
 * 64 KiB and 1024 header lines; CRLF or bare LF line ends; empty lines before the request line
 * are skipped. Rejected with 400 and a close (and logged): NUL, bare CR, obs-fold, a malformed
 * request line or header line, HTTP/1.1 without exactly one Host, a bad or conflicting
 * Content-Length, both Content-Length and Transfer-Encoding, Transfer-Encoding in HTTP/1.0,
 * "chunked" not last or repeated, a bad chunk; 431 for a head too large, 501 for a transfer
 * coding other than chunked, 505 for HTTP major version other than 1. Every request body is read
 * in full (Content-Length or chunked, decoded; trailers counted) before the response is sent. If
 * a request has "Expect: 100-continue", is HTTP/1.1 and announces a body, "HTTP/1.1 100
 * Continue" is sent before the body is read. Every response (except /close-early and the
 * garbage kind) carries X-Upstream-Name: NAME; the regular ones also X-Upstream-Conn (connection
 * serial, from 1) and X-Upstream-Seq (request number on that connection, from 1), so tests can
 * see whether the gateway reused a connection.
 * Closing connections shut down the write side and drain input for up to 2 s before close().
 *
 * Request record (one log line; also the body of /echo):
 *   {"name":NAME, "conn":N, "seq":N, "method":"GET", "target":"/echo?x=1", "version":"HTTP/1.1",
 *    "headers":[["Host","a"], ...] (received order and case), "body_len":N,
 *    "body_sha256":"hex" (of the decoded body), "chunked":bool, "trailers":N,
 *    "expect":null|"value of the first Expect header", "continue_sent":bool}
 *   plus "error":"..." when the request was rejected or cut short (body_len/body_sha256 then
 *   cover what arrived). When the head itself could not be parsed the line is only
 *   {"name", "conn", "seq", "error", "raw_head"} (raw_head: the bytes received, at most 64 KiB).
 *   /echo adds "body_b64": the body in base64, or null when it exceeds 1 MiB. JSON strings keep
 *   valid UTF-8; any other byte >= 0x80 becomes \u0080..\u00ff.
 *
 * Routing. Take the target, drop "scheme://authority" of an absolute-form target, cut at the
 * first '?' or '#', drop one trailing '/', split on '/'. Let S3, S2, S1 be the last three
 * segments (S1 last). First rule that matches wins:
 *   1. S3 == "stream"                                  -> /stream/{S2}/{S1}
 *   2. S2 in {status, delay, delay-body, large, large-chunked, headers-big, no-length,
 *      bad-response, stream}                          -> that route with parameter S1
 *   3. S1 in {echo, 100-continue, reset, close-early, no-length, sink, count}
 *   4. otherwise 404 {"error":"no such upstream route","path":PATH}
 * So "/echo", "/demo/echo" and "/a/b/echo?q" all reach /echo. A parameter that is not a decimal
 * number in range (or an unknown bad-response kind) gives 400 {"error":"bad route parameter"}.
 * HEAD is answered with the same head and no body (the raw routes ignore that).
 *
 * Routes:
 *   /echo, /100-continue   200 application/json, the request record (+ body_b64).
 *   /status/{code}         100..599 except 101. 1xx: that interim response (HTTP/1.1 clients
 *                          only) then 200 {"status":200,"interim":code}. 204, 304: no body and no
 *                          Content-Length. 205: Content-Length: 0. Others: {"status":code}.
 *   /delay/{ms}            wait ms (<= 60000), then 200 text/plain "ok".
 *   /delay-body/{ms}       head (Content-Length: 2) at once, "ok" after ms.
 *   /large/{bytes}         200, Content-Length bytes (<= 4 GiB), byte i = 'a' + i % 26, written
 *                          with blocking sends (back-pressure).
 *   /large-chunked/{bytes} same pattern, Transfer-Encoding: chunked, 16 KiB chunks.
 *   /stream/{n}/{ms}       chunked, n chunks (<= 100000) "chunk I\n" (I from 0); the first at
 *                          once, then one every ms (<= 60000), then the last-chunk.
 *                          For HTTP/1.0 requests the chunked routes send a close-delimited body.
 *   /reset                 read the request, then close with SO_LINGER {1,0} (RST), no answer.
 *   /close-early           send "HTTP/1.1 200 OK\r\nContent-Le" and close.
 *   /no-length[/{bytes}]   "HTTP/1.1 200 OK\r\nX-Upstream-Name: NAME\r\nContent-Type: text/plain
 *                          \r\n\r\n", then "no length body\n" (or bytes of the pattern), then
 *                          close: no Content-Length, no chunked, no Connection header.
 *   /bad-response/{kind}   exactly these bytes (N = NAME), then close:
 *     cl-te      "HTTP/1.1 200 OK\r\nX-Upstream-Name: N\r\nContent-Length: 5\r\n"
 *                "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
 *     double-cl  "HTTP/1.1 200 OK\r\nX-Upstream-Name: N\r\nContent-Length: 5\r\n"
 *                "Content-Length: 6\r\n\r\nhello!"
 *     obs-fold   "HTTP/1.1 200 OK\r\nX-Upstream-Name: N\r\nX-Folded: a\r\n b\r\n"
 *                "Content-Length: 2\r\n\r\nok"
 *     bare-lf    "HTTP/1.1 200 OK\nX-Upstream-Name: N\nContent-Length: 2\n\nok"
 *     garbage    "\x00\x01garbage\xff not http\r\n\r\n" (no name)
 *     bad-chunk  "HTTP/1.1 200 OK\r\nX-Upstream-Name: N\r\nTransfer-Encoding: chunked\r\n\r\n"
 *                "5\r\nhello\r\nzz\r\n"
 *     short-body "HTTP/1.1 200 OK\r\nX-Upstream-Name: N\r\nContent-Length: 100\r\n\r\n"
 *                "only ten b"
 *   /sink                  200 {"body_len":N,"body_sha256":"hex"} (body streamed, never kept).
 *   /count                 200 {"requests":N}: requests with a valid head so far, this one
 *                          included.
 *   /headers-big/{n}       200 "ok" with n (<= 10000) extra header lines of exactly 100 bytes
 *                          each, CRLF included: "X-Big-00001: xxx...".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD          (64 * 1024)
#define CONN_BUF          (MAX_HEAD + 16 * 1024)
#define MAX_HEADER_LINES  1024
#define MAX_CONNS         512
#define ECHO_KEEP         (1024 * 1024)
#define MAX_CHUNK_LINE    4096
#define MAX_TRAILER_BYTES (64 * 1024)
#define MAX_LEADING_CRLF  1024
#define MAX_DELAY_MS      60000
#define MAX_LARGE         4294967296ULL
#define CHUNK_BYTES       16384
#define MAX_STREAM_CHUNKS 100000
#define MAX_BIG_HEADERS   10000
#define LINGER_MS         2000
#define MAX_NAME          200
#define THREAD_STACK      (512 * 1024)
#define PATTERN_BLOCK     65536
#define DEFAULT_IDLE_MS   120000
#define MAX_IDLE_MS       86400000L

/* ---- globals ---------------------------------------------------------------------------- */

static const char *g_name = "upstream";
static FILE *g_log;
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_cap_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cap_cv = PTHREAD_COND_INITIALIZER;
static int g_active;
static uint64_t g_conn_serial;
static _Atomic uint64_t g_requests;
static int g_idle_ms = DEFAULT_IDLE_MS;
static unsigned char g_pattern[PATTERN_BLOCK + 26];

static void oom(void) {
  fputs("upstream: out of memory\n", stderr);
  abort();
}

/* ---- SHA-256 (FIPS 180-4) --------------------------------------------------------------- */

struct sha256 {
  uint32_t h[8];
  uint64_t bytes;
  unsigned char blk[64];
  size_t used;
};

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_init(struct sha256 *s) {
  static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, iv, sizeof iv);
  s->bytes = 0;
  s->used = 0;
}

static void sha256_block(uint32_t h[8], const unsigned char *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
           (uint32_t)p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR32(w[i - 15], 7) ^ ROR32(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR32(w[i - 2], 17) ^ ROR32(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 =
        k + (ROR32(e, 6) ^ ROR32(e, 11) ^ ROR32(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
    uint32_t t2 = (ROR32(a, 2) ^ ROR32(a, 13) ^ ROR32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    k = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
  h[5] += f;
  h[6] += g;
  h[7] += k;
}

static void sha256_update(struct sha256 *s, const unsigned char *p, size_t n) {
  s->bytes += n;
  if (s->used > 0) {
    size_t take = 64 - s->used;
    if (take > n)
      take = n;
    memcpy(s->blk + s->used, p, take);
    s->used += take;
    p += take;
    n -= take;
    if (s->used < 64)
      return;
    sha256_block(s->h, s->blk);
    s->used = 0;
  }
  while (n >= 64) {
    sha256_block(s->h, p);
    p += 64;
    n -= 64;
  }
  if (n > 0) {
    memcpy(s->blk, p, n);
    s->used = n;
  }
}

static void sha256_final(struct sha256 *s, unsigned char out[32]) {
  uint64_t bits = s->bytes * 8;
  unsigned char pad[64] = {0x80};
  unsigned char lenb[8];
  size_t padlen = s->used < 56 ? 56 - s->used : 120 - s->used;
  for (int i = 0; i < 8; i++)
    lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
  sha256_update(s, pad, padlen);
  sha256_update(s, lenb, 8);
  for (int i = 0; i < 8; i++) {
    out[4 * i] = (unsigned char)(s->h[i] >> 24);
    out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
    out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
    out[4 * i + 3] = (unsigned char)s->h[i];
  }
}

/* ---- string builder and JSON ------------------------------------------------------------ */

struct sb {
  char *p;
  size_t len, cap;
};

static void sb_reserve(struct sb *s, size_t add) {
  if (add > SIZE_MAX / 4 - s->len)
    oom();
  size_t need = s->len + add + 1;
  if (need <= s->cap)
    return;
  size_t cap = s->cap ? s->cap : 256;
  while (cap < need)
    cap *= 2;
  char *p = realloc(s->p, cap);
  if (!p)
    oom();
  s->p = p;
  s->cap = cap;
}

static void sb_add(struct sb *s, const void *d, size_t n) {
  sb_reserve(s, n);
  if (n > 0)
    memcpy(s->p + s->len, d, n);
  s->len += n;
  s->p[s->len] = 0;
}

static void sb_str(struct sb *s, const char *z) {
  sb_add(s, z, strlen(z));
}

static void sb_fmt(struct sb *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(struct sb *s, const char *fmt, ...) {
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n >= 0) {
    sb_reserve(s, (size_t)n);
    vsnprintf(s->p + s->len, (size_t)n + 1, fmt, ap2);
    s->len += (size_t)n;
  }
  va_end(ap2);
}

static void sb_free(struct sb *s) {
  free(s->p);
  s->p = NULL;
  s->len = s->cap = 0;
}

/* Length of the valid UTF-8 sequence at p (RFC 3629), 0 if invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n) {
  unsigned c = p[0];
  size_t len;
  uint32_t cp, min;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2, cp = c & 0x1f, min = 0x80;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3, cp = c & 0x0f, min = 0x800;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    cp = cp << 6 | (p[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return len;
}

static void sb_json(struct sb *s, const void *data, size_t n) {
  const unsigned char *p = data;
  sb_add(s, "\"", 1);
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      size_t j = i;
      while (j < n && p[j] >= 0x20 && p[j] < 0x7f && p[j] != '"' && p[j] != '\\')
        j++;
      sb_add(s, p + i, j - i);
      i = j;
      continue;
    }
    size_t k = c >= 0x80 ? utf8_seq(p + i, n - i) : 0;
    if (k > 0) {
      sb_add(s, p + i, k);
      i += k;
      continue;
    }
    switch (c) {
    case '"': sb_add(s, "\\\"", 2); break;
    case '\\': sb_add(s, "\\\\", 2); break;
    case '\n': sb_add(s, "\\n", 2); break;
    case '\r': sb_add(s, "\\r", 2); break;
    case '\t': sb_add(s, "\\t", 2); break;
    default: sb_fmt(s, "\\u%04x", (unsigned)c); break;
    }
    i++;
  }
  sb_add(s, "\"", 1);
}

static void sb_jsonz(struct sb *s, const char *z) {
  sb_json(s, z, strlen(z));
}

static void sb_hex(struct sb *s, const unsigned char *d, size_t n) {
  static const char hx[] = "0123456789abcdef";
  sb_reserve(s, 2 * n);
  for (size_t i = 0; i < n; i++) {
    s->p[s->len++] = hx[d[i] >> 4];
    s->p[s->len++] = hx[d[i] & 15];
  }
  s->p[s->len] = 0;
}

static void sb_b64(struct sb *s, const unsigned char *d, size_t n) {
  static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  sb_reserve(s, (n + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
    s->p[s->len++] = tb[v >> 18];
    s->p[s->len++] = tb[(v >> 12) & 63];
    s->p[s->len++] = tb[(v >> 6) & 63];
    s->p[s->len++] = tb[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0);
    s->p[s->len++] = tb[v >> 18];
    s->p[s->len++] = tb[(v >> 12) & 63];
    s->p[s->len++] = i + 1 < n ? tb[(v >> 6) & 63] : '=';
    s->p[s->len++] = '=';
  }
  s->p[s->len] = 0;
}

/* ---- small helpers ---------------------------------------------------------------------- */

static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* Case-insensitive: the n bytes at a equal the string z. */
static bool ieq(const char *a, size_t n, const char *z) {
  size_t zl = strlen(z);
  if (n != zl)
    return false;
  for (size_t i = 0; i < n; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)z[i]))
      return false;
  return true;
}

static bool seq_eq(const char *a, size_t n, const char *z) {
  return n == strlen(z) && memcmp(a, z, n) == 0;
}

static bool is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
    return true;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Decimal digits only, value <= max. */
static bool parse_dec(const char *p, size_t n, uint64_t max, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0 || n > 19)
    return false;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9')
      return false;
    v = v * 10 + (uint64_t)(p[i] - '0');
  }
  if (v > max)
    return false;
  *out = v;
  return true;
}

/* Next element of a comma-separated header list, OWS trimmed; false at the end. */
static bool list_next(const char **pp, const char *end, const char **e, size_t *el) {
  const char *p = *pp;
  while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
    p++;
  if (p >= end) {
    *pp = p;
    return false;
  }
  const char *s = p;
  while (p < end && *p != ',')
    p++;
  const char *t = p;
  while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
    t--;
  *e = s;
  *el = (size_t)(t - s);
  *pp = p;
  return true;
}

static void sleep_ms(uint64_t ms) {
  struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *reason(int code) {
  switch (code) {
  case 100: return "Continue";
  case 102: return "Processing";
  case 103: return "Early Hints";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 203: return "Non-Authoritative Information";
  case 204: return "No Content";
  case 205: return "Reset Content";
  case 206: return "Partial Content";
  case 300: return "Multiple Choices";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 421: return "Misdirected Request";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Status";
  }
}

/* ---- connection I/O --------------------------------------------------------------------- */

struct conn {
  int fd;
  uint64_t id;
  uint64_t seq;
  unsigned char *buf;
  size_t start, end;
  bool close_after;
};

static int send_all(int fd, const void *data, size_t n) {
  const char *p = data;
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int send_sb(struct conn *c, struct sb *s) {
  int rc = send_all(c->fd, s->p, s->len);
  sb_free(s);
  return rc;
}

/* Read more input. 1: got bytes, 0: EOF, -1: error, -2: idle timeout, -3: buffer full. */
static int conn_fill(struct conn *c) {
  if (c->start == c->end) {
    c->start = c->end = 0;
  } else if (c->end == CONN_BUF) {
    if (c->start == 0)
      return -3;
    memmove(c->buf, c->buf + c->start, c->end - c->start);
    c->end -= c->start;
    c->start = 0;
  }
  for (;;) {
    if (g_idle_ms > 0) {
      struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
      int pr = poll(&pfd, 1, g_idle_ms);
      if (pr < 0) {
        if (errno == EINTR)
          continue;
        return -1;
      }
      if (pr == 0)
        return -2;
    }
    ssize_t r = recv(c->fd, c->buf + c->end, CONN_BUF - c->end, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0)
      return 0;
    c->end += (size_t)r;
    return 1;
  }
}

/* One line ending in LF (a CR before it is dropped), at most max bytes without the line end.
 * The line stays valid until the next read. 0: ok, -1: EOF/error/timeout, -2: too long. */
static int conn_line(struct conn *c, size_t max, const unsigned char **line, size_t *len) {
  for (;;) {
    size_t avail = c->end - c->start;
    const unsigned char *b = c->buf + c->start;
    const unsigned char *nl = avail ? memchr(b, '\n', avail) : NULL;
    if (nl) {
      size_t ll = (size_t)(nl - b);
      c->start += ll + 1;
      if (ll > 0 && b[ll - 1] == '\r')
        ll--;
      if (ll > max)
        return -2;
      *line = b;
      *len = ll;
      return 0;
    }
    if (avail > max + 1)
      return -2;
    int f = conn_fill(c);
    if (f == -3)
      return -2;
    if (f <= 0)
      return -1;
  }
}

/* Shut down our side, drain input until EOF or LINGER_MS, so the peer sees FIN, not RST. */
static void graceful_close(struct conn *c) {
  char scratch[4096];
  int64_t deadline = now_ms() + LINGER_MS;
  shutdown(c->fd, SHUT_WR);
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0)
      break;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int pr = poll(&pfd, 1, (int)left);
    if (pr < 0 && errno == EINTR)
      continue;
    if (pr <= 0)
      break;
    ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
  }
}

/* ---- requests --------------------------------------------------------------------------- */

struct hdr {
  const char *name;
  size_t nlen;
  const char *val;
  size_t vlen;
};

struct req {
  char *head; /* owned copy of the head */
  size_t head_len;
  bool parsed; /* request line and header lines are syntactically valid */
  const char *method, *target, *version;
  size_t method_len, target_len;
  int minor;
  struct hdr *hdrs;
  size_t nhdrs;
  bool chunked, has_clen, keep_alive, head_only;
  uint64_t clen;
  const char *expect;
  size_t expect_len;
  bool expect_continue, continue_sent;
  struct sha256 sha;
  unsigned char digest[32];
  uint64_t body_len, trailers;
  bool keep_body, body_overflow;
  unsigned char *body;
  size_t body_kept, body_cap;
  const char *error;
};

static void req_free(struct req *r) {
  free(r->head);
  free(r->hdrs);
  free(r->body);
}

static int bad(struct req *r, int code, const char *why) {
  r->error = why;
  return code;
}

/* The body was cut short (EOF, error or idle timeout). */
static int cut(struct req *r, const char *why) {
  r->error = why;
  return -1;
}

/* 0 when the head is acceptable; else the status to answer with (r->error says why). */
static int parse_head(struct req *r) {
  char *p = r->head;
  size_t n = r->head_len, lines = 0, pos = 0;
  if (memchr(p, 0, n))
    return bad(r, 400, "NUL in request head");
  for (size_t i = 0; i < n; i++)
    lines += p[i] == '\n';
  if (lines > MAX_HEADER_LINES + 2)
    return bad(r, 431, "too many header lines");
  r->hdrs = calloc(lines, sizeof *r->hdrs);
  if (!r->hdrs)
    oom();
  bool first = true;
  while (pos < n) {
    char *line = p + pos;
    char *nl = memchr(line, '\n', n - pos);
    if (!nl)
      break; /* cannot happen: the head ends with an empty line */
    size_t ll = (size_t)(nl - line);
    pos += ll + 1;
    if (ll > 0 && line[ll - 1] == '\r')
      ll--;
    if (memchr(line, '\r', ll))
      return bad(r, 400, "bare CR in request head");
    if (ll == 0)
      break;
    if (first) {
      first = false;
      char *sp1 = memchr(line, ' ', ll);
      if (!sp1)
        return bad(r, 400, "malformed request line");
      char *rest = sp1 + 1;
      size_t rl = ll - (size_t)(rest - line);
      char *sp2 = memchr(rest, ' ', rl);
      if (!sp2)
        return bad(r, 400, "malformed request line");
      r->method = line;
      r->method_len = (size_t)(sp1 - line);
      r->target = rest;
      r->target_len = (size_t)(sp2 - rest);
      r->version = sp2 + 1;
      size_t vl = ll - (size_t)(r->version - line);
      if (r->method_len == 0 || r->target_len == 0)
        return bad(r, 400, "malformed request line");
      for (size_t i = 0; i < r->method_len; i++)
        if (!is_tchar((unsigned char)r->method[i]))
          return bad(r, 400, "bad method");
      for (size_t i = 0; i < r->target_len; i++) {
        unsigned char ch = (unsigned char)r->target[i];
        if (ch <= 0x20 || ch == 0x7f)
          return bad(r, 400, "bad request target");
      }
      if (vl != 8 || memcmp(r->version, "HTTP/", 5) != 0 || r->version[5] < '0' ||
          r->version[5] > '9' || r->version[6] != '.' || r->version[7] < '0' || r->version[7] > '9')
        return bad(r, 400, "bad HTTP version");
      if (r->version[5] != '1')
        return bad(r, 505, "unsupported HTTP major version");
      r->minor = r->version[7] - '0';
      continue;
    }
    if (line[0] == ' ' || line[0] == '\t')
      return bad(r, 400, "obs-fold in request head");
    char *colon = memchr(line, ':', ll);
    if (!colon || colon == line)
      return bad(r, 400, "malformed header line");
    for (char *q = line; q < colon; q++)
      if (!is_tchar((unsigned char)*q))
        return bad(r, 400, "bad header name");
    const char *v = colon + 1, *ve = line + ll;
    while (v < ve && (*v == ' ' || *v == '\t'))
      v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
      ve--;
    for (const char *q = v; q < ve; q++) {
      unsigned char ch = (unsigned char)*q;
      if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
        return bad(r, 400, "control character in header value");
    }
    if (r->nhdrs >= MAX_HEADER_LINES)
      return bad(r, 431, "too many header lines");
    struct hdr *h = &r->hdrs[r->nhdrs++];
    h->name = line;
    h->nlen = (size_t)(colon - line);
    h->val = v;
    h->vlen = (size_t)(ve - v);
  }
  if (first)
    return bad(r, 400, "empty request");
  r->parsed = true;
  r->head_only = seq_eq(r->method, r->method_len, "HEAD");

  int hosts = 0;
  size_t te_chunked = 0;
  bool te_seen = false, te_last_chunked = false, te_other = false;
  bool conn_close = false, conn_ka = false;
  for (size_t i = 0; i < r->nhdrs; i++) {
    const struct hdr *h = &r->hdrs[i];
    const char *it = h->val, *end = h->val + h->vlen, *e;
    size_t el;
    if (ieq(h->name, h->nlen, "host")) {
      hosts++;
    } else if (ieq(h->name, h->nlen, "content-length")) {
      bool any = false;
      while (list_next(&it, end, &e, &el)) {
        uint64_t v;
        any = true;
        if (!parse_dec(e, el, UINT64_MAX / 10, &v))
          return bad(r, 400, "bad Content-Length");
        if (r->has_clen && v != r->clen)
          return bad(r, 400, "conflicting Content-Length");
        r->has_clen = true;
        r->clen = v;
      }
      if (!any)
        return bad(r, 400, "empty Content-Length");
    } else if (ieq(h->name, h->nlen, "transfer-encoding")) {
      te_seen = true;
      while (list_next(&it, end, &e, &el)) {
        te_last_chunked = ieq(e, el, "chunked");
        if (te_last_chunked)
          te_chunked++;
        else
          te_other = true;
      }
    } else if (ieq(h->name, h->nlen, "connection")) {
      while (list_next(&it, end, &e, &el)) {
        if (ieq(e, el, "close"))
          conn_close = true;
        else if (ieq(e, el, "keep-alive"))
          conn_ka = true;
      }
    } else if (ieq(h->name, h->nlen, "expect") && !r->expect) {
      r->expect = h->val;
      r->expect_len = h->vlen;
      r->expect_continue = ieq(h->val, h->vlen, "100-continue");
    }
  }
  r->keep_alive = r->minor >= 1 ? !conn_close : conn_ka && !conn_close;
  if (hosts > 1 || (r->minor >= 1 && hosts == 0))
    return bad(r, 400, "missing or duplicate Host");
  if (te_seen) {
    if (r->minor == 0)
      return bad(r, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (r->has_clen)
      return bad(r, 400, "both Content-Length and Transfer-Encoding");
    if (!te_last_chunked || te_chunked != 1)
      return bad(r, 400, "chunked is not the final transfer coding exactly once");
    if (te_other)
      return bad(r, 501, "unsupported transfer coding");
    r->chunked = true;
  }
  return 0;
}

static void body_add(struct req *r, const unsigned char *p, size_t n) {
  sha256_update(&r->sha, p, n);
  r->body_len += n;
  if (!r->keep_body || r->body_overflow)
    return;
  if (n > ECHO_KEEP - r->body_kept) {
    r->body_overflow = true;
    free(r->body);
    r->body = NULL;
    r->body_kept = r->body_cap = 0;
    return;
  }
  if (r->body_kept + n > r->body_cap) {
    size_t cap = r->body_cap ? r->body_cap : 4096;
    while (cap < r->body_kept + n)
      cap *= 2;
    unsigned char *nb = realloc(r->body, cap);
    if (!nb)
      oom();
    r->body = nb;
    r->body_cap = cap;
  }
  memcpy(r->body + r->body_kept, p, n);
  r->body_kept += n;
}

/* Consume n body bytes. 0 ok, -1 EOF/error/timeout. */
static int body_consume(struct conn *c, struct req *r, uint64_t n) {
  while (n > 0) {
    if (c->start == c->end && conn_fill(c) <= 0)
      return -1;
    size_t take = c->end - c->start;
    if (take > n)
      take = (size_t)n;
    body_add(r, c->buf + c->start, take);
    c->start += take;
    n -= take;
  }
  return 0;
}

/* 0 ok, -1 EOF/error/timeout, 400 malformed. */
static int read_chunked(struct conn *c, struct req *r) {
  const unsigned char *l;
  size_t ll;
  int rc;
  for (;;) {
    rc = conn_line(c, MAX_CHUNK_LINE, &l, &ll);
    if (rc == -1)
      return cut(r, "EOF or timeout in chunked body");
    if (rc == -2)
      return bad(r, 400, "chunk size line too long");
    size_t i = 0;
    uint64_t sz = 0;
    while (i < ll && hexval(l[i]) >= 0) {
      if (sz > (UINT64_MAX >> 4))
        return bad(r, 400, "chunk size overflow");
      sz = sz << 4 | (uint64_t)hexval(l[i]);
      i++;
    }
    if (i == 0)
      return bad(r, 400, "bad chunk size");
    while (i < ll && (l[i] == ' ' || l[i] == '\t'))
      i++;
    if (i < ll && l[i] != ';')
      return bad(r, 400, "bad chunk size");
    if (sz == 0)
      break;
    if (body_consume(c, r, sz) != 0)
      return cut(r, "EOF or timeout in chunk data");
    rc = conn_line(c, 0, &l, &ll);
    if (rc == -1)
      return cut(r, "EOF or timeout in chunked body");
    if (rc == -2)
      return bad(r, 400, "chunk data not followed by CRLF");
  }
  size_t total = 0;
  for (;;) {
    rc = conn_line(c, MAX_TRAILER_BYTES, &l, &ll);
    if (rc == -1)
      return cut(r, "EOF or timeout in trailer section");
    if (rc == -2)
      return bad(r, 400, "trailer section too large");
    if (ll == 0)
      return 0;
    total += ll + 2;
    if (total > MAX_TRAILER_BYTES)
      return bad(r, 400, "trailer section too large");
    if (l[0] == ' ' || l[0] == '\t' || !memchr(l, ':', ll))
      return bad(r, 400, "malformed trailer line");
    r->trailers++;
  }
}

static int read_body(struct conn *c, struct req *r) {
  int rc = 0;
  if (r->chunked) {
    rc = read_chunked(c, r);
  } else if (r->has_clen && r->clen > 0 && body_consume(c, r, r->clen) != 0) {
    r->error = "EOF or timeout in request body";
    rc = -1;
  }
  return rc;
}

/* ---- JSON records and logging ----------------------------------------------------------- */

static void log_line(struct sb *s) {
  if (!g_log)
    return;
  pthread_mutex_lock(&g_log_mu);
  fwrite(s->p, 1, s->len, g_log);
  fputc('\n', g_log);
  fflush(g_log);
  pthread_mutex_unlock(&g_log_mu);
}

static void json_head_error(struct sb *s, const struct conn *c, const char *err, const void *raw,
                            size_t rawlen) {
  sb_str(s, "{\"name\":");
  sb_jsonz(s, g_name);
  sb_fmt(s, ",\"conn\":%" PRIu64 ",\"seq\":%" PRIu64 ",\"error\":", c->id, c->seq);
  sb_jsonz(s, err);
  sb_str(s, ",\"raw_head\":");
  sb_json(s, raw, rawlen > MAX_HEAD ? MAX_HEAD : rawlen);
  sb_str(s, "}");
}

static void log_head_error(const struct conn *c, const char *err, const void *raw, size_t rawlen) {
  struct sb s = {0};
  json_head_error(&s, c, err, raw, rawlen);
  log_line(&s);
  sb_free(&s);
}

static void json_req(struct sb *s, const struct conn *c, const struct req *r, bool echo) {
  if (!r->parsed) {
    json_head_error(s, c, r->error ? r->error : "bad request head", r->head, r->head_len);
    return;
  }
  sb_str(s, "{\"name\":");
  sb_jsonz(s, g_name);
  sb_fmt(s, ",\"conn\":%" PRIu64 ",\"seq\":%" PRIu64 ",\"method\":", c->id, c->seq);
  sb_json(s, r->method, r->method_len);
  sb_str(s, ",\"target\":");
  sb_json(s, r->target, r->target_len);
  sb_str(s, ",\"version\":");
  sb_json(s, r->version, 8);
  sb_str(s, ",\"headers\":[");
  for (size_t i = 0; i < r->nhdrs; i++) {
    sb_str(s, i ? ",[" : "[");
    sb_json(s, r->hdrs[i].name, r->hdrs[i].nlen);
    sb_str(s, ",");
    sb_json(s, r->hdrs[i].val, r->hdrs[i].vlen);
    sb_str(s, "]");
  }
  sb_fmt(s, "],\"body_len\":%" PRIu64 ",\"body_sha256\":\"", r->body_len);
  sb_hex(s, r->digest, 32);
  sb_fmt(s, "\",\"chunked\":%s,\"trailers\":%" PRIu64 ",\"expect\":", r->chunked ? "true" : "false",
         r->trailers);
  if (r->expect)
    sb_json(s, r->expect, r->expect_len);
  else
    sb_str(s, "null");
  sb_fmt(s, ",\"continue_sent\":%s", r->continue_sent ? "true" : "false");
  if (r->error) {
    sb_str(s, ",\"error\":");
    sb_jsonz(s, r->error);
  }
  if (echo) {
    sb_str(s, ",\"body_b64\":");
    if (r->body_overflow) {
      sb_str(s, "null");
    } else {
      sb_str(s, "\"");
      sb_b64(s, r->body ? r->body : (const unsigned char *)"", r->body_kept);
      sb_str(s, "\"");
    }
  }
  sb_str(s, "}");
}

static void log_req(const struct conn *c, const struct req *r) {
  struct sb s = {0};
  json_req(&s, c, r, false);
  log_line(&s);
  sb_free(&s);
}

/* ---- responses -------------------------------------------------------------------------- */

/* Status line and the common headers; c->close_after must already be final. */
static void resp_head(struct sb *s, const struct conn *c, const struct req *r, int code) {
  sb_fmt(s,
         "HTTP/1.1 %d %s\r\nX-Upstream-Name: %s\r\nX-Upstream-Conn: %" PRIu64
         "\r\nX-Upstream-Seq: %" PRIu64 "\r\n",
         code, reason(code), g_name, c->id, c->seq);
  if (c->close_after)
    sb_str(s, "Connection: close\r\n");
  else if (r && r->minor == 0)
    sb_str(s, "Connection: keep-alive\r\n");
}

static int respond(struct conn *c, const struct req *r, int code, const char *ctype,
                   const void *body, size_t blen) {
  struct sb s = {0};
  resp_head(&s, c, r, code);
  if (ctype)
    sb_fmt(&s, "Content-Type: %s\r\n", ctype);
  sb_fmt(&s, "Content-Length: %zu\r\n\r\n", blen);
  if (!(r && r->head_only) && blen > 0)
    sb_add(&s, body, blen);
  return send_sb(c, &s);
}

static int respond_json(struct conn *c, const struct req *r, int code, struct sb *body) {
  sb_str(body, "\n");
  int rc = respond(c, r, code, "application/json", body->p, body->len);
  sb_free(body);
  return rc;
}

static int respond_error(struct conn *c, const struct req *r, int code, const char *err) {
  struct sb b = {0};
  sb_str(&b, "{\"error\":");
  sb_jsonz(&b, err ? err : reason(code));
  sb_fmt(&b, ",\"status\":%d}", code);
  return respond_json(c, r, code, &b);
}

/* One piece of a chunked body (n <= CHUNK_BYTES), or raw bytes when !chunked. */
static int send_piece(struct conn *c, bool chunked, const void *p, size_t n) {
  char buf[CHUNK_BYTES + 32];
  if (n == 0)
    return 0;
  if (!chunked)
    return send_all(c->fd, p, n);
  int hl = snprintf(buf, sizeof buf, "%zx\r\n", n);
  memcpy(buf + hl, p, n);
  memcpy(buf + (size_t)hl + n, "\r\n", 2);
  return send_all(c->fd, buf, (size_t)hl + n + 2);
}

/* Head for a streamed body: chunked for HTTP/1.1, close-delimited for HTTP/1.0. */
static int stream_head(struct conn *c, const struct req *r, const char *ctype, bool *chunked) {
  struct sb s = {0};
  *chunked = r->minor >= 1;
  if (!*chunked)
    c->close_after = true;
  resp_head(&s, c, r, 200);
  sb_fmt(&s, "Content-Type: %s\r\n%s\r\n", ctype, *chunked ? "Transfer-Encoding: chunked\r\n" : "");
  return send_sb(c, &s);
}

static int stream_end(struct conn *c, bool chunked) {
  return chunked ? send_all(c->fd, "0\r\n\r\n", 5) : 0;
}

/* ---- routing ---------------------------------------------------------------------------- */

enum route {
  R_NOTFOUND,
  R_BADPARAM,
  R_ECHO,
  R_STATUS,
  R_DELAY,
  R_DELAY_BODY,
  R_LARGE,
  R_LARGE_CHUNKED,
  R_STREAM,
  R_RESET,
  R_CLOSE_EARLY,
  R_NO_LENGTH,
  R_BAD_RESPONSE,
  R_SINK,
  R_COUNT,
  R_HEADERS_BIG,
};

struct match {
  enum route route;
  uint64_t a, b;
  bool has_a;
  const char *arg; /* the last segment, for bad-response */
  size_t arg_len;
  const char *path;
  size_t path_len;
};

static const char *const bad_kinds[] = {"cl-te",   "double-cl", "obs-fold",  "bare-lf",
                                        "garbage", "bad-chunk", "short-body"};

struct seg {
  const char *p;
  size_t n;
};

static void route_match(const struct req *r, struct match *m) {
  const char *path = r->target;
  size_t pl = r->target_len;
  memset(m, 0, sizeof *m);
  if (path[0] != '/') {
    const char *sch = memmem(path, pl, "://", 3);
    if (sch) {
      const char *after = sch + 3, *end = path + pl;
      const char *slash = memchr(after, '/', (size_t)(end - after));
      path = slash ? slash : end;
      pl = (size_t)(end - path);
    }
  }
  for (size_t i = 0; i < pl; i++) {
    if (path[i] == '?' || path[i] == '#') {
      pl = i;
      break;
    }
  }
  m->path = path;
  m->path_len = pl;
  if (pl > 1 && path[pl - 1] == '/')
    pl--;
  struct seg s[3] = {{NULL, 0}, {NULL, 0}, {NULL, 0}}; /* s[0] is the last segment */
  int ns = 0;
  size_t end = pl;
  while (ns < 3) {
    size_t b = end;
    while (b > 0 && path[b - 1] != '/')
      b--;
    s[ns].p = path + b;
    s[ns].n = end - b;
    ns++;
    if (b <= 1)
      break;
    end = b - 1;
  }
  m->route = R_NOTFOUND;
  if (ns >= 3 && seq_eq(s[2].p, s[2].n, "stream")) {
    bool ok = parse_dec(s[1].p, s[1].n, MAX_STREAM_CHUNKS, &m->a) &&
              parse_dec(s[0].p, s[0].n, MAX_DELAY_MS, &m->b);
    m->route = ok ? R_STREAM : R_BADPARAM;
    return;
  }
  if (ns >= 2) {
    static const struct {
      const char *kw;
      enum route route;
      uint64_t min, max;
    } one[] = {
        {"status", R_STATUS, 100, 599},
        {"delay", R_DELAY, 0, MAX_DELAY_MS},
        {"delay-body", R_DELAY_BODY, 0, MAX_DELAY_MS},
        {"large", R_LARGE, 0, MAX_LARGE},
        {"large-chunked", R_LARGE_CHUNKED, 0, MAX_LARGE},
        {"headers-big", R_HEADERS_BIG, 0, MAX_BIG_HEADERS},
        {"no-length", R_NO_LENGTH, 0, MAX_LARGE},
        {"stream", R_BADPARAM, 0, 0},
    };
    if (seq_eq(s[1].p, s[1].n, "bad-response")) {
      m->route = R_BADPARAM;
      for (size_t i = 0; i < sizeof bad_kinds / sizeof bad_kinds[0]; i++)
        if (seq_eq(s[0].p, s[0].n, bad_kinds[i]))
          m->route = R_BAD_RESPONSE;
      m->arg = s[0].p;
      m->arg_len = s[0].n;
      return;
    }
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) {
      if (!seq_eq(s[1].p, s[1].n, one[i].kw))
        continue;
      bool ok = one[i].route != R_BADPARAM && parse_dec(s[0].p, s[0].n, one[i].max, &m->a) &&
                m->a >= one[i].min && !(one[i].route == R_STATUS && m->a == 101);
      m->route = ok ? one[i].route : R_BADPARAM;
      m->has_a = ok;
      return;
    }
  }
  static const struct {
    const char *kw;
    enum route route;
  } zero[] = {
      {"echo", R_ECHO},   {"100-continue", R_ECHO},
      {"reset", R_RESET}, {"close-early", R_CLOSE_EARLY},
      {"sink", R_SINK},   {"no-length", R_NO_LENGTH},
      {"count", R_COUNT},
  };
  for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++)
    if (seq_eq(s[0].p, s[0].n, zero[i].kw))
      m->route = zero[i].route;
}

/* ---- handlers --------------------------------------------------------------------------- */

static int do_status(struct conn *c, const struct req *r, int code) {
  struct sb b = {0};
  if (code < 200) {
    if (r->minor >= 1) {
      struct sb s = {0};
      sb_fmt(&s, "HTTP/1.1 %d %s\r\nX-Upstream-Name: %s\r\n\r\n", code, reason(code), g_name);
      if (send_sb(c, &s) != 0)
        return -1;
    }
    sb_fmt(&b, "{\"status\":200,\"interim\":%d}", code);
    return respond_json(c, r, 200, &b);
  }
  if (code == 204 || code == 304) {
    struct sb s = {0};
    resp_head(&s, c, r, code);
    sb_str(&s, "\r\n");
    return send_sb(c, &s);
  }
  if (code == 205)
    return respond(c, r, code, NULL, NULL, 0);
  sb_fmt(&b, "{\"status\":%d}", code);
  return respond_json(c, r, code, &b);
}

static int do_large(struct conn *c, const struct req *r, uint64_t total, bool chunked_route) {
  bool chunked = false;
  int rc;
  if (chunked_route) {
    rc = stream_head(c, r, "application/octet-stream", &chunked);
  } else {
    struct sb s = {0};
    resp_head(&s, c, r, 200);
    sb_fmt(&s, "Content-Type: application/octet-stream\r\nContent-Length: %" PRIu64 "\r\n\r\n",
           total);
    rc = send_sb(c, &s);
  }
  if (rc != 0 || r->head_only)
    return rc;
  size_t step = chunked_route ? CHUNK_BYTES : PATTERN_BLOCK;
  for (uint64_t off = 0; off < total;) {
    size_t take = total - off < step ? (size_t)(total - off) : step;
    const unsigned char *p = g_pattern + off % 26;
    rc = chunked_route ? send_piece(c, chunked, p, take) : send_all(c->fd, p, take);
    if (rc != 0)
      return rc;
    off += take;
  }
  return chunked_route ? stream_end(c, chunked) : 0;
}

static int do_stream(struct conn *c, const struct req *r, uint64_t n, uint64_t ms) {
  bool chunked;
  if (stream_head(c, r, "text/plain", &chunked) != 0)
    return -1;
  if (r->head_only)
    return 0;
  for (uint64_t i = 0; i < n; i++) {
    char line[48];
    if (i > 0)
      sleep_ms(ms);
    int ll = snprintf(line, sizeof line, "chunk %" PRIu64 "\n", i);
    if (send_piece(c, chunked, line, (size_t)ll) != 0)
      return -1;
  }
  return stream_end(c, chunked);
}

static int do_no_length(struct conn *c, const struct req *r, const struct match *m) {
  struct sb s = {0};
  c->close_after = true;
  sb_fmt(&s, "HTTP/1.1 200 OK\r\nX-Upstream-Name: %s\r\nContent-Type: text/plain\r\n\r\n", g_name);
  if (!m->has_a && !r->head_only)
    sb_str(&s, "no length body\n");
  if (send_sb(c, &s) != 0)
    return -1;
  if (!m->has_a || r->head_only)
    return 0;
  for (uint64_t off = 0; off < m->a;) {
    size_t take = m->a - off < PATTERN_BLOCK ? (size_t)(m->a - off) : PATTERN_BLOCK;
    if (send_all(c->fd, g_pattern + off % 26, take) != 0)
      return -1;
    off += take;
  }
  return 0;
}

static int do_bad_response(struct conn *c, const char *kind, size_t kl) {
  static const char garbage[] = "\x00\x01garbage\xff not http\r\n\r\n";
  struct sb s = {0};
  const char *n = g_name;
  c->close_after = true;
  if (seq_eq(kind, kl, "cl-te"))
    sb_fmt(&s,
           "HTTP/1.1 200 OK\r\nX-Upstream-Name: %s\r\nContent-Length: 5\r\n"
           "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
           n);
  else if (seq_eq(kind, kl, "double-cl"))
    sb_fmt(&s,
           "HTTP/1.1 200 OK\r\nX-Upstream-Name: %s\r\nContent-Length: 5\r\n"
           "Content-Length: 6\r\n\r\nhello!",
           n);
  else if (seq_eq(kind, kl, "obs-fold"))
    sb_fmt(&s,
           "HTTP/1.1 200 OK\r\nX-Upstream-Name: %s\r\nX-Folded: a\r\n b\r\n"
           "Content-Length: 2\r\n\r\nok",
           n);
  else if (seq_eq(kind, kl, "bare-lf"))
    sb_fmt(&s, "HTTP/1.1 200 OK\nX-Upstream-Name: %s\nContent-Length: 2\n\nok", n);
  else if (seq_eq(kind, kl, "garbage"))
    sb_add(&s, garbage, sizeof garbage - 1);
  else if (seq_eq(kind, kl, "bad-chunk"))
    sb_fmt(&s,
           "HTTP/1.1 200 OK\r\nX-Upstream-Name: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
           "5\r\nhello\r\nzz\r\n",
           n);
  else
    sb_fmt(&s, "HTTP/1.1 200 OK\r\nX-Upstream-Name: %s\r\nContent-Length: 100\r\n\r\nonly ten b",
           n);
  return send_sb(c, &s);
}

static int do_headers_big(struct conn *c, const struct req *r, uint64_t n) {
  char xs[85];
  struct sb s = {0};
  memset(xs, 'x', sizeof xs);
  resp_head(&s, c, r, 200);
  /* "X-Big-NNNNN: " is 13 bytes, 85 x's, CRLF: 100 bytes. */
  for (uint64_t i = 1; i <= n; i++) {
    sb_fmt(&s, "X-Big-%05" PRIu64 ": ", i);
    sb_add(&s, xs, sizeof xs);
    sb_str(&s, "\r\n");
  }
  sb_str(&s, "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n");
  if (!r->head_only)
    sb_str(&s, "ok");
  return send_sb(c, &s);
}

/* Answer one request. <0: the connection is unusable (write failed, or already closed). */
static int dispatch(struct conn *c, const struct req *r, const struct match *m) {
  static const char close_early[] = "HTTP/1.1 200 OK\r\nContent-Le";
  struct sb b = {0};
  switch (m->route) {
  case R_ECHO: json_req(&b, c, r, true); return respond_json(c, r, 200, &b);
  case R_STATUS: return do_status(c, r, (int)m->a);
  case R_DELAY: sleep_ms(m->a); return respond(c, r, 200, "text/plain", "ok", 2);
  case R_DELAY_BODY: {
    struct sb s = {0};
    resp_head(&s, c, r, 200);
    sb_str(&s, "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n");
    if (send_sb(c, &s) != 0)
      return -1;
    sleep_ms(m->a);
    return r->head_only ? 0 : send_all(c->fd, "ok", 2);
  }
  case R_LARGE: return do_large(c, r, m->a, false);
  case R_LARGE_CHUNKED: return do_large(c, r, m->a, true);
  case R_STREAM: return do_stream(c, r, m->a, m->b);
  case R_RESET: {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  case R_CLOSE_EARLY:
    c->close_after = true;
    return send_all(c->fd, close_early, sizeof close_early - 1);
  case R_NO_LENGTH: return do_no_length(c, r, m);
  case R_BAD_RESPONSE: return do_bad_response(c, m->arg, m->arg_len);
  case R_SINK:
    sb_fmt(&b, "{\"body_len\":%" PRIu64 ",\"body_sha256\":\"", r->body_len);
    sb_hex(&b, r->digest, 32);
    sb_str(&b, "\"}");
    return respond_json(c, r, 200, &b);
  case R_COUNT:
    sb_fmt(&b, "{\"requests\":%" PRIu64 "}", atomic_load(&g_requests));
    return respond_json(c, r, 200, &b);
  case R_HEADERS_BIG: return do_headers_big(c, r, m->a);
  case R_BADPARAM:
  case R_NOTFOUND:
    sb_str(&b, m->route == R_NOTFOUND ? "{\"error\":\"no such upstream route\",\"path\":"
                                      : "{\"error\":\"bad route parameter\",\"path\":");
    sb_json(&b, m->path, m->path_len);
    sb_str(&b, "}");
    return respond_json(c, r, m->route == R_NOTFOUND ? 404 : 400, &b);
  }
  return -1;
}

/* ---- connection loop -------------------------------------------------------------------- */

enum head_rc { HEAD_OK, HEAD_EOF, HEAD_PARTIAL, HEAD_TOOBIG, HEAD_BAD };

/* Wait for a complete head at c->buf + c->start; *hlen includes the empty line. */
static enum head_rc read_head(struct conn *c, size_t *hlen) {
  size_t scan = 0, skipped = 0;
  bool begun = false;
  for (;;) {
    size_t avail = c->end - c->start;
    const unsigned char *b = c->buf + c->start;
    if (!begun) {
      size_t i = 0;
      while (i < avail) {
        if (b[i] == '\n')
          i++;
        else if (b[i] == '\r' && i + 1 < avail && b[i + 1] == '\n')
          i += 2;
        else
          break;
      }
      c->start += i;
      skipped += i;
      avail -= i;
      b += i;
      if (skipped > MAX_LEADING_CRLF)
        return HEAD_BAD;
      begun = avail > 1 || (avail == 1 && b[0] != '\r');
    }
    if (begun) {
      for (; scan < avail; scan++) {
        if (b[scan] != '\n')
          continue;
        if ((scan >= 1 && b[scan - 1] == '\n') ||
            (scan >= 2 && b[scan - 1] == '\r' && b[scan - 2] == '\n')) {
          *hlen = scan + 1;
          return *hlen > MAX_HEAD ? HEAD_TOOBIG : HEAD_OK;
        }
      }
      if (avail >= MAX_HEAD)
        return HEAD_TOOBIG;
    }
    int f = conn_fill(c);
    if (f == -3)
      return HEAD_TOOBIG;
    if (f <= 0)
      return c->end > c->start ? HEAD_PARTIAL : HEAD_EOF;
  }
}

static void serve(struct conn *c) {
  for (;;) {
    size_t hlen = 0;
    enum head_rc hr = read_head(c, &hlen);
    if (hr == HEAD_EOF)
      return;
    c->seq++;
    if (hr != HEAD_OK) {
      const char *err = hr == HEAD_PARTIAL  ? "EOF or timeout in request head"
                        : hr == HEAD_TOOBIG ? "request head too large"
                                            : "too many empty lines before the request line";
      log_head_error(c, err, c->buf + c->start, c->end - c->start);
      if (hr == HEAD_PARTIAL)
        return;
      c->close_after = true;
      if (respond_error(c, NULL, hr == HEAD_TOOBIG ? 431 : 400, err) == 0)
        graceful_close(c);
      return;
    }

    struct req r;
    memset(&r, 0, sizeof r);
    r.head = malloc(hlen + 1);
    if (!r.head)
      oom();
    memcpy(r.head, c->buf + c->start, hlen);
    r.head[hlen] = 0;
    r.head_len = hlen;
    c->start += hlen;
    sha256_init(&r.sha);

    int code = parse_head(&r);
    if (code != 0) {
      sha256_final(&r.sha, r.digest);
      log_req(c, &r);
      c->close_after = true;
      int rc = respond_error(c, r.parsed ? &r : NULL, code, r.error);
      req_free(&r);
      if (rc == 0)
        graceful_close(c);
      return;
    }

    struct match m;
    route_match(&r, &m);
    r.keep_body = m.route == R_ECHO;
    c->close_after = !r.keep_alive;
    atomic_fetch_add(&g_requests, 1);

    if (r.expect_continue && r.minor >= 1 && (r.chunked || r.clen > 0)) {
      struct sb s = {0};
      sb_fmt(&s, "HTTP/1.1 100 Continue\r\nX-Upstream-Name: %s\r\n\r\n", g_name);
      if (send_sb(c, &s) != 0) {
        req_free(&r);
        return;
      }
      r.continue_sent = true;
    }

    int br = read_body(c, &r);
    sha256_final(&r.sha, r.digest);
    log_req(c, &r);
    if (br != 0) {
      int rc = -1;
      if (br > 0) {
        c->close_after = true;
        rc = respond_error(c, &r, br, r.error);
      }
      req_free(&r);
      if (rc == 0)
        graceful_close(c);
      return;
    }

    int dr = dispatch(c, &r, &m);
    req_free(&r);
    if (dr != 0 || c->fd < 0)
      return;
    if (c->close_after) {
      graceful_close(c);
      return;
    }
  }
}

static void *conn_main(void *arg) {
  struct conn *c = arg;
  serve(c);
  if (c->fd >= 0)
    close(c->fd);
  free(c->buf);
  free(c);
  pthread_mutex_lock(&g_cap_mu);
  g_active--;
  pthread_cond_signal(&g_cap_cv);
  pthread_mutex_unlock(&g_cap_mu);
  return NULL;
}

/* ---- start-up --------------------------------------------------------------------------- */

static void *signal_main(void *arg) {
  const sigset_t *set = arg;
  int sig = 0;
  while (sigwait(set, &sig) != 0) {
  }
  /* Hold the log lock so no line is cut in half; every line is already flushed. */
  pthread_mutex_lock(&g_log_mu);
  _exit(0);
}

static void usage(FILE *f) {
  fputs("usage: upstream [--listen 127.0.0.1:0] [--log FILE] [--name NAME] [--idle-timeout MS]\n",
        f);
}

static void die_usage(const char *msg, const char *arg) {
  fprintf(stderr, "upstream: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  usage(stderr);
  exit(2);
}

/* The value of option opt at argv[*i] ("--opt VALUE" or "--opt=VALUE"), NULL if another. */
static const char *opt_value(int argc, char **argv, int *i, const char *opt) {
  size_t ol = strlen(opt);
  if (strcmp(argv[*i], opt) == 0) {
    if (*i + 1 >= argc)
      die_usage("missing value for", opt);
    return argv[++*i];
  }
  if (strncmp(argv[*i], opt, ol) == 0 && argv[*i][ol] == '=')
    return argv[*i] + ol + 1;
  return NULL;
}

static void parse_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *sl, bool *v6) {
  char host[64];
  const char *colon = strrchr(spec, ':');
  if (!colon)
    die_usage("--listen wants HOST:PORT", spec);
  size_t hl = (size_t)(colon - spec);
  const char *h = spec;
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  if (hl == 0 || hl >= sizeof host)
    die_usage("bad --listen host", spec);
  memcpy(host, h, hl);
  host[hl] = 0;
  char *endp;
  errno = 0;
  long port = strtol(colon + 1, &endp, 10);
  if (errno != 0 || endp == colon + 1 || *endp != 0 || port < 0 || port > 65535)
    die_usage("bad --listen port", spec);
  memset(ss, 0, sizeof *ss);
  if (strcmp(host, "localhost") == 0)
    memcpy(host, "127.0.0.1", sizeof "127.0.0.1");
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    if (a4->sin_addr.s_addr != htonl(INADDR_LOOPBACK))
      die_usage("refusing a non-loopback address (only 127.0.0.1 or ::1)", spec);
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *sl = sizeof *a4;
    *v6 = false;
  } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr))
      die_usage("refusing a non-loopback address (only 127.0.0.1 or ::1)", spec);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    *sl = sizeof *a6;
    *v6 = true;
  } else {
    die_usage("bad --listen host", spec);
  }
}

int main(int argc, char **argv) {
  const char *listen_spec = "127.0.0.1:0", *log_path = NULL, *v;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if ((v = opt_value(argc, argv, &i, "--listen"))) {
      listen_spec = v;
    } else if ((v = opt_value(argc, argv, &i, "--log"))) {
      log_path = v;
    } else if ((v = opt_value(argc, argv, &i, "--name"))) {
      g_name = v;
    } else if ((v = opt_value(argc, argv, &i, "--idle-timeout"))) {
      char *endp;
      errno = 0;
      long ms = strtol(v, &endp, 10);
      if (errno != 0 || endp == v || *endp != 0 || ms < 0 || ms > MAX_IDLE_MS)
        die_usage("bad --idle-timeout", v);
      g_idle_ms = (int)ms;
    } else {
      die_usage("unknown argument", argv[i]);
    }
  }
  size_t nl = strlen(g_name);
  if (nl == 0 || nl > MAX_NAME)
    die_usage("--name must be 1..200 bytes", NULL);
  for (size_t i = 0; i < nl; i++)
    if ((unsigned char)g_name[i] < 0x20 || (unsigned char)g_name[i] > 0x7e)
      die_usage("--name must be printable ASCII", NULL);

  struct sockaddr_storage ss;
  socklen_t sl = 0;
  bool v6 = false;
  parse_listen(listen_spec, &ss, &sl, &v6);

  for (size_t i = 0; i < sizeof g_pattern; i++)
    g_pattern[i] = (unsigned char)('a' + i % 26);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, NULL);
  static sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGTERM);
  sigaddset(&stop_set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_set, NULL); /* every thread inherits this */

  if (log_path) {
    g_log = fopen(log_path, "ae");
    if (!g_log) {
      fprintf(stderr, "upstream: cannot open log %s: %s\n", log_path, strerror(errno));
      return 1;
    }
  }

  int lfd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) {
    perror("upstream: socket");
    return 1;
  }
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (v6)
    setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(lfd, (struct sockaddr *)&ss, sl) != 0 || listen(lfd, 1024) != 0) {
    fprintf(stderr, "upstream: cannot listen on %s: %s\n", listen_spec, strerror(errno));
    return 1;
  }
  struct sockaddr_storage bound;
  socklen_t bl = sizeof bound;
  if (getsockname(lfd, (struct sockaddr *)&bound, &bl) != 0) {
    perror("upstream: getsockname");
    return 1;
  }
  unsigned port = v6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                     : ntohs(((struct sockaddr_in *)&bound)->sin_port);

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, THREAD_STACK);
  pthread_t tid;
  if (pthread_create(&tid, &attr, signal_main, &stop_set) != 0) {
    fputs("upstream: cannot start the signal thread\n", stderr);
    return 1;
  }

  printf("listening on %s:%u\n", v6 ? "[::1]" : "127.0.0.1", port);
  fflush(stdout);

  for (;;) {
    pthread_mutex_lock(&g_cap_mu);
    while (g_active >= MAX_CONNS)
      pthread_cond_wait(&g_cap_cv, &g_cap_mu);
    pthread_mutex_unlock(&g_cap_mu);

    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EINTR && errno != ECONNABORTED && errno != EPROTO)
        sleep_ms(20); /* EMFILE, ENOBUFS, ...: back off, retry */
      continue;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = calloc(1, sizeof *c);
    unsigned char *buf = malloc(CONN_BUF);
    if (!c || !buf)
      oom();
    c->fd = fd;
    c->buf = buf;
    c->id = ++g_conn_serial;
    pthread_mutex_lock(&g_cap_mu);
    g_active++;
    pthread_mutex_unlock(&g_cap_mu);
    if (pthread_create(&tid, &attr, conn_main, c) != 0) {
      close(fd);
      free(buf);
      free(c);
      pthread_mutex_lock(&g_cap_mu);
      g_active--;
      pthread_mutex_unlock(&g_cap_mu);
      sleep_ms(20);
    }
  }
}
