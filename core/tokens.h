/*
 * tokens.h - core services around secrets: binding the server secret to a
 * store, admin tokens, and API key issuance. The admin API, the portal and
 * the CLI all call these; none of them hashes or stores a secret itself.
 */
#ifndef TG_TOKENS_H
#define TG_TOKENS_H

#include <jansson.h>
#include <stdbool.h>

#include "core/keys.h"
#include "core/store.h"

/*
 * Load the server secret for `s` and check it is the one the store's
 * digests were made with (a fingerprint kept in the store's meta).
 * On a store that has no fingerprint yet and holds no digests, a missing
 * secret file is created when may_create is true, and the fingerprint is
 * recorded. A store with a fingerprint never gets a new secret: a missing
 * or different secret is TG_ESECRET, naming the file.
 */
int tg_server_secret(tg_store_t *s, const char *env_hex, const char *path, bool may_create,
                     tg_secret_t *out, tg_problem_t *p);

/*
 * Create an admin token named `name` with `scopes` (borrowed JSON array of
 * scope words) and optional expiry (0 = never). token (TG_TOKEN_MAX_LEN+1
 * bytes) receives the plaintext, to be shown once; *row (may be NULL) the
 * stored row (no digest).
 */
int tg_admin_token_create(tg_store_t *s, const tg_secret_t *secret, const char *name,
                          const json_t *scopes, int64_t expires_at, char *token, json_t **row,
                          tg_problem_t *p);

/*
 * The row of `ent` (an entity with a digest column: keys, admin tokens,
 * sessions, account tokens) that token text[0..len) of `type` names,
 * found by its keyed digest. TG_OK with *row (new reference); TG_EAUTH
 * with the reason in p: malformed (tg_token_check's words), "not <an
 * admin token>" (another type), "unknown <admin token>"; or a store
 * error. Status and expiry are the caller's to check.
 */
int tg_token_find(tg_store_t *s, const tg_secret_t *secret, tg_entity_t ent, tg_token_type_t type,
                  const char *text, size_t len, json_t **row, tg_problem_t *p);

/*
 * Find the active, unexpired admin token whose text is text[0..len).
 * TG_OK with *row, or TG_EAUTH (malformed, unknown, revoked or expired:
 * deliberately not distinguished to the caller; p says which for logs).
 */
int tg_admin_token_authenticate(tg_store_t *s, const tg_secret_t *secret, const char *text,
                                size_t len, json_t **row, tg_problem_t *p);

/* Revoke by id or name. */
int tg_admin_token_revoke(tg_store_t *s, const char *id_or_name, json_t **row, tg_problem_t *p);

/*
 * Issue an API key for app `app_id` (name may be NULL; expires_at 0 =
 * never; rotated_from NULL or the key it replaces). key receives the
 * plaintext (TG_TOKEN_MAX_LEN+1 bytes), shown once; *row the stored row.
 */
int tg_key_issue(tg_store_t *s, const tg_secret_t *secret, const char *app_id, const char *name,
                 int64_t expires_at, const char *rotated_from, char *key, json_t **row,
                 tg_problem_t *p);

#endif
