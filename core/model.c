/*
 * model.c - entity descriptors and write validation (see model.h).
 *
 * Invariant: each descriptor lists exactly the columns of its table as the
 * migrations in schema/ leave it (tests/unit/store checks this against the
 * real database), with limits no looser than the table's CHECK
 * constraints. The order here is the order rows show their members; it
 * matches the table's column order except for columns a later migration
 * appended (ALTER TABLE cannot place them), such as the apis health ones.
 */
#include "core/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define SERVER_FIELDS_HEAD                                                                         \
  { "id", TG_FT_ID, TG_F_SERVER | TG_F_UNIQUE, 0, 0, NULL, NULL }
#define SERVER_FIELDS_TAIL                                                                         \
  {"version", TG_FT_INT, TG_F_SERVER, 1, INT64_MAX, NULL, NULL},                                   \
      {"created_at", TG_FT_TIME, TG_F_SERVER, 0, INT64_MAX, NULL, NULL}, {                         \
    "updated_at", TG_FT_TIME, TG_F_SERVER, 0, INT64_MAX, NULL, NULL                                \
  }

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- per-field checks ---------------------------------------------------- */

/* A JSON array of at most `max` distinct strings each passing `ok`. */
static int check_string_array(const json_t *v, const char *ptr, size_t max,
                              bool (*ok)(const char *, size_t), const char *what, tg_problem_t *p) {
  if (!json_is_array(v))
    return tg_problem_set(p, TG_EINVAL, ptr, "must be an array of %s", what);
  if (json_array_size(v) > max)
    return tg_problem_set(p, TG_EINVAL, ptr, "at most %zu entries", max);
  size_t i;
  const json_t *e;
  json_array_foreach(v, i, e) {
    char sub[TG_PROBLEM_FIELD_MAX];
    snprintf(sub, sizeof(sub), "%s/%zu", ptr, i);
    if (!json_is_string(e) || !ok(json_string_value(e), json_string_length(e)))
      return tg_problem_set(p, TG_EINVAL, sub, "must be %s", what);
    for (size_t j = 0; j < i; j++)
      if (json_equal(json_array_get(v, j), e))
        return tg_problem_set(p, TG_EINVAL, sub, "duplicate entry \"%s\"", json_string_value(e));
  }
  return TG_OK;
}

/* RFC 1123 host name, optionally "*." wildcard on the left. */
static bool host_ok(const char *s, size_t len) {
  if (len >= 2 && s[0] == '*' && s[1] == '.')
    s += 2, len -= 2;
  if (len == 0 || len > 253)
    return false;
  size_t label = 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (c == '.') {
      if (label == 0 || s[i - 1] == '-')
        return false;
      label = 0;
      continue;
    }
    bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && !(c == '-' && label > 0))
      return false;
    if (++label > 63)
      return false;
  }
  return label > 0 && s[len - 1] != '-';
}

static int check_hosts(const json_t *v, const char *ptr, tg_problem_t *p) {
  return check_string_array(v, ptr, 64, host_ok,
                            "lowercase host names (optionally \"*.\" wildcards)", p);
}

/* RFC 9110 token methods we route: the registered ones. */
static bool method_ok(const char *s, size_t len) {
  static const char *const m[] = {"GET",    "HEAD",    "POST",    "PUT",  "PATCH",
                                  "DELETE", "OPTIONS", "CONNECT", "TRACE"};
  for (int i = 0; i < COUNT(m); i++)
    if (strlen(m[i]) == len && memcmp(m[i], s, len) == 0)
      return true;
  return false;
}

static int check_methods(const json_t *v, const char *ptr, tg_problem_t *p) {
  return check_string_array(v, ptr, 16, method_ok, "upper-case HTTP methods (GET, POST, ...)", p);
}

/* An absolute path: starts with '/', no "//", no "." or ".." segments,
 * no '%', '?', '#', no spaces or controls. Prefixes are matched on the
 * normalised path, so they must be normal themselves. */
static int check_path_prefix(const json_t *v, const char *ptr, tg_problem_t *p) {
  const char *s = json_string_value(v);
  size_t len = json_string_length(v);
  if (len == 0 || s[0] != '/')
    return tg_problem_set(p, TG_EINVAL, ptr, "must start with '/'");
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7f || c == '%' || c == '?' || c == '#' || c == '\\')
      return tg_problem_set(p, TG_EINVAL, ptr,
                            "must be a normalised path without spaces, '%%', '?', '#' or '\\'");
    if (c == '/' && i + 1 < len) {
      const char *seg = s + i + 1, *e = memchr(seg, '/', len - i - 1);
      size_t sl = e ? (size_t)(e - seg) : len - i - 1;
      if (sl == 0 || (sl == 1 && seg[0] == '.') || (sl == 2 && seg[0] == '.' && seg[1] == '.'))
        return tg_problem_set(p, TG_EINVAL, ptr, "must not contain empty, '.' or '..' segments");
    }
  }
  return TG_OK;
}

/* http(s)://host[:port][/path], no userinfo, query, fragment or spaces. */
static int check_url(const json_t *v, const char *ptr, tg_problem_t *p) {
  const char *s = json_string_value(v);
  size_t len = json_string_length(v);
  size_t skip = 0;
  if (len > 7 && memcmp(s, "http://", 7) == 0)
    skip = 7;
  else if (len > 8 && memcmp(s, "https://", 8) == 0)
    skip = 8;
  else
    return tg_problem_set(p, TG_EINVAL, ptr, "must be an http:// or https:// URL");
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '\\' || (c == '@' && i >= skip))
      return tg_problem_set(p, TG_EINVAL, ptr,
                            "must not contain spaces, userinfo, a query or a fragment");
  }
  const char *host = s + skip, *end = s + len;
  const char *slash = memchr(host, '/', (size_t)(end - host));
  const char *hend = slash ? slash : end;
  if (hend == host)
    return tg_problem_set(p, TG_EINVAL, ptr, "has no host");
  const char *colon = NULL;
  if (*host == '[') {
    const char *rb = memchr(host, ']', (size_t)(hend - host));
    if (!rb)
      return tg_problem_set(p, TG_EINVAL, ptr, "has an unterminated IPv6 literal");
    if (rb + 1 < hend) {
      if (rb[1] != ':')
        return tg_problem_set(p, TG_EINVAL, ptr, "has junk after the IPv6 literal");
      colon = rb + 1;
    }
  } else {
    colon = memchr(host, ':', (size_t)(hend - host));
    if (!host_ok(host, (size_t)((colon ? colon : hend) - host))) {
      /* an IPv4 literal is a valid host name syntactically, so this is a
       * real error: upper case, underscores or empty labels */
      return tg_problem_set(p, TG_EINVAL, ptr, "has an invalid host name");
    }
  }
  if (colon) {
    const char *d = colon + 1;
    if (d == hend || hend - d > 5)
      return tg_problem_set(p, TG_EINVAL, ptr, "has an invalid port");
    long port = 0;
    for (; d < hend; d++) {
      if (*d < '0' || *d > '9')
        return tg_problem_set(p, TG_EINVAL, ptr, "has an invalid port");
      port = port * 10 + (*d - '0');
    }
    if (port < 1 || port > 65535)
      return tg_problem_set(p, TG_EINVAL, ptr, "has a port outside 1..65535");
  }
  return TG_OK;
}

/* A query parameter name the gateway may take a key from: plain ASCII
 * (RFC 3986 unreserved minus '~'), as the schema's CHECK allows. */
static int check_param_name(const json_t *v, const char *ptr, tg_problem_t *p) {
  const char *s = json_string_value(v);
  size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-");
  if (n != json_string_length(v))
    return tg_problem_set(p, TG_EINVAL, ptr, "may contain only letters, digits and _ . -");
  return TG_OK;
}

/* An origin-form request target for active health checks (RFC 9112
 * 3.2.1): '/' first, then only what RFC 3986 allows in a path and query
 * (unreserved, sub-delims, ':', '@', '/', '?' and %HH escapes). It is sent
 * as it is, after the target's base path. */
static bool hex_ok(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int check_healthcheck_path(const json_t *v, const char *ptr, tg_problem_t *p) {
  static const char other[] = "-._~!$&'()*+,;=:@/?";
  const char *s = json_string_value(v);
  size_t len = json_string_length(v);
  if (len == 0 || s[0] != '/')
    return tg_problem_set(p, TG_EINVAL, ptr, "must start with '/'");
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= len || !hex_ok(s[i + 1]) || !hex_ok(s[i + 2]))
        return tg_problem_set(p, TG_EINVAL, ptr, "has a '%%' not followed by two hex digits");
      i += 2;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              memchr(other, c, sizeof(other) - 1) != NULL;
    if (!ok)
      return tg_problem_set(p, TG_EINVAL, ptr,
                            "must be a path and optional query without spaces, control "
                            "characters, '#' or other characters RFC 3986 does not allow");
  }
  return TG_OK;
}

static int check_openapi(const json_t *v, const char *ptr, tg_problem_t *p) {
  if (!json_is_object(v))
    return tg_problem_set(p, TG_EINVAL, ptr, "must be an OpenAPI document (a JSON object)");
  const json_t *ver = json_object_get(v, "openapi");
  if (!json_is_string(ver) || strncmp(json_string_value(ver), "3.", 2) != 0)
    return tg_problem_set(p, TG_EINVAL, ptr, "must have an \"openapi\" member naming version 3.x");
  return TG_OK;
}

static int check_scopes(const json_t *v, const char *ptr, tg_problem_t *p);

/* Token names appear in audit rows and CLI arguments: keep them plain. */
static int check_token_name(const json_t *v, const char *ptr, tg_problem_t *p) {
  const char *s = json_string_value(v);
  size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@-");
  if (n != json_string_length(v))
    return tg_problem_set(p, TG_EINVAL, ptr, "may contain only letters, digits and _ . @ -");
  return TG_OK;
}

static int check_summary(const json_t *v, const char *ptr, tg_problem_t *p) {
  if (!json_is_object(v))
    return tg_problem_set(p, TG_EINVAL, ptr, "must be an object");
  return TG_OK;
}

/* ---- descriptors ----------------------------------------------------------- */

static const tg_field_t api_fields[] = {
    SERVER_FIELDS_HEAD,
    {"slug", TG_FT_SLUG, TG_F_REQUIRED | TG_F_UNIQUE | TG_F_FILTER, 1, 63, NULL, NULL},
    {"name", TG_FT_TEXT, TG_F_REQUIRED, 1, 200, NULL, NULL},
    {"description", TG_FT_TEXT, 0, 0, 20000, NULL, NULL},
    {"hosts", TG_FT_JSON, 0, 0, 0, NULL, check_hosts},
    {"path_prefix", TG_FT_TEXT, 0, 1, 1024, NULL, check_path_prefix},
    {"methods", TG_FT_JSON, 0, 0, 0, NULL, check_methods},
    {"strip_prefix", TG_FT_BOOL, 0, 0, 1, NULL, NULL},
    {"connect_timeout_ms", TG_FT_INT, 0, 1, 600000, NULL, NULL},
    {"read_timeout_ms", TG_FT_INT, 0, 1, 3600000, NULL, NULL},
    {"write_timeout_ms", TG_FT_INT, 0, 1, 3600000, NULL, NULL},
    {"retries", TG_FT_INT, 0, 0, 10, NULL, NULL},
    {"auth_mode", TG_FT_ENUM, TG_F_FILTER, 0, 0, "key|none", NULL},
    {"key_query_param", TG_FT_TEXT, TG_F_NULLABLE, 1, 64, NULL, check_param_name},
    {"max_body_bytes", TG_FT_INT, 0, 0, 1099511627776LL, NULL, NULL},
    {"portal_visible", TG_FT_BOOL, TG_F_FILTER, 0, 1, NULL, NULL},
    {"openapi", TG_FT_JSON, TG_F_NULLABLE, 0, 4194304, NULL, check_openapi},
    /* upstream health (schema/0003_health.sql): active checks when
     * healthcheck_path is set; passive_failures 0 turns passive health off */
    {"healthcheck_path", TG_FT_TEXT, TG_F_NULLABLE, 1, 1024, NULL, check_healthcheck_path},
    {"healthcheck_interval_ms", TG_FT_INT, 0, 100, 3600000, NULL, NULL},
    {"healthcheck_timeout_ms", TG_FT_INT, 0, 10, 600000, NULL, NULL},
    {"healthy_threshold", TG_FT_INT, 0, 1, 100, NULL, NULL},
    {"unhealthy_threshold", TG_FT_INT, 0, 1, 100, NULL, NULL},
    {"passive_failures", TG_FT_INT, 0, 0, 100, NULL, NULL},
    {"passive_cooldown_ms", TG_FT_INT, 0, 100, 3600000, NULL, NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t target_fields[] = {
    SERVER_FIELDS_HEAD,
    {"api_id", TG_FT_REF, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "api", NULL},
    {"url", TG_FT_TEXT, TG_F_REQUIRED, 8, 2048, NULL, check_url},
    {"weight", TG_FT_INT, 0, 0, 1000, NULL, NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t plan_fields[] = {
    SERVER_FIELDS_HEAD,
    {"api_id", TG_FT_REF, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "api", NULL},
    {"slug", TG_FT_SLUG, TG_F_REQUIRED | TG_F_FILTER, 1, 63, NULL, NULL},
    {"name", TG_FT_TEXT, TG_F_REQUIRED, 1, 200, NULL, NULL},
    {"description", TG_FT_TEXT, 0, 0, 20000, NULL, NULL},
    {"rate_per_second", TG_FT_INT, TG_F_NULLABLE, 1, 1000000000, NULL, NULL},
    {"rate_per_minute", TG_FT_INT, TG_F_NULLABLE, 1, 1000000000, NULL, NULL},
    {"rate_per_hour", TG_FT_INT, TG_F_NULLABLE, 1, 1000000000, NULL, NULL},
    {"quota_per_day", TG_FT_INT, TG_F_NULLABLE, 1, 1000000000000LL, NULL, NULL},
    {"quota_per_month", TG_FT_INT, TG_F_NULLABLE, 1, 1000000000000LL, NULL, NULL},
    {"monthly_fee_minor", TG_FT_INT, 0, 0, 100000000000LL, NULL, NULL},
    {"included_calls", TG_FT_INT, 0, 0, 1000000000000LL, NULL, NULL},
    {"overage_price_micros", TG_FT_INT, 0, 0, 1000000000000LL, NULL, NULL},
    {"currency", TG_FT_ENUM, 0, 0, 0, NULL, NULL}, /* checked as ISO 4217 shape below */
    {"requires_approval", TG_FT_BOOL, 0, 0, 1, NULL, NULL},
    {"public", TG_FT_BOOL, TG_F_FILTER, 0, 1, NULL, NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t developer_fields[] = {
    SERVER_FIELDS_HEAD,
    {"email", TG_FT_TEXT, TG_F_REQUIRED | TG_F_UNIQUE | TG_F_FILTER, 3, 254, NULL, NULL},
    {"name", TG_FT_TEXT, 0, 0, 200, NULL, NULL},
    {"password_hash", TG_FT_TEXT, TG_F_NULLABLE | TG_F_SECRET, 1, 128, NULL, NULL},
    {"status", TG_FT_ENUM, TG_F_FILTER, 0, 0, "pending|active|suspended|deleted", NULL},
    {"email_verified", TG_FT_BOOL, 0, 0, 1, NULL, NULL},
    {"billing_customer_id", TG_FT_TEXT, TG_F_NULLABLE, 1, 255, NULL, NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t app_fields[] = {
    SERVER_FIELDS_HEAD,
    {"developer_id", TG_FT_REF, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "developer",
     NULL},
    {"name", TG_FT_TEXT, TG_F_REQUIRED, 1, 200, NULL, NULL},
    {"description", TG_FT_TEXT, 0, 0, 20000, NULL, NULL},
    {"status", TG_FT_ENUM, TG_F_FILTER, 0, 0, "active|suspended|deleted", NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t subscription_fields[] = {
    SERVER_FIELDS_HEAD,
    {"app_id", TG_FT_REF, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "app", NULL},
    {"api_id", TG_FT_REF, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "api", NULL},
    {"plan_id", TG_FT_REF, TG_F_REQUIRED | TG_F_FILTER, 0, 0, "plan", NULL},
    {"status", TG_FT_ENUM, TG_F_FILTER, 0, 0, "pending|active|suspended|cancelled", NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t key_fields[] = {
    SERVER_FIELDS_HEAD,
    {"app_id", TG_FT_REF, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "app", NULL},
    {"name", TG_FT_TEXT, 0, 0, 200, NULL, NULL},
    {"prefix", TG_FT_TEXT, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_INTERNAL, 9, 24, NULL, NULL},
    {"digest", TG_FT_DIGEST, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_SECRET | TG_F_UNIQUE, 0, 0, NULL,
     NULL},
    {"status", TG_FT_ENUM, TG_F_FILTER, 0, 0, "active|revoked", NULL},
    {"expires_at", TG_FT_TIME, TG_F_NULLABLE, 0, INT64_MAX, NULL, NULL},
    {"last_used_day", TG_FT_TIME, TG_F_NULLABLE | TG_F_SERVER, 0, INT64_MAX, NULL, NULL},
    {"rotated_from", TG_FT_REF, TG_F_NULLABLE | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "key", NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t admin_token_fields[] = {
    SERVER_FIELDS_HEAD,
    {"name", TG_FT_TEXT, TG_F_REQUIRED | TG_F_UNIQUE | TG_F_IMMUTABLE, 1, 100, NULL,
     check_token_name},
    {"prefix", TG_FT_TEXT, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_INTERNAL, 8, 24, NULL, NULL},
    {"digest", TG_FT_DIGEST, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_SECRET | TG_F_UNIQUE, 0, 0, NULL,
     NULL},
    {"scopes", TG_FT_JSON, TG_F_REQUIRED, 0, 0, NULL, check_scopes},
    {"status", TG_FT_ENUM, TG_F_FILTER, 0, 0, "active|revoked", NULL},
    {"expires_at", TG_FT_TIME, TG_F_NULLABLE, 0, INT64_MAX, NULL, NULL},
    {"last_used_at", TG_FT_TIME, TG_F_NULLABLE | TG_F_SERVER, 0, INT64_MAX, NULL, NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t session_fields[] = {
    SERVER_FIELDS_HEAD,
    {"developer_id", TG_FT_REF, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "developer",
     NULL},
    {"digest", TG_FT_DIGEST, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_SECRET | TG_F_UNIQUE, 0, 0, NULL,
     NULL},
    {"client_addr", TG_FT_TEXT, 0, 0, 64, NULL, NULL},
    {"user_agent", TG_FT_TEXT, 0, 0, 512, NULL, NULL},
    {"last_seen_at", TG_FT_TIME, TG_F_REQUIRED, 0, INT64_MAX, NULL, NULL},
    {"expires_at", TG_FT_TIME, TG_F_REQUIRED, 0, INT64_MAX, NULL, NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_field_t audit_fields[] = {
    SERVER_FIELDS_HEAD,
    {"at", TG_FT_TIME, TG_F_REQUIRED | TG_F_IMMUTABLE, 0, INT64_MAX, NULL, NULL},
    {"actor", TG_FT_TEXT, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 1, 200, NULL, NULL},
    {"action", TG_FT_TEXT, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 1, 64, NULL, NULL},
    {"entity", TG_FT_TEXT, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 1, 64, NULL, NULL},
    {"entity_id", TG_FT_TEXT, TG_F_IMMUTABLE | TG_F_FILTER, 0, 64, NULL, NULL},
    {"summary", TG_FT_JSON, TG_F_IMMUTABLE, 0, 65536, NULL, check_summary},
    {"request_id", TG_FT_TEXT, TG_F_IMMUTABLE, 0, 64, NULL, NULL},
};

/* The mail outbox (schema/0005_portal.sql): what the portal sends, kept
 * for the operator (admin API GET /mail) and for the SMTP sender. */
static const tg_field_t mail_fields[] = {
    SERVER_FIELDS_HEAD,
    {"developer_id", TG_FT_REF, TG_F_NULLABLE | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "developer",
     NULL},
    {"to_addr", TG_FT_TEXT, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 3, 254, NULL, NULL},
    {"kind", TG_FT_ENUM, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0,
     "verify|reset|approval|notice", NULL},
    {"subject", TG_FT_TEXT, TG_F_REQUIRED | TG_F_IMMUTABLE, 1, 200, NULL, NULL},
    {"body", TG_FT_TEXT, TG_F_REQUIRED | TG_F_IMMUTABLE, 1, 20000, NULL, NULL},
    {"status", TG_FT_ENUM, TG_F_FILTER, 0, 0, "queued|sent|failed", NULL},
    {"attempts", TG_FT_INT, 0, 0, 1000, NULL, NULL},
    {"last_error", TG_FT_TEXT, TG_F_NULLABLE, 0, 500, NULL, NULL},
    {"sent_at", TG_FT_TIME, TG_F_NULLABLE, 0, INT64_MAX, NULL, NULL},
    SERVER_FIELDS_TAIL,
};

/* One-time account tokens (email verification, password reset). */
static const tg_field_t account_token_fields[] = {
    SERVER_FIELDS_HEAD,
    {"developer_id", TG_FT_REF, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "developer",
     NULL},
    {"purpose", TG_FT_ENUM, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_FILTER, 0, 0, "verify|reset",
     NULL},
    {"digest", TG_FT_DIGEST, TG_F_REQUIRED | TG_F_IMMUTABLE | TG_F_SECRET | TG_F_UNIQUE, 0, 0, NULL,
     NULL},
    {"expires_at", TG_FT_TIME, TG_F_REQUIRED | TG_F_IMMUTABLE, 0, INT64_MAX, NULL, NULL},
    SERVER_FIELDS_TAIL,
};

static const tg_entity_desc_t entities[TG_ENT__COUNT] = {
    [TG_ENT_API] = {"api", "apis", "api", api_fields, COUNT(api_fields)},
    [TG_ENT_TARGET] = {"target", "targets", "tgt", target_fields, COUNT(target_fields)},
    [TG_ENT_PLAN] = {"plan", "plans", "pln", plan_fields, COUNT(plan_fields)},
    [TG_ENT_DEVELOPER] = {"developer", "developers", "dev", developer_fields,
                          COUNT(developer_fields)},
    [TG_ENT_APP] = {"app", "apps", "app", app_fields, COUNT(app_fields)},
    [TG_ENT_SUBSCRIPTION] = {"subscription", "subscriptions", "sub", subscription_fields,
                             COUNT(subscription_fields)},
    [TG_ENT_KEY] = {"key", "keys", "key", key_fields, COUNT(key_fields)},
    [TG_ENT_ADMIN_TOKEN] = {"admin_token", "admin_tokens", "tok", admin_token_fields,
                            COUNT(admin_token_fields)},
    [TG_ENT_SESSION] = {"session", "sessions", "ses", session_fields, COUNT(session_fields)},
    [TG_ENT_AUDIT] = {"audit", "audit_log", "aud", audit_fields, COUNT(audit_fields)},
    [TG_ENT_MAIL] = {"mail", "mail_outbox", "mai", mail_fields, COUNT(mail_fields)},
    [TG_ENT_ACCOUNT_TOKEN] = {"account_token", "account_tokens", "act", account_token_fields,
                              COUNT(account_token_fields)},
};

const tg_entity_desc_t *tg_model_entity(tg_entity_t ent) {
  if ((unsigned)ent >= TG_ENT__COUNT)
    return NULL;
  return &entities[ent];
}

const tg_field_t *tg_model_field(const tg_entity_desc_t *d, const char *name) {
  for (int i = 0; i < d->nfields; i++)
    if (strcmp(d->fields[i].name, name) == 0)
      return &d->fields[i];
  return NULL;
}

/* ---- validation ---------------------------------------------------------- */

static bool choice_ok(const char *choices, const char *s, size_t len) {
  const char *c = choices;
  while (*c) {
    const char *bar = strchr(c, '|');
    size_t n = bar ? (size_t)(bar - c) : strlen(c);
    if (n == len && memcmp(c, s, len) == 0)
      return true;
    if (!bar)
      break;
    c = bar + 1;
  }
  return false;
}

static bool scope_ok(const char *s, size_t len) {
  return choice_ok(TG_SCOPES, s, len);
}

static int check_scopes(const json_t *v, const char *ptr, tg_problem_t *p) {
  if (json_is_array(v) && json_array_size(v) == 0)
    return tg_problem_set(p, TG_EINVAL, ptr, "needs at least one scope");
  return check_string_array(v, ptr, 16, scope_ok, "scopes from " TG_SCOPES, p);
}

bool tg_model_id_valid(const char *s, const char *prefix) {
  if (!s || strlen(s) != TG_ID_LEN || memcmp(s, prefix, 3) != 0 || s[3] != '_')
    return false;
  for (int i = 4; i < TG_ID_LEN; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')) || c == 'I' || c == 'L' || c == 'O' ||
        c == 'U')
      return false;
  }
  return true;
}

static bool slug_ok(const char *s, size_t len, int64_t max) {
  if (len < 1 || (int64_t)len > max || s[0] == '-' || s[len - 1] == '-')
    return false;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
      return false;
  }
  return true;
}

static const char *json_kind(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number with a fraction";
  case JSON_TRUE:
  case JSON_FALSE: return "a boolean";
  case JSON_NULL: return "null";
  }
  return "a value";
}

static const tg_entity_desc_t *entity_by_name(const char *name) {
  for (int i = 0; i < TG_ENT__COUNT; i++)
    if (strcmp(entities[i].name, name) == 0)
      return &entities[i];
  return NULL;
}

static int validate_value(const tg_field_t *f, const json_t *v, const char *ptr, tg_problem_t *p) {
  if (json_is_null(v)) {
    if (f->flags & TG_F_NULLABLE)
      return TG_OK;
    return tg_problem_set(p, TG_EINVAL, ptr, "must not be null");
  }
  switch (f->type) {
  case TG_FT_ID:
  case TG_FT_DIGEST: return tg_problem_set(p, TG_EINVAL, ptr, "is set by the server");
  case TG_FT_REF: {
    const tg_entity_desc_t *ref = entity_by_name(f->choices);
    if (!json_is_string(v) || !tg_model_id_valid(json_string_value(v), ref->id_prefix))
      return tg_problem_set(p, TG_EINVAL, ptr, "must be the id of a %s (\"%s_...\")", ref->name,
                            ref->id_prefix);
    return TG_OK;
  }
  case TG_FT_TEXT:
  case TG_FT_SLUG: {
    if (!json_is_string(v))
      return tg_problem_set(p, TG_EINVAL, ptr, "must be a string, not %s", json_kind(v));
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (!tg_utf8_valid(s, len, false) || memchr(s, '\r', len))
      return tg_problem_set(p, TG_EINVAL, ptr,
                            "must be UTF-8 text without control characters or NUL");
    if (f->type == TG_FT_SLUG && !slug_ok(s, len, f->max))
      return tg_problem_set(p, TG_EINVAL, ptr,
                            "must be 1-%lld characters of a-z, 0-9 and '-', not starting or "
                            "ending with '-'",
                            (long long)f->max);
    if ((int64_t)len < f->min || (int64_t)len > f->max)
      return tg_problem_set(p, len > (size_t)f->max ? TG_ETOOBIG : TG_EINVAL, ptr,
                            "must be %lld to %lld bytes long", (long long)f->min,
                            (long long)f->max);
    if (f->check == NULL && strcmp(f->name, "email") == 0) {
      const char *at = memchr(s, '@', len);
      if (!at || at == s || at == s + len - 1 || memchr(s, ' ', len) || memchr(s, '\t', len) ||
          memchr(s, '\n', len) || memchr(at + 1, '@', (size_t)(s + len - at - 1)))
        return tg_problem_set(p, TG_EINVAL, ptr, "must be an email address");
    } else if (memchr(s, '\n', len) && f->max <= 1024 && strcmp(f->name, "description") != 0) {
      return tg_problem_set(p, TG_EINVAL, ptr, "must be a single line");
    }
    break;
  }
  case TG_FT_INT:
  case TG_FT_TIME: {
    if (!json_is_integer(v))
      return tg_problem_set(p, TG_EINVAL, ptr, "must be an integer, not %s", json_kind(v));
    json_int_t n = json_integer_value(v);
    if (n < f->min || n > f->max)
      return tg_problem_set(p, TG_EINVAL, ptr, "must be between %lld and %lld", (long long)f->min,
                            (long long)f->max);
    break;
  }
  case TG_FT_BOOL:
    if (!json_is_boolean(v))
      return tg_problem_set(p, TG_EINVAL, ptr, "must be true or false, not %s", json_kind(v));
    break;
  case TG_FT_ENUM: {
    if (!json_is_string(v))
      return tg_problem_set(p, TG_EINVAL, ptr, "must be a string, not %s", json_kind(v));
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (f->choices == NULL) { /* currency: ISO 4217 shape */
      if (len != 3 || s[0] < 'A' || s[0] > 'Z' || s[1] < 'A' || s[1] > 'Z' || s[2] < 'A' ||
          s[2] > 'Z')
        return tg_problem_set(p, TG_EINVAL, ptr,
                              "must be an ISO 4217 currency code (3 capital letters)");
    } else if (!choice_ok(f->choices, s, len)) {
      return tg_problem_set(p, TG_EINVAL, ptr, "must be one of: %s", f->choices);
    }
    break;
  }
  case TG_FT_JSON:
    if (!json_is_array(v) && !json_is_object(v))
      return tg_problem_set(p, TG_EINVAL, ptr, "must be an array or object, not %s", json_kind(v));
    if (f->max > 0) {
      char *text = json_dumps(v, JSON_COMPACT);
      size_t n = text ? strlen(text) : 0;
      free(text);
      if (!text)
        return tg_problem_set(p, TG_ENOMEM, ptr, NULL);
      if ((int64_t)n > f->max)
        return tg_problem_set(p, TG_ETOOBIG, ptr, "must be at most %lld bytes of JSON",
                              (long long)f->max);
    }
    break;
  }
  if (f->check)
    return f->check(v, ptr, p);
  return TG_OK;
}

/* Check one member; the reason goes to `one` (a fresh problem). */
static int validate_member(const tg_entity_desc_t *d, const char *name, const json_t *v,
                           tg_validate_mode_t mode, bool allow_secret, const char *ptr,
                           tg_problem_t *one) {
  const tg_field_t *f = tg_model_field(d, name);
  if (!f || ((f->flags & TG_F_SECRET) && !allow_secret))
    return tg_problem_set(one, TG_EINVAL, ptr, "unknown field \"%.64s\" (not a field of %s)", name,
                          d->table);
  if ((f->flags & TG_F_SERVER) || ((f->flags & TG_F_INTERNAL) && !allow_secret))
    return tg_problem_set(one, TG_EINVAL, ptr, "is read-only (set by the server)");
  if (mode == TG_VALIDATE_UPDATE && (f->flags & TG_F_IMMUTABLE))
    return tg_problem_set(one, TG_EINVAL, ptr, "cannot be changed after creation");
  if (f->type == TG_FT_DIGEST) {
    if (!json_is_string(v) || json_string_length(v) != 64)
      return tg_problem_set(one, TG_EINVAL, ptr, "must be a 64-char hex digest");
    return TG_OK;
  }
  return validate_value(f, v, ptr, one);
}

int tg_model_validate(tg_entity_t ent, const json_t *obj, tg_validate_mode_t mode,
                      bool allow_secret, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  int result = TG_OK;
  if (!d || !json_is_object(obj))
    return tg_problem_set(p, TG_EINVAL, "", "the body must be a JSON object");
  /* Every member is checked, so a client learns all its mistakes at once. */
  const char *name;
  const json_t *v;
  json_object_foreach((json_t *)obj, name, v) {
    char ptr[TG_PROBLEM_FIELD_MAX];
    tg_problem_t one = {0};
    snprintf(ptr, sizeof(ptr), "/%s", name);
    int rc = validate_member(d, name, v, mode, allow_secret, ptr, &one);
    if (rc) {
      tg_problem_add(p, rc, one.field, "%s", one.detail);
      if (!result)
        result = rc;
    }
  }
  if (mode == TG_VALIDATE_CREATE) {
    for (int i = 0; i < d->nfields; i++) {
      const tg_field_t *f = &d->fields[i];
      if ((f->flags & TG_F_REQUIRED) && !json_object_get(obj, f->name)) {
        char ptr[TG_PROBLEM_FIELD_MAX];
        snprintf(ptr, sizeof(ptr), "/%s", f->name);
        tg_problem_add(p, TG_EINVAL, ptr, "is required");
        if (!result)
          result = TG_EINVAL;
      }
    }
  }
  return result;
}
