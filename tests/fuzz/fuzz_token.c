/*
 * fuzz_token.c - tg_token_check, tg_token_prefix and tg_token_verify over
 * arbitrary bytes: no crash, no out-of-bounds read, and the invariants
 * that make the check safe to run before a lookup.
 */
#include <stdlib.h>
#include <string.h>

#include "core/keys.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static int ready;
  static tg_secret_t secret;
  if (!ready) {
    if (tg_keys_init())
      abort();
    memset(&secret, 7, sizeof(secret));
    ready = 1;
  }
  /* a private copy with no terminator, so overreads are caught */
  char *text = malloc(size ? size : 1);
  if (!text)
    return 0;
  memcpy(text, data, size);
  tg_problem_t p = {0};
  tg_token_type_t type;
  int rc = tg_token_check(text, size, &type, &p);
  if (rc == TG_OK) {
    char prefix[TG_TOKEN_PREFIX_MAX + 1];
    tg_token_prefix(text, size, prefix);
    if (size > TG_TOKEN_MAX_LEN || strncmp(prefix, text, strlen(prefix)) != 0)
      abort();
  } else if (rc != TG_EAUTH) {
    abort();
  }
  unsigned char digest[TG_DIGEST_BYTES];
  tg_token_digest(&secret, text, size, digest);
  /* verify must agree with check + digest */
  if (tg_token_verify(&secret, text, size, digest) != (rc == TG_OK))
    abort();
  free(text);
  return 0;
}
