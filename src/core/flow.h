/* flow.h - flow control of one output (flow.c): what its partner's answers
 * say about how fast and how much to send.
 *
 *  - hold: nothing starts until a time the partner gave (Retry-After, a
 *    RateLimit reset with nothing remaining), for every delivery of the
 *    output, not only the one that was told;
 *  - pace: once a partner refused for rate (429) or says it is near its
 *    limit, starts are spread at the rate it allows (its RateLimit-Limit
 *    over its window, a tenth below), or, when it says nothing, at a rate
 *    learnt by cutting on each refusal and growing slowly while none come;
 *  - circuit breaker (when configured): too many failures in a window
 *    open it; while open nothing starts and no attempt is spent; after
 *    open_for one probe goes through, whose outcome closes or reopens it;
 *  - adaptive concurrency (concurrency: adaptive): additive increase while
 *    the round-trip time stays near the partner's base (the lowest of the
 *    last 10 to 20 s)
 *    and the limit is used, multiplicative decrease when requests queue
 *    there (the round trip 1.6 x the base) or the partner pushes back
 *    (429, failures, rate-limit headers near the limit): AIMD, as Vector's
 *    ARC, between 1 and max_concurrency.
 *
 * On a cluster (several nodes on one PostgreSQL state) each node keeps its
 * own, and they share what matters to the partner (pb_flow_shared): a
 * breaker opened or closed and a partner's hold are published by the node
 * that saw them and followed by the others, which let the opener's probe
 * go first; a rate limit is split between the live nodes
 * (pb_flow_rate_share).
 *
 * Pure: the clock is passed in, nothing blocks, nothing is allocated
 * (tests/unit/test_flow.c). The dispatcher owns one per output and copies
 * its gates into the output's pb_sched_q with pb_flow_apply. */
#ifndef PB_CORE_FLOW_H
#define PB_CORE_FLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/sched.h"
#include "patchbay/pb_http.h"

struct pb_flow_conf {
    bool breaker;
    int64_t window_ms;    /* failures are counted over this window */
    int64_t min_requests; /* in the window before the ratio counts */
    double failure_ratio; /* failed / ended at or above this opens */
    int64_t open_for_ms;  /* open this long, then one probe */
    bool adaptive;
    size_t max_concurrency;
    int64_t max_hold_ms; /* a partner's wait is honoured up to this (retry.max) */
};

enum pb_breaker_state { PB_BREAKER_CLOSED = 0, PB_BREAKER_OPEN, PB_BREAKER_HALF_OPEN };
const char *pb_breaker_state_name(int s);

#define PB_FLOW_SLOTS 10      /* the breaker's window, in slots */
#define PB_FLOW_RATE_SLOTS 20 /* deliveries per 100 ms over the last 2 s */

struct pb_flow {
    struct pb_flow_conf c;
    /* breaker */
    int state;
    int64_t open_until;
    bool probe_out;
    struct {
        int64_t start;
        uint32_t ok, fail;
    } slots[PB_FLOW_SLOTS];
    uint64_t opened_total;
    bool opened_here;    /* this node opened it: its probe goes first */
    int64_t hold_shared; /* the latest hold published or taken (cluster) */
    /* hold and pace */
    int64_t hold_until;
    double pace_rps; /* 0: not paced */
    int64_t pace_at; /* when pace_rps last changed */
    int64_t cut_at;  /* the last cut on a refusal */
    int64_t throttled_at;
    int64_t rl_limit, rl_window_ms, rl_window_seen_ms; /* from the partner's headers */
    struct {
        int64_t start;
        uint32_t n;
    } rate[PB_FLOW_RATE_SLOTS];
    uint64_t throttled_total;
    /* adaptive concurrency */
    double limit;
    double base_rtt_us;               /* the round trip without queueing: lowest interval mean, */
    double epoch_min, epoch_prev_min; /* of this epoch and the last */
    double rtt_us;                    /* the intervals' means, smoothed */
    int64_t epoch_start;
    int64_t iv_start;
    double iv_sum_us;
    uint32_t iv_n;
    bool iv_at_limit, iv_pushback;
};

/* What one attempt's end tells. */
enum pb_flow_kind {
    PB_FLOW_OK = 0,   /* an answer: delivered, or refused for the message's own sake (4xx) */
    PB_FLOW_FAIL,     /* the partner failed: no answer, a timeout, 5xx, 408 */
    PB_FLOW_THROTTLED /* refused for rate: 429 */
};
struct pb_flow_sample {
    enum pb_flow_kind kind;
    bool probe; /* the breaker's probe (pb_flow_started said so) */
    int64_t latency_us;
    int64_t retry_after_ms; /* -1: none */
    struct pb_rate_info rate;
    size_t inflight; /* attempts in flight when it ended, itself included */
};

/* What changed, for logs, metrics and events. */
enum { PB_FLOW_OPENED = 1u, PB_FLOW_CLOSED = 2u, PB_FLOW_REOPENED = 4u };

void pb_flow_init(struct pb_flow *f, const struct pb_flow_conf *c, size_t concurrency, int64_t now);
/* An attempt ended. Returns PB_FLOW_* bits. */
unsigned pb_flow_outcome(struct pb_flow *f, const struct pb_flow_sample *s, int64_t now);
/* The partner was not asked and everything waits retry_in_ms (no token). */
void pb_flow_hold(struct pb_flow *f, int64_t retry_in_ms, int64_t now);
/* Time passes: an open breaker half-opens. Returns PB_FLOW_* bits. */
unsigned pb_flow_tick(struct pb_flow *f, int64_t now);
/* An attempt is starting: true when it is the half-open breaker's probe. */
bool pb_flow_started(struct pb_flow *f);
/* Set q's gates (not_before, pace, and with adaptive its concurrency). */
void pb_flow_apply(struct pb_flow *f, struct pb_sched_q *q, int64_t now);
/* The current concurrency limit (adaptive), or 0. */
size_t pb_flow_limit(const struct pb_flow *f);
/* ---- shared by the nodes of a cluster ---- */

/* What a node publishes of an output's flow, and the others follow. */
struct pb_flow_share {
    int state;          /* PB_BREAKER_OPEN, PB_BREAKER_CLOSED, or -1: a hold only */
    int64_t open_until; /* open: when its opener probes (unix ms) */
    int64_t hold_until; /* a partner's hold, 0: none (unix ms) */
};
/* Another node published s: a hold longer than this node's is taken; a
 * breaker it opened (or reopened) opens here too, until its open_until
 * plus half of open_for (the opener's probe decides first; if its outcome
 * does not come, this node probes); one it closed closes here. Returns
 * PB_FLOW_OPENED or PB_FLOW_CLOSED when the breaker followed. */
unsigned pb_flow_shared(struct pb_flow *f, const struct pb_flow_share *s, int64_t now);
/* What this node has to publish after an outcome (ev: its PB_FLOW_* bits):
 * true with *out filled when the breaker opened, reopened or closed here,
 * or a partner's hold of at least hold_min_ms came that the cluster has
 * not heard of. */
bool pb_flow_share_due(struct pb_flow *f, unsigned ev, int64_t hold_min_ms, int64_t now,
                       struct pb_flow_share *out);
/* A rate limit split between nodes live nodes: each takes 1/nodes of the
 * rate, with a bucket of 1/nodes of the count (at least 1), so together
 * they stay within r, bursts included (but for a count below nodes). */
struct pb_rate pb_flow_rate_share(struct pb_rate r, int nodes);

/* Ended attempts and failures in the breaker's window. */
void pb_flow_window(const struct pb_flow *f, int64_t now, uint32_t *ended, uint32_t *failed);

#endif
