/*
 * store_sqlite.c - the embedded SQLite store backend.
 *
 * One tg_store_t is one sqlite3 connection, used by one thread at a time.
 * Connections run in WAL mode (readers never block the writer) with
 * foreign keys on and a busy timeout. Write transactions take the lock at
 * BEGIN (BEGIN IMMEDIATE) so that a request never fails half-way through
 * for want of an upgrade from read to write lock.
 *
 * SQL text here is assembled only from compiled-in model descriptors
 * (table and column names in model.c); every value from outside is bound
 * as a parameter. Nothing from input ever becomes SQL text.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/keys.h"
#include "core/migrate.h"
#include "core/store-int.h"
#include "core/usage_journal.h"
#include "core/util.h"

/* Prepared statements are kept per connection, keyed by their SQL text:
 * preparing costs more than running most of our statements. A statement
 * in use is never handed out twice; a busy cache falls back to a one-off. */
#define STMT_CACHE 64

typedef struct cached_stmt {
  char *sql;
  sqlite3_stmt *stmt;
  int busy;
} cached_stmt_t;

typedef struct sql_store {
  tg_store_t base;
  sqlite3 *db;
  int in_tx;
  bool readonly;     /* TG_STORE_OPEN_READONLY: cannot fold the usage journal */
  bool usage_writer; /* CHECKs off for good (tg_store_options_t) */
  cached_stmt_t cache[STMT_CACHE];
  int ncache;
  unsigned evict;
} sql_store_t;

/* Process-wide SQLite settings, before the first connection: no memory
 * statistics (they take a global mutex on every allocation, which the
 * report and gateway paths make millions of). */
static void sqlite_setup(void) {
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

static int stmt_prepare(sql_store_t *st, const char *sql, sqlite3_stmt **out) {
  for (int i = 0; i < st->ncache; i++)
    if (!st->cache[i].busy && strcmp(st->cache[i].sql, sql) == 0) {
      st->cache[i].busy = 1;
      *out = st->cache[i].stmt;
      return SQLITE_OK;
    }
  int rc = sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
  if (rc != SQLITE_OK)
    return rc;
  char *copy = strdup(sql);
  if (!copy)
    return SQLITE_OK; /* uncached: released by finalize */
  int slot = st->ncache < STMT_CACHE ? st->ncache++ : -1;
  for (int tries = 0; slot < 0 && tries < STMT_CACHE; tries++) {
    int i = (int)(st->evict++ % STMT_CACHE);
    if (!st->cache[i].busy) {
      sqlite3_finalize(st->cache[i].stmt);
      free(st->cache[i].sql);
      slot = i;
    }
  }
  if (slot < 0) {
    free(copy);
    return SQLITE_OK;
  }
  st->cache[slot] = (cached_stmt_t){.sql = copy, .stmt = *out, .busy = 1};
  return SQLITE_OK;
}

/* Give a statement back: reset a cached one, finalize a one-off. */
static void stmt_release(sql_store_t *st, sqlite3_stmt *stmt) {
  if (!stmt)
    return;
  for (int i = 0; i < st->ncache; i++)
    if (st->cache[i].stmt == stmt) {
      sqlite3_reset(stmt);
      sqlite3_clear_bindings(stmt);
      st->cache[i].busy = 0;
      return;
    }
  sqlite3_finalize(stmt);
}

/* ---- a bounded SQL text builder ------------------------------------------ */

#define SQL_MAX 4096 /* the widest statement (a full-row insert) is < 2 KiB */

typedef struct sqlbuf {
  char s[SQL_MAX];
  size_t len;
  int overflow;
} sqlbuf_t;

static void sb_add(sqlbuf_t *b, const char *t) {
  size_t n = strlen(t);
  if (b->overflow || b->len + n >= SQL_MAX) {
    b->overflow = 1;
    return;
  }
  memcpy(b->s + b->len, t, n + 1);
  b->len += n;
}

/* ", "-separated list of the columns a row shows (all but secrets). */
static void sb_row_columns(sqlbuf_t *b, const tg_entity_desc_t *d) {
  int first = 1;
  for (int i = 0; i < d->nfields; i++) {
    if (d->fields[i].flags & TG_F_SECRET)
      continue;
    if (!first)
      sb_add(b, ", ");
    sb_add(b, d->fields[i].name);
    first = 0;
  }
}

/* ---- errors -------------------------------------------------------------- */

/* A foreign-key failure: immediate RESTRICT actions report
 * SQLITE_CONSTRAINT_TRIGGER rather than _FOREIGNKEY, so look at both. */
static int is_fk_error(sqlite3 *db) {
  int ext = sqlite3_extended_errcode(db);
  return ext == SQLITE_CONSTRAINT_FOREIGNKEY ||
         ((ext & 0xff) == SQLITE_CONSTRAINT && strstr(sqlite3_errmsg(db), "FOREIGN KEY"));
}

/* Map the connection's last error to a tg_err_t with a useful detail. */
static int sql_error(sql_store_t *st, const char *what, tg_problem_t *p) {
  int ext = sqlite3_extended_errcode(st->db);
  const char *msg = sqlite3_errmsg(st->db);
  switch (ext & 0xff) {
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return tg_problem_set(p, TG_EBUSY, "", "%s: the store is busy (locked by another writer)",
                          what);
  case SQLITE_NOMEM: return tg_problem_set(p, TG_ENOMEM, "", NULL);
  case SQLITE_CONSTRAINT: {
    /* "UNIQUE constraint failed: plans.api_id, plans.slug": name the last
     * column, which is the one a caller chose (slug within an API). */
    const char *col = strrchr(msg, '.');
    char ptr[TG_PROBLEM_FIELD_MAX] = "";
    if (col && (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY ||
                ext == SQLITE_CONSTRAINT_NOTNULL))
      snprintf(ptr, sizeof(ptr), "/%s", col + 1);
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY)
      return tg_problem_set(p, TG_ECONFLICT, ptr, "%s: another row already has this %s", what,
                            col ? col + 1 : "value");
    if (is_fk_error(st->db))
      return tg_problem_set(p, TG_ECONFLICT, "", "%s: a reference does not hold", what);
    if (ext == SQLITE_CONSTRAINT_NOTNULL)
      return tg_problem_set(p, TG_EINVAL, ptr, "%s: is required", what);
    return tg_problem_set(p, TG_EINVAL, "", "%s: rejected by the store: %s", what, msg);
  }
  default: return tg_problem_set(p, TG_ESTORE, "", "%s: %s", what, msg);
  }
}

static int prepare(sql_store_t *st, const sqlbuf_t *b, sqlite3_stmt **stmt, tg_problem_t *p) {
  if (b->overflow)
    return tg_problem_set(p, TG_ESTORE, "", "statement too long");
  if (stmt_prepare(st, b->s, stmt) != SQLITE_OK)
    return sql_error(st, "prepare", p);
  return TG_OK;
}

/* ---- values in and out --------------------------------------------------- */

static int bind_value(sql_store_t *st, sqlite3_stmt *stmt, int idx, const tg_field_t *f,
                      const json_t *v, tg_problem_t *p) {
  int rc = SQLITE_OK;
  if (json_is_null(v)) {
    rc = sqlite3_bind_null(stmt, idx);
  } else {
    switch (f->type) {
    case TG_FT_INT:
    case TG_FT_TIME: rc = sqlite3_bind_int64(stmt, idx, json_integer_value(v)); break;
    case TG_FT_BOOL: rc = sqlite3_bind_int(stmt, idx, json_is_true(v)); break;
    case TG_FT_JSON: {
      char *text = json_dumps(v, JSON_COMPACT);
      if (!text)
        return tg_problem_set(p, TG_ENOMEM, "", NULL);
      rc = sqlite3_bind_text(stmt, idx, text, -1, free);
      break;
    }
    case TG_FT_DIGEST: {
      unsigned char bin[TG_DIGEST_BYTES];
      if (tg_hex_decode(json_string_value(v), json_string_length(v), bin, sizeof(bin)))
        return tg_problem_set(p, TG_EINVAL, f->name, "a digest is 64 hex characters");
      rc = sqlite3_bind_blob(stmt, idx, bin, sizeof(bin), SQLITE_TRANSIENT);
      break;
    }
    default:
      rc = sqlite3_bind_text(stmt, idx, json_string_value(v), (int)json_string_length(v),
                             SQLITE_TRANSIENT);
    }
  }
  return rc == SQLITE_OK ? TG_OK : sql_error(st, "bind", p);
}

/* Bind a filter or lookup value given as text, converted per field type. */
static int bind_text_as(sql_store_t *st, sqlite3_stmt *stmt, int idx, const tg_field_t *f,
                        const char *value, tg_problem_t *p) {
  int rc;
  switch (f->type) {
  case TG_FT_BOOL:
    if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0)
      rc = sqlite3_bind_int(stmt, idx, 1);
    else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0)
      rc = sqlite3_bind_int(stmt, idx, 0);
    else
      return tg_problem_set(p, TG_EINVAL, f->name, "must be true or false");
    break;
  case TG_FT_INT:
  case TG_FT_TIME: {
    char *end;
    errno = 0;
    long long n = strtoll(value, &end, 10);
    if (errno || end == value || *end)
      return tg_problem_set(p, TG_EINVAL, f->name, "must be an integer");
    rc = sqlite3_bind_int64(stmt, idx, n);
    break;
  }
  case TG_FT_DIGEST: {
    unsigned char bin[TG_DIGEST_BYTES];
    if (tg_hex_decode(value, strlen(value), bin, sizeof(bin)))
      return tg_problem_set(p, TG_EINVAL, f->name, "a digest is 64 hex characters");
    rc = sqlite3_bind_blob(stmt, idx, bin, sizeof(bin), SQLITE_TRANSIENT);
    break;
  }
  default: rc = sqlite3_bind_text(stmt, idx, value, -1, SQLITE_TRANSIENT);
  }
  return rc == SQLITE_OK ? TG_OK : sql_error(st, "bind", p);
}

/* The current result row as a JSON object (columns as in sb_row_columns). */
static json_t *row_to_json(sqlite3_stmt *stmt, const tg_entity_desc_t *d) {
  json_t *o = json_object();
  int col = 0;
  for (int i = 0; o && i < d->nfields; i++) {
    const tg_field_t *f = &d->fields[i];
    if (f->flags & TG_F_SECRET)
      continue;
    json_t *v;
    if (sqlite3_column_type(stmt, col) == SQLITE_NULL) {
      v = json_null();
    } else {
      switch (f->type) {
      case TG_FT_INT:
      case TG_FT_TIME: v = json_integer(sqlite3_column_int64(stmt, col)); break;
      case TG_FT_BOOL: v = json_boolean(sqlite3_column_int(stmt, col)); break;
      case TG_FT_JSON:
        v = json_loadb((const char *)sqlite3_column_text(stmt, col),
                       (size_t)sqlite3_column_bytes(stmt, col), JSON_DECODE_ANY, NULL);
        break;
      default:
        v = json_stringn((const char *)sqlite3_column_text(stmt, col),
                         (size_t)sqlite3_column_bytes(stmt, col));
      }
    }
    if (!v || json_object_set_new(o, f->name, v)) {
      json_decref(o);
      return NULL;
    }
    col++;
  }
  return o;
}

/* ---- lifecycle ----------------------------------------------------------- */

static const tg_store_vtab_t sqlite_vtab;

static int exec(sql_store_t *st, const char *sql, tg_problem_t *p) {
  if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK)
    return sql_error(st, sql, p);
  return TG_OK;
}

/* exec() for one statement run often: prepared once, kept in the
 * statement cache (a hot path pays no SQL parsing per call). */
static int exec_cached(sql_store_t *st, const char *sql, tg_problem_t *p) {
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st, sql, &stmt) != SQLITE_OK || sqlite3_step(stmt) != SQLITE_DONE)
    result = sql_error(st, sql, p);
  stmt_release(st, stmt);
  return result;
}

/* Create the database file with mode 0600 before SQLite does (it would use
 * 0644 and the umask): it holds developers' emails. WAL and SHM files
 * inherit this mode. */
static int create_private(const char *path, tg_problem_t *p) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST)
      return TG_OK;
    return tg_problem_set(p, TG_EIO, "db_path", "cannot create %s: %s", path, strerror(errno));
  }
  close(fd);
  return TG_OK;
}

int tg_store_sqlite_open(const tg_store_options_t *opt, tg_store_t **out, int *from, int *to,
                         tg_problem_t *p) {
  int result = TG_ESTORE;
  sql_store_t *st = NULL;
  int flags = SQLITE_OPEN_NOMUTEX;
  *out = NULL;
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, sqlite_setup);
  if (opt->mode == TG_STORE_OPEN_READONLY) {
    flags |= SQLITE_OPEN_READONLY;
  } else {
    flags |= SQLITE_OPEN_READWRITE;
    if (opt->mode == TG_STORE_OPEN_MIGRATE) {
      result = create_private(opt->path, p);
      if (result)
        goto out;
    }
  }
  st = calloc(1, sizeof(*st));
  if (!st) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  st->base.vt = &sqlite_vtab;
  st->readonly = opt->mode == TG_STORE_OPEN_READONLY;
  if (sqlite3_open_v2(opt->path, &st->db, flags, NULL) != SQLITE_OK) {
    result = tg_problem_set(p, TG_ESTORE, "db_path", "cannot open %s: %s", opt->path,
                            st->db ? sqlite3_errmsg(st->db) : "out of memory");
    goto out;
  }
  sqlite3_extended_result_codes(st->db, 1);
  sqlite3_busy_timeout(st->db, opt->busy_timeout_ms);
  /* Refuse to treat a non-database file as an empty one. */
  result = exec(st, "SELECT count(*) FROM sqlite_schema", p);
  if (result) {
    tg_problem_clear(p);
    result = tg_problem_set(p, TG_ESTORE, "db_path", "%s is not a Tollgate database: %s", opt->path,
                            sqlite3_errmsg(st->db));
    goto out;
  }
  if (opt->mode != TG_STORE_OPEN_READONLY) {
    if ((result = exec(st, "PRAGMA journal_mode = WAL", p)) ||
        (result = exec(st, "PRAGMA synchronous = NORMAL", p)))
      goto out;
  }
  if ((result = exec(st, "PRAGMA foreign_keys = ON", p)))
    goto out;
  if (opt->mode == TG_STORE_OPEN_MIGRATE) {
    result = tg_migrate_apply(st->db, tg_schema_migrations, tg_schema_migration_count, from, to, p);
    if (result)
      goto out;
  } else {
    int v = tg_migrate_version(st->db), latest = tg_store_schema_latest();
    if (from)
      *from = v;
    if (to)
      *to = v;
    if (v != latest) {
      result = tg_problem_set(p, TG_ESCHEMA, "db_path",
                              v > latest ? "%s has schema version %d, newer than this binary "
                                           "knows (%d): use a newer tollgate"
                                         : "%s has schema version %d, this binary needs %d: "
                                           "run `tollgate migrate`",
                              opt->path, v, latest);
      goto out;
    }
  }
  /* after migrations: they run with their CHECKs */
  if (opt->usage_writer && !st->readonly) {
    if ((result = exec(st, "PRAGMA ignore_check_constraints = ON", p)))
      goto out;
    st->usage_writer = true;
  }
  result = TG_OK;
out:
  if (result && st) {
    sqlite3_close_v2(st->db);
    free(st);
    st = NULL;
  }
  *out = (tg_store_t *)st;
  return result;
}

static void s_close(tg_store_t *s) {
  sql_store_t *st = (sql_store_t *)s;
  if (st->in_tx)
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  for (int i = 0; i < st->ncache; i++) {
    sqlite3_finalize(st->cache[i].stmt);
    free(st->cache[i].sql);
  }
  sqlite3_close_v2(st->db);
  free(st);
}

static int s_schema_version(tg_store_t *s, int *version) {
  int v = tg_migrate_version(((sql_store_t *)s)->db);
  *version = v < 0 ? 0 : v;
  return v < 0 ? v : TG_OK;
}

static int s_begin(tg_store_t *s, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  if (st->in_tx)
    return tg_problem_set(p, TG_ESTORE, "", "transaction already open");
  int rc = exec(st, "BEGIN IMMEDIATE", p);
  if (rc == TG_OK)
    st->in_tx = 1;
  return rc;
}

static int s_commit(tg_store_t *s, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  if (!st->in_tx)
    return tg_problem_set(p, TG_ESTORE, "", "no transaction open");
  int rc = exec(st, "COMMIT", p);
  if (rc) {
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  }
  st->in_tx = 0;
  return rc;
}

static void s_rollback(tg_store_t *s) {
  sql_store_t *st = (sql_store_t *)s;
  if (st->in_tx)
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  st->in_tx = 0;
}

/* ---- rows ---------------------------------------------------------------- */

static int s_get_by(tg_store_t *s, const tg_entity_desc_t *d, const tg_field_t *f,
                    const char *value, json_t **row, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  int result;
  sb_add(&b, "SELECT ");
  sb_row_columns(&b, d);
  sb_add(&b, " FROM ");
  sb_add(&b, d->table);
  sb_add(&b, " WHERE ");
  sb_add(&b, f->name);
  sb_add(&b, " = ?");
  /* Unique text fields other than the email are unique among live rows
   * only through partial indexes; prefer the live row. */
  if (tg_model_field(d, "status"))
    sb_add(&b, " ORDER BY status = 'deleted', id DESC");
  sb_add(&b, " LIMIT 1");
  if ((result = prepare(st, &b, &stmt, p)) || (result = bind_text_as(st, stmt, 1, f, value, p)))
    goto out;
  int rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    *row = row_to_json(stmt, d);
    result = *row ? TG_OK : tg_problem_set(p, TG_ENOMEM, "", NULL);
  } else if (rc == SQLITE_DONE) {
    result =
        tg_problem_set(p, TG_ENOTFOUND, f->type == TG_FT_ID ? "/id" : f->name, "no %s with this %s",
                       d->name, f->type == TG_FT_DIGEST ? "key" : f->name);
  } else {
    result = sql_error(st, "read", p);
  }
out:
  stmt_release(st, stmt);
  return result;
}

static int s_get_secret(tg_store_t *s, const tg_entity_desc_t *d, const char *id,
                        const tg_field_t *f, char **out, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  int result;
  sb_add(&b, "SELECT ");
  sb_add(&b, f->name);
  sb_add(&b, " FROM ");
  sb_add(&b, d->table);
  sb_add(&b, " WHERE id = ?");
  if ((result = prepare(st, &b, &stmt, p)))
    goto out;
  sqlite3_bind_text(stmt, 1, id, -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    if (sqlite3_column_type(stmt, 0) != SQLITE_NULL) {
      *out = strdup((const char *)sqlite3_column_text(stmt, 0));
      if (!*out)
        result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    }
  } else if (rc == SQLITE_DONE) {
    result = tg_problem_set(p, TG_ENOTFOUND, "/id", "no %s with id \"%s\"", d->name, id);
  } else {
    result = sql_error(st, "read", p);
  }
out:
  stmt_release(st, stmt);
  return result;
}

static int get_row(sql_store_t *st, const tg_entity_desc_t *d, const char *id, json_t **row,
                   tg_problem_t *p) {
  return s_get_by(&st->base, d, &d->fields[0], id, row, p);
}

/* After a foreign-key failure, find which reference in `fields` is broken,
 * so that the error names the field ("/api_id") instead of "a reference". */
static int explain_reference(sql_store_t *st, const tg_entity_desc_t *d, const json_t *fields,
                             tg_problem_t *p) {
  for (int i = 0; i < d->nfields; i++) {
    const tg_field_t *f = &d->fields[i];
    const json_t *v = json_object_get(fields, f->name);
    if (f->type != TG_FT_REF || !json_is_string(v))
      continue;
    const tg_entity_desc_t *ref = NULL;
    for (int e = 0; e < TG_ENT__COUNT; e++)
      if (strcmp(tg_model_entity((tg_entity_t)e)->name, f->choices) == 0)
        ref = tg_model_entity((tg_entity_t)e);
    json_t *row = NULL;
    tg_problem_t ignore = {0};
    int rc = get_row(st, ref, json_string_value(v), &row, &ignore);
    if (rc == TG_ENOTFOUND) {
      char ptr[TG_PROBLEM_FIELD_MAX];
      snprintf(ptr, sizeof(ptr), "/%s", f->name);
      return tg_problem_set(p, TG_EINVAL, ptr, "no %s with id \"%s\"", ref->name,
                            json_string_value(v));
    }
    /* A plan of another API: subscriptions' (plan_id, api_id) reference. */
    const json_t *api = json_object_get(fields, "api_id");
    if (rc == TG_OK && strcmp(f->choices, "plan") == 0 && json_is_string(api) &&
        !json_equal(json_object_get(row, "api_id"), api)) {
      json_decref(row);
      return tg_problem_set(p, TG_EINVAL, "/plan_id", "plan \"%s\" belongs to another API",
                            json_string_value(v));
    }
    json_decref(row);
  }
  return tg_problem_set(p, TG_ECONFLICT, "", "a reference of this %s does not hold", d->name);
}

static int s_create(tg_store_t *s, const tg_entity_desc_t *d, const json_t *fields, json_t **row,
                    tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  char id[TG_ID_LEN + 1];
  int result, n = 0;
  int64_t now = tg_now();
  int has_version = tg_model_field(d, "version") != NULL;
  tg_id_new(d->id_prefix, id);
  sb_add(&b, "INSERT INTO ");
  sb_add(&b, d->table);
  sb_add(&b, " (id");
  if (has_version)
    sb_add(&b, ", version, created_at, updated_at");
  for (int i = 0; i < d->nfields; i++)
    if (json_object_get(fields, d->fields[i].name)) {
      sb_add(&b, ", ");
      sb_add(&b, d->fields[i].name);
      n++;
    }
  sb_add(&b, ") VALUES (?");
  if (has_version)
    sb_add(&b, ", 1, ?, ?");
  for (int i = 0; i < n; i++)
    sb_add(&b, ", ?");
  sb_add(&b, ")");
  if ((result = prepare(st, &b, &stmt, p)))
    goto out;
  int idx = 1;
  sqlite3_bind_text(stmt, idx++, id, -1, SQLITE_TRANSIENT);
  if (has_version) {
    sqlite3_bind_int64(stmt, idx++, now);
    sqlite3_bind_int64(stmt, idx++, now);
  }
  for (int i = 0; i < d->nfields; i++) {
    const json_t *v = json_object_get(fields, d->fields[i].name);
    if (v && (result = bind_value(st, stmt, idx++, &d->fields[i], v, p)))
      goto out;
  }
  if (sqlite3_step(stmt) != SQLITE_DONE) {
    if (is_fk_error(st->db))
      result = explain_reference(st, d, fields, p);
    else
      result = sql_error(st, d->name, p);
    goto out;
  }
  result = row ? get_row(st, d, id, row, p) : TG_OK;
out:
  stmt_release(st, stmt);
  return result;
}

/* After an update or delete touched no row: missing, or wrong version? */
static int explain_miss(sql_store_t *st, const tg_entity_desc_t *d, const char *id,
                        int64_t if_version, tg_problem_t *p) {
  json_t *row = NULL;
  int rc = get_row(st, d, id, &row, p);
  if (rc == TG_OK) {
    rc = tg_problem_set(p, TG_EPRECOND, "/version",
                        "%s \"%s\" is at version %lld, not %lld (changed by someone else)", d->name,
                        id, (long long)json_integer_value(json_object_get(row, "version")),
                        (long long)if_version);
  }
  json_decref(row);
  return rc;
}

static int s_update(tg_store_t *s, const tg_entity_desc_t *d, const char *id, const json_t *changes,
                    int64_t if_version, json_t **row, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  int result, idx = 1;
  if (json_object_size(changes) == 0) {
    json_t *cur = NULL;
    result = get_row(st, d, id, &cur, p);
    if (result == TG_OK && if_version > 0 &&
        json_integer_value(json_object_get(cur, "version")) != if_version) {
      json_decref(cur);
      return explain_miss(st, d, id, if_version, p);
    }
    if (row)
      *row = cur;
    else
      json_decref(cur);
    return result;
  }
  sb_add(&b, "UPDATE ");
  sb_add(&b, d->table);
  sb_add(&b, " SET version = version + 1, updated_at = max(created_at, ?)");
  for (int i = 0; i < d->nfields; i++)
    if (json_object_get(changes, d->fields[i].name)) {
      sb_add(&b, ", ");
      sb_add(&b, d->fields[i].name);
      sb_add(&b, " = ?");
    }
  sb_add(&b, " WHERE id = ?");
  if (if_version > 0)
    sb_add(&b, " AND version = ?");
  if ((result = prepare(st, &b, &stmt, p)))
    goto out;
  sqlite3_bind_int64(stmt, idx++, tg_now());
  for (int i = 0; i < d->nfields; i++) {
    const json_t *v = json_object_get(changes, d->fields[i].name);
    if (v && (result = bind_value(st, stmt, idx++, &d->fields[i], v, p)))
      goto out;
  }
  sqlite3_bind_text(stmt, idx++, id, -1, SQLITE_TRANSIENT);
  if (if_version > 0)
    sqlite3_bind_int64(stmt, idx++, if_version);
  if (sqlite3_step(stmt) != SQLITE_DONE) {
    if (is_fk_error(st->db)) {
      /* The reference check needs the row's immutable api_id as context. */
      json_t *cur = NULL, *merged = NULL;
      if (get_row(st, d, id, &cur, NULL) == TG_OK && (merged = json_deep_copy(cur)) &&
          json_object_update(merged, (json_t *)changes) == 0)
        result = explain_reference(st, d, merged, p);
      else
        result = sql_error(st, d->name, p);
      json_decref(cur);
      json_decref(merged);
    } else {
      result = sql_error(st, d->name, p);
    }
    goto out;
  }
  if (sqlite3_changes(st->db) == 0) {
    result = explain_miss(st, d, id, if_version, p);
    goto out;
  }
  result = row ? get_row(st, d, id, row, p) : TG_OK;
out:
  stmt_release(st, stmt);
  return result;
}

static int s_touch(tg_store_t *s, const tg_entity_desc_t *d, const char *id, const tg_field_t *f,
                   int64_t value, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  int result;
  sb_add(&b, "UPDATE ");
  sb_add(&b, d->table);
  sb_add(&b, " SET ");
  sb_add(&b, f->name);
  sb_add(&b, " = ? WHERE id = ?");
  if ((result = prepare(st, &b, &stmt, p)))
    goto out;
  sqlite3_bind_int64(stmt, 1, value);
  sqlite3_bind_text(stmt, 2, id, -1, SQLITE_TRANSIENT);
  if (sqlite3_step(stmt) != SQLITE_DONE)
    result = sql_error(st, d->name, p);
  else if (sqlite3_changes(st->db) == 0)
    result = tg_problem_set(p, TG_ENOTFOUND, "/id", "no %s with id \"%s\"", d->name, id);
out:
  stmt_release(st, stmt);
  return result;
}

static int s_del(tg_store_t *s, const tg_entity_desc_t *d, const char *id, int64_t if_version,
                 tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  int result;
  sb_add(&b, "DELETE FROM ");
  sb_add(&b, d->table);
  sb_add(&b, " WHERE id = ?");
  if (if_version > 0)
    sb_add(&b, " AND version = ?");
  if ((result = prepare(st, &b, &stmt, p)))
    goto out;
  sqlite3_bind_text(stmt, 1, id, -1, SQLITE_TRANSIENT);
  if (if_version > 0)
    sqlite3_bind_int64(stmt, 2, if_version);
  if (sqlite3_step(stmt) != SQLITE_DONE) {
    if (is_fk_error(st->db))
      result = tg_problem_set(p, TG_ECONFLICT, "/id", "%s \"%s\" is still in use by other entities",
                              d->name, id);
    else
      result = sql_error(st, d->name, p);
    goto out;
  }
  if (sqlite3_changes(st->db) == 0)
    result = explain_miss(st, d, id, if_version, p);
out:
  stmt_release(st, stmt);
  return result;
}

static void sb_where(sqlbuf_t *b, const tg_entity_desc_t *d, const tg_filter_t *filters, int n,
                     int after) {
  for (int i = 0; i < n; i++) {
    sb_add(b, i == 0 ? " WHERE " : " AND ");
    sb_add(b, tg_model_field(d, filters[i].field)->name);
    sb_add(b, " = ?");
  }
  if (after)
    sb_add(b, n ? " AND id > ?" : " WHERE id > ?");
}

static int bind_filters(sql_store_t *st, sqlite3_stmt *stmt, const tg_entity_desc_t *d,
                        const tg_filter_t *filters, int n, tg_problem_t *p) {
  for (int i = 0; i < n; i++) {
    int rc =
        bind_text_as(st, stmt, i + 1, tg_model_field(d, filters[i].field), filters[i].value, p);
    if (rc)
      return rc;
  }
  return TG_OK;
}

static int s_list(tg_store_t *s, const tg_entity_desc_t *d, const tg_list_query_t *q, json_t **rows,
                  char *next, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  json_t *arr = NULL;
  int result, rc, n = 0;
  sb_add(&b, "SELECT ");
  sb_row_columns(&b, d);
  sb_add(&b, " FROM ");
  sb_add(&b, d->table);
  sb_where(&b, d, q->filters, q->nfilters, q->after != NULL);
  sb_add(&b, " ORDER BY id LIMIT ?");
  if ((result = prepare(st, &b, &stmt, p)) ||
      (result = bind_filters(st, stmt, d, q->filters, q->nfilters, p)))
    goto out;
  int idx = q->nfilters + 1;
  if (q->after)
    sqlite3_bind_text(stmt, idx++, q->after, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int(stmt, idx, q->limit + 1); /* one extra row says "there is more" */
  if (!(arr = json_array())) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    if (n == q->limit) {
      const json_t *last = json_object_get(json_array_get(arr, (size_t)n - 1), "id");
      snprintf(next, TG_ID_LEN + 1, "%s", json_string_value(last));
      break;
    }
    json_t *o = row_to_json(stmt, d);
    if (!o || json_array_append_new(arr, o)) {
      result = tg_problem_set(p, TG_ENOMEM, "", NULL);
      goto out;
    }
    n++;
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    result = sql_error(st, "list", p);
    goto out;
  }
  result = TG_OK;
out:
  stmt_release(st, stmt);
  if (result) {
    json_decref(arr);
    arr = NULL;
    next[0] = '\0';
  }
  *rows = arr;
  return result;
}

static int s_count(tg_store_t *s, const tg_entity_desc_t *d, const tg_filter_t *filters,
                   int nfilters, int64_t *count, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  int result;
  sb_add(&b, "SELECT count(*) FROM ");
  sb_add(&b, d->table);
  sb_where(&b, d, filters, nfilters, 0);
  if ((result = prepare(st, &b, &stmt, p)) ||
      (result = bind_filters(st, stmt, d, filters, nfilters, p)))
    goto out;
  if (sqlite3_step(stmt) != SQLITE_ROW) {
    result = sql_error(st, "count", p);
    goto out;
  }
  *count = sqlite3_column_int64(stmt, 0);
out:
  stmt_release(st, stmt);
  return result;
}

/* ---- meta, change log, backup -------------------------------------------- */

static int s_meta_get(tg_store_t *s, const char *key, char **value, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st, "SELECT value FROM meta WHERE key = ?", &stmt)) {
    result = sql_error(st, "meta", p);
    goto out;
  }
  sqlite3_bind_text(stmt, 1, key, -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    *value = strdup((const char *)sqlite3_column_text(stmt, 0));
    if (!*value)
      result = tg_problem_set(p, TG_ENOMEM, "", NULL);
  } else if (rc == SQLITE_DONE) {
    result = tg_problem_set(p, TG_ENOTFOUND, key, "no setting %s", key);
  } else {
    result = sql_error(st, "meta", p);
  }
out:
  stmt_release(st, stmt);
  return result;
}

static int s_meta_set(tg_store_t *s, const char *key, const char *value, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st,
                   "INSERT INTO meta (key, value) VALUES (?, ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   &stmt)) {
    result = sql_error(st, "meta", p);
    goto out;
  }
  sqlite3_bind_text(stmt, 1, key, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(stmt, 2, value, -1, SQLITE_TRANSIENT);
  if (sqlite3_step(stmt) != SQLITE_DONE)
    result = sql_error(st, "meta", p);
out:
  stmt_release(st, stmt);
  return result;
}

static int s_changes(tg_store_t *s, int64_t after_seq, int limit, tg_change_cb cb, void *ctx,
                     int64_t *last_seq, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK, rc;
  if (last_seq)
    *last_seq = after_seq;
  if (stmt_prepare(st,
                   "SELECT seq, at, entity, entity_id, op FROM change_log "
                   "WHERE seq > ? ORDER BY seq LIMIT ?",
                   &stmt)) {
    result = sql_error(st, "change log", p);
    goto out;
  }
  sqlite3_bind_int64(stmt, 1, after_seq);
  sqlite3_bind_int(stmt, 2, limit);
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    tg_change_t c = {
        .seq = sqlite3_column_int64(stmt, 0),
        .at = sqlite3_column_int64(stmt, 1),
        .entity = (const char *)sqlite3_column_text(stmt, 2),
        .entity_id = (const char *)sqlite3_column_text(stmt, 3),
        .op = (const char *)sqlite3_column_text(stmt, 4),
    };
    if ((result = cb(&c, ctx)))
      goto out;
    if (last_seq)
      *last_seq = c.seq;
  }
  if (rc != SQLITE_DONE)
    result = sql_error(st, "change log", p);
out:
  stmt_release(st, stmt);
  return result;
}

static int s_data_version(tg_store_t *s, int64_t *version) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_ESTORE;
  if (stmt_prepare(st, "PRAGMA data_version", &stmt) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    *version = sqlite3_column_int64(stmt, 0);
    result = TG_OK;
  }
  stmt_release(st, stmt);
  return result;
}

static int s_backup(tg_store_t *s, const char *path, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3 *dst = NULL;
  sqlite3_backup *bk = NULL;
  int result = TG_ESTORE, created = 0;
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    result = tg_problem_set(p, TG_EIO, "file", "cannot create %s: %s", path, strerror(errno));
    goto out;
  }
  close(fd);
  created = 1;
  if (sqlite3_open_v2(path, &dst, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
    result = tg_problem_set(p, TG_ESTORE, "file", "cannot open %s: %s", path,
                            dst ? sqlite3_errmsg(dst) : "out of memory");
    goto out;
  }
  /* One step copies every page under one read transaction: a consistent
   * snapshot, while WAL lets writers go on. */
  bk = sqlite3_backup_init(dst, "main", st->db, "main");
  if (!bk) {
    result = tg_problem_set(p, TG_ESTORE, "file", "backup: %s", sqlite3_errmsg(dst));
    goto out;
  }
  int rc = sqlite3_backup_step(bk, -1);
  sqlite3_backup_finish(bk);
  bk = NULL;
  if (rc != SQLITE_DONE) {
    result = tg_problem_set(p, rc == SQLITE_BUSY ? TG_EBUSY : TG_ESTORE, "file",
                            "backup to %s failed: %s", path, sqlite3_errstr(rc));
    goto out;
  }
  result = TG_OK;
out:
  sqlite3_close_v2(dst);
  if (result && created)
    unlink(path);
  return result;
}

/* ---- idempotency records ------------------------------------------------- */

static int s_idem_get(tg_store_t *s, const unsigned char id[32], int64_t now, tg_idem_record_t *out,
                      tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st,
                   "SELECT request_hash, status, sealed FROM idempotency_keys "
                   "WHERE id = ? AND expires_at > ?",
                   &stmt)) {
    result = sql_error(st, "idempotency", p);
    goto out;
  }
  sqlite3_bind_blob(stmt, 1, id, 32, SQLITE_STATIC);
  sqlite3_bind_int64(stmt, 2, now);
  int rc = sqlite3_step(stmt);
  if (rc == SQLITE_DONE) {
    result = TG_ENOTFOUND;
    goto out;
  }
  if (rc != SQLITE_ROW) {
    result = sql_error(st, "idempotency", p);
    goto out;
  }
  size_t len = (size_t)sqlite3_column_bytes(stmt, 2);
  if (sqlite3_column_bytes(stmt, 0) != 32 || !(out->sealed = malloc(len ? len : 1))) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto out;
  }
  memcpy(out->request_hash, sqlite3_column_blob(stmt, 0), 32);
  out->status = sqlite3_column_int(stmt, 1);
  if (len)
    memcpy(out->sealed, sqlite3_column_blob(stmt, 2), len);
  out->sealed_len = len;
out:
  stmt_release(st, stmt);
  return result;
}

static int s_idem_put(tg_store_t *s, const unsigned char id[32], const tg_idem_record_t *rec,
                      int64_t now, int64_t expires_at, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st,
                   "INSERT OR REPLACE INTO idempotency_keys "
                   "(id, request_hash, status, sealed, created_at, expires_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   &stmt)) {
    result = sql_error(st, "idempotency", p);
    goto out;
  }
  sqlite3_bind_blob(stmt, 1, id, 32, SQLITE_STATIC);
  sqlite3_bind_blob(stmt, 2, rec->request_hash, 32, SQLITE_STATIC);
  sqlite3_bind_int(stmt, 3, rec->status);
  sqlite3_bind_blob(stmt, 4, rec->sealed, (int)rec->sealed_len, SQLITE_STATIC);
  sqlite3_bind_int64(stmt, 5, now);
  sqlite3_bind_int64(stmt, 6, expires_at);
  if (sqlite3_step(stmt) != SQLITE_DONE)
    result = sql_error(st, "idempotency", p);
out:
  stmt_release(st, stmt);
  return result;
}

static int s_idem_purge(tg_store_t *s, int64_t now, int64_t *deleted, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st, "DELETE FROM idempotency_keys WHERE expires_at <= ?", &stmt)) {
    result = sql_error(st, "idempotency", p);
    goto out;
  }
  sqlite3_bind_int64(stmt, 1, now);
  if (sqlite3_step(stmt) != SQLITE_DONE) {
    result = sql_error(st, "idempotency", p);
    goto out;
  }
  if (deleted)
    *deleted = sqlite3_changes(st->db);
out:
  stmt_release(st, stmt);
  return result;
}

/* ---- the gateway's policy view ------------------------------------------- */

/* Rows go straight from SQLite's row buffer to the callback: no JSON, no
 * copies, one cached statement per column list. A single statement is one
 * read transaction (its WAL snapshot lasts from the first step to the
 * reset), so the whole scan is a consistent view without BEGIN; inside an
 * explicit transaction it is that transaction's view. ORDER BY id walks
 * the primary-key index, no sort. */
static int s_scan(tg_store_t *s, const tg_entity_desc_t *d, const char *only_id,
                  const tg_field_t *const *cols, int ncols, tg_scan_cb cb, void *ctx,
                  tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlbuf_t b = {0};
  sqlite3_stmt *stmt = NULL;
  tg_value_t vals[TG_SCAN_COLS_MAX];
  int result, rc;
  sb_add(&b, "SELECT ");
  for (int i = 0; i < ncols; i++) {
    if (i)
      sb_add(&b, ", ");
    sb_add(&b, cols[i]->name);
  }
  sb_add(&b, " FROM ");
  sb_add(&b, d->table);
  sb_add(&b, only_id ? " WHERE id = ?" : " ORDER BY id");
  if ((result = prepare(st, &b, &stmt, p)))
    goto out;
  if (only_id)
    sqlite3_bind_text(stmt, 1, only_id, -1, SQLITE_STATIC);
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    for (int i = 0; i < ncols; i++) {
      tg_value_t *v = &vals[i];
      v->i = 0;
      v->s = NULL;
      v->len = 0;
      switch (sqlite3_column_type(stmt, i)) {
      case SQLITE_NULL: v->type = TG_V_NULL; break;
      case SQLITE_INTEGER:
        v->type = TG_V_INT;
        v->i = sqlite3_column_int64(stmt, i);
        break;
      case SQLITE_TEXT:
        v->type = TG_V_TEXT;
        v->s = (const char *)sqlite3_column_text(stmt, i); /* text first, then its length */
        v->len = (size_t)sqlite3_column_bytes(stmt, i);
        if (!v->s) {
          result = tg_problem_set(p, TG_ENOMEM, "", NULL);
          goto out;
        }
        break;
      case SQLITE_BLOB:
        v->type = TG_V_BLOB;
        v->s = sqlite3_column_blob(stmt, i);
        v->len = (size_t)sqlite3_column_bytes(stmt, i);
        if (!v->s)
          v->s = ""; /* a zero-length blob */
        break;
      default: /* REAL: no column of the schema holds one (STRICT tables) */
        result =
            tg_problem_set(p, TG_ESTORE, "", "scan: %s.%s holds a REAL", d->table, cols[i]->name);
        goto out;
      }
    }
    if ((result = cb(vals, ncols, ctx)))
      goto out;
  }
  if (rc != SQLITE_DONE)
    result = sql_error(st, "scan", p);
out:
  stmt_release(st, stmt);
  return result;
}

/* ---- usage ledger -------------------------------------------------------- */

/* A row is added by an UPDATE of the row it adds to, and only when that
 * finds nothing by the UPSERT below: counters and histogram buckets add
 * up (so the h00..h14 = calls CHECK keeps holding), subscription_id takes
 * the newest value. Parameters in tg_usage_row_t order for both (the
 * UPDATE leaves ?4 and ?5, app_id and developer_id, unused). Nearly every
 * row the gateway writes adds to a row written a second earlier, and the
 * UPDATE costs 11% fewer instructions than the UPSERT's conflict path
 * (callgrind, 1,000 rows a transaction). */
static const char usage_update_sql[] =
    "UPDATE usage_rollups SET subscription_id = ?8, calls = calls + ?11, "
    "bytes_in = bytes_in + ?12, bytes_out = bytes_out + ?13, "
    "latency_us_sum = latency_us_sum + ?14, "
    "h00 = h00 + ?15, h01 = h01 + ?16, h02 = h02 + ?17, h03 = h03 + ?18, h04 = h04 + ?19, "
    "h05 = h05 + ?20, h06 = h06 + ?21, h07 = h07 + ?22, h08 = h08 + ?23, h09 = h09 + ?24, "
    "h10 = h10 + ?25, h11 = h11 + ?26, h12 = h12 + ?27, h13 = h13 + ?28, h14 = h14 + ?29 "
    "WHERE granularity = ?1 AND period_start = ?2 AND key_id = ?3 AND api_id = ?6 "
    "AND plan_id = ?7 AND status_class = ?9 AND reason = ?10";

static const char usage_upsert_sql[] =
    "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, api_id, "
    "plan_id, subscription_id, status_class, reason, calls, bytes_in, bytes_out, latency_us_sum, "
    "h00, h01, h02, h03, h04, h05, h06, h07, h08, h09, h10, h11, h12, h13, h14) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (granularity, period_start, key_id, api_id, plan_id, status_class, reason) "
    "DO UPDATE SET subscription_id = excluded.subscription_id, calls = calls + excluded.calls, "
    "bytes_in = bytes_in + excluded.bytes_in, bytes_out = bytes_out + excluded.bytes_out, "
    "latency_us_sum = latency_us_sum + excluded.latency_us_sum, "
    "h00 = h00 + excluded.h00, h01 = h01 + excluded.h01, h02 = h02 + excluded.h02, "
    "h03 = h03 + excluded.h03, h04 = h04 + excluded.h04, h05 = h05 + excluded.h05, "
    "h06 = h06 + excluded.h06, h07 = h07 + excluded.h07, h08 = h08 + excluded.h08, "
    "h09 = h09 + excluded.h09, h10 = h10 + excluded.h10, h11 = h11 + excluded.h11, "
    "h12 = h12 + excluded.h12, h13 = h13 + excluded.h13, h14 = h14 + excluded.h14";

static void bind_usage_row(sqlite3_stmt *stmt, const tg_usage_row_t *r) {
  int idx = 1;
  /* SQLITE_STATIC: the rows outlive the statement's use (reset below). */
  sqlite3_bind_int64(stmt, idx++, r->granularity);
  sqlite3_bind_int64(stmt, idx++, r->period_start);
  sqlite3_bind_text(stmt, idx++, r->key_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(stmt, idx++, r->app_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(stmt, idx++, r->developer_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(stmt, idx++, r->api_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(stmt, idx++, r->plan_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(stmt, idx++, r->subscription_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(stmt, idx++, r->status_class);
  sqlite3_bind_text(stmt, idx++, r->reason, -1, SQLITE_STATIC);
  sqlite3_bind_int64(stmt, idx++, r->calls);
  sqlite3_bind_int64(stmt, idx++, r->bytes_in);
  sqlite3_bind_int64(stmt, idx++, r->bytes_out);
  sqlite3_bind_int64(stmt, idx++, r->latency_us_sum);
  for (int k = 0; k < TG_USAGE_BUCKETS; k++)
    sqlite3_bind_int64(stmt, idx++, r->h[k]);
}

/* The usage statements: the UPDATE first, the UPSERT for a new row. */
typedef struct usage_stmts {
  sqlite3_stmt *update, *upsert;
} usage_stmts_t;

/* Add one row: SQLITE_DONE, or the failing step's code. */
static int usage_put(sql_store_t *st, const usage_stmts_t *u, const tg_usage_row_t *r) {
  bind_usage_row(u->update, r);
  int rc = sqlite3_step(u->update);
  sqlite3_reset(u->update);
  if (rc != SQLITE_DONE || sqlite3_changes(st->db) > 0)
    return rc;
  bind_usage_row(u->upsert, r);
  rc = sqlite3_step(u->upsert);
  sqlite3_reset(u->upsert);
  return rc;
}

#define WM_HOURS  "usage.compacted.3600"  /* hours before this are compacted */
#define WM_DAYS   "usage.compacted.86400" /* days before this are compacted */
#define RET_MINS  "usage.retained.60"     /* minute rows before this were removed */
#define RET_HOURS "usage.retained.3600"   /* hour rows before this were removed */

static int wm_get(sql_store_t *st, const char *key, int64_t *out, tg_problem_t *p);
static int usage_add_late(sql_store_t *st, const usage_stmts_t *u, const tg_usage_row_t *r,
                          int64_t wm_hours, int64_t wm_days);

/* All rows or none: one write transaction (BEGIN IMMEDIATE, so a locked
 * store fails at the start with TG_EBUSY, not half-way), or a savepoint
 * when the caller already holds one (tg_store_begin). Any failure rolls
 * back every row of the batch.
 *
 * The gateway writes every minute row of every active key each second,
 * so this is the store's hottest write. Two things keep it cheap:
 * - the table's CHECK constraints are off for it: tg_store_usage_add has
 *   checked each row against the same rules in C, and counters only grow
 *   by checked amounts (an int64 overflow still fails: it turns the sum
 *   into a REAL, which the STRICT table refuses). SQLite evaluating the
 *   fourteen CHECKs was half the cost of a row. The pragma is set for
 *   this call only; setting it expires the connection's statements (they
 *   are compiled with or without the checks), so a caller that wants to
 *   pause between rows passes `pause` rather than calling once a slice;
 * - app_id and developer_id are written when the row is created, not on
 *   each update: a key never changes app nor an app developer (both
 *   immutable), and rewriting app_id would move the row's entry in
 *   usage_rollups_app every time. */
static int usage_write(sql_store_t *st, const tg_usage_row_t *rows, size_t n, size_t every,
                       void (*pause)(void), tg_problem_t *p) {
  usage_stmts_t u = {NULL, NULL};
  int result;
  char what[48];
  int64_t wm_hours, wm_days;
  if ((result = wm_get(st, WM_HOURS, &wm_hours, p)) || (result = wm_get(st, WM_DAYS, &wm_days, p)))
    return result;
  if (stmt_prepare(st, usage_update_sql, &u.update) != SQLITE_OK ||
      stmt_prepare(st, usage_upsert_sql, &u.upsert) != SQLITE_OK) {
    result = sql_error(st, "usage", p);
    goto out;
  }
  if (!st->usage_writer && (result = exec_cached(st, "PRAGMA ignore_check_constraints = ON", p)))
    goto out;
  for (size_t i = 0; i < n; i++) {
    if (usage_put(st, &u, &rows[i]) != SQLITE_DONE ||
        usage_add_late(st, &u, &rows[i], wm_hours, wm_days) != SQLITE_DONE) {
      snprintf(what, sizeof(what), "usage rows[%zu]", i);
      result = sql_error(st, what, p);
      goto out;
    }
    if (every && (i + 1) % every == 0 && i + 1 < n)
      pause();
  }
out:
  stmt_release(st, u.update);
  stmt_release(st, u.upsert);
  if (!st->usage_writer)
    exec_cached(st, "PRAGMA ignore_check_constraints = OFF", &(tg_problem_t){0});
  return result;
}

static int s_usage_add(tg_store_t *s, const tg_usage_row_t *rows, size_t n, size_t every,
                       void (*pause)(void), tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  int nested = st->in_tx, result;
  if ((result = exec_cached(st, nested ? "SAVEPOINT usage_add" : "BEGIN IMMEDIATE", p)))
    return result;
  if (!(result = usage_write(st, rows, n, every, pause, p)))
    result = exec_cached(st, nested ? "RELEASE usage_add" : "COMMIT", p);
  if (result)
    sqlite3_exec(st->db, nested ? "ROLLBACK TO usage_add; RELEASE usage_add" : "ROLLBACK", NULL,
                 NULL, NULL);
  return result;
}

/* ---- usage journal ------------------------------------------------------------ */

/* One statement, so one short write transaction of its own (or a part of
 * the caller's). */
static int s_usage_journal(tg_store_t *s, const tg_usage_row_t *rows, size_t n, int64_t now,
                           tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  unsigned char *body;
  size_t len;
  int result = tg_usage_journal_encode(rows, n, &body, &len, p);
  if (result)
    return result;
  sqlite3_stmt *stmt = NULL;
  if (stmt_prepare(st, "INSERT INTO usage_journal (written_at, nrows, body) VALUES (?, ?, ?)",
                   &stmt) != SQLITE_OK) {
    result = sql_error(st, "usage journal", p);
  } else {
    sqlite3_bind_int64(stmt, 1, now);
    sqlite3_bind_int64(stmt, 2, (int64_t)n);
    sqlite3_bind_blob64(stmt, 3, body, len, SQLITE_STATIC);
    if (sqlite3_step(stmt) != SQLITE_DONE)
      result = sql_error(st, "usage journal", p);
  }
  stmt_release(st, stmt);
  free(body);
  return result;
}

/* A fold reads at most this much of the journal per transaction; the
 * gateway's minute is ~60 entries. */
#define FOLD_MAX_ENTRIES 1000
#define FOLD_MAX_BYTES   ((size_t)64 << 20)

/* A stepped fold's progress (tg_store_usage_fold_step): "L K" while the
 * entries up to id L are being folded and the first K of their rows are
 * in the ledger; "" (or no row) otherwise. */
#define FOLD_MARK "usage.fold"

/* The rows of a batch of journal entries, summed per ledger primary key as
 * they are decoded (a hash table over v), then put in primary key order:
 * whoever folds the same entries gets the same rows in the same order,
 * which is what lets another connection finish a stepped fold. */
typedef struct fold {
  tg_usage_row_t *v; /* summed rows: first-seen order, then key order */
  size_t n, cap;
  size_t *slot; /* hash slots: index + 1 into v, 0: empty */
  size_t nslot;
  unsigned char **bodies; /* copies the rows' strings point into */
  size_t nbodies, capbodies;
  bool overflow;
  int64_t last_id, entries; /* the batch: entries up to last_id */
  bool more;                /* entries were left after the batch */
} fold_t;

static uint64_t fnv(uint64_t h, const void *data, size_t len) {
  const unsigned char *c = data;
  for (size_t i = 0; i < len; i++)
    h = (h ^ c[i]) * 1099511628211ull;
  return h;
}

static uint64_t pk_hash(const tg_usage_row_t *r) {
  uint64_t h = 14695981039346656037ull;
  h = fnv(h, &r->granularity, sizeof(r->granularity));
  h = fnv(h, &r->period_start, sizeof(r->period_start));
  h = fnv(h, &r->status_class, sizeof(r->status_class));
  const char *s[] = {r->key_id, r->api_id, r->plan_id, r->reason};
  for (size_t k = 0; k < sizeof(s) / sizeof(s[0]); k++)
    h = fnv(h, s[k], strlen(s[k]) + 1);
  return h;
}

/* Ledger primary key order. */
static int pk_cmp(const tg_usage_row_t *x, const tg_usage_row_t *y) {
  int c;
  if (x->granularity != y->granularity)
    return x->granularity < y->granularity ? -1 : 1;
  if (x->period_start != y->period_start)
    return x->period_start < y->period_start ? -1 : 1;
  if ((c = strcmp(x->key_id, y->key_id)) || (c = strcmp(x->api_id, y->api_id)) ||
      (c = strcmp(x->plan_id, y->plan_id)))
    return c;
  if (x->status_class != y->status_class)
    return x->status_class < y->status_class ? -1 : 1;
  return strcmp(x->reason, y->reason);
}

static bool fold_grow(fold_t *f) {
  size_t nslot = f->nslot ? f->nslot * 2 : 1024;
  size_t *slot = calloc(nslot, sizeof(*slot));
  if (!slot)
    return false;
  for (size_t i = 0; i < f->n; i++) {
    size_t j = pk_hash(&f->v[i]) & (nslot - 1);
    while (slot[j])
      j = (j + 1) & (nslot - 1);
    slot[j] = i + 1;
  }
  free(f->slot);
  f->slot = slot;
  f->nslot = nslot;
  return true;
}

/* Add a decoded row as tg_store_usage_add would: counters add up,
 * subscription_id is the newest, app_id and developer_id the first. */
static int fold_collect(const tg_usage_row_t *row, void *ctx) {
  fold_t *f = ctx;
  if ((f->n + 1) * 2 > f->nslot && !fold_grow(f))
    return TG_ENOMEM;
  size_t j = pk_hash(row) & (f->nslot - 1);
  for (; f->slot[j]; j = (j + 1) & (f->nslot - 1)) {
    tg_usage_row_t *d = &f->v[f->slot[j] - 1];
    if (pk_cmp(d, row) != 0)
      continue;
    bool over = __builtin_add_overflow(d->calls, row->calls, &d->calls) ||
                __builtin_add_overflow(d->bytes_in, row->bytes_in, &d->bytes_in) ||
                __builtin_add_overflow(d->bytes_out, row->bytes_out, &d->bytes_out) ||
                __builtin_add_overflow(d->latency_us_sum, row->latency_us_sum, &d->latency_us_sum);
    for (int k = 0; k < TG_USAGE_BUCKETS && !over; k++)
      over = __builtin_add_overflow(d->h[k], row->h[k], &d->h[k]);
    if (over) {
      f->overflow = true;
      return TG_ESTORE;
    }
    d->subscription_id = row->subscription_id;
    return TG_OK;
  }
  if (f->n == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 512;
    tg_usage_row_t *v = realloc(f->v, cap * sizeof(*v));
    if (!v)
      return TG_ENOMEM;
    f->v = v;
    f->cap = cap;
  }
  f->v[f->n] = *row;
  f->slot[j] = ++f->n;
  return TG_OK;
}

static void fold_free(fold_t *f) {
  for (size_t i = 0; i < f->nbodies; i++)
    free(f->bodies[i]);
  free(f->bodies);
  free(f->v);
  free(f->slot);
  memset(f, 0, sizeof(*f));
}

static int row_cmp(const void *a, const void *b) {
  return pk_cmp(a, b);
}

/* Put the summed rows in primary key order (each key is there once; the
 * hash slots are of no use after this). */
static void fold_sort(fold_t *f) {
  if (f->n > 1)
    qsort(f->v, f->n, sizeof(*f->v), row_cmp);
}

/* Write rows [from, to) of a sorted fold. */
static int fold_write(sql_store_t *st, const fold_t *f, size_t from, size_t to, size_t every,
                      void (*pause)(void), tg_problem_t *p) {
  return to > from ? usage_write(st, f->v + from, to - from, every, pause, p) : TG_OK;
}

/* Read and sum journal entries: those up to id `upto` (all of them), or
 * with upto < 0 a batch from the oldest (FOLD_MAX_ENTRIES or
 * FOLD_MAX_BYTES; f->more when entries were left). pause() (may be NULL)
 * between entries. Every body is checked. */
static int fold_read(sql_store_t *st, int64_t upto, fold_t *f, void (*pause)(void),
                     tg_problem_t *p) {
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK, rc;
  size_t bytes = 0;
  f->last_id = -1;
  if (stmt_prepare(st, "SELECT id, body FROM usage_journal WHERE id <= ? ORDER BY id", &stmt) !=
      SQLITE_OK)
    return sql_error(st, "usage journal", p);
  sqlite3_bind_int64(stmt, 1, upto < 0 ? INT64_MAX : upto);
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    if (upto < 0 && (f->entries == FOLD_MAX_ENTRIES || bytes > FOLD_MAX_BYTES)) {
      f->more = true;
      break;
    }
    int64_t id = sqlite3_column_int64(stmt, 0);
    const void *blob = sqlite3_column_blob(stmt, 1);
    size_t len = (size_t)sqlite3_column_bytes(stmt, 1);
    if (f->nbodies == f->capbodies) {
      size_t cap = f->capbodies * 2 + 16;
      unsigned char **bodies = realloc(f->bodies, cap * sizeof(*bodies));
      if (!bodies) {
        result = tg_problem_set(p, TG_ENOMEM, "", NULL);
        break;
      }
      f->bodies = bodies;
      f->capbodies = cap;
    }
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy) {
      result = tg_problem_set(p, TG_ENOMEM, "", NULL);
      break;
    }
    if (len)
      memcpy(copy, blob, len);
    f->bodies[f->nbodies++] = copy;
    tg_problem_t q;
    tg_problem_clear(&q);
    int drc = tg_usage_journal_decode(copy, len, fold_collect, f, NULL, &q);
    if (drc == TG_ENOMEM) {
      result = tg_problem_set(p, TG_ENOMEM, "", NULL);
      break;
    }
    if (drc) {
      result = tg_problem_set(p, TG_ESTORE, "usage",
                              f->overflow
                                  ? "usage journal entry %lld: a counter overflows; nothing was "
                                    "folded"
                                  : "usage journal entry %lld is damaged (%s); nothing was folded",
                              (long long)id, q.detail);
      break;
    }
    f->last_id = id;
    f->entries++;
    bytes += len;
    if (pause)
      pause();
  }
  if (!result && rc != SQLITE_ROW && rc != SQLITE_DONE)
    result = sql_error(st, "usage journal", p);
  stmt_release(st, stmt);
  if (!result)
    fold_sort(f);
  return result;
}

/* How many entries the journal holds up to id `upto` (all: INT64_MAX). */
static int count_journal(sql_store_t *st, int64_t upto, int64_t *n, tg_problem_t *p) {
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st, "SELECT count(*) FROM usage_journal WHERE id <= ?", &stmt) != SQLITE_OK)
    return sql_error(st, "usage journal", p);
  sqlite3_bind_int64(stmt, 1, upto);
  if (sqlite3_step(stmt) != SQLITE_ROW)
    result = sql_error(st, "usage journal", p);
  else
    *n = sqlite3_column_int64(stmt, 0);
  stmt_release(st, stmt);
  return result;
}

/* Run a statement with one or two integer parameters to completion (b
 * is bound only where the statement has a second parameter). */
static int exec_ints(sql_store_t *st, const char *sql, int64_t a, int64_t b, const char *what,
                     tg_problem_t *p) {
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st, sql, &stmt) != SQLITE_OK)
    return sql_error(st, what, p);
  sqlite3_bind_int64(stmt, 1, a);
  if (sqlite3_bind_parameter_count(stmt) >= 2)
    sqlite3_bind_int64(stmt, 2, b);
  if (sqlite3_step(stmt) != SQLITE_DONE)
    result = sql_error(st, what, p);
  stmt_release(st, stmt);
  return result;
}

/* Delete the entries up to last_id (folded). */
static int journal_delete(sql_store_t *st, int64_t last_id, tg_problem_t *p) {
  return exec_ints(st, "DELETE FROM usage_journal WHERE id <= ?", last_id, 0, "usage journal", p);
}

/* The stepped fold's mark: *upto -1 when none. */
static int mark_get(sql_store_t *st, int64_t *upto, int64_t *done, tg_problem_t *p) {
  char *v = NULL;
  tg_problem_t q = {0};
  *upto = -1;
  *done = 0;
  int rc = s_meta_get(&st->base, FOLD_MARK, &v, &q);
  if (rc == TG_ENOTFOUND)
    return TG_OK;
  if (rc != TG_OK)
    return tg_problem_set(p, rc, "usage", "%s", q.detail);
  long long a, b;
  char extra;
  if (v[0] && (sscanf(v, "%lld %lld%c", &a, &b, &extra) != 2 || a < 0 || b < 0))
    rc = tg_problem_set(p, TG_ESTORE, "usage", "meta %s is damaged: \"%.40s\"", FOLD_MARK, v);
  else if (v[0])
    *upto = a, *done = b;
  free(v);
  return rc;
}

static int mark_set(sql_store_t *st, int64_t upto, int64_t done, tg_problem_t *p) {
  char buf[48] = "";
  if (upto >= 0)
    snprintf(buf, sizeof(buf), "%lld %lld", (long long)upto, (long long)done);
  return s_meta_set(&st->base, FOLD_MARK, buf, p);
}

/* Finish a stepped fold another connection left half-way (the mark), inside
 * the caller's write transaction. *entries, *rows: what it folded. */
static int fold_finish_marked(sql_store_t *st, int64_t *entries, int64_t *rows, tg_problem_t *p) {
  int64_t upto, done;
  int result = mark_get(st, &upto, &done, p);
  if (result || upto < 0)
    return result;
  fold_t f;
  memset(&f, 0, sizeof(f));
  if (!(result = fold_read(st, upto, &f, NULL, p))) {
    if ((uint64_t)done > f.n)
      result = tg_problem_set(p, TG_ESTORE, "usage",
                              "meta %s says %lld rows were folded of %zu: the journal changed",
                              FOLD_MARK, (long long)done, f.n);
    else if (!(result = fold_write(st, &f, (size_t)done, f.n, 0, NULL, p)) &&
             !(result = journal_delete(st, upto, p)))
      result = mark_set(st, -1, 0, p);
  }
  *entries += f.entries;
  *rows += (int64_t)f.n - done;
  fold_free(&f);
  return result;
}

static int s_usage_fold(tg_store_t *s, size_t every, void (*pause)(void),
                        tg_usage_fold_stats_t *out, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  int nested = st->in_tx, result = TG_OK;
  bool more = true;
  while (more) {
    int64_t pending = 0;
    if ((result = count_journal(st, INT64_MAX, &pending, p)))
      return result;
    if (pending == 0)
      return TG_OK;
    if (st->readonly)
      return tg_problem_set(p, TG_ESTORE, "usage",
                            "the usage journal holds %lld flushes not yet folded into the ledger; "
                            "a read-only connection cannot fold them",
                            (long long)pending);
    if ((result = exec_cached(st, nested ? "SAVEPOINT usage_fold" : "BEGIN IMMEDIATE", p)))
      return result;
    fold_t f;
    memset(&f, 0, sizeof(f));
    int64_t entries = 0, rows = 0;
    if (!(result = fold_finish_marked(st, &entries, &rows, p)) &&
        !(result = fold_read(st, -1, &f, NULL, p)) && f.entries > 0 &&
        !(result = fold_write(st, &f, 0, f.n, every, pause, p)))
      result = journal_delete(st, f.last_id, p);
    if (!result)
      result = exec_cached(st, nested ? "RELEASE usage_fold" : "COMMIT", p);
    if (result)
      sqlite3_exec(st->db, nested ? "ROLLBACK TO usage_fold; RELEASE usage_fold" : "ROLLBACK", NULL,
                   NULL, NULL);
    more = f.more;
    if (!result && out) {
      out->entries += entries + f.entries;
      out->rows += rows + (int64_t)f.n;
    }
    fold_free(&f);
    if (result)
      return result;
  }
  return result;
}

/* ---- the stepped fold (the gateway's) ------------------------------------------ */

struct tg_usage_fold {
  sql_store_t *st;
  fold_t f;
  size_t done; /* rows written */
  size_t every;
  void (*pause)(void);
};

static int s_usage_fold_start(tg_store_t *s, size_t every, void (*pause)(void),
                              tg_usage_fold_t **out, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  *out = NULL;
  if (st->in_tx)
    return tg_problem_set(p, TG_ESTORE, "usage", "a stepped fold cannot run inside a transaction");
  int64_t upto, done, pending;
  int result;
  /* a stepped fold left half-way (a crash): finished at once */
  if ((result = mark_get(st, &upto, &done, p)) ||
      (upto >= 0 && (result = s_usage_fold(s, 0, NULL, NULL, p))) ||
      (result = count_journal(st, INT64_MAX, &pending, p)) || pending == 0)
    return result;
  tg_usage_fold_t *fr = calloc(1, sizeof(*fr));
  if (!fr)
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  fr->st = st;
  fr->every = every;
  fr->pause = pause;
  /* read without the write lock: one statement, one consistent view */
  if ((result = fold_read(st, -1, &fr->f, pause, p)) || fr->f.entries == 0) {
    fold_free(&fr->f);
    free(fr);
    return result;
  }
  *out = fr;
  return TG_OK;
}

static int s_usage_fold_step(tg_usage_fold_t *fr, size_t max_rows, tg_usage_fold_stats_t *out,
                             tg_problem_t *p) {
  sql_store_t *st = fr->st;
  fold_t *f = &fr->f;
  int result;
  if ((result = exec_cached(st, "BEGIN IMMEDIATE", p)))
    return result;
  int64_t upto, done, left;
  size_t to = f->n - fr->done > max_rows ? fr->done + max_rows : f->n;
  /* the entries are still all there, and no one else went on with them */
  if (!(result = mark_get(st, &upto, &done, p)) &&
      !(result = count_journal(st, f->last_id, &left, p))) {
    bool ours = fr->done == 0 ? upto < 0 && left == f->entries
                              : upto == f->last_id && done == (int64_t)fr->done;
    if (!ours)
      result = tg_problem_set(p, TG_ECONFLICT, "usage",
                              "another connection folded these usage journal entries");
  }
  if (!result && !(result = fold_write(st, f, fr->done, to, fr->every, fr->pause, p))) {
    if (to < f->n)
      result = mark_set(st, f->last_id, (int64_t)to, p);
    else if (!(result = journal_delete(st, f->last_id, p)))
      result = mark_set(st, -1, 0, p);
  }
  if (!result)
    result = exec_cached(st, "COMMIT", p);
  if (result) {
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return result;
  }
  if (out) {
    out->rows += (int64_t)(to - fr->done);
    out->entries += to == f->n ? f->entries : 0;
  }
  fr->done = to;
  return to < f->n ? 1 : 0;
}

static void s_usage_fold_end(tg_usage_fold_t *fr) {
  fold_free(&fr->f);
  free(fr);
}

/* ---- usage compaction and reports ------------------------------------------ */

/* A watermark from meta: -1 when it was never set. */
static int wm_get(sql_store_t *st, const char *key, int64_t *out, tg_problem_t *p) {
  char *v = NULL;
  tg_problem_t q = {0};
  int rc = s_meta_get(&st->base, key, &v, &q);
  if (rc == TG_ENOTFOUND) {
    *out = -1;
    return TG_OK;
  }
  if (rc != TG_OK)
    return tg_problem_set(p, rc, "usage", "%s", q.detail);
  *out = strtoll(v, NULL, 10);
  free(v);
  return TG_OK;
}

static int wm_set(sql_store_t *st, const char *key, int64_t v, tg_problem_t *p) {
  char buf[24];
  snprintf(buf, sizeof(buf), "%lld", (long long)v);
  return s_meta_set(&st->base, key, buf, p);
}

static int64_t floor_to(int64_t t, int64_t g) {
  return t - ((t % g) + g) % g;
}

/* Minute rows that land in a period compacted already are added to the
 * hour (and day) rows as well: compacted rows stay the sums of what lies
 * below them, so a report reads the same whichever granularity serves it. */
static int usage_add_late(sql_store_t *st, const usage_stmts_t *u, const tg_usage_row_t *r,
                          int64_t wm_hours, int64_t wm_days) {
  if (r->granularity != 60)
    return SQLITE_DONE;
  tg_usage_row_t up = *r;
  up.granularity = 3600;
  up.period_start = floor_to(r->period_start, 3600);
  if (wm_hours < 0 || up.period_start >= wm_hours)
    return SQLITE_DONE;
  int rc = usage_put(st, u, &up);
  if (rc != SQLITE_DONE)
    return rc;
  up.granularity = 86400;
  up.period_start = floor_to(r->period_start, 86400);
  if (wm_days < 0 || up.period_start >= wm_days)
    return SQLITE_DONE;
  return usage_put(st, u, &up);
}

/* The first period held at granularity g, or `fallback` when there is none. */
static int first_period(sql_store_t *st, int64_t g, int64_t fallback, int64_t *out,
                        tg_problem_t *p) {
  sqlite3_stmt *stmt = NULL;
  if (stmt_prepare(st, "SELECT min(period_start) FROM usage_rollups WHERE granularity = ?",
                   &stmt) != SQLITE_OK)
    return sql_error(st, "usage", p);
  sqlite3_bind_int64(stmt, 1, g);
  int rc = sqlite3_step(stmt);
  *out = rc == SQLITE_ROW && sqlite3_column_type(stmt, 0) != SQLITE_NULL
             ? sqlite3_column_int64(stmt, 0)
             : fallback;
  stmt_release(st, stmt);
  return rc == SQLITE_ROW ? TG_OK : sql_error(st, "usage", p);
}

/* Recompute the rows of granularity g for the period at `start` from the
 * rows of granularity `below` (delete, then insert the sums): idempotent. */
static int compact_period(sql_store_t *st, int64_t g, int64_t below, int64_t start,
                          tg_problem_t *p) {
  static const char del_sql[] =
      "DELETE FROM usage_rollups WHERE granularity = ? AND period_start = ?";
  static const char ins_sql[] =
      "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, "
      "api_id, plan_id, subscription_id, status_class, reason, calls, bytes_in, bytes_out, "
      "latency_us_sum, h00, h01, h02, h03, h04, h05, h06, h07, h08, h09, h10, h11, h12, h13, h14) "
      "SELECT ?1, ?2, key_id, max(app_id), max(developer_id), api_id, plan_id, "
      "max(subscription_id), status_class, reason, sum(calls), sum(bytes_in), sum(bytes_out), "
      "sum(latency_us_sum), sum(h00), sum(h01), sum(h02), sum(h03), sum(h04), sum(h05), "
      "sum(h06), sum(h07), sum(h08), sum(h09), sum(h10), sum(h11), sum(h12), sum(h13), sum(h14) "
      "FROM usage_rollups WHERE granularity = ?3 AND period_start >= ?2 "
      "AND period_start < ?2 + ?1 GROUP BY key_id, api_id, plan_id, status_class, reason";
  sqlite3_stmt *stmt = NULL;
  int result = exec_ints(st, del_sql, g, start, "usage compaction", p);
  if (result)
    return result;
  if (stmt_prepare(st, ins_sql, &stmt) != SQLITE_OK)
    return sql_error(st, "usage compaction", p);
  sqlite3_bind_int64(stmt, 1, g);
  sqlite3_bind_int64(stmt, 2, start);
  sqlite3_bind_int64(stmt, 3, below);
  if (sqlite3_step(stmt) != SQLITE_DONE)
    result = sql_error(st, "usage compaction", p);
  stmt_release(st, stmt);
  return result;
}

/* The first period of granularity g worth compacting when nothing was:
 * where the rows below start, or (none yet) the current period. */
static int wm_init(sql_store_t *st, int64_t below, int64_t g, int64_t fallback, int64_t *out,
                   tg_problem_t *p) {
  int64_t first;
  int result = first_period(st, below, fallback, &first, p);
  if (result)
    return result;
  *out = floor_to(first < fallback ? first : fallback, g);
  return TG_OK;
}

/* Delete rows of granularity g before `cut` (at most one day of them per
 * call), remembering how far retention went. */
static int retain(sql_store_t *st, int64_t g, const char *key, int64_t cut, int64_t *deleted,
                  bool *more, tg_problem_t *p) {
  int64_t done;
  int result = wm_get(st, key, &done, p);
  if (result)
    return result;
  if (done < 0) {
    if ((result = first_period(st, g, cut, &done, p)))
      return result;
    if (done > cut)
      done = cut;
  }
  if (done >= cut)
    return wm_set(st, key, done, p);
  int64_t upto = done + 86400 < cut ? done + 86400 : cut;
  if ((result =
           exec_ints(st, "DELETE FROM usage_rollups WHERE granularity = ? AND period_start < ?", g,
                     upto, "usage retention", p)))
    return result;
  *deleted += sqlite3_changes(st->db);
  if (upto < cut)
    *more = true;
  return wm_set(st, key, upto, p);
}

static int s_usage_compact(tg_store_t *s, int64_t now, int64_t lag, const tg_usage_retention_t *ret,
                           int max_periods, tg_usage_compact_stats_t *out, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  int result = TG_OK;
  memset(out, 0, sizeof(*out));
  int64_t ready = floor_to(now - lag, 60);
  for (int i = 0; i <= max_periods; i++) {
    if ((result = exec(st, "BEGIN IMMEDIATE", p)))
      return result;
    int64_t wh, wd;
    bool did = false;
    if ((result = wm_get(st, WM_HOURS, &wh, p)) || (result = wm_get(st, WM_DAYS, &wd, p)))
      goto fail;
    if (wh < 0) {
      if ((result = wm_init(st, 60, 3600, floor_to(ready, 3600), &wh, p)) ||
          (result = wm_set(st, WM_HOURS, wh, p)))
        goto fail;
    }
    if (wd < 0) {
      if ((result = wm_init(st, 3600, 86400, wh, &wd, p)) || (result = wm_set(st, WM_DAYS, wd, p)))
        goto fail;
    }
    if (i < max_periods && wh + 3600 <= ready) {
      if ((result = compact_period(st, 3600, 60, wh, p)) ||
          (result = wm_set(st, WM_HOURS, wh += 3600, p)))
        goto fail;
      out->hours++;
      did = true;
    } else if (i < max_periods && wd + 86400 <= wh) {
      if ((result = compact_period(st, 86400, 3600, wd, p)) ||
          (result = wm_set(st, WM_DAYS, wd += 86400, p)))
        goto fail;
      out->days++;
      did = true;
    } else if (!did) {
      /* nothing left to compact: retention, below what is compacted */
      bool more = false;
      if (ret->minutes_s > 0 && (result = retain(st, 60, RET_MINS,
                                                 floor_to(now - ret->minutes_s, 3600) < wh
                                                     ? floor_to(now - ret->minutes_s, 3600)
                                                     : wh,
                                                 &out->minute_rows_deleted, &more, p)))
        goto fail;
      if (ret->hours_s > 0 &&
          (result = retain(
               st, 3600, RET_HOURS,
               floor_to(now - ret->hours_s, 86400) < wd ? floor_to(now - ret->hours_s, 86400) : wd,
               &out->hour_rows_deleted, &more, p)))
        goto fail;
      out->more = more;
    }
    out->compacted_hours = wh;
    out->compacted_days = wd;
    if ((result = exec(st, "COMMIT", p)))
      goto fail;
    if (!did)
      return TG_OK;
    if (i + 1 == max_periods) {
      out->more = true; /* the budget is spent; the caller comes back */
      return TG_OK;
    }
  }
  return TG_OK;
fail:
  sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  return result;
}

/* Which rows serve which part of a report's range. */
typedef struct piece {
  int64_t g, start, end;
} piece_t;

#define PIECES_MAX 32

static int plan_pieces(int64_t from, int64_t to, int64_t maxg, int64_t wh, int64_t wd,
                       piece_t *out) {
  int n = 0;
  for (int64_t t = from; t < to;) {
    int64_t g, step;
    if (maxg >= 86400 && t % 86400 == 0 && t + 86400 <= to && wd >= 0 && t + 86400 <= wd)
      g = 86400, step = 86400;
    else if (maxg >= 3600 && t % 3600 == 0 && t + 3600 <= to && wh >= 0 && t + 3600 <= wh)
      g = 3600, step = 3600;
    else {
      int64_t next = floor_to(t, 3600) + 3600;
      g = 60, step = (next < to ? next : to) - t;
    }
    if (n > 0 && out[n - 1].g == g && out[n - 1].end == t) {
      out[n - 1].end = t + step;
    } else {
      if (n == PIECES_MAX)
        return -1;
      out[n++] = (piece_t){g, t, t + step};
    }
    t += step;
  }
  return n;
}

/* One group of a bucket being summed in memory (streamed reports). */
typedef struct agg {
  uint64_t hash;
  uint32_t slot; /* where the index points at it */
  int status_class;
  uint8_t dlen[6];
  tg_usage_total_t t;
  /* developer, app, key, api, plan, subscription: only the grouped ones
   * are written (the others are "" to the reader) */
  char dim[6][TG_USAGE_ID_MAX + 1];
} agg_t;

typedef struct sql_cursor {
  tg_usage_cursor_t base;
  sqlite3_stmt *stmt;
  bool own_tx;
  unsigned group_by;
  /* streamed: rows come in period order, one piece after the other, and
   * each bucket is summed in memory (no sort of the whole range) */
  bool streamed;
  int64_t bucket;
  int dcol[6]; /* the statement's column of each grouped dimension, or -1 */
  piece_t pieces[PIECES_MAX];
  int npieces, ipiece;
  bool piece_open, done;
  /* the bucket's groups, dense in order of arrival (sequential memory
   * when rows come in output order), found through an open-addressing
   * index of cap slots (a power of two, at most half full) */
  agg_t *groups;
  size_t n, gcap;
  uint64_t *slots;
  size_t cap;
  agg_t **order; /* the bucket's groups, sorted, being handed out */
  size_t norder, iorder, ocap;
  int64_t cur_bucket;
  bool row_held; /* the statement's current row starts the next bucket */
} sql_cursor_t;

/* The streamed statement's columns (s_usage_open), then the grouped
 * dimensions from COL_DIMS on. */
enum {
  COL_PERIOD,
  COL_CLASS,
  COL_REASON,
  COL_CALLS,
  COL_BYTES_IN,
  COL_BYTES_OUT,
  COL_LATENCY,
  COL_H
};
#define COL_DIMS (COL_H + TG_USAGE_BUCKETS)

static const struct {
  unsigned bit;
  const char *col;
} usage_dims[] = {
    {TG_USAGE_BY_DEVELOPER, "developer_id"},
    {TG_USAGE_BY_APP, "app_id"},
    {TG_USAGE_BY_KEY, "key_id"},
    {TG_USAGE_BY_API, "api_id"},
    {TG_USAGE_BY_PLAN, "plan_id"},
    {TG_USAGE_BY_SUBSCRIPTION, "subscription_id"},
    {TG_USAGE_BY_STATUS_CLASS, "status_class"},
};
#define NDIMS ((int)(sizeof(usage_dims) / sizeof(usage_dims[0])))

static void sb_filters(sqlbuf_t *b, const tg_usage_query_t *q) {
  if (q->developer_id)
    sb_add(b, " AND developer_id = :dev");
  if (q->app_id)
    sb_add(b, " AND app_id = :app");
  if (q->key_id)
    sb_add(b, " AND key_id = :key");
  if (q->api_id)
    sb_add(b, " AND api_id = :api");
  if (q->plan_id)
    sb_add(b, " AND plan_id = :plan");
  if (q->subscription_id)
    sb_add(b, " AND subscription_id = :sub");
  if (q->status_class >= 0)
    sb_add(b, " AND status_class = :cls");
}

static void bind_named_text(sqlite3_stmt *stmt, const char *name, const char *v) {
  int i = sqlite3_bind_parameter_index(stmt, name);
  if (i > 0 && v)
    sqlite3_bind_text(stmt, i, v, -1, SQLITE_TRANSIENT);
}

static int s_usage_open(tg_store_t *s, const tg_usage_query_t *q, tg_usage_cursor_t **out,
                        tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sql_cursor_t *cur = calloc(1, sizeof(*cur));
  int result = TG_OK;
  char num[160];
  *out = NULL;
  if (!cur)
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  cur->base.store = s;
  cur->group_by = q->group_by;
  if (!st->in_tx) {
    if ((result = exec(st, "BEGIN", p)))
      goto fail;
    cur->own_tx = true;
  }
  int64_t wh, wd, rm, rh;
  if ((result = wm_get(st, WM_HOURS, &wh, p)) || (result = wm_get(st, WM_DAYS, &wd, p)) ||
      (result = wm_get(st, RET_MINS, &rm, p)) || (result = wm_get(st, RET_HOURS, &rh, p)))
    goto fail;
  int64_t maxg = q->bucket == 60 ? 60 : q->bucket == 3600 ? 3600 : 86400;
  piece_t pieces[PIECES_MAX];
  int n = plan_pieces(q->from, q->to, maxg, wh, wd, pieces);
  if (n < 0) {
    result = tg_problem_set(p, TG_ESTORE, "usage", "the ledger's watermarks are inconsistent");
    goto fail;
  }
  for (int i = 0; i < n; i++) {
    int64_t gone = pieces[i].g == 60 ? rm : pieces[i].g == 3600 ? rh : -1;
    if (gone > pieces[i].start) {
      result = tg_problem_set(p, TG_EINVAL, "from",
                              "%s usage before %lld was removed (retention); ask for a coarser "
                              "granularity or a later start",
                              pieces[i].g == 60 ? "minute" : "hourly", (long long)gone);
      goto fail;
    }
  }
  sqlbuf_t *b = calloc(1, sizeof(*b));
  if (!b) {
    result = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto fail;
  }
  if (q->bucket > 0) {
    /* minute, hour and day buckets: read each piece in primary-key order
     * and sum one bucket at a time in memory (memory: one bucket's groups) */
    cur->streamed = true;
    cur->bucket = q->bucket;
    memcpy(cur->pieces, pieces, sizeof(pieces[0]) * (size_t)n);
    cur->npieces = n;
    /* only the grouped dimensions: every column in the list costs a
     * decode per ledger row, read or not */
    sb_add(b, "SELECT period_start, status_class, reason, calls, bytes_in, bytes_out, "
              "latency_us_sum, h00, h01, h02, h03, h04, h05, h06, h07, h08, h09, h10, h11, h12, "
              "h13, h14");
    for (int d = 0, k = COL_DIMS; d < 6; d++) {
      cur->dcol[d] = -1;
      if (q->group_by & usage_dims[d].bit) {
        sb_add(b, ", ");
        sb_add(b, usage_dims[d].col);
        cur->dcol[d] = k++;
      }
    }
    sb_add(b, " FROM usage_rollups WHERE granularity = :g AND period_start >= :s "
              "AND period_start < :e");
    sb_filters(b, q);
    sb_add(b, " ORDER BY period_start");
  } else {
    sb_add(b, "SELECT ");
    if (q->bucket == TG_USAGE_MONTH)
      sb_add(b, "CAST(strftime('%s', period_start, 'unixepoch', 'start of month') AS INTEGER)");
    else if (q->bucket == 0) {
      snprintf(num, sizeof(num), "%lld", (long long)q->from);
      sb_add(b, num);
    } else {
      snprintf(num, sizeof(num), "period_start - period_start %% %lld", (long long)q->bucket);
      sb_add(b, num);
    }
    sb_add(b, " AS b");
    for (int d = 0; d < NDIMS; d++)
      if (q->group_by & usage_dims[d].bit) {
        sb_add(b, ", ");
        sb_add(b, usage_dims[d].col);
      }
    sb_add(b, ", sum(calls), sum(CASE WHEN status_class BETWEEN 1 AND 4 THEN calls ELSE 0 END), "
              "sum(CASE WHEN status_class = 4 THEN calls ELSE 0 END), "
              "sum(CASE WHEN status_class = 5 THEN calls ELSE 0 END), "
              "sum(CASE WHEN status_class = 0 THEN calls ELSE 0 END)");
    for (int r = 0; r < TG_USAGE_REASONS; r++) {
      sb_add(b, ", sum(CASE WHEN reason = '");
      sb_add(b, tg_usage_reasons[r]); /* our own constant words */
      sb_add(b, "' THEN calls ELSE 0 END)");
    }
    sb_add(b, ", sum(bytes_in), sum(bytes_out), sum(latency_us_sum), sum(h00), sum(h01), "
              "sum(h02), sum(h03), sum(h04), sum(h05), sum(h06), sum(h07), sum(h08), sum(h09), "
              "sum(h10), sum(h11), sum(h12), sum(h13), sum(h14) FROM (");
    for (int i = 0; i < n; i++) {
      if (i)
        sb_add(b, " UNION ALL ");
      snprintf(num, sizeof(num), "%lld AND period_start >= %lld AND period_start < %lld",
               (long long)pieces[i].g, (long long)pieces[i].start, (long long)pieces[i].end);
      sb_add(b, "SELECT * FROM usage_rollups WHERE granularity = ");
      sb_add(b, num);
      sb_filters(b, q);
    }
    if (n == 0)
      sb_add(b, "SELECT * FROM usage_rollups WHERE 0");
    sb_add(b, ") GROUP BY b");
    for (int d = 0; d < NDIMS; d++)
      if (q->group_by & usage_dims[d].bit) {
        sb_add(b, ", ");
        sb_add(b, usage_dims[d].col);
      }
    sb_add(b, " ORDER BY b");
    for (int d = 0; d < NDIMS; d++)
      if (q->group_by & usage_dims[d].bit) {
        sb_add(b, ", ");
        sb_add(b, usage_dims[d].col);
      }
  }
  if (b->overflow) {
    free(b);
    result = tg_problem_set(p, TG_EINVAL, "from", "the range needs too complex a query");
    goto fail;
  }
  /* one-off (not cached): the text varies with the range */
  int rc = sqlite3_prepare_v2(st->db, b->s, -1, &cur->stmt, NULL);
  free(b);
  if (rc != SQLITE_OK) {
    result = sql_error(st, "usage report", p);
    goto fail;
  }
  bind_named_text(cur->stmt, ":dev", q->developer_id);
  bind_named_text(cur->stmt, ":app", q->app_id);
  bind_named_text(cur->stmt, ":key", q->key_id);
  bind_named_text(cur->stmt, ":api", q->api_id);
  bind_named_text(cur->stmt, ":plan", q->plan_id);
  bind_named_text(cur->stmt, ":sub", q->subscription_id);
  int ci = sqlite3_bind_parameter_index(cur->stmt, ":cls");
  if (ci > 0)
    sqlite3_bind_int(cur->stmt, ci, q->status_class);
  *out = &cur->base;
  return TG_OK;
fail:
  if (cur->stmt)
    sqlite3_finalize(cur->stmt);
  if (cur->own_tx)
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  free(cur);
  return result;
}

static const char *col_text(sqlite3_stmt *stmt, int i) {
  const char *v = (const char *)sqlite3_column_text(stmt, i);
  return v ? v : "";
}

/* ---- streamed reports: one bucket at a time --------------------------------- */

static const int dim_bits[6] = {TG_USAGE_BY_DEVELOPER, TG_USAGE_BY_APP,  TG_USAGE_BY_KEY,
                                TG_USAGE_BY_API,       TG_USAGE_BY_PLAN, TG_USAGE_BY_SUBSCRIPTION};

/* A slot of the bucket's index: 0 empty, else the group's number + 1 in
 * the low half and the top of its hash in the high half (most probes that
 * miss are told apart without touching the group). */
#define SLOT(hash, gi) (((hash)&0xffffffff00000000ull) | (uint64_t)((gi) + 1))
#define SLOT_GROUP(s)  ((size_t)((s)&0xffffffffu) - 1)

/* Make room for one more group: the dense array may move (rows already
 * handed out are done with), the index stays at most half full. */
static int agg_reserve(sql_cursor_t *cur) {
  if (cur->n == cur->gcap) {
    size_t gcap = cur->gcap ? cur->gcap * 2 : 512;
    if (gcap > 0x7fffffffu) /* group numbers and slots fit 32 bits */
      return TG_ENOMEM;
    agg_t *groups = realloc(cur->groups, gcap * sizeof(*groups));
    if (!groups)
      return TG_ENOMEM;
    cur->groups = groups;
    cur->gcap = gcap;
  }
  if ((cur->n + 1) * 2 <= cur->cap)
    return TG_OK;
  size_t cap = cur->cap ? cur->cap * 2 : 1024;
  uint64_t *slots = calloc(cap, sizeof(*slots));
  if (!slots)
    return TG_ENOMEM;
  for (size_t j = 0; j < cur->n; j++) {
    size_t i = cur->groups[j].hash & (cap - 1);
    while (slots[i])
      i = (i + 1) & (cap - 1);
    slots[i] = SLOT(cur->groups[j].hash, j);
    cur->groups[j].slot = (uint32_t)i;
  }
  free(cur->slots);
  cur->slots = slots;
  cur->cap = cap;
  return TG_OK;
}

/* The groups' hash: 8 bytes at a time (ids are tens of bytes), finished
 * with murmur3's fmix64 so that low and high bits both vary. Only this
 * process sees it: it never reaches the output. */
static uint64_t agg_mix(uint64_t h, uint64_t w) {
  h ^= w;
  h *= 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}

static uint64_t agg_hash(const unsigned char *const dv[6], const int dl[6], int gcls) {
  uint64_t h = 0x243f6a8885a308d3ull;
  for (int d = 0; d < 6; d++) {
    const unsigned char *s = dv[d];
    int n = dl[d], k = 0;
    for (; k + 8 <= n; k += 8) {
      uint64_t w;
      memcpy(&w, s + k, 8);
      h = agg_mix(h, w);
    }
    uint64_t w = 0;
    for (int j = 0; k < n; k++, j++)
      w |= (uint64_t)s[k] << (8 * j);
    h = agg_mix(h, w ^ ((uint64_t)(unsigned)n << 56) ^ (uint64_t)d);
  }
  h = agg_mix(h, (uint64_t)(gcls + 1));
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 33);
}

/* Add the statement's current ledger row to its group (only grouped
 * dimensions tell groups apart, so rows that differ elsewhere add up). */
static int agg_row(sql_cursor_t *cur, sqlite3_stmt *st) {
  static const unsigned char none[1] = {0};
  const unsigned char *dv[6] = {none, none, none, none, none, none};
  int dl[6] = {0};
  for (int d = 0; d < 6; d++)
    if (cur->dcol[d] >= 0) {
      const unsigned char *v = sqlite3_column_text(st, cur->dcol[d]);
      dl[d] = sqlite3_column_bytes(st, cur->dcol[d]);
      if (v)
        dv[d] = v;
      else
        dl[d] = 0;
      if (dl[d] > TG_USAGE_ID_MAX)
        dl[d] = TG_USAGE_ID_MAX;
    }
  int cls = sqlite3_column_int(st, COL_CLASS);
  int gcls = cur->group_by & TG_USAGE_BY_STATUS_CLASS ? cls : -1;
  uint64_t h = agg_hash(dv, dl, gcls);
  if (agg_reserve(cur))
    return TG_ENOMEM;
  size_t i = h & (cur->cap - 1);
  agg_t *g = NULL;
  for (;; i = (i + 1) & (cur->cap - 1)) {
    uint64_t s = cur->slots[i];
    if (!s)
      break;
    if ((s ^ h) >> 32)
      continue;
    g = &cur->groups[SLOT_GROUP(s)];
    if (g->hash == h && g->status_class == gcls) {
      bool same = true;
      for (int d = 0; d < 6 && same; d++)
        same = g->dlen[d] == dl[d] && memcmp(g->dim[d], dv[d], (size_t)dl[d]) == 0;
      if (same)
        break;
    }
    g = NULL;
  }
  if (!g) {
    size_t gi = cur->n++;
    g = &cur->groups[gi];
    memset(&g->t, 0, sizeof(g->t));
    g->hash = h;
    g->slot = (uint32_t)i;
    g->status_class = gcls;
    for (int d = 0; d < 6; d++) {
      g->dlen[d] = (uint8_t)dl[d];
      if (cur->dcol[d] >= 0) { /* the others stay unwritten (memory traffic) */
        memcpy(g->dim[d], dv[d], (size_t)dl[d]);
        g->dim[d][dl[d]] = '\0';
      }
    }
    cur->slots[i] = SLOT(h, gi);
  }
  tg_usage_total_t *t = &g->t;
  int64_t calls = sqlite3_column_int64(st, COL_CALLS);
  t->calls += calls;
  if (cls >= 1 && cls <= 4)
    t->billable += calls;
  if (cls == 4)
    t->errors_4xx += calls;
  else if (cls == 5)
    t->errors_5xx += calls;
  else if (cls == 0) {
    t->rejected += calls;
    const char *reason = (const char *)sqlite3_column_text(st, COL_REASON);
    for (int r = 0; reason && r < TG_USAGE_REASONS; r++)
      if (strcmp(reason, tg_usage_reasons[r]) == 0)
        t->rejected_by[r] += calls;
  }
  t->bytes_in += sqlite3_column_int64(st, COL_BYTES_IN);
  t->bytes_out += sqlite3_column_int64(st, COL_BYTES_OUT);
  t->latency_us_sum += sqlite3_column_int64(st, COL_LATENCY);
  for (int k = 0; k < TG_USAGE_BUCKETS; k++)
    t->h[k] += sqlite3_column_int64(st, COL_H + k);
  return TG_OK;
}

/* Output order within a bucket: as the SQL path's ORDER BY (only the
 * grouped dimensions can differ). */
static int agg_cmp(const void *x, const void *y, void *ctx) {
  const agg_t *a = *(agg_t *const *)x, *b = *(agg_t *const *)y;
  unsigned group_by = *(const unsigned *)ctx;
  for (int d = 0; d < 6; d++) {
    if (!(group_by & (unsigned)dim_bits[d]))
      continue;
    size_t n = a->dlen[d] < b->dlen[d] ? a->dlen[d] : b->dlen[d];
    int c = memcmp(a->dim[d], b->dim[d], n);
    if (c)
      return c;
    if (a->dlen[d] != b->dlen[d])
      return a->dlen[d] < b->dlen[d] ? -1 : 1;
  }
  return a->status_class - b->status_class;
}

/* Sum the next bucket into the table: 1, or 0 at the end of the range.
 * The first row of the following bucket stays current in the statement
 * (cur->row_held) and starts the next call. */
static int fill_bucket(sql_cursor_t *cur, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)cur->base.store;
  for (size_t i = 0; i < cur->n; i++) /* empty the index: only what was used */
    cur->slots[cur->groups[i].slot] = 0;
  cur->norder = cur->iorder = 0;
  cur->n = 0;
  bool have = false;
  while (!cur->done) {
    if (!cur->row_held) {
      if (!cur->piece_open) {
        if (cur->ipiece == cur->npieces) {
          cur->done = true;
          break;
        }
        piece_t *pc = &cur->pieces[cur->ipiece++];
        sqlite3_reset(cur->stmt);
        sqlite3_bind_int64(cur->stmt, sqlite3_bind_parameter_index(cur->stmt, ":g"), pc->g);
        sqlite3_bind_int64(cur->stmt, sqlite3_bind_parameter_index(cur->stmt, ":s"), pc->start);
        sqlite3_bind_int64(cur->stmt, sqlite3_bind_parameter_index(cur->stmt, ":e"), pc->end);
        cur->piece_open = true;
      }
      int rc = sqlite3_step(cur->stmt);
      if (rc == SQLITE_DONE) {
        cur->piece_open = false;
        continue;
      }
      if (rc != SQLITE_ROW)
        return sql_error(st, "usage report", p);
    }
    cur->row_held = false;
    int64_t ps = sqlite3_column_int64(cur->stmt, COL_PERIOD);
    int64_t b = ps - ps % cur->bucket;
    if (have && b != cur->cur_bucket) {
      cur->row_held = true; /* the next bucket's first row */
      return 1;
    }
    if (!have) {
      cur->cur_bucket = b;
      have = true;
    }
    if (agg_row(cur, cur->stmt))
      return tg_problem_set(p, TG_ENOMEM, "", NULL);
  }
  return have ? 1 : 0;
}

static int streamed_next(sql_cursor_t *cur, tg_usage_total_t *row, tg_problem_t *p) {
  while (cur->iorder >= cur->norder) {
    int rc = fill_bucket(cur, p);
    if (rc <= 0)
      return rc;
    if (cur->n > cur->ocap) {
      agg_t **order = realloc(cur->order, cur->n * sizeof(*order));
      if (!order)
        return tg_problem_set(p, TG_ENOMEM, "", NULL);
      cur->order = order;
      cur->ocap = cur->n;
    }
    /* the ledger's key order often is the output order already (by key,
     * api...): then one pass over neighbours replaces the sort */
    bool sorted = true;
    for (size_t i = 0; i < cur->n; i++) {
      cur->order[i] = &cur->groups[i];
      if (sorted && i > 0)
        sorted = agg_cmp(&cur->order[i - 1], &cur->order[i], &cur->group_by) < 0;
    }
    cur->norder = cur->n;
    cur->iorder = 0;
    if (!sorted)
      qsort_r(cur->order, cur->norder, sizeof(*cur->order), agg_cmp, &cur->group_by);
  }
  agg_t *a = cur->order[cur->iorder++];
  *row = a->t;
  row->period_start = cur->cur_bucket;
  const char *dim[6];
  for (int d = 0; d < 6; d++)
    dim[d] = cur->dcol[d] >= 0 ? a->dim[d] : "";
  row->developer_id = dim[0];
  row->app_id = dim[1];
  row->key_id = dim[2];
  row->api_id = dim[3];
  row->plan_id = dim[4];
  row->subscription_id = dim[5];
  row->status_class = a->status_class;
  return 1;
}

static int s_usage_next(tg_usage_cursor_t *c, tg_usage_total_t *row, tg_problem_t *p) {
  sql_cursor_t *cur = (sql_cursor_t *)c;
  sql_store_t *st = (sql_store_t *)c->store;
  if (cur->streamed)
    return streamed_next(cur, row, p);
  int rc = sqlite3_step(cur->stmt);
  if (rc == SQLITE_DONE)
    return 0;
  if (rc != SQLITE_ROW)
    return sql_error(st, "usage report", p);
  memset(row, 0, sizeof(*row));
  row->developer_id = row->app_id = row->key_id = row->api_id = row->plan_id =
      row->subscription_id = "";
  row->status_class = -1;
  int i = 0;
  row->period_start = sqlite3_column_int64(cur->stmt, i++);
  for (int d = 0; d < NDIMS; d++) {
    if (!(cur->group_by & usage_dims[d].bit))
      continue;
    switch (usage_dims[d].bit) {
    case TG_USAGE_BY_DEVELOPER: row->developer_id = col_text(cur->stmt, i); break;
    case TG_USAGE_BY_APP: row->app_id = col_text(cur->stmt, i); break;
    case TG_USAGE_BY_KEY: row->key_id = col_text(cur->stmt, i); break;
    case TG_USAGE_BY_API: row->api_id = col_text(cur->stmt, i); break;
    case TG_USAGE_BY_PLAN: row->plan_id = col_text(cur->stmt, i); break;
    case TG_USAGE_BY_SUBSCRIPTION: row->subscription_id = col_text(cur->stmt, i); break;
    default: row->status_class = sqlite3_column_int(cur->stmt, i); break;
    }
    i++;
  }
  row->calls = sqlite3_column_int64(cur->stmt, i++);
  row->billable = sqlite3_column_int64(cur->stmt, i++);
  row->errors_4xx = sqlite3_column_int64(cur->stmt, i++);
  row->errors_5xx = sqlite3_column_int64(cur->stmt, i++);
  row->rejected = sqlite3_column_int64(cur->stmt, i++);
  for (int r = 0; r < TG_USAGE_REASONS; r++)
    row->rejected_by[r] = sqlite3_column_int64(cur->stmt, i++);
  row->bytes_in = sqlite3_column_int64(cur->stmt, i++);
  row->bytes_out = sqlite3_column_int64(cur->stmt, i++);
  row->latency_us_sum = sqlite3_column_int64(cur->stmt, i++);
  for (int k = 0; k < TG_USAGE_BUCKETS; k++)
    row->h[k] = sqlite3_column_int64(cur->stmt, i++);
  return 1;
}

static void s_usage_close(tg_usage_cursor_t *c) {
  sql_cursor_t *cur = (sql_cursor_t *)c;
  sql_store_t *st = (sql_store_t *)c->store;
  sqlite3_finalize(cur->stmt);
  free(cur->groups);
  free(cur->slots);
  free(cur->order);
  if (cur->own_tx)
    sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL);
  free(cur);
}

static int s_billing_get(tg_store_t *s, const char *period, char **lines, tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st, "SELECT lines FROM billing_statements WHERE period = ?", &stmt) != SQLITE_OK)
    return sql_error(st, "billing", p);
  sqlite3_bind_text(stmt, 1, period, -1, SQLITE_STATIC);
  int rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    const char *v = (const char *)sqlite3_column_text(stmt, 0);
    if (!v || !(*lines = strdup(v)))
      result = tg_problem_set(p, TG_ENOMEM, "", NULL);
  } else if (rc == SQLITE_DONE) {
    result = tg_problem_set(p, TG_ENOTFOUND, "period", "no statement kept for %s", period);
  } else {
    result = sql_error(st, "billing", p);
  }
  stmt_release(st, stmt);
  return result;
}

static int s_billing_put(tg_store_t *s, const char *period, int64_t generated_at, const char *lines,
                         tg_problem_t *p) {
  sql_store_t *st = (sql_store_t *)s;
  sqlite3_stmt *stmt = NULL;
  int result = TG_OK;
  if (stmt_prepare(st,
                   "INSERT INTO billing_statements (period, generated_at, lines) VALUES (?, ?, ?) "
                   "ON CONFLICT (period) DO NOTHING",
                   &stmt) != SQLITE_OK)
    return sql_error(st, "billing", p);
  sqlite3_bind_text(stmt, 1, period, -1, SQLITE_STATIC);
  sqlite3_bind_int64(stmt, 2, generated_at);
  sqlite3_bind_text(stmt, 3, lines, -1, SQLITE_STATIC);
  if (sqlite3_step(stmt) != SQLITE_DONE)
    result = sql_error(st, "billing", p);
  stmt_release(st, stmt);
  return result;
}

static const tg_store_vtab_t sqlite_vtab = {
    .name = "sqlite",
    .close = s_close,
    .schema_version = s_schema_version,
    .begin = s_begin,
    .commit = s_commit,
    .rollback = s_rollback,
    .create = s_create,
    .get_by = s_get_by,
    .get_secret = s_get_secret,
    .update = s_update,
    .touch = s_touch,
    .del = s_del,
    .list = s_list,
    .count = s_count,
    .meta_get = s_meta_get,
    .meta_set = s_meta_set,
    .changes = s_changes,
    .data_version = s_data_version,
    .backup = s_backup,
    .idem_get = s_idem_get,
    .idem_put = s_idem_put,
    .idem_purge = s_idem_purge,
    .scan = s_scan,
    .usage_add = s_usage_add,
    .usage_journal = s_usage_journal,
    .usage_fold = s_usage_fold,
    .usage_fold_start = s_usage_fold_start,
    .usage_fold_step = s_usage_fold_step,
    .usage_fold_end = s_usage_fold_end,
    .usage_open = s_usage_open,
    .usage_next = s_usage_next,
    .usage_close = s_usage_close,
    .usage_compact = s_usage_compact,
    .billing_get = s_billing_get,
    .billing_put = s_billing_put,
};
