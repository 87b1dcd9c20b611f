/* nodes.c - GET /api/nodes: the processes sharing this daemon's state
 * store: on PostgreSQL every node of the cluster, live and recently gone;
 * on a store of one process (SQLite) this one, as graph.c describes it.
 * Runs on a worker thread: it reads the store. */
#include <string.h>

#include <jansson.h>

#include "admin/api.h"

static json_t *ms_or_null(int64_t ms)
{
    return ms > 0 ? json_integer(ms) : json_null();
}

static int node_cb(void *arg, const struct pb_node_row *n)
{
    json_t *list = arg;
    json_t *o =
        json_pack("{s:s, s:s, s:I, s:s, s:o, s:o, s:o, s:I, s:b}", "name", n->name ? n->name : "",
                  "version", n->version ? n->version : PB_VERSION, "epoch", (json_int_t)n->epoch,
                  "state", n->state ? n->state : "live", "started_at", ms_or_null(n->started_at),
                  "heartbeat_at", ms_or_null(n->heartbeat_at), "ended_at", ms_or_null(n->ended_at),
                  "leases", (json_int_t)n->leases, "self", n->self);
    json_t *holds = json_array();
    if (!o || !holds) {
        json_decref(o);
        json_decref(holds);
        return 1;
    }
    /* "a,b,c" -> ["a", "b", "c"] */
    for (const char *p = n->holds ? n->holds : ""; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len)
            json_array_append_new(holds, json_stringn(p, len));
        p += len + (comma ? 1 : 0);
    }
    json_object_set_new(o, "holds", holds);
    json_object_set_new(o, "id",
                        json_string(n->name ? n->name : "")); /* as the dashboard reads it */
    return json_array_append_new(list, o) != 0;
}

int pb__admin_get_nodes(struct pb_engine *e, struct pb_api_resp *r)
{
    struct pb_err err = {0};
    if (!pb_store_clustered(e->store))
        return pb_admin_nodes(e, r);
    json_t *list = json_array();
    if (!list)
        return pb_admin_error(r, 500, "out of memory");
    if (pb_store_read_nodes(e->store, node_cb, list, &err) != 0) {
        json_decref(list);
        return pb_admin_error(r, 503, err.msg[0] ? err.msg : "state store unreachable");
    }
    return pb_admin_reply(r, 200,
                          json_pack("{s:o, s:s, s:b, s:i}", "nodes", list, "self",
                                    pb_store_node_name(e->store), "clustered",
                                    pb_store_clustered(e->store), "live",
                                    pb_store_live_nodes(e->store)));
}
