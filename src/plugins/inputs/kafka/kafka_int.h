/* kafka_int.h - the kafka input's state, shared by its two halves: kafka.c
 * (the plugin: taking messages, submitting them, the consumer's life cycle)
 * and kafka_group.c (partitions, offset commits, rebalances, reading again
 * after a failed commit).
 *
 * Threads: everything here belongs to the input's own loop thread (librdkafka's
 * callbacks are served there by rd_kafka_consumer_poll); destroy uses it
 * after that thread is gone. */
#ifndef PB_KAFKA_INT_H
#define PB_KAFKA_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "kafka_common.h"
#include "kafka_track.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_plugin.h"

#define TICK_MS 100
#define HOUSEKEEPING_TICKS 10     /* every second: commit resends, retries */
#define REVOKE_WAIT_MS 30000      /* a revocation waits this long for batches in flight */
#define COMMIT_RESEND_MS 5000     /* an unanswered commit is sent again after this */
#define FINAL_COMMIT_WAIT_MS 5000 /* destroy: the last commit */
#define CLOSE_WAIT_MS 10000       /* destroy: leaving the group */
#define SEEK_WAIT_MS 2000
#define ERROR_LOG_EVERY_MS 10000
#define BACKOFF_MIN_MS 500 /* after a failed commit in patchbay, doubling ... */
#define BACKOFF_MAX_MS 30000

/* One partition this member has (or had) assigned. Kept until destroy, so
 * a batch may refer to it; epoch tells whether what it refers to is still
 * current. */
struct part {
    char *topic;
    int32_t partition;
    struct kt_part t;    /* batches in flight, the commit offset, the epoch */
    bool assigned;       /* ours now */
    bool revoked;        /* being given up: nothing more is taken */
    bool rewind;         /* a seek back is owed: nothing is taken until it is done */
    int64_t rewind_to;   /* ... to this offset */
    int64_t next;        /* offset after the last message taken; -1 unknown */
    int64_t commit_sent; /* the last commit sent to the group; -1 none */
    int64_t committed;   /* the group confirmed it; -1 none */
    int64_t sent_at_ms;  /* monotonic */
    int64_t lag;         /* from the statistics; -1 unknown */
};

/* A message taken off the queue, waiting to be submitted. */
struct held {
    rd_kafka_message_t *m;
    struct part *p;
    int64_t at_us; /* when it was taken (monotonic), for the ack latency */
};

struct batch_ref {
    struct part *p;
    uint64_t epoch;
    struct kt_seg *seg; /* valid only while p->t.epoch == epoch */
};

struct batch {
    struct in_kafka *k;
    int64_t oldest_us;
    size_t nitems;
    size_t nrefs;
    struct batch_ref refs[];
};

struct in_kafka {
    struct kafka_link link; /* first: librdkafka's opaque is the context */
    struct kafka_common common;
    /* options */
    struct pb_strlist topics;
    char *group;
    int start;  /* 0 earliest, 1 latest */
    int format; /* 0 json, 1 raw */
    int64_t batch;
    int64_t session_timeout_ms;
    int64_t idem_window_ms;
    char *idem_header;
    char pipeline[128];

    /* run time: the input's loop thread (destroy: the main thread, loop gone) */
    struct pb_input *in;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int pipe_fd[2];
    bool have_pipe;
    struct pb_loop_watch *watch;
    struct pb_loop_timer *tick;
    unsigned ticks;
    struct part **parts;
    size_t nparts, capparts;
    struct held *held;
    size_t nheld, capheld;
    size_t inflight;          /* batches submitted, not called back */
    bool paused;              /* back-pressure: nothing is submitted, fetching is paused */
    bool fetch_paused;        /* the assigned partitions are paused at librdkafka */
    int64_t backoff_until_ms; /* after failed commits: nothing is submitted before (mono) */
    unsigned failures;        /* failed commits in a row */
    bool stopped;
    bool closing;                              /* destroy: rebalances give partitions up at once */
    bool fatal;                                /* the consumer is unusable: made anew by the tick */
    rd_kafka_topic_partition_list_t *revoking; /* waiting for batches in flight */
    bool revoking_lost;
    int64_t revoke_deadline_ms;
    int state; /* last reported enum pb_input_state */
    int down_reports;
    char last_error[256];
    int64_t error_logged_ms;
    int64_t pause_logged_ms;
    char *position;
};

/* ---- kafka_group.c ------------------------------------------------------------------------ */

/* The partition of that name, or NULL. */
struct part *kin_part_find(struct in_kafka *k, const char *topic, int32_t partition);
/* A fresh start for p: what refers to its old epoch is ignored from now on. */
void kin_part_reset(struct part *p);
/* Drop what was fetched for p (NULL: for every partition) and not submitted. */
void kin_held_drop(struct in_kafka *k, const struct part *p);

void kin_set_state(struct in_kafka *k, enum pb_input_state st, const char *detail);
/* RECONNECTING, with the guard's last refusal or why. */
void kin_reconnecting(struct in_kafka *k, const char *why);
/* Remember text as the last error; log it at most every ERROR_LOG_EVERY_MS. */
void kin_log_error_limited(struct in_kafka *k, const char *what, const char *text);

/* After failed commits: nothing is submitted until the backoff ends. */
bool kin_backing_off(const struct in_kafka *k);
/* Pause or resume fetching on the assigned partitions as paused and the
 * backoff want. */
void kin_fetch_update(struct in_kafka *k);

/* Commit, asynchronously, what moved on (or went unanswered too long). */
void kin_commit_flush(struct in_kafka *k);
/* Commit l and wait for the answer, at most timeout_ms: the error, or 0. */
rd_kafka_resp_err_t kin_commit_wait(struct in_kafka *k, rd_kafka_topic_partition_list_t *l,
                                    int timeout_ms);
/* Offsets reached on the assigned partitions (all, or those in only) that the
 * group has not confirmed; NULL when none. */
rd_kafka_topic_partition_list_t *kin_unconfirmed(struct in_kafka *k,
                                                 const rd_kafka_topic_partition_list_t *only);
void kin_offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t *offsets, void *opaque);

bool kin_cooperative(struct in_kafka *k);
void kin_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *l,
                      void *opaque);
/* A partition being revoked still waits for a batch in flight. */
bool kin_revoking_busy(struct in_kafka *k);
/* Commit what was reached on the partitions being revoked, then give them up. */
void kin_finish_revoke(struct in_kafka *k);

/* Move p's commit offset past its done batches; at a failed one, read
 * again from there. */
void kin_advance(struct in_kafka *k, struct part *p);
/* Seek p back to p->rewind_to (retried by the tick until it works). */
void kin_seek_back(struct in_kafka *k, struct part *p);

#endif
