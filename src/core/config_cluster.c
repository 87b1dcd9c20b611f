/* config_cluster.c - the `cluster:` section: this process as a node of the
 * processes sharing one PostgreSQL state store (its name, how long its
 * leases outlive its last heartbeat, how often it heartbeats), decoded
 * with the rest of the configuration (config.c) and checked here. Loading
 * thread only. */
#include <stddef.h>
#include <string.h>

#include "core/engine.h"

#define CL(f) offsetof(struct pb_cluster_conf, f)

const struct pb_field pb__cluster_fields[] = {
    {.name = "node",
     .type = PB_F_STR,
     .offset = CL(node),
     .doc = "this node's name in the cluster (default: host name and pid)"},
    {.name = "lease",
     .type = PB_F_DURATION,
     .offset = CL(lease_ms),
     .def = "30s",
     .doc = "how long after its last heartbeat a node's work may be taken over"},
    {.name = "heartbeat",
     .type = PB_F_DURATION,
     .offset = CL(heartbeat_ms),
     .def = "5s",
     .doc = "how often a node tells the others it is alive"},
    {0},
};

int pb__config_check_cluster(const struct pb_config *c, const struct pb_node *root,
                             struct pb_err *e)
{
    const struct pb_cluster_conf *cl = &c->cluster;
    const struct pb_node *sec = pb_node_get(root, "cluster");
    const struct pb_node *at = sec ? sec : root;
    const char *what = NULL;
    if (cl->heartbeat_ms < 100 || cl->heartbeat_ms > 60000)
        what = "cluster.heartbeat must be between 100ms and 1m";
    else if (cl->lease_ms < 3 * cl->heartbeat_ms || cl->lease_ms > 3600000)
        what = "cluster.lease must be at least three heartbeats and at most 1h";
    else if (cl->node && (!cl->node[0] || strlen(cl->node) > 100))
        what = "cluster.node must be a name of 1 to 100 bytes";
    if (!what)
        return 0;
    return pb_err_at(e, PB_ECONFIG, at->file ? at->file : c->path, at->line, at->col, "%s", what);
}
