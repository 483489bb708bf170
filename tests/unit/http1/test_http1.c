/*
 * test_http1.c - the gateway's HTTP/1.1 framing (gateway/http1.c): the
 * security boundary between clients, the gateway and upstreams.
 *
 * - A table of raw requests, each with the expected verdict and status,
 *   covering every rule of http1.h and the request-smuggling classics.
 *   Every table entry is also fed at every prefix length, each from an
 *   exact-size heap copy (so sanitizer builds catch any overread): a
 *   prefix never gets a verdict the whole request would not get.
 * - Every byte value through every byte class (method, target, header
 *   name and value, Host), checked against sets written out from the ABNF.
 * - Limits exactly at and one byte over, complete and incomplete.
 * - Responses: status lines, framing, persistence.
 * - The chunked decoder over valid bodies split at every boundary, byte
 *   by byte and at random, and over the invalid ones.
 */
#include <stdint.h>
#include <stdlib.h>

#include "gateway/http1.h"
#include "tg_test.h"

static const gw_limits_t LIM = {.max_line = 8192, .max_head = 16384, .max_headers = 100};

/* An exact-size heap copy, so that any read past len is an ASan report. */
static char *dup_exact(const char *s, size_t n) {
  char *p = malloc(n ? n : 1);
  if (!p)
    abort();
  if (n)
    memcpy(p, s, n);
  return p;
}

static int parse_req(const char *raw, size_t n, const gw_limits_t *lim, gw_request_head_t *h,
                     gw_parse_error_t *err) {
  char *copy = dup_exact(raw, n);
  err->status = 0;
  err->reason = NULL;
  int rc = gw_http1_parse_request(copy, n, lim, h, err);
  /* re-point the head into the caller's string so it survives the copy */
  if (rc == 1)
    gw_http1_request_rebase(h, copy, raw);
  free(copy);
  return rc;
}

static int parse_resp(const char *raw, size_t n, gw_response_head_t *h, gw_parse_error_t *err) {
  char *copy = dup_exact(raw, n);
  err->status = 0;
  int rc = gw_http1_parse_response(copy, n, &LIM, h, err);
  if (rc == 1) {
    ptrdiff_t d = raw - copy;
    h->reason += d;
    for (unsigned i = 0; i < h->nheaders; i++) {
      h->headers[i].name += d;
      h->headers[i].value += d;
    }
  }
  free(copy);
  return rc;
}

static bool span_is(const char *p, size_t n, const char *lit) {
  return p && strlen(lit) == n && memcmp(p, lit, n) == 0;
}

#define ASSERT_SPAN(p, n, lit)                                                                     \
  do {                                                                                             \
    if (!span_is((p), (n), (lit)))                                                                 \
      TG_FAIL_("%s == \"%s\": got \"%.*s\"", #p, (lit), (int)(n), (p) ? (p) : "");                 \
  } while (0)

/* A tiny deterministic PRNG (xorshift64*) for split points. */
static uint64_t prng_state = 0x9e3779b97f4a7c15u;
static uint64_t prng_next(void) {
  prng_state ^= prng_state >> 12;
  prng_state ^= prng_state << 25;
  prng_state ^= prng_state >> 27;
  return prng_state * 0x2545f4914f6cdd1du;
}

/* ====================================================================== */
/* The request table                                                      */
/* ====================================================================== */

typedef struct req_case {
  const char *name;
  const char *raw;
  size_t len;
  int rc;
  int status;
} req_case_t;

#define OK(name, raw)                                                                              \
  { name, raw, sizeof(raw) - 1, 1, 0 }
#define BAD(name, raw, status)                                                                     \
  { name, raw, sizeof(raw) - 1, -1, status }
#define H  "Host: h\r\n"
#define RL "GET / HTTP/1.1\r\n"
#define PL "POST / HTTP/1.1\r\n" H

static const req_case_t req_cases[] = {
    /* well-formed */
    OK("minimal 1.1", RL H "\r\n"),
    OK("1.0 without Host", "GET / HTTP/1.0\r\n\r\n"),
    OK("1.0 with Host", "GET / HTTP/1.0\r\n" H "\r\n"),
    OK("POST with Content-Length", PL "Content-Length: 3\r\n\r\nabc"),
    OK("chunked POST", PL "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    OK("TE value with OWS around it", PL "Transfer-Encoding: \t chunked \t\r\n\r\n"),
    OK("TE value in upper case", PL "Transfer-Encoding: CHUNKED\r\n\r\n"),
    OK("CL with OWS around it", PL "Content-Length:  5 \r\n\r\n"),
    OK("CL 0", PL "Content-Length: 0\r\n\r\n"),
    OK("CL with leading zeros", PL "Content-Length: 007\r\n\r\n"),
    OK("CL at 2^62", PL "Content-Length: 4611686018427387904\r\n\r\n"),
    OK("one empty line before the request line", "\r\n" RL H "\r\n"),
    OK("query", "GET /a/b?x=1&y=%20&z=/?: HTTP/1.1\r\n" H "\r\n"),
    OK("all pchar bytes", "GET /azAZ09-._~!$&'()*+,;=:@/%2F HTTP/1.1\r\n" H "\r\n"),
    OK("empty header value", RL H "X-Empty:\r\n\r\n"),
    OK("header value of only OWS", RL H "X-Empty: \t \r\n\r\n"),
    OK("HTAB and obs-text in a value", RL H "X-V: a\tb \xc3\xa9\r\n\r\n"),
    OK("header without OWS after the colon", RL "Host:h\r\n\r\n"),
    OK("Host with port", RL "Host: api.example.com:8443\r\n\r\n"),
    OK("Host IPv4", RL "Host: 192.0.2.1:80\r\n\r\n"),
    OK("Host IPv6", RL "Host: [2001:db8::1]:8080\r\n\r\n"),
    OK("Host IPv6 with IPv4 tail", RL "Host: [::ffff:192.0.2.1]\r\n\r\n"),
    OK("Host percent-encoded reg-name", RL "Host: a%41b\r\n\r\n"),
    OK("GET with a body", RL H "Content-Length: 2\r\n\r\nhi"),
    OK("DELETE without a body", "DELETE /x HTTP/1.1\r\n" H "\r\n"),
    OK("Expect 100-continue", PL "Content-Length: 1\r\nExpect: 100-continue\r\n\r\n"),
    OK("Expect in upper case", PL "Content-Length: 1\r\nExpect: 100-CONTINUE\r\n\r\n"),
    OK("Connection list with empty elements", RL H "Connection: , close ,,\r\n\r\n"),

    /* request line */
    BAD("HTTP/0.9 request line", "GET /\r\n\r\n", 400),
    BAD("HTTP/2.0", "GET / HTTP/2.0\r\n" H "\r\n", 505),
    BAD("HTTP/3.0", "GET / HTTP/3.0\r\n" H "\r\n", 505),
    BAD("HTTP/1.2", "GET / HTTP/1.2\r\n" H "\r\n", 505),
    BAD("HTTP/1.9", "GET / HTTP/1.9\r\n" H "\r\n", 505),
    BAD("HTTP/0.9 spelled out", "GET / HTTP/0.9\r\n" H "\r\n", 400),
    BAD("HTTP/4.0", "GET / HTTP/4.0\r\n" H "\r\n", 400),
    BAD("HTTP/1.10", "GET / HTTP/1.10\r\n" H "\r\n", 400),
    BAD("HTTP/11", "GET / HTTP/11\r\n" H "\r\n", 400),
    BAD("lowercase http", "GET / http/1.1\r\n" H "\r\n", 400),
    BAD("no version after space", "GET / \r\n" H "\r\n", 400),
    BAD("trailing space after version", "GET / HTTP/1.1 \r\n" H "\r\n", 400),
    BAD("two spaces after method", "GET  / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("two spaces before version", "GET /  HTTP/1.1\r\n" H "\r\n", 400),
    BAD("HTAB as separator", "GET\t/ HTTP/1.1\r\n" H "\r\n", 400),
    BAD("leading space", " GET / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("two empty lines first", "\r\n\r\n" RL H "\r\n", 400),
    BAD("lowercase method", "get / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("CONNECT", "CONNECT h:443 HTTP/1.1\r\n" H "\r\n", 501),
    BAD("TRACE", "TRACE / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("unknown method", "BREW / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("method prefix of a known one", "GE / HTTP/1.1\r\n" H "\r\n", 501),
    BAD("method not a token", "GE(T / HTTP/1.1\r\n" H "\r\n", 400),
    BAD("method alone", "GET\r\n\r\n", 400),
    BAD("absolute-form", "GET http://h/ HTTP/1.1\r\n" H "\r\n", 400),
    BAD("asterisk-form", "OPTIONS * HTTP/1.1\r\n" H "\r\n", 400),
    BAD("authority-form", "GET h:80 HTTP/1.1\r\n" H "\r\n", 400),
    BAD("fragment", "GET /a#b HTTP/1.1\r\n" H "\r\n", 400),
    BAD("space in target", "GET /a b HTTP/1.1\r\n" H "\r\n", 400),
    BAD("bad percent-encoding", "GET /%zz HTTP/1.1\r\n" H "\r\n", 400),
    BAD("short percent-encoding", "GET /%4 HTTP/1.1\r\n" H "\r\n", 400),
    BAD("percent at the end", "GET /% HTTP/1.1\r\n" H "\r\n", 400),
    BAD("backslash in target", "GET /a\\b HTTP/1.1\r\n" H "\r\n", 400),
    BAD("obs-text in target", "GET /\xc3\xa9 HTTP/1.1\r\n" H "\r\n", 400),
    BAD("NUL in target", "GET /\0 HTTP/1.1\r\n" H "\r\n", 400),
    BAD("bare LF ends the request line", "GET / HTTP/1.1\n" H "\r\n", 400),
    BAD("bare CR ends the request line", "GET / HTTP/1.1\r" H "\r\n", 400),
    BAD("bare LF only", "\n" RL H "\r\n", 400),
    BAD("bare CR before the request line", "\r" RL H "\r\n", 400),

    /* header lines */
    BAD("bare LF ends a header line", RL "Host: h\n\r\n", 400),
    BAD("bare LF ends the head", RL H "\n", 400),
    BAD("bare CR in a value", RL H "X: a\rb\r\n\r\n", 400),
    BAD("bare CR ends the head", RL H "\rX", 400),
    BAD("NUL in a value", RL H "X: a\0b\r\n\r\n", 400),
    BAD("DEL in a value", RL H "X: a\x7f\r\n\r\n", 400),
    BAD("control char in a value", RL H "X: a\x01\r\n\r\n", 400),
    BAD("obs-fold", RL H "X: a\r\n b\r\n\r\n", 400),
    BAD("obs-fold with HTAB", RL H "X: a\r\n\tb\r\n\r\n", 400),
    BAD("obs-fold of Transfer-Encoding",
        PL "Transfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\n", 400),
    BAD("space before the first header", RL " Host: h\r\n\r\n", 400),
    BAD("space before the colon", RL "Host : h\r\n\r\n", 400),
    BAD("TE with space before the colon", PL "Transfer-Encoding : chunked\r\n\r\n", 400),
    BAD("HTAB before the colon", RL H "X\t: a\r\n\r\n", 400),
    BAD("empty header name", RL H ": x\r\n\r\n", 400),
    BAD("header line without colon", RL H "X\r\n\r\n", 400),
    BAD("non-token in a name", RL H "X(: a\r\n\r\n", 400),
    BAD("obs-text in a name", RL H "X\xc3\xa9: a\r\n\r\n", 400),
    BAD("NUL in a name", RL H "X\0: a\r\n\r\n", 400),
    BAD("header line of a NUL", RL H "\0\r\n\r\n", 400),

    /* Host */
    BAD("missing Host in 1.1", RL "\r\n", 400),
    BAD("two Hosts", RL H H "\r\n", 400),
    BAD("two Hosts in 1.0", "GET / HTTP/1.0\r\n" H H "\r\n", 400),
    BAD("Host with userinfo", RL "Host: user@h\r\n\r\n", 400),
    BAD("empty Host", RL "Host:\r\n\r\n", 400),
    BAD("Host with a space", RL "Host: a b\r\n\r\n", 400),
    BAD("Host with a list", RL "Host: a, b\r\n\r\n", 400),
    BAD("Host with a comma", RL "Host: a,b\r\n\r\n", 400),
    BAD("Host empty port", RL "Host: h:\r\n\r\n", 400),
    BAD("Host port too big", RL "Host: h:65536\r\n\r\n", 400),
    BAD("Host port six digits", RL "Host: h:000080\r\n\r\n", 400),
    BAD("Host port not digits", RL "Host: h:8a\r\n\r\n", 400),
    BAD("Host two colons", RL "Host: h:1:2\r\n\r\n", 400),
    BAD("Host only a port", RL "Host: :80\r\n\r\n", 400),
    BAD("Host with a path", RL "Host: h/x\r\n\r\n", 400),
    BAD("Host unbalanced bracket", RL "Host: [::1\r\n\r\n", 400),
    BAD("Host bad IPv6", RL "Host: [1:2:3]\r\n\r\n", 400),
    BAD("Host IPv6 two elisions", RL "Host: [1::2::3]\r\n\r\n", 400),
    BAD("Host IPv6 zone", RL "Host: [fe80::1%25eth0]\r\n\r\n", 400),
    BAD("Host bad pct", RL "Host: a%4\r\n\r\n", 400),

    /* Content-Length */
    BAD("duplicate CL, same value", PL "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
    BAD("duplicate CL, different values", PL "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    BAD("CL list 1,1", PL "Content-Length: 1,1\r\n\r\n", 400),
    BAD("CL list 5, 5", PL "Content-Length: 5, 5\r\n\r\n", 400),
    BAD("CL negative", PL "Content-Length: -1\r\n\r\n", 400),
    BAD("CL plus sign", PL "Content-Length: +5\r\n\r\n", 400),
    BAD("CL hex", PL "Content-Length: 0x5\r\n\r\n", 400),
    BAD("CL empty", PL "Content-Length:\r\n\r\n", 400),
    BAD("CL inner space", PL "Content-Length: 5 5\r\n\r\n", 400),
    BAD("CL above 2^62", PL "Content-Length: 4611686018427387905\r\n\r\n", 400),
    BAD("CL huge", PL "Content-Length: 99999999999999999999999999\r\n\r\n", 400),
    BAD("CL decimal point", PL "Content-Length: 5.0\r\n\r\n", 400),

    /* Transfer-Encoding and the smuggling classics */
    BAD("CL then TE", PL "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    BAD("TE then CL", PL "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    BAD("TE chunked, identity", PL "Transfer-Encoding: chunked, identity\r\n\r\n", 501),
    BAD("TE identity", PL "Transfer-Encoding: identity\r\n\r\n", 501),
    BAD("TE gzip, chunked", PL "Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    BAD("TE 'chunked ' inside a list", PL "Transfer-Encoding: chunked , gzip\r\n\r\n", 501),
    BAD("TE xchunked", PL "Transfer-Encoding: xchunked\r\n\r\n", 501),
    BAD("TE chunked with a trailing comma", PL "Transfer-Encoding: chunked,\r\n\r\n", 501),
    BAD("TE quoted", PL "Transfer-Encoding: \"chunked\"\r\n\r\n", 501),
    BAD("TE empty", PL "Transfer-Encoding:\r\n\r\n", 400),
    BAD("two TE headers", PL "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400),
    BAD("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    BAD("TE with NUL", PL "Transfer-Encoding: chunked\0\r\n\r\n", 400),
    BAD("TE with vertical tab",
        PL "Transfer-Encoding:\x0b"
           "chunked\r\n\r\n",
        400),
    BAD("unknown TE then CL", PL "Transfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n", 501),

    /* semantics */
    BAD("POST without a length", PL "\r\n", 411),
    BAD("PUT without a length", "PUT / HTTP/1.1\r\n" H "\r\n", 411),
    BAD("PATCH without a length", "PATCH / HTTP/1.1\r\n" H "\r\n", 411),
    BAD("Expect foo", PL "Content-Length: 1\r\nExpect: foo\r\n\r\n", 417),
    BAD("Expect 100-continue with a parameter",
        PL "Content-Length: 1\r\nExpect: 100-continue;a=b\r\n\r\n", 417),
    BAD("Expect empty", PL "Content-Length: 1\r\nExpect:\r\n\r\n", 417),
    BAD("Connection not a token list", RL H "Connection: close; x\r\n\r\n", 400),
};
#define N_REQ_CASES (sizeof(req_cases) / sizeof(req_cases[0]))

TG_TEST(request_table) {
  ASSERT(N_REQ_CASES >= 60);
  for (size_t i = 0; i < N_REQ_CASES; i++) {
    const req_case_t *c = &req_cases[i];
    gw_request_head_t h;
    gw_parse_error_t err;
    int rc = parse_req(c->raw, c->len, &LIM, &h, &err);
    if (rc != c->rc || (rc < 0 && err.status != c->status))
      fprintf(stderr, "  case \"%s\": rc %d status %d (%s)\n", c->name, rc, err.status,
              err.reason ? err.reason : "-");
    ASSERT_INT_EQ(rc, c->rc);
    if (rc < 0) {
      ASSERT_INT_EQ(err.status, c->status);
      ASSERT(err.reason && strlen(err.reason) > 10 && err.reason[strlen(err.reason) - 1] == '.');
    } else {
      ASSERT(h.head_len <= c->len);
    }
  }
}

/*
 * Every prefix of every table entry: a valid head's prefixes are all
 * incomplete (0); an invalid one's prefixes are incomplete or already the
 * same error, never a different verdict.
 */
TG_TEST(request_table_every_prefix) {
  for (size_t i = 0; i < N_REQ_CASES; i++) {
    const req_case_t *c = &req_cases[i];
    gw_request_head_t full;
    gw_parse_error_t ferr;
    int frc = parse_req(c->raw, c->len, &LIM, &full, &ferr);
    size_t end = frc == 1 ? full.head_len : c->len;
    for (size_t n = 0; n < end; n++) {
      gw_request_head_t h;
      gw_parse_error_t err;
      int rc = parse_req(c->raw, n, &LIM, &h, &err);
      if (rc != 0 && !(rc == -1 && frc == -1 && err.status == ferr.status))
        fprintf(stderr, "  case \"%s\" prefix %zu: rc %d status %d\n", c->name, n, rc, err.status);
      ASSERT(rc == 0 || (rc == -1 && frc == -1 && err.status == ferr.status));
    }
  }
}

/* ====================================================================== */
/* Fields of a parsed request                                             */
/* ====================================================================== */

TG_TEST(request_fields) {
  static const char raw[] = "POST /v1/pets/%41?limit=10&x HTTP/1.1\r\n"
                            "Host: api.example:8443\r\n"
                            "User-Agent:   curl/8.0 \t\r\n"
                            "Content-Length: 12\r\n"
                            "X-Empty:\r\n"
                            "\r\n"
                            "{\"a\":\"bcd\"}\n";
  gw_request_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_req(raw, sizeof(raw) - 1, &LIM, &h, &err), 1);
  ASSERT_INT_EQ(h.method, GW_POST);
  ASSERT_SPAN(h.method_str, h.method_len, "POST");
  ASSERT_SPAN(h.target, h.target_len, "/v1/pets/%41?limit=10&x");
  ASSERT_SPAN(h.target, h.path_len, "/v1/pets/%41");
  ASSERT_SPAN(h.query, h.query_len, "limit=10&x");
  ASSERT_INT_EQ(h.minor, 1);
  ASSERT_INT_EQ(h.nheaders, 4);
  ASSERT_SPAN(h.headers[1].name, h.headers[1].name_len, "User-Agent");
  ASSERT_SPAN(h.headers[1].value, h.headers[1].value_len, "curl/8.0");
  ASSERT_SPAN(h.headers[3].name, h.headers[3].name_len, "X-Empty");
  ASSERT_INT_EQ(h.headers[3].value_len, 0);
  ASSERT_INT_EQ(h.host, 0);
  ASSERT_SPAN(h.headers[h.host].value, h.headers[h.host].value_len, "api.example:8443");
  ASSERT_INT_EQ(h.content_length, 12);
  ASSERT(!h.chunked);
  ASSERT(!h.expect_continue);
  ASSERT(h.keep_alive);
  ASSERT_INT_EQ(h.conn_flags, 0);
  ASSERT_INT_EQ(h.head_len, sizeof(raw) - 1 - 12);
  ASSERT(gw_header_is(&h.headers[2], "content-length"));
  ASSERT(gw_header_is(&h.headers[1], "user-agent"));
  ASSERT(!gw_header_is(&h.headers[1], "user-agen"));
  ASSERT(!gw_header_is(&h.headers[1], "user-agentx"));
}

TG_TEST(request_target_forms) {
  static const struct {
    const char *line;
    const char *path;
    const char *query; /* NULL when none */
  } cases[] = {
      {"GET / HTTP/1.1\r\n", "/", NULL},
      {"GET /? HTTP/1.1\r\n", "/", ""},
      {"GET /a?b?c HTTP/1.1\r\n", "/a", "b?c"},
      {"GET //x//y HTTP/1.1\r\n", "//x//y", NULL},
      {"GET /a%2Fb?%3F HTTP/1.1\r\n", "/a%2Fb", "%3F"},
      {"GET /?/ HTTP/1.1\r\n", "/", "/"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char buf[128];
    int n = snprintf(buf, sizeof(buf), "%s" H "\r\n", cases[i].line);
    gw_request_head_t h;
    gw_parse_error_t err;
    ASSERT_INT_EQ(parse_req(buf, (size_t)n, &LIM, &h, &err), 1);
    ASSERT_SPAN(h.target, h.path_len, cases[i].path);
    if (cases[i].query)
      ASSERT_SPAN(h.query, h.query_len, cases[i].query);
    else
      ASSERT(h.query == NULL && h.query_len == 0);
  }
}

TG_TEST(methods) {
  static const struct {
    const char *name;
    gw_method_t m;
  } ms[] = {{"GET", GW_GET},     {"HEAD", GW_HEAD},     {"POST", GW_POST},      {"PUT", GW_PUT},
            {"PATCH", GW_PATCH}, {"DELETE", GW_DELETE}, {"OPTIONS", GW_OPTIONS}};
  for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
    char buf[128];
    int n =
        snprintf(buf, sizeof(buf), "%s / HTTP/1.1\r\n" H "Content-Length: 0\r\n\r\n", ms[i].name);
    gw_request_head_t h;
    gw_parse_error_t err;
    ASSERT_INT_EQ(parse_req(buf, (size_t)n, &LIM, &h, &err), 1);
    ASSERT_INT_EQ(h.method, ms[i].m);
    ASSERT_SPAN(h.method_str, h.method_len, ms[i].name);
  }
  static const char *unsupported[] = {"CONNECT",  "TRACE",    "Get",     "gET",
                                      "PRI",      "PROPFIND", "GETS",    "POS",
                                      "M-SEARCH", "DELETX",   "OPTIONZ", "-"};
  for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
    char buf[128];
    int n = snprintf(buf, sizeof(buf), "%s / HTTP/1.1\r\n" H "\r\n", unsupported[i]);
    gw_request_head_t h;
    gw_parse_error_t err;
    ASSERT_INT_EQ(parse_req(buf, (size_t)n, &LIM, &h, &err), -1);
    ASSERT_INT_EQ(err.status, 501);
  }
}

TG_TEST(chunked_and_expect_fields) {
  static const char raw[] = "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
  gw_request_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_req(raw, sizeof(raw) - 1, &LIM, &h, &err), 1);
  ASSERT(h.chunked);
  ASSERT_INT_EQ(h.content_length, -1);
  ASSERT(h.expect_continue);
  ASSERT_SPAN(raw + h.head_len, sizeof(raw) - 1 - h.head_len, "5\r\nhello\r\n0\r\n\r\n");

  /* nothing to wait for: no 100 (Continue) */
  static const char zero[] = "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                             "Content-Length: 0\r\n\r\n";
  ASSERT_INT_EQ(parse_req(zero, sizeof(zero) - 1, &LIM, &h, &err), 1);
  ASSERT(!h.expect_continue);
  /* RFC 9110 10.1.1: ignored in HTTP/1.0 */
  static const char old[] = "PUT /x HTTP/1.0\r\nExpect: 100-continue\r\n"
                            "Content-Length: 5\r\n\r\n";
  ASSERT_INT_EQ(parse_req(old, sizeof(old) - 1, &LIM, &h, &err), 1);
  ASSERT(!h.expect_continue);
  ASSERT_INT_EQ(h.host, -1);
}

TG_TEST(keep_alive_matrix) {
  static const struct {
    const char *version;
    const char *conn; /* header lines, possibly several */
    bool keep_alive;
    unsigned flags;
  } cases[] = {
      {"1.1", "", true, 0},
      {"1.1", "Connection: close\r\n", false, GW_CONN_CLOSE | GW_CONN_NAMES},
      {"1.1", "Connection: keep-alive\r\n", true, GW_CONN_KEEP_ALIVE},
      {"1.1", "Connection: Keep-Alive, CLOSE\r\n", false,
       GW_CONN_CLOSE | GW_CONN_KEEP_ALIVE | GW_CONN_NAMES},
      {"1.1", "Connection: upgrade\r\n", true, GW_CONN_UPGRADE},
      {"1.1", "Connection: x-foo\r\nConnection: close\r\n", false, GW_CONN_CLOSE | GW_CONN_NAMES},
      {"1.1", "Connection: closed\r\n", true, GW_CONN_NAMES},
      {"1.1", "Connection: close,\r\n", false, GW_CONN_CLOSE | GW_CONN_NAMES},
      {"1.1", "Connection:\r\n", true, 0},
      {"1.0", "", false, GW_CONN_CLOSE},
      {"1.0", "Connection: keep-alive\r\n", true, GW_CONN_KEEP_ALIVE},
      {"1.0", "Connection: KEEP-ALIVE\r\n", true, GW_CONN_KEEP_ALIVE},
      {"1.0", "Connection: close\r\n", false, GW_CONN_CLOSE | GW_CONN_NAMES},
      {"1.0", "Connection: keep-alive, close\r\n", false,
       GW_CONN_CLOSE | GW_CONN_KEEP_ALIVE | GW_CONN_NAMES},
      {"1.0", "Connection: keep-alive\r\nConnection: close\r\n", false,
       GW_CONN_CLOSE | GW_CONN_KEEP_ALIVE | GW_CONN_NAMES},
      {"1.0", "Connection: upgrade\r\n", false, GW_CONN_CLOSE | GW_CONN_UPGRADE},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char buf[256];
    int n =
        snprintf(buf, sizeof(buf), "GET / HTTP/%s\r\n" H "%s\r\n", cases[i].version, cases[i].conn);
    gw_request_head_t h;
    gw_parse_error_t err;
    ASSERT_INT_EQ(parse_req(buf, (size_t)n, &LIM, &h, &err), 1);
    if (h.keep_alive != cases[i].keep_alive || h.conn_flags != cases[i].flags)
      fprintf(stderr, "  case %zu: keep_alive %d flags %u\n", i, h.keep_alive, h.conn_flags);
    ASSERT(h.keep_alive == cases[i].keep_alive);
    ASSERT_INT_EQ(h.conn_flags, cases[i].flags);
  }
}

/* The names the gateway acts on get their id whatever their case; names
 * that only look alike do not. */
TG_TEST(header_ids) {
  static const struct {
    const char *name;
    int id;
  } cases[] = {
      {"TE", GW_H_TE},
      {"via", GW_H_VIA},
      {"Trailer", GW_H_TRAILER},
      {"UpGrade", GW_H_UPGRADE},
      {"Forwarded", GW_H_FORWARDED},
      {"Keep-Alive", GW_H_KEEP_ALIVE},
      {"traceParent", GW_H_TRACEPARENT},
      {"X-Request-ID", GW_H_X_REQUEST_ID},
      {"Authorization", GW_H_AUTHORIZATION},
      {"X-Forwarded-For", GW_H_X_FORWARDED_FOR},
      {"x-forwarded-host", GW_H_X_FORWARDED_HOST},
      {"Proxy-Connection", GW_H_PROXY_CONNECTION},
      {"X-FORWARDED-PROTO", GW_H_X_FORWARDED_PROTO},
      {"Proxy-Authorization", GW_H_PROXY_AUTHORIZATION},
      {"Vib", GW_H_OTHER},
      {"Hosts", GW_H_OTHER},
      {"X-Request-Ie", GW_H_OTHER},
      {"X-Forwarded-Fox", GW_H_OTHER},
      {"Authorisation", GW_H_OTHER},
      {"Keep_Alive", GW_H_OTHER},
      {"X-Api-Key", GW_H_OTHER},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char buf[256];
    int n = snprintf(buf, sizeof(buf), RL H "%s: v\r\n\r\n", cases[i].name);
    gw_request_head_t h;
    gw_parse_error_t err;
    ASSERT_INT_EQ(parse_req(buf, (size_t)n, &LIM, &h, &err), 1);
    ASSERT_INT_EQ(h.nheaders, 2);
    ASSERT_INT_EQ(h.headers[0].id, GW_H_HOST);
    if (h.headers[1].id != cases[i].id)
      fprintf(stderr, "  %s: id %d\n", cases[i].name, h.headers[1].id);
    ASSERT_INT_EQ(h.headers[1].id, cases[i].id);
    ASSERT_INT_EQ(gw_header_find(h.headers, h.nheaders, (gw_header_id_t)cases[i].id), 1);
    ASSERT_INT_EQ(gw_header_find(h.headers, h.nheaders, GW_H_CONTENT_LENGTH), -1);
  }
  static const char framing[] = "POST / HTTP/1.1\r\n" H "expect: 100-continue\r\n"
                                "CONTENT-LENGTH: 1\r\nConnection: keep-alive\r\n\r\n";
  gw_request_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_req(framing, sizeof(framing) - 1, &LIM, &h, &err), 1);
  ASSERT_INT_EQ(h.headers[1].id, GW_H_EXPECT);
  ASSERT_INT_EQ(h.headers[2].id, GW_H_CONTENT_LENGTH);
  ASSERT_INT_EQ(h.headers[3].id, GW_H_CONNECTION);
  ASSERT_INT_EQ(h.content_length, 1);
  static const char te[] = "POST / HTTP/1.1\r\n" H "Transfer-ENCODING: chunked\r\n\r\n";
  ASSERT_INT_EQ(parse_req(te, sizeof(te) - 1, &LIM, &h, &err), 1);
  ASSERT_INT_EQ(h.headers[1].id, GW_H_TRANSFER_ENCODING);
  ASSERT(h.chunked);
  /* responses too */
  static const char resp[] = "HTTP/1.1 200 OK\r\nVia: 1.1 a\r\nX-Other: 1\r\n"
                             "content-length: 0\r\n\r\n";
  gw_response_head_t rh;
  ASSERT_INT_EQ(parse_resp(resp, sizeof(resp) - 1, &rh, &err), 1);
  ASSERT_INT_EQ(rh.headers[0].id, GW_H_VIA);
  ASSERT_INT_EQ(rh.headers[1].id, GW_H_OTHER);
  ASSERT_INT_EQ(rh.headers[2].id, GW_H_CONTENT_LENGTH);
}

/* A head parsed in one buffer and moved to another reads the same there,
 * and nothing of it still points into the first. */
TG_TEST(rebase_moves_every_pointer) {
  static const char raw[] = "PATCH /a/b?x=1&y=2 HTTP/1.1\r\nHost: h.example\r\n"
                            "X-One: first\r\nconnection: keep-alive\r\n"
                            "Content-Length: 3\r\n\r\n";
  const size_t n = sizeof(raw) - 1;
  char *from = dup_exact(raw, n), *to = dup_exact(raw, n);
  gw_request_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(gw_http1_parse_request(from, n, &LIM, &h, &err), 1);
  gw_http1_request_rebase(&h, from, to);
  memset(from, '#', n); /* anything still read from here now reads '#' */
  ASSERT(h.method_str == to);
  ASSERT_INT_EQ(h.method_len, 5);
  ASSERT(h.target >= to && h.target < to + n && memcmp(h.target, "/a/b?x=1&y=2", 12) == 0);
  ASSERT(h.query >= to && h.query < to + n && memcmp(h.query, "x=1&y=2", 7) == 0);
  ASSERT_INT_EQ(h.nheaders, 4);
  static const char *const names[] = {"Host", "X-One", "connection", "Content-Length"};
  static const char *const values[] = {"h.example", "first", "keep-alive", "3"};
  for (unsigned i = 0; i < h.nheaders; i++) {
    ASSERT(h.headers[i].name >= to && h.headers[i].name < to + n);
    ASSERT(h.headers[i].value >= to && h.headers[i].value < to + n);
    ASSERT_INT_EQ(h.headers[i].name_len, strlen(names[i]));
    ASSERT(memcmp(h.headers[i].name, names[i], h.headers[i].name_len) == 0);
    ASSERT_INT_EQ(h.headers[i].value_len, strlen(values[i]));
    ASSERT(memcmp(h.headers[i].value, values[i], h.headers[i].value_len) == 0);
  }
  /* no query: stays NULL */
  static const char plain[] = "GET /p HTTP/1.1\r\nHost: h\r\n\r\n";
  char *f2 = dup_exact(plain, sizeof(plain) - 1), *t2 = dup_exact(plain, sizeof(plain) - 1);
  ASSERT_INT_EQ(gw_http1_parse_request(f2, sizeof(plain) - 1, &LIM, &h, &err), 1);
  gw_http1_request_rebase(&h, f2, t2);
  ASSERT(h.query == NULL);
  ASSERT(h.target == t2 + 4);
  free(from);
  free(to);
  free(f2);
  free(t2);
}

/* The fields of a complete parse do not depend on how the bytes arrived. */
TG_TEST(every_prefix_of_valid_requests) {
  static const char *reqs[] = {
      "GET /a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
      ("\r\nPOST /p HTTP/1.1\r\nHost: [::1]:80\r\nContent-Length: 4\r\n"
       "Connection: keep-alive, close\r\n\r\nbody"),
      "PATCH / HTTP/1.0\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
      "PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-A:  a b \r\n\r\n0\r\n\r\n",
  };
  for (size_t r = 0; r < sizeof(reqs) / sizeof(reqs[0]); r++) {
    const char *raw = reqs[r];
    size_t len = strlen(raw);
    gw_request_head_t full, h;
    gw_parse_error_t err;
    ASSERT_INT_EQ(parse_req(raw, len, &LIM, &full, &err), 1);
    for (size_t n = 0; n < full.head_len; n++)
      ASSERT_INT_EQ(parse_req(raw, n, &LIM, &h, &err), 0);
    for (size_t n = full.head_len; n <= len; n++) {
      ASSERT_INT_EQ(parse_req(raw, n, &LIM, &h, &err), 1);
      ASSERT_INT_EQ(h.head_len, full.head_len);
      ASSERT_INT_EQ(h.method, full.method);
      ASSERT(h.target == full.target && h.target_len == full.target_len);
      ASSERT(h.path_len == full.path_len && h.query == full.query);
      ASSERT_INT_EQ(h.query_len, full.query_len);
      ASSERT_INT_EQ(h.minor, full.minor);
      ASSERT_INT_EQ(h.nheaders, full.nheaders);
      for (unsigned i = 0; i < h.nheaders; i++) {
        ASSERT(h.headers[i].name == full.headers[i].name);
        ASSERT(h.headers[i].value == full.headers[i].value);
        ASSERT_INT_EQ(h.headers[i].name_len, full.headers[i].name_len);
        ASSERT_INT_EQ(h.headers[i].value_len, full.headers[i].value_len);
      }
      ASSERT_INT_EQ(h.host, full.host);
      ASSERT_INT_EQ(h.content_length, full.content_length);
      ASSERT(h.chunked == full.chunked && h.keep_alive == full.keep_alive);
      ASSERT_INT_EQ(h.conn_flags, full.conn_flags);
    }
  }
}

TG_TEST(pipelined_requests) {
  static const char raw[] = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                            "GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
                            "\r\nDELETE /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                            "GET /d";
  size_t len = sizeof(raw) - 1, off = 0;
  gw_request_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_req(raw, len, &LIM, &h, &err), 1);
  ASSERT_SPAN(h.target, h.target_len, "/a");
  off += h.head_len + (size_t)h.content_length;
  ASSERT_INT_EQ(parse_req(raw + off, len - off, &LIM, &h, &err), 1);
  ASSERT_SPAN(h.target, h.target_len, "/b");
  ASSERT_INT_EQ(h.content_length, -1);
  off += h.head_len;
  ASSERT_INT_EQ(parse_req(raw + off, len - off, &LIM, &h, &err), 1);
  ASSERT_SPAN(h.target, h.target_len, "/c");
  ASSERT(!h.keep_alive);
  off += h.head_len;
  ASSERT_INT_EQ(parse_req(raw + off, len - off, &LIM, &h, &err), 0);
}

/* ====================================================================== */
/* Every byte through every byte class                                    */
/* ====================================================================== */

#define ALNUM "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

static bool in_set(int c, const char *set) {
  return c != 0 && strchr(set, c) != NULL;
}

/* RFC 9110 5.6.2 */
static bool is_tchar(int c) {
  return in_set(c, ALNUM "!#$%&'*+-.^_`|~");
}

static int parse_line(const char *fmt, int c, gw_parse_error_t *err) {
  char buf[256];
  int n = snprintf(buf, sizeof(buf), fmt, 'Q');
  for (int i = 0; i < n; i++)
    if (buf[i] == 'Q')
      buf[i] = (char)c;
  gw_request_head_t h;
  return parse_req(buf, (size_t)n, &LIM, &h, err);
}

TG_TEST(every_byte_in_a_method) {
  for (int c = 0; c < 256; c++) {
    gw_parse_error_t err;
    int rc = parse_line("X%cY / HTTP/1.1\r\nHost: h\r\n\r\n", c, &err);
    /* a token, or the space that makes the method "X": both unknown */
    bool token = is_tchar(c) || c == ' ';
    if (rc != -1 || err.status != (token ? 501 : 400))
      fprintf(stderr, "  byte 0x%02x: rc %d status %d\n", c, rc, err.status);
    ASSERT_INT_EQ(rc, -1);
    ASSERT_INT_EQ(err.status, token ? 501 : 400);
  }
}

TG_TEST(every_byte_in_a_target) {
  /* RFC 3986: pchar = unreserved / pct-encoded / sub-delims / ":" / "@" */
  const char *ok = ALNUM "-._~!$&'()*+,;=:@/?";
  for (int c = 0; c < 256; c++) {
    gw_parse_error_t err;
    int rc = parse_line("GET /a%cb HTTP/1.1\r\nHost: h\r\n\r\n", c, &err);
    bool want = in_set(c, ok);
    if (rc != (want ? 1 : -1) || (!want && err.status != 400))
      fprintf(stderr, "  byte 0x%02x: rc %d status %d\n", c, rc, err.status);
    ASSERT_INT_EQ(rc, want ? 1 : -1);
    if (!want)
      ASSERT_INT_EQ(err.status, 400);
  }
}

TG_TEST(every_byte_in_a_header_name) {
  for (int c = 0; c < 256; c++) {
    gw_parse_error_t err;
    int rc = parse_line("GET / HTTP/1.1\r\nHost: h\r\nX%cY: v\r\n\r\n", c, &err);
    bool want = is_tchar(c) || c == ':'; /* "X:Y: v" is X with the value "Y: v" */
    if (rc != (want ? 1 : -1))
      fprintf(stderr, "  byte 0x%02x: rc %d status %d\n", c, rc, err.status);
    ASSERT_INT_EQ(rc, want ? 1 : -1);
    if (!want)
      ASSERT_INT_EQ(err.status, 400);
  }
}

TG_TEST(every_byte_in_a_header_value) {
  for (int c = 0; c < 256; c++) {
    gw_parse_error_t err;
    int rc = parse_line("GET / HTTP/1.1\r\nHost: h\r\nX: a%cb\r\n\r\n", c, &err);
    /* RFC 9110 5.5: field-vchar / obs-text, SP and HTAB inside */
    bool want = (c >= 0x21 && c <= 0x7e) || c >= 0x80 || c == ' ' || c == '\t';
    if (rc != (want ? 1 : -1))
      fprintf(stderr, "  byte 0x%02x: rc %d status %d\n", c, rc, err.status);
    ASSERT_INT_EQ(rc, want ? 1 : -1);
    if (!want)
      ASSERT_INT_EQ(err.status, 400);
  }
}

TG_TEST(every_byte_in_a_host) {
  /* RFC 3986 reg-name: unreserved / sub-delims (pct-encoded tested apart),
   * but no "," (see host_ok) */
  const char *ok = ALNUM "-._~!$&'()*;=+";
  for (int c = 0; c < 256; c++) {
    gw_parse_error_t err;
    int rc = parse_line("GET / HTTP/1.1\r\nHost: a%cb\r\n\r\n", c, &err);
    bool want = in_set(c, ok);
    if (rc != (want ? 1 : -1))
      fprintf(stderr, "  byte 0x%02x: rc %d status %d\n", c, rc, err.status);
    ASSERT_INT_EQ(rc, want ? 1 : -1);
    if (!want)
      ASSERT_INT_EQ(err.status, 400);
  }
}

TG_TEST(host_values) {
  static const struct {
    const char *host;
    bool ok;
  } cases[] = {
      {"localhost", true},
      {"a.b.c", true},
      {"h:1", true},
      {"h:65535", true},
      {"h:00080", true},
      {"1.2.3.4", true},
      {"999.1.1.1", true}, /* a reg-name, as far as syntax goes */
      {"[::]", true},
      {"[::1]", true},
      {"[1::]", true},
      {"[1:2:3:4:5:6:7:8]", true},
      {"[1:2:3:4:5:6:7::]", true},
      {"[::2:3:4:5:6:7:8]", true},
      {"[1:2:3:4:5:6:1.2.3.4]", true},
      {"[::1.2.3.4]:443", true},
      {"[ABCD:ef01::1]", true},
      {"[]", false},
      {"[:]", false},
      {"[:::]", false},
      {"[1:2:3:4:5:6:7:8:9]", false},
      {"[1:2:3:4:5:6:7]", false},
      {"[1:2:3:4:5:6:7:8::]", false},
      {"[12345::]", false},
      {"[1::2:]", false},
      {"[:1::2]", false},
      {"[g::1]", false},
      {"[::1.2.3]", false},
      {"[::1.2.3.256]", false},
      {"[::01.2.3.4]", false},
      {"[::1.2.3.4:5]", false},
      {"[::1]x", false},
      {"[::1]:", false},
      {"[::1]:65536", false},
      {"[::1", false},
      {"::1", false},
      {"h:-1", false},
      {"h:+1", false},
      {"@h", false},
      {"u:p@h", false},
      {"%zz", false},
      {"%4", false},
      {"%", false},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", cases[i].host);
    gw_request_head_t h;
    gw_parse_error_t err;
    int rc = parse_req(buf, (size_t)n, &LIM, &h, &err);
    if (rc != (cases[i].ok ? 1 : -1))
      fprintf(stderr, "  host \"%s\": rc %d\n", cases[i].host, rc);
    ASSERT_INT_EQ(rc, cases[i].ok ? 1 : -1);
    if (!cases[i].ok)
      ASSERT_INT_EQ(err.status, 400);
  }
}

/* ====================================================================== */
/* Limits                                                                 */
/* ====================================================================== */

/* "GET /aaa...a HTTP/1.1\r\n" of exactly `line` bytes, then Host and CRLF. */
static size_t build_long_line(char *buf, size_t line) {
  size_t n = 0;
  memcpy(buf, "GET /", 5);
  n = 5;
  while (n < line - 11)
    buf[n++] = 'a';
  memcpy(buf + n, " HTTP/1.1\r\n" H "\r\n", 11 + 9 + 2);
  return n + 11 + 9 + 2;
}

TG_TEST(request_line_limit) {
  const gw_limits_t lim = {.max_line = 64, .max_head = 4096, .max_headers = 10};
  char buf[256];
  gw_request_head_t h;
  gw_parse_error_t err;

  size_t n = build_long_line(buf, 64);
  ASSERT_INT_EQ(parse_req(buf, n, &lim, &h, &err), 1);
  for (size_t k = 0; k < n; k++)
    ASSERT_INT_EQ(parse_req(buf, k, &lim, &h, &err), 0);

  n = build_long_line(buf, 65);
  ASSERT_INT_EQ(parse_req(buf, n, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 414);
  /* provable as soon as content reaches where the CR had to be */
  ASSERT_INT_EQ(parse_req(buf, 62, &lim, &h, &err), 0);
  ASSERT_INT_EQ(parse_req(buf, 63, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 414);

  /* a line of nothing but method bytes, never terminated */
  memset(buf, 'G', 200);
  ASSERT_INT_EQ(parse_req(buf, 62, &lim, &h, &err), 0);
  ASSERT_INT_EQ(parse_req(buf, 63, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 414);
  ASSERT_INT_EQ(parse_req(buf, 200, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 414);

  /* a percent-escape that cannot fit before the limit fails at its "%" */
  memcpy(buf, "GET /", 5);
  memset(buf + 5, 'a', 55);
  memcpy(buf + 60, "%41 HTTP/1.1\r\n", 15);
  ASSERT_INT_EQ(parse_req(buf, 60, &lim, &h, &err), 0);
  ASSERT_INT_EQ(parse_req(buf, 61, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 414);

  /* the leading empty line is not part of the request line */
  buf[0] = '\r';
  buf[1] = '\n';
  n = build_long_line(buf + 2, 64) + 2;
  ASSERT_INT_EQ(parse_req(buf, n, &lim, &h, &err), 1);
  ASSERT_INT_EQ(h.head_len, n);
}

TG_TEST(request_line_limited_by_head) {
  /* max_head leaves less room than max_line: the head's limit speaks */
  const gw_limits_t lim = {.max_line = 1000, .max_head = 40, .max_headers = 10};
  char buf[256];
  gw_request_head_t h;
  gw_parse_error_t err;
  size_t n = build_long_line(buf, 39);
  ASSERT_INT_EQ(parse_req(buf, n, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);
  /* 1.0, no Host: line of 38 + CRLF = 40 fits exactly */
  static const char raw[] = "GET /aaaaaaaaaaaaaaaaaaaaaa HTTP/1.0\r\n\r\n";
  ASSERT_INT_EQ(sizeof(raw) - 1, 40);
  ASSERT_INT_EQ(parse_req(raw, 40, &lim, &h, &err), 1);
  const gw_limits_t lim2 = {.max_line = 1000, .max_head = 39, .max_headers = 10};
  ASSERT_INT_EQ(parse_req(raw, 40, &lim2, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);
}

/* A request whose head is exactly `total` bytes: RL, Host, then X: padding. */
static size_t build_long_head(char *buf, size_t total) {
  static const char start[] = RL H "X: ";
  size_t n = sizeof(start) - 1;
  memcpy(buf, start, n);
  while (n < total - 4)
    buf[n++] = 'v';
  memcpy(buf + n, "\r\n\r\n", 4);
  return n + 4;
}

TG_TEST(head_limit) {
  const gw_limits_t lim = {.max_line = 8192, .max_head = 128, .max_headers = 10};
  char buf[512];
  gw_request_head_t h;
  gw_parse_error_t err;

  size_t n = build_long_head(buf, 128);
  ASSERT_INT_EQ(n, 128);
  ASSERT_INT_EQ(parse_req(buf, n, &lim, &h, &err), 1);
  ASSERT_INT_EQ(h.head_len, 128);
  for (size_t k = 0; k < n; k++)
    ASSERT_INT_EQ(parse_req(buf, k, &lim, &h, &err), 0);

  n = build_long_head(buf, 129);
  ASSERT_INT_EQ(parse_req(buf, n, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);
  ASSERT_INT_EQ(parse_req(buf, 124, &lim, &h, &err), 0);
  ASSERT_INT_EQ(parse_req(buf, 125, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);

  /* a head of many short lines, the final CRLF one byte over */
  static const char many[] = RL H "A: 1\r\nB: 2\r\n\r\n";
  const gw_limits_t exact = {.max_line = 8192, .max_head = sizeof(many) - 1, .max_headers = 10};
  const gw_limits_t under = {.max_line = 8192, .max_head = sizeof(many) - 2, .max_headers = 10};
  ASSERT_INT_EQ(parse_req(many, sizeof(many) - 1, &exact, &h, &err), 1);
  ASSERT_INT_EQ(parse_req(many, sizeof(many) - 1, &under, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);
  /* and a name that never ends, over any limit */
  memset(buf, 'X', sizeof(buf));
  memcpy(buf, RL H, sizeof(RL H) - 1);
  ASSERT_INT_EQ(parse_req(buf, sizeof(buf), &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);
}

TG_TEST(header_count_limit) {
  const gw_limits_t lim = {.max_line = 8192, .max_head = 8192, .max_headers = 4};
  static const char four[] = RL H "A: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  static const char five[] = RL H "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
  gw_request_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_req(four, sizeof(four) - 1, &lim, &h, &err), 1);
  ASSERT_INT_EQ(h.nheaders, 4);
  ASSERT_INT_EQ(parse_req(five, sizeof(five) - 1, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);
  /* known at the first byte of the fifth line */
  ASSERT_INT_EQ(parse_req(five, sizeof(four) - 3, &lim, &h, &err), 0);
  ASSERT_INT_EQ(parse_req(five, sizeof(four) - 2, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);

  /* a configured limit above the ceiling is the ceiling */
  const gw_limits_t big = {.max_line = 8192, .max_head = 1 << 20, .max_headers = 100000};
  char *buf = malloc(1 << 20);
  ASSERT(buf);
  size_t n = 0;
  memcpy(buf, RL H, sizeof(RL H) - 1);
  n = sizeof(RL H) - 1;
  for (int i = 0; i < GW_MAX_HEADERS - 1; i++) {
    memcpy(buf + n, "X: y\r\n", 6);
    n += 6;
  }
  memcpy(buf + n, "\r\n", 2);
  ASSERT_INT_EQ(parse_req(buf, n + 2, &big, &h, &err), 1);
  ASSERT_INT_EQ(h.nheaders, GW_MAX_HEADERS);
  memcpy(buf + n, "X: y\r\n\r\n", 8);
  ASSERT_INT_EQ(parse_req(buf, n + 8, &big, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);
  free(buf);
}

TG_TEST(huge_name_and_value) {
  /* header names are uint16_t long: a longer one is over the limit */
  const gw_limits_t lim = {.max_line = 8192, .max_head = 1 << 20, .max_headers = 10};
  size_t cap = 200000;
  char *buf = malloc(cap);
  ASSERT(buf);
  size_t n = sizeof(RL H) - 1;
  memcpy(buf, RL H, n);
  memset(buf + n, 'N', 70000);
  n += 70000;
  memcpy(buf + n, ": v\r\n\r\n", 7);
  gw_request_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_req(buf, n + 7, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 431);
  /* a long value is fine */
  n = sizeof(RL H) - 1;
  memcpy(buf + n, "V: ", 3);
  n += 3;
  memset(buf + n, 'v', 100000);
  n += 100000;
  memcpy(buf + n, "\r\n\r\n", 4);
  ASSERT_INT_EQ(parse_req(buf, n + 4, &lim, &h, &err), 1);
  ASSERT_INT_EQ(h.headers[1].value_len, 100000);
  free(buf);
}

TG_TEST(tiny_limits) {
  /* limits too small for any request never read out of bounds */
  static const char raw[] = RL H "\r\n";
  for (size_t ml = 0; ml < 8; ml++)
    for (size_t mh = 0; mh < 8; mh++) {
      const gw_limits_t lim = {.max_line = ml, .max_head = mh, .max_headers = 1};
      gw_request_head_t h;
      gw_parse_error_t err;
      for (size_t n = 0; n <= sizeof(raw) - 1; n++) {
        int rc = parse_req(raw, n, &lim, &h, &err);
        ASSERT(rc == 0 || (rc == -1 && (err.status == 414 || err.status == 431)));
      }
      ASSERT_INT_EQ(parse_req(raw, sizeof(raw) - 1, &lim, &h, &err), -1);
    }
}

/* ====================================================================== */
/* Responses                                                              */
/* ====================================================================== */

typedef struct resp_case {
  const char *name;
  const char *raw;
  size_t len;
  int rc;
  int status; /* the parsed status when rc == 1 */
  bool keep_alive;
  int64_t content_length;
  bool chunked;
} resp_case_t;

#define ROK(name, raw, st, ka, cl, ch)                                                             \
  { name, raw, sizeof(raw) - 1, 1, st, ka, cl, ch }
#define RBAD(name, raw)                                                                            \
  { name, raw, sizeof(raw) - 1, -1, 0, false, 0, false }

static const resp_case_t resp_cases[] = {
    ROK("200 with CL", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, true, 5, false),
    ROK("no reason, no space", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 200, true, 0, false),
    ROK("empty reason", "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", 404, true, 0, false),
    ROK("reason with spaces and obs-text",
        "HTTP/1.1 500 Internal \xc3\xa9rror\t!\r\n"
        "Content-Length: 0\r\n\r\n",
        500, true, 0, false),
    ROK("chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 200, true, -1, true),
    ROK("close-delimited", "HTTP/1.1 200 OK\r\n\r\nbody...", 200, false, -1, false),
    ROK("Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        200, false, 0, false),
    ROK("1.0 with CL", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", 200, false, 1, false),
    ROK("1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
        200, true, 1, false),
    ROK("1.0 keep-alive, close-delimited", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", 200,
        false, -1, false),
    ROK("1.2 read as 1.1", "HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n", 200, true, 0, false),
    ROK("204 without length", "HTTP/1.1 204 No Content\r\n\r\n", 204, true, -1, false),
    ROK("304 without length", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", 304, true, -1,
        false),
    ROK("100 continue", "HTTP/1.1 100 Continue\r\n\r\n", 100, true, -1, false),
    ROK("101 switching", "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n", 101,
        true, -1, false),
    ROK("599", "HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n", 599, true, 0, false),
    ROK("Host is not checked", "HTTP/1.1 200 OK\r\nHost: a b\r\nContent-Length: 0\r\n\r\n", 200,
        true, 0, false),
    RBAD("CL + TE", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
    RBAD("TE + CL", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
    RBAD("obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
    RBAD("bare LF in headers", "HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
    RBAD("bare LF ending a field", "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n"),
    RBAD("bare CR", "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"),
    RBAD("duplicate CL", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
    RBAD("CL list", "HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n"),
    RBAD("CL negative", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
    RBAD("TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
    RBAD("TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    RBAD("space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"),
    RBAD("NUL in value", "HTTP/1.1 200 OK\r\nX: \0\r\n\r\n"),
    RBAD("HTTP/2.0", "HTTP/2.0 200 OK\r\n\r\n"),
    RBAD("HTTP/1.10", "HTTP/1.10 200 OK\r\n\r\n"),
    RBAD("lowercase http", "http/1.1 200 OK\r\n\r\n"),
    RBAD("no status", "HTTP/1.1\r\n\r\n"),
    RBAD("two-digit status", "HTTP/1.1 20 OK\r\n\r\n"),
    RBAD("four-digit status", "HTTP/1.1 2000 OK\r\n\r\n"),
    RBAD("status 600", "HTTP/1.1 600 X\r\n\r\n"),
    RBAD("status 099", "HTTP/1.1 099 X\r\n\r\n"),
    RBAD("reason glued to status", "HTTP/1.1 200OK\r\n\r\n"),
    RBAD("two spaces before status", "HTTP/1.1  200 OK\r\n\r\n"),
    RBAD("control char in reason", "HTTP/1.1 200 O\x01K\r\n\r\n"),
    RBAD("bare LF after the status line", "HTTP/1.1 200 OK\n\r\n"),
    RBAD("bare LF after the status code", "HTTP/1.1 200\n\r\n"),
    RBAD("junk", "<html>\r\n\r\n"),
};

TG_TEST(response_table) {
  for (size_t i = 0; i < sizeof(resp_cases) / sizeof(resp_cases[0]); i++) {
    const resp_case_t *c = &resp_cases[i];
    gw_response_head_t h;
    gw_parse_error_t err;
    int rc = parse_resp(c->raw, c->len, &h, &err);
    if (rc != c->rc ||
        (rc == 1 && (h.status != c->status || h.keep_alive != c->keep_alive ||
                     h.content_length != c->content_length || h.chunked != c->chunked)))
      fprintf(stderr, "  case \"%s\": rc %d status %d (%s)\n", c->name, rc,
              rc == 1 ? h.status : err.status, rc == 1 ? "" : err.reason);
    ASSERT_INT_EQ(rc, c->rc);
    if (rc == 1) {
      ASSERT_INT_EQ(h.status, c->status);
      ASSERT(h.keep_alive == c->keep_alive);
      ASSERT_INT_EQ(h.content_length, c->content_length);
      ASSERT(h.chunked == c->chunked);
      ASSERT(h.head_len <= c->len);
    } else {
      ASSERT_INT_EQ(err.status, 502);
      ASSERT(err.reason != NULL);
    }
    /* prefixes: incomplete, or the same verdict */
    size_t end = rc == 1 ? h.head_len : c->len;
    for (size_t n = 0; n < end; n++) {
      gw_response_head_t ph;
      gw_parse_error_t perr;
      int prc = parse_resp(c->raw, n, &ph, &perr);
      if (!(prc == 0 || (prc == -1 && rc == -1)))
        fprintf(stderr, "  case \"%s\" prefix %zu: rc %d\n", c->name, n, prc);
      ASSERT(prc == 0 || (prc == -1 && rc == -1));
    }
  }
}

TG_TEST(response_fields) {
  static const char raw[] = "HTTP/1.1 201 Created here\r\nLocation: /v1/pets/7\r\n"
                            "Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}";
  gw_response_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_resp(raw, sizeof(raw) - 1, &h, &err), 1);
  ASSERT_INT_EQ(h.status, 201);
  ASSERT_INT_EQ(h.minor, 1);
  ASSERT_SPAN(h.reason, h.reason_len, "Created here");
  ASSERT_INT_EQ(h.nheaders, 3);
  ASSERT_SPAN(h.headers[0].value, h.headers[0].value_len, "/v1/pets/7");
  ASSERT_INT_EQ(h.conn_flags, GW_CONN_KEEP_ALIVE);
  ASSERT_INT_EQ(h.head_len, sizeof(raw) - 3);
  ASSERT_INT_EQ(h.content_length, 2);
}

TG_TEST(response_close_delimited_keeps_connection_flags) {
  /* keep_alive is false, but conn_flags still say what the upstream sent,
   * so the caller of a HEAD request can tell the connection is reusable */
  static const char raw[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
  gw_response_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_resp(raw, sizeof(raw) - 1, &h, &err), 1);
  ASSERT(!h.keep_alive);
  ASSERT_INT_EQ(h.conn_flags, 0);
  ASSERT(!gw_http1_response_has_body(GW_HEAD, h.status));
  static const char old[] = "HTTP/1.0 200 OK\r\n\r\n";
  ASSERT_INT_EQ(parse_resp(old, sizeof(old) - 1, &h, &err), 1);
  ASSERT(!h.keep_alive);
  ASSERT_INT_EQ(h.conn_flags, GW_CONN_CLOSE);
}

TG_TEST(response_limits) {
  const gw_limits_t lim = {.max_line = 32, .max_head = 64, .max_headers = 2};
  gw_response_head_t h;
  gw_parse_error_t err;
  static const char line32[] = "HTTP/1.1 200 aaaaaaaaaaaaaaaaa\r\n\r\n";
  ASSERT_INT_EQ(gw_http1_parse_response(line32, sizeof(line32) - 1, &lim, &h, &err), 1);
  static const char line33[] = "HTTP/1.1 200 aaaaaaaaaaaaaaaaaa\r\n\r\n";
  ASSERT_INT_EQ(gw_http1_parse_response(line33, sizeof(line33) - 1, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 502);
  static const char three[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  ASSERT_INT_EQ(gw_http1_parse_response(three, sizeof(three) - 1, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 502);
  static const char big[] =
      "HTTP/1.1 200 OK\r\nA: 11111111111111111111111111111111111111111111111111\r\n\r\n";
  ASSERT_INT_EQ(gw_http1_parse_response(big, sizeof(big) - 1, &lim, &h, &err), -1);
  ASSERT_INT_EQ(err.status, 502);
}

TG_TEST(response_has_body) {
  ASSERT(gw_http1_response_has_body(GW_GET, 200));
  ASSERT(gw_http1_response_has_body(GW_POST, 201));
  ASSERT(gw_http1_response_has_body(GW_GET, 404));
  ASSERT(gw_http1_response_has_body(GW_DELETE, 500));
  ASSERT(gw_http1_response_has_body(GW_GET, 205));
  ASSERT(!gw_http1_response_has_body(GW_HEAD, 200));
  ASSERT(!gw_http1_response_has_body(GW_HEAD, 404));
  ASSERT(!gw_http1_response_has_body(GW_GET, 100));
  ASSERT(!gw_http1_response_has_body(GW_GET, 101));
  ASSERT(!gw_http1_response_has_body(GW_GET, 199));
  ASSERT(!gw_http1_response_has_body(GW_GET, 204));
  ASSERT(!gw_http1_response_has_body(GW_POST, 304));
}

/* ====================================================================== */
/* Chunked decoder                                                        */
/* ====================================================================== */

typedef struct decoded {
  char data[16384];
  size_t data_len;
  size_t consumed; /* bytes of the input used, up to the end of the body */
  bool done;
  int status; /* 0, or the error status */
} decoded_t;

/*
 * Decode `body` fed in pieces ending at cuts[0..ncuts) (then the rest),
 * each piece an exact-size heap copy; check the decoder's contract on
 * every call.
 */
static void decode_cuts(const char *body, size_t len, const size_t *cuts, size_t ncuts,
                        decoded_t *d) {
  gw_chunked_t c;
  gw_chunked_init(&c);
  memset(d, 0, sizeof(*d));
  size_t off = 0;
  for (size_t k = 0; k <= ncuts && !d->done && !d->status; k++) {
    size_t end = k < ncuts ? cuts[k] : len;
    if (end < off)
      continue;
    char *piece = dup_exact(body + off, end - off);
    size_t plen = end - off, pos = 0;
    for (;;) {
      const char *data;
      size_t dlen;
      bool done;
      gw_parse_error_t err = {0, NULL};
      long n = gw_chunked_decode(&c, piece + pos, plen - pos, &data, &dlen, &done, &err);
      if (n < 0) {
        d->status = err.status;
        if (!err.reason)
          d->status = -1;
        break;
      }
      if ((size_t)n > plen - pos)
        abort();
      if (data) {
        if (data < piece + pos || data + dlen > piece + pos + (size_t)n || dlen == 0)
          abort();
        if (d->data_len + dlen > sizeof(d->data))
          abort();
        memcpy(d->data + d->data_len, data, dlen);
        d->data_len += dlen;
      } else if (dlen) {
        abort();
      }
      pos += (size_t)n;
      if (done) {
        d->done = true;
        break;
      }
      /* without data or done, the decoder uses all it was given */
      if (!data && pos != plen)
        abort();
      if (pos == plen)
        break;
    }
    off += pos;
    free(piece);
  }
  d->consumed = off;
}

static bool same_decoding(const decoded_t *a, const decoded_t *b) {
  return a->data_len == b->data_len && memcmp(a->data, b->data, a->data_len) == 0 &&
         a->done == b->done && a->status == b->status && (a->status || a->consumed == b->consumed);
}

typedef struct chunk_case {
  const char *name;
  const char *body;
  size_t len;
  const char *data; /* NULL when invalid */
  size_t consumed;  /* 0: the whole body */
} chunk_case_t;

#define CH(name, body, data)                                                                       \
  { name, body, sizeof(body) - 1, data, 0 }
#define CH_PART(name, body, data, used)                                                            \
  { name, body, sizeof(body) - 1, data, used }

static const chunk_case_t chunk_valid[] = {
    CH("one chunk", "5\r\nhello\r\n0\r\n\r\n", "hello"),
    CH("two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
    CH("empty body", "0\r\n\r\n", ""),
    CH("hex upper", "A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
    CH("hex lower", "a\r\n0123456789\r\nB\r\nabcdefghijk\r\n0\r\n\r\n", "0123456789abcdefghijk"),
    CH("leading zeros", "0005\r\nhello\r\n000\r\n\r\n", "hello"),
    CH("fifteen digits", "00000000000000A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
    CH("extensions", "5;foo=bar;baz\r\nhello\r\n0;last\r\n\r\n", "hello"),
    CH("extension BWS", "5; a = b ;\tc\r\nhello\r\n0\r\n\r\n", "hello"),
    CH("quoted extension", "5;a=\"b;c\\\"d\"\r\nhello\r\n0;q=\"\"\r\n\r\n", "hello"),
    CH("trailers", "5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Empty:\r\n\r\n", "hello"),
    CH("Content-Length trailer is dropped", "3\r\nabc\r\n0\r\nContent-Length: 100\r\n\r\n", "abc"),
    CH("CRLF inside data", "4\r\n\r\n\r\n\r\n0\r\n\r\n", "\r\n\r\n"),
    CH_PART("next message follows", "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", "abc", 13),
    CH("0 inside data", "2\r\n0\r\r\n0\r\n\r\n", "0\r"),
};

static const chunk_case_t chunk_invalid[] = {
    CH("bad hex", "g\r\nhello\r\n0\r\n\r\n", NULL),
    CH("hex then junk", "5g\r\nhello\r\n0\r\n\r\n", NULL),
    CH("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", NULL),
    CH("negative", "-5\r\nhello\r\n0\r\n\r\n", NULL),
    CH("plus", "+5\r\nhello\r\n0\r\n\r\n", NULL),
    CH("leading space", " 5\r\nhello\r\n0\r\n\r\n", NULL),
    CH("trailing space", "5 \r\nhello\r\n0\r\n\r\n", NULL),
    CH("space before extension", "5 ;a\r\nhello\r\n0\r\n\r\n", NULL),
    CH("empty size line", "\r\nhello\r\n0\r\n\r\n", NULL),
    CH("sixteen digits", "0000000000000005\r\nhello\r\n0\r\n\r\n", NULL),
    CH("huge size", "ffffffffffffffffff\r\n", NULL),
    CH("LF only after size", "5\nhello\r\n0\r\n\r\n", NULL),
    CH("CR CR after size", "5\r\rhello\r\n0\r\n\r\n", NULL),
    CH("missing CRLF after data", "5\r\nhelloX\r\n0\r\n\r\n", NULL),
    CH("data longer than size", "3\r\nhello\r\n0\r\n\r\n", NULL),
    CH("LF only after data", "5\r\nhello\n0\r\n\r\n", NULL),
    CH("CR only after data", "5\r\nhello\r0\r\n\r\n", NULL),
    CH("LF only last chunk", "5\r\nhello\r\n0\n\n", NULL),
    CH("LF only final line", "0\r\n\n", NULL),
    CH("CR then junk at the end", "0\r\n\rX", NULL),
    CH("bad extension byte", "5;a@b\r\nhello\r\n0\r\n\r\n", NULL),
    CH("NUL in extension", "5;a\0b\r\nhello\r\n0\r\n\r\n", NULL),
    CH("bare LF in extension", "5;a\nhello\r\n0\r\n\r\n", NULL),
    CH("control char in quoted extension", "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", NULL),
    CH("control char escaped in quoted extension", "5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n", NULL),
    CH("obs-fold trailer", "0\r\nX: a\r\n b\r\n\r\n", NULL),
    CH("trailer without colon", "0\r\nX\r\n\r\n", NULL),
    CH("trailer space before colon", "0\r\nX : a\r\n\r\n", NULL),
    CH("trailer empty name", "0\r\n: a\r\n\r\n", NULL),
    CH("trailer NUL value", "0\r\nX: a\0\r\n\r\n", NULL),
    CH("trailer bare LF", "0\r\nX: a\n\r\n", NULL),
    CH("trailer bare CR", "0\r\nX: a\rb\r\n\r\n", NULL),
};

TG_TEST(chunked_valid_whole) {
  for (size_t i = 0; i < sizeof(chunk_valid) / sizeof(chunk_valid[0]); i++) {
    const chunk_case_t *c = &chunk_valid[i];
    decoded_t d;
    decode_cuts(c->body, c->len, NULL, 0, &d);
    if (d.status || !d.done)
      fprintf(stderr, "  case \"%s\": status %d done %d\n", c->name, d.status, d.done);
    ASSERT_INT_EQ(d.status, 0);
    ASSERT(d.done);
    ASSERT_SPAN(d.data, d.data_len, c->data);
    ASSERT_INT_EQ(d.consumed, c->consumed ? c->consumed : c->len);
  }
}

TG_TEST(chunked_valid_every_split) {
  for (size_t i = 0; i < sizeof(chunk_valid) / sizeof(chunk_valid[0]); i++) {
    const char *body = chunk_valid[i].body;
    size_t len = chunk_valid[i].len;
    decoded_t whole, d;
    decode_cuts(body, len, NULL, 0, &whole);
    /* every single cut, and every pair of cuts */
    for (size_t a = 0; a <= len; a++) {
      decode_cuts(body, len, &a, 1, &d);
      ASSERT(same_decoding(&d, &whole));
      for (size_t b = a; b <= len; b++) {
        size_t cuts[2] = {a, b};
        decode_cuts(body, len, cuts, 2, &d);
        ASSERT(same_decoding(&d, &whole));
      }
    }
    /* byte by byte */
    size_t cuts[256];
    ASSERT(len < 256);
    for (size_t k = 0; k < len; k++)
      cuts[k] = k + 1;
    decode_cuts(body, len, cuts, len, &d);
    ASSERT(same_decoding(&d, &whole));
  }
}

TG_TEST(chunked_random_splits) {
  /* a larger body: many chunks, extensions, trailers */
  static char body[6000];
  static char want[4096];
  size_t n = 0, w = 0;
  for (int k = 1; k <= 40; k++) {
    int size = (int)(prng_next() % 90) + 1;
    n += (size_t)snprintf(body + n, sizeof(body) - n, "%x%s\r\n", size, k % 3 ? "" : ";e=\"v\"");
    for (int j = 0; j < size; j++) {
      char ch = (char)('a' + (int)(prng_next() % 26));
      body[n++] = ch;
      want[w++] = ch;
    }
    body[n++] = '\r';
    body[n++] = '\n';
  }
  n += (size_t)snprintf(body + n, sizeof(body) - n, "0\r\nX-T: 1\r\n\r\n");
  want[w] = '\0';
  decoded_t whole, d;
  decode_cuts(body, n, NULL, 0, &whole);
  ASSERT(whole.done);
  ASSERT_INT_EQ(whole.consumed, n);
  ASSERT_SPAN(whole.data, whole.data_len, want);
  for (int round = 0; round < 2000; round++) {
    size_t cuts[64];
    size_t ncuts = (size_t)(prng_next() % 64);
    size_t at = 0;
    for (size_t k = 0; k < ncuts; k++) {
      at += (size_t)(prng_next() % (2 * n / (ncuts + 1) + 1));
      cuts[k] = at < n ? at : n;
    }
    decode_cuts(body, n, cuts, ncuts, &d);
    ASSERT(same_decoding(&d, &whole));
  }
}

TG_TEST(chunked_invalid) {
  for (size_t i = 0; i < sizeof(chunk_invalid) / sizeof(chunk_invalid[0]); i++) {
    const chunk_case_t *c = &chunk_invalid[i];
    size_t len = c->len;
    decoded_t whole, d;
    decode_cuts(c->body, len, NULL, 0, &whole);
    if (whole.status != 400)
      fprintf(stderr, "  case \"%s\": status %d done %d\n", c->name, whole.status, whole.done);
    ASSERT_INT_EQ(whole.status, 400);
    ASSERT(!whole.done);
    for (size_t a = 0; a <= len; a++) {
      decode_cuts(c->body, len, &a, 1, &d);
      ASSERT(same_decoding(&d, &whole));
    }
  }
}

/* Decode a body made from `fmt` with its one 'Q' replaced by the byte c. */
static int decode_with_byte(const char *fmt, int c) {
  char buf[64];
  size_t n = strlen(fmt);
  memcpy(buf, fmt, n);
  for (size_t i = 0; i < n; i++)
    if (buf[i] == 'Q')
      buf[i] = (char)c;
  decoded_t d;
  decode_cuts(buf, n, NULL, 0, &d);
  return d.status ? -1 : d.done ? 1 : 0;
}

TG_TEST(chunked_every_byte) {
  for (int c = 0; c < 256; c++) {
    /* RFC 9110 5.6.4 qdtext */
    bool qdtext = c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) ||
                  (c >= 0x5d && c <= 0x7e) || c >= 0x80;
    ASSERT_INT_EQ(decode_with_byte("1;a=\"Q\"\r\nx\r\n0\r\n\r\n", c), qdtext ? 1 : -1);
    /* unquoted extension bytes: token, "=", ";", BWS */
    bool ext = is_tchar(c) || c == '=' || c == ';' || c == ' ' || c == '\t';
    ASSERT_INT_EQ(decode_with_byte("1;aQb\r\nx\r\n0\r\n\r\n", c), ext ? 1 : -1);
    /* trailer names and values, as header fields */
    bool name = is_tchar(c) || c == ':';
    ASSERT_INT_EQ(decode_with_byte("0\r\nXQY: v\r\n\r\n", c), name ? 1 : -1);
    bool value = (c >= 0x20 && c != 0x7f) || c == '\t';
    ASSERT_INT_EQ(decode_with_byte("0\r\nX: aQb\r\n\r\n", c), value ? 1 : -1);
    /* chunk sizes: HEXDIG only, then ";" or CRLF */
    bool hex = in_set(c, "0123456789abcdefABCDEF");
    ASSERT_INT_EQ(decode_with_byte("0Q\r\n", c), hex || c == ';' ? 0 : -1);
  }
}

TG_TEST(every_byte_in_a_percent_escape_and_reason) {
  for (int c = 0; c < 256; c++) {
    gw_parse_error_t err;
    bool hex = in_set(c, "0123456789abcdefABCDEF");
    ASSERT_INT_EQ(parse_line("GET /%%Q0 HTTP/1.1\r\nHost: h\r\n\r\n", c, &err), hex ? 1 : -1);
    ASSERT_INT_EQ(parse_line("GET /%%0Q HTTP/1.1\r\nHost: h\r\n\r\n", c, &err), hex ? 1 : -1);
    char buf[64];
    memcpy(buf, "HTTP/1.1 200 aQb\r\n\r\n", 21);
    buf[14] = (char)c;
    gw_response_head_t h;
    bool reason = (c >= 0x20 && c != 0x7f) || c == '\t';
    ASSERT_INT_EQ(parse_resp(buf, 21, &h, &err), reason ? 1 : -1);
  }
}

TG_TEST(chunked_errors_are_sticky_and_done_is_final) {
  gw_chunked_t c;
  const char *data;
  size_t dlen;
  bool done;
  gw_parse_error_t err;
  gw_chunked_init(&c);
  ASSERT_INT_EQ(gw_chunked_decode(&c, "z", 1, &data, &dlen, &done, &err), -1);
  ASSERT_INT_EQ(err.status, 400);
  err.status = 0;
  ASSERT_INT_EQ(gw_chunked_decode(&c, "0\r\n\r\n", 5, &data, &dlen, &done, &err), -1);
  ASSERT_INT_EQ(err.status, 400);
  ASSERT(!done);

  gw_chunked_init(&c);
  ASSERT_INT_EQ(gw_chunked_decode(&c, "0\r\n\r\nXYZ", 8, &data, &dlen, &done, &err), 5);
  ASSERT(done);
  ASSERT(data == NULL && dlen == 0);
  ASSERT_INT_EQ(gw_chunked_decode(&c, "XYZ", 3, &data, &dlen, &done, &err), 0);
  ASSERT(done);
  ASSERT_INT_EQ(gw_chunked_decode(&c, "", 0, &data, &dlen, &done, &err), 0);
  ASSERT(done);

  /* empty input before anything */
  gw_chunked_init(&c);
  ASSERT_INT_EQ(gw_chunked_decode(&c, "", 0, &data, &dlen, &done, &err), 0);
  ASSERT(!done);
}

TG_TEST(chunked_stops_after_each_span) {
  static const char body[] = "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
  gw_chunked_t c;
  const char *data;
  size_t dlen;
  bool done;
  gw_parse_error_t err;
  gw_chunked_init(&c);
  long n = gw_chunked_decode(&c, body, sizeof(body) - 1, &data, &dlen, &done, &err);
  ASSERT_INT_EQ(n, 6);
  ASSERT(data == body + 3);
  ASSERT_INT_EQ(dlen, 3);
  ASSERT(!done);
  long m = gw_chunked_decode(&c, body + n, sizeof(body) - 1 - (size_t)n, &data, &dlen, &done, &err);
  ASSERT_INT_EQ(m, 7);
  ASSERT(data == body + 11);
  ASSERT_INT_EQ(dlen, 2);
  n += m;
  m = gw_chunked_decode(&c, body + n, sizeof(body) - 1 - (size_t)n, &data, &dlen, &done, &err);
  ASSERT_INT_EQ((size_t)(n + m), sizeof(body) - 1);
  ASSERT(done && data == NULL);
}

TG_TEST(chunked_large_size_streams) {
  /* 15 hex digits is accepted; the data arrives in spans of whatever size */
  gw_chunked_t c;
  const char *data;
  size_t dlen;
  bool done;
  gw_parse_error_t err;
  gw_chunked_init(&c);
  ASSERT_INT_EQ(gw_chunked_decode(&c, "fffffffffffffff\r\n", 17, &data, &dlen, &done, &err), 17);
  ASSERT(c.remaining == 0xfffffffffffffffu);
  char block[1000];
  memset(block, 'x', sizeof(block));
  for (int i = 0; i < 100; i++) {
    ASSERT_INT_EQ(gw_chunked_decode(&c, block, sizeof(block), &data, &dlen, &done, &err), 1000);
    ASSERT(data == block && dlen == 1000 && !done);
  }
}

TG_TEST(chunked_line_limits) {
  static char body[20000];
  decoded_t d;
  /* a size line of exactly 4096 bytes (CRLF included) passes, 4097 fails */
  for (int extra = 0; extra <= 1; extra++) {
    size_t n = 0;
    body[n++] = '1';
    body[n++] = ';';
    while (n < (size_t)(4094 + extra))
      body[n++] = 'e';
    memcpy(body + n, "\r\nx\r\n0\r\n\r\n", 11);
    decode_cuts(body, n + 10, NULL, 0, &d);
    ASSERT_INT_EQ(d.status, extra ? 400 : 0);
    ASSERT(d.done == !extra);
  }
  /* the same for a trailer line */
  for (int extra = 0; extra <= 1; extra++) {
    size_t n = 0;
    memcpy(body, "0\r\nX: ", 6);
    n = 6;
    while (n < (size_t)(3 + 4094 + extra))
      body[n++] = 'v';
    memcpy(body + n, "\r\n\r\n", 5);
    decode_cuts(body, n + 4, NULL, 0, &d);
    ASSERT_INT_EQ(d.status, extra ? 400 : 0);
  }
  /* 64 trailers pass, 65 fail */
  for (int extra = 0; extra <= 1; extra++) {
    size_t n = 0;
    memcpy(body, "0\r\n", 3);
    n = 3;
    for (int k = 0; k < 64 + extra; k++) {
      memcpy(body + n, "T: v\r\n", 6);
      n += 6;
    }
    memcpy(body + n, "\r\n", 3);
    decode_cuts(body, n + 2, NULL, 0, &d);
    ASSERT_INT_EQ(d.status, extra ? 400 : 0);
    ASSERT(d.done == !extra);
  }
  /* the line limit does not apply to data */
  size_t n = (size_t)snprintf(body, sizeof(body), "2710\r\n");
  memset(body + n, 'd', 10000);
  n += 10000;
  memcpy(body + n, "\r\n0\r\n\r\n", 8);
  decode_cuts(body, n + 7, NULL, 0, &d);
  ASSERT_INT_EQ(d.status, 0);
  ASSERT(d.done);
  ASSERT_INT_EQ(d.data_len, 10000);
}

/* A request with a chunked body: head, then the decoder over the rest. */
TG_TEST(request_then_chunked_body) {
  static const char raw[] = "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nContent-Length: 9\r\n\r\n"
                            "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  gw_request_head_t h;
  gw_parse_error_t err;
  ASSERT_INT_EQ(parse_req(raw, sizeof(raw) - 1, &LIM, &h, &err), 1);
  ASSERT(h.chunked);
  decoded_t d;
  decode_cuts(raw + h.head_len, sizeof(raw) - 1 - h.head_len, NULL, 0, &d);
  ASSERT(d.done);
  ASSERT_SPAN(d.data, d.data_len, "Wikipedia");
  size_t next = h.head_len + d.consumed;
  ASSERT_INT_EQ(parse_req(raw + next, sizeof(raw) - 1 - next, &LIM, &h, &err), 1);
  ASSERT_SPAN(h.target, h.target_len, "/next");
}

TG_TEST_MAIN()
