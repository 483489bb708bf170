/*
 * tokens.c - secrets as services (see tokens.h).
 *
 * Invariant: a plaintext token exists only in the caller's buffer for the
 * moment it is shown; the store sees its keyed digest and display prefix.
 */
#include "core/tokens.h"

#include <sodium.h>
#include <string.h>

#include "core/util.h"

#define META_FINGERPRINT "secret_fingerprint"

static int store_has_digests(tg_store_t *s, bool *any, tg_problem_t *p) {
  static const tg_entity_t with_digest[] = {TG_ENT_KEY, TG_ENT_ADMIN_TOKEN, TG_ENT_SESSION,
                                            TG_ENT_ACCOUNT_TOKEN};
  *any = false;
  for (size_t i = 0; i < sizeof(with_digest) / sizeof(with_digest[0]); i++) {
    int64_t n = 0;
    int rc = tg_store_count(s, with_digest[i], NULL, 0, &n, p);
    if (rc)
      return rc;
    if (n > 0)
      *any = true;
  }
  return TG_OK;
}

int tg_server_secret(tg_store_t *s, const char *env_hex, const char *path, bool may_create,
                     tg_secret_t *out, tg_problem_t *p) {
  char *stored = NULL;
  char fp[33];
  bool any = false, created = false;
  int result = tg_store_meta_get(s, META_FINGERPRINT, &stored, NULL);
  if (result == TG_OK) {
    result = tg_secret_load(env_hex, path, false, out, NULL, p);
    if (result)
      goto out;
    tg_secret_fingerprint(out, fp);
    bool well_formed = strlen(stored) == 32 && strspn(stored, "0123456789abcdef") == 32;
    if (!well_formed || !tg_ct_equal(fp, stored, 32)) {
      /* Only a well-formed stored value is echoed: the database may have
       * been tampered with, and stderr is no place for its bytes. */
      result = tg_problem_set(p, TG_ESECRET, env_hex ? "TOLLGATE_SECRET" : "secret_file",
                              "the server secret%s%s is not the one this database's keys were "
                              "hashed with (fingerprint %s, expected %s)",
                              env_hex ? " from TOLLGATE_SECRET" : " in ", env_hex ? "" : path, fp,
                              well_formed ? stored : "a malformed stored fingerprint");
    }
    goto out;
  }
  if (result != TG_ENOTFOUND)
    goto out;
  /* No fingerprint: a fresh store. Digests without one mean tampering. */
  if ((result = store_has_digests(s, &any, p)))
    goto out;
  if (any) {
    result = tg_problem_set(p, TG_ESECRET, "secret_file",
                            "the database holds key digests but no secret fingerprint; "
                            "refusing to pick a secret for it");
    goto out;
  }
  if ((result = tg_secret_load(env_hex, path, may_create, out, &created, p)))
    goto out;
  tg_secret_fingerprint(out, fp);
  result = tg_store_meta_set(s, META_FINGERPRINT, fp, p);
out:
  free(stored);
  if (result)
    sodium_memzero(out, sizeof(*out));
  return result;
}

/* Generate a token of `type` into text and return the fields the store
 * keeps of it: {"prefix", "digest" (hex)}. New reference; NULL on ENOMEM. */
static json_t *new_token_fields(tg_token_type_t type, const tg_secret_t *secret, char *text) {
  char prefix[TG_TOKEN_PREFIX_MAX + 1], hex[TG_DIGEST_HEX_LEN + 1];
  unsigned char digest[TG_DIGEST_BYTES];
  tg_token_generate(type, secret, text, prefix, digest);
  tg_hex_encode(digest, sizeof(digest), hex);
  return json_pack("{s:s, s:s}", "prefix", prefix, "digest", hex);
}

int tg_admin_token_create(tg_store_t *s, const tg_secret_t *secret, const char *name,
                          const json_t *scopes, int64_t expires_at, char *token, json_t **row,
                          tg_problem_t *p) {
  int result = TG_ENOMEM;
  json_t *fields = new_token_fields(TG_TOKEN_ADMIN, secret, token);
  if (row)
    *row = NULL;
  if (!fields)
    goto out;
  /* _nocheck: the model validates UTF-8 and names the field if it is bad */
  if ((name && json_object_set_new(fields, "name", json_string_nocheck(name))) ||
      json_object_set(fields, "scopes", scopes ? (json_t *)scopes : json_null()) ||
      (expires_at > 0 && json_object_set_new(fields, "expires_at", json_integer(expires_at))))
    goto out;
  result = tg_store_create(s, TG_ENT_ADMIN_TOKEN, fields, true, row, p);
out:
  if (result == TG_ENOMEM)
    tg_problem_set(p, TG_ENOMEM, "", NULL);
  json_decref(fields);
  if (result)
    sodium_memzero(token, TG_TOKEN_MAX_LEN + 1);
  return result;
}

int tg_token_find(tg_store_t *s, const tg_secret_t *secret, tg_entity_t ent, tg_token_type_t type,
                  const char *text, size_t len, json_t **row, tg_problem_t *p) {
  static const char *const names[][2] = {
      [TG_TOKEN_API_KEY] = {"an API key", "API key"},
      [TG_TOKEN_ADMIN] = {"an admin token", "admin token"},
      [TG_TOKEN_SESSION] = {"a session token", "session token"},
      [TG_TOKEN_ACCOUNT] = {"an account token", "account token"},
  };
  unsigned char digest[TG_DIGEST_BYTES];
  char hex[TG_DIGEST_HEX_LEN + 1];
  tg_token_type_t got;
  *row = NULL;
  int rc = tg_token_check(text, len, &got, p);
  if (rc)
    return rc;
  if (got != type)
    return tg_problem_set(p, TG_EAUTH, "", "not %s", names[type][0]);
  tg_token_digest(secret, text, len, digest);
  tg_hex_encode(digest, sizeof(digest), hex);
  rc = tg_store_get_by(s, ent, "digest", hex, row, p);
  if (rc == TG_ENOTFOUND) {
    tg_problem_clear(p);
    return tg_problem_set(p, TG_EAUTH, "", "unknown %s", names[type][1]);
  }
  return rc;
}

int tg_admin_token_authenticate(tg_store_t *s, const tg_secret_t *secret, const char *text,
                                size_t len, json_t **row, tg_problem_t *p) {
  json_t *r = NULL;
  int result = tg_token_find(s, secret, TG_ENT_ADMIN_TOKEN, TG_TOKEN_ADMIN, text, len, &r, p);
  *row = NULL;
  if (result)
    goto out;
  const char *status = json_string_value(json_object_get(r, "status"));
  json_int_t exp = json_integer_value(json_object_get(r, "expires_at"));
  if (!status || strcmp(status, "active") != 0) {
    result = tg_problem_set(p, TG_EAUTH, "", "admin token is revoked");
    goto out;
  }
  if (exp > 0 && exp <= tg_now()) {
    result = tg_problem_set(p, TG_EAUTH, "", "admin token has expired");
    goto out;
  }
  *row = r;
  r = NULL;
out:
  json_decref(r);
  return result;
}

int tg_admin_token_revoke(tg_store_t *s, const char *id_or_name, json_t **row, tg_problem_t *p) {
  json_t *cur = NULL, *changes = NULL;
  int result;
  if (row)
    *row = NULL;
  if (tg_model_id_valid(id_or_name, "tok"))
    result = tg_store_get(s, TG_ENT_ADMIN_TOKEN, id_or_name, &cur, p);
  else
    result = tg_store_get_by(s, TG_ENT_ADMIN_TOKEN, "name", id_or_name, &cur, p);
  if (result)
    goto out;
  changes = json_pack("{s:s}", "status", "revoked");
  if (!changes) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  result = tg_store_update(s, TG_ENT_ADMIN_TOKEN, json_string_value(json_object_get(cur, "id")),
                           changes, false, 0, row, p);
out:
  json_decref(cur);
  json_decref(changes);
  return result;
}

int tg_key_issue(tg_store_t *s, const tg_secret_t *secret, const char *app_id, const char *name,
                 int64_t expires_at, const char *rotated_from, char *key, json_t **row,
                 tg_problem_t *p) {
  int result = TG_ENOMEM;
  json_t *fields = new_token_fields(TG_TOKEN_API_KEY, secret, key);
  if (row)
    *row = NULL;
  if (!fields)
    goto out;
  if ((app_id && json_object_set_new(fields, "app_id", json_string_nocheck(app_id))) ||
      (name && json_object_set_new(fields, "name", json_string_nocheck(name))) ||
      (expires_at > 0 && json_object_set_new(fields, "expires_at", json_integer(expires_at))) ||
      (rotated_from &&
       json_object_set_new(fields, "rotated_from", json_string_nocheck(rotated_from))))
    goto out;
  result = tg_store_create(s, TG_ENT_KEY, fields, true, row, p);
out:
  if (result == TG_ENOMEM)
    tg_problem_set(p, TG_ENOMEM, "", NULL);
  json_decref(fields);
  if (result)
    sodium_memzero(key, TG_TOKEN_MAX_LEN + 1);
  return result;
}
