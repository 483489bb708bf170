/*
 * model.h - the entity model: which entities exist, their fields, and the
 * validation every write goes through before it reaches a store.
 *
 * The model is backend-neutral. A store implementation (store_sqlite.c
 * today, PostgreSQL later) maps each entity to a table whose columns are
 * the fields below, by name (rows show them in this order; a column that a
 * later migration appended may sit elsewhere in the table); the SQL schema
 * (schema/) repeats these rules as CHECK constraints so that a bug above
 * cannot store a bad row.
 *
 * Rows travel as jansson objects whose members are the fields:
 *
 *   | field type   | JSON               | notes                              |
 *   |--------------|--------------------|------------------------------------|
 *   | TG_FT_ID     | string "api_01H…"  | prefix + 26 Crockford base32       |
 *   | TG_FT_REF    | string id          | id of another entity (ref_kind)    |
 *   | TG_FT_TEXT   | string             | UTF-8, no control chars but \n \t  |
 *   | TG_FT_SLUG   | string             | [a-z0-9-], 1..63, no edge dashes   |
 *   | TG_FT_INT    | integer            | within [min, max]                  |
 *   | TG_FT_BOOL   | true/false         |                                    |
 *   | TG_FT_TIME   | integer            | unix seconds                       |
 *   | TG_FT_ENUM   | string             | one of choices ("a|b|c")           |
 *   | TG_FT_JSON   | array or object    | per-field check function           |
 *   | TG_FT_DIGEST | (never in rows)    | 32-byte keyed hash, store-internal |
 */
#ifndef TG_MODEL_H
#define TG_MODEL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

typedef enum tg_entity {
  TG_ENT_API,
  TG_ENT_TARGET,
  TG_ENT_PLAN,
  TG_ENT_DEVELOPER,
  TG_ENT_APP,
  TG_ENT_SUBSCRIPTION,
  TG_ENT_KEY,
  TG_ENT_ADMIN_TOKEN,
  TG_ENT_SESSION,
  TG_ENT_AUDIT,
  TG_ENT_MAIL,          /* schema/0005_portal.sql */
  TG_ENT_ACCOUNT_TOKEN, /* schema/0005_portal.sql */
  TG_ENT__COUNT
} tg_entity_t;

typedef enum tg_field_type {
  TG_FT_ID,
  TG_FT_REF,
  TG_FT_TEXT,
  TG_FT_SLUG,
  TG_FT_INT,
  TG_FT_BOOL,
  TG_FT_TIME,
  TG_FT_ENUM,
  TG_FT_JSON,
  TG_FT_DIGEST,
} tg_field_type_t;

/* Field flags. */
enum {
  TG_F_REQUIRED = 1 << 0,  /* must be given on create */
  TG_F_NULLABLE = 1 << 1,  /* JSON null allowed (stored as NULL) */
  TG_F_SERVER = 1 << 2,    /* set by the store only (id, version, times) */
  TG_F_IMMUTABLE = 1 << 3, /* given on create, never changed by update */
  TG_F_SECRET = 1 << 4,    /* never leaves the store in a row (digests,
                              password hashes) */
  TG_F_FILTER = 1 << 5,    /* lists may filter on it (equality) */
  TG_F_UNIQUE = 1 << 6,    /* rows may be looked up by it */
  TG_F_INTERNAL = 1 << 7,  /* shown in rows, but written only by core
                              services (a key's display prefix) */
};

/* Extra check for a field's value (after the type check); returns TG_OK or
 * records the reason with tg_problem_set(p, TG_EINVAL, pointer, ...). */
typedef int (*tg_field_check_fn)(const json_t *value, const char *pointer, tg_problem_t *p);

typedef struct tg_field {
  const char *name;
  tg_field_type_t type;
  unsigned flags;
  int64_t min, max;        /* INT/TIME: value range; TEXT: length in bytes */
  const char *choices;     /* ENUM: "a|b|c"; REF: the entity name referred to */
  tg_field_check_fn check; /* optional */
} tg_field_t;

typedef struct tg_entity_desc {
  const char *name;      /* "api": singular, used in errors, audit, change log */
  const char *table;     /* "apis" */
  const char *id_prefix; /* "api" (ids are "api_…") */
  const tg_field_t *fields;
  int nfields;
} tg_entity_desc_t;

/* Descriptor of an entity; never NULL for a valid enum value. */
const tg_entity_desc_t *tg_model_entity(tg_entity_t ent);

/* Field of an entity by name, or NULL. */
const tg_field_t *tg_model_field(const tg_entity_desc_t *d, const char *name);

typedef enum tg_validate_mode {
  TG_VALIDATE_CREATE, /* required fields must be present; SERVER fields rejected */
  TG_VALIDATE_UPDATE, /* any subset; SERVER and IMMUTABLE fields rejected */
} tg_validate_mode_t;

/*
 * Check `obj` (borrowed) against the entity's fields: unknown members,
 * wrong JSON types, out-of-range numbers, bad slugs/enums/ids, text that
 * is too long or not clean UTF-8, missing required fields. Errors name the
 * member as a JSON pointer ("/rate_per_second"). TG_OK or TG_EINVAL.
 * Fields with TG_F_SECRET or TG_F_INTERNAL may be written only by core
 * services, which pass allow_secret = true.
 */
int tg_model_validate(tg_entity_t ent, const json_t *obj, tg_validate_mode_t mode,
                      bool allow_secret, tg_problem_t *p);

/* True if s is a syntactically valid id of entity kind `prefix` ("api"). */
bool tg_model_id_valid(const char *s, const char *prefix);

/* Scopes an admin token may hold. */
#define TG_SCOPES "read|write|keys|reports|admin"

#endif
