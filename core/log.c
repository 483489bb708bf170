/*
 * log.c - see log.h. Lines are built in a fixed buffer (truncated, never
 * split) and written with a single write(2).
 */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

#define LINE_MAX_BYTES 4096

static tg_log_level_t min_level = TG_LOG_INFO;
static bool json_format = true;
static const char *prog = "tollgate";

void tg_log_setup(const char *level, const char *format, const char *program) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++)
    if (level && strcmp(level, names[i]) == 0)
      min_level = (tg_log_level_t)i;
  json_format = !format || strcmp(format, "text") != 0;
  if (program)
    prog = program;
}

bool tg_log_enabled(tg_log_level_t level) {
  return level >= min_level;
}

typedef struct line {
  char buf[LINE_MAX_BYTES];
  size_t len;
} line_t;

static void put(line_t *l, const char *s, size_t n) {
  if (l->len + n > sizeof(l->buf) - 2)
    n = sizeof(l->buf) - 2 - l->len;
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void puts_(line_t *l, const char *s) {
  put(l, s, strlen(s));
}

/* JSON string escaping (RFC 8259 section 7); in text mode, control bytes
 * are escaped the same way so a value cannot forge a line. */
static void put_escaped(line_t *l, const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      put(l, esc, 2);
    } else if (c < 0x20 || c == 0x7f) {
      int n = snprintf(esc, sizeof(esc), "\\u%04x", c);
      put(l, esc, (size_t)n);
    } else {
      put(l, (const char *)&c, 1);
    }
  }
}

void tg_log(tg_log_level_t level, const char *msg, ...) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  if (!tg_log_enabled(level))
    return;
  line_t l = {.len = 0};
  char ts[21];
  tg_time_format(tg_now(), ts);
  va_list ap;
  va_start(ap, msg);
  if (json_format) {
    puts_(&l, "{\"time\":\"");
    puts_(&l, ts);
    puts_(&l, "\",\"level\":\"");
    puts_(&l, names[level]);
    puts_(&l, "\",\"program\":\"");
    put_escaped(&l, prog);
    puts_(&l, "\",\"msg\":\"");
    put_escaped(&l, msg);
    puts_(&l, "\"");
    const char *k;
    while ((k = va_arg(ap, const char *))) {
      const char *v = va_arg(ap, const char *);
      puts_(&l, ",\"");
      put_escaped(&l, k);
      puts_(&l, "\":\"");
      put_escaped(&l, v ? v : "");
      puts_(&l, "\"");
    }
    puts_(&l, "}");
  } else {
    puts_(&l, ts);
    puts_(&l, " ");
    puts_(&l, names[level]);
    puts_(&l, " ");
    put_escaped(&l, prog);
    puts_(&l, ": ");
    put_escaped(&l, msg);
    const char *k;
    while ((k = va_arg(ap, const char *))) {
      const char *v = va_arg(ap, const char *);
      puts_(&l, " ");
      put_escaped(&l, k);
      puts_(&l, "=");
      put_escaped(&l, v ? v : "");
    }
  }
  va_end(ap);
  l.buf[l.len++] = '\n';
  ssize_t w = write(STDERR_FILENO, l.buf, l.len);
  (void)w; /* nowhere to report a failed log write */
}
