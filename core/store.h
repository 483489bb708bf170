/*
 * store.h - the one narrow interface to Tollgate's data.
 *
 * Everything above this line (gateway, admin API, portal, CLI, core
 * services) reaches the data only through these functions; no SQL exists
 * outside the store implementations. SQLite (store_sqlite.c) is the
 * embedded default; a PostgreSQL implementation for multi-node gateways
 * plugs in behind the same vtable (store-int.h) without touching callers.
 *
 * Rows are jansson objects described by model.h; fields flagged
 * TG_F_SECRET (digests, password hashes) never appear in returned rows.
 * Writes are validated with tg_model_validate before they reach the
 * backend, and the backend's own constraints back that up.
 *
 * Threading: a tg_store_t is one connection and is used by one thread at
 * a time; open one per thread. Every call outside tg_store_begin/commit
 * is its own transaction. Errors: TG_EINVAL (validation, detail in p),
 * TG_ENOTFOUND, TG_ECONFLICT (unique or reference conflict, naming the
 * field), TG_EPRECOND (version mismatch), TG_EBUSY (lock timeout),
 * TG_ESTORE, TG_ESCHEMA, TG_ENOMEM.
 */
#ifndef TG_STORE_H
#define TG_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/model.h"

typedef struct tg_store tg_store_t;

typedef enum tg_store_open_mode {
  TG_STORE_OPEN_MIGRATE,  /* create the file if needed, apply pending migrations */
  TG_STORE_OPEN_CURRENT,  /* refuse unless the schema is exactly the latest */
  TG_STORE_OPEN_READONLY, /* like CURRENT, read-only connection */
} tg_store_open_mode_t;

typedef struct tg_store_options {
  const char *path;    /* database file (SQLite) */
  int busy_timeout_ms; /* wait this long for locks before TG_EBUSY */
  tg_store_open_mode_t mode;
  /* The connection writes usage rows and little else (the gateway's
   * metering thread): the ledger's CHECK constraints stay off on it for
   * good, instead of being turned off and on around each usage write,
   * which makes SQLite re-prepare every statement of the connection
   * (~0.3M instructions each time). Its other writes go unchecked by the
   * schema too: only for connections whose every write is our own. */
  bool usage_writer;
} tg_store_options_t;

/*
 * Open a store. On TG_STORE_OPEN_MIGRATE, *from and *to (may be NULL) receive
 * the schema versions before and after. A database whose schema is newer
 * than this binary knows is refused with TG_ESCHEMA; an older one is
 * refused with TG_ESCHEMA unless mode is MIGRATE. *out is NULL on error.
 */
int tg_store_open(const tg_store_options_t *opt, tg_store_t **out, int *from, int *to,
                  tg_problem_t *p);
void tg_store_close(tg_store_t *s); /* NULL is a no-op */

/* Schema version the database is at, and the newest this binary knows. */
int tg_store_schema_version(tg_store_t *s, int *version);
int tg_store_schema_latest(void);

/* Explicit transaction (write lock taken at begin). Nesting is an error. */
int tg_store_begin(tg_store_t *s, tg_problem_t *p);
int tg_store_commit(tg_store_t *s, tg_problem_t *p);
void tg_store_rollback(tg_store_t *s);

/*
 * Create a row from `fields` (borrowed; validated here). The store sets
 * id, version = 1, created_at = updated_at = now, and defaults for absent
 * fields. `allow_secret` lets core services write TG_F_SECRET fields
 * (digest as 64 hex chars, password_hash). *row (may be NULL) gets a new
 * reference to the stored row.
 */
int tg_store_create(tg_store_t *s, tg_entity_t ent, const json_t *fields, bool allow_secret,
                    json_t **row, tg_problem_t *p);

/* Read one row by id. *row: new reference, NULL on error. */
int tg_store_get(tg_store_t *s, tg_entity_t ent, const char *id, json_t **row, tg_problem_t *p);

/* Read one row by a TG_F_UNIQUE text field (slug, email, name) or by a
 * TG_F_DIGEST field given as 64 hex chars. Rows with status 'deleted' are
 * found too; callers decide. */
int tg_store_get_by(tg_store_t *s, tg_entity_t ent, const char *field, const char *value,
                    json_t **row, tg_problem_t *p);

/* Read a TG_F_SECRET text field (e.g. password_hash) of one row; *out is
 * malloc'd (caller frees) or NULL when the column is NULL. */
int tg_store_get_secret(tg_store_t *s, tg_entity_t ent, const char *id, const char *field,
                        char **out, tg_problem_t *p);

/*
 * Update the fields in `changes` (borrowed; validated here; JSON null sets
 * a nullable field to NULL). if_version > 0 makes the update conditional on
 * the row's current version (TG_EPRECOND otherwise). version += 1 and
 * updated_at = now. *row (may be NULL): new reference to the updated row.
 * An empty `changes` object still bumps nothing and returns the row.
 */
int tg_store_update(tg_store_t *s, tg_entity_t ent, const char *id, const json_t *changes,
                    bool allow_secret, int64_t if_version, json_t **row, tg_problem_t *p);

/*
 * Set a server-maintained time field (TG_F_SERVER of type TG_FT_TIME, e.g.
 * an admin token's last_used_at, a key's last_used_day) without bumping
 * the row's version: it is bookkeeping, not a change of the resource.
 */
int tg_store_touch(tg_store_t *s, tg_entity_t ent, const char *id, const char *field, int64_t value,
                   tg_problem_t *p);

/* Delete one row (if_version > 0: conditional). Rows still referred to
 * give TG_ECONFLICT. */
int tg_store_delete(tg_store_t *s, tg_entity_t ent, const char *id, int64_t if_version,
                    tg_problem_t *p);

#define TG_LIST_DEFAULT 100
#define TG_LIST_MAX     1000
#define TG_FILTER_MAX   8

typedef struct tg_filter {
  const char *field; /* a TG_F_FILTER field */
  const char *value; /* text form: "true"/"false" for booleans, decimal for ints */
} tg_filter_t;

typedef struct tg_list_query {
  const tg_filter_t *filters; /* ANDed equality filters */
  int nfilters;               /* 0..TG_FILTER_MAX */
  const char *after;          /* keyset cursor: the last id of the previous page, or NULL */
  int limit;                  /* 1..TG_LIST_MAX */
} tg_list_query_t;

/*
 * One page of rows in id (= creation) order, strictly after q->after.
 * *rows: new JSON array. next (TG_ID_LEN+1 bytes) receives the id to pass
 * as `after` for the next page, or "" when this is the last page. Cost is
 * O(page) given an index on the filter (every TG_F_FILTER reference field
 * has one).
 */
int tg_store_list(tg_store_t *s, tg_entity_t ent, const tg_list_query_t *q, json_t **rows,
                  char *next, tg_problem_t *p);

/* Number of rows matching the filters. */
int tg_store_count(tg_store_t *s, tg_entity_t ent, const tg_filter_t *filters, int nfilters,
                   int64_t *count, tg_problem_t *p);

/* Store-wide settings (e.g. the server secret's fingerprint). get: *value
 * malloc'd, or TG_ENOTFOUND. */
int tg_store_meta_get(tg_store_t *s, const char *key, char **value, tg_problem_t *p);
int tg_store_meta_set(tg_store_t *s, const char *key, const char *value, tg_problem_t *p);

/* One change-log entry: what the gateway must re-read. */
typedef struct tg_change {
  int64_t seq;
  int64_t at;
  const char *entity; /* "api", "key", ... */
  const char *entity_id;
  const char *op; /* "insert", "update", "delete" */
} tg_change_t;

typedef int (*tg_change_cb)(const tg_change_t *c, void *ctx);

/*
 * Call cb for up to `limit` changes with seq > after_seq, in order. A
 * non-zero return from cb stops and is returned. *last_seq (may be NULL)
 * gets the seq of the last change delivered (after_seq if none).
 */
int tg_store_changes(tg_store_t *s, int64_t after_seq, int limit, tg_change_cb cb, void *ctx,
                     int64_t *last_seq, tg_problem_t *p);

/* A cheap counter that changes whenever another connection committed
 * (SQLite: PRAGMA data_version). */
int tg_store_data_version(tg_store_t *s, int64_t *version);

/* Consistent online copy of the whole store to `path` (which must not
 * exist), safe while other processes write. */
int tg_store_backup(tg_store_t *s, const char *path, tg_problem_t *p);

/* A remembered POST result (see schema/0002_idempotency.sql). */
typedef struct tg_idem_record {
  unsigned char request_hash[32];
  int status;
  unsigned char *sealed; /* malloc'd by tg_store_idem_get; caller frees */
  size_t sealed_len;
} tg_idem_record_t;

/* Look up an unexpired record by its 32-byte id: TG_OK or TG_ENOTFOUND. */
int tg_store_idem_get(tg_store_t *s, const unsigned char id[32], int64_t now, tg_idem_record_t *out,
                      tg_problem_t *p);
/* Store a record (replacing an expired one with the same id). */
int tg_store_idem_put(tg_store_t *s, const unsigned char id[32], const tg_idem_record_t *rec,
                      int64_t now, int64_t expires_at, tg_problem_t *p);
/* Delete records expired at `now`; *deleted (may be NULL) counts them. */
int tg_store_idem_purge(tg_store_t *s, int64_t now, int64_t *deleted, tg_problem_t *p);

/* ---- the gateway's policy view -------------------------------------------
 * The gateway keeps every key, app, developer, subscription and plan in
 * memory (1,000,000 keys load in well under 3 s), so it reads them as flat
 * column values, not JSON objects. */

typedef enum tg_value_type { TG_V_NULL, TG_V_INT, TG_V_TEXT, TG_V_BLOB } tg_value_type_t;

typedef struct tg_value {
  tg_value_type_t type;
  int64_t i;     /* TG_V_INT */
  const char *s; /* TG_V_TEXT: NUL-terminated; TG_V_BLOB: bytes */
  size_t len;    /* TEXT and BLOB */
} tg_value_t;

/* vals[0..ncols) are valid only during the call; non-zero stops the scan. */
typedef int (*tg_scan_cb)(const tg_value_t *vals, int ncols, void *ctx);

/*
 * Call cb for every row of `ent` (or only the row with id `only_id`, when
 * not NULL; none if it does not exist), in id order, with the named
 * columns. Columns are model field names; TG_F_SECRET digests are allowed
 * (the gateway needs them; they are not secrets themselves). At most 16
 * columns. The whole scan is one read transaction (a consistent view).
 * Bad arguments give TG_EINVAL naming "entity", "cols", "only_id" or "cb";
 * a non-zero return from cb stops the scan and is returned.
 */
int tg_store_scan(tg_store_t *s, tg_entity_t ent, const char *only_id, const char *const *cols,
                  int ncols, tg_scan_cb cb, void *ctx, tg_problem_t *p);

/* ---- usage ledger (schema/0001_init.sql usage_rollups) ------------------- */

#define TG_USAGE_BUCKETS 15 /* h00..h14 */

typedef struct tg_usage_row {
  int64_t granularity; /* 60, 3600, 86400 */
  int64_t period_start;
  const char *key_id, *app_id, *developer_id, *api_id, *plan_id, *subscription_id; /* "" = none */
  int status_class;   /* 0 (rejected by the gateway, reason set) or 1..5 */
  const char *reason; /* "" unless status_class is 0 */
  int64_t calls, bytes_in, bytes_out, latency_us_sum;
  int64_t h[TG_USAGE_BUCKETS]; /* sums to calls */
} tg_usage_row_t;

/* One row against the ledger's rules (the CHECKs of usage_rollups), so that
 * a bad row is refused before a transaction starts: TG_EINVAL naming it as
 * rows[i] ("rows[2].reason"). */
int tg_usage_row_check(const tg_usage_row_t *r, size_t i, tg_problem_t *p);

/*
 * Add rows to the ledger in one transaction: a row whose primary key
 * (granularity, period_start, key_id, api_id, plan_id, status_class,
 * reason) exists has every counter increased by the new values (UPSERT);
 * subscription_id takes the new value, while app_id and developer_id stay
 * those the row was created with (a key's app and an app's developer
 * never change). All or
 * nothing: on error nothing was added (TG_EBUSY when the store is locked
 * past the busy timeout: the caller keeps the rows and retries). A row
 * that breaks the ledger's rules gives TG_EINVAL naming it
 * ("rows[2].reason"). Inside tg_store_begin/commit the rows are one
 * savepoint of the caller's transaction.
 */
int tg_store_usage_add(tg_store_t *s, const tg_usage_row_t *rows, size_t n, tg_problem_t *p);

/*
 * tg_store_usage_add, with pause() called after every `every` rows (0:
 * never) inside the one transaction: the gateway's metering thread shares
 * a core with a worker and gives the CPU back between slices.
 */
int tg_store_usage_add_paced(tg_store_t *s, const tg_usage_row_t *rows, size_t n, size_t every,
                             void (*pause)(void), tg_problem_t *p);

/*
 * The usage journal (schema/0006_usage_journal.sql): the gateway's cheap
 * way to add rows every second. tg_store_usage_journal appends rows
 * (checked as tg_store_usage_add checks them) as one journal entry, in
 * one INSERT: all or nothing, TG_EBUSY when the store is locked past the
 * busy timeout (keep the rows and retry), part of the caller's
 * transaction inside tg_store_begin/commit. From then on the rows count
 * as if tg_store_usage_add had added them: tg_store_usage_fold adds every
 * entry to the ledger, summed, in id order, and deletes them, each batch
 * of entries in one transaction (a crash folds either all of a batch or
 * none of it); reports, quotas and compaction fold first. A damaged entry
 * stops the fold (TG_ESTORE naming its id; nothing of its batch is
 * folded). A read-only store cannot fold: with entries waiting, its
 * reports fail (TG_ESTORE) rather than leave them out.
 */
int tg_store_usage_journal(tg_store_t *s, const tg_usage_row_t *rows, size_t n, int64_t now,
                           tg_problem_t *p);

typedef struct tg_usage_fold_stats {
  int64_t entries; /* journal entries folded */
  int64_t rows;    /* ledger rows they were summed into */
} tg_usage_fold_stats_t;

/* Fold the journal, pause() after every `every` ledger rows written (0:
 * never; see tg_store_usage_add_paced). st (may be NULL) is added to. */
int tg_store_usage_fold(tg_store_t *s, size_t every, void (*pause)(void), tg_usage_fold_stats_t *st,
                        tg_problem_t *p);

/*
 * A fold in steps, for the gateway: its SQLite work comes in short
 * slices that neither hold the store's write lock for long nor the core
 * a worker shares. tg_store_usage_fold_start reads and sums a batch of
 * the journal without the write lock (pause(), may be NULL, between
 * entries, and in each step after every `every` rows: 0, never); *out
 * is NULL when there is nothing to fold. Each
 * tg_store_usage_fold_step writes the next max_rows ledger rows in a
 * write transaction of its own, and the last one deletes the folded
 * entries: 1 when steps remain, 0 when the fold is done, <0 on error
 * (TG_ECONFLICT: another connection folded these entries meanwhile;
 * stop). Between steps the ledger holds part of the batch and the
 * journal all of it; a mark in meta (usage.fold) says how far the steps
 * went, and any other fold (every reader's) finishes the batch first,
 * also after a crash: nothing counts twice or goes missing. A fold
 * belongs to its store and connection; end it (NULL is a no-op) before
 * closing the store.
 */
typedef struct tg_usage_fold tg_usage_fold_t;
int tg_store_usage_fold_start(tg_store_t *s, size_t every, void (*pause)(void),
                              tg_usage_fold_t **out, tg_problem_t *p);
int tg_store_usage_fold_step(tg_store_t *s, tg_usage_fold_t *f, size_t max_rows,
                             tg_usage_fold_stats_t *st, tg_problem_t *p);
void tg_store_usage_fold_end(tg_store_t *s, tg_usage_fold_t *f);

/*
 * Calls that count against quotas since `since` (unix seconds, inclusive),
 * per subscription: every row with status_class 1..5 (requests the
 * gateway let through) and a non-empty subscription_id. cb gets each
 * subscription id with its total; non-zero stops and is returned. Exact
 * whichever granularities hold the period: it is a report (below), which
 * reads each period from exactly one granularity, so compaction and
 * retention never change a quota.
 */
typedef int (*tg_usage_calls_cb)(const char *subscription_id, int64_t calls, void *ctx);
int tg_store_usage_calls_since(tg_store_t *s, int64_t since, tg_usage_calls_cb cb, void *ctx,
                               tg_problem_t *p);

/* ---- usage reports and compaction ------------------------------------------
 * The gateway writes minute rows. Compaction sums them into hour rows, and
 * hour rows into day rows, period by period in order; a watermark per
 * granularity says up to where that is done. Minute rows that arrive late
 * for an hour already compacted are added to the hour (and day) rows in
 * the same transaction (tg_store_usage_add), so a compacted row always
 * equals the sum of the rows below it. Retention deletes old minute and
 * hour rows, only below the next granularity's watermark.
 *
 * A report reads every period of its range from exactly one granularity:
 * the coarsest one that is compacted there and not coarser than the
 * report's buckets; so it gives the same totals whichever rows serve it. */

/* Why the gateway refused a request (status class 0 rows), in report
 * column order. */
#define TG_USAGE_REASONS 9
extern const char *const tg_usage_reasons[TG_USAGE_REASONS];

#define TG_USAGE_MONTH (-1) /* a report bucket: the UTC calendar month */

enum {
  TG_USAGE_BY_DEVELOPER = 1 << 0,
  TG_USAGE_BY_APP = 1 << 1,
  TG_USAGE_BY_KEY = 1 << 2,
  TG_USAGE_BY_API = 1 << 3,
  TG_USAGE_BY_PLAN = 1 << 4,
  TG_USAGE_BY_STATUS_CLASS = 1 << 5,
  TG_USAGE_BY_SUBSCRIPTION = 1 << 6,
};

typedef struct tg_usage_query {
  int64_t from, to;  /* [from, to), unix seconds; multiples of 60 */
  int64_t bucket;    /* 60, 3600, 86400 or TG_USAGE_MONTH; from/to align to it */
  unsigned group_by; /* TG_USAGE_BY_* */
  /* filters: NULL = any */
  const char *developer_id, *app_id, *key_id, *api_id, *plan_id, *subscription_id;
  int status_class; /* -1 = any */
} tg_usage_query_t;

typedef struct tg_usage_total {
  int64_t period_start; /* the bucket */
  /* dimensions grouped by ("" when not grouped; status_class -1) */
  const char *developer_id, *app_id, *key_id, *api_id, *plan_id, *subscription_id;
  int status_class;
  int64_t calls;    /* every request, refused ones included */
  int64_t billable; /* answered by the upstream with 1xx-4xx */
  int64_t errors_4xx, errors_5xx;
  int64_t rejected; /* refused by the gateway (never billable) */
  int64_t rejected_by[TG_USAGE_REASONS];
  int64_t bytes_in, bytes_out, latency_us_sum;
  int64_t h[TG_USAGE_BUCKETS];
} tg_usage_total_t;

typedef struct tg_usage_cursor tg_usage_cursor_t;

/*
 * Open a report: rows come out ordered by bucket, then the grouped
 * dimensions. The cursor is one read transaction (a consistent view);
 * use the store for nothing else until it is closed. TG_EINVAL names the
 * bad parameter ("from", "to", "bucket", "group_by"), also when minute or
 * hour rows the report needs were already removed by retention ("from").
 */
int tg_store_usage_open(tg_store_t *s, const tg_usage_query_t *q, tg_usage_cursor_t **out,
                        tg_problem_t *p);
/* The checks tg_store_usage_open makes before reading (alignment, ranges),
 * for callers that tell bad parameters (400) from unavailable data (422). */
int tg_usage_query_check(const tg_usage_query_t *q, tg_problem_t *p);
/* 1: *row filled (strings valid until the next call); 0: no more; <0: error. */
int tg_store_usage_next(tg_usage_cursor_t *cur, tg_usage_total_t *row, tg_problem_t *p);
void tg_store_usage_close(tg_usage_cursor_t *cur); /* NULL is a no-op */

typedef struct tg_usage_retention {
  int64_t minutes_s; /* keep minute rows this long (0: forever) */
  int64_t hours_s;   /* keep hour rows this long (0: forever) */
} tg_usage_retention_t;

typedef struct tg_usage_compact_stats {
  int64_t hours, days; /* periods compacted by this call */
  int64_t minute_rows_deleted, hour_rows_deleted;
  int64_t compacted_hours, compacted_days; /* watermarks after the call */
  bool more;                               /* work remains: call again */
} tg_usage_compact_stats_t;

/*
 * Compact complete periods that ended at least `lag` seconds before `now`
 * (at most max_periods of them, each in its own short write transaction)
 * and apply retention. Idempotent: a period is recomputed from the rows
 * below it, so running twice, or again after a crash, changes nothing.
 */
int tg_store_usage_compact(tg_store_t *s, int64_t now, int64_t lag, const tg_usage_retention_t *ret,
                           int max_periods, tg_usage_compact_stats_t *st, tg_problem_t *p);

/* A kept billing statement of a closed month (schema/0004_billing.sql).
 * get: *lines malloc'd JSON array text, or TG_ENOTFOUND. put: keeps the
 * first statement of a period (a second put of the same period is a
 * no-op, TG_OK), so concurrent first exports agree on one. */
int tg_store_billing_get(tg_store_t *s, const char *period, char **lines, tg_problem_t *p);
int tg_store_billing_put(tg_store_t *s, const char *period, int64_t generated_at, const char *lines,
                         tg_problem_t *p);

/* Test and debug support: the backend's name ("sqlite") and, for SQLite,
 * the database file path. */
const char *tg_store_backend(tg_store_t *s);

#endif
