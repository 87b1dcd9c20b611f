/* retry.h - classifying outcomes and scheduling retries.
 *
 * HTTP statuses are classified once, here. Backoff is exponential with full
 * jitter; the random draw and the clock are passed in so the policy is
 * testable without sleeping. */
#ifndef PB_RETRY_H
#define PB_RETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "patchbay/pb_plugin.h"

struct pb_retry_policy {
    int64_t max_attempts; /* >= 1 */
    int64_t initial_ms;   /* first backoff ceiling */
    int64_t max_ms;       /* backoff ceiling cap */
    int64_t max_age_ms;   /* give up when the message is older than this */
    /* A fixed schedule instead of exponential backoff: schedule[i] is the
     * wait before attempt i + 2 (attempt 1 is immediate), so there are
     * nschedule + 1 attempts at most. Borrowed; NULL when unused. */
    const int64_t *schedule;
    size_t nschedule;
};

/* schedule: svix — immediately, then 5s, 5m, 30m, 2h, 5h, 10h, 10h. */
extern const int64_t pb_schedule_svix[7];

/* 2xx OK; 408, 425, 429 and 5xx RETRY; every other status PERMANENT
 * (redirects are not followed, so 3xx is PERMANENT too). 0 (no response) RETRY. */
enum pb_result pb_classify_http(int status);

/* Ceiling for attempt n (1-based: the delay before attempt n+1):
 * min(max_ms, initial_ms * 2^(n-1)). */
int64_t pb_backoff_ceiling(const struct pb_retry_policy *p, int attempt);
/* Full jitter: a delay uniformly drawn in [0, ceiling] from rnd (any 64 bits). */
int64_t pb_backoff_delay(const struct pb_retry_policy *p, int attempt, uint64_t rnd);

struct pb_retry_decision {
    bool give_up;       /* dead-letter now */
    int64_t next_at;    /* when !give_up: unix ms of the next attempt */
    const char *reason; /* when give_up: "max_attempts reached", "max_age exceeded", "permanent" */
};
/* Decide after attempt `attempt` ended with `result`. first_at is when the
 * message was accepted; retry_after_ms (-1 if none) from the partner is
 * honoured: the delay is max(jittered backoff, retry_after), and if that
 * lands past first_at + max_age the delivery gives up. */
struct pb_retry_decision pb_retry_decide(const struct pb_retry_policy *p, enum pb_result result,
                                         int attempt, int64_t first_at, int64_t now,
                                         int64_t retry_after_ms, uint64_t rnd);

#endif
