/*
 * test_lifecycle.c - the domain rules of core/lifecycle.c over a real
 * SQLite store: audit rows, status transitions (exactly the tables in
 * lifecycle.h), delete cascades and their change log, subscriptions
 * defaulting by plan, key creation, rotation with a grace period and
 * revocation. Every lifecycle call runs inside tg_store_begin/commit as
 * the contract says (rolled back on error), through TX().
 *
 * Everything a test allocates is registered (keep/slot) and released by
 * teardown(), which also runs before the next test and at exit, so that a
 * failing assertion (a longjmp out of the test) leaks nothing and leaves
 * the clock restored.
 */
#include <sodium.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/lifecycle.h"
#include "core/tokens.h"
#include "core/util.h"
#include "store_fixture.h"
#include "tg_test.h"

static store_fixture_t FX;
static tg_store_t *S;
static tg_secret_t SEC;

#define GARBAGE_MAX 2048
static json_t *garbage[GARBAGE_MAX];
static int ngarbage;

static void teardown(void) {
  tg_clock_override_ms(0);
  tg_store_close(S);
  S = NULL;
  while (ngarbage > 0)
    json_decref(garbage[--ngarbage]);
  fixture_remove(&FX, NULL);
}

static void fresh(void) {
  teardown();
  S = fixture_open(&FX, "tg_lifecycle");
  randombytes_buf(SEC.bytes, sizeof(SEC.bytes));
}

/* A slot for a row a call returns (json_t **out), released by teardown. */
static json_t **slot(void) {
  if (ngarbage == GARBAGE_MAX)
    abort();
  garbage[ngarbage] = NULL;
  return &garbage[ngarbage++];
}

/* Register v (a new reference) for release by teardown; fails on NULL. */
static json_t *keep(json_t *v) {
  if (!v)
    TG_FAIL_("unexpected NULL JSON value");
  *slot() = v;
  return v;
}

static const char *str(const json_t *row, const char *field) {
  return json_string_value(json_object_get(row, field));
}

static const char *sid(const json_t *row) {
  return str(row, "id");
}

static int64_t ival(const json_t *row, const char *field) {
  return json_integer_value(json_object_get(row, field));
}

/* Transactions: TX(call) runs call between begin and commit (rollback
 * when it fails) and yields its result. */
static void tx_begin(void) {
  tg_problem_t p = {0};
  int rc = tg_store_begin(S, &p);
  if (rc)
    TG_FAIL_("begin: %s %s", tg_strerror(rc), p.detail);
}

static int tx_end(int rc) {
  if (rc != TG_OK) {
    tg_store_rollback(S);
    return rc;
  }
  tg_problem_t p = {0};
  int crc = tg_store_commit(S, &p);
  if (crc)
    TG_FAIL_("commit: %s %s", tg_strerror(crc), p.detail);
  return rc;
}

#define TX(call) (tx_begin(), tx_end(call))

static bool field_is(const char *want, const char *got) {
  return want == NULL || strcmp(want, got) == 0;
}

/* Expect `call` (which reports into the test's `p`) to succeed. */
#define EXPECT_OK(call)                                                                            \
  do {                                                                                             \
    tg_problem_clear(&p);                                                                          \
    int rc_ = (call);                                                                              \
    if (rc_ != TG_OK)                                                                              \
      TG_FAIL_("%s: %s on \"%s\" (%s)", #call, tg_strerror(rc_), p.field, p.detail);               \
  } while (0)

/* Expect `call` to fail with `code`, naming `fld` (NULL: any field). */
#define EXPECT_ERR(call, code, fld)                                                                \
  do {                                                                                             \
    tg_problem_clear(&p);                                                                          \
    int rc_ = (call);                                                                              \
    if (rc_ != (code) || !field_is((fld), p.field))                                                \
      TG_FAIL_("%s: expected %s on \"%s\", got %s on \"%s\" (%s)", #call, tg_strerror(code),       \
               (fld) ? (const char *)(fld) : "*", tg_strerror(rc_), p.field, p.detail);            \
  } while (0)

/* ---- fixtures ------------------------------------------------------------- */

static json_t *make(tg_entity_t ent, json_t *fields) {
  tg_problem_t p = {0};
  json_t **row = slot();
  keep(fields);
  int rc = tg_store_create(S, ent, fields, false, row, &p);
  if (rc)
    TG_FAIL_("create %s: %s %s %s", tg_model_entity(ent)->name, tg_strerror(rc), p.field, p.detail);
  return *row;
}

static json_t *get(tg_entity_t ent, const char *id) {
  tg_problem_t p = {0};
  json_t **row = slot();
  int rc = tg_store_get(S, ent, id, row, &p);
  if (rc)
    TG_FAIL_("get %s %s: %s %s", tg_model_entity(ent)->name, id, tg_strerror(rc), p.detail);
  return *row;
}

static const char *status_of(tg_entity_t ent, const char *id) {
  return str(get(ent, id), "status");
}

static void set_status(tg_entity_t ent, const char *id, const char *status) {
  tg_problem_t p = {0};
  EXPECT_OK(
      tg_store_update(S, ent, id, keep(json_pack("{s:s}", "status", status)), false, 0, NULL, &p));
}

static json_t *make_api(const char *slug) {
  return make(TG_ENT_API, json_pack("{s:s, s:s}", "slug", slug, "name", "Pets"));
}

static json_t *make_plan(const char *api_id, const char *slug, bool approval) {
  return make(TG_ENT_PLAN, json_pack("{s:s, s:s, s:s, s:b}", "api_id", api_id, "slug", slug, "name",
                                     "Plan", "requires_approval", approval));
}

static json_t *make_dev(const char *email) {
  return make(TG_ENT_DEVELOPER, json_pack("{s:s, s:s}", "email", email, "status", "active"));
}

static json_t *make_app(const char *dev_id, const char *name) {
  tg_problem_t p = {0};
  json_t **row = slot();
  EXPECT_OK(TX(tg_app_create(S, keep(json_pack("{s:s, s:s}", "developer_id", dev_id, "name", name)),
                             row, &p)));
  return *row;
}

/* A subscription; status NULL lets the plan decide. */
static json_t *make_sub(const char *app_id, const char *api_id, const char *plan_id,
                        const char *status) {
  tg_problem_t p = {0};
  json_t **row = slot();
  json_t *f =
      keep(json_pack("{s:s, s:s, s:s}", "app_id", app_id, "api_id", api_id, "plan_id", plan_id));
  if (status)
    json_object_set_new(f, "status", json_string(status));
  EXPECT_OK(TX(tg_subscription_create(S, f, row, &p)));
  return *row;
}

static json_t *make_key(const char *app_id, const char *name, int64_t expires_at, char *plain) {
  tg_problem_t p = {0};
  char buf[TG_TOKEN_MAX_LEN + 1];
  json_t **row = slot();
  EXPECT_OK(TX(tg_key_create(S, &SEC, app_id, name, expires_at, plain ? plain : buf, row, &p)));
  return *row;
}

static int64_t count(tg_entity_t ent, const char *field, const char *value) {
  tg_problem_t p = {0};
  tg_filter_t f = {field, value};
  int64_t n = -1;
  EXPECT_OK(tg_store_count(S, ent, field ? &f : NULL, field ? 1 : 0, &n, &p));
  return n;
}

static int collect_change(const tg_change_t *c, void *ctx) {
  json_array_append_new(ctx, json_pack("{s:I, s:s, s:s, s:s}", "seq", (json_int_t)c->seq, "entity",
                                       c->entity, "id", c->entity_id, "op", c->op));
  return 0;
}

/* Changes after seq `after` (a registered array). */
static json_t *changes_after(int64_t after) {
  tg_problem_t p = {0};
  json_t *arr = keep(json_array());
  EXPECT_OK(tg_store_changes(S, after, 10000, collect_change, arr, NULL, &p));
  return arr;
}

static int64_t last_seq(void) {
  json_t *all = changes_after(0);
  size_t n = json_array_size(all);
  return n ? ival(json_array_get(all, n - 1), "seq") : 0;
}

/* Number of changes in arr for entity/id/op. */
static int changes_for(const json_t *arr, const char *entity, const char *id, const char *op) {
  size_t i;
  json_t *c;
  int n = 0;
  json_array_foreach(arr, i, c) {
    if (strcmp(str(c, "entity"), entity) == 0 && strcmp(str(c, "id"), id) == 0 &&
        strcmp(str(c, "op"), op) == 0)
      n++;
  }
  return n;
}

/* The one audit row about entity_id. */
static json_t *audit_row(const char *entity_id) {
  tg_problem_t p = {0};
  tg_filter_t f = {"entity_id", entity_id};
  tg_list_query_t q = {.filters = &f, .nfilters = 1, .limit = 10};
  char next[TG_ID_LEN + 1];
  json_t **rows = slot();
  EXPECT_OK(tg_store_list(S, TG_ENT_AUDIT, &q, rows, next, &p));
  ASSERT_INT_EQ(json_array_size(*rows), 1);
  return json_array_get(*rows, 0);
}

/* A fixed clock (ms) a little ahead of the real one, so that rows made
 * before the override keep updated_at >= created_at. */
static int64_t fix_clock(void) {
  int64_t t = (tg_now() + 10) * 1000;
  tg_clock_override_ms(t);
  return t / 1000;
}

/* ---- audit ---------------------------------------------------------------- */

TG_TEST(audit_records_who_what_and_before_after) {
  fresh();
  tg_problem_t p = {0};
  int64_t now = fix_clock();
  json_t *api = make_api("pets");
  EXPECT_OK(
      TX(tg_audit(S, "ops-token", "create", TG_ENT_API, sid(api), NULL, api, "req-0001", &p)));
  json_t *a = audit_row(sid(api));
  ASSERT_STR_EQ(str(a, "actor"), "ops-token");
  ASSERT_STR_EQ(str(a, "action"), "create");
  ASSERT_STR_EQ(str(a, "entity"), "api");
  ASSERT_STR_EQ(str(a, "entity_id"), sid(api));
  ASSERT_STR_EQ(str(a, "request_id"), "req-0001");
  ASSERT_INT_EQ(ival(a, "at"), now);
  ASSERT(strncmp(sid(a), "aud_", 4) == 0);
  json_t *sum = json_object_get(a, "summary");
  ASSERT(json_is_object(sum));
  ASSERT_INT_EQ(json_object_size(sum), 2);
  ASSERT(json_is_null(json_object_get(sum, "before")));
  ASSERT(json_equal(json_object_get(sum, "after"), api)); /* small rows are kept whole */

  /* an update: both sides */
  json_t **upd = slot();
  EXPECT_OK(tg_store_update(S, TG_ENT_API, sid(api), keep(json_pack("{s:s}", "name", "Pets v2")),
                            false, 0, upd, &p));
  json_t *dev = make_dev("audit@example.com");
  EXPECT_OK(
      TX(tg_audit(S, "portal:dev_x", "update", TG_ENT_DEVELOPER, sid(dev), dev, dev, NULL, &p)));
  a = audit_row(sid(dev));
  ASSERT_STR_EQ(str(a, "entity"), "developer");
  ASSERT_STR_EQ(str(a, "request_id"), "");
  EXPECT_OK(TX(tg_audit(S, "cli", "update", TG_ENT_API, "api-update-marker", api, *upd, "r2", &p)));
  a = audit_row("api-update-marker");
  sum = json_object_get(a, "summary");
  ASSERT_STR_EQ(str(json_object_get(sum, "before"), "name"), "Pets");
  ASSERT_STR_EQ(str(json_object_get(sum, "after"), "name"), "Pets v2");
  ASSERT_INT_EQ(ival(json_object_get(sum, "after"), "version"), 2);
  teardown();
}

TG_TEST(audit_summarises_a_huge_member_by_size) {
  fresh();
  tg_problem_t p = {0};
  /* an API with a 100 KB OpenAPI document */
  enum { PAD = 100 * 1024 };
  char *pad = malloc(PAD + 1);
  ASSERT(pad != NULL);
  memset(pad, 'x', PAD);
  memcpy(pad, "HUGE-MEMBER-MARK", 16);
  pad[PAD] = '\0';
  json_t *doc = keep(json_pack("{s:s, s:{s:s, s:s}, s:s}", "openapi", "3.0.3", "info", "title",
                               "Pets", "version", "1", "x-padding", pad));
  free(pad);
  char *dump = json_dumps(doc, JSON_COMPACT);
  ASSERT(dump != NULL);
  size_t doc_bytes = strlen(dump);
  free(dump);
  ASSERT(doc_bytes > PAD);
  json_t *api =
      make(TG_ENT_API, json_pack("{s:s, s:s, s:O}", "slug", "big", "name", "Big", "openapi", doc));
  ASSERT(json_is_object(json_object_get(api, "openapi")));
  EXPECT_OK(TX(tg_audit(S, "ops", "update", TG_ENT_API, sid(api), api, api, "r", &p)));
  json_t *a = audit_row(sid(api));
  json_t *sum = json_object_get(a, "summary");
  for (int side = 0; side < 2; side++) {
    json_t *v = json_object_get(sum, side ? "after" : "before");
    ASSERT_STR_EQ(str(v, "slug"), "big"); /* small members kept */
    json_t *o = json_object_get(v, "openapi");
    ASSERT(json_is_object(o));
    ASSERT_INT_EQ(json_object_size(o), 1);
    ASSERT_INT_EQ(ival(o, "bytes"), doc_bytes);
  }
  char *text = json_dumps(sum, JSON_COMPACT);
  ASSERT(text != NULL);
  size_t text_len = strlen(text);
  bool has_mark = strstr(text, "HUGE-MEMBER-MARK") != NULL;
  free(text);
  ASSERT(!has_mark);
  ASSERT(text_len < 8192);
  teardown();
}

TG_TEST(audit_of_a_key_holds_no_secret) {
  fresh();
  tg_problem_t p = {0};
  char plain[TG_TOKEN_MAX_LEN + 1];
  json_t *dev = make_dev("k@example.com");
  json_t *app = make_app(sid(dev), "app");
  json_t *key = make_key(sid(app), "ci", 0, plain);
  EXPECT_OK(TX(tg_audit(S, "ops", "create", TG_ENT_KEY, sid(key), NULL, key, "r", &p)));
  json_t *after = json_object_get(json_object_get(audit_row(sid(key)), "summary"), "after");
  ASSERT(json_object_get(after, "digest") == NULL);
  ASSERT(json_is_string(json_object_get(after, "prefix")));
  char *text = json_dumps(after, JSON_COMPACT);
  ASSERT(text != NULL);
  bool leaked = strstr(text, plain + 16) != NULL;
  free(text);
  ASSERT(!leaked);
  teardown();
}

/* ---- developers ----------------------------------------------------------- */

TG_TEST(developer_transitions_follow_the_table) {
  fresh();
  tg_problem_t p = {0};
  static const char *states[] = {"pending", "active", "suspended", "deleted"};
  static const char *actions[] = {"approve", "suspend", "unsuspend"};
  /* resulting status, or NULL: TG_ECONFLICT */
  static const char *table[4][3] = {
      {"active", "suspended", NULL}, /* pending */
      {NULL, "suspended", NULL},     /* active */
      {NULL, NULL, "active"},        /* suspended */
      {NULL, NULL, NULL},            /* deleted */
  };
  for (int i = 0; i < 4; i++) {
    for (int j = 0; j < 3; j++) {
      char email[64];
      snprintf(email, sizeof(email), "d%d%d@example.com", i, j);
      json_t *dev = make(TG_ENT_DEVELOPER, json_pack("{s:s}", "email", email));
      ASSERT_STR_EQ(str(dev, "status"), "pending"); /* the default */
      if (i > 0)
        set_status(TG_ENT_DEVELOPER, sid(dev), states[i]);
      int64_t version = ival(get(TG_ENT_DEVELOPER, sid(dev)), "version");
      json_t **row = slot();
      tg_problem_clear(&p);
      int rc = TX(tg_developer_transition(S, sid(dev), actions[j], row, &p));
      if (table[i][j]) {
        if (rc != TG_OK)
          TG_FAIL_("%s a %s developer: %s (%s)", actions[j], states[i], tg_strerror(rc), p.detail);
        ASSERT_STR_EQ(str(*row, "status"), table[i][j]);
        ASSERT_STR_EQ(status_of(TG_ENT_DEVELOPER, sid(dev)), table[i][j]);
        ASSERT_INT_EQ(ival(*row, "version"), version + 1);
      } else {
        if (rc != TG_ECONFLICT)
          TG_FAIL_("%s a %s developer: expected conflict, got %s", actions[j], states[i],
                   tg_strerror(rc));
        ASSERT(*row == NULL);
        ASSERT_STR_EQ(status_of(TG_ENT_DEVELOPER, sid(dev)), states[i]);
        ASSERT_INT_EQ(ival(get(TG_ENT_DEVELOPER, sid(dev)), "version"), version);
      }
    }
  }
  json_t *dev = make_dev("x@example.com");
  EXPECT_ERR(TX(tg_developer_transition(S, sid(dev), "delete-ish", NULL, &p)), TG_EINVAL, NULL);
  EXPECT_ERR(TX(tg_developer_transition(S, "dev_00000000000000000000000000", "approve", NULL, &p)),
             TG_ENOTFOUND, NULL);
  ASSERT_STR_EQ(status_of(TG_ENT_DEVELOPER, sid(dev)), "active");
  teardown();
}

/* A developer with two apps, each with two keys and a subscription. */
struct family {
  json_t *api, *plan, *dev, *app[2], *sub[2], *key[2][2];
};

static void make_family(struct family *f, const char *email) {
  char slug[64];
  snprintf(slug, sizeof(slug), "api-%.20s", email);
  for (char *c = slug; *c; c++)
    if (*c == '@' || *c == '.')
      *c = '-';
  f->api = make_api(slug);
  f->plan = make_plan(sid(f->api), "free", false);
  f->dev = make_dev(email);
  for (int i = 0; i < 2; i++) {
    f->app[i] = make_app(sid(f->dev), i ? "second" : "first");
    f->sub[i] = make_sub(sid(f->app[i]), sid(f->api), sid(f->plan), NULL);
    ASSERT_STR_EQ(str(f->sub[i], "status"), "active");
    for (int k = 0; k < 2; k++)
      f->key[i][k] = make_key(sid(f->app[i]), k ? "k1" : "k0", 0, NULL);
  }
}

/* Statuses of app i of f, its subscription and keys. */
static void expect_app_status(struct family *f, int i, const char *app, const char *sub,
                              const char *key) {
  ASSERT_STR_EQ(status_of(TG_ENT_APP, sid(f->app[i])), app);
  ASSERT_STR_EQ(status_of(TG_ENT_SUBSCRIPTION, sid(f->sub[i])), sub);
  for (int k = 0; k < 2; k++)
    ASSERT_STR_EQ(status_of(TG_ENT_KEY, sid(f->key[i][k])), key);
}

TG_TEST(developer_delete_cascades_and_frees_the_email) {
  fresh();
  tg_problem_t p = {0};
  struct family f, other;
  make_family(&f, "gone@example.com");
  make_family(&other, "stays@example.com");
  int64_t seq = last_seq();
  json_t **row = slot();
  EXPECT_OK(TX(tg_developer_delete(S, sid(f.dev), row, &p)));
  ASSERT_STR_EQ(str(*row, "status"), "deleted");
  ASSERT_STR_EQ(status_of(TG_ENT_DEVELOPER, sid(f.dev)), "deleted");
  for (int i = 0; i < 2; i++)
    expect_app_status(&f, i, "deleted", "cancelled", "revoked");
  /* another developer is untouched */
  ASSERT_STR_EQ(status_of(TG_ENT_DEVELOPER, sid(other.dev)), "active");
  for (int i = 0; i < 2; i++)
    expect_app_status(&other, i, "active", "active", "active");
  /* the gateway hears about every key (and the rest) */
  json_t *ch = changes_after(seq);
  for (int i = 0; i < 2; i++) {
    for (int k = 0; k < 2; k++)
      ASSERT_INT_EQ(changes_for(ch, "key", sid(f.key[i][k]), "update"), 1);
    ASSERT_INT_EQ(changes_for(ch, "app", sid(f.app[i]), "update"), 1);
    ASSERT_INT_EQ(changes_for(ch, "subscription", sid(f.sub[i]), "update"), 1);
  }
  ASSERT_INT_EQ(changes_for(ch, "developer", sid(f.dev), "update"), 1);
  ASSERT_INT_EQ(json_array_size(ch), 9);
  /* history stays: the rows are still there */
  ASSERT_INT_EQ(count(TG_ENT_KEY, "app_id", sid(f.app[0])), 2);
  /* the email is free for a new sign-up */
  json_t *again = make(TG_ENT_DEVELOPER, json_pack("{s:s}", "email", "gone@example.com"));
  ASSERT(strcmp(sid(again), sid(f.dev)) != 0);
  /* a deleted developer gets no new app and cannot be deleted again */
  json_t **app = slot();
  EXPECT_ERR(
      TX(tg_app_create(S, keep(json_pack("{s:s, s:s}", "developer_id", sid(f.dev), "name", "late")),
                       app, &p)),
      TG_ECONFLICT, "/developer_id");
  ASSERT(*app == NULL);
  ASSERT_INT_EQ(count(TG_ENT_APP, "developer_id", sid(f.dev)), 2);
  EXPECT_ERR(TX(tg_developer_delete(S, sid(f.dev), slot(), &p)), TG_ECONFLICT, NULL);
  EXPECT_ERR(TX(tg_developer_delete(S, "dev_00000000000000000000000000", NULL, &p)), TG_ENOTFOUND,
             NULL);
  teardown();
}

TG_TEST(developer_delete_is_atomic) {
  fresh();
  tg_problem_t p = {0};
  struct family f;
  make_family(&f, "atomic@example.com");
  int64_t seq = last_seq();
  tx_begin();
  EXPECT_OK(tg_developer_delete(S, sid(f.dev), NULL, &p));
  ASSERT_STR_EQ(status_of(TG_ENT_KEY, sid(f.key[1][1])), "revoked"); /* inside: done */
  tg_store_rollback(S);
  ASSERT_STR_EQ(status_of(TG_ENT_DEVELOPER, sid(f.dev)), "active");
  for (int i = 0; i < 2; i++)
    expect_app_status(&f, i, "active", "active", "active");
  ASSERT_INT_EQ(json_array_size(changes_after(seq)), 0);
  /* the email is still taken */
  EXPECT_ERR(tg_store_create(S, TG_ENT_DEVELOPER,
                             keep(json_pack("{s:s}", "email", "atomic@example.com")), false, NULL,
                             &p),
             TG_ECONFLICT, "/email");
  teardown();
}

TG_TEST(app_delete_cascades_to_that_app_only) {
  fresh();
  tg_problem_t p = {0};
  struct family f;
  make_family(&f, "apps@example.com");
  int64_t v[2][2];
  for (int k = 0; k < 2; k++)
    v[1][k] = ival(get(TG_ENT_KEY, sid(f.key[1][k])), "version");
  v[0][0] = ival(get(TG_ENT_APP, sid(f.app[1])), "version");
  v[0][1] = ival(get(TG_ENT_SUBSCRIPTION, sid(f.sub[1])), "version");
  int64_t seq = last_seq();
  json_t **row = slot();
  EXPECT_OK(TX(tg_app_delete(S, sid(f.app[0]), row, &p)));
  ASSERT_STR_EQ(str(*row, "status"), "deleted");
  expect_app_status(&f, 0, "deleted", "cancelled", "revoked");
  expect_app_status(&f, 1, "active", "active", "active");
  for (int k = 0; k < 2; k++)
    ASSERT_INT_EQ(ival(get(TG_ENT_KEY, sid(f.key[1][k])), "version"), v[1][k]);
  ASSERT_INT_EQ(ival(get(TG_ENT_APP, sid(f.app[1])), "version"), v[0][0]);
  ASSERT_INT_EQ(ival(get(TG_ENT_SUBSCRIPTION, sid(f.sub[1])), "version"), v[0][1]);
  ASSERT_STR_EQ(status_of(TG_ENT_DEVELOPER, sid(f.dev)), "active");
  json_t *ch = changes_after(seq);
  for (int k = 0; k < 2; k++) {
    ASSERT_INT_EQ(changes_for(ch, "key", sid(f.key[0][k]), "update"), 1);
    ASSERT_INT_EQ(changes_for(ch, "key", sid(f.key[1][k]), "update"), 0);
  }
  ASSERT_INT_EQ(json_array_size(ch), 4); /* app, subscription, two keys */
  /* deleted is final for an app */
  EXPECT_ERR(TX(tg_app_delete(S, sid(f.app[0]), slot(), &p)), TG_ECONFLICT, NULL);
  /* a suspended app can be deleted */
  set_status(TG_ENT_APP, sid(f.app[1]), "suspended");
  EXPECT_OK(TX(tg_app_delete(S, sid(f.app[1]), NULL, &p)));
  expect_app_status(&f, 1, "deleted", "cancelled", "revoked");
  teardown();
}

/* Cascades page through more rows than one list call returns. */
TG_TEST(cascades_cover_more_than_a_page) {
  fresh();
  tg_problem_t p = {0};
  json_t *dev = make_dev("many@example.com");
  const char *dev_id = sid(dev);
  json_t **first = slot(), **last = slot();
  tx_begin();
  for (int i = 0; i < TG_LIST_MAX + 2; i++) {
    json_t *f = json_pack("{s:s, s:s}", "developer_id", dev_id, "name", "app");
    json_t **row = i == 0 ? first : last;
    json_decref(*row);
    *row = NULL;
    int rc = tg_store_create(S, TG_ENT_APP, f, false, row, &p);
    json_decref(f);
    if (rc)
      TG_FAIL_("create app %d: %s", i, tg_strerror(rc));
  }
  for (int i = 0; i < TG_LIST_MAX + 3; i++) {
    char key[TG_TOKEN_MAX_LEN + 1];
    EXPECT_OK(tg_key_issue(S, &SEC, sid(*last), NULL, 0, NULL, key, NULL, &p));
  }
  ASSERT_INT_EQ(tx_end(TG_OK), TG_OK);
  EXPECT_OK(TX(tg_app_delete(S, sid(*last), NULL, &p)));
  tg_filter_t f[2] = {{"app_id", sid(*last)}, {"status", "active"}};
  int64_t n = -1;
  EXPECT_OK(tg_store_count(S, TG_ENT_KEY, f, 2, &n, &p));
  ASSERT_INT_EQ(n, 0);
  EXPECT_OK(TX(tg_developer_delete(S, dev_id, NULL, &p)));
  tg_filter_t g[2] = {{"developer_id", dev_id}, {"status", "deleted"}};
  EXPECT_OK(tg_store_count(S, TG_ENT_APP, g, 2, &n, &p));
  ASSERT_INT_EQ(n, TG_LIST_MAX + 2);
  ASSERT_STR_EQ(status_of(TG_ENT_APP, sid(*first)), "deleted");
  teardown();
}

TG_TEST(app_create_needs_a_live_developer) {
  fresh();
  tg_problem_t p = {0};
  json_t *dev = make_dev("a@example.com");
  json_t *app = make_app(sid(dev), "mine");
  ASSERT_STR_EQ(str(app, "status"), "active");
  ASSERT_STR_EQ(str(app, "developer_id"), sid(dev));
  /* pending and suspended developers may still have apps */
  set_status(TG_ENT_DEVELOPER, sid(dev), "suspended");
  make_app(sid(dev), "while suspended");
  EXPECT_OK(TX(tg_developer_delete(S, sid(dev), NULL, &p)));
  EXPECT_ERR(TX(tg_app_create(
                 S, keep(json_pack("{s:s,s:s}", "developer_id", sid(dev), "name", "x")), NULL, &p)),
             TG_ECONFLICT, "/developer_id");
  /* a missing developer is the store's error, still naming the field */
  EXPECT_ERR(TX(tg_app_create(S,
                              keep(json_pack("{s:s,s:s}", "developer_id",
                                             "dev_00000000000000000000000000", "name", "x")),
                              NULL, &p)),
             TG_EINVAL, "/developer_id");
  ASSERT_INT_EQ(count(TG_ENT_APP, NULL, NULL), 2);
  teardown();
}

/* ---- subscriptions -------------------------------------------------------- */

TG_TEST(subscription_create_defaults_and_refusals) {
  fresh();
  tg_problem_t p = {0};
  json_t *api = make_api("pets"), *api2 = make_api("shop");
  json_t *free_plan = make_plan(sid(api), "free", false);
  json_t *gold = make_plan(sid(api), "gold", true);
  json_t *other = make_plan(sid(api2), "free", false);
  json_t *dev = make_dev("s@example.com");
  json_t *app[8];
  for (int i = 0; i < 8; i++)
    app[i] = make_app(sid(dev), "app");
  /* the plan decides without an explicit status */
  ASSERT_STR_EQ(str(make_sub(sid(app[0]), sid(api), sid(gold), NULL), "status"), "pending");
  json_t *s1 = make_sub(sid(app[1]), sid(api), sid(free_plan), NULL);
  ASSERT_STR_EQ(str(s1, "status"), "active");
  ASSERT_STR_EQ(status_of(TG_ENT_SUBSCRIPTION, sid(s1)), "active");
  /* an explicit status wins either way */
  ASSERT_STR_EQ(str(make_sub(sid(app[2]), sid(api), sid(gold), "active"), "status"), "active");
  ASSERT_STR_EQ(str(make_sub(sid(app[3]), sid(api), sid(free_plan), "pending"), "status"),
                "pending");
  /* a deleted app */
  EXPECT_OK(TX(tg_app_delete(S, sid(app[4]), NULL, &p)));
  json_t **row = slot();
  EXPECT_ERR(
      TX(tg_subscription_create(S,
                                keep(json_pack("{s:s,s:s,s:s}", "app_id", sid(app[4]), "api_id",
                                               sid(api), "plan_id", sid(free_plan))),
                                row, &p)),
      TG_ECONFLICT, "/app_id");
  ASSERT(*row == NULL);
  /* a missing plan, with and without an explicit status */
  const char *nope = "pln_00000000000000000000000000";
  EXPECT_ERR(TX(tg_subscription_create(S,
                                       keep(json_pack("{s:s,s:s,s:s}", "app_id", sid(app[5]),
                                                      "api_id", sid(api), "plan_id", nope)),
                                       row, &p)),
             TG_EINVAL, "/plan_id");
  EXPECT_ERR(
      TX(tg_subscription_create(S,
                                keep(json_pack("{s:s,s:s,s:s,s:s}", "app_id", sid(app[5]), "api_id",
                                               sid(api), "plan_id", nope, "status", "active")),
                                row, &p)),
      TG_EINVAL, "/plan_id");
  /* a plan of another API, with and without an explicit status */
  EXPECT_ERR(TX(tg_subscription_create(S,
                                       keep(json_pack("{s:s,s:s,s:s}", "app_id", sid(app[5]),
                                                      "api_id", sid(api), "plan_id", sid(other))),
                                       row, &p)),
             TG_EINVAL, "/plan_id");
  EXPECT_ERR(TX(tg_subscription_create(
                 S,
                 keep(json_pack("{s:s,s:s,s:s,s:s}", "app_id", sid(app[5]), "api_id", sid(api),
                                "plan_id", sid(other), "status", "active")),
                 row, &p)),
             TG_EINVAL, "/plan_id");
  /* a missing app */
  EXPECT_ERR(TX(tg_subscription_create(
                 S,
                 keep(json_pack("{s:s,s:s,s:s}", "app_id", "app_00000000000000000000000000",
                                "api_id", sid(api), "plan_id", sid(free_plan))),
                 row, &p)),
             TG_EINVAL, "/app_id");
  /* a malformed body names its field */
  EXPECT_ERR(
      TX(tg_subscription_create(
          S, keep(json_pack("{s:s,s:s}", "app_id", sid(app[5]), "api_id", sid(api))), row, &p)),
      TG_EINVAL, "/plan_id");
  /* a second live subscription of the same app and API, any plan */
  EXPECT_ERR(TX(tg_subscription_create(S,
                                       keep(json_pack("{s:s,s:s,s:s}", "app_id", sid(app[1]),
                                                      "api_id", sid(api), "plan_id", sid(gold))),
                                       row, &p)),
             TG_ECONFLICT, NULL);
  EXPECT_ERR(
      TX(tg_subscription_create(S,
                                keep(json_pack("{s:s,s:s,s:s}", "app_id", sid(app[1]), "api_id",
                                               sid(api), "plan_id", sid(free_plan))),
                                row, &p)),
      TG_ECONFLICT, NULL);
  ASSERT_INT_EQ(count(TG_ENT_SUBSCRIPTION, "app_id", sid(app[1])), 1);
  ASSERT_INT_EQ(count(TG_ENT_SUBSCRIPTION, "app_id", sid(app[5])), 0);
  /* the same app may subscribe to another API; a cancelled one frees the slot */
  make_sub(sid(app[1]), sid(api2), sid(other), NULL);
  EXPECT_OK(TX(tg_subscription_transition(S, sid(s1), "cancel", NULL, &p)));
  ASSERT_STR_EQ(str(make_sub(sid(app[1]), sid(api), sid(gold), NULL), "status"), "pending");
  teardown();
}

TG_TEST(subscription_transitions_follow_the_table) {
  fresh();
  tg_problem_t p = {0};
  static const char *states[] = {"pending", "active", "suspended", "cancelled"};
  static const char *actions[] = {"approve", "suspend", "resume", "cancel"};
  static const char *table[4][4] = {
      {"active", NULL, NULL, "cancelled"},    /* pending */
      {NULL, "suspended", NULL, "cancelled"}, /* active */
      {NULL, NULL, "active", "cancelled"},    /* suspended */
      {NULL, NULL, NULL, NULL},               /* cancelled */
  };
  json_t *api = make_api("pets");
  json_t *plan = make_plan(sid(api), "free", false);
  json_t *dev = make_dev("t@example.com");
  for (int i = 0; i < 4; i++) {
    for (int j = 0; j < 4; j++) {
      json_t *app = make_app(sid(dev), "app");
      json_t *sub = make_sub(sid(app), sid(api), sid(plan), states[i]);
      ASSERT_STR_EQ(str(sub, "status"), states[i]);
      json_t **row = slot();
      tg_problem_clear(&p);
      int rc = TX(tg_subscription_transition(S, sid(sub), actions[j], row, &p));
      if (table[i][j]) {
        if (rc != TG_OK)
          TG_FAIL_("%s a %s subscription: %s (%s)", actions[j], states[i], tg_strerror(rc),
                   p.detail);
        ASSERT_STR_EQ(str(*row, "status"), table[i][j]);
        ASSERT_STR_EQ(status_of(TG_ENT_SUBSCRIPTION, sid(sub)), table[i][j]);
      } else {
        if (rc != TG_ECONFLICT)
          TG_FAIL_("%s a %s subscription: expected conflict, got %s", actions[j], states[i],
                   tg_strerror(rc));
        ASSERT(*row == NULL);
        ASSERT_STR_EQ(status_of(TG_ENT_SUBSCRIPTION, sid(sub)), states[i]);
      }
    }
  }
  /* a whole life: approve, suspend, resume, cancel; then nothing more */
  json_t *gold = make_plan(sid(api), "gold", true);
  json_t *sub = make_sub(sid(make_app(sid(dev), "life")), sid(api), sid(gold), NULL);
  ASSERT_STR_EQ(str(sub, "status"), "pending");
  const char *life[] = {"approve", "suspend", "resume", "suspend", "cancel"};
  for (int i = 0; i < 5; i++)
    EXPECT_OK(TX(tg_subscription_transition(S, sid(sub), life[i], NULL, &p)));
  for (int j = 0; j < 4; j++) {
    EXPECT_ERR(TX(tg_subscription_transition(S, sid(sub), actions[j], NULL, &p)), TG_ECONFLICT,
               NULL);
    ASSERT_STR_EQ(status_of(TG_ENT_SUBSCRIPTION, sid(sub)), "cancelled");
  }
  EXPECT_ERR(TX(tg_subscription_transition(S, sid(sub), "unsuspend", NULL, &p)), TG_EINVAL, NULL);
  EXPECT_ERR(
      TX(tg_subscription_transition(S, "sub_00000000000000000000000000", "cancel", NULL, &p)),
      TG_ENOTFOUND, NULL);
  teardown();
}

/* ---- keys ----------------------------------------------------------------- */

TG_TEST(key_create_refusals) {
  fresh();
  tg_problem_t p = {0};
  int64_t now = fix_clock();
  json_t *dev = make_dev("keys@example.com");
  json_t *app = make_app(sid(dev), "live"), *dead = make_app(sid(dev), "dead");
  char key[TG_TOKEN_MAX_LEN + 1];
  json_t *k = make_key(sid(app), "ci", now + 3600, key);
  ASSERT(strncmp(key, "tg_live_", 8) == 0);
  ASSERT_STR_EQ(str(k, "app_id"), sid(app));
  ASSERT_STR_EQ(str(k, "name"), "ci");
  ASSERT_STR_EQ(str(k, "status"), "active");
  ASSERT_INT_EQ(ival(k, "expires_at"), now + 3600);
  ASSERT(json_object_get(k, "digest") == NULL);
  make_key(sid(app), NULL, 0, NULL); /* no name, no expiry */
  EXPECT_OK(TX(tg_app_delete(S, sid(dead), NULL, &p)));
  json_t **row = slot();
  memset(key, 'x', sizeof(key));
  EXPECT_ERR(TX(tg_key_create(S, &SEC, sid(dead), "n", 0, key, row, &p)), TG_ECONFLICT, "/app_id");
  ASSERT(*row == NULL);
  ASSERT_INT_EQ(key[0], '\0');
  EXPECT_ERR(TX(tg_key_create(S, &SEC, sid(app), "n", now - 1, key, row, &p)), TG_EINVAL,
             "/expires_at");
  EXPECT_ERR(TX(tg_key_create(S, &SEC, sid(app), "n", now, key, row, &p)), TG_EINVAL,
             "/expires_at");
  const char *bad[] = {"nope", "", "app_123", "dev_00000000000000000000000000",
                       "app_0000000000000000000000000!"};
  for (int i = 0; i < 5; i++)
    EXPECT_ERR(TX(tg_key_create(S, &SEC, bad[i], "n", 0, key, row, &p)), TG_EINVAL, "/app_id");
  EXPECT_ERR(TX(tg_key_create(S, &SEC, NULL, "n", 0, key, row, &p)), TG_EINVAL, "/app_id");
  EXPECT_ERR(TX(tg_key_create(S, &SEC, "app_00000000000000000000000000", "n", 0, key, row, &p)),
             TG_EINVAL, "/app_id");
  ASSERT(*row == NULL);
  ASSERT_INT_EQ(count(TG_ENT_KEY, NULL, NULL), 2);
  teardown();
}

TG_TEST(key_rotate_with_grace) {
  fresh();
  tg_problem_t p = {0};
  int64_t now = fix_clock();
  json_t *dev = make_dev("rot@example.com");
  json_t *app = make_app(sid(dev), "rot");
  char old_key[TG_TOKEN_MAX_LEN + 1], new_key[TG_TOKEN_MAX_LEN + 1];
  json_t *k1 = make_key(sid(app), "ci", 0, old_key);
  json_t **nrow = slot(), **orow = slot();
  EXPECT_OK(TX(tg_key_rotate(S, &SEC, sid(k1), 3600, new_key, nrow, orow, &p)));
  ASSERT(strncmp(new_key, "tg_live_", 8) == 0);
  ASSERT(strcmp(new_key, old_key) != 0);
  ASSERT(strcmp(sid(*nrow), sid(k1)) != 0);
  ASSERT_STR_EQ(str(*nrow, "rotated_from"), sid(k1));
  ASSERT_STR_EQ(str(*nrow, "app_id"), sid(app));
  ASSERT_STR_EQ(str(*nrow, "name"), "ci");
  ASSERT_STR_EQ(str(*nrow, "status"), "active");
  ASSERT_INT_EQ(ival(*nrow, "expires_at"), 0); /* same expiry: never */
  ASSERT_STR_EQ(sid(*orow), sid(k1));
  ASSERT_STR_EQ(str(*orow, "status"), "active"); /* still works during the grace */
  ASSERT_INT_EQ(ival(*orow, "expires_at"), now + 3600);
  ASSERT_INT_EQ(ival(get(TG_ENT_KEY, sid(k1)), "expires_at"), now + 3600);
  json_t *stored = get(TG_ENT_KEY, sid(*nrow));
  ASSERT_STR_EQ(str(stored, "rotated_from"), sid(k1));
  /* the new plaintext is the one stored (by digest) */
  unsigned char d[TG_DIGEST_BYTES];
  char hex[TG_DIGEST_HEX_LEN + 1];
  tg_token_digest(&SEC, new_key, strlen(new_key), d);
  tg_hex_encode(d, sizeof(d), hex);
  json_t **found = slot();
  EXPECT_OK(tg_store_get_by(S, TG_ENT_KEY, "digest", hex, found, &p));
  ASSERT_STR_EQ(sid(*found), sid(*nrow));

  /* grace 0 revokes the old key at once */
  json_t *k2 = make_key(sid(app), "k2", 0, NULL);
  nrow = slot();
  orow = slot();
  EXPECT_OK(TX(tg_key_rotate(S, &SEC, sid(k2), 0, new_key, NULL, orow, &p)));
  ASSERT_STR_EQ(str(*orow, "status"), "revoked");
  ASSERT_STR_EQ(status_of(TG_ENT_KEY, sid(k2)), "revoked");

  /* grace bounds */
  json_t *k3 = make_key(sid(app), "k3", 0, NULL);
  int64_t keys_before = count(TG_ENT_KEY, NULL, NULL);
  memset(new_key, 'x', sizeof(new_key));
  nrow = slot();
  orow = slot();
  EXPECT_ERR(TX(tg_key_rotate(S, &SEC, sid(k3), TG_ROTATE_GRACE_MAX + 1, new_key, nrow, NULL, &p)),
             TG_EINVAL, NULL);
  ASSERT_INT_EQ(new_key[0], '\0');
  ASSERT(*nrow == NULL);
  EXPECT_ERR(TX(tg_key_rotate(S, &SEC, sid(k3), -1, new_key, NULL, NULL, &p)), TG_EINVAL, NULL);
  ASSERT_INT_EQ(count(TG_ENT_KEY, NULL, NULL), keys_before);
  ASSERT_INT_EQ(ival(get(TG_ENT_KEY, sid(k3)), "version"), ival(k3, "version"));
  nrow = slot();
  orow = slot();
  EXPECT_OK(TX(tg_key_rotate(S, &SEC, sid(k3), TG_ROTATE_GRACE_MAX, new_key, NULL, orow, &p)));
  ASSERT_INT_EQ(ival(*orow, "expires_at"), now + TG_ROTATE_GRACE_MAX);

  /* only an active, unexpired key: revoked (k2) */
  keys_before = count(TG_ENT_KEY, NULL, NULL);
  EXPECT_ERR(TX(tg_key_rotate(S, &SEC, sid(k2), 60, new_key, NULL, NULL, &p)), TG_ECONFLICT, NULL);
  /* ... and expired */
  json_t *k4 = make_key(sid(app), "k4", now + 10, NULL);
  keys_before++;
  tg_clock_override_ms((now + 10) * 1000);
  EXPECT_ERR(TX(tg_key_rotate(S, &SEC, sid(k4), 60, new_key, NULL, NULL, &p)), TG_ECONFLICT, NULL);
  tg_clock_override_ms((now + 20) * 1000);
  EXPECT_ERR(TX(tg_key_rotate(S, &SEC, sid(k4), 60, new_key, NULL, NULL, &p)), TG_ECONFLICT, NULL);
  ASSERT_INT_EQ(count(TG_ENT_KEY, NULL, NULL), keys_before);
  EXPECT_ERR(
      TX(tg_key_rotate(S, &SEC, "key_00000000000000000000000000", 60, new_key, NULL, NULL, &p)),
      TG_ENOTFOUND, NULL);
  now += 20;

  /* an old expiry earlier than now + grace is kept (and passed on) */
  json_t *k5 = make_key(sid(app), "k5", now + 100, NULL);
  nrow = slot();
  orow = slot();
  EXPECT_OK(TX(tg_key_rotate(S, &SEC, sid(k5), 3600, new_key, nrow, orow, &p)));
  ASSERT_INT_EQ(ival(*orow, "expires_at"), now + 100);
  ASSERT_INT_EQ(ival(*nrow, "expires_at"), now + 100);
  ASSERT_STR_EQ(str(*nrow, "name"), "k5");
  /* a later one is cut to now + grace; the new key keeps it */
  json_t *k6 = make_key(sid(app), "k6", now + 100000, NULL);
  nrow = slot();
  orow = slot();
  EXPECT_OK(TX(tg_key_rotate(S, &SEC, sid(k6), 60, new_key, nrow, orow, &p)));
  ASSERT_INT_EQ(ival(*orow, "expires_at"), now + 60);
  ASSERT_INT_EQ(ival(*nrow, "expires_at"), now + 100000);
  /* the new key can itself be rotated */
  json_t *k7 = *nrow;
  nrow = slot();
  orow = slot();
  EXPECT_OK(TX(tg_key_rotate(S, &SEC, sid(k7), 0, new_key, nrow, NULL, &p)));
  ASSERT_STR_EQ(str(*nrow, "rotated_from"), sid(k7));
  /* a key of a deleted app is revoked with it and cannot be rotated */
  json_t *k8 = make_key(sid(app), "k8", 0, NULL);
  EXPECT_OK(TX(tg_app_delete(S, sid(app), NULL, &p)));
  EXPECT_ERR(TX(tg_key_rotate(S, &SEC, sid(k8), 60, new_key, NULL, NULL, &p)), TG_ECONFLICT, NULL);
  teardown();
}

TG_TEST(key_revoke_is_idempotent) {
  fresh();
  tg_problem_t p = {0};
  json_t *dev = make_dev("rev@example.com");
  json_t *app = make_app(sid(dev), "rev");
  json_t *k = make_key(sid(app), "k", 0, NULL);
  json_t **row = slot();
  EXPECT_OK(TX(tg_key_revoke(S, sid(k), row, &p)));
  ASSERT_STR_EQ(str(*row, "status"), "revoked");
  int64_t version = ival(*row, "version");
  ASSERT_INT_EQ(version, ival(k, "version") + 1);
  int64_t seq = last_seq();
  json_t **again = slot();
  EXPECT_OK(TX(tg_key_revoke(S, sid(k), again, &p)));
  ASSERT(*again != NULL);
  ASSERT_STR_EQ(str(*again, "status"), "revoked");
  ASSERT_INT_EQ(ival(*again, "version"), version); /* nothing changed */
  EXPECT_OK(TX(tg_key_revoke(S, sid(k), NULL, &p)));
  ASSERT_INT_EQ(json_array_size(changes_after(seq)), 0);
  ASSERT_STR_EQ(status_of(TG_ENT_KEY, sid(k)), "revoked");
  EXPECT_ERR(TX(tg_key_revoke(S, "key_00000000000000000000000000", (row = slot()), &p)),
             TG_ENOTFOUND, NULL);
  ASSERT(*row == NULL);
  teardown();
}

int main(int argc, char **argv) {
  if (tg_keys_init())
    return 2;
  int rc = tg_test_main(argc, argv);
  teardown();
  return rc;
}
