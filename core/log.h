/*
 * log.h - one line per event on stderr, JSON Lines (default) or text.
 * The level is checked before anything is formatted. Never log a secret:
 * keys and tokens by their display prefix only.
 */
#ifndef TG_LOG_H
#define TG_LOG_H

#include <stdbool.h>

typedef enum tg_log_level {
  TG_LOG_DEBUG = 0,
  TG_LOG_INFO = 1,
  TG_LOG_WARN = 2,
  TG_LOG_ERROR = 3,
} tg_log_level_t;

/* Configure once at start (not thread-safe against concurrent logging).
 * level/format as the config words ("info", "json"). */
void tg_log_setup(const char *level, const char *format, const char *program);

bool tg_log_enabled(tg_log_level_t level);

/*
 * Log `msg` with extra fields given as a NULL-terminated list of
 * key, value string pairs: tg_log(TG_LOG_INFO, "listening", "addr", a, NULL).
 * Values are escaped; one write(2) per line, so lines from threads never
 * interleave.
 */
void tg_log(tg_log_level_t level, const char *msg, ...) __attribute__((sentinel));

#endif
