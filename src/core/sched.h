/* sched.h - when each delivery in memory may start its next attempt
 * (sched.c): ready queues, a timer heap of retries, per-key order, rate
 * limits (one bucket, or one per rate key), concurrency, pauses, and the
 * gates flow control sets (a hold, a pace between starts).
 *
 * Pure bookkeeping: the clock is passed in and nothing blocks, so it is
 * unit-tested without sleeping (tests/unit/test_sched.c). The dispatcher
 * owns one pb_sched and one pb_sched_q per output, and embeds a
 * pb_sched_item in each delivery; all of it on the dispatcher thread. */
#ifndef PB_CORE_SCHED_H
#define PB_CORE_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "patchbay/pb_conf.h"

struct pb_sched_q;
struct pb_sched_key;
struct pb_sched_rkeys;

struct pb_sched_item {
    int64_t next_at; /* unix ms the next attempt is due */
    struct pb_sched_q *q;
    struct pb_sched_item *next; /* in a ready or key queue */
    struct pb_sched_key *key;   /* the key it holds (or waits for); NULL: unordered */
    size_t heap_idx;
    bool in_heap;
    bool waiting; /* queued behind another item of its key */
    /* Its rate-limit key when the output limits per key (owned by whoever
     * owns the item, who frees it); NULL: the output's one bucket. */
    char *rkey;
};

/* One output's queues. Zeroed is empty; set rate, concurrency, paused. */
struct pb_sched_q {
    struct pb_sched_item *ready_head, *ready_tail;
    size_t nready;
    struct pb_sched_key **keys; /* hash table of keys held */
    size_t nkeys, keycap;
    struct pb_rate rate; /* {0, 0}: no limit */
    double tokens;
    int64_t tokens_at;
    size_t concurrency; /* attempts in flight at most (0: none start) */
    size_t inflight;
    bool paused; /* nothing starts (a disabled sub-output) */
    /* Flow control (flow.c sets them; zero: no gate). */
    int64_t not_before; /* nothing starts before this unix ms (a hold, an open breaker) */
    double pace_ms;     /* > 0: starts at least this far apart (a partner's pace) */
    double pace_tat;    /* when the next start may come at that pace */
    /* With max_rkeys > 0, rate is per item rkey, with at most max_rkeys
     * buckets (the least recently used goes first, starting again full). */
    size_t max_rkeys;
    struct pb_sched_rkeys *rkeys;
    struct pb_sched *sched; /* set by admit */
};

struct pb_sched {
    struct pb_sched_item **heap; /* waiting for next_at */
    size_t nheap, heapcap;
};

/* Take it in (next_at set): key NULL for unordered, or the key whose items
 * go one at a time, in the order they were admitted, retries included.
 * PB_ENOMEM when the key cannot be kept: it was not taken. */
int pb_sched_admit(struct pb_sched *s, struct pb_sched_q *q, struct pb_sched_item *it,
                   const char *key, int64_t now);
/* Wait until it->next_at (a retry); it keeps its key. */
void pb_sched_later(struct pb_sched *s, struct pb_sched_item *it, int64_t now);
/* Move what is due at now onto the ready queues. */
void pb_sched_due(struct pb_sched *s, int64_t now);
/* The next item of q allowed to start now (not paused, under its
 * concurrency, with a rate token), off the ready queue and counted in
 * flight; or NULL, lowering *wait_ms to when a token comes if that is what
 * it waits for. */
struct pb_sched_item *pb_sched_take(struct pb_sched_q *q, int64_t now, int64_t *wait_ms);
/* An attempt of q ended: one fewer in flight. */
void pb_sched_ended(struct pb_sched_q *q);
/* it is finished for good: the next item waiting for its key becomes ready
 * (or waits for its own next_at). */
void pb_sched_finish(struct pb_sched *s, struct pb_sched_item *it, int64_t now);
/* Milliseconds until the earliest timer (0 when due), or -1 when none. */
int64_t pb_sched_next_due(const struct pb_sched *s, int64_t now);
/* Take every item of q out (ready, waiting for a key or a timer), calling
 * fn on each: a gone sub-output, or the end. Items in flight are not q's to
 * drop; their keys go when they finish. */
void pb_sched_drain(struct pb_sched *s, struct pb_sched_q *q,
                    void (*fn)(struct pb_sched_item *it, void *arg), void *arg);
/* Buckets held for rate keys (tests, metrics). */
size_t pb_sched_rkeys_count(const struct pb_sched_q *q);
/* Free q's key table (q drained, nothing in flight). */
void pb_sched_q_cleanup(struct pb_sched_q *q);
void pb_sched_cleanup(struct pb_sched *s);

#endif
