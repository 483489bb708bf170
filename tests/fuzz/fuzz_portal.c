/*
 * fuzz_portal.c - the developer portal's input parsing (portal/form.c)
 * over arbitrary bytes, all three parsers on every input:
 *
 *   - the input as a form body: on success, at most the maximum of fields,
 *     names non-empty and distinct, names and values well-formed UTF-8
 *     without NUL or control characters other than tab/CR/LF; every field
 *     percent-encoded again and parsed back gives the same fields (the
 *     decoder loses nothing it accepted);
 *   - the input (up to its first NUL) as a URL path against every portal
 *     route pattern: a match's parameters are non-empty and hold no '/',
 *     and substituting them back into the pattern gives the path;
 *   - the input as a sign-in `next`: what is accepted starts with one '/',
 *     is printable ASCII without backslashes and at most 512 bytes.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "portal/form.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define MAXF 8

static const char *const patterns[] = {
    "/",
    "/apis/{slug}",
    "/apis/{slug}/openapi.json",
    "/apps/{id}",
    "/apps/{id}/subscriptions/{sid}/cancel",
    "/apps/{id}/keys/{kid}/rotate",
    "/apps/{id}/usage.json",
};

static void check_fields(const portal_field_t *f, int n) {
  for (int i = 0; i < n; i++) {
    if (!*f[i].name || !tg_utf8_valid(f[i].name, strlen(f[i].name), false) ||
        !tg_utf8_valid(f[i].value, strlen(f[i].value), false))
      abort();
    for (int k = 0; k < i; k++)
      if (strcmp(f[k].name, f[i].name) == 0)
        abort();
  }
}

static size_t encode(const char *s, char *out) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
        *c == '-' || *c == '.' || *c == '_' || *c == '~') {
      out[o++] = (char)*c;
    } else if (*c == ' ') {
      out[o++] = '+';
    } else {
      out[o++] = '%';
      out[o++] = hex[*c >> 4];
      out[o++] = hex[*c & 15];
    }
  }
  return o;
}

static void fuzz_form(const char *in, size_t size) {
  portal_field_t f[MAXF], g[MAXF];
  int n = 0, m = 0;
  bool ok = portal_form_parse(in, size, f, MAXF, &n);
  if (n < 0 || n > MAXF)
    abort();
  if (ok) {
    check_fields(f, n);
    char *again = malloc(size * 3 + 8);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
      if (i)
        again[o++] = '&';
      o += encode(f[i].name, again + o);
      again[o++] = '=';
      o += encode(f[i].value, again + o);
    }
    if (!portal_form_parse(again, o, g, MAXF, &m) || m != n)
      abort();
    for (int i = 0; i < n; i++)
      if (strcmp(f[i].name, g[i].name) || strcmp(f[i].value, g[i].value))
        abort();
    portal_form_free(g, m);
    free(again);
  }
  portal_form_free(f, n);
}

static void fuzz_path(const char *path) {
  for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++) {
    char *params[3] = {0};
    if (!portal_path_match(patterns[i], path, params, 3)) {
      for (int k = 0; k < 3; k++)
        if (params[k])
          abort();
      continue;
    }
    char rebuilt[4096];
    size_t o = 0;
    int k = 0;
    for (const char *p = patterns[i]; *p && o < sizeof(rebuilt) - 1;) {
      if (*p == '{') {
        if (!params[k] || !*params[k] || strchr(params[k], '/'))
          abort();
        size_t l = strlen(params[k]);
        if (o + l >= sizeof(rebuilt))
          break;
        memcpy(rebuilt + o, params[k], l);
        o += l;
        k++;
        p = strchr(p, '}') + 1;
      } else {
        rebuilt[o++] = *p++;
      }
    }
    rebuilt[o] = '\0';
    if (strlen(path) < sizeof(rebuilt) - 1 && strcmp(rebuilt, path) != 0)
      abort();
    for (int j = 0; j < 3; j++)
      free(params[j]);
  }
}

static void fuzz_next(const char *next) {
  const char *ok = portal_safe_next(next);
  if (!ok)
    return;
  if (ok != next || ok[0] != '/' || ok[1] == '/' || strlen(ok) > 512 || strchr(ok, '\\'))
    abort();
  for (const char *c = ok; *c; c++)
    if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f)
      abort();
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  char *s = malloc(size + 1);
  if (!s)
    return 0;
  memcpy(s, data, size);
  s[size] = '\0';
  fuzz_form(s, size);
  fuzz_path(s);
  fuzz_next(s);
  free(s);
  return 0;
}
