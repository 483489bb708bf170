/*
 * meter.h - exact usage metering.
 *
 * Each worker counts the requests it finishes in its own table, keyed by
 * (minute, key, subscription, plan, API, status class, reason), with
 * bytes both ways, the latency sum and a histogram; no locks, no sharing.
 * Once per metering_interval the metering thread asks every worker for
 * its table (the worker hands it over at the top of its next loop turn
 * and carries on with an empty one), merges them into its pending rows
 * and appends those to the usage journal as one entry
 * (tg_store_usage_journal: one INSERT, ~40x less SQLite work than adding
 * each row to the ledger). Once per metering_fold_interval it folds the
 * journal into the ledger in short steps (tg_store_usage_fold_start and
 * _step), paced so that it never holds a worker's core nor the store's
 * write lock for long (meter.c says how); every reader of the ledger
 * folds first, so usage is as fresh for them as the last flush.
 * If the store cannot be written (locked, gone), the rows stay pending
 * and the next turn tries again; pending rows are bounded
 * (metering_max_pending: the oldest minute is dropped, logged).
 *
 * Stop: after the workers have drained and exited, gw_meter_stop takes
 * what they still hold, flushes it and folds the journal, so after
 * SIGTERM the ledger holds exactly the requests served. A SIGKILL loses
 * at most one interval: what was journaled is folded by the next reader.
 */
#ifndef GW_METER_H
#define GW_METER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/store.h"
#include "gateway/policy.h"

/* Why the gateway refused a request itself (status class 0), in the order
 * of the ledger's words (tg_usage_reasons in core/store.h). */
typedef enum gw_reason {
  GW_R_NONE = 0, /* forwarded: the status class tells the rest */
  GW_R_MISSING_KEY,
  GW_R_INVALID_KEY,
  GW_R_AUTH_THROTTLED,
  GW_R_NOT_SUBSCRIBED,
  GW_R_SUSPENDED,
  GW_R_RATE_LIMITED,
  GW_R_QUOTA,
  GW_R_NO_ROUTE,
  GW_R_BAD_REQUEST, /* malformed or over a limit: 400, 405, 408, 411, 413, 414, 431, 501 */
  GW_R_N,
} gw_reason_t;

const char *gw_reason_name(gw_reason_t r); /* as stored: "invalid_key", ... */

typedef struct gw_meter_key {
  const gw_key_t *key;
  const gw_sub_t *sub;
  const gw_plan_t *plan;
  uint32_t minute; /* period start / 60: minutes since the epoch */
  uint32_t api_no; /* 0: no API */
  uint8_t status_class;
  uint8_t reason;
} gw_meter_key_t;

/* A cell counts one minute of one key's requests of one kind, so 32 bits
 * hold its calls and histogram counts (4.29e9 a minute is 71 million a
 * second for one key, from one worker or the merge of all); bytes and
 * the latency sum need 64. 128 bytes, two cache lines: a worker touches
 * both for each request it counts. */
typedef struct gw_meter_cell {
  gw_meter_key_t k;
  uint32_t calls;
  uint32_t h[TG_USAGE_BUCKETS];
  int64_t bytes_in, bytes_out, latency_us;
} gw_meter_cell_t;

/* Cells are dense (cells[0..n)), found through an open-addressing index
 * of (hash tag << 32 | cell number + 1) slots: a probe reads 8 bytes of
 * a small index, not a cell, and the table's memory is its cells in use
 * (~1,000 keys a second: ~140 KB, where a sparse table of 200-byte
 * cells at half load was 800 KB of the worker's cache). */
typedef struct gw_meter_tab {
  gw_meter_cell_t *cells;
  size_t n, ncells; /* in use, allocated */
  uint64_t *slots;
  size_t cap; /* slots: a power of two, at least twice n */
} gw_meter_tab_t;

gw_meter_tab_t *gw_meter_tab_new(void);
void gw_meter_tab_free(gw_meter_tab_t *t);
void gw_meter_tab_clear(gw_meter_tab_t *t);

/* Count one finished request (a worker, on its own table). false: out of
 * memory (the request is not counted; logged by the caller). */
bool gw_meter_add(gw_meter_tab_t *t, const gw_meter_key_t *k, int64_t bytes_in, int64_t bytes_out,
                  int64_t latency_us);

/* Merge src into dst (metering thread), or one cell of another table. */
bool gw_meter_merge(gw_meter_tab_t *dst, const gw_meter_tab_t *src);
bool gw_meter_merge_cell(gw_meter_tab_t *dst, const gw_meter_cell_t *s);

/* Histogram bucket of a latency (OpenTelemetry HTTP buckets, in ms). */
int gw_meter_bucket(int64_t latency_us);

struct gw_server;
/* The metering thread (started after the workers) and the final flush
 * (after they have exited). */
int gw_meter_start(struct gw_server *srv, char *err, size_t errlen);
void gw_meter_stop(struct gw_server *srv);

/* For /metrics. */
typedef struct gw_meter_stats {
  uint64_t flushes, flush_failures, rows_written, rows_dropped;
  uint64_t folds, fold_failures, rows_folded;
  uint64_t pending;
  int64_t last_flush_ms; /* wall clock of the last successful flush, 0: none */
} gw_meter_stats_t;
void gw_meter_stats(gw_meter_stats_t *out);

#endif
