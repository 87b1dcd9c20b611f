/* tail.c - the live tail's ring (tail.h): sampled per pipeline by a token
 * bucket, bounded, allocated when someone first watches.
 *
 * Threads: producers (the store's writer and syncer threads) push; admin
 * workers and the tail server read. One mutex guards everything but the
 * watch deadline and the notify flag, which are atomics. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/tail.h"

const char *const pb_tail_kind_names[PB_TAIL_KIND_COUNT] = {"received", "delivered", "retry",
                                                            "dead", "filtered"};

struct bucket {
    double tokens;
    int64_t at;       /* last refill, unix ms */
    uint64_t skipped; /* since the pipeline's last recorded event */
};

struct pb_tail {
    pthread_mutex_t lock;
    size_t cap;
    int rate;
    struct pb_tail_event *ring; /* cap events, by seq % cap; NULL until watched */
    uint64_t last;              /* seq of the newest event */
    size_t npl;
    struct bucket *buckets;
    _Atomic int64_t watched_until;
    atomic_bool armed;
    void (*notify)(void *arg);
    void *notify_arg;
};

struct pb_tail *pb_tail_create(size_t npipelines, size_t capacity, int rate)
{
    struct pb_tail *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cap = capacity ? capacity : PB_TAIL_CAPACITY;
    t->rate = rate > 0 ? rate : PB_TAIL_RATE;
    t->npl = npipelines;
    t->buckets = calloc(npipelines ? npipelines : 1, sizeof(*t->buckets));
    if (!t->buckets || pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t->buckets);
        free(t);
        return NULL;
    }
    for (size_t i = 0; i < npipelines; i++)
        t->buckets[i].tokens = t->rate;
    atomic_init(&t->watched_until, 0);
    atomic_init(&t->armed, false);
    return t;
}

void pb_tail_destroy(struct pb_tail *t)
{
    if (!t)
        return;
    pthread_mutex_destroy(&t->lock);
    free(t->ring);
    free(t->buckets);
    free(t);
}

bool pb_tail_watched(const struct pb_tail *t, int64_t now)
{
    return t && now < atomic_load_explicit(&t->watched_until, memory_order_relaxed);
}

void pb_tail_watch(struct pb_tail *t, int64_t now)
{
    pthread_mutex_lock(&t->lock);
    if (!t->ring)
        t->ring = calloc(t->cap, sizeof(*t->ring));
    /* Without memory for the ring nothing is recorded: readers see no events. */
    if (t->ring)
        atomic_store(&t->watched_until, now + PB_TAIL_WATCH_MS);
    pthread_mutex_unlock(&t->lock);
}

/* Under the lock: may pipeline pl record an event at `at`? */
static bool take_token(struct pb_tail *t, size_t pl, int64_t at)
{
    struct bucket *b = &t->buckets[pl];
    if (at > b->at) {
        b->tokens += (double)(at - b->at) * t->rate / 1000.0;
        if (b->tokens > t->rate)
            b->tokens = t->rate;
        b->at = at;
    }
    if (b->tokens < 1) {
        b->skipped++;
        return false;
    }
    b->tokens -= 1;
    return true;
}

void pb_tail_push(struct pb_tail *t, const struct pb_tail_event *ev)
{
    if (!t || ev->pipeline_index >= t->npl)
        return;
    pthread_mutex_lock(&t->lock);
    if (!t->ring || !take_token(t, ev->pipeline_index, ev->at)) {
        pthread_mutex_unlock(&t->lock);
        return;
    }
    struct pb_tail_event *slot = &t->ring[(t->last + 1) % t->cap];
    *slot = *ev;
    if (slot->text_len > sizeof(slot->text))
        slot->text_len = sizeof(slot->text);
    slot->seq = ++t->last;
    slot->skipped = t->buckets[ev->pipeline_index].skipped;
    t->buckets[ev->pipeline_index].skipped = 0;
    pthread_mutex_unlock(&t->lock);
    if (atomic_load_explicit(&t->armed, memory_order_relaxed) &&
        atomic_exchange(&t->armed, false) && t->notify)
        t->notify(t->notify_arg);
}

size_t pb_tail_read(struct pb_tail *t, uint64_t after,
                    bool (*keep)(void *arg, const struct pb_tail_event *ev), void *arg,
                    struct pb_tail_event *out, size_t max, uint64_t *next, uint64_t *lost)
{
    size_t n = 0;
    pthread_mutex_lock(&t->lock);
    uint64_t oldest = t->last >= t->cap ? t->last - t->cap + 1 : 1;
    *lost = 0;
    if (after > t->last)
        after = t->last; /* a cursor from before a restart */
    if (t->ring && after + 1 < oldest) {
        *lost = oldest - after - 1;
        after = oldest - 1;
    }
    uint64_t seq = after;
    while (t->ring && seq < t->last && n < max) {
        seq++;
        const struct pb_tail_event *ev = &t->ring[seq % t->cap];
        if (!keep || keep(arg, ev))
            out[n++] = *ev;
    }
    *next = seq;
    pthread_mutex_unlock(&t->lock);
    return n;
}

uint64_t pb_tail_head(struct pb_tail *t)
{
    pthread_mutex_lock(&t->lock);
    uint64_t h = t->last;
    pthread_mutex_unlock(&t->lock);
    return h;
}

void pb_tail_set_notify(struct pb_tail *t, void (*fn)(void *arg), void *arg)
{
    t->notify = fn;
    t->notify_arg = arg;
}

void pb_tail_arm(struct pb_tail *t)
{
    atomic_store(&t->armed, true);
}

/* ---- the engine's producers ---------------------------------------------------------------- */

/* Length of s cut to at most max bytes without splitting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

void pb__tail_received(struct pb_tail *t, struct pb_pipeline *pl, const struct pb_msg *m)
{
    int64_t now = pb_now_ms();
    if (!pb_tail_watched(t, now))
        return;
    struct pb_tail_event ev = {
        .at = now,
        .kind = PB_TAIL_RECEIVED,
        .pipeline_index = pl->index,
        .pipeline = pl->name,
        .body_len = m->len,
    };
    snprintf(ev.msg_id, sizeof(ev.msg_id), "%s", m->id);
    ev.text_len = utf8_cut(m->body, m->len, sizeof(ev.text));
    memcpy(ev.text, m->body, ev.text_len);
    pb_tail_push(t, &ev);
}

void pb__tail_result(struct pb_tail *t, struct pb_output *o, const char *msg_id,
                     const struct pb_op_result *r)
{
    int64_t now = pb_now_ms();
    if (!pb_tail_watched(t, now) || o->is_route)
        return;
    enum pb_tail_kind kind;
    switch (r->state) {
    case PB_DSTATE_DELIVERED:
        kind = PB_TAIL_DELIVERED;
        break;
    case PB_DSTATE_PENDING:
        kind = PB_TAIL_RETRY;
        break;
    case PB_DSTATE_DEAD:
        kind = PB_TAIL_DEAD;
        break;
    case PB_DSTATE_FILTERED:
        kind = PB_TAIL_FILTERED;
        break;
    default:
        return;
    }
    struct pb_tail_event ev = {
        .at = now,
        .kind = kind,
        .pipeline_index = o->pl->index,
        .pipeline = o->pl->name,
        .delivery_id = r->delivery_id,
        .attempt = r->attempt,
        .status = r->status,
        .latency_ms = r->latency_ms,
    };
    snprintf(ev.msg_id, sizeof(ev.msg_id), "%s", msg_id);
    snprintf(ev.output, sizeof(ev.output), "%s", o->name);
    if (r->error) {
        ev.text_len = utf8_cut(r->error, strlen(r->error), sizeof(ev.text));
        memcpy(ev.text, r->error, ev.text_len);
    }
    pb_tail_push(t, &ev);
}
