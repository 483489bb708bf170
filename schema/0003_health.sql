-- 0003_health.sql - health of upstream targets, per API.
--
-- Active checks: when healthcheck_path is set, the gateway's health thread
-- sends "GET <target base path><healthcheck_path>" to every target of the
-- API each healthcheck_interval_ms; a probe is healthy when the answer's
-- status is 2xx or 3xx within healthcheck_timeout_ms. unhealthy_threshold
-- consecutive failures take a target out of the rotation, healthy_threshold
-- consecutive successes bring it back. NULL: no active checks.
--
-- Passive health: passive_failures consecutive failed requests to a target
-- (refused, reset, timed out, bad response) take it out for
-- passive_cooldown_ms, per gateway worker. 0 turns passive health off.
--
-- The columns are appended (ALTER TABLE cannot place them), so the table's
-- column order differs from the field order in core/model.c, which lists
-- them before the server-set version and times. The existing apis_cu
-- trigger logs every update, so the gateway sees changes to these too.
--
-- healthcheck_path is an origin-form request target (RFC 9112 3.2.1): only
-- the characters RFC 3986 allows in a path and query, so no spaces,
-- controls, fragment or non-ASCII bytes.
ALTER TABLE apis ADD COLUMN healthcheck_path TEXT
  CHECK (healthcheck_path IS NULL OR (substr(healthcheck_path, 1, 1) = '/'
         AND length(healthcheck_path) <= 1024
         AND healthcheck_path NOT GLOB '*[^!$-;=?-Z_a-z~]*'));
ALTER TABLE apis ADD COLUMN healthcheck_interval_ms INTEGER NOT NULL DEFAULT 5000
  CHECK (healthcheck_interval_ms BETWEEN 100 AND 3600000);
ALTER TABLE apis ADD COLUMN healthcheck_timeout_ms INTEGER NOT NULL DEFAULT 2000
  CHECK (healthcheck_timeout_ms BETWEEN 10 AND 600000);
ALTER TABLE apis ADD COLUMN healthy_threshold INTEGER NOT NULL DEFAULT 2
  CHECK (healthy_threshold BETWEEN 1 AND 100);
ALTER TABLE apis ADD COLUMN unhealthy_threshold INTEGER NOT NULL DEFAULT 3
  CHECK (unhealthy_threshold BETWEEN 1 AND 100);
ALTER TABLE apis ADD COLUMN passive_failures INTEGER NOT NULL DEFAULT 3
  CHECK (passive_failures BETWEEN 0 AND 100);
ALTER TABLE apis ADD COLUMN passive_cooldown_ms INTEGER NOT NULL DEFAULT 10000
  CHECK (passive_cooldown_ms BETWEEN 100 AND 3600000);
