/*
 * policy.h - what the gateway knows about its callers: every API key,
 * app, developer, subscription and plan, in memory, with the rate-limit
 * and quota state of each subscription.
 *
 * Readers and the writer:
 *   - the config thread is the only writer: it loads everything at start
 *     (gw_policy_load) and then applies the change log entity by entity
 *     (gw_policy_refresh), never a full reload;
 *   - workers only read, without locks: gw_policy_key and gw_policy_sub
 *     probe open-addressing tables whose slots are atomic pointers.
 *
 * Lifetimes (what makes lock-free reading safe):
 *   - records (keys, apps, developers, subscriptions, plans) are never
 *     freed while the process runs. A change updates a record's atomic
 *     fields in place (status, expiry, owner) or, for a plan, publishes a
 *     new immutable plan record and swaps the subscriptions' pointers; a
 *     deleted row becomes status GW_ST_GONE. Memory grows only with rows
 *     and plan edits, so a request may keep record pointers as long as it
 *     likes (metering does, until its row is flushed);
 *   - tables are replaced when they grow; the old array is retired and
 *     freed once every worker has started a loop turn after the swap
 *     (workers publish the policy epoch they entered with; they never keep
 *     a table pointer across turns).
 *
 * Rate limits: GCRA (the generic cell rate algorithm, as a virtual
 * scheduling "theoretical arrival time") per subscription and window
 * (second, minute, hour), one atomic per window, so every worker thread
 * shares one exact state: a limit of N per W admits N at once from rest
 * and then one every W/N, never more, whatever the concurrency. Quotas
 * (UTC day and month) are counters tagged with their period in one
 * atomic word; they are seeded at start from the usage ledger, so a
 * restart never resets a quota. A request refused by any policy consumes
 * nothing (what it took from the others is given back).
 */
#ifndef GW_POLICY_H
#define GW_POLICY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/keys.h"

#define GW_POL_ID_LEN 30

/* Statuses of every kind of record, as the worker needs them. */
enum {
  GW_ST_ACTIVE = 0,
  GW_ST_PENDING,   /* developer not yet approved, subscription awaiting approval */
  GW_ST_SUSPENDED, /* developer, app or subscription */
  GW_ST_GONE,      /* revoked key, deleted developer/app, cancelled subscription, deleted row */
};

/* Policies of a plan, in the order headers list them. */
enum { GW_LIM_SECOND, GW_LIM_MINUTE, GW_LIM_HOUR, GW_LIM_DAY, GW_LIM_MONTH, GW_LIM_N };
#define GW_RATES 3 /* second, minute, hour: GCRA */

typedef struct gw_plan {
  char id[GW_POL_ID_LEN + 1];
  char slug[64];
  int64_t limit[GW_LIM_N]; /* 0: no such policy */
  /* the RateLimit-Policy field value, made once: it only changes with the plan */
  char policy_hdr[160];
  size_t policy_len;
} gw_plan_t;

typedef struct gw_dev {
  char id[GW_POL_ID_LEN + 1];
  _Atomic int status;
} gw_dev_t;

typedef struct gw_app {
  char id[GW_POL_ID_LEN + 1];
  uint32_t no; /* dense number, for the subscription table's key */
  _Atomic int status;
  _Atomic(gw_dev_t *) dev;
} gw_app_t;

typedef struct gw_sub {
  char id[GW_POL_ID_LEN + 1];
  gw_app_t *app;
  uint32_t api_no;
  _Atomic int status;
  _Atomic(const gw_plan_t *) plan;
  struct gw_sub *plan_next;        /* config thread only: next subscription of the same plan id */
  char plan_id[GW_POL_ID_LEN + 1]; /* config thread only */
  /* limiter state, shared by all workers */
  _Atomic int64_t tat[GW_RATES]; /* GCRA theoretical arrival time, ns (monotonic) */
  _Atomic uint64_t used[2];      /* quota: period << 44 | count, day and month */
} gw_sub_t;

typedef struct gw_key {
  char id[GW_POL_ID_LEN + 1]; /* first: policy.c's id maps read it there */
  unsigned char digest[TG_DIGEST_BYTES];
  char prefix[TG_TOKEN_PREFIX_MAX + 1];
  _Atomic int status;
  _Atomic int64_t expires_at;    /* unix seconds; 0: never */
  _Atomic(gw_app_t *) app;       /* NULL: its app is unknown (a row out of order) */
  _Atomic int64_t last_used_day; /* metering thread only: last day written */
} gw_key_t;

typedef struct gw_policy gw_policy_t;

/* ---- config thread ----------------------------------------------------- */

/* An empty policy. `epoch_min` tells it the lowest epoch any worker may
 * still be in (see gw_policy_enter); NULL while no workers run. */
gw_policy_t *gw_policy_new(uint64_t (*epoch_min)(void *ctx), void *ctx);
void gw_policy_free(gw_policy_t *pol);

struct tg_store;
/* Load every plan, developer, app, subscription and key, and seed the
 * quotas from the usage ledger as of `now_s` (unix seconds). */
int gw_policy_load(gw_policy_t *pol, struct tg_store *store, int64_t now_s, char *err,
                   size_t errlen);

/* Re-read one changed row: entity "plan", "developer", "app",
 * "subscription" or "key" (others are ignored). A row that no longer
 * exists becomes GW_ST_GONE. */
int gw_policy_refresh(gw_policy_t *pol, struct tg_store *store, const char *entity, const char *id,
                      char *err, size_t errlen);

/* The dense number of an API id (assigned on first sight, stable). */
uint32_t gw_policy_api_no(gw_policy_t *pol, const char *api_id);
/* The API id of a number (metering thread; thread-safe). "" if unknown. */
void gw_policy_api_id(gw_policy_t *pol, uint32_t api_no, char out[GW_POL_ID_LEN + 1]);

/* Free retired tables that no worker can still be reading. */
void gw_policy_collect(gw_policy_t *pol);

/* Counts for /metrics and logs. */
size_t gw_policy_nkeys(const gw_policy_t *pol);

/* ---- workers ----------------------------------------------------------- */

/* The epoch to publish at the top of each loop turn (before any lookup). */
uint64_t gw_policy_epoch(const gw_policy_t *pol);

const gw_key_t *gw_policy_key(const gw_policy_t *pol, const unsigned char digest[TG_DIGEST_BYTES]);
gw_sub_t *gw_policy_sub(const gw_policy_t *pol, uint32_t app_no, uint32_t api_no);

/* ---- limits (pure; unit-tested) ------------------------------------------ */

typedef struct gw_limit_state {
  int policy;        /* GW_LIM_* */
  int64_t limit;     /* q */
  int64_t window_s;  /* w */
  int64_t remaining; /* r, after this request */
  int64_t reset_s;   /* t: seconds until the policy is whole again (rates) or its period ends */
} gw_limit_state_t;

typedef struct gw_verdict {
  bool admitted;
  int violated; /* GW_LIM_* that refused, or -1 */
  int64_t retry_after_ms;
  int nstates;
  gw_limit_state_t states[GW_LIM_N]; /* every policy of the plan, tightest first */
} gw_verdict_t;

/*
 * Take one request from sub's policies under `plan`: every rate window
 * (GCRA at mono_ns, a monotonic clock in ns) and every quota (UTC day and
 * month of wall_s). Admitted only if all allow it; a refusal gives back
 * what the others took. Fills v (states sorted tightest first: least
 * remaining, then shortest reset).
 */
void gw_limits_take(gw_sub_t *sub, const gw_plan_t *plan, int64_t mono_ns, int64_t wall_s,
                    gw_verdict_t *v);

/* Period numbers and bounds of quotas: UTC day and calendar month. */
int64_t gw_quota_period(int which, int64_t wall_s); /* which: 0 day, 1 month */
int64_t gw_quota_period_end(int which, int64_t wall_s);
int64_t gw_quota_period_start(int which, int64_t wall_s);

/* Seed a quota counter (config thread, before the subscription is used or
 * when it is loaded): `calls` already made in the period of wall_s. */
void gw_quota_seed(gw_sub_t *sub, int which, int64_t wall_s, int64_t calls);

#endif
