/*
 * config_io.c - declarative configuration: export and import (see
 * config_io.h for the document format and the contract).
 *
 * Invariants:
 *  - Which members an entity has in a document is decided by doc_field()
 *    alone, in both directions, so whatever export writes import accepts.
 *    References (api_id, developer_id, ...) never appear: nesting and
 *    natural keys stand for them.
 *  - Export is a function of the stored configuration only: rows are read
 *    a page at a time (tg_store_list), projected to their document members
 *    and sorted in C by natural key in byte order (strcmp), so equal
 *    configurations give equal bytes whatever their ids or creation order.
 *  - Import validates the whole document before its first write (pass 1
 *    only reads the store), so a client learns every mistake at once and a
 *    bad document writes nothing. Pass 2 applies and stops at the first
 *    store error. The caller's transaction makes the pair atomic; this file
 *    never begins, commits or rolls back.
 *  - Deletions (prune) run after every create and update, targets and
 *    plans before their API, so that a subscription the document moves off
 *    a plan no longer holds that plan when it is deleted.
 */
#include "core/config_io.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lifecycle.h"
#include "core/util.h"

#define NONE SIZE_MAX

/* ---- the document shape ---------------------------------------------------- */

/* A field a user configures: mutable, not secret, not internal, not made
 * by the server, and not a reference (those are nesting or natural keys). */
static bool doc_field(const tg_field_t *f) {
  return f && !(f->flags & (TG_F_SERVER | TG_F_SECRET | TG_F_INTERNAL | TG_F_IMMUTABLE)) &&
         f->type != TG_FT_REF;
}

/* The document name of a store field that differs from it (a
 * subscription's plan_id is the plan's slug, "plan"). */
static const char *doc_name(const char *field) {
  return strcmp(field, "plan_id") == 0 ? "plan" : field;
}

/* Rows that are gone as far as configuration goes: kept for history only. */
static bool live_row(tg_entity_t ent, const json_t *row) {
  const char *st = json_string_value(json_object_get(row, "status"));
  if (!st)
    return true;
  if (ent == TG_ENT_SUBSCRIPTION)
    return strcmp(st, "cancelled") != 0;
  return strcmp(st, "deleted") != 0;
}

static const char *sval(const json_t *obj, const char *member) {
  return json_string_value(json_object_get(obj, member));
}

/* ---- helpers ----------------------------------------------------------------- */

/* Every row of `ent` (with field = value when field is not NULL) appended to
 * `out`, one page at a time. */
static int list_all(tg_store_t *s, tg_entity_t ent, const char *field, const char *value,
                    json_t *out, tg_problem_t *p) {
  char after[TG_ID_LEN + 1] = "", next[TG_ID_LEN + 1];
  tg_filter_t f = {field, value};
  int result = TG_OK;
  do {
    json_t *rows = NULL;
    tg_list_query_t q = {.filters = field ? &f : NULL,
                         .nfilters = field ? 1 : 0,
                         .after = after[0] ? after : NULL,
                         .limit = TG_LIST_MAX};
    if ((result = tg_store_list(s, ent, &q, &rows, next, p)))
      break;
    if (json_array_extend(out, rows))
      result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    json_decref(rows);
    memcpy(after, next, sizeof(after));
  } while (!result && after[0]);
  return result;
}

/* The plan of API api_id with this slug; TG_ENOTFOUND without detail. */
static int find_plan(tg_store_t *s, const char *api_id, const char *slug, json_t **row,
                     tg_problem_t *p) {
  tg_filter_t f[2] = {{"api_id", api_id}, {"slug", slug}};
  tg_list_query_t q = {.filters = f, .nfilters = 2, .limit = 1};
  char next[TG_ID_LEN + 1];
  json_t *rows = NULL;
  *row = NULL;
  int rc = tg_store_list(s, TG_ENT_PLAN, &q, &rows, next, p);
  if (rc)
    return rc;
  if (json_array_size(rows) == 0)
    rc = TG_ENOTFOUND;
  else
    *row = json_incref(json_array_get(rows, 0));
  json_decref(rows);
  return rc;
}

/* Case-insensitive in ASCII only, like the developers.email column's
 * COLLATE NOCASE, so the document and the store agree on duplicates. */
static int ascii_casecmp(const char *a, const char *b) {
  for (;; a++, b++) {
    int ca = (unsigned char)*a, cb = (unsigned char)*b;
    if (ca >= 'A' && ca <= 'Z')
      ca += 'a' - 'A';
    if (cb >= 'A' && cb <= 'Z')
      cb += 'a' - 'A';
    if (ca != cb || ca == 0)
      return ca - cb;
  }
}

/* Format a JSON pointer into out (TG_PROBLEM_FIELD_MAX bytes); a longer
 * one is cut short, like the problem fields it ends up in. */
__attribute__((format(printf, 2, 3))) static void ptrf(char *out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out, TG_PROBLEM_FIELD_MAX, fmt, ap);
  va_end(ap);
}

/* JSON pointer: base + "/" + name with '~' and '/' escaped (RFC 6901). */
static void ptr_member(char *out, size_t size, const char *base, const char *name) {
  size_t n = (size_t)snprintf(out, size, "%s/", base);
  for (; *name && n + 3 < size; name++) {
    if (*name == '~' || *name == '/') {
      out[n++] = '~';
      out[n++] = *name == '~' ? '0' : '1';
    } else {
      out[n++] = *name;
    }
  }
  if (n < size)
    out[n] = '\0';
}

/* A pointer a store or model call reported ("/slug", "email", "") made
 * relative to the document element at `base`. */
static void ptr_join(char *out, const char *base, const char *field) {
  if (!field || !field[0])
    ptrf(out, "%s", base);
  else if (field[0] == '/')
    ptrf(out, "%s%s", base, field);
  else
    ptrf(out, "%s/%s", base, field);
}

/* Pass a problem found by one store call on to p, relative to `base`. */
static int relay(tg_problem_t *p, int rc, const char *base, const tg_problem_t *one) {
  char f[TG_PROBLEM_FIELD_MAX];
  ptr_join(f, base, one->field);
  return tg_problem_set(p, rc, f, "%s", one->detail);
}

/* ---- sorting (export) --------------------------------------------------- */

typedef struct sortent {
  const char *k1, *k2;
  char *tie; /* canonical dump, when natural keys may repeat */
  json_t *v;
} sortent_t;

static int sortent_cmp(const void *a, const void *b) {
  const sortent_t *x = a, *y = b;
  int c = strcmp(x->k1, y->k1);
  if (c == 0)
    c = strcmp(x->k2, y->k2);
  if (c == 0 && x->tie && y->tie)
    c = strcmp(x->tie, y->tie);
  return c;
}

/*
 * Sort the objects of `arr` by string members k1 then k2 (may be NULL) in
 * byte order. With `tie`, equal keys are ordered by the objects' canonical
 * JSON, so that even rows the store does not keep unique (apps of one
 * developer may share a name) come out in one order.
 */
static int sort_by(json_t *arr, const char *k1, const char *k2, bool tie, tg_problem_t *p) {
  size_t n = json_array_size(arr);
  sortent_t *e = calloc(n ? n : 1, sizeof(*e));
  int result = TG_ENOMEM;
  if (!e)
    goto out;
  for (size_t i = 0; i < n; i++) {
    e[i].v = json_incref(json_array_get(arr, i));
    const char *a = sval(e[i].v, k1), *b = k2 ? sval(e[i].v, k2) : NULL;
    e[i].k1 = a ? a : "";
    e[i].k2 = b ? b : "";
    if (tie && !(e[i].tie = json_dumps(e[i].v, JSON_COMPACT | JSON_SORT_KEYS)))
      goto out;
  }
  qsort(e, n, sizeof(*e), sortent_cmp);
  if (json_array_clear(arr))
    goto out;
  for (size_t i = 0; i < n; i++) {
    json_t *v = e[i].v;
    e[i].v = NULL;
    if (json_array_append_new(arr, v))
      goto out;
  }
  result = TG_OK;
out:
  for (size_t i = 0; e && i < n; i++) {
    free(e[i].tie);
    json_decref(e[i].v);
  }
  free(e);
  return result ? tg_problem_set(p, result, "", NULL) : TG_OK;
}

/* ---- id -> natural key maps (export) -------------------------------------- */

typedef struct idslug {
  char id[TG_ID_LEN + 1];
  const char *slug; /* borrowed from the exported document */
} idslug_t;

typedef struct idmap {
  idslug_t *v;
  size_t n, cap;
} idmap_t;

static int idmap_add(idmap_t *m, const char *id, const char *slug) {
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    idslug_t *v = realloc(m->v, cap * sizeof(*v));
    if (!v)
      return TG_ENOMEM;
    m->v = v;
    m->cap = cap;
  }
  snprintf(m->v[m->n].id, sizeof(m->v[m->n].id), "%s", id);
  m->v[m->n].slug = slug;
  m->n++;
  return TG_OK;
}

static int idslug_cmp(const void *a, const void *b) {
  return strcmp(((const idslug_t *)a)->id, ((const idslug_t *)b)->id);
}

static const char *idmap_find(const idmap_t *m, const char *id) {
  idslug_t key;
  if (!id)
    return NULL;
  snprintf(key.id, sizeof(key.id), "%s", id);
  const idslug_t *hit = m->n ? bsearch(&key, m->v, m->n, sizeof(key), idslug_cmp) : NULL;
  return hit ? hit->slug : NULL;
}

/* ---- export ------------------------------------------------------------ */

/* Copy the document members of `row` into `out`, in model order. */
static int project(tg_entity_t ent, const json_t *row, json_t *out) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  for (int i = 0; i < d->nfields; i++) {
    json_t *v = json_object_get(row, d->fields[i].name);
    if (doc_field(&d->fields[i]) && v && json_object_set(out, d->fields[i].name, v))
      return TG_ENOMEM;
  }
  return TG_OK;
}

/* A new object with the document members of `row` (NULL: out of memory),
 * appended to `out` (which then holds its own reference) when out is not
 * NULL. */
static json_t *project_into(tg_entity_t ent, const json_t *row, json_t *out) {
  json_t *o = json_object();
  if (o && (project(ent, row, o) || (out && json_array_append(out, o)))) {
    json_decref(o);
    o = NULL;
  }
  return o;
}

/* The rows of `ent` under parent field = id, projected and sorted by key.
 * When ids is not NULL, each row's id is mapped to its key there. */
static int export_children(tg_store_t *s, tg_entity_t ent, const char *field, const char *id,
                           const char *key, json_t *out, idmap_t *ids, tg_problem_t *p) {
  json_t *rows = json_array(), *r;
  size_t i;
  int result = rows ? TG_OK : TG_ENOMEM;
  if (result || (result = list_all(s, ent, field, id, rows, p)))
    goto out;
  json_array_foreach(rows, i, r) {
    json_t *o = project_into(ent, r, out);
    result = !o || (ids && idmap_add(ids, sval(r, "id"), sval(o, key))) ? TG_ENOMEM : TG_OK;
    json_decref(o); /* out holds it */
    if (result)
      goto out;
  }
  result = sort_by(out, key, NULL, false, p);
out:
  json_decref(rows);
  return result == TG_ENOMEM ? tg_problem_set(p, TG_ENOMEM, "", NULL) : result;
}

static int export_apis(tg_store_t *s, json_t *out, idmap_t *apis, idmap_t *plans, tg_problem_t *p) {
  json_t *rows = json_array(), *r;
  size_t i;
  int result = rows ? TG_OK : TG_ENOMEM;
  if (result || (result = list_all(s, TG_ENT_API, NULL, NULL, rows, p)))
    goto out;
  json_array_foreach(rows, i, r) {
    const char *id = sval(r, "id");
    json_t *o = project_into(TG_ENT_API, r, out), *targets = json_array(), *pl = json_array();
    if (!o || !targets || !pl || json_object_set(o, "targets", targets) ||
        json_object_set(o, "plans", pl) || idmap_add(apis, id, sval(o, "slug")))
      result = TG_ENOMEM;
    else if (!(result = export_children(s, TG_ENT_TARGET, "api_id", id, "url", targets, NULL, p)))
      result = export_children(s, TG_ENT_PLAN, "api_id", id, "slug", pl, plans, p);
    json_decref(o);
    json_decref(targets);
    json_decref(pl);
    if (result)
      goto out;
  }
  if (apis->n)
    qsort(apis->v, apis->n, sizeof(idslug_t), idslug_cmp);
  if (plans->n)
    qsort(plans->v, plans->n, sizeof(idslug_t), idslug_cmp);
  result = sort_by(out, "slug", NULL, false, p);
out:
  json_decref(rows);
  return result == TG_ENOMEM ? tg_problem_set(p, TG_ENOMEM, "", NULL) : result;
}

/* One app with its live subscriptions (API and plan by slug). */
static int export_app(tg_store_t *s, const json_t *row, const idmap_t *apis, const idmap_t *plans,
                      json_t *out, tg_problem_t *p) {
  json_t *subs = json_array(), *rows = json_array(), *o = NULL, *r;
  size_t i;
  int result = TG_ENOMEM;
  if (!subs || !rows)
    goto out;
  if ((result = list_all(s, TG_ENT_SUBSCRIPTION, "app_id", sval(row, "id"), rows, p)))
    goto out;
  json_array_foreach(rows, i, r) {
    if (!live_row(TG_ENT_SUBSCRIPTION, r))
      continue;
    const char *api = idmap_find(apis, sval(r, "api_id"));
    const char *plan = idmap_find(plans, sval(r, "plan_id"));
    if (!api || !plan) { /* the schema's foreign keys make this impossible */
      result = tg_problem_set(p, TG_ESTORE, "", "subscription %s refers to a missing API or plan",
                              sval(r, "id"));
      goto out;
    }
    /* "api" and "plan" stand where api_id and plan_id are in model order */
    json_t *so = json_pack("{s:s,s:s}", "api", api, "plan", plan);
    result = !so || project(TG_ENT_SUBSCRIPTION, r, so) || json_array_append(subs, so) ? TG_ENOMEM
                                                                                       : TG_OK;
    json_decref(so);
    if (result)
      goto out;
  }
  if ((result = sort_by(subs, "api", "plan", false, p)))
    goto out;
  result = TG_ENOMEM;
  if (!(o = project_into(TG_ENT_APP, row, NULL)) || json_object_set(o, "subscriptions", subs) ||
      json_array_append(out, o))
    goto out;
  result = TG_OK;
out:
  json_decref(o);
  json_decref(subs);
  json_decref(rows);
  return result == TG_ENOMEM ? tg_problem_set(p, TG_ENOMEM, "", NULL) : result;
}

static int export_developers(tg_store_t *s, json_t *out, const idmap_t *apis, const idmap_t *plans,
                             tg_problem_t *p) {
  json_t *rows = json_array(), *arows = NULL, *apps = NULL, *r, *a;
  size_t i, j;
  int result = rows ? TG_OK : TG_ENOMEM;
  if (result || (result = list_all(s, TG_ENT_DEVELOPER, NULL, NULL, rows, p)))
    goto out;
  json_array_foreach(rows, i, r) {
    if (!live_row(TG_ENT_DEVELOPER, r))
      continue;
    if (!(apps = json_array()) || !(arows = json_array())) {
      result = TG_ENOMEM;
      goto out;
    }
    if ((result = list_all(s, TG_ENT_APP, "developer_id", sval(r, "id"), arows, p)))
      goto out;
    json_array_foreach(arows, j, a) {
      if (live_row(TG_ENT_APP, a) && (result = export_app(s, a, apis, plans, apps, p)))
        goto out;
    }
    /* app names are not unique: ties are ordered by content */
    if ((result = sort_by(apps, "name", NULL, true, p)))
      goto out;
    json_t *o = project_into(TG_ENT_DEVELOPER, r, out);
    result = !o || json_object_set(o, "apps", apps) ? TG_ENOMEM : TG_OK;
    json_decref(o);
    json_decref(apps);
    json_decref(arows);
    apps = arows = NULL;
    if (result)
      goto out;
  }
  result = sort_by(out, "email", NULL, false, p);
out:
  json_decref(rows);
  json_decref(apps);
  json_decref(arows);
  return result == TG_ENOMEM ? tg_problem_set(p, TG_ENOMEM, "", NULL) : result;
}

int tg_config_export(tg_store_t *s, json_t **doc, tg_problem_t *p) {
  idmap_t apimap = {0}, planmap = {0};
  json_t *out = json_object(), *apis = json_array(), *devs = json_array();
  int result = TG_ENOMEM;
  *doc = NULL;
  if (!out || !apis || !devs ||
      json_object_set_new(out, "_format_version", json_string(TG_CONFIG_FORMAT_VERSION)) ||
      json_object_set(out, "apis", apis) || json_object_set(out, "developers", devs)) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  if ((result = export_apis(s, apis, &apimap, &planmap, p)) ||
      (result = export_developers(s, devs, &apimap, &planmap, p)))
    goto out;
  *doc = json_incref(out);
out:
  free(apimap.v);
  free(planmap.v);
  json_decref(apis);
  json_decref(devs);
  json_decref(out);
  return result;
}

/* ---- natural-key index over document arrays (import) ----------------------- */

typedef struct keyent {
  const char *key; /* borrowed */
  size_t pos;      /* index in the document array */
} keyent_t;

typedef struct keyidx {
  keyent_t *v;
  size_t n;
  bool nocase;
} keyidx_t;

static int keyent_cmp(const void *a, const void *b) {
  const keyent_t *x = a, *y = b;
  int c = strcmp(x->key, y->key);
  return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

static int keyent_cmp_nocase(const void *a, const void *b) {
  const keyent_t *x = a, *y = b;
  int c = ascii_casecmp(x->key, y->key);
  return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

static int idx_init(keyidx_t *x, size_t cap, bool nocase) {
  x->n = 0;
  x->nocase = nocase;
  x->v = calloc(cap ? cap : 1, sizeof(*x->v));
  return x->v ? TG_OK : TG_ENOMEM;
}

static void idx_sort(keyidx_t *x) {
  qsort(x->v, x->n, sizeof(*x->v), x->nocase ? keyent_cmp_nocase : keyent_cmp);
}

/* Index the objects of `arr` (may be NULL) by their string member `key`;
 * elements without one are left out (validation reports them). */
static int idx_from_array(keyidx_t *x, const json_t *arr, const char *key, bool nocase) {
  if (idx_init(x, json_array_size(arr), nocase))
    return TG_ENOMEM;
  for (size_t i = 0; i < json_array_size(arr); i++) {
    const char *k = sval(json_array_get(arr, i), key);
    if (k) {
      x->v[x->n].key = k;
      x->v[x->n].pos = i;
      x->n++;
    }
  }
  idx_sort(x);
  return TG_OK;
}

/* Document position of the first element with this key, or NONE. */
static size_t idx_find(const keyidx_t *x, const char *key) {
  size_t lo = 0, hi = x->n;
  if (!key)
    return NONE;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = x->nocase ? ascii_casecmp(x->v[mid].key, key) : strcmp(x->v[mid].key, key);
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < x->n && (x->nocase ? ascii_casecmp(x->v[lo].key, key) : strcmp(x->v[lo].key, key)) == 0)
    return x->v[lo].pos;
  return NONE;
}

static void idx_free(keyidx_t *x) {
  free(x->v);
  x->v = NULL;
  x->n = 0;
}

/* ---- import state ------------------------------------------------------ */

typedef struct import {
  tg_store_t *s;
  tg_problem_t *p;
  bool prune;
  int nerr;               /* pass 1: document errors found so far */
  const json_t *doc_apis; /* the document's "apis" (borrowed, may be NULL) */
  keyidx_t apis;          /* ... indexed by slug */
  json_t *doomed;         /* pass 2 with prune: targets and plans to delete at the end */
  json_t *created, *updated, *deleted;
  json_int_t unchanged;
} import_t;

/* Record one document error and go on looking for more. */
__attribute__((format(printf, 3, 4))) static void bad(import_t *im, const char *ptr,
                                                      const char *fmt, ...) {
  char detail[TG_PROBLEM_ITEM_DETAIL_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);
  tg_problem_add(im->p, TG_EINVAL, ptr, "%s", detail);
  im->nerr++;
}

static int nomem(import_t *im) {
  return tg_problem_set(im->p, TG_ENOMEM, "", NULL);
}

/* The entity's own members of document object `obj` as a new object in
 * store terms: nested arrays and natural-key references (`extras`) are
 * left out; members that are no field of the entity are reported when
 * im is given. NULL only when out of memory. */
static json_t *own_members(import_t *im, tg_entity_t ent, const json_t *obj,
                           const char *const *extras, const char *ptr) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  json_t *fields = json_object();
  const char *name;
  json_t *v;
  if (!fields)
    return NULL;
  json_object_foreach((json_t *)obj, name, v) {
    bool extra = false;
    for (int i = 0; extras && extras[i]; i++)
      extra = extra || strcmp(extras[i], name) == 0;
    if (extra)
      continue;
    if (doc_field(tg_model_field(d, name))) {
      if (json_object_set(fields, name, v)) {
        json_decref(fields);
        return NULL;
      }
    } else if (im) {
      char f[TG_PROBLEM_FIELD_MAX];
      ptr_member(f, sizeof(f), ptr, name);
      bad(im, f, "unknown member \"%.64s\" for a %s in a configuration document", name, d->name);
    }
  }
  return fields;
}

static const char *const api_extras[] = {"targets", "plans", NULL};
static const char *const developer_extras[] = {"apps", NULL};
static const char *const app_extras[] = {"subscriptions", NULL};
static const char *const sub_extras[] = {"api", "plan", NULL};

static const char *const *extras_of(tg_entity_t ent) {
  switch (ent) {
  case TG_ENT_API: return api_extras;
  case TG_ENT_DEVELOPER: return developer_extras;
  case TG_ENT_APP: return app_extras;
  case TG_ENT_SUBSCRIPTION: return sub_extras;
  default: return NULL;
  }
}

/* ---- pass 1: validate ------------------------------------------------------ */

/* A slug member naming another entity ("api", "plan" of a subscription);
 * true when it is one. */
static bool check_slug_member(import_t *im, const json_t *obj, const char *member,
                              const char *ptr) {
  char f[TG_PROBLEM_FIELD_MAX];
  const json_t *v = json_object_get(obj, member);
  bool ok = false;
  ptr_member(f, sizeof(f), ptr, member);
  if (!v) {
    bad(im, f, "is required");
    return false;
  }
  /* the API's slug rule is the rule for every slug */
  json_t *probe = json_pack("{s:O}", "slug", v);
  tg_problem_t one = {0};
  if (!probe)
    bad(im, f, "cannot be checked (out of memory)");
  else if (tg_model_validate(TG_ENT_API, probe, TG_VALIDATE_UPDATE, false, &one))
    bad(im, f, "%s", one.detail);
  else
    ok = true;
  json_decref(probe);
  return ok;
}

static int check_sub_refs(import_t *im, const json_t *sub, const char *ptr);

/* One document element: its members, as the model sees them. Only a
 * store or memory failure is returned; document errors go through bad(). */
static int check_entity(import_t *im, tg_entity_t ent, const json_t *obj, const char *ptr) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  if (!json_is_object(obj)) {
    bad(im, ptr, "must be an object describing a %s", d->name);
    return TG_OK;
  }
  json_t *fields = own_members(im, ent, obj, extras_of(ent), ptr);
  if (!fields)
    return nomem(im);
  tg_problem_t one = {0};
  int rc = tg_model_validate(ent, fields, TG_VALIDATE_UPDATE, false, &one);
  if (rc == TG_ENOMEM) {
    json_decref(fields);
    return nomem(im);
  }
  char f[TG_PROBLEM_FIELD_MAX];
  for (int i = 0; rc && i < one.nitems; i++) {
    ptr_join(f, ptr, one.items[i].field);
    bad(im, f, "%s", one.items[i].detail);
  }
  if (rc && one.nitems == 0) {
    ptr_join(f, ptr, one.field);
    bad(im, f, "%s", one.detail);
  }
  /* natural keys and names are needed to create, whatever the store holds */
  for (int i = 0; i < d->nfields; i++) {
    if ((d->fields[i].flags & TG_F_REQUIRED) && doc_field(&d->fields[i]) &&
        !json_object_get(obj, d->fields[i].name)) {
      ptr_member(f, sizeof(f), ptr, d->fields[i].name);
      bad(im, f, "is required");
    }
  }
  /* deleting needs the cascades of tg_developer_delete/tg_app_delete, and
   * an import never deletes developers or apps */
  const char *st = sval(fields, "status");
  if ((ent == TG_ENT_DEVELOPER || ent == TG_ENT_APP) && st && strcmp(st, "deleted") == 0) {
    ptr_member(f, sizeof(f), ptr, "status");
    bad(im, f, "an import does not delete a %s; delete it through the admin API", d->name);
  }
  json_decref(fields);
  if (ent == TG_ENT_SUBSCRIPTION) {
    bool api_ok = check_slug_member(im, obj, "api", ptr);
    bool plan_ok = check_slug_member(im, obj, "plan", ptr);
    if (api_ok && plan_ok)
      return check_sub_refs(im, obj, ptr);
  }
  return TG_OK;
}

/* The array member `name` of obj (NULL when absent or not an array: the
 * latter is reported). */
static const json_t *child_array(import_t *im, const json_t *obj, const char *name,
                                 const char *ptr) {
  const json_t *v = json_object_get(obj, name);
  if (v && !json_is_array(v)) {
    char f[TG_PROBLEM_FIELD_MAX];
    ptr_member(f, sizeof(f), ptr, name);
    bad(im, f, "must be an array");
    return NULL;
  }
  return v;
}

/* Every element of a document array, then duplicates of its natural key
 * (each one after the first is named). */
static int check_array(import_t *im, tg_entity_t ent, const json_t *arr, const char *aptr,
                       const char *key, bool nocase) {
  char f[TG_PROBLEM_FIELD_MAX], first[TG_PROBLEM_FIELD_MAX];
  keyidx_t x;
  int rc;
  for (size_t i = 0; i < json_array_size(arr); i++) {
    ptrf(f, "%s/%zu", aptr, i);
    if ((rc = check_entity(im, ent, json_array_get(arr, i), f)))
      return rc;
  }
  if (idx_from_array(&x, arr, key, nocase))
    return nomem(im);
  for (size_t i = 1, run = 0; i < x.n; i++) {
    int c = nocase ? ascii_casecmp(x.v[run].key, x.v[i].key) : strcmp(x.v[run].key, x.v[i].key);
    if (c != 0) {
      run = i;
      continue;
    }
    ptrf(first, "%s/%zu", aptr, x.v[run].pos);
    ptrf(f, "%s/%zu/%s", aptr, x.v[i].pos, key);
    bad(im, f, "duplicate %s %s \"%.64s\" (first at %s)", tg_model_entity(ent)->name,
        ent == TG_ENT_SUBSCRIPTION ? "to API" : key, x.v[i].key, first);
  }
  idx_free(&x);
  return TG_OK;
}

/* A subscription's API and plan must exist: in the document, or (without
 * prune, which would delete what the document lacks) in the store. Called
 * only with both members valid slugs. */
static int check_sub_refs(import_t *im, const json_t *sub, const char *ptr) {
  const char *api = sval(sub, "api"), *plan = sval(sub, "plan");
  char fa[TG_PROBLEM_FIELD_MAX], fp[TG_PROBLEM_FIELD_MAX];
  json_t *arow = NULL, *prow = NULL;
  tg_problem_t one = {0};
  int rc = TG_OK;
  ptr_member(fa, sizeof(fa), ptr, "api");
  ptr_member(fp, sizeof(fp), ptr, "plan");
  size_t pos = idx_find(&im->apis, api);
  if (pos != NONE) {
    const json_t *plans = json_object_get(json_array_get(im->doc_apis, pos), "plans");
    for (size_t i = 0; i < json_array_size(plans); i++) {
      const char *slug = sval(json_array_get(plans, i), "slug");
      if (slug && strcmp(slug, plan) == 0)
        return TG_OK;
    }
    if (im->prune) {
      bad(im, fp, "no plan \"%s\" in API \"%s\" of this document", plan, api);
      return TG_OK;
    }
  } else if (im->prune) {
    bad(im, fa, "no API \"%s\" in this document", api);
    return TG_OK;
  }
  rc = tg_store_get_by(im->s, TG_ENT_API, "slug", api, &arow, &one);
  if (rc == TG_ENOTFOUND) {
    if (pos == NONE)
      bad(im, fa, "no API \"%s\" in this document or the store", api);
    else
      bad(im, fp, "no plan \"%s\" in API \"%s\" of this document or the store", plan, api);
    rc = TG_OK;
    goto out;
  }
  if (rc) {
    rc = relay(im->p, rc, fa, &one);
    goto out;
  }
  rc = find_plan(im->s, sval(arow, "id"), plan, &prow, &one);
  if (rc == TG_ENOTFOUND) {
    bad(im, fp, "no plan \"%s\" in API \"%s\" of this document or the store", plan, api);
    rc = TG_OK;
  } else if (rc) {
    rc = relay(im->p, rc, fp, &one);
  }
out:
  json_decref(arow);
  json_decref(prow);
  return rc;
}

/* Pass 1: the whole document, every error reported (TG_EINVAL), nothing
 * written. Store reads resolve subscriptions' references only. */
static int check_doc(import_t *im, const json_t *doc) {
  static const char *const top[] = {"_format_version", "apis", "developers"};
  char ptr[TG_PROBLEM_FIELD_MAX], sub[TG_PROBLEM_FIELD_MAX];
  int rc;
  if (!json_is_object(doc))
    return tg_problem_set(im->p, TG_EINVAL, "", "a configuration document must be a JSON object");
  /* another format's members mean other things: stop before reading them */
  const json_t *fv = json_object_get(doc, "_format_version");
  if (!fv)
    return tg_problem_add(im->p, TG_EINVAL, "/_format_version", "is required (\"%s\")",
                          TG_CONFIG_FORMAT_VERSION);
  if (!json_is_string(fv) || strcmp(json_string_value(fv), TG_CONFIG_FORMAT_VERSION) != 0)
    return tg_problem_add(im->p, TG_EINVAL, "/_format_version",
                          "format version %s%.32s%s is not supported (this build reads \"%s\")",
                          json_is_string(fv) ? "\"" : "",
                          json_is_string(fv) ? json_string_value(fv) : "(not a string)",
                          json_is_string(fv) ? "\"" : "", TG_CONFIG_FORMAT_VERSION);
  const char *name;
  json_t *v;
  json_object_foreach((json_t *)doc, name, v) {
    bool known = false;
    for (size_t i = 0; i < sizeof(top) / sizeof(top[0]); i++)
      known = known || strcmp(top[i], name) == 0;
    if (!known) {
      ptr_member(ptr, sizeof(ptr), "", name);
      bad(im, ptr, "unknown member \"%.64s\" of a configuration document", name);
    }
  }

  im->doc_apis = child_array(im, doc, "apis", "");
  if ((rc = check_array(im, TG_ENT_API, im->doc_apis, "/apis", "slug", false)))
    return rc;
  if (idx_from_array(&im->apis, im->doc_apis, "slug", false))
    return nomem(im);
  for (size_t i = 0; i < json_array_size(im->doc_apis); i++) {
    const json_t *api = json_array_get(im->doc_apis, i);
    ptrf(ptr, "/apis/%zu", i);
    ptrf(sub, "%s/targets", ptr);
    if ((rc = check_array(im, TG_ENT_TARGET, child_array(im, api, "targets", ptr), sub, "url",
                          false)))
      return rc;
    ptrf(sub, "%s/plans", ptr);
    if ((rc = check_array(im, TG_ENT_PLAN, child_array(im, api, "plans", ptr), sub, "slug", false)))
      return rc;
  }

  const json_t *devs = child_array(im, doc, "developers", "");
  if ((rc = check_array(im, TG_ENT_DEVELOPER, devs, "/developers", "email", true)))
    return rc;
  for (size_t i = 0; i < json_array_size(devs); i++) {
    ptrf(ptr, "/developers/%zu", i);
    ptrf(sub, "%s/apps", ptr);
    const json_t *apps = child_array(im, json_array_get(devs, i), "apps", ptr);
    if ((rc = check_array(im, TG_ENT_APP, apps, sub, "name", false)))
      return rc;
    for (size_t j = 0; j < json_array_size(apps); j++) {
      char aptr[TG_PROBLEM_FIELD_MAX];
      ptrf(aptr, "%s/%zu", sub, j);
      ptrf(ptr, "%s/subscriptions", aptr);
      if ((rc = check_array(im, TG_ENT_SUBSCRIPTION,
                            child_array(im, json_array_get(apps, j), "subscriptions", aptr), ptr,
                            "api", false)))
        return rc;
    }
  }
  return im->nerr ? TG_EINVAL : TG_OK;
}

/* ---- pass 2: apply ---------------------------------------------------------- */

/* Append {"entity", "key"[, "fields"]} to a diff list; key and fields
 * (may be NULL) are stolen. */
static int diff_add(import_t *im, json_t *list, const char *entity, json_t *key, json_t *fields) {
  json_t *e = json_object();
  int rc = TG_OK;
  if (!e || !key || json_object_set_new(e, "entity", json_string(entity)) ||
      json_object_set(e, "key", key) || (fields && json_object_set(e, "fields", fields)) ||
      json_array_append(list, e))
    rc = nomem(im);
  json_decref(e);
  json_decref(key);
  json_decref(fields);
  return rc;
}

/*
 * Make the entity match `fields` (store terms, borrowed): create it when
 * cur is NULL (adding refs, borrowed, may be NULL), else update the members
 * that differ from cur, or count it unchanged. key (stolen) names it in the
 * diff; id receives its id.
 */
static int upsert(import_t *im, tg_entity_t ent, const char *ptr, json_t *key, const json_t *fields,
                  const json_t *refs, const json_t *cur, char id[TG_ID_LEN + 1]) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  json_t *body = NULL, *row = NULL, *names = NULL;
  tg_problem_t one = {0};
  int rc;
  if (!key) {
    rc = nomem(im);
    goto out;
  }
  if (!cur) {
    if (!(body = json_deep_copy(fields)) || (refs && json_object_update(body, (json_t *)refs))) {
      rc = nomem(im);
      goto out;
    }
    /* the lifecycle rules (no app for a deleted developer, a subscription's
     * default status from its plan) hold for imports too */
    if (ent == TG_ENT_APP)
      rc = tg_app_create(im->s, body, &row, &one);
    else if (ent == TG_ENT_SUBSCRIPTION)
      rc = tg_subscription_create(im->s, body, &row, &one);
    else
      rc = tg_store_create(im->s, ent, body, false, &row, &one);
    if (rc) {
      rc = relay(im->p, rc, ptr, &one);
      goto out;
    }
    rc = diff_add(im, im->created, d->name, json_incref(key), NULL);
  } else {
    if (!(body = json_object()) || !(names = json_array())) {
      rc = nomem(im);
      goto out;
    }
    for (int i = 0; i < d->nfields; i++) {
      const char *f = d->fields[i].name;
      json_t *v = json_object_get(fields, f);
      if (v && !json_equal(v, json_object_get(cur, f)) &&
          (json_object_set(body, f, v) || json_array_append_new(names, json_string(doc_name(f))))) {
        rc = nomem(im);
        goto out;
      }
    }
    row = json_incref((json_t *)cur);
    if (json_object_size(body) == 0) {
      im->unchanged++;
      rc = TG_OK;
    } else if ((rc = tg_store_update(im->s, ent, sval(cur, "id"), body, false, 0, NULL, &one))) {
      rc = relay(im->p, rc, ptr, &one);
    } else {
      rc = diff_add(im, im->updated, d->name, json_incref(key), json_incref(names));
    }
  }
  if (!rc)
    snprintf(id, TG_ID_LEN + 1, "%s", sval(row, "id"));
out:
  json_decref(key);
  json_decref(body);
  json_decref(names);
  json_decref(row);
  return rc;
}

/* Delete one row the document lacks. The store refuses rows still referred
 * to (subscriptions keep plans and APIs, cancelled ones too): that is the
 * import's failure, named by natural key since the row has no place in the
 * document. */
static int delete_one(import_t *im, tg_entity_t ent, const char *id, const char *key,
                      const char *ptr) {
  const char *what = tg_model_entity(ent)->name;
  tg_problem_t one = {0};
  int rc = tg_store_delete(im->s, ent, id, 0, &one);
  if (rc == TG_ECONFLICT)
    return tg_problem_set(im->p, TG_ECONFLICT, ptr,
                          "%s \"%s\" is missing from the document but cannot be deleted: "
                          "subscriptions (cancelled ones too) still refer to it",
                          what, key);
  if (rc)
    return relay(im->p, rc, ptr, &one);
  return diff_add(im, im->deleted, what, json_string(key), NULL);
}

/* Remember a target or plan the document lacks, to delete after every
 * create and update. */
static int doom(import_t *im, tg_entity_t ent, const json_t *row, const char *kprefix,
                const char *key, const char *aptr) {
  json_t *k = json_sprintf("%s/%s", kprefix, sval(row, key));
  json_t *e = k ? json_pack("{s:i,s:s,s:O,s:s}", "ent", (int)ent, "id", sval(row, "id"), "key", k,
                            "ptr", aptr)
                : NULL;
  int rc = e && json_array_append(im->doomed, e) == 0 ? TG_OK : nomem(im);
  json_decref(k);
  json_decref(e);
  return rc;
}

/* Cancel a live subscription of an app in the document that the document
 * does not list. */
static int cancel_sub(import_t *im, const json_t *row, const char *kprefix, const char *ptr) {
  json_t *api = NULL;
  tg_problem_t one = {0};
  int rc = tg_store_get(im->s, TG_ENT_API, sval(row, "api_id"), &api, &one);
  if (!rc)
    rc = tg_subscription_transition(im->s, sval(row, "id"), "cancel", NULL, &one);
  if (rc)
    rc = relay(im->p, rc, ptr, &one);
  else
    rc = diff_add(im, im->deleted, "subscription",
                  json_sprintf("%s/%s", kprefix, sval(api, "slug")), NULL);
  json_decref(api);
  return rc;
}

/* The subscriptions of one app: matched by API among the app's live ones. */
static int apply_subs(import_t *im, const json_t *app, const char *app_id, const char *aptr,
                      const char *kprefix) {
  typedef struct ref {
    char api[TG_ID_LEN + 1], plan[TG_ID_LEN + 1];
  } ref_t;
  const json_t *arr = json_object_get(app, "subscriptions");
  size_t n = json_array_size(arr), i;
  ref_t *res = calloc(n ? n : 1, sizeof(*res));
  const json_t **match = calloc(n ? n : 1, sizeof(*match));
  json_t *rows = json_array(), *r;
  keyidx_t x = {0};
  char ptr[TG_PROBLEM_FIELD_MAX], id[TG_ID_LEN + 1];
  int rc = TG_OK;
  if (!res || !match || !rows || idx_init(&x, n, false)) {
    rc = nomem(im);
    goto out;
  }
  /* pass 1 made sure both exist; the APIs and plans are written by now */
  for (i = 0; i < n; i++) {
    const json_t *sub = json_array_get(arr, i);
    json_t *arow = NULL, *prow = NULL;
    tg_problem_t one = {0};
    ptrf(ptr, "%s/subscriptions/%zu", aptr, i);
    rc = tg_store_get_by(im->s, TG_ENT_API, "slug", sval(sub, "api"), &arow, &one);
    if (!rc)
      rc = find_plan(im->s, sval(arow, "id"), sval(sub, "plan"), &prow, &one);
    if (!rc) {
      snprintf(res[i].api, sizeof(res[i].api), "%s", sval(arow, "id"));
      snprintf(res[i].plan, sizeof(res[i].plan), "%s", sval(prow, "id"));
      x.v[x.n].key = res[i].api;
      x.v[x.n].pos = i;
      x.n++;
    } else if (rc == TG_ENOTFOUND && !one.detail[0]) {
      rc = tg_problem_set(im->p, TG_EINVAL, ptr, "the plan of this subscription is gone");
    } else {
      rc = relay(im->p, rc, ptr, &one);
    }
    json_decref(arow);
    json_decref(prow);
    if (rc)
      goto out;
  }
  idx_sort(&x);
  if ((rc = list_all(im->s, TG_ENT_SUBSCRIPTION, "app_id", app_id, rows, im->p)))
    goto out;
  json_array_foreach(rows, i, r) {
    if (!live_row(TG_ENT_SUBSCRIPTION, r))
      continue;
    size_t pos = idx_find(&x, sval(r, "api_id"));
    if (pos != NONE && !match[pos])
      match[pos] = r;
    else if (im->prune && (rc = cancel_sub(im, r, kprefix, aptr)))
      goto out;
  }
  for (i = 0; i < n; i++) {
    const json_t *sub = json_array_get(arr, i);
    const char *status = sval(sub, "status");
    ptrf(ptr, "%s/subscriptions/%zu", aptr, i);
    /* nothing live to cancel: a cancelled subscription is history, not
     * configuration, and creating one on every import would pile them up */
    if (!match[i] && status && strcmp(status, "cancelled") == 0) {
      im->unchanged++;
      continue;
    }
    json_t *fields = json_pack("{s:s}", "plan_id", res[i].plan);
    json_t *refs = json_pack("{s:s,s:s}", "app_id", app_id, "api_id", res[i].api);
    if (!fields || !refs || (status && json_object_set_new(fields, "status", json_string(status))))
      rc = nomem(im);
    else
      rc = upsert(im, TG_ENT_SUBSCRIPTION, ptr, json_sprintf("%s/%s", kprefix, sval(sub, "api")),
                  fields, refs, match[i], id);
    json_decref(fields);
    json_decref(refs);
    if (rc)
      goto out;
  }
out:
  idx_free(&x);
  free(res);
  free(match);
  json_decref(rows);
  return rc;
}

/*
 * The targets, plans or apps of one parent (parent_field = parent_id),
 * matched to the document array `arr` by member `key` among live rows.
 * Unmatched targets and plans are doomed when pruning; apps never are.
 * kprefix: the parent's key in diff keys.
 */
static int apply_children(import_t *im, tg_entity_t ent, const char *parent_field,
                          const char *parent_id, const json_t *arr, const char *aptr,
                          const char *key, const char *kprefix) {
  size_t n = json_array_size(arr), i;
  const json_t **match = calloc(n ? n : 1, sizeof(*match));
  json_t *rows = json_array(), *refs = json_pack("{s:s}", parent_field, parent_id), *r;
  keyidx_t x = {0};
  char ptr[TG_PROBLEM_FIELD_MAX], id[TG_ID_LEN + 1];
  int rc = TG_OK;
  if (!match || !rows || !refs || idx_from_array(&x, arr, key, false)) {
    rc = nomem(im);
    goto out;
  }
  if ((rc = list_all(im->s, ent, parent_field, parent_id, rows, im->p)))
    goto out;
  json_array_foreach(rows, i, r) {
    if (!live_row(ent, r))
      continue;
    size_t pos = idx_find(&x, sval(r, key));
    if (pos != NONE && !match[pos])
      match[pos] = r;
    else if (im->prune && ent != TG_ENT_APP && (rc = doom(im, ent, r, kprefix, key, aptr)))
      goto out;
  }
  for (i = 0; i < n; i++) {
    const json_t *e = json_array_get(arr, i);
    ptrf(ptr, "%s/%zu", aptr, i);
    json_t *fields = own_members(NULL, ent, e, extras_of(ent), ptr);
    if (!fields) {
      rc = nomem(im);
      goto out;
    }
    rc = upsert(im, ent, ptr, json_sprintf("%s/%s", kprefix, sval(e, key)), fields, refs, match[i],
                id);
    json_decref(fields);
    if (!rc && ent == TG_ENT_APP) {
      json_t *akey = json_sprintf("%s/%s", kprefix, sval(e, key));
      rc = akey ? apply_subs(im, e, id, ptr, json_string_value(akey)) : nomem(im);
      json_decref(akey);
    }
    if (rc)
      goto out;
  }
out:
  idx_free(&x);
  free(match);
  json_decref(rows);
  json_decref(refs);
  return rc;
}

/* A top-level entity (API by slug, developer by email among live rows),
 * then its children. */
static int apply_top(import_t *im, tg_entity_t ent, const json_t *e, const char *ptr) {
  const char *key = ent == TG_ENT_API ? "slug" : "email";
  const char *k = sval(e, key);
  json_t *fields = own_members(NULL, ent, e, extras_of(ent), ptr), *cur = NULL;
  tg_problem_t one = {0};
  char id[TG_ID_LEN + 1], sub[TG_PROBLEM_FIELD_MAX];
  int rc;
  if (!fields)
    return nomem(im);
  rc = tg_store_get_by(im->s, ent, key, k, &cur, &one);
  if (rc == TG_ENOTFOUND || (rc == TG_OK && !live_row(ent, cur))) {
    json_decref(cur);
    cur = NULL;
    rc = TG_OK;
  } else if (rc) {
    rc = relay(im->p, rc, ptr, &one);
  }
  if (!rc)
    rc = upsert(im, ent, ptr, json_string(k), fields, NULL, cur, id);
  if (!rc && ent == TG_ENT_API) {
    ptrf(sub, "%s/targets", ptr);
    rc = apply_children(im, TG_ENT_TARGET, "api_id", id, json_object_get(e, "targets"), sub, "url",
                        k);
    ptrf(sub, "%s/plans", ptr);
    if (!rc)
      rc = apply_children(im, TG_ENT_PLAN, "api_id", id, json_object_get(e, "plans"), sub, "slug",
                          k);
  } else if (!rc) {
    ptrf(sub, "%s/apps", ptr);
    rc = apply_children(im, TG_ENT_APP, "developer_id", id, json_object_get(e, "apps"), sub, "name",
                        k);
  }
  json_decref(fields);
  json_decref(cur);
  return rc;
}

/* Every target and plan of an API, then the API itself. */
static int delete_api(import_t *im, const json_t *api) {
  static const struct {
    tg_entity_t ent;
    const char *key;
  } kids[] = {{TG_ENT_TARGET, "url"}, {TG_ENT_PLAN, "slug"}};
  const char *slug = sval(api, "slug");
  int rc = TG_OK;
  for (size_t k = 0; !rc && k < sizeof(kids) / sizeof(kids[0]); k++) {
    json_t *rows = json_array(), *r;
    size_t i;
    rc = rows ? list_all(im->s, kids[k].ent, "api_id", sval(api, "id"), rows, im->p) : nomem(im);
    json_array_foreach(rows, i, r) {
      json_t *key = rc ? NULL : json_sprintf("%s/%s", slug, sval(r, kids[k].key));
      if (!rc)
        rc = key ? delete_one(im, kids[k].ent, sval(r, "id"), json_string_value(key), "/apis")
                 : nomem(im);
      json_decref(key);
    }
    json_decref(rows);
  }
  return rc ? rc : delete_one(im, TG_ENT_API, sval(api, "id"), slug, "/apis");
}

/* Prune, after everything else: the doomed targets and plans, then the
 * APIs the document lacks. */
static int prune_rest(import_t *im) {
  json_t *rows = json_array(), *r;
  size_t i;
  int rc = TG_OK;
  json_array_foreach(im->doomed, i, r) {
    if ((rc = delete_one(im, (tg_entity_t)json_integer_value(json_object_get(r, "ent")),
                         sval(r, "id"), sval(r, "key"), sval(r, "ptr"))))
      goto out;
  }
  if (!rows) {
    rc = nomem(im);
    goto out;
  }
  if ((rc = list_all(im->s, TG_ENT_API, NULL, NULL, rows, im->p)))
    goto out;
  json_array_foreach(rows, i, r) {
    if (idx_find(&im->apis, sval(r, "slug")) == NONE && (rc = delete_api(im, r)))
      goto out;
  }
out:
  json_decref(rows);
  return rc;
}

int tg_config_import(tg_store_t *s, const json_t *doc, bool prune, json_t **diff, tg_problem_t *p) {
  import_t im = {.s = s, .p = p, .prune = prune};
  char ptr[TG_PROBLEM_FIELD_MAX];
  int result;
  *diff = NULL;
  if ((result = check_doc(&im, doc)))
    goto out;
  im.created = json_array();
  im.updated = json_array();
  im.deleted = json_array();
  im.doomed = json_array();
  if (!im.created || !im.updated || !im.deleted || !im.doomed) {
    result = nomem(&im);
    goto out;
  }
  for (size_t i = 0; i < json_array_size(im.doc_apis); i++) {
    ptrf(ptr, "/apis/%zu", i);
    if ((result = apply_top(&im, TG_ENT_API, json_array_get(im.doc_apis, i), ptr)))
      goto out;
  }
  const json_t *devs = json_object_get(doc, "developers");
  for (size_t i = 0; i < json_array_size(devs); i++) {
    ptrf(ptr, "/developers/%zu", i);
    if ((result = apply_top(&im, TG_ENT_DEVELOPER, json_array_get(devs, i), ptr)))
      goto out;
  }
  if (prune && (result = prune_rest(&im)))
    goto out;
  *diff = json_pack("{s:O,s:O,s:O,s:I}", "created", im.created, "updated", im.updated, "deleted",
                    im.deleted, "unchanged", im.unchanged);
  if (!*diff)
    result = nomem(&im);
out:
  idx_free(&im.apis);
  json_decref(im.created);
  json_decref(im.updated);
  json_decref(im.deleted);
  json_decref(im.doomed);
  return result;
}
