/*
 * accounts.c - portal accounts: sign-up, verification, login, passwords,
 * resets, sessions, CSRF tokens and the mail outbox (accounts.h).
 *
 * Timing: every path of sign-up and login that a visitor can tell apart
 * only by time spends one argon2id computation, whether the account exists
 * or not (an unknown email is checked against a dummy hash).
 */
#include "core/accounts.h"

#include <ctype.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lifecycle.h"
#include "core/tokens.h"
#include "core/util.h"

extern const char tg_common_passwords[];
extern const size_t tg_common_passwords_len;

#define TOKEN_PURPOSE_VERIFY "verify"
#define TOKEN_PURPOSE_RESET  "reset"
#define TOUCH_EVERY          60 /* seconds between last_seen_at writes */

static const char *str(const json_t *row, const char *name) {
  const char *v = json_string_value(json_object_get(row, name));
  return v ? v : "";
}

/* ---- passwords ------------------------------------------------------------ */

bool tg_password_is_common(const char *pw, size_t len) {
  char key[65];
  if (len == 0 || len > 64)
    return false;
  for (size_t i = 0; i < len; i++)
    key[i] = (char)tolower((unsigned char)pw[i]);
  const char *data = tg_common_passwords;
  size_t lo = 0, hi = tg_common_passwords_len;
  /* binary search over lines: [lo, hi) always starts at a line start */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    while (mid > lo && data[mid - 1] != '\n')
      mid--;
    const char *nl = memchr(data + mid, '\n', hi - mid);
    size_t end = nl ? (size_t)(nl - data) : hi;
    size_t n = end - mid, m = n < len ? n : len;
    int c = memcmp(key, data + mid, m);
    if (c == 0)
      c = len < n ? -1 : len > n ? 1 : 0;
    if (c == 0)
      return true;
    if (c < 0)
      hi = mid;
    else
      lo = end + 1 > hi ? hi : end + 1;
  }
  return false;
}

int tg_password_policy(const char *pw, size_t len, const char *email, tg_problem_t *p) {
  if (len < TG_PASSWORD_MIN)
    return tg_problem_set(p, TG_EINVAL, "password", "Use at least %d characters.", TG_PASSWORD_MIN);
  if (len > TG_PASSWORD_MAX)
    return tg_problem_set(p, TG_EINVAL, "password", "Use at most %d bytes.", TG_PASSWORD_MAX);
  if (!tg_utf8_valid(pw, len, false))
    return tg_problem_set(p, TG_EINVAL, "password", "Use printable characters only.");
  if (tg_password_is_common(pw, len))
    return tg_problem_set(p, TG_EINVAL, "password",
                          "This password is on a list of common passwords: choose another.");
  if (email && strlen(email) == len && strncasecmp(email, pw, len) == 0)
    return tg_problem_set(p, TG_EINVAL, "password", "Do not use your email address as password.");
  return TG_OK;
}

int tg_email_check(const char *email, tg_problem_t *p) {
  size_t len = strlen(email);
  const char *at = strchr(email, '@');
  if (len < 3 || len > TG_EMAIL_MAX || !at || strchr(at + 1, '@') || at == email || at - email > 64)
    goto bad;
  for (const char *c = email; *c; c++)
    if (*c <= ' ' || *c >= 0x7f || *c == '<' || *c == '>' || *c == ',' || *c == ';' || *c == '"' ||
        *c == '\\')
      goto bad;
  const char *dom = at + 1;
  size_t dlen = strlen(dom);
  if (dlen < 3 || !strchr(dom, '.') || dom[0] == '.' || dom[dlen - 1] == '.' || strstr(dom, "..") ||
      dom[0] == '-')
    goto bad;
  return TG_OK;
bad:
  return tg_problem_set(p, TG_EINVAL, "email", "Enter an email address like name@example.com.");
}

int tg_signup_mode_parse(const char *text, tg_signup_mode_t *out) {
  static const char *const names[] = {"open", "verify", "approval"};
  for (int i = 0; i < 3; i++)
    if (strcmp(text, names[i]) == 0) {
      *out = (tg_signup_mode_t)i;
      return TG_OK;
    }
  return TG_EINVAL;
}

/* A hash to verify unknown accounts against, so that they cost the same. */
static char dummy_hash[TG_PWHASH_MAX];
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static void dummy_init(void) {
  unsigned char r[24];
  char pw[sizeof(r) * 2 + 1];
  randombytes_buf(r, sizeof(r));
  tg_hex_encode(r, sizeof(r), pw);
  if (tg_password_hash(pw, strlen(pw), dummy_hash) != TG_OK)
    dummy_hash[0] = '\0';
}

static void spend_like_verify(const char *password) {
  pthread_once(&dummy_once, dummy_init);
  if (dummy_hash[0])
    tg_password_verify(dummy_hash, password, strlen(password), NULL);
}

/* ---- one-time tokens and mail ------------------------------------------------ */

int tg_mail_enqueue(tg_store_t *s, const char *dev_id, const char *to, const char *kind,
                    const char *subject, const char *body, tg_problem_t *p) {
  json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "to_addr", to, "kind", kind, "subject", subject,
                        "body", body);
  int rc = f ? TG_OK : tg_problem_set(p, TG_ENOMEM, "", NULL);
  if (!rc && dev_id && json_object_set_new(f, "developer_id", json_string(dev_id)))
    rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
  if (!rc)
    rc = tg_store_create(s, TG_ENT_MAIL, f, false, NULL, p);
  json_decref(f);
  return rc;
}

int tg_mail_developer_approved(tg_store_t *s, const json_t *dev, const char *portal_url,
                               tg_problem_t *p) {
  char body[1024];
  snprintf(body, sizeof(body),
           "Hello,\n\nyour developer portal account was approved. You can sign in now%s%s%s.\n",
           *portal_url ? " at " : "", portal_url, *portal_url ? "/login" : "");
  return tg_mail_enqueue(s, str(dev, "id"), str(dev, "email"), "approval",
                         "Your developer portal account was approved", body, p);
}

int tg_mail_subscription_approved(tg_store_t *s, const json_t *sub, const char *portal_url,
                                  tg_problem_t *p) {
  json_t *app = NULL, *dev = NULL, *api = NULL, *plan = NULL;
  char body[1200], subject[300];
  int rc = tg_store_get(s, TG_ENT_APP, str(sub, "app_id"), &app, p);
  if (!rc)
    rc = tg_store_get(s, TG_ENT_DEVELOPER, str(app, "developer_id"), &dev, p);
  if (!rc)
    rc = tg_store_get(s, TG_ENT_API, str(sub, "api_id"), &api, p);
  if (!rc)
    rc = tg_store_get(s, TG_ENT_PLAN, str(sub, "plan_id"), &plan, p);
  if (!rc) {
    snprintf(subject, sizeof(subject), "Your subscription to %.200s was approved",
             str(api, "name"));
    snprintf(body, sizeof(body),
             "Hello,\n\nyour app \"%.200s\" may now call %.200s on the %.200s plan: keys of "
             "the app work for it from now on.%s%s%s%s\n",
             str(app, "name"), str(api, "name"), str(plan, "name"),
             *portal_url ? "\n\nSee it at " : "", portal_url, *portal_url ? "/apps/" : "",
             *portal_url ? str(app, "id") : "");
    rc = tg_mail_enqueue(s, str(dev, "id"), str(dev, "email"), "approval", subject, body, p);
  }
  json_decref(app);
  json_decref(dev);
  json_decref(api);
  json_decref(plan);
  return rc;
}

/* Drop a developer's live tokens of one purpose (a new link replaces the
 * old ones). */
static int tokens_drop(tg_store_t *s, const char *dev_id, const char *purpose, tg_problem_t *p) {
  tg_filter_t f[2] = {{"developer_id", dev_id}, {"purpose", purpose}};
  json_t *rows = NULL;
  char next[TG_ID_LEN + 1];
  tg_list_query_t q = {.filters = f, .nfilters = 2, .limit = TG_LIST_MAX};
  int rc = tg_store_list(s, TG_ENT_ACCOUNT_TOKEN, &q, &rows, next, p);
  size_t i;
  json_t *r;
  json_array_foreach(rows, i, r) {
    if (rc)
      break;
    rc = tg_store_delete(s, TG_ENT_ACCOUNT_TOKEN, str(r, "id"), 0, p);
  }
  json_decref(rows);
  return rc;
}

/* Make a one-time token for dev_id and mail its link. */
static int token_mail(tg_store_t *s, const tg_account_env_t *env, const json_t *dev,
                      const char *purpose, tg_problem_t *p) {
  char text[TG_TOKEN_MAX_LEN + 1], prefix[TG_TOKEN_PREFIX_MAX + 1], hex[TG_DIGEST_HEX_LEN + 1];
  unsigned char digest[TG_DIGEST_BYTES];
  char body[2048];
  const char *dev_id = str(dev, "id");
  int rc = tokens_drop(s, dev_id, purpose, p);
  if (rc)
    return rc;
  tg_token_generate(TG_TOKEN_ACCOUNT, env->secret, text, prefix, digest);
  tg_hex_encode(digest, sizeof(digest), hex);
  json_t *f = json_pack("{s:s, s:s, s:s, s:I}", "developer_id", dev_id, "purpose", purpose,
                        "digest", hex, "expires_at", (json_int_t)(env->now + env->token_ttl));
  rc = f ? tg_store_create(s, TG_ENT_ACCOUNT_TOKEN, f, true, NULL, p)
         : tg_problem_set(p, TG_ENOMEM, "", NULL);
  json_decref(f);
  if (rc)
    goto out;
  bool verify = strcmp(purpose, TOKEN_PURPOSE_VERIFY) == 0;
  int64_t minutes = env->token_ttl / 60;
  snprintf(body, sizeof(body),
           verify ? "Hello,\n\nconfirm your email address for the developer portal by opening "
                    "this link within %lld minutes:\n\n%s/verify?token=%s\n\nIf you did not sign "
                    "up, ignore this message.\n"
                  : "Hello,\n\nsomeone (hopefully you) asked to reset the password of your "
                    "developer portal account. Choose a new one within %lld minutes here:\n\n"
                    "%s/password/reset?token=%s\n\nIf it was not you, ignore this message: your "
                    "password stays as it is.\n",
           (long long)minutes, env->base_url, text);
  rc = tg_mail_enqueue(s, dev_id, str(dev, "email"), purpose,
                       verify ? "Confirm your email address" : "Reset your password", body, p);
out:
  sodium_memzero(text, sizeof(text));
  sodium_memzero(body, sizeof(body));
  return rc;
}

/* Find and use up a one-time token. *dev (new reference) gets its owner. */
static int token_take(tg_store_t *s, const tg_account_env_t *env, const char *purpose,
                      const char *token, bool consume, json_t **dev, tg_problem_t *p) {
  json_t *row = NULL;
  int rc = TG_EAUTH;
  *dev = NULL;
  if (!token || (rc = tg_token_find(s, env->secret, TG_ENT_ACCOUNT_TOKEN, TG_TOKEN_ACCOUNT, token,
                                    strlen(token), &row, p)))
    goto out;
  bool live = strcmp(str(row, "purpose"), purpose) == 0 &&
              json_integer_value(json_object_get(row, "expires_at")) > env->now;
  if (!live) {
    rc = TG_EAUTH;
    goto out;
  }
  if ((rc = tg_store_get(s, TG_ENT_DEVELOPER, str(row, "developer_id"), dev, p)))
    goto out;
  if (strcmp(str(*dev, "status"), "deleted") == 0)
    rc = TG_EAUTH;
  else if (consume)
    rc = tg_store_delete(s, TG_ENT_ACCOUNT_TOKEN, str(row, "id"), 0, p);
out:
  json_decref(row);
  if (rc && *dev) {
    json_decref(*dev);
    *dev = NULL;
  }
  if (rc == TG_EAUTH) {
    tg_problem_clear(p);
    tg_problem_set(p, TG_EAUTH, "token",
                   "This link is not valid any more: it was used, or it expired.");
  }
  return rc;
}

bool tg_account_token_peek(tg_store_t *s, const tg_account_env_t *env, const char *purpose,
                           const char *token) {
  json_t *dev = NULL;
  tg_problem_t ignore = {0};
  int rc = token_take(s, env, purpose, token, false, &dev, &ignore);
  json_decref(dev);
  return rc == TG_OK;
}

/* ---- sign-up, login ------------------------------------------------------------ */

/* The live (not deleted) developer with this email, or TG_ENOTFOUND. */
static int live_by_email(tg_store_t *s, const char *email, json_t **dev, tg_problem_t *p) {
  int rc = tg_store_get_by(s, TG_ENT_DEVELOPER, "email", email, dev, p);
  if (rc == TG_OK && strcmp(str(*dev, "status"), "deleted") == 0) {
    json_decref(*dev);
    *dev = NULL;
    rc = TG_ENOTFOUND;
  }
  return rc;
}

static char *actor_of(const char *dev_id, char out[48]) {
  snprintf(out, 48, "portal:%s", dev_id);
  return out;
}

int tg_account_signup(tg_store_t *s, const tg_account_env_t *env, tg_signup_mode_t mode,
                      const char *email, const char *name, const char *password,
                      tg_signup_result_t *result, json_t **dev, tg_problem_t *p) {
  char hash[TG_PWHASH_MAX], actor[48], body[1024];
  json_t *row = NULL, *f = NULL;
  size_t pwlen = strlen(password);
  int rc;
  if (dev)
    *dev = NULL;
  if ((rc = tg_email_check(email, p)))
    return rc;
  if (strlen(name) > 200 || !tg_utf8_valid(name, strlen(name), false) || strchr(name, '\n'))
    return tg_problem_set(p, TG_EINVAL, "name", "Use at most 200 characters on one line.");
  if ((rc = tg_password_policy(password, pwlen, email, p)))
    return rc;
  /* hash before looking: a taken address costs the same time */
  if ((rc = tg_password_hash(password, pwlen, hash)))
    return tg_problem_set(p, rc, "password", "The password cannot be hashed now; try again.");
  rc = live_by_email(s, email, &row, p);
  if (rc == TG_OK) {
    if (mode == TG_SIGNUP_OPEN) {
      rc = tg_problem_set(p, TG_ECONFLICT, "email",
                          "An account with this email exists: sign in, or reset its password.");
      goto out;
    }
    snprintf(body, sizeof(body),
             "Hello,\n\nsomeone tried to create a developer portal account with this address, "
             "which already has one. If it was you, sign in at %s/login, or choose a new "
             "password at %s/password/forgot.\n\nIf it was not you, ignore this message.\n",
             env->base_url, env->base_url);
    rc = tg_mail_enqueue(s, str(row, "id"), str(row, "email"), "notice",
                         "Your developer portal account", body, p);
    *result = TG_SIGNUP_CHECK_MAIL;
    goto out;
  }
  if (rc != TG_ENOTFOUND)
    goto out;
  tg_problem_clear(p); /* a free address is no problem */
  f = json_pack("{s:s, s:s, s:s, s:s, s:b}", "email", email, "name", name, "password_hash", hash,
                "status", mode == TG_SIGNUP_APPROVAL ? "pending" : "active", "email_verified", 0);
  if (!f) {
    rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  if ((rc = tg_store_create(s, TG_ENT_DEVELOPER, f, true, &row, p)))
    goto out;
  if ((rc = tg_audit(s, actor_of(str(row, "id"), actor), "signup", TG_ENT_DEVELOPER, str(row, "id"),
                     NULL, row, env->request_id, p)))
    goto out;
  if (mode != TG_SIGNUP_OPEN && (rc = token_mail(s, env, row, TOKEN_PURPOSE_VERIFY, p)))
    goto out;
  *result = mode == TG_SIGNUP_OPEN     ? TG_SIGNUP_ACTIVE
            : mode == TG_SIGNUP_VERIFY ? TG_SIGNUP_CHECK_MAIL
                                       : TG_SIGNUP_PENDING;
  if (dev) {
    *dev = row;
    row = NULL;
  }
out:
  sodium_memzero(hash, sizeof(hash));
  json_decref(row);
  json_decref(f);
  return rc;
}

int tg_account_login(tg_store_t *s, const tg_account_env_t *env, bool verify_mode,
                     const char *email, const char *password, tg_login_result_t *result,
                     json_t **dev, tg_problem_t *p) {
  json_t *row = NULL;
  char *hash = NULL;
  bool rehash = false;
  size_t pwlen = strlen(password);
  int rc;
  *dev = NULL;
  *result = TG_LOGIN_OK;
  rc = pwlen == 0 || pwlen > TG_PASSWORD_MAX ? TG_ENOTFOUND : live_by_email(s, email, &row, p);
  if (rc == TG_OK)
    rc = tg_store_get_secret(s, TG_ENT_DEVELOPER, str(row, "id"), "password_hash", &hash, p);
  if (rc == TG_OK && !hash)
    rc = TG_ENOTFOUND;
  if (rc == TG_ENOTFOUND) {
    spend_like_verify(password);
    rc = TG_EAUTH;
  } else if (rc == TG_OK && tg_password_verify(hash, password, pwlen, &rehash) != TG_OK) {
    rc = TG_EAUTH;
  }
  if (rc == TG_EAUTH) {
    /* one answer for all: drop what the lookup said ("no developer with
     * this email"), or it would be the answer (tg_problem_set keeps the first) */
    tg_problem_clear(p);
    tg_problem_set(p, TG_EAUTH, "password", "Email or password is wrong.");
    goto out;
  }
  if (rc)
    goto out;
  if (rehash) {
    char fresh[TG_PWHASH_MAX];
    json_t *ch = NULL;
    if (tg_password_hash(password, pwlen, fresh) == TG_OK &&
        (ch = json_pack("{s:s}", "password_hash", fresh)))
      rc = tg_store_update(s, TG_ENT_DEVELOPER, str(row, "id"), ch, true, 0, NULL, p);
    json_decref(ch);
    sodium_memzero(fresh, sizeof(fresh));
    if (rc)
      goto out;
  }
  const char *status = str(row, "status");
  if (strcmp(status, "suspended") == 0)
    *result = TG_LOGIN_SUSPENDED;
  else if (verify_mode && !json_is_true(json_object_get(row, "email_verified"))) {
    *result = TG_LOGIN_UNVERIFIED;
    rc = token_mail(s, env, row, TOKEN_PURPOSE_VERIFY, p);
  } else if (strcmp(status, "pending") == 0)
    *result = TG_LOGIN_PENDING;
  if (!rc) {
    *dev = row;
    row = NULL;
  }
out:
  if (hash) {
    sodium_memzero(hash, strlen(hash));
    free(hash);
  }
  json_decref(row);
  return rc;
}

/* Check a developer's current password: TG_OK, or TG_EINVAL on `field`. */
static int password_matches(tg_store_t *s, const char *dev_id, const char *password,
                            const char *field, tg_problem_t *p) {
  char *hash = NULL;
  int rc = tg_store_get_secret(s, TG_ENT_DEVELOPER, dev_id, "password_hash", &hash, p);
  if (rc)
    return rc;
  if (!hash || tg_password_verify(hash, password, strlen(password), NULL) != TG_OK)
    rc = tg_problem_set(p, TG_EINVAL, field, "This is not your current password.");
  if (hash) {
    sodium_memzero(hash, strlen(hash));
    free(hash);
  }
  return rc;
}

static int set_password(tg_store_t *s, const char *dev_id, const char *password, bool verified,
                        tg_problem_t *p) {
  char hash[TG_PWHASH_MAX];
  int rc = tg_password_hash(password, strlen(password), hash);
  if (rc)
    return tg_problem_set(p, rc, "password", "The password cannot be hashed now; try again.");
  json_t *ch = json_pack("{s:s}", "password_hash", hash);
  if (ch && verified)
    json_object_set_new(ch, "email_verified", json_true());
  rc = ch ? tg_store_update(s, TG_ENT_DEVELOPER, dev_id, ch, true, 0, NULL, p)
          : tg_problem_set(p, TG_ENOMEM, "", NULL);
  json_decref(ch);
  sodium_memzero(hash, sizeof(hash));
  if (!rc)
    rc = tg_session_end_all(s, dev_id, NULL, p);
  return rc;
}

int tg_account_password_change(tg_store_t *s, const tg_account_env_t *env, const char *dev_id,
                               const char *current, const char *next, tg_problem_t *p) {
  json_t *dev = NULL;
  char actor[48];
  int rc = tg_store_get(s, TG_ENT_DEVELOPER, dev_id, &dev, p);
  if (!rc)
    rc = password_matches(s, dev_id, current, "current_password", p);
  if (!rc && (rc = tg_password_policy(next, strlen(next), str(dev, "email"), p)))
    snprintf(p->field, sizeof(p->field), "new_password");
  if (!rc)
    rc = set_password(s, dev_id, next, false, p);
  if (!rc)
    rc = tg_audit(s, actor_of(dev_id, actor), "password_change", TG_ENT_DEVELOPER, dev_id, NULL,
                  NULL, env->request_id, p);
  json_decref(dev);
  return rc;
}

int tg_account_reset_request(tg_store_t *s, const tg_account_env_t *env, const char *email,
                             tg_problem_t *p) {
  json_t *dev = NULL;
  tg_problem_t ignore = {0};
  if (tg_email_check(email, &ignore))
    return TG_OK; /* nothing to send to; same answer */
  int rc = live_by_email(s, email, &dev, p);
  if (rc == TG_ENOTFOUND)
    return TG_OK;
  if (!rc && strcmp(str(dev, "status"), "suspended") != 0)
    rc = token_mail(s, env, dev, TOKEN_PURPOSE_RESET, p);
  json_decref(dev);
  return rc;
}

int tg_account_reset(tg_store_t *s, const tg_account_env_t *env, const char *token,
                     const char *password, char *dev_id, tg_problem_t *p) {
  json_t *dev = NULL;
  char actor[48];
  dev_id[0] = '\0';
  int rc = token_take(s, env, TOKEN_PURPOSE_RESET, token, true, &dev, p);
  if (rc)
    return rc;
  snprintf(dev_id, TG_ID_LEN + 1, "%s", str(dev, "id"));
  if (!(rc = tg_password_policy(password, strlen(password), str(dev, "email"), p)) &&
      !(rc = set_password(s, dev_id, password, true, p)))
    rc = tg_audit(s, actor_of(dev_id, actor), "password_reset", TG_ENT_DEVELOPER, dev_id, NULL,
                  NULL, env->request_id, p);
  json_decref(dev);
  return rc;
}

int tg_account_verify(tg_store_t *s, const tg_account_env_t *env, const char *token, char *dev_id,
                      char status[16], tg_problem_t *p) {
  json_t *dev = NULL, *ch = NULL;
  char actor[48];
  dev_id[0] = status[0] = '\0';
  int rc = token_take(s, env, TOKEN_PURPOSE_VERIFY, token, true, &dev, p);
  if (rc)
    return rc;
  snprintf(dev_id, TG_ID_LEN + 1, "%s", str(dev, "id"));
  snprintf(status, 16, "%s", str(dev, "status"));
  if (!(ch = json_pack("{s:b}", "email_verified", 1)))
    rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
  if (!rc)
    rc = tg_store_update(s, TG_ENT_DEVELOPER, dev_id, ch, false, 0, NULL, p);
  if (!rc)
    rc = tg_audit(s, actor_of(dev_id, actor), "verify_email", TG_ENT_DEVELOPER, dev_id, NULL, NULL,
                  env->request_id, p);
  json_decref(ch);
  json_decref(dev);
  return rc;
}

int tg_account_delete(tg_store_t *s, const tg_account_env_t *env, const char *dev_id,
                      const char *password, tg_problem_t *p) {
  json_t *before = NULL, *after = NULL;
  char actor[48];
  int rc = tg_store_get(s, TG_ENT_DEVELOPER, dev_id, &before, p);
  if (!rc)
    rc = password_matches(s, dev_id, password, "password", p);
  if (!rc)
    rc = tg_developer_delete(s, dev_id, &after, p);
  if (!rc)
    rc = tg_session_end_all(s, dev_id, NULL, p);
  if (!rc)
    rc = tg_audit(s, actor_of(dev_id, actor), "delete", TG_ENT_DEVELOPER, dev_id, before, after,
                  env->request_id, p);
  json_decref(before);
  json_decref(after);
  return rc;
}

/* ---- sessions ---------------------------------------------------------------- */

/* Copy text for a bookkeeping column: at most max bytes, clean UTF-8. */
static void clean_copy(const char *in, char *out, size_t max) {
  size_t n = 0;
  for (const char *c = in ? in : ""; *c && n < max; c++)
    out[n++] = (*c >= 0x20 && *c < 0x7f) ? *c : '?';
  out[n] = '\0';
}

int tg_session_create(tg_store_t *s, const tg_account_env_t *env, const tg_session_limits_t *lim,
                      const char *dev_id, const char *addr, const char *ua, char *token,
                      json_t **session, tg_problem_t *p) {
  char prefix[TG_TOKEN_PREFIX_MAX + 1], hex[TG_DIGEST_HEX_LEN + 1], a[65], u[513];
  unsigned char digest[TG_DIGEST_BYTES];
  tg_token_generate(TG_TOKEN_SESSION, env->secret, token, prefix, digest);
  tg_hex_encode(digest, sizeof(digest), hex);
  clean_copy(addr, a, 64);
  clean_copy(ua, u, 512);
  json_t *f = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "developer_id", dev_id, "digest", hex,
                        "client_addr", a, "user_agent", u, "last_seen_at", (json_int_t)env->now,
                        "expires_at", (json_int_t)(env->now + lim->absolute));
  int rc = f ? tg_store_create(s, TG_ENT_SESSION, f, true, session, p)
             : tg_problem_set(p, TG_ENOMEM, "", NULL);
  json_decref(f);
  if (rc) {
    sodium_memzero(token, TG_TOKEN_MAX_LEN + 1);
    token[0] = '\0';
  }
  return rc;
}

int tg_session_lookup(tg_store_t *s, const tg_account_env_t *env, const tg_session_limits_t *lim,
                      const char *token, json_t **session, json_t **dev, tg_problem_t *p) {
  tg_problem_t ignore = {0};
  json_t *ses = NULL, *d = NULL;
  int rc = TG_EAUTH;
  *session = *dev = NULL;
  if (!token || (rc = tg_token_find(s, env->secret, TG_ENT_SESSION, TG_TOKEN_SESSION, token,
                                    strlen(token), &ses, p)))
    goto out;
  int64_t seen = json_integer_value(json_object_get(ses, "last_seen_at"));
  int64_t ends = json_integer_value(json_object_get(ses, "expires_at"));
  if (ends <= env->now || seen + lim->idle <= env->now ||
      (rc = tg_store_get(s, TG_ENT_DEVELOPER, str(ses, "developer_id"), &d, p)) ||
      strcmp(str(d, "status"), "active") != 0) {
    if (rc == TG_OK || rc == TG_ENOTFOUND)
      rc = TG_EAUTH;
    if (rc == TG_EAUTH)
      tg_store_delete(s, TG_ENT_SESSION, str(ses, "id"), 0, &ignore);
    goto out;
  }
  /* at most once a minute, and at least every idle/60 s: a stale last_seen_at
   * would end a session that was used within its idle time (idle 1m) */
  int64_t every = lim->idle / 60 < TOUCH_EVERY ? lim->idle / 60 : TOUCH_EVERY;
  if (env->now - seen >= every) {
    json_t *ch = json_pack("{s:I}", "last_seen_at", (json_int_t)env->now);
    if (ch)
      tg_store_update(s, TG_ENT_SESSION, str(ses, "id"), ch, false, 0, NULL, &ignore);
    json_decref(ch);
  }
  *session = ses;
  *dev = d;
  ses = d = NULL;
out:
  json_decref(ses);
  json_decref(d);
  if (rc == TG_EAUTH) {
    tg_problem_clear(p);
    tg_problem_set(p, TG_EAUTH, "", "Your session ended: sign in again.");
  }
  return rc;
}

int tg_session_end(tg_store_t *s, const char *session_id, tg_problem_t *p) {
  int rc = tg_store_delete(s, TG_ENT_SESSION, session_id, 0, p);
  return rc == TG_ENOTFOUND ? TG_OK : rc;
}

int tg_session_end_all(tg_store_t *s, const char *dev_id, const char *keep_id, tg_problem_t *p) {
  tg_filter_t f = {"developer_id", dev_id};
  char after[TG_ID_LEN + 1] = "", next[TG_ID_LEN + 1];
  int rc;
  do {
    json_t *rows = NULL;
    tg_list_query_t q = {
        .filters = &f, .nfilters = 1, .after = after[0] ? after : NULL, .limit = TG_LIST_MAX};
    if ((rc = tg_store_list(s, TG_ENT_SESSION, &q, &rows, next, p)))
      return rc;
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
      if (keep_id && strcmp(str(r, "id"), keep_id) == 0)
        continue;
      if ((rc = tg_store_delete(s, TG_ENT_SESSION, str(r, "id"), 0, p)))
        break;
    }
    json_decref(rows);
    memcpy(after, next, sizeof(after));
  } while (!rc && next[0]);
  return rc;
}

/* ---- CSRF ---------------------------------------------------------------------- */

void tg_csrf_token(const tg_secret_t *secret, const char *binding, char out[TG_CSRF_LEN + 1]) {
  static const char domain[] = "tollgate-csrf-v1";
  unsigned char mac[32];
  crypto_generichash_state st;
  crypto_generichash_init(&st, secret->bytes, sizeof(secret->bytes), sizeof(mac));
  crypto_generichash_update(&st, (const unsigned char *)domain, sizeof(domain));
  crypto_generichash_update(&st, (const unsigned char *)binding, strlen(binding));
  crypto_generichash_final(&st, mac, sizeof(mac));
  sodium_bin2base64(out, TG_CSRF_LEN + 1, mac, sizeof(mac),
                    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

bool tg_csrf_check(const tg_secret_t *secret, const char *binding, const char *submitted) {
  char want[TG_CSRF_LEN + 1];
  if (!binding || !*binding || !submitted || strlen(submitted) != TG_CSRF_LEN)
    return false;
  tg_csrf_token(secret, binding, want);
  return tg_ct_equal(want, submitted, TG_CSRF_LEN);
}
