/*
 * test_llhttp.c - Debian's llhttp 8.1.0, as compiled into the gateway.
 *
 * Two kinds of tests: that the parser we build does its job on well-formed
 * traffic, and a record of what this version accepts that RFC 9112 forbids
 * (obs-fold, whitespace before the colon, empty header names, HTTP/2.0 and
 * HTTP/0.9 request lines). The gateway must reject those itself; if a
 * Debian update makes llhttp reject one of them, the matching test here
 * fails and tells us which of our own guards became belt-and-braces.
 */
#include <llhttp.h>

#include "tg_test.h"

typedef struct seen {
  int messages;
  char url[64];
  size_t url_len;
  char last_header[64];
  size_t header_len;
} seen_t;

static int on_url(llhttp_t *p, const char *at, size_t len) {
  seen_t *s = p->data;
  if (s->url_len + len < sizeof(s->url)) {
    memcpy(s->url + s->url_len, at, len);
    s->url_len += len;
    s->url[s->url_len] = '\0';
  }
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  seen_t *s = p->data;
  if (len < sizeof(s->last_header)) {
    memcpy(s->last_header, at, len);
    s->last_header[len] = '\0';
    s->header_len = len;
  }
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  ((seen_t *)p->data)->messages++;
  return 0;
}

static int parse(const char *raw, seen_t *s, llhttp_t *parser) {
  static llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_url = on_url;
  settings.on_header_field = on_header_field;
  settings.on_message_complete = on_message_complete;
  memset(s, 0, sizeof(*s));
  llhttp_init(parser, HTTP_REQUEST, &settings);
  parser->data = s;
  return llhttp_execute(parser, raw, strlen(raw));
}

TG_TEST(version_is_8_1) {
  ASSERT_INT_EQ(LLHTTP_VERSION_MAJOR, 8);
  ASSERT_INT_EQ(LLHTTP_VERSION_MINOR, 1);
}

TG_TEST(parses_a_request) {
  seen_t s;
  llhttp_t p;
  ASSERT_INT_EQ(parse("POST /v1/pets?x=1 HTTP/1.1\r\nHost: api.example\r\n"
                      "Content-Length: 3\r\n\r\nabc",
                      &s, &p),
                HPE_OK);
  ASSERT_INT_EQ(s.messages, 1);
  ASSERT_STR_EQ(s.url, "/v1/pets?x=1");
  ASSERT_INT_EQ(llhttp_get_method(&p), HTTP_POST);
  ASSERT_INT_EQ(llhttp_should_keep_alive(&p), 1);
}

TG_TEST(pipelined_requests_complete_in_order) {
  seen_t s;
  llhttp_t p;
  ASSERT_INT_EQ(
      parse("GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", &s, &p),
      HPE_OK);
  ASSERT_INT_EQ(s.messages, 2);
  ASSERT_STR_EQ(s.url, "/a/b"); /* both URLs streamed through on_url */
}

TG_TEST(rejects_content_length_with_chunked) {
  seen_t s;
  llhttp_t p;
  ASSERT_INT_EQ(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                      &s, &p),
                HPE_UNEXPECTED_CONTENT_LENGTH);
  ASSERT_INT_EQ(s.messages, 0);
}

TG_TEST(rejects_bare_lf_header_lines) {
  seen_t s;
  llhttp_t p;
  ASSERT_INT_NE(parse("GET / HTTP/1.1\nHost: h\n\n", &s, &p), HPE_OK);
}

/* ---- accepted by 8.1.0, forbidden by RFC 9112: the gateway's job ------- */

TG_TEST(lenient_accepts_obs_fold) {
  seen_t s;
  llhttp_t p;
  ASSERT_INT_EQ(parse("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n", &s, &p), HPE_OK);
  ASSERT_INT_EQ(s.messages, 1);
}

TG_TEST(lenient_accepts_space_before_colon) {
  seen_t s;
  llhttp_t p;
  ASSERT_INT_EQ(parse("GET / HTTP/1.1\r\nHost : h\r\n\r\n", &s, &p), HPE_OK);
  ASSERT_STR_EQ(s.last_header, "Host "); /* the name keeps the space */
}

TG_TEST(lenient_accepts_empty_header_name) {
  seen_t s;
  llhttp_t p;
  ASSERT_INT_EQ(parse("GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n", &s, &p), HPE_OK);
  ASSERT_INT_EQ(s.header_len, 0);
}

TG_TEST(lenient_accepts_http_2_0_and_0_9_lines) {
  seen_t s;
  llhttp_t p;
  ASSERT_INT_EQ(parse("GET / HTTP/2.0\r\nHost: h\r\n\r\n", &s, &p), HPE_OK);
  ASSERT_INT_EQ(p.http_major, 2);
  ASSERT_INT_EQ(parse("GET /\r\n\r\n", &s, &p), HPE_OK);
  ASSERT_INT_EQ(p.http_major, 0);
}

TG_TEST_MAIN()
