/*
 * csv.h - CSV output for usage and billing exports (CONVENTIONS.md §5),
 * served as `text/csv; charset=utf-8; header=present`.
 *
 * The writer appends to a growable byte buffer owned by the caller, so an
 * export streams: write some rows, hand out buf.data[0..len), reset, go on.
 * The buffer carries the row state (how many fields the current row has),
 * so the separator is automatic and a reset may fall anywhere.
 *
 * What a text field (tg_csv_field) becomes, in this order:
 *
 *   | step      | rule                                                       |
 *   | --------- | ---------------------------------------------------------- |
 *   | formula   | first input byte one of = + - @ TAB CR NUL: prefix one '   |
 *   |           | (OWASP CSV injection, ASVS 1.2.10); not for ' itself       |
 *   | text      | each byte that does not start a well-formed UTF-8 sequence |
 *   |           | (RFC 3629 §4: no overlongs, surrogates, > U+10FFFF), and   |
 *   |           | each NUL, becomes U+FFFD (EF BF BD); other bytes as given  |
 *   | quoting   | the result is quoted iff it contains , " CR or LF, begins  |
 *   |           | or ends with SP or TAB, or is an empty first field; inside |
 *   |           | quotes " is written "" (RFC 4180 §2, rules 5-7)            |
 *
 * An empty first field is written "" so that no row starts with its own
 * line end: readers (Python's csv, spreadsheets) skip blank lines, which
 * would drop a row of one empty field.
 *
 * Numbers (tg_csv_int), times (tg_csv_time) and trusted tokens
 * (tg_csv_raw) are never prefixed or quoted: -5 stays -5. Rows end with
 * CRLF (RFC 4180 §2 rule 1). The output is always well-formed UTF-8 with
 * no NUL, and every row parses back into exactly the fields written.
 *
 * Failure: every writer returns TG_OK, TG_ENOMEM (allocation failed),
 * TG_ETOOBIG (the buffer would pass its maximum) or TG_EINVAL (bad
 * argument). On failure nothing was appended and the row state is
 * unchanged: the caller may flush, reset and retry the same call.
 *
 * Not thread-safe: one buffer per writer.
 */
#ifndef TG_CSV_H
#define TG_CSV_H

#include <stddef.h>
#include <sodium.h>
#include <stdint.h>

#include "core/error.h"

/* Default and ceiling of a buffer's maximum length (tg_csv_buf_init). */
#define TG_CSV_BUF_MAX_DEFAULT ((size_t)16 << 20)
#define TG_CSV_BUF_MAX_LIMIT   ((size_t)1 << 30)

/*
 * The output buffer. data[0..len) is the CSV written since the last reset;
 * whenever data is not NULL, data[len] is a NUL (not part of the output).
 * len never exceeds max. Read the fields; change them only through the
 * functions below.
 */
typedef struct tg_csv_buf {
  char *data;     /* owned; NULL until the first write */
  size_t len;     /* bytes of output */
  size_t cap;     /* bytes allocated */
  size_t max;     /* hard maximum of len */
  size_t nfields; /* fields in the row being written (0: at a row start) */
} tg_csv_buf_t;

/*
 * Prepare an empty buffer whose output may grow to `max` bytes (0: the
 * default TG_CSV_BUF_MAX_DEFAULT; larger than TG_CSV_BUF_MAX_LIMIT: the
 * limit). Allocates nothing.
 */
void tg_csv_buf_init(tg_csv_buf_t *b, size_t max);

/* Free the memory and leave `b` as after init with the same max. NULL is a
 * no-op. */
void tg_csv_buf_dispose(tg_csv_buf_t *b);

/*
 * Drop the output (len = 0), keep the memory and the row state: after the
 * caller has handed out data[0..len), writing continues where it was, in
 * the middle of a row if it was there.
 */
void tg_csv_buf_reset(tg_csv_buf_t *b);

/*
 * Append a text field: s[0..len) (s may be NULL when len is 0), not
 * NUL-terminated, any bytes. Transformed as the table above says.
 */
int tg_csv_field(tg_csv_buf_t *b, const char *s, size_t len);

/* Append an integer field in decimal ("-5", "0", "9223372036854775807"). */
int tg_csv_int(tg_csv_buf_t *b, int64_t v);

/*
 * Append a time field, RFC 3339 UTC with seconds: "2026-11-26T14:00:00Z"
 * (locale-independent). TG_EINVAL outside years 1000..9999, where the
 * format would not be 20 bytes.
 */
int tg_csv_time(tg_csv_buf_t *b, int64_t unix_seconds);

/*
 * Append a trusted, pre-formatted token as it is: a decimal amount, a
 * time formatted elsewhere, a record id. It must be 1..len bytes of
 * printable ASCII (0x21..0x7E) other than , and " (so it needs no
 * quoting); anything else is TG_EINVAL and nothing is written. It is not
 * formula-neutralised: never pass user text here.
 */
int tg_csv_raw(tg_csv_buf_t *b, const char *s, size_t len);

/*
 * The same as n calls of tg_csv_int / tg_csv_raw, in one reservation (a
 * usage export writes some twenty of these per row): v[0..n), or the
 * tokens s[i][0..len[i]). All or nothing: on failure (a bad token, or the
 * buffer full) nothing was appended. n may be 0.
 */
int tg_csv_ints(tg_csv_buf_t *b, const int64_t *v, size_t n);
int tg_csv_raws(tg_csv_buf_t *b, const char *const *s, const size_t *len, size_t n);

/*
 * End the row with CRLF. TG_EINVAL for a row without fields (an empty
 * line is no record; write an empty field for a row of one empty cell).
 */
int tg_csv_end_row(tg_csv_buf_t *b);

#define TG_RECORD_ID_LEN 32 /* hex digits */

/*
 * Deterministic id of an export row, from the parts that identify it
 * (CONVENTIONS.md §5: account, app, api, metric, period_start).
 *
 * STABLE FOREVER: billing systems dedupe on this id (it is Stripe's meter
 * event `identifier`), so re-exporting a closed period must give the same
 * ids. Never change the construction; a new one needs a new column.
 *
 *   id = lowercase hex of the first 16 bytes of
 *        BLAKE2b-256 (unkeyed; libsodium crypto_generichash, 32-byte out)
 *        over  for each part in order:  u64le(strlen(part)) || part
 *
 * The length prefixes make ("ab","c") and ("a","bc") different ids, and
 * the encoding is injective over any number of parts. parts[0..n) are
 * NUL-terminated byte strings (no encoding assumed); n may be 0. Writes
 * TG_RECORD_ID_LEN hex digits and a NUL to out. Returns TG_OK, or
 * TG_EINVAL (out empty) when parts is NULL with n > 0 or a part is NULL.
 * sodium_init() must have run (tg_keys_init does it).
 */
int tg_record_id(char out[TG_RECORD_ID_LEN + 1], const char *const *parts, size_t n);

/* The same id built part by part, so that a prefix shared by many rows
 * (kind, period) is hashed once and the state copied:
 * start, add each part in order, end. */
typedef struct tg_record_id_state {
  crypto_generichash_state st;
} tg_record_id_state_t;
void tg_record_id_start(tg_record_id_state_t *s);
void tg_record_id_add(tg_record_id_state_t *s, const char *part, size_t len);
/* n parts at once (parts[i][0..lens[i])): the same id as n calls of add. */
void tg_record_id_addv(tg_record_id_state_t *s, const char *const *parts, const size_t *lens,
                       size_t n);
void tg_record_id_end(tg_record_id_state_t *s, char out[TG_RECORD_ID_LEN + 1]);

#endif
