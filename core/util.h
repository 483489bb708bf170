/*
 * util.h - small shared helpers: clean-text checks, the clock (injectable
 * for tests), and id generation.
 */
#ifndef TG_UTIL_H
#define TG_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/error.h"

/*
 * True iff s[0..len) is well-formed UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF) and, when allow_ctl is false, has no
 * C0 control char other than \t \n \r, no DEL and no NUL.
 */
bool tg_utf8_valid(const char *s, size_t len, bool allow_ctl);

/* Length of the well-formed UTF-8 sequence at s (avail > 0 bytes), or 0
 * when it is not one (RFC 3629 section 4). */
size_t tg_utf8_seq_len(const unsigned char *s, size_t avail);

/* The value of one hex digit (either case), or -1. Inline: the gateway's
 * HTTP parser uses it without linking core. */
static inline int tg_hex_digit(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Monotonic microseconds: intervals and deadlines, never shown or stored
 * (inline: the gateway's workers read it on every loop turn). */
static inline int64_t tg_mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Current time in unix seconds / milliseconds, or the test override. */
int64_t tg_now(void);
int64_t tg_now_ms(void);

/* Tests only: make tg_now()/tg_now_ms() return `ms` (0 restores the real
 * clock). Not thread-safe by design: set before starting threads. */
void tg_clock_override_ms(int64_t ms);
/* Tests only: a running clock moved by `ms` (TOLLGATE_TEST_NOW in
 * tollgate-server). Set before starting threads. */
void tg_clock_offset_ms(int64_t ms);

#define TG_ID_LEN 30 /* "api_" + 26 */

/*
 * New id "<prefix>_<ULID>": 48-bit ms timestamp + 80 random bits in
 * Crockford base32, so ids sort by creation time. prefix is 3 lowercase
 * letters; out holds TG_ID_LEN+1 bytes.
 */
void tg_id_new(const char *prefix, char out[TG_ID_LEN + 1]);

/* Format unix seconds as RFC 3339 UTC "2026-11-26T12:00:00Z" (21 bytes). */
void tg_time_format(int64_t t, char out[21]);

/*
 * Parse an RFC 3339 date-time ("2026-11-26T12:00:00Z",
 * "2026-11-26T13:00:00+01:00", fractional seconds allowed) or a full date
 * ("2026-11-26", meaning its UTC midnight) into unix seconds (fractions
 * dropped only when zero: *exact says whether the value was a whole
 * second). Returns 0, or -1 for anything else (every field range-checked).
 */
int tg_time_parse(const char *s, int64_t *out, bool *exact);

/* The UTC calendar month holding unix time t: [*start, *end). */
void tg_utc_month(int64_t t, int64_t *start, int64_t *end);

struct sockaddr;
struct sockaddr_storage;

/*
 * Resolve "HOST:PORT" or "[V6]:PORT" (as a config addr value) into a
 * socket address for listening: numeric hosts as given, names through
 * getaddrinfo (first result). TG_OK or TG_ECONFIG naming `key`.
 */
int tg_addr_resolve(const char *hostport, const char *key, struct sockaddr_storage *out,
                    unsigned *len, tg_problem_t *p);

/* True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
bool tg_addr_is_loopback(const struct sockaddr *sa);

/* "127.0.0.1:8001" / "[::1]:8001" for logs; out holds 64 bytes. */
void tg_addr_format(const struct sockaddr *sa, char out[64]);

#endif
