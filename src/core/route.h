/* route.h - a pipeline's process steps run on one message (route.c). */
#ifndef PB_ROUTE_H
#define PB_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include <jv.h>

#include "patchbay/pb_plugin.h"

/* Messages one message may turn into, unless a step says less. */
#define PB_ROUTE_MAX_MSGS 10000

struct pb_route_step {
    const struct pb_processor_plugin *plugin;
    void *ctx;
};

struct pb_route_item {
    jv body;
    pb_outset outputs; /* where it goes; the pipeline's other outputs are routed away */
};

struct pb_route_result {
    struct pb_route_item *items; /* what the last step passed on, in order */
    size_t n, cap;
    bool changed;      /* some step passed on a body other than the one it took */
    bool split;        /* the items are new messages (a split step ran) */
    size_t dropped_at; /* n == 0: the 1-based step that passed nothing on */
    const char *dropped_by;
};

/* Run steps on body (ownership taken) with $meta (borrowed), starting out
 * to outputs. 0 with res filled (pb_route_result_cleanup it), or a negative
 * code with the step and reason in err (res is empty). */
int pb_route_run(const struct pb_route_step *steps, size_t nsteps, jv body, jv meta,
                 pb_outset outputs, size_t max_msgs, struct pb_route_result *res,
                 struct pb_err *err);
void pb_route_result_cleanup(struct pb_route_result *r);

#endif
