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

struct pb_proc_wait *pb_proc_park(struct pb_proc_io *io)
{
    if (!io->run || !io->run->resumed || io->parked || !io->run->in_process)
        return NULL;
    io->parked = true;
    io->run->waiting = true;
    io->run->woke = false;
    return (struct pb_proc_wait *)io->run;
}

struct pb_proc_io *pb_proc_wait_io(struct pb_proc_wait *w)
{
    return &((struct pb_route_run *)w)->io;
}

void pb_proc_resume(struct pb_proc_wait *w, int rc, const struct pb_err *err)
{
    struct pb_route_run *r = (struct pb_route_run *)w;
    if (!r->waiting || r->woke)
        return;
    r->woke = true;
    r->wait_rc = rc;
    pb_err_clear(&r->wait_err);
    if (rc < 0) {
        if (err && err->msg[0])
            r->wait_err = *err;
        else
            pb_err_set(&r->wait_err, rc, "%s", pb_strerror(rc));
    }
    if (!r->in_process)
        r->resumed(r->arg);
}

/* ---- keys a step remembers ----------------------------------------------------------------- */

static void key_claimed(void *arg, int rc, bool first, const char *holder)
{
    struct pb_route_run *r = arg;
    pb_proc_key_done done = r->io.key_done;
    r->io.key_done = NULL;
    if (done)
        done((struct pb_proc_wait *)r, rc, first, holder, r->io.key_arg);
}

int pb_proc_key_claim(struct pb_proc_io *io, const char *key, int64_t window_ms,
                      pb_proc_key_done done, void *arg, struct pb_err *err)
{
    struct pb_route_run *r = io->run;
    if (!r || !r->in_process || io->parked || !done || !key || window_ms <= 0)
        return pb_err_set(err, PB_EINVAL, "a key claim out of place");
    if (strlen(key) > PB_PROC_KEY_MAX)
        return pb_err_set(err, PB_ETOOBIG, "key longer than %d bytes", PB_PROC_KEY_MAX);
    struct pb_route_keys *k = r->env.keys;
    /* A run that cannot park may still wait for keys kept in memory. */
    if (!k || !r->env.pipeline || !r->env.msg_id || (!r->resumed && !k->synchronous))
        return pb_err_set(err, PB_EINVAL, "this run keeps no keys");
    char scope[2 * PB_PROC_KEY_MAX], owner[96];
    snprintf(scope, sizeof(scope), "%s/process[%zu]", r->env.pipeline, r->s);
    snprintf(owner, sizeof(owner), "%s/%zu", r->env.msg_id, r->i);
    io->parked = true;
    r->waiting = true;
    r->woke = false;
    io->key_done = done;
    io->key_arg = arg;
    int rc = k->claim(k, scope, key, owner, window_ms, key_claimed, r);
    if (rc < 0) {
        io->key_done = NULL;
        io->parked = false;
        r->waiting = false;
        return pb_err_set(err, rc, "cannot look the key up: %s", pb_strerror(rc));
    }
    return 0;
}

/* Steps from where r stands until the end or a park. */
static int run_steps(struct pb_route_run *r, struct pb_err *err)
{
    struct pb_route_result *res = r->res;
    int rc = 0;
    for (; r->s < r->nsteps && r->cur.n; r->s++) {
        const struct pb_route_step *st = &r->steps[r->s];
        for (; r->i < r->cur.n; r->i++) {
            if (r->waiting) {
                /* Back from a park: the step's outcome is what it resumed with. */
                r->waiting = false;
                rc = r->wait_rc;
                if (rc < 0)
                    *err = r->wait_err;
            } else {
                jv in = r->cur.items[r->i].body;
                r->cur.items[r->i].body = jv_invalid();
                r->io.outputs = r->cur.items[r->i].outputs;
                r->io.in = jv_copy(in);
                r->io.parked = false;
                r->in_process = true;
                rc = st->plugin->process(st->ctx, &r->io, in, err);
                r->in_process = false;
                if (r->io.parked) {
                    if (rc < 0) {
                        r->waiting = false; /* it failed after all: not waiting */
                    } else if (!r->woke) {
                        return PB_ROUTE_PARKED;
                    } else {
                        r->waiting = false;
                        rc = r->wait_rc;
                        if (rc < 0)
                            *err = r->wait_err;
                    }
                }
            }
            jv_free(r->io.in);
            r->io.in = jv_invalid();
            if (rc < 0) {
                if (rc == PB_ETOOBIG && !err->msg[0])
                    pb_err_set(err, rc, "more than %zu messages made from one", r->max);
                char why[PB_ERR_MSG_MAX];
                snprintf(why, sizeof(why), "%s", err->msg[0] ? err->msg : pb_strerror(rc));
                pb_err_set(err, rc, "process step %zu (%s): %s", r->s + 1, st->plugin->name, why);
                return rc;
            }
        }
        if (r->io.changed)
            res->changed = true;
        if (r->io.new_messages)
            res->split = true;
        if (r->next.n == 0) {
            res->dropped_at = r->s + 1;
            res->dropped_by = st->plugin->name;
        }
        pb_route_result_cleanup(&r->cur);
        r->cur = r->next;
        memset(&r->next, 0, sizeof(r->next));
        r->i = 0;
        r->io.changed = false;
        r->io.new_messages = false;
    }
    res->items = r->cur.items;
    res->n = r->cur.n;
    res->cap = r->cur.cap;
    memset(&r->cur, 0, sizeof(r->cur));
    return 0;
}

void pb_route_run_cleanup(struct pb_route_run *r)
{
    pb_route_result_cleanup(&r->cur);
    pb_route_result_cleanup(&r->next);
    jv_free(r->io.in);
    r->io.in = jv_invalid();
    jv_free(r->meta);
    r->meta = jv_invalid();
}

int pb_route_start(struct pb_route_run *r, const struct pb_route_step *steps, size_t nsteps,
                   jv body, jv meta, pb_outset outputs, size_t max_msgs, void (*resumed)(void *arg),
                   void *arg, struct pb_route_result *res, struct pb_err *err)
{
    return pb_route_start_env(r, NULL, steps, nsteps, body, meta, outputs, max_msgs, resumed, arg,
                              res, err);
}

int pb_route_start_env(struct pb_route_run *r, const struct pb_route_env *env,
                       const struct pb_route_step *steps, size_t nsteps, jv body, jv meta,
                       pb_outset outputs, size_t max_msgs, void (*resumed)(void *arg), void *arg,
                       struct pb_route_result *res, struct pb_err *err)
{
    int rc;
    memset(res, 0, sizeof(*res));
    memset(r, 0, sizeof(*r));
    if (env)
        r->env = *env;
    r->steps = steps;
    r->nsteps = nsteps;
    r->max = max_msgs ? max_msgs : 1;
    r->meta = meta;
    r->res = res;
    r->resumed = resumed;
    r->arg = arg;
    r->io = (struct pb_proc_io){
        .meta = meta, .next = &r->next, .max = r->max, .run = r, .in = jv_invalid()};
    rc = push(&r->cur, body, outputs, r->max);
    if (rc) {
        pb_route_run_cleanup(r);
        return pb_err_set(err, rc, "out of memory");
    }
    return pb_route_continue(r, err);
}

int pb_route_continue(struct pb_route_run *r, struct pb_err *err)
{
    int rc = run_steps(r, err);
    if (rc == PB_ROUTE_PARKED)
        return rc;
    if (rc)
        pb_route_result_cleanup(r->res);
    pb_route_run_cleanup(r);
    return rc;
}

int pb_route_run(const struct pb_route_step *steps, size_t nsteps, jv body, jv meta,
                 pb_outset outputs, size_t max_msgs, struct pb_route_result *res,
                 struct pb_err *err)
{
    return pb_route_run_env(NULL, steps, nsteps, body, meta, outputs, max_msgs, res, err);
}

int pb_route_run_env(const struct pb_route_env *env, const struct pb_route_step *steps,
                     size_t nsteps, jv body, jv meta, pb_outset outputs, size_t max_msgs,
                     struct pb_route_result *res, struct pb_err *err)
{
    struct pb_route_run r;
    int rc = pb_route_start_env(&r, env, steps, nsteps, body, jv_copy(meta), outputs, max_msgs,
                                NULL, NULL, res, err);
    /* Without `resumed` no step can park. */
    return rc == PB_ROUTE_PARKED ? PB_EINTERNAL : rc;
}
