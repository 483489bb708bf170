/*
 * snapshot.c - builds the gateway's immutable routing snapshot from the
 * store (config thread only; workers never touch the store).
 *
 * A snapshot is built whole and never changed after publication; routes
 * are sorted so that the first match is the most specific: longest path
 * prefix first, then routes bound to hosts before host-less ones. Upstream
 * host names are resolved here, off the request path. Targets of APIs with
 * active health checks get their health registry entry here too, so
 * workers read their health without a lookup.
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/store.h"
#include "gateway/gw.h"

static void route_free(gw_route_t *r) {
  for (int i = 0; i < r->nhosts; i++)
    free(r->hosts[i]);
  free(r->hosts);
  free(r->prefix);
  free(r->hc_path);
  free(r->targets);
}

void gw_snapshot_free(gw_snapshot_t *snap) {
  if (!snap)
    return;
  for (int i = 0; i < snap->nroutes; i++)
    route_free(&snap->routes[i]);
  free(snap->routes);
  free(snap);
}

static const char *str(const json_t *row, const char *field) {
  const char *v = json_string_value(json_object_get(row, field));
  return v ? v : "";
}

/* http[s]://host[:port][/path] (validated by the model on the way in). */
static int parse_target(const char *url, gw_target_t *t) {
  const char *p = url;
  if (strncmp(p, "https://", 8) == 0) {
    t->https = true;
    p += 8;
  } else if (strncmp(p, "http://", 7) == 0) {
    p += 7;
  } else {
    return -1;
  }
  const char *slash = strchr(p, '/');
  const char *hend = slash ? slash : p + strlen(p);
  const char *port = NULL, *host = p, *host_end = hend;
  if (*p == '[') {
    const char *rb = memchr(p, ']', (size_t)(hend - p));
    if (!rb)
      return -1;
    host = p + 1;
    host_end = rb;
    if (rb + 1 < hend && rb[1] == ':')
      port = rb + 2;
  } else {
    const char *colon = memchr(p, ':', (size_t)(hend - p));
    if (colon) {
      host_end = colon;
      port = colon + 1;
    }
  }
  size_t hl = (size_t)(host_end - host);
  if (hl == 0 || hl >= sizeof(t->host))
    return -1;
  memcpy(t->host, host, hl);
  t->host[hl] = '\0';
  long pn = t->https ? 443 : 80;
  if (port) {
    char *end;
    pn = strtol(port, &end, 10);
    if (end != hend || pn < 1 || pn > 65535)
      return -1;
  }
  t->port = (uint16_t)pn;
  snprintf(t->host_header, sizeof(t->host_header), "%.*s", (int)(hend - p), p);
  size_t pl = slash ? strlen(slash) : 0;
  while (pl > 0 && slash[pl - 1] == '/')
    pl--;
  if (pl >= sizeof(t->base_path))
    return -1;
  if (pl)
    memcpy(t->base_path, slash, pl);
  t->base_path[pl] = '\0';
  return 0;
}

static void resolve(gw_target_t *t) {
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  char port[8];
  snprintf(port, sizeof(port), "%u", t->port);
  if (getaddrinfo(t->host, port, &hints, &res) == 0 && res) {
    memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
    t->addrlen = res->ai_addrlen;
    t->resolved = true;
  }
  if (res)
    freeaddrinfo(res);
}

static unsigned method_bit(const char *m) {
  static const char *const names[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
  for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (strcmp(m, names[i]) == 0)
      return 1u << i;
  return 0;
}

static int load_targets(tg_store_t *store, gw_route_t *r, char *err, size_t errlen) {
  char after[GW_ID_LEN + 1] = "", next[GW_ID_LEN + 1];
  tg_filter_t f = {"api_id", r->api_id};
  do {
    json_t *rows = NULL;
    tg_list_query_t q = {
        .filters = &f, .nfilters = 1, .after = after[0] ? after : NULL, .limit = TG_LIST_MAX};
    tg_problem_t p = {0};
    if (tg_store_list(store, TG_ENT_TARGET, &q, &rows, next, &p)) {
      snprintf(err, errlen, "targets of %s: %s", r->slug, p.detail);
      return -1;
    }
    size_t n = json_array_size(rows);
    gw_target_t *grown = realloc(r->targets, sizeof(gw_target_t) * ((size_t)r->ntargets + n + 1));
    if (!grown) {
      json_decref(rows);
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    r->targets = grown;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
      gw_target_t *t = &r->targets[r->ntargets];
      memset(t, 0, sizeof(*t));
      snprintf(t->id, sizeof(t->id), "%s", str(row, "id"));
      t->weight = (int)json_integer_value(json_object_get(row, "weight"));
      if (t->weight <= 0 || parse_target(str(row, "url"), t) != 0)
        continue; /* weight 0 = drained; a bad URL cannot pass the model */
      t->passive_failures = r->passive_failures;
      t->passive_cooldown_ms = r->passive_cooldown_ms;
      if (r->hc_path && !(t->health = gw_health_entry_for(t))) {
        json_decref(rows);
        snprintf(err, errlen, "out of memory");
        return -1;
      }
      resolve(t);
      r->total_weight += t->weight;
      r->ntargets++;
    }
    json_decref(rows);
    memcpy(after, next, sizeof(after));
  } while (next[0]);
  return 0;
}

static int route_from_row(tg_store_t *store, const json_t *row, gw_route_t *r, char *err,
                          size_t errlen) {
  memset(r, 0, sizeof(*r));
  snprintf(r->api_id, sizeof(r->api_id), "%s", str(row, "id"));
  snprintf(r->slug, sizeof(r->slug), "%s", str(row, "slug"));
  const char *prefix = str(row, "path_prefix");
  r->prefix = strdup(*prefix ? prefix : "/");
  if (!r->prefix)
    goto oom;
  r->prefix_len = strlen(r->prefix);
  /* "/pets/" and "/pets" route the same: match on segment boundaries */
  while (r->prefix_len > 1 && r->prefix[r->prefix_len - 1] == '/')
    r->prefix[--r->prefix_len] = '\0';
  const json_t *hosts = json_object_get(row, "hosts");
  size_t nh = json_array_size(hosts);
  if (nh) {
    r->hosts = calloc(nh, sizeof(char *));
    if (!r->hosts)
      goto oom;
    for (size_t i = 0; i < nh; i++) {
      if (!(r->hosts[i] = strdup(json_string_value(json_array_get(hosts, i)))))
        goto oom;
      r->nhosts++;
    }
  }
  size_t i;
  json_t *m;
  json_array_foreach(json_object_get(row, "methods"), i, m) r->methods |=
      method_bit(json_string_value(m));
  r->strip_prefix = json_is_true(json_object_get(row, "strip_prefix"));
  r->connect_ms = (int)json_integer_value(json_object_get(row, "connect_timeout_ms"));
  r->read_ms = (int)json_integer_value(json_object_get(row, "read_timeout_ms"));
  r->write_ms = (int)json_integer_value(json_object_get(row, "write_timeout_ms"));
  r->retries = (int)json_integer_value(json_object_get(row, "retries"));
  r->max_body = json_integer_value(json_object_get(row, "max_body_bytes"));
  const char *hc = json_string_value(json_object_get(row, "healthcheck_path"));
  if (hc && !(r->hc_path = strdup(hc)))
    goto oom;
  r->hc_interval_ms = (int)json_integer_value(json_object_get(row, "healthcheck_interval_ms"));
  r->hc_timeout_ms = (int)json_integer_value(json_object_get(row, "healthcheck_timeout_ms"));
  r->healthy_threshold = (int)json_integer_value(json_object_get(row, "healthy_threshold"));
  r->unhealthy_threshold = (int)json_integer_value(json_object_get(row, "unhealthy_threshold"));
  r->passive_failures = (int)json_integer_value(json_object_get(row, "passive_failures"));
  r->passive_cooldown_ms = (int)json_integer_value(json_object_get(row, "passive_cooldown_ms"));
  r->auth_key = strcmp(str(row, "auth_mode"), "none") != 0;
  snprintf(r->key_query_param, sizeof(r->key_query_param), "%s", str(row, "key_query_param"));
  return load_targets(store, r, err, errlen);
oom:
  snprintf(err, errlen, "out of memory");
  return -1;
}

static int route_cmp(const void *a, const void *b) {
  const gw_route_t *x = a, *y = b;
  if (x->prefix_len != y->prefix_len)
    return x->prefix_len > y->prefix_len ? -1 : 1;
  if ((x->nhosts > 0) != (y->nhosts > 0))
    return x->nhosts > 0 ? -1 : 1;
  return strcmp(x->slug, y->slug);
}

int gw_snapshot_load(struct tg_store *store, gw_policy_t *pol, uint64_t gen, gw_snapshot_t **out,
                     char *err, size_t errlen) {
  gw_snapshot_t *snap = calloc(1, sizeof(*snap));
  char after[GW_ID_LEN + 1] = "", next[GW_ID_LEN + 1];
  *out = NULL;
  if (!snap) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  snap->gen = gen;
  do {
    json_t *rows = NULL;
    tg_list_query_t q = {.after = after[0] ? after : NULL, .limit = TG_LIST_MAX};
    tg_problem_t p = {0};
    if (tg_store_list(store, TG_ENT_API, &q, &rows, next, &p)) {
      snprintf(err, errlen, "apis: %s", p.detail);
      goto fail;
    }
    size_t n = json_array_size(rows);
    gw_route_t *grown = realloc(snap->routes, sizeof(gw_route_t) * ((size_t)snap->nroutes + n + 1));
    if (!grown) {
      json_decref(rows);
      snprintf(err, errlen, "out of memory");
      goto fail;
    }
    snap->routes = grown;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
      if (route_from_row(store, row, &snap->routes[snap->nroutes], err, errlen) != 0) {
        route_free(&snap->routes[snap->nroutes]);
        json_decref(rows);
        goto fail;
      }
      snap->routes[snap->nroutes].api_no =
          pol ? gw_policy_api_no(pol, snap->routes[snap->nroutes].api_id) : 0;
      snap->nroutes++;
    }
    json_decref(rows);
    memcpy(after, next, sizeof(after));
  } while (next[0]);
  if (snap->nroutes > 1)
    qsort(snap->routes, (size_t)snap->nroutes, sizeof(gw_route_t), route_cmp);
  *out = snap;
  return 0;
fail:
  gw_snapshot_free(snap);
  return -1;
}
