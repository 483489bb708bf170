/*
 * throttle.h - failure counters with a fixed window, in memory, for login
 * throttling per account and per client address (ASVS 2.2.1) and for
 * limiting sign-up and reset mails per address.
 *
 * Memory is fixed at creation: keys are hashed (keyed BLAKE2b-128 with a
 * per-process random key, so nobody can aim collisions at a victim's
 * slot) into `slots` entries, 8 probes each; when all 8 are live, the one
 * whose window started first is reused. Flooding the table with other keys
 * can thus reset a counter early, which is why callers count both the
 * account and the address. One mutex; every call is O(1).
 */
#ifndef TG_THROTTLE_H
#define TG_THROTTLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct tg_throttle tg_throttle_t;

/* A table of `slots` counters (rounded up to a power of two, >= 64), or
 * NULL when out of memory. */
tg_throttle_t *tg_throttle_new(size_t slots);
void tg_throttle_free(tg_throttle_t *t); /* NULL is a no-op */

/*
 * 0 when `key` has fewer than `limit` failures in its current window
 * (`window` seconds from its first failure), else the seconds until that
 * window ends (>= 1).
 */
int64_t tg_throttle_wait(tg_throttle_t *t, const char *key, int64_t now, int64_t limit,
                         int64_t window);

/* Count one failure of `key`; returns the count in its window. */
int64_t tg_throttle_fail(tg_throttle_t *t, const char *key, int64_t now, int64_t window);

/* Forget `key` (a successful login clears its account's counter). */
void tg_throttle_clear(tg_throttle_t *t, const char *key);

#endif
