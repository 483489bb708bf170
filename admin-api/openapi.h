/*
 * openapi.h - the admin API's own OpenAPI 3.1 document (admin-api/
 * openapi.json), embedded at build time and served at /openapi.json.
 */
#ifndef ADM_OPENAPI_H
#define ADM_OPENAPI_H

#include <stddef.h>

extern const char adm_openapi_json[];
extern const size_t adm_openapi_json_len;

#endif
