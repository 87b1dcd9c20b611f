/* api.h - the admin REST API under /api (JSON, bearer token checked by the
 * listener before these handlers run). */
#ifndef PB_ADMIN_API_H
#define PB_ADMIN_API_H

#include <jansson.h>

#include "core/engine.h"
#include "patchbay/pb_server.h"

struct pb_api_resp {
    int status;
    char *body; /* malloc'd JSON text, or NULL for an empty body */
};

/* Answer one admin request; fills resp, or returns true when a plugin's
 * route answered it itself. Runs on a worker thread: it may read the store. */
bool pb_admin_handle(struct pb_engine *e, struct pb_http_request *c, const char *method,
                     const char *path, const char *body, size_t len, struct pb_api_resp *resp);

/* Shared by the admin handlers. */
int pb_admin_reply(struct pb_api_resp *r, int status, json_t *body);
int pb_admin_error(struct pb_api_resp *r, int status, const char *msg);
/* GET /api/nodes (nodes.c). */
int pb__admin_get_nodes(struct pb_engine *e, struct pb_api_resp *r);

/* Serve /health, /ready, /metrics and /api on the engine's listener
 * (routes.c); the admin API runs on the engine's worker threads. */
int pb_admin_attach(struct pb_engine *e, struct pb_err *err);

#endif
