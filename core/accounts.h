/*
 * accounts.h - developer portal accounts as core services: sign-up in the
 * operator's mode, email verification, login, password policy, change and
 * reset, sessions, and the mail outbox. The portal is a thin HTTP shell
 * over these; the admin API lists the outbox.
 *
 * Rules kept here (OWASP ASVS 4.0 level 2, V2 and V3):
 *   - passwords: 12..TG_PASSWORD_MAX bytes of UTF-8, not one of the common
 *     passwords (core/data/common-passwords.txt), not the email address;
 *     stored only as argon2id (tg_password_hash); rehashed at login when
 *     the parameters changed.
 *   - no user enumeration: tg_account_login gives one answer, TG_EAUTH,
 *     for an unknown email and a wrong password, and spends the same
 *     argon2id work on both; sign-up in verify/approval mode and reset
 *     requests look the same whether the address is known or not (an
 *     email tells the owner what happened instead).
 *   - sessions: 256-bit tg_ses_ tokens, only their keyed digest stored;
 *     idle and absolute timeouts checked on every lookup; a new session at
 *     every login (the caller drops the one it had: no fixation); all of a
 *     developer's sessions end when the password changes or is reset.
 *   - one-time tokens (tg_act_, verification and reset): keyed digest
 *     stored, expire, and are deleted in the transaction that uses them.
 *
 * Every function that writes runs inside the caller's transaction
 * (tg_store_begin/commit) unless it says otherwise, so a failure leaves
 * nothing half-done. Errors: TG_EINVAL with the form field in p->field
 * ("email", "password", ...) and a sentence for the user in p->detail.
 */
#ifndef TG_ACCOUNTS_H
#define TG_ACCOUNTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/keys.h"
#include "core/store.h"

#define TG_PASSWORD_MIN 12 /* bytes; ASVS 2.1.1 */
#define TG_EMAIL_MAX    254

typedef enum tg_signup_mode {
  TG_SIGNUP_OPEN,     /* active at once */
  TG_SIGNUP_VERIFY,   /* active once the emailed link is followed */
  TG_SIGNUP_APPROVAL, /* pending until an operator approves (and verified) */
} tg_signup_mode_t;

/* "open" | "verify" | "approval" -> mode; TG_OK or TG_EINVAL. */
int tg_signup_mode_parse(const char *text, tg_signup_mode_t *out);

/* What the account functions need from their caller. */
typedef struct tg_account_env {
  const tg_secret_t *secret;
  const char *base_url;   /* the portal's public URL, for links in emails */
  int64_t now;            /* unix seconds */
  int64_t token_ttl;      /* verification/reset link lifetime, seconds */
  const char *request_id; /* for the audit log; may be NULL */
} tg_account_env_t;

/* True iff `pw` (len bytes) is in the common-password list, compared
 * case-insensitively (ASCII). */
bool tg_password_is_common(const char *pw, size_t len);

/* The password policy above; TG_OK or TG_EINVAL (field "password"). */
int tg_password_policy(const char *pw, size_t len, const char *email, tg_problem_t *p);

/* An email address the portal accepts: printable ASCII, one '@', local
 * part 1..64, a domain of dot-separated labels with at least one dot,
 * 3..254 bytes in all. TG_OK or TG_EINVAL (field "email"). */
int tg_email_check(const char *email, tg_problem_t *p);

/* The outcome of a sign-up, for the page that answers it. */
typedef enum tg_signup_result {
  TG_SIGNUP_ACTIVE,     /* open mode: the account can sign in now */
  TG_SIGNUP_CHECK_MAIL, /* verify mode, or an address already taken in
                           verify/approval mode: say "check your email" */
  TG_SIGNUP_PENDING,    /* approval mode: verify, then wait for approval */
} tg_signup_result_t;

/*
 * Sign up. Checks the email shape, the name (0..200 chars) and the password
 * policy first (TG_EINVAL naming the field). In open mode a taken address
 * is TG_ECONFLICT (field "email"): open mode trades enumeration resistance
 * for sign-up without an email round trip. In verify/approval mode a taken
 * address gives TG_SIGNUP_CHECK_MAIL like a new one and mails the owner a
 * notice instead. *dev (may be NULL): the new developer row, NULL when
 * none was created.
 */
int tg_account_signup(tg_store_t *s, const tg_account_env_t *env, tg_signup_mode_t mode,
                      const char *email, const char *name, const char *password,
                      tg_signup_result_t *result, json_t **dev, tg_problem_t *p);

/* Why a correct password still does not sign in. */
typedef enum tg_login_result {
  TG_LOGIN_OK,
  TG_LOGIN_UNVERIFIED, /* a new verification link was mailed */
  TG_LOGIN_PENDING,    /* waiting for an operator's approval */
  TG_LOGIN_SUSPENDED,
} tg_login_result_t;

/*
 * Check an email and password. TG_EAUTH (detail "Email or password is
 * wrong.") for an unknown, deleted or password-less account and for a
 * wrong password alike. With the right password, *result says whether the
 * account may sign in, and *dev (new reference) is its row. Rehashes the
 * password when its parameters are outdated. verify_mode: an unverified
 * address blocks sign-in (TG_LOGIN_UNVERIFIED).
 */
int tg_account_login(tg_store_t *s, const tg_account_env_t *env, bool verify_mode,
                     const char *email, const char *password, tg_login_result_t *result,
                     json_t **dev, tg_problem_t *p);

/* Change the password of a signed-in developer: the current one must
 * match (TG_EINVAL, field "current_password"), the new one meet the
 * policy (field "new_password"). Ends every session of the developer;
 * the caller starts a fresh one. */
int tg_account_password_change(tg_store_t *s, const tg_account_env_t *env, const char *dev_id,
                               const char *current, const char *next, tg_problem_t *p);

/* Request a password reset: mails a one-time link when the address has a
 * live account, does nothing otherwise; TG_OK either way. */
int tg_account_reset_request(tg_store_t *s, const tg_account_env_t *env, const char *email,
                             tg_problem_t *p);

/* True iff `token` is a live reset (or verify) token; nothing changes. */
bool tg_account_token_peek(tg_store_t *s, const tg_account_env_t *env, const char *purpose,
                           const char *token);

/* Use a reset token: set the new password (policy: field "password"),
 * mark the email verified (the link proved it), end every session.
 * TG_EAUTH (field "token") when the token is unknown, used or expired.
 * *dev_id (TG_ID_LEN+1) receives whose it was. */
int tg_account_reset(tg_store_t *s, const tg_account_env_t *env, const char *token,
                     const char *password, char *dev_id, tg_problem_t *p);

/* Use a verification token: email_verified = 1. TG_EAUTH (field "token")
 * as above. *status receives the account's status afterwards ("active",
 * "pending"). */
int tg_account_verify(tg_store_t *s, const tg_account_env_t *env, const char *token, char *dev_id,
                      char status[16], tg_problem_t *p);

/* Delete an account after checking its password (TG_EINVAL, field
 * "password"): apps deleted, keys revoked, subscriptions cancelled, every
 * session ended (tg_developer_delete). */
int tg_account_delete(tg_store_t *s, const tg_account_env_t *env, const char *dev_id,
                      const char *password, tg_problem_t *p);

/* ---- sessions ---------------------------------------------------------------- */

typedef struct tg_session_limits {
  int64_t idle;     /* seconds without a request before the session ends */
  int64_t absolute; /* seconds after login at which it ends regardless */
} tg_session_limits_t;

/*
 * Start a session for dev_id: token (TG_TOKEN_MAX_LEN+1) receives the
 * cookie value, shown once; only its digest is stored. addr and ua are
 * kept for the developer's information (truncated). Own transaction when
 * called outside one.
 */
int tg_session_create(tg_store_t *s, const tg_account_env_t *env, const tg_session_limits_t *lim,
                      const char *dev_id, const char *addr, const char *ua, char *token,
                      json_t **session, tg_problem_t *p);

/*
 * The live session of a cookie value: TG_OK with *session and *dev (new
 * references), or TG_EAUTH when the token is malformed, unknown, idle or
 * past its absolute end, or its developer is no longer active (the stale
 * row is deleted). Refreshes last_seen_at at most once a minute (and at
 * least every idle/60 seconds, so the idle timeout holds to 1/60), so a
 * page view is mostly a read, not a write.
 */
int tg_session_lookup(tg_store_t *s, const tg_account_env_t *env, const tg_session_limits_t *lim,
                      const char *token, json_t **session, json_t **dev, tg_problem_t *p);

/* End one session (logout), or every session of a developer except
 * `keep_id` (may be NULL). */
int tg_session_end(tg_store_t *s, const char *session_id, tg_problem_t *p);
int tg_session_end_all(tg_store_t *s, const char *dev_id, const char *keep_id, tg_problem_t *p);

/*
 * The CSRF token of a form (ASVS 4.2.2): base64url of a keyed BLAKE2b of
 * `binding` (a session's token, or a visitor's pre-session cookie) under
 * the server secret, domain-separated. 43 chars + NUL in out.
 */
#define TG_CSRF_LEN 43
void tg_csrf_token(const tg_secret_t *secret, const char *binding, char out[TG_CSRF_LEN + 1]);
/* Constant-time check of a submitted CSRF token. */
bool tg_csrf_check(const tg_secret_t *secret, const char *binding, const char *submitted);

/* ---- mail -------------------------------------------------------------------- */

/* Tell a developer that an operator approved their account, or one of
 * their subscriptions (sub: its row). portal_url may be "" (no link). */
int tg_mail_developer_approved(tg_store_t *s, const json_t *dev, const char *portal_url,
                               tg_problem_t *p);
int tg_mail_subscription_approved(tg_store_t *s, const json_t *sub, const char *portal_url,
                                  tg_problem_t *p);

/* Queue a message in the outbox (dev_id may be NULL). */
int tg_mail_enqueue(tg_store_t *s, const char *dev_id, const char *to, const char *kind,
                    const char *subject, const char *body, tg_problem_t *p);

#endif
