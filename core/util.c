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

static int64_t clock_override_ms, clock_offset_ms;

void tg_clock_override_ms(int64_t ms) {
  clock_override_ms = ms;
}

void tg_clock_offset_ms(int64_t ms) {
  clock_offset_ms = ms;
}

int64_t tg_now_ms(void) {
  if (clock_override_ms)
    return clock_override_ms;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + clock_offset_ms;
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

void tg_utc_month(int64_t t, int64_t *start, int64_t *end) {
  time_t tt = (time_t)t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  tm.tm_mday = 1;
  tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
  *start = (int64_t)timegm(&tm);
  tm.tm_mon += 1; /* timegm normalises December + 1 into January */
  *end = (int64_t)timegm(&tm);
}

static int digits(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return 0;
}

int tg_time_parse(const char *s, int64_t *out, bool *exact) {
  int y, mo, d, h = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0;
  size_t n = strlen(s);
  bool whole = true;
  if (n < 10 || digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
      digits(s + 8, 2, &d))
    return -1;
  const char *p = s + 10;
  if (*p) {
    if ((*p != 'T' && *p != 't') || strlen(p) < 10 || digits(p + 1, 2, &h) || p[3] != ':' ||
        digits(p + 4, 2, &mi) || p[6] != ':' || digits(p + 7, 2, &sec))
      return -1;
    p += 9;
    if (*p == '.') {
      p++;
      if (*p < '0' || *p > '9')
        return -1;
      for (; *p >= '0' && *p <= '9'; p++)
        if (*p != '0')
          whole = false;
    }
    if (*p == 'Z' || *p == 'z') {
      p++;
    } else if (*p == '+' || *p == '-') {
      sign = *p == '+' ? 1 : -1;
      if (strlen(p) != 6 || digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) ||
          oh > 23 || om > 59)
        return -1;
      p += 6;
    } else {
      return -1;
    }
    if (*p)
      return -1;
  }
  static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap) || h > 23 ||
      mi > 59 || sec > 59)
    return -1;
  /* days from the civil date (Howard Hinnant's algorithm), no locale/TZ */
  int yy = y - (mo <= 2);
  int era = yy / 400, yoe = yy - era * 400;
  int doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  int64_t days = (int64_t)era * 146097 + doe - 719468;
  *out = days * 86400 + h * 3600 + mi * 60 + sec - sign * (oh * 3600 + om * 60);
  if (exact)
    *exact = whole;
  return 0;
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
