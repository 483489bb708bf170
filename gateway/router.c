/*
 * router.c - path normalisation and route matching over a snapshot.
 *
 * Matching is on the normalised path only, at segment boundaries: prefix
 * "/pets" matches "/pets" and "/pets/1" but not "/petshop". The most
 * specific route wins (the snapshot is sorted). Tricks that must not
 * escape a route: "/pets/../admin" is "/admin"; "%2e%2e" is ".." and is
 * resolved the same way; "%2F" stays an escaped byte inside a segment.
 */
#include <string.h>

#include "core/util.h"
#include "gateway/gw.h"

static bool unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

long gw_path_normalise(const char *path, size_t len, char *out) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  if (len == 0 || path[0] != '/')
    return -1;
  /* pass 1: escapes. Decode unreserved bytes, normalise the rest. */
  for (size_t i = 0; i < len; i++) {
    char c = path[i];
    if (c == '%') {
      if (i + 2 >= len)
        return -1;
      int hi = tg_hex_digit(path[i + 1]), lo = tg_hex_digit(path[i + 2]);
      if (hi < 0 || lo < 0)
        return -1;
      unsigned char v = (unsigned char)(hi * 16 + lo);
      if (v == 0)
        return -1; /* an encoded NUL is never a path */
      if (unreserved(v)) {
        out[o++] = (char)v;
      } else {
        out[o++] = '%';
        out[o++] = hex[v >> 4];
        out[o++] = hex[v & 15];
      }
      i += 2;
    } else {
      out[o++] = c;
    }
  }
  /* pass 2: remove dot segments in place (RFC 3986 5.2.4), refusing to
   * climb above the root rather than clamping, so "/../x" is an error
   * instead of a different resource */
  size_t r = 0, w = 0;
  while (r < o) {
    /* out[r] == '/' here */
    size_t seg = r + 1, end = seg;
    while (end < o && out[end] != '/')
      end++;
    size_t sl = end - seg;
    if (sl == 1 && out[seg] == '.') {
      r = end;
      if (r == o)
        out[w++] = '/'; /* "/a/." -> "/a/" */
      continue;
    }
    if (sl == 2 && out[seg] == '.' && out[seg + 1] == '.') {
      if (w == 0)
        return -1;
      while (w > 0 && out[w - 1] != '/')
        w--;
      if (w > 0)
        w--; /* drop the previous segment and its slash */
      r = end;
      if (r == o)
        out[w++] = '/';
      continue;
    }
    memmove(out + w, out + r, end - r);
    w += end - r;
    r = end;
  }
  if (w == 0)
    out[w++] = '/';
  out[w] = '\0';
  return (long)w;
}

static bool host_matches(const gw_route_t *r, const char *host, size_t hl) {
  if (r->nhosts == 0)
    return true;
  for (int i = 0; i < r->nhosts; i++) {
    const char *h = r->hosts[i];
    size_t n = strlen(h);
    if (n > 2 && h[0] == '*' && h[1] == '.') {
      /* "*.example.com" matches "a.example.com", not "example.com" */
      if (hl > n - 1 && memcmp(host + hl - (n - 1), h + 1, n - 1) == 0)
        return true;
    } else if (n == hl && memcmp(h, host, hl) == 0) {
      return true;
    }
  }
  return false;
}

const gw_route_t *gw_route_match(const gw_snapshot_t *snap, const char *host, size_t host_len,
                                 const char *path, size_t path_len, gw_method_t method,
                                 bool *method_mismatch) {
  char lower[256];
  size_t hl = 0;
  *method_mismatch = false;
  /* the Host header without its port, lower-cased (RFC 9110 4.2.3) */
  if (host) {
    size_t end = host_len;
    if (host_len > 0 && host[0] == '[') {
      const char *rb = memchr(host, ']', host_len);
      end = rb ? (size_t)(rb - host) + 1 : host_len;
    } else {
      const char *colon = memchr(host, ':', host_len);
      if (colon)
        end = (size_t)(colon - host);
    }
    if (end >= sizeof(lower))
      end = sizeof(lower) - 1;
    for (size_t i = 0; i < end; i++) {
      char c = host[i];
      lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    hl = end;
  }
  lower[hl] = '\0';
  for (int i = 0; i < snap->nroutes; i++) {
    const gw_route_t *r = &snap->routes[i];
    if (r->prefix_len > 1) {
      if (path_len < r->prefix_len || memcmp(path, r->prefix, r->prefix_len) != 0)
        continue;
      if (path_len > r->prefix_len && path[r->prefix_len] != '/')
        continue;
    }
    if (!host_matches(r, lower, hl))
      continue;
    if (r->methods && !(r->methods & (1u << method))) {
      *method_mismatch = true;
      continue;
    }
    return r;
  }
  return NULL;
}
