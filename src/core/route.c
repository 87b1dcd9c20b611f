/* route.c - running a pipeline's process steps on one message.
 *
 * The route stage (DESIGN semantics 9) runs the steps once per message:
 * each step takes one message at a time and passes on 0..N, each with the
 * outputs it still goes to (a bit mask). What comes out of the last step is
 * the decision the dispatcher commits (src/core/dispatch.c, PB_OP_ROUTE)
 * before any delivery starts. Nothing here touches the store or a clock, so
 * the whole decision is unit-testable (tests/unit/test_route.c).
 *
 * Memory: the messages between two steps are bounded by max_msgs; a step
 * that would pass on more fails the message with PB_ETOOBIG. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/route.h"

struct pb_proc_io {
    jv meta;           /* borrowed from the caller of pb_route_run */
    pb_outset outputs; /* of the message being processed */
    jv in;             /* a reference to the input, to tell a changed body */
    struct pb_route_result *next;
    size_t max;
    bool new_messages;
    bool changed;
};

jv pb_proc_meta(const struct pb_proc_io *io)
{
    return io->meta;
}

pb_outset pb_proc_outputs(const struct pb_proc_io *io)
{
    return io->outputs;
}

void pb_proc_new_messages(struct pb_proc_io *io)
{
    io->new_messages = true;
}

static int push(struct pb_route_result *r, jv body, pb_outset outputs, size_t max)
{
    if (r->n == max) {
        jv_free(body);
        return PB_ETOOBIG;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 4;
        struct pb_route_item *items = realloc(r->items, cap * sizeof(*items));
        if (!items) {
            jv_free(body);
            return PB_ENOMEM;
        }
        r->items = items;
        r->cap = cap;
    }
    r->items[r->n++] = (struct pb_route_item){.body = body, .outputs = outputs};
    return 0;
}

int pb_proc_emit(struct pb_proc_io *io, jv body, pb_outset outputs)
{
    if (!jv_is_valid(body)) {
        jv_free(body);
        return PB_EINVAL;
    }
    if (!io->changed && !jv_identical(jv_copy(io->in), jv_copy(body)))
        io->changed = true;
    return push(io->next, body, outputs, io->max);
}

void pb_route_result_cleanup(struct pb_route_result *r)
{
    for (size_t i = 0; i < r->n; i++)
        jv_free(r->items[i].body);
    free(r->items);
    memset(r, 0, sizeof(*r));
}

int pb_route_run(const struct pb_route_step *steps, size_t nsteps, jv body, jv meta,
                 pb_outset outputs, size_t max_msgs, struct pb_route_result *res,
                 struct pb_err *err)
{
    struct pb_route_result cur = {0}, next = {0};
    int rc;

    memset(res, 0, sizeof(*res));
    if (max_msgs == 0)
        max_msgs = 1;
    rc = push(&cur, body, outputs, max_msgs);
    if (rc)
        return pb_err_set(err, rc, "out of memory");
    for (size_t s = 0; s < nsteps && cur.n; s++) {
        struct pb_proc_io io = {.meta = meta, .next = &next, .max = max_msgs};
        for (size_t i = 0; i < cur.n; i++) {
            jv in = cur.items[i].body;
            cur.items[i].body = jv_invalid();
            io.outputs = cur.items[i].outputs;
            io.in = jv_copy(in);
            rc = steps[s].plugin->process(steps[s].ctx, &io, in, err);
            jv_free(io.in);
            if (rc < 0) {
                if (rc == PB_ETOOBIG && !err->msg[0])
                    pb_err_set(err, rc, "more than %zu messages made from one", max_msgs);
                char why[PB_ERR_MSG_MAX];
                snprintf(why, sizeof(why), "%s", err->msg[0] ? err->msg : pb_strerror(rc));
                pb_err_set(err, rc, "process step %zu (%s): %s", s + 1, steps[s].plugin->name, why);
                goto out;
            }
        }
        if (io.changed)
            res->changed = true;
        if (io.new_messages)
            res->split = true;
        if (next.n == 0) {
            res->dropped_at = s + 1;
            res->dropped_by = steps[s].plugin->name;
        }
        pb_route_result_cleanup(&cur);
        cur = next;
        memset(&next, 0, sizeof(next));
    }
    res->items = cur.items;
    res->n = cur.n;
    res->cap = cur.cap;
    memset(&cur, 0, sizeof(cur));
    rc = 0;
out:
    pb_route_result_cleanup(&cur);
    pb_route_result_cleanup(&next);
    return rc;
}
