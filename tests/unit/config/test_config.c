/*
 * test_config.c - core/config: defaults, the file format and its errors,
 * environment, flags, precedence, every value type, dump and help.
 *
 * Files go to one mkdtemp directory under /tmp, removed at exit. No test
 * lets tg_config_load fall back to TG_CONFIG_DEFAULT_PATH: each passes
 * --config or TOLLGATE_CONFIG, so /etc/tollgate on the host does not matter.
 * Types the real key table does not use yet (int, bool, size, addr, secret
 * keys) are tested over a table of our own via tg__config_new_keys.
 */
#include "core/config.h"

#include <signal.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/tg_test.h"

/* config.c's test hook: a config over another key table. */
int tg__config_new_keys(const tg_cfg_key_t *keys, tg_config_t **out);

static const tg_cfg_key_t test_keys[] = {
    {.name = "name", .type = TG_CFG_STRING, .def = "", .help = "a string"},
    {.name = "count", .type = TG_CFG_INT, .def = "3", .min = -10, .max = 100, .help = "an int"},
    {.name = "big",
     .type = TG_CFG_INT,
     .def = "0",
     .min = INT64_MIN,
     .max = INT64_MAX,
     .help = "an unbounded int"},
    {.name = "verbose", .type = TG_CFG_BOOL, .def = "false", .help = "a bool"},
    {.name = "mode", .type = TG_CFG_ENUM, .def = "a", .choices = "a|bb|ccc", .help = "an enum"},
    {.name = "timeout",
     .type = TG_CFG_DURATION,
     .def = "1s",
     .min = 0,
     .max = INT64_MAX,
     .help = "a duration"},
    {.name = "short_timeout",
     .type = TG_CFG_DURATION,
     .def = "100ms",
     .min = 10,
     .max = 60000,
     .help = "a bounded duration"},
    {.name = "body_max",
     .type = TG_CFG_SIZE,
     .def = "1M",
     .min = 0,
     .max = INT64_MAX,
     .help = "a size"},
    {.name = "listen", .type = TG_CFG_ADDR, .def = "127.0.0.1:8080", .help = "an address"},
    {.name = "password", .type = TG_CFG_STRING, .def = "", .secret = true, .help = "a secret"},
    {.name = NULL},
};

/* ---- fixtures ------------------------------------------------------------ */

static char tmp_dir[64];
static char tmp_paths[128][160];
static int tmp_count;

static void tmp_cleanup(void) {
  for (int i = 0; i < tmp_count; i++)
    unlink(tmp_paths[i]);
  if (tmp_dir[0])
    rmdir(tmp_dir);
}

/* A path in the test directory (created on first use); removed at exit. */
static const char *tmp_path(const char *name) {
  if (!tmp_dir[0]) {
    snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/tg_config_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
      perror("mkdtemp");
      exit(2);
    }
    atexit(tmp_cleanup);
  }
  for (int i = 0; i < tmp_count; i++)
    if (strcmp(strrchr(tmp_paths[i], '/') + 1, name) == 0)
      return tmp_paths[i]; /* rewritten, not registered twice */
  if (tmp_count == (int)(sizeof(tmp_paths) / sizeof(tmp_paths[0]))) {
    fprintf(stderr, "too many temporary files\n");
    exit(2);
  }
  snprintf(tmp_paths[tmp_count], sizeof(tmp_paths[0]), "%s/%s", tmp_dir, name);
  return tmp_paths[tmp_count++];
}

static const char *write_file(const char *name, const char *data, size_t len) {
  const char *path = tmp_path(name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    perror(path);
    exit(2);
  }
  return path;
}

/* A file holding a string literal, NUL bytes included. */
#define CONF(name, lit) write_file(name, lit, sizeof(lit) - 1)

static tg_config_t *new_cfg(void) {
  tg_config_t *cfg = NULL;
  if (tg_config_new(&cfg) != TG_OK || !cfg) {
    fprintf(stderr, "tg_config_new failed\n");
    exit(2);
  }
  return cfg;
}

static tg_config_t *new_test_cfg(void) {
  tg_config_t *cfg = NULL;
  if (tg__config_new_keys(test_keys, &cfg) != TG_OK || !cfg) {
    fprintf(stderr, "tg__config_new_keys failed\n");
    exit(2);
  }
  return cfg;
}

/* tg_config_dump as a string (caller frees). */
static char *dump_str(const tg_config_t *cfg) {
  /* The stream's buffer pointer lives on the heap: gcc -O2 mistakes a
   * local one for a dangling pointer (-Wdangling-pointer). */
  struct {
    char *buf;
    size_t len;
  } *m = calloc(1, sizeof(*m));
  if (!m)
    exit(2);
  FILE *f = open_memstream(&m->buf, &m->len);
  if (!f)
    exit(2);
  tg_config_dump(cfg, f);
  fclose(f);
  char *buf = m->buf;
  free(m);
  return buf;
}

static char *help_str(void) {
  /* The stream's buffer pointer lives on the heap: gcc -O2 mistakes a
   * local one for a dangling pointer (-Wdangling-pointer). */
  struct {
    char *buf;
    size_t len;
  } *m = calloc(1, sizeof(*m));
  if (!m)
    exit(2);
  FILE *f = open_memstream(&m->buf, &m->len);
  if (!f)
    exit(2);
  tg_config_help(f);
  fclose(f);
  char *buf = m->buf;
  free(m);
  return buf;
}

#define ARGC(argv) ((int)(sizeof(argv) / sizeof((argv)[0])))

/* ---- defaults and the table ------------------------------------------------ */

TG_TEST(defaults) {
  tg_config_t *cfg = new_cfg();
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "./tollgate.db");
  ASSERT_STR_EQ(tg_config_str(cfg, "secret_file"), "./tollgate.secret");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "info");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_format"), "json");
  ASSERT_INT_EQ(tg_config_int(cfg, "store_busy_timeout"), 5000);
  tg_config_free(cfg);
  tg_config_free(NULL);
}

TG_TEST(key_table_is_sane) {
  tg_config_t *cfg = new_cfg(); /* parses every default, aborts on a bad one */
  int n = 0;
  for (const tg_cfg_key_t *k = tg_config_keys; k->name; k++, n++) {
    tg_problem_t p = {0};
    char var[160], *env[2] = {var, NULL};
    size_t i;
    ASSERT(k->help && k->help[0]);
    ASSERT(k->min <= k->max);
    for (const char *s = k->name; *s; s++)
      ASSERT((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_');
    for (const tg_cfg_key_t *o = tg_config_keys; o != k; o++)
      ASSERT(strcmp(o->name, k->name) != 0);
    /* each key is reachable as TOLLGATE_<KEY> */
    i = (size_t)snprintf(var, sizeof(var), "TOLLGATE_");
    for (const char *s = k->name; *s && i + 1 < sizeof(var); s++)
      var[i++] = (char)(*s >= 'a' && *s <= 'z' ? *s - 'a' + 'A' : *s);
    snprintf(var + i, sizeof(var) - i, "=%s", k->def);
    ASSERT_INT_EQ(tg_config_load_env(cfg, env, &p), TG_OK);
  }
  ASSERT(n >= 5);
  tg_config_free(cfg);
}

/* ---- file syntax ------------------------------------------------------------ */

TG_TEST(file_syntax) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  const char *path = CONF("syntax.conf", "\xEF\xBB\xBF# a comment\r\n"
                                         "\r\n"
                                         "   # an indented comment\n"
                                         "\t\n"
                                         "db_path =   /var/lib/tg.db # part of the value  \n"
                                         "secret_file=\"  spaced \\\"quoted\\\" \\\\ back \"\r\n"
                                         "log_level=debug\n"
                                         "  log_format\t=\ttext\t\n"
                                         "store_busy_timeout = 250ms");
  char *dump, want[256];

  ASSERT_INT_EQ(tg_config_load_file(cfg, path, &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "/var/lib/tg.db # part of the value");
  ASSERT_STR_EQ(tg_config_str(cfg, "secret_file"), "  spaced \"quoted\" \\ back ");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "debug");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_format"), "text");
  ASSERT_INT_EQ(tg_config_int(cfg, "store_busy_timeout"), 250);

  dump = dump_str(cfg);
  snprintf(want, sizeof(want), "log_level = debug  # %s:7\n", path);
  ASSERT_STR_CONTAINS(dump, want);
  snprintf(want, sizeof(want), "store_busy_timeout = 250ms  # %s:9\n", path);
  ASSERT_STR_CONTAINS(dump, want);
  free(dump);
  tg_config_free(cfg);
}

TG_TEST(file_quoted_values) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  const char *path = CONF("quoted.conf", "db_path = \"\"\r\n"
                                         "secret_file = \"# not a comment\"   \n"
                                         "log_level = \"warn\"\n");

  ASSERT_INT_EQ(tg_config_load_file(cfg, path, &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "");
  ASSERT_STR_EQ(tg_config_str(cfg, "secret_file"), "# not a comment");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "warn");
  tg_config_free(cfg);
}

TG_TEST(file_empty_or_only_comments) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};

  ASSERT_INT_EQ(tg_config_load_file(cfg, CONF("empty.conf", ""), &p), TG_OK);
  ASSERT_INT_EQ(tg_config_load_file(cfg, CONF("comments.conf", "# one\n\n#two"), &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "./tollgate.db");
  tg_config_free(cfg);
}

/* ---- file errors ------------------------------------------------------------- */

struct file_error_case {
  const char *name;
  const char *data;
  size_t len;
  int line;           /* expected in the detail as "PATH:LINE: " */
  const char *field;  /* expected p.field */
  const char *needle; /* expected somewhere in p.detail */
};

#define C(lit) lit, sizeof(lit) - 1

static const struct file_error_case file_errors[] = {
    {"no_equals", C("db_path = a\njust words\n"), 2, "",
     "expected key = value, got \"just words\""},
    {"empty_key", C("\n = x\n"), 2, "", "empty key"},
    {"unknown_key", C("# c\nnope = 1\n"), 2, "nope", "unknown key \"nope\""},
    {"duplicate", C("db_path = a\n# c\ndb_path = b\n"), 3, "db_path", "first set on line 1"},
    {"unterminated", C("db_path = \"abc\n"), 1, "db_path", "unterminated quoted value"},
    {"unterminated_at_eof", C("log_level = debug\ndb_path = \"abc"), 2, "db_path", "unterminated"},
    {"unterminated_escape", C("db_path = \"abc\\\"\n"), 1, "db_path", "unterminated"},
    {"text_after_quote", C("db_path = \"a\" b\n"), 1, "db_path",
     "text after the closing quote: \"b\""},
    {"comment_after_quote", C("db_path = \"a\" # c\n"), 1, "db_path", "text after the closing"},
    {"bad_escape", C("db_path = \"a\\nb\"\n"), 1, "db_path", "unknown escape \"\\\\n\""},
    {"bad_enum", C("log_level = verbose\n"), 1, "log_level",
     "log_level: \"verbose\" is not one of debug|info|warn|error"},
    {"enum_case", C("log_level = INFO\n"), 1, "log_level", "is not one of"},
    {"empty_enum", C("log_level =\n"), 1, "log_level", "log_level: empty value"},
    {"empty_quoted_enum", C("log_level = \"\"\n"), 1, "log_level", "empty value"},
    {"bad_duration", C("store_busy_timeout = 5x\n"), 1, "store_busy_timeout",
     "store_busy_timeout: \"5x\" is not a whole number with unit ms, s, m or h"},
    {"duration_with_space", C("store_busy_timeout = 5 s\n"), 1, "store_busy_timeout", "is not"},
    {"duration_fraction", C("store_busy_timeout = 1.5s\n"), 1, "store_busy_timeout", "is not"},
    {"duration_plus", C("store_busy_timeout = +5s\n"), 1, "store_busy_timeout", "is not"},
    {"negative_duration", C("store_busy_timeout = -5s\n"), 1, "store_busy_timeout",
     "\"-5s\" is negative"},
    {"duration_out_of_range", C("store_busy_timeout = 11m\n"), 1, "store_busy_timeout",
     "\"11m\" is out of range 0ms..10m"},
    {"duration_overflow", C("store_busy_timeout = 99999999999999999999\n"), 1, "store_busy_timeout",
     "is too large"},
    {"duration_unit_overflow", C("store_busy_timeout = 9223372036854775807h\n"), 1,
     "store_busy_timeout", "is too large"},
    {"control_char", C("db_path = \"a\tb\"\n"), 1, "db_path", "control character in \"a\\x09b\""},
    {"del_char", C("db_path = a\x7f\n"), 1, "db_path", "control character"},
    {"lone_cr", C("db_path = a\rb\n"), 1, "db_path", "control character in \"a\\x0db\""},
    {"invalid_utf8", C("db_path = caf\xc3\n"), 1, "db_path", "invalid UTF-8 in \"caf\\xc3\""},
    {"overlong_utf8", C("\n\ndb_path = \xc0\xaf\n"), 3, "db_path", "invalid UTF-8"},
    {"surrogate_utf8", C("db_path = \xed\xa0\x80\n"), 1, "db_path", "invalid UTF-8"},
    {"nul_byte", C("log_level = info\ndb_path = a\0b\n"), 2, "", "NUL byte"},
};

static void expect_file_error(const struct file_error_case *c) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char name[96], prefix[256];
  const char *path;
  int rc;

  snprintf(name, sizeof(name), "err_%s.conf", c->name);
  path = write_file(name, c->data, c->len);
  rc = tg_config_load_file(cfg, path, &p);
  if (rc != TG_ECONFIG || strcmp(p.field, c->field) != 0 || !strstr(p.detail, c->needle))
    fprintf(stderr, "  case %s: rc %d field \"%s\" detail \"%s\"\n", c->name, rc, p.field,
            p.detail);
  ASSERT_INT_EQ(rc, TG_ECONFIG);
  ASSERT_INT_EQ(p.code, TG_ECONFIG);
  ASSERT_STR_EQ(p.field, c->field);
  snprintf(prefix, sizeof(prefix), "%s:%d: ", path, c->line);
  ASSERT_INT_EQ(strncmp(p.detail, prefix, strlen(prefix)), 0);
  ASSERT_STR_CONTAINS(p.detail, c->needle);
  /* nothing of a failed file is applied */
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "./tollgate.db");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "info");
  tg_config_free(cfg);
}

TG_TEST(file_errors) {
  for (size_t i = 0; i < sizeof(file_errors) / sizeof(file_errors[0]); i++)
    expect_file_error(&file_errors[i]);
}

/* A buffer of `len` bytes: "PREFIX" then 'a's (caller frees). */
static char *filled(const char *prefix, size_t len, char fill) {
  char *s = malloc(len + 1);
  size_t n = strlen(prefix);
  if (!s)
    exit(2);
  memcpy(s, prefix, n);
  memset(s + n, fill, len - n);
  s[len] = '\0';
  return s;
}

TG_TEST(file_line_limit) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char *line = filled("#", TG_CONFIG_LINE_MAX, 'x'), *buf = malloc(3 * TG_CONFIG_LINE_MAX);
  const char *path;
  int n;

  /* exactly TG_CONFIG_LINE_MAX bytes, even with CRLF, is fine */
  n = snprintf(buf, 3 * TG_CONFIG_LINE_MAX, "log_level = warn\r\n%s\r\n", line);
  ASSERT_INT_EQ(tg_config_load_file(cfg, write_file("line_ok.conf", buf, (size_t)n), &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "warn");
  free(line);

  /* one more byte is not, even in a comment */
  line = filled("#", TG_CONFIG_LINE_MAX + 1, 'x');
  n = snprintf(buf, 3 * TG_CONFIG_LINE_MAX, "log_level = error\n%s\n", line);
  path = write_file("line_long_comment.conf", buf, (size_t)n);
  ASSERT_INT_EQ(tg_config_load_file(cfg, path, &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "");
  ASSERT_STR_CONTAINS(p.detail, ":2: line longer than 4096 bytes");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "warn");
  free(line);

  /* a long setting line names its key */
  tg_problem_clear(&p);
  line = filled("db_path = ", TG_CONFIG_LINE_MAX + 1, 'a');
  n = snprintf(buf, 3 * TG_CONFIG_LINE_MAX, "\n%s", line);
  path = write_file("line_long_value.conf", buf, (size_t)n);
  ASSERT_INT_EQ(tg_config_load_file(cfg, path, &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "db_path");
  ASSERT_STR_CONTAINS(p.detail, ":2: line longer than");
  free(line);
  free(buf);
  tg_config_free(cfg);
}

TG_TEST(file_value_limit) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char *line = filled("db_path = ", 10 + TG_CONFIG_VALUE_MAX, 'v');
  const char *path = write_file("value_ok.conf", line, strlen(line));

  ASSERT_INT_EQ(tg_config_load_file(cfg, path, &p), TG_OK);
  ASSERT_INT_EQ(strlen(tg_config_str(cfg, "db_path")), TG_CONFIG_VALUE_MAX);
  free(line);

  line = filled("db_path = ", 10 + TG_CONFIG_VALUE_MAX + 1, 'w');
  path = write_file("value_long.conf", line, strlen(line));
  ASSERT_INT_EQ(tg_config_load_file(cfg, path, &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "db_path");
  ASSERT_STR_CONTAINS(p.detail, ":1: db_path: value too long (1025 bytes, max 1024)");
  ASSERT_STR_CONTAINS(p.detail, "www...\""); /* quoted, cut short */
  ASSERT(strlen(p.detail) < 200);
  ASSERT_INT_EQ(tg_config_str(cfg, "db_path")[0], 'v');
  free(line);
  tg_config_free(cfg);
}

TG_TEST(file_size_limit) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  size_t max = 1024 * 1024;
  char *buf = malloc(max + 1);
  const char *path;

  /* comment lines of 64 bytes: exactly 1 MiB is accepted */
  for (size_t i = 0; i < max; i += 64) {
    memset(buf + i, '#', 63);
    buf[i + 63] = '\n';
  }
  ASSERT_INT_EQ(tg_config_load_file(cfg, write_file("big_ok.conf", buf, max), &p), TG_OK);
  buf[max] = '#';
  path = write_file("big.conf", buf, max + 1);
  ASSERT_INT_EQ(tg_config_load_file(cfg, path, &p), TG_ECONFIG);
  ASSERT_STR_CONTAINS(p.detail, path);
  ASSERT_STR_CONTAINS(p.detail, "larger than 1048576 bytes");
  free(buf);
  tg_config_free(cfg);
}

TG_TEST(file_all_or_nothing) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char *dump;

  ASSERT_INT_EQ(tg_config_load_file(cfg, CONF("first.conf", "log_format = text\n"), &p), TG_OK);
  ASSERT_INT_EQ(tg_config_load_file(cfg,
                                    CONF("partial.conf", "db_path = /a.db\n"
                                                         "log_level = debug\n"
                                                         "log_format = xml\n"
                                                         "store_busy_timeout = 1s\n"),
                                    &p),
                TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "log_format");
  ASSERT_STR_CONTAINS(p.detail, "partial.conf:3: log_format: \"xml\" is not one of json|text");
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "./tollgate.db");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "info");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_format"), "text"); /* from the earlier good file */
  ASSERT_INT_EQ(tg_config_int(cfg, "store_busy_timeout"), 5000);
  dump = dump_str(cfg);
  ASSERT_STR_CONTAINS(dump, "db_path = ./tollgate.db  # default\n");
  ASSERT_STR_CONTAINS(dump, "first.conf:1\n");
  ASSERT(!strstr(dump, "partial.conf"));
  free(dump);
  tg_config_free(cfg);
}

TG_TEST(file_unreadable) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  const char *missing = tmp_path("does-not-exist.conf");

  ASSERT_INT_EQ(tg_config_load_file(cfg, missing, &p), TG_EIO);
  ASSERT_INT_EQ(p.code, TG_EIO);
  ASSERT_STR_CONTAINS(p.detail, missing);
  ASSERT_STR_CONTAINS(p.detail, "No such file");

  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_config_load_file(cfg, tmp_dir, &p), TG_EIO);
  ASSERT_STR_CONTAINS(p.detail, tmp_dir);
  ASSERT_STR_CONTAINS(p.detail, "directory");
  tg_config_free(cfg);
}

/* ---- environment ----------------------------------------------------------------- */

TG_TEST(env_basic) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char *envp[] = {"PATH=/bin",
                  "TOLLGATEX=1",
                  "TOLLGATE_DB_PATH=/env/tollgate.db",
                  "TOLLGATE_CONFIG=/nonexistent/tollgate.conf",
                  "TOLLGATE_SECRET=00ff",
                  "TOLLGATE_LOG_LEVEL=warn",
                  "TOLLGATE_NO_EQUALS_SIGN",
                  NULL};
  char *dump;

  ASSERT_INT_EQ(tg_config_load_env(cfg, envp, &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "/env/tollgate.db");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "warn");
  dump = dump_str(cfg);
  ASSERT_STR_CONTAINS(dump, "db_path = /env/tollgate.db  # env TOLLGATE_DB_PATH\n");
  ASSERT_STR_CONTAINS(dump, "log_level = warn  # env TOLLGATE_LOG_LEVEL\n");
  free(dump);
  ASSERT_INT_EQ(tg_config_load_env(cfg, NULL, &p), TG_OK);
  tg_config_free(cfg);
}

TG_TEST(env_errors) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char *unknown[] = {"TOLLGATE_NOPE=1", NULL};
  char *lower[] = {"TOLLGATE_db_path=/x", NULL};
  char *bad[] = {"TOLLGATE_DB_PATH=/x", "TOLLGATE_LOG_LEVEL=loud", NULL};

  ASSERT_INT_EQ(tg_config_load_env(cfg, unknown, &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "TOLLGATE_NOPE");
  ASSERT_STR_CONTAINS(p.detail, "unknown environment variable TOLLGATE_NOPE");

  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_config_load_env(cfg, lower, &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "TOLLGATE_db_path");

  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_config_load_env(cfg, bad, &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "log_level");
  ASSERT_STR_CONTAINS(p.detail, "env TOLLGATE_LOG_LEVEL: log_level: \"loud\" is not one of");
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "./tollgate.db"); /* all or nothing */
  tg_config_free(cfg);
}

/* ---- the whole sequence ------------------------------------------------------------ */

TG_TEST(precedence) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  tg_cli_t cli;
  const char *path = CONF("prec.conf", "db_path = /file.db\n"
                                       "log_level = debug\n"
                                       "log_format = text\n"
                                       "store_busy_timeout = 1m\n");
  char config_var[256], *dump, want[256];
  char *envp[] = {config_var, "TOLLGATE_LOG_LEVEL=warn", "TOLLGATE_STORE_BUSY_TIMEOUT=2m", NULL};
  char *argv[] = {"tollgate", "--store-busy-timeout", "3m", NULL};

  snprintf(config_var, sizeof(config_var), "TOLLGATE_CONFIG=%s", path);
  ASSERT_INT_EQ(tg_config_load(cfg, ARGC(argv) - 1, argv, envp, false, &cli, &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "secret_file"), "./tollgate.secret"); /* default */
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "/file.db");              /* file */
  ASSERT_STR_EQ(tg_config_str(cfg, "log_format"), "text");               /* file */
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "warn");                /* env over file */
  ASSERT_INT_EQ(tg_config_int(cfg, "store_busy_timeout"), 180000);       /* flag over env */
  ASSERT_INT_EQ(cli.argi, 3);                                            /* argc: no positionals */
  ASSERT(!cli.help && !cli.version && !cli.check_config);

  dump = dump_str(cfg);
  ASSERT_STR_CONTAINS(dump, "secret_file = ./tollgate.secret  # default\n");
  snprintf(want, sizeof(want), "db_path = /file.db  # %s:1\n", path);
  ASSERT_STR_CONTAINS(dump, want);
  ASSERT_STR_CONTAINS(dump, "log_level = warn  # env TOLLGATE_LOG_LEVEL\n");
  ASSERT_STR_CONTAINS(dump, "store_busy_timeout = 3m  # flag --store-busy-timeout\n");
  free(dump);
  tg_config_free(cfg);
}

TG_TEST(flag_names) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  tg_cli_t cli;
  char *envp[] = {NULL, NULL};
  char config_var[256];
  char *argv[] = {"tollgate",
                  "--db-path",
                  "/a b.db",
                  "--log_level=warn",
                  "--log-format",
                  "text",
                  "--secret_file=/s",
                  "--store_busy-timeout=0",
                  NULL};
  char *dump;

  snprintf(config_var, sizeof(config_var), "TOLLGATE_CONFIG=%s", CONF("flags.conf", ""));
  envp[0] = config_var;
  ASSERT_INT_EQ(tg_config_load(cfg, ARGC(argv) - 1, argv, envp, true, &cli, &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "/a b.db");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "warn");
  ASSERT_STR_EQ(tg_config_str(cfg, "log_format"), "text");
  ASSERT_STR_EQ(tg_config_str(cfg, "secret_file"), "/s");
  ASSERT_INT_EQ(tg_config_int(cfg, "store_busy_timeout"), 0);
  ASSERT_INT_EQ(cli.argi, ARGC(argv) - 1);
  dump = dump_str(cfg);
  ASSERT_STR_CONTAINS(dump, "db_path = \"/a b.db\"  # flag --db-path\n");
  ASSERT_STR_CONTAINS(dump, "log_level = warn  # flag --log_level\n");
  ASSERT_STR_CONTAINS(dump, "secret_file = /s  # flag --secret_file\n");
  free(dump);
  tg_config_free(cfg);
}

struct flag_error_case {
  const char *args[4];
  const char *field;
  const char *needle;
};

static const struct flag_error_case flag_errors[] = {
    {{"--foo"}, "--foo", "unknown option --foo (see --help)"},
    {{"--foo=bar"}, "--foo", "unknown option --foo (see --help)"},
    {{"--db-path-x=1"}, "--db-path-x", "unknown option --db-path-x"},
    {{"--DB-PATH=1"}, "--DB-PATH", "unknown option"},
    {{"-x"}, "-x", "unknown option -x"},
    {{"--=x"}, "--", "unknown option --"},
    {{"--db-path"}, "db_path", "option --db-path needs a value"},
    {{"--db-path", "--log-level=warn"}, "db_path", "option --db-path needs a value"},
    {{"--config"}, "config", "option --config needs a value"},
    {{"--config="}, "config", "option --config needs a file path"},
    {{"--help=yes"}, "--help", "option --help takes no value"},
    {{"--log-level=loud"},
     "log_level",
     "flag --log-level: log_level: \"loud\" is not one of debug|info|warn|error"},
    {{"--store-busy-timeout", "-1s"}, "store_busy_timeout", "is negative"},
    {{"--db-path", "/ok", "--store-busy-timeout="}, "store_busy_timeout", "empty value"},
};

TG_TEST(flag_errors) {
  for (size_t i = 0; i < sizeof(flag_errors) / sizeof(flag_errors[0]); i++) {
    const struct flag_error_case *c = &flag_errors[i];
    tg_config_t *cfg = new_cfg();
    tg_problem_t p = {0};
    tg_cli_t cli;
    char config_var[256], *envp[] = {config_var, NULL}, *argv[6] = {"tollgate"};
    int argc = 1;

    snprintf(config_var, sizeof(config_var), "TOLLGATE_CONFIG=%s",
             CONF("flag_errors.conf", "db_path = /from-file\n"));
    for (int j = 0; j < 4 && c->args[j]; j++)
      argv[argc++] = (char *)c->args[j];
    ASSERT_INT_EQ(tg_config_load(cfg, argc, argv, envp, false, &cli, &p), TG_ECONFIG);
    if (strcmp(p.field, c->field) != 0 || !strstr(p.detail, c->needle))
      fprintf(stderr, "  case %s: field \"%s\" detail \"%s\"\n", c->args[0], p.field, p.detail);
    ASSERT_STR_EQ(p.field, c->field);
    ASSERT_STR_CONTAINS(p.detail, c->needle);
    /* a failed load changes nothing, not even what the file said */
    ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "./tollgate.db");
    tg_config_free(cfg);
  }
}

TG_TEST(meta_flags) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  tg_cli_t cli;
  char *broken_env[] = {"TOLLGATE_CONFIG=/nonexistent/x.conf", "TOLLGATE_LOG_LEVEL=loud", NULL};
  char *help1[] = {"tollgate", "-h", NULL};
  char *help2[] = {"tollgate", "--help", NULL};
  char *version[] = {"tollgate", "--version", "--config", "/nonexistent/y.conf", NULL};
  char *check[] = {"tollgate", "--check_config", NULL};
  char *check_ok[] = {"tollgate", "--check-config", "--config", NULL, NULL};

  /* --help and --version work whatever the file and env say */
  ASSERT_INT_EQ(tg_config_load(cfg, 2, help1, broken_env, false, &cli, &p), TG_OK);
  ASSERT(cli.help && !cli.version && !cli.check_config);
  ASSERT_INT_EQ(tg_config_load(cfg, 2, help2, broken_env, false, &cli, &p), TG_OK);
  ASSERT(cli.help);
  ASSERT_INT_EQ(tg_config_load(cfg, 4, version, broken_env, false, &cli, &p), TG_OK);
  ASSERT(cli.version && !cli.help);
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "info");

  /* --check-config loads everything, so it reports what is broken */
  ASSERT_INT_EQ(tg_config_load(cfg, 2, check, broken_env, false, &cli, &p), TG_EIO);
  ASSERT(cli.check_config);
  ASSERT_STR_CONTAINS(p.detail, "/nonexistent/x.conf");

  tg_problem_clear(&p);
  check_ok[3] = (char *)CONF("check.conf", "log_format = text\n");
  ASSERT_INT_EQ(tg_config_load(cfg, 4, check_ok, NULL, false, &cli, &p), TG_OK);
  ASSERT(cli.check_config && !cli.help && !cli.version);
  ASSERT_STR_EQ(tg_config_str(cfg, "log_format"), "text");
  tg_config_free(cfg);
}

TG_TEST(config_path_sources) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  tg_cli_t cli;
  const char *good = CONF("good.conf", "db_path = /good.db\n");
  const char *bad = CONF("bad.conf", "db_path = \"unterminated\n");
  const char *missing = tmp_path("missing.conf");
  char flag[256], env_bad[256], env_missing[256];
  char *envp_bad[] = {env_bad, NULL}, *envp_missing[] = {env_missing, NULL};
  char *argv_eq[] = {"tollgate", flag, NULL};
  char *argv_sep[] = {"tollgate", "--config", (char *)good, NULL};
  char *argv_missing[] = {"tollgate", "--config", (char *)missing, NULL};
  char *argv_none[] = {"tollgate", NULL};

  snprintf(flag, sizeof(flag), "--config=%s", good);
  snprintf(env_bad, sizeof(env_bad), "TOLLGATE_CONFIG=%s", bad);
  snprintf(env_missing, sizeof(env_missing), "TOLLGATE_CONFIG=%s", missing);

  /* --config wins over $TOLLGATE_CONFIG, in both spellings */
  ASSERT_INT_EQ(tg_config_load(cfg, 2, argv_eq, envp_bad, false, &cli, &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "/good.db");
  ASSERT_INT_EQ(tg_config_load(cfg, 3, argv_sep, envp_bad, false, &cli, &p), TG_OK);

  /* $TOLLGATE_CONFIG is used without --config */
  ASSERT_INT_EQ(tg_config_load(cfg, 1, argv_none, envp_bad, false, &cli, &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "db_path");
  ASSERT_STR_CONTAINS(p.detail, "bad.conf:1: db_path: unterminated");

  /* an explicitly named file must exist */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_config_load(cfg, 3, argv_missing, NULL, false, &cli, &p), TG_EIO);
  ASSERT_STR_CONTAINS(p.detail, missing);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_config_load(cfg, 1, argv_none, envp_missing, false, &cli, &p), TG_EIO);
  ASSERT_STR_CONTAINS(p.detail, missing);
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "/good.db");
  tg_config_free(cfg);
}

TG_TEST(positionals_stop) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  tg_cli_t cli;
  char config_var[256], *envp[] = {config_var, NULL};
  char *argv[] = {"tollgate", "--db-path", "x.db", "admin-token", "create", "--name", "y", NULL};
  char *dashdash[] = {"tollgate", "--log-level=warn", "--", "--db-path", "z", NULL};
  char *dash[] = {"tollgate", "-", "--bogus", NULL};

  snprintf(config_var, sizeof(config_var), "TOLLGATE_CONFIG=%s", CONF("stop.conf", ""));
  /* the command's own flags (--name) are left to the caller */
  ASSERT_INT_EQ(tg_config_load(cfg, ARGC(argv) - 1, argv, envp, true, &cli, &p), TG_OK);
  ASSERT_INT_EQ(cli.argi, 3);
  ASSERT_STR_EQ(argv[cli.argi], "admin-token");
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "x.db");

  ASSERT_INT_EQ(tg_config_load(cfg, ARGC(dashdash) - 1, dashdash, envp, true, &cli, &p), TG_OK);
  ASSERT_INT_EQ(cli.argi, 3);
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "warn");
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "x.db");

  ASSERT_INT_EQ(tg_config_load(cfg, ARGC(dash) - 1, dash, envp, true, &cli, &p), TG_OK);
  ASSERT_INT_EQ(cli.argi, 1);
  tg_config_free(cfg);
}

TG_TEST(positionals_interleaved) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  tg_cli_t cli;
  char config_var[256], *envp[] = {config_var, NULL};
  char *argv[] = {"tollgate", "a", "--db-path", "x.db", "b", "-", "--", "--c", NULL};
  char *none[] = {"tollgate", "--log-level", "debug", NULL};

  snprintf(config_var, sizeof(config_var), "TOLLGATE_CONFIG=%s", CONF("inter.conf", ""));
  ASSERT_INT_EQ(tg_config_load(cfg, ARGC(argv) - 1, argv, envp, false, &cli, &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), "x.db");
  /* flags first, then the positionals in their order (as GNU getopt) */
  ASSERT_INT_EQ(cli.argi, 4);
  ASSERT_STR_EQ(argv[0], "tollgate");
  ASSERT_STR_EQ(argv[1], "--db-path");
  ASSERT_STR_EQ(argv[2], "x.db");
  ASSERT_STR_EQ(argv[3], "--");
  ASSERT_STR_EQ(argv[4], "a");
  ASSERT_STR_EQ(argv[5], "b");
  ASSERT_STR_EQ(argv[6], "-");
  ASSERT_STR_EQ(argv[7], "--c");

  ASSERT_INT_EQ(tg_config_load(cfg, ARGC(none) - 1, none, envp, false, &cli, &p), TG_OK);
  ASSERT_INT_EQ(cli.argi, 3);
  ASSERT_STR_EQ(tg_config_str(cfg, "log_level"), "debug");
  tg_config_free(cfg);
}

TG_TEST(load_without_cli_out) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char config_var[256], *envp[] = {config_var, NULL}, *argv[] = {"tollgate", NULL};

  snprintf(config_var, sizeof(config_var), "TOLLGATE_CONFIG=%s", CONF("nocli.conf", ""));
  ASSERT_INT_EQ(tg_config_load(cfg, 1, argv, envp, false, NULL, &p), TG_OK);
  ASSERT_INT_EQ(tg_config_load(cfg, 1, argv, envp, false, NULL, NULL), TG_OK);
  tg_config_free(cfg);
}

/* ---- value types (over test_keys) ---------------------------------------------------- */

struct value_case {
  const char *key;
  const char *value;
  int64_t num;        /* expected number when needle is NULL */
  const char *needle; /* expected in the detail of the error, NULL if valid */
};

static const struct value_case value_cases[] = {
    /* int */
    {"count", "-10", -10, NULL},
    {"count", "100", 100, NULL},
    {"count", "007", 7, NULL},
    {"count", "101", 0, "count: \"101\" is out of range -10..100"},
    {"count", "-11", 0, "out of range"},
    {"count", "abc", 0, "count: \"abc\" is not an integer"},
    {"count", "1.5", 0, "is not an integer"},
    {"count", " 5", 0, "is not an integer"},
    {"count", "5 ", 0, "is not an integer"},
    {"count", "+5", 0, "is not an integer"},
    {"count", "0x10", 0, "is not an integer"},
    {"count", "-", 0, "is not an integer"},
    {"count", "", 0, "count: empty value (want an integer)"},
    {"big", "9223372036854775807", INT64_MAX, NULL},
    {"big", "-9223372036854775808", INT64_MIN, NULL},
    {"big", "9223372036854775808", 0, "is too large"},
    {"big", "-9223372036854775809", 0, "is too large"},
    {"big", "99999999999999999999999", 0, "is too large"},
    /* duration */
    {"timeout", "0", 0, NULL},
    {"timeout", "250", 250, NULL},
    {"timeout", "250ms", 250, NULL},
    {"timeout", "5s", 5000, NULL},
    {"timeout", "2m", 120000, NULL},
    {"timeout", "1h", 3600000, NULL},
    {"timeout", "9223372036854775807ms", INT64_MAX, NULL},
    {"timeout", "2562047788015h", INT64_C(2562047788015) * 3600000, NULL},
    {"timeout", "2562047788016h", 0, "is too large"},
    {"timeout", "9223372036854775807s", 0, "is too large"},
    {"timeout", "9223372036854775808", 0, "is too large"},
    {"timeout", "1d", 0, "\"1d\" is not a whole number with unit ms, s, m or h"},
    {"timeout", "5S", 0, "is not a whole number"},
    {"timeout", "ms", 0, "is not a whole number"},
    {"timeout", "5sec", 0, "is not a whole number"},
    {"timeout", "-1s", 0, "\"-1s\" is negative"},
    {"timeout", "-0", 0, "is negative"},
    {"short_timeout", "10", 10, NULL},
    {"short_timeout", "1m", 60000, NULL},
    {"short_timeout", "9", 0, "\"9\" is out of range 10ms..1m"},
    {"short_timeout", "61s", 0, "out of range"},
    /* size */
    {"body_max", "512", 512, NULL},
    {"body_max", "10K", 10240, NULL},
    {"body_max", "10k", 0, "is not a whole number of bytes"},
    {"body_max", "10m", 0, "is not a whole number of bytes"},
    {"body_max", "10M", 10485760, NULL},
    {"body_max", "1G", 1073741824, NULL},
    {"body_max", "8589934591G", INT64_C(8589934591) << 30, NULL},
    {"body_max", "8589934592G", 0, "is too large"},
    {"body_max", "1.5K", 0, "is not a whole number of bytes, optionally with K, M or G"},
    {"body_max", "10KB", 0, "is not a whole number of bytes"},
    {"body_max", "10T", 0, "is not a whole number of bytes"},
    {"body_max", "-1", 0, "is negative"},
    {"body_max", "", 0, "empty value"},
    /* bool */
    {"verbose", "true", 1, NULL},
    {"verbose", "false", 0, NULL},
    {"verbose", "yes", 1, NULL},
    {"verbose", "no", 0, NULL},
    {"verbose", "on", 1, NULL},
    {"verbose", "off", 0, NULL},
    {"verbose", "1", 1, NULL},
    {"verbose", "0", 0, NULL},
    {"verbose", "TRUE", 1, NULL},
    {"verbose", "Off", 0, NULL},
    {"verbose", "2", 0, "\"2\" is not true/false, yes/no, on/off or 1/0"},
    {"verbose", "y", 0, "is not true/false"},
    {"verbose", "truee", 0, "is not true/false"},
    {"verbose", "", 0, "empty value"},
    /* enum */
    {"mode", "a", 0, NULL},
    {"mode", "bb", 0, NULL},
    {"mode", "ccc", 0, NULL},
    {"mode", "b", 0, "\"b\" is not one of a|bb|ccc"},
    {"mode", "cc", 0, "is not one of"},
    {"mode", "A", 0, "is not one of"},
    {"mode", "a|bb", 0, "is not one of"},
    {"mode", "", 0, "empty value (want one of a|bb|ccc)"},
    /* addr */
    {"listen", "127.0.0.1:8080", 0, NULL},
    {"listen", "0.0.0.0:0", 0, NULL},
    {"listen", "[::1]:443", 0, NULL},
    {"listen", "[2001:db8::1]:65535", 0, NULL},
    {"listen", "localhost:80", 0, NULL},
    {"listen", "api.example.com:8443", 0, NULL},
    {"listen", "my_service:1", 0, NULL},
    {"listen", "127.0.0.1", 0, "\"127.0.0.1\" is not HOST:PORT (no :PORT)"},
    {"listen", ":80", 0, "(no host)"},
    {"listen", "::1:80", 0, "needs [brackets]"},
    {"listen", "[::1]", 0, "(no :PORT after ])"},
    {"listen", "[::1]80", 0, "(no :PORT after ])"},
    {"listen", "[::1:80", 0, "(no closing ])"},
    {"listen", "[zz]:1", 0, "(bad IPv6 address)"},
    {"listen", "[]:1", 0, "(bad IPv6 address)"},
    {"listen", "256.1.1.1:80", 0, "(bad IPv4 address)"},
    {"listen", "1.2.3:80", 0, "(bad IPv4 address)"},
    {"listen", "host:65536", 0, "(port not in 0..65535)"},
    {"listen", "host:", 0, "(port not in 0..65535)"},
    {"listen", "host:-1", 0, "(port not in 0..65535)"},
    {"listen", "host:80x", 0, "(port not in 0..65535)"},
    {"listen", "host:99999999999999999999", 0, "(port not in 0..65535)"},
    {"listen", "-host:80", 0, "(bad host name)"},
    {"listen", "host-:80", 0, "(bad host name)"},
    {"listen", "a..b:80", 0, "(bad host name)"},
    {"listen", "a b:80", 0, "(bad host name)"},
    {"listen", "", 0, "empty value (want HOST:PORT)"},
};

TG_TEST(value_types) {
  tg_config_t *cfg = new_test_cfg();

  for (size_t i = 0; i < sizeof(value_cases) / sizeof(value_cases[0]); i++) {
    const struct value_case *c = &value_cases[i];
    tg_problem_t p = {0};
    int rc = tg_config_set(cfg, c->key, c->value, "test", &p);
    if ((rc == TG_OK) != (c->needle == NULL) || (c->needle && !strstr(p.detail, c->needle)))
      fprintf(stderr, "  case %s = \"%s\": rc %d detail \"%s\"\n", c->key, c->value, rc, p.detail);
    if (!c->needle) {
      ASSERT_INT_EQ(rc, TG_OK);
      if (strcmp(c->key, "verbose") == 0)
        ASSERT_INT_EQ(tg_config_bool(cfg, c->key), c->num);
      else if (strcmp(c->key, "mode") == 0 || strcmp(c->key, "listen") == 0)
        ASSERT_STR_EQ(tg_config_str(cfg, c->key), c->value);
      else
        ASSERT_INT_EQ(tg_config_int(cfg, c->key), c->num);
    } else {
      char prefix[64];
      ASSERT_INT_EQ(rc, TG_ECONFIG);
      ASSERT_STR_EQ(p.field, c->key);
      snprintf(prefix, sizeof(prefix), "test: %s: ", c->key);
      ASSERT_INT_EQ(strncmp(p.detail, prefix, strlen(prefix)), 0);
      ASSERT_STR_CONTAINS(p.detail, c->needle);
    }
  }
  tg_config_free(cfg);
}

TG_TEST(failed_set_keeps_value) {
  tg_config_t *cfg = new_test_cfg();
  tg_problem_t p = {0};

  ASSERT_INT_EQ(tg_config_set(cfg, "count", "42", "test", &p), TG_OK);
  ASSERT_INT_EQ(tg_config_set(cfg, "count", "4200", "test", &p), TG_ECONFIG);
  ASSERT_INT_EQ(tg_config_int(cfg, "count"), 42);
  ASSERT_INT_EQ(tg_config_set(cfg, "count", "7", NULL, NULL), TG_OK);
  ASSERT_INT_EQ(tg_config_int(cfg, "count"), 7);
  tg_config_free(cfg);
}

TG_TEST(set_errors) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char *big = filled("", TG_CONFIG_VALUE_MAX + 1, 'd');

  ASSERT_INT_EQ(tg_config_set(cfg, "nope", "1", "flag --x", &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "nope");
  ASSERT_STR_EQ(p.detail, "flag --x: unknown key \"nope\"");

  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_config_set(cfg, "db_path", big, "somewhere", &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "db_path");
  ASSERT_STR_CONTAINS(p.detail, "somewhere: db_path: value too long (1025 bytes, max 1024)");
  big[TG_CONFIG_VALUE_MAX] = '\0';
  ASSERT_INT_EQ(tg_config_set(cfg, "db_path", big, "somewhere", &p), TG_OK);
  free(big);

  /* the bad value is quoted cut short: 64 bytes, then "..." */
  tg_problem_clear(&p);
  big = filled("", 200, 'z');
  ASSERT_INT_EQ(tg_config_set(cfg, "log_level", big, NULL, &p), TG_ECONFIG);
  big[64] = '\0';
  ASSERT_STR_CONTAINS(p.detail, big);
  ASSERT_STR_CONTAINS(p.detail, "zzz...\" is not one of");
  big[64] = 'z';
  big[65] = '\0';
  ASSERT(!strstr(p.detail, big));
  free(big);
  tg_config_free(cfg);
}

TG_TEST(utf8_strings) {
  static const char *const valid[] = {
      "caf\xc3\xa9",      /* é */
      "\xe2\x82\xac 5",   /* € */
      "\xf0\x9f\x98\x80", /* U+1F600 */
      "\xef\xbf\xbd",     /* U+FFFD */
      "\xf4\x8f\xbf\xbf", /* U+10FFFF, the last code point */
      "\xed\x9f\xbf",     /* U+D7FF, just below the surrogates */
      "\xc2\x80",         /* U+0080, the first 2-byte one */
      "",
  };
  static const char *const invalid[] = {
      "\xc0\xaf",         /* overlong '/' */
      "\xc1\xbf",         /* overlong */
      "\xe0\x80\xaf",     /* overlong 3-byte */
      "\xf0\x8f\xbf\xbf", /* overlong 4-byte */
      "\xed\xa0\x80",     /* U+D800 surrogate */
      "\xed\xbf\xbf",     /* U+DFFF surrogate */
      "\xf4\x90\x80\x80", /* U+110000 */
      "\xf5\x80\x80\x80", /* beyond */
      "\xff",
      "\x80",      /* lone continuation */
      "ab\xc3",    /* truncated at the end */
      "\xe2\x82",  /* truncated */
      "\xe2\x82x", /* bad continuation */
  };
  tg_config_t *cfg = new_cfg();

  for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
    tg_problem_t p = {0};
    ASSERT_INT_EQ(tg_config_set(cfg, "db_path", valid[i], "test", &p), TG_OK);
    ASSERT_STR_EQ(tg_config_str(cfg, "db_path"), valid[i]);
  }
  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
    tg_problem_t p = {0};
    if (tg_config_set(cfg, "secret_file", invalid[i], "test", &p) != TG_ECONFIG)
      fprintf(stderr, "  invalid case %zu accepted\n", i);
    ASSERT_INT_EQ(p.code, TG_ECONFIG);
    ASSERT_STR_EQ(p.field, "secret_file");
    ASSERT_STR_CONTAINS(p.detail, "invalid UTF-8");
    ASSERT_STR_CONTAINS(p.detail, "\\x"); /* bad bytes shown escaped, never raw */
  }
  ASSERT_STR_EQ(tg_config_str(cfg, "secret_file"), "./tollgate.secret");
  tg_config_free(cfg);
}

/* ---- flags over other types ---------------------------------------------------------- */

TG_TEST(bool_and_negative_flags) {
  tg_config_t *cfg = new_test_cfg();
  tg_problem_t p = {0};
  tg_cli_t cli;
  char config_var[256], *envp[] = {config_var, "TOLLGATE_BODY_MAX=2K", NULL};
  char *argv[] = {"tg", "--verbose", "--count", "-5", "pos", NULL};
  char *off[] = {"tg", "--verbose=off", NULL};
  char *bad[] = {"tg", "--verbose=maybe", NULL};

  snprintf(config_var, sizeof(config_var), "TOLLGATE_CONFIG=%s",
           CONF("types.conf", "listen = [::1]:9000\nbody_max = 1K\n"));
  ASSERT_INT_EQ(tg_config_load(cfg, ARGC(argv) - 1, argv, envp, true, &cli, &p), TG_OK);
  ASSERT(tg_config_bool(cfg, "verbose"));
  ASSERT_INT_EQ(tg_config_int(cfg, "count"), -5); /* "-5" is a value, not a flag */
  ASSERT_INT_EQ(cli.argi, 4);                     /* a bare bool flag took no argument */
  ASSERT_STR_EQ(tg_config_str(cfg, "listen"), "[::1]:9000");
  ASSERT_INT_EQ(tg_config_int(cfg, "body_max"), 2048);

  ASSERT_INT_EQ(tg_config_load(cfg, 2, off, envp, true, &cli, &p), TG_OK);
  ASSERT(!tg_config_bool(cfg, "verbose"));
  ASSERT_INT_EQ(tg_config_load(cfg, 2, bad, envp, true, &cli, &p), TG_ECONFIG);
  ASSERT_STR_EQ(p.field, "verbose");
  ASSERT_STR_CONTAINS(p.detail, "flag --verbose: verbose: \"maybe\" is not true/false");
  tg_config_free(cfg);
}

/* ---- output ------------------------------------------------------------------------- */

TG_TEST(dump_format) {
  tg_config_t *cfg = new_cfg();
  tg_problem_t p = {0};
  char *dump;

  dump = dump_str(cfg);
  ASSERT_STR_CONTAINS(dump, "db_path = ./tollgate.db  # default\n");
  ASSERT_STR_CONTAINS(dump, "log_format = json  # default\n");
  ASSERT_STR_CONTAINS(dump, "store_busy_timeout = 5s  # default\n");
  ASSERT(strncmp(dump, "db_path = ", 10) == 0); /* table order */
  free(dump);

  ASSERT_INT_EQ(tg_config_set(cfg, "db_path", "my \"db\" \\ file", "flag --db-path", &p), TG_OK);
  ASSERT_INT_EQ(tg_config_set(cfg, "secret_file", "", NULL, &p), TG_OK);
  dump = dump_str(cfg);
  ASSERT_STR_CONTAINS(dump, "db_path = \"my \\\"db\\\" \\\\ file\"  # flag --db-path\n");
  ASSERT_STR_CONTAINS(dump, "secret_file = \"\"  # program\n");
  free(dump);
  tg_config_free(cfg);
}

TG_TEST(dump_redacts_secrets) {
  tg_config_t *cfg = new_test_cfg();
  tg_problem_t p = {0};
  char *dump;

  ASSERT_INT_EQ(tg_config_set(cfg, "password", "hunter2", "env TOLLGATE_PASSWORD", &p), TG_OK);
  ASSERT_STR_EQ(tg_config_str(cfg, "password"), "hunter2");
  dump = dump_str(cfg);
  ASSERT_STR_CONTAINS(dump, "password = (redacted)  # env TOLLGATE_PASSWORD\n");
  ASSERT_STR_CONTAINS(dump, "listen = 127.0.0.1:8080  # default\n");
  ASSERT(!strstr(dump, "hunter2"));
  free(dump);
  tg_config_free(cfg);
}

TG_TEST(help_text) {
  char *help = help_str();
  const char *a, *b;

  for (const tg_cfg_key_t *k = tg_config_keys; k->name; k++) {
    ASSERT_STR_CONTAINS(help, k->name);
    ASSERT_STR_CONTAINS(help, k->help);
  }
  ASSERT_STR_CONTAINS(help, "KEY");
  ASSERT_STR_CONTAINS(help, "DEFAULT");
  ASSERT_STR_CONTAINS(help, "./tollgate.db");
  ASSERT_STR_CONTAINS(help, "debug|info|warn|error");
  ASSERT_STR_CONTAINS(help, "duration");
  ASSERT_STR_CONTAINS(help, "(0ms..10m)");
  ASSERT_STR_CONTAINS(help, "TOLLGATE_DB_PATH");
  ASSERT_STR_CONTAINS(help, "--db-path");
  ASSERT_STR_CONTAINS(help, "TOLLGATE_CONFIG");
  ASSERT_STR_CONTAINS(help, TG_CONFIG_DEFAULT_PATH);

  /* aligned: the help text of two keys starts in the same column */
  a = strstr(help, "\n  db_path ");
  b = strstr(help, "\n  log_level ");
  ASSERT(a && b);
  ASSERT_INT_EQ(strstr(a, "SQLite database file") - a, strstr(b, "least severe level") - b);
  free(help);
}

/* ---- getters ------------------------------------------------------------------------- */

/* Run fn in a child and expect it to abort. */
static void expect_abort(void (*fn)(const tg_config_t *), const tg_config_t *cfg) {
  int status = 0;
  pid_t pid;

  fflush(stdout);
  fflush(stderr);
  pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stderr))
      _exit(3);
    fn(cfg);
    _exit(0);
  }
  ASSERT_INT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT(WIFSIGNALED(status));
  ASSERT_INT_EQ(WTERMSIG(status), SIGABRT);
}

static void get_unknown(const tg_config_t *cfg) {
  (void)tg_config_str(cfg, "nope");
}

static void get_str_as_int(const tg_config_t *cfg) {
  (void)tg_config_int(cfg, "db_path");
}

static void get_duration_as_str(const tg_config_t *cfg) {
  (void)tg_config_str(cfg, "store_busy_timeout");
}

static void get_enum_as_bool(const tg_config_t *cfg) {
  (void)tg_config_bool(cfg, "log_level");
}

TG_TEST(getters_abort_on_misuse) {
  tg_config_t *cfg = new_cfg();
  expect_abort(get_unknown, cfg);
  expect_abort(get_str_as_int, cfg);
  expect_abort(get_duration_as_str, cfg);
  expect_abort(get_enum_as_bool, cfg);
  tg_config_free(cfg);
}

TG_TEST_MAIN()
