/* tail.h - the live tail: a bounded, sampled ring of what happens to
 * messages now (received, delivered, retried, dead-lettered), for the
 * dashboard's live tail (tail.c; served by src/admin/tail_api.c).
 *
 * Recording costs one atomic load per event while nobody watches: events
 * are kept only while a client has asked for them within
 * PB_TAIL_WATCH_MS. Each pipeline records at most PB_TAIL_RATE events a
 * second (a token bucket); what it skips is counted and reported with its
 * next recorded event, so a reader knows how sampled the stream is. The
 * ring holds the newest PB_TAIL_CAPACITY events; a reader that falls
 * further behind learns how many it lost.
 *
 * Threads: events are pushed from the store's writer and syncer threads
 * (commit callbacks) and read by admin workers and the tail server thread;
 * one mutex guards the ring. A reader can ask to be told of the next push
 * (pb_tail_arm): the notify callback then runs once, on the pushing thread,
 * outside the lock. */
#ifndef PB_CORE_TAIL_H
#define PB_CORE_TAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/pb_store.h"

#define PB_TAIL_CAPACITY 1024
#define PB_TAIL_RATE 50        /* events a second per pipeline, at most */
#define PB_TAIL_WATCH_MS 30000 /* recording goes on this long after a reader asked */
#define PB_TAIL_TEXT_MAX 240   /* bytes of a body excerpt or error kept */

enum pb_tail_kind {
    PB_TAIL_RECEIVED = 0, /* a message committed (its deliveries made) */
    PB_TAIL_DELIVERED,    /* an attempt the partner took */
    PB_TAIL_RETRY,        /* an attempt failed; another is scheduled */
    PB_TAIL_DEAD,         /* a delivery went to the dead-letter queue */
    PB_TAIL_FILTERED,     /* a delivery dropped on purpose (an output's map) */
    PB_TAIL_KIND_COUNT,
};
extern const char *const pb_tail_kind_names[PB_TAIL_KIND_COUNT];

struct pb_tail_event {
    uint64_t seq;     /* set by push: 1, 2, 3... */
    int64_t at;       /* unix ms */
    uint64_t skipped; /* set by push: events of the pipeline skipped since its previous one */
    enum pb_tail_kind kind;
    size_t pipeline_index;
    const char *pipeline;                           /* borrowed for the engine's life */
    char output[PB_NAME_MAX_STORE + PB_SUB_ID_MAX]; /* "" for RECEIVED; "out/sub" for a
                                                     * sub-output (copied: a deleted
                                                     * one is freed) */
    char msg_id[PB_MSG_ID_MAX];
    int64_t delivery_id;
    int attempt;
    int status;
    int64_t latency_ms;
    size_t body_len; /* RECEIVED: the whole body's size */
    /* RECEIVED: the body's first bytes; otherwise the attempt's error */
    char text[PB_TAIL_TEXT_MAX];
    size_t text_len;
};

struct pb_tail;

/* npipelines token buckets; rate events a second each (0: PB_TAIL_RATE);
 * capacity events (0: PB_TAIL_CAPACITY). NULL on ENOMEM. */
struct pb_tail *pb_tail_create(size_t npipelines, size_t capacity, int rate);
void pb_tail_destroy(struct pb_tail *t);

/* Is anyone watching at now (unix ms)? Producers check before building an
 * event. Any thread, lock-free. */
bool pb_tail_watched(const struct pb_tail *t, int64_t now);
/* A reader asked at now: keep recording for PB_TAIL_WATCH_MS more. */
void pb_tail_watch(struct pb_tail *t, int64_t now);
/* Record ev (copied; seq and skipped are set) unless its pipeline is over
 * its rate at ev->at, in which case it is counted as skipped. */
void pb_tail_push(struct pb_tail *t, const struct pb_tail_event *ev);

/* Events with seq > after for which keep(arg, ev) is true (NULL: all), in
 * order, at most max, into out. *next: the seq to continue after (the
 * last event looked at, matching or not); *lost: events after `after` the
 * ring no longer holds. Returns how many were copied. */
size_t pb_tail_read(struct pb_tail *t, uint64_t after,
                    bool (*keep)(void *arg, const struct pb_tail_event *ev), void *arg,
                    struct pb_tail_event *out, size_t max, uint64_t *next, uint64_t *lost);
/* The newest seq (0: none yet). */
uint64_t pb_tail_head(struct pb_tail *t);

/* Call fn(arg) once after the next push (from the pushing thread, outside
 * the lock). fn is set once, before any arm. */
void pb_tail_set_notify(struct pb_tail *t, void (*fn)(void *arg), void *arg);
void pb_tail_arm(struct pb_tail *t);

/* The engine's producers (cheap when nobody watches). */
struct pb_pipeline;
struct pb_output;
struct pb_msg;
/* A message of pl committed (writer or syncer thread). */
void pb__tail_received(struct pb_tail *t, struct pb_pipeline *pl, const struct pb_msg *m);
/* A delivery result of o committed (writer or syncer thread). */
void pb__tail_result(struct pb_tail *t, struct pb_output *o, const char *msg_id,
                     const struct pb_op_result *r);

#endif
