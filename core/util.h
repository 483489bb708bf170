/*
 * util.h - small shared helpers: clean-text checks, the clock (injectable
 * for tests), and id generation.
 */
#ifndef TG_UTIL_H
#define TG_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * True iff s[0..len) is well-formed UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF) and, when allow_ctl is false, has no
 * C0 control char other than \t \n \r, no DEL and no NUL.
 */
bool tg_utf8_valid(const char *s, size_t len, bool allow_ctl);

/* Length of the well-formed UTF-8 sequence at s (avail > 0 bytes), or 0
 * when it is not one (RFC 3629 section 4). */
size_t tg_utf8_seq_len(const unsigned char *s, size_t avail);

/* Current time in unix seconds / milliseconds, or the test override. */
int64_t tg_now(void);
int64_t tg_now_ms(void);

/* Tests only: make tg_now()/tg_now_ms() return `ms` (0 restores the real
 * clock). Not thread-safe by design: set before starting threads. */
void tg_clock_override_ms(int64_t ms);

#define TG_ID_LEN 30 /* "api_" + 26 */

/*
 * New id "<prefix>_<ULID>": 48-bit ms timestamp + 80 random bits in
 * Crockford base32, so ids sort by creation time. prefix is 3 lowercase
 * letters; out holds TG_ID_LEN+1 bytes.
 */
void tg_id_new(const char *prefix, char out[TG_ID_LEN + 1]);

/* Format unix seconds as RFC 3339 UTC "2026-11-26T12:00:00Z" (21 bytes). */
void tg_time_format(int64_t t, char out[21]);

#endif
