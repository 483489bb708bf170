/*
 * lifecycle.c - entity status rules and cascades (see lifecycle.h).
 *
 * Invariant: financial history is never removed. Deleting a developer or
 * an app changes statuses; the rows, their usage and their audit trail
 * stay, and the change log tells the gateway to stop their keys.
 */
#include "core/lifecycle.h"

#include <sodium.h>
#include <string.h>

#include "core/tokens.h"
#include "core/util.h"

#define AUDIT_MEMBER_MAX 2048 /* larger members are summarised by size */

static const char *str(const json_t *row, const char *field) {
  const char *v = json_string_value(json_object_get(row, field));
  return v ? v : "";
}

/* A copy of row fit for the audit log: large members replaced by their
 * size, so that a 4 MiB OpenAPI document does not land in every row. */
static json_t *audit_view(const json_t *row) {
  if (!row)
    return json_null();
  json_t *copy = json_object();
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)row, k, v) {
    if (!copy)
      break;
    /* rows from the store hold no secrets; a caller's body might */
    if (strcmp(k, "password_hash") == 0 || strcmp(k, "digest") == 0 || strcmp(k, "key") == 0 ||
        strcmp(k, "token") == 0 || strcmp(k, "password") == 0)
      continue;
    json_t *put = json_incref(v);
    if (json_is_object(v) || json_is_array(v) || json_is_string(v)) {
      char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
      size_t n = text ? strlen(text) : 0;
      free(text);
      if (n > AUDIT_MEMBER_MAX) {
        json_decref(put);
        put = json_pack("{s:I}", "bytes", (json_int_t)n);
      }
    }
    json_object_set_new(copy, k, put);
  }
  return copy;
}

int tg_audit(tg_store_t *s, const char *actor, const char *action, tg_entity_t ent,
             const char *entity_id, const json_t *before, const json_t *after,
             const char *request_id, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  json_t *summary = json_object(), *fields = NULL;
  int result = TG_ENOMEM;
  if (!summary)
    goto out;
  if (json_object_set_new(summary, "before", audit_view(before)) ||
      json_object_set_new(summary, "after", audit_view(after)))
    goto out;
  fields =
      json_pack("{s:I, s:s, s:s, s:s, s:s, s:O, s:s}", "at", (json_int_t)tg_now(), "actor", actor,
                "action", action, "entity", d->name, "entity_id", entity_id ? entity_id : "",
                "summary", summary, "request_id", request_id ? request_id : "");
  if (!fields)
    goto out;
  result = tg_store_create(s, TG_ENT_AUDIT, fields, false, NULL, p);
out:
  if (result == TG_ENOMEM)
    tg_problem_set(p, TG_ENOMEM, "", NULL);
  json_decref(summary);
  json_decref(fields);
  return result;
}

/* Set status on a row whose current status is one of `from` ('|'
 * separated); TG_ECONFLICT naming the current status otherwise. */
static int transition(tg_store_t *s, tg_entity_t ent, const char *id, const char *from,
                      const char *to, const char *action, json_t **row, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  json_t *cur = NULL, *changes = NULL;
  int result = tg_store_get(s, ent, id, &cur, p);
  if (row)
    *row = NULL;
  if (result)
    goto out;
  const char *status = str(cur, "status");
  size_t n = strlen(status);
  const char *f = from;
  bool allowed = false;
  while (*f && !allowed) {
    const char *bar = strchr(f, '|');
    size_t len = bar ? (size_t)(bar - f) : strlen(f);
    allowed = len == n && memcmp(f, status, n) == 0;
    f += len + (bar ? 1 : 0);
  }
  if (!allowed) {
    result = tg_problem_set(p, TG_ECONFLICT, "/status", "cannot %s a %s whose status is %s", action,
                            d->name, status);
    goto out;
  }
  changes = json_pack("{s:s}", "status", to);
  if (!changes) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  result = tg_store_update(s, ent, id, changes, false,
                           json_integer_value(json_object_get(cur, "version")), row, p);
out:
  json_decref(cur);
  json_decref(changes);
  return result;
}

/* A status rule: `action` moves a row from one of `from` ('|' separated)
 * to `to`. */
typedef struct status_rule {
  const char *action, *from, *to;
} status_rule_t;

static int apply_rule(tg_store_t *s, tg_entity_t ent, const status_rule_t *rules, size_t n,
                      const char *id, const char *action, json_t **row, tg_problem_t *p) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(action, rules[i].action) == 0)
      return transition(s, ent, id, rules[i].from, rules[i].to, action, row, p);
  return tg_problem_set(p, TG_EINVAL, "action", "unknown %s action \"%s\"",
                        tg_model_entity(ent)->name, action);
}

int tg_developer_transition(tg_store_t *s, const char *id, const char *action, json_t **row,
                            tg_problem_t *p) {
  static const status_rule_t rules[] = {
      {"approve", "pending", "active"},
      {"suspend", "pending|active", "suspended"},
      {"unsuspend", "suspended", "active"},
  };
  return apply_rule(s, TG_ENT_DEVELOPER, rules, sizeof(rules) / sizeof(rules[0]), id, action, row,
                    p);
}

/* Apply `changes` to every row of `ent` with filter field = value whose
 * status is not `skip_status`. Pages through the rows; all in the
 * caller's transaction. */
static int update_all(tg_store_t *s, tg_entity_t ent, const char *field, const char *value,
                      const char *skip_status, const char *set_status, tg_problem_t *p) {
  char after[TG_ID_LEN + 1] = "", next[TG_ID_LEN + 1];
  tg_filter_t f = {field, value};
  json_t *changes = json_pack("{s:s}", "status", set_status);
  int result = changes ? TG_OK : tg_problem_set(p, TG_ENOMEM, "", NULL);
  do {
    json_t *rows = NULL;
    tg_list_query_t q = {
        .filters = &f, .nfilters = 1, .after = after[0] ? after : NULL, .limit = TG_LIST_MAX};
    if (result || (result = tg_store_list(s, ent, &q, &rows, next, p)))
      break;
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
      if (strcmp(str(r, "status"), skip_status) == 0)
        continue;
      if ((result = tg_store_update(s, ent, str(r, "id"), changes, false, 0, NULL, p)))
        break;
    }
    json_decref(rows);
    memcpy(after, next, sizeof(after));
  } while (!result && next[0]);
  json_decref(changes);
  return result;
}

/* Stop everything an app can do: cancel its subscriptions, revoke keys. */
static int app_stop(tg_store_t *s, const char *app_id, tg_problem_t *p) {
  int rc = update_all(s, TG_ENT_SUBSCRIPTION, "app_id", app_id, "cancelled", "cancelled", p);
  if (rc == TG_OK)
    rc = update_all(s, TG_ENT_KEY, "app_id", app_id, "revoked", "revoked", p);
  return rc;
}

int tg_app_delete(tg_store_t *s, const char *id, json_t **row, tg_problem_t *p) {
  int rc = transition(s, TG_ENT_APP, id, "active|suspended", "deleted", "delete", row, p);
  if (rc == TG_OK && (rc = app_stop(s, id, p)) && row) {
    json_decref(*row);
    *row = NULL;
  }
  return rc;
}

int tg_developer_delete(tg_store_t *s, const char *id, json_t **row, tg_problem_t *p) {
  char after[TG_ID_LEN + 1] = "", next[TG_ID_LEN + 1];
  tg_filter_t f = {"developer_id", id};
  int rc =
      transition(s, TG_ENT_DEVELOPER, id, "pending|active|suspended", "deleted", "delete", row, p);
  while (rc == TG_OK) {
    json_t *rows = NULL;
    tg_list_query_t q = {
        .filters = &f, .nfilters = 1, .after = after[0] ? after : NULL, .limit = TG_LIST_MAX};
    if ((rc = tg_store_list(s, TG_ENT_APP, &q, &rows, next, p)))
      break;
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
      if (strcmp(str(r, "status"), "deleted") != 0)
        rc = tg_app_delete(s, str(r, "id"), NULL, p);
      else
        rc = app_stop(s, str(r, "id"), p);
      if (rc)
        break;
    }
    json_decref(rows);
    memcpy(after, next, sizeof(after));
    if (!next[0])
      break;
  }
  if (rc && row) {
    json_decref(*row);
    *row = NULL;
  }
  return rc;
}

/* The app of `fields` (or of app_id) must exist and not be deleted. */
static int live_app(tg_store_t *s, const char *app_id, json_t **app, tg_problem_t *p) {
  json_t *row = NULL;
  int rc = tg_store_get(s, TG_ENT_APP, app_id, &row, NULL);
  if (rc == TG_ENOTFOUND)
    return tg_problem_set(p, TG_EINVAL, "/app_id", "no app with id \"%.40s\"", app_id);
  if (rc)
    return tg_problem_set(p, rc, "/app_id", "cannot read app: %s", tg_strerror(rc));
  if (strcmp(str(row, "status"), "deleted") == 0) {
    json_decref(row);
    return tg_problem_set(p, TG_ECONFLICT, "/app_id", "app \"%s\" is deleted", app_id);
  }
  if (app)
    *app = row;
  else
    json_decref(row);
  return TG_OK;
}

int tg_app_create(tg_store_t *s, const json_t *fields, json_t **row, tg_problem_t *p) {
  const char *dev_id = json_string_value(json_object_get(fields, "developer_id"));
  json_t *dev = NULL;
  if (row)
    *row = NULL;
  if (dev_id && tg_model_id_valid(dev_id, "dev") &&
      tg_store_get(s, TG_ENT_DEVELOPER, dev_id, &dev, NULL) == TG_OK) {
    bool deleted = strcmp(str(dev, "status"), "deleted") == 0;
    json_decref(dev);
    if (deleted)
      return tg_problem_set(p, TG_ECONFLICT, "/developer_id", "developer \"%s\" is deleted",
                            dev_id);
  }
  /* other problems (missing, malformed) are reported by the store */
  return tg_store_create(s, TG_ENT_APP, fields, false, row, p);
}

int tg_subscription_create(tg_store_t *s, const json_t *fields, json_t **row, tg_problem_t *p) {
  const char *app_id = json_string_value(json_object_get(fields, "app_id"));
  const char *plan_id = json_string_value(json_object_get(fields, "plan_id"));
  json_t *copy = NULL, *plan = NULL;
  int rc;
  if (row)
    *row = NULL;
  /* validate shape first, so that a bad body names all its fields */
  if ((rc = tg_model_validate(TG_ENT_SUBSCRIPTION, fields, TG_VALIDATE_CREATE, false, p)))
    return rc;
  if ((rc = live_app(s, app_id, NULL, p)))
    return rc;
  if (!(copy = json_deep_copy(fields)))
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  if (!json_object_get(copy, "status")) {
    rc = tg_store_get(s, TG_ENT_PLAN, plan_id, &plan, NULL);
    if (rc == TG_ENOTFOUND) {
      rc = tg_problem_set(p, TG_EINVAL, "/plan_id", "no plan with id \"%.40s\"", plan_id);
      goto out;
    }
    if (rc)
      goto out;
    bool approval = json_is_true(json_object_get(plan, "requires_approval"));
    json_object_set_new(copy, "status", json_string(approval ? "pending" : "active"));
  }
  rc = tg_store_create(s, TG_ENT_SUBSCRIPTION, copy, false, row, p);
out:
  json_decref(copy);
  json_decref(plan);
  return rc;
}

int tg_subscription_transition(tg_store_t *s, const char *id, const char *action, json_t **row,
                               tg_problem_t *p) {
  static const status_rule_t rules[] = {
      {"approve", "pending", "active"},
      {"suspend", "active", "suspended"},
      {"resume", "suspended", "active"},
      {"cancel", "pending|active|suspended", "cancelled"},
  };
  return apply_rule(s, TG_ENT_SUBSCRIPTION, rules, sizeof(rules) / sizeof(rules[0]), id, action,
                    row, p);
}

int tg_key_create(tg_store_t *s, const tg_secret_t *secret, const char *app_id, const char *name,
                  int64_t expires_at, char *key, json_t **row, tg_problem_t *p) {
  int rc;
  key[0] = '\0';
  if (row)
    *row = NULL;
  if (!app_id || !tg_model_id_valid(app_id, "app"))
    return tg_problem_set(p, TG_EINVAL, "/app_id", "must be the id of an app (\"app_...\")");
  if (expires_at != 0 && expires_at <= tg_now())
    return tg_problem_set(p, TG_EINVAL, "/expires_at", "must be in the future");
  if ((rc = live_app(s, app_id, NULL, p)))
    return rc;
  return tg_key_issue(s, secret, app_id, name, expires_at, NULL, key, row, p);
}

int tg_key_rotate(tg_store_t *s, const tg_secret_t *secret, const char *id, int64_t grace_seconds,
                  char *new_key, json_t **new_row, json_t **old_row, tg_problem_t *p) {
  json_t *old = NULL, *changes = NULL, *created = NULL;
  int64_t now = tg_now();
  int rc;
  new_key[0] = '\0';
  if (new_row)
    *new_row = NULL;
  if (old_row)
    *old_row = NULL;
  if (grace_seconds < 0 || grace_seconds > TG_ROTATE_GRACE_MAX)
    return tg_problem_set(p, TG_EINVAL, "/grace_seconds", "must be between 0 and %d",
                          TG_ROTATE_GRACE_MAX);
  if ((rc = tg_store_get(s, TG_ENT_KEY, id, &old, p)))
    goto out;
  json_int_t exp = json_integer_value(json_object_get(old, "expires_at"));
  if (strcmp(str(old, "status"), "active") != 0 || (exp != 0 && exp <= now)) {
    rc = tg_problem_set(p, TG_ECONFLICT, "/status", "only an active, unexpired key can be rotated");
    goto out;
  }
  if ((rc = live_app(s, str(old, "app_id"), NULL, p)))
    goto out;
  /* a key already rotated lives on in its successor: rotate that one, or
   * the successor would inherit the grace-period expiry */
  tg_filter_t succ[2] = {{"app_id", str(old, "app_id")}, {"rotated_from", id}};
  int64_t successors = 0;
  if ((rc = tg_store_count(s, TG_ENT_KEY, succ, 2, &successors, p)))
    goto out;
  if (successors > 0) {
    rc = tg_problem_set(p, TG_ECONFLICT, "/id",
                        "key \"%s\" was already rotated: rotate its successor instead", id);
    goto out;
  }
  const char *name = json_string_value(json_object_get(old, "name"));
  if ((rc = tg_key_issue(s, secret, str(old, "app_id"), name, exp, id, new_key, &created, p)))
    goto out;
  /* the old key: revoked now, or expiring at the end of the grace period
   * (never later than it would have anyway) */
  if (grace_seconds == 0)
    changes = json_pack("{s:s}", "status", "revoked");
  else
    changes =
        json_pack("{s:I}", "expires_at",
                  (json_int_t)(exp != 0 && exp < now + grace_seconds ? exp : now + grace_seconds));
  if (!changes) {
    rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  json_t *updated = NULL;
  if ((rc = tg_store_update(s, TG_ENT_KEY, id, changes, false, 0, &updated, p)))
    goto out;
  if (old_row)
    *old_row = updated;
  else
    json_decref(updated);
  if (new_row) {
    *new_row = created;
    created = NULL;
  }
out:
  if (rc)
    sodium_memzero(new_key, TG_TOKEN_MAX_LEN + 1);
  json_decref(old);
  json_decref(changes);
  json_decref(created);
  return rc;
}

int tg_key_revoke(tg_store_t *s, const char *id, json_t **row, tg_problem_t *p) {
  json_t *cur = NULL;
  int rc = tg_store_get(s, TG_ENT_KEY, id, &cur, p);
  if (row)
    *row = NULL;
  if (rc)
    return rc;
  bool revoked = strcmp(str(cur, "status"), "revoked") == 0;
  if (revoked) {
    if (row)
      *row = cur;
    else
      json_decref(cur);
    return TG_OK;
  }
  json_decref(cur);
  return transition(s, TG_ENT_KEY, id, "active", "revoked", "revoke", row, p);
}
