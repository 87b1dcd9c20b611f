/* test_loop.c - the event loop: fd watches, timers in due order, posts from
 * other threads, removal from inside callbacks, the clock passed in, and
 * what destroy does with posts still queued. */
#include <pthread.h>
#include <unistd.h>

#include "patchbay/pb_loop.h"
#include "pb_test.h"

struct counter {
    int n;
    int order[16];
    int norder;
};

static void fd_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    struct counter *c = arg;
    char buf[16];
    if (events & PB_LOOP_READ) {
        ssize_t r = read(fd, buf, sizeof(buf));
        (void)r;
    }
    c->n++;
    (void)w;
}

PB_TEST(fd_watch_fires_on_data)
{
    struct pb_err err = {0};
    struct pb_loop *l = pb_loop_create(&err);
    int p[2];
    PB_CHECK(l != NULL);
    PB_EQ_INT(pipe(p), 0);
    struct counter c = {0};
    struct pb_loop_watch *w = pb_loop_watch_add(l, p[0], PB_LOOP_READ, fd_cb, &c);
    PB_CHECK(w != NULL);
    PB_EQ_INT(pb_loop_run_once(l, 0), 0);
    PB_EQ_INT(c.n, 0);
    PB_EQ_INT(write(p[1], "x", 1), 1);
    PB_EQ_INT(pb_loop_run_once(l, 1000), 1);
    PB_EQ_INT(c.n, 1);
    pb_loop_watch_remove(w);
    PB_EQ_INT(write(p[1], "y", 1), 1);
    PB_EQ_INT(pb_loop_run_once(l, 0), 0);
    PB_EQ_INT(c.n, 1);
    close(p[0]);
    close(p[1]);
    pb_loop_destroy(l);
}

struct two_watches {
    struct pb_loop_watch *a, *b;
    int calls;
};

/* Whichever runs first removes the other: the other's event, already
 * returned by epoll in the same turn, must be skipped. */
static void remove_other_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    struct two_watches *t = arg;
    t->calls++;
    pb_loop_watch_remove(w == t->a ? t->b : t->a);
    pb_loop_watch_remove(w);
    (void)fd;
    (void)events;
}

PB_TEST(watch_removed_in_same_turn_is_skipped)
{
    struct pb_loop *l = pb_loop_create(NULL);
    int p[2], q[2];
    PB_EQ_INT(pipe(p), 0);
    PB_EQ_INT(pipe(q), 0);
    struct two_watches t = {0};
    t.a = pb_loop_watch_add(l, p[0], PB_LOOP_READ, remove_other_cb, &t);
    t.b = pb_loop_watch_add(l, q[0], PB_LOOP_READ, remove_other_cb, &t);
    PB_EQ_INT(write(p[1], "x", 1), 1);
    PB_EQ_INT(write(q[1], "x", 1), 1);
    PB_EQ_INT(pb_loop_run_once(l, 1000), 1);
    PB_EQ_INT(t.calls, 1);
    close(p[0]);
    close(p[1]);
    close(q[0]);
    close(q[1]);
    pb_loop_destroy(l);
}

static void timer_cb(struct pb_loop_timer *t, void *arg)
{
    struct counter *c = arg;
    (void)t;
    c->n++;
}

struct ordered {
    struct counter *c;
    int id;
};

static void ordered_cb(struct pb_loop_timer *t, void *arg)
{
    struct ordered *o = arg;
    o->c->order[o->c->norder++] = o->id;
    pb_loop_timer_destroy(t); /* from inside its own callback */
}

PB_TEST(timers_fire_in_due_order)
{
    struct pb_loop *l = pb_loop_create(NULL);
    struct counter c = {0};
    struct ordered o[4];
    int after[4] = {30, 10, 20, 0};
    for (int i = 0; i < 4; i++) {
        o[i] = (struct ordered){&c, i};
        struct pb_loop_timer *t = pb_loop_timer_create(l, ordered_cb, &o[i]);
        PB_CHECK(t != NULL);
        pb_loop_timer_start(t, after[i]);
        PB_CHECK(pb_loop_timer_armed(t));
    }
    for (int turns = 0; turns < 100 && c.norder < 4; turns++)
        pb_loop_run_once(l, 100);
    PB_EQ_INT(c.norder, 4);
    PB_EQ_INT(c.order[0], 3);
    PB_EQ_INT(c.order[1], 1);
    PB_EQ_INT(c.order[2], 2);
    PB_EQ_INT(c.order[3], 0);
    pb_loop_destroy(l);
}

PB_TEST(timer_stop_and_rearm)
{
    struct pb_loop *l = pb_loop_create(NULL);
    struct counter c = {0};
    struct pb_loop_timer *t = pb_loop_timer_create(l, timer_cb, &c);
    pb_loop_timer_start(t, 0);
    pb_loop_timer_stop(t);
    PB_CHECK(!pb_loop_timer_armed(t));
    pb_loop_run_once(l, 20);
    PB_EQ_INT(c.n, 0);
    pb_loop_timer_start(t, 1000);
    pb_loop_timer_start(t, 0); /* re-arming moves it, never duplicates it */
    pb_loop_run_once(l, 500);
    PB_EQ_INT(c.n, 1);
    PB_CHECK(!pb_loop_timer_armed(t));
    pb_loop_run_once(l, 20);
    PB_EQ_INT(c.n, 1);
    pb_loop_timer_destroy(t);
    pb_loop_destroy(l);
}

/* run_once waits no longer than the nearest timer. */
PB_TEST(wait_bounded_by_timer)
{
    struct pb_loop *l = pb_loop_create(NULL);
    struct counter c = {0};
    struct pb_loop_timer *t = pb_loop_timer_create(l, timer_cb, &c);
    pb_loop_timer_start(t, 30);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    while (c.n == 0)
        pb_loop_run_once(l, -1);
    clock_gettime(CLOCK_MONOTONIC, &b);
    int64_t ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
    PB_CHECK(ms >= 29);
    PB_CHECK(ms < 5000);
    pb_loop_timer_destroy(t);
    pb_loop_destroy(l);
}

struct poster {
    struct pb_loop *l;
    int n;
};

static _Atomic int posted_runs;

static void count_post_cb(void *arg, int status)
{
    (void)arg;
    if (status == PB_LOOP_RUN)
        posted_runs++;
}

static void *post_thread(void *arg)
{
    struct poster *p = arg;
    for (int i = 0; i < p->n; i++)
        pb_loop_post(p->l, count_post_cb, NULL);
    return NULL;
}

PB_TEST(posts_from_other_threads_all_run)
{
    struct pb_loop *l = pb_loop_create(NULL);
    struct poster ps = {l, 20000};
    pthread_t th[2];
    posted_runs = 0;
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, post_thread, &ps);
    /* The loop waits with no timeout: only the posts' wake-ups end a wait. */
    while (posted_runs < 40000)
        pb_loop_run_once(l, 2000);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    PB_EQ_INT(posted_runs, 40000);
    pb_loop_destroy(l);
}

static int cancelled;

static void cancel_cb(void *arg, int status)
{
    (void)arg;
    if (status == PB_LOOP_CANCELLED)
        cancelled++;
}

PB_TEST(destroy_cancels_queued_posts_and_close_refuses)
{
    struct pb_loop *l = pb_loop_create(NULL);
    struct pb_loop_node node;
    cancelled = 0;
    PB_EQ_INT(pb_loop_post(l, cancel_cb, NULL), 0);
    PB_EQ_INT(pb_loop_post_node(l, &node, cancel_cb, NULL), 0);
    pb_loop_close(l);
    PB_EQ_INT(pb_loop_post(l, cancel_cb, NULL), PB_ESHUTDOWN);
    pb_loop_destroy(l);
    PB_EQ_INT(cancelled, 2);
}

static int64_t fake_now;
static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

PB_TEST(clock_passed_in)
{
    struct pb_loop *l = pb_loop_create(NULL);
    fake_now = 1700000000000;
    pb_loop_set_clock(l, fake_clock, NULL);
    PB_EQ_INT(pb_loop_now(l), 1700000000000);
    fake_now += 5000;
    PB_EQ_INT(pb_loop_now(l), 1700000000000); /* one instant per turn */
    pb_loop_run_once(l, 0);
    PB_EQ_INT(pb_loop_now(l), 1700000005000);
    PB_CHECK(pb_loop_on_thread(l));
    pb_loop_destroy(l);
}

static void *stopper(void *arg)
{
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    pb_loop_stop(arg);
    return NULL;
}

PB_TEST(stop_from_another_thread)
{
    struct pb_loop *l = pb_loop_create(NULL);
    pthread_t th;
    pthread_create(&th, NULL, stopper, l);
    pb_loop_run(l); /* returns once stopped */
    pthread_join(th, NULL);
    PB_CHECK(pb_loop_on_thread(l));
    pb_loop_destroy(l);
}

int main(void)
{
    return pb_test_main();
}

/* pb_loop_sync returns once what was posted before it has run: the engine
 * starts the listener only after the inputs' starts ran. */
static void *runner(void *arg)
{
    pb_loop_run(arg);
    return NULL;
}

PB_TEST(sync_waits_for_earlier_posts)
{
    struct pb_loop *l = pb_loop_create(NULL);
    pthread_t th;
    posted_runs = 0;
    for (int i = 0; i < 1000; i++)
        PB_EQ_INT(pb_loop_post(l, count_post_cb, NULL), 0);
    pthread_create(&th, NULL, runner, l);
    PB_EQ_INT(pb_loop_sync(l), 0);
    PB_EQ_INT(posted_runs, 1000);
    pb_loop_stop(l);
    pthread_join(th, NULL);
    pb_loop_close(l);
    PB_EQ_INT(pb_loop_sync(l), PB_ESHUTDOWN);
    pb_loop_destroy(l);
}
