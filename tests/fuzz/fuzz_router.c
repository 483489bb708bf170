/*
 * fuzz_router.c - the gateway's request path after parsing: a request
 * head is parsed, its path normalised and routed over a fixed snapshot.
 * Invariants: a normalised path starts with '/', holds no "." or ".."
 * segment and no escaped unreserved byte, is never longer than the input,
 * and normalising it again changes nothing; a matched route's prefix is a
 * whole-segment prefix of the normalised path, and its host rule holds.
 */
#include <stdlib.h>
#include <string.h>

#include "gateway/gw.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static gw_route_t routes[4];
static gw_snapshot_t snap = {.gen = 1, .routes = routes, .nroutes = 4};

static void setup(void) {
  static char *pets_hosts[] = {"api.example.com"};
  static char *wild_hosts[] = {"*.example.org"};
  routes[0] = (gw_route_t){.prefix = "/v1/pets", .prefix_len = 8, .hosts = pets_hosts, .nhosts = 1};
  routes[1] = (gw_route_t){.prefix = "/v1", .prefix_len = 3, .methods = 1u << GW_GET};
  routes[2] = (gw_route_t){.prefix = "/w", .prefix_len = 2, .hosts = wild_hosts, .nhosts = 1};
  routes[3] = (gw_route_t){.prefix = "/", .prefix_len = 1};
}

static void check_normal(const char *p, long n) {
  if (n < 1 || p[0] != '/')
    abort();
  for (long i = 0; i < n; i++) {
    if (p[i] == '/' && i + 1 < n) {
      const char *seg = p + i + 1, *end = memchr(seg, '/', (size_t)(n - i - 1));
      long sl = end ? end - seg : n - i - 1;
      if ((sl == 1 && seg[0] == '.') || (sl == 2 && seg[0] == '.' && seg[1] == '.'))
        abort();
    }
  }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static int ready;
  if (!ready) {
    setup();
    ready = 1;
  }
  gw_limits_t lim = {.max_line = 4096, .max_head = 8192, .max_headers = 32};
  gw_request_head_t *h = malloc(sizeof(*h));
  gw_parse_error_t err;
  if (!h)
    return 0;
  char *buf = malloc(size ? size : 1);
  if (!buf) {
    free(h);
    return 0;
  }
  memcpy(buf, data, size);
  if (gw_http1_parse_request(buf, size, &lim, h, &err) == 1) {
    char *out = malloc((size_t)h->path_len + 1), *again = malloc((size_t)h->path_len + 1);
    if (!out || !again)
      abort();
    long n = gw_path_normalise(h->target, h->path_len, out);
    if (n >= 0) {
      if (n > (long)h->path_len)
        abort();
      check_normal(out, n);
      long m = gw_path_normalise(out, (size_t)n, again);
      if (m != n || memcmp(out, again, (size_t)n) != 0)
        abort(); /* idempotent */
      bool mismatch = false;
      const gw_header_t *host = h->host >= 0 ? &h->headers[h->host] : NULL;
      const gw_route_t *r =
          gw_route_match(&snap, host ? host->value : NULL, host ? host->value_len : 0, out,
                         (size_t)n, h->method, &mismatch);
      if (r && r->prefix_len > 1) {
        if ((size_t)n < r->prefix_len || memcmp(out, r->prefix, r->prefix_len) != 0)
          abort();
        if ((size_t)n > r->prefix_len && out[r->prefix_len] != '/')
          abort();
      }
      if (r && r->methods && !(r->methods & (1u << h->method)))
        abort();
    }
    free(out);
    free(again);
  }
  free(buf);
  free(h);
  return 0;
}
