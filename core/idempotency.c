/*
 * idempotency.c - sealed, remembered POST results (see idempotency.h).
 */
#include "core/idempotency.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* BLAKE2b-256 keyed with the server secret over label|a|b with NUL
 * separators, so that no two (label, a, b) triples collide by shifting. */
static void derive(unsigned char out[32], const tg_secret_t *secret, const char *label,
                   const char *a, const char *b) {
  crypto_generichash_state h;
  crypto_generichash_init(&h, secret->bytes, sizeof(secret->bytes), 32);
  crypto_generichash_update(&h, (const unsigned char *)label, strlen(label) + 1);
  crypto_generichash_update(&h, (const unsigned char *)a, strlen(a) + 1);
  crypto_generichash_update(&h, (const unsigned char *)b, strlen(b) + 1);
  crypto_generichash_final(&h, out, 32);
}

int tg_idem_init(tg_idem_t *st, const tg_secret_t *secret, const char *token_id, const char *key,
                 const char *method, const char *path, const void *body, size_t len,
                 tg_problem_t *p) {
  size_t n = key ? strlen(key) : 0;
  if (n == 0 || n > TG_IDEM_KEY_MAX)
    return tg_problem_set(p, TG_EINVAL, "Idempotency-Key", "must be 1 to %d characters",
                          TG_IDEM_KEY_MAX);
  for (size_t i = 0; i < n; i++)
    if (key[i] < 0x21 || key[i] > 0x7e)
      return tg_problem_set(p, TG_EINVAL, "Idempotency-Key",
                            "must be printable ASCII without spaces");
  derive(st->id, secret, "idem-id", token_id, key);
  derive(st->seal_key, secret, "idem-key", token_id, key);
  crypto_generichash_state h;
  crypto_generichash_init(&h, secret->bytes, sizeof(secret->bytes), 32);
  crypto_generichash_update(&h, (const unsigned char *)method, strlen(method) + 1);
  crypto_generichash_update(&h, (const unsigned char *)path, strlen(path) + 1);
  crypto_generichash_update(&h, body, len);
  crypto_generichash_final(&h, st->request_hash, 32);
  return TG_OK;
}

int tg_idem_lookup(tg_store_t *s, const tg_idem_t *st, int *status, char **body, size_t *len,
                   tg_problem_t *p) {
  tg_idem_record_t rec;
  *body = NULL;
  *len = 0;
  int result = tg_store_idem_get(s, st->id, tg_now(), &rec, p);
  if (result)
    return result;
  if (!tg_ct_equal(rec.request_hash, st->request_hash, 32)) {
    result = tg_problem_set(p, TG_ECONFLICT, "Idempotency-Key",
                            "this key was already used for a different request");
    goto out;
  }
  size_t nonce = crypto_secretbox_NONCEBYTES, mac = crypto_secretbox_MACBYTES;
  if (rec.sealed_len < nonce + mac) {
    result = tg_problem_set(p, TG_ESTORE, "", "remembered response is damaged");
    goto out;
  }
  size_t plain = rec.sealed_len - nonce - mac;
  char *out = malloc(plain + 1);
  if (!out) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  if (crypto_secretbox_open_easy((unsigned char *)out, rec.sealed + nonce, rec.sealed_len - nonce,
                                 rec.sealed, st->seal_key) != 0) {
    free(out);
    result = tg_problem_set(p, TG_ESTORE, "", "remembered response does not authenticate");
    goto out;
  }
  out[plain] = '\0';
  /* the status is sealed too: "NNN\n" before the body */
  if (plain < 4 || out[3] != '\n' ||
      (out[0] - '0') * 100 + (out[1] - '0') * 10 + (out[2] - '0') != rec.status) {
    free(out);
    result = tg_problem_set(p, TG_ESTORE, "", "remembered response does not authenticate");
    goto out;
  }
  memmove(out, out + 4, plain - 4 + 1);
  *status = rec.status;
  *body = out;
  *len = plain - 4;
out:
  free(rec.sealed);
  return result;
}

int tg_idem_save(tg_store_t *s, const tg_idem_t *st, int status, const char *body, size_t len,
                 tg_problem_t *p) {
  size_t nonce = crypto_secretbox_NONCEBYTES, mac = crypto_secretbox_MACBYTES;
  tg_idem_record_t rec = {.status = status, .sealed_len = nonce + mac + 4 + len};
  int64_t now = tg_now();
  unsigned char *plain = NULL;
  int result;
  if (status < 200 || status > 599)
    return tg_problem_set(p, TG_EINVAL, "", "status %d cannot be remembered", status);
  if (len > 1048576 - nonce - mac - 4)
    return tg_problem_set(p, TG_ETOOBIG, "", "response too large to remember");
  rec.sealed = malloc(rec.sealed_len);
  plain = malloc(4 + len);
  if (!rec.sealed || !plain) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  /* seal the status with the body, so a changed status column is caught */
  plain[0] = (unsigned char)('0' + status / 100);
  plain[1] = (unsigned char)('0' + status / 10 % 10);
  plain[2] = (unsigned char)('0' + status % 10);
  plain[3] = '\n';
  if (len)
    memcpy(plain + 4, body, len);
  memcpy(rec.request_hash, st->request_hash, 32);
  randombytes_buf(rec.sealed, nonce);
  crypto_secretbox_easy(rec.sealed + nonce, plain, 4 + len, rec.sealed, st->seal_key);
  result = tg_store_idem_put(s, st->id, &rec, now, now + TG_IDEM_TTL, p);
out:
  if (plain) {
    sodium_memzero(plain, 4 + len);
    free(plain);
  }
  free(rec.sealed);
  return result;
}
