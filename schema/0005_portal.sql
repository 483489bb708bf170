-- 0005_portal.sql - what the developer portal adds to the store: the mail
-- outbox (the default mail sink, listed by the admin API) and one-time
-- account tokens (email verification, password reset).
--
-- Account tokens are kept like keys and sessions: only the keyed digest of
-- the token the email carries. A token is used by deleting its row inside
-- the transaction that acts on it, so it works exactly once.

CREATE TABLE mail_outbox (
  id           TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'mai_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  developer_id TEXT REFERENCES developers (id) ON DELETE SET NULL,
  to_addr      TEXT NOT NULL CHECK (length(to_addr) BETWEEN 3 AND 254 AND to_addr GLOB '?*@?*'),
  kind         TEXT NOT NULL CHECK (kind IN ('verify', 'reset', 'approval', 'notice')),
  subject      TEXT NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
  body         TEXT NOT NULL CHECK (length(body) BETWEEN 1 AND 20000),
  status       TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
  attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts BETWEEN 0 AND 1000),
  last_error   TEXT CHECK (last_error IS NULL OR length(last_error) <= 500),
  sent_at      INTEGER CHECK (sent_at IS NULL OR sent_at >= 0),
  version      INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at   INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at   INTEGER NOT NULL CHECK (updated_at >= created_at)
) STRICT;
CREATE INDEX mail_outbox_to ON mail_outbox (to_addr, id);
CREATE INDEX mail_outbox_status ON mail_outbox (status, id);
CREATE INDEX mail_outbox_developer ON mail_outbox (developer_id, id);

CREATE TABLE account_tokens (
  id           TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'act_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  developer_id TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
  purpose      TEXT NOT NULL CHECK (purpose IN ('verify', 'reset')),
  digest       BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
  expires_at   INTEGER NOT NULL CHECK (expires_at >= 0),
  version      INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at   INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at   INTEGER NOT NULL CHECK (updated_at >= created_at)
) STRICT;
CREATE INDEX account_tokens_developer ON account_tokens (developer_id, id);

-- Expired sessions are purged by time.
CREATE INDEX sessions_expires ON sessions (expires_at);
