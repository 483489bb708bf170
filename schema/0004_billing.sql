-- 0004_billing.sql - billing statements of closed months, kept as first
-- computed, so that every later export of a closed month is
-- byte-identical (plan prices or subscriptions may change afterwards; a
-- correction is a new, explicit statement, not a silent change).
--
-- lines: the statement's lines as a JSON array of objects (see
-- core/report.c), in output order; totals are derived from them.
CREATE TABLE billing_statements (
  period       TEXT PRIMARY KEY
               CHECK (length(period) = 7 AND period GLOB '[0-9][0-9][0-9][0-9]-[01][0-9]'),
  generated_at INTEGER NOT NULL CHECK (generated_at >= 0),
  lines        TEXT NOT NULL CHECK (json_valid(lines) AND json_type(lines) = 'array')
) STRICT, WITHOUT ROWID;
