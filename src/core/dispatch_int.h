/* dispatch_int.h - the dispatcher's insides: dispatch.c (the thread, the
 * inbox, a delivery's life), attempt.c (attempts and results), pagein.c
 * (spilled outputs), route_stage.c, suboutput.c and output.c.
 * Dispatcher thread only, unless a comment says otherwise. */
#ifndef PB_DISPATCH_INT_H
#define PB_DISPATCH_INT_H

#include "core/engine.h"
#include "core/sched.h"
#include "core/workers.h"
#include "patchbay/pb_loop.h"

/* A callback posted to the dispatcher thread; the node is the poster's
 * (embedded in what it posts) until fn runs. fn runs with aborting set when
 * the dispatcher is destroyed before its thread took it. */
struct pb__disp_post {
    void (*fn)(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now);
    struct pb__disp_post *next;
};

/* One delivery in memory. si comes first: the scheduler's item is the
 * delivery (pb__dl_of). */
struct pb_dl {
    struct pb_sched_item si; /* si.next_at: when the next attempt is due */
    int64_t id;
    struct pb_msg *msg;
    struct pb_output *out;
    struct pb_dispatcher *disp;
    int attempts;       /* made so far */
    int free_attempts;  /* of which refused for rate (429): they do not count toward max_attempts */
    bool probe;         /* the attempt in flight is the half-open breaker's probe */
    bool leased;        /* made (or claimed) with this process's lease */
    struct pb_dl *next; /* inbox or claim list */
    char *payload;      /* mapped payload of the attempt in flight (NULL: the body) */
    int64_t started_mono_us, started_at;
    struct pb_delivery d;
    char idem[PB_MSG_ID_MAX + PB_NAME_MAX + 2];
    char **tmpl;          /* rendered template fields of the attempt in flight (ntmpls) */
    char traceparent[56]; /* of the attempt in flight: a span of the message's trace */
    char *tracestate;     /* the message's, for the attempt in flight; NULL: none */
    struct pb_job job;    /* the attempt on one of the output's worker threads */
    /* an outcome reported on another thread, on its way to the dispatcher */
    struct pb_loop_node post_node;
    struct pb_outcome posted;
    char posted_error[PB_ERROR_EXCERPT_MAX];
    char *posted_answer; /* its answer excerpt (allocated), or NULL */
};

static inline struct pb_dl *pb__dl_of(struct pb_sched_item *it)
{
    return (struct pb_dl *)it;
}

/* The store's keys for process steps (route_stage.c). */
struct pb__disp_keys {
    struct pb_route_keys k; /* first */
    struct pb_dispatcher *d;
};

struct pb_dispatcher {
    struct pb_engine *e;
    struct pb__disp_keys keys;
    bool lease_ok;        /* dispatcher thread: the store's lease held at the last turn */
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

    struct pb_output **all; /* every output, sub-outputs included */
    size_t nall;
    bool all_dirty;

    struct pb_sched sched; /* retry timers; each output's queues are its sq */
    size_t inflight;       /* attempts in flight, every output */
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

/* ---- dispatch.c: the thread, the inbox, a delivery's life ---------------------------------- */

/* Any thread: run p->fn on the dispatcher thread soon. */
void pb__disp_post(struct pb_dispatcher *d, struct pb__disp_post *p);
/* Any thread: hand new deliveries (a list linked by next) to the dispatcher. */
void pb__disp_inbox_append(struct pb_dispatcher *d, struct pb_dl *head, struct pb_dl *tail);
/* Take dl into memory (from the inbox or a claim): counted in its output's
 * inmem, keyed, and scheduled for si.next_at, or settled at once. */
void pb__disp_admit(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now);
/* dl is finished for good: release its key and its memory. */
void pb__disp_finish(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now);
/* Put dl where it waits for its next attempt (si.next_at). */
void pb__disp_schedule(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now);
/* End dl without a partner attempt (a failed step, ...) in state with reason. */
void pb__disp_settle(struct pb_dispatcher *d, struct pb_dl *dl, enum pb_dstate state,
                     const char *reason, int64_t now);
/* Free dl that never reached an output's memory count. */
void pb__disp_dl_free(struct pb_dl *dl);
/* Free what dl's last attempt built (payload, rendered templates). */
void pb__dl_clear_attempt(struct pb_dl *dl);
/* An attempt of o taken from its queue is no longer in flight. */
void pb__disp_attempt_ended(struct pb_dispatcher *d, struct pb_output *o);
/* dl's attempt ended without an outcome to record (a fan-out took it):
 * free it and whatever waited behind it for its key. */
void pb__disp_end_attempt(struct pb_dispatcher *d, struct pb_dl *dl);
/* Drop every delivery of out held in memory (a gone sub-output): nothing
 * is recorded; the store has them as they are. */
void pb__disp_drop_all(struct pb_dispatcher *d, struct pb_output *out, int64_t now);
/* The ordering key of body with $meta (both taken): *key malloc'd, NULL
 * when the key program gives null or nothing (unordered). */
int pb__disp_key(struct pb_pipeline *pl, jv body, jv meta, char **key, struct pb_err *err);

/* ---- attempt.c: attempts and their results --------------------------------------------------- */

/* Start what o may start now: attempts one by one, or batches for outputs
 * with deliver_batch; lowers *wait to when more may start. */
void pb__disp_start(struct pb_dispatcher *d, struct pb_output *o, int64_t now, int64_t *wait);
/* Record dl's attempt (or local end) in state, with the partner's answer
 * (answer[0..answer_len), NULL: none) kept as an excerpt. */
void pb__disp_submit_result(struct pb_dispatcher *d, struct pb_dl *dl, enum pb_dstate state,
                            int status, int64_t latency_ms, const char *error, const void *answer,
                            size_t answer_len);
/* True while failed results wait to be recorded (no attempt may start);
 * submits them again once their backoff is over (now < 0: at once). */
bool pb__disp_redo_results(struct pb_dispatcher *d, int64_t now, int64_t *wait);
/* Free results still waiting (the dispatcher is destroyed). */
void pb__disp_results_cleanup(struct pb_dispatcher *d);
/* o's flow control applied to its queue and shown to readers (metrics,
 * the admin API). */
void pb__disp_flow_publish(struct pb_output *o, int64_t now);

/* cluster_flow.c: tell the other nodes of a cluster what o's breaker or
 * partner says (the write is not waited for). */
void pb__cluster_flow_publish(struct pb_dispatcher *d, struct pb_output *o,
                              const struct pb_flow_share *sh);

/* ---- pagein.c: spilled outputs and claims ------------------------------------------------------
 */

/* Claim o's pending deliveries from the store when it is spilled and has
 * room; lowers *wait while more is to come. */
void pb__disp_page_in(struct pb_dispatcher *d, struct pb_output *o, int64_t now, int64_t *wait);
/* A leased delivery this process will not keep in memory: its lease is
 * dropped at the end of the turn (pb__disp_flush_releases). */
void pb__disp_release_later(struct pb_dispatcher *d, struct pb_dl *dl);
void pb__disp_flush_releases(struct pb_dispatcher *d);
/* The store holds pending deliveries of out that no claim may have seen
 * yet (made unleased, released): out is spilled until a claim after this
 * comes back short. Any thread. */
void pb__disp_store_has_more(struct pb_output *out);
/* Is out spilled (its new deliveries are made unleased)? Any thread. */
bool pb__disp_spilled(const struct pb_output *out);
/* A committed delivery of out could not be handed over (out of memory):
 * release it (id; 0 when it was made unleased) so a claim finds it. Any
 * thread. */
void pb__disp_lost(struct pb_dispatcher *d, struct pb_output *out, int64_t id);

/* ---- elsewhere ---------------------------------------------------------------------------------
 */

/* route_stage.c: the store's keys for process steps, at create. */
void pb__disp_keys_init(struct pb_dispatcher *d);
/* route_stage.c: one attempt of a route delivery, taken from the router's
 * queue; it ends with pb__disp_attempt_ended on every path. */
void pb__route_attempt(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now);
/* suboutput.c: drop and free the gone sub-outputs of parent. */
void pb__subs_reap(struct pb_dispatcher *d, struct pb_output *parent, int64_t now);

/* output.c: the life cycle of outputs. */
void pb__output_maybe_start(struct pb_dispatcher *d, struct pb_output *o, int64_t now,
                            int64_t *wait);
void pb__output_stop(struct pb_output *o);
struct pb_dispatcher *pb__dispatcher_of(struct pb_output *o);

#endif
