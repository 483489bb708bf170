-- 0001_init.sql - the complete Tollgate store.
--
-- Applied by core/migrate.c inside one transaction, which then sets
-- PRAGMA user_version = 1. Every table is STRICT; constraints are written so
-- that a bad row cannot enter even through a bug in the C code above.
--
-- Conventions
--   | what          | representation                                       |
--   |---------------|------------------------------------------------------|
--   | ids           | TEXT "<kind>_" + 26 Crockford base32 chars (ULID:    |
--   |               | 48-bit ms time + 80 random bits), so ORDER BY id is  |
--   |               | creation order and keyset pagination is stable       |
--   | times         | INTEGER unix seconds, UTC                            |
--   | booleans      | INTEGER 0/1 with CHECK                               |
--   | lists/docs    | TEXT holding JSON, CHECKed with json_valid/json_type |
--   | money         | INTEGER minor units (cents); per-call prices in      |
--   |               | micro-minor units (1 cent = 1,000,000), no floats    |
--   | secrets       | never stored: BLOB keyed BLAKE2b-256 digest (32 B)   |
--   |               | plus a short visible prefix                          |
--   | version       | row version, +1 on every update: the strong ETag     |
--
-- Financial history is never hard-deleted: developers and apps get status
-- 'deleted', subscriptions 'cancelled', keys 'revoked'. Usage rollups carry
-- their own copies of the ids and have no foreign keys, so the ledger
-- outlives whatever it counts.

CREATE TABLE meta (
  key   TEXT PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 64),
  value TEXT NOT NULL CHECK (length(value) <= 4096)
) STRICT;

-- APIs published behind the gateway.
CREATE TABLE apis (
  id                 TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'api_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  slug               TEXT NOT NULL UNIQUE
                     CHECK (length(slug) BETWEEN 1 AND 63 AND slug NOT GLOB '*[^a-z0-9-]*'
                            AND slug NOT GLOB '-*' AND slug NOT GLOB '*-'),
  name               TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  description        TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 20000),
  -- routing: exact or "*.example.com" hosts (empty = any host), path prefix,
  -- methods (empty = any)
  hosts              TEXT NOT NULL DEFAULT '[]'
                     CHECK (json_valid(hosts) AND json_type(hosts) = 'array'
                            AND json_array_length(hosts) <= 64),
  path_prefix        TEXT NOT NULL DEFAULT '/'
                     CHECK (substr(path_prefix, 1, 1) = '/' AND length(path_prefix) <= 1024),
  methods            TEXT NOT NULL DEFAULT '[]'
                     CHECK (json_valid(methods) AND json_type(methods) = 'array'
                            AND json_array_length(methods) <= 16),
  strip_prefix       INTEGER NOT NULL DEFAULT 0 CHECK (strip_prefix IN (0, 1)),
  connect_timeout_ms INTEGER NOT NULL DEFAULT 5000 CHECK (connect_timeout_ms BETWEEN 1 AND 600000),
  read_timeout_ms    INTEGER NOT NULL DEFAULT 60000 CHECK (read_timeout_ms BETWEEN 1 AND 3600000),
  write_timeout_ms   INTEGER NOT NULL DEFAULT 60000 CHECK (write_timeout_ms BETWEEN 1 AND 3600000),
  retries            INTEGER NOT NULL DEFAULT 1 CHECK (retries BETWEEN 0 AND 10),
  auth_mode          TEXT NOT NULL DEFAULT 'key' CHECK (auth_mode IN ('key', 'none')),
  key_query_param    TEXT CHECK (key_query_param IS NULL OR (length(key_query_param) BETWEEN 1 AND 64
                                 AND key_query_param NOT GLOB '*[^A-Za-z0-9_.-]*')),
  max_body_bytes     INTEGER NOT NULL DEFAULT 10485760
                     CHECK (max_body_bytes BETWEEN 0 AND 1099511627776),
  portal_visible     INTEGER NOT NULL DEFAULT 1 CHECK (portal_visible IN (0, 1)),
  openapi            TEXT CHECK (openapi IS NULL OR (json_valid(openapi)
                                 AND json_type(openapi) = 'object'
                                 AND json_type(openapi, '$.openapi') = 'text'
                                 AND length(openapi) <= 4194304)),
  version            INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at         INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at         INTEGER NOT NULL CHECK (updated_at >= created_at)
) STRICT;

-- Weighted upstream targets of an API.
CREATE TABLE targets (
  id         TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'tgt_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  api_id     TEXT NOT NULL REFERENCES apis (id) ON DELETE CASCADE,
  url        TEXT NOT NULL CHECK ((url GLOB 'http://?*' OR url GLOB 'https://?*')
                                  AND length(url) <= 2048 AND url NOT GLOB '*[ 	]*'),
  weight     INTEGER NOT NULL DEFAULT 100 CHECK (weight BETWEEN 0 AND 1000),
  version    INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at INTEGER NOT NULL CHECK (updated_at >= created_at),
  UNIQUE (api_id, url)
) STRICT;
CREATE INDEX targets_api ON targets (api_id, id);

-- Plans of an API: limits, quotas (UTC calendar periods) and pricing.
CREATE TABLE plans (
  id                   TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'pln_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  api_id               TEXT NOT NULL REFERENCES apis (id) ON DELETE RESTRICT,
  slug                 TEXT NOT NULL
                       CHECK (length(slug) BETWEEN 1 AND 63 AND slug NOT GLOB '*[^a-z0-9-]*'
                              AND slug NOT GLOB '-*' AND slug NOT GLOB '*-'),
  name                 TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  description          TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 20000),
  rate_per_second      INTEGER CHECK (rate_per_second IS NULL OR rate_per_second BETWEEN 1 AND 1000000000),
  rate_per_minute      INTEGER CHECK (rate_per_minute IS NULL OR rate_per_minute BETWEEN 1 AND 1000000000),
  rate_per_hour        INTEGER CHECK (rate_per_hour IS NULL OR rate_per_hour BETWEEN 1 AND 1000000000),
  quota_per_day        INTEGER CHECK (quota_per_day IS NULL OR quota_per_day BETWEEN 1 AND 1000000000000),
  quota_per_month      INTEGER CHECK (quota_per_month IS NULL OR quota_per_month BETWEEN 1 AND 1000000000000),
  monthly_fee_minor    INTEGER NOT NULL DEFAULT 0 CHECK (monthly_fee_minor BETWEEN 0 AND 100000000000),
  included_calls       INTEGER NOT NULL DEFAULT 0 CHECK (included_calls BETWEEN 0 AND 1000000000000),
  overage_price_micros INTEGER NOT NULL DEFAULT 0
                       CHECK (overage_price_micros BETWEEN 0 AND 1000000000000),
  currency             TEXT NOT NULL DEFAULT 'USD'
                       CHECK (length(currency) = 3 AND currency NOT GLOB '*[^A-Z]*'),
  requires_approval    INTEGER NOT NULL DEFAULT 0 CHECK (requires_approval IN (0, 1)),
  public               INTEGER NOT NULL DEFAULT 1 CHECK (public IN (0, 1)),
  version              INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at           INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at           INTEGER NOT NULL CHECK (updated_at >= created_at),
  UNIQUE (api_id, slug),
  UNIQUE (id, api_id) -- target of subscriptions' (plan_id, api_id) foreign key
) STRICT;

-- Portal accounts. password_hash is argon2id (NULL: invited, not yet set).
CREATE TABLE developers (
  id                  TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'dev_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  email               TEXT NOT NULL COLLATE NOCASE
                      CHECK (length(email) BETWEEN 3 AND 254 AND email GLOB '?*@?*'
                             AND email NOT GLOB '*[ 	]*'),
  name                TEXT NOT NULL DEFAULT '' CHECK (length(name) <= 200),
  password_hash       TEXT CHECK (password_hash IS NULL OR password_hash GLOB '$argon2id$*'),
  status              TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'active', 'suspended', 'deleted')),
  email_verified      INTEGER NOT NULL DEFAULT 0 CHECK (email_verified IN (0, 1)),
  billing_customer_id TEXT CHECK (billing_customer_id IS NULL OR length(billing_customer_id) BETWEEN 1 AND 255),
  version             INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at          INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at          INTEGER NOT NULL CHECK (updated_at >= created_at)
) STRICT;
-- A deleted account frees its email for a new sign-up.
CREATE UNIQUE INDEX developers_email ON developers (email) WHERE status <> 'deleted';

-- A developer's applications.
CREATE TABLE apps (
  id           TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'app_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  developer_id TEXT NOT NULL REFERENCES developers (id) ON DELETE RESTRICT,
  name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  description  TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 20000),
  status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
  version      INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at   INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at   INTEGER NOT NULL CHECK (updated_at >= created_at)
) STRICT;
CREATE INDEX apps_developer ON apps (developer_id, id);

-- app x API x plan. The composite key makes "plan belongs to this API" a
-- constraint, not a hope.
CREATE TABLE subscriptions (
  id         TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'sub_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  app_id     TEXT NOT NULL REFERENCES apps (id) ON DELETE RESTRICT,
  api_id     TEXT NOT NULL REFERENCES apis (id) ON DELETE RESTRICT,
  plan_id    TEXT NOT NULL,
  status     TEXT NOT NULL DEFAULT 'active'
             CHECK (status IN ('pending', 'active', 'suspended', 'cancelled')),
  version    INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at INTEGER NOT NULL CHECK (updated_at >= created_at),
  FOREIGN KEY (plan_id, api_id) REFERENCES plans (id, api_id) ON DELETE RESTRICT
) STRICT;
-- At most one live subscription per app and API.
CREATE UNIQUE INDEX subscriptions_live ON subscriptions (app_id, api_id) WHERE status <> 'cancelled';
CREATE INDEX subscriptions_api ON subscriptions (api_id, id);
CREATE INDEX subscriptions_plan ON subscriptions (plan_id, id);

-- API keys. Only the keyed digest and a display prefix are kept.
CREATE TABLE keys (
  id            TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'key_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  app_id        TEXT NOT NULL REFERENCES apps (id) ON DELETE RESTRICT,
  name          TEXT NOT NULL DEFAULT '' CHECK (length(name) <= 200),
  prefix        TEXT NOT NULL CHECK (prefix GLOB 'tg_live_*' AND length(prefix) BETWEEN 9 AND 24),
  digest        BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
  status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
  expires_at    INTEGER CHECK (expires_at IS NULL OR expires_at >= 0),
  last_used_day INTEGER CHECK (last_used_day IS NULL OR last_used_day % 86400 = 0),
  rotated_from  TEXT REFERENCES keys (id) ON DELETE SET NULL,
  version       INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at    INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at    INTEGER NOT NULL CHECK (updated_at >= created_at)
) STRICT;
CREATE INDEX keys_app ON keys (app_id, id);

-- Admin API bearer tokens, hashed like keys; scopes a JSON array of words.
CREATE TABLE admin_tokens (
  id           TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'tok_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  name         TEXT NOT NULL UNIQUE
               CHECK (length(name) BETWEEN 1 AND 100 AND name NOT GLOB '*[^A-Za-z0-9_.@-]*'),
  prefix       TEXT NOT NULL CHECK (prefix GLOB 'tg_adm_*' AND length(prefix) BETWEEN 8 AND 24),
  digest       BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
  scopes       TEXT NOT NULL
               CHECK (json_valid(scopes) AND json_type(scopes) = 'array'
                      AND json_array_length(scopes) BETWEEN 1 AND 16),
  status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
  expires_at   INTEGER CHECK (expires_at IS NULL OR expires_at >= 0),
  last_used_at INTEGER CHECK (last_used_at IS NULL OR last_used_at >= 0),
  version      INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at   INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at   INTEGER NOT NULL CHECK (updated_at >= created_at)
) STRICT;

-- Portal sessions, hashed like keys. csrf_digest keys the CSRF tokens.
CREATE TABLE sessions (
  id           TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'ses_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  developer_id TEXT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
  digest       BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
  client_addr  TEXT NOT NULL DEFAULT '' CHECK (length(client_addr) <= 64),
  user_agent   TEXT NOT NULL DEFAULT '' CHECK (length(user_agent) <= 512),
  last_seen_at INTEGER NOT NULL CHECK (last_seen_at >= 0),
  expires_at   INTEGER NOT NULL CHECK (expires_at >= 0),
  version      INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
  created_at   INTEGER NOT NULL CHECK (created_at >= 0),
  updated_at   INTEGER NOT NULL CHECK (updated_at >= created_at)
) STRICT;
CREATE INDEX sessions_developer ON sessions (developer_id, id);

-- Who changed what through the admin API (written in the same transaction
-- as the change). summary is JSON without secrets.
CREATE TABLE audit_log (
  id          TEXT PRIMARY KEY CHECK (length(id) = 30 AND id GLOB 'aud_*' AND substr(id, 5) NOT GLOB '*[^0-9A-Z]*'),
  at          INTEGER NOT NULL CHECK (at >= 0),
  actor       TEXT NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
  action      TEXT NOT NULL CHECK (length(action) BETWEEN 1 AND 64),
  entity      TEXT NOT NULL CHECK (length(entity) BETWEEN 1 AND 64),
  entity_id   TEXT NOT NULL DEFAULT '' CHECK (length(entity_id) <= 64),
  summary     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(summary) AND length(summary) <= 65536),
  request_id  TEXT NOT NULL DEFAULT '' CHECK (length(request_id) <= 64)
) STRICT;
CREATE INDEX audit_log_entity ON audit_log (entity, entity_id, id);

-- What the gateway must re-read. Appended by the triggers below; the
-- gateway tails it by seq (after a cheap PRAGMA data_version check).
CREATE TABLE change_log (
  seq       INTEGER PRIMARY KEY AUTOINCREMENT,
  at        INTEGER NOT NULL CHECK (at >= 0),
  entity    TEXT NOT NULL CHECK (entity IN ('api', 'target', 'plan', 'developer', 'app',
                                             'subscription', 'key')),
  entity_id TEXT NOT NULL CHECK (length(entity_id) BETWEEN 1 AND 64),
  op        TEXT NOT NULL CHECK (op IN ('insert', 'update', 'delete'))
) STRICT;

-- Usage ledger: one table for every granularity, so that a report over
-- any range reads the same columns whichever granularity serves it.
-- One row per (granularity, period start, key, API, plan, status class,
-- reject reason). granularity is the period length in seconds: 60 (minute
-- rows written by the gateway), 3600 and 86400 (compacted by the server).
-- status_class: 1..5 for responses the upstream produced (1xx..5xx); 0 for
-- requests the gateway rejected itself, with `reason` naming why
-- ('invalid_key', 'not_subscribed', 'rate_limited', 'quota',
-- 'bad_request', ...); reason is '' for served requests. Unknown
-- dimensions (no valid key) are ''. Latency histogram buckets h00..h14
-- count requests whose total latency was <= 5, 10, 25, 50, 75, 100, 250,
-- 500, 750, 1000, 2500, 5000, 7500, 10000 ms, and above (OpenTelemetry's
-- HTTP buckets); summing columns merges histograms exactly.
CREATE TABLE usage_rollups (
  granularity     INTEGER NOT NULL CHECK (granularity IN (60, 3600, 86400)),
  period_start    INTEGER NOT NULL CHECK (period_start >= 0 AND period_start % granularity = 0),
  key_id          TEXT NOT NULL CHECK (length(key_id) <= 64),
  app_id          TEXT NOT NULL CHECK (length(app_id) <= 64),
  developer_id    TEXT NOT NULL CHECK (length(developer_id) <= 64),
  api_id          TEXT NOT NULL CHECK (length(api_id) <= 64),
  plan_id         TEXT NOT NULL CHECK (length(plan_id) <= 64),
  subscription_id TEXT NOT NULL CHECK (length(subscription_id) <= 64),
  status_class    INTEGER NOT NULL CHECK (status_class BETWEEN 0 AND 5),
  reason          TEXT NOT NULL CHECK ((status_class = 0) = (reason <> '') AND length(reason) <= 32),
  calls           INTEGER NOT NULL CHECK (calls >= 0),
  bytes_in        INTEGER NOT NULL DEFAULT 0 CHECK (bytes_in >= 0),
  bytes_out       INTEGER NOT NULL DEFAULT 0 CHECK (bytes_out >= 0),
  latency_us_sum  INTEGER NOT NULL DEFAULT 0 CHECK (latency_us_sum >= 0),
  h00 INTEGER NOT NULL DEFAULT 0, h01 INTEGER NOT NULL DEFAULT 0, h02 INTEGER NOT NULL DEFAULT 0,
  h03 INTEGER NOT NULL DEFAULT 0, h04 INTEGER NOT NULL DEFAULT 0, h05 INTEGER NOT NULL DEFAULT 0,
  h06 INTEGER NOT NULL DEFAULT 0, h07 INTEGER NOT NULL DEFAULT 0, h08 INTEGER NOT NULL DEFAULT 0,
  h09 INTEGER NOT NULL DEFAULT 0, h10 INTEGER NOT NULL DEFAULT 0, h11 INTEGER NOT NULL DEFAULT 0,
  h12 INTEGER NOT NULL DEFAULT 0, h13 INTEGER NOT NULL DEFAULT 0, h14 INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (granularity, period_start, key_id, api_id, plan_id, status_class, reason),
  CHECK (h00 + h01 + h02 + h03 + h04 + h05 + h06 + h07 + h08 + h09 + h10 + h11 + h12 + h13 + h14 = calls)
) STRICT, WITHOUT ROWID;
CREATE INDEX usage_rollups_app ON usage_rollups (granularity, app_id, period_start);

-- Change-log triggers: every change the gateway must see.
CREATE TRIGGER apis_ci AFTER INSERT ON apis BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'api', NEW.id, 'insert'); END;
CREATE TRIGGER apis_cu AFTER UPDATE ON apis BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'api', NEW.id, 'update'); END;
CREATE TRIGGER apis_cd AFTER DELETE ON apis BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'api', OLD.id, 'delete'); END;

CREATE TRIGGER targets_ci AFTER INSERT ON targets BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'target', NEW.id, 'insert'); END;
CREATE TRIGGER targets_cu AFTER UPDATE ON targets BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'target', NEW.id, 'update'); END;
CREATE TRIGGER targets_cd AFTER DELETE ON targets BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'target', OLD.id, 'delete'); END;

CREATE TRIGGER plans_ci AFTER INSERT ON plans BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'plan', NEW.id, 'insert'); END;
CREATE TRIGGER plans_cu AFTER UPDATE ON plans BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'plan', NEW.id, 'update'); END;
CREATE TRIGGER plans_cd AFTER DELETE ON plans BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'plan', OLD.id, 'delete'); END;

CREATE TRIGGER developers_ci AFTER INSERT ON developers BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'developer', NEW.id, 'insert'); END;
-- Only status matters to the gateway; password or name changes are not news.
CREATE TRIGGER developers_cu AFTER UPDATE OF status ON developers BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'developer', NEW.id, 'update'); END;
CREATE TRIGGER developers_cd AFTER DELETE ON developers BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'developer', OLD.id, 'delete'); END;

CREATE TRIGGER apps_ci AFTER INSERT ON apps BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'app', NEW.id, 'insert'); END;
CREATE TRIGGER apps_cu AFTER UPDATE OF status, developer_id ON apps BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'app', NEW.id, 'update'); END;
CREATE TRIGGER apps_cd AFTER DELETE ON apps BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'app', OLD.id, 'delete'); END;

CREATE TRIGGER subscriptions_ci AFTER INSERT ON subscriptions BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'subscription', NEW.id, 'insert'); END;
CREATE TRIGGER subscriptions_cu AFTER UPDATE ON subscriptions BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'subscription', NEW.id, 'update'); END;
CREATE TRIGGER subscriptions_cd AFTER DELETE ON subscriptions BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'subscription', OLD.id, 'delete'); END;

CREATE TRIGGER keys_ci AFTER INSERT ON keys BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'key', NEW.id, 'insert'); END;
-- last_used_day is written by metering and is not news to the gateway.
CREATE TRIGGER keys_cu AFTER UPDATE OF status, expires_at, app_id, digest ON keys BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'key', NEW.id, 'update'); END;
CREATE TRIGGER keys_cd AFTER DELETE ON keys BEGIN
  INSERT INTO change_log (at, entity, entity_id, op) VALUES (unixepoch(), 'key', OLD.id, 'delete'); END;
