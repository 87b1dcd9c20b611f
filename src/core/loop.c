/* loop.c - the event loop (pb_loop.h): epoll for fds, a min-heap of timers
 * on the monotonic clock, and an eventfd that wakes the loop for posts.
 *
 * One thread runs a loop. Watches and timers are only touched on that
 * thread; removing or destroying one from inside a callback marks it dead
 * and frees it at the end of the turn, so an event already returned by
 * epoll_wait for it is skipped rather than delivered to freed memory.
 * Posts are a mutex-guarded list; the first post after the loop took the
 * list writes the eventfd. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "patchbay/pb_loop.h"

#define EVENTS_MAX 64

struct pb_loop_watch {
    struct pb_loop *loop;
    int fd;
    unsigned events;
    pb_loop_fd_cb cb;
    void *arg;
    bool dead;
    struct pb_loop_watch *next_dead;
};

struct pb_loop_timer {
    struct pb_loop *loop;
    pb_loop_timer_cb cb;
    void *arg;
    int64_t due_us; /* monotonic */
    size_t heap_idx;
    bool armed;
    bool dead;
    bool running; /* its callback is on the stack */
    struct pb_loop_timer *next_dead;
};

struct pb_loop {
    int epfd;
    int evfd;
    pthread_t owner;
    bool has_owner;

    pthread_mutex_t lock; /* guards posts, closed, woken */
    struct pb_loop_node *posts_head, *posts_tail;
    bool closed;
    bool woken; /* the eventfd holds a wake-up not yet read */

    struct pb_loop_timer **heap;
    size_t nheap, heapcap;
    size_t ntimers; /* live timers: the heap has a slot for each */

    struct pb_loop_watch *dead_watches;
    struct pb_loop_timer *dead_timers;

    atomic_bool stop;
    int64_t now_ms;
    pb_loop_clock_fn clock;
    void *clock_arg;
};

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void read_clock(struct pb_loop *l)
{
    l->now_ms = l->clock ? l->clock(l->clock_arg) : wall_ms();
}

struct pb_loop *pb_loop_create(struct pb_err *err)
{
    struct pb_loop *l = calloc(1, sizeof(*l));
    if (!l) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->epfd < 0 || l->evfd < 0) {
        pb_err_set(err, PB_EIO, "cannot create the event loop: %s", strerror(errno));
        goto fail;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev) != 0) {
        pb_err_set(err, PB_EIO, "cannot create the event loop: %s", strerror(errno));
        goto fail;
    }
    pthread_mutex_init(&l->lock, NULL);
    atomic_init(&l->stop, false);
    read_clock(l);
    return l;
fail:
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->evfd >= 0)
        close(l->evfd);
    free(l);
    return NULL;
}

static void free_dead(struct pb_loop *l)
{
    for (struct pb_loop_watch *w = l->dead_watches, *n; w; w = n) {
        n = w->next_dead;
        free(w);
    }
    l->dead_watches = NULL;
    for (struct pb_loop_timer *t = l->dead_timers, *n; t; t = n) {
        n = t->next_dead;
        free(t);
    }
    l->dead_timers = NULL;
}

/* Take the whole post list (the caller runs it). */
static struct pb_loop_node *take_posts(struct pb_loop *l)
{
    pthread_mutex_lock(&l->lock);
    struct pb_loop_node *p = l->posts_head;
    l->posts_head = l->posts_tail = NULL;
    pthread_mutex_unlock(&l->lock);
    return p;
}

void pb_loop_destroy(struct pb_loop *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->lock);
    l->closed = true;
    pthread_mutex_unlock(&l->lock);
    /* Cancelled callbacks may post again (refused now) or free what they carry. */
    for (struct pb_loop_node *p = take_posts(l), *n; p; p = n) {
        n = p->next;
        p->cb(p->arg, PB_LOOP_CANCELLED);
    }
    free_dead(l);
    free(l->heap);
    close(l->epfd);
    close(l->evfd);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* ---- fd watches ------------------------------------------------------------------------- */

static uint32_t epoll_events(unsigned events)
{
    return (events & PB_LOOP_READ ? EPOLLIN | EPOLLRDHUP : 0) |
           (events & PB_LOOP_WRITE ? EPOLLOUT : 0);
}

struct pb_loop_watch *pb_loop_watch_add(struct pb_loop *l, int fd, unsigned events,
                                        pb_loop_fd_cb cb, void *arg)
{
    struct pb_loop_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->loop = l;
    w->fd = fd;
    w->events = events;
    w->cb = cb;
    w->arg = arg;
    struct epoll_event ev = {.events = epoll_events(events), .data.ptr = w};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

int pb_loop_watch_modify(struct pb_loop_watch *w, unsigned events)
{
    if (w->events == events)
        return 0;
    struct epoll_event ev = {.events = epoll_events(events), .data.ptr = w};
    if (epoll_ctl(w->loop->epfd, EPOLL_CTL_MOD, w->fd, &ev) != 0)
        return errno == ENOMEM ? PB_ENOMEM : PB_EIO;
    w->events = events;
    return 0;
}

void pb_loop_watch_remove(struct pb_loop_watch *w)
{
    if (!w || w->dead)
        return;
    struct pb_loop *l = w->loop;
    /* The fd may be closed already (EBADF): then epoll forgot it by itself. */
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    w->dead = true;
    w->next_dead = l->dead_watches;
    l->dead_watches = w;
}

/* ---- timers ------------------------------------------------------------------------------ */

static void heap_swap(struct pb_loop *l, size_t a, size_t b)
{
    struct pb_loop_timer *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->heap_idx = a;
    l->heap[b]->heap_idx = b;
}

static void heap_up(struct pb_loop *l, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (l->heap[p]->due_us <= l->heap[i]->due_us)
            break;
        heap_swap(l, p, i);
        i = p;
    }
}

static void heap_down(struct pb_loop *l, size_t i)
{
    for (;;) {
        size_t a = 2 * i + 1, b = a + 1, m = i;
        if (a < l->nheap && l->heap[a]->due_us < l->heap[m]->due_us)
            m = a;
        if (b < l->nheap && l->heap[b]->due_us < l->heap[m]->due_us)
            m = b;
        if (m == i)
            return;
        heap_swap(l, i, m);
        i = m;
    }
}

static void heap_remove(struct pb_loop *l, struct pb_loop_timer *t)
{
    size_t i = t->heap_idx;
    l->nheap--;
    if (i != l->nheap) {
        l->heap[i] = l->heap[l->nheap];
        l->heap[i]->heap_idx = i;
        heap_down(l, i);
        heap_up(l, i);
    }
    t->armed = false;
}

struct pb_loop_timer *pb_loop_timer_create(struct pb_loop *l, pb_loop_timer_cb cb, void *arg)
{
    struct pb_loop_timer *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->loop = l;
    t->cb = cb;
    t->arg = arg;
    /* Room for it now, so that starting it can never fail. */
    if (l->ntimers + 1 > l->heapcap) {
        size_t cap = l->heapcap ? l->heapcap * 2 : 16;
        struct pb_loop_timer **h = realloc(l->heap, cap * sizeof(*h));
        if (!h) {
            free(t);
            return NULL;
        }
        l->heap = h;
        l->heapcap = cap;
    }
    l->ntimers++;
    return t;
}

void pb_loop_timer_start(struct pb_loop_timer *t, int64_t after_ms)
{
    struct pb_loop *l = t->loop;
    if (t->dead)
        return;
    if (after_ms < 0)
        after_ms = 0;
    int64_t due = mono_us() + after_ms * 1000;
    if (t->armed) {
        t->due_us = due;
        heap_down(l, t->heap_idx);
        heap_up(l, t->heap_idx);
        return;
    }
    /* Every live timer reserved its slot at create: nheap < heapcap. */
    t->due_us = due;
    t->heap_idx = l->nheap;
    l->heap[l->nheap++] = t;
    t->armed = true;
    heap_up(l, t->heap_idx);
}

void pb_loop_timer_stop(struct pb_loop_timer *t)
{
    if (t && t->armed)
        heap_remove(t->loop, t);
}

bool pb_loop_timer_armed(const struct pb_loop_timer *t)
{
    return t && t->armed;
}

void pb_loop_timer_destroy(struct pb_loop_timer *t)
{
    if (!t || t->dead)
        return;
    pb_loop_timer_stop(t);
    t->loop->ntimers--;
    t->dead = true;
    t->next_dead = t->loop->dead_timers;
    t->loop->dead_timers = t;
}

/* ---- posts ------------------------------------------------------------------------------- */

static void wake(struct pb_loop *l)
{
    uint64_t one = 1;
    ssize_t n = write(l->evfd, &one, sizeof(one));
    (void)n; /* EAGAIN: the counter is already non-zero, the loop wakes anyway */
}

int pb_loop_post_node(struct pb_loop *l, struct pb_loop_node *n, pb_loop_post_cb cb, void *arg)
{
    n->cb = cb;
    n->arg = arg;
    n->next = NULL;
    pthread_mutex_lock(&l->lock);
    if (l->closed) {
        pthread_mutex_unlock(&l->lock);
        return PB_ESHUTDOWN;
    }
    if (l->posts_tail)
        l->posts_tail->next = n;
    else
        l->posts_head = n;
    l->posts_tail = n;
    bool need_wake = !l->woken;
    l->woken = true;
    pthread_mutex_unlock(&l->lock);
    if (need_wake)
        wake(l);
    return 0;
}

struct heap_post {
    struct pb_loop_node node;
    pb_loop_post_cb cb;
    void *arg;
};

static void heap_post_cb(void *arg, int status)
{
    struct heap_post *hp = arg;
    pb_loop_post_cb cb = hp->cb;
    void *a = hp->arg;
    free(hp);
    cb(a, status);
}

int pb_loop_post(struct pb_loop *l, pb_loop_post_cb cb, void *arg)
{
    struct heap_post *hp = malloc(sizeof(*hp));
    if (!hp)
        return PB_ENOMEM;
    hp->cb = cb;
    hp->arg = arg;
    int rc = pb_loop_post_node(l, &hp->node, heap_post_cb, hp);
    if (rc)
        free(hp);
    return rc;
}

struct sync_wait {
    struct pb_loop_node node;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void sync_cb(void *arg, int status)
{
    struct sync_wait *w = arg;
    (void)status;
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int pb_loop_sync(struct pb_loop *l)
{
    struct sync_wait w = {.done = false};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    int rc = pb_loop_post_node(l, &w.node, sync_cb, &w);
    if (rc == 0) {
        pthread_mutex_lock(&w.lock);
        while (!w.done)
            pthread_cond_wait(&w.cond, &w.lock);
        pthread_mutex_unlock(&w.lock);
    }
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    return rc;
}

void pb_loop_close(struct pb_loop *l)
{
    pthread_mutex_lock(&l->lock);
    l->closed = true;
    pthread_mutex_unlock(&l->lock);
}

void pb_loop_wake(struct pb_loop *l)
{
    pthread_mutex_lock(&l->lock);
    bool need_wake = !l->woken;
    l->woken = true;
    pthread_mutex_unlock(&l->lock);
    if (need_wake)
        wake(l);
}

/* ---- running ----------------------------------------------------------------------------- */

int pb_loop_run_once(struct pb_loop *l, int max_wait_ms)
{
    struct epoll_event evs[EVENTS_MAX];
    int ran = 0;

    l->owner = pthread_self();
    l->has_owner = true;
    int timeout = max_wait_ms;
    pthread_mutex_lock(&l->lock);
    if (l->posts_head)
        timeout = 0;
    pthread_mutex_unlock(&l->lock);
    if (timeout != 0 && l->nheap) {
        int64_t in_us = l->heap[0]->due_us - mono_us();
        int in_ms = in_us <= 0 ? 0 : (int)((in_us + 999) / 1000);
        if (timeout < 0 || in_ms < timeout)
            timeout = in_ms;
    }
    int n = epoll_wait(l->epfd, evs, EVENTS_MAX, timeout);
    if (n < 0 && errno != EINTR)
        return PB_EIO;
    read_clock(l);
    for (int i = 0; i < n; i++) {
        struct pb_loop_watch *w = evs[i].data.ptr;
        if (!w) {
            uint64_t v;
            pthread_mutex_lock(&l->lock);
            l->woken = false;
            ssize_t r = read(l->evfd, &v, sizeof(v));
            (void)r;
            pthread_mutex_unlock(&l->lock);
            continue;
        }
        if (w->dead)
            continue;
        unsigned got = 0;
        if (evs[i].events & (EPOLLIN | EPOLLRDHUP))
            got |= PB_LOOP_READ;
        if (evs[i].events & EPOLLOUT)
            got |= PB_LOOP_WRITE;
        if (evs[i].events & (EPOLLERR | EPOLLHUP))
            got |= PB_LOOP_ERROR;
        w->cb(w, w->fd, got, w->arg);
        ran++;
    }
    for (struct pb_loop_node *p = take_posts(l), *next; p; p = next) {
        next = p->next;
        p->cb(p->arg, PB_LOOP_RUN);
        ran++;
    }
    /* Timers due now; one armed again from its callback for "now" runs next
     * turn, so a timer cannot starve the loop. */
    int64_t now_us = mono_us();
    size_t budget = l->nheap;
    while (budget-- && l->nheap && l->heap[0]->due_us <= now_us) {
        struct pb_loop_timer *t = l->heap[0];
        heap_remove(l, t);
        t->running = true;
        t->cb(t, t->arg);
        t->running = false;
        ran++;
    }
    free_dead(l);
    return ran;
}

void pb_loop_run(struct pb_loop *l)
{
    while (!atomic_exchange(&l->stop, false)) {
        if (pb_loop_run_once(l, -1) < 0) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

void pb_loop_stop(struct pb_loop *l)
{
    atomic_store(&l->stop, true);
    pb_loop_wake(l);
}

int64_t pb_loop_now(const struct pb_loop *l)
{
    return l->now_ms;
}

void pb_loop_set_clock(struct pb_loop *l, pb_loop_clock_fn fn, void *arg)
{
    l->clock = fn;
    l->clock_arg = arg;
    read_clock(l);
}

bool pb_loop_on_thread(const struct pb_loop *l)
{
    return l->has_owner && pthread_equal(l->owner, pthread_self());
}
