/*
 * config_io.h - declarative configuration: export the publisher-side and
 * consumer-side configuration as one deterministic JSON document, and
 * import such a document all-or-nothing, with a dry run that shows the
 * diff. Shared by the admin API (/config) and the CLI.
 *
 * Document (format "1.0"); entities are addressed by natural keys, never by
 * ids, so a document moves between installations:
 *
 *   {
 *     "_format_version": "1.0",
 *     "apis": [ { "slug": "pets", "name": ..., <every mutable api field>,
 *                 "targets": [ { "url": ..., "weight": ... } ],
 *                 "plans":   [ { "slug": "free", "name": ..., <plan fields> } ] } ],
 *     "developers": [ { "email": ..., "name": ..., "status": ..., "email_verified": ...,
 *                       "billing_customer_id": ...,
 *                       "apps": [ { "name": ..., "description": ..., "status": ...,
 *                                   "subscriptions": [ { "api": "pets", "plan": "free",
 *                                                        "status": "active" } ] } ] } ]
 *   }
 *
 * No secrets and nothing server-made: no ids, versions, times, keys,
 * digests, password hashes, tokens, sessions or audit rows. Arrays are
 * sorted by natural key (apis by slug, targets by url, plans by slug,
 * developers by email, apps by name, subscriptions by api then plan),
 * members in model order, so the same configuration always exports to the
 * same bytes. Developers with status "deleted", apps "deleted" and
 * subscriptions "cancelled" are not exported.
 */
#ifndef TG_CONFIG_IO_H
#define TG_CONFIG_IO_H

#include <jansson.h>
#include <stdbool.h>

#include "core/store.h"

#define TG_CONFIG_FORMAT_VERSION "1.0"

/* Export the whole configuration. *doc: new reference. */
int tg_config_export(tg_store_t *s, json_t **doc, tg_problem_t *p);

/*
 * Import `doc` (borrowed): create what is missing and update what differs,
 * matching by natural key (api slug; target api+url; plan api+slug;
 * developer email; app developer+name; subscription app+api). With prune,
 * also delete APIs, targets and plans the document lacks (an in-use plan or
 * API makes the import fail with TG_ECONFLICT) and cancel subscriptions it
 * lacks; developers and apps are never deleted by an import.
 *
 * The caller runs this inside a transaction and commits only on TG_OK (and
 * never when dry_run: then it always rolls back; the diff is the result).
 * *diff (new reference) describes what was (or would be) done:
 *   { "created": [ {"entity": "api", "key": "pets"}, ... ],
 *     "updated": [ {"entity": "plan", "key": "pets/free",
 *                   "fields": ["rate_per_second"]} ],
 *     "deleted": [ ... ], "unchanged": N }
 * Validation errors name the member by JSON pointer into the document
 * ("/apis/0/plans/1/rate_per_second") and list every bad field found
 * (tg_problem_add); a document that fails leaves no trace once the caller
 * rolls back.
 */
int tg_config_import(tg_store_t *s, const json_t *doc, bool prune, json_t **diff, tg_problem_t *p);

#endif
