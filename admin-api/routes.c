/*
 * routes.c - the admin API's route table and handlers.
 *
 * Each route names a method, a path pattern with {placeholders}, the scope
 * a token needs, and a handler. adm_dispatch matches the path (404), the
 * method (405 + Allow), authenticates the bearer token (401), checks the
 * scope (403), wraps every mutation in one write transaction (so a failed
 * request changes nothing), honours Idempotency-Key on POST, and commits
 * only when the handler succeeded.
 *
 * Conventions (see README and /openapi.json): JSON, snake_case; POST ->
 * 201 + Location; PATCH is JSON Merge Patch (RFC 7396); DELETE -> 204;
 * strong ETag "v<version>" on single resources and If-Match on writes;
 * keyset pagination with ?limit= and an opaque ?cursor=, returned as "next"
 * and a Link: rel="next" header.
 */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin-api/adm.h"
#include "core/accounts.h"
#include "core/report.h"
#include "admin-api/openapi.h"
#include "core/config_io.h"
#include "core/lifecycle.h"
#include "core/tokens.h"
#include "core/util.h"

typedef struct route route_t;
typedef void (*handler_fn)(adm_req_t *r, const route_t *rt);

struct route {
  const char *method;
  const char *pattern;
  handler_fn fn;
  const char *scope; /* NULL: public */
  tg_entity_t ent;
  const char *arg; /* action name, or the natural key of the entity */
};

/* ---- small helpers ------------------------------------------------------ */

static const char *str(const json_t *row, const char *field) {
  const char *v = json_string_value(json_object_get(row, field));
  return v ? v : "";
}

static json_int_t version_of(const json_t *row) {
  return json_integer_value(json_object_get(row, "version"));
}

static void set_etag(adm_req_t *r, const json_t *row) {
  adm_header(r, "ETag", "\"v%lld\"", (long long)version_of(row));
}

/* Respond with one row: 200/201 with ETag (and Location on 201). */
static void reply_row(adm_req_t *r, int status, const char *collection, json_t *row) {
  set_etag(r, row);
  if (status == 201)
    adm_header(r, "Location", "/%s/%s", collection, str(row, "id"));
  adm_json(r, status, row);
}

/*
 * If-Match (RFC 9110 section 13.1.1) against the row's current version:
 * true when absent, "*", or a listed strong tag equals "v<version>".
 * Otherwise responds 412 and returns false.
 */
static bool if_match_ok(adm_req_t *r, const json_t *row) {
  const char *h = adm_header_in(r, "If-Match");
  char want[32];
  if (!h)
    return true;
  snprintf(want, sizeof(want), "\"v%lld\"", (long long)version_of(row));
  size_t wl = strlen(want);
  const char *c = h;
  while (*c) {
    while (*c == ' ' || *c == '\t' || *c == ',')
      c++;
    if (*c == '*')
      return true;
    const char *end = strchr(c, ',');
    size_t n = end ? (size_t)(end - c) : strlen(c);
    while (n > 0 && (c[n - 1] == ' ' || c[n - 1] == '\t'))
      n--;
    if (n == wl && memcmp(c, want, wl) == 0)
      return true;
    if (!end)
      break;
    c = end + 1;
  }
  set_etag(r, row);
  adm_problem(r, 412, "precondition-failed", "Precondition failed", NULL,
              "If-Match does not match the current version %s: re-read and retry", want);
  return false;
}

/* Find the entity named by a path segment: an id, or its natural key
 * (slug, email, name) when the route has one. Responds 404 on failure. */
static json_t *load(adm_req_t *r, tg_entity_t ent, const char *natural, const char *ident) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  tg_problem_t p = {0};
  json_t *row = NULL;
  int rc;
  if (tg_model_id_valid(ident, d->id_prefix) || !natural)
    rc = tg_store_get(r->store, ent, ident, &row, &p);
  else
    rc = tg_store_get_by(r->store, ent, natural, ident, &row, &p);
  if (rc == TG_ENOTFOUND || rc == TG_EINVAL) {
    adm_problem(r, 404, "not-found", "Not found", NULL, "no %s \"%.80s\"", d->name, ident);
    return NULL;
  }
  if (rc) {
    adm_fail(r, rc, &p);
    return NULL;
  }
  return row;
}

/* Opaque cursors: base64url("c1:" + last id). */
static void cursor_encode(const char *id, char *out, size_t cap) {
  char raw[TG_ID_LEN + 4];
  int n = snprintf(raw, sizeof(raw), "c1:%s", id);
  sodium_bin2base64(out, cap, (const unsigned char *)raw, (size_t)n,
                    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

static bool cursor_decode(const char *cursor, char *id, size_t cap) {
  unsigned char raw[64];
  size_t n = 0;
  if (strlen(cursor) > 80 ||
      sodium_base642bin(raw, sizeof(raw) - 1, cursor, strlen(cursor), NULL, &n, NULL,
                        sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
      n < 4 || memcmp(raw, "c1:", 3) != 0 || n - 3 >= cap)
    return false;
  memcpy(id, raw + 3, n - 3);
  id[n - 3] = '\0';
  return true;
}

/* Percent-encode a query value (RFC 3986 unreserved chars pass). */
static void url_encode(const char *in, char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (; *in && o + 4 < cap; in++) {
    unsigned char c = (unsigned char)*in;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out[o++] = (char)c;
    } else {
      out[o++] = '%';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    }
  }
  out[o] = '\0';
}

/* ---- list ---------------------------------------------------------------- */

typedef struct list_args {
  adm_req_t *r;
  const tg_entity_desc_t *d;
  const char *fixed_field; /* a filter set by the path (targets of an API) */
  tg_filter_t filters[TG_FILTER_MAX];
  int nfilters;
  const char *bad;
  char next_query[1024];
} list_args_t;

static enum MHD_Result collect_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value) {
  list_args_t *a = cls;
  if (strcmp(key, "limit") == 0 || strcmp(key, "cursor") == 0)
    return MHD_YES;
  const tg_field_t *f = tg_model_field(a->d, key);
  if (!f || !(f->flags & TG_F_FILTER) || (a->fixed_field && strcmp(key, a->fixed_field) == 0) ||
      a->nfilters == TG_FILTER_MAX) {
    a->bad = key;
    return MHD_NO;
  }
  a->filters[a->nfilters].field = f->name;
  a->filters[a->nfilters].value = value ? value : "";
  a->nfilters++;
  char enc[512];
  size_t used = strlen(a->next_query);
  url_encode(value ? value : "", enc, sizeof(enc));
  snprintf(a->next_query + used, sizeof(a->next_query) - used, "%s=%s&", f->name, enc);
  return MHD_YES;
}

/* GET a collection, with optional fixed filter (field = value). */
static void list_rows(adm_req_t *r, tg_entity_t ent, const char *base, const char *fixed_field,
                      const char *fixed_value) {
  list_args_t a = {.r = r, .d = tg_model_entity(ent), .fixed_field = fixed_field};
  char after[TG_ID_LEN + 1] = "", next[TG_ID_LEN + 1] = "";
  int limit = TG_LIST_DEFAULT;
  const char *lim = adm_query(r, "limit"), *cur = adm_query(r, "cursor");
  MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, collect_query, &a);
  if (a.bad) {
    adm_problem(r, 400, "invalid-query", "Invalid query parameter", NULL,
                "unknown or unsupported query parameter \"%.64s\" (filters: see /openapi.json)",
                a.bad);
    return;
  }
  if (lim) {
    char *end;
    errno = 0;
    long v = strtol(lim, &end, 10);
    if (errno || end == lim || *end || v < 1 || v > TG_LIST_MAX) {
      adm_problem(r, 400, "invalid-query", "Invalid query parameter", NULL,
                  "limit must be an integer from 1 to %d", TG_LIST_MAX);
      return;
    }
    limit = (int)v;
  }
  if (cur && !cursor_decode(cur, after, sizeof(after))) {
    adm_problem(r, 400, "invalid-query", "Invalid query parameter", NULL,
                "cursor is not one this list returned");
    return;
  }
  if (fixed_field) {
    a.filters[a.nfilters].field = fixed_field;
    a.filters[a.nfilters].value = fixed_value;
    a.nfilters++;
  }
  tg_list_query_t q = {.filters = a.filters,
                       .nfilters = a.nfilters,
                       .after = after[0] ? after : NULL,
                       .limit = limit};
  tg_problem_t p = {0};
  json_t *rows = NULL;
  int rc = tg_store_list(r->store, ent, &q, &rows, next, &p);
  if (rc == TG_EINVAL) {
    adm_problem(r, 400, "invalid-query", "Invalid query parameter", NULL, "%s: %s", p.field,
                p.detail);
    return;
  }
  if (rc) {
    adm_fail(r, rc, &p);
    return;
  }
  json_t *next_v = json_null();
  if (next[0]) {
    char c[128], link[1400];
    cursor_encode(next, c, sizeof(c));
    snprintf(link, sizeof(link), "%s?%slimit=%d&cursor=%s", base, a.next_query, limit, c);
    next_v = json_string(link);
    adm_header(r, "Link", "<%s>; rel=\"next\"", link);
  }
  adm_json(r, 200, json_pack("{s:o, s:o}", "data", rows, "next", next_v));
}

static void h_list(adm_req_t *r, const route_t *rt) {
  char base[64];
  snprintf(base, sizeof(base), "/%s", rt->arg ? rt->arg : tg_model_entity(rt->ent)->table);
  list_rows(r, rt->ent, base, NULL, NULL);
}

/* ---- get / create / update / delete ------------------------------------- */

static const char *collection_of(tg_entity_t ent) {
  switch (ent) {
  case TG_ENT_ADMIN_TOKEN: return "admin-tokens";
  case TG_ENT_AUDIT: return "audit";
  case TG_ENT_MAIL: return "mail";
  default: return tg_model_entity(ent)->table;
  }
}

static const char *natural_key_of(tg_entity_t ent) {
  switch (ent) {
  case TG_ENT_API: return "slug";
  case TG_ENT_DEVELOPER: return "email";
  case TG_ENT_ADMIN_TOKEN: return "name";
  default: return NULL;
  }
}

static void h_get(adm_req_t *r, const route_t *rt) {
  json_t *row = load(r, rt->ent, natural_key_of(rt->ent), r->params[0]);
  if (row)
    reply_row(r, 200, collection_of(rt->ent), row);
}

/* Finish a create: audit and 201. Takes the row. */
static void created(adm_req_t *r, tg_entity_t ent, json_t *row, const char *secret_member,
                    const char *secret) {
  if (!adm_audit(r, "create", ent, str(row, "id"), NULL, row)) {
    json_decref(row);
    return;
  }
  set_etag(r, row);
  adm_header(r, "Location", "/%s/%s", collection_of(ent), str(row, "id"));
  if (secret_member)
    json_object_set_new(row, secret_member, json_string(secret));
  adm_json(r, 201, row);
}

static void h_create(adm_req_t *r, const route_t *rt) {
  json_t *body = adm_body_object(r, false), *row = NULL;
  tg_problem_t p = {0};
  int rc;
  if (!body)
    return;
  switch (rt->ent) {
  case TG_ENT_APP: rc = tg_app_create(r->store, body, &row, &p); break;
  case TG_ENT_SUBSCRIPTION: rc = tg_subscription_create(r->store, body, &row, &p); break;
  case TG_ENT_DEVELOPER:
    /* a developer the publisher creates is invited, not pending approval */
    if (!json_object_get(body, "status"))
      json_object_set_new(body, "status", json_string("active"));
    rc = tg_store_create(r->store, rt->ent, body, false, &row, &p);
    break;
  default: rc = tg_store_create(r->store, rt->ent, body, false, &row, &p);
  }
  json_decref(body);
  if (rc) {
    adm_fail(r, rc, &p);
    return;
  }
  created(r, rt->ent, row, NULL, NULL);
}

/* RFC 7396 JSON Merge Patch of `patch` onto `target` (both borrowed);
 * returns a new value. */
static json_t *merge_patch(const json_t *target, const json_t *patch) {
  if (!json_is_object(patch))
    return json_deep_copy(patch);
  json_t *out = json_is_object(target) ? json_deep_copy(target) : json_object();
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)patch, k, v) {
    if (!out)
      break;
    if (json_is_null(v)) {
      json_object_del(out, k);
    } else {
      json_t *merged = merge_patch(json_object_get(out, k), v);
      if (!merged || json_object_set_new(out, k, merged)) {
        json_decref(out);
        return NULL;
      }
    }
  }
  return out;
}

/* The store update for a merge patch: top-level null means "set null" (a
 * column), objects merge into JSON-document columns (RFC 7396 4.). */
static json_t *patch_changes(const tg_entity_desc_t *d, const json_t *cur, const json_t *patch) {
  json_t *changes = json_object();
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)patch, k, v) {
    const tg_field_t *f = tg_model_field(d, k);
    json_t *nv;
    if (f && f->type == TG_FT_JSON && json_is_object(v) && json_is_object(json_object_get(cur, k)))
      nv = merge_patch(json_object_get(cur, k), v);
    else
      nv = json_incref(v);
    if (!changes || !nv || json_object_set_new(changes, k, nv)) {
      json_decref(changes);
      return NULL;
    }
  }
  return changes;
}

static void update_row(adm_req_t *r, tg_entity_t ent, json_t *cur, const json_t *changes) {
  tg_problem_t p = {0};
  json_t *row = NULL;
  int rc =
      tg_store_update(r->store, ent, str(cur, "id"), changes, false, version_of(cur), &row, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    return;
  }
  if (!adm_audit(r, "update", ent, str(row, "id"), cur, row)) {
    json_decref(row);
    return;
  }
  reply_row(r, 200, collection_of(ent), row);
}

/* Status changes of these entities carry rules and cascades (lifecycle.h):
 * they go through the action routes, never a plain PATCH. */
static const char *status_actions(tg_entity_t ent) {
  switch (ent) {
  case TG_ENT_DEVELOPER: return "POST .../approve, .../suspend, .../unsuspend or DELETE";
  case TG_ENT_APP: return "DELETE";
  case TG_ENT_SUBSCRIPTION: return "POST .../approve, .../suspend, .../resume or .../cancel";
  case TG_ENT_KEY: return "POST .../rotate or .../revoke";
  default: return NULL;
  }
}

static void h_patch(adm_req_t *r, const route_t *rt) {
  json_t *cur = load(r, rt->ent, natural_key_of(rt->ent), r->params[0]);
  json_t *body = NULL, *changes = NULL;
  if (!cur || !if_match_ok(r, cur) || !(body = adm_body_object(r, true)))
    goto out;
  const char *actions = status_actions(rt->ent);
  if (actions && json_object_get(body, "status")) {
    tg_problem_t p = {0};
    tg_problem_add(&p, TG_EINVAL, "/status", "cannot be patched; use %s", actions);
    adm_fail(r, TG_EINVAL, &p);
    goto out;
  }
  if (!(changes = patch_changes(tg_model_entity(rt->ent), cur, body))) {
    adm_fail(r, TG_ENOMEM, NULL);
    goto out;
  }
  update_row(r, rt->ent, cur, changes);
out:
  json_decref(cur);
  json_decref(body);
  json_decref(changes);
}

/* PUT /apis/{slug}: create or replace by slug. A replacement resets every
 * member the body leaves out to its default (RFC 9110 9.3.4: the body is
 * the new state), except the slug, which the path gives. */
static void h_put_api(adm_req_t *r, const route_t *rt) {
  static const char *const defaults =
      "{\"description\":\"\",\"hosts\":[],\"path_prefix\":\"/\",\"methods\":[],"
      "\"strip_prefix\":false,\"connect_timeout_ms\":5000,\"read_timeout_ms\":60000,"
      "\"write_timeout_ms\":60000,\"retries\":1,\"auth_mode\":\"key\","
      "\"key_query_param\":null,\"max_body_bytes\":10485760,\"portal_visible\":true,"
      "\"openapi\":null,\"healthcheck_path\":null,\"healthcheck_interval_ms\":5000,"
      "\"healthcheck_timeout_ms\":2000,\"healthy_threshold\":2,\"unhealthy_threshold\":3,"
      "\"passive_failures\":3,\"passive_cooldown_ms\":10000}";
  const char *slug = r->params[0];
  json_t *body = adm_body_object(r, false), *cur = NULL, *state = NULL, *row = NULL, *rename = NULL;
  tg_problem_t p = {0};
  if (!body)
    return;
  const json_t *bslug = json_object_get(body, "slug");
  if (bslug && !tg_model_id_valid(slug, "api") &&
      (!json_is_string(bslug) || strcmp(json_string_value(bslug), slug) != 0)) {
    tg_problem_add(&p, TG_EINVAL, "/slug", "must equal the slug in the path (\"%.63s\")", slug);
    adm_fail(r, TG_EINVAL, &p);
    goto out;
  }
  /* with an id in the path, a slug in the body renames; else the path's slug rules */
  rename = tg_model_id_valid(slug, "api") ? json_incref(json_object_get(body, "slug")) : NULL;
  json_object_del(body, "slug");
  int rc;
  if (tg_model_id_valid(slug, "api")) {
    /* PUT on an existing API by id replaces it; ids are never client-made */
    if (!(cur = load(r, TG_ENT_API, NULL, slug)))
      goto out;
    rc = TG_OK;
  } else {
    rc = tg_store_get_by(r->store, TG_ENT_API, "slug", slug, &cur, &p);
  }
  if (rc == TG_ENOTFOUND && adm_header_in(r, "If-Match")) {
    /* RFC 9110 13.1.1: If-Match fails when there is no current resource */
    adm_problem(r, 412, "precondition-failed", "Precondition failed", NULL,
                "If-Match given but api \"%.63s\" does not exist", slug);
    goto out;
  }
  if (rc == TG_ENOTFOUND) {
    tg_problem_clear(&p);
    json_object_set_new(body, "slug", json_string_nocheck(slug));
    if ((rc = tg_store_create(r->store, TG_ENT_API, body, false, &row, &p))) {
      adm_fail(r, rc, &p);
      goto out;
    }
    created(r, TG_ENT_API, row, NULL, NULL);
    goto out;
  }
  if (rc) {
    adm_fail(r, rc, &p);
    goto out;
  }
  if (!if_match_ok(r, cur))
    goto out;
  state = json_loads(defaults, 0, NULL);
  if (!state || json_object_update(state, body) ||
      (rename && json_object_set(state, "slug", rename))) {
    adm_fail(r, TG_ENOMEM, NULL);
    goto out;
  }
  update_row(r, TG_ENT_API, cur, state);
out:
  json_decref(body);
  json_decref(cur);
  json_decref(state);
  json_decref(rename);
  (void)rt;
}

static void h_delete(adm_req_t *r, const route_t *rt) {
  json_t *cur = load(r, rt->ent, natural_key_of(rt->ent), r->params[0]), *after = NULL;
  tg_problem_t p = {0};
  int rc;
  if (!cur || !if_match_ok(r, cur))
    goto out;
  const char *id = str(cur, "id");
  switch (rt->ent) {
  case TG_ENT_DEVELOPER: rc = tg_developer_delete(r->store, id, &after, &p); break;
  case TG_ENT_APP: rc = tg_app_delete(r->store, id, &after, &p); break;
  case TG_ENT_SUBSCRIPTION:
    rc = strcmp(str(cur, "status"), "cancelled") == 0
             ? TG_OK
             : tg_subscription_transition(r->store, id, "cancel", &after, &p);
    break;
  case TG_ENT_KEY: rc = tg_key_revoke(r->store, id, &after, &p); break;
  case TG_ENT_ADMIN_TOKEN: rc = tg_admin_token_revoke(r->store, id, &after, &p); break;
  default: rc = tg_store_delete(r->store, rt->ent, id, version_of(cur), &p);
  }
  if (rc) {
    adm_fail(r, rc, &p);
    goto out;
  }
  if (adm_audit(r, "delete", rt->ent, id, cur, after))
    adm_no_content(r);
out:
  json_decref(cur);
  json_decref(after);
}

/* POST /{collection}/{id}/{action}: status transitions. */
static void h_action(adm_req_t *r, const route_t *rt) {
  json_t *cur = load(r, rt->ent, natural_key_of(rt->ent), r->params[0]), *row = NULL;
  tg_problem_t p = {0};
  int rc;
  if (!cur || !if_match_ok(r, cur))
    goto out;
  const char *id = str(cur, "id");
  if (rt->ent == TG_ENT_DEVELOPER)
    rc = tg_developer_transition(r->store, id, rt->arg, &row, &p);
  else if (rt->ent == TG_ENT_SUBSCRIPTION)
    rc = tg_subscription_transition(r->store, id, rt->arg, &row, &p);
  else
    rc = tg_key_revoke(r->store, id, &row, &p);
  /* an approval is news for the developer: mail them (same transaction) */
  if (!rc && strcmp(rt->arg, "approve") == 0)
    rc = rt->ent == TG_ENT_DEVELOPER
             ? tg_mail_developer_approved(r->store, row, r->srv->portal_url, &p)
             : tg_mail_subscription_approved(r->store, row, r->srv->portal_url, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    goto out;
  }
  if (adm_audit(r, rt->arg, rt->ent, id, cur, row)) {
    reply_row(r, 200, collection_of(rt->ent), row);
    row = NULL;
  }
out:
  json_decref(cur);
  json_decref(row);
}

/* ---- targets (nested under an API) -------------------------------------- */

static void h_targets_list(adm_req_t *r, const route_t *rt) {
  json_t *api = load(r, TG_ENT_API, "slug", r->params[0]);
  if (!api)
    return;
  char base[128];
  snprintf(base, sizeof(base), "/apis/%s/targets", str(api, "id"));
  list_rows(r, TG_ENT_TARGET, base, "api_id", str(api, "id"));
  json_decref(api);
  (void)rt;
}

static void h_targets_create(adm_req_t *r, const route_t *rt) {
  json_t *api = load(r, TG_ENT_API, "slug", r->params[0]), *body = NULL, *row = NULL;
  tg_problem_t p = {0};
  if (!api || !(body = adm_body_object(r, false)))
    goto out;
  if (json_object_get(body, "api_id")) {
    tg_problem_add(&p, TG_EINVAL, "/api_id", "is given by the path");
    adm_fail(r, TG_EINVAL, &p);
    goto out;
  }
  json_object_set(body, "api_id", json_object_get(api, "id"));
  int rc = tg_store_create(r->store, TG_ENT_TARGET, body, false, &row, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    goto out;
  }
  if (!adm_audit(r, "create", TG_ENT_TARGET, str(row, "id"), NULL, row))
    goto out;
  set_etag(r, row);
  adm_header(r, "Location", "/apis/%s/targets/%s", str(api, "id"), str(row, "id"));
  adm_json(r, 201, row);
  row = NULL;
out:
  json_decref(api);
  json_decref(body);
  json_decref(row);
  (void)rt;
}

/* The target named by the path, which must belong to the API named. */
static json_t *load_target(adm_req_t *r, json_t **api_out) {
  json_t *api = load(r, TG_ENT_API, "slug", r->params[0]), *t = NULL;
  if (!api)
    return NULL;
  t = load(r, TG_ENT_TARGET, NULL, r->params[1]);
  if (t && strcmp(str(t, "api_id"), str(api, "id")) != 0) {
    json_decref(t);
    t = NULL;
    adm_problem(r, 404, "not-found", "Not found", NULL, "no target \"%.40s\" in api \"%.80s\"",
                r->params[1], r->params[0]);
  }
  *api_out = api;
  return t;
}

static void h_target_get(adm_req_t *r, const route_t *rt) {
  json_t *api = NULL, *t = load_target(r, &api);
  if (t) {
    set_etag(r, t);
    adm_json(r, 200, t);
  }
  json_decref(api);
  (void)rt;
}

static void h_target_patch(adm_req_t *r, const route_t *rt) {
  json_t *api = NULL, *t = load_target(r, &api), *body = NULL;
  if (t && if_match_ok(r, t) && (body = adm_body_object(r, true)))
    update_row(r, TG_ENT_TARGET, t, body);
  json_decref(api);
  json_decref(t);
  json_decref(body);
  (void)rt;
}

static void h_target_delete(adm_req_t *r, const route_t *rt) {
  json_t *api = NULL, *t = load_target(r, &api);
  tg_problem_t p = {0};
  if (t && if_match_ok(r, t)) {
    int rc = tg_store_delete(r->store, TG_ENT_TARGET, str(t, "id"), version_of(t), &p);
    if (rc)
      adm_fail(r, rc, &p);
    else if (adm_audit(r, "delete", TG_ENT_TARGET, str(t, "id"), t, NULL))
      adm_no_content(r);
  }
  json_decref(api);
  json_decref(t);
  (void)rt;
}

/* ---- an API's OpenAPI document -------------------------------------------- */

static void h_api_openapi_get(adm_req_t *r, const route_t *rt) {
  json_t *api = load(r, TG_ENT_API, "slug", r->params[0]);
  if (!api)
    return;
  json_t *doc = json_object_get(api, "openapi");
  if (json_is_object(doc)) {
    set_etag(r, api); /* the API's version: what PUT .../openapi checks */
    adm_json(r, 200, json_incref(doc));
  } else
    adm_problem(r, 404, "not-found", "Not found", NULL, "api \"%.80s\" has no OpenAPI document",
                r->params[0]);
  json_decref(api);
  (void)rt;
}

static void h_api_openapi_put(adm_req_t *r, const route_t *rt) {
  json_t *api = load(r, TG_ENT_API, "slug", r->params[0]), *body = NULL, *changes = NULL;
  if (api && if_match_ok(r, api) && (body = adm_body_object(r, false))) {
    changes = json_pack("{s:O}", "openapi", body);
    if (changes)
      update_row(r, TG_ENT_API, api, changes);
    else
      adm_fail(r, TG_ENOMEM, NULL);
  }
  json_decref(api);
  json_decref(body);
  json_decref(changes);
  (void)rt;
}

/* ---- keys and admin tokens: secrets shown once ---------------------------- */

/* An optional integer member: absent or null gives 0. Responds 422 and
 * returns false when it is something else. */
static bool optional_int(adm_req_t *r, const json_t *body, const char *name, int64_t *out) {
  const json_t *v = json_object_get(body, name);
  *out = 0;
  if (!v || json_is_null(v))
    return true;
  if (!json_is_integer(v)) {
    tg_problem_t p = {0};
    char ptr[80];
    snprintf(ptr, sizeof(ptr), "/%s", name);
    tg_problem_add(&p, TG_EINVAL, ptr, "must be an integer");
    adm_fail(r, TG_EINVAL, &p);
    return false;
  }
  *out = json_integer_value(v);
  return true;
}

/* Only the listed members may appear in the body. */
static bool only_members(adm_req_t *r, const json_t *body, const char *const *allowed) {
  tg_problem_t p = {0};
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)body, k, v) {
    bool ok = false;
    for (const char *const *a = allowed; *a && !ok; a++)
      ok = strcmp(*a, k) == 0;
    if (!ok) {
      char ptr[TG_PROBLEM_FIELD_MAX];
      snprintf(ptr, sizeof(ptr), "/%.100s", k);
      tg_problem_add(&p, TG_EINVAL, ptr, "unknown field \"%.64s\"", k);
    }
  }
  if (p.code)
    adm_fail(r, TG_EINVAL, &p);
  return p.code == TG_OK;
}

static void h_key_create(adm_req_t *r, const route_t *rt) {
  static const char *const allowed[] = {"app_id", "name", "expires_at", NULL};
  json_t *body = adm_body_object(r, false), *row = NULL;
  char key[TG_TOKEN_MAX_LEN + 1];
  tg_problem_t p = {0};
  int64_t expires = 0;
  if (!body || !only_members(r, body, allowed) || !optional_int(r, body, "expires_at", &expires))
    goto out;
  const json_t *name = json_object_get(body, "name");
  if (name && !json_is_string(name)) {
    tg_problem_add(&p, TG_EINVAL, "/name", "must be a string");
    adm_fail(r, TG_EINVAL, &p);
    goto out;
  }
  int rc =
      tg_key_create(r->store, &r->srv->secret, json_string_value(json_object_get(body, "app_id")),
                    json_string_value(name), expires, key, &row, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    goto out;
  }
  created(r, TG_ENT_KEY, row, "key", key);
  sodium_memzero(key, sizeof(key));
out:
  json_decref(body);
  (void)rt;
}

static void h_key_rotate(adm_req_t *r, const route_t *rt) {
  static const char *const allowed[] = {"grace_seconds", NULL};
  json_t *cur = load(r, TG_ENT_KEY, NULL, r->params[0]), *body = NULL, *fresh = NULL, *old = NULL;
  char key[TG_TOKEN_MAX_LEN + 1];
  tg_problem_t p = {0};
  int64_t grace = 86400;
  if (!cur || !if_match_ok(r, cur))
    goto out;
  if (r->in.len > 0) {
    if (!(body = adm_body_object(r, false)) || !only_members(r, body, allowed))
      goto out;
    if (json_object_get(body, "grace_seconds") && !optional_int(r, body, "grace_seconds", &grace))
      goto out;
  }
  int rc = tg_key_rotate(r->store, &r->srv->secret, str(cur, "id"), grace, key, &fresh, &old, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    goto out;
  }
  if (!adm_audit(r, "rotate", TG_ENT_KEY, str(cur, "id"), cur, old))
    goto out;
  json_object_set_new(fresh, "key", json_string(key));
  json_object_set(fresh, "previous", old);
  set_etag(r, fresh);
  adm_header(r, "Location", "/keys/%s", str(fresh, "id"));
  adm_json(r, 201, fresh);
  fresh = NULL;
out:
  sodium_memzero(key, sizeof(key));
  json_decref(cur);
  json_decref(body);
  json_decref(fresh);
  json_decref(old);
  (void)rt;
}

static void h_token_create(adm_req_t *r, const route_t *rt) {
  static const char *const allowed[] = {"name", "scopes", "expires_at", NULL};
  json_t *body = adm_body_object(r, false), *row = NULL;
  char token[TG_TOKEN_MAX_LEN + 1];
  tg_problem_t p = {0};
  int64_t expires = 0;
  if (!body || !only_members(r, body, allowed) || !optional_int(r, body, "expires_at", &expires))
    goto out;
  const json_t *name = json_object_get(body, "name");
  if (!json_is_string(name)) {
    tg_problem_add(&p, TG_EINVAL, "/name", name ? "must be a string" : "is required");
    adm_fail(r, TG_EINVAL, &p);
    goto out;
  }
  if (expires != 0 && expires <= tg_now()) {
    tg_problem_add(&p, TG_EINVAL, "/expires_at", "must be in the future");
    adm_fail(r, TG_EINVAL, &p);
    goto out;
  }
  int rc = tg_admin_token_create(r->store, &r->srv->secret, json_string_value(name),
                                 json_object_get(body, "scopes"), expires, token, &row, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    goto out;
  }
  created(r, TG_ENT_ADMIN_TOKEN, row, "token", token);
  sodium_memzero(token, sizeof(token));
out:
  json_decref(body);
  (void)rt;
}

/* ---- declarative config, usage, health, discovery -------------------------- */

static void h_config_export(adm_req_t *r, const route_t *rt) {
  json_t *doc = NULL;
  tg_problem_t p = {0};
  int rc = tg_config_export(r->store, &doc, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    return;
  }
  char *text = json_dumps(doc, JSON_INDENT(2));
  json_decref(doc);
  if (!text) {
    adm_fail(r, TG_ENOMEM, NULL);
    return;
  }
  adm_raw(r, 200, "application/json", text, strlen(text));
  free(text);
  (void)rt;
}

static bool bool_query(adm_req_t *r, const char *name, bool *out) {
  const char *v = adm_query(r, name);
  *out = false;
  if (!v)
    return true;
  if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "") == 0) {
    *out = true;
    return true;
  }
  if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
    return true;
  adm_problem(r, 400, "invalid-query", "Invalid query parameter", NULL, "%s must be true or false",
              name);
  return false;
}

static void h_config_import(adm_req_t *r, const route_t *rt) {
  bool dry = false, prune = false;
  json_t *doc = NULL, *diff = NULL;
  tg_problem_t p = {0};
  if (!bool_query(r, "dry_run", &dry) || !bool_query(r, "prune", &prune) ||
      !(doc = adm_body_object(r, false)))
    goto out;
  int rc = tg_config_import(r->store, doc, prune, &diff, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    goto out;
  }
  if (!dry) {
    json_t *summary = json_pack("{s:O}", "diff", diff);
    bool ok = adm_audit(r, "import", TG_ENT_API, "", NULL, summary);
    json_decref(summary);
    if (!ok)
      goto out;
  }
  json_object_set_new(diff, "dry_run", json_boolean(dry));
  adm_json(r, 200, diff);
  diff = NULL;
  if (dry)
    r->status = 200; /* the dispatcher rolls back dry runs */
out:
  json_decref(doc);
  json_decref(diff);
  (void)rt;
}

static const char *query_get(void *ctx, const char *name) {
  return adm_query((adm_req_t *)ctx, name);
}

/* Reports stream from a store connection of their own, in one read
 * transaction: the numbers are one consistent view however long the
 * transfer takes. */
static void report_stream(adm_req_t *r, tg_report_t *rep, tg_store_t *s, const char *filename) {
  adm_header(r, "Content-Disposition", "%s; filename=\"%s\"",
             strncmp(tg_report_type(rep), "text/csv", 8) == 0 ? "attachment" : "inline", filename);
  adm_stream(r, 200, tg_report_type(rep), rep, s);
}

static void h_usage(adm_req_t *r, const route_t *rt) {
  (void)rt;
  tg_problem_t p = {0};
  tg_report_params_t rp;
  int rc = tg_report_params_parse(r->store, query_get, r, adm_header_in(r, "Accept"), &rp, &p);
  if (rc == TG_EINVAL) {
    adm_problem(r, 400, "invalid-query", "Invalid query parameter", &p, "%s: %s", p.field,
                p.detail);
    return;
  }
  tg_store_t *s = rc ? NULL : adm_open_store(r->srv, &p);
  tg_report_t *rep = NULL;
  if (!rc && !s)
    rc = p.code ? (int)p.code : TG_ESTORE;
  if (!rc && (rc = tg_report_open(s, &rp, &rep, &p)) == TG_EINVAL) {
    tg_store_close(s);
    adm_problem(r, 422, "range-not-available", "The range cannot be reported", &p, "%s: %s",
                p.field, p.detail);
    return;
  }
  if (rc) {
    tg_store_close(s);
    adm_fail(r, rc, &p);
    return;
  }
  char a[21], b[21], name[96];
  tg_time_format(rp.q.from, a);
  tg_time_format(rp.q.to, b);
  snprintf(name, sizeof(name), "usage-%.10s-%.10s.%s", a, b,
           rp.format == TG_REPORT_CSV ? "csv" : "json");
  report_stream(r, rep, s, name);
}

static void h_billing(adm_req_t *r, const route_t *rt) {
  (void)rt;
  const char *period = adm_query(r, "period"), *fmt = adm_query(r, "format");
  const char *accept = adm_header_in(r, "Accept");
  tg_problem_t p = {0};
  int64_t a, b;
  if (!period || tg_billing_period(period, &a, &b) != 0)
    tg_problem_add(&p, TG_EINVAL, "period", "must be a month as YYYY-MM (e.g. 2026-11)");
  if (fmt && strcmp(fmt, "json") != 0 && strcmp(fmt, "csv") != 0)
    tg_problem_add(&p, TG_EINVAL, "format", "must be json or csv");
  if (p.code) {
    adm_problem(r, 400, "invalid-query", "Invalid query parameter", &p, "%s: %s", p.field,
                p.detail);
    return;
  }
  bool csv = fmt ? strcmp(fmt, "csv") == 0 : (accept && strstr(accept, "text/csv"));
  tg_store_t *s = adm_open_store(r->srv, &p);
  if (!s) {
    adm_fail(r, p.code ? (int)p.code : TG_ESTORE, &p);
    return;
  }
  tg_report_t *rep = NULL;
  int rc = tg_billing_open(s, period, csv ? TG_REPORT_CSV : TG_REPORT_JSON, tg_now(),
                           tg_config_int(r->srv->cfg, "billing_close_after") / 1000, &rep, &p);
  if (rc) {
    tg_store_close(s);
    if (rc == TG_EINVAL)
      adm_problem(r, 422, "period-not-available", "The period cannot be billed", &p, "%s: %s",
                  p.field, p.detail);
    else
      adm_fail(r, rc, &p);
    return;
  }
  char name[64];
  snprintf(name, sizeof(name), "billing-%s.%s", period, csv ? "csv" : "json");
  report_stream(r, rep, s, name);
}

static void h_health(adm_req_t *r, const route_t *rt) {
  int version = 0;
  bool ok = tg_store_schema_version(r->store, &version) == TG_OK;
  adm_json(r, ok ? 200 : 503,
           json_pack("{s:s, s:i, s:s}", "status", ok ? "ok" : "unavailable", "schema", version,
                     "store", tg_store_backend(r->store)));
  (void)rt;
}

static void h_openapi(adm_req_t *r, const route_t *rt) {
  adm_raw(r, 200, "application/openapi+json", adm_openapi_json, adm_openapi_json_len);
  (void)rt;
}

static void h_api_catalog(adm_req_t *r, const route_t *rt) {
  /* RFC 9727 API catalog as an RFC 9264 linkset */
  adm_json(r, 200,
           json_pack("{s:[{s:s, s:[{s:s, s:s}]}]}", "linkset", "anchor", "/", "service-desc",
                     "href", "/openapi.json", "type", "application/openapi+json"));
  r->resp_type = "application/linkset+json";
  (void)rt;
}

/* ---- the table -------------------------------------------------------------- */

#define CRUD(coll, ent, rs, ws)                                                                    \
  {"GET", "/" coll, h_list, rs, ent, coll}, {"POST", "/" coll, h_create, ws, ent, NULL},           \
      {"GET", "/" coll "/{id}", h_get, rs, ent, NULL},                                             \
      {"PATCH", "/" coll "/{id}", h_patch, ws, ent, NULL}, {                                       \
    "DELETE", "/" coll "/{id}", h_delete, ws, ent, NULL                                            \
  }

static const route_t routes[] = {
    {"GET", "/health", h_health, NULL, TG_ENT_API, NULL},
    {"GET", "/openapi.json", h_openapi, NULL, TG_ENT_API, NULL},
    {"GET", "/.well-known/api-catalog", h_api_catalog, NULL, TG_ENT_API, NULL},
    CRUD("apis", TG_ENT_API, "read", "write"),
    {"PUT", "/apis/{id}", h_put_api, "write", TG_ENT_API, NULL},
    {"GET", "/apis/{id}/openapi", h_api_openapi_get, "read", TG_ENT_API, NULL},
    {"PUT", "/apis/{id}/openapi", h_api_openapi_put, "write", TG_ENT_API, NULL},
    {"GET", "/apis/{id}/targets", h_targets_list, "read", TG_ENT_TARGET, NULL},
    {"POST", "/apis/{id}/targets", h_targets_create, "write", TG_ENT_TARGET, NULL},
    {"GET", "/apis/{id}/targets/{tid}", h_target_get, "read", TG_ENT_TARGET, NULL},
    {"PATCH", "/apis/{id}/targets/{tid}", h_target_patch, "write", TG_ENT_TARGET, NULL},
    {"DELETE", "/apis/{id}/targets/{tid}", h_target_delete, "write", TG_ENT_TARGET, NULL},
    CRUD("plans", TG_ENT_PLAN, "read", "write"),
    CRUD("developers", TG_ENT_DEVELOPER, "read", "write"),
    {"POST", "/developers/{id}/approve", h_action, "write", TG_ENT_DEVELOPER, "approve"},
    {"POST", "/developers/{id}/suspend", h_action, "write", TG_ENT_DEVELOPER, "suspend"},
    {"POST", "/developers/{id}/unsuspend", h_action, "write", TG_ENT_DEVELOPER, "unsuspend"},
    CRUD("apps", TG_ENT_APP, "read", "write"),
    CRUD("subscriptions", TG_ENT_SUBSCRIPTION, "read", "write"),
    {"POST", "/subscriptions/{id}/approve", h_action, "write", TG_ENT_SUBSCRIPTION, "approve"},
    {"POST", "/subscriptions/{id}/suspend", h_action, "write", TG_ENT_SUBSCRIPTION, "suspend"},
    {"POST", "/subscriptions/{id}/resume", h_action, "write", TG_ENT_SUBSCRIPTION, "resume"},
    {"POST", "/subscriptions/{id}/cancel", h_action, "write", TG_ENT_SUBSCRIPTION, "cancel"},
    {"GET", "/keys", h_list, "read", TG_ENT_KEY, "keys"},
    {"POST", "/keys", h_key_create, "keys", TG_ENT_KEY, NULL},
    {"GET", "/keys/{id}", h_get, "read", TG_ENT_KEY, NULL},
    {"PATCH", "/keys/{id}", h_patch, "keys", TG_ENT_KEY, NULL},
    {"DELETE", "/keys/{id}", h_delete, "keys", TG_ENT_KEY, NULL},
    {"POST", "/keys/{id}/rotate", h_key_rotate, "keys", TG_ENT_KEY, NULL},
    {"POST", "/keys/{id}/revoke", h_action, "keys", TG_ENT_KEY, "revoke"},
    {"GET", "/admin-tokens", h_list, "admin", TG_ENT_ADMIN_TOKEN, "admin-tokens"},
    {"POST", "/admin-tokens", h_token_create, "admin", TG_ENT_ADMIN_TOKEN, NULL},
    {"GET", "/admin-tokens/{id}", h_get, "admin", TG_ENT_ADMIN_TOKEN, NULL},
    {"DELETE", "/admin-tokens/{id}", h_delete, "admin", TG_ENT_ADMIN_TOKEN, NULL},
    {"GET", "/audit", h_list, "admin", TG_ENT_AUDIT, "audit"},
    {"GET", "/mail", h_list, "admin", TG_ENT_MAIL, "mail"},
    {"GET", "/mail/{id}", h_get, "admin", TG_ENT_MAIL, NULL},
    {"GET", "/config", h_config_export, "read", TG_ENT_API, NULL},
    {"POST", "/config", h_config_import, "write", TG_ENT_API, NULL},
    {"GET", "/usage", h_usage, "reports", TG_ENT_API, NULL},
    {"GET", "/billing", h_billing, "reports", TG_ENT_API, NULL},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

void adm_routes_print(FILE *out) {
  for (size_t i = 0; i < NROUTES; i++)
    fprintf(out, "%s %s %s\n", routes[i].method, routes[i].pattern,
            routes[i].scope ? routes[i].scope : "-");
}

/* Match path against pattern; on success copy {params} (malloc'd). */
static bool match(const char *pattern, const char *path, char *params[ADM_MAX_PARAMS]) {
  int np = 0;
  const char *p = pattern, *u = path;
  char *got[ADM_MAX_PARAMS] = {0};
  while (*p && *u) {
    if (*p != '/' || *u != '/')
      goto fail;
    p++, u++;
    const char *pe = strchr(p, '/'), *ue = strchr(u, '/');
    size_t pl = pe ? (size_t)(pe - p) : strlen(p), ul = ue ? (size_t)(ue - u) : strlen(u);
    if (ul == 0)
      goto fail;
    if (p[0] == '{') {
      if (np == ADM_MAX_PARAMS || !(got[np] = strndup(u, ul)))
        goto fail;
      np++;
    } else if (pl != ul || memcmp(p, u, pl) != 0) {
      goto fail;
    }
    p += pl, u += ul;
  }
  if (*p || *u)
    goto fail;
  for (int i = 0; i < ADM_MAX_PARAMS; i++) {
    free(params[i]);
    params[i] = got[i];
  }
  return true;
fail:
  for (int i = 0; i < ADM_MAX_PARAMS; i++)
    free(got[i]);
  return false;
}

static bool has_scope(const json_t *token, const char *scope) {
  size_t i;
  json_t *s;
  json_array_foreach(json_object_get(token, "scopes"), i, s) {
    const char *v = json_string_value(s);
    if (v && (strcmp(v, scope) == 0 || strcmp(v, "admin") == 0))
      return true;
  }
  return false;
}

static bool authenticate(adm_req_t *r) {
  const char *h = adm_header_in(r, "Authorization");
  tg_problem_t p = {0};
  adm_header(r, "WWW-Authenticate", "Bearer realm=\"tollgate-admin\"%s",
             h ? ", error=\"invalid_token\"" : "");
  if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
    adm_problem(r, 401, "unauthorized", "Authentication required", NULL,
                h ? "use Authorization: Bearer <admin token>"
                  : "no Authorization header: send Authorization: Bearer <admin token>");
    return false;
  }
  const char *tok = h + 7;
  while (*tok == ' ')
    tok++;
  int rc = tg_admin_token_authenticate(r->store, &r->srv->secret, tok, strlen(tok), &r->token, &p);
  if (rc == TG_EAUTH) {
    adm_problem(r, 401, "unauthorized", "Authentication required", NULL,
                "the admin token is not valid (unknown, revoked, expired or mistyped)");
    return false;
  }
  if (rc) {
    adm_fail(r, rc, &p);
    return false;
  }
  /* the header served its purpose */
  free(r->hdrs.h[r->hdrs.n - 1].value);
  r->hdrs.n--;
  r->actor = str(r->token, "name");
  /* last_used_at to the minute: enough for "is this token still in use?",
   * and at most one small write per token per minute */
  json_int_t last = json_integer_value(json_object_get(r->token, "last_used_at"));
  int64_t now = tg_now();
  if (now - last >= 60) {
    pthread_mutex_lock(&r->srv->write_lock);
    tg_problem_t ignore = {0};
    if (tg_store_touch(r->store, TG_ENT_ADMIN_TOKEN, str(r->token, "id"), "last_used_at", now,
                       &ignore) == TG_OK)
      json_object_set_new(r->token, "last_used_at", json_integer(now));
    pthread_mutex_unlock(&r->srv->write_lock);
  }
  return true;
}

/* Run a mutation in one transaction, with Idempotency-Key on POST. */
static void run_write_locked(adm_req_t *r, const route_t *rt) {
  tg_problem_t p = {0};
  tg_idem_t idem;
  const char *ikey = strcmp(r->method, "POST") == 0 ? adm_header_in(r, "Idempotency-Key") : NULL;
  int rc = tg_store_begin(r->store, &p);
  if (rc) {
    adm_fail(r, rc, &p);
    return;
  }
  if (ikey) {
    char path_query[2048];
    const char *dry = adm_query(r, "dry_run"), *prune = adm_query(r, "prune");
    snprintf(path_query, sizeof(path_query), "%s?dry_run=%s&prune=%s", r->path, dry ? dry : "",
             prune ? prune : "");
    rc = tg_idem_init(&idem, &r->srv->secret, str(r->token, "id"), ikey, r->method, path_query,
                      r->in.data ? r->in.data : "", r->in.len, &p);
    if (rc) {
      tg_store_rollback(r->store);
      adm_problem(r, 400, "invalid-header", "Invalid header", NULL, "Idempotency-Key %s", p.detail);
      return;
    }
    int status = 0;
    char *saved = NULL;
    size_t len = 0;
    rc = tg_idem_lookup(r->store, &idem, &status, &saved, &len, &p);
    if (rc == TG_OK) {
      tg_store_rollback(r->store);
      json_t *env = json_loadb(saved, len, 0, NULL);
      sodium_memzero(saved, len);
      free(saved);
      if (!env) {
        adm_fail(r, TG_ESTORE, NULL);
        return;
      }
      const char *loc = json_string_value(json_object_get(env, "location"));
      const char *etag = json_string_value(json_object_get(env, "etag"));
      if (loc && *loc)
        adm_header(r, "Location", "%s", loc);
      if (etag && *etag)
        adm_header(r, "ETag", "%s", etag);
      adm_header(r, "Idempotent-Replayed", "true");
      adm_json(r, status, json_incref(json_object_get(env, "body")));
      json_decref(env);
      return;
    }
    if (rc == TG_ECONFLICT) {
      tg_store_rollback(r->store);
      adm_problem(r, 422, "idempotency-key-reused", "Idempotency-Key reused", NULL,
                  "this Idempotency-Key was already used with a different request");
      return;
    }
    if (rc != TG_ENOTFOUND) {
      tg_store_rollback(r->store);
      adm_fail(r, rc, &p);
      return;
    }
  }
  rt->fn(r, rt);
  bool dry = strcmp(rt->pattern, "/config") == 0 && adm_query(r, "dry_run") &&
             strcmp(adm_query(r, "dry_run"), "false") != 0 &&
             strcmp(adm_query(r, "dry_run"), "0") != 0;
  if (r->status >= 400 || dry) {
    tg_store_rollback(r->store);
    return;
  }
  if (ikey && r->status >= 200 && r->status < 300) {
    json_t *body =
        r->resp_body ? json_loadb(r->resp_body, r->resp_len, JSON_DECODE_ANY, NULL) : json_null();
    const char *loc = NULL, *etag = NULL;
    for (int i = 0; i < r->hdrs.n; i++) {
      if (strcmp(r->hdrs.h[i].name, "Location") == 0)
        loc = r->hdrs.h[i].value;
      if (strcmp(r->hdrs.h[i].name, "ETag") == 0)
        etag = r->hdrs.h[i].value;
    }
    json_t *env = json_pack("{s:s, s:s, s:o}", "location", loc ? loc : "", "etag", etag ? etag : "",
                            "body", body ? body : json_null());
    char *text = env ? json_dumps(env, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(env);
    rc = text ? tg_idem_save(r->store, &idem, r->status, text, strlen(text), &p) : TG_ENOMEM;
    if (text) {
      sodium_memzero(text, strlen(text));
      free(text);
    }
    if (rc) {
      tg_store_rollback(r->store);
      adm_fail(r, rc, &p);
      return;
    }
  }
  rc = tg_store_commit(r->store, &p);
  if (rc)
    adm_fail(r, rc, &p);
}

static void run_write(adm_req_t *r, const route_t *rt) {
  pthread_mutex_lock(&r->srv->write_lock);
  run_write_locked(r, rt);
  pthread_mutex_unlock(&r->srv->write_lock);
}

typedef struct query_check {
  const char *allowed; /* comma-separated names */
  const char *bad;
} query_check_t;

static enum MHD_Result check_query_name(void *cls, enum MHD_ValueKind kind, const char *key,
                                        const char *value) {
  query_check_t *q = cls;
  size_t n = strlen(key);
  for (const char *a = q->allowed; *a;) {
    const char *comma = strchr(a, ',');
    size_t len = comma ? (size_t)(comma - a) : strlen(a);
    if (len == n && memcmp(a, key, n) == 0)
      return MHD_YES;
    a += len + (comma ? 1 : 0);
  }
  q->bad = key;
  return MHD_NO;
}

/* Lists check their own filters; every other route takes only the query
 * parameters it documents, so a typo (?dryrun=true) is an error rather
 * than a silent real import. */
static bool query_allowed(adm_req_t *r, const route_t *rt) {
  if (rt->fn == h_list || rt->fn == h_targets_list)
    return true;
  query_check_t q = {.allowed = "", .bad = NULL};
  if (rt->fn == h_config_import)
    q.allowed = "dry_run,prune";
  else if (rt->fn == h_usage)
    q.allowed = "from,to,granularity,group_by,developer_id,app_id,key_id,api_id,plan_id,"
                "subscription_id,status_class,format";
  else if (rt->fn == h_billing)
    q.allowed = "period,format";
  MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, check_query_name, &q);
  if (!q.bad)
    return true;
  tg_problem_t p = {0};
  char field[TG_PROBLEM_FIELD_MAX];
  snprintf(field, sizeof(field), "%s", q.bad);
  tg_problem_add(&p, TG_EINVAL, field, "is not a parameter of %s %s", rt->method, rt->pattern);
  adm_problem(r, 400, "invalid-query", "Invalid query parameter", &p,
              "unknown query parameter \"%.64s\" for %s %s%s%s%s", q.bad, rt->method, rt->pattern,
              q.allowed[0] ? " (allowed: " : "", q.allowed, q.allowed[0] ? ")" : "");
  return false;
}

void adm_dispatch(adm_req_t *r) {
  tg_problem_t p = {0};
  const char *method = strcmp(r->method, "HEAD") == 0 ? "GET" : r->method;
  const route_t *found = NULL;
  char allow[128] = "";
  bool path_known = false;
  for (size_t i = 0; i < NROUTES && !found; i++) {
    if (!match(routes[i].pattern, r->path, r->params))
      continue;
    path_known = true;
    if (strcmp(routes[i].method, method) == 0) {
      found = &routes[i];
    } else if (!strstr(allow, routes[i].method)) {
      size_t n = strlen(allow);
      snprintf(allow + n, sizeof(allow) - n, "%s%s", n ? ", " : "", routes[i].method);
      if (strcmp(routes[i].method, "GET") == 0) {
        n = strlen(allow);
        snprintf(allow + n, sizeof(allow) - n, ", HEAD");
      }
    }
  }
  if (!found && !path_known) {
    adm_problem(r, 404, "not-found", "Not found", NULL, "no such resource: %.200s", r->path);
    return;
  }
  if (!found) {
    adm_header(r, "Allow", "%s", allow);
    adm_problem(r, 405, "method-not-allowed", "Method not allowed", NULL,
                "%.16s is not allowed here; allowed: %s", r->method, allow);
    return;
  }
  bool needs_store = found->fn != h_openapi && found->fn != h_api_catalog;
  if (needs_store && !(r->store = adm_thread_store(r->srv, &p))) {
    adm_fail(r, p.code ? p.code : TG_ESTORE, &p);
    return;
  }
  if (found->scope) {
    if (!authenticate(r))
      return;
    if (!has_scope(r->token, found->scope)) {
      adm_problem(r, 403, "forbidden", "Missing scope", NULL,
                  "this admin token lacks the \"%s\" scope needed for %s %s", found->scope,
                  found->method, found->pattern);
      return;
    }
  }
  if (!query_allowed(r, found))
    return;
  if (strcmp(method, "GET") == 0)
    found->fn(r, found);
  else
    run_write(r, found);
}
