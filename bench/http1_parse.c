/*
 * http1_parse.c - request-head parsing speed: gw_http1_parse_request
 * against Debian's llhttp 8.1.0 on the same ten typical requests (curl
 * GETs, browser GETs with 15 headers, JSON POST/PUT with Content-Length,
 * a chunked POST, ...). llhttp gets the same bytes, one llhttp_init per
 * request, and callbacks that collect what our parser returns: method,
 * URL, version, header name/value spans, Content-Length, chunked and
 * keep-alive. Prints ns/request for each, best of several rounds run in
 * alternation, and the ratio.
 *
 * Build and run from the source root (the command is below, on one line, as
 * a line comment: its glob would open a comment inside this one):
 */
// clang-format off
// cc -O2 -I. -I/usr/share/include/llhttp bench/http1_parse.c gateway/http1.c /usr/share/llhttp/*.c -o /tmp/http1_parse && /tmp/http1_parse [iterations]
// clang-format on
#include <llhttp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/http1.h"

static const char *const requests[] = {
    /* curl */
    "GET /v1/pets?limit=10 HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: curl/8.5.0\r\n"
    "Accept: */*\r\n"
    "\r\n",
    /* curl with an API key */
    "GET /v1/pets/42 HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: curl/8.5.0\r\n"
    "Accept: application/json\r\n"
    "Authorization: Bearer tg_live_4f9Kx2LmQ8vN1rT7bW3yZ6cH0dJ5sA2eG8uP4kM9\r\n"
    "\r\n",
    /* browser, 15 headers */
    "GET /portal/keys?page=2&sort=created HTTP/1.1\r\n"
    "Host: portal.example.com\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-Mode: navigate\r\n"
    "Sec-Fetch-User: ?1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "Referer: https://portal.example.com/portal/keys?page=1&sort=created\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
    "\r\n",
    /* browser, 15 headers, with cookies */
    "GET /portal/static/app.css HTTP/1.1\r\n"
    "Host: portal.example.com\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Accept: text/css,*/*;q=0.1\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Sec-Fetch-Dest: style\r\n"
    "Referer: https://portal.example.com/portal/keys\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Cookie: tg_session=tg_ses_8d7f6e5c4b3a29180f7e6d5c4b3a2918; tg_csrf=Zx81mQ0aL2pP9\r\n"
    "If-None-Match: \"5f3c-18e2a7b9c10\"\r\n"
    "\r\n",
    /* JSON POST */
    "POST /v1/pets HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: python-requests/2.31.0\r\n"
    "Accept-Encoding: gzip, deflate\r\n"
    "Accept: */*\r\n"
    "Connection: keep-alive\r\n"
    "Authorization: Bearer tg_live_4f9Kx2LmQ8vN1rT7bW3yZ6cH0dJ5sA2eG8uP4kM9\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 48\r\n"
    "\r\n",
    /* JSON PUT */
    "PUT /v1/pets/42 HTTP/1.1\r\n"
    "Host: api.example.com:8443\r\n"
    "User-Agent: okhttp/4.12.0\r\n"
    "Content-Type: application/json; charset=utf-8\r\n"
    "Content-Length: 1024\r\n"
    "X-Request-Id: 7b1e4c2a-9f0d-4e8b-a6c3-2d5f8e1b0a97\r\n"
    "\r\n",
    /* chunked POST */
    "POST /v1/uploads HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: Go-http-client/1.1\r\n"
    "Transfer-Encoding: chunked\r\n"
    "Content-Type: application/octet-stream\r\n"
    "Accept-Encoding: gzip\r\n"
    "\r\n",
    /* DELETE */
    "DELETE /v1/pets/42 HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "Authorization: Bearer tg_live_4f9Kx2LmQ8vN1rT7bW3yZ6cH0dJ5sA2eG8uP4kM9\r\n"
    "\r\n",
    /* long query string */
    "GET /v1/search?q=golden%20retriever&fields=id,name,age,owner&sort=-created&page=3"
    "&per_page=50&filter%5Bstatus%5D=available&filter%5Btag%5D=dog HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "Accept: application/json\r\n"
    "X-Api-Key: tg_live_4f9Kx2LmQ8vN1rT7bW3yZ6cH0dJ5sA2eG8uP4kM9\r\n"
    "\r\n",
    /* HTTP/1.0 keep-alive (ab) */
    "GET /health HTTP/1.0\r\n"
    "Connection: Keep-Alive\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: ApacheBench/2.3\r\n"
    "Accept: */*\r\n"
    "\r\n",
};
#define NREQ (sizeof(requests) / sizeof(requests[0]))

static size_t lens[NREQ];
static volatile uint64_t sink;

/* ---- llhttp collecting the same fields ---------------------------------- */

typedef struct collected {
  const char *url;
  size_t url_len;
  gw_header_t headers[GW_MAX_HEADERS];
  unsigned n;
  int in_value;
} collected_t;

static int on_url(llhttp_t *p, const char *at, size_t len) {
  collected_t *c = p->data;
  if (!c->url)
    c->url = at;
  c->url_len += len;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  collected_t *c = p->data;
  if (c->in_value || c->n == 0) {
    if (c->n == GW_MAX_HEADERS)
      return -1;
    c->n++;
    c->headers[c->n - 1].name = at;
    c->headers[c->n - 1].name_len = 0;
    c->headers[c->n - 1].value = NULL;
    c->headers[c->n - 1].value_len = 0;
    c->in_value = 0;
  }
  c->headers[c->n - 1].name_len = (uint16_t)(c->headers[c->n - 1].name_len + len);
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  collected_t *c = p->data;
  gw_header_t *h = &c->headers[c->n - 1];
  if (!h->value)
    h->value = at;
  h->value_len += (uint32_t)len;
  c->in_value = 1;
  return 0;
}

static llhttp_settings_t settings;

static uint64_t parse_llhttp(const char *buf, size_t len) {
  llhttp_t parser;
  collected_t c;
  c.url = NULL;
  c.url_len = 0;
  c.n = 0;
  c.in_value = 0;
  llhttp_init(&parser, HTTP_REQUEST, &settings);
  parser.data = &c;
  if (llhttp_execute(&parser, buf, len) != HPE_OK)
    abort();
  uint64_t keep = (uint64_t)llhttp_should_keep_alive(&parser);
  uint64_t chunked = (parser.flags & F_CHUNKED) != 0;
  return c.url_len + c.n + (uintptr_t)c.headers[c.n - 1].value + parser.method + parser.http_minor +
         parser.content_length + keep + chunked;
}

/* ---- ours ---------------------------------------------------------------- */

static const gw_limits_t limits = {.max_line = 8192, .max_head = 16384, .max_headers = 100};

static uint64_t parse_ours(const char *buf, size_t len) {
  gw_request_head_t h;
  gw_parse_error_t err;
  if (gw_http1_parse_request(buf, len, &limits, &h, &err) != 1)
    abort();
  return h.target_len + h.nheaders + (uintptr_t)h.headers[h.nheaders - 1].value + h.method +
         (uint64_t)h.minor + (uint64_t)h.content_length + h.keep_alive + h.chunked;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double run(uint64_t (*fn)(const char *, size_t), long iterations) {
  uint64_t acc = 0;
  double t0 = now_ns();
  for (long i = 0; i < iterations; i++)
    for (size_t r = 0; r < NREQ; r++)
      acc += fn(requests[r], lens[r]);
  double t1 = now_ns();
  sink += acc;
  return (t1 - t0) / ((double)iterations * NREQ);
}

int main(int argc, char **argv) {
  long iterations = argc > 1 ? strtol(argv[1], NULL, 10) : 200000;
  if (iterations <= 0)
    iterations = 200000;
  llhttp_settings_init(&settings);
  settings.on_url = on_url;
  settings.on_header_field = on_header_field;
  settings.on_header_value = on_header_value;

  size_t bytes = 0;
  for (size_t r = 0; r < NREQ; r++) {
    lens[r] = strlen(requests[r]);
    bytes += lens[r];
    /* both see the same header count */
    gw_request_head_t h;
    gw_parse_error_t err;
    if (gw_http1_parse_request(requests[r], lens[r], &limits, &h, &err) != 1 ||
        h.head_len != lens[r]) {
      fprintf(stderr, "request %zu rejected: %d %s\n", r, err.status, err.reason);
      return 1;
    }
  }
  run(parse_ours, iterations / 10 + 1); /* warm up */
  run(parse_llhttp, iterations / 10 + 1);
  double best_ours = 1e18, best_ll = 1e18;
  for (int round = 0; round < 7; round++) {
    double a = run(parse_ours, iterations);
    double b = run(parse_llhttp, iterations);
    if (a < best_ours)
      best_ours = a;
    if (b < best_ll)
      best_ll = b;
  }
  printf("cc -O2 -I. -I/usr/share/include/llhttp bench/http1_parse.c gateway/http1.c "
         "/usr/share/llhttp/*.c -o /tmp/http1_parse && /tmp/http1_parse %ld\n",
         iterations);
  printf("%zu requests, %zu bytes on average, %ld iterations x 7 rounds (best)\n", NREQ,
         bytes / NREQ, iterations);
  printf("gw_http1_parse_request: %7.1f ns/request\n", best_ours);
  printf("llhttp 8.1.0:           %7.1f ns/request\n", best_ll);
  printf("llhttp / ours:          %7.2fx\n", best_ll / best_ours);
  return 0;
}
