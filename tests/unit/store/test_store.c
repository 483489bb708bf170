/*
 * test_store.c - the store interface over a real SQLite file: CRUD,
 * validation, constraints, keyset pagination, change log, transactions.
 * Raw sqlite3 access is used only to check what the interface hides
 * (the schema itself, constraints as a backstop, pragmas).
 */
#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/keys.h"
#include "core/store.h"
#include "core/util.h"
#include "tg_test.h"

static char dir[64];
static char path[128];

/* Values the test body hands to calls that only borrow them: kept here and
 * released by cleanup(), so a failing assert leaks nothing either. */
static json_t *garbage[64];
static int ngarbage;

static json_t *J(const char *text);

static json_t *G(const char *text) {
  json_t *v = J(text);
  if (ngarbage == 64)
    abort();
  garbage[ngarbage++] = v;
  return v;
}

static tg_store_t *fresh(void) {
  snprintf(dir, sizeof(dir), "/tmp/tg_store_XXXXXX");
  if (!mkdtemp(dir))
    abort();
  snprintf(path, sizeof(path), "%s/t.db", dir);
  tg_store_options_t opt = {.path = path, .busy_timeout_ms = 2000, .mode = TG_STORE_OPEN_MIGRATE};
  tg_store_t *s = NULL;
  tg_problem_t p = {0};
  if (tg_store_open(&opt, &s, NULL, NULL, &p)) {
    fprintf(stderr, "open: %s\n", p.detail);
    abort();
  }
  return s;
}

static void cleanup(tg_store_t *s) {
  char f[160];
  tg_store_close(s);
  while (ngarbage > 0)
    json_decref(garbage[--ngarbage]);
  const char *suffix[] = {"", "-wal", "-shm", ".bak"};
  for (int i = 0; i < 4; i++) {
    snprintf(f, sizeof(f), "%s%s", path, suffix[i]);
    unlink(f);
  }
  rmdir(dir);
}

static json_t *J(const char *text) {
  json_error_t e;
  json_t *v = json_loads(text, 0, &e);
  if (!v) {
    fprintf(stderr, "bad test JSON: %s: %s\n", text, e.text);
    abort();
  }
  return v;
}

/* Create and return a row, failing the test on error. */
static json_t *make(tg_store_t *s, tg_entity_t ent, json_t *fields) {
  json_t *row = NULL;
  tg_problem_t p = {0};
  int rc = tg_store_create(s, ent, fields, true, &row, &p);
  json_decref(fields);
  if (rc)
    TG_FAIL_("create failed: %s %s %s", tg_strerror(rc), p.field, p.detail);
  return row;
}

static const char *sid(const json_t *row) {
  return json_string_value(json_object_get(row, "id"));
}

static json_t *make_api(tg_store_t *s, const char *slug) {
  return make(s, TG_ENT_API, json_pack("{s:s, s:s}", "slug", slug, "name", "Pets"));
}

static json_t *make_plan(tg_store_t *s, const char *api_id, const char *slug) {
  return make(s, TG_ENT_PLAN,
              json_pack("{s:s, s:s, s:s, s:i}", "api_id", api_id, "slug", slug, "name", "Free",
                        "rate_per_second", 10));
}

static json_t *make_dev(tg_store_t *s, const char *email) {
  return make(s, TG_ENT_DEVELOPER, json_pack("{s:s}", "email", email));
}

static json_t *make_app(tg_store_t *s, const char *dev_id) {
  return make(s, TG_ENT_APP, json_pack("{s:s, s:s}", "developer_id", dev_id, "name", "My app"));
}

/* Expect create to fail with code and field. */
static void expect_create_error(tg_store_t *s, tg_entity_t ent, json_t *fields, int code,
                                const char *field) {
  tg_problem_t p = {0};
  json_t *row = NULL;
  int rc = tg_store_create(s, ent, fields, false, &row, &p);
  json_decref(fields);
  if (rc != code || strcmp(p.field, field) != 0)
    TG_FAIL_("expected %s on \"%s\", got %s on \"%s\" (%s)", tg_strerror(code), field,
             tg_strerror(rc), p.field, p.detail);
  ASSERT(row == NULL);
}

TG_TEST(open_sets_wal_foreign_keys_and_latest_schema) {
  tg_store_t *s = fresh();
  int v = 0;
  ASSERT_INT_EQ(tg_store_schema_version(s, &v), TG_OK);
  ASSERT_INT_EQ(v, tg_store_schema_latest());
  ASSERT_STR_EQ(tg_store_backend(s), "sqlite");
  sqlite3 *db;
  ASSERT_INT_EQ(sqlite3_open(path, &db), SQLITE_OK);
  sqlite3_stmt *st;
  ASSERT_INT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  ASSERT_INT_EQ(sqlite3_step(st), SQLITE_ROW);
  ASSERT_STR_EQ((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  sqlite3_close(db);
  /* foreign keys are on: a plan of a missing API is refused, naming the field */
  expect_create_error(s, TG_ENT_PLAN,
                      json_pack("{s:s, s:s, s:s}", "api_id", "api_00000000000000000000000000",
                                "slug", "free", "name", "Free"),
                      TG_EINVAL, "/api_id");
  cleanup(s);
}

/* Invariant of model.c: descriptors list exactly each table's columns, in
 * column order, except that columns a later migration appended (ALTER
 * TABLE puts them last) may sit earlier in the model: read in column
 * order, the model positions rise in at most two runs. */
TG_TEST(model_matches_schema_columns) {
  tg_store_t *s = fresh();
  sqlite3 *db;
  ASSERT_INT_EQ(sqlite3_open(path, &db), SQLITE_OK);
  for (int e = 0; e < TG_ENT__COUNT; e++) {
    const tg_entity_desc_t *d = tg_model_entity((tg_entity_t)e);
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT name FROM pragma_table_info('%s') ORDER BY cid", d->table);
    sqlite3_stmt *st;
    ASSERT_INT_EQ(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int i = 0, prev = -1, runs = 1;
    while (sqlite3_step(st) == SQLITE_ROW) {
      const char *col = (const char *)sqlite3_column_text(st, 0);
      const tg_field_t *f = tg_model_field(d, col);
      if (!f)
        TG_FAIL_("%s: column %s not in the model", d->table, col);
      int at = (int)(f - d->fields);
      if (at < prev)
        runs++;
      prev = at;
      i++;
    }
    if (runs > 2)
      TG_FAIL_("%s: columns and model fields are in different orders", d->table);
    sqlite3_finalize(st);
    ASSERT_INT_EQ(i, d->nfields);
  }
  sqlite3_close(db);
  cleanup(s);
}

TG_TEST(create_get_defaults_and_lookup) {
  tg_store_t *s = fresh();
  json_t *api = make_api(s, "pets");
  ASSERT(tg_model_id_valid(sid(api), "api"));
  ASSERT_INT_EQ(json_integer_value(json_object_get(api, "version")), 1);
  ASSERT_STR_EQ(json_string_value(json_object_get(api, "path_prefix")), "/");
  ASSERT(json_is_array(json_object_get(api, "hosts")));
  ASSERT(json_is_false(json_object_get(api, "strip_prefix")));
  ASSERT(json_is_null(json_object_get(api, "openapi")));
  json_t *got = NULL;
  tg_problem_t p = {0};
  ASSERT_INT_EQ(tg_store_get(s, TG_ENT_API, sid(api), &got, &p), TG_OK);
  ASSERT(json_equal(got, api));
  json_decref(got);
  ASSERT_INT_EQ(tg_store_get_by(s, TG_ENT_API, "slug", "pets", &got, &p), TG_OK);
  ASSERT_STR_EQ(sid(got), sid(api));
  json_decref(got);
  ASSERT_INT_EQ(tg_store_get_by(s, TG_ENT_API, "slug", "nope", &got, &p), TG_ENOTFOUND);
  ASSERT_INT_EQ(tg_store_get(s, TG_ENT_API, "api_00000000000000000000000000", &got, &p),
                TG_ENOTFOUND);
  ASSERT_INT_EQ(tg_store_get(s, TG_ENT_API, "'; DROP TABLE apis; --", &got, &p), TG_ENOTFOUND);
  ASSERT_INT_EQ(tg_store_get(s, TG_ENT_API, sid(api) + 1, &got, &p), TG_ENOTFOUND);
  /* lookups only by unique fields */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_store_get_by(s, TG_ENT_API, "name", "Pets", &got, &p), TG_EINVAL);
  json_decref(api);
  cleanup(s);
}

/* The apis health fields (0003_health.sql): defaults, the model's ranges,
 * and paths the model accepts also pass the table's CHECK. */
TG_TEST(api_health_fields) {
  tg_store_t *s = fresh();
  json_t *api = make_api(s, "pets");
  ASSERT(json_is_null(json_object_get(api, "healthcheck_path")));
  ASSERT_INT_EQ(json_integer_value(json_object_get(api, "healthcheck_interval_ms")), 5000);
  ASSERT_INT_EQ(json_integer_value(json_object_get(api, "healthcheck_timeout_ms")), 2000);
  ASSERT_INT_EQ(json_integer_value(json_object_get(api, "healthy_threshold")), 2);
  ASSERT_INT_EQ(json_integer_value(json_object_get(api, "unhealthy_threshold")), 3);
  ASSERT_INT_EQ(json_integer_value(json_object_get(api, "passive_failures")), 3);
  ASSERT_INT_EQ(json_integer_value(json_object_get(api, "passive_cooldown_ms")), 10000);
  json_decref(api);
  static const char *const good[] = {"/", "/health", "/a/b?full=1&x=%2F", "/~_-.!$&'()*+,;=:@"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    char slug[16];
    snprintf(slug, sizeof(slug), "good-%zu", i);
    json_decref(
        make(s, TG_ENT_API,
             json_pack("{s:s, s:s, s:s}", "slug", slug, "name", "G", "healthcheck_path", good[i])));
  }
  static const char *const bad[] = {"",      "health", "/a b",   "/a#b",         "/a\\b",
                                    "/a|b",  "/%zz",   "/a%2",   "/caf\xc3\xa9", "/\"x\"",
                                    "/a\tb", "/{x}",   "/[::1]", "/a^b"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    expect_create_error(
        s, TG_ENT_API,
        json_pack("{s:s, s:s, s:s}", "slug", "b", "name", "B", "healthcheck_path", bad[i]),
        TG_EINVAL, "/healthcheck_path");
  static const struct {
    const char *field;
    long long value;
  } out_of_range[] = {
      {"healthcheck_interval_ms", 99}, {"healthcheck_interval_ms", 3600001},
      {"healthcheck_timeout_ms", 9},   {"healthcheck_timeout_ms", 600001},
      {"healthy_threshold", 0},        {"healthy_threshold", 101},
      {"unhealthy_threshold", 0},      {"unhealthy_threshold", 101},
      {"passive_failures", -1},        {"passive_failures", 101},
      {"passive_cooldown_ms", 99},     {"passive_cooldown_ms", 3600001},
  };
  for (size_t i = 0; i < sizeof(out_of_range) / sizeof(out_of_range[0]); i++) {
    char ptr[64];
    snprintf(ptr, sizeof(ptr), "/%s", out_of_range[i].field);
    expect_create_error(s, TG_ENT_API,
                        json_pack("{s:s, s:s, s:I}", "slug", "r", "name", "R",
                                  out_of_range[i].field, (json_int_t)out_of_range[i].value),
                        TG_EINVAL, ptr);
  }
  /* the edges are allowed, and 0 turns passive health off */
  json_decref(make(s, TG_ENT_API,
                   J("{\"slug\":\"edges\",\"name\":\"E\",\"healthcheck_interval_ms\":100,"
                     "\"healthcheck_timeout_ms\":600000,\"healthy_threshold\":100,"
                     "\"unhealthy_threshold\":1,\"passive_failures\":0,"
                     "\"passive_cooldown_ms\":3600000}")));
  cleanup(s);
}

TG_TEST(validation_names_the_field) {
  tg_store_t *s = fresh();
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":\"A\",\"colour\":1}"), TG_EINVAL,
                      "/colour");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\"}"), TG_EINVAL, "/name");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"Bad Slug\",\"name\":\"A\"}"), TG_EINVAL,
                      "/slug");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"-a\",\"name\":\"A\"}"), TG_EINVAL, "/slug");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":7}"), TG_EINVAL, "/name");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":\"A\",\"retries\":11}"), TG_EINVAL,
                      "/retries");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":\"A\",\"retries\":1.5}"),
                      TG_EINVAL, "/retries");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":\"A\",\"strip_prefix\":1}"),
                      TG_EINVAL, "/strip_prefix");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":\"A\",\"auth_mode\":\"basic\"}"),
                      TG_EINVAL, "/auth_mode");
  expect_create_error(s, TG_ENT_API,
                      J("{\"slug\":\"a\",\"name\":\"A\",\"path_prefix\":\"/a/../b\"}"), TG_EINVAL,
                      "/path_prefix");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":\"A\",\"path_prefix\":\"/a%2F\"}"),
                      TG_EINVAL, "/path_prefix");
  expect_create_error(s, TG_ENT_API,
                      J("{\"slug\":\"a\",\"name\":\"A\",\"hosts\":[\"ok.com\",\"Bad_Host\"]}"),
                      TG_EINVAL, "/hosts/1");
  expect_create_error(s, TG_ENT_API,
                      J("{\"slug\":\"a\",\"name\":\"A\",\"methods\":[\"GET\",\"GET\"]}"), TG_EINVAL,
                      "/methods/1");
  expect_create_error(s, TG_ENT_API,
                      J("{\"slug\":\"a\",\"name\":\"A\",\"openapi\":{\"swagger\":\"2.0\"}}"),
                      TG_EINVAL, "/openapi");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":\"A\",\"id\":\"api_x\"}"),
                      TG_EINVAL, "/id");
  expect_create_error(s, TG_ENT_API, J("{\"slug\":\"a\",\"name\":\"A\",\"version\":3}"), TG_EINVAL,
                      "/version");
  /* every bad field is reported, not just the first */
  {
    tg_problem_t all = {0};
    json_t *three = J("{\"slug\":\"Bad\",\"retries\":99,\"colour\":1}");
    ASSERT_INT_EQ(tg_model_validate(TG_ENT_API, three, TG_VALIDATE_CREATE, false, &all), TG_EINVAL);
    json_decref(three);
    ASSERT_INT_EQ(all.nitems, 4); /* slug, retries, colour, and the missing name */
    ASSERT_STR_EQ(all.items[0].field, "/slug");
    ASSERT_STR_EQ(all.items[1].field, "/retries");
    ASSERT_STR_EQ(all.items[2].field, "/colour");
    ASSERT_STR_EQ(all.items[3].field, "/name");
    ASSERT_STR_EQ(all.field, "/slug");
  }
  /* oversized text */
  char *big = malloc(20002);
  memset(big, 'x', 20001);
  big[20001] = '\0';
  expect_create_error(s, TG_ENT_API,
                      json_pack("{s:s,s:s,s:s}", "slug", "a", "name", "A", "description", big),
                      TG_ETOOBIG, "/description");
  free(big);
  /* invalid UTF-8 and control characters never reach the store */
  json_t *bad = json_pack("{s:s}", "slug", "a");
  json_object_set_new(bad, "name", json_stringn_nocheck("caf\xc3\x28", 5));
  expect_create_error(s, TG_ENT_API, bad, TG_EINVAL, "/name");
  expect_create_error(s, TG_ENT_API, json_pack("{s:s,s:s}", "slug", "a", "name", "a\x01b"),
                      TG_EINVAL, "/name");
  /* secrets and internal fields cannot be written from outside */
  expect_create_error(s, TG_ENT_DEVELOPER,
                      J("{\"email\":\"a@b.c\",\"password_hash\":\"$argon2id$x\"}"), TG_EINVAL,
                      "/password_hash");
  /* targets: URLs */
  json_t *api = make_api(s, "pets");
  const char *bad_urls[] = {"ftp://x",    "http://",        "http://a b",  "http://u@h",
                            "http://h:0", "http://h:99999", "http://h/?q", "http://H_/"};
  for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++)
    expect_create_error(s, TG_ENT_TARGET,
                        json_pack("{s:s,s:s}", "api_id", sid(api), "url", bad_urls[i]), TG_EINVAL,
                        "/url");
  json_decref(make(s, TG_ENT_TARGET,
                   json_pack("{s:s,s:s}", "api_id", sid(api), "url", "http://127.0.0.1:9000/v1")));
  json_decref(make(s, TG_ENT_TARGET,
                   json_pack("{s:s,s:s}", "api_id", sid(api), "url", "https://[::1]:8443")));
  /* plans: currency and money are integers */
  expect_create_error(s, TG_ENT_PLAN,
                      json_pack("{s:s,s:s,s:s,s:s}", "api_id", sid(api), "slug", "p", "name", "P",
                                "currency", "usd"),
                      TG_EINVAL, "/currency");
  expect_create_error(s, TG_ENT_PLAN,
                      json_pack("{s:s,s:s,s:s,s:f}", "api_id", sid(api), "slug", "p", "name", "P",
                                "monthly_fee_minor", 9.99),
                      TG_EINVAL, "/monthly_fee_minor");
  expect_create_error(s, TG_ENT_PLAN,
                      json_pack("{s:s,s:s,s:s,s:i}", "api_id", sid(api), "slug", "p", "name", "P",
                                "rate_per_second", 0),
                      TG_EINVAL, "/rate_per_second");
  int64_t n = -1;
  tg_problem_t p = {0};
  ASSERT_INT_EQ(tg_store_count(s, TG_ENT_PLAN, NULL, 0, &n, &p), TG_OK);
  ASSERT_INT_EQ(n, 0);
  json_decref(api);
  cleanup(s);
}

TG_TEST(conflicts_and_references) {
  tg_store_t *s = fresh();
  json_t *api = make_api(s, "pets"), *api2 = make_api(s, "shop");
  expect_create_error(s, TG_ENT_API, json_pack("{s:s,s:s}", "slug", "pets", "name", "Again"),
                      TG_ECONFLICT, "/slug");
  json_t *plan = make_plan(s, sid(api), "free");
  json_t *plan2 = make_plan(s, sid(api2), "free"); /* same slug, other API: fine */
  expect_create_error(s, TG_ENT_PLAN,
                      json_pack("{s:s,s:s,s:s}", "api_id", sid(api), "slug", "free", "name", "F"),
                      TG_ECONFLICT, "/slug");
  json_t *dev = make_dev(s, "Ann@Example.com");
  expect_create_error(s, TG_ENT_DEVELOPER, json_pack("{s:s}", "email", "ann@example.COM"),
                      TG_ECONFLICT, "/email");
  json_t *app = make_app(s, sid(dev));
  /* a subscription to API 1 with API 2's plan breaks the composite key */
  expect_create_error(
      s, TG_ENT_SUBSCRIPTION,
      json_pack("{s:s,s:s,s:s}", "app_id", sid(app), "api_id", sid(api), "plan_id", sid(plan2)),
      TG_EINVAL, "/plan_id");
  json_t *sub = make(
      s, TG_ENT_SUBSCRIPTION,
      json_pack("{s:s,s:s,s:s}", "app_id", sid(app), "api_id", sid(api), "plan_id", sid(plan)));
  /* one live subscription per app and API */
  expect_create_error(
      s, TG_ENT_SUBSCRIPTION,
      json_pack("{s:s,s:s,s:s}", "app_id", sid(app), "api_id", sid(api), "plan_id", sid(plan)),
      TG_ECONFLICT, "/api_id");
  /* in-use rows cannot be deleted */
  tg_problem_t p = {0};
  int drc = tg_store_delete(s, TG_ENT_PLAN, sid(plan), 0, &p);
  if (drc != TG_ECONFLICT)
    TG_FAIL_("delete plan: %s %s %s", tg_strerror(drc), p.field, p.detail);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_store_delete(s, TG_ENT_API, sid(api), 0, &p), TG_ECONFLICT);
  /* cancelled subscriptions free the slot */
  ASSERT_INT_EQ(tg_store_update(s, TG_ENT_SUBSCRIPTION, sid(sub), G("{\"status\":\"cancelled\"}"),
                                false, 0, NULL, &p),
                TG_OK);
  json_decref(make(
      s, TG_ENT_SUBSCRIPTION,
      json_pack("{s:s,s:s,s:s}", "app_id", sid(app), "api_id", sid(api), "plan_id", sid(plan))));
  /* deleting an API without plans cascades to its targets */
  json_t *api3 = make_api(s, "gone");
  json_decref(make(s, TG_ENT_TARGET,
                   json_pack("{s:s,s:s}", "api_id", sid(api3), "url", "http://127.0.0.1:1")));
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_store_delete(s, TG_ENT_API, sid(api3), 0, &p), TG_OK);
  int64_t n = -1;
  tg_filter_t f = {"api_id", sid(api3)};
  ASSERT_INT_EQ(tg_store_count(s, TG_ENT_TARGET, &f, 1, &n, &p), TG_OK);
  ASSERT_INT_EQ(n, 0);
  ASSERT_INT_EQ(tg_store_delete(s, TG_ENT_API, sid(api3), 0, &p), TG_ENOTFOUND);
  json_decref(api);
  json_decref(api2);
  json_decref(api3);
  json_decref(plan);
  json_decref(plan2);
  json_decref(dev);
  json_decref(app);
  json_decref(sub);
  cleanup(s);
}

TG_TEST(update_versions_and_preconditions) {
  tg_store_t *s = fresh();
  json_t *api = make_api(s, "pets"), *row = NULL;
  tg_problem_t p = {0};
  ASSERT_INT_EQ(tg_store_update(s, TG_ENT_API, sid(api),
                                G("{\"name\":\"Pets v2\",\"key_query_param\":\"apikey\"}"), false,
                                1, &row, &p),
                TG_OK);
  ASSERT_INT_EQ(json_integer_value(json_object_get(row, "version")), 2);
  ASSERT_STR_EQ(json_string_value(json_object_get(row, "name")), "Pets v2");
  json_decref(row);
  /* stale version */
  ASSERT_INT_EQ(tg_store_update(s, TG_ENT_API, sid(api), G("{\"name\":\"X\"}"), false, 1, &row, &p),
                TG_EPRECOND);
  ASSERT(row == NULL);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_store_delete(s, TG_ENT_API, sid(api), 1, &p), TG_EPRECOND);
  /* null clears a nullable field, not a required one */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(
      tg_store_update(s, TG_ENT_API, sid(api), G("{\"key_query_param\":null}"), false, 2, &row, &p),
      TG_OK);
  ASSERT(json_is_null(json_object_get(row, "key_query_param")));
  json_decref(row);
  ASSERT_INT_EQ(tg_store_update(s, TG_ENT_API, sid(api), G("{\"name\":null}"), false, 0, &row, &p),
                TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/name");
  /* immutable after creation */
  json_t *plan = make_plan(s, sid(api), "free");
  tg_problem_clear(&p);
  json_t *other = make_api(s, "other");
  json_t *ch = json_pack("{s:s}", "api_id", sid(other));
  ASSERT_INT_EQ(tg_store_update(s, TG_ENT_PLAN, sid(plan), ch, false, 0, &row, &p), TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/api_id");
  json_decref(ch);
  /* unknown id */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_store_update(s, TG_ENT_API, "api_00000000000000000000000000",
                                G("{\"name\":\"X\"}"), false, 0, &row, &p),
                TG_ENOTFOUND);
  /* a failed update changes nothing */
  json_t *cur = NULL;
  ASSERT_INT_EQ(tg_store_get(s, TG_ENT_API, sid(api), &cur, &p), TG_OK);
  ASSERT_INT_EQ(json_integer_value(json_object_get(cur, "version")), 3);
  ASSERT_STR_EQ(json_string_value(json_object_get(cur, "name")), "Pets v2");
  json_decref(cur);
  json_decref(api);
  json_decref(plan);
  json_decref(other);
  cleanup(s);
}

TG_TEST(keyset_pagination_over_many_rows) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  enum { N = 10500 };
  static char ids[N][TG_ID_LEN + 1];
  ASSERT_INT_EQ(tg_store_begin(s, &p), TG_OK);
  for (int i = 0; i < N; i++) {
    char email[64];
    snprintf(email, sizeof(email), "dev%05d@example.com", i);
    json_t *f = json_pack("{s:s, s:s}", "email", email, "status", i % 3 ? "active" : "pending");
    json_t *row = NULL;
    ASSERT_INT_EQ(tg_store_create(s, TG_ENT_DEVELOPER, f, false, &row, &p), TG_OK);
    memcpy(ids[i], sid(row), TG_ID_LEN + 1);
    json_decref(f);
    json_decref(row);
  }
  ASSERT_INT_EQ(tg_store_commit(s, &p), TG_OK);
  /* every row exactly once, in id order, across pages of 100 */
  char after[TG_ID_LEN + 1] = "", next[TG_ID_LEN + 1];
  int seen = 0, pages = 0;
  char prev[TG_ID_LEN + 1] = "";
  do {
    tg_list_query_t q = {.after = after[0] ? after : NULL, .limit = 100};
    json_t *rows = NULL;
    ASSERT_INT_EQ(tg_store_list(s, TG_ENT_DEVELOPER, &q, &rows, next, &p), TG_OK);
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
      ASSERT(strcmp(sid(r), prev) > 0);
      memcpy(prev, sid(r), TG_ID_LEN + 1);
      ASSERT(json_object_get(r, "password_hash") == NULL); /* secrets never in rows */
      seen++;
    }
    ASSERT(json_array_size(rows) == 100 || next[0] == '\0');
    json_decref(rows);
    memcpy(after, next, sizeof(after));
    pages++;
  } while (next[0]);
  ASSERT_INT_EQ(seen, N);
  ASSERT_INT_EQ(pages, (N + 99) / 100);
  /* filtered pages */
  tg_filter_t f = {"status", "pending"};
  int64_t pending = 0;
  ASSERT_INT_EQ(tg_store_count(s, TG_ENT_DEVELOPER, &f, 1, &pending, &p), TG_OK);
  ASSERT_INT_EQ(pending, (N + 2) / 3);
  seen = 0;
  after[0] = '\0';
  do {
    tg_list_query_t q = {
        .filters = &f, .nfilters = 1, .after = after[0] ? after : NULL, .limit = 1000};
    json_t *rows = NULL;
    ASSERT_INT_EQ(tg_store_list(s, TG_ENT_DEVELOPER, &q, &rows, next, &p), TG_OK);
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
      ASSERT_STR_EQ(json_string_value(json_object_get(r, "status")), "pending");
      seen++;
    }
    json_decref(rows);
    memcpy(after, next, sizeof(after));
  } while (next[0]);
  ASSERT_INT_EQ(seen, pending);
  /* bad queries */
  json_t *rows = NULL;
  tg_list_query_t q0 = {.limit = 0};
  ASSERT_INT_EQ(tg_store_list(s, TG_ENT_DEVELOPER, &q0, &rows, next, &p), TG_EINVAL);
  tg_list_query_t q1 = {.limit = TG_LIST_MAX + 1};
  ASSERT_INT_EQ(tg_store_list(s, TG_ENT_DEVELOPER, &q1, &rows, next, &p), TG_EINVAL);
  tg_list_query_t q2 = {.limit = 10, .after = "garbage"};
  ASSERT_INT_EQ(tg_store_list(s, TG_ENT_DEVELOPER, &q2, &rows, next, &p), TG_EINVAL);
  tg_filter_t bad = {"password_hash", "x"};
  tg_list_query_t q3 = {.filters = &bad, .nfilters = 1, .limit = 10};
  ASSERT_INT_EQ(tg_store_list(s, TG_ENT_DEVELOPER, &q3, &rows, next, &p), TG_EINVAL);
  ASSERT(rows == NULL);
  cleanup(s);
}

static int collect_change(const tg_change_t *c, void *ctx) {
  json_t *arr = ctx;
  json_array_append_new(arr, json_pack("{s:I,s:s,s:s,s:s}", "seq", (json_int_t)c->seq, "entity",
                                       c->entity, "id", c->entity_id, "op", c->op));
  return 0;
}

TG_TEST(change_log_records_what_the_gateway_needs) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *api = make_api(s, "pets");
  json_t *plan = make_plan(s, sid(api), "free");
  json_t *dev = make_dev(s, "a@b.c");
  json_t *app = make_app(s, sid(dev));
  ASSERT_INT_EQ(
      tg_store_update(s, TG_ENT_DEVELOPER, sid(dev), G("{\"name\":\"Ann\"}"), false, 0, NULL, &p),
      TG_OK); /* not news for the gateway */
  ASSERT_INT_EQ(tg_store_update(s, TG_ENT_DEVELOPER, sid(dev), G("{\"status\":\"suspended\"}"),
                                false, 0, NULL, &p),
                TG_OK);
  json_t *changes = json_array();
  int64_t last = 0;
  ASSERT_INT_EQ(tg_store_changes(s, 0, 100, collect_change, changes, &last, &p), TG_OK);
  ASSERT_INT_EQ(json_array_size(changes), 5);
  const char *want[][2] = {{"api", "insert"},
                           {"plan", "insert"},
                           {"developer", "insert"},
                           {"app", "insert"},
                           {"developer", "update"}};
  for (size_t i = 0; i < 5; i++) {
    json_t *c = json_array_get(changes, i);
    ASSERT_STR_EQ(json_string_value(json_object_get(c, "entity")), want[i][0]);
    ASSERT_STR_EQ(json_string_value(json_object_get(c, "op")), want[i][1]);
  }
  ASSERT_STR_EQ(json_string_value(json_object_get(json_array_get(changes, 0), "id")), sid(api));
  ASSERT_INT_EQ(last, json_integer_value(json_object_get(json_array_get(changes, 4), "seq")));
  /* resuming after the last seq sees only new changes */
  json_array_clear(changes);
  ASSERT_INT_EQ(tg_store_delete(s, TG_ENT_PLAN, sid(plan), 0, &p), TG_OK);
  ASSERT_INT_EQ(tg_store_changes(s, last, 100, collect_change, changes, &last, &p), TG_OK);
  ASSERT_INT_EQ(json_array_size(changes), 1);
  ASSERT_STR_EQ(json_string_value(json_object_get(json_array_get(changes, 0), "op")), "delete");
  json_decref(changes);
  json_decref(api);
  json_decref(plan);
  json_decref(dev);
  json_decref(app);
  cleanup(s);
}

/* A callback that reads the change log again, deeper than the statement
 * cache is wide: every level holds a statement in use, so the innermost
 * ones run on one-off statements, which must be finalized when done. */
typedef struct nest {
  tg_store_t *s;
  int depth;
} nest_t;

static int nested_change(const tg_change_t *c, void *ctx) {
  nest_t *n = ctx;
  if (n->depth-- == 0)
    return 0;
  return tg_store_changes(n->s, c->seq - 1, 1, nested_change, n, NULL, NULL);
}

TG_TEST(statements_in_use_past_the_cache_get_one_off_copies) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *api = make_api(s, "pets");
  nest_t n = {s, 80}; /* > STMT_CACHE (64) */
  ASSERT_INT_EQ(tg_store_changes(s, 0, 1, nested_change, &n, NULL, &p), TG_OK);
  ASSERT_INT_EQ(n.depth, -1);
  json_decref(api);
  cleanup(s);
}

TG_TEST(transactions_roll_back_whole) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  ASSERT_INT_EQ(tg_store_begin(s, &p), TG_OK);
  ASSERT_INT_EQ(tg_store_begin(s, &p), TG_ESTORE); /* no nesting */
  json_t *api = make_api(s, "pets");
  tg_store_rollback(s);
  json_t *got = NULL;
  ASSERT_INT_EQ(tg_store_get(s, TG_ENT_API, sid(api), &got, &p), TG_ENOTFOUND);
  int64_t n = -1;
  json_t *changes = json_array();
  ASSERT_INT_EQ(tg_store_changes(s, 0, 10, collect_change, changes, NULL, &p), TG_OK);
  ASSERT_INT_EQ(json_array_size(changes), 0); /* the trigger's row was rolled back too */
  json_decref(changes);
  ASSERT_INT_EQ(tg_store_count(s, TG_ENT_API, NULL, 0, &n, &p), TG_OK);
  ASSERT_INT_EQ(n, 0);
  json_decref(api);
  cleanup(s);
}

TG_TEST(data_version_sees_other_connections) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  tg_store_options_t opt = {.path = path, .busy_timeout_ms = 1000, .mode = TG_STORE_OPEN_CURRENT};
  tg_store_t *other = NULL;
  ASSERT_INT_EQ(tg_store_open(&opt, &other, NULL, NULL, &p), TG_OK);
  int64_t v1 = 0, v2 = 0, v3 = 0;
  ASSERT_INT_EQ(tg_store_data_version(s, &v1), TG_OK);
  json_decref(make_api(other, "pets"));
  ASSERT_INT_EQ(tg_store_data_version(s, &v2), TG_OK);
  ASSERT_INT_NE(v1, v2);
  ASSERT_INT_EQ(tg_store_data_version(s, &v3), TG_OK);
  ASSERT_INT_EQ(v2, v3);
  /* a writer holding the lock makes another writer wait, then TG_EBUSY */
  ASSERT_INT_EQ(tg_store_begin(other, &p), TG_OK);
  opt.busy_timeout_ms = 50;
  tg_store_t *third = NULL;
  ASSERT_INT_EQ(tg_store_open(&opt, &third, NULL, NULL, &p), TG_OK);
  json_t *row = NULL;
  tg_problem_clear(&p);
  ASSERT_INT_EQ(
      tg_store_create(third, TG_ENT_API, G("{\"slug\":\"b\",\"name\":\"B\"}"), false, &row, &p),
      TG_EBUSY);
  tg_store_rollback(other);
  tg_store_close(third);
  tg_store_close(other);
  cleanup(s);
}

TG_TEST(meta_and_readonly) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  char *v = NULL;
  ASSERT_INT_EQ(tg_store_meta_get(s, "k", &v, &p), TG_ENOTFOUND);
  ASSERT_INT_EQ(tg_store_meta_set(s, "k", "one", &p), TG_OK);
  ASSERT_INT_EQ(tg_store_meta_set(s, "k", "two", &p), TG_OK);
  ASSERT_INT_EQ(tg_store_meta_get(s, "k", &v, &p), TG_OK);
  ASSERT_STR_EQ(v, "two");
  free(v);
  tg_store_options_t opt = {.path = path, .busy_timeout_ms = 100, .mode = TG_STORE_OPEN_READONLY};
  tg_store_t *ro = NULL;
  ASSERT_INT_EQ(tg_store_open(&opt, &ro, NULL, NULL, &p), TG_OK);
  json_t *row = NULL;
  ASSERT_INT_NE(
      tg_store_create(ro, TG_ENT_API, G("{\"slug\":\"b\",\"name\":\"B\"}"), false, &row, &p),
      TG_OK);
  tg_store_close(ro);
  /* a missing file is not created by a non-migrating open */
  tg_store_options_t missing = {.path = "/tmp/tg_no_such_dir/x.db", .mode = TG_STORE_OPEN_CURRENT};
  ASSERT_INT_NE(tg_store_open(&missing, &ro, NULL, NULL, &p), TG_OK);
  ASSERT(ro == NULL);
  cleanup(s);
}

/* The schema's constraints stand even when the C layer is bypassed. */
TG_TEST(schema_constraints_are_a_backstop) {
  tg_store_t *s = fresh();
  json_t *api = make_api(s, "pets");
  sqlite3 *db;
  ASSERT_INT_EQ(sqlite3_open(path, &db), SQLITE_OK);
  sqlite3_exec(db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL);
  const char *bad[] = {
      "INSERT INTO apis (id, slug, name, created_at, updated_at) VALUES "
      "('api_01ARZ3NDEKTSV4RRFFQ69G5FAV', 'UPPER', 'x', 1, 1)",
      "INSERT INTO apis (id, slug, name, created_at, updated_at) VALUES "
      "('api_01arz3ndektsv4rrffq69g5fav', 'ok', 'x', 1, 1)",
      "INSERT INTO apis (id, slug, name, created_at, updated_at, hosts) VALUES "
      "('api_01ARZ3NDEKTSV4RRFFQ69G5FAV', 'ok', 'x', 1, 1, 'not json')",
      "INSERT INTO apis (id, slug, name, created_at, updated_at, retries) VALUES "
      "('api_01ARZ3NDEKTSV4RRFFQ69G5FAV', 'ok', 'x', 1, 1, 'three')",
      "INSERT INTO plans (id, api_id, slug, name, currency, created_at, updated_at) VALUES "
      "('pln_01ARZ3NDEKTSV4RRFFQ69G5FAV', (SELECT id FROM apis), 'p', 'P', 'usd', 1, 1)",
      "INSERT INTO plans (id, api_id, slug, name, monthly_fee_minor, created_at, updated_at) "
      "VALUES ('pln_01ARZ3NDEKTSV4RRFFQ69G5FAV', (SELECT id FROM apis), 'p', 'P', 9.99, 1, 1)",
      "INSERT INTO plans (id, api_id, slug, name, created_at, updated_at) VALUES "
      "('pln_01ARZ3NDEKTSV4RRFFQ69G5FAV', 'api_00000000000000000000000000', 'p', 'P', 1, 1)",
      "INSERT INTO developers (id, email, created_at, updated_at, password_hash) VALUES "
      "('dev_01ARZ3NDEKTSV4RRFFQ69G5FAV', 'a@b.c', 1, 1, 'plaintext-password')",
      "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, "
      "api_id, plan_id, subscription_id, status_class, reason, calls) VALUES (60, 61, '', '', '', "
      "'', '', '', 2, '', 0)",
      "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, "
      "api_id, plan_id, subscription_id, status_class, reason, calls) VALUES (3600, 60, '', '', "
      "'', '', '', '', 2, '', 0)",
      "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, "
      "api_id, plan_id, subscription_id, status_class, reason, calls) VALUES (120, 120, '', '', "
      "'', '', '', '', 2, '', 0)",
      "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, "
      "api_id, plan_id, subscription_id, status_class, reason, calls, h00) VALUES (60, 60, '', "
      "'', '', '', '', '', 2, '', 5, 4)",
      "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, "
      "api_id, plan_id, subscription_id, status_class, reason, calls) VALUES (60, 60, '', '', '', "
      "'', '', '', 0, '', 0)",
      "UPDATE apis SET updated_at = created_at - 1",
  };
  /* the same shapes, well-formed, are accepted: the rejections are real */
  ASSERT_INT_EQ(sqlite3_exec(db,
                             "INSERT INTO usage_rollups (granularity, period_start, key_id, "
                             "app_id, developer_id, api_id, plan_id, subscription_id, "
                             "status_class, reason, calls, h00, h14) VALUES (3600, 7200, '', '', "
                             "'', '', '', '', 0, 'invalid_key', 5, 4, 1)",
                             NULL, NULL, NULL),
                SQLITE_OK);
  ASSERT_INT_EQ(sqlite3_exec(db,
                             "INSERT INTO plans (id, api_id, slug, name, currency, created_at, "
                             "updated_at) VALUES ('pln_01ARZ3NDEKTSV4RRFFQ69G5FAW', (SELECT id "
                             "FROM apis), 'q', 'Q', 'EUR', 1, 1)",
                             NULL, NULL, NULL),
                SQLITE_OK);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int rc = sqlite3_exec(db, bad[i], NULL, NULL, NULL);
    if (rc == SQLITE_OK)
      TG_FAIL_("the schema accepted: %s", bad[i]);
  }
  /* keys: a digest must be exactly 32 bytes */
  ASSERT_INT_NE(sqlite3_exec(db,
                             "INSERT INTO keys (id, app_id, prefix, digest, created_at, "
                             "updated_at) VALUES ('key_01ARZ3NDEKTSV4RRFFQ69G5FAV', 'x', "
                             "'tg_live_abcdefgh', zeroblob(31), 1, 1)",
                             NULL, NULL, NULL),
                SQLITE_OK);
  sqlite3_close(db);
  json_decref(api);
  cleanup(s);
}

TG_TEST(backup_is_a_consistent_copy) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *api = make_api(s, "pets");
  char bak[160];
  snprintf(bak, sizeof(bak), "%s.bak", path);
  ASSERT_INT_EQ(tg_store_backup(s, bak, &p), TG_OK);
  /* never overwrites */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_store_backup(s, bak, &p), TG_EIO);
  tg_store_options_t opt = {.path = bak, .busy_timeout_ms = 100, .mode = TG_STORE_OPEN_CURRENT};
  tg_store_t *b = NULL;
  ASSERT_INT_EQ(tg_store_open(&opt, &b, NULL, NULL, &p), TG_OK);
  json_t *got = NULL;
  ASSERT_INT_EQ(tg_store_get_by(b, TG_ENT_API, "slug", "pets", &got, &p), TG_OK);
  ASSERT_STR_EQ(sid(got), sid(api));
  json_decref(got);
  tg_store_close(b);
  json_decref(api);
  char f[200];
  snprintf(f, sizeof(f), "%s-wal", bak);
  unlink(f);
  snprintf(f, sizeof(f), "%s-shm", bak);
  unlink(f);
  cleanup(s);
}

TG_TEST(touch_sets_bookkeeping_times_without_a_new_version) {
  tg_store_t *s = fresh();
  tg_problem_t p = {0};
  json_t *dev = make_dev(s, "t@b.c"), *app = make_app(s, sid(dev)), *row = NULL;
  json_t *key =
      make(s, TG_ENT_KEY,
           json_pack("{s:s, s:s, s:s}", "app_id", sid(app), "prefix", "tg_live_abcdefgh", "digest",
                     "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"));
  ASSERT_INT_EQ(tg_store_touch(s, TG_ENT_KEY, sid(key), "last_used_day", 86400 * 20000, &p), TG_OK);
  ASSERT_INT_EQ(tg_store_get(s, TG_ENT_KEY, sid(key), &row, &p), TG_OK);
  ASSERT_INT_EQ(json_integer_value(json_object_get(row, "last_used_day")), 86400 * 20000);
  ASSERT_INT_EQ(json_integer_value(json_object_get(row, "version")), 1);
  json_decref(row);
  /* only server-kept times: not user fields, not created/updated */
  ASSERT_INT_EQ(tg_store_touch(s, TG_ENT_KEY, sid(key), "expires_at", 5, &p), TG_EINVAL);
  ASSERT_INT_EQ(tg_store_touch(s, TG_ENT_KEY, sid(key), "created_at", 5, &p), TG_EINVAL);
  ASSERT_INT_EQ(
      tg_store_touch(s, TG_ENT_KEY, "key_00000000000000000000000000", "last_used_day", 0, &p),
      TG_ENOTFOUND);
  /* the schema still holds: a day must be a whole UTC day */
  tg_problem_clear(&p);
  ASSERT_INT_NE(tg_store_touch(s, TG_ENT_KEY, sid(key), "last_used_day", 86400 * 20000 + 1, &p),
                TG_OK);
  json_decref(dev);
  json_decref(app);
  json_decref(key);
  cleanup(s);
}

int main(int argc, char **argv) {
  if (tg_keys_init())
    return 2;
  return tg_test_main(argc, argv);
}
