/*
 * pages.c - the developer portal's routes and pages (portal.h).
 *
 * Handlers read the request, call core services (accounts.h,
 * lifecycle.h, store.h, the usage report cursor) and render a template;
 * they never build SQL and never trust an id from the URL or a form: every
 * app, key and subscription is loaded and checked to belong to the
 * signed-in developer first (own_app, own_key), and anything that does not
 * is the same 404 as something that does not exist.
 *
 * Forms follow post/redirect/get: a successful POST answers 303 to a page
 * that says what happened (?done=WORD, a fixed list of messages); a bad
 * one re-renders its form (422) with the error next to the field and the
 * values typed, passwords excepted.
 */
#include <ctype.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lifecycle.h"
#include "core/log.h"
#include "core/util.h"
#include "portal/portal.h"

#define COOKIE_SESSION "tg_session"
#define COOKIE_VISITOR "tg_visitor"
#define VISITOR_BYTES  32

enum { AUTH = 1 << 0 };

typedef void (*handler_fn)(portal_req_t *r);

typedef struct route {
  const char *method;
  const char *pattern;
  handler_fn handler;
  unsigned flags;
} route_t;

static const char *str(const json_t *row, const char *name) {
  const char *v = json_string_value(json_object_get(row, name));
  return v ? v : "";
}

static int64_t num(const json_t *row, const char *name) {
  return json_integer_value(json_object_get(row, name));
}

static const char *me_id(portal_req_t *r) {
  return str(r->dev, "id");
}

static tg_account_env_t env_of(portal_req_t *r) {
  tg_account_env_t env = {
      .secret = r->srv->secret,
      .base_url = r->srv->public_url,
      .now = tg_now(),
      .token_ttl = tg_config_int(r->srv->cfg, "portal_token_ttl") / 1000,
      .request_id = r->request_id,
  };
  return env;
}

static void internal_error(portal_req_t *r, const tg_problem_t *p) {
  tg_log(TG_LOG_ERROR, "portal request failed", "request_id", r->request_id, "path", r->path,
         "error", p && p->detail[0] ? p->detail : "", NULL);
  portal_message(r, 500, "Something went wrong",
                 "The portal could not finish this request. Try again in a moment.");
}

static void not_found(portal_req_t *r) {
  portal_message(r, 404, "Not found", "There is no such page, or it is not yours to see.");
}

/* ---- transactions ---------------------------------------------------------------- */

static int tx_begin(portal_req_t *r, tg_problem_t *p) {
  pthread_mutex_lock(&r->srv->write_lock);
  int rc = tg_store_begin(r->store, p);
  if (rc)
    pthread_mutex_unlock(&r->srv->write_lock);
  return rc;
}

/* Commit when rc is TG_OK, else roll back; returns the final rc. */
static int tx_end(portal_req_t *r, int rc, tg_problem_t *p) {
  if (rc == TG_OK)
    rc = tg_store_commit(r->store, p);
  else
    tg_store_rollback(r->store);
  pthread_mutex_unlock(&r->srv->write_lock);
  return rc;
}

/* ---- formatting ---------------------------------------------------------------------- */

/* 1234567 -> "1,234,567" */
static void fmt_count(int64_t n, char *out, size_t cap) {
  char digits[32];
  int len = snprintf(digits, sizeof(digits), "%lld", (long long)(n < 0 ? -n : n));
  size_t o = 0;
  if (n < 0 && o + 1 < cap)
    out[o++] = '-';
  for (int i = 0; i < len && o + 1 < cap; i++) {
    if (i > 0 && (len - i) % 3 == 0 && o + 1 < cap)
      out[o++] = ',';
    out[o++] = digits[i];
  }
  out[o] = '\0';
}

/* Decimal places of a currency's minor unit (ISO 4217). */
static int currency_exponent(const char *cur) {
  static const char *const zero[] = {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG",
                                     "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"};
  static const char *const three[] = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"};
  for (size_t i = 0; i < sizeof(zero) / sizeof(zero[0]); i++)
    if (strcmp(cur, zero[i]) == 0)
      return 0;
  for (size_t i = 0; i < sizeof(three) / sizeof(three[0]); i++)
    if (strcmp(cur, three[i]) == 0)
      return 3;
  return 2;
}

/* An amount in millionths of a minor unit as "12.50 USD" (rounded half
 * up to the currency's minor unit, at least 2 significant places for
 * tiny per-call prices). */
static void fmt_money_micros(int64_t micros, const char *cur, char *out, size_t cap) {
  int exp = currency_exponent(cur);
  int64_t scale = 1;
  for (int i = 0; i < exp; i++)
    scale *= 10;
  /* micro-minor -> major with up to exp+6 decimals, trailing zeros cut to exp */
  int64_t denom = scale * 1000000;
  int64_t whole = micros / denom, frac = micros % denom;
  char f[32];
  int places = exp + 6;
  snprintf(f, sizeof(f), "%0*lld", places, (long long)frac);
  int keep = places;
  while (keep > exp && f[keep - 1] == '0')
    keep--;
  f[keep] = '\0';
  if (keep > 0)
    snprintf(out, cap, "%lld.%s %s", (long long)whole, f, cur);
  else
    snprintf(out, cap, "%lld %s", (long long)whole, cur);
}

static void fmt_time(int64_t t, char *out, size_t cap) {
  char iso[21];
  if (t <= 0) {
    snprintf(out, cap, "never");
    return;
  }
  tg_time_format(t, iso);
  /* "2026-11-26T12:00:00Z" -> "2026-11-26 12:00 UTC" */
  snprintf(out, cap, "%.10s %.5s UTC", iso, iso + 11);
}

/* The public view of a plan for templates. */
static json_t *plan_view(const json_t *plan) {
  char buf[96], n[32];
  json_t *v =
      json_pack("{s:s, s:s, s:s, s:s, s:b}", "id", str(plan, "id"), "slug", str(plan, "slug"),
                "name", str(plan, "name"), "description", str(plan, "description"),
                "requires_approval", json_is_true(json_object_get(plan, "requires_approval")));
  json_t *limits = json_array();
  static const struct {
    const char *field, *unit;
  } lim[] = {
      {"rate_per_second", "requests per second"},      {"rate_per_minute", "requests per minute"},
      {"rate_per_hour", "requests per hour"},          {"quota_per_day", "requests per day (UTC)"},
      {"quota_per_month", "requests per month (UTC)"},
  };
  for (size_t i = 0; i < sizeof(lim) / sizeof(lim[0]); i++) {
    json_t *x = json_object_get(plan, lim[i].field);
    if (!json_is_integer(x))
      continue;
    fmt_count(json_integer_value(x), n, sizeof(n));
    snprintf(buf, sizeof(buf), "%s %s", n, lim[i].unit);
    json_array_append_new(limits, json_string(buf));
  }
  if (json_array_size(limits) == 0)
    json_array_append_new(limits, json_string("No rate limit or quota"));
  char summary[512] = "";
  size_t li;
  json_t *lv;
  json_array_foreach(limits, li, lv) {
    size_t used = strlen(summary);
    snprintf(summary + used, sizeof(summary) - used, "%s%s", li ? ", " : "", json_string_value(lv));
  }
  json_object_set_new(v, "limits", limits);
  json_object_set_new(v, "limits_summary", json_string(summary));
  const char *cur = str(plan, "currency");
  int64_t fee = num(plan, "monthly_fee_minor"), price = num(plan, "overage_price_micros"),
          included = num(plan, "included_calls");
  if (fee == 0 && price == 0) {
    json_object_set_new(v, "price", json_string("Free"));
  } else {
    fmt_money_micros(fee * 1000000, cur, buf, sizeof(buf));
    char line[160];
    snprintf(line, sizeof(line), "%s per month", buf);
    json_object_set_new(v, "price", json_string(line));
    if (included > 0) {
      fmt_count(included, n, sizeof(n));
      snprintf(line, sizeof(line), "%s calls included", n);
      json_object_set_new(v, "included", json_string(line));
    }
    if (price > 0) {
      fmt_money_micros(price * 1000, cur, buf, sizeof(buf));
      snprintf(line, sizeof(line), "%s per 1,000 calls%s", buf, included > 0 ? " beyond" : "");
      json_object_set_new(v, "overage", json_string(line));
    }
  }
  return v;
}

/* ---- listing helpers ----------------------------------------------------------------- */

/* Every row of ent matching one filter (first TG_LIST_MAX). New array. */
static json_t *list_by(portal_req_t *r, tg_entity_t ent, const char *field, const char *value,
                       tg_problem_t *p) {
  tg_filter_t f = {field, value};
  char next[TG_ID_LEN + 1];
  json_t *rows = NULL;
  tg_list_query_t q = {.filters = &f, .nfilters = field ? 1 : 0, .limit = TG_LIST_MAX};
  if (tg_store_list(r->store, ent, &q, &rows, next, p))
    return NULL;
  return rows;
}

/* Public plans of a visible API, as views. New array. */
static json_t *public_plans(portal_req_t *r, const char *api_id, tg_problem_t *p) {
  json_t *rows = list_by(r, TG_ENT_PLAN, "api_id", api_id, p), *out = json_array();
  size_t i;
  json_t *pl;
  json_array_foreach(rows, i, pl) {
    if (json_is_true(json_object_get(pl, "public")))
      json_array_append_new(out, plan_view(pl));
  }
  json_decref(rows);
  return out;
}

/* Visible APIs (the catalog). New array of API rows. */
static json_t *visible_apis(portal_req_t *r, tg_problem_t *p) {
  tg_filter_t f = {"portal_visible", "true"};
  char next[TG_ID_LEN + 1];
  json_t *rows = NULL;
  tg_list_query_t q = {.filters = &f, .nfilters = 1, .limit = TG_LIST_MAX};
  if (tg_store_list(r->store, TG_ENT_API, &q, &rows, next, p))
    return NULL;
  return rows;
}

/* The signed-in developer's live apps. New array. */
static json_t *my_apps(portal_req_t *r, tg_problem_t *p) {
  json_t *rows = list_by(r, TG_ENT_APP, "developer_id", me_id(r), p), *out = json_array();
  size_t i;
  json_t *a;
  json_array_foreach(rows, i, a) {
    if (strcmp(str(a, "status"), "deleted") != 0)
      json_array_append(out, a);
  }
  json_decref(rows);
  return out;
}

/* The app named by the first URL parameter, if it is the developer's and
 * not deleted; otherwise answers 404 and returns NULL. New reference. */
static json_t *own_app(portal_req_t *r, const char *id) {
  json_t *app = NULL;
  tg_problem_t p = {0};
  if (!id || !tg_model_id_valid(id, "app") ||
      tg_store_get(r->store, TG_ENT_APP, id, &app, &p) != TG_OK ||
      strcmp(str(app, "developer_id"), me_id(r)) != 0 ||
      strcmp(str(app, "status"), "deleted") == 0) {
    json_decref(app);
    not_found(r);
    return NULL;
  }
  return app;
}

/* A key of an app the developer owns (the app checked first). */
static json_t *own_key(portal_req_t *r, const json_t *app, const char *id) {
  json_t *key = NULL;
  tg_problem_t p = {0};
  if (!id || !tg_model_id_valid(id, "key") ||
      tg_store_get(r->store, TG_ENT_KEY, id, &key, &p) != TG_OK ||
      strcmp(str(key, "app_id"), str(app, "id")) != 0) {
    json_decref(key);
    not_found(r);
    return NULL;
  }
  return key;
}

/* Re-render a form page after a failed POST: errors[field] = detail. */
static void form_error(portal_req_t *r, int status, const char *tmpl, json_t *ctx,
                       const tg_problem_t *p, const char *default_field) {
  json_t *errors = json_object_get(ctx, "errors");
  if (!errors) {
    errors = json_object();
    json_object_set_new(ctx, "errors", errors);
  }
  const char *field = p->field[0] == '/' ? p->field + 1 : p->field;
  json_object_set_new(errors, field[0] ? field : default_field,
                      json_string(p->detail[0] ? p->detail : "Check this field."));
  json_object_set_new(ctx, "has_errors", json_true());
  portal_page(r, status, tmpl, ctx);
}

/* The ?done= word of a redirect, as a sentence (a fixed list: nothing from
 * the URL is shown as it is). */
static const char *done_message(portal_req_t *r) {
  static const struct {
    const char *word, *text;
  } msgs[] = {
      {"created", "App created."},
      {"renamed", "App renamed."},
      {"deleted", "App deleted: its keys stopped working and its subscriptions ended."},
      {"subscribed", "Subscribed."},
      {"pending", "Subscription requested: it starts when the API's publisher approves it."},
      {"cancelled", "Subscription cancelled."},
      {"revoked", "Key revoked: the gateway refuses it within a second."},
      {"password", "Password changed. Your other sessions were signed out."},
      {"sessions", "Your other sessions were signed out."},
      {"reset", "Your password was changed: sign in with the new one."},
      {"verified", "Email address confirmed: sign in to continue."},
      {"signedout", "You are signed out."},
      {"account_deleted", "Your account was deleted."},
      {"welcome", "Welcome! Create an app, subscribe it to an API and issue a key to start."},
  };
  const char *w = portal_query(r, "done");
  for (size_t i = 0; w && i < sizeof(msgs) / sizeof(msgs[0]); i++)
    if (strcmp(w, msgs[i].word) == 0)
      return msgs[i].text;
  return NULL;
}

static json_t *page_ctx(portal_req_t *r, const char *title) {
  json_t *ctx = json_pack("{s:s}", "title", title);
  const char *done = done_message(r);
  if (ctx && done)
    json_object_set_new(ctx, "notice", json_string(done));
  return ctx;
}

/* ---- sessions -------------------------------------------------------------------------- */

static void start_session(portal_req_t *r, const char *dev_id) {
  tg_account_env_t env = env_of(r);
  tg_problem_t p = {0};
  char token[TG_TOKEN_MAX_LEN + 1];
  /* a session presented with the login ends: a planted cookie never
   * becomes a signed-in session (fixation) */
  if (r->session)
    tg_session_end(r->store, str(r->session, "id"), &p);
  if (tg_session_create(r->store, &env, &r->srv->session, dev_id, r->client,
                        portal_header_in(r, "User-Agent"), token, NULL, &p) == TG_OK)
    portal_set_cookie(r, COOKIE_SESSION, token, r->srv->session.absolute);
  sodium_memzero(token, sizeof(token));
}

/* ---- public pages ------------------------------------------------------------------------ */

static void h_health(portal_req_t *r) {
  portal_raw(r, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

static void h_catalog(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *apis = visible_apis(r, &p), *ctx = page_ctx(r, "API catalog"), *list = json_array();
  if (!apis) {
    json_decref(ctx);
    json_decref(list);
    internal_error(r, &p);
    return;
  }
  size_t i;
  json_t *a;
  json_array_foreach(apis, i, a) {
    json_t *v =
        json_pack("{s:s, s:s, s:s, s:o}", "slug", str(a, "slug"), "name", str(a, "name"),
                  "description", str(a, "description"), "plans", public_plans(r, str(a, "id"), &p));
    json_array_append_new(list, v);
  }
  json_object_set_new(ctx, "apis", list);
  json_object_set_new(ctx, "nav_catalog", json_true());
  portal_page(r, 200, "catalog", ctx);
  json_decref(ctx);
  json_decref(apis);
}

/* The visible API of a slug, or 404 (NULL). New reference. */
static json_t *visible_api(portal_req_t *r, const char *slug) {
  json_t *api = NULL;
  tg_problem_t p = {0};
  if (!slug || tg_store_get_by(r->store, TG_ENT_API, "slug", slug, &api, &p) != TG_OK ||
      !json_is_true(json_object_get(api, "portal_visible"))) {
    json_decref(api);
    not_found(r);
    return NULL;
  }
  return api;
}

static void h_api(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *api = visible_api(r, r->params[0]);
  if (!api)
    return;
  json_t *ctx = page_ctx(r, str(api, "name"));
  json_object_set_new(ctx, "api",
                      json_pack("{s:s, s:s, s:s, s:s, s:b}", "id", str(api, "id"), "slug",
                                str(api, "slug"), "name", str(api, "name"), "description",
                                str(api, "description"), "has_doc",
                                json_is_object(json_object_get(api, "openapi"))));
  json_object_set_new(ctx, "plans", public_plans(r, str(api, "id"), &p));
  if (r->srv->gateway_url[0]) {
    char base[1200];
    const char *prefix = str(api, "path_prefix");
    snprintf(base, sizeof(base), "%s%s", r->srv->gateway_url, strcmp(prefix, "/") ? prefix : "");
    json_object_set_new(ctx, "gateway_base", json_string(base));
  }
  if (r->dev) {
    json_t *apps = my_apps(r, &p);
    json_object_set_new(ctx, "apps", apps ? apps : json_array());
  }
  r->docs_csp = json_is_object(json_object_get(api, "openapi"));
  json_object_set_new(ctx, "nav_catalog", json_true());
  portal_page(r, 200, "api", ctx);
  json_decref(ctx);
  json_decref(api);
}

static void h_api_doc(portal_req_t *r) {
  json_t *api = visible_api(r, r->params[0]);
  if (!api)
    return;
  json_t *doc = json_object_get(api, "openapi");
  if (!json_is_object(doc)) {
    json_decref(api);
    not_found(r);
    return;
  }
  doc = json_deep_copy(doc);
  if (doc && r->srv->gateway_url[0]) {
    char base[1200];
    const char *prefix = str(api, "path_prefix");
    snprintf(base, sizeof(base), "%s%s", r->srv->gateway_url, strcmp(prefix, "/") ? prefix : "");
    json_object_set_new(doc, "servers", json_pack("[{s:s}]", "url", base));
  }
  char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  if (text)
    portal_raw(r, 200, "application/json", text, strlen(text));
  else
    internal_error(r, NULL);
  free(text);
  json_decref(doc);
  json_decref(api);
}

/* ---- sign-up, sign-in, sign-out ------------------------------------------------------------ */

/* Too many mails asked for from this address? Counts this attempt. */
static bool mail_throttled(portal_req_t *r, const char *what) {
  char key[96];
  int64_t now = tg_now();
  snprintf(key, sizeof(key), "%s:%s", what, r->client);
  int64_t limit = tg_config_int(r->srv->cfg, "portal_mail_per_addr");
  int64_t wait = tg_throttle_wait(r->srv->throttle, key, now, limit, 3600);
  if (wait > 0) {
    char text[200];
    portal_header(r, "Retry-After", "%lld", (long long)wait);
    snprintf(text, sizeof(text), "Too many requests from your address. Try again in %lld minutes.",
             (long long)(wait + 59) / 60);
    portal_message(r, 429, "Too many requests", text);
    return true;
  }
  tg_throttle_fail(r->srv->throttle, key, now, 3600);
  return false;
}

static json_t *signup_ctx(portal_req_t *r) {
  json_t *ctx = page_ctx(r, "Create an account");
  json_object_set_new(
      ctx, "values",
      json_pack("{s:s, s:s}", "email", portal_field(r, "email"), "name", portal_field(r, "name")));
  json_object_set_new(ctx, "password_min", json_integer(TG_PASSWORD_MIN));
  json_object_set_new(ctx, "nav_signup", json_true());
  return ctx;
}

static void h_signup_form(portal_req_t *r) {
  if (r->dev) {
    portal_redirect(r, "/dashboard");
    return;
  }
  json_t *ctx = signup_ctx(r);
  portal_page(r, 200, "signup", ctx);
  json_decref(ctx);
}

static void h_signup(portal_req_t *r) {
  tg_problem_t p = {0};
  tg_account_env_t env = env_of(r);
  tg_signup_result_t result = TG_SIGNUP_CHECK_MAIL;
  json_t *dev = NULL;
  if (r->dev) { /* signed in: no second account under this session */
    portal_redirect(r, "/dashboard");
    return;
  }
  if (mail_throttled(r, "signup"))
    return;
  int rc = tx_begin(r, &p);
  if (!rc)
    rc = tx_end(r,
                tg_account_signup(r->store, &env, r->srv->signup, portal_field(r, "email"),
                                  portal_field(r, "name"), portal_field(r, "password"), &result,
                                  &dev, &p),
                &p);
  if (rc == TG_EINVAL || rc == TG_ECONFLICT) {
    json_t *ctx = signup_ctx(r);
    form_error(r, rc == TG_ECONFLICT ? 409 : 422, "signup", ctx, &p, "email");
    json_decref(ctx);
    return;
  }
  if (rc) {
    internal_error(r, &p);
    return;
  }
  if (result == TG_SIGNUP_ACTIVE && dev) {
    start_session(r, str(dev, "id"));
    portal_redirect(r, "/dashboard?done=welcome");
  } else {
    json_t *ctx = page_ctx(r, "Check your email");
    json_object_set_new(ctx, "email", json_string(portal_field(r, "email")));
    json_object_set_new(ctx, "approval", json_boolean(r->srv->signup == TG_SIGNUP_APPROVAL));
    portal_page(r, 200, "check_mail", ctx);
    json_decref(ctx);
  }
  json_decref(dev);
}

static json_t *login_ctx(portal_req_t *r) {
  json_t *ctx = page_ctx(r, "Sign in");
  const char *next = portal_safe_next(portal_field(r, "next"));
  if (!next)
    next = portal_safe_next(portal_query(r, "next"));
  json_object_set_new(ctx, "values", json_pack("{s:s}", "email", portal_field(r, "email")));
  if (next)
    json_object_set_new(ctx, "next", json_string(next));
  json_object_set_new(ctx, "nav_login", json_true());
  return ctx;
}

static void h_login_form(portal_req_t *r) {
  if (r->dev) {
    portal_redirect(r, "/dashboard");
    return;
  }
  json_t *ctx = login_ctx(r);
  portal_page(r, 200, "login", ctx);
  json_decref(ctx);
}

static void h_login(portal_req_t *r) {
  tg_problem_t p = {0};
  tg_account_env_t env = env_of(r);
  char acct[300], addr[96];
  const tg_config_t *cfg = r->srv->cfg;
  int64_t window = tg_config_int(cfg, "portal_login_window") / 1000, now = env.now;
  const char *email = portal_field(r, "email");
  size_t i = 0;
  snprintf(acct, sizeof(acct), "login-account:");
  for (size_t o = strlen(acct); email[i] && o + 1 < sizeof(acct); i++)
    acct[o++] = (char)tolower((unsigned char)email[i]), acct[o] = '\0';
  snprintf(addr, sizeof(addr), "login-addr:%s", r->client);
  int64_t wait = tg_throttle_wait(r->srv->throttle, acct, now,
                                  tg_config_int(cfg, "portal_login_max_failures"), window);
  int64_t wait2 =
      tg_throttle_wait(r->srv->throttle, addr, now,
                       tg_config_int(cfg, "portal_login_max_failures_per_addr"), window);
  if (wait2 > wait)
    wait = wait2;
  json_t *ctx = login_ctx(r);
  if (wait > 0) {
    portal_header(r, "Retry-After", "%lld", (long long)wait);
    tg_problem_set(&p, TG_EAUTH, "password",
                   "Too many failed sign-ins. Wait %lld minutes, or reset your password.",
                   (long long)(wait + 59) / 60);
    form_error(r, 429, "login", ctx, &p, "password");
    json_decref(ctx);
    return;
  }
  tg_login_result_t result = TG_LOGIN_OK;
  json_t *dev = NULL;
  int rc = tx_begin(r, &p);
  if (!rc)
    rc = tx_end(r,
                tg_account_login(r->store, &env, r->srv->signup != TG_SIGNUP_OPEN, email,
                                 portal_field(r, "password"), &result, &dev, &p),
                &p);
  if (rc == TG_EAUTH) {
    tg_throttle_fail(r->srv->throttle, acct, now, window);
    tg_throttle_fail(r->srv->throttle, addr, now, window);
    form_error(r, 401, "login", ctx, &p, "password");
  } else if (rc) {
    internal_error(r, &p);
  } else if (result == TG_LOGIN_UNVERIFIED) {
    portal_message(r, 403, "Confirm your email address",
                   "Your address is not confirmed yet. We sent you a new link: open it, then "
                   "sign in.");
  } else if (result == TG_LOGIN_PENDING) {
    portal_message(r, 403, "Waiting for approval",
                   "Your account waits for the API publisher's approval. You will get an email "
                   "when it is approved.");
  } else if (result == TG_LOGIN_SUSPENDED) {
    portal_message(r, 403, "Account suspended",
                   "This account is suspended. Contact the API publisher.");
  } else {
    tg_throttle_clear(r->srv->throttle, acct);
    start_session(r, str(dev, "id"));
    const char *next = portal_safe_next(portal_field(r, "next"));
    portal_redirect(r, next ? next : "/dashboard");
  }
  json_decref(dev);
  json_decref(ctx);
}

static void h_logout(portal_req_t *r) {
  tg_problem_t p = {0};
  if (r->session)
    tg_session_end(r->store, str(r->session, "id"), &p);
  portal_set_cookie(r, COOKIE_SESSION, "", -1);
  portal_redirect(r, "/login?done=signedout");
}

/* ---- password reset, email verification ---------------------------------------------------- */

static void h_forgot_form(portal_req_t *r) {
  json_t *ctx = page_ctx(r, "Reset your password");
  json_object_set_new(ctx, "values", json_pack("{s:s}", "email", ""));
  portal_page(r, 200, "forgot", ctx);
  json_decref(ctx);
}

static void h_forgot(portal_req_t *r) {
  tg_problem_t p = {0};
  tg_account_env_t env = env_of(r);
  const char *email = portal_field(r, "email");
  if (mail_throttled(r, "reset"))
    return;
  char key[300];
  snprintf(key, sizeof(key), "reset-account:%s", email);
  for (char *c = key; *c; c++)
    *c = (char)tolower((unsigned char)*c);
  /* at most 3 reset mails per address and hour, silently */
  if (tg_throttle_wait(r->srv->throttle, key, env.now, 3, 3600) == 0) {
    tg_throttle_fail(r->srv->throttle, key, env.now, 3600);
    int rc = tx_begin(r, &p);
    if (!rc)
      rc = tx_end(r, tg_account_reset_request(r->store, &env, email, &p), &p);
    if (rc) {
      internal_error(r, &p);
      return;
    }
  }
  json_t *ctx = page_ctx(r, "Check your email");
  json_object_set_new(ctx, "email", json_string(email));
  json_object_set_new(ctx, "reset", json_true());
  portal_page(r, 200, "check_mail", ctx);
  json_decref(ctx);
}

static void invalid_link(portal_req_t *r) {
  portal_message(r, 400, "This link does not work",
                 "The link was used already, or it expired. Ask for a new one.");
}

static void h_reset_form(portal_req_t *r) {
  tg_account_env_t env = env_of(r);
  const char *token = portal_query(r, "token");
  if (!tg_account_token_peek(r->store, &env, "reset", token)) {
    invalid_link(r);
    return;
  }
  json_t *ctx = page_ctx(r, "Choose a new password");
  json_object_set_new(ctx, "token", json_string(token));
  json_object_set_new(ctx, "password_min", json_integer(TG_PASSWORD_MIN));
  portal_page(r, 200, "reset", ctx);
  json_decref(ctx);
}

static void h_reset(portal_req_t *r) {
  tg_problem_t p = {0};
  tg_account_env_t env = env_of(r);
  char dev_id[TG_ID_LEN + 1];
  int rc = tx_begin(r, &p);
  if (!rc)
    rc = tx_end(r,
                tg_account_reset(r->store, &env, portal_field(r, "token"),
                                 portal_field(r, "password"), dev_id, &p),
                &p);
  if (rc == TG_EAUTH) {
    invalid_link(r);
  } else if (rc == TG_EINVAL) {
    json_t *ctx = page_ctx(r, "Choose a new password");
    json_object_set_new(ctx, "token", json_string(portal_field(r, "token")));
    json_object_set_new(ctx, "password_min", json_integer(TG_PASSWORD_MIN));
    form_error(r, 422, "reset", ctx, &p, "password");
    json_decref(ctx);
  } else if (rc) {
    internal_error(r, &p);
  } else {
    if (r->session)
      tg_session_end(r->store, str(r->session, "id"), &p);
    portal_set_cookie(r, COOKIE_SESSION, "", -1);
    portal_redirect(r, "/login?done=reset");
  }
}

static void h_verify_form(portal_req_t *r) {
  tg_account_env_t env = env_of(r);
  const char *token = portal_query(r, "token");
  if (!tg_account_token_peek(r->store, &env, "verify", token)) {
    invalid_link(r);
    return;
  }
  json_t *ctx = page_ctx(r, "Confirm your email address");
  json_object_set_new(ctx, "token", json_string(token));
  portal_page(r, 200, "verify", ctx);
  json_decref(ctx);
}

static void h_verify(portal_req_t *r) {
  tg_problem_t p = {0};
  tg_account_env_t env = env_of(r);
  char dev_id[TG_ID_LEN + 1], status[16];
  int rc = tx_begin(r, &p);
  if (!rc)
    rc = tx_end(r, tg_account_verify(r->store, &env, portal_field(r, "token"), dev_id, status, &p),
                &p);
  if (rc == TG_EAUTH)
    invalid_link(r);
  else if (rc)
    internal_error(r, &p);
  else if (strcmp(status, "pending") == 0)
    portal_message(r, 200, "Email address confirmed",
                   "Thank you. Your account now waits for the API publisher's approval; you "
                   "will get an email when it is approved.");
  else
    portal_redirect(r, "/login?done=verified");
}

/* ---- usage ------------------------------------------------------------------------------------
 */

typedef struct series {
  int64_t bucket, from, to;
  int n;
  int64_t *calls, *errors, *rejected, *billable;
} series_t;

static void series_free(series_t *s) {
  free(s->calls);
  free(s->errors);
  free(s->rejected);
  free(s->billable);
}

/* Calls per bucket for an app (and optionally one API): range "24h"
 * (hours), "7d", "30d", "90d" (days). Every bucket is present (zeros). */
static int usage_series(portal_req_t *r, const char *app_id, const char *api_id, const char *range,
                        series_t *out, tg_problem_t *p) {
  memset(out, 0, sizeof(*out));
  int64_t now = tg_now();
  int n = 7;
  out->bucket = 86400;
  if (strcmp(range, "24h") == 0) {
    out->bucket = 3600;
    n = 24;
  } else if (strcmp(range, "30d") == 0) {
    n = 30;
  } else if (strcmp(range, "90d") == 0) {
    n = 90;
  }
  out->to = (now / out->bucket + 1) * out->bucket;
  out->from = out->to - (int64_t)n * out->bucket;
  out->n = n;
  out->calls = calloc((size_t)n, sizeof(int64_t));
  out->errors = calloc((size_t)n, sizeof(int64_t));
  out->rejected = calloc((size_t)n, sizeof(int64_t));
  out->billable = calloc((size_t)n, sizeof(int64_t));
  if (!out->calls || !out->errors || !out->rejected || !out->billable)
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  tg_usage_query_t q = {.from = out->from,
                        .to = out->to,
                        .bucket = out->bucket,
                        .app_id = app_id,
                        .api_id = api_id,
                        .status_class = -1};
  tg_usage_cursor_t *cur = NULL;
  int rc = tg_store_usage_open(r->store, &q, &cur, p);
  tg_usage_total_t row;
  while (rc == TG_OK && (rc = tg_store_usage_next(cur, &row, p)) == 1) {
    int64_t i = (row.period_start - out->from) / out->bucket;
    if (i < 0 || i >= n)
      continue;
    out->calls[i] += row.calls;
    out->errors[i] += row.errors_4xx + row.errors_5xx;
    out->rejected[i] += row.rejected;
    out->billable[i] += row.billable;
    rc = TG_OK;
  }
  tg_store_usage_close(cur);
  return rc < 0 ? rc : TG_OK;
}

/* Calls of a subscription since `since` (a UTC midnight) that count
 * against its quotas: everything the gateway let through (rejected calls
 * never count). */
static int64_t quota_used(portal_req_t *r, const char *sub_id, int64_t since, tg_problem_t *p) {
  int64_t now = tg_now(), used = 0;
  tg_usage_query_t q = {.from = since,
                        .to = (now / 86400 + 1) * 86400,
                        .bucket = 86400,
                        .subscription_id = sub_id,
                        .status_class = -1};
  tg_usage_cursor_t *cur = NULL;
  int rc = tg_store_usage_open(r->store, &q, &cur, p);
  tg_usage_total_t row;
  while (rc == TG_OK && tg_store_usage_next(cur, &row, p) == 1)
    used += row.calls - row.rejected;
  tg_store_usage_close(cur);
  return used;
}

static const char *range_of(portal_req_t *r) {
  const char *range = portal_query(r, "range");
  static const char *const ok[] = {"24h", "7d", "30d", "90d"};
  for (size_t i = 0; range && i < 4; i++)
    if (strcmp(range, ok[i]) == 0)
      return ok[i];
  return "7d";
}

/* The API filter of a usage page: one of the app's subscribed APIs, or
 * NULL (all). */
static const char *api_filter(portal_req_t *r, const json_t *subs) {
  const char *api = portal_query(r, "api");
  size_t i;
  json_t *s;
  json_array_foreach(subs, i, s) {
    if (api && strcmp(str(s, "api_id"), api) == 0)
      return api;
  }
  return NULL;
}

static void h_usage_json(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *app = own_app(r, r->params[0]);
  if (!app)
    return;
  json_t *subs = list_by(r, TG_ENT_SUBSCRIPTION, "app_id", str(app, "id"), &p);
  series_t s = {0};
  int rc = usage_series(r, str(app, "id"), api_filter(r, subs), range_of(r), &s, &p);
  if (rc) {
    series_free(&s);
    json_decref(subs);
    json_decref(app);
    internal_error(r, &p);
    return;
  }
  json_t *t = json_array(), *c = json_array(), *e = json_array(), *x = json_array();
  for (int i = 0; i < s.n; i++) {
    json_array_append_new(t, json_integer(s.from + (int64_t)i * s.bucket));
    json_array_append_new(c, json_integer(s.calls[i]));
    json_array_append_new(e, json_integer(s.errors[i]));
    json_array_append_new(x, json_integer(s.rejected[i]));
  }
  json_t *doc = json_pack("{s:I, s:o, s:o, s:o, s:o}", "bucket", (json_int_t)s.bucket, "t", t,
                          "calls", c, "errors", e, "rejected", x);
  char *text = json_dumps(doc, JSON_COMPACT);
  if (text)
    portal_raw(r, 200, "application/json", text, strlen(text));
  else
    internal_error(r, NULL);
  free(text);
  json_decref(doc);
  series_free(&s);
  json_decref(subs);
  json_decref(app);
}

static void h_usage(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *app = own_app(r, r->params[0]);
  if (!app)
    return;
  const char *range = range_of(r);
  json_t *subs = list_by(r, TG_ENT_SUBSCRIPTION, "app_id", str(app, "id"), &p);
  const char *api = api_filter(r, subs);
  series_t s = {0};
  if (!subs || usage_series(r, str(app, "id"), api, range, &s, &p)) {
    series_free(&s);
    json_decref(subs);
    json_decref(app);
    internal_error(r, &p);
    return;
  }
  json_t *ctx = page_ctx(r, "Usage");
  json_t *rows = json_array();
  int64_t tc = 0, te = 0, tr = 0;
  for (int i = s.n - 1; i >= 0; i--) {
    char when[40], iso[21];
    tg_time_format(s.from + (int64_t)i * s.bucket, iso);
    if (s.bucket == 3600)
      snprintf(when, sizeof(when), "%.10s %.5s", iso, iso + 11);
    else
      snprintf(when, sizeof(when), "%.10s", iso);
    json_array_append_new(rows, json_pack("{s:s, s:I, s:I, s:I}", "period", when, "calls",
                                          (json_int_t)s.calls[i], "errors", (json_int_t)s.errors[i],
                                          "rejected", (json_int_t)s.rejected[i]));
    tc += s.calls[i];
    te += s.errors[i];
    tr += s.rejected[i];
  }
  json_object_set_new(ctx, "rows", rows);
  json_object_set_new(ctx, "totals",
                      json_pack("{s:I, s:I, s:I}", "calls", (json_int_t)tc, "errors",
                                (json_int_t)te, "rejected", (json_int_t)tr));
  json_object_set_new(ctx, "bucket_name",
                      json_string(s.bucket == 3600 ? "Hour (UTC)" : "Day (UTC)"));
  /* quotas: used today and this month, per live subscription */
  int64_t now = tg_now(), day = now - now % 86400, month, month_end;
  tg_utc_month(now, &month, &month_end);
  json_t *quotas = json_array(), *apis = json_array();
  size_t i;
  json_t *sub;
  json_array_foreach(subs, i, sub) {
    if (strcmp(str(sub, "status"), "cancelled") == 0)
      continue;
    json_t *plan = NULL, *a = NULL;
    tg_store_get(r->store, TG_ENT_PLAN, str(sub, "plan_id"), &plan, &p);
    tg_store_get(r->store, TG_ENT_API, str(sub, "api_id"), &a, &p);
    json_array_append_new(apis, json_pack("{s:s, s:s, s:b}", "id", str(sub, "api_id"), "name",
                                          str(a, "name"), "selected",
                                          api && strcmp(api, str(sub, "api_id")) == 0));
    static const struct {
      const char *field, *label;
      int month;
    } per[] = {{"quota_per_day", "today (UTC)", 0}, {"quota_per_month", "this month (UTC)", 1}};
    for (int k = 0; k < 2; k++) {
      json_t *lim = json_object_get(plan, per[k].field);
      if (!json_is_integer(lim))
        continue;
      int64_t used = quota_used(r, str(sub, "id"), per[k].month ? month : day, &p);
      int64_t limit = json_integer_value(lim), left = limit > used ? limit - used : 0;
      json_array_append_new(
          quotas, json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "api", str(a, "name"), "plan",
                            str(plan, "name"), "period", per[k].label, "used", (json_int_t)used,
                            "limit", (json_int_t)limit, "left", (json_int_t)left, "percent",
                            (json_int_t)(limit ? (used >= limit ? 100 : used * 100 / limit) : 0)));
    }
    json_decref(plan);
    json_decref(a);
  }
  json_object_set_new(ctx, "quotas", quotas);
  json_object_set_new(ctx, "apis", apis);
  json_object_set_new(ctx, "app", json_incref(app));
  json_object_set_new(ctx, "range", json_string(range));
  json_t *ranges = json_array();
  static const char *const rn[][2] = {
      {"24h", "24 hours"}, {"7d", "7 days"}, {"30d", "30 days"}, {"90d", "90 days"}};
  for (int k = 0; k < 4; k++)
    json_array_append_new(ranges, json_pack("{s:s, s:s, s:b}", "value", rn[k][0], "label", rn[k][1],
                                            "selected", strcmp(range, rn[k][0]) == 0));
  json_object_set_new(ctx, "ranges", ranges);
  if (api)
    json_object_set_new(ctx, "api_id", json_string(api));
  json_object_set_new(ctx, "nav_apps", json_true());
  portal_page(r, 200, "usage", ctx);
  json_decref(ctx);
  series_free(&s);
  json_decref(subs);
  json_decref(app);
}

/* ---- dashboard and apps ------------------------------------------------------------------------
 */

/* Calls this month per app of the developer: {app_id: calls}. */
static json_t *month_calls(portal_req_t *r, tg_problem_t *p) {
  int64_t now = tg_now(), start, end;
  tg_utc_month(now, &start, &end);
  json_t *out = json_object();
  tg_usage_query_t q = {.from = start,
                        .to = (now / 86400 + 1) * 86400,
                        .bucket = 86400,
                        .group_by = TG_USAGE_BY_APP,
                        .developer_id = me_id(r),
                        .status_class = -1};
  tg_usage_cursor_t *cur = NULL;
  int rc = tg_store_usage_open(r->store, &q, &cur, p);
  tg_usage_total_t row;
  while (rc == TG_OK && tg_store_usage_next(cur, &row, p) == 1) {
    json_t *v = json_object_get(out, row.app_id);
    json_object_set_new(out, row.app_id, json_integer(json_integer_value(v) + row.calls));
  }
  tg_store_usage_close(cur);
  return out;
}

static json_t *apps_ctx(portal_req_t *r, const char *title, tg_problem_t *p) {
  json_t *apps = my_apps(r, p), *calls = month_calls(r, p), *list = json_array();
  size_t i;
  json_t *a;
  json_array_foreach(apps, i, a) {
    int64_t nsubs = 0, nkeys = 0;
    tg_filter_t f[2] = {{"app_id", str(a, "id")}, {"status", "active"}};
    tg_store_count(r->store, TG_ENT_SUBSCRIPTION, f, 2, &nsubs, p);
    tg_store_count(r->store, TG_ENT_KEY, f, 2, &nkeys, p);
    char n[32];
    fmt_count(json_integer_value(json_object_get(calls, str(a, "id"))), n, sizeof(n));
    json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "id", str(a, "id"),
                                          "name", str(a, "name"), "description",
                                          str(a, "description"), "subscriptions", (json_int_t)nsubs,
                                          "keys", (json_int_t)nkeys, "month_calls", n));
  }
  json_decref(apps);
  json_decref(calls);
  json_t *ctx = page_ctx(r, title);
  json_object_set_new(ctx, "apps", list);
  json_object_set_new(ctx, "values",
                      json_pack("{s:s, s:s}", "name", portal_field(r, "name"), "description",
                                portal_field(r, "description")));
  return ctx;
}

static void h_dashboard(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *ctx = apps_ctx(r, "Dashboard", &p);
  json_object_set_new(ctx, "nav_dashboard", json_true());
  if (r->srv->gateway_url[0])
    json_object_set_new(ctx, "gateway_url", json_string(r->srv->gateway_url));
  portal_page(r, 200, "dashboard", ctx);
  json_decref(ctx);
}

static void h_apps(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *ctx = apps_ctx(r, "Your apps", &p);
  json_object_set_new(ctx, "nav_apps", json_true());
  portal_page(r, 200, "apps", ctx);
  json_decref(ctx);
}

/* Check an app name/description from a form: TG_OK or TG_EINVAL. */
static int app_fields(portal_req_t *r, json_t **fields, tg_problem_t *p) {
  const char *name = portal_field(r, "name"), *desc = portal_field(r, "description");
  size_t nl = strlen(name);
  *fields = NULL;
  if (nl == 0 || nl > 200 || strchr(name, '\n') || strchr(name, '\r'))
    return tg_problem_set(p, TG_EINVAL, "name", "Give the app a name of 1 to 200 characters.");
  if (strlen(desc) > 2000)
    return tg_problem_set(p, TG_EINVAL, "description", "Use at most 2,000 characters.");
  *fields = json_pack("{s:s, s:s}", "name", name, "description", desc);
  return *fields ? TG_OK : tg_problem_set(p, TG_ENOMEM, "", NULL);
}

static void h_app_create(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *fields = NULL, *row = NULL;
  char actor[48];
  int rc = app_fields(r, &fields, &p);
  if (!rc) {
    json_object_set_new(fields, "developer_id", json_string(me_id(r)));
    if (!(rc = tx_begin(r, &p))) {
      rc = tg_app_create(r->store, fields, &row, &p);
      snprintf(actor, sizeof(actor), "portal:%s", me_id(r));
      if (!rc)
        rc = tg_audit(r->store, actor, "create", TG_ENT_APP, str(row, "id"), NULL, row,
                      r->request_id, &p);
      rc = tx_end(r, rc, &p);
    }
  }
  if (rc == TG_EINVAL) {
    json_t *ctx = apps_ctx(r, "Your apps", &p);
    json_object_set_new(ctx, "nav_apps", json_true());
    form_error(r, 422, "apps", ctx, &p, "name");
    json_decref(ctx);
  } else if (rc) {
    internal_error(r, &p);
  } else {
    char loc[64];
    snprintf(loc, sizeof(loc), "/apps/%s?done=created", str(row, "id"));
    portal_redirect(r, loc);
  }
  json_decref(fields);
  json_decref(row);
}

/* Subscribable plans for an app: public plans of visible APIs the app
 * has no live subscription to, as {id, label}. */
static json_t *subscribable(portal_req_t *r, const json_t *subs, tg_problem_t *p) {
  json_t *apis = visible_apis(r, p), *out = json_array();
  size_t i, k;
  json_t *a, *s;
  json_array_foreach(apis, i, a) {
    bool taken = false;
    json_array_foreach(subs, k, s) {
      if (strcmp(str(s, "api_id"), str(a, "id")) == 0 && strcmp(str(s, "status"), "cancelled") != 0)
        taken = true;
    }
    if (taken)
      continue;
    json_t *plans = public_plans(r, str(a, "id"), p), *pl;
    json_array_foreach(plans, k, pl) {
      char label[512];
      snprintf(label, sizeof(label), "%s: %s (%s%s)", str(a, "name"), str(pl, "name"),
               str(pl, "price"),
               json_is_true(json_object_get(pl, "requires_approval")) ? ", needs approval" : "");
      json_array_append_new(out, json_pack("{s:s, s:s}", "id", str(pl, "id"), "label", label));
    }
    json_decref(plans);
  }
  json_decref(apis);
  return out;
}

static json_t *app_ctx(portal_req_t *r, json_t *app, tg_problem_t *p) {
  json_t *ctx = page_ctx(r, str(app, "name"));
  json_t *subs = list_by(r, TG_ENT_SUBSCRIPTION, "app_id", str(app, "id"), p);
  json_t *keys = list_by(r, TG_ENT_KEY, "app_id", str(app, "id"), p);
  json_t *sv = json_array(), *kv = json_array();
  size_t i;
  json_t *s, *k;
  json_array_foreach(subs, i, s) {
    if (strcmp(str(s, "status"), "cancelled") == 0)
      continue;
    json_t *api = NULL, *plan = NULL;
    tg_store_get(r->store, TG_ENT_API, str(s, "api_id"), &api, p);
    tg_store_get(r->store, TG_ENT_PLAN, str(s, "plan_id"), &plan, p);
    json_array_append_new(sv, json_pack("{s:s, s:s, s:s, s:s, s:s, s:b}", "id", str(s, "id"), "api",
                                        str(api, "name"), "api_slug", str(api, "slug"), "plan",
                                        str(plan, "name"), "status", str(s, "status"), "active",
                                        strcmp(str(s, "status"), "active") == 0));
    json_decref(api);
    json_decref(plan);
  }
  int64_t now = tg_now();
  json_array_foreach(keys, i, k) {
    char created[40], expires[40], used[40];
    int64_t exp = num(k, "expires_at");
    bool revoked = strcmp(str(k, "status"), "revoked") == 0;
    bool expired = exp > 0 && exp <= now;
    fmt_time(num(k, "created_at"), created, sizeof(created));
    fmt_time(exp, expires, sizeof(expires));
    int64_t lu = num(k, "last_used_day");
    if (lu > 0) {
      char iso[21];
      tg_time_format(lu, iso);
      snprintf(used, sizeof(used), "%.10s", iso);
    } else {
      snprintf(used, sizeof(used), "never");
    }
    json_t *kj = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b}", "id", str(k, "id"), "prefix",
                           str(k, "prefix"), "name", str(k, "name"), "created", created,
                           "last_used", used, "status",
                           revoked   ? "revoked"
                           : expired ? "expired"
                                     : "active",
                           "live", !revoked && !expired);
    if (exp > 0)
      json_object_set_new(kj, "expires", json_string(expires));
    json_array_append_new(kv, kj);
  }
  json_t *plans = subscribable(r, subs, p);
  json_object_set_new(ctx, "can_subscribe", json_boolean(json_array_size(plans) > 0));
  json_object_set_new(ctx, "plans", plans);
  json_object_set_new(ctx, "app", json_incref(app));
  json_object_set_new(ctx, "subscriptions", sv);
  json_object_set_new(ctx, "keys", kv);
  json_object_set_new(
      ctx, "values",
      json_pack("{s:s, s:s}", "name", str(app, "name"), "description", str(app, "description")));
  if (r->srv->gateway_url[0])
    json_object_set_new(ctx, "gateway_url", json_string(r->srv->gateway_url));
  json_object_set_new(ctx, "nav_apps", json_true());
  json_decref(subs);
  json_decref(keys);
  return ctx;
}

static void h_app(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *app = own_app(r, r->params[0]);
  if (!app)
    return;
  json_t *ctx = app_ctx(r, app, &p);
  portal_page(r, 200, "app", ctx);
  json_decref(ctx);
  json_decref(app);
}

/* Run one change to an owned app in a transaction with an audit row. */
typedef int (*app_change_fn)(portal_req_t *r, json_t *app, json_t **row, tg_problem_t *p);

static void app_change(portal_req_t *r, json_t *app, app_change_fn fn, const char *action,
                       tg_entity_t ent, const char *done) {
  tg_problem_t p = {0};
  json_t *row = NULL;
  char actor[48];
  int rc = tx_begin(r, &p);
  if (!rc) {
    rc = fn(r, app, &row, &p);
    snprintf(actor, sizeof(actor), "portal:%s", me_id(r));
    if (!rc)
      rc = tg_audit(r->store, actor, action, ent, str(row, "id"), NULL, row, r->request_id, &p);
    rc = tx_end(r, rc, &p);
  }
  if (rc == TG_EINVAL || rc == TG_ECONFLICT) {
    json_t *ctx = app_ctx(r, app, &p);
    form_error(r, rc == TG_EINVAL ? 422 : 409, "app", ctx, &p, "form");
    json_decref(ctx);
  } else if (rc) {
    internal_error(r, &p);
  } else {
    char loc[96];
    const char *d = done;
    if (strcmp(done, "subscribed") == 0 && strcmp(str(row, "status"), "pending") == 0)
      d = "pending";
    if (strcmp(done, "deleted") == 0)
      snprintf(loc, sizeof(loc), "/apps?done=%s", d);
    else
      snprintf(loc, sizeof(loc), "/apps/%s?done=%s", str(app, "id"), d);
    portal_redirect(r, loc);
  }
  json_decref(row);
}

static int do_rename(portal_req_t *r, json_t *app, json_t **row, tg_problem_t *p) {
  json_t *fields = NULL;
  int rc = app_fields(r, &fields, p);
  if (!rc)
    rc = tg_store_update(r->store, TG_ENT_APP, str(app, "id"), fields, false, 0, row, p);
  json_decref(fields);
  return rc;
}

static int do_delete(portal_req_t *r, json_t *app, json_t **row, tg_problem_t *p) {
  return tg_app_delete(r->store, str(app, "id"), row, p);
}

static int do_subscribe(portal_req_t *r, json_t *app, json_t **row, tg_problem_t *p) {
  const char *plan_id = portal_field(r, "plan_id");
  json_t *plan = NULL, *api = NULL, *fields = NULL;
  int rc = TG_OK;
  /* only public plans of visible APIs: the same list the form offers */
  if (!tg_model_id_valid(plan_id, "pln") ||
      tg_store_get(r->store, TG_ENT_PLAN, plan_id, &plan, p) != TG_OK ||
      !json_is_true(json_object_get(plan, "public")) ||
      tg_store_get(r->store, TG_ENT_API, str(plan, "api_id"), &api, p) != TG_OK ||
      !json_is_true(json_object_get(api, "portal_visible"))) {
    rc = tg_problem_set(p, TG_EINVAL, "plan_id", "Choose one of the plans offered.");
    goto out;
  }
  fields = json_pack("{s:s, s:s, s:s}", "app_id", str(app, "id"), "api_id", str(api, "id"),
                     "plan_id", plan_id);
  rc = fields ? tg_subscription_create(r->store, fields, row, p)
              : tg_problem_set(p, TG_ENOMEM, "", NULL);
  if (rc == TG_ECONFLICT) { /* our words, on the form's field, not the store's */
    tg_problem_clear(p);
    tg_problem_set(p, TG_ECONFLICT, "plan_id", "This app is already subscribed to that API.");
  }
out:
  json_decref(plan);
  json_decref(api);
  json_decref(fields);
  return rc;
}

/* do_cancel, do_revoke: change_or_404 checked that params[1] is a
 * subscription / key of this app. */
static int do_cancel(portal_req_t *r, json_t *app, json_t **row, tg_problem_t *p) {
  int rc = tg_subscription_transition(r->store, r->params[1], "cancel", row, p);
  if (rc == TG_ECONFLICT) {
    tg_problem_clear(p);
    tg_problem_set(p, TG_ECONFLICT, "form", "This subscription has ended already.");
  }
  return rc;
}

static int do_revoke(portal_req_t *r, json_t *app, json_t **row, tg_problem_t *p) {
  return tg_key_revoke(r->store, r->params[1], row, p);
}

/* Routes whose target may not exist: a missing subscription or key is the
 * same 404 as a missing app. */
static void change_or_404(portal_req_t *r, app_change_fn fn, const char *action, tg_entity_t ent,
                          const char *done) {
  json_t *app = own_app(r, r->params[0]);
  if (!app)
    return;
  if (r->params[1]) {
    const char *kind = ent == TG_ENT_KEY ? "key" : "sub";
    json_t *row = NULL;
    tg_problem_t p = {0};
    if (!tg_model_id_valid(r->params[1], kind) ||
        tg_store_get(r->store, ent, r->params[1], &row, &p) != TG_OK ||
        strcmp(str(row, "app_id"), str(app, "id")) != 0) {
      json_decref(row);
      json_decref(app);
      not_found(r);
      return;
    }
    json_decref(row);
  }
  app_change(r, app, fn, action, ent, done);
  json_decref(app);
}

static void h_app_rename(portal_req_t *r) {
  change_or_404(r, do_rename, "update", TG_ENT_APP, "renamed");
}
static void h_app_delete(portal_req_t *r) {
  change_or_404(r, do_delete, "delete", TG_ENT_APP, "deleted");
}
static void h_subscribe(portal_req_t *r) {
  change_or_404(r, do_subscribe, "create", TG_ENT_SUBSCRIPTION, "subscribed");
}
static void h_cancel(portal_req_t *r) {
  change_or_404(r, do_cancel, "cancel", TG_ENT_SUBSCRIPTION, "cancelled");
}
static void h_revoke(portal_req_t *r) {
  change_or_404(r, do_revoke, "revoke", TG_ENT_KEY, "revoked");
}

/* Issue or rotate: the key page shows the plaintext once. */
static void key_page(portal_req_t *r, const json_t *app, const char *key, const json_t *row,
                     const json_t *old) {
  json_t *ctx = page_ctx(r, "Your new key");
  json_object_set_new(ctx, "app", json_incref((json_t *)app));
  json_object_set_new(ctx, "key", json_string(key));
  json_object_set_new(ctx, "prefix", json_string(str(row, "prefix")));
  if (old) {
    int64_t exp = num(old, "expires_at");
    char when[40];
    fmt_time(exp, when, sizeof(when));
    json_object_set_new(ctx, "old_prefix", json_string(str(old, "prefix")));
    if (strcmp(str(old, "status"), "revoked") == 0)
      json_object_set_new(ctx, "old_revoked", json_true());
    else
      json_object_set_new(ctx, "old_until", json_string(when));
  }
  if (r->srv->gateway_url[0])
    json_object_set_new(ctx, "gateway_url", json_string(r->srv->gateway_url));
  json_object_set_new(ctx, "nav_apps", json_true());
  portal_page(r, 201, "key", ctx);
  json_decref(ctx);
}

static void h_key_issue(portal_req_t *r) {
  tg_problem_t p = {0};
  char key[TG_TOKEN_MAX_LEN + 1] = "", actor[48];
  json_t *row = NULL;
  json_t *app = own_app(r, r->params[0]);
  if (!app)
    return;
  const char *name = portal_field(r, "name");
  int rc = TG_OK;
  if (strlen(name) > 200 || strchr(name, '\n'))
    rc = tg_problem_set(&p, TG_EINVAL, "key_name", "Use at most 200 characters on one line.");
  if (!rc && !(rc = tx_begin(r, &p))) {
    rc = tg_key_create(r->store, r->srv->secret, str(app, "id"), name, 0, key, &row, &p);
    snprintf(actor, sizeof(actor), "portal:%s", me_id(r));
    if (!rc)
      rc = tg_audit(r->store, actor, "create", TG_ENT_KEY, str(row, "id"), NULL, row, r->request_id,
                    &p);
    rc = tx_end(r, rc, &p);
  }
  if (rc == TG_EINVAL || rc == TG_ECONFLICT) {
    json_t *ctx = app_ctx(r, app, &p);
    form_error(r, 422, "app", ctx, &p, "key_name");
    json_decref(ctx);
  } else if (rc) {
    internal_error(r, &p);
  } else {
    key_page(r, app, key, row, NULL);
  }
  sodium_memzero(key, sizeof(key));
  json_decref(row);
  json_decref(app);
}

static void h_key_rotate(portal_req_t *r) {
  tg_problem_t p = {0};
  char key[TG_TOKEN_MAX_LEN + 1] = "", actor[48];
  json_t *nrow = NULL, *orow = NULL, *old = NULL;
  json_t *app = own_app(r, r->params[0]);
  if (!app)
    return;
  if (!(old = own_key(r, app, r->params[1]))) {
    json_decref(app);
    return;
  }
  static const int64_t graces[] = {0, 3600, 86400, 7 * 86400, 30 * 86400};
  const char *g = portal_field(r, "grace");
  char *end = NULL;
  long long grace = strtoll(g, &end, 10);
  int rc = TG_EINVAL;
  for (size_t i = 0; *g && end && !*end && i < sizeof(graces) / sizeof(graces[0]); i++)
    if (grace == graces[i])
      rc = TG_OK;
  if (rc)
    tg_problem_set(&p, TG_EINVAL, "grace", "Choose how long the old key keeps working.");
  if (!rc && !(rc = tx_begin(r, &p))) {
    rc = tg_key_rotate(r->store, r->srv->secret, str(old, "id"), grace, key, &nrow, &orow, &p);
    snprintf(actor, sizeof(actor), "portal:%s", me_id(r));
    if (!rc)
      rc = tg_audit(r->store, actor, "rotate", TG_ENT_KEY, str(old, "id"), old, orow, r->request_id,
                    &p);
    rc = tx_end(r, rc, &p);
  }
  if (rc == TG_EINVAL || rc == TG_ECONFLICT) {
    json_t *ctx = app_ctx(r, app, &p);
    if (rc == TG_ECONFLICT) {
      tg_problem_clear(&p);
      tg_problem_set(&p, TG_ECONFLICT, "grace", "Only an active key can be rotated.");
    }
    form_error(r, rc == TG_EINVAL ? 422 : 409, "app", ctx, &p, "grace");
    json_decref(ctx);
  } else if (rc) {
    internal_error(r, &p);
  } else {
    key_page(r, app, key, nrow, orow);
  }
  sodium_memzero(key, sizeof(key));
  json_decref(nrow);
  json_decref(orow);
  json_decref(old);
  json_decref(app);
}

/* ---- account ----------------------------------------------------------------------------------
 */

static json_t *account_ctx(portal_req_t *r, tg_problem_t *p) {
  json_t *ctx = page_ctx(r, "Account");
  json_t *rows = list_by(r, TG_ENT_SESSION, "developer_id", me_id(r), p), *list = json_array();
  size_t i;
  json_t *s;
  json_array_foreach(rows, i, s) {
    char created[40], seen[40];
    fmt_time(num(s, "created_at"), created, sizeof(created));
    fmt_time(num(s, "last_seen_at"), seen, sizeof(seen));
    json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:s, s:b}", "created", created,
                                          "last_seen", seen, "client", str(s, "client_addr"),
                                          "agent", str(s, "user_agent"), "current",
                                          strcmp(str(s, "id"), str(r->session, "id")) == 0));
  }
  json_decref(rows);
  json_object_set_new(ctx, "sessions", list);
  json_object_set_new(ctx, "password_min", json_integer(TG_PASSWORD_MIN));
  json_object_set_new(ctx, "nav_account", json_true());
  return ctx;
}

static void h_account(portal_req_t *r) {
  tg_problem_t p = {0};
  json_t *ctx = account_ctx(r, &p);
  portal_page(r, 200, "account", ctx);
  json_decref(ctx);
}

static void h_password(portal_req_t *r) {
  tg_problem_t p = {0};
  tg_account_env_t env = env_of(r);
  int rc = tx_begin(r, &p);
  if (!rc)
    rc = tx_end(r,
                tg_account_password_change(r->store, &env, me_id(r),
                                           portal_field(r, "current_password"),
                                           portal_field(r, "new_password"), &p),
                &p);
  if (rc == TG_EINVAL) {
    json_t *ctx = account_ctx(r, &p);
    form_error(r, 422, "account", ctx, &p, "new_password");
    json_decref(ctx);
  } else if (rc) {
    internal_error(r, &p);
  } else {
    /* every session ended with the change: this one starts afresh */
    json_decref(r->session);
    r->session = NULL;
    start_session(r, me_id(r));
    portal_redirect(r, "/account?done=password");
  }
}

static void h_sessions_end(portal_req_t *r) {
  tg_problem_t p = {0};
  int rc = tg_session_end_all(r->store, me_id(r), str(r->session, "id"), &p);
  if (rc)
    internal_error(r, &p);
  else
    portal_redirect(r, "/account?done=sessions");
}

static void h_account_delete(portal_req_t *r) {
  tg_problem_t p = {0};
  tg_account_env_t env = env_of(r);
  int rc = TG_OK;
  if (strcmp(portal_field(r, "confirm"), "yes") != 0)
    rc = tg_problem_set(&p, TG_EINVAL, "confirm", "Tick the box to confirm.");
  if (!rc && !(rc = tx_begin(r, &p)))
    rc = tx_end(
        r, tg_account_delete(r->store, &env, me_id(r), portal_field(r, "delete_password"), &p), &p);
  if (rc == TG_EINVAL) {
    if (strcmp(p.field, "password") == 0)
      snprintf(p.field, sizeof(p.field), "delete_password");
    json_t *ctx = account_ctx(r, &p);
    form_error(r, 422, "account", ctx, &p, "delete_password");
    json_decref(ctx);
  } else if (rc) {
    internal_error(r, &p);
  } else {
    portal_set_cookie(r, COOKIE_SESSION, "", -1);
    json_decref(r->dev);
    r->dev = NULL;
    portal_redirect(r, "/?done=account_deleted");
  }
}

/* ---- dispatch ------------------------------------------------------------------------------- */

static const route_t routes[] = {
    {"GET", "/", h_catalog, 0},
    {"GET", "/health", h_health, 0},
    {"GET", "/apis/{slug}", h_api, 0},
    {"GET", "/apis/{slug}/openapi.json", h_api_doc, 0},
    {"GET", "/signup", h_signup_form, 0},
    {"POST", "/signup", h_signup, 0},
    {"GET", "/login", h_login_form, 0},
    {"POST", "/login", h_login, 0},
    {"POST", "/logout", h_logout, 0},
    {"GET", "/password/forgot", h_forgot_form, 0},
    {"POST", "/password/forgot", h_forgot, 0},
    {"GET", "/password/reset", h_reset_form, 0},
    {"POST", "/password/reset", h_reset, 0},
    {"GET", "/verify", h_verify_form, 0},
    {"POST", "/verify", h_verify, 0},
    {"GET", "/dashboard", h_dashboard, AUTH},
    {"GET", "/apps", h_apps, AUTH},
    {"POST", "/apps", h_app_create, AUTH},
    {"GET", "/apps/{id}", h_app, AUTH},
    {"POST", "/apps/{id}/rename", h_app_rename, AUTH},
    {"POST", "/apps/{id}/delete", h_app_delete, AUTH},
    {"POST", "/apps/{id}/subscriptions", h_subscribe, AUTH},
    {"POST", "/apps/{id}/subscriptions/{sid}/cancel", h_cancel, AUTH},
    {"POST", "/apps/{id}/keys", h_key_issue, AUTH},
    {"POST", "/apps/{id}/keys/{kid}/rotate", h_key_rotate, AUTH},
    {"POST", "/apps/{id}/keys/{kid}/revoke", h_revoke, AUTH},
    {"GET", "/apps/{id}/usage", h_usage, AUTH},
    {"GET", "/apps/{id}/usage.json", h_usage_json, AUTH},
    {"GET", "/account", h_account, AUTH},
    {"POST", "/account/password", h_password, AUTH},
    {"POST", "/account/sessions/end", h_sessions_end, AUTH},
    {"POST", "/account/delete", h_account_delete, AUTH},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

void portal_routes_print(FILE *out) {
  for (size_t i = 0; i < NROUTES; i++)
    fprintf(out, "%s %s%s\n", routes[i].method, routes[i].pattern,
            routes[i].flags & AUTH ? " (signed in)" : "");
}

/* The visitor cookie that anonymous forms' CSRF tokens are bound to. */
static void visitor_binding(portal_req_t *r, char *binding, size_t cap) {
  const char *v = portal_cookie(r, COOKIE_VISITOR);
  char fresh[64];
  bool ok = v && strlen(v) == 43;
  for (const char *c = v; ok && *c; c++)
    ok = isalnum((unsigned char)*c) || *c == '-' || *c == '_';
  if (!ok) {
    unsigned char rnd[VISITOR_BYTES];
    randombytes_buf(rnd, sizeof(rnd));
    sodium_bin2base64(fresh, sizeof(fresh), rnd, sizeof(rnd),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    portal_set_cookie(r, COOKIE_VISITOR, fresh, r->srv->session.absolute);
    v = fresh;
  }
  snprintf(binding, cap, "visitor:%s", v);
}

void portal_dispatch(portal_req_t *r) {
  tg_problem_t p = {0};
  const char *method = strcmp(r->method, "HEAD") == 0 ? "GET" : r->method;
  const portal_file_t *file = NULL;
  if (strcmp(method, "GET") == 0 && (file = portal_file_find(r->srv, r->path))) {
    r->file = file;
    r->status = 200;
    r->responded = true;
    return;
  }
  const route_t *route = NULL;
  bool path_known = false;
  for (size_t i = 0; i < NROUTES && !route; i++) {
    char *params[PORTAL_MAX_PARAMS] = {0};
    if (!portal_path_match(routes[i].pattern, r->path, params, PORTAL_MAX_PARAMS))
      continue;
    path_known = true;
    if (strcmp(routes[i].method, method) == 0) {
      route = &routes[i];
      memcpy(r->params, params, sizeof(params));
    } else {
      for (int k = 0; k < PORTAL_MAX_PARAMS; k++)
        free(params[k]);
    }
  }
  if (!(r->store = portal_thread_store(r->srv, &p))) {
    internal_error(r, &p);
    return;
  }
  /* who is asking */
  tg_account_env_t env = env_of(r);
  const char *cookie = portal_cookie(r, COOKIE_SESSION);
  char binding[128];
  if (cookie && *cookie) {
    if (tg_session_lookup(r->store, &env, &r->srv->session, cookie, &r->session, &r->dev, &p) ==
        TG_OK) {
      snprintf(r->session_token, sizeof(r->session_token), "%s", cookie);
    } else {
      portal_set_cookie(r, COOKIE_SESSION, "", -1);
    }
  }
  if (r->session)
    snprintf(binding, sizeof(binding), "session:%s", r->session_token);
  else
    visitor_binding(r, binding, sizeof(binding));
  tg_csrf_token(r->srv->secret, binding, r->csrf);

  if (!route) {
    if (path_known) {
      bool get = false, post = false;
      for (size_t i = 0; i < NROUTES; i++) {
        char *params[PORTAL_MAX_PARAMS] = {0};
        if (!portal_path_match(routes[i].pattern, r->path, params, PORTAL_MAX_PARAMS))
          continue;
        get |= strcmp(routes[i].method, "GET") == 0;
        post |= strcmp(routes[i].method, "POST") == 0;
        for (int k = 0; k < PORTAL_MAX_PARAMS; k++)
          free(params[k]);
      }
      portal_header(r, "Allow", "%s", get && post ? "GET, HEAD, POST" : get ? "GET, HEAD" : "POST");
      portal_message(r, 405, "Method not allowed", "This page cannot be used that way.");
    } else {
      not_found(r);
    }
    return;
  }
  if ((route->flags & AUTH) && !r->dev) {
    if (strcmp(method, "GET") == 0) {
      char loc[700];
      char enc[600];
      size_t o = 0;
      /* keep where they were going (percent-encoded, local paths only) */
      for (const char *c = r->path; *c && o + 4 < sizeof(enc); c++) {
        if (isalnum((unsigned char)*c) || strchr("/-._~", *c))
          enc[o++] = *c;
        else
          o += (size_t)snprintf(enc + o, sizeof(enc) - o, "%%%02X", (unsigned char)*c);
      }
      enc[o] = '\0';
      snprintf(loc, sizeof(loc), "/login?next=%s", enc);
      portal_redirect(r, loc);
    } else {
      portal_message(r, 401, "Sign in first", "Your session ended: sign in and try again.");
    }
    return;
  }
  if (strcmp(method, "POST") == 0) {
    const char *ctype = portal_header_in(r, "Content-Type");
    /* the media type, then only parameters (RFC 9110, 8.3.1): not "...urlencodedX" */
    if (r->in.len > 0 &&
        (!ctype || strncasecmp(ctype, "application/x-www-form-urlencoded", 33) != 0 ||
         (ctype[33] && !strchr("; \t", ctype[33])))) {
      portal_message(r, 415, "Unsupported form",
                     "Forms are sent as application/x-www-form-urlencoded.");
      return;
    }
    if (r->form_bad) {
      portal_message(r, 400, "Bad form", "The form data could not be read.");
      return;
    }
    if (!tg_csrf_check(r->srv->secret, binding, portal_field(r, "csrf"))) {
      portal_message(r, 403, "This form has expired",
                     "The form did not carry a valid security token (it is older than your "
                     "session, or it came from another site). Go back, reload the page and try "
                     "again.");
      return;
    }
  }
  route->handler(r);
}
