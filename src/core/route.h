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

/* Where steps keep the keys they remember (pb_proc_key_claim): the state
 * store for the route stage, memory for `patchbay test`. claim calls done
 * exactly once on the caller's thread (perhaps before it returns) unless it
 * returns < 0. scope names the step ("<pipeline>/process[<n>]"), owner the
 * message ("<msg id>/<i>"). */
struct pb_route_keys {
    int (*claim)(struct pb_route_keys *k, const char *scope, const char *key, const char *owner,
                 int64_t window_ms, void (*done)(void *arg, int rc, bool first, const char *holder),
                 void *arg);
    bool synchronous; /* done always runs before claim returns */
};

/* Keys kept in memory (route_keys.c), synchronous; now gives the time in
 * unix ms. NULL on ENOMEM. */
struct pb_route_keys *pb_route_keys_memory(int64_t (*now)(void *arg), void *now_arg);
void pb_route_keys_memory_free(struct pb_route_keys *k);

/* What a run knows of its message beyond body and $meta; any member may be
 * NULL (then pb_proc_key_claim fails). Borrowed for the run. */
struct pb_route_env {
    const char *pipeline;
    const char *msg_id;
    struct pb_route_keys *keys;
};

/* Run steps on body (ownership taken) with $meta (borrowed), starting out
 * to outputs. 0 with res filled (pb_route_result_cleanup it), or a negative
 * code with the step and reason in err (res is empty). A step that parks
 * (pb_proc_park) cannot here: pb_proc_park returns NULL to it. */
int pb_route_run(const struct pb_route_step *steps, size_t nsteps, jv body, jv meta,
                 pb_outset outputs, size_t max_msgs, struct pb_route_result *res,
                 struct pb_err *err);
int pb_route_run_env(const struct pb_route_env *env, const struct pb_route_step *steps,
                     size_t nsteps, jv body, jv meta, pb_outset outputs, size_t max_msgs,
                     struct pb_route_result *res, struct pb_err *err);
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
    /* pb_proc_key_claim on its way (io is the run's) */
    pb_proc_key_done key_done;
    void *key_arg;
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
    struct pb_route_env env;
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
/* The same with env (may be NULL). */
int pb_route_start_env(struct pb_route_run *r, const struct pb_route_env *env,
                       const struct pb_route_step *steps, size_t nsteps, jv body, jv meta,
                       pb_outset outputs, size_t max_msgs, void (*resumed)(void *arg), void *arg,
                       struct pb_route_result *res, struct pb_err *err);
/* After `resumed`: go on. Same returns as pb_route_start. */
int pb_route_continue(struct pb_route_run *r, struct pb_err *err);
/* Free what a run holds (one that ended, or one dropped while parked: its
 * step must not resume it any more). */
void pb_route_run_cleanup(struct pb_route_run *r);

#endif
