/*
 * util.c - see util.h. Ids use libsodium's CSPRNG, so sodium_init() must
 * have run (tg_keys_init does it).
 */
#include "core/util.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/*
 * Length of the well-formed UTF-8 sequence at s (avail > 0 bytes), or 0.
 * Follows the table in RFC 3629 section 4, which rules out overlong forms
 * (C0, C1, E0 80..9F, F0 80..8F), UTF-16 surrogates (ED A0..BF) and code
 * points above U+10FFFF (F4 90.., F5..FF).
 */
size_t tg_utf8_seq_len(const unsigned char *s, size_t avail) {
  unsigned char c = s[0], lo = 0x80, hi = 0xBF;
  size_t n;

  if (c < 0x80)
    return 1;
  if (c < 0xC2)
    return 0;
  if (c < 0xE0) {
    n = 2;
  } else if (c < 0xF0) {
    n = 3;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c < 0xF5) {
    n = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else {
    return 0;
  }
  if (avail < n || s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xBF)
      return 0;
  return n;
}

bool tg_utf8_valid(const char *s, size_t len, bool allow_ctl) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < len;) {
    unsigned char c = u[i];
    if (c == 0 || (!allow_ctl && ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f)))
      return false;
    size_t n = tg_utf8_seq_len(u + i, len - i);
    if (n == 0)
      return false;
    i += n;
  }
  return true;
}

static int64_t clock_override_ms;

void tg_clock_override_ms(int64_t ms) {
  clock_override_ms = ms;
}

int64_t tg_now_ms(void) {
  if (clock_override_ms)
    return clock_override_ms;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tg_now(void) {
  return tg_now_ms() / 1000;
}

void tg_id_new(const char *prefix, char out[TG_ID_LEN + 1]) {
  static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"; /* Crockford */
  unsigned char raw[16];
  uint64_t ms = (uint64_t)tg_now_ms();
  for (int i = 0; i < 6; i++)
    raw[i] = (unsigned char)(ms >> (40 - 8 * i));
  randombytes_buf(raw + 6, 10);
  /* 128 bits -> 26 chars of 5 bits; the first char carries the top 3 bits. */
  memcpy(out, prefix, 3);
  out[3] = '_';
  int bit = -2; /* 26*5 = 130 bits: two leading zero bits */
  for (int i = 0; i < 26; i++, bit += 5) {
    unsigned v = 0;
    for (int b = 0; b < 5; b++) {
      int pos = bit + b;
      v <<= 1;
      if (pos >= 0)
        v |= (raw[pos / 8] >> (7 - pos % 8)) & 1u;
    }
    out[4 + i] = b32[v];
  }
  out[TG_ID_LEN] = '\0';
}

void tg_time_format(int64_t t, char out[21]) {
  time_t tt = (time_t)t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int tg_addr_resolve(const char *hostport, const char *key, struct sockaddr_storage *out,
                    unsigned *len, tg_problem_t *p) {
  char host[256];
  const char *port, *h = hostport;
  size_t hl;
  if (hostport[0] == '[') {
    const char *rb = strchr(hostport, ']');
    if (!rb || rb[1] != ':')
      return tg_problem_set(p, TG_ECONFIG, key, "%s: expected [IPV6]:PORT", hostport);
    h = hostport + 1;
    hl = (size_t)(rb - h);
    port = rb + 2;
  } else {
    const char *colon = strrchr(hostport, ':');
    if (!colon)
      return tg_problem_set(p, TG_ECONFIG, key, "%s: expected HOST:PORT", hostport);
    hl = (size_t)(colon - hostport);
    port = colon + 1;
  }
  if (hl == 0 || hl >= sizeof(host))
    return tg_problem_set(p, TG_ECONFIG, key, "%s: bad host", hostport);
  memcpy(host, h, hl);
  host[hl] = '\0';
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0 || !res)
    return tg_problem_set(p, TG_ECONFIG, key, "%s: %s", hostport, gai_strerror(rc));
  memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = (unsigned)res->ai_addrlen;
  freeaddrinfo(res);
  return TG_OK;
}

bool tg_addr_is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
      return true;
    return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

void tg_addr_format(const struct sockaddr *sa, char out[64]) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    snprintf(out, 64, "%s:%u", ip, ntohs(in->sin_port));
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
    snprintf(out, 64, "[%s]:%u", ip, ntohs(in6->sin6_port));
  } else {
    snprintf(out, 64, "?");
  }
}
