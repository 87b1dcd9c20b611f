/* input.h - the core's side of inputs (input.c): their loops and threads,
 * submit and its one callback, checkpoints, back-pressure, state. */
#ifndef PB_CORE_INPUT_H
#define PB_CORE_INPUT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "patchbay/pb_plugin.h"

struct pb_engine;
struct pb_pipeline;
struct pb_node;

struct pb_input_ckpt {
    char *name;
    void *value;
    size_t len;
};

struct pb_input {
    struct pb_pipeline *pl;
    const struct pb_input_plugin *plugin;
    void *ctx;
    bool ctx_ready; /* init succeeded */
    struct pb_input_env env;
    struct pb_allowlist *allow; /* env.allow: the top-level outbound.allow */
    bool raw;                   /* its bodies are not JSON: no map, no process steps */
    int64_t idem_window_ms;

    /* Routes declared at init; added to the listener at engine start. */
    struct pb_http_route *routes;
    size_t nroutes;

    /* Running (set by pb__input_start). */
    struct pb_engine *e;
    struct pb_loop *loop; /* its own, or the engine's input loop */
    bool own_loop;
    pthread_t thread;
    bool thread_running;
    char *meta_prefix; /* {"input":"...","pipeline":"...","received_at": */
    size_t meta_prefix_len;
    _Atomic bool stopping;             /* stop has begun: no pause/resume, no start */
    _Atomic bool stopped;              /* the plugin's stop has run: submits are refused */
    _Atomic int64_t outstanding;       /* submits whose callback has not run */
    _Atomic int64_t outstanding_bytes; /* their bodies */
    bool started;                      /* loop thread */
    bool paused;                       /* loop thread: told to pause for room */
    struct pb_loop_timer *timer;       /* loop thread: start retries, resume checks */
    int64_t retry_ms;
    /* A singleton input of a cluster runs only on the node holding
     * "input/<pipeline>" (and only while its lease is valid); empty: it
     * always runs. */
    char hold[PB_NAME_MAX + 8];
    bool taken;                       /* loop thread: the hold was had, start begun */
    bool gated;                       /* loop thread: paused while the hold is in doubt */
    struct pb_loop_timer *gate_timer; /* loop thread */

    /* Checkpoints as last committed (loop thread). */
    struct pb_input_ckpt *ckpts;
    size_t nckpts;

    /* What the admin API and metrics show (under lock). */
    pthread_mutex_t lock;
    _Atomic int state; /* enum pb_input_state */
    char *detail;
    char *position;
    _Atomic int64_t lag;
    _Atomic int64_t lag_bytes;
    _Atomic bool finished;
    _Atomic uint64_t nacked;
    struct pb_input_progress progress; /* under lock */
    bool has_progress;                 /* under lock: the input reports files */
};

/* Decode and init the input block of pl (config load; no I/O). allow: the
 * top-level outbound.allow entries, given to the plugin as env.allow. */
int pb__input_load(struct pb_pipeline *pl, const struct pb_node *n, bool once,
                   const struct pb_strlist *allow, struct pb_err *err);
void pb__input_free(struct pb_input *in);

/* Engine start: load checkpoints, give the input its loop (loop is the
 * engine's shared input loop, used unless the plugin wants its own), and
 * call start on it. */
int pb__input_start(struct pb_input *in, struct pb_engine *e, struct pb_loop *loop,
                    struct pb_err *err);
/* Engine stop: call stop on the input's loop and wait (up to timeout) until
 * every submit has had its callback; then stop its own thread, if any. */
void pb__input_stop(struct pb_input *in, int64_t timeout_ms);

const char *pb__input_state_name(enum pb_input_state s);
/* Read the tests' environment knobs (PATCHBAY_TEST_CRASH_BEFORE_ACK). */
void pb__input_test_hooks(void);

#endif
