/*
 * fuzz_model.c - JSON bodies through the entity validator, as the admin
 * API and the config import will feed them: the first byte picks the
 * entity and mode, the rest is parsed as JSON. Whatever validates must be
 * an object, and validation must be deterministic.
 */
#include <jansson.h>
#include <stdlib.h>

#include "core/model.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  if (size < 1)
    return 0;
  tg_entity_t ent = (tg_entity_t)(data[0] % TG_ENT__COUNT);
  tg_validate_mode_t mode = (data[0] & 0x80) ? TG_VALIDATE_UPDATE : TG_VALIDATE_CREATE;
  bool allow_secret = (data[0] & 0x40) != 0;
  json_t *v =
      json_loadb((const char *)data + 1, size - 1, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
  if (!v)
    return 0;
  tg_problem_t p1 = {0}, p2 = {0};
  int a = tg_model_validate(ent, v, mode, allow_secret, &p1);
  int b = tg_model_validate(ent, v, mode, allow_secret, &p2);
  if (a != b || (a == TG_OK && !json_is_object(v)) || (a != TG_OK && p1.code == TG_OK))
    abort();
  json_decref(v);
  return 0;
}
