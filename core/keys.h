/*
 * keys.h - secrets Tollgate hands out (API keys, admin tokens, portal
 * session tokens), the server secret that keys their digests, and
 * password hashing.
 *
 * Token text format (all three kinds):
 *
 *   | part     | bytes | content                                          |
 *   |----------|-------|--------------------------------------------------|
 *   | type     | 8/7   | "tg_live_" (API key), "tg_adm_", "tg_ses_"       |
 *   | body     | 43    | uniform base62 chars from libsodium's CSPRNG     |
 *   |          |       | (bytes >= 248 rejected, then % 62):              |
 *   |          |       | 43 * log2(62) = 256.03 bits of entropy           |
 *   | checksum | 6     | CRC-32 (IEEE) of type+body, base62, zero-padded  |
 *
 * The checksum lets a mistyped key be rejected before any lookup and lets
 * secret scanners recognise leaked keys offline (as GitHub's ghp_ tokens).
 * It is not a security feature: the secret is the body.
 *
 * At rest only two things are stored:
 *   - digest: BLAKE2b-256 of the whole token text, keyed with the 32-byte
 *     server secret (crypto_generichash). A stolen database yields no key.
 *   - prefix: type + first TG_KEY_PREFIX_BODY body chars, for display/logs.
 *
 * Server secret: 32 random bytes, from the environment (TOLLGATE_SECRET,
 * 64 hex chars) or a file (64 hex chars + optional newline) created with
 * mode 0600. A missing secret is only created when the caller says the
 * store has no digests yet (see tg_secret_load); never silently.
 *
 * Thread-safety: all functions are reentrant; tg_keys_init() must have run
 * once (it calls sodium_init()).
 */
#ifndef TG_KEYS_H
#define TG_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define TG_SECRET_BYTES     32
#define TG_DIGEST_BYTES     32
#define TG_DIGEST_HEX_LEN   (TG_DIGEST_BYTES * 2)
#define TG_KEY_BODY_LEN     43
#define TG_KEY_CHECKSUM_LEN 6
#define TG_KEY_PREFIX_BODY  8
#define TG_TOKEN_MAX_LEN    64   /* longest token text, without NUL */
#define TG_TOKEN_PREFIX_MAX 24   /* longest prefix text, without NUL */
#define TG_PASSWORD_MAX     1024 /* longest password accepted, bytes */
#define TG_PWHASH_MAX       128  /* crypto_pwhash_STRBYTES */

typedef enum tg_token_type {
  TG_TOKEN_API_KEY = 0, /* "tg_live_" */
  TG_TOKEN_ADMIN = 1,   /* "tg_adm_" */
  TG_TOKEN_SESSION = 2, /* "tg_ses_" */
  TG_TOKEN_ACCOUNT = 3, /* "tg_act_": one-time email verification / password reset */
} tg_token_type_t;

typedef struct tg_secret {
  unsigned char bytes[TG_SECRET_BYTES];
} tg_secret_t;

/* Call once per process before anything else here. TG_OK or TG_ESECRET. */
int tg_keys_init(void);

/*
 * Generate a new token of `type`.
 * text   out: NUL-terminated token text (caller buffer >= TG_TOKEN_MAX_LEN+1)
 * prefix out: display prefix (buffer >= TG_TOKEN_PREFIX_MAX+1)
 * digest out: keyed digest of the text under `secret`
 * Returns TG_OK. The caller must wipe `text` (sodium_memzero) once shown.
 */
int tg_token_generate(tg_token_type_t type, const tg_secret_t *secret, char *text, char *prefix,
                      unsigned char digest[TG_DIGEST_BYTES]);

/*
 * The token of `type` with the given 43-char base62 body (checksum added),
 * its prefix and digest: tg_token_generate with a chosen body. For fixed
 * fixtures (tests, fuzz seeds) only; real tokens come from the CSPRNG.
 * TG_EINVAL for an unknown type or a body that is not base62.
 */
int tg_token_compose(tg_token_type_t type, const char body[TG_KEY_BODY_LEN],
                     const tg_secret_t *secret, char *text, char *prefix,
                     unsigned char digest[TG_DIGEST_BYTES]);

/*
 * Check the shape of `text` (length `len`, not necessarily NUL-terminated):
 * known type prefix, exact length, base62 body, correct checksum. Cheap; no
 * secret involved. On success stores the type in *type (may be NULL).
 * Returns TG_OK or TG_EAUTH, with the reason in p ("wrong checksum",
 * "truncated", ...). Never logs or copies the text.
 */
int tg_token_check(const char *text, size_t len, tg_token_type_t *type, tg_problem_t *p);

/* Keyed digest of text[0..len) under secret. */
void tg_token_digest(const tg_secret_t *secret, const char *text, size_t len,
                     unsigned char digest[TG_DIGEST_BYTES]);

/*
 * True iff tg_token_check passes and the digest of text equals `digest`,
 * compared in constant time (sodium_memcmp).
 */
bool tg_token_verify(const tg_secret_t *secret, const char *text, size_t len,
                     const unsigned char digest[TG_DIGEST_BYTES]);

/* Display prefix of a token text that passed tg_token_check. */
void tg_token_prefix(const char *text, size_t len, char prefix[TG_TOKEN_PREFIX_MAX + 1]);

/* Constant-time equality of two byte strings of the same length. */
bool tg_ct_equal(const void *a, const void *b, size_t len);

/* Lowercase hex of bin[0..len) into hex (2*len+1 bytes). */
void tg_hex_encode(const unsigned char *bin, size_t len, char *hex);

/* Parse exactly 2*len hex chars into bin; TG_OK or TG_EINVAL. */
int tg_hex_decode(const char *hex, size_t hexlen, unsigned char *bin, size_t len);

/*
 * Load the server secret.
 *   env_hex:      value of TOLLGATE_SECRET or NULL; wins over the file.
 *   path:         secret file path (used when env_hex is NULL).
 *   may_create:   if the file does not exist and this is true, create it
 *                 (O_CREAT|O_EXCL, mode 0600) with 32 fresh random bytes.
 *   *created:     set to true when a new file was written (may be NULL).
 * Errors (TG_ESECRET, with the path and reason in p): file missing and
 * !may_create, unreadable, group/world-readable (mode & 077), malformed
 * content, env value not 64 hex chars.
 */
int tg_secret_load(const char *env_hex, const char *path, bool may_create, tg_secret_t *out,
                   bool *created, tg_problem_t *p);

/*
 * Fingerprint of a secret, to store beside the digests so that a wrong
 * secret is detected at start: hex of BLAKE2b-128("tollgate-secret-check",
 * key=secret). fp buffer >= 33 bytes.
 */
void tg_secret_fingerprint(const tg_secret_t *secret, char fp[33]);

/*
 * Passwords: argon2id via crypto_pwhash_str with at least the INTERACTIVE
 * limits. `password` is len bytes, 1..TG_PASSWORD_MAX.
 * tg_password_hash: out buffer >= TG_PWHASH_MAX. TG_OK, TG_EINVAL (length),
 *   TG_ENOMEM (argon2 could not allocate).
 * tg_password_verify: TG_OK if it matches, TG_EAUTH if not or if the hash is
 *   malformed. *needs_rehash (may be NULL) is set when the hash used other
 *   limits (weaker or stronger) or another algorithm than the current ones.
 */
int tg_password_hash(const char *password, size_t len, char *out);
int tg_password_verify(const char *hash, const char *password, size_t len, bool *needs_rehash);

#endif
