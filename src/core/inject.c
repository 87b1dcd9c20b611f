/* inject.c - messages the admin side makes and hands to delivery: a dead
 * letter's corrected body (edit-and-replay) and a webhook endpoint's test
 * event (pb_output_sub_send).
 *
 * Each is one PB_OP_INJECT committed through the writer; its deliveries
 * are made unleased and the dispatcher is told to page them in, like a
 * replay's. Blocking: callers are admin worker threads, never an event
 * loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/dispatch_int.h"
#include "patchbay/pb_log.h"

/* Call fn on the output (pipeline, name) names, where name is an output,
 * "output/sub" or the route stage; a sub-output is passed under its
 * parent's lock (a deleted one is freed while the engine runs). False when
 * there is no such output now. */
static bool with_output(struct pb_engine *e, const char *pipeline, const char *name,
                        void (*fn)(struct pb_output *o, void *arg), void *arg)
{
    struct pb_pipeline *pl = pb_engine_pipeline(e, pipeline);
    if (!pl)
        return false;
    if (strcmp(name, PB_ROUTE_OUTPUT) == 0) {
        if (!pl->routes)
            return false;
        fn(&pl->router, arg);
        return true;
    }
    const char *slash = strchr(name, '/');
    if (!slash) {
        struct pb_output *o = pb_pipeline_output(pl, name);
        if (o)
            fn(o, arg);
        return o != NULL;
    }
    char parent_name[PB_NAME_MAX];
    snprintf(parent_name, sizeof(parent_name), "%.*s", (int)(slash - name), name);
    struct pb_output *parent = pb_pipeline_output(pl, parent_name);
    if (!parent)
        return false;
    bool found = false;
    pthread_mutex_lock(&parent->vlock);
    for (size_t i = 0; i < parent->nvouts && !found; i++) {
        struct pb_output *v = parent->vouts[i];
        if (!v->gone && strcmp(v->sub, slash + 1) == 0) {
            fn(v, arg);
            found = true;
        }
    }
    pthread_mutex_unlock(&parent->vlock);
    return found;
}

struct more {
    struct pb_engine *e;
    int64_t n;
};

static void more_cb(struct pb_output *o, void *arg)
{
    struct more *m = arg;
    atomic_fetch_add(&o->backlog, m->n);
    pb_dispatcher_notify_store(m->e->disp, o);
}

bool pb_engine_store_gained(struct pb_engine *e, const char *pipeline, const char *output,
                            int64_t n)
{
    struct more m = {.e = e, .n = n};
    return with_output(e, pipeline, output, more_cb, &m);
}

int pb_engine_inject(struct pb_engine *e, struct pb_op *op)
{
    struct pb_op_inject *in = &op->u.inject;
    op->kind = PB_OP_INJECT;
    int rc = pb_store_exec(e->store, op);
    if (rc)
        return rc;
    char name[PB_NAME_MAX * 2 + 2];
    size_t n = in->ntargets ? in->ntargets : 1;
    for (size_t i = 0; i < n; i++) {
        const char *pipeline = in->replaces ? in->pipeline_out : in->pipeline;
        if (in->ntargets && in->subs && in->subs[i])
            snprintf(name, sizeof(name), "%s/%s", in->outputs[i], in->subs[i]);
        else
            snprintf(name, sizeof(name), "%s", in->ntargets ? in->outputs[i] : in->output_out);
        if (!pb_engine_store_gained(e, pipeline, name, 1))
            PB_WARN("a message was made for an output no longer configured pipeline=%s output=%s "
                    "msg_id=%s",
                    pipeline, name, in->msg_id);
    }
    return 0;
}

int pb_output_sub_send(struct pb_output *o, const char *sub, const char *json, size_t len,
                       char *msg_id, size_t id_len)
{
    if (!o->disp || !pb_output_sub_exists(o, sub))
        return PB_ENOTFOUND;
    struct pb_engine *e = o->disp->e;
    int64_t now = pb_now_ms();
    char id[PB_MSG_ID_MAX];
    pb_msg_new_id(id, now);
    json_t *m =
        json_pack("{s:s, s:s, s:I, s:{s:s, s:s}}", "input", "test", "pipeline", o->pl->name,
                  "received_at", (json_int_t)now, "test_of", "output", o->name, "endpoint", sub);
    char *meta = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    if (!meta)
        return PB_ENOMEM;
    const char *outputs[1] = {o->name};
    const char *subs[1] = {sub};
    int64_t did[1];
    struct pb_op op = {.kind = PB_OP_INJECT};
    op.u.inject = (struct pb_op_inject){.msg_id = id,
                                        .body = json,
                                        .len = len,
                                        .pipeline = o->pl->name,
                                        .meta = meta,
                                        .meta_len = strlen(meta),
                                        .ntargets = 1,
                                        .outputs = outputs,
                                        .subs = subs,
                                        .now = now,
                                        .delivery_ids = did};
    int rc = pb_engine_inject(e, &op);
    free(meta);
    if (rc == 0 && msg_id)
        snprintf(msg_id, id_len, "%s", id);
    return rc;
}
