/*
 * meter.c - per-worker usage tables and the metering thread (see meter.h).
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/store.h"
#include "core/util.h"
#include "gateway/gw.h"
#include "gateway/meter.h"

/* The ledger's reason words (core/store.h), in gw_reason_t order after
 * GW_R_NONE. */
_Static_assert(GW_R_N == TG_USAGE_REASONS + 1, "gw_reason_t and tg_usage_reasons differ");

const char *gw_reason_name(gw_reason_t r) {
  return r > GW_R_NONE && r < GW_R_N ? tg_usage_reasons[r - 1] : "";
}

/* ---- tables ------------------------------------------------------------------ */

_Static_assert(sizeof(gw_meter_cell_t) == 128, "a meter cell is two cache lines");

gw_meter_tab_t *gw_meter_tab_new(void) {
  gw_meter_tab_t *t = calloc(1, sizeof(*t));
  if (!t)
    return NULL;
  t->cap = 64;
  t->ncells = 32;
  t->slots = calloc(t->cap, sizeof(*t->slots));
  t->cells = malloc(t->ncells * sizeof(*t->cells));
  if (!t->slots || !t->cells) {
    gw_meter_tab_free(t);
    return NULL;
  }
  return t;
}

void gw_meter_tab_free(gw_meter_tab_t *t) {
  if (t) {
    free(t->slots);
    free(t->cells);
    free(t);
  }
}

void gw_meter_tab_clear(gw_meter_tab_t *t) {
  if (t->n) {
    memset(t->slots, 0, t->cap * sizeof(*t->slots));
    t->n = 0;
  }
}

static uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

static uint64_t key_hash(const gw_meter_key_t *k) {
  uint64_t h = k->minute;
  h = mix(h, (uint64_t)(uintptr_t)k->key);
  h = mix(h, (uint64_t)(uintptr_t)k->sub);
  h = mix(h, (uint64_t)(uintptr_t)k->plan);
  h = mix(h, (uint64_t)k->api_no << 16 | (uint64_t)k->status_class << 8 | k->reason);
  h ^= h >> 31;
  h *= 0x7fb5d329728ea185ull;
  return h ^ (h >> 27);
}

static bool key_eq(const gw_meter_key_t *a, const gw_meter_key_t *b) {
  return a->minute == b->minute && a->key == b->key && a->sub == b->sub && a->plan == b->plan &&
         a->api_no == b->api_no && a->status_class == b->status_class && a->reason == b->reason;
}

#define SLOT_TAG(h) ((h)&0xffffffff00000000ull)

/* Make room for one more cell: the index at most half full, the cells'
 * array with a free place. */
static bool tab_room(gw_meter_tab_t *t) {
  if (t->n == t->ncells) {
    gw_meter_cell_t *cells = realloc(t->cells, 2 * t->ncells * sizeof(*cells));
    if (!cells)
      return false;
    t->cells = cells;
    t->ncells *= 2;
  }
  if ((t->n + 1) * 2 > t->cap) {
    size_t cap = t->cap * 2;
    uint64_t *slots = calloc(cap, sizeof(*slots));
    if (!slots)
      return false;
    for (size_t j = 0; j < t->n; j++) {
      uint64_t h = key_hash(&t->cells[j].k);
      size_t i = h & (cap - 1);
      while (slots[i])
        i = (i + 1) & (cap - 1);
      slots[i] = SLOT_TAG(h) | (j + 1);
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
  }
  return true;
}

static gw_meter_cell_t *cell_for(gw_meter_tab_t *t, const gw_meter_key_t *k) {
  uint64_t h = key_hash(k);
  size_t i = h & (t->cap - 1);
  for (uint64_t s; (s = t->slots[i]) != 0; i = (i + 1) & (t->cap - 1)) {
    gw_meter_cell_t *c = &t->cells[(s & 0xffffffffu) - 1];
    if (SLOT_TAG(s) == SLOT_TAG(h) && key_eq(&c->k, k))
      return c;
  }
  size_t cap = t->cap;
  if (!tab_room(t))
    return NULL;
  if (t->cap != cap) /* the index was rebuilt: find the free slot anew */
    for (i = h & (t->cap - 1); t->slots[i]; i = (i + 1) & (t->cap - 1))
      ;
  gw_meter_cell_t *c = &t->cells[t->n];
  memset(c, 0, sizeof(*c));
  c->k = *k;
  t->slots[i] = SLOT_TAG(h) | (t->n + 1);
  t->n++;
  return c;
}

/* Bucket upper bounds in ms, as the ledger's h00..h13 (h14: above). */
static const int64_t bucket_ms[TG_USAGE_BUCKETS - 1] = {5,   10,  25,   50,   75,   100,  250,
                                                        500, 750, 1000, 2500, 5000, 7500, 10000};

int gw_meter_bucket(int64_t latency_us) {
  for (int i = 0; i < TG_USAGE_BUCKETS - 1; i++)
    if (latency_us <= bucket_ms[i] * 1000)
      return i;
  return TG_USAGE_BUCKETS - 1;
}

bool gw_meter_add(gw_meter_tab_t *t, const gw_meter_key_t *k, int64_t bytes_in, int64_t bytes_out,
                  int64_t latency_us) {
  gw_meter_cell_t *c = cell_for(t, k);
  if (!c)
    return false;
  if (latency_us < 0)
    latency_us = 0;
  c->calls++;
  c->bytes_in += bytes_in;
  c->bytes_out += bytes_out;
  c->latency_us += latency_us;
  c->h[gw_meter_bucket(latency_us)]++;
  return true;
}

bool gw_meter_merge_cell(gw_meter_tab_t *dst, const gw_meter_cell_t *s) {
  gw_meter_cell_t *d = cell_for(dst, &s->k);
  if (!d)
    return false;
  d->calls += s->calls;
  d->bytes_in += s->bytes_in;
  d->bytes_out += s->bytes_out;
  d->latency_us += s->latency_us;
  for (int b = 0; b < TG_USAGE_BUCKETS; b++)
    d->h[b] += s->h[b];
  return true;
}

bool gw_meter_merge(gw_meter_tab_t *dst, const gw_meter_tab_t *src) {
  for (size_t j = 0; j < src->n; j++)
    if (!gw_meter_merge_cell(dst, &src->cells[j]))
      return false;
  return true;
}

/* ---- the metering thread -------------------------------------------------------- */

static struct {
  gw_server_t *srv;
  tg_store_t *store;
  pthread_t thread;
  pthread_mutex_t lock; /* stop flag and stats */
  pthread_cond_t cond;
  bool stop, running;
  gw_meter_tab_t *pending;
  gw_meter_stats_t stats;
  bool failing;      /* the last flush failed: log recovery once */
  bool fold_failing; /* the last fold failed: the same */
} m = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

void gw_meter_stats(gw_meter_stats_t *out) {
  pthread_mutex_lock(&m.lock);
  *out = m.stats;
  pthread_mutex_unlock(&m.lock);
}

static void give_way(void);
static void pace_start(bool on);

/* Take what workers handed over (or, once they have exited, what they
 * hold) into the pending table. */
static void collect(bool workers_gone) {
  gw_server_t *srv = m.srv;
  for (int i = 0; i < srv->nworkers; i++) {
    gw_meter_slot_t *ms = &srv->meter[i];
    gw_meter_tab_t *t = atomic_exchange_explicit(&ms->out, NULL, memory_order_acquire);
    if (t) {
      if (!gw_meter_merge(m.pending, t))
        tg_log(TG_LOG_ERROR, "usage counters lost: out of memory", NULL);
      gw_meter_tab_clear(t);
      if (!workers_gone)
        give_way(); /* reading a table: ~140 KB for 1,000 keys */
      gw_meter_tab_t *none = NULL;
      if (!atomic_compare_exchange_strong(&ms->spare, &none, t))
        gw_meter_tab_free(t);
    }
    if (workers_gone && ms->cur) {
      if (!gw_meter_merge(m.pending, ms->cur))
        tg_log(TG_LOG_ERROR, "usage counters lost: out of memory", NULL);
      gw_meter_tab_clear(ms->cur);
    }
  }
}

/* Keep pending rows bounded while the store is unavailable. */
static void bound_pending(void) {
  int64_t max = tg_config_int(m.srv->cfg, "metering_max_pending");
  while ((int64_t)m.pending->n > max) {
    uint32_t oldest = UINT32_MAX;
    for (size_t i = 0; i < m.pending->n; i++)
      if (m.pending->cells[i].k.minute < oldest)
        oldest = m.pending->cells[i].k.minute;
    gw_meter_tab_t *keep = gw_meter_tab_new();
    if (!keep)
      return;
    uint64_t dropped = 0, calls = 0;
    for (size_t i = 0; i < m.pending->n; i++) {
      gw_meter_cell_t *c = &m.pending->cells[i];
      if (c->k.minute == oldest) {
        dropped++;
        calls += c->calls;
        continue;
      }
      gw_meter_merge_cell(keep, c);
    }
    gw_meter_tab_free(m.pending);
    m.pending = keep;
    char a[24], b[24], c[24];
    snprintf(a, sizeof(a), "%llu", (unsigned long long)dropped);
    snprintf(b, sizeof(b), "%llu", (unsigned long long)calls);
    snprintf(c, sizeof(c), "%lld", (long long)oldest * 60);
    tg_log(TG_LOG_ERROR, "usage rows dropped: the store has been unavailable too long", "rows", a,
           "calls", b, "minute", c, NULL);
    pthread_mutex_lock(&m.lock);
    m.stats.rows_dropped += dropped;
    pthread_mutex_unlock(&m.lock);
  }
}

/* Each flush appends one usage journal entry: a single INSERT of the
 * flush's rows, encoded (~0.7M instructions for 1,000 rows). Adding the
 * same rows to the ledger one by one took ~26M (~26,000 a row) and held
 * the store's write lock for the ~30 ms it took.
 *
 * The metering thread shares its core with a worker (it always does with
 * one worker a core), and the scheduler lets a thread that wakes after a
 * second's sleep run for a millisecond or more before the worker gets
 * the core back: requests slower than 300 us crowd into the first 1-3 ms
 * of every flush, and into a fold (bench/README.md, sixth session). So
 * the thread gives way (give_way) between slices of its work: between
 * workers' tables, every 256 rows built, before the journal insert,
 * before clearing its table, and every FLUSH_SLICE rows a fold writes.
 * After each slice it sleeps FLUSH_REST times as long as the slice took,
 * and only yields once the turn has lasted FLUSH_BUDGET of the interval.
 *
 * The fold, once a metering_fold_interval, still does the ledger's
 * SQLite work for the rows the journal sums up (one ledger row per key
 * and minute instead of per key and second), in steps of FOLD_STEP_ROWS
 * rows, each a write transaction of its own: a fold never holds the
 * write lock for long (one transaction for the whole of it put a
 * concurrent store write's p99 at 230-330 ms when it was spread thin). */
#define FLUSH_SLICE      8 /* rows written between two pauses */
#define FLUSH_REST       3 /* sleep this many times the slice's own time */
#define FLUSH_BUDGET     4 /* sleep only in the first 1/FLUSH_BUDGET of the interval */
#define FLUSH_NAP_MAX_US 1000

#define FOLD_RETRY_US 1000000 /* a failed fold is tried again after this */

typedef struct row_ids {
  char api[GW_POL_ID_LEN + 1];
} row_ids_t;

static struct {
  bool on; /* false at stop: no worker left to give way to */
  int64_t started_us, slice_us, budget_us;
} pace;

static void pace_start(bool on) {
  pace.on = on;
  pace.started_us = pace.slice_us = tg_mono_us();
  pace.budget_us = tg_config_int(m.srv->cfg, "metering_interval") * 1000 / FLUSH_BUDGET;
}

static void give_way(void) {
  if (!pace.on)
    return;
  int64_t now = tg_mono_us();
  int64_t nap = (now - pace.slice_us) * FLUSH_REST;
  if (now - pace.started_us < pace.budget_us && nap > 0) {
    struct timespec ts = {0, (long)(nap < FLUSH_NAP_MAX_US ? nap : FLUSH_NAP_MAX_US) * 1000};
    nanosleep(&ts, NULL);
  } else {
    sched_yield();
  }
  pace.slice_us = tg_mono_us();
}

/* Write pending rows as one journal entry (then keys' last_used_day,
 * paced by give_way while workers run). true: written (or nothing to). */
static bool flush(bool paced) {
  size_t n = m.pending->n;
  if (n == 0)
    return true;
  pace_start(paced);
  tg_usage_row_t *rows = calloc(n, sizeof(*rows));
  row_ids_t *ids = calloc(n, sizeof(*ids));
  const gw_meter_cell_t **src = calloc(n, sizeof(*src));
  if (!rows || !ids || !src) {
    free(rows);
    free(ids);
    free(src);
    return false;
  }
  size_t r = 0;
  for (size_t i = 0; i < m.pending->n; i++) {
    const gw_meter_cell_t *c = &m.pending->cells[i];
    tg_usage_row_t *u = &rows[r];
    const gw_key_t *k = c->k.key;
    const gw_app_t *app =
        k ? atomic_load_explicit(&((gw_key_t *)k)->app, memory_order_acquire) : NULL;
    const gw_dev_t *dev =
        app ? atomic_load_explicit(&((gw_app_t *)app)->dev, memory_order_acquire) : NULL;
    gw_policy_api_id(m.srv->policy, c->k.api_no, ids[r].api);
    u->granularity = 60;
    u->period_start = (int64_t)c->k.minute * 60;
    u->key_id = k ? k->id : "";
    u->app_id = app ? app->id : "";
    u->developer_id = dev ? dev->id : "";
    u->api_id = ids[r].api;
    u->plan_id = c->k.plan ? c->k.plan->id : "";
    u->subscription_id = c->k.sub ? c->k.sub->id : "";
    u->status_class = c->k.status_class;
    u->reason = gw_reason_name((gw_reason_t)c->k.reason);
    u->calls = c->calls;
    u->bytes_in = c->bytes_in;
    u->bytes_out = c->bytes_out;
    u->latency_us_sum = c->latency_us;
    for (int b = 0; b < TG_USAGE_BUCKETS; b++)
      u->h[b] = c->h[b];
    src[r] = c;
    if (++r % 256 == 0)
      give_way();
  }
  tg_problem_t p;
  tg_problem_clear(&p);
  /* one journal entry: all or nothing; building the rows was a slice */
  give_way();
  int rc = tg_store_usage_journal(m.store, rows, r, tg_now_ms() / 1000, &p);
  if (rc == TG_OK) {
    /* keys' last_used_day: written once per key and day, in a transaction
     * of their own (bookkeeping, not a change of the key; a failure here
     * loses no usage) */
    tg_problem_t q;
    tg_problem_clear(&q);
    bool open = false;
    size_t touched = 0;
    for (size_t i = 0; i < r; i++) {
      gw_key_t *k = (gw_key_t *)src[i]->k.key;
      int64_t day = (int64_t)src[i]->k.minute * 60 / 86400 * 86400;
      if (!k || src[i]->k.status_class == 0 ||
          atomic_load_explicit(&k->last_used_day, memory_order_relaxed) >= day)
        continue;
      if (!open && !(open = tg_store_begin(m.store, &q) == TG_OK))
        break;
      if (tg_store_touch(m.store, TG_ENT_KEY, k->id, "last_used_day", day, &q) != TG_OK)
        break;
      src[touched++] = src[i]; /* those written, for the commit below */
      if (touched % FLUSH_SLICE == 0)
        give_way();
    }
    if (open && tg_store_commit(m.store, &q) == TG_OK) {
      for (size_t i = 0; i < touched; i++) {
        int64_t day = (int64_t)src[i]->k.minute * 60 / 86400 * 86400;
        atomic_store_explicit(&((gw_key_t *)src[i]->k.key)->last_used_day, day,
                              memory_order_relaxed);
      }
    } else if (open) {
      tg_store_rollback(m.store); /* not kept: the next flush tries again */
    }
  }
  free(rows);
  free(ids);
  free(src);
  pthread_mutex_lock(&m.lock);
  if (rc == TG_OK) {
    m.stats.flushes++;
    m.stats.rows_written += r;
    m.stats.last_flush_ms = tg_now_ms();
  } else {
    m.stats.flush_failures++;
  }
  pthread_mutex_unlock(&m.lock);
  if (rc != TG_OK) {
    if (!m.failing) {
      char nb[24];
      snprintf(nb, sizeof(nb), "%zu", r);
      tg_log(TG_LOG_WARN, "usage flush failed; counters kept, retrying", "error", p.detail,
             "pending_rows", nb, NULL);
    }
    m.failing = true;
    bound_pending();
    return false;
  }
  if (m.failing)
    tg_log(TG_LOG_INFO, "usage flush recovered", NULL);
  m.failing = false;
  give_way(); /* the clear below writes the whole table */
  gw_meter_tab_clear(m.pending);
  return true;
}

/* A fold's outcome, for /metrics and the log. */
static void fold_done(int rc, const tg_usage_fold_stats_t *fs, const tg_problem_t *p) {
  pthread_mutex_lock(&m.lock);
  if (rc == TG_OK) {
    m.stats.folds++;
    m.stats.rows_folded += (uint64_t)fs->rows;
  } else {
    m.stats.fold_failures++;
  }
  pthread_mutex_unlock(&m.lock);
  if (rc != TG_OK && !m.fold_failing)
    tg_log(TG_LOG_WARN, "usage journal fold failed; retrying (reports fold it too)", "error",
           p->detail, NULL);
  else if (rc == TG_OK && m.fold_failing)
    tg_log(TG_LOG_INFO, "usage journal fold recovered", NULL);
  m.fold_failing = rc != TG_OK;
}

/* The fold under way: started every metering_fold_interval, then one
 * step of FOLD_STEP_ROWS ledger rows every FOLD_STEP_GAP_US, each step a
 * write transaction of its own (tg_store_usage_fold_step), paced inside:
 * the store's other writers wait for one step at most (~1-2 ms), and
 * 2,000 rows (1,000 keys) take ~32 steps, ~0.7 s. The metering thread's
 * connection keeps the ledger's CHECKs off (usage_writer, core/store.h):
 * turning them off and on again each step made SQLite re-prepare ~9
 * statements a step. */
#define FOLD_STEP_ROWS   64
#define FOLD_STEP_GAP_US 20000

static struct {
  tg_usage_fold_t *run; /* NULL: none under way */
  tg_usage_fold_stats_t stats;
  int64_t due_us;      /* the next fold starts then */
  int64_t step_due_us; /* the next step, while one is under way */
} fold;

/* Start a fold or take its next step; returns when to come back. */
static void fold_turn(int64_t every_us) {
  tg_problem_t p;
  tg_problem_clear(&p);
  int rc;
  pace_start(true);
  if (!fold.run) {
    fold.stats = (tg_usage_fold_stats_t){0, 0};
    rc = tg_store_usage_fold_start(m.store, FLUSH_SLICE, give_way, &fold.run, &p);
    if (rc == TG_OK && fold.run) {
      fold.step_due_us = tg_mono_us();
      return;
    }
  } else {
    rc = tg_store_usage_fold_step(m.store, fold.run, FOLD_STEP_ROWS, &fold.stats, &p);
    if (rc == 1) {
      fold.step_due_us = tg_mono_us() + FOLD_STEP_GAP_US;
      return;
    }
    tg_store_usage_fold_end(m.store, fold.run);
    fold.run = NULL;
    if (rc == TG_ECONFLICT)
      rc = TG_OK; /* a reader folded the batch: done all the same */
  }
  fold_done(rc, &fold.stats, &p);
  fold.due_us = tg_mono_us() + (rc == TG_OK ? every_us : FOLD_RETRY_US);
}

/* At stop: the rest of the journal in one go (no worker left to give way
 * to). true: folded (or nothing to). */
static bool fold_all(void) {
  tg_problem_t p;
  tg_problem_clear(&p);
  tg_usage_fold_stats_t fs = {0, 0};
  if (fold.run) {
    tg_store_usage_fold_end(m.store, fold.run); /* its mark: finished below */
    fold.run = NULL;
  }
  int rc = tg_store_usage_fold(m.store, 0, NULL, &fs, &p);
  fold_done(rc, &fs, &p);
  return rc == TG_OK;
}

static void ask_workers(void) {
  gw_server_t *srv = m.srv;
  for (int i = 0; i < srv->nworkers; i++)
    atomic_store_explicit(&srv->meter[i].want, true, memory_order_release);
  gw_workers_wake(srv);
}

static void *meter_main(void *arg) {
  (void)arg;
  gw_thread_role("tg-meter", true);
  int64_t interval = tg_config_int(m.srv->cfg, "metering_interval");
  int64_t fold_every_us = tg_config_int(m.srv->cfg, "metering_fold_interval") * 1000;
  /* Flushes start every interval, not an interval after the last one
   * ended: a paced flush lasts up to a quarter of the interval, and the
   * counters must not wait longer than one interval for the next. The
   * beat runs on CLOCK_MONOTONIC (m.cond waits on it, gw_meter_start):
   * on the wall clock, a step back would stop the flushes for as long. */
  int64_t due_us = tg_mono_us() + interval * 1000;
  fold.due_us = due_us - interval * 1000 + fold_every_us;
  pthread_mutex_lock(&m.lock);
  while (!m.stop) {
    int64_t wake_us = fold.run && fold.step_due_us < due_us ? fold.step_due_us : due_us;
    struct timespec wake = {wake_us / 1000000, (long)(wake_us % 1000000) * 1000};
    pthread_cond_timedwait(&m.cond, &m.lock, &wake);
    if (m.stop)
      break;
    pthread_mutex_unlock(&m.lock);
    int64_t now_us = tg_mono_us();
    if (now_us >= due_us) {
      pace_start(true);
      collect(false);
      flush(true);
      pthread_mutex_lock(&m.lock);
      m.stats.pending = m.pending->n;
      pthread_mutex_unlock(&m.lock);
      ask_workers();
      due_us += interval * 1000;
      if (due_us < now_us)
        due_us = now_us; /* the last flush overran its interval: start at once */
      if (!fold.run && now_us >= fold.due_us)
        fold_turn(fold_every_us);
    } else if (fold.run && now_us >= fold.step_due_us) {
      fold_turn(fold_every_us);
    }
    pthread_mutex_lock(&m.lock);
  }
  pthread_mutex_unlock(&m.lock);
  return NULL;
}

int gw_meter_start(gw_server_t *srv, char *err, size_t errlen) {
  m.srv = srv;
  tg_problem_t p;
  tg_problem_clear(&p);
  tg_store_options_t opt = {
      .path = tg_config_str(srv->cfg, "db_path"),
      .busy_timeout_ms = 200, /* short: a locked store must not delay the next turn */
      .mode = TG_STORE_OPEN_CURRENT,
      .usage_writer = true, /* journal, folds, last_used_day: all ours */
  };
  if (tg_store_open(&opt, &m.store, NULL, NULL, &p) != TG_OK) {
    snprintf(err, errlen, "metering: cannot open the store: %s", p.detail);
    return -1;
  }
  if (!(m.pending = gw_meter_tab_new())) {
    snprintf(err, errlen, "metering: out of memory");
    return -1;
  }
  m.stop = false;
  pthread_condattr_t ca; /* the beat's clock: see meter_main */
  int cerr = pthread_condattr_init(&ca);
  if (!cerr) {
    if (!(cerr = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) &&
        !(cerr = pthread_cond_destroy(&m.cond)))
      cerr = pthread_cond_init(&m.cond, &ca);
    pthread_condattr_destroy(&ca);
  }
  if (cerr) {
    snprintf(err, errlen, "metering: cannot set up its timer");
    return -1;
  }
  if (pthread_create(&m.thread, NULL, meter_main, NULL) != 0) {
    snprintf(err, errlen, "metering: cannot start its thread");
    return -1;
  }
  m.running = true;
  return 0;
}

void gw_meter_stop(gw_server_t *srv) {
  (void)srv;
  if (!m.running)
    return;
  pthread_mutex_lock(&m.lock);
  m.stop = true;
  pthread_cond_signal(&m.cond);
  pthread_mutex_unlock(&m.lock);
  pthread_join(m.thread, NULL);
  m.running = false;
  /* the workers have exited: everything they counted is ours now */
  collect(true);
  bool flushed = false, folded = false;
  for (int attempt = 0; attempt < 50 && !(flushed && folded); attempt++) {
    if (attempt) {
      struct timespec ts = {0, 100000000};
      nanosleep(&ts, NULL);
    }
    if (!flushed)
      flushed = flush(false);
    if (flushed)
      folded = fold_all();
  }
  if (!folded)
    tg_log(TG_LOG_ERROR, "usage journal not folded at stop: the next reader of the ledger folds it",
           NULL);
  if (m.pending->n) {
    char nb[24];
    snprintf(nb, sizeof(nb), "%zu", m.pending->n);
    tg_log(TG_LOG_ERROR, "usage rows not written at stop: the store stayed unavailable", "rows", nb,
           NULL);
  }
  gw_meter_tab_free(m.pending);
  m.pending = NULL;
  tg_store_close(m.store);
  m.store = NULL;
}
