/*
 * report.h - usage reports and billing statements: one service, exposed by
 * the admin API (GET /usage, GET /billing), the CLI (tollgate usage
 * export, tollgate billing export) and the portal, so that every one of
 * them shows the same numbers, read from one ledger (usage_rollups).
 *
 * Output streams: tg_report_read hands out the next chunk of bytes until
 * the end, holding at most one chunk (about 64 KiB) in memory whatever
 * the size of the report, so a year of hourly rows for 10,000 apps is
 * written without loading it.
 *
 * Formats. JSON: one object, {"report": {...parameters...}, "rows": [...]},
 * written incrementally. CSV (RFC 4180, CRLF, a header row, text cells
 * starting with = + - @ or a tab neutralised, times RFC 3339 UTC):
 * text/csv; charset=utf-8; header=present. Each row carries a `record_id`:
 * a hash of what the row is (kind, period, dimensions), never of its
 * numbers, so a re-export of the same period gives the same ids and a
 * usage-based billing system can deduplicate on it.
 *
 * Metrics of a usage row:
 *   calls            every request, refused ones included
 *   billable_calls   answered by the upstream with 1xx-4xx
 *   errors_4xx, errors_5xx   answered by the upstream with 4xx / 5xx
 *                    (5xx: the API failed, not billed)
 *   rejected_calls   refused by the gateway (never billed), and per reason
 *   bytes_in, bytes_out, latency (avg, p50, p95, p99 in ms, from the
 *                    ledger's histogram, linear within a bucket; a
 *                    quantile in the last bucket reads as 10000)
 *
 * Billing (one line per developer x subscription of the month, then a
 * total per developer and currency): monthly fee, included calls,
 * billable calls, overage calls = max(0, billable - included), price per
 * call in micro-units, overage amount = overage x price / 1,000,000
 * rounded half up, amount = fee + overage amount; integer minor units
 * throughout, no floating point. A subscription is charged its fee when
 * it was approved (not pending) and not cancelled before the month began.
 * A closed month (ended more than billing_close_after ago) is computed
 * once and kept (billing_statements): every later export of it is
 * byte-identical, even after plan prices change.
 */
#ifndef TG_REPORT_H
#define TG_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/store.h"

typedef enum tg_report_format { TG_REPORT_JSON, TG_REPORT_CSV } tg_report_format_t;

#define TG_REPORT_CSV_TYPE  "text/csv; charset=utf-8; header=present"
#define TG_REPORT_JSON_TYPE "application/json"

typedef struct tg_report_params {
  tg_usage_query_t q;
  tg_report_format_t format;
  char filter_ids[6][80]; /* storage for q's filter strings */
} tg_report_params_t;

/* A parameter's value by name, or NULL when absent. */
typedef const char *(*tg_param_fn)(void *ctx, const char *name);

/*
 * Usage report parameters: from, to (RFC 3339 or YYYY-MM-DD, UTC, the
 * range [from, to)), granularity (minute, hour, day, month; default day),
 * group_by (comma-separated: developer, app, key, api, plan,
 * subscription, status_class), filters developer_id, app_id, key_id,
 * api_id, plan_id, subscription_id, status_class, and format (json, csv;
 * `accept` may name text/csv when format is absent). Every bad parameter
 * is listed in p (field = the parameter): TG_EINVAL. Filter ids must name
 * existing rows (TG_EINVAL otherwise, so an id typo is not an empty report).
 */
int tg_report_params_parse(tg_store_t *s, tg_param_fn get, void *ctx, const char *accept,
                           tg_report_params_t *out, tg_problem_t *p);

typedef struct tg_report tg_report_t;

/* Start a usage report (the store serves nothing else until it is closed). */
int tg_report_open(tg_store_t *s, const tg_report_params_t *rp, tg_report_t **out, tg_problem_t *p);

/*
 * A billing statement for `period` ("YYYY-MM") as of `now`. A month that
 * has not begun is TG_EINVAL (field "period"); one that ended more than
 * close_after seconds ago is closed: kept on first export, served from
 * what was kept afterwards.
 */
int tg_billing_open(tg_store_t *s, const char *period, tg_report_format_t fmt, int64_t now,
                    int64_t close_after, tg_report_t **out, tg_problem_t *p);

/* Parse a billing period "YYYY-MM" into its [start, end). */
int tg_billing_period(const char *period, int64_t *start, int64_t *end);

/*
 * The next chunk: *data and *len valid until the next call. Returns 1 with a
 * chunk, 0 at the end, <0 on error (the output so far is incomplete: a
 * streaming caller must abort the transfer rather than end it cleanly).
 */
int tg_report_read(tg_report_t *r, const char **data, size_t *len, tg_problem_t *p);
void tg_report_close(tg_report_t *r); /* NULL is a no-op */

/* The media type of its output. */
const char *tg_report_type(const tg_report_t *r);

#endif
