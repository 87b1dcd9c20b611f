/* dispatch_int.h - the dispatcher's insides, shared by dispatch.c (queues,
 * attempts, results) and route_stage.c (the route stage's attempts).
 * Dispatcher thread only, unless a comment says otherwise. */
#ifndef PB_DISPATCH_INT_H
#define PB_DISPATCH_INT_H

#include "core/engine.h"
#include "core/workers.h"
#include "patchbay/pb_loop.h"

/* A callback posted to the dispatcher thread; the node is the poster's
 * (embedded in what it posts) until fn runs. fn runs with aborting set when
 * the dispatcher is destroyed before its thread took it. */
struct pb__disp_post {
    void (*fn)(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now);
    struct pb__disp_post *next;
};

struct pb_keyq {
    char *key;
    uint64_t hash;
    struct pb_keyq *next;      /* hash chain */
    struct pb_dl *head, *tail; /* admitted, waiting for the key */
};

struct pb_dl {
    int64_t id;
    struct pb_msg *msg;
    struct pb_output *out;
    struct pb_dispatcher *disp;
    struct pb_keyq *kq;
    int attempts; /* made so far */
    bool leased;  /* made (or claimed) with this process's lease */
    int64_t next_at;
    struct pb_dl *next; /* ready queue, key queue or inbox */
    size_t heap_idx;
    char *payload; /* mapped payload of the attempt in flight (NULL: the body) */
    int64_t started_mono_us, started_at;
    struct pb_delivery d;
    char idem[PB_MSG_ID_MAX + PB_NAME_MAX + 2];
    char **tmpl;       /* rendered template fields of the attempt in flight (ntmpls) */
    struct pb_job job; /* the attempt on one of the output's worker threads */
    /* an outcome reported on another thread, on its way to the dispatcher */
    struct pb_loop_node post_node;
    struct pb_outcome posted;
    char posted_error[PB_ERROR_EXCERPT_MAX];
};

struct pb_dispatcher {
    struct pb_engine *e;
    struct pb_loop *loop; /* the engine's; this thread runs it */
    struct pb_http_client *http;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    atomic_bool aborting;
    int64_t stop_deadline_mono_us;

    pthread_mutex_t lock; /* guards inbox, closed and the redo_* list */
    struct pb_dl *inbox_head, *inbox_tail;
    bool closed;

    struct pb_output **all; /* every output, endpoints' virtual ones included */
    size_t nall;
    bool all_dirty;
    atomic_bool endpoints_dirty;

    struct pb_dl **heap; /* retry timers, min-heap on next_at */
    size_t nheap, heapcap;
    size_t inflight;
    int64_t next_expire_at;
    atomic_bool expire_again; /* the last retention pass was full */

    /* Results the store failed to commit (disk full, I/O error), waiting to
     * be submitted again; guarded by lock. While any wait, no attempt starts:
     * the partner would get deliveries the store cannot record. */
    struct result_op *redo_head, *redo_tail;
    size_t unrecorded;  /* results that failed once and are not committed yet */
    int64_t redo_at;    /* next resubmission */
    int64_t redo_delay; /* its backoff, reset once everything is recorded */

    /* Leased deliveries this turn could not keep in memory: released in
     * one op at the end of the turn. */
    int64_t *release;
    size_t nrelease, releasecap;
    int64_t lease; /* the store's epoch: what in-memory deliveries are held by */

    /* Callbacks posted from other threads, run on the dispatcher thread at
     * the start of its next turn (guarded by lock). */
    struct pb__disp_post *posts_head, *posts_tail;
};

/* Any thread: run p->fn on the dispatcher thread soon. */
void pb__disp_post(struct pb_dispatcher *d, struct pb__disp_post *p);
/* Any thread: hand new deliveries (a list linked by next) to the dispatcher. */
void pb__disp_inbox_append(struct pb_dispatcher *d, struct pb_dl *head, struct pb_dl *tail);
/* dl is finished for good: release its key and its memory. */
void pb__disp_finish(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now);
/* Put dl where it waits for its next attempt (next_at). */
void pb__disp_schedule(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now);
/* End dl without a partner attempt (a failed step, ...) in state with reason. */
void pb__disp_settle(struct pb_dispatcher *d, struct pb_dl *dl, enum pb_dstate state,
                     const char *reason, int64_t now);
/* Free dl that never reached an output's memory count. */
void pb__disp_dl_free(struct pb_dl *dl);
/* Is out spilled (its new deliveries are made unleased)? Any thread. */
bool pb__disp_spilled(const struct pb_output *out);
/* A committed delivery of out could not be handed over (out of memory):
 * release it (id; 0 when it was made unleased) so a claim finds it. Any
 * thread. */
void pb__disp_lost(struct pb_dispatcher *d, struct pb_output *out, int64_t id);

/* The ordering key of body with $meta (both taken): *key malloc'd, NULL
 * when the key program gives null or nothing (unordered). */
int pb__disp_key(struct pb_pipeline *pl, jv body, jv meta, char **key, struct pb_err *err);

/* route_stage.c: one attempt of a route delivery. */
void pb__route_attempt(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now);

/* Drop every delivery of out held in memory (a gone sub-output): nothing
 * is recorded; the store has them as they are. */
void pb__disp_drop_all(struct pb_dispatcher *d, struct pb_output *out, int64_t now);
/* dl's attempt ended without an outcome to record (a fan-out took it):
 * free it and whatever waited behind it for its key. */
void pb__disp_end_attempt(struct pb_dispatcher *d, struct pb_dl *dl);
/* suboutput.c: drop and free the gone sub-outputs of parent. */
void pb__subs_reap(struct pb_dispatcher *d, struct pb_output *parent, int64_t now);

/* output.c: the life cycle of outputs. */
void pb__output_maybe_start(struct pb_dispatcher *d, struct pb_output *o, int64_t now,
                            int64_t *wait);
void pb__output_stop(struct pb_output *o);
struct pb_dispatcher *pb__dispatcher_of(struct pb_output *o);

#endif
