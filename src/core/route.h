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
 * code with the step and reason in err (res is empty). A step that parks
 * (pb_proc_park) cannot here: pb_proc_park returns NULL to it. */
int pb_route_run(const struct pb_route_step *steps, size_t nsteps, jv body, jv meta,
                 pb_outset outputs, size_t max_msgs, struct pb_route_result *res,
                 struct pb_err *err);
void pb_route_result_cleanup(struct pb_route_result *r);

/* ---- a run whose steps may wait for I/O ----------------------------------------------------
 *
 * A step that looks something up (enrich) parks the message instead of
 * blocking: pb_route_start/pb_route_continue then return PB_ROUTE_PARKED,
 * and once the step resumes (pb_proc_resume), `resumed` is called; the
 * owner then calls pb_route_continue on its own thread, which goes on with
 * the next message or step. All of it on one thread: the step's. */
#define PB_ROUTE_PARKED 1

struct pb_proc_io {
    jv meta;           /* borrowed from the caller of pb_route_run / the run */
    pb_outset outputs; /* of the message being processed */
    jv in;             /* a reference to the input, to tell a changed body */
    struct pb_route_result *next;
    size_t max;
    bool new_messages;
    bool changed;
    struct pb_route_run *run; /* NULL: parking is not possible */
    bool parked;              /* the step called pb_proc_park */
};

struct pb_route_run {
    const struct pb_route_step *steps;
    size_t nsteps, max;
    jv meta; /* owned */
    struct pb_route_result cur, next, *res;
    size_t s, i; /* the step and the message in it */
    struct pb_proc_io io;
    void (*resumed)(void *arg);
    void *arg;
    bool in_process; /* the step's process() is on the stack */
    bool waiting;    /* parked, not resumed yet */
    bool woke;       /* resumed (from inside process() or later) */
    int wait_rc;
    struct pb_err wait_err;
};

/* Start a run (zeroed by the caller, which keeps it in place until the run
 * ends): body and meta taken. 0 (res filled), PB_ROUTE_PARKED, or a
 * negative code with err, as pb_route_run. */
int pb_route_start(struct pb_route_run *r, const struct pb_route_step *steps, size_t nsteps,
                   jv body, jv meta, pb_outset outputs, size_t max_msgs, void (*resumed)(void *arg),
                   void *arg, struct pb_route_result *res, struct pb_err *err);
/* After `resumed`: go on. Same returns as pb_route_start. */
int pb_route_continue(struct pb_route_run *r, struct pb_err *err);
/* Free what a run holds (one that ended, or one dropped while parked: its
 * step must not resume it any more). */
void pb_route_run_cleanup(struct pb_route_run *r);

#endif
