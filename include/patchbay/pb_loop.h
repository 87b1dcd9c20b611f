/* pb_loop.h - the event loop: fd watches, timers, and callbacks posted from
 * any thread.
 *
 * A loop is run by one thread (its owner); watches and timers are created,
 * changed and destroyed on that thread only, and their callbacks run there.
 * pb_loop_post() and pb_loop_wake() may be called from any thread.
 *
 * Time comes from the loop: pb_loop_now() is the wall clock (unix ms) read
 * once per turn, so code driven by the loop sees one instant per turn and
 * can be tested with a clock of its own (pb_loop_set_clock). Timers are
 * armed on the monotonic clock, so a wall-clock jump neither fires nor
 * starves them.
 *
 * Ownership: the caller owns watches and timers and destroys them before
 * the loop. Posted callbacks still queued when the loop is destroyed run
 * then, with PB_LOOP_CANCELLED, so what they carry can be freed; "if post
 * fails, the callback never runs". */
#ifndef PB_LOOP_H
#define PB_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "pb_err.h"

struct pb_loop;
struct pb_loop_watch;
struct pb_loop_timer;

enum {
    PB_LOOP_READ = 1u << 0,
    PB_LOOP_WRITE = 1u << 1,
    PB_LOOP_ERROR = 1u << 2, /* error or hang-up; reported whatever was asked */
};

/* status of a posted callback */
enum { PB_LOOP_RUN = 0, PB_LOOP_CANCELLED = 1 };

typedef void (*pb_loop_fd_cb)(struct pb_loop_watch *w, int fd, unsigned events, void *arg);
typedef void (*pb_loop_timer_cb)(struct pb_loop_timer *t, void *arg);
typedef void (*pb_loop_post_cb)(void *arg, int status);
/* A clock for tests: returns unix ms. */
typedef int64_t (*pb_loop_clock_fn)(void *arg);

struct pb_loop *pb_loop_create(struct pb_err *err);
/* Runs posted callbacks still queued with PB_LOOP_CANCELLED, then frees.
 * Watches and timers must be gone. Accepts NULL. */
void pb_loop_destroy(struct pb_loop *l);

/* Watch fd for events (PB_LOOP_READ | PB_LOOP_WRITE). NULL on failure. */
struct pb_loop_watch *pb_loop_watch_add(struct pb_loop *l, int fd, unsigned events,
                                        pb_loop_fd_cb cb, void *arg);
int pb_loop_watch_modify(struct pb_loop_watch *w, unsigned events);
/* Stop watching; safe from inside the watch's own callback. Accepts NULL. */
void pb_loop_watch_remove(struct pb_loop_watch *w);

struct pb_loop_timer *pb_loop_timer_create(struct pb_loop *l, pb_loop_timer_cb cb, void *arg);
/* (Re)arm to fire once, after_ms from now (0: on the next turn). */
void pb_loop_timer_start(struct pb_loop_timer *t, int64_t after_ms);
void pb_loop_timer_stop(struct pb_loop_timer *t);
bool pb_loop_timer_armed(const struct pb_loop_timer *t);
/* Safe from inside the timer's own callback. Accepts NULL. */
void pb_loop_timer_destroy(struct pb_loop_timer *t);

/* Any thread: run cb(arg, PB_LOOP_RUN) on the loop thread soon, in post
 * order. PB_ENOMEM or PB_ESHUTDOWN (after pb_loop_close) and cb never runs. */
int pb_loop_post(struct pb_loop *l, pb_loop_post_cb cb, void *arg);
/* A post whose node the caller embeds in what it posts, so it cannot fail
 * for want of memory: PB_ESHUTDOWN after pb_loop_close is the only error.
 * The node is the loop's from the call until cb runs. */
struct pb_loop_node {
    pb_loop_post_cb cb;
    void *arg;
    struct pb_loop_node *next;
};
int pb_loop_post_node(struct pb_loop *l, struct pb_loop_node *n, pb_loop_post_cb cb, void *arg);
/* Any thread but the loop's: wait until what was posted before has run
 * (on the loop, or cancelled). PB_ESHUTDOWN after pb_loop_close. */
int pb_loop_sync(struct pb_loop *l);
/* Any thread: refuse later posts (PB_ESHUTDOWN); queued ones still run. */
void pb_loop_close(struct pb_loop *l);
/* Any thread: make a pb_loop_run_once() waiting now return soon. */
void pb_loop_wake(struct pb_loop *l);

/* One turn: wait up to max_wait_ms (-1: until something happens; 0: not at
 * all) for fds, timers or posts, then run what is due. Returns the number
 * of callbacks run, or a negative PB_E* code. */
int pb_loop_run_once(struct pb_loop *l, int max_wait_ms);
/* Turns until pb_loop_stop(). */
void pb_loop_run(struct pb_loop *l);
/* Any thread: make pb_loop_run() return after the current turn. */
void pb_loop_stop(struct pb_loop *l);

/* The wall clock (unix ms) as of the start of this turn. */
int64_t pb_loop_now(const struct pb_loop *l);
/* Tests: take the time from fn instead of the system clock. Timers still
 * wait on the monotonic clock; pb_loop_now() and what is scheduled on it
 * follow fn. */
void pb_loop_set_clock(struct pb_loop *l, pb_loop_clock_fn fn, void *arg);
/* True on the thread running the loop now. */
bool pb_loop_on_thread(const struct pb_loop *l);

#endif
