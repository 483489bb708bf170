/*
 * idempotency.h - Idempotency-Key support for POST requests
 * (draft-ietf-httpapi-idempotency-key-header-07): the first result of a
 * request is remembered, sealed, for 24 hours; a retry with the same key
 * and the same request gets that result back; the same key with another
 * request is an error. See schema/0002_idempotency.sql for why nothing is
 * stored in the clear.
 *
 * Use inside the request's write transaction: lookup, then (if not found)
 * do the work and save, then commit. The write lock taken at BEGIN makes a
 * concurrent retry wait for the first to finish rather than run twice.
 */
#ifndef TG_IDEMPOTENCY_H
#define TG_IDEMPOTENCY_H

#include <stddef.h>

#include "core/keys.h"
#include "core/store.h"

#define TG_IDEM_KEY_MAX 255
#define TG_IDEM_TTL     86400

typedef struct tg_idem {
  unsigned char id[32];
  unsigned char seal_key[32];
  unsigned char request_hash[32];
} tg_idem_t;

/*
 * Derive the record id, sealing key and request fingerprint for the
 * Idempotency-Key `key` (1..TG_IDEM_KEY_MAX printable ASCII chars) sent by
 * the admin token `token_id` with this method, path and body. TG_OK or
 * TG_EINVAL (bad key, detail in p).
 */
int tg_idem_init(tg_idem_t *st, const tg_secret_t *secret, const char *token_id, const char *key,
                 const char *method, const char *path, const void *body, size_t len,
                 tg_problem_t *p);

/*
 * TG_OK: a result is remembered for this very request; *status and *body
 * (malloc'd, *len bytes, NUL-terminated) are it. TG_ENOTFOUND: first time.
 * TG_ECONFLICT: the key was used for a different request.
 */
int tg_idem_lookup(tg_store_t *s, const tg_idem_t *st, int *status, char **body, size_t *len,
                   tg_problem_t *p);

/* Remember the result of this request. */
int tg_idem_save(tg_store_t *s, const tg_idem_t *st, int status, const char *body, size_t len,
                 tg_problem_t *p);

#endif
