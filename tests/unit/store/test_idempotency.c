/*
 * test_idempotency.c - Idempotency-Key records (core/idempotency.c) over a
 * real SQLite store: key rules, replay of the very request, conflicts,
 * per-token and per-secret separation, expiry and purge, and that neither
 * the key nor the response ever rests on disk in the clear. Raw sqlite3
 * access is used only to look at (and tamper with) what the store hides.
 *
 * Everything a test allocates is released by teardown(), which also runs
 * before the next test and at exit, so that a failing assertion leaks
 * nothing and leaves the clock restored.
 */
#include <sodium.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/idempotency.h"
#include "core/util.h"
#include "store_fixture.h"
#include "tg_test.h"

static store_fixture_t FX;
static tg_store_t *S;
static tg_secret_t SEC;
static char *bodies[16]; /* lookup results, freed by teardown */
static int nbodies;
static unsigned char *files[4]; /* slurped files */
static int nfiles;

static void teardown(void) {
  tg_clock_override_ms(0);
  tg_store_close(S);
  S = NULL;
  while (nbodies > 0)
    free(bodies[--nbodies]);
  while (nfiles > 0)
    free(files[--nfiles]);
  fixture_remove(&FX, NULL);
}

static void fresh(void) {
  teardown();
  S = fixture_open(&FX, "tg_idem");
  randombytes_buf(SEC.bytes, sizeof(SEC.bytes));
}

/* Transactions, as the header asks: TX(call) runs call between begin and
 * commit (rollback when it fails) and yields its result. */
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

#define EXPECT_RC(call, code)                                                                      \
  do {                                                                                             \
    tg_problem_clear(&p);                                                                          \
    int rc_ = (call);                                                                              \
    if (rc_ != (code))                                                                             \
      TG_FAIL_("%s: expected %s, got %s on \"%s\" (%s)", #call, tg_strerror(code),                 \
               tg_strerror(rc_), p.field, p.detail);                                               \
  } while (0)

/* Derive the record state for a request; fails the test on error. */
static void init(tg_idem_t *st, const tg_secret_t *secret, const char *token, const char *key,
                 const char *method, const char *rpath, const char *body) {
  tg_problem_t p = {0};
  EXPECT_RC(tg_idem_init(st, secret, token, key, method, rpath, body, strlen(body), &p), TG_OK);
}

/* Look up st; the body (if any) is released by teardown. */
static int lookup(const tg_idem_t *st, int *status, char **body, size_t *len) {
  tg_problem_t p = {0};
  *status = -1;
  if (nbodies == 16)
    abort();
  int rc = TX(tg_idem_lookup(S, st, status, body, len, &p));
  if (*body)
    bodies[nbodies++] = *body;
  if (rc != TG_OK && *body)
    TG_FAIL_("a failed lookup returned a body");
  return rc;
}

static int save(const tg_idem_t *st, int status, const char *body, size_t len) {
  tg_problem_t p = {0};
  return TX(tg_idem_save(S, st, status, body, len, &p));
}

static int64_t fix_clock(void) {
  int64_t t = (tg_now() + 10) * 1000;
  tg_clock_override_ms(t);
  return t / 1000;
}

static const char *TOKEN = "tok_01HZZZZZZZZZZZZZZZZZZZZZZZ";
static const char *BODY = "{\"app_id\":\"app_1\",\"name\":\"ci\"}";

TG_TEST(key_rules) {
  tg_idem_t st;
  tg_problem_t p = {0};
  char k[TG_IDEM_KEY_MAX + 2];
  memset(k, 'a', sizeof(k));
  k[TG_IDEM_KEY_MAX + 1] = '\0'; /* 256 chars */
  EXPECT_RC(tg_idem_init(&st, &SEC, TOKEN, k, "POST", "/v1/keys", "", 0, &p), TG_EINVAL);
  ASSERT_STR_EQ(p.field, "Idempotency-Key");
  k[TG_IDEM_KEY_MAX] = '\0'; /* 255 chars */
  EXPECT_RC(tg_idem_init(&st, &SEC, TOKEN, k, "POST", "/v1/keys", "", 0, &p), TG_OK);
  const char *bad[] = {"",     "has space", "caf\xc3\xa9", "tab\there",
                       "nl\n", "del\x7f",   " lead",       "\xff"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    tg_problem_clear(&p);
    int rc = tg_idem_init(&st, &SEC, TOKEN, bad[i], "POST", "/v1/keys", "", 0, &p);
    if (rc != TG_EINVAL)
      TG_FAIL_("key #%zu: expected invalid argument, got %s", i, tg_strerror(rc));
    ASSERT_STR_EQ(p.field, "Idempotency-Key");
  }
  EXPECT_RC(tg_idem_init(&st, &SEC, TOKEN, NULL, "POST", "/v1/keys", "", 0, &p), TG_EINVAL);
  /* every printable, non-space ASCII char is fine */
  char all[0x7f - 0x21 + 1];
  for (int c = 0x21; c < 0x7f; c++)
    all[c - 0x21] = (char)c;
  all[0x7f - 0x21] = '\0';
  EXPECT_RC(tg_idem_init(&st, &SEC, TOKEN, all, "POST", "/v1/keys", "", 0, &p), TG_OK);
  EXPECT_RC(tg_idem_init(&st, &SEC, TOKEN, "x", "POST", "/v1/keys", "", 0, &p), TG_OK);
}

TG_TEST(replay_of_the_same_request) {
  fresh();
  tg_idem_t st, again;
  int status;
  char *body;
  size_t len;
  init(&st, &SEC, TOKEN, "retry-1", "POST", "/v1/keys", BODY);
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_ENOTFOUND);
  ASSERT(body == NULL);
  ASSERT_INT_EQ(len, 0);
  /* a response with a NUL inside: bytes, not a C string */
  static const char resp[] = "{\"id\":\"key_1\",\"key\":\"tg_live_x\"}\0tail";
  ASSERT_INT_EQ(save(&st, 201, resp, sizeof(resp) - 1), TG_OK);
  init(&again, &SEC, TOKEN, "retry-1", "POST", "/v1/keys", BODY);
  ASSERT(memcmp(&st, &again, sizeof(st)) == 0); /* deterministic */
  for (int i = 0; i < 2; i++) {
    ASSERT_INT_EQ(lookup(&again, &status, &body, &len), TG_OK);
    ASSERT_INT_EQ(status, 201);
    ASSERT_INT_EQ(len, sizeof(resp) - 1);
    ASSERT(memcmp(body, resp, len) == 0);
    ASSERT_INT_EQ(body[len], '\0');
  }
  /* an empty response */
  init(&st, &SEC, TOKEN, "retry-2", "POST", "/v1/apis", "");
  ASSERT_INT_EQ(save(&st, 204, "", 0), TG_OK);
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_OK);
  ASSERT_INT_EQ(status, 204);
  ASSERT_INT_EQ(len, 0);
  ASSERT(body != NULL);
  ASSERT_INT_EQ(body[0], '\0');
  /* an error result is remembered too */
  init(&st, &SEC, TOKEN, "retry-3", "POST", "/v1/apis", "{}");
  ASSERT_INT_EQ(save(&st, 422, "{\"title\":\"bad\"}", 15), TG_OK);
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_OK);
  ASSERT_INT_EQ(status, 422);
  ASSERT_STR_EQ(body, "{\"title\":\"bad\"}");
  teardown();
}

TG_TEST(size_and_status_limits) {
  fresh();
  tg_problem_t p = {0};
  /* the sealed plaintext is "NNN\\n" (the status) followed by the body */
  size_t max = 1048576 - crypto_secretbox_NONCEBYTES - crypto_secretbox_MACBYTES - 4;
  char *big = malloc(max + 2);
  ASSERT(big != NULL);
  if (nbodies == 16)
    abort();
  bodies[nbodies++] = big; /* freed by teardown */
  memset(big, 'b', max + 1);
  big[max + 1] = '\0';
  tg_idem_t st;
  int status;
  char *body;
  size_t len;
  init(&st, &SEC, TOKEN, "too-big", "POST", "/v1/apis", "{}");
  EXPECT_RC(TX(tg_idem_save(S, &st, 201, big, max + 1, &p)), TG_ETOOBIG);
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_ENOTFOUND);
  EXPECT_RC(TX(tg_idem_save(S, &st, 201, big, max, &p)), TG_OK);
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_OK);
  ASSERT_INT_EQ(len, max);
  ASSERT(memcmp(body, big, max) == 0);
  /* only HTTP final statuses */
  init(&st, &SEC, TOKEN, "status", "POST", "/v1/apis", "{}");
  tg_problem_clear(&p);
  ASSERT(TX(tg_idem_save(S, &st, 100, "x", 1, &p)) != TG_OK);
  tg_problem_clear(&p);
  ASSERT(TX(tg_idem_save(S, &st, 600, "x", 1, &p)) != TG_OK);
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_ENOTFOUND);
  teardown();
}

TG_TEST(same_key_for_another_request_conflicts) {
  fresh();
  tg_idem_t st, other;
  tg_problem_t p = {0};
  int status;
  char *body;
  size_t len;
  init(&st, &SEC, TOKEN, "k-1", "POST", "/v1/keys", BODY);
  ASSERT_INT_EQ(save(&st, 201, "{}", 2), TG_OK);
  struct {
    const char *method, *path, *body;
  } diff[] = {
      {"POST", "/v1/keys", "{\"app_id\":\"app_1\",\"name\":\"cj\"}"}, /* body */
      {"POST", "/v1/keys", ""},                                       /* no body */
      {"POST", "/v1/apps", BODY},                                     /* path */
      {"PUT", "/v1/keys", BODY},                                      /* method */
      {"POST", "/v1/keys/", BODY},
  };
  for (size_t i = 0; i < sizeof(diff) / sizeof(diff[0]); i++) {
    init(&other, &SEC, TOKEN, "k-1", diff[i].method, diff[i].path, diff[i].body);
    ASSERT(memcmp(other.id, st.id, 32) == 0);
    tg_problem_clear(&p);
    int rc = TX(tg_idem_lookup(S, &other, &status, &body, &len, &p));
    if (rc != TG_ECONFLICT)
      TG_FAIL_("variant #%zu: expected conflict, got %s", i, tg_strerror(rc));
    ASSERT(body == NULL);
    ASSERT_STR_EQ(p.field, "Idempotency-Key");
  }
  /* NUL-separated: moving a char between path and body is another request */
  tg_idem_t a, b;
  init(&a, &SEC, TOKEN, "k-2", "POST", "/v1/a", "b");
  init(&b, &SEC, TOKEN, "k-2", "POST", "/v1/", "ab");
  ASSERT(memcmp(a.request_hash, b.request_hash, 32) != 0);
  /* the original still replays */
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_OK);
  ASSERT_INT_EQ(status, 201);
  teardown();
}

TG_TEST(keys_are_per_token_and_per_secret) {
  fresh();
  tg_idem_t st, other;
  int status;
  char *body;
  size_t len;
  init(&st, &SEC, TOKEN, "shared-key", "POST", "/v1/keys", BODY);
  ASSERT_INT_EQ(save(&st, 201, "{\"by\":\"one\"}", 12), TG_OK);
  /* another admin token using the same key is a first time */
  init(&other, &SEC, "tok_01HYYYYYYYYYYYYYYYYYYYYYYY", "shared-key", "POST", "/v1/keys", BODY);
  ASSERT(memcmp(other.id, st.id, 32) != 0);
  ASSERT(memcmp(other.seal_key, st.seal_key, 32) != 0);
  ASSERT_INT_EQ(lookup(&other, &status, &body, &len), TG_ENOTFOUND);
  ASSERT_INT_EQ(save(&other, 200, "{\"by\":\"two\"}", 12), TG_OK);
  ASSERT_INT_EQ(lookup(&other, &status, &body, &len), TG_OK);
  ASSERT_STR_EQ(body, "{\"by\":\"two\"}");
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_OK);
  ASSERT_STR_EQ(body, "{\"by\":\"one\"}");
  ASSERT_INT_EQ(status, 201);
  /* the token/key boundary is not ambiguous */
  tg_idem_t x, y;
  init(&x, &SEC, "tok_a", "bc", "POST", "/", "");
  init(&y, &SEC, "tok_ab", "c", "POST", "/", "");
  ASSERT(memcmp(x.id, y.id, 32) != 0);
  /* under another server secret the record cannot even be found */
  tg_secret_t sec2;
  randombytes_buf(sec2.bytes, sizeof(sec2.bytes));
  init(&other, &sec2, TOKEN, "shared-key", "POST", "/v1/keys", BODY);
  ASSERT(memcmp(other.id, st.id, 32) != 0);
  ASSERT(memcmp(other.seal_key, st.seal_key, 32) != 0);
  ASSERT_INT_EQ(lookup(&other, &status, &body, &len), TG_ENOTFOUND);
  ASSERT(body == NULL);
  teardown();
}

TG_TEST(records_expire_and_are_purged) {
  fresh();
  tg_problem_t p = {0};
  int64_t t = fix_clock();
  tg_idem_t a, b, c;
  int status;
  char *body;
  size_t len;
  init(&a, &SEC, TOKEN, "exp-a", "POST", "/v1/apis", "{}");
  init(&b, &SEC, TOKEN, "exp-b", "POST", "/v1/apis", "{}");
  init(&c, &SEC, TOKEN, "exp-c", "POST", "/v1/apis", "{}");
  ASSERT_INT_EQ(save(&a, 201, "a", 1), TG_OK);
  ASSERT_INT_EQ(save(&b, 201, "b", 1), TG_OK);
  tg_clock_override_ms((t + 1000) * 1000);
  ASSERT_INT_EQ(save(&c, 201, "c", 1), TG_OK);
  /* still there one second before the end of the TTL */
  tg_clock_override_ms((t + TG_IDEM_TTL - 1) * 1000);
  ASSERT_INT_EQ(lookup(&a, &status, &body, &len), TG_OK);
  int64_t n = -1;
  EXPECT_RC(TX(tg_store_idem_purge(S, tg_now(), &n, &p)), TG_OK);
  ASSERT_INT_EQ(n, 0);
  /* gone at TG_IDEM_TTL */
  tg_clock_override_ms((t + TG_IDEM_TTL) * 1000);
  ASSERT_INT_EQ(lookup(&a, &status, &body, &len), TG_ENOTFOUND);
  ASSERT_INT_EQ(lookup(&b, &status, &body, &len), TG_ENOTFOUND);
  ASSERT_INT_EQ(lookup(&c, &status, &body, &len), TG_OK);
  EXPECT_RC(TX(tg_store_idem_purge(S, tg_now(), &n, &p)), TG_OK);
  ASSERT_INT_EQ(n, 2);
  EXPECT_RC(TX(tg_store_idem_purge(S, tg_now(), &n, &p)), TG_OK);
  ASSERT_INT_EQ(n, 0);
  EXPECT_RC(TX(tg_store_idem_purge(S, tg_now(), NULL, &p)), TG_OK);
  ASSERT_INT_EQ(lookup(&c, &status, &body, &len), TG_OK);
  ASSERT_STR_EQ(body, "c");
  /* an expired (unpurged) key is a first time again, even for another request */
  tg_clock_override_ms((t + 1000 + TG_IDEM_TTL) * 1000);
  tg_idem_t c2;
  init(&c2, &SEC, TOKEN, "exp-c", "POST", "/v1/plans", "{\"x\":1}");
  ASSERT_INT_EQ(lookup(&c2, &status, &body, &len), TG_ENOTFOUND);
  ASSERT_INT_EQ(save(&c2, 200, "c2", 2), TG_OK);
  ASSERT_INT_EQ(lookup(&c2, &status, &body, &len), TG_OK);
  ASSERT_STR_EQ(body, "c2");
  ASSERT_INT_EQ(lookup(&c, &status, &body, &len), TG_ECONFLICT);
  EXPECT_RC(TX(tg_store_idem_purge(S, tg_now(), &n, &p)), TG_OK);
  ASSERT_INT_EQ(n, 0); /* the replaced record is new */
  tg_clock_override_ms((t + 1000 + 2 * TG_IDEM_TTL) * 1000);
  EXPECT_RC(TX(tg_store_idem_purge(S, tg_now(), &n, &p)), TG_OK);
  ASSERT_INT_EQ(n, 1);
  teardown();
}

/* fixture_slurp, kept for teardown to free */
static unsigned char *slurp(const char *file, size_t *len) {
  unsigned char *buf = fixture_slurp(file, len);
  if (buf) {
    if (nfiles == 4)
      abort();
    files[nfiles++] = buf;
  }
  return buf;
}

static sqlite3 *raw_open(void) {
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(FX.path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
    abort();
  sqlite3_busy_timeout(db, 2000);
  return db;
}

/* One column of the record `id`, as a malloc'd blob (NULL: no row). */
static unsigned char *raw_blob(const unsigned char id[32], const char *column, size_t *len) {
  sqlite3 *db = raw_open();
  sqlite3_stmt *stmt = NULL;
  char sql[128];
  snprintf(sql, sizeof(sql), "SELECT %s FROM idempotency_keys WHERE id = ?", column);
  unsigned char *out = NULL;
  *len = 0;
  if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
      sqlite3_bind_blob(stmt, 1, id, 32, SQLITE_STATIC) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    *len = (size_t)sqlite3_column_bytes(stmt, 0);
    out = malloc(*len ? *len : 1);
    if (out && *len)
      memcpy(out, sqlite3_column_blob(stmt, 0), *len);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return out;
}

static void raw_set_blob(const unsigned char id[32], const char *column, const unsigned char *v,
                         size_t len) {
  sqlite3 *db = raw_open();
  sqlite3_stmt *stmt = NULL;
  char sql[128];
  snprintf(sql, sizeof(sql), "UPDATE idempotency_keys SET %s = ? WHERE id = ?", column);
  static const unsigned char empty[1];
  int ok = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
           sqlite3_bind_blob(stmt, 1, len ? v : empty, (int)len, SQLITE_TRANSIENT) == SQLITE_OK &&
           sqlite3_bind_blob(stmt, 2, id, 32, SQLITE_STATIC) == SQLITE_OK &&
           sqlite3_step(stmt) == SQLITE_DONE && sqlite3_changes(db) == 1;
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  if (!ok)
    TG_FAIL_("raw update of %s failed", column);
}

static int64_t raw_count(void) {
  sqlite3 *db = raw_open();
  sqlite3_stmt *stmt = NULL;
  int64_t n = -1;
  if (sqlite3_prepare_v2(db, "SELECT count(*) FROM idempotency_keys", -1, &stmt, NULL) ==
          SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW)
    n = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return n;
}

TG_TEST(nothing_in_the_clear_on_disk) {
  fresh();
  tg_problem_t p = {0};
  static const char key[] = "idem-7c1e5b93-distinctive-client-key";
  static const char marker[] = "tg_live_SEALEDMARKER0q9w8e7r6t5y4u3i2o1p0a9s8d7fQWE";
  static const char control[] = "CONTROL-MARKER-IN-THE-CLEAR-3f9a";
  char resp[256];
  snprintf(resp, sizeof(resp), "{\"id\":\"key_X\",\"key\":\"%s\"}", marker);
  tg_idem_t st;
  init(&st, &SEC, TOKEN, key, "POST", "/v1/apps/app_1/keys", BODY);
  ASSERT_INT_EQ(save(&st, 201, resp, strlen(resp)), TG_OK);
  /* a control value the store keeps in the clear, to prove the files are read */
  json_t *dev = json_pack("{s:s, s:s}", "email", "c@example.com", "name", control);
  ASSERT(dev != NULL);
  int rc = tg_store_create(S, TG_ENT_DEVELOPER, dev, false, NULL, &p);
  json_decref(dev);
  ASSERT_INT_EQ(rc, TG_OK);
  ASSERT_INT_EQ(raw_count(), 1);
  size_t slen;
  unsigned char *sealed = raw_blob(st.id, "sealed", &slen);
  ASSERT(sealed != NULL);
  free(sealed);
  ASSERT_INT_EQ(slen, crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + 4 + strlen(resp));
  const char *suffix[] = {"", "-wal"};
  size_t total = 0;
  bool control_seen = false;
  for (int f = 0; f < 2; f++) {
    char file[160];
    size_t len;
    snprintf(file, sizeof(file), "%s%s", FX.path, suffix[f]);
    unsigned char *bytes = slurp(file, &len);
    total += len;
    if (!bytes)
      continue;
    if (memmem(bytes, len, key, strlen(key)))
      TG_FAIL_("the Idempotency-Key is in %s", file);
    if (memmem(bytes, len, marker, strlen(marker)) || memmem(bytes, len, marker + 8, 20))
      TG_FAIL_("the response is in %s in the clear", file);
    if (memmem(bytes, len, control, strlen(control)))
      control_seen = true;
  }
  ASSERT(total > 4096);
  ASSERT(control_seen);
  /* and it still replays */
  int status;
  char *body;
  size_t len;
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_OK);
  ASSERT_STR_EQ(body, resp);
  teardown();
}

TG_TEST(tampering_is_detected) {
  fresh();
  tg_idem_t st;
  int status;
  char *body;
  size_t len;
  init(&st, &SEC, TOKEN, "tamper", "POST", "/v1/keys", BODY);
  ASSERT_INT_EQ(save(&st, 201, "{\"key\":\"tg_live_secret\"}", 24), TG_OK);
  size_t slen;
  unsigned char *orig = raw_blob(st.id, "sealed", &slen);
  ASSERT(orig != NULL);
  unsigned char copy[256];
  if (slen > sizeof(copy)) {
    free(orig);
    TG_FAIL_("sealed blob unexpectedly long: %zu", slen);
  }
  memcpy(copy, orig, slen);
  free(orig);
  /* a byte of the nonce, of the MAC, of the ciphertext */
  size_t where[] = {0, crypto_secretbox_NONCEBYTES, crypto_secretbox_NONCEBYTES + 3, slen - 1};
  for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
    copy[where[i]] ^= 0x01;
    raw_set_blob(st.id, "sealed", copy, slen);
    int rc = lookup(&st, &status, &body, &len);
    if (rc == TG_OK)
      TG_FAIL_("a flipped byte at %zu went unnoticed", where[i]);
    ASSERT(body == NULL);
    copy[where[i]] ^= 0x01;
  }
  /* truncated below nonce + MAC, and empty */
  raw_set_blob(st.id, "sealed", copy, crypto_secretbox_NONCEBYTES + 3);
  ASSERT(lookup(&st, &status, &body, &len) != TG_OK);
  raw_set_blob(st.id, "sealed", copy, 0);
  ASSERT(lookup(&st, &status, &body, &len) != TG_OK);
  /* restored: it opens again (the flips were what failed) */
  raw_set_blob(st.id, "sealed", copy, slen);
  ASSERT_INT_EQ(lookup(&st, &status, &body, &len), TG_OK);
  ASSERT_STR_EQ(body, "{\"key\":\"tg_live_secret\"}");
  /* another record's sealed response does not open under this key */
  tg_idem_t other;
  init(&other, &SEC, TOKEN, "tamper-2", "POST", "/v1/keys", BODY);
  ASSERT_INT_EQ(save(&other, 201, "{\"key\":\"tg_live_other\"}", 23), TG_OK);
  size_t olen;
  unsigned char *theirs = raw_blob(other.id, "sealed", &olen);
  ASSERT(theirs != NULL);
  if (olen > sizeof(copy)) {
    free(theirs);
    TG_FAIL_("sealed blob unexpectedly long: %zu", olen);
  }
  unsigned char moved[256];
  memcpy(moved, theirs, olen);
  free(theirs);
  raw_set_blob(st.id, "sealed", moved, olen);
  ASSERT(lookup(&st, &status, &body, &len) != TG_OK);
  ASSERT_INT_EQ(lookup(&other, &status, &body, &len), TG_OK);
  ASSERT_STR_EQ(body, "{\"key\":\"tg_live_other\"}");
  /* the status column is covered by the seal too: 201 -> 500 is caught */
  {
    sqlite3 *db = raw_open();
    sqlite3_stmt *up = NULL;
    ASSERT_INT_EQ(sqlite3_prepare_v2(db, "UPDATE idempotency_keys SET status = 500 WHERE id = ?",
                                     -1, &up, NULL),
                  SQLITE_OK);
    sqlite3_bind_blob(up, 1, other.id, 32, SQLITE_STATIC);
    ASSERT_INT_EQ(sqlite3_step(up), SQLITE_DONE);
    sqlite3_finalize(up);
    sqlite3_close(db);
  }
  ASSERT(lookup(&other, &status, &body, &len) != TG_OK);
  ASSERT(body == NULL);
  teardown();
}

int main(int argc, char **argv) {
  if (tg_keys_init())
    return 2;
  int rc = tg_test_main(argc, argv);
  teardown();
  return rc;
}
