/*
 * store.c - the backend-neutral half of the store interface: argument and
 * model validation, then dispatch to the backend's vtable (store-int.h).
 *
 * Invariant: no backend function is called with an unvalidated write, a
 * malformed id, a non-filterable filter field, an out-of-range limit, an
 * unknown scan column or a usage row that breaks the ledger's CHECKs.
 */
#include "core/store.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/migrate.h"
#include "core/report.h"
#include "core/store-int.h"
#include "core/util.h"

int tg_store_open(const tg_store_options_t *opt, tg_store_t **out, int *from, int *to,
                  tg_problem_t *p) {
  *out = NULL;
  if (!opt || !opt->path || !*opt->path)
    return tg_problem_set(p, TG_EINVAL, "db_path", "no database path given");
  /* One backend today; a "postgres://" path will select the second. */
  return tg_store_sqlite_open(opt, out, from, to, p);
}

void tg_store_close(tg_store_t *s) {
  if (s)
    s->vt->close(s);
}

int tg_store_schema_version(tg_store_t *s, int *version) {
  return s->vt->schema_version(s, version);
}

int tg_store_schema_latest(void) {
  return tg_schema_migrations[tg_schema_migration_count - 1].version;
}

int tg_store_begin(tg_store_t *s, tg_problem_t *p) {
  return s->vt->begin(s, p);
}

int tg_store_commit(tg_store_t *s, tg_problem_t *p) {
  return s->vt->commit(s, p);
}

void tg_store_rollback(tg_store_t *s) {
  s->vt->rollback(s);
}

/* Every id argument is checked for shape: a malformed id cannot name a
 * row, so it is "not found" rather than a backend query. */
static int check_id(const tg_entity_desc_t *d, const char *id, tg_problem_t *p) {
  if (!tg_model_id_valid(id, d->id_prefix))
    return tg_problem_set(p, TG_ENOTFOUND, "/id", "no %s with id \"%.40s\"", d->name, id ? id : "");
  return TG_OK;
}

int tg_store_create(tg_store_t *s, tg_entity_t ent, const json_t *fields, bool allow_secret,
                    json_t **row, tg_problem_t *p) {
  if (row)
    *row = NULL;
  int rc = tg_model_validate(ent, fields, TG_VALIDATE_CREATE, allow_secret, p);
  if (rc)
    return rc;
  return s->vt->create(s, tg_model_entity(ent), fields, row, p);
}

int tg_store_get(tg_store_t *s, tg_entity_t ent, const char *id, json_t **row, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  *row = NULL;
  int rc = check_id(d, id, p);
  if (rc)
    return rc;
  return s->vt->get_by(s, d, &d->fields[0], id, row, p);
}

int tg_store_get_by(tg_store_t *s, tg_entity_t ent, const char *field, const char *value,
                    json_t **row, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  const tg_field_t *f = tg_model_field(d, field);
  *row = NULL;
  if (!f || !(f->flags & TG_F_UNIQUE))
    return tg_problem_set(p, TG_EINVAL, field, "cannot look up a %s by %s", d->name, field);
  if (!value)
    return tg_problem_set(p, TG_ENOTFOUND, field, "no %s with that %s", d->name, field);
  if (f->type == TG_FT_ID)
    return tg_store_get(s, ent, value, row, p);
  if (f->type == TG_FT_DIGEST && strlen(value) != 64)
    return tg_problem_set(p, TG_EINVAL, field, "a digest is 64 hex characters");
  return s->vt->get_by(s, d, f, value, row, p);
}

int tg_store_get_secret(tg_store_t *s, tg_entity_t ent, const char *id, const char *field,
                        char **out, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  const tg_field_t *f = tg_model_field(d, field);
  *out = NULL;
  if (!f || !(f->flags & TG_F_SECRET) || f->type != TG_FT_TEXT)
    return tg_problem_set(p, TG_EINVAL, field, "%s is not a secret text field of a %s", field,
                          d->name);
  int rc = check_id(d, id, p);
  if (rc)
    return rc;
  return s->vt->get_secret(s, d, id, f, out, p);
}

int tg_store_update(tg_store_t *s, tg_entity_t ent, const char *id, const json_t *changes,
                    bool allow_secret, int64_t if_version, json_t **row, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  if (row)
    *row = NULL;
  int rc = check_id(d, id, p);
  if (rc)
    return rc;
  rc = tg_model_validate(ent, changes, TG_VALIDATE_UPDATE, allow_secret, p);
  if (rc)
    return rc;
  return s->vt->update(s, d, id, changes, if_version, row, p);
}

int tg_store_touch(tg_store_t *s, tg_entity_t ent, const char *id, const char *field, int64_t value,
                   tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  const tg_field_t *f = tg_model_field(d, field);
  if (!f || !(f->flags & TG_F_SERVER) || f->type != TG_FT_TIME ||
      strcmp(field, "created_at") == 0 || strcmp(field, "updated_at") == 0)
    return tg_problem_set(p, TG_EINVAL, field, "%s is not a bookkeeping time of a %s", field,
                          d->name);
  int rc = check_id(d, id, p);
  if (rc)
    return rc;
  return s->vt->touch(s, d, id, f, value, p);
}

int tg_store_delete(tg_store_t *s, tg_entity_t ent, const char *id, int64_t if_version,
                    tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  int rc = check_id(d, id, p);
  if (rc)
    return rc;
  return s->vt->del(s, d, id, if_version, p);
}

static int check_filters(const tg_entity_desc_t *d, const tg_filter_t *filters, int n,
                         tg_problem_t *p) {
  if (n < 0 || n > TG_FILTER_MAX)
    return tg_problem_set(p, TG_EINVAL, "", "at most %d filters", TG_FILTER_MAX);
  for (int i = 0; i < n; i++) {
    const tg_field_t *f = tg_model_field(d, filters[i].field);
    if (!f || !(f->flags & TG_F_FILTER))
      return tg_problem_set(p, TG_EINVAL, filters[i].field, "%ss cannot be filtered by \"%.64s\"",
                            d->name, filters[i].field);
    if (!filters[i].value)
      return tg_problem_set(p, TG_EINVAL, filters[i].field, "filter without a value");
  }
  return TG_OK;
}

int tg_store_list(tg_store_t *s, tg_entity_t ent, const tg_list_query_t *q, json_t **rows,
                  char *next, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  *rows = NULL;
  next[0] = '\0';
  if (q->limit < 1 || q->limit > TG_LIST_MAX)
    return tg_problem_set(p, TG_EINVAL, "limit", "must be between 1 and %d", TG_LIST_MAX);
  if (q->after && !tg_model_id_valid(q->after, d->id_prefix))
    return tg_problem_set(p, TG_EINVAL, "cursor", "is not a cursor of this list");
  int rc = check_filters(d, q->filters, q->nfilters, p);
  if (rc)
    return rc;
  return s->vt->list(s, d, q, rows, next, p);
}

int tg_store_count(tg_store_t *s, tg_entity_t ent, const tg_filter_t *filters, int nfilters,
                   int64_t *count, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  *count = 0;
  int rc = check_filters(d, filters, nfilters, p);
  if (rc)
    return rc;
  return s->vt->count(s, d, filters, nfilters, count, p);
}

int tg_store_meta_get(tg_store_t *s, const char *key, char **value, tg_problem_t *p) {
  *value = NULL;
  return s->vt->meta_get(s, key, value, p);
}

int tg_store_meta_set(tg_store_t *s, const char *key, const char *value, tg_problem_t *p) {
  return s->vt->meta_set(s, key, value, p);
}

int tg_store_changes(tg_store_t *s, int64_t after_seq, int limit, tg_change_cb cb, void *ctx,
                     int64_t *last_seq, tg_problem_t *p) {
  if (limit < 1)
    return tg_problem_set(p, TG_EINVAL, "limit", "must be positive");
  return s->vt->changes(s, after_seq, limit, cb, ctx, last_seq, p);
}

int tg_store_data_version(tg_store_t *s, int64_t *version) {
  return s->vt->data_version(s, version);
}

int tg_store_backup(tg_store_t *s, const char *path, tg_problem_t *p) {
  if (!path || !*path)
    return tg_problem_set(p, TG_EINVAL, "file", "no backup file given");
  return s->vt->backup(s, path, p);
}

int tg_store_idem_get(tg_store_t *s, const unsigned char id[32], int64_t now, tg_idem_record_t *out,
                      tg_problem_t *p) {
  memset(out, 0, sizeof(*out));
  return s->vt->idem_get(s, id, now, out, p);
}

int tg_store_idem_put(tg_store_t *s, const unsigned char id[32], const tg_idem_record_t *rec,
                      int64_t now, int64_t expires_at, tg_problem_t *p) {
  if (rec->sealed_len > 1048576)
    return tg_problem_set(p, TG_ETOOBIG, "", "response too large to remember");
  return s->vt->idem_put(s, id, rec, now, expires_at, p);
}

int tg_store_idem_purge(tg_store_t *s, int64_t now, int64_t *deleted, tg_problem_t *p) {
  return s->vt->idem_purge(s, now, deleted, p);
}

int tg_store_scan(tg_store_t *s, tg_entity_t ent, const char *only_id, const char *const *cols,
                  int ncols, tg_scan_cb cb, void *ctx, tg_problem_t *p) {
  const tg_entity_desc_t *d = tg_model_entity(ent);
  const tg_field_t *fields[TG_SCAN_COLS_MAX];
  if (!d)
    return tg_problem_set(p, TG_EINVAL, "entity", "no entity %d", (int)ent);
  if (!cols || ncols < 1 || ncols > TG_SCAN_COLS_MAX)
    return tg_problem_set(p, TG_EINVAL, "cols", "give 1 to %d columns", TG_SCAN_COLS_MAX);
  for (int i = 0; i < ncols; i++) {
    const tg_field_t *f = cols[i] ? tg_model_field(d, cols[i]) : NULL;
    if (!f)
      return tg_problem_set(p, TG_EINVAL, "cols", "a %s has no column \"%.64s\"", d->name,
                            cols[i] ? cols[i] : "(null)");
    /* Digests are what the gateway matches keys against; other secrets
     * (password hashes) leave the store only through tg_store_get_secret. */
    if ((f->flags & TG_F_SECRET) && f->type != TG_FT_DIGEST)
      return tg_problem_set(p, TG_EINVAL, "cols", "%s is a secret of a %s", f->name, d->name);
    fields[i] = f;
  }
  if (only_id && !tg_model_id_valid(only_id, d->id_prefix))
    return tg_problem_set(p, TG_EINVAL, "only_id", "\"%.40s\" is not the id of a %s", only_id,
                          d->name);
  if (!cb)
    return tg_problem_set(p, TG_EINVAL, "cb", "no callback");
  return s->vt->scan(s, d, only_id, fields, ncols, cb, ctx, p);
}

/* A bad usage row: the field names the row and member ("rows[2].reason"). */
static int usage_bad(tg_problem_t *p, size_t i, const char *member, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int usage_bad(tg_problem_t *p, size_t i, const char *member, const char *fmt, ...) {
  char field[TG_PROBLEM_FIELD_MAX], detail[TG_PROBLEM_DETAIL_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);
  snprintf(field, sizeof(field), "rows[%zu].%s", i, member);
  return tg_problem_set(p, TG_EINVAL, field, "%s", detail);
}

int tg_usage_row_check(const tg_usage_row_t *r, size_t i, tg_problem_t *p) {
  if (r->granularity != 60 && r->granularity != 3600 && r->granularity != 86400)
    return usage_bad(p, i, "granularity", "must be 60, 3600 or 86400, not %lld",
                     (long long)r->granularity);
  if (r->period_start < 0 || r->period_start % r->granularity != 0)
    return usage_bad(p, i, "period_start", "%lld is not the start of a %lld s period",
                     (long long)r->period_start, (long long)r->granularity);
  const struct {
    const char *name, *v;
    size_t max;
  } texts[] = {
      {"key_id", r->key_id, TG_USAGE_ID_MAX},
      {"app_id", r->app_id, TG_USAGE_ID_MAX},
      {"developer_id", r->developer_id, TG_USAGE_ID_MAX},
      {"api_id", r->api_id, TG_USAGE_ID_MAX},
      {"plan_id", r->plan_id, TG_USAGE_ID_MAX},
      {"subscription_id", r->subscription_id, TG_USAGE_ID_MAX},
      {"reason", r->reason, TG_USAGE_REASON_MAX},
  };
  for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
    if (!texts[k].v)
      return usage_bad(p, i, texts[k].name, "is NULL (use \"\" for none)");
    if (strlen(texts[k].v) > texts[k].max)
      return usage_bad(p, i, texts[k].name, "is longer than %zu bytes", texts[k].max);
  }
  if (r->status_class < 0 || r->status_class > 5)
    return usage_bad(p, i, "status_class", "must be 0 to 5, not %d", r->status_class);
  if ((r->status_class == 0) != (r->reason[0] != '\0'))
    return usage_bad(p, i, "reason", "%s",
                     r->status_class == 0 ? "a rejected request (status_class 0) needs one"
                                          : "only rejected requests (status_class 0) have one");
  const struct {
    const char *name;
    int64_t v;
  } counters[] = {
      {"calls", r->calls},
      {"bytes_in", r->bytes_in},
      {"bytes_out", r->bytes_out},
      {"latency_us_sum", r->latency_us_sum},
  };
  for (size_t k = 0; k < sizeof(counters) / sizeof(counters[0]); k++)
    if (counters[k].v < 0)
      return usage_bad(p, i, counters[k].name, "must not be negative");
  /* Sum without overflow: every bucket is >= 0 and the running total stays
   * <= calls. */
  int64_t left = r->calls;
  for (int k = 0; k < TG_USAGE_BUCKETS; k++) {
    if (r->h[k] < 0)
      return usage_bad(p, i, "h", "bucket %d is negative", k);
    if (r->h[k] > left)
      return usage_bad(p, i, "h", "the latency buckets count more requests than calls");
    left -= r->h[k];
  }
  if (left != 0)
    return usage_bad(p, i, "h", "the latency buckets count fewer requests than calls");
  return TG_OK;
}

int tg_store_usage_add(tg_store_t *s, const tg_usage_row_t *rows, size_t n, tg_problem_t *p) {
  return tg_store_usage_add_paced(s, rows, n, 0, NULL, p);
}

int tg_store_usage_add_paced(tg_store_t *s, const tg_usage_row_t *rows, size_t n, size_t every,
                             void (*pause)(void), tg_problem_t *p) {
  if (n == 0)
    return TG_OK;
  if (!rows)
    return tg_problem_set(p, TG_EINVAL, "rows", "no rows");
  for (size_t i = 0; i < n; i++) {
    int rc = tg_usage_row_check(&rows[i], i, p);
    if (rc)
      return rc;
  }
  return s->vt->usage_add(s, rows, n, pause ? every : 0, pause, p);
}

int tg_store_usage_journal(tg_store_t *s, const tg_usage_row_t *rows, size_t n, int64_t now,
                           tg_problem_t *p) {
  if (n == 0)
    return TG_OK;
  if (!rows)
    return tg_problem_set(p, TG_EINVAL, "rows", "no rows");
  if (now < 0)
    return tg_problem_set(p, TG_EINVAL, "now", "before 1970");
  return s->vt->usage_journal(s, rows, n, now, p); /* the encoder checks each row */
}

int tg_store_usage_fold(tg_store_t *s, size_t every, void (*pause)(void), tg_usage_fold_stats_t *st,
                        tg_problem_t *p) {
  return s->vt->usage_fold(s, pause ? every : 0, pause, st, p);
}

int tg_store_usage_fold_start(tg_store_t *s, size_t every, void (*pause)(void),
                              tg_usage_fold_t **out, tg_problem_t *p) {
  *out = NULL;
  return s->vt->usage_fold_start(s, pause ? every : 0, pause, out, p);
}

int tg_store_usage_fold_step(tg_store_t *s, tg_usage_fold_t *f, size_t max_rows,
                             tg_usage_fold_stats_t *st, tg_problem_t *p) {
  if (!f || max_rows == 0)
    return tg_problem_set(p, TG_EINVAL, "fold", "no fold, or no rows a step");
  return s->vt->usage_fold_step(f, max_rows, st, p);
}

void tg_store_usage_fold_end(tg_store_t *s, tg_usage_fold_t *f) {
  if (f)
    s->vt->usage_fold_end(f);
}

const char *const tg_usage_reasons[TG_USAGE_REASONS] = {
    "missing_key",  "invalid_key",    "auth_throttled", "not_subscribed", "suspended",
    "rate_limited", "quota_exceeded", "no_route",       "bad_request",
};

static bool is_id_like(const char *v) {
  return strlen(v) <= TG_USAGE_ID_MAX;
}

int tg_usage_query_check(const tg_usage_query_t *q, tg_problem_t *p) {
  int64_t b = q->bucket;
  if (b != 0 && b != 60 && b != 3600 && b != 86400 && b != TG_USAGE_MONTH)
    return tg_problem_set(p, TG_EINVAL, "bucket", "must be minute, hour, day or month");
  if (q->from < 0 || q->from % 60 != 0)
    return tg_problem_set(p, TG_EINVAL, "from", "must be a whole minute at or after 1970");
  if (q->to % 60 != 0 || q->to <= q->from)
    return tg_problem_set(p, TG_EINVAL, "to", "must be a whole minute after from");
  if (q->to - q->from > (int64_t)100 * 366 * 86400)
    return tg_problem_set(p, TG_EINVAL, "to", "the range is longer than 100 years");
  if (b > 0 && (q->from % b != 0 || q->to % b != 0))
    return tg_problem_set(p, TG_EINVAL, q->from % b ? "from" : "to",
                          "must be at the start of a %s (UTC)",
                          b == 60     ? "minute"
                          : b == 3600 ? "hour"
                                      : "day");
  if (b == TG_USAGE_MONTH) {
    int64_t fs, ts, end;
    tg_utc_month(q->from, &fs, &end);
    tg_utc_month(q->to, &ts, &end);
    if (fs != q->from || ts != q->to)
      return tg_problem_set(p, TG_EINVAL, fs != q->from ? "from" : "to",
                            "must be at the start of a month (UTC)");
  }
  if (q->group_by & ~(unsigned)0x7f)
    return tg_problem_set(p, TG_EINVAL, "group_by", "unknown dimension");
  if (q->status_class < -1 || q->status_class > 5)
    return tg_problem_set(p, TG_EINVAL, "status_class", "must be 0 to 5");
  const char *const f[] = {q->developer_id, q->app_id,  q->key_id,
                           q->api_id,       q->plan_id, q->subscription_id};
  for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
    if (f[i] && !is_id_like(f[i]))
      return tg_problem_set(p, TG_EINVAL, "filter", "an id is too long");
  return TG_OK;
}

int tg_store_usage_open(tg_store_t *s, const tg_usage_query_t *q, tg_usage_cursor_t **out,
                        tg_problem_t *p) {
  *out = NULL;
  int rc = tg_usage_query_check(q, p);
  if (rc || (rc = s->vt->usage_fold(s, 0, NULL, NULL, p)))
    return rc;
  return s->vt->usage_open(s, q, out, p);
}

int tg_store_usage_next(tg_usage_cursor_t *cur, tg_usage_total_t *row, tg_problem_t *p) {
  return cur->store->vt->usage_next(cur, row, p);
}

void tg_store_usage_close(tg_usage_cursor_t *cur) {
  if (cur)
    cur->store->vt->usage_close(cur);
}

int tg_store_usage_compact(tg_store_t *s, int64_t now, int64_t lag, const tg_usage_retention_t *ret,
                           int max_periods, tg_usage_compact_stats_t *st, tg_problem_t *p) {
  if (lag < 0 || max_periods < 1 || !ret || ret->minutes_s < 0 || ret->hours_s < 0)
    return tg_problem_set(p, TG_EINVAL, "compact", "bad lag, budget or retention");
  /* the journal first: compaction sums the ledger's minute rows */
  int rc = s->vt->usage_fold(s, 0, NULL, NULL, p);
  if (rc)
    return rc;
  return s->vt->usage_compact(s, now, lag, ret, max_periods, st, p);
}

/* Quota usage: every call the gateway let through since `since`, per
 * subscription, from whichever granularities hold each period. */
int tg_store_usage_calls_since(tg_store_t *s, int64_t since, tg_usage_calls_cb cb, void *ctx,
                               tg_problem_t *p) {
  if (!cb)
    return tg_problem_set(p, TG_EINVAL, "cb", "no callback");
  tg_usage_query_t q = {.from = since - since % 60,
                        .to = since - since % 60 + (int64_t)400 * 86400,
                        .bucket = 0,
                        .group_by = TG_USAGE_BY_SUBSCRIPTION,
                        .status_class = -1};
  tg_usage_cursor_t *cur;
  int rc = tg_store_usage_open(s, &q, &cur, p);
  if (rc)
    return rc;
  tg_usage_total_t t;
  while ((rc = tg_store_usage_next(cur, &t, p)) == 1)
    if (t.subscription_id[0] && (rc = cb(t.subscription_id, t.calls - t.rejected, ctx)))
      break;
  tg_store_usage_close(cur);
  return rc < 0 || rc > 1 ? rc : TG_OK;
}

static bool period_ok(const char *period) {
  int64_t a, b;
  return period && tg_billing_period(period, &a, &b) == 0;
}

int tg_store_billing_get(tg_store_t *s, const char *period, char **lines, tg_problem_t *p) {
  *lines = NULL;
  if (!period_ok(period))
    return tg_problem_set(p, TG_EINVAL, "period", "must be YYYY-MM");
  return s->vt->billing_get(s, period, lines, p);
}

int tg_store_billing_put(tg_store_t *s, const char *period, int64_t generated_at, const char *lines,
                         tg_problem_t *p) {
  if (!period_ok(period))
    return tg_problem_set(p, TG_EINVAL, "period", "must be YYYY-MM");
  if (!lines || lines[0] != '[')
    return tg_problem_set(p, TG_EINVAL, "lines", "must be a JSON array");
  return s->vt->billing_put(s, period, generated_at, lines, p);
}

const char *tg_store_backend(tg_store_t *s) {
  return s->vt->name;
}
