/* graph.c - the shape of each pipeline for the dashboard's graph (its input,
 * its process steps in order, where a switch sends messages, the route
 * stage's counts), added to GET /api/pipelines; and GET /api/nodes.
 *
 * The steps come from the configuration as written. Only what is safe to
 * show is shown: a step's kind, a map or filter program, a switch's
 * conditions and targets; a program whose text came (partly) from the
 * environment is withheld, since a secret may have been put there. Admin
 * worker thread; reads no store. */
#include <string.h>

#include "admin/api.h"
#include "core/input.h"
#include "patchbay/pb_conf.h"

#define PROGRAM_SHOWN_MAX 2000

static json_t *program_json(const struct pb_node *n)
{
    if (!n || n->type != PB_NODE_SCALAR)
        return json_null();
    if (n->interpolated)
        return json_string("(set from the environment: not shown)");
    if (n->len > PROGRAM_SHOWN_MAX)
        return json_stringn(n->str, PROGRAM_SHOWN_MAX);
    return json_stringn(n->str, n->len);
}

/* A string list as written: one scalar or a sequence of them. */
static json_t *names_json(const struct pb_node *n)
{
    json_t *a = json_array();
    if (!a || !n)
        return a;
    if (n->type == PB_NODE_SCALAR) {
        json_array_append_new(a, json_stringn(n->str, n->len));
    } else if (n->type == PB_NODE_SEQ) {
        for (size_t i = 0; i < n->n; i++)
            if (n->vals[i]->type == PB_NODE_SCALAR)
                json_array_append_new(a, json_stringn(n->vals[i]->str, n->vals[i]->len));
    }
    return a;
}

static json_t *switch_json(const struct pb_node *cases)
{
    json_t *a = json_array();
    if (!a || !cases || cases->type != PB_NODE_SEQ)
        return a;
    for (size_t i = 0; i < cases->n; i++) {
        const struct pb_node *c = cases->vals[i];
        if (c->type != PB_NODE_MAP)
            continue;
        const struct pb_node *otherwise = pb_node_get(c, "otherwise");
        json_t *o = otherwise
                        ? json_pack("{s:b, s:o}", "otherwise", 1, "to", names_json(otherwise))
                        : json_pack("{s:o, s:o}", "when", program_json(pb_node_get(c, "when")),
                                    "to", names_json(pb_node_get(c, "to")));
        if (o)
            json_array_append_new(a, o);
    }
    return a;
}

static json_t *steps_json(const struct pb_pipeline *pl)
{
    json_t *a = json_array();
    const struct pb_node *process = pl->node ? pb_node_get(pl->node, "process") : NULL;
    if (!a || !process || process->type != PB_NODE_SEQ)
        return a;
    for (size_t i = 0; i < process->n; i++) {
        const struct pb_node *step = process->vals[i];
        if (step->type != PB_NODE_MAP || step->n != 1)
            continue;
        const char *kind = step->keys[0]->str;
        const struct pb_node *body = step->vals[0];
        json_t *o = json_pack("{s:s}", "kind", kind);
        if (!o)
            continue;
        if (strcmp(kind, "switch") == 0)
            json_object_set_new(o, "cases", switch_json(body));
        else if (body->type == PB_NODE_SCALAR &&
                 (strcmp(kind, "map") == 0 || strcmp(kind, "filter") == 0 ||
                  strcmp(kind, "split") == 0))
            json_object_set_new(o, "program", program_json(body));
        json_array_append_new(a, o);
    }
    return a;
}

int pb_admin_pipeline_shape(struct pb_engine *e, struct pb_pipeline *pl, json_t *obj)
{
    (void)e;
    const struct pb_input *in = pl->in;
    json_t *input = json_pack("{s:s, s:s}", "type", in->plugin->name, "state",
                              pb__input_state_name(atomic_load(&in->state)));
    json_t *steps = steps_json(pl);
    json_t *route = json_null();
    if (pl->routes) {
        const struct pb_output *r = &pl->router;
        route = json_pack("{s:I, s:I, s:I, s:I}", "routed", (json_int_t)atomic_load(&r->delivered),
                          "filtered", (json_int_t)atomic_load(&r->filtered), "dead",
                          (json_int_t)atomic_load(&r->dead), "backlog",
                          (json_int_t)atomic_load(&r->backlog));
    }
    if (!input || !steps || !route) {
        json_decref(input);
        json_decref(steps);
        json_decref(route);
        return PB_ENOMEM;
    }
    /* Each set takes its value, even when it fails. */
    int bad = json_object_set_new(obj, "input", input);
    bad |= json_object_set_new(obj, "steps", steps);
    bad |= json_object_set_new(obj, "route", route);
    return bad ? PB_ENOMEM : 0;
}

int pb_admin_nodes(struct pb_engine *e, struct pb_api_resp *r)
{
    json_t *node = json_pack("{s:s, s:b, s:s, s:I, s:s}", "id", pb_store_node_id(e->store), "self",
                             1, "state", atomic_load(&e->ready) ? "ready" : "not ready",
                             "started_at", (json_int_t)e->started_at, "version", PB_VERSION);
    if (!node)
        return pb_admin_error(r, 500, "out of memory");
    return pb_admin_reply(r, 200, json_pack("{s:b, s:[o]}", "clustered", 0, "nodes", node));
}
