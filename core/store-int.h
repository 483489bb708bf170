/*
 * store-int.h - what a store backend implements. store.c validates input
 * and dispatches through this table; backends trust that rows passed to
 * create/update were validated against the model (and still enforce the
 * schema's constraints themselves).
 */
#ifndef TG_STORE_INT_H
#define TG_STORE_INT_H

#include "core/store.h"

typedef struct tg_store_vtab {
  const char *name;
  void (*close)(tg_store_t *s);
  int (*schema_version)(tg_store_t *s, int *version);
  int (*begin)(tg_store_t *s, tg_problem_t *p);
  int (*commit)(tg_store_t *s, tg_problem_t *p);
  void (*rollback)(tg_store_t *s);
  int (*create)(tg_store_t *s, const tg_entity_desc_t *d, const json_t *fields, json_t **row,
                tg_problem_t *p);
  int (*get_by)(tg_store_t *s, const tg_entity_desc_t *d, const tg_field_t *f, const char *value,
                json_t **row, tg_problem_t *p);
  int (*get_secret)(tg_store_t *s, const tg_entity_desc_t *d, const char *id, const tg_field_t *f,
                    char **out, tg_problem_t *p);
  int (*update)(tg_store_t *s, const tg_entity_desc_t *d, const char *id, const json_t *changes,
                int64_t if_version, json_t **row, tg_problem_t *p);
  int (*touch)(tg_store_t *s, const tg_entity_desc_t *d, const char *id, const tg_field_t *f,
               int64_t value, tg_problem_t *p);
  int (*del)(tg_store_t *s, const tg_entity_desc_t *d, const char *id, int64_t if_version,
             tg_problem_t *p);
  int (*list)(tg_store_t *s, const tg_entity_desc_t *d, const tg_list_query_t *q, json_t **rows,
              char *next, tg_problem_t *p);
  int (*count)(tg_store_t *s, const tg_entity_desc_t *d, const tg_filter_t *filters, int nfilters,
               int64_t *count, tg_problem_t *p);
  int (*meta_get)(tg_store_t *s, const char *key, char **value, tg_problem_t *p);
  int (*meta_set)(tg_store_t *s, const char *key, const char *value, tg_problem_t *p);
  int (*changes)(tg_store_t *s, int64_t after_seq, int limit, tg_change_cb cb, void *ctx,
                 int64_t *last_seq, tg_problem_t *p);
  int (*data_version)(tg_store_t *s, int64_t *version);
  int (*backup)(tg_store_t *s, const char *path, tg_problem_t *p);
  int (*idem_get)(tg_store_t *s, const unsigned char id[32], int64_t now, tg_idem_record_t *out,
                  tg_problem_t *p);
  int (*idem_put)(tg_store_t *s, const unsigned char id[32], const tg_idem_record_t *rec,
                  int64_t now, int64_t expires_at, tg_problem_t *p);
  int (*idem_purge)(tg_store_t *s, int64_t now, int64_t *deleted, tg_problem_t *p);
  /* cols: 1..TG_SCAN_COLS_MAX fields of d; only_id NULL or a valid id of d. */
  int (*scan)(tg_store_t *s, const tg_entity_desc_t *d, const char *only_id,
              const tg_field_t *const *cols, int ncols, tg_scan_cb cb, void *ctx, tg_problem_t *p);
  /* rows: n >= 1 rows that passed store.c's checks. */
  int (*usage_add)(tg_store_t *s, const tg_usage_row_t *rows, size_t n, size_t every,
                   void (*pause)(void), tg_problem_t *p);
  /* rows: n >= 1 rows that passed store.c's checks. */
  int (*usage_journal)(tg_store_t *s, const tg_usage_row_t *rows, size_t n, int64_t now,
                       tg_problem_t *p);
  int (*usage_fold)(tg_store_t *s, size_t every, void (*pause)(void), tg_usage_fold_stats_t *st,
                    tg_problem_t *p);
  int (*usage_fold_start)(tg_store_t *s, size_t every, void (*pause)(void), tg_usage_fold_t **out,
                          tg_problem_t *p);
  int (*usage_fold_step)(tg_usage_fold_t *f, size_t max_rows, tg_usage_fold_stats_t *st,
                         tg_problem_t *p);
  void (*usage_fold_end)(tg_usage_fold_t *f);
  int (*usage_open)(tg_store_t *s, const tg_usage_query_t *q, tg_usage_cursor_t **out,
                    tg_problem_t *p);
  int (*usage_next)(tg_usage_cursor_t *cur, tg_usage_total_t *row, tg_problem_t *p);
  void (*usage_close)(tg_usage_cursor_t *cur);
  int (*usage_compact)(tg_store_t *s, int64_t now, int64_t lag, const tg_usage_retention_t *ret,
                       int max_periods, tg_usage_compact_stats_t *st, tg_problem_t *p);
  int (*billing_get)(tg_store_t *s, const char *period, char **lines, tg_problem_t *p);
  int (*billing_put)(tg_store_t *s, const char *period, int64_t generated_at, const char *lines,
                     tg_problem_t *p);
} tg_store_vtab_t;

/* Every backend's report cursor starts with this. */
struct tg_usage_cursor {
  tg_store_t *store;
};

/* tg_store_scan's column limit, and the longest ids and reasons a usage
 * row may carry (the schema's CHECKs on usage_rollups). */
#define TG_SCAN_COLS_MAX    16
#define TG_USAGE_ID_MAX     64
#define TG_USAGE_REASON_MAX 32

/* Every backend's store struct starts with this. */
struct tg_store {
  const tg_store_vtab_t *vt;
};

/* Backends. */
int tg_store_sqlite_open(const tg_store_options_t *opt, tg_store_t **out, int *from, int *to,
                         tg_problem_t *p);

#endif
