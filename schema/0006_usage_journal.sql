-- 0006_usage_journal.sql - the usage journal: each metering flush of the
-- gateway, appended as one row whose body holds that flush's ledger rows
-- (core/usage_journal.h has the format). tg_store_usage_fold adds the
-- bodies to usage_rollups, summed, and deletes them in the same
-- transaction; the gateway folds once a metering_fold_interval and at
-- stop, and every reader of the ledger (reports, quota seeding,
-- compaction) folds first, so the ledger reads as if each flush had been
-- written to usage_rollups directly.
--
-- Folding in id order applies flushes in the order they were written (a
-- row's subscription_id is the newest one). AUTOINCREMENT: an id is never
-- used twice, so "the entries up to id L" names one set for good, which a
-- fold in steps relies on (meta usage.fold, core/store.h).

CREATE TABLE usage_journal (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  written_at INTEGER NOT NULL CHECK (written_at >= 0),
  nrows      INTEGER NOT NULL CHECK (nrows >= 1),
  body       BLOB NOT NULL CHECK (length(body) >= 5)
) STRICT;
