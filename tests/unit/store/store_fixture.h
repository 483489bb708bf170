/*
 * store_fixture.h - what the store tests share: a fresh migrated store in
 * its own temp dir, its removal (database, WAL and shared-memory files),
 * and reading a whole file to check what SQLite really wrote.
 */
#ifndef TG_STORE_FIXTURE_H
#define TG_STORE_FIXTURE_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/store.h"

typedef struct store_fixture {
  char dir[64];
  char path[128]; /* the database file */
  bool have_dir;
} store_fixture_t;

/* Make /tmp/<tag>_XXXXXX and open a migrated store in it (aborts on failure:
 * a test that cannot set up has nothing to say). */
static inline tg_store_t *fixture_open(store_fixture_t *f, const char *tag) {
  snprintf(f->dir, sizeof(f->dir), "/tmp/%s_XXXXXX", tag);
  if (!mkdtemp(f->dir))
    abort();
  f->have_dir = true;
  snprintf(f->path, sizeof(f->path), "%s/t.db", f->dir);
  tg_store_options_t opt = {
      .path = f->path, .busy_timeout_ms = 2000, .mode = TG_STORE_OPEN_MIGRATE};
  tg_store_t *s = NULL;
  tg_problem_t p = {0};
  if (tg_store_open(&opt, &s, NULL, NULL, &p)) {
    fprintf(stderr, "open: %s\n", p.detail);
    abort();
  }
  return s;
}

/* Remove the database files and the dir (extra: other files in it, or NULL). */
static inline void fixture_remove(store_fixture_t *f, const char *const *extra) {
  char name[200];
  const char *suffix[] = {"", "-wal", "-shm"};
  if (!f->have_dir)
    return;
  for (int i = 0; i < 3; i++) {
    snprintf(name, sizeof(name), "%s%s", f->path, suffix[i]);
    unlink(name);
  }
  for (; extra && *extra; extra++) {
    snprintf(name, sizeof(name), "%s/%s", f->dir, *extra);
    unlink(name);
  }
  rmdir(f->dir);
  f->have_dir = false;
}

/* The whole file, malloc'd (caller frees), or NULL if it cannot be opened. */
static inline unsigned char *fixture_slurp(const char *file, size_t *len) {
  FILE *fp = fopen(file, "rb");
  *len = 0;
  if (!fp)
    return NULL;
  unsigned char *buf = NULL;
  size_t cap = 0;
  for (;;) {
    if (*len == cap) {
      cap = cap ? cap * 2 : 65536;
      unsigned char *nb = realloc(buf, cap);
      if (!nb)
        abort();
      buf = nb;
    }
    size_t n = fread(buf + *len, 1, cap - *len, fp);
    if (n == 0)
      break;
    *len += n;
  }
  fclose(fp);
  return buf;
}

#endif
