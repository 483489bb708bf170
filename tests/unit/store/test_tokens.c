/*
 * test_tokens.c - secrets as services: the server secret bound to a store,
 * admin tokens, API key issuance, and that no plaintext reaches the disk.
 */
#include <sodium.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tokens.h"
#include "core/util.h"
#include "store_fixture.h"
#include "tg_test.h"

static char dir[64], path[128], secret_path[128];

static tg_store_t *fresh(void) {
  snprintf(dir, sizeof(dir), "/tmp/tg_tokens_XXXXXX");
  if (!mkdtemp(dir))
    abort();
  snprintf(path, sizeof(path), "%s/t.db", dir);
  snprintf(secret_path, sizeof(secret_path), "%s/secret", dir);
  tg_store_options_t opt = {.path = path, .busy_timeout_ms = 2000, .mode = TG_STORE_OPEN_MIGRATE};
  tg_store_t *s = NULL;
  if (tg_store_open(&opt, &s, NULL, NULL, NULL))
    abort();
  return s;
}

static void cleanup(tg_store_t *s) {
  char f[160];
  tg_store_close(s);
  const char *suffix[] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    snprintf(f, sizeof(f), "%s%s", path, suffix[i]);
    unlink(f);
  }
  unlink(secret_path);
  snprintf(f, sizeof(f), "%s/other", dir);
  unlink(f);
  rmdir(dir);
}

TG_TEST(server_secret_is_created_once_and_bound) {
  tg_store_t *s = fresh();
  tg_secret_t a, b;
  tg_problem_t p = {0};
  /* a fresh store may not get a secret unless the caller allows creation */
  ASSERT_INT_EQ(tg_server_secret(s, NULL, secret_path, false, &a, &p), TG_ESECRET);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_server_secret(s, NULL, secret_path, true, &a, &p), TG_OK);
  struct stat sb;
  ASSERT_INT_EQ(stat(secret_path, &sb), 0);
  ASSERT_INT_EQ(sb.st_mode & 0777, 0600);
  ASSERT_INT_EQ(tg_server_secret(s, NULL, secret_path, true, &b, &p), TG_OK);
  ASSERT(memcmp(&a, &b, sizeof(a)) == 0);
  /* a different secret is refused, even through the environment */
  char hex[65];
  unsigned char other[32];
  randombytes_buf(other, sizeof(other));
  tg_hex_encode(other, sizeof(other), hex);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_server_secret(s, hex, secret_path, true, &b, &p), TG_ESECRET);
  ASSERT_STR_CONTAINS(p.detail, "not the one");
  /* the right secret through the environment works without the file */
  tg_hex_encode(a.bytes, sizeof(a.bytes), hex);
  ASSERT_INT_EQ(unlink(secret_path), 0);
  ASSERT_INT_EQ(tg_server_secret(s, hex, secret_path, true, &b, &p), TG_OK);
  /* a store with a fingerprint never gets a new secret file */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_server_secret(s, NULL, secret_path, true, &b, &p), TG_ESECRET);
  ASSERT_INT_EQ(stat(secret_path, &sb), -1);
  cleanup(s);
}

TG_TEST(admin_tokens_authenticate_until_revoked_or_expired) {
  tg_store_t *s = fresh();
  tg_secret_t sec;
  tg_problem_t p = {0};
  ASSERT_INT_EQ(tg_server_secret(s, NULL, secret_path, true, &sec, &p), TG_OK);
  char tok[TG_TOKEN_MAX_LEN + 1], tok2[TG_TOKEN_MAX_LEN + 1];
  json_t *scopes = json_pack("[s,s]", "read", "keys"), *row = NULL;
  ASSERT_INT_EQ(tg_admin_token_create(s, &sec, "ci", scopes, 0, tok, &row, &p), TG_OK);
  ASSERT(strncmp(tok, "tg_adm_", 7) == 0);
  /* the prefix stored is the token's first 15 characters */
  ASSERT_INT_EQ(strlen(json_string_value(json_object_get(row, "prefix"))), 15);
  ASSERT(strncmp(json_string_value(json_object_get(row, "prefix")), tok, 15) == 0);
  json_decref(row);
  json_t *got = NULL;
  ASSERT_INT_EQ(tg_admin_token_authenticate(s, &sec, tok, strlen(tok), &got, &p), TG_OK);
  ASSERT_STR_EQ(json_string_value(json_object_get(got, "name")), "ci");
  ASSERT(strncmp(json_string_value(json_object_get(got, "prefix")), tok, 15) == 0);
  ASSERT(json_object_get(got, "digest") == NULL);
  json_decref(got);
  /* a mistyped token fails the checksum before any lookup */
  char typo[TG_TOKEN_MAX_LEN + 1];
  memcpy(typo, tok, sizeof(typo));
  typo[10] = typo[10] == 'a' ? 'b' : 'a';
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_authenticate(s, &sec, typo, strlen(typo), &got, &p), TG_EAUTH);
  ASSERT(got == NULL);
  /* a well-formed token that was never issued */
  char stranger[TG_TOKEN_MAX_LEN + 1], prefix[TG_TOKEN_PREFIX_MAX + 1];
  unsigned char digest[TG_DIGEST_BYTES];
  tg_token_generate(TG_TOKEN_ADMIN, &sec, stranger, prefix, digest);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_authenticate(s, &sec, stranger, strlen(stranger), &got, &p),
                TG_EAUTH);
  /* an API key is not an admin token */
  tg_token_generate(TG_TOKEN_API_KEY, &sec, stranger, prefix, digest);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_authenticate(s, &sec, stranger, strlen(stranger), &got, &p),
                TG_EAUTH);
  /* duplicate names and bad scopes */
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_create(s, &sec, "ci", scopes, 0, tok2, NULL, &p), TG_ECONFLICT);
  ASSERT_STR_EQ(p.field, "/name");
  json_t *bad = json_pack("[s]", "root");
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_create(s, &sec, "x", bad, 0, tok2, NULL, &p), TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/scopes/0");
  json_decref(bad);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_create(s, &sec, "has space", scopes, 0, tok2, NULL, &p), TG_EINVAL);
  /* expiry */
  ASSERT_INT_EQ(tg_admin_token_create(s, &sec, "short", scopes, tg_now() + 60, tok2, NULL, &p),
                TG_OK);
  ASSERT_INT_EQ(tg_admin_token_authenticate(s, &sec, tok2, strlen(tok2), &got, &p), TG_OK);
  json_decref(got);
  tg_clock_override_ms((tg_now() + 61) * 1000);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_authenticate(s, &sec, tok2, strlen(tok2), &got, &p), TG_EAUTH);
  ASSERT_STR_CONTAINS(p.detail, "expired");
  tg_clock_override_ms(0);
  /* revocation by name */
  ASSERT_INT_EQ(tg_admin_token_revoke(s, "ci", NULL, &p), TG_OK);
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_authenticate(s, &sec, tok, strlen(tok), &got, &p), TG_EAUTH);
  ASSERT_STR_CONTAINS(p.detail, "revoked");
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_admin_token_revoke(s, "nobody", NULL, &p), TG_ENOTFOUND);
  json_decref(scopes);
  cleanup(s);
}

TG_TEST(issued_keys_leave_no_plaintext_on_disk) {
  enum { N = 200 };
  tg_store_t *s = fresh();
  tg_secret_t sec;
  tg_problem_t p = {0};
  ASSERT_INT_EQ(tg_server_secret(s, NULL, secret_path, true, &sec, &p), TG_OK);
  json_t *dev = NULL, *app = NULL, *df = json_pack("{s:s}", "email", "a@b.c");
  ASSERT_INT_EQ(tg_store_create(s, TG_ENT_DEVELOPER, df, false, &dev, &p), TG_OK);
  json_decref(df);
  json_t *af = json_pack("{s:O,s:s}", "developer_id", json_object_get(dev, "id"), "name", "app");
  ASSERT_INT_EQ(tg_store_create(s, TG_ENT_APP, af, false, &app, &p), TG_OK);
  json_decref(af);
  static char keys[N][TG_TOKEN_MAX_LEN + 1];
  const char *app_id = json_string_value(json_object_get(app, "id"));
  for (int i = 0; i < N; i++) {
    json_t *row = NULL;
    ASSERT_INT_EQ(tg_key_issue(s, &sec, app_id, "k", 0, NULL, keys[i], &row, &p), TG_OK);
    ASSERT(strncmp(keys[i], "tg_live_", 8) == 0);
    ASSERT(strncmp(json_string_value(json_object_get(row, "prefix")), keys[i], 16) == 0);
    ASSERT(json_object_get(row, "digest") == NULL);
    /* the digest stored is the keyed hash of the key: lookup by it finds the row */
    unsigned char d[TG_DIGEST_BYTES];
    char hex[TG_DIGEST_HEX_LEN + 1];
    tg_token_digest(&sec, keys[i], strlen(keys[i]), d);
    tg_hex_encode(d, sizeof(d), hex);
    json_t *found = NULL;
    ASSERT_INT_EQ(tg_store_get_by(s, TG_ENT_KEY, "digest", hex, &found, &p), TG_OK);
    ASSERT(json_equal(json_object_get(found, "id"), json_object_get(row, "id")));
    json_decref(found);
    json_decref(row);
  }
  /* keys for a missing app are refused, naming the field */
  char k[TG_TOKEN_MAX_LEN + 1];
  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_key_issue(s, &sec, "app_00000000000000000000000000", NULL, 0, NULL, k, NULL, &p),
                TG_EINVAL);
  ASSERT_STR_EQ(p.field, "/app_id");
  ASSERT_INT_EQ(k[0], '\0'); /* the failed key was wiped */
  /* read every byte SQLite wrote: main file, WAL and shared memory */
  const char *suffix[] = {"", "-wal", "-shm"};
  size_t total = 0;
  for (int f = 0; f < 3; f++) {
    char file[160];
    size_t len;
    snprintf(file, sizeof(file), "%s%s", path, suffix[f]);
    unsigned char *bytes = fixture_slurp(file, &len);
    total += len;
    for (int i = 0; bytes && i < N; i++) {
      /* neither the key nor its secret body (past the visible prefix) */
      if (memmem(bytes, len, keys[i], strlen(keys[i])) ||
          memmem(bytes, len, keys[i] + 16, strlen(keys[i]) - 16))
        TG_FAIL_("plaintext of key %d found in %s", i, file);
    }
    free(bytes);
  }
  ASSERT(total > 4096); /* the files were really read */
  json_decref(dev);
  json_decref(app);
  cleanup(s);
}

int main(int argc, char **argv) {
  if (tg_keys_init())
    return 2;
  return tg_test_main(argc, argv);
}
