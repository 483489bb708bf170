/*
 * test_config_io.c - declarative configuration over real SQLite files:
 * deterministic export without secrets or server fields, round trips
 * between stores, idempotent and all-or-nothing imports, dry runs, the
 * diff, every document error named by JSON pointer, and prune.
 */
#include <stdlib.h>
#include <unistd.h>

#include "core/config_io.h"
#include "core/keys.h"
#include "core/lifecycle.h"
#include "core/tokens.h"
#include "core/util.h"
#include "tg_test.h"

/* Up to MAXDB stores per test, each in its own temporary directory; all
 * closed and removed by cleanup() (also at exit, after a failed assert). */
#define MAXDB 4
static struct {
  char dir[64], path[128], secret[128];
  tg_store_t *s;
} db[MAXDB];
static int ndb;

/* Values the test body only borrows, released by cleanup(). */
static json_t *garbage[64];
static int ngarbage;

static json_t *keep(json_t *v) {
  if (!v || ngarbage == 64)
    abort();
  garbage[ngarbage++] = v;
  return v;
}

static json_t *J(const char *text) {
  json_error_t e;
  json_t *v = json_loads(text, 0, &e);
  if (!v) {
    fprintf(stderr, "bad test JSON: %s: %s\n", text, e.text);
    abort();
  }
  return keep(v);
}

static tg_store_t *fresh(void) {
  if (ndb == MAXDB)
    abort();
  char dir[64] = "/tmp/tg_cio_XXXXXX";
  if (!mkdtemp(dir))
    abort();
  snprintf(db[ndb].dir, sizeof(db[ndb].dir), "%s", dir);
  snprintf(db[ndb].path, sizeof(db[ndb].path), "%s/t.db", dir);
  snprintf(db[ndb].secret, sizeof(db[ndb].secret), "%s/secret", dir);
  tg_store_options_t opt = {
      .path = db[ndb].path, .busy_timeout_ms = 2000, .mode = TG_STORE_OPEN_MIGRATE};
  tg_problem_t p = {0};
  if (tg_store_open(&opt, &db[ndb].s, NULL, NULL, &p)) {
    fprintf(stderr, "open: %s\n", p.detail);
    abort();
  }
  return db[ndb++].s;
}

static void cleanup(void) {
  char f[160];
  const char *suffix[] = {"", "-wal", "-shm"};
  while (ndb > 0) {
    ndb--;
    tg_store_close(db[ndb].s);
    for (int i = 0; i < 3; i++) {
      snprintf(f, sizeof(f), "%s%s", db[ndb].path, suffix[i]);
      unlink(f);
    }
    unlink(db[ndb].secret);
    rmdir(db[ndb].dir);
  }
  while (ngarbage > 0)
    json_decref(garbage[--ngarbage]);
}

/* ---- building a configuration --------------------------------------------- */

static const char *const apis_def[] = {
    ("{\"slug\":\"pets\",\"name\":\"Pets\",\"hosts\":[\"pets.example.com\"],"
     "\"methods\":[\"GET\",\"POST\"],\"retries\":3}"),
    ("{\"slug\":\"billing\",\"name\":\"Billing\",\"auth_mode\":\"none\","
     "\"key_query_param\":\"api-key\",\"openapi\":{\"openapi\":\"3.1.0\",\"info\":{\"t\":1}}}"),
};
static const char *const targets_def[][2] = {
    {"pets", "{\"url\":\"http://pets-b.internal:8080\",\"weight\":50}"},
    {"pets", "{\"url\":\"http://pets-a.internal:8080\"}"},
    {"billing", "{\"url\":\"https://billing.internal\"}"},
};
static const char *const plans_def[][2] = {
    {"pets", ("{\"slug\":\"gold\",\"name\":\"Gold\",\"rate_per_second\":100,"
              "\"requires_approval\":true,\"monthly_fee_minor\":4900}")},
    {"pets", "{\"slug\":\"free\",\"name\":\"Free\",\"rate_per_second\":5}"},
    {"billing", ("{\"slug\":\"basic\",\"name\":\"Basic\",\"quota_per_month\":1000,"
                 "\"currency\":\"EUR\"}")},
};
static const char *const devs_def[] = {
    ("{\"email\":\"zoe@example.com\",\"name\":\"Zoe\",\"status\":\"active\","
     "\"email_verified\":true}"),
    "{\"email\":\"Adam@example.com\",\"name\":\"Adam\",\"billing_customer_id\":\"cus_123\"}",
    "{\"email\":\"gone@example.com\"}",
};
static const char *const apps_def[][2] = {
    {"zoe@example.com", "{\"name\":\"mobile\",\"description\":\"iOS\"}"},
    {"zoe@example.com", "{\"name\":\"web\"}"},
    {"Adam@example.com", "{\"name\":\"cli\",\"status\":\"suspended\"}"},
    {"Adam@example.com", "{\"name\":\"old\"}"},
    {"gone@example.com", "{\"name\":\"x\"}"},
};
/* developer, app, api, plan */
static const char *const subs_def[][4] = {
    {"zoe@example.com", "mobile", "pets", "free"},
    {"zoe@example.com", "mobile", "billing", "basic"},
    {"zoe@example.com", "web", "pets", "gold"},
    {"zoe@example.com", "web", "billing", "basic"},
    {"Adam@example.com", "cli", "pets", "free"},
    {"Adam@example.com", "old", "pets", "free"},
    {"gone@example.com", "x", "billing", "basic"},
};
#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Rows the export shows: the live ones of the tables above. */
enum { LIVE_ENTITIES = 2 + 3 + 3 + 2 + 3 + 4 };

static void must(int rc, const tg_problem_t *p, const char *what) {
  if (rc)
    TG_FAIL_("%s: %s %s %s", what, tg_strerror(rc), p->field, p->detail);
}

/* Id of the one row found by get_by or a filtered list, copied to out. */
static void id_by(tg_store_t *s, tg_entity_t ent, const char *field, const char *value,
                  char out[TG_ID_LEN + 1]) {
  json_t *row = NULL;
  tg_problem_t p = {0};
  must(tg_store_get_by(s, ent, field, value, &row, &p), &p, "get_by");
  snprintf(out, TG_ID_LEN + 1, "%s", json_string_value(json_object_get(row, "id")));
  json_decref(row);
}

static void id_in(tg_store_t *s, tg_entity_t ent, const char *parent_field, const char *parent,
                  const char *field, const char *value, char out[TG_ID_LEN + 1]) {
  tg_filter_t f[2] = {{parent_field, parent}, {field, value}};
  tg_list_query_t q = {.filters = f, .nfilters = 1, .limit = TG_LIST_MAX};
  char next[TG_ID_LEN + 1];
  json_t *rows = NULL, *r;
  size_t i;
  tg_problem_t p = {0};
  must(tg_store_list(s, ent, &q, &rows, next, &p), &p, "list");
  out[0] = '\0';
  json_array_foreach(rows, i, r) {
    if (strcmp(json_string_value(json_object_get(r, field)), value) == 0)
      snprintf(out, TG_ID_LEN + 1, "%s", json_string_value(json_object_get(r, "id")));
  }
  json_decref(rows);
  if (!out[0])
    TG_FAIL_("no %s %s", field, value);
}

static void create(tg_store_t *s, tg_entity_t ent, json_t *fields, const char *ref,
                   const char *ref_id) {
  tg_problem_t p = {0};
  json_object_set_new(fields, ref, json_string(ref_id));
  int rc = ent == TG_ENT_APP            ? tg_app_create(s, fields, NULL, &p)
           : ent == TG_ENT_SUBSCRIPTION ? tg_subscription_create(s, fields, NULL, &p)
                                        : tg_store_create(s, ent, fields, false, NULL, &p);
  must(rc, &p, "create");
}

/* The configuration above, created in table order or in reverse, then
 * the deletions and cancellations that leave history behind. */
static void build(tg_store_t *s, bool reverse) {
  char a[TG_ID_LEN + 1], b[TG_ID_LEN + 1], c[TG_ID_LEN + 1];
  tg_problem_t p = {0};
#define EACH(i, arr)                                                                               \
  for (int i = reverse ? N(arr) - 1 : 0; reverse ? i >= 0 : i < N(arr); reverse ? i-- : i++)
  EACH(i, apis_def) {
    must(tg_store_create(s, TG_ENT_API, J(apis_def[i]), false, NULL, &p), &p, "api");
  }
  EACH(i, devs_def) {
    must(tg_store_create(s, TG_ENT_DEVELOPER, J(devs_def[i]), false, NULL, &p), &p, "dev");
  }
  EACH(i, plans_def) {
    id_by(s, TG_ENT_API, "slug", plans_def[i][0], a);
    create(s, TG_ENT_PLAN, J(plans_def[i][1]), "api_id", a);
  }
  EACH(i, apps_def) {
    id_by(s, TG_ENT_DEVELOPER, "email", apps_def[i][0], a);
    create(s, TG_ENT_APP, J(apps_def[i][1]), "developer_id", a);
  }
  EACH(i, targets_def) {
    id_by(s, TG_ENT_API, "slug", targets_def[i][0], a);
    create(s, TG_ENT_TARGET, J(targets_def[i][1]), "api_id", a);
  }
  EACH(i, subs_def) {
    id_by(s, TG_ENT_DEVELOPER, "email", subs_def[i][0], a);
    id_in(s, TG_ENT_APP, "developer_id", a, "name", subs_def[i][1], b);
    id_by(s, TG_ENT_API, "slug", subs_def[i][2], a);
    id_in(s, TG_ENT_PLAN, "api_id", a, "slug", subs_def[i][3], c);
    json_t *f = keep(json_pack("{s:s,s:s}", "api_id", a, "plan_id", c));
    create(s, TG_ENT_SUBSCRIPTION, f, "app_id", b);
  }
#undef EACH
  /* zoe's web app drops billing; Adam's old app and gone@ are deleted */
  id_by(s, TG_ENT_DEVELOPER, "email", "zoe@example.com", a);
  id_in(s, TG_ENT_APP, "developer_id", a, "name", "web", b);
  id_by(s, TG_ENT_API, "slug", "billing", c);
  id_in(s, TG_ENT_SUBSCRIPTION, "app_id", b, "api_id", c, a);
  must(tg_subscription_transition(s, a, "cancel", NULL, &p), &p, "cancel");
  id_by(s, TG_ENT_DEVELOPER, "email", "Adam@example.com", a);
  id_in(s, TG_ENT_APP, "developer_id", a, "name", "old", b);
  must(tg_app_delete(s, b, NULL, &p), &p, "app delete");
  id_by(s, TG_ENT_DEVELOPER, "email", "gone@example.com", a);
  must(tg_developer_delete(s, a, NULL, &p), &p, "dev delete");
}

/* ---- helpers ---------------------------------------------------------------- */

/* Compact text of the export (kept until cleanup). */
static const char *export_text(tg_store_t *s) {
  json_t *doc = NULL;
  tg_problem_t p = {0};
  must(tg_config_export(s, &doc, &p), &p, "export");
  char *text = json_dumps(doc, JSON_COMPACT);
  json_decref(doc);
  if (!text)
    abort();
  json_t *held = keep(json_string(text));
  free(text);
  return json_string_value(held);
}

static json_t *export_doc(tg_store_t *s) {
  json_t *doc = NULL;
  tg_problem_t p = {0};
  must(tg_config_export(s, &doc, &p), &p, "export");
  return keep(doc);
}

/* Import in a transaction: committed on success unless dry, else rolled
 * back. *diff is kept until cleanup. */
static int import(tg_store_t *s, const json_t *doc, bool prune, bool dry, json_t **diff,
                  tg_problem_t *p) {
  json_t *d = NULL;
  tg_problem_clear(p);
  must(tg_store_begin(s, p), p, "begin");
  int rc = tg_config_import(s, doc, prune, &d, p);
  if (rc || dry)
    tg_store_rollback(s);
  else
    must(tg_store_commit(s, p), p, "commit");
  if (rc)
    ASSERT(d == NULL);
  if (diff)
    *diff = d ? keep(d) : NULL;
  else
    json_decref(d);
  return rc;
}

static int64_t rows_in(tg_store_t *s) {
  static const tg_entity_t ents[] = {TG_ENT_API,       TG_ENT_TARGET, TG_ENT_PLAN,
                                     TG_ENT_DEVELOPER, TG_ENT_APP,    TG_ENT_SUBSCRIPTION};
  int64_t total = 0, n;
  tg_problem_t p = {0};
  for (int i = 0; i < N(ents); i++) {
    must(tg_store_count(s, ents[i], NULL, 0, &n, &p), &p, "count");
    total += n;
  }
  return total;
}

/* Element of a document array whose `member` is `value`. */
static json_t *find(json_t *arr, const char *member, const char *value) {
  size_t i;
  json_t *e;
  json_array_foreach(arr, i, e) {
    const char *v = json_string_value(json_object_get(e, member));
    if (v && strcmp(v, value) == 0)
      return e;
  }
  TG_FAIL_("no element with %s = %s", member, value);
  return NULL;
}

static json_t *doc_api(json_t *doc, const char *slug) {
  return find(json_object_get(doc, "apis"), "slug", slug);
}

static json_t *doc_app(json_t *doc, const char *email, const char *name) {
  json_t *dev = find(json_object_get(doc, "developers"), "email", email);
  return find(json_object_get(dev, "apps"), "name", name);
}

static bool has_item(const tg_problem_t *p, const char *field) {
  for (int i = 0; i < p->nitems; i++)
    if (strcmp(p->items[i].field, field) == 0)
      return true;
  return false;
}

#define ASSERT_ITEM(p, ptr)                                                                        \
  do {                                                                                             \
    if (!has_item(p, ptr))                                                                         \
      TG_FAIL_("no problem item for %s (first: %s: %s)", ptr, (p)->field, (p)->detail);            \
  } while (0)

/* ---- export ------------------------------------------------------------------ */

TG_TEST(export_of_an_empty_store_is_minimal) {
  tg_store_t *s = fresh();
  ASSERT_STR_EQ(export_text(s), "{\"_format_version\":\"1.0\",\"apis\":[],\"developers\":[]}");
  cleanup();
}

TG_TEST(export_is_deterministic_and_server_free) {
  tg_store_t *a = fresh(), *b = fresh();
  build(a, false);
  build(b, true);
  const char *t1 = export_text(a), *t2 = export_text(a), *t3 = export_text(b);
  ASSERT_STR_EQ(t1, t2);
  ASSERT_STR_EQ(t1, t3);
  static const char *const never[] = {
      "\"id\"",      "\"api_id\"",       "\"plan_id\"",    "\"app_id\"", "\"developer_id\"",
      "\"version\"", "\"created_at\"",   "\"updated_at\"", "digest",     "password_hash",
      "\"prefix\"",  "gone@example.com", "\"old\"",        "cancelled",  "\"deleted\""};
  for (int i = 0; i < N(never); i++)
    if (strstr(t1, never[i]))
      TG_FAIL_("export contains %s", never[i]);
  json_t *doc = export_doc(a);
  /* natural-key order in bytes ('A' < 'z'), members in model order */
  json_t *apis = json_object_get(doc, "apis"), *devs = json_object_get(doc, "developers");
  ASSERT_STR_EQ(json_string_value(json_object_get(json_array_get(apis, 0), "slug")), "billing");
  ASSERT_STR_EQ(json_string_value(json_object_get(json_array_get(devs, 0), "email")),
                "Adam@example.com");
  char *t = json_dumps(json_object_get(doc_api(doc, "pets"), "targets"), JSON_COMPACT);
  ASSERT(t != NULL);
  keep(json_string(t));
  ASSERT_STR_EQ(t, "[{\"url\":\"http://pets-a.internal:8080\",\"weight\":100},"
                   "{\"url\":\"http://pets-b.internal:8080\",\"weight\":50}]");
  free(t);
  t = json_dumps(doc_app(doc, "zoe@example.com", "web"), JSON_COMPACT);
  ASSERT(t != NULL);
  keep(json_string(t));
  ASSERT_STR_EQ(t, "{\"name\":\"web\",\"description\":\"\",\"status\":\"active\",\"subscriptions\":"
                   "[{\"api\":\"pets\",\"plan\":\"gold\",\"status\":\"pending\"}]}");
  free(t);
  t = json_dumps(json_array_get(devs, 0), JSON_COMPACT);
  ASSERT(t != NULL);
  keep(json_string(t));
  static const char adam[] = "{\"email\":\"Adam@example.com\",\"name\":\"Adam\",\"status\":"
                             "\"pending\",\"email_verified\":false,\"billing_customer_id\":"
                             "\"cus_123\",\"apps\":[{\"name\":\"cli\",";
  ASSERT(strncmp(t, adam, strlen(adam)) == 0);
  free(t);
  json_t *api = doc_api(doc, "billing");
  const char *k;
  json_t *v;
  const char *expect[] = {"slug",
                          "name",
                          "description",
                          "hosts",
                          "path_prefix",
                          "methods",
                          "strip_prefix",
                          "connect_timeout_ms",
                          "read_timeout_ms",
                          "write_timeout_ms",
                          "retries",
                          "auth_mode",
                          "key_query_param",
                          "max_body_bytes",
                          "portal_visible",
                          "openapi",
                          "healthcheck_path",
                          "healthcheck_interval_ms",
                          "healthcheck_timeout_ms",
                          "healthy_threshold",
                          "unhealthy_threshold",
                          "passive_failures",
                          "passive_cooldown_ms",
                          "targets",
                          "plans"};
  int i = 0;
  json_object_foreach(api, k, v) {
    ASSERT(i < N(expect));
    ASSERT_STR_EQ(k, expect[i]);
    i++;
  }
  ASSERT_INT_EQ(i, N(expect));
  cleanup();
}

TG_TEST(export_never_contains_keys) {
  tg_store_t *s = fresh();
  build(s, false);
  tg_secret_t sec;
  tg_problem_t p = {0};
  must(tg_server_secret(s, NULL, db[0].secret, true, &sec, &p), &p, "secret");
  char app[TG_ID_LEN + 1], dev[TG_ID_LEN + 1], key[TG_TOKEN_MAX_LEN + 1];
  id_by(s, TG_ENT_DEVELOPER, "email", "zoe@example.com", dev);
  id_in(s, TG_ENT_APP, "developer_id", dev, "name", "mobile", app);
  json_t *row = NULL;
  must(tg_key_create(s, &sec, app, "ci", 0, key, &row, &p), &p, "key");
  keep(row);
  unsigned char digest[TG_DIGEST_BYTES];
  char hex[TG_DIGEST_HEX_LEN + 1];
  tg_token_digest(&sec, key, strlen(key), digest);
  tg_hex_encode(digest, sizeof(digest), hex);
  const char *t = export_text(s);
  ASSERT(strstr(t, key) == NULL);
  ASSERT(strstr(t, hex) == NULL);
  ASSERT(strstr(t, json_string_value(json_object_get(row, "prefix"))) == NULL);
  ASSERT(strstr(t, "tg_live_") == NULL);
  ASSERT(strstr(t, "\"ci\"") == NULL);
  cleanup();
}

/* ---- import ------------------------------------------------------------------ */

TG_TEST(round_trip_between_stores) {
  tg_store_t *a = fresh(), *b = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  build(a, false);
  json_t *doc = export_doc(a);
  must(import(b, doc, false, false, &diff, &p), &p, "import");
  ASSERT_INT_EQ(json_array_size(json_object_get(diff, "created")), LIVE_ENTITIES);
  ASSERT_INT_EQ(json_array_size(json_object_get(diff, "updated")), 0);
  ASSERT_INT_EQ(json_array_size(json_object_get(diff, "deleted")), 0);
  ASSERT_INT_EQ(json_integer_value(json_object_get(diff, "unchanged")), 0);
  ASSERT_STR_EQ(export_text(b), export_text(a));
  /* the diff names entities by natural key, parents first */
  json_t *first = json_array_get(json_object_get(diff, "created"), 0);
  ASSERT_STR_EQ(json_string_value(json_object_get(first, "entity")), "api");
  ASSERT_STR_EQ(json_string_value(json_object_get(first, "key")), "billing");
  char *text = json_dumps(json_object_get(diff, "created"), JSON_COMPACT);
  ASSERT(text != NULL);
  keep(json_string(text));
  ASSERT_STR_CONTAINS(text, "{\"entity\":\"plan\",\"key\":\"pets/gold\"}");
  ASSERT_STR_CONTAINS(text, "{\"entity\":\"target\",\"key\":\"pets/http://pets-a.internal:8080\"}");
  ASSERT_STR_CONTAINS(text, "{\"entity\":\"app\",\"key\":\"zoe@example.com/web\"}");
  ASSERT_STR_CONTAINS(text,
                      "{\"entity\":\"subscription\",\"key\":\"zoe@example.com/mobile/billing\"}");
  free(text);
  cleanup();
}

TG_TEST(import_is_idempotent) {
  tg_store_t *a = fresh(), *b = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  build(a, false);
  json_t *doc = export_doc(a);
  /* into the store it came from, and twice into another, also with prune */
  for (int round = 0; round < 4; round++) {
    tg_store_t *s = round == 0 ? a : b;
    must(import(s, doc, round == 3, false, &diff, &p), &p, "import");
    if (round == 1)
      continue; /* the first import into b creates */
    ASSERT_INT_EQ(json_array_size(json_object_get(diff, "created")), 0);
    ASSERT_INT_EQ(json_array_size(json_object_get(diff, "updated")), 0);
    ASSERT_INT_EQ(json_array_size(json_object_get(diff, "deleted")), 0);
    ASSERT_INT_EQ(json_integer_value(json_object_get(diff, "unchanged")), LIVE_ENTITIES);
  }
  cleanup();
}

TG_TEST(dry_run_reports_the_diff_and_changes_nothing) {
  tg_store_t *a = fresh(), *b = fresh();
  tg_problem_t p = {0};
  json_t *dry = NULL, *real = NULL;
  build(a, false);
  json_t *doc = export_doc(a);
  must(import(b, doc, false, true, &dry, &p), &p, "dry run");
  ASSERT_INT_EQ(rows_in(b), 0);
  ASSERT_STR_EQ(export_text(b), "{\"_format_version\":\"1.0\",\"apis\":[],\"developers\":[]}");
  must(import(b, doc, false, false, &real, &p), &p, "import");
  ASSERT(json_equal(dry, real));
  /* a dry run of a change on a populated store */
  const char *before = export_text(b);
  int64_t n = rows_in(b);
  json_object_set_new(find(json_object_get(doc_api(doc, "pets"), "plans"), "slug", "free"),
                      "rate_per_second", json_integer(7));
  json_array_clear(json_object_get(doc_api(doc, "billing"), "targets"));
  must(import(b, doc, true, true, &dry, &p), &p, "dry run");
  ASSERT_INT_EQ(json_array_size(json_object_get(dry, "updated")), 1);
  ASSERT_INT_EQ(json_array_size(json_object_get(dry, "deleted")), 1);
  ASSERT_INT_EQ(rows_in(b), n);
  ASSERT_STR_EQ(export_text(b), before);
  cleanup();
}

TG_TEST(update_lists_changed_fields_in_model_order) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  build(s, false);
  json_t *doc = export_doc(s);
  json_object_set_new(find(json_object_get(doc_api(doc, "pets"), "plans"), "slug", "free"),
                      "rate_per_second", json_integer(7));
  must(import(s, doc, false, false, &diff, &p), &p, "import");
  json_t *upd = json_object_get(diff, "updated");
  char *text = json_dumps(upd, JSON_COMPACT);
  ASSERT(text != NULL);
  keep(json_string(text));
  ASSERT_STR_EQ(text,
                "[{\"entity\":\"plan\",\"key\":\"pets/free\",\"fields\":[\"rate_per_second\"]}]");
  free(text);
  ASSERT_INT_EQ(json_integer_value(json_object_get(diff, "unchanged")), LIVE_ENTITIES - 1);
  ASSERT_INT_EQ(json_array_size(json_object_get(diff, "created")), 0);
  ASSERT(json_equal(export_doc(s), doc));
  /* several members, a subscription's plan, a developer's status */
  json_t *pets = doc_api(doc, "pets");
  json_object_set_new(pets, "retries", json_integer(5));
  json_object_set_new(pets, "name", json_string("Pets 2"));
  json_t *sub = find(json_object_get(doc_app(doc, "Adam@example.com", "cli"), "subscriptions"),
                     "api", "pets");
  json_object_set_new(sub, "plan", json_string("gold"));
  json_object_set_new(sub, "status", json_string("suspended"));
  json_object_set_new(find(json_object_get(doc, "developers"), "email", "Adam@example.com"),
                      "status", json_string("active"));
  must(import(s, doc, false, false, &diff, &p), &p, "import");
  text = json_dumps(json_object_get(diff, "updated"), JSON_COMPACT);
  ASSERT(text != NULL);
  keep(json_string(text));
  ASSERT_STR_EQ(text, "[{\"entity\":\"api\",\"key\":\"pets\",\"fields\":[\"name\",\"retries\"]},"
                      "{\"entity\":\"developer\",\"key\":\"Adam@example.com\",\"fields\":["
                      "\"status\"]},"
                      "{\"entity\":\"subscription\",\"key\":\"Adam@example.com/cli/pets\","
                      "\"fields\":[\"plan\",\"status\"]}]");
  free(text);
  ASSERT(json_equal(export_doc(s), doc));
  cleanup();
}

TG_TEST(missing_members_keep_their_values_and_get_defaults) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  json_t *doc = J("{\"_format_version\":\"1.0\",\"apis\":[{\"slug\":\"pets\",\"name\":\"Pets\","
                  "\"plans\":[{\"slug\":\"gold\",\"name\":\"Gold\",\"requires_approval\":true}]}],"
                  "\"developers\":[{\"email\":\"a@b.c\",\"apps\":[{\"name\":\"x\","
                  "\"subscriptions\":[{\"api\":\"pets\",\"plan\":\"gold\"}]}]}]}");
  must(import(s, doc, false, false, &diff, &p), &p, "import");
  json_t *out = export_doc(s);
  json_t *api = doc_api(out, "pets");
  ASSERT_INT_EQ(json_integer_value(json_object_get(api, "retries")), 1);
  ASSERT_STR_EQ(json_string_value(json_object_get(api, "path_prefix")), "/");
  /* the subscription's status follows its plan, as in tg_subscription_create */
  json_t *sub = json_array_get(json_object_get(doc_app(out, "a@b.c", "x"), "subscriptions"), 0);
  ASSERT_STR_EQ(json_string_value(json_object_get(sub, "status")), "pending");
  /* a member the document leaves out keeps what the store has */
  json_object_set_new(api, "retries", json_integer(4));
  must(import(s, out, false, false, &diff, &p), &p, "import");
  must(import(s, doc, false, false, &diff, &p), &p, "import");
  ASSERT_INT_EQ(json_array_size(json_object_get(diff, "updated")), 0);
  ASSERT_INT_EQ(json_integer_value(json_object_get(doc_api(export_doc(s), "pets"), "retries")), 4);
  /* a developer is matched by email whatever its case */
  json_object_set_new(find(json_object_get(doc, "developers"), "email", "a@b.c"), "email",
                      json_string("A@B.C"));
  must(import(s, doc, false, false, &diff, &p), &p, "import");
  ASSERT_INT_EQ(json_array_size(json_object_get(diff, "created")), 0);
  json_t *u = json_array_get(json_object_get(diff, "updated"), 0);
  ASSERT_STR_EQ(json_string_value(json_object_get(u, "entity")), "developer");
  ASSERT_STR_EQ(json_string_value(json_array_get(json_object_get(u, "fields"), 0)), "email");
  cleanup();
}

TG_TEST(a_bad_field_fails_the_whole_import) {
  tg_store_t *a = fresh(), *b = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  build(a, false);
  json_t *doc = export_doc(a);
  /* the last API is bad: the first one, its plans and the developers that
   * would come before the failure are not written either */
  json_object_set_new(json_array_get(json_object_get(doc, "apis"), 1), "retries", json_integer(99));
  ASSERT_INT_EQ(import(b, doc, false, false, &diff, &p), TG_EINVAL);
  ASSERT(diff == NULL);
  ASSERT_INT_EQ(p.code, TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/apis/1/retries");
  ASSERT_ITEM(&p, "/apis/1/retries");
  ASSERT_INT_EQ(rows_in(b), 0);
  /* and on a populated store, nothing changes */
  const char *before = export_text(a);
  int64_t n = rows_in(a);
  json_object_set_new(json_array_get(json_object_get(doc, "apis"), 0), "name", json_string("New"));
  ASSERT_INT_EQ(import(a, doc, true, false, &diff, &p), TG_EINVAL);
  ASSERT_INT_EQ(rows_in(a), n);
  ASSERT_STR_EQ(export_text(a), before);
  cleanup();
}

TG_TEST(every_error_is_listed) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *doc = J(
      "{\"_format_version\":\"1.0\",\"extra\":1,"
      "\"apis\":[{\"slug\":\"pets\",\"name\":\"P\",\"retries\":99,\"id\":\"x\",\"colour\":1},"
      "{\"slug\":\"Bad\",\"name\":\"B\",\"targets\":[{\"url\":\"ftp://x\"},{\"weight\":1}],"
      "\"plans\":[{\"slug\":\"p\",\"name\":\"P\",\"rate_per_second\":0,\"api_id\":"
      "\"api_00000000000000000000000000\"}]},"
      "{\"name\":\"no slug\",\"plans\":{}}, 7],"
      "\"developers\":[{\"email\":\"nope\",\"status\":\"deleted\",\"password_hash\":\"h\","
      "\"apps\":[{\"name\":\"\",\"status\":\"deleted\",\"subscriptions\":[{\"plan\":\"x\"}]}]}]}");
  ASSERT_INT_EQ(import(s, doc, false, false, NULL, &p), TG_EINVAL);
  static const char *const expect[] = {
      "/extra",
      "/apis/0/retries",
      "/apis/0/id",
      "/apis/0/colour",
      "/apis/1/slug",
      "/apis/1/targets/0/url",
      "/apis/1/targets/1/url",
      "/apis/1/plans/0/rate_per_second",
      "/apis/1/plans/0/api_id",
      "/apis/2/slug",
      "/apis/2/plans",
      "/apis/3",
      "/developers/0/email",
      "/developers/0/status",
      "/developers/0/password_hash",
  };
  for (int i = 0; i < N(expect); i++)
    ASSERT_ITEM(&p, expect[i]);
  ASSERT_INT_EQ(p.nitems, TG_PROBLEM_ITEMS_MAX); /* more were found than fit */
  ASSERT_STR_EQ(p.field, "/extra");
  /* the tail of the document, on its own */
  json_t *devs = json_object_get(doc, "developers");
  json_object_set_new(doc, "apis", json_array());
  json_object_del(doc, "extra");
  ASSERT_INT_EQ(import(s, doc, false, false, NULL, &p), TG_EINVAL);
  ASSERT_ITEM(&p, "/developers/0/apps/0/name");
  ASSERT_ITEM(&p, "/developers/0/apps/0/status");
  ASSERT_ITEM(&p, "/developers/0/apps/0/subscriptions/0/api");
  ASSERT(json_is_array(devs));
  ASSERT_INT_EQ(rows_in(s), 0);
  cleanup();
}

TG_TEST(duplicates_are_named) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *doc =
      J("{\"_format_version\":\"1.0\",\"apis\":["
        "{\"slug\":\"pets\",\"name\":\"P\",\"targets\":[{\"url\":\"http://"
        "a.test\"},{\"url\":\"http://b.test\"},"
        "{\"url\":\"http://"
        "a.test\"}],\"plans\":[{\"slug\":\"free\",\"name\":\"F\"},{\"slug\":\"free\","
        "\"name\":\"G\"}]},"
        "{\"slug\":\"cats\",\"name\":\"C\"},{\"slug\":\"pets\",\"name\":\"Q\"}],"
        "\"developers\":[{\"email\":\"a@b.c\",\"apps\":[{\"name\":\"x\",\"subscriptions\":["
        "{\"api\":\"cats\",\"plan\":\"free\"},{\"api\":\"pets\",\"plan\":\"free\"},"
        "{\"api\":\"pets\",\"plan\":\"free\"}]},{\"name\":\"x\"}]},{\"email\":\"A@B.C\"}]}");
  ASSERT_INT_EQ(import(s, doc, false, false, NULL, &p), TG_EINVAL);
  ASSERT_ITEM(&p, "/apis/2/slug");
  ASSERT_ITEM(&p, "/apis/0/targets/2/url");
  ASSERT_ITEM(&p, "/apis/0/plans/1/slug");
  ASSERT_ITEM(&p, "/developers/1/email");
  ASSERT_ITEM(&p, "/developers/0/apps/1/name");
  ASSERT_ITEM(&p, "/developers/0/apps/0/subscriptions/2/api");
  ASSERT_ITEM(&p, "/developers/0/apps/0/subscriptions/0/plan"); /* cats has no plans */
  ASSERT(!has_item(&p, "/apis/0/slug"));
  ASSERT(!has_item(&p, "/developers/0/email"));
  ASSERT_INT_EQ(p.nitems, 7);
  ASSERT_INT_EQ(rows_in(s), 0);
  cleanup();
}

TG_TEST(subscription_references_must_exist) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  build(s, false);
  json_t *doc = export_doc(s);
  json_t *subs = json_object_get(doc_app(doc, "zoe@example.com", "mobile"), "subscriptions");
  json_object_set_new(find(subs, "api", "pets"), "plan", json_string("platinum"));
  ASSERT_INT_EQ(import(s, doc, false, false, &diff, &p), TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/developers/1/apps/0/subscriptions/1/plan");
  ASSERT_STR_CONTAINS(p.detail, "platinum");
  json_object_set_new(find(subs, "api", "pets"), "plan", json_string("free"));
  json_object_set_new(find(subs, "api", "billing"), "api", json_string("nope"));
  ASSERT_INT_EQ(import(s, doc, false, false, &diff, &p), TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/developers/1/apps/0/subscriptions/0/api");
  /* an API only the store has is fine, unless prune would delete it */
  json_object_set_new(find(subs, "api", "nope"), "api", json_string("billing"));
  json_array_remove(json_object_get(doc, "apis"), 0); /* billing */
  must(import(s, doc, false, false, &diff, &p), &p, "import");
  ASSERT_INT_EQ(import(s, doc, true, false, &diff, &p), TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/developers/1/apps/0/subscriptions/0/api");
  cleanup();
}

TG_TEST(format_version_and_shape_are_checked) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  static const char *const docs[] = {
      "{\"apis\":[],\"developers\":[]}",
      "{\"_format_version\":\"2.0\",\"apis\":[],\"developers\":[]}",
      "{\"_format_version\":1.0,\"apis\":[],\"developers\":[]}",
      "{\"_format_version\":\"1.0 \"}",
  };
  for (int i = 0; i < N(docs); i++) {
    ASSERT_INT_EQ(import(s, J(docs[i]), false, false, NULL, &p), TG_EINVAL);
    ASSERT_STR_EQ(p.field, "/_format_version");
  }
  static const char *const shapes[] = {"[]", "\"x\"", "null"};
  for (int i = 0; i < N(shapes); i++) {
    json_t *v = keep(json_loads(shapes[i], JSON_DECODE_ANY, NULL));
    ASSERT_INT_EQ(import(s, v, false, false, NULL, &p), TG_EINVAL);
    ASSERT_STR_EQ(p.field, "");
  }
  ASSERT_INT_EQ(import(s, J("{\"_format_version\":\"1.0\",\"apis\":{}}"), false, false, NULL, &p),
                TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/apis");
  /* a member name with '/' and '~' is escaped in the pointer (RFC 6901) */
  ASSERT_INT_EQ(import(s, J("{\"_format_version\":\"1.0\",\"a/b~c\":1}"), false, false, NULL, &p),
                TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/a~1b~0c");
  /* the bare minimum is a valid, empty document */
  json_t *diff = NULL;
  must(import(s, J("{\"_format_version\":\"1.0\"}"), true, false, &diff, &p), &p, "import");
  ASSERT_INT_EQ(json_integer_value(json_object_get(diff, "unchanged")), 0);
  cleanup();
}

/* ---- prune ------------------------------------------------------------------- */

TG_TEST(prune_deletes_what_the_document_lacks) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  json_t *doc = J("{\"_format_version\":\"1.0\",\"apis\":["
                  "{\"slug\":\"old\",\"name\":\"Old\",\"targets\":[{\"url\":\"http://old.test\"}],"
                  "\"plans\":[{\"slug\":\"free\",\"name\":\"F\"}]},"
                  "{\"slug\":\"pets\",\"name\":\"Pets\",\"targets\":[{\"url\":\"http://a.test\"},"
                  "{\"url\":\"http://b.test\"}],\"plans\":[{\"slug\":\"free\",\"name\":\"F\"},"
                  "{\"slug\":\"gold\",\"name\":\"G\"}]}]}");
  must(import(s, doc, false, false, NULL, &p), &p, "import");
  ASSERT_INT_EQ(rows_in(s), 8);
  json_array_remove(json_object_get(doc, "apis"), 0);
  json_t *pets = doc_api(doc, "pets");
  json_array_remove(json_object_get(pets, "targets"), 1);
  json_array_remove(json_object_get(pets, "plans"), 1);
  /* without prune nothing goes */
  must(import(s, doc, false, false, &diff, &p), &p, "import");
  ASSERT_INT_EQ(json_array_size(json_object_get(diff, "deleted")), 0);
  ASSERT_INT_EQ(rows_in(s), 8);
  must(import(s, doc, true, false, &diff, &p), &p, "prune");
  char *text = json_dumps(json_object_get(diff, "deleted"), JSON_COMPACT);
  ASSERT(text != NULL);
  keep(json_string(text));
  ASSERT_STR_EQ(text, "[{\"entity\":\"target\",\"key\":\"pets/http://b.test\"},"
                      "{\"entity\":\"plan\",\"key\":\"pets/gold\"},"
                      "{\"entity\":\"target\",\"key\":\"old/http://old.test\"},"
                      "{\"entity\":\"plan\",\"key\":\"old/free\"},"
                      "{\"entity\":\"api\",\"key\":\"old\"}]");
  free(text);
  ASSERT_INT_EQ(json_integer_value(json_object_get(diff, "unchanged")), 3);
  ASSERT_INT_EQ(rows_in(s), 3);
  json_t *out = doc_api(export_doc(s), "pets");
  ASSERT_INT_EQ(json_array_size(json_object_get(export_doc(s), "apis")), 1);
  ASSERT_INT_EQ(json_array_size(json_object_get(out, "targets")), 1);
  ASSERT_INT_EQ(json_array_size(json_object_get(out, "plans")), 1);
  cleanup();
}

TG_TEST(prune_cancels_subscriptions_of_listed_apps_only) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  build(s, false);
  json_t *doc = export_doc(s);
  int64_t n = rows_in(s);
  json_t *subs = json_object_get(doc_app(doc, "zoe@example.com", "mobile"), "subscriptions");
  json_array_remove(subs, 0);                               /* billing */
  json_array_remove(json_object_get(doc, "developers"), 0); /* Adam */
  must(import(s, doc, true, false, &diff, &p), &p, "prune");
  char *text = json_dumps(json_object_get(diff, "deleted"), JSON_COMPACT);
  ASSERT(text != NULL);
  keep(json_string(text));
  ASSERT_STR_EQ(text, "[{\"entity\":\"subscription\",\"key\":\"zoe@example.com/mobile/billing\"}]");
  free(text);
  /* cancelled, not deleted; Adam (not in the document) keeps everything */
  ASSERT_INT_EQ(rows_in(s), n);
  json_t *out = export_doc(s);
  ASSERT_INT_EQ(
      json_array_size(json_object_get(doc_app(out, "zoe@example.com", "mobile"), "subscriptions")),
      1);
  ASSERT_INT_EQ(
      json_array_size(json_object_get(doc_app(out, "Adam@example.com", "cli"), "subscriptions")),
      1);
  cleanup();
}

TG_TEST(prune_of_an_in_use_plan_conflicts) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *diff = NULL;
  build(s, false);
  json_t *doc = export_doc(s);
  const char *before = export_text(s);
  int64_t n = rows_in(s);
  /* zoe's web app leaves gold and gold leaves the document: the cancelled
   * subscription still holds the plan, which is history */
  json_array_clear(json_object_get(doc_app(doc, "zoe@example.com", "web"), "subscriptions"));
  json_t *plans = json_object_get(doc_api(doc, "pets"), "plans");
  for (size_t i = 0; i < json_array_size(plans); i++)
    if (strcmp(json_string_value(json_object_get(json_array_get(plans, i), "slug")), "gold") == 0)
      json_array_remove(plans, i);
  ASSERT_INT_EQ(import(s, doc, true, false, &diff, &p), TG_ECONFLICT);
  ASSERT(diff == NULL);
  ASSERT_STR_CONTAINS(p.detail, "pets/gold");
  ASSERT_STR_EQ(p.field, "/apis/1/plans");
  ASSERT_INT_EQ(rows_in(s), n);
  ASSERT_STR_EQ(export_text(s), before);
  /* an API with subscriptions cannot go either */
  doc = export_doc(s);
  json_array_remove(json_object_get(doc, "apis"), 0); /* billing */
  json_t *devs = json_object_get(doc, "developers");
  for (size_t i = 0; i < json_array_size(devs); i++) {
    json_t *apps = json_object_get(json_array_get(devs, i), "apps");
    for (size_t j = 0; j < json_array_size(apps); j++) {
      json_t *subs = json_object_get(json_array_get(apps, j), "subscriptions");
      for (size_t k = json_array_size(subs); k-- > 0;)
        if (strcmp(json_string_value(json_object_get(json_array_get(subs, k), "api")), "billing") ==
            0)
          json_array_remove(subs, k);
    }
  }
  ASSERT_INT_EQ(import(s, doc, true, false, &diff, &p), TG_ECONFLICT);
  ASSERT_STR_CONTAINS(p.detail, "billing");
  ASSERT_INT_EQ(rows_in(s), n);
  ASSERT_STR_EQ(export_text(s), before);
  cleanup();
}

int main(int argc, char **argv) {
  if (tg_keys_init())
    return 2;
  atexit(cleanup);
  return tg_test_main(argc, argv);
}
