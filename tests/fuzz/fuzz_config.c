/*
 * fuzz_config.c - arbitrary bytes as a config file: the parser must never
 * crash or overread, and a failed load must leave the config untouched
 * (all-or-nothing), which we check by comparing dumps.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/config.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static char *dump(const tg_config_t *cfg) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    abort();
  tg_config_dump(cfg, f);
  fclose(f);
  return buf;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  int fd = memfd_create("tollgate-fuzz.conf", MFD_CLOEXEC);
  if (fd < 0)
    return 0;
  if (size && write(fd, data, size) != (ssize_t)size) {
    close(fd);
    return 0;
  }
  char path[64];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  tg_config_t *cfg = NULL;
  if (tg_config_new(&cfg))
    abort();
  char *before = dump(cfg);
  tg_problem_t p = {0};
  int rc = tg_config_load_file(cfg, path, &p);
  if (rc != TG_OK) {
    char *after = dump(cfg);
    if (strcmp(before, after) != 0 || p.code == TG_OK)
      abort();
    free(after);
  }
  free(before);
  tg_config_free(cfg);
  close(fd);
  return 0;
}
