/*
 * test_scan.c - tg_store_scan, the gateway's flat read of whole tables:
 * every row in id order with the right value types (digests as blobs,
 * NULL as TG_V_NULL, booleans as ints), one row by id, argument checks
 * that name the parameter, early stop, and one consistent view while
 * another connection writes.
 *
 * Everything a test allocates is released by teardown(), which also runs
 * before the next test, so a failing assertion leaks nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "store_fixture.h"
#include "tg_test.h"

static store_fixture_t FX;
static tg_store_t *S;
static json_t *made[16]; /* rows created by make(), released by teardown */
static int nmade;

static void teardown(void) {
  tg_store_close(S);
  S = NULL;
  while (nmade > 0)
    json_decref(made[--nmade]);
  fixture_remove(&FX, NULL);
}

static void fresh(void) {
  teardown();
  S = fixture_open(&FX, "tg_scan");
}

/* Create a row (fields: new reference, consumed); returns its id. */
static const char *make(tg_entity_t ent, json_t *fields) {
  json_t *row = NULL;
  tg_problem_t p = {0};
  int rc = tg_store_create(S, ent, fields, true, &row, &p);
  json_decref(fields);
  if (rc)
    TG_FAIL_("create: %s %s %s", tg_strerror(rc), p.field, p.detail);
  if (nmade == 16)
    abort();
  made[nmade++] = row;
  return json_string_value(json_object_get(row, "id"));
}

/* A key of app_id whose digest is 32 bytes of `fill`. */
static const char *make_key(const char *app_id, unsigned char fill, json_t *extra) {
  char hex[65];
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", fill);
  json_t *f =
      json_pack("{s:s, s:s, s:s}", "app_id", app_id, "prefix", "tg_live_abcd1234", "digest", hex);
  if (extra) {
    json_object_update(f, extra);
    json_decref(extra);
  }
  return make(TG_ENT_KEY, f);
}

static const char *make_app(void) {
  const char *dev = make(TG_ENT_DEVELOPER, json_pack("{s:s}", "email", "a@b.c"));
  return make(TG_ENT_APP, json_pack("{s:s, s:s}", "developer_id", dev, "name", "App"));
}

/* What a scan delivered, copied out of the callback. */
#define GOT_ROWS 8
#define GOT_COLS 16

typedef struct got_value {
  tg_value_type_t type;
  int64_t i;
  unsigned char s[80];
  size_t len;
  int nul_ok; /* TEXT: NUL at s[len] and none before */
} got_value_t;

typedef struct got {
  got_value_t v[GOT_ROWS][GOT_COLS];
  int n;
  int ncols;
  int stop_after;     /* > 0: return 7 once this many rows arrived */
  tg_store_t *writer; /* not NULL: commit a new key from here on the first row */
  const char *writer_app;
} got_t;

static int collect(const tg_value_t *vals, int ncols, void *ctx) {
  got_t *g = ctx;
  if (g->n == GOT_ROWS || ncols > GOT_COLS)
    return 99;
  g->ncols = ncols;
  for (int c = 0; c < ncols; c++) {
    got_value_t *o = &g->v[g->n][c];
    o->type = vals[c].type;
    o->i = vals[c].i;
    o->len = vals[c].len;
    if (vals[c].type == TG_V_TEXT || vals[c].type == TG_V_BLOB) {
      if (vals[c].len >= sizeof(o->s))
        return 98;
      memcpy(o->s, vals[c].s, vals[c].len);
    }
    if (vals[c].type == TG_V_TEXT)
      o->nul_ok = vals[c].s[vals[c].len] == '\0' && strlen(vals[c].s) == vals[c].len;
  }
  g->n++;
  if (g->writer && g->n == 1) {
    char hex[65];
    memset(hex, 'e', 64);
    hex[64] = '\0';
    json_t *f = json_pack("{s:s, s:s, s:s}", "app_id", g->writer_app, "prefix", "tg_live_abcd1234",
                          "digest", hex);
    int rc = tg_store_create(g->writer, TG_ENT_KEY, f, true, NULL, NULL);
    json_decref(f);
    if (rc)
      return 97;
  }
  return g->stop_after > 0 && g->n == g->stop_after ? 7 : 0;
}

static const char *const KEY_COLS[] = {"id", "app_id", "prefix", "digest", "status", "expires_at"};
#define NKEY_COLS 6

static void assert_text(const got_value_t *v, const char *want) {
  ASSERT_INT_EQ(v->type, TG_V_TEXT);
  ASSERT_INT_EQ(v->len, strlen(want));
  ASSERT(memcmp(v->s, want, v->len) == 0);
  ASSERT(v->nul_ok);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

TG_TEST(scan_returns_every_row_in_id_order_with_types) {
  fresh();
  tg_problem_t p = {0};
  const char *app = make_app();
  const char *ids[3];
  ids[0] = make_key(app, 0xa1, json_pack("{s:I}", "expires_at", (json_int_t)1900000000));
  ids[1] = make_key(app, 0xb2, NULL);
  ids[2] = make_key(app, 0xc3, json_pack("{s:s}", "status", "revoked"));
  unsigned char fill[3] = {0xa1, 0xb2, 0xc3};
  const char *sorted[3] = {ids[0], ids[1], ids[2]};
  qsort(sorted, 3, sizeof(sorted[0]), cmp_str);

  got_t g = {0};
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_KEY, NULL, KEY_COLS, NKEY_COLS, collect, &g, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 3);
  ASSERT_INT_EQ(g.ncols, NKEY_COLS);
  for (int r = 0; r < 3; r++) {
    assert_text(&g.v[r][0], sorted[r]);
    int k = 0; /* which key this row is */
    while (strcmp(ids[k], sorted[r]) != 0)
      k++;
    assert_text(&g.v[r][1], app);
    assert_text(&g.v[r][2], "tg_live_abcd1234");
    ASSERT_INT_EQ(g.v[r][3].type, TG_V_BLOB);
    ASSERT_INT_EQ(g.v[r][3].len, 32);
    for (int b = 0; b < 32; b++)
      ASSERT_INT_EQ(g.v[r][3].s[b], fill[k]);
    assert_text(&g.v[r][4], k == 2 ? "revoked" : "active");
    if (k == 0) {
      ASSERT_INT_EQ(g.v[r][5].type, TG_V_INT);
      ASSERT_INT_EQ(g.v[r][5].i, 1900000000);
    } else {
      ASSERT_INT_EQ(g.v[r][5].type, TG_V_NULL);
    }
  }
}

TG_TEST(scan_gives_booleans_and_ints_as_ints_json_as_text) {
  fresh();
  tg_problem_t p = {0};
  const char *api =
      make(TG_ENT_API, json_pack("{s:s, s:s, s:b, s:i, s:[s]}", "slug", "pets", "name", "Pets",
                                 "strip_prefix", 1, "retries", 3, "methods", "GET"));
  const char *cols[] = {"id", "strip_prefix", "portal_visible", "retries", "methods", "openapi"};
  got_t g = {0};
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_API, NULL, cols, 6, collect, &g, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 1);
  assert_text(&g.v[0][0], api);
  ASSERT_INT_EQ(g.v[0][1].type, TG_V_INT);
  ASSERT_INT_EQ(g.v[0][1].i, 1);
  ASSERT_INT_EQ(g.v[0][2].type, TG_V_INT);
  ASSERT_INT_EQ(g.v[0][2].i, 1); /* the default */
  ASSERT_INT_EQ(g.v[0][3].type, TG_V_INT);
  ASSERT_INT_EQ(g.v[0][3].i, 3);
  assert_text(&g.v[0][4], "[\"GET\"]");
  ASSERT_INT_EQ(g.v[0][5].type, TG_V_NULL);
}

TG_TEST(scan_only_id_picks_one_row_or_none) {
  fresh();
  tg_problem_t p = {0};
  const char *app = make_app();
  make_key(app, 0x01, NULL);
  const char *two = make_key(app, 0x02, NULL);
  make_key(app, 0x03, NULL);
  got_t g = {0};
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_KEY, two, KEY_COLS, NKEY_COLS, collect, &g, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 1);
  assert_text(&g.v[0][0], two);
  ASSERT_INT_EQ(g.v[0][3].s[0], 0x02);
  /* well-formed but absent: no row, no error */
  memset(&g, 0, sizeof(g));
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_KEY, "key_00000000000000000000000000", KEY_COLS, NKEY_COLS,
                              collect, &g, &p),
                TG_OK);
  ASSERT_INT_EQ(g.n, 0);
  /* an empty table */
  const char *cols[] = {"id"};
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_PLAN, NULL, cols, 1, collect, &g, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 0);
}

/* Expect tg_store_scan to refuse with TG_EINVAL naming `field`, without
 * calling the callback. */
static void expect_scan_einval(tg_entity_t ent, const char *only_id, const char *const *cols,
                               int ncols, tg_scan_cb cb, const char *field) {
  tg_problem_t p = {0};
  got_t g = {0};
  int rc = tg_store_scan(S, ent, only_id, cols, ncols, cb, &g, &p);
  if (rc != TG_EINVAL || strcmp(p.field, field) != 0)
    TG_FAIL_("expected %s on \"%s\", got %s on \"%s\" (%s)", tg_strerror(TG_EINVAL), field,
             tg_strerror(rc), p.field, p.detail);
  ASSERT(p.detail[0] != '\0');
  ASSERT_INT_EQ(g.n, 0);
}

TG_TEST(scan_refuses_bad_arguments_naming_them) {
  fresh();
  const char *app = make_app();
  make_key(app, 0x01, NULL);
  const char *unknown[] = {"id", "no_such_column"};
  const char *null_col[] = {"id", NULL};
  const char *password[] = {"id", "password_hash"};
  const char *many[17];
  for (int i = 0; i < 17; i++)
    many[i] = "id";
  expect_scan_einval(TG_ENT_KEY, NULL, unknown, 2, collect, "cols");
  expect_scan_einval(TG_ENT_KEY, NULL, null_col, 2, collect, "cols");
  expect_scan_einval(TG_ENT_KEY, NULL, KEY_COLS, 0, collect, "cols");
  expect_scan_einval(TG_ENT_KEY, NULL, many, 17, collect, "cols");
  expect_scan_einval(TG_ENT_KEY, NULL, NULL, 1, collect, "cols");
  /* a column of another entity */
  expect_scan_einval(TG_ENT_APP, NULL, KEY_COLS, NKEY_COLS, collect, "cols");
  /* digests are allowed, other secrets are not */
  expect_scan_einval(TG_ENT_DEVELOPER, NULL, password, 2, collect, "cols");
  expect_scan_einval(TG_ENT__COUNT, NULL, KEY_COLS, NKEY_COLS, collect, "entity");
  expect_scan_einval((tg_entity_t)-1, NULL, KEY_COLS, NKEY_COLS, collect, "entity");
  expect_scan_einval(TG_ENT_KEY, "garbage", KEY_COLS, NKEY_COLS, collect, "only_id");
  expect_scan_einval(TG_ENT_KEY, app, KEY_COLS, NKEY_COLS, collect, "only_id"); /* an app id */
  expect_scan_einval(TG_ENT_KEY, "key_0000000000000000000000000I", KEY_COLS, NKEY_COLS, collect,
                     "only_id"); /* I is not Crockford */
  expect_scan_einval(TG_ENT_KEY, NULL, KEY_COLS, NKEY_COLS, NULL, "cb");
  /* 16 columns are fine */
  tg_problem_t p = {0};
  got_t g = {0};
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_KEY, NULL, many, 16, collect, &g, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 1);
  ASSERT_INT_EQ(g.ncols, 16);
}

TG_TEST(scan_stops_when_the_callback_says_so) {
  fresh();
  tg_problem_t p = {0};
  const char *app = make_app();
  for (unsigned char i = 1; i <= 4; i++)
    make_key(app, i, NULL);
  got_t g = {.stop_after = 2};
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_KEY, NULL, KEY_COLS, NKEY_COLS, collect, &g, &p), 7);
  ASSERT_INT_EQ(g.n, 2);
  /* the statement was given back: the next scan starts from the top */
  memset(&g, 0, sizeof(g));
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_KEY, NULL, KEY_COLS, NKEY_COLS, collect, &g, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 4);
}

TG_TEST(scan_is_one_consistent_view_while_another_connection_writes) {
  fresh();
  tg_problem_t p = {0};
  const char *app = make_app();
  make_key(app, 0x01, NULL);
  make_key(app, 0x02, NULL);
  tg_store_options_t opt = {
      .path = FX.path, .busy_timeout_ms = 2000, .mode = TG_STORE_OPEN_CURRENT};
  tg_store_t *other = NULL;
  ASSERT_INT_EQ(tg_store_open(&opt, &other, NULL, NULL, &p), TG_OK);
  got_t g = {.writer = other, .writer_app = app};
  int rc = tg_store_scan(S, TG_ENT_KEY, NULL, KEY_COLS, NKEY_COLS, collect, &g, &p);
  tg_store_close(other);
  ASSERT_INT_EQ(rc, TG_OK);
  ASSERT_INT_EQ(g.n, 2); /* the key committed mid-scan is not in this scan */
  memset(&g, 0, sizeof(g));
  ASSERT_INT_EQ(tg_store_scan(S, TG_ENT_KEY, NULL, KEY_COLS, NKEY_COLS, collect, &g, &p), TG_OK);
  ASSERT_INT_EQ(g.n, 3); /* the next one sees it */
}

int main(int argc, char **argv) {
  int rc = tg_test_main(argc, argv);
  teardown();
  return rc;
}
