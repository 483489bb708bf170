/*
 * form.c - urlencoded forms, route patterns and sign-in redirects
 * (form.h). No libmicrohttpd here: the fuzz target links this file alone.
 */
#include "portal/form.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* Decode one name or value into a new string, or NULL when malformed. */
static char *form_decode(const char *s, size_t len) {
  char *out = malloc(len + 1);
  size_t n = 0;
  if (!out)
    return NULL;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '+') {
      out[n++] = ' ';
    } else if (s[i] == '%') {
      int hi = i + 2 < len ? tg_hex_digit(s[i + 1]) : -1;
      int lo = i + 2 < len ? tg_hex_digit(s[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        free(out);
        return NULL;
      }
      out[n++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      out[n++] = s[i];
    }
  }
  out[n] = '\0';
  /* NUL inside is refused by tg_utf8_valid (allow_ctl false) */
  if (!tg_utf8_valid(out, n, false)) {
    free(out);
    return NULL;
  }
  return out;
}

bool portal_form_parse(const char *body, size_t len, portal_field_t *fields, int max, int *n) {
  const char *s = body ? body : "";
  size_t i = 0;
  *n = 0;
  while (i < len) {
    const char *amp = memchr(s + i, '&', len - i);
    size_t end = amp ? (size_t)(amp - s) : len;
    if (end > i) {
      const char *eq = memchr(s + i, '=', end - i);
      size_t nend = eq ? (size_t)(eq - s) : end;
      if (*n == max)
        return false;
      char *name = form_decode(s + i, nend - i);
      char *value = eq ? form_decode(eq + 1, end - nend - 1) : strdup("");
      bool dup = false;
      for (int k = 0; name && k < *n; k++)
        dup |= strcmp(fields[k].name, name) == 0;
      if (!name || !value || !*name || dup) {
        free(name);
        free(value);
        return false;
      }
      fields[*n].name = name;
      fields[*n].value = value;
      (*n)++;
    }
    i = end + 1;
  }
  return true;
}

void portal_form_free(portal_field_t *fields, int n) {
  for (int i = 0; i < n; i++) {
    free(fields[i].name);
    free(fields[i].value);
    fields[i].name = fields[i].value = NULL;
  }
}

bool portal_path_match(const char *pattern, const char *path, char **params, int max) {
  int np = 0;
  const char *p = pattern, *s = path;
  while (*p && *s) {
    if (*p == '{') {
      const char *close = strchr(p, '}');
      const char *seg_end = s;
      while (*seg_end && *seg_end != '/')
        seg_end++;
      if (!close || seg_end == s || np == max)
        goto fail;
      if (!(params[np] = strndup(s, (size_t)(seg_end - s))))
        goto fail;
      np++;
      p = close + 1;
      s = seg_end;
      continue;
    }
    if (*p != *s)
      goto fail;
    p++;
    s++;
  }
  if (*p == '\0' && *s == '\0')
    return true;
fail:
  for (int i = 0; i < np; i++) {
    free(params[i]);
    params[i] = NULL;
  }
  return false;
}

const char *portal_safe_next(const char *next) {
  if (!next || next[0] != '/' || next[1] == '/' || next[1] == '\\' || strlen(next) > 512)
    return NULL;
  for (const char *c = next; *c; c++)
    if ((unsigned char)*c < 0x21 || (unsigned char)*c >= 0x7f || *c == '\\')
      return NULL;
  return next;
}
