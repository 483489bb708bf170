/*
 * throttle.c - fixed-window failure counters (throttle.h).
 */
#include "core/throttle.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define PROBES 8

typedef struct slot {
  unsigned char h[16]; /* all zero: free */
  int64_t start;       /* window start, unix seconds */
  int64_t count;
} slot_t;

struct tg_throttle {
  pthread_mutex_t lock;
  unsigned char key[crypto_generichash_KEYBYTES];
  size_t mask;
  slot_t slots[];
};

tg_throttle_t *tg_throttle_new(size_t slots) {
  size_t n = 64;
  while (n < slots && n < ((size_t)1 << 24))
    n <<= 1;
  tg_throttle_t *t = calloc(1, sizeof(*t) + n * sizeof(slot_t));
  if (!t)
    return NULL;
  pthread_mutex_init(&t->lock, NULL);
  randombytes_buf(t->key, sizeof(t->key));
  t->mask = n - 1;
  return t;
}

void tg_throttle_free(tg_throttle_t *t) {
  if (!t)
    return;
  pthread_mutex_destroy(&t->lock);
  free(t);
}

static void hash_key(const tg_throttle_t *t, const char *key, unsigned char h[16]) {
  crypto_generichash(h, 16, (const unsigned char *)key, strlen(key), t->key, sizeof(t->key));
  h[0] |= 1; /* never all zero */
}

/* The slot holding h, or NULL; with `make`, a slot for it (lock held). */
static slot_t *find(tg_throttle_t *t, const unsigned char h[16], int64_t now, int64_t window,
                    int make) {
  size_t at;
  memcpy(&at, h + 4, sizeof(at));
  slot_t *victim = NULL;
  int victim_rank = 3; /* 0 free, 1 window over, 2 live: reuse the lowest */
  for (int i = 0; i < PROBES; i++) {
    slot_t *s = &t->slots[(at + (size_t)i) & t->mask];
    if (memcmp(s->h, h, 16) == 0)
      return s;
    int rank = s->h[0] == 0 ? 0 : (window > 0 && s->start + window <= now) ? 1 : 2;
    if (rank < victim_rank || (rank == 2 && victim_rank == 2 && s->start < victim->start)) {
      victim = s;
      victim_rank = rank;
    }
  }
  if (!make)
    return NULL;
  memcpy(victim->h, h, 16);
  victim->start = now;
  victim->count = 0;
  return victim;
}

int64_t tg_throttle_wait(tg_throttle_t *t, const char *key, int64_t now, int64_t limit,
                         int64_t window) {
  unsigned char h[16];
  int64_t wait = 0;
  hash_key(t, key, h);
  pthread_mutex_lock(&t->lock);
  slot_t *s = find(t, h, now, window, 0);
  if (s && s->start + window > now && s->count >= limit)
    wait = s->start + window - now;
  pthread_mutex_unlock(&t->lock);
  return wait;
}

int64_t tg_throttle_fail(tg_throttle_t *t, const char *key, int64_t now, int64_t window) {
  unsigned char h[16];
  hash_key(t, key, h);
  pthread_mutex_lock(&t->lock);
  slot_t *s = find(t, h, now, window, 1);
  if (s->start + window <= now) {
    s->start = now;
    s->count = 0;
  }
  int64_t n = ++s->count;
  pthread_mutex_unlock(&t->lock);
  return n;
}

void tg_throttle_clear(tg_throttle_t *t, const char *key) {
  unsigned char h[16];
  hash_key(t, key, h);
  pthread_mutex_lock(&t->lock);
  slot_t *s = find(t, h, 0, 0, 0);
  if (s)
    memset(s, 0, sizeof(*s));
  pthread_mutex_unlock(&t->lock);
}
