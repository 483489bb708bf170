/*
 * error.c - names for tg_err_t and the first-cause-wins problem record.
 */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *tg_strerror(int err) {
  switch (err) {
  case TG_OK: return "success";
  case TG_ENOMEM: return "out of memory";
  case TG_EINVAL: return "invalid input";
  case TG_ENOTFOUND: return "not found";
  case TG_ECONFLICT: return "conflict";
  case TG_EPRECOND: return "precondition failed";
  case TG_EIO: return "input/output error";
  case TG_ESTORE: return "store error";
  case TG_ESCHEMA: return "schema version mismatch";
  case TG_EAUTH: return "authentication failed";
  case TG_ETOOBIG: return "value too large";
  case TG_EBUSY: return "store busy";
  case TG_ECONFIG: return "invalid configuration";
  case TG_ESECRET: return "server secret problem";
  }
  return "unknown error";
}

int tg_problem_set(tg_problem_t *p, int code, const char *field, const char *fmt, ...) {
  if (!p || p->code != TG_OK)
    return code;
  p->code = (tg_err_t)code;
  snprintf(p->field, sizeof(p->field), "%s", field ? field : "");
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->detail, sizeof(p->detail), fmt, ap);
    va_end(ap);
  } else {
    snprintf(p->detail, sizeof(p->detail), "%s", tg_strerror(code));
  }
  return code;
}

int tg_problem_add(tg_problem_t *p, int code, const char *field, const char *fmt, ...) {
  char detail[TG_PROBLEM_DETAIL_MAX];
  va_list ap;
  if (!p)
    return code;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);
  tg_problem_set(p, code, field, "%s", detail);
  if (p->nitems < TG_PROBLEM_ITEMS_MAX) {
    tg_problem_item_t *it = &p->items[p->nitems++];
    snprintf(it->field, sizeof(it->field), "%s", field ? field : "");
    size_t n = strnlen(detail, sizeof(it->detail) - 1); /* truncation is fine */
    memcpy(it->detail, detail, n);
    it->detail[n] = '\0';
  }
  return code;
}

void tg_problem_clear(tg_problem_t *p) {
  if (p)
    memset(p, 0, sizeof(*p));
}
