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
/* A store error as 404 (not found) or 500. */
int pb_admin_store_error(struct pb_api_resp *r, const struct pb_err *err);
/* A query argument, NULL when absent or empty. */
const char *pb_admin_arg(struct pb_http_request *c, const char *name);
/* A decimal in [min, max] into *out: 0, or -1 when it is not one. */
int pb_admin_parse_int(const char *s, int64_t min, int64_t max, int64_t *out);
/* A time: unix milliseconds, or RFC 3339 ("2026-11-27T08:00:00Z",
 * "2026-11-27T08:00:00.250+01:00"). 0 or -1. */
int pb_admin_parse_time(const char *s, int64_t *ms);

/* The admin side's own state (e->admin), made by pb_admin_attach. */
struct pb_tail_server;
struct pb_admin {
    struct pb_engine *e;
    struct pb_tail_server *tail;
};
/* Stopping: answer the requests the admin side holds (run options' quiesce). */
void pb_admin_quiesce(struct pb_engine *e);
/* The listener and the workers are gone: free it (run options' detach). */
void pb_admin_detach(struct pb_engine *e);

/* The handlers in their own files, on a worker thread. */
/* search.c: GET /api/messages */
int pb_admin_search(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r);
/* history_api.c: GET /api/metrics/history */
int pb_admin_history(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r);
/* dead_api.c: GET /api/dead-letters, POST /api/dead-letters/replay and
 * /purge (sets by filter), POST /api/dead-letters/{id}/edit-and-replay */
int pb_admin_dead_list(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r);
int pb_admin_dead_bulk(struct pb_engine *e, struct pb_http_request *c, bool purge,
                       struct pb_api_resp *r);
int pb_admin_edit_replay(struct pb_engine *e, int64_t id, struct pb_http_request *c,
                         struct pb_api_resp *r);
/* Why a replay of a dead letter of pipeline/output would wait unseen, or NULL. */
const char *pb_admin_replay_refusal(struct pb_engine *e, const char *pipeline, const char *output);
/* graph.c: what GET /api/pipelines adds to each pipeline (its input and
 * steps, for the dashboard's graph) and GET /api/nodes */
int pb_admin_pipeline_shape(struct pb_engine *e, struct pb_pipeline *pl, json_t *obj);
int pb_admin_nodes(struct pb_engine *e, struct pb_api_resp *r);
/* tail_api.c: GET /api/tail (text/event-stream); true: the request was
 * taken (answered now or held until events come). */
struct pb_tail_server *pb_admin_tail_create(struct pb_engine *e, struct pb_err *err);
void pb_admin_tail_stop(struct pb_tail_server *t);
void pb_admin_tail_destroy(struct pb_tail_server *t);
bool pb_admin_tail(struct pb_engine *e, struct pb_http_request *c, struct pb_api_resp *r);
/* ui.c: the dashboard's files under /ui, on the listener thread. */
void pb_admin_ui(void *arg, struct pb_http_request *r);

/* Serve /health, /ready, /metrics and /api on the engine's listener
 * (routes.c); the admin API runs on the engine's worker threads. */
int pb_admin_attach(struct pb_engine *e, struct pb_err *err);

#endif
