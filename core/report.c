/*
 * report.c - usage reports and billing statements as streams of CSV or
 * JSON (see report.h for the columns and the rules).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/csv.h"
#include "core/report.h"
#include "core/util.h"

#define CHUNK (64 * 1024) /* hand out output about this size at a time */

/* ---- parameters ------------------------------------------------------------ */

#define NAME(s) s, sizeof(s) - 1
static const struct {
  const char *name;
  size_t name_len;
  unsigned bit;
  const char *col; /* the column / member name */
} dims[] = {
    {NAME("developer"), TG_USAGE_BY_DEVELOPER, "developer_id"},
    {NAME("app"), TG_USAGE_BY_APP, "app_id"},
    {NAME("key"), TG_USAGE_BY_KEY, "key_id"},
    {NAME("api"), TG_USAGE_BY_API, "api_id"},
    {NAME("plan"), TG_USAGE_BY_PLAN, "plan_id"},
    {NAME("subscription"), TG_USAGE_BY_SUBSCRIPTION, "subscription_id"},
    {NAME("status_class"), TG_USAGE_BY_STATUS_CLASS, "status_class"},
};
#undef NAME
#define NDIMS ((int)(sizeof(dims) / sizeof(dims[0])))

static const struct {
  const char *param;
  tg_entity_t ent;
} filters[6] = {
    {"developer_id", TG_ENT_DEVELOPER},
    {"app_id", TG_ENT_APP},
    {"key_id", TG_ENT_KEY},
    {"api_id", TG_ENT_API},
    {"plan_id", TG_ENT_PLAN},
    {"subscription_id", TG_ENT_SUBSCRIPTION},
};

static int64_t bucket_of(const char *g) {
  if (strcmp(g, "minute") == 0)
    return 60;
  if (strcmp(g, "hour") == 0)
    return 3600;
  if (strcmp(g, "day") == 0)
    return 86400;
  if (strcmp(g, "month") == 0)
    return TG_USAGE_MONTH;
  return 0;
}

static const char *bucket_name(int64_t b) {
  return b == 60 ? "minute" : b == 3600 ? "hour" : b == 86400 ? "day" : "month";
}

static int parse_time(const char *name, const char *v, int64_t *out, tg_problem_t *p) {
  bool exact;
  if (!v || !*v)
    return tg_problem_add(p, TG_EINVAL, name, "is required (RFC 3339 UTC time or YYYY-MM-DD)");
  if (tg_time_parse(v, out, &exact) != 0)
    return tg_problem_add(p, TG_EINVAL, name,
                          "is not an RFC 3339 time (2026-11-01T00:00:00Z) or a date (2026-11-01)");
  if (!exact || *out % 60 != 0)
    return tg_problem_add(p, TG_EINVAL, name, "must be a whole minute");
  return TG_OK;
}

int tg_report_params_parse(tg_store_t *s, tg_param_fn get, void *ctx, const char *accept,
                           tg_report_params_t *out, tg_problem_t *p) {
  memset(out, 0, sizeof(*out));
  tg_usage_query_t *q = &out->q;
  q->status_class = -1;
  int bad = 0;
  bad |= parse_time("from", get(ctx, "from"), &q->from, p) != TG_OK;
  bad |= parse_time("to", get(ctx, "to"), &q->to, p) != TG_OK;
  const char *g = get(ctx, "granularity");
  q->bucket = bucket_of(g && *g ? g : "day");
  if (!q->bucket) {
    tg_problem_add(p, TG_EINVAL, "granularity", "must be minute, hour, day or month");
    bad = 1;
  }
  const char *gb = get(ctx, "group_by");
  if (gb && *gb) {
    const char *t = gb;
    while (*t) {
      const char *e = strchr(t, ',');
      size_t n = e ? (size_t)(e - t) : strlen(t);
      int found = -1;
      for (int i = 0; i < NDIMS; i++)
        if (strlen(dims[i].name) == n && strncmp(t, dims[i].name, n) == 0)
          found = i;
      if (found < 0) {
        tg_problem_add(p, TG_EINVAL, "group_by",
                       "unknown dimension \"%.*s\" (developer, app, key, api, plan, "
                       "subscription, status_class)",
                       (int)(n > 40 ? 40 : n), t);
        bad = 1;
      } else {
        q->group_by |= dims[found].bit;
      }
      t += n;
      if (*t == ',')
        t++;
    }
  }
  const char *sc = get(ctx, "status_class");
  if (sc && *sc) {
    if (strlen(sc) != 1 || sc[0] < '0' || sc[0] > '5') {
      tg_problem_add(p, TG_EINVAL, "status_class", "must be 0 (refused by the gateway) to 5");
      bad = 1;
    } else {
      q->status_class = sc[0] - '0';
    }
  }
  const char *fmt = get(ctx, "format");
  if (fmt && *fmt) {
    if (strcmp(fmt, "csv") == 0)
      out->format = TG_REPORT_CSV;
    else if (strcmp(fmt, "json") != 0) {
      tg_problem_add(p, TG_EINVAL, "format", "must be json or csv");
      bad = 1;
    }
  } else if (accept && strstr(accept, "text/csv")) {
    out->format = TG_REPORT_CSV;
  }
  const char **slot[6] = {&q->developer_id, &q->app_id,  &q->key_id,
                          &q->api_id,       &q->plan_id, &q->subscription_id};
  for (int i = 0; i < 6; i++) {
    const char *v = get(ctx, filters[i].param);
    if (!v)
      continue;
    json_t *row = NULL;
    tg_problem_t np = {0};
    if (!*v || strlen(v) >= sizeof(out->filter_ids[i]) ||
        tg_store_get(s, filters[i].ent, v, &row, &np) != TG_OK) {
      tg_problem_add(p, TG_EINVAL, filters[i].param, "no %s has this id",
                     tg_model_entity(filters[i].ent)->name);
      bad = 1;
      continue;
    }
    json_decref(row);
    snprintf(out->filter_ids[i], sizeof(out->filter_ids[i]), "%s", v);
    *slot[i] = out->filter_ids[i];
  }
  if (bad)
    return TG_EINVAL;
  if (q->to <= q->from)
    return tg_problem_add(p, TG_EINVAL, "to", "must be after from (the range is [from, to))");
  tg_problem_t c = {0};
  if (tg_usage_query_check(q, &c) != TG_OK)
    return tg_problem_add(p, TG_EINVAL, c.field, "%s", c.detail);
  return TG_OK;
}

/* ---- the stream ---------------------------------------------------------------- */

typedef enum { K_USAGE, K_BILLING } kind_t;

struct tg_report {
  kind_t kind;
  tg_report_format_t fmt;
  tg_store_t *store;
  tg_csv_buf_t out; /* the pending chunk of CSV */
  char *json;       /* ... or of JSON */
  size_t jlen, jcap;
  int state; /* 0: header not yet written, 1: rows, 2: trailer written, 3: done */
  size_t nrows;
  /* usage */
  tg_usage_cursor_t *cur;
  tg_usage_query_t q; /* its strings point into params.filter_ids */
  tg_report_params_t params;
  int64_t time_for; /* the bucket whose times are formatted below */
  char t_start[21], t_end[21];
  tg_record_id_state_t rid_prefix; /* record ids: kind, granularity, period hashed once */
  /* billing */
  json_t *lines; /* the statement's lines */
  size_t next_line;
  char period[8];
  bool closed;
};

const char *tg_report_type(const tg_report_t *r) {
  return r->fmt == TG_REPORT_CSV ? TG_REPORT_CSV_TYPE : TG_REPORT_JSON_TYPE;
}

static int put(tg_report_t *r, const char *s, size_t n) {
  if (r->jlen + n + 1 > r->jcap) {
    size_t cap = r->jcap ? r->jcap : CHUNK + 4096;
    while (cap < r->jlen + n + 1)
      cap *= 2;
    char *j = realloc(r->json, cap);
    if (!j)
      return -1;
    r->json = j;
    r->jcap = cap;
  }
  memcpy(r->json + r->jlen, s, n);
  r->jlen += n;
  r->json[r->jlen] = '\0';
  return 0;
}

static int puts_(tg_report_t *r, const char *s) {
  return put(r, s, strlen(s));
}

/* A JSON string (ids and words: escaped anyway). */
static int put_jstr(tg_report_t *r, const char *s) {
  /* by hand: no allocation per value (a report writes millions); UTF-8
   * passes through (ids and slugs are ASCII; emails are validated text) */
  static const char hex[] = "0123456789abcdef";
  if (put(r, "\"", 1))
    return -1;
  const char *run = s;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c >= 0x20 && c != '"' && c != '\\')
      continue;
    if (s > run && put(r, run, (size_t)(s - run)))
      return -1;
    char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
    size_t n = 2;
    if (c < 0x20) {
      esc[1] = 'u';
      esc[2] = '0';
      esc[3] = '0';
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      n = 6;
    }
    if (put(r, esc, n))
      return -1;
    run = s + 1;
  }
  if (s > run && put(r, run, (size_t)(s - run)))
    return -1;
  return put(r, "\"", 1);
}

static int put_int(tg_report_t *r, int64_t v) {
  char b[24];
  int n = snprintf(b, sizeof(b), "%lld", (long long)v);
  return put(r, b, (size_t)n);
}

/* Upper bounds of the ledger's latency buckets, ms (the last is open). */
static const int64_t bucket_ms[TG_USAGE_BUCKETS - 1] = {5,   10,  25,   50,   75,   100,  250,
                                                        500, 750, 1000, 2500, 5000, 7500, 10000};

static double quantile(const int64_t *h, int64_t calls, double q) {
  if (calls <= 0)
    return 0;
  double rank = q * (double)calls, cum = 0;
  for (int i = 0; i < TG_USAGE_BUCKETS; i++) {
    if (h[i] > 0 && cum + (double)h[i] >= rank) {
      if (i == TG_USAGE_BUCKETS - 1)
        return (double)bucket_ms[i - 1];
      double lo = i ? (double)bucket_ms[i - 1] : 0, hi = (double)bucket_ms[i];
      return lo + (hi - lo) * (rank - cum) / (double)h[i];
    }
    cum += (double)h[i];
  }
  return (double)bucket_ms[TG_USAGE_BUCKETS - 2];
}

static int64_t bucket_end(int64_t start, int64_t bucket) {
  if (bucket > 0)
    return start + bucket;
  int64_t month, end;
  tg_utc_month(start, &month, &end);
  return end;
}

static const char *dim_value(const tg_usage_total_t *t, int i, char *num) {
  switch (dims[i].bit) {
  case TG_USAGE_BY_DEVELOPER: return t->developer_id;
  case TG_USAGE_BY_APP: return t->app_id;
  case TG_USAGE_BY_KEY: return t->key_id;
  case TG_USAGE_BY_API: return t->api_id;
  case TG_USAGE_BY_PLAN: return t->plan_id;
  case TG_USAGE_BY_SUBSCRIPTION: return t->subscription_id;
  default: snprintf(num, 8, "%d", t->status_class); return num;
  }
}

static int usage_header(tg_report_t *r) {
  const tg_usage_query_t *q = &r->q;
  char a[21], b[21];
  tg_time_format(q->from, a);
  tg_time_format(q->to, b);
  if (r->fmt == TG_REPORT_CSV) {
    int rc = tg_csv_field(&r->out, "record_id", 9) || tg_csv_field(&r->out, "period_start", 12) ||
             tg_csv_field(&r->out, "period_end", 10);
    for (int i = 0; i < NDIMS; i++)
      if (q->group_by & dims[i].bit)
        rc = rc || tg_csv_field(&r->out, dims[i].col, strlen(dims[i].col));
    static const char *const cols[] = {"calls", "billable_calls", "errors_4xx", "errors_5xx",
                                       "rejected_calls"};
    for (size_t i = 0; i < 5; i++)
      rc = rc || tg_csv_field(&r->out, cols[i], strlen(cols[i]));
    for (int i = 0; i < TG_USAGE_REASONS; i++) {
      char name[48];
      int n = snprintf(name, sizeof(name), "rejected_%s", tg_usage_reasons[i]);
      rc = rc || tg_csv_field(&r->out, name, (size_t)n);
    }
    static const char *const tail[] = {"bytes_in",       "bytes_out",      "latency_avg_ms",
                                       "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"};
    for (size_t i = 0; i < 6; i++)
      rc = rc || tg_csv_field(&r->out, tail[i], strlen(tail[i]));
    return rc || tg_csv_end_row(&r->out);
  }
  int rc = puts_(r, "{\"report\":{\"kind\":\"usage\",\"from\":\"") || puts_(r, a) ||
           puts_(r, "\",\"to\":\"") || puts_(r, b) || puts_(r, "\",\"granularity\":\"") ||
           puts_(r, bucket_name(q->bucket)) || puts_(r, "\",\"group_by\":[");
  int k = 0;
  for (int i = 0; i < NDIMS; i++)
    if (q->group_by & dims[i].bit) {
      rc = rc || puts_(r, k++ ? ",\"" : "\"") || puts_(r, dims[i].name) || puts_(r, "\"");
    }
  rc = rc || puts_(r, "],\"filters\":{");
  const char *fv[6] = {q->developer_id, q->app_id,  q->key_id,
                       q->api_id,       q->plan_id, q->subscription_id};
  k = 0;
  for (int i = 0; i < 6; i++)
    if (fv[i]) {
      rc = rc || puts_(r, k++ ? ",\"" : "\"") || puts_(r, filters[i].param) || puts_(r, "\":") ||
           put_jstr(r, fv[i]);
    }
  if (q->status_class >= 0)
    rc = rc || puts_(r, k++ ? ",\"status_class\":" : "\"status_class\":") ||
         put_int(r, q->status_class);
  return rc || puts_(r, "}},\"rows\":[");
}

/* Milliseconds with three decimals from microseconds, without printf. */
static size_t fmt_ms(char *out, int64_t us) {
  char tmp[32];
  char *e = tmp + sizeof(tmp), *c = e;
  if (us < 0)
    us = 0;
  for (int i = 0; i < 3; i++, us /= 10)
    *--c = (char)('0' + us % 10);
  *--c = '.';
  do {
    *--c = (char)('0' + us % 10);
    us /= 10;
  } while (us);
  memcpy(out, c, (size_t)(e - c));
  out[e - c] = '\0';
  return (size_t)(e - c);
}

static int usage_row(tg_report_t *r, const tg_usage_total_t *t) {
  const tg_usage_query_t *q = &r->q;
  if (r->time_for != t->period_start || !r->t_start[0]) { /* once per bucket */
    r->time_for = t->period_start;
    tg_time_format(t->period_start, r->t_start);
    tg_time_format(bucket_end(t->period_start, q->bucket), r->t_end);
    char ps[24];
    const char *gn = bucket_name(q->bucket);
    int pl = snprintf(ps, sizeof(ps), "%lld", (long long)t->period_start);
    tg_record_id_start(&r->rid_prefix);
    tg_record_id_add(&r->rid_prefix, "usage", 5);
    tg_record_id_add(&r->rid_prefix, gn, strlen(gn));
    tg_record_id_add(&r->rid_prefix, ps, (size_t)pl);
    /* rows of a filtered report are other records than the unfiltered
     * ones with the same dimensions: the filters are part of the id */
    const char *fv[6] = {q->developer_id, q->app_id,  q->key_id,
                         q->api_id,       q->plan_id, q->subscription_id};
    for (int i = 0; i < 6; i++)
      if (fv[i]) {
        tg_record_id_add(&r->rid_prefix, filters[i].param, strlen(filters[i].param));
        tg_record_id_add(&r->rid_prefix, fv[i], strlen(fv[i]));
      }
    if (q->status_class >= 0) {
      char cls[2] = {(char)('0' + q->status_class), '\0'};
      tg_record_id_add(&r->rid_prefix, "status_class", 12);
      tg_record_id_add(&r->rid_prefix, cls, 1);
    }
  }
  /* record_id: what the row is (kind, granularity, period, then each
   * grouped dimension's name and value), never its numbers */
  char nums[NDIMS][8], rid[TG_RECORD_ID_LEN + 1];
  const char *parts[2 * NDIMS], *dv[NDIMS] = {0};
  size_t plen[2 * NDIMS], dl[NDIMS] = {0}, np = 0;
  for (int i = 0; i < NDIMS; i++)
    if (q->group_by & dims[i].bit) {
      dv[i] = dim_value(t, i, nums[i]);
      dl[i] = strlen(dv[i]);
      parts[np] = dims[i].name;
      plen[np++] = dims[i].name_len;
      parts[np] = dv[i];
      plen[np++] = dl[i];
    }
  tg_record_id_state_t rs = r->rid_prefix;
  tg_record_id_addv(&rs, parts, plen, np);
  tg_record_id_end(&rs, rid);
  /* latencies in ms with 3 decimals, formatted from whole microseconds
   * (locale-proof, and an export writes millions of them) */
  char lat[4][32];
  size_t ll[4];
  ll[0] = fmt_ms(lat[0], t->calls ? (t->latency_us_sum + t->calls / 2) / t->calls : 0);
  ll[1] = fmt_ms(lat[1], (int64_t)(quantile(t->h, t->calls, 0.50) * 1000 + 0.5));
  ll[2] = fmt_ms(lat[2], (int64_t)(quantile(t->h, t->calls, 0.95) * 1000 + 0.5));
  ll[3] = fmt_ms(lat[3], (int64_t)(quantile(t->h, t->calls, 0.99) * 1000 + 0.5));
  if (r->fmt == TG_REPORT_CSV) {
    /* a few writer calls per row, not thirty: the numbers go out in runs */
    const char *head[3] = {rid, r->t_start, r->t_end};
    static const size_t head_len[3] = {TG_RECORD_ID_LEN, 20, 20};
    int rc = tg_csv_raws(&r->out, head, head_len, 3);
    for (int i = 0; i < NDIMS; i++)
      if (q->group_by & dims[i].bit)
        rc = rc || (dims[i].bit == TG_USAGE_BY_STATUS_CLASS ? tg_csv_int(&r->out, t->status_class)
                                                            : tg_csv_field(&r->out, dv[i], dl[i]));
    int64_t v[7 + TG_USAGE_REASONS];
    int nv = 0;
    v[nv++] = t->calls;
    v[nv++] = t->billable;
    v[nv++] = t->errors_4xx;
    v[nv++] = t->errors_5xx;
    v[nv++] = t->rejected;
    for (int i = 0; i < TG_USAGE_REASONS; i++)
      v[nv++] = t->rejected_by[i];
    v[nv++] = t->bytes_in;
    v[nv++] = t->bytes_out;
    const char *lp[4] = {lat[0], lat[1], lat[2], lat[3]};
    rc = rc || tg_csv_ints(&r->out, v, (size_t)nv) || tg_csv_raws(&r->out, lp, ll, 4);
    return rc || tg_csv_end_row(&r->out);
  }
  const char *a = r->t_start, *b = r->t_end;
  int rc = puts_(r, r->nrows ? ",{\"record_id\":\"" : "{\"record_id\":\"") || puts_(r, rid) ||
           puts_(r, "\",\"period_start\":\"") || puts_(r, a) || puts_(r, "\",\"period_end\":\"") ||
           puts_(r, b) || puts_(r, "\"");
  for (int i = 0; i < NDIMS; i++)
    if (q->group_by & dims[i].bit) {
      rc = rc || puts_(r, ",\"") || puts_(r, dims[i].col) || puts_(r, "\":");
      rc = rc || (dims[i].bit == TG_USAGE_BY_STATUS_CLASS ? put_int(r, t->status_class)
                                                          : put_jstr(r, dv[i]));
    }
  rc = rc || puts_(r, ",\"calls\":") || put_int(r, t->calls) || puts_(r, ",\"billable_calls\":") ||
       put_int(r, t->billable) || puts_(r, ",\"errors_4xx\":") || put_int(r, t->errors_4xx) ||
       puts_(r, ",\"errors_5xx\":") || put_int(r, t->errors_5xx) ||
       puts_(r, ",\"rejected_calls\":") || put_int(r, t->rejected) ||
       puts_(r, ",\"rejected_by_reason\":{");
  for (int i = 0; i < TG_USAGE_REASONS; i++)
    rc = rc || puts_(r, i ? ",\"" : "\"") || puts_(r, tg_usage_reasons[i]) || puts_(r, "\":") ||
         put_int(r, t->rejected_by[i]);
  rc = rc || puts_(r, "},\"bytes_in\":") || put_int(r, t->bytes_in) ||
       puts_(r, ",\"bytes_out\":") || put_int(r, t->bytes_out) ||
       puts_(r, ",\"latency_ms\":{\"avg\":") || puts_(r, lat[0]) || puts_(r, ",\"p50\":") ||
       puts_(r, lat[1]) || puts_(r, ",\"p95\":") || puts_(r, lat[2]) || puts_(r, ",\"p99\":") ||
       puts_(r, lat[3]) || puts_(r, "}}");
  return rc;
}

int tg_report_open(tg_store_t *s, const tg_report_params_t *rp, tg_report_t **out,
                   tg_problem_t *p) {
  *out = NULL;
  tg_report_t *r = calloc(1, sizeof(*r));
  if (!r)
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  r->kind = K_USAGE;
  r->fmt = rp->format;
  r->store = s;
  /* the query's filter strings may belong to the caller's stack: keep copies */
  r->params = *rp;
  r->q = rp->q;
  const char **slot[6] = {&r->q.developer_id, &r->q.app_id,  &r->q.key_id,
                          &r->q.api_id,       &r->q.plan_id, &r->q.subscription_id};
  for (int i = 0; i < 6; i++)
    if (*slot[i]) {
      snprintf(r->params.filter_ids[i], sizeof(r->params.filter_ids[i]), "%s", *slot[i]);
      *slot[i] = r->params.filter_ids[i];
    }
  tg_csv_buf_init(&r->out, 0);
  int rc = tg_store_usage_open(s, &r->q, &r->cur, p);
  if (rc) {
    tg_csv_buf_dispose(&r->out);
    free(r);
    return rc;
  }
  *out = r;
  return TG_OK;
}

/* ---- billing ----------------------------------------------------------------------- */

int tg_billing_period(const char *period, int64_t *start, int64_t *end) {
  int y = 0, m = 0;
  if (!period || strlen(period) != 7 || period[4] != '-')
    return -1;
  for (int i = 0; i < 7; i++)
    if (i != 4 && (period[i] < '0' || period[i] > '9'))
      return -1;
  y = (int)strtol(period, NULL, 10);
  m = (int)strtol(period + 5, NULL, 10);
  if (y < 1970 || y > 9999 || m < 1 || m > 12)
    return -1;
  struct tm tm = {0};
  tm.tm_year = y - 1900;
  tm.tm_mon = m - 1;
  tm.tm_mday = 1;
  tg_utc_month((int64_t)timegm(&tm), start, end);
  return 0;
}

typedef struct sub_rec {
  char id[40], app_id[40], api_id[40], plan_id[40], status[16];
  int64_t created_at, updated_at;
} sub_rec_t;

typedef struct bill_ctx {
  sub_rec_t *subs;
  size_t n, cap;
  json_t *apps, *devs, *plans, *apis; /* id -> object */
  const char *err;
} bill_ctx_t;

static const char *vs(const tg_value_t *v) {
  return v->type == TG_V_TEXT ? v->s : "";
}

static int64_t vi(const tg_value_t *v) {
  return v->type == TG_V_INT ? v->i : 0;
}

static int sub_cb(const tg_value_t *v, int n, void *ctx) {
  (void)n;
  bill_ctx_t *b = ctx;
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    sub_rec_t *a = realloc(b->subs, cap * sizeof(*a));
    if (!a)
      return b->err = "out of memory", -1;
    b->subs = a;
    b->cap = cap;
  }
  sub_rec_t *s = &b->subs[b->n++];
  memset(s, 0, sizeof(*s));
  snprintf(s->id, sizeof(s->id), "%s", vs(&v[0]));
  snprintf(s->app_id, sizeof(s->app_id), "%s", vs(&v[1]));
  snprintf(s->api_id, sizeof(s->api_id), "%s", vs(&v[2]));
  snprintf(s->plan_id, sizeof(s->plan_id), "%s", vs(&v[3]));
  snprintf(s->status, sizeof(s->status), "%s", vs(&v[4]));
  s->created_at = vi(&v[5]);
  s->updated_at = vi(&v[6]);
  return 0;
}

/* Rows of small tables into an id -> {column: value} object. */
typedef struct map_ctx {
  json_t *map;
  const char *const *cols;
  int ncols;
} map_ctx_t;

static int map_cb(const tg_value_t *v, int n, void *ctx) {
  map_ctx_t *m = ctx;
  json_t *o = json_object();
  for (int i = 1; i < n && o; i++)
    json_object_set_new(o, m->cols[i],
                        v[i].type == TG_V_INT    ? json_integer(v[i].i)
                        : v[i].type == TG_V_TEXT ? json_string(v[i].s)
                                                 : json_null());
  if (!o || json_object_set_new(m->map, vs(&v[0]), o))
    return -1;
  return 0;
}

static int load_map(tg_store_t *s, tg_entity_t ent, const char *const *cols, int ncols,
                    json_t **out, tg_problem_t *p) {
  map_ctx_t m = {json_object(), cols, ncols};
  if (!m.map)
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  int rc = tg_store_scan(s, ent, NULL, cols, ncols, map_cb, &m, p);
  if (rc) {
    json_decref(m.map);
    return rc ? rc : TG_ENOMEM;
  }
  *out = m.map;
  return TG_OK;
}

static const char *ostr(const json_t *o, const char *k) {
  const char *v = json_string_value(json_object_get(o, k));
  return v ? v : "";
}

static int64_t oint(const json_t *o, const char *k) {
  return json_integer_value(json_object_get(o, k));
}

static int sub_cmp(const void *a, const void *b) {
  const sub_rec_t *x = a, *y = b;
  return strcmp(x->id, y->id);
}

static int line_cmp(const void *x, const void *y) {
  const json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
  static const char *const keys[3] = {"developer_id", "subscription_id", "plan_id"};
  for (int i = 0; i < 3; i++) {
    int c = strcmp(ostr(a, keys[i]), ostr(b, keys[i]));
    if (c)
      return c;
  }
  return 0;
}

/* Compute a month's lines (by developer, subscription, plan). */
static int billing_compute(tg_store_t *s, int64_t start, int64_t end, json_t **lines,
                           tg_problem_t *p) {
  bill_ctx_t b = {0};
  int rc;
  static const char *const sub_cols[] = {"id",     "app_id",     "api_id",    "plan_id",
                                         "status", "created_at", "updated_at"};
  static const char *const app_cols[] = {"id", "developer_id", "name"};
  static const char *const dev_cols[] = {"id", "email", "billing_customer_id"};
  static const char *const plan_cols[] = {
      "id", "slug", "monthly_fee_minor", "included_calls", "overage_price_micros", "currency"};
  static const char *const api_cols[] = {"id", "slug"};
  *lines = NULL;
  if ((rc = tg_store_scan(s, TG_ENT_SUBSCRIPTION, NULL, sub_cols, 7, sub_cb, &b, p)) ||
      (rc = load_map(s, TG_ENT_APP, app_cols, 3, &b.apps, p)) ||
      (rc = load_map(s, TG_ENT_DEVELOPER, dev_cols, 3, &b.devs, p)) ||
      (rc = load_map(s, TG_ENT_PLAN, plan_cols, 6, &b.plans, p)) ||
      (rc = load_map(s, TG_ENT_API, api_cols, 2, &b.apis, p)))
    goto out;
  if (b.n)
    qsort(b.subs, b.n, sizeof(*b.subs), sub_cmp);
  /* billable calls per subscription over the month */
  tg_usage_query_t q = {.from = start,
                        .to = end,
                        .bucket = 0,
                        .group_by = TG_USAGE_BY_SUBSCRIPTION | TG_USAGE_BY_PLAN,
                        .status_class = -1};
  tg_usage_cursor_t *cur = NULL;
  if ((rc = tg_store_usage_open(s, &q, &cur, p)))
    goto out;
  /* billable calls per subscription and plan (a plan changed in the month
   * bills each plan's calls at that plan's price) */
  json_t *used = json_object(); /* subscription id -> {plan id: billable} */
  tg_usage_total_t t;
  while (used && (rc = tg_store_usage_next(cur, &t, p)) == 1) {
    if (!t.subscription_id[0] || t.billable == 0)
      continue;
    json_t *per = json_object_get(used, t.subscription_id);
    if (!per && (json_object_set_new(used, t.subscription_id, json_object()) ||
                 !(per = json_object_get(used, t.subscription_id))))
      rc = -1;
    else if (json_object_set_new(per, t.plan_id,
                                 json_integer(oint(per, t.plan_id) + (json_int_t)t.billable)))
      rc = -1;
    if (rc < 0)
      break;
  }
  tg_store_usage_close(cur);
  if (!used || rc < 0) {
    json_decref(used);
    rc = rc < 0 && p->code ? rc : tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  json_t *arr = json_array();
  if (!arr) {
    json_decref(used);
    rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  for (size_t i = 0; i < b.n; i++) {
    sub_rec_t *sr = &b.subs[i];
    bool charged = strcmp(sr->status, "pending") != 0 && sr->created_at < end &&
                   !(strcmp(sr->status, "cancelled") == 0 && sr->updated_at < start);
    json_t *per = json_object_get(used, sr->id);
    /* one line per plan with calls, and the current plan's (which carries
     * the monthly fee) */
    json_t *plans_here = json_object();
    const char *pid;
    json_t *v;
    json_object_foreach(per, pid, v) json_object_set(plans_here, pid, v);
    if (charged && !json_object_get(plans_here, sr->plan_id))
      json_object_set_new(plans_here, sr->plan_id, json_integer(0));
    const json_t *app = json_object_get(b.apps, sr->app_id);
    const char *dev_id = ostr(app, "developer_id");
    const json_t *dev = json_object_get(b.devs, dev_id);
    const json_t *api = json_object_get(b.apis, sr->api_id);
    json_object_foreach(plans_here, pid, v) {
      const json_t *plan = json_object_get(b.plans, pid);
      int64_t billable = json_integer_value(v);
      int64_t fee = charged && strcmp(pid, sr->plan_id) == 0 ? oint(plan, "monthly_fee_minor") : 0;
      int64_t included = oint(plan, "included_calls");
      int64_t over = billable > included ? billable - included : 0;
      int64_t price = oint(plan, "overage_price_micros");
      /* over <= 1e13 and price <= 1e12: the product needs 128 bits */
      __extension__ unsigned __int128 prod = (unsigned __int128)over * (unsigned __int128)price;
      int64_t over_amount = (int64_t)((prod + 500000) / 1000000);
      json_t *ln = json_pack(
          "{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "developer_id",
          dev_id, "developer_email", ostr(dev, "email"), "billing_customer_id",
          ostr(dev, "billing_customer_id"), "app_id", sr->app_id, "subscription_id", sr->id, "api",
          ostr(api, "slug"), "plan_id", pid, "plan", ostr(plan, "slug"), "subscription_status",
          sr->status, "monthly_fee_minor", (json_int_t)fee, "included_calls", (json_int_t)included,
          "billable_calls", (json_int_t)billable, "overage_calls", (json_int_t)over,
          "price_per_call_micros", (json_int_t)price, "overage_amount_minor",
          (json_int_t)over_amount, "amount_minor", (json_int_t)(fee + over_amount), "currency",
          ostr(plan, "currency"));
      if (!ln || json_array_append_new(arr, ln)) {
        json_decref(plans_here);
        json_decref(used);
        json_decref(arr);
        rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
        goto out;
      }
    }
    json_decref(plans_here);
  }
  json_decref(used);
  /* order: developer, subscription, plan */
  size_t n = json_array_size(arr);
  json_t **v2 = malloc((n ? n : 1) * sizeof(*v2));
  if (!v2) {
    json_decref(arr);
    rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  for (size_t i = 0; i < n; i++)
    v2[i] = json_incref(json_array_get(arr, i));
  qsort(v2, n, sizeof(*v2), line_cmp);
  json_array_clear(arr);
  for (size_t i = 0; i < n; i++)
    json_array_append_new(arr, v2[i]);
  free(v2);
  *lines = arr;
  rc = TG_OK;
out:
  free(b.subs);
  json_decref(b.apps);
  json_decref(b.devs);
  json_decref(b.plans);
  json_decref(b.apis);
  return rc;
}

int tg_billing_open(tg_store_t *s, const char *period, tg_report_format_t fmt, int64_t now,
                    int64_t close_after, tg_report_t **out, tg_problem_t *p) {
  int64_t start, end;
  *out = NULL;
  if (tg_billing_period(period, &start, &end) != 0)
    return tg_problem_set(p, TG_EINVAL, "period", "must be a month as YYYY-MM (e.g. 2026-11)");
  if (start > now)
    return tg_problem_set(p, TG_EINVAL, "period", "%s has not begun", period);
  tg_report_t *r = calloc(1, sizeof(*r));
  if (!r)
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  r->kind = K_BILLING;
  r->fmt = fmt;
  r->store = s;
  snprintf(r->period, sizeof(r->period), "%s", period);
  r->closed = now >= end + close_after;
  tg_csv_buf_init(&r->out, 0);
  int rc = TG_OK;
  char *kept = NULL;
  if (r->closed) {
    rc = tg_store_billing_get(s, period, &kept, p);
    if (rc == TG_OK) {
      json_error_t je;
      r->lines = json_loads(kept, 0, &je);
      free(kept);
      if (!json_is_array(r->lines))
        rc = tg_problem_set(p, TG_ESTORE, "period", "the kept statement of %s is damaged", period);
    } else if (rc == TG_ENOTFOUND) {
      tg_problem_clear(p);
      if ((rc = billing_compute(s, start, end, &r->lines, p)) == TG_OK) {
        char *text = json_dumps(r->lines, JSON_COMPACT | JSON_PRESERVE_ORDER);
        rc = text ? tg_store_billing_put(s, period, now, text, p)
                  : tg_problem_set(p, TG_ENOMEM, "", NULL);
        free(text);
        /* another exporter may have kept its statement first: serve that one */
        json_decref(r->lines);
        r->lines = NULL;
        if (rc == TG_OK && (rc = tg_store_billing_get(s, period, &kept, p)) == TG_OK) {
          json_error_t je;
          r->lines = json_loads(kept, 0, &je);
          free(kept);
          if (!json_is_array(r->lines))
            rc = tg_problem_set(p, TG_ESTORE, "period", "the kept statement is damaged");
        }
      }
    }
  } else {
    rc = billing_compute(s, start, end, &r->lines, p);
  }
  if (rc) {
    json_decref(r->lines);
    tg_csv_buf_dispose(&r->out);
    free(r);
    return rc;
  }
  *out = r;
  return TG_OK;
}

static const char *const bill_cols[] = {"record_id",
                                        "period",
                                        "line_type",
                                        "developer_id",
                                        "developer_email",
                                        "billing_customer_id",
                                        "app_id",
                                        "subscription_id",
                                        "api",
                                        "plan_id",
                                        "plan",
                                        "subscription_status",
                                        "monthly_fee_minor",
                                        "included_calls",
                                        "billable_calls",
                                        "overage_calls",
                                        "price_per_call_micros",
                                        "overage_amount_minor",
                                        "amount_minor",
                                        "currency"};
#define NBILL ((int)(sizeof(bill_cols) / sizeof(bill_cols[0])))

/* One line (a subscription's, or a developer's total) in either format. */
static int bill_line(tg_report_t *r, json_t *ln, const char *type) {
  bool total = strcmp(type, "total") == 0;
  const char *parts[6] = {"billing",
                          r->period,
                          type,
                          ostr(ln, "developer_id"),
                          total ? ostr(ln, "currency") : ostr(ln, "subscription_id"),
                          total ? "" : ostr(ln, "plan_id")};
  char rid[TG_RECORD_ID_LEN + 1];
  if (tg_record_id(rid, parts, 6) != 0)
    return -1;
  if (r->fmt == TG_REPORT_CSV) {
    int rc = tg_csv_raw(&r->out, rid, TG_RECORD_ID_LEN) ||
             tg_csv_field(&r->out, r->period, strlen(r->period)) ||
             tg_csv_field(&r->out, type, strlen(type));
    for (int i = 3; i < NBILL; i++) {
      const json_t *v = json_object_get(ln, bill_cols[i]);
      if (json_is_integer(v))
        rc = rc || tg_csv_int(&r->out, json_integer_value(v));
      else {
        const char *sv = json_string_value(v);
        rc = rc || tg_csv_field(&r->out, sv ? sv : "", sv ? strlen(sv) : 0);
      }
    }
    return rc || tg_csv_end_row(&r->out);
  }
  int rc = puts_(r, r->nrows ? ",{\"record_id\":\"" : "{\"record_id\":\"") || puts_(r, rid) ||
           puts_(r, "\",\"period\":\"") || puts_(r, r->period) || puts_(r, "\",\"line_type\":\"") ||
           puts_(r, type) || puts_(r, "\"");
  for (int i = 3; i < NBILL; i++) {
    const json_t *v = json_object_get(ln, bill_cols[i]);
    if (!v)
      continue;
    rc = rc || puts_(r, ",\"") || puts_(r, bill_cols[i]) || puts_(r, "\":");
    rc = rc || (json_is_integer(v) ? put_int(r, json_integer_value(v))
                                   : put_jstr(r, json_string_value(v) ? json_string_value(v) : ""));
  }
  return rc || puts_(r, "}");
}

/* After the last line of a developer: its totals, one per currency. */
static int bill_totals(tg_report_t *r, size_t first, size_t last) {
  for (size_t i = first; i <= last; i++) {
    const char *cur = ostr(json_array_get(r->lines, i), "currency");
    bool seen = false;
    for (size_t j = first; j < i && !seen; j++)
      seen = strcmp(ostr(json_array_get(r->lines, j), "currency"), cur) == 0;
    if (seen)
      continue;
    int64_t sum[5] = {0};
    static const char *const f[5] = {"monthly_fee_minor", "billable_calls", "overage_calls",
                                     "overage_amount_minor", "amount_minor"};
    for (size_t j = i; j <= last; j++) {
      json_t *ln = json_array_get(r->lines, j);
      if (strcmp(ostr(ln, "currency"), cur) == 0)
        for (int k = 0; k < 5; k++)
          sum[k] += oint(ln, f[k]);
    }
    json_t *src = json_array_get(r->lines, first);
    json_t *tot = json_pack(
        "{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:s}", "developer_id", ostr(src, "developer_id"),
        "developer_email", ostr(src, "developer_email"), "billing_customer_id",
        ostr(src, "billing_customer_id"), f[0], (json_int_t)sum[0], f[1], (json_int_t)sum[1], f[2],
        (json_int_t)sum[2], f[3], (json_int_t)sum[3], f[4], (json_int_t)sum[4], "currency", cur);
    if (!tot)
      return -1;
    int rc = bill_line(r, tot, "total");
    json_decref(tot);
    r->nrows++;
    if (rc)
      return rc;
  }
  return 0;
}

static int billing_header(tg_report_t *r) {
  if (r->fmt == TG_REPORT_CSV) {
    int rc = 0;
    for (int i = 0; i < NBILL; i++)
      rc = rc || tg_csv_field(&r->out, bill_cols[i], strlen(bill_cols[i]));
    return rc || tg_csv_end_row(&r->out);
  }
  int64_t start, end;
  tg_billing_period(r->period, &start, &end);
  char a[21], b[21];
  tg_time_format(start, a);
  tg_time_format(end, b);
  return puts_(r, "{\"report\":{\"kind\":\"billing\",\"period\":\"") || puts_(r, r->period) ||
         puts_(r, "\",\"from\":\"") || puts_(r, a) || puts_(r, "\",\"to\":\"") || puts_(r, b) ||
         puts_(r, "\",\"closed\":") || puts_(r, r->closed ? "true" : "false") ||
         puts_(r, "},\"lines\":[");
}

/* ---- reading --------------------------------------------------------------------- */

int tg_report_read(tg_report_t *r, const char **data, size_t *len, tg_problem_t *p) {
  tg_csv_buf_reset(&r->out);
  r->jlen = 0;
  if (r->state == 3)
    return 0;
  if (r->state == 0) {
    if ((r->kind == K_USAGE ? usage_header(r) : billing_header(r)) != 0)
      return tg_problem_set(p, TG_ENOMEM, "", NULL);
    r->state = 1;
  }
  while (r->state == 1 && r->out.len + r->jlen < CHUNK) {
    if (r->kind == K_USAGE) {
      tg_usage_total_t t;
      int rc = tg_store_usage_next(r->cur, &t, p);
      if (rc < 0)
        return rc;
      if (rc == 0) {
        r->state = 2;
        break;
      }
      if (usage_row(r, &t) != 0)
        return tg_problem_set(p, TG_ENOMEM, "", NULL);
      r->nrows++;
    } else {
      size_t n = json_array_size(r->lines);
      if (r->next_line >= n) {
        r->state = 2;
        break;
      }
      size_t i = r->next_line++;
      json_t *ln = json_array_get(r->lines, i);
      if (bill_line(r, ln, "subscription") != 0)
        return tg_problem_set(p, TG_ENOMEM, "", NULL);
      r->nrows++;
      const char *dev = ostr(ln, "developer_id");
      if (i + 1 == n || strcmp(ostr(json_array_get(r->lines, i + 1), "developer_id"), dev)) {
        size_t first = i;
        while (first > 0 &&
               strcmp(ostr(json_array_get(r->lines, first - 1), "developer_id"), dev) == 0)
          first--;
        if (bill_totals(r, first, i) != 0)
          return tg_problem_set(p, TG_ENOMEM, "", NULL);
      }
    }
  }
  if (r->state == 2) {
    if (r->fmt == TG_REPORT_JSON && puts_(r, "]}\n") != 0)
      return tg_problem_set(p, TG_ENOMEM, "", NULL);
    r->state = 3;
  }
  if (r->fmt == TG_REPORT_CSV) {
    *data = r->out.data ? r->out.data : "";
    *len = r->out.len;
  } else {
    *data = r->json ? r->json : "";
    *len = r->jlen;
  }
  return 1;
}

void tg_report_close(tg_report_t *r) {
  if (!r)
    return;
  tg_store_usage_close(r->cur);
  json_decref(r->lines);
  tg_csv_buf_dispose(&r->out);
  free(r->json);
  free(r);
}
