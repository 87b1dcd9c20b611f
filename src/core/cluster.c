/* cluster.c - the engine's side of a state store shared by several nodes
 * (PostgreSQL): what the store's node thread learns from the others is
 * turned into work here. Pending deliveries set free (a node died or shut
 * down, a replay on another node, the heartbeat's fallback pass) make the
 * dispatcher claim them; a node presumed dead by the others restarts in
 * place (as SIGHUP does), so it joins again under a new epoch with nothing
 * in memory. The node's heartbeat getting through while the store is not
 * writable sends the writer an empty transaction, so the store (and
 * /ready) recovers when the database does, not at the next write. The
 * callbacks run on the store's node thread and only post: they never wait
 * for the store. A store of one node (SQLite) sends none. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/engine.h"
#include "patchbay/pb_log.h"

static void notify_pipeline(struct pb_engine *e, struct pb_pipeline *pl, const char *output)
{
    struct pb_output *o = NULL;
    if (output && strcmp(output, PB_ROUTE_OUTPUT) == 0 && pl->routes)
        o = &pl->router;
    else if (output)
        o = pb_pipeline_output(pl, output);
    if (o) {
        pb_dispatcher_notify_store(e->disp, o);
        return;
    }
    /* Any output of the pipeline (or one not known by that name: a
     * sub-output's delivery is claimed through its output). */
    if (pl->routes)
        pb_dispatcher_notify_store(e->disp, &pl->router);
    for (size_t j = 0; j < pl->nouts; j++)
        pb_dispatcher_notify_store(e->disp, &pl->outs[j]);
}

static atomic_bool probing;

static void probe_done(struct pb_op *op, void *arg)
{
    (void)arg;
    free(op);
    atomic_store(&probing, false);
}

/* An empty transaction: commits once the database is back. */
static void probe(struct pb_engine *e)
{
    if (atomic_exchange(&probing, true))
        return;
    struct pb_op *op = calloc(1, sizeof(*op));
    if (!op) {
        atomic_store(&probing, false);
        return;
    }
    op->kind = PB_OP_KV;
    op->done_cb = probe_done;
    if (pb_store_submit(e->store, op) != 0)
        probe_done(op, NULL);
}

static void on_work(void *arg, const char *pipeline, const char *output)
{
    struct pb_engine *e = arg;
    if (!e->disp || atomic_load(&e->stopping))
        return;
    if (!pipeline && !pb_store_writable(e->store))
        probe(e);
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        if (!pipeline || strcmp(pl->name, pipeline) == 0)
            notify_pipeline(e, pl, pipeline ? output : NULL);
    }
}

/* The live nodes or this node's holds changed: an ordered pipeline this
 * node now holds has deliveries to claim. (A singleton input looks at its
 * hold by itself: input.c.) */
static void on_cluster(void *arg)
{
    on_work(arg, NULL, NULL);
}

static void on_lost(void *arg)
{
    struct pb_engine *e = arg;
    if (atomic_load(&e->stopping))
        return;
    PB_WARN("restarting in place: this node's leases were taken over node=%s",
            pb_store_node_name(e->store));
    kill(getpid(), SIGHUP);
}

void pb__engine_cluster_start(struct pb_engine *e)
{
    struct pb_store_events ev = {.arg = e, .work = on_work, .cluster = on_cluster, .lost = on_lost};
    if (pb__cluster_kv_start(e) == 0)
        ev.kv = pb__cluster_kv_event; /* shared state: cluster_kv.c */
    else
        PB_ERROR("shared state changed by other nodes will not be followed node=%s",
                 pb_store_node_name(e->store));
    pb_store_set_events(e->store, &ev);
}

void pb__engine_cluster_stop(struct pb_engine *e)
{
    if (e->store)
        pb_store_set_events(e->store, NULL);
    pb__cluster_kv_stop();
}
