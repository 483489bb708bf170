-- 0002_idempotency.sql - remembered results of POST requests sent with an
-- Idempotency-Key (draft-ietf-httpapi-idempotency-key-header), so that a
-- retried request gets the first result instead of doing the work twice.
--
-- Neither the key nor the response is stored in the clear: a response can
-- hold a new API key's plaintext, which must never rest on disk. Both are
-- keyed by the server secret and the client's Idempotency-Key:
--   id       = BLAKE2b(secret, "idem-id"  | token id | Idempotency-Key)
--   sealed   = secretbox(response, key = BLAKE2b(secret, "idem-key" | token id | Idempotency-Key))
-- so the stored row is useless without both the server secret and the key
-- only the client knows. Rows expire (24 h) and are purged.
CREATE TABLE idempotency_keys (
  id           BLOB PRIMARY KEY CHECK (length(id) = 32),
  request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),
  status       INTEGER NOT NULL CHECK (status BETWEEN 200 AND 599),
  sealed       BLOB NOT NULL CHECK (length(sealed) <= 1048576),
  created_at   INTEGER NOT NULL CHECK (created_at >= 0),
  expires_at   INTEGER NOT NULL CHECK (expires_at >= created_at)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
