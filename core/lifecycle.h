/*
 * lifecycle.h - the domain rules of Tollgate's entities, as core services
 * that the admin API, the portal and the CLI share: audit records, status
 * transitions, cascades (suspending or deleting a developer stops all
 * their keys), subscriptions defaulting to pending when the plan needs
 * approval, and key rotation with a grace period.
 *
 * Every function here makes several store calls and must run inside the
 * caller's transaction (tg_store_begin/commit), so that a failure leaves
 * nothing half-done. None of them builds HTTP: errors come back as
 * tg_err_t with the detail in p (TG_ECONFLICT for a transition the
 * current status does not allow).
 */
#ifndef TG_LIFECYCLE_H
#define TG_LIFECYCLE_H

#include <jansson.h>

#include "core/keys.h"
#include "core/store.h"

/*
 * Append an audit row: who (actor: the admin token's name, or
 * "portal:<developer id>", or "cli"), what (action: "create", "update",
 * "delete", "approve", ...), on which entity, and a summary of the row
 * before and after (either may be NULL; borrowed). Large members (an
 * OpenAPI document) are summarised by size, and members that hold secrets
 * (password_hash, digest, key, token, password) are dropped.
 */
int tg_audit(tg_store_t *s, const char *actor, const char *action, tg_entity_t ent,
             const char *entity_id, const json_t *before, const json_t *after,
             const char *request_id, tg_problem_t *p);

/*
 * Developer status changes:
 *   "approve"   pending            -> active
 *   "suspend"   pending | active   -> suspended (their keys stop at the gateway)
 *   "unsuspend" suspended          -> active
 * *row (may be NULL): the updated row (new reference).
 */
int tg_developer_transition(tg_store_t *s, const char *id, const char *action, json_t **row,
                            tg_problem_t *p);

/* Delete a developer: status 'deleted' (email free for a new sign-up),
 * their apps deleted, subscriptions cancelled and keys revoked; usage and
 * audit history kept. */
int tg_developer_delete(tg_store_t *s, const char *id, json_t **row, tg_problem_t *p);

/* Delete an app: status 'deleted', subscriptions cancelled, keys revoked. */
int tg_app_delete(tg_store_t *s, const char *id, json_t **row, tg_problem_t *p);

/*
 * Create an app for a developer who is not deleted. `fields` borrowed.
 */
int tg_app_create(tg_store_t *s, const json_t *fields, json_t **row, tg_problem_t *p);

/*
 * Create a subscription (app x API x plan). Without an explicit "status",
 * it is "pending" when the plan requires approval and "active" otherwise.
 * The app must not be deleted. `fields` borrowed.
 */
int tg_subscription_create(tg_store_t *s, const json_t *fields, json_t **row, tg_problem_t *p);

/*
 * Subscription status changes:
 *   "approve"  pending                     -> active
 *   "suspend"  active                      -> suspended
 *   "resume"   suspended                   -> active
 *   "cancel"   pending | active | suspended -> cancelled (final)
 */
int tg_subscription_transition(tg_store_t *s, const char *id, const char *action, json_t **row,
                               tg_problem_t *p);

/*
 * Issue a key for an app that is not deleted (name may be NULL,
 * expires_at 0 = never). key receives the plaintext (shown once).
 */
int tg_key_create(tg_store_t *s, const tg_secret_t *secret, const char *app_id, const char *name,
                  int64_t expires_at, char *key, json_t **row, tg_problem_t *p);

/*
 * Rotate an active key: a new key for the same app (same name and
 * expiry), and the old one keeps working for grace_seconds (0..30 days;
 * 0 revokes it at once). new_key receives the plaintext; *new_row and
 * *old_row (either may be NULL) the two rows.
 */
#define TG_ROTATE_GRACE_MAX (30 * 86400)
int tg_key_rotate(tg_store_t *s, const tg_secret_t *secret, const char *id, int64_t grace_seconds,
                  char *new_key, json_t **new_row, json_t **old_row, tg_problem_t *p);

/* Revoke a key (idempotent: revoking a revoked key returns it). */
int tg_key_revoke(tg_store_t *s, const char *id, json_t **row, tg_problem_t *p);

#endif
