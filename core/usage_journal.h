/*
 * usage_journal.h - the usage journal's body format.
 *
 * The gateway writes each metering flush as one usage_journal row
 * (schema/0006_usage_journal.sql) whose body holds that flush's ledger
 * rows; tg_store_usage_fold adds them to usage_rollups later, summed.
 * One insert a second instead of one UPDATE per active key a second: the
 * SQLite work of a flush fell ~40x, and that work was what slowed the
 * requests running next to it (bench/README.md, sixth session).
 *
 * A body is "TGJ1", then the row count and every row as unsigned LEB128
 * varints: granularity, period_start, status_class; then key_id, app_id,
 * developer_id, api_id, plan_id, subscription_id and reason, each as its
 * length, its bytes and a NUL; then calls, bytes_in, bytes_out,
 * latency_us_sum and the TG_USAGE_BUCKETS histogram buckets. Every value
 * fits an int64; the ledger's rules (tg_usage_row_check) hold for every
 * row. The body is stored data, so the decoder trusts none of it.
 */
#ifndef TG_USAGE_JOURNAL_H
#define TG_USAGE_JOURNAL_H

#include <stddef.h>

#include "core/error.h"
#include "core/store.h"

#define TG_USAGE_JOURNAL_MAGIC "TGJ1"

/* A body for rows[0..n) (n >= 1, each checked by tg_usage_row_check):
 * *out is malloc'd, *len its size. TG_ENOMEM or TG_EINVAL (a row). */
int tg_usage_journal_encode(const tg_usage_row_t *rows, size_t n, unsigned char **out, size_t *len,
                            tg_problem_t *p);

/* Called for each row of a body in order; the row's strings point into the
 * body (NUL-terminated there) and live as long as it. Non-zero stops the
 * decoding and is returned. */
typedef int (*tg_usage_journal_cb)(const tg_usage_row_t *row, void *ctx);

/* Decode a body, checking every row before cb sees it. A body that is
 * cut short, has trailing bytes, a bad varint, a string without its NUL
 * or with one inside, or a row against the ledger's rules gives
 * TG_EINVAL with field "journal" and what was wrong; cb may then have
 * seen the rows before it (a caller that must be all or nothing decodes
 * twice or collects first). *nrows (may be NULL) gets the row count the
 * body declares. */
int tg_usage_journal_decode(const unsigned char *body, size_t len, tg_usage_journal_cb cb,
                            void *ctx, size_t *nrows, tg_problem_t *p);

#endif
