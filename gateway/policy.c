/*
 * policy.c - keys, apps, developers, subscriptions and plans in memory
 * (see policy.h for who reads, who writes, and why nothing is locked).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/store.h"
#include "core/util.h"
#include "gateway/policy.h"

/* ---- config-thread maps: id -> record ------------------------------------ */

typedef struct idmap_slot {
  void *rec;     /* each record type starts with its id (char[31]) */
  uint32_t hash; /* rec's id hash: a probe reads the record only when it
                  * matches, and growing reads no record at all (with a
                  * million keys, those reads were most of the start-up) */
} idmap_slot_t;

typedef struct idmap {
  idmap_slot_t *slot;
  size_t cap, n;
} idmap_t;

static uint32_t str_hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return (uint32_t)(h ^ (h >> 32));
}

/* The slot holding the record with this id, or the empty slot where it
 * would go. */
static idmap_slot_t *idmap_find(const idmap_t *m, const char *id, uint32_t h) {
  size_t i = h & (m->cap - 1);
  while (m->slot[i].rec && (m->slot[i].hash != h || strcmp((const char *)m->slot[i].rec, id) != 0))
    i = (i + 1) & (m->cap - 1);
  return &m->slot[i];
}

static void *idmap_get(const idmap_t *m, const char *id) {
  return m->cap ? idmap_find(m, id, str_hash(id))->rec : NULL;
}

/* Put rec in the slot of the record with the same id (which must exist). */
static void idmap_replace(idmap_t *m, void *rec) {
  idmap_find(m, (const char *)rec, str_hash((const char *)rec))->rec = rec;
}

static bool idmap_put(idmap_t *m, void *rec) {
  if ((m->n + 1) * 2 > m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    idmap_slot_t *slot = calloc(cap, sizeof(*slot));
    if (!slot)
      return false;
    for (size_t j = 0; j < m->cap; j++) {
      if (!m->slot[j].rec)
        continue;
      size_t i = m->slot[j].hash & (cap - 1);
      while (slot[i].rec)
        i = (i + 1) & (cap - 1);
      slot[i] = m->slot[j];
    }
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
  }
  uint32_t h = str_hash((const char *)rec); /* callers put only ids not yet present */
  size_t i = h & (m->cap - 1);
  while (m->slot[i].rec)
    i = (i + 1) & (m->cap - 1);
  m->slot[i].rec = rec;
  m->slot[i].hash = h;
  m->n++;
  return true;
}

/* ---- shared tables: single writer, lock-free readers ----------------------- */

typedef struct ptrtab {
  size_t mask;
  _Atomic(void *) slot[];
} ptrtab_t;

typedef struct retired {
  void *ptr;
  uint64_t epoch; /* freeable once every worker is past it */
} retired_t;

/* A plan id with its current record and the subscriptions that use it. */
typedef struct plan_ent {
  char id[GW_POL_ID_LEN + 1];
  gw_plan_t *cur;
  gw_sub_t *subs;
} plan_ent_t;

#define API_MAX 65536

struct gw_policy {
  _Atomic(ptrtab_t *) keys; /* digest -> gw_key_t */
  _Atomic(ptrtab_t *) subs; /* app no << 32 | api no -> gw_sub_t */
  size_t nkeys, nsubs;
  _Atomic size_t nkeys_pub; /* nkeys, for other threads */
  _Atomic uint64_t epoch;
  uint64_t (*epoch_min)(void *ctx);
  void *epoch_ctx;
  retired_t *retired;
  size_t nretired, capretired;
  /* config thread only */
  idmap_t key_ids, app_ids, dev_ids, sub_ids, plan_ids;
  uint32_t next_app_no;
  gw_plan_t **old_plans; /* replaced plan records: kept, as requests may hold them */
  size_t nold_plans, capold_plans;
  /* API numbers: written by the config thread, read by the metering thread */
  pthread_mutex_t api_lock;
  char (*api_ids)[GW_POL_ID_LEN + 1];
  uint32_t napis;
};

static ptrtab_t *ptrtab_new(size_t cap) {
  ptrtab_t *t = calloc(1, sizeof(*t) + cap * sizeof(t->slot[0]));
  if (t)
    t->mask = cap - 1;
  return t;
}

static uint64_t digest_hash(const unsigned char *d) {
  uint64_t h; /* a keyed BLAKE2b digest: its bytes are already uniform */
  memcpy(&h, d, sizeof(h));
  return h;
}

static uint64_t sub_hash(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  return k;
}

static uint64_t key_hashof(const void *rec) {
  return digest_hash(((const gw_key_t *)rec)->digest);
}

static uint64_t sub_hashof(const void *rec) {
  const gw_sub_t *s = rec;
  return sub_hash((uint64_t)s->app->no << 32 | s->api_no);
}

static void retire(gw_policy_t *pol, void *ptr) {
  if (pol->nretired == pol->capretired) {
    size_t cap = pol->capretired ? pol->capretired * 2 : 16;
    retired_t *r = realloc(pol->retired, cap * sizeof(*r));
    if (!r) {
      /* cannot remember it: leaking is safe, freeing under a reader is not */
      return;
    }
    pol->retired = r;
    pol->capretired = cap;
  }
  uint64_t e = atomic_fetch_add(&pol->epoch, 1) + 1;
  pol->retired[pol->nretired++] = (retired_t){ptr, e};
}

void gw_policy_collect(gw_policy_t *pol) {
  uint64_t min = pol->epoch_min ? pol->epoch_min(pol->epoch_ctx) : UINT64_MAX;
  size_t kept = 0;
  for (size_t i = 0; i < pol->nretired; i++) {
    if (pol->retired[i].epoch <= min)
      free(pol->retired[i].ptr);
    else
      pol->retired[kept++] = pol->retired[i];
  }
  pol->nretired = kept;
}

/* Insert rec (not yet present) into *tabp, growing it at half load. */
static bool tab_insert(gw_policy_t *pol, _Atomic(ptrtab_t *) *tabp, size_t *n, void *rec,
                       uint64_t (*hashof)(const void *)) {
  ptrtab_t *t = atomic_load_explicit(tabp, memory_order_relaxed);
  if ((*n + 1) * 2 > t->mask + 1) {
    ptrtab_t *g = ptrtab_new((t->mask + 1) * 2);
    if (!g)
      return false;
    for (size_t j = 0; j <= t->mask; j++) {
      void *r = atomic_load_explicit(&t->slot[j], memory_order_relaxed);
      if (!r)
        continue;
      size_t i = hashof(r) & g->mask;
      while (atomic_load_explicit(&g->slot[i], memory_order_relaxed))
        i = (i + 1) & g->mask;
      atomic_store_explicit(&g->slot[i], r, memory_order_relaxed);
    }
    atomic_store_explicit(tabp, g, memory_order_release);
    retire(pol, t);
    t = g;
  }
  size_t i = hashof(rec) & t->mask;
  while (atomic_load_explicit(&t->slot[i], memory_order_relaxed))
    i = (i + 1) & t->mask;
  atomic_store_explicit(&t->slot[i], rec, memory_order_release);
  (*n)++;
  return true;
}

gw_policy_t *gw_policy_new(uint64_t (*epoch_min)(void *ctx), void *ctx) {
  gw_policy_t *pol = calloc(1, sizeof(*pol));
  if (!pol)
    return NULL;
  ptrtab_t *k = ptrtab_new(1024), *s = ptrtab_new(1024);
  pol->api_ids = calloc(API_MAX, sizeof(*pol->api_ids));
  if (!k || !s || !pol->api_ids) {
    free(k);
    free(s);
    free(pol->api_ids);
    free(pol);
    return NULL;
  }
  atomic_init(&pol->keys, k);
  atomic_init(&pol->subs, s);
  atomic_init(&pol->epoch, 1);
  pol->epoch_min = epoch_min;
  pol->epoch_ctx = ctx;
  pthread_mutex_init(&pol->api_lock, NULL);
  pol->napis = 1; /* 0 means "no API" */
  return pol;
}

static void idmap_free_records(idmap_t *m) {
  for (size_t i = 0; i < m->cap; i++)
    free(m->slot[i].rec);
  free(m->slot);
}

void gw_policy_free(gw_policy_t *pol) {
  if (!pol)
    return;
  for (size_t i = 0; i < pol->plan_ids.cap; i++) {
    plan_ent_t *pe = pol->plan_ids.slot[i].rec;
    if (pe)
      free(pe->cur);
  }
  idmap_free_records(&pol->plan_ids);
  idmap_free_records(&pol->key_ids);
  idmap_free_records(&pol->app_ids);
  idmap_free_records(&pol->dev_ids);
  idmap_free_records(&pol->sub_ids);
  for (size_t i = 0; i < pol->nold_plans; i++)
    free(pol->old_plans[i]);
  free(pol->old_plans);
  for (size_t i = 0; i < pol->nretired; i++)
    free(pol->retired[i].ptr);
  free(pol->retired);
  free(atomic_load(&pol->keys));
  free(atomic_load(&pol->subs));
  pthread_mutex_destroy(&pol->api_lock);
  free(pol->api_ids);
  free(pol);
}

uint64_t gw_policy_epoch(const gw_policy_t *pol) {
  return atomic_load_explicit(&((gw_policy_t *)pol)->epoch, memory_order_acquire);
}

size_t gw_policy_nkeys(const gw_policy_t *pol) {
  return atomic_load_explicit(&((gw_policy_t *)pol)->nkeys_pub, memory_order_relaxed);
}

/* ---- worker lookups --------------------------------------------------------- */

const gw_key_t *gw_policy_key(const gw_policy_t *pol, const unsigned char digest[TG_DIGEST_BYTES]) {
  ptrtab_t *t = atomic_load_explicit(&((gw_policy_t *)pol)->keys, memory_order_acquire);
  for (size_t i = digest_hash(digest) & t->mask;; i = (i + 1) & t->mask) {
    const gw_key_t *k = atomic_load_explicit(&t->slot[i], memory_order_acquire);
    if (!k)
      return NULL;
    if (memcmp(k->digest, digest, TG_DIGEST_BYTES) == 0)
      return k;
  }
}

gw_sub_t *gw_policy_sub(const gw_policy_t *pol, uint32_t app_no, uint32_t api_no) {
  ptrtab_t *t = atomic_load_explicit(&((gw_policy_t *)pol)->subs, memory_order_acquire);
  for (size_t i = sub_hash((uint64_t)app_no << 32 | api_no) & t->mask;; i = (i + 1) & t->mask) {
    gw_sub_t *s = atomic_load_explicit(&t->slot[i], memory_order_acquire);
    if (!s)
      return NULL;
    if (s->app->no == app_no && s->api_no == api_no)
      return s;
  }
}

/* The slot holding app x API, to replace a cancelled subscription with a
 * new one (config thread). */
static _Atomic(void *) *sub_slot(gw_policy_t *pol, uint32_t app_no, uint32_t api_no) {
  ptrtab_t *t = atomic_load_explicit(&pol->subs, memory_order_relaxed);
  for (size_t i = sub_hash((uint64_t)app_no << 32 | api_no) & t->mask;; i = (i + 1) & t->mask) {
    gw_sub_t *s = atomic_load_explicit(&t->slot[i], memory_order_relaxed);
    if (!s)
      return NULL;
    if (s->app->no == app_no && s->api_no == api_no)
      return &t->slot[i];
  }
}

/* ---- API numbers ------------------------------------------------------------ */

uint32_t gw_policy_api_no(gw_policy_t *pol, const char *api_id) {
  pthread_mutex_lock(&pol->api_lock);
  uint32_t no = 0;
  for (uint32_t i = 1; i < pol->napis; i++)
    if (strcmp(pol->api_ids[i], api_id) == 0) {
      no = i;
      break;
    }
  if (!no && pol->napis < API_MAX) {
    no = pol->napis++;
    snprintf(pol->api_ids[no], sizeof(pol->api_ids[no]), "%s", api_id);
  }
  pthread_mutex_unlock(&pol->api_lock);
  return no;
}

void gw_policy_api_id(gw_policy_t *pol, uint32_t api_no, char out[GW_POL_ID_LEN + 1]) {
  pthread_mutex_lock(&pol->api_lock);
  snprintf(out, GW_POL_ID_LEN + 1, "%s", api_no < pol->napis ? pol->api_ids[api_no] : "");
  pthread_mutex_unlock(&pol->api_lock);
}

/* ---- loading rows -------------------------------------------------------------- */

typedef struct load_ctx {
  gw_policy_t *pol;
  const char *err;
  tg_scan_cb cb; /* gw_policy_refresh: the row function behind counted_row */
  int rows;
  bool fresh; /* the map was empty when the scan began: ids are unique in a
               * table, so no row of it can be there already (a million
               * look-ups that would all miss, a fifth of the start-up) */
} load_ctx_t;

static const char *vtext(const tg_value_t *v) {
  return v->type == TG_V_TEXT ? v->s : "";
}

static int64_t vint(const tg_value_t *v) {
  return v->type == TG_V_INT ? v->i : 0;
}

static int status_of(const char *s) {
  if (strcmp(s, "active") == 0)
    return GW_ST_ACTIVE;
  if (strcmp(s, "pending") == 0)
    return GW_ST_PENDING;
  if (strcmp(s, "suspended") == 0)
    return GW_ST_SUSPENDED;
  return GW_ST_GONE; /* deleted, cancelled, revoked */
}

/* src into dst[0..cap), cut and terminated: snprintf's result without its
 * format parsing (two of these per key at start-up). */
static void copy_str(char *dst, size_t cap, const char *src) {
  size_t n = strnlen(src, cap - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

static void copy_id(char dst[GW_POL_ID_LEN + 1], const char *src) {
  copy_str(dst, GW_POL_ID_LEN + 1, src);
}

/* plans: id, api_id, slug, rate_per_second, rate_per_minute, rate_per_hour,
 * quota_per_day, quota_per_month */
static const char *const plan_cols[] = {"id",
                                        "slug",
                                        "rate_per_second",
                                        "rate_per_minute",
                                        "rate_per_hour",
                                        "quota_per_day",
                                        "quota_per_month"};

static int plan_row(const tg_value_t *v, int n, void *ctx) {
  (void)n;
  load_ctx_t *lc = ctx;
  gw_policy_t *pol = lc->pol;
  gw_plan_t *np = calloc(1, sizeof(*np));
  if (!np)
    return lc->err = "out of memory", -1;
  copy_id(np->id, vtext(&v[0]));
  snprintf(np->slug, sizeof(np->slug), "%s", vtext(&v[1]));
  for (int i = 0; i < GW_LIM_N; i++)
    np->limit[i] = vint(&v[2 + i]);
  static const char *const names[GW_LIM_N] = {"second", "minute", "hour", "day", "month"};
  static const int64_t windows[3] = {1, 60, 3600};
  for (int i = 0; i < GW_LIM_N; i++) {
    if (np->limit[i] <= 0)
      continue;
    /* a month's w is its length in seconds: the longest, 31 days, stands
     * for every month (the RateLimit field's t gives the exact reset) */
    int k = snprintf(np->policy_hdr + np->policy_len, sizeof(np->policy_hdr) - np->policy_len,
                     "%s\"%s\";q=%lld;w=%lld", np->policy_len ? ", " : "", names[i],
                     (long long)np->limit[i],
                     (long long)(i < 3             ? windows[i]
                                 : i == GW_LIM_DAY ? 86400
                                                   : 31 * 86400));
    if (k > 0 && (size_t)k < sizeof(np->policy_hdr) - np->policy_len)
      np->policy_len += (size_t)k;
  }
  plan_ent_t *pe = idmap_get(&pol->plan_ids, np->id);
  if (!pe) {
    if (!(pe = calloc(1, sizeof(*pe))) ||
        (copy_id(pe->id, np->id), !idmap_put(&pol->plan_ids, pe))) {
      free(pe);
      free(np);
      return lc->err = "out of memory", -1;
    }
    pe->cur = np;
    return 0;
  }
  /* a new immutable record; requests in flight may still hold the old one */
  if (pol->nold_plans == pol->capold_plans) {
    size_t cap = pol->capold_plans ? pol->capold_plans * 2 : 16;
    gw_plan_t **a = realloc(pol->old_plans, cap * sizeof(*a));
    if (!a) {
      free(np);
      return lc->err = "out of memory", -1;
    }
    pol->old_plans = a;
    pol->capold_plans = cap;
  }
  pol->old_plans[pol->nold_plans++] = pe->cur;
  pe->cur = np;
  for (gw_sub_t *s = pe->subs; s; s = s->plan_next)
    atomic_store_explicit(&s->plan, np, memory_order_release);
  return 0;
}

static const char *const dev_cols[] = {"id", "status"};

static int dev_row(const tg_value_t *v, int n, void *ctx) {
  (void)n;
  load_ctx_t *lc = ctx;
  gw_dev_t *d = idmap_get(&lc->pol->dev_ids, vtext(&v[0]));
  if (!d) {
    if (!(d = calloc(1, sizeof(*d))))
      return lc->err = "out of memory", -1;
    copy_id(d->id, vtext(&v[0]));
    if (!idmap_put(&lc->pol->dev_ids, d)) {
      free(d);
      return lc->err = "out of memory", -1;
    }
  }
  atomic_store_explicit(&d->status, status_of(vtext(&v[1])), memory_order_release);
  return 0;
}

/* A developer or app referred to before its own row was read (a change
 * applied out of order): a placeholder that its row will fill in. */
static gw_dev_t *dev_ref(gw_policy_t *pol, const char *id) {
  gw_dev_t *d = idmap_get(&pol->dev_ids, id);
  if (d)
    return d;
  if (!(d = calloc(1, sizeof(*d))))
    return NULL;
  copy_id(d->id, id);
  atomic_init(&d->status, GW_ST_GONE);
  if (!idmap_put(&pol->dev_ids, d)) {
    free(d);
    return NULL;
  }
  return d;
}

static gw_app_t *app_ref(gw_policy_t *pol, const char *id) {
  gw_app_t *a = idmap_get(&pol->app_ids, id);
  if (a)
    return a;
  if (!(a = calloc(1, sizeof(*a))))
    return NULL;
  copy_id(a->id, id);
  a->no = ++pol->next_app_no;
  atomic_init(&a->status, GW_ST_GONE);
  if (!idmap_put(&pol->app_ids, a)) {
    free(a);
    return NULL;
  }
  return a;
}

static const char *const app_cols[] = {"id", "developer_id", "status"};

static int app_row(const tg_value_t *v, int n, void *ctx) {
  (void)n;
  load_ctx_t *lc = ctx;
  gw_app_t *a = app_ref(lc->pol, vtext(&v[0]));
  gw_dev_t *d = a ? dev_ref(lc->pol, vtext(&v[1])) : NULL;
  if (!d)
    return lc->err = "out of memory", -1;
  atomic_store_explicit(&a->dev, d, memory_order_release);
  atomic_store_explicit(&a->status, status_of(vtext(&v[2])), memory_order_release);
  return 0;
}

static const char *const sub_cols[] = {"id", "app_id", "api_id", "plan_id", "status"};

static void plan_unlink(gw_policy_t *pol, gw_sub_t *s) {
  plan_ent_t *pe = idmap_get(&pol->plan_ids, s->plan_id);
  if (!pe)
    return;
  for (gw_sub_t **pp = &pe->subs; *pp; pp = &(*pp)->plan_next)
    if (*pp == s) {
      *pp = s->plan_next;
      s->plan_next = NULL;
      return;
    }
}

static int sub_row(const tg_value_t *v, int n, void *ctx) {
  (void)n;
  load_ctx_t *lc = ctx;
  gw_policy_t *pol = lc->pol;
  const char *plan_id = vtext(&v[3]);
  plan_ent_t *pe = idmap_get(&pol->plan_ids, plan_id);
  if (!pe)
    return 0; /* its plan row comes later in the change log: applied then */
  int status = status_of(vtext(&v[4]));
  gw_sub_t *s = idmap_get(&pol->sub_ids, vtext(&v[0]));
  if (!s) {
    gw_app_t *a = app_ref(pol, vtext(&v[1]));
    if (!a || !(s = calloc(1, sizeof(*s))))
      return lc->err = "out of memory", -1;
    copy_id(s->id, vtext(&v[0]));
    s->app = a;
    s->api_no = gw_policy_api_no(pol, vtext(&v[2]));
    atomic_init(&s->status, status);
    atomic_init(&s->plan, pe->cur);
    if (!idmap_put(&pol->sub_ids, s)) {
      free(s);
      return lc->err = "out of memory", -1;
    }
    _Atomic(void *) *slot = sub_slot(pol, a->no, s->api_no);
    if (slot) {
      /* app x API had a subscription: the live one takes the slot (there
       * is at most one live subscription per app and API) */
      gw_sub_t *old = atomic_load_explicit(slot, memory_order_relaxed);
      if (status != GW_ST_GONE || atomic_load(&old->status) == GW_ST_GONE)
        atomic_store_explicit(slot, s, memory_order_release);
    } else if (!tab_insert(pol, &pol->subs, &pol->nsubs, s, sub_hashof)) {
      return lc->err = "out of memory", -1;
    }
  } else {
    atomic_store_explicit(&s->status, status, memory_order_release);
    if (strcmp(s->plan_id, plan_id) != 0)
      plan_unlink(pol, s);
    atomic_store_explicit(&s->plan, pe->cur, memory_order_release);
    if (status != GW_ST_GONE) {
      _Atomic(void *) *slot = sub_slot(pol, s->app->no, s->api_no);
      if (slot)
        atomic_store_explicit(slot, s, memory_order_release);
    }
  }
  if (strcmp(s->plan_id, plan_id) != 0) {
    copy_id(s->plan_id, plan_id);
    s->plan_next = pe->subs;
    pe->subs = s;
  }
  return 0;
}

static const char *const key_cols[] = {"id", "app_id", "prefix", "digest", "status", "expires_at"};

static int key_row(const tg_value_t *v, int n, void *ctx) {
  (void)n;
  load_ctx_t *lc = ctx;
  gw_policy_t *pol = lc->pol;
  if (v[3].type != TG_V_BLOB || v[3].len != TG_DIGEST_BYTES)
    return 0; /* the schema makes this impossible */
  gw_app_t *a = app_ref(pol, vtext(&v[1]));
  if (!a)
    return lc->err = "out of memory", -1;
  gw_key_t *k = lc->fresh ? NULL : idmap_get(&pol->key_ids, vtext(&v[0]));
  bool known = k != NULL;
  if (k && memcmp(k->digest, v[3].s, TG_DIGEST_BYTES) != 0) {
    /* a new digest is a new secret: the old one stops working */
    atomic_store_explicit(&k->status, GW_ST_GONE, memory_order_release);
    k = NULL;
  }
  if (!k) {
    if (!(k = calloc(1, sizeof(*k))))
      return lc->err = "out of memory", -1;
    memcpy(k->digest, v[3].s, TG_DIGEST_BYTES);
    copy_id(k->id, vtext(&v[0]));
    copy_str(k->prefix, sizeof(k->prefix), vtext(&v[2]));
    atomic_init(&k->status, status_of(vtext(&v[4])));
    atomic_init(&k->expires_at, vint(&v[5]));
    atomic_init(&k->app, a);
    /* an older record with this id stays in the map's chain only if the
     * digest changed: the map keeps the newest */
    if (known) {
      idmap_replace(&pol->key_ids, k); /* the same id: its slot now holds the new record */
    } else if (!idmap_put(&pol->key_ids, k)) {
      free(k);
      return lc->err = "out of memory", -1;
    }
    if (!tab_insert(pol, &pol->keys, &pol->nkeys, k, key_hashof))
      return lc->err = "out of memory", -1;
    atomic_store_explicit(&pol->nkeys_pub, pol->nkeys, memory_order_relaxed);
    return 0;
  }
  atomic_store_explicit(&k->app, a, memory_order_release);
  atomic_store_explicit(&k->expires_at, vint(&v[5]), memory_order_release);
  atomic_store_explicit(&k->status, status_of(vtext(&v[4])), memory_order_release);
  return 0;
}

typedef struct ent_scan {
  const char *entity;
  tg_entity_t ent;
  const char *const *cols;
  int ncols;
  tg_scan_cb cb;
} ent_scan_t;

/* Load order matters on the first load: plans before subscriptions. */
static const ent_scan_t scans[] = {
    {"plan", TG_ENT_PLAN, plan_cols, 7, plan_row},
    {"developer", TG_ENT_DEVELOPER, dev_cols, 2, dev_row},
    {"app", TG_ENT_APP, app_cols, 3, app_row},
    {"subscription", TG_ENT_SUBSCRIPTION, sub_cols, 5, sub_row},
    {"key", TG_ENT_KEY, key_cols, 6, key_row},
};

typedef struct seed_ctx {
  gw_policy_t *pol;
  int which;
  int64_t wall_s;
} seed_ctx_t;

static int seed_row(const char *sub_id, int64_t calls, void *ctx) {
  seed_ctx_t *sc = ctx;
  gw_sub_t *s = idmap_get(&sc->pol->sub_ids, sub_id);
  if (s)
    gw_quota_seed(s, sc->which, sc->wall_s, calls);
  return 0;
}

int gw_policy_load(gw_policy_t *pol, struct tg_store *store, int64_t now_s, char *err,
                   size_t errlen) {
  for (size_t i = 0; i < sizeof(scans) / sizeof(scans[0]); i++) {
    load_ctx_t lc = {pol, NULL, NULL, 0, scans[i].ent == TG_ENT_KEY && pol->key_ids.n == 0};
    tg_problem_t p;
    tg_problem_clear(&p);
    int rc = tg_store_scan(store, scans[i].ent, NULL, scans[i].cols, scans[i].ncols, scans[i].cb,
                           &lc, &p);
    if (rc != TG_OK) {
      snprintf(err, errlen, "loading %ss: %s", scans[i].entity, lc.err ? lc.err : p.detail);
      return -1;
    }
  }
  for (int which = 0; which < 2; which++) {
    seed_ctx_t sc = {pol, which, now_s};
    tg_problem_t p;
    tg_problem_clear(&p);
    if (tg_store_usage_calls_since(store, gw_quota_period_start(which, now_s), seed_row, &sc, &p) !=
        TG_OK) {
      snprintf(err, errlen, "seeding quotas from usage: %s", p.detail);
      return -1;
    }
  }
  return 0;
}

static int counted_row(const tg_value_t *v, int n, void *ctx) {
  load_ctx_t *lc = ctx;
  lc->rows++;
  return lc->cb(v, n, ctx);
}

int gw_policy_refresh(gw_policy_t *pol, struct tg_store *store, const char *entity, const char *id,
                      char *err, size_t errlen) {
  for (size_t i = 0; i < sizeof(scans) / sizeof(scans[0]); i++) {
    const ent_scan_t *sc = &scans[i];
    if (strcmp(sc->entity, entity) != 0)
      continue;
    load_ctx_t lc = {pol, NULL, sc->cb, 0, false};
    tg_problem_t p;
    tg_problem_clear(&p);
    if (tg_store_scan(store, sc->ent, id, sc->cols, sc->ncols, counted_row, &lc, &p) != TG_OK) {
      snprintf(err, errlen, "reloading %s %s: %s", entity, id, lc.err ? lc.err : p.detail);
      return -1;
    }
    if (lc.rows > 0)
      return 0;
    /* the row was deleted: whatever used it stops working */
    _Atomic int *st = NULL;
    void *rec;
    if (sc->ent == TG_ENT_KEY && (rec = idmap_get(&pol->key_ids, id)))
      st = &((gw_key_t *)rec)->status;
    else if (sc->ent == TG_ENT_APP && (rec = idmap_get(&pol->app_ids, id)))
      st = &((gw_app_t *)rec)->status;
    else if (sc->ent == TG_ENT_DEVELOPER && (rec = idmap_get(&pol->dev_ids, id)))
      st = &((gw_dev_t *)rec)->status;
    else if (sc->ent == TG_ENT_SUBSCRIPTION && (rec = idmap_get(&pol->sub_ids, id)))
      st = &((gw_sub_t *)rec)->status;
    if (st)
      atomic_store_explicit(st, GW_ST_GONE, memory_order_release);
    return 0;
  }
  return 0;
}

/* ---- limits ------------------------------------------------------------------------ */

#define QUOTA_BITS 44
#define QUOTA_MASK ((UINT64_C(1) << QUOTA_BITS) - 1)

static const int64_t rate_window_s[GW_RATES] = {1, 60, 3600};

/* Calendar arithmetic on the proleptic Gregorian calendar (Howard
 * Hinnant's days_from_civil and civil_from_days): exact for any int64
 * second a quota can meet, and no gmtime_r/timegm on the request path
 * (they took ~500 instructions a request). */
static int64_t days_from_civil(int64_t y, int m /* 1..12 */) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5; /* the 1st of the month */
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static void civil(int64_t wall_s, int64_t *y, int *m) {
  const int64_t z = (wall_s >= 0 ? wall_s : wall_s - 86399) / 86400 + 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  const int mm = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (mm <= 2);
  *m = mm - 1; /* 0..11 */
}

/* Start and end (exclusive) of wall_s's UTC month, in seconds. */
static void month_bounds(int64_t wall_s, int64_t *start, int64_t *end) {
  int64_t y;
  int m;
  civil(wall_s, &y, &m);
  *start = days_from_civil(y, m + 1) * 86400;
  *end = (m == 11 ? days_from_civil(y + 1, 1) : days_from_civil(y, m + 2)) * 86400;
}

int64_t gw_quota_period(int which, int64_t wall_s) {
  if (which == 0)
    return wall_s / 86400;
  int64_t y;
  int m;
  civil(wall_s, &y, &m);
  return (y - 1970) * 12 + m;
}

int64_t gw_quota_period_start(int which, int64_t wall_s) {
  if (which == 0)
    return wall_s - wall_s % 86400;
  int64_t start, end;
  month_bounds(wall_s, &start, &end);
  return start;
}

int64_t gw_quota_period_end(int which, int64_t wall_s) {
  if (which == 0)
    return wall_s - wall_s % 86400 + 86400;
  int64_t start, end;
  month_bounds(wall_s, &start, &end);
  return end;
}

void gw_quota_seed(gw_sub_t *sub, int which, int64_t wall_s, int64_t calls) {
  uint64_t period = (uint64_t)gw_quota_period(which, wall_s);
  uint64_t c = calls < 0 ? 0 : ((uint64_t)calls > QUOTA_MASK ? QUOTA_MASK : (uint64_t)calls);
  atomic_store(&sub->used[which], period << QUOTA_BITS | c);
}

/* GCRA: one request at now. Returns the new TAT taken, or 0 when refused
 * (*wait_ns: how long until it would conform). */
static int64_t gcra_take(_Atomic int64_t *tatp, int64_t limit, int64_t window_s, int64_t now,
                         int64_t *wait_ns) {
  int64_t w = window_s * 1000000000;
  int64_t t = w / limit; /* emission interval */
  if (t < 1)
    t = 1;
  int64_t tat = atomic_load_explicit(tatp, memory_order_relaxed);
  for (;;) {
    int64_t base = tat > now ? tat : now;
    int64_t ntat = base + t;
    if (ntat - now > w) {
      *wait_ns = ntat - now - w;
      return 0;
    }
    if (atomic_compare_exchange_weak_explicit(tatp, &tat, ntat, memory_order_relaxed,
                                              memory_order_relaxed))
      return ntat;
  }
}

/* Quota: one more call in the period. Returns the count after it, or -1
 * when the quota is used up. */
static int64_t quota_take(_Atomic uint64_t *usedp, int64_t limit, uint64_t period) {
  uint64_t v = atomic_load_explicit(usedp, memory_order_relaxed);
  for (;;) {
    uint64_t used = (v >> QUOTA_BITS) == period ? v & QUOTA_MASK : 0;
    if ((int64_t)used + 1 > limit)
      return -1;
    uint64_t nv = period << QUOTA_BITS | (used + 1);
    if (atomic_compare_exchange_weak_explicit(usedp, &v, nv, memory_order_relaxed,
                                              memory_order_relaxed))
      return (int64_t)used + 1;
  }
}

static void quota_give(_Atomic uint64_t *usedp, uint64_t period) {
  uint64_t v = atomic_load_explicit(usedp, memory_order_relaxed);
  while ((v >> QUOTA_BITS) == period && (v & QUOTA_MASK) > 0)
    if (atomic_compare_exchange_weak_explicit(usedp, &v, v - 1, memory_order_relaxed,
                                              memory_order_relaxed))
      return;
}

static int state_cmp(const void *a, const void *b) {
  const gw_limit_state_t *x = a, *y = b;
  if (x->remaining != y->remaining)
    return x->remaining < y->remaining ? -1 : 1;
  if (x->reset_s != y->reset_s)
    return x->reset_s < y->reset_s ? -1 : 1;
  return x->policy - y->policy;
}

static int64_t ceil_s(int64_t ns) {
  return ns <= 0 ? 0 : (ns + 999999999) / 1000000000;
}

void gw_limits_take(gw_sub_t *sub, const gw_plan_t *plan, int64_t mono_ns, int64_t wall_s,
                    gw_verdict_t *v) {
  v->admitted = true;
  v->violated = -1;
  v->retry_after_ms = 0;
  v->nstates = 0;
  int64_t taken[GW_RATES] = {0};
  int64_t got[GW_LIM_N] = {0};
  int i;
  for (i = 0; i < GW_RATES; i++) {
    int64_t lim = plan->limit[i];
    if (lim <= 0)
      continue;
    int64_t wait = 0;
    taken[i] = gcra_take(&sub->tat[i], lim, rate_window_s[i], mono_ns, &wait);
    if (!taken[i]) {
      v->admitted = false;
      v->violated = i;
      v->retry_after_ms = (wait + 999999) / 1000000;
      break;
    }
  }
  uint64_t period[2] = {(uint64_t)gw_quota_period(0, wall_s), (uint64_t)gw_quota_period(1, wall_s)};
  int q = 0;
  if (v->admitted) {
    for (q = 0; q < 2; q++) {
      int64_t lim = plan->limit[GW_LIM_DAY + q];
      if (lim <= 0)
        continue;
      got[GW_LIM_DAY + q] = quota_take(&sub->used[q], lim, period[q]);
      if (got[GW_LIM_DAY + q] < 0) {
        v->admitted = false;
        v->violated = GW_LIM_DAY + q;
        v->retry_after_ms = (gw_quota_period_end(q, wall_s) - wall_s) * 1000;
        break;
      }
    }
  }
  if (!v->admitted) {
    /* give back what the other policies took */
    int64_t w_ns;
    for (int j = 0; j < GW_RATES; j++)
      if (taken[j]) {
        w_ns = rate_window_s[j] * 1000000000 / plan->limit[j];
        atomic_fetch_sub_explicit(&sub->tat[j], w_ns < 1 ? 1 : w_ns, memory_order_relaxed);
      }
    for (int j = 0; j < q && j < 2; j++)
      if (got[GW_LIM_DAY + j] > 0)
        quota_give(&sub->used[j], period[j]);
  }
  /* what each policy has left, for the headers */
  for (int j = 0; j < GW_LIM_N; j++) {
    int64_t lim = plan->limit[j];
    if (lim <= 0)
      continue;
    gw_limit_state_t *st = &v->states[v->nstates++];
    st->policy = j;
    st->limit = lim;
    if (j < GW_RATES) {
      int64_t w = rate_window_s[j] * 1000000000, t = w / lim;
      if (t < 1)
        t = 1;
      int64_t tat = atomic_load_explicit(&sub->tat[j], memory_order_relaxed);
      if (tat < mono_ns)
        tat = mono_ns;
      int64_t rem = (mono_ns + w - tat) / t;
      st->remaining = rem < 0 ? 0 : (rem > lim ? lim : rem);
      st->window_s = rate_window_s[j];
      st->reset_s = ceil_s(tat - mono_ns);
    } else {
      int qq = j - GW_LIM_DAY;
      uint64_t u = atomic_load_explicit(&sub->used[qq], memory_order_relaxed);
      int64_t used = (u >> QUOTA_BITS) == period[qq] ? (int64_t)(u & QUOTA_MASK) : 0;
      st->remaining = lim - used < 0 ? 0 : lim - used;
      st->window_s = gw_quota_period_end(qq, wall_s) - gw_quota_period_start(qq, wall_s);
      st->reset_s = gw_quota_period_end(qq, wall_s) - wall_s;
    }
  }
  /* tightest first; at most GW_LIM_N states: an insertion sort */
  for (int k = 1; k < v->nstates; k++)
    for (int j = k; j > 0 && state_cmp(&v->states[j], &v->states[j - 1]) < 0; j--) {
      gw_limit_state_t t = v->states[j];
      v->states[j] = v->states[j - 1];
      v->states[j - 1] = t;
    }
}
