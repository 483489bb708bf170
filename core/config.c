/*
 * config.c - the key table and the loaders behind config.h.
 *
 * A tg_config_t is an array of values parallel to its key table (normally
 * tg_config_keys; tests pass their own through tg__config_new_keys). Each
 * value keeps the number it parsed to (int/bool/duration/size), its text as
 * given (what string getters return and what tg_config_dump prints, so the
 * dump reads like the input) and where it came from.
 *
 * Invariants:
 *   - every stored value passed its key's check, so getters cannot meet a
 *     malformed value; they fail only on misuse (unknown key, wrong type),
 *     and then abort;
 *   - every value owns its text and its source string;
 *   - the loaders (file, env, the whole command-line sequence) work on a
 *     copy and adopt it only once everything succeeded: a failed call leaves
 *     the config as it was;
 *   - every input has a hard maximum: a file CFG_FILE_MAX bytes, a line
 *     TG_CONFIG_LINE_MAX, a value TG_CONFIG_VALUE_MAX; bad values are quoted
 *     in errors escaped and cut to CFG_QUOTE_MAX bytes, so a detail is safe to
 *     print or put in JSON whatever the input was.
 *
 * Not thread-safe while loading; concurrent reads of a loaded config are.
 */
#include "core/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

#define CFG_FILE_MAX  (1024 * 1024)
#define CFG_QUOTE_MAX 64
/* Worst case: every input byte escaped as \xNN, plus quotes, "..." and NUL. */
#define CFG_QUOTE_BUF      (CFG_QUOTE_MAX * 4 + 8)
#define CFG_ENV_PREFIX     "TOLLGATE_"
#define CFG_ENV_PREFIX_LEN (sizeof(CFG_ENV_PREFIX) - 1)

/*
 * The one place a setting is declared: its name is also its flag (--name,
 * dashes allowed) and its environment variable (TOLLGATE_NAME). Defaults are
 * written in the key's own syntax and parsed by tg_config_new, so a bad
 * default aborts at the first start rather than misbehaving later.
 * Numeric keys must state both bounds (in ms for durations, bytes for sizes).
 */
const tg_cfg_key_t tg_config_keys[] = {
    {
        .name = "db_path",
        .type = TG_CFG_STRING,
        .def = "./tollgate.db",
        .help = "SQLite database file",
    },
    {
        .name = "secret_file",
        .type = TG_CFG_STRING,
        .def = "./tollgate.secret",
        .help = "file holding the 32-byte server secret (hex); created at first migrate",
    },
    {
        .name = "log_level",
        .type = TG_CFG_ENUM,
        .def = "info",
        .choices = "debug|info|warn|error",
        .help = "least severe level that is logged",
    },
    {
        .name = "log_format",
        .type = TG_CFG_ENUM,
        .def = "json",
        .choices = "json|text",
        .help = "log line format",
    },
    {
        .name = "store_busy_timeout",
        .type = TG_CFG_DURATION,
        .def = "5s",
        .min = 0,
        .max = 600000,
        .help = "how long a store call waits for a lock",
    },
    /* tollgate-server: the admin REST API */
    {
        .name = "admin_listen",
        .type = TG_CFG_ADDR,
        .def = "127.0.0.1:8001",
        .help = "admin API address (port 0: any free port, printed at start)",
    },
    {
        .name = "admin_allow_remote",
        .type = TG_CFG_BOOL,
        .def = "false",
        .help = "allow a non-loopback admin_listen without TLS (not recommended)",
    },
    {
        .name = "admin_tls_cert",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "PEM certificate (chain) file: serve the admin API over HTTPS",
    },
    {
        .name = "admin_tls_key",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "PEM private key file for admin_tls_cert",
    },
    {
        .name = "admin_threads",
        .type = TG_CFG_INT,
        .def = "0",
        .min = 0,
        .max = 256,
        .help = "admin API worker threads (0: one per core)",
    },
    {
        .name = "admin_max_body",
        .type = TG_CFG_SIZE,
        .def = "5M",
        .min = 1024,
        .max = 64LL * 1024 * 1024,
        .help = "largest admin API request body (413 above)",
    },
    {
        .name = "admin_timeout",
        .type = TG_CFG_DURATION,
        .def = "30s",
        .min = 1000,
        .max = 3600000,
        .help = "idle connections and slow clients are closed after this",
    },
    {
        .name = "admin_max_connections",
        .type = TG_CFG_INT,
        .def = "1024",
        .min = 1,
        .max = 100000,
        .help = "admin API connections at once",
    },
    {
        .name = "admin_per_ip_connections",
        .type = TG_CFG_INT,
        .def = "64",
        .min = 1,
        .max = 100000,
        .help = "admin API connections at once from one client address",
    },
    {
        .name = "drain_timeout",
        .type = TG_CFG_DURATION,
        .def = "10s",
        .min = 0,
        .max = 600000,
        .help = "on SIGTERM, how long in-flight requests may take to finish",
    },
    {
        .name = "usage_keep_minutes",
        .type = TG_CFG_DURATION,
        .def = "168h",
        .min = 0,
        .max = INT64_C(100) * 366 * 86400000,
        .help = "keep minute usage rows this long once compacted into hours (0: forever)",
    },
    {
        .name = "usage_keep_hours",
        .type = TG_CFG_DURATION,
        .def = "2160h",
        .min = 0,
        .max = INT64_C(100) * 366 * 86400000,
        .help = "keep hourly usage rows this long once compacted into days (0: forever; days are "
                "kept forever)",
    },
    {
        .name = "usage_compact_interval",
        .type = TG_CFG_DURATION,
        .def = "60s",
        .min = 100,
        .max = 3600000,
        .help = "how often tollgate-server compacts usage rows and applies retention",
    },
    {
        .name = "billing_close_after",
        .type = TG_CFG_DURATION,
        .def = "24h",
        .min = 0,
        .max = INT64_C(90) * 86400000,
        .help = "a month's billing closes (and is kept, byte-identical) this long after it ends",
    },
    /* tollgate-server: the developer portal */
    {
        .name = "portal_enabled",
        .type = TG_CFG_BOOL,
        .def = "true",
        .help = "serve the developer portal (a second daemon of tollgate-server)",
    },
    {
        .name = "portal_listen",
        .type = TG_CFG_ADDR,
        .def = "0.0.0.0:8002",
        .help = "developer portal address (port 0: any free port, logged at start)",
    },
    {
        .name = "portal_public_url",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "the portal's URL as developers reach it, for links in emails (default: "
                "http(s)://HOST:PORT of portal_listen)",
    },
    {
        .name = "portal_gateway_url",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "the gateway's URL as developers reach it, shown in the portal and in the "
                "servers of the API documents it serves",
    },
    {
        .name = "portal_tls_cert",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "PEM certificate (chain) file: serve the portal over HTTPS (cookies get Secure)",
    },
    {
        .name = "portal_tls_key",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "PEM private key file for portal_tls_cert",
    },
    {
        .name = "portal_secure_cookies",
        .type = TG_CFG_BOOL,
        .def = "false",
        .help = "mark cookies Secure although the portal speaks plain HTTP (TLS ends at a proxy "
                "in front); always on with portal_tls_cert",
    },
    {
        .name = "portal_threads",
        .type = TG_CFG_INT,
        .def = "0",
        .min = 0,
        .max = 256,
        .help = "portal worker threads (0: one per core)",
    },
    {
        .name = "portal_max_body",
        .type = TG_CFG_SIZE,
        .def = "64K",
        .min = 1024,
        .max = 1024 * 1024,
        .help = "largest portal form submission (413 above)",
    },
    {
        .name = "portal_timeout",
        .type = TG_CFG_DURATION,
        .def = "30s",
        .min = 1000,
        .max = 3600000,
        .help = "idle portal connections and slow clients are closed after this",
    },
    {
        .name = "portal_max_connections",
        .type = TG_CFG_INT,
        .def = "1024",
        .min = 1,
        .max = 100000,
        .help = "portal connections at once",
    },
    {
        .name = "portal_per_ip_connections",
        .type = TG_CFG_INT,
        .def = "64",
        .min = 1,
        .max = 100000,
        .help = "portal connections at once from one client address",
    },
    {
        .name = "portal_web_dir",
        .type = TG_CFG_STRING,
        .def = TOLLGATE_WEB_DIR,
        .help = "the portal's templates/, css/, js/ and static/ (read once at start)",
    },
    {
        .name = "portal_signup",
        .type = TG_CFG_ENUM,
        .def = "verify",
        .choices = "open|verify|approval",
        .help = "sign-up: open (active at once), verify (after the emailed link), approval (an "
                "operator approves; POST /developers/{id}/approve)",
    },
    {
        .name = "portal_session_idle",
        .type = TG_CFG_DURATION,
        .def = "30m",
        .min = 60000,
        .max = INT64_C(30) * 86400000,
        .help = "a portal session ends after this long without a request",
    },
    {
        .name = "portal_session_absolute",
        .type = TG_CFG_DURATION,
        .def = "12h",
        .min = 60000,
        .max = INT64_C(90) * 86400000,
        .help = "a portal session ends this long after sign-in, active or not",
    },
    {
        .name = "portal_token_ttl",
        .type = TG_CFG_DURATION,
        .def = "1h",
        .min = 60000,
        .max = INT64_C(7) * 86400000,
        .help = "how long email verification and password reset links work",
    },
    {
        .name = "portal_login_max_failures",
        .type = TG_CFG_INT,
        .def = "5",
        .min = 1,
        .max = 1000,
        .help = "failed sign-ins per account per portal_login_window before it waits",
    },
    {
        .name = "portal_login_max_failures_per_addr",
        .type = TG_CFG_INT,
        .def = "20",
        .min = 1,
        .max = 100000,
        .help = "failed sign-ins per client address per portal_login_window before it waits",
    },
    {
        .name = "portal_login_window",
        .type = TG_CFG_DURATION,
        .def = "15m",
        .min = 1000,
        .max = 86400000,
        .help = "the window of the sign-in throttles",
    },
    {
        .name = "portal_mail_per_addr",
        .type = TG_CFG_INT,
        .def = "10",
        .min = 1,
        .max = 100000,
        .help = "sign-ups and reset requests per client address per hour (each may send mail)",
    },
    /* tollgate-server: delivering the portal's mail outbox */
    {
        .name = "mail_smtp_host",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "SMTP relay that delivers the portal's mail (empty: mail stays in the outbox, "
                "listed by the admin API at GET /mail)",
    },
    {
        .name = "mail_smtp_port",
        .type = TG_CFG_INT,
        .def = "25",
        .min = 1,
        .max = 65535,
        .help = "the SMTP relay's port",
    },
    {
        .name = "mail_from",
        .type = TG_CFG_STRING,
        .def = "portal@localhost",
        .help = "the sender address of the portal's mail",
    },
    {
        .name = "mail_helo",
        .type = TG_CFG_STRING,
        .def = "localhost",
        .help = "the name tollgate-server gives in EHLO, and in Message-IDs",
    },
    {
        .name = "mail_interval",
        .type = TG_CFG_DURATION,
        .def = "2s",
        .min = 100,
        .max = 3600000,
        .help = "how often queued mail is handed to the relay",
    },
    {
        .name = "mail_timeout",
        .type = TG_CFG_DURATION,
        .def = "10s",
        .min = 100,
        .max = 300000,
        .help = "how long the relay may take to answer one step of SMTP",
    },
    {
        .name = "mail_max_attempts",
        .type = TG_CFG_INT,
        .def = "10",
        .min = 1,
        .max = 1000,
        .help = "deliveries tried (one per mail_interval) before a message is marked failed",
    },
    /* tollgate-gateway */
    {
        .name = "gateway_listen",
        .type = TG_CFG_ADDR,
        .def = "0.0.0.0:8000",
        .help = "gateway proxy address (port 0: any free port, logged at start)",
    },
    {
        .name = "gateway_workers",
        .type = TG_CFG_INT,
        .def = "0",
        .min = 0,
        .max = 256,
        .help = "gateway worker threads, each with its own epoll loop (0: one per core)",
    },
    {
        .name = "gateway_io_uring",
        .type = TG_CFG_BOOL,
        .def = "true",
        .help = "send each event batch's requests to the upstreams in one io_uring call (off, or "
                "a kernel without io_uring: one send() each)",
    },
    {
        .name = "gateway_tls_listen",
        .type = TG_CFG_ADDR,
        .def = "0.0.0.0:8443",
        .help = "gateway HTTPS address, used when gateway_tls_certs is set",
    },
    {
        .name = "gateway_tls_certs",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "CERT.pem:KEY.pem[,CERT:KEY...]: serve HTTPS; SNI picks the matching one",
    },
    {
        .name = "gateway_upstream_ca",
        .type = TG_CFG_STRING,
        .def = "",
        .help = "PEM CA bundle for https:// upstreams (default: the system store)",
    },
    {
        .name = "status_listen",
        .type = TG_CFG_ADDR,
        .def = "127.0.0.1:8100",
        .help = "gateway status address: /health and Prometheus /metrics",
    },
    {
        .name = "gateway_max_connections",
        .type = TG_CFG_INT,
        .def = "10000",
        .min = 1,
        .max = 1000000,
        .help = "client connections at once, over all workers",
    },
    {
        .name = "gateway_max_line",
        .type = TG_CFG_SIZE,
        .def = "8K",
        .min = 256,
        .max = 1024 * 1024,
        .help = "longest request line (414 above)",
    },
    {
        .name = "gateway_max_head",
        .type = TG_CFG_SIZE,
        .def = "32K",
        .min = 1024,
        .max = 1024 * 1024,
        .help = "largest request head, request line and headers (431 above)",
    },
    {
        .name = "gateway_max_headers",
        .type = TG_CFG_INT,
        .def = "100",
        .min = 8,
        .max = 128,
        .help = "most header fields in a request (431 above)",
    },
    {
        .name = "gateway_header_timeout",
        .type = TG_CFG_DURATION,
        .def = "10s",
        .min = 100,
        .max = 600000,
        .help = "time to receive a whole request head (408 after; slowloris)",
    },
    {
        .name = "gateway_body_timeout",
        .type = TG_CFG_DURATION,
        .def = "30s",
        .min = 100,
        .max = 3600000,
        .help = "longest pause while receiving a request body (408 after)",
    },
    {
        .name = "gateway_idle_timeout",
        .type = TG_CFG_DURATION,
        .def = "60s",
        .min = 100,
        .max = 3600000,
        .help = "keep-alive connections idle this long are closed",
    },
    {
        .name = "gateway_pool_size",
        .type = TG_CFG_INT,
        .def = "64",
        .min = 0,
        .max = 10000,
        .help = "idle keep-alive connections kept per upstream target and worker",
    },
    {
        .name = "gateway_trust_forwarded",
        .type = TG_CFG_BOOL,
        .def = "false",
        .help = "keep clients' X-Forwarded-* headers (behind a trusted proxy) instead of replacing "
                "them",
    },
    {
        .name = "gateway_key_header",
        .type = TG_CFG_STRING,
        .def = "X-API-Key",
        .help = "request header that carries the API key (also accepted: Authorization: Bearer)",
    },
    {
        .name = "gateway_strip_key",
        .type = TG_CFG_BOOL,
        .def = "true",
        .help = "remove the API key (header, Authorization or query parameter) before forwarding",
    },
    {
        .name = "gateway_header_app",
        .type = TG_CFG_STRING,
        .def = "X-Tollgate-App-Id",
        .help = "header telling the upstream the caller's app id (empty: not sent)",
    },
    {
        .name = "gateway_header_developer",
        .type = TG_CFG_STRING,
        .def = "X-Tollgate-Developer-Id",
        .help = "header telling the upstream the caller's developer id (empty: not sent)",
    },
    {
        .name = "gateway_header_plan",
        .type = TG_CFG_STRING,
        .def = "X-Tollgate-Plan",
        .help = "header telling the upstream the caller's plan slug (empty: not sent)",
    },
    {
        .name = "gateway_header_key_prefix",
        .type = TG_CFG_STRING,
        .def = "X-Tollgate-Key-Prefix",
        .help = "header telling the upstream the key's display prefix (empty: not sent)",
    },
    {
        .name = "gateway_ratelimit_headers",
        .type = TG_CFG_ENUM,
        .def = "both",
        .choices = "both|draft|legacy|off",
        .help = "rate-limit headers on responses: IETF draft RateLimit-Policy/RateLimit, legacy "
                "X-RateLimit-*, both, or none",
    },
    {
        .name = "gateway_auth_failures",
        .type = TG_CFG_INT,
        .def = "20",
        .min = 0,
        .max = 1000000,
        .help = "failed key attempts allowed per client address per minute (429 after; 0: no "
                "limit)",
    },
    {
        .name = "metering",
        .type = TG_CFG_BOOL,
        .def = "true",
        .help = "count every request into the usage ledger (off: nothing is recorded, so quotas "
                "start from zero at each restart; for pure proxies and benchmarks)",
    },
    {
        .name = "metering_interval",
        .type = TG_CFG_DURATION,
        .def = "1s",
        .min = 50,
        .max = 60000,
        .help = "how often the gateway writes its usage counters to the store (as one usage "
                "journal entry)",
    },
    {
        .name = "metering_fold_interval",
        .type = TG_CFG_DURATION,
        .def = "60s",
        .min = 50,
        .max = 3600000,
        .help = "how often the gateway folds the usage journal into the usage ledger (reports, "
                "quotas and compaction fold it first, so this bounds the journal, not freshness)",
    },
    {
        .name = "metering_max_pending",
        .type = TG_CFG_INT,
        .def = "1000000",
        .min = 1000,
        .max = 100000000,
        .help = "usage rows kept in memory while the store cannot be written (oldest dropped, "
                "logged, above)",
    },
    {
        .name = "access_log",
        .type = TG_CFG_STRING,
        .def = "stdout",
        .help = "gateway access log: a file path, \"stdout\" or \"off\" (JSON lines)",
    },
    {
        .name = "config_poll_interval",
        .type = TG_CFG_DURATION,
        .def = "250ms",
        .min = 10,
        .max = 60000,
        .help = "how often the gateway checks the store for configuration changes",
    },
    {.name = NULL},
};

struct cfg_value {
  int64_t num;  /* int, duration (ms), size (bytes), bool (0/1) */
  char *text;   /* the value as given; string/enum/addr getters return it */
  char *source; /* "default", "FILE:LINE", "env TOLLGATE_X", "flag --x" */
};

struct tg_config {
  const tg_cfg_key_t *keys;
  size_t nkeys;
  struct cfg_value values[]; /* values[i] belongs to keys[i] */
};

/* A setting given on the command line, applied after the file and env. */
struct staged_flag {
  size_t idx;
  const char *value; /* borrowed from argv (or a literal) */
  const char *flag;  /* argv element, for the source: "flag --db-path" */
  int flag_len;      /* length of the flag name in `flag`, without "=value" */
};

/*
 * Test hook (cross-file internal, hence tg__): a config over another key
 * table, so that tests reach every type. keys must outlive the config.
 * Declared here rather than in a header because only tests call it.
 */
int tg__config_new_keys(const tg_cfg_key_t *keys, tg_config_t **out);

/* ---- small text helpers ---------------------------------------------- */

static bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

static bool is_space(char c) {
  return c == ' ' || c == '\t';
}

static char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static char ascii_upper(char c) {
  return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

static bool ascii_case_eq(const char *a, const char *b) {
  for (; *a && *b; a++, b++)
    if (ascii_lower(*a) != ascii_lower(*b))
      return false;
  return *a == *b;
}

/*
 * Quote `src` for an error message: double quotes around it, \" and \\
 * escaped, control bytes and invalid UTF-8 as \xNN, cut after CFG_QUOTE_MAX
 * input bytes with "..." appended. dst must hold CFG_QUOTE_BUF bytes.
 */
static void quote(char dst[CFG_QUOTE_BUF], const char *src) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *s = (const unsigned char *)src;
  size_t len = strlen(src), in = 0, w = 0;

  dst[w++] = '"';
  while (in < len && in < CFG_QUOTE_MAX) {
    unsigned char c = s[in];
    /* 0 for a control byte or a byte that starts no valid sequence */
    size_t n = c < 0x20 || c == 0x7f ? 0 : tg_utf8_seq_len(s + in, len - in);
    if (c == '"' || c == '\\') {
      dst[w++] = '\\';
      dst[w++] = (char)c;
      in++;
    } else if (n == 0) {
      dst[w++] = '\\';
      dst[w++] = 'x';
      dst[w++] = hex[c >> 4];
      dst[w++] = hex[c & 15];
      in++;
    } else if (in + n > CFG_QUOTE_MAX) {
      break; /* do not cut a character in half */
    } else {
      memcpy(dst + w, s + in, n);
      w += n;
      in += n;
    }
  }
  if (in < len) {
    memcpy(dst + w, "...", 3);
    w += 3;
  }
  dst[w++] = '"';
  dst[w] = '\0';
}

/*
 * Copy len bytes of untrusted text (a key, flag or variable name) into a
 * problem field: printable ASCII kept, anything else as '?', so the field
 * is valid in any output.
 */
static void safe_field(char dst[TG_PROBLEM_FIELD_MAX], const char *src, size_t len) {
  size_t n = len < TG_PROBLEM_FIELD_MAX - 1 ? len : TG_PROBLEM_FIELD_MAX - 1;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)src[i];
    dst[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
  }
  dst[n] = '\0';
}

/* Record TG_ECONFIG with the detail "SOURCE: message" (no prefix when
 * source is NULL or empty). Returns TG_ECONFIG. */
__attribute__((format(printf, 4, 5))) static int fail(tg_problem_t *p, const char *source,
                                                      const char *field, const char *fmt, ...) {
  char msg[TG_PROBLEM_DETAIL_MAX];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (source && *source)
    return tg_problem_set(p, TG_ECONFIG, field, "%s: %s", source, msg);
  return tg_problem_set(p, TG_ECONFIG, field, "%s", msg);
}

static const char *type_name(tg_cfg_type_t type) {
  switch (type) {
  case TG_CFG_STRING: return "string";
  case TG_CFG_INT: return "int";
  case TG_CFG_BOOL: return "bool";
  case TG_CFG_ENUM: return "enum";
  case TG_CFG_DURATION: return "duration";
  case TG_CFG_SIZE: return "size";
  case TG_CFG_ADDR: return "addr";
  }
  return "?";
}

/* What a valid value of key k looks like, to finish "... is not %s". */
static void describe(const tg_cfg_key_t *k, char *buf, size_t cap) {
  switch (k->type) {
  case TG_CFG_STRING: snprintf(buf, cap, "text"); break;
  case TG_CFG_INT: snprintf(buf, cap, "an integer"); break;
  case TG_CFG_BOOL: snprintf(buf, cap, "true/false, yes/no, on/off or 1/0"); break;
  case TG_CFG_ENUM: snprintf(buf, cap, "one of %s", k->choices); break;
  case TG_CFG_DURATION: snprintf(buf, cap, "a whole number with unit ms, s, m or h"); break;
  case TG_CFG_SIZE: snprintf(buf, cap, "a whole number of bytes, optionally with K, M or G"); break;
  case TG_CFG_ADDR: snprintf(buf, cap, "HOST:PORT"); break;
  }
}

/* v in the unit a human would write it in: 600000 ms -> "10m", 1048576 -> "1M". */
static void format_amount(char *buf, size_t cap, tg_cfg_type_t type, int64_t v) {
  static const struct {
    int64_t mult;
    const char *unit;
  } durations[] = {{3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}},
    sizes[] = {{1 << 30, "G"}, {1 << 20, "M"}, {1 << 10, "K"}, {1, ""}};

  if (v != 0 && (type == TG_CFG_DURATION || type == TG_CFG_SIZE)) {
    for (size_t i = 0; i < 4; i++) {
      int64_t mult = type == TG_CFG_DURATION ? durations[i].mult : sizes[i].mult;
      const char *unit = type == TG_CFG_DURATION ? durations[i].unit : sizes[i].unit;
      if (v % mult == 0) {
        snprintf(buf, cap, "%" PRId64 "%s", v / mult, unit);
        return;
      }
    }
  }
  snprintf(buf, cap, "%" PRId64 "%s", v, type == TG_CFG_DURATION ? "ms" : "");
}

/* ---- value checks ------------------------------------------------------ */

enum { NUM_OK, NUM_MALFORMED, NUM_TOO_LARGE, NUM_NEGATIVE };

/*
 * Read decimal digits at *sp into *out, advancing *sp. The bound is checked
 * before each multiply, so nothing overflows. 0, -1 without a digit, -2 if
 * the number exceeds limit.
 */
static int read_digits(const char **sp, uint64_t limit, uint64_t *out) {
  const char *s = *sp;
  uint64_t n = 0;

  if (!is_digit(*s))
    return -1;
  for (; is_digit(*s); s++) {
    unsigned d = (unsigned)(*s - '0');
    if (n > (limit - d) / 10)
      return -2;
    n = n * 10 + d;
  }
  *sp = s;
  *out = n;
  return 0;
}

/* Unit suffixes, case-sensitive as in config.h ("m" is minutes, never MiB). */
struct unit {
  const char *suffix;
  int64_t mult;
};
static const struct unit duration_units[] = {{"", 1},      {"ms", 1},      {"s", 1000},
                                             {"m", 60000}, {"h", 3600000}, {NULL, 0}};
static const struct unit size_units[] = {
    {"", 1}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {NULL, 0}};

/* Parse an int, duration or size (see config.h for the syntax). */
static int parse_number(tg_cfg_type_t type, const char *s, int64_t *out) {
  const struct unit *u = type == TG_CFG_DURATION ? duration_units : size_units;
  bool negative = false;
  uint64_t limit = INT64_MAX, mag;
  int r;

  if (*s == '-') {
    if (!is_digit(s[1]))
      return NUM_MALFORMED;
    if (type != TG_CFG_INT)
      return NUM_NEGATIVE;
    negative = true;
    limit = (uint64_t)INT64_MAX + 1;
    s++;
  }
  r = read_digits(&s, limit, &mag);
  if (r == -1)
    return NUM_MALFORMED;
  if (r == -2)
    return NUM_TOO_LARGE;
  if (type == TG_CFG_INT) {
    if (*s)
      return NUM_MALFORMED;
    if (!negative)
      *out = (int64_t)mag;
    else if (mag == (uint64_t)INT64_MAX + 1)
      *out = INT64_MIN;
    else
      *out = -(int64_t)mag;
    return NUM_OK;
  }
  for (; u->suffix; u++) {
    if (strcmp(s, u->suffix) != 0)
      continue;
    if (mag > (uint64_t)(INT64_MAX / u->mult))
      return NUM_TOO_LARGE;
    *out = (int64_t)mag * u->mult;
    return NUM_OK;
  }
  return NUM_MALFORMED;
}

static bool parse_bool(const char *s, int64_t *out) {
  static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off",
                                                                              "0"};
  for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
    if (ascii_case_eq(s, yes[i])) {
      *out = 1;
      return true;
    }
    if (ascii_case_eq(s, no[i])) {
      *out = 0;
      return true;
    }
  }
  return false;
}

/* Whether s is one of the '|'-separated words in choices (exact match). */
static bool enum_has(const char *choices, const char *s) {
  size_t len = strlen(s);
  const char *c = choices;

  while (c && *c) {
    const char *bar = strchr(c, '|');
    size_t n = bar ? (size_t)(bar - c) : strlen(c);
    if (n == len && memcmp(c, s, n) == 0)
      return true;
    c = bar ? bar + 1 : NULL;
  }
  return false;
}

/* A DNS name: dot-separated labels of 1..63 letters, digits, '-' or '_'
 * (the latter for container service names), no '-' at either end. */
static bool host_name_ok(const char *h) {
  size_t label = 0;

  for (const char *s = h;; s++) {
    if (*s == '.' || *s == '\0') {
      if (label == 0 || label > 63 || s[-1] == '-')
        return false;
      if (*s == '\0')
        return true;
      label = 0;
    } else if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || is_digit(*s) || *s == '_' ||
               (*s == '-' && label > 0)) {
      label++;
    } else {
      return false;
    }
  }
}

/* Why v is not HOST:PORT, or NULL if it is. */
static const char *addr_problem(const char *v) {
  char host[256];
  const char *port;
  size_t hlen;

  if (v[0] == '[') {
    struct in6_addr a6;
    const char *close = strchr(v, ']');
    if (!close)
      return "no closing ]";
    hlen = (size_t)(close - (v + 1));
    if (hlen == 0 || hlen >= sizeof(host))
      return "bad IPv6 address";
    memcpy(host, v + 1, hlen);
    host[hlen] = '\0';
    if (inet_pton(AF_INET6, host, &a6) != 1)
      return "bad IPv6 address";
    if (close[1] != ':')
      return "no :PORT after ]";
    port = close + 2;
  } else {
    const char *colon = strrchr(v, ':');
    bool dotted = true;
    if (!colon)
      return "no :PORT";
    hlen = (size_t)(colon - v);
    if (hlen == 0)
      return "no host";
    if (memchr(v, ':', hlen))
      return "an IPv6 address needs [brackets]";
    if (hlen > 253)
      return "host name longer than 253 bytes";
    memcpy(host, v, hlen);
    host[hlen] = '\0';
    for (size_t i = 0; i < hlen; i++)
      dotted = dotted && (is_digit(host[i]) || host[i] == '.');
    if (dotted) {
      /* all digits and dots: an IPv4 literal or nothing (never a name) */
      struct in_addr a4;
      if (inet_pton(AF_INET, host, &a4) != 1)
        return "bad IPv4 address";
    } else if (!host_name_ok(host)) {
      return "bad host name";
    }
    port = colon + 1;
  }
  uint64_t n;
  const char *end = port;
  if (read_digits(&end, 65535, &n) != 0 || *end != '\0' || end - port > 5)
    return "port not in 0..65535";
  return NULL;
}

/*
 * Check `v` against key k; on success store its number (0 for text types)
 * in *num. TG_OK or TG_ECONFIG with field = key and the source as prefix.
 */
static int check_value(const tg_cfg_key_t *k, const char *v, const char *source, int64_t *num,
                       tg_problem_t *p) {
  char q[CFG_QUOTE_BUF], want[128], lo[32], hi[32];
  size_t len = strlen(v);
  const char *why;

  *num = 0;
  quote(q, v);
  describe(k, want, sizeof(want));
  if (len > TG_CONFIG_VALUE_MAX)
    return fail(p, source, k->name, "%s: value too long (%zu bytes, max %d): %s", k->name, len,
                TG_CONFIG_VALUE_MAX, q);
  if (k->type == TG_CFG_STRING) {
    const unsigned char *s = (const unsigned char *)v;
    for (size_t i = 0; i < len;) {
      size_t n;
      if (s[i] < 0x20 || s[i] == 0x7f)
        return fail(p, source, k->name, "%s: control character in %s", k->name, q);
      if ((n = tg_utf8_seq_len(s + i, len - i)) == 0)
        return fail(p, source, k->name, "%s: invalid UTF-8 in %s", k->name, q);
      i += n;
    }
    return TG_OK;
  }
  if (len == 0)
    return fail(p, source, k->name, "%s: empty value (want %s)", k->name, want);

  switch (k->type) {
  case TG_CFG_INT:
  case TG_CFG_DURATION:
  case TG_CFG_SIZE:
    switch (parse_number(k->type, v, num)) {
    case NUM_OK: break;
    case NUM_NEGATIVE: return fail(p, source, k->name, "%s: %s is negative", k->name, q);
    case NUM_TOO_LARGE: return fail(p, source, k->name, "%s: %s is too large", k->name, q);
    default: return fail(p, source, k->name, "%s: %s is not %s", k->name, q, want);
    }
    if (*num < k->min || *num > k->max) {
      format_amount(lo, sizeof(lo), k->type, k->min);
      format_amount(hi, sizeof(hi), k->type, k->max);
      return fail(p, source, k->name, "%s: %s is out of range %s..%s", k->name, q, lo, hi);
    }
    return TG_OK;
  case TG_CFG_BOOL:
    if (!parse_bool(v, num))
      return fail(p, source, k->name, "%s: %s is not %s", k->name, q, want);
    return TG_OK;
  case TG_CFG_ENUM:
    if (!enum_has(k->choices, v))
      return fail(p, source, k->name, "%s: %s is not %s", k->name, q, want);
    return TG_OK;
  case TG_CFG_ADDR:
    if ((why = addr_problem(v)) != NULL)
      return fail(p, source, k->name, "%s: %s is not HOST:PORT (%s)", k->name, q, why);
    return TG_OK;
  case TG_CFG_STRING: break; /* handled above */
  }
  return TG_OK;
}

/* ---- the config object --------------------------------------------------- */

static int key_index(const tg_config_t *cfg, const char *name, size_t len) {
  for (size_t i = 0; i < cfg->nkeys; i++)
    if (strlen(cfg->keys[i].name) == len && memcmp(cfg->keys[i].name, name, len) == 0)
      return (int)i;
  return -1;
}

/* Index of the key whose variable is TOLLGATE_<suffix>: the key in upper
 * case, exactly (TOLLGATE_db_path is not a setting). */
static int env_key_index(const tg_config_t *cfg, const char *suffix, size_t len) {
  for (size_t i = 0; i < cfg->nkeys; i++) {
    const char *name = cfg->keys[i].name;
    size_t j = 0;
    if (strlen(name) != len)
      continue;
    while (j < len && suffix[j] == ascii_upper(name[j]))
      j++;
    if (j == len)
      return (int)i;
  }
  return -1;
}

/* Whether flag name[0..len) spells `word`, '-' standing for '_'. */
static bool flag_is(const char *name, size_t len, const char *word) {
  if (strlen(word) != len)
    return false;
  for (size_t j = 0; j < len; j++)
    if ((name[j] == '-' ? '_' : name[j]) != word[j])
      return false;
  return true;
}

static int flag_key_index(const tg_config_t *cfg, const char *name, size_t len) {
  for (size_t i = 0; i < cfg->nkeys; i++)
    if (flag_is(name, len, cfg->keys[i].name))
      return (int)i;
  return -1;
}

/* Store a checked copy of value as key idx; the old value stays on error. */
static int set_value(tg_config_t *cfg, size_t idx, const char *value, const char *source,
                     tg_problem_t *p) {
  int result;
  int64_t num;
  char *text = NULL, *src = NULL;
  struct cfg_value *cv = &cfg->values[idx];

  result = check_value(&cfg->keys[idx], value, source, &num, p);
  if (result != TG_OK)
    goto out;
  text = strdup(value);
  src = strdup(source ? source : "program");
  if (!text || !src) {
    result = tg_problem_set(p, TG_ENOMEM, cfg->keys[idx].name, NULL);
    goto out;
  }
  free(cv->text);
  free(cv->source);
  cv->num = num;
  cv->text = text;
  cv->source = src;
  text = src = NULL;
out:
  free(text);
  free(src);
  return result;
}

static tg_config_t *config_alloc(const tg_cfg_key_t *keys, size_t nkeys) {
  tg_config_t *cfg = calloc(1, sizeof(*cfg) + nkeys * sizeof(cfg->values[0]));
  if (cfg) {
    cfg->keys = keys;
    cfg->nkeys = nkeys;
  }
  return cfg;
}

void tg_config_free(tg_config_t *cfg) {
  if (!cfg)
    return;
  for (size_t i = 0; i < cfg->nkeys; i++) {
    free(cfg->values[i].text);
    free(cfg->values[i].source);
  }
  free(cfg);
}

/* A deep copy of src, for the all-or-nothing loaders. */
static int config_clone(const tg_config_t *src, tg_config_t **out, tg_problem_t *p) {
  int result = TG_OK;
  tg_config_t *cfg = config_alloc(src->keys, src->nkeys);

  if (!cfg) {
    result = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
    goto out;
  }
  for (size_t i = 0; i < src->nkeys; i++) {
    cfg->values[i].num = src->values[i].num;
    cfg->values[i].text = strdup(src->values[i].text);
    cfg->values[i].source = strdup(src->values[i].source);
    if (!cfg->values[i].text || !cfg->values[i].source) {
      result = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
      goto out;
    }
  }
out:
  if (result != TG_OK) {
    tg_config_free(cfg);
    cfg = NULL;
  }
  *out = cfg;
  return result;
}

/* Replace cfg's values by work's and free work (same key table). */
static void config_adopt(tg_config_t *cfg, tg_config_t *work) {
  for (size_t i = 0; i < cfg->nkeys; i++) {
    free(cfg->values[i].text);
    free(cfg->values[i].source);
    cfg->values[i] = work->values[i];
  }
  free(work);
}

/* Why the key table cannot work, or NULL. Names double as flags and
 * environment variables, so they must not collide with the meta flags or
 * the variables that are not settings. */
static const char *table_problem(const tg_cfg_key_t *keys, size_t i) {
  static const char *const reserved[] = {"help", "version", "check_config", "config", "secret"};
  const tg_cfg_key_t *k = &keys[i];

  if (!k->name[0] || !k->def || !k->help)
    return "name, def and help are required";
  for (const char *s = k->name; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || is_digit(*s) || *s == '_'))
      return "name is not snake_case";
  for (size_t j = 0; j < sizeof(reserved) / sizeof(reserved[0]); j++)
    if (strcmp(k->name, reserved[j]) == 0)
      return "name is reserved";
  for (size_t j = 0; j < i; j++)
    if (strcmp(keys[j].name, k->name) == 0)
      return "name appears twice";
  if (k->type == TG_CFG_ENUM && (!k->choices || !k->choices[0]))
    return "enum without choices";
  if (k->min > k->max)
    return "min > max";
  return NULL;
}

int tg__config_new_keys(const tg_cfg_key_t *keys, tg_config_t **out) {
  int result = TG_OK;
  size_t n = 0;
  tg_config_t *cfg = NULL;
  tg_problem_t prob = {0};
  const char *why;

  while (keys[n].name)
    n++;
  cfg = config_alloc(keys, n);
  if (!cfg) {
    result = TG_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if ((why = table_problem(keys, i)) != NULL) {
      fprintf(stderr, "tollgate: config key table, key %s: %s\n", keys[i].name, why);
      abort();
    }
    result = set_value(cfg, i, keys[i].def, "default", &prob);
    if (result == TG_ENOMEM)
      goto out;
    if (result != TG_OK) {
      /* a programming error in the table, not something a user can fix */
      fprintf(stderr, "tollgate: config key table: bad default: %s\n", prob.detail);
      abort();
    }
  }
out:
  if (result != TG_OK) {
    tg_config_free(cfg);
    cfg = NULL;
  }
  *out = cfg;
  return result;
}

int tg_config_new(tg_config_t **out) {
  return tg__config_new_keys(tg_config_keys, out);
}

int tg_config_set(tg_config_t *cfg, const char *key, const char *value, const char *source,
                  tg_problem_t *p) {
  char field[TG_PROBLEM_FIELD_MAX], q[CFG_QUOTE_BUF];
  int idx = key_index(cfg, key, strlen(key));

  if (idx < 0) {
    safe_field(field, key, strlen(key));
    quote(q, key);
    return fail(p, source, field, "unknown key %s", q);
  }
  if (!value)
    return fail(p, source, key, "%s: no value", key);
  return set_value(cfg, (size_t)idx, value, source, p);
}

/* ---- file --------------------------------------------------------------- */

/*
 * Read all of path into a NUL-terminated buffer (*out, *outlen), refusing
 * more than CFG_FILE_MAX bytes. A missing file is TG_OK with *out NULL when
 * missing_ok; other failures are TG_EIO (or TG_ECONFIG when too large).
 */
static int read_file(const char *path, bool missing_ok, char **out, size_t *outlen,
                     tg_problem_t *p) {
  int result = TG_OK, fd = -1;
  char *buf = NULL, *bigger;
  size_t len = 0, cap = 4096;
  struct stat st;

  *out = NULL;
  *outlen = 0;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT && missing_ok)
      goto out;
    result =
        tg_problem_set(p, TG_EIO, NULL, "cannot open config file %s: %s", path, strerror(errno));
    goto out;
  }
  if (fstat(fd, &st) != 0) {
    result =
        tg_problem_set(p, TG_EIO, NULL, "cannot read config file %s: %s", path, strerror(errno));
    goto out;
  }
  if (S_ISDIR(st.st_mode)) {
    result = tg_problem_set(p, TG_EIO, NULL, "cannot read config file %s: is a directory", path);
    goto out;
  }
  if ((buf = malloc(cap + 1)) == NULL) {
    result = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
    goto out;
  }
  for (;;) {
    ssize_t n;
    if (len == cap) {
      /* one byte past the limit is enough to tell that it is too big */
      cap = cap >= CFG_FILE_MAX ? CFG_FILE_MAX + 1 : cap * 2;
      if ((bigger = realloc(buf, cap + 1)) == NULL) {
        result = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
        goto out;
      }
      buf = bigger;
    }
    n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      result =
          tg_problem_set(p, TG_EIO, NULL, "cannot read config file %s: %s", path, strerror(errno));
      goto out;
    }
    if (n == 0)
      break;
    len += (size_t)n;
    if (len > CFG_FILE_MAX) {
      result = fail(p, path, NULL, "file larger than %d bytes", CFG_FILE_MAX);
      goto out;
    }
  }
  buf[len] = '\0';
  *outlen = len;
  *out = buf;
  buf = NULL;
out:
  if (fd >= 0)
    close(fd);
  free(buf);
  return result;
}

/* Trim spaces and tabs from the end of s[0..len); returns the new length. */
static size_t rtrim(const char *s, size_t len) {
  while (len > 0 && is_space(s[len - 1]))
    len--;
  return len;
}

/* Put the key of a too-long line, if it names one, in field (else ""). */
static void long_line_key(const tg_config_t *cfg, const char *line, char *field) {
  const char *eq = strchr(line, '=');
  size_t klen;

  field[0] = '\0';
  while (is_space(*line))
    line++;
  if (!eq || eq < line)
    return;
  klen = rtrim(line, (size_t)(eq - line));
  if (key_index(cfg, line, klen) >= 0)
    safe_field(field, line, klen);
}

/*
 * Unquote a value that starts with '"' in place: \" and \\ are the only
 * escapes, and only blanks may follow the closing quote.
 */
static int unquote(char *v, const char *key, const char *src, tg_problem_t *p) {
  char *r = v + 1, *w = v, q[CFG_QUOTE_BUF];

  for (;;) {
    if (*r == '\0')
      return fail(p, src, key, "%s: unterminated quoted value", key);
    if (*r == '"')
      break;
    if (*r == '\\') {
      if (r[1] != '"' && r[1] != '\\') {
        char esc[3] = {'\\', r[1], '\0'};
        quote(q, esc);
        return fail(p, src, key, "%s: unknown escape %s in quoted value (only \\\" and \\\\)", key,
                    q);
      }
      r++;
    }
    *w++ = *r++;
  }
  *w = '\0';
  for (r++; is_space(*r); r++)
    ;
  if (*r) {
    quote(q, r);
    return fail(p, src, key, "%s: text after the closing quote: %s", key, q);
  }
  return TG_OK;
}

/* One line of a config file (NUL-terminated, no line end). seen[i] is the
 * line where key i was set earlier in this file, 0 if not yet. */
static int parse_line(tg_config_t *cfg, const char *src, char *line, int lineno, int *seen,
                      tg_problem_t *p) {
  char field[TG_PROBLEM_FIELD_MAX], q[CFG_QUOTE_BUF];
  char *s = line, *eq, *v;
  size_t klen, vlen;
  int idx;

  while (is_space(*s))
    s++;
  if (*s == '\0' || *s == '#')
    return TG_OK;
  eq = strchr(s, '=');
  if (!eq) {
    quote(q, s);
    return fail(p, src, NULL, "expected key = value, got %s", q);
  }
  klen = rtrim(s, (size_t)(eq - s));
  if (klen == 0)
    return fail(p, src, NULL, "empty key before '='");
  s[klen] = '\0';
  idx = key_index(cfg, s, klen);
  if (idx < 0) {
    safe_field(field, s, klen);
    quote(q, s);
    return fail(p, src, field, "unknown key %s", q);
  }
  if (seen[idx])
    return fail(p, src, s, "%s: duplicate key (first set on line %d)", s, seen[idx]);

  for (v = eq + 1; is_space(*v); v++)
    ;
  if (*v == '"') {
    int result = unquote(v, s, src, p);
    if (result != TG_OK)
      return result;
  } else {
    vlen = rtrim(v, strlen(v));
    v[vlen] = '\0';
  }
  seen[idx] = lineno;
  return set_value(cfg, (size_t)idx, v, src, p);
}

/* Parse buf (a whole file, modified in place) into cfg. */
static int parse_file(tg_config_t *cfg, const char *path, char *buf, size_t len, tg_problem_t *p) {
  int result = TG_OK, lineno = 0;
  int *seen = calloc(cfg->nkeys + 1, sizeof(*seen));
  size_t pos = 0, srccap = strlen(path) + 24;
  char *src = malloc(srccap), field[TG_PROBLEM_FIELD_MAX];

  if (!seen || !src) {
    result = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
    goto out;
  }
  /* a UTF-8 byte order mark, as some editors write, is not part of line 1 */
  if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
    pos = 3;
  while (pos < len) {
    char *line = buf + pos, *nl = memchr(line, '\n', len - pos);
    size_t l = nl ? (size_t)(nl - line) : len - pos;

    pos += l + (nl ? 1 : 0);
    lineno++;
    if (l > 0 && line[l - 1] == '\r')
      l--;          /* CRLF */
    line[l] = '\0'; /* over '\n', '\r' or the buffer's own terminator */
    snprintf(src, srccap, "%s:%d", path, lineno);
    if (memchr(line, '\0', l)) {
      result = fail(p, src, NULL, "NUL byte in line");
      goto out;
    }
    if (l > TG_CONFIG_LINE_MAX) {
      long_line_key(cfg, line, field);
      result = fail(p, src, field, "line longer than %d bytes", TG_CONFIG_LINE_MAX);
      goto out;
    }
    result = parse_line(cfg, src, line, lineno, seen, p);
    if (result != TG_OK)
      goto out;
  }
out:
  free(seen);
  free(src);
  return result;
}

/* Load path into cfg in place (may leave it half-updated on error). */
static int load_file_into(tg_config_t *cfg, const char *path, bool missing_ok, tg_problem_t *p) {
  int result;
  char *buf = NULL;
  size_t len = 0;

  result = read_file(path, missing_ok, &buf, &len, p);
  if (result != TG_OK || !buf)
    goto out;
  result = parse_file(cfg, path, buf, len, p);
out:
  free(buf);
  return result;
}

int tg_config_load_file(tg_config_t *cfg, const char *path, tg_problem_t *p) {
  int result;
  tg_config_t *work = NULL;

  result = config_clone(cfg, &work, p);
  if (result != TG_OK)
    goto out;
  result = load_file_into(work, path, false, p);
  if (result != TG_OK)
    goto out;
  config_adopt(cfg, work);
  work = NULL;
out:
  tg_config_free(work);
  return result;
}

/* ---- environment -------------------------------------------------------- */

static const char *env_get(char *const *envp, const char *name) {
  size_t len = strlen(name);
  for (; envp && *envp; envp++)
    if (strncmp(*envp, name, len) == 0 && (*envp)[len] == '=')
      return *envp + len + 1;
  return NULL;
}

static int load_env_into(tg_config_t *cfg, char *const *envp, tg_problem_t *p) {
  char field[TG_PROBLEM_FIELD_MAX], src[TG_PROBLEM_FIELD_MAX + 8];

  for (; envp && *envp; envp++) {
    const char *e = *envp, *eq = strchr(e, '='), *suffix;
    size_t name_len, suffix_len;
    int idx, result;

    if (!eq || strncmp(e, CFG_ENV_PREFIX, CFG_ENV_PREFIX_LEN) != 0)
      continue;
    suffix = e + CFG_ENV_PREFIX_LEN;
    name_len = (size_t)(eq - e);
    suffix_len = name_len - CFG_ENV_PREFIX_LEN;
    /* not settings: the config file path, the server secret (keys.h) and
     * the tests' moved clock (gateway/main.c) */
    if ((suffix_len == 6 && memcmp(suffix, "CONFIG", 6) == 0) ||
        (suffix_len == 6 && memcmp(suffix, "SECRET", 6) == 0) ||
        (suffix_len == 8 && memcmp(suffix, "TEST_NOW", 8) == 0))
      continue;
    idx = env_key_index(cfg, suffix, suffix_len);
    safe_field(field, e, name_len);
    if (idx < 0)
      return fail(p, NULL, field,
                  "unknown environment variable %s (settings are TOLLGATE_<KEY>, see --help)",
                  field);
    snprintf(src, sizeof(src), "env %s", field);
    result = set_value(cfg, (size_t)idx, eq + 1, src, p);
    if (result != TG_OK)
      return result;
  }
  return TG_OK;
}

int tg_config_load_env(tg_config_t *cfg, char *const *envp, tg_problem_t *p) {
  int result;
  tg_config_t *work = NULL;

  result = config_clone(cfg, &work, p);
  if (result != TG_OK)
    goto out;
  result = load_env_into(work, envp, p);
  if (result != TG_OK)
    goto out;
  config_adopt(cfg, work);
  work = NULL;
out:
  tg_config_free(work);
  return result;
}

/* ---- command line ------------------------------------------------------- */

/*
 * Parse argv into cli, the settings to apply (staged, at most argc) and
 * the --config path. With !stop, positionals are moved after the flags
 * (stable, as GNU getopt does) once everything parsed, so that cli->argi
 * is where they start; argv is untouched on error.
 * A flag's value may be the next argument, unless that starts with "--":
 * `--db-path --log-level=x` is more likely a forgotten value than a path.
 */
static int parse_flags(const tg_config_t *cfg, int argc, char **argv, bool stop, tg_cli_t *cli,
                       struct staged_flag *staged, size_t *nstaged, const char **config_path,
                       tg_problem_t *p) {
  int result = TG_OK, i, npos = 0;
  bool *positional = NULL, rest_positional = false;
  char **order = NULL, field[TG_PROBLEM_FIELD_MAX];

  cli->argi = argc;
  if (argc < 1)
    goto out;
  positional = calloc((size_t)argc, sizeof(*positional));
  order = calloc((size_t)argc, sizeof(*order));
  if (!positional || !order) {
    result = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
    goto out;
  }
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *name, *eq, *value;
    size_t len;
    int idx;

    if (rest_positional || a[0] != '-' || a[1] == '\0') { /* "-" is a positional, as stdin */
      if (stop) {
        cli->argi = i;
        goto out;
      }
      positional[i] = true;
      npos++;
      continue;
    }
    if (strcmp(a, "--") == 0) {
      if (stop) {
        cli->argi = i + 1;
        goto out;
      }
      rest_positional = true;
      continue;
    }
    if (strcmp(a, "-h") == 0) {
      cli->help = true;
      continue;
    }
    name = a + 2;
    eq = strchr(name, '=');
    len = eq ? (size_t)(eq - name) : strlen(name);
    if (a[1] != '-' || len == 0) {
      safe_field(field, a, eq ? (size_t)(eq - a) : strlen(a));
      result = fail(p, NULL, field, "unknown option %s (see --help)", field);
      goto out;
    }
    if (flag_is(name, len, "help") || flag_is(name, len, "version") ||
        flag_is(name, len, "check_config")) {
      if (eq) {
        safe_field(field, a, len + 2);
        result = fail(p, NULL, field, "option %s takes no value", field);
        goto out;
      }
      if (flag_is(name, len, "help"))
        cli->help = true;
      else if (flag_is(name, len, "version"))
        cli->version = true;
      else
        cli->check_config = true;
      continue;
    }
    idx = flag_is(name, len, "config") ? -2 : flag_key_index(cfg, name, len);
    if (idx == -1) {
      safe_field(field, a, len + 2);
      result = fail(p, NULL, field, "unknown option %s (see --help)", field);
      goto out;
    }
    if (eq) {
      value = eq + 1;
    } else if (idx >= 0 && cfg->keys[idx].type == TG_CFG_BOOL) {
      value = "true"; /* a bare --flag; never takes the next argument */
    } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
      value = argv[++i];
    } else {
      safe_field(field, a, len + 2);
      result = fail(p, NULL, idx >= 0 ? cfg->keys[idx].name : "config", "option %s needs a value",
                    field);
      goto out;
    }
    if (idx == -2) {
      if (!*value) {
        result = fail(p, NULL, "config", "option --config needs a file path");
        goto out;
      }
      *config_path = value;
      continue;
    }
    staged[*nstaged].idx = (size_t)idx;
    staged[*nstaged].value = value;
    staged[*nstaged].flag = a;
    staged[*nstaged].flag_len = (int)(len + 2);
    (*nstaged)++;
  }
  if (!stop && npos > 0) {
    int w = 0;
    for (i = 0; i < argc; i++)
      if (!positional[i])
        order[w++] = argv[i];
    cli->argi = w;
    for (i = 0; i < argc; i++)
      if (positional[i])
        order[w++] = argv[i];
    memcpy(argv, order, (size_t)argc * sizeof(*argv));
  }
out:
  free(positional);
  free(order);
  return result;
}

int tg_config_load(tg_config_t *cfg, int argc, char **argv, char *const *envp,
                   bool stop_at_positional, tg_cli_t *cli, tg_problem_t *p) {
  int result;
  tg_cli_t c = {0};
  struct staged_flag *staged = NULL;
  size_t nstaged = 0;
  tg_config_t *work = NULL;
  const char *config_path = NULL;
  bool missing_ok = false;
  char src[TG_PROBLEM_FIELD_MAX + 8];

  staged = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*staged));
  if (!staged) {
    result = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
    goto out;
  }
  result = parse_flags(cfg, argc, argv, stop_at_positional, &c, staged, &nstaged, &config_path, p);
  if (result != TG_OK)
    goto out;
  /* --help and --version must work even when the file or env is broken */
  if (c.help || c.version)
    goto out;
  result = config_clone(cfg, &work, p);
  if (result != TG_OK)
    goto out;
  if (!config_path) {
    config_path = env_get(envp, "TOLLGATE_CONFIG");
    if (config_path && !*config_path)
      config_path = NULL; /* set but empty: as if unset */
  }
  if (!config_path) {
    config_path = TG_CONFIG_DEFAULT_PATH;
    missing_ok = true;
  }
  result = load_file_into(work, config_path, missing_ok, p);
  if (result != TG_OK)
    goto out;
  result = load_env_into(work, envp, p);
  if (result != TG_OK)
    goto out;
  for (size_t i = 0; i < nstaged; i++) {
    snprintf(src, sizeof(src), "flag %.*s", staged[i].flag_len, staged[i].flag);
    result = set_value(work, staged[i].idx, staged[i].value, src, p);
    if (result != TG_OK)
      goto out;
  }
  config_adopt(cfg, work);
  work = NULL;
out:
  free(staged);
  tg_config_free(work);
  if (cli)
    *cli = c;
  return result;
}

/* ---- getters ------------------------------------------------------------ */

/* The value of key if its type is in `types` (a bit per tg_cfg_type_t);
 * aborts otherwise, since that is a bug in the caller. */
static const struct cfg_value *get(const tg_config_t *cfg, const char *key, unsigned types,
                                   const char *getter) {
  int idx = cfg && key ? key_index(cfg, key, strlen(key)) : -1;

  if (idx < 0) {
    fprintf(stderr, "tollgate: %s: unknown config key \"%s\"\n", getter, key ? key : "(null)");
    abort();
  }
  if (!(types & (1u << cfg->keys[idx].type))) {
    fprintf(stderr, "tollgate: %s: config key %s is of type %s\n", getter, key,
            type_name(cfg->keys[idx].type));
    abort();
  }
  return &cfg->values[idx];
}

const char *tg_config_str(const tg_config_t *cfg, const char *key) {
  return get(cfg, key, 1u << TG_CFG_STRING | 1u << TG_CFG_ENUM | 1u << TG_CFG_ADDR, "tg_config_str")
      ->text;
}

int64_t tg_config_int(const tg_config_t *cfg, const char *key) {
  return get(cfg, key, 1u << TG_CFG_INT | 1u << TG_CFG_DURATION | 1u << TG_CFG_SIZE,
             "tg_config_int")
      ->num;
}

bool tg_config_bool(const tg_config_t *cfg, const char *key) {
  return get(cfg, key, 1u << TG_CFG_BOOL, "tg_config_bool")->num != 0;
}

/* ---- output ------------------------------------------------------------- */

/* Whether s must be quoted to read back as itself from a config file. */
static bool needs_quotes(const char *s) {
  return !*s || strpbrk(s, " \t\"\\") != NULL;
}

/* s as a config file value, quoted and escaped when needed. */
static void put_value(FILE *out, const char *s) {
  if (!needs_quotes(s)) {
    fputs(s, out);
    return;
  }
  fputc('"', out);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fputc('\\', out);
    fputc(*s, out);
  }
  fputc('"', out);
}

void tg_config_dump(const tg_config_t *cfg, FILE *out) {
  for (size_t i = 0; i < cfg->nkeys; i++) {
    fprintf(out, "%s = ", cfg->keys[i].name);
    if (cfg->keys[i].secret)
      fputs("(redacted)", out);
    else
      put_value(out, cfg->values[i].text);
    fprintf(out, "  # %s\n", cfg->values[i].source);
  }
}

static void type_label(const tg_cfg_key_t *k, char *buf, size_t cap) {
  snprintf(buf, cap, "%s", k->type == TG_CFG_ENUM ? k->choices : type_name(k->type));
}

static void default_label(const tg_cfg_key_t *k, char *buf, size_t cap) {
  if (needs_quotes(k->def))
    snprintf(buf, cap, "\"%s\"", k->def); /* defaults hold no '"' or '\' worth escaping */
  else
    snprintf(buf, cap, "%s", k->def);
}

static void help_keys(const tg_cfg_key_t *keys, FILE *out) {
  char type[128], def[128], lo[32], hi[32], env[128];
  int wname = (int)strlen("KEY"), wtype = (int)strlen("TYPE"), wdef = (int)strlen("DEFAULT");
  const char *example = keys[0].name ? keys[0].name : "db_path";
  size_t i;

  for (const tg_cfg_key_t *k = keys; k->name; k++) {
    int n = (int)strlen(k->name);
    wname = n > wname ? n : wname;
    type_label(k, type, sizeof(type));
    n = (int)strlen(type);
    wtype = n > wtype ? n : wtype;
    default_label(k, def, sizeof(def));
    n = (int)strlen(def);
    wdef = n > wdef ? n : wdef;
  }
  fprintf(out, "Settings:\n\n  %-*s  %-*s  %-*s  %s\n", wname, "KEY", wtype, "TYPE", wdef,
          "DEFAULT", "DESCRIPTION");
  for (const tg_cfg_key_t *k = keys; k->name; k++) {
    type_label(k, type, sizeof(type));
    default_label(k, def, sizeof(def));
    fprintf(out, "  %-*s  %-*s  %-*s  %s", wname, k->name, wtype, type, wdef, def, k->help);
    if (k->type == TG_CFG_INT || k->type == TG_CFG_DURATION || k->type == TG_CFG_SIZE) {
      format_amount(lo, sizeof(lo), k->type, k->min);
      format_amount(hi, sizeof(hi), k->type, k->max);
      fprintf(out, " (%s..%s)", lo, hi);
    }
    fputc('\n', out);
  }
  for (i = 0; example[i] && i + 1 < sizeof(env); i++)
    env[i] = ascii_upper(example[i]);
  env[i] = '\0';
  fprintf(out,
          "\n"
          "Set a key in the config file as `key = value`, in the environment as\n"
          "TOLLGATE_<KEY> in upper case (TOLLGATE_%s), or with a flag, --key=value\n"
          "or --key value, dashes and underscores alike (--",
          env);
  for (i = 0; example[i]; i++)
    fputc(example[i] == '_' ? '-' : example[i], out);
  fprintf(out,
          "); a bool key alone\n"
          "(--key) means true. Later sources win: default < file < environment < flag.\n"
          "Durations take ms, s, m or h (a bare number is ms); sizes take K, M or G.\n"
          "Config file: --config PATH, else $TOLLGATE_CONFIG, else\n"
          "%s if it exists.\n",
          TG_CONFIG_DEFAULT_PATH);
}

int tg_config_meta(const char *prog, const char *version, int schema, const char *usage,
                   const tg_cli_t *cli, int argc, char **argv, bool positionals) {
  if (!positionals && cli->argi < argc) {
    fprintf(stderr, "%s: unexpected argument %s (see --help)\n", prog, argv[cli->argi]);
    return 2;
  }
  if (cli->help) {
    fputs(usage, stdout);
    printf("\nsettings:\n");
    tg_config_help(stdout);
    return 0;
  }
  if (cli->version) {
    printf("%s %s (schema %d)\n", prog, version, schema);
    return 0;
  }
  return -1;
}

void tg_config_help(FILE *out) {
  help_keys(tg_config_keys, out);
}
