/*
 * tollgate.c - the operations CLI.
 *
 *   tollgate [settings] migrate
 *   tollgate [settings] status
 *   tollgate [settings] admin-token create --name NAME --scopes S[,S...] [--expires-in-days N]
 *   tollgate [settings] admin-token list
 *   tollgate [settings] admin-token revoke NAME|ID
 *   tollgate [settings] backup FILE
 *
 * Settings are the config keys (see --help), from the config file, the
 * environment and flags before the command word. Exit status: 0 done,
 * 1 the operation failed, 2 the command line was wrong.
 *
 * Secrets: a created token goes to stdout alone, once; everything else
 * goes to stderr, so `TOKEN=$(tollgate admin-token create ...)` works.
 */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/keys.h"
#include "core/report.h"
#include "core/store.h"
#include "core/tokens.h"
#include "core/util.h"

#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: tollgate [--config FILE] [--KEY VALUE ...] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  migrate                       create or upgrade the database; create the\n"
    "                                server secret on a fresh database\n"
    "  status                        schema version and entity counts\n"
    "  admin-token create --name NAME --scopes S[,S...] [--expires-in-days N]\n"
    "                                create an admin API token; prints it once\n"
    "                                (scopes: read, write, keys, reports, admin)\n"
    "  admin-token list              list admin tokens (never their secrets)\n"
    "  admin-token revoke NAME|ID    revoke an admin token\n"
    "  backup FILE                   consistent online copy of the database\n"
    "  usage export --from T --to T [--granularity minute|hour|day|month]\n"
    "               [--group-by DIM[,DIM...]] [--developer-id ID] [--app-id ID] [--key-id ID]\n"
    "               [--api-id ID] [--plan-id ID] [--subscription-id ID] [--status-class N]\n"
    "               [--format json|csv] [--output FILE]\n"
    "                                usage report (times RFC 3339 UTC or YYYY-MM-DD, [from, to));\n"
    "                                DIM: developer, app, key, api, plan, subscription,\n"
    "                                status_class\n"
    "  billing export --period YYYY-MM [--format json|csv] [--output FILE]\n"
    "                                priced usage per developer and subscription\n"
    "  usage compact                 compact minute rows into hours and days now and\n"
    "                                apply retention (tollgate-server does it on its own)\n"
    "\n"
    "options: --help, --version, --check-config (print the effective settings)\n";

static int fail(const tg_problem_t *p, int rc) {
  if (p->field[0])
    fprintf(stderr, "tollgate: %s: %s\n", p->field, p->detail[0] ? p->detail : tg_strerror(rc));
  else
    fprintf(stderr, "tollgate: %s\n", p->detail[0] ? p->detail : tg_strerror(rc));
  return EXIT_FAILURE;
}

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "tollgate: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n(see tollgate --help)\n");
  return EXIT_USAGE;
}

static int open_store(const tg_config_t *cfg, tg_store_open_mode_t mode, tg_store_t **s, int *from,
                      int *to, tg_problem_t *p) {
  tg_store_options_t opt = {
      .path = tg_config_str(cfg, "db_path"),
      .busy_timeout_ms = (int)tg_config_int(cfg, "store_busy_timeout"),
      .mode = mode,
  };
  return tg_store_open(&opt, s, from, to, p);
}

static int load_secret(const tg_config_t *cfg, tg_store_t *s, bool may_create, tg_secret_t *sec,
                       tg_problem_t *p) {
  return tg_server_secret(s, getenv("TOLLGATE_SECRET"), tg_config_str(cfg, "secret_file"),
                          may_create, sec, p);
}

/* Value of a per-command option: "--name=x" or "--name x". Returns 1 and
 * advances *i when argv[*i] is that option, 0 when it is not, -1 when its
 * value is missing. */
static int opt_value(int argc, char **argv, int *i, const char *name, const char **val) {
  size_t n = strlen(name);
  if (strncmp(argv[*i], name, n) != 0)
    return 0;
  if (argv[*i][n] == '=') {
    *val = argv[*i] + n + 1;
    return 1;
  }
  if (argv[*i][n] != '\0')
    return 0;
  if (*i + 1 >= argc)
    return -1;
  *val = argv[++*i];
  return 1;
}

static int cmd_migrate(const tg_config_t *cfg, int argc, char **argv) {
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  tg_secret_t sec;
  int from = 0, to = 0, rc;
  if (argc > 0)
    return usage_error("migrate: unexpected argument %s", argv[0]);
  if ((rc = open_store(cfg, TG_STORE_OPEN_MIGRATE, &s, &from, &to, &p)) ||
      (rc = load_secret(cfg, s, true, &sec, &p))) {
    tg_store_close(s);
    return fail(&p, rc);
  }
  sodium_memzero(&sec, sizeof(sec));
  if (from == to)
    fprintf(stderr, "%s: schema is up to date (version %d)\n", tg_config_str(cfg, "db_path"), to);
  else
    fprintf(stderr, "%s: schema migrated from version %d to %d\n", tg_config_str(cfg, "db_path"),
            from, to);
  tg_store_close(s);
  return EXIT_SUCCESS;
}

static int cmd_status(const tg_config_t *cfg, int argc, char **argv) {
  static const struct {
    tg_entity_t ent;
    const char *label;
  } counted[] = {
      {TG_ENT_API, "apis"},         {TG_ENT_TARGET, "targets"},
      {TG_ENT_PLAN, "plans"},       {TG_ENT_DEVELOPER, "developers"},
      {TG_ENT_APP, "apps"},         {TG_ENT_SUBSCRIPTION, "subscriptions"},
      {TG_ENT_KEY, "keys"},         {TG_ENT_ADMIN_TOKEN, "admin_tokens"},
      {TG_ENT_SESSION, "sessions"}, {TG_ENT_AUDIT, "audit_log"},
      {TG_ENT_MAIL, "mail_outbox"},
  };
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  int version = 0, rc;
  if (argc > 0)
    return usage_error("status: unexpected argument %s", argv[0]);
  if ((rc = open_store(cfg, TG_STORE_OPEN_READONLY, &s, NULL, NULL, &p)) ||
      (rc = tg_store_schema_version(s, &version)))
    goto out;
  printf("database       %s\n", tg_config_str(cfg, "db_path"));
  printf("backend        %s\n", tg_store_backend(s));
  printf("schema         %d (latest %d)\n", version, tg_store_schema_latest());
  for (size_t i = 0; i < sizeof(counted) / sizeof(counted[0]); i++) {
    int64_t n = 0;
    if ((rc = tg_store_count(s, counted[i].ent, NULL, 0, &n, &p)))
      goto out;
    printf("%-14s %lld\n", counted[i].label, (long long)n);
  }
out:
  tg_store_close(s);
  return rc ? fail(&p, rc) : EXIT_SUCCESS;
}

/* "read,write" -> ["read","write"]; NULL on an empty or malformed list. */
static json_t *parse_scopes(const char *list) {
  json_t *arr = *list ? json_array() : NULL;
  const char *c = list;
  while (arr && *c) {
    const char *comma = strchr(c, ',');
    size_t n = comma ? (size_t)(comma - c) : strlen(c);
    if (n == 0 || json_array_append_new(arr, json_stringn(c, n))) {
      json_decref(arr);
      return NULL;
    }
    c += n + (comma ? 1 : 0);
    if (comma && !*c) { /* trailing comma */
      json_decref(arr);
      return NULL;
    }
  }
  return arr;
}

static int token_create(const tg_config_t *cfg, int argc, char **argv) {
  const char *name = NULL, *scopes_arg = NULL, *days_arg = NULL;
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  tg_secret_t sec;
  json_t *scopes = NULL, *row = NULL;
  char token[TG_TOKEN_MAX_LEN + 1];
  int64_t expires = 0;
  int rc;
  for (int i = 0; i < argc; i++) {
    int r;
    if ((r = opt_value(argc, argv, &i, "--name", &name)) ||
        (r = opt_value(argc, argv, &i, "--scopes", &scopes_arg)) ||
        (r = opt_value(argc, argv, &i, "--expires-in-days", &days_arg))) {
      if (r < 0)
        return usage_error("admin-token create: %s needs a value", argv[i]);
      continue;
    }
    return usage_error("admin-token create: unknown argument %s", argv[i]);
  }
  if (!name)
    return usage_error("admin-token create: --name is required%s", "");
  if (!scopes_arg)
    return usage_error("admin-token create: --scopes is required (e.g. %s)", "read,write");
  if (!(scopes = parse_scopes(scopes_arg)))
    return usage_error("admin-token create: --scopes must be a comma-separated list, not \"%s\"",
                       scopes_arg);
  if (days_arg) {
    char *end;
    errno = 0;
    long long days = strtoll(days_arg, &end, 10);
    if (errno || end == days_arg || *end || days < 1 || days > 3650) {
      json_decref(scopes);
      return usage_error("admin-token create: --expires-in-days must be 1..3650, not \"%s\"",
                         days_arg);
    }
    expires = tg_now() + days * 86400;
  }
  if ((rc = open_store(cfg, TG_STORE_OPEN_CURRENT, &s, NULL, NULL, &p)) ||
      (rc = load_secret(cfg, s, false, &sec, &p)))
    goto out;
  rc = tg_admin_token_create(s, &sec, name, scopes, expires, token, &row, &p);
  sodium_memzero(&sec, sizeof(sec));
  if (rc)
    goto out;
  printf("%s\n", token);
  fflush(stdout);
  sodium_memzero(token, sizeof(token));
  fprintf(stderr, "admin token \"%s\" created (id %s, scopes %s); it is shown only once\n", name,
          json_string_value(json_object_get(row, "id")), scopes_arg);
out:
  json_decref(scopes);
  json_decref(row);
  tg_store_close(s);
  if (rc) {
    /* A name clash is the likely conflict: say so in the user's terms. */
    if (rc == TG_ECONFLICT && strcmp(p.field, "/name") == 0)
      fprintf(stderr, "tollgate: an admin token named \"%s\" already exists\n", name);
    else
      fail(&p, rc);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

static void print_time(int64_t t) {
  char buf[21];
  if (t <= 0) {
    printf("  %-20s", "-");
    return;
  }
  tg_time_format(t, buf);
  printf("  %-20s", buf);
}

static int token_list(const tg_config_t *cfg, int argc, char **argv) {
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  json_t *rows = NULL;
  char next[TG_ID_LEN + 1] = "", after[TG_ID_LEN + 1] = "";
  int rc;
  if (argc > 0)
    return usage_error("admin-token list: unexpected argument %s", argv[0]);
  if ((rc = open_store(cfg, TG_STORE_OPEN_READONLY, &s, NULL, NULL, &p)))
    goto out;
  printf("%-30s  %-20s  %-15s  %-8s  %-20s  %-20s  %-20s  %s\n", "ID", "NAME", "PREFIX", "STATUS",
         "CREATED", "EXPIRES", "LAST USED", "SCOPES");
  do {
    tg_list_query_t q = {.after = after[0] ? after : NULL, .limit = TG_LIST_MAX};
    if ((rc = tg_store_list(s, TG_ENT_ADMIN_TOKEN, &q, &rows, next, &p)))
      goto out;
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
      char *scopes = json_dumps(json_object_get(r, "scopes"), JSON_COMPACT);
      printf("%-30s  %-20s  %-15s  %-8s", json_string_value(json_object_get(r, "id")),
             json_string_value(json_object_get(r, "name")),
             json_string_value(json_object_get(r, "prefix")),
             json_string_value(json_object_get(r, "status")));
      print_time(json_integer_value(json_object_get(r, "created_at")));
      print_time(json_integer_value(json_object_get(r, "expires_at")));
      print_time(json_integer_value(json_object_get(r, "last_used_at")));
      printf("  %s\n", scopes ? scopes : "?");
      free(scopes);
    }
    json_decref(rows);
    rows = NULL;
    memcpy(after, next, sizeof(after));
  } while (next[0]);
out:
  json_decref(rows);
  tg_store_close(s);
  return rc ? fail(&p, rc) : EXIT_SUCCESS;
}

static int token_revoke(const tg_config_t *cfg, int argc, char **argv) {
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  json_t *row = NULL;
  int rc;
  if (argc != 1)
    return usage_error("admin-token revoke: give exactly one token NAME or ID%s", "");
  if ((rc = open_store(cfg, TG_STORE_OPEN_CURRENT, &s, NULL, NULL, &p)) ||
      (rc = tg_admin_token_revoke(s, argv[0], &row, &p)))
    goto out;
  fprintf(stderr, "admin token \"%s\" revoked\n", json_string_value(json_object_get(row, "name")));
out:
  json_decref(row);
  tg_store_close(s);
  if (rc == TG_ENOTFOUND) {
    fprintf(stderr, "tollgate: no admin token named or with id \"%s\"\n", argv[0]);
    return EXIT_FAILURE;
  }
  return rc ? fail(&p, rc) : EXIT_SUCCESS;
}

static int cmd_admin_token(const tg_config_t *cfg, int argc, char **argv) {
  if (argc < 1)
    return usage_error("admin-token: give a subcommand (create, list, revoke)%s", "");
  if (strcmp(argv[0], "create") == 0)
    return token_create(cfg, argc - 1, argv + 1);
  if (strcmp(argv[0], "list") == 0)
    return token_list(cfg, argc - 1, argv + 1);
  if (strcmp(argv[0], "revoke") == 0)
    return token_revoke(cfg, argc - 1, argv + 1);
  return usage_error("admin-token: unknown subcommand %s", argv[0]);
}

static int cmd_backup(const tg_config_t *cfg, int argc, char **argv) {
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  int rc;
  if (argc != 1)
    return usage_error("backup: give exactly one FILE%s", "");
  if ((rc = open_store(cfg, TG_STORE_OPEN_CURRENT, &s, NULL, NULL, &p)) ||
      (rc = tg_store_backup(s, argv[0], &p)))
    goto out;
  fprintf(stderr, "backup written to %s\n", argv[0]);
out:
  tg_store_close(s);
  return rc ? fail(&p, rc) : EXIT_SUCCESS;
}

/* ---- usage and billing exports ------------------------------------------ */

typedef struct kv {
  const char *name[16];
  const char *value[16];
  int n;
} kv_t;

static const char *kv_get(void *ctx, const char *name) {
  kv_t *kv = ctx;
  for (int i = 0; i < kv->n; i++)
    if (strcmp(kv->name[i], name) == 0)
      return kv->value[i];
  return NULL;
}

/* Write a report to `output` (a temporary file renamed at the end, so a
 * failed export leaves no partial file) or to stdout. */
static int write_report(tg_report_t *rep, const char *output, tg_problem_t *p) {
  char tmp[4096];
  FILE *f = stdout;
  if (output && strcmp(output, "-") != 0) {
    if (snprintf(tmp, sizeof(tmp), "%s.tmp-%ld", output, (long)getpid()) >= (int)sizeof(tmp))
      return tg_problem_set(p, TG_EINVAL, "output", "the file name is too long");
    if (!(f = fopen(tmp, "wx")))
      return tg_problem_set(p, TG_EIO, "output", "cannot create %s: %s", tmp, strerror(errno));
  }
  const char *data;
  size_t len;
  int rc;
  while ((rc = tg_report_read(rep, &data, &len, p)) == 1)
    if (len && fwrite(data, 1, len, f) != len) {
      rc = tg_problem_set(p, TG_EIO, "output", "write failed: %s", strerror(errno));
      break;
    }
  if (f == stdout)
    return fflush(stdout) == 0 || rc < 0 ? (rc < 0 ? rc : TG_OK)
                                         : tg_problem_set(p, TG_EIO, "output", "write failed");
  if (fclose(f) != 0 && rc >= 0)
    rc = tg_problem_set(p, TG_EIO, "output", "write failed: %s", strerror(errno));
  if (rc < 0) {
    unlink(tmp);
    return rc;
  }
  if (rename(tmp, output) != 0) {
    unlink(tmp);
    return tg_problem_set(p, TG_EIO, "output", "cannot rename to %s: %s", output, strerror(errno));
  }
  return TG_OK;
}

static int print_problems(const tg_problem_t *p, int rc) {
  if (p->nitems > 1) {
    for (int i = 0; i < p->nitems; i++)
      fprintf(stderr, "tollgate: %s: %s\n", p->items[i].field, p->items[i].detail);
    return EXIT_FAILURE;
  }
  return fail(p, rc);
}

static int usage_export(const tg_config_t *cfg, int argc, char **argv) {
  static const char *const opts[] = {
      "from",   "to",      "granularity",     "group-by",     "developer-id", "app-id", "key-id",
      "api-id", "plan-id", "subscription-id", "status-class", "format",       "output"};
  kv_t kv = {0};
  const char *output = NULL;
  for (int i = 0; i < argc; i++) {
    int hit = 0;
    for (size_t k = 0; k < sizeof(opts) / sizeof(opts[0]) && !hit; k++) {
      char flag[40];
      snprintf(flag, sizeof(flag), "--%s", opts[k]);
      const char *v = NULL;
      hit = opt_value(argc, argv, &i, flag, &v);
      if (hit < 0)
        return usage_error("usage export: %s needs a value", flag);
      if (hit && strcmp(opts[k], "output") == 0) {
        output = v;
      } else if (hit && kv.n < 16) {
        /* parameter names as in the admin API: group_by, app_id, ... */
        static char names[16][40];
        snprintf(names[kv.n], sizeof(names[kv.n]), "%s", opts[k]);
        for (char *c = names[kv.n]; *c; c++)
          if (*c == '-')
            *c = '_';
        kv.name[kv.n] = names[kv.n];
        kv.value[kv.n++] = v;
      }
    }
    if (!hit)
      return usage_error("usage export: unknown argument %s", argv[i]);
  }
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  tg_report_t *rep = NULL;
  tg_report_params_t rp;
  int rc;
  /* read-write: the report folds the usage journal into the ledger first */
  if ((rc = open_store(cfg, TG_STORE_OPEN_CURRENT, &s, NULL, NULL, &p)) ||
      (rc = tg_report_params_parse(s, kv_get, &kv, NULL, &rp, &p)) ||
      (rc = tg_report_open(s, &rp, &rep, &p)))
    goto out;
  rc = write_report(rep, output, &p);
out:
  tg_report_close(rep);
  tg_store_close(s);
  return rc ? print_problems(&p, rc) : EXIT_SUCCESS;
}

static int usage_compact(const tg_config_t *cfg, int argc, char **argv) {
  if (argc != 0)
    return usage_error("usage compact: unexpected argument %s", argv[0]);
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  int rc;
  tg_usage_retention_t ret = {tg_config_int(cfg, "usage_keep_minutes") / 1000,
                              tg_config_int(cfg, "usage_keep_hours") / 1000};
  tg_usage_compact_stats_t st = {0}, one;
  if ((rc = open_store(cfg, TG_STORE_OPEN_CURRENT, &s, NULL, NULL, &p)))
    goto out;
  do {
    if ((rc = tg_store_usage_compact(s, tg_now(), 60, &ret, 240, &one, &p)))
      goto out;
    st.hours += one.hours;
    st.days += one.days;
    st.minute_rows_deleted += one.minute_rows_deleted;
    st.hour_rows_deleted += one.hour_rows_deleted;
  } while (one.more);
  char a[21], b[21];
  tg_time_format(one.compacted_hours, a);
  tg_time_format(one.compacted_days, b);
  fprintf(stderr,
          "compacted %lld hours and %lld days (hours done before %s, days before %s); removed "
          "%lld minute rows and %lld hour rows\n",
          (long long)st.hours, (long long)st.days, a, b, (long long)st.minute_rows_deleted,
          (long long)st.hour_rows_deleted);
out:
  tg_store_close(s);
  return rc ? fail(&p, rc) : EXIT_SUCCESS;
}

static int cmd_usage(const tg_config_t *cfg, int argc, char **argv) {
  if (argc >= 1 && strcmp(argv[0], "export") == 0)
    return usage_export(cfg, argc - 1, argv + 1);
  if (argc >= 1 && strcmp(argv[0], "compact") == 0)
    return usage_compact(cfg, argc - 1, argv + 1);
  return usage_error("usage: give a subcommand (export, compact)%s", "");
}

static int cmd_billing(const tg_config_t *cfg, int argc, char **argv) {
  if (argc < 1 || strcmp(argv[0], "export") != 0)
    return usage_error("billing: give a subcommand (export)%s", "");
  const char *period = NULL, *format = NULL, *output = NULL;
  for (int i = 1; i < argc; i++) {
    int a = opt_value(argc, argv, &i, "--period", &period), b = 0, c = 0;
    if (!a)
      b = opt_value(argc, argv, &i, "--format", &format);
    if (!a && !b)
      c = opt_value(argc, argv, &i, "--output", &output);
    if (a < 0 || b < 0 || c < 0)
      return usage_error("billing export: %s needs a value", argv[i]);
    if (!a && !b && !c)
      return usage_error("billing export: unknown argument %s", argv[i]);
  }
  if (!period)
    return usage_error("billing export: --period YYYY-MM is required%s", "");
  if (format && strcmp(format, "json") != 0 && strcmp(format, "csv") != 0)
    return usage_error("billing export: --format must be json or csv, not %s", format);
  tg_problem_t p = {0};
  tg_store_t *s = NULL;
  tg_report_t *rep = NULL;
  int rc;
  if ((rc = open_store(cfg, TG_STORE_OPEN_CURRENT, &s, NULL, NULL, &p)) ||
      (rc = tg_billing_open(s, period,
                            format && strcmp(format, "csv") == 0 ? TG_REPORT_CSV : TG_REPORT_JSON,
                            tg_now(), tg_config_int(cfg, "billing_close_after") / 1000, &rep, &p)))
    goto out;
  rc = write_report(rep, output, &p);
out:
  tg_report_close(rep);
  tg_store_close(s);
  return rc ? fail(&p, rc) : EXIT_SUCCESS;
}

extern char **environ;

int main(int argc, char **argv) {
  static const struct {
    const char *name;
    int (*fn)(const tg_config_t *, int, char **);
  } commands[] = {
      {"migrate", cmd_migrate}, {"status", cmd_status}, {"admin-token", cmd_admin_token},
      {"backup", cmd_backup},   {"usage", cmd_usage},   {"billing", cmd_billing},
  };
  tg_config_t *cfg = NULL;
  tg_problem_t p = {0};
  tg_cli_t cli = {0};
  int rc = EXIT_FAILURE;
  if (tg_keys_init()) {
    fprintf(stderr, "tollgate: cannot initialise libsodium\n");
    return EXIT_FAILURE;
  }
  if (tg_config_new(&cfg)) {
    fprintf(stderr, "tollgate: out of memory\n");
    return EXIT_FAILURE;
  }
  if (tg_config_load(cfg, argc, argv, environ, true, &cli, &p)) {
    fail(&p, TG_ECONFIG);
    rc = EXIT_USAGE;
    goto out;
  }
  if ((rc = tg_config_meta("tollgate", TOLLGATE_VERSION, tg_store_schema_latest(), usage_text, &cli,
                           argc, argv, true)) >= 0)
    goto out;
  if (cli.check_config) {
    tg_config_dump(cfg, stdout);
    rc = EXIT_SUCCESS;
    goto out;
  }
  if (cli.argi >= argc) {
    fputs(usage_text, stderr);
    rc = EXIT_USAGE;
    goto out;
  }
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
    if (strcmp(argv[cli.argi], commands[i].name) == 0) {
      rc = commands[i].fn(cfg, argc - cli.argi - 1, argv + cli.argi + 1);
      goto out;
    }
  }
  rc = usage_error("unknown command %s", argv[cli.argi]);
out:
  tg_config_free(cfg);
  return rc;
}
