/*
 * error.h - the one error enum of Tollgate, and the problem record that
 * carries user-facing detail (which field, why) up to the HTTP edge.
 *
 * Convention (libuv style): 0 is success, negative values are errors.
 * Domain code never builds HTTP responses; it fills a tg_problem_t and
 * returns a tg_err_t, and the edge (admin API, portal, CLI) turns the pair
 * into an application/problem+json body (RFC 9457), a form error or a
 * message on stderr.
 */
#ifndef TG_ERROR_H
#define TG_ERROR_H

#include <stddef.h>

typedef enum tg_err {
  TG_OK = 0,
  TG_ENOMEM = -1,    /* allocation failed */
  TG_EINVAL = -2,    /* input is malformed or out of range (-> 400/422) */
  TG_ENOTFOUND = -3, /* no such entity (-> 404) */
  TG_ECONFLICT = -4, /* unique/foreign-key conflict (-> 409) */
  TG_EPRECOND = -5,  /* version (ETag) mismatch (-> 412) */
  TG_EIO = -6,       /* file or socket I/O failed */
  TG_ESTORE = -7,    /* the store failed in a way the caller can't fix */
  TG_ESCHEMA = -8,   /* database schema is newer than this binary */
  TG_EAUTH = -9,     /* a secret, key or token did not verify */
  TG_ETOOBIG = -10,  /* a value exceeds its hard maximum (-> 413/431) */
  TG_EBUSY = -11,    /* store locked past the busy timeout (-> 503) */
  TG_ECONFIG = -12,  /* configuration is invalid */
  TG_ESECRET = -13,  /* server secret missing, unreadable or wrong */
} tg_err_t;

/* Longest field pointer / detail kept; longer ones are truncated. */
#define TG_PROBLEM_FIELD_MAX  128
#define TG_PROBLEM_DETAIL_MAX 512

#define TG_PROBLEM_ITEMS_MAX       16
#define TG_PROBLEM_ITEM_DETAIL_MAX 160

/* One of several field errors found in one validation pass. */
typedef struct tg_problem_item {
  char field[TG_PROBLEM_FIELD_MAX];
  char detail[TG_PROBLEM_ITEM_DETAIL_MAX];
} tg_problem_item_t;

/*
 * What went wrong, for a human. `field` is a JSON pointer ("/slug") or a
 * config key ("db_path") or empty; `detail` is a sentence without secrets.
 * Validation that checks every field also lists each bad one in `items`
 * (the first of them is also field/detail). A zeroed struct means "no
 * detail".
 */
typedef struct tg_problem {
  tg_err_t code;
  char field[TG_PROBLEM_FIELD_MAX];
  char detail[TG_PROBLEM_DETAIL_MAX];
  int nitems;
  tg_problem_item_t items[TG_PROBLEM_ITEMS_MAX];
} tg_problem_t;

/* Static English name of an error code ("not found"); never NULL. */
const char *tg_strerror(int err);

/*
 * Record an error in `p` (which may be NULL: then only the code is
 * returned). `field` may be NULL. Returns `code`, so callers can write
 * `return tg_problem_set(p, TG_EINVAL, "/slug", "must be ...");`.
 * Only the first problem recorded is kept: later calls return `code`
 * but leave `p` as it is, so the innermost cause wins.
 */
int tg_problem_set(tg_problem_t *p, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Record one field error of a validation pass that goes on after it: the
 * first call also sets code/field/detail like tg_problem_set; every call
 * appends to items (silently dropped past TG_PROBLEM_ITEMS_MAX). Returns
 * `code`.
 */
int tg_problem_add(tg_problem_t *p, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Clear `p` (no-op on NULL). */
void tg_problem_clear(tg_problem_t *p);

#endif
