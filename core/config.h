/*
 * config.h - one configuration for every Tollgate binary.
 *
 * Sources, later ones winning:
 *   1. built-in defaults (the key table in config.c, printed by --help)
 *   2. the config file: --config PATH, else $TOLLGATE_CONFIG, else
 *      /etc/tollgate/tollgate.conf if it exists (an explicitly named file
 *      that is missing is an error; the default one may be absent)
 *   3. environment: TOLLGATE_<KEY in upper case>, e.g. TOLLGATE_DB_PATH
 *   4. command-line flags: --key=value or --key value (also --db-path:
 *      dashes and underscores are the same in flag names)
 *
 * File format, one setting a line:
 *
 *   | line                 | meaning                                     |
 *   |----------------------|---------------------------------------------|
 *   | `# text`, blank      | ignored (a # elsewhere is part of the value)|
 *   | `key = value`        | spaces around key and value are trimmed     |
 *   | `key = "va lue"`     | double quotes keep spaces; \" and \\ escape |
 *
 * Every key has a type; values are checked when set, and errors name the
 * key and, for files, the file and line. Unknown keys are errors. Lines
 * longer than TG_CONFIG_LINE_MAX, values longer than TG_CONFIG_VALUE_MAX,
 * invalid UTF-8 and NUL bytes are errors. A file that fails leaves the
 * config as it was before the call (all-or-nothing).
 *
 * Types:
 *   string    any UTF-8 text (no control chars)
 *   int       decimal integer within [min, max]
 *   bool      true/false/yes/no/on/off/1/0
 *   enum      one of the listed words
 *   duration  integer with unit ms|s|m|h (bare number = ms), stored as ms
 *   size      integer with optional K|M|G (powers of 1024), stored as bytes
 *   addr      HOST:PORT, HOST an IPv4 literal, [IPv6] literal or name,
 *             PORT 0..65535
 */
#ifndef TG_CONFIG_H
#define TG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"

#define TG_CONFIG_LINE_MAX     4096
#define TG_CONFIG_VALUE_MAX    1024
#define TG_CONFIG_DEFAULT_PATH "/etc/tollgate/tollgate.conf"

typedef enum tg_cfg_type {
  TG_CFG_STRING,
  TG_CFG_INT,
  TG_CFG_BOOL,
  TG_CFG_ENUM,
  TG_CFG_DURATION,
  TG_CFG_SIZE,
  TG_CFG_ADDR,
} tg_cfg_type_t;

typedef struct tg_cfg_key {
  const char *name; /* snake_case */
  tg_cfg_type_t type;
  const char *def;     /* default, as text in the key's own syntax */
  int64_t min, max;    /* int/duration/size bounds (in ms / bytes) */
  const char *choices; /* enum: words separated by '|' */
  bool secret;         /* redacted by tg_config_dump */
  const char *help;    /* one line */
} tg_cfg_key_t;

/* The key table, terminated by an entry with name == NULL. */
extern const tg_cfg_key_t tg_config_keys[];

typedef struct tg_config tg_config_t;

/* What tg_config_load found on the command line besides settings. */
typedef struct tg_cli {
  bool help;         /* --help or -h */
  bool version;      /* --version */
  bool check_config; /* --check-config */
  int argi;          /* index of the first positional argument in argv
                        (argc if none); a lone "--" ends flag parsing */
} tg_cli_t;

/* New config holding the defaults. TG_OK or TG_ENOMEM; *out NULL on error. */
int tg_config_new(tg_config_t **out);
void tg_config_free(tg_config_t *cfg); /* NULL is a no-op */

/*
 * Set one key from text (`source` names where it came from, for errors
 * and for tg_config_dump, e.g. "env TOLLGATE_DB_PATH"). TG_OK or TG_ECONFIG
 * with p->field = key. The string is copied.
 */
int tg_config_set(tg_config_t *cfg, const char *key, const char *value, const char *source,
                  tg_problem_t *p);

/* Parse a config file as described above. TG_OK, TG_EIO or TG_ECONFIG. */
int tg_config_load_file(tg_config_t *cfg, const char *path, tg_problem_t *p);

/* Apply every TOLLGATE_<KEY> in envp (NULL-terminated). TOLLGATE_CONFIG and
 * TOLLGATE_SECRET are not keys and are skipped; other unknown TOLLGATE_*
 * names are errors. */
int tg_config_load_env(tg_config_t *cfg, char *const *envp, tg_problem_t *p);

/*
 * The whole sequence: file (from argv/env/default), env, flags.
 * Flags may appear before or after positionals (getopt-like: parsing stops
 * at the first positional only if stop_at_positional is true, so that a
 * CLI can have per-command flags after the command word, e.g.
 * `tollgate admin-token create --name x`: then those are left to the
 * caller from cli->argi on).
 * Unknown flags are errors naming the flag.
 */
int tg_config_load(tg_config_t *cfg, int argc, char **argv, char *const *envp,
                   bool stop_at_positional, tg_cli_t *cli, tg_problem_t *p);

/* Typed getters. Calling one with an unknown key or a key of another
 * type is a programming error: it aborts. Strings are borrowed from cfg. */
const char *tg_config_str(const tg_config_t *cfg, const char *key);
int64_t tg_config_int(const tg_config_t *cfg, const char *key); /* int, duration (ms), size */
bool tg_config_bool(const tg_config_t *cfg, const char *key);

/* Print every key with its effective value and source, secrets as
 * "(redacted)", one "key = value  # source" line each (for --check-config). */
void tg_config_dump(const tg_config_t *cfg, FILE *out);

/* Print the key table (name, type, default, help) for --help. */
void tg_config_help(FILE *out);

/*
 * The meta flags every binary shares, handled after tg_config_load: with
 * positionals false a stray argument is refused; --help prints `usage`,
 * "settings:" and the key table; --version prints "<prog> <version>
 * (schema <schema>)". Returns the exit status to stop with (0, or 2 for a
 * stray argument), or -1 to carry on.
 */
int tg_config_meta(const char *prog, const char *version, int schema, const char *usage,
                   const tg_cli_t *cli, int argc, char **argv, bool positionals);

#endif
