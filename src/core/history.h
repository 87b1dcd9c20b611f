/* history.h - the last hour of the engine's counters, for the dashboard's
 * charts (history.c).
 *
 * A ring of samples (pb_history): every PB_HISTORY_INTERVAL_MS the engine's
 * main thread copies each pipeline's and output's counters and gauges into
 * it; the oldest sample goes once the ring is full. The admin API reads it
 * back from its worker threads. Nothing here reads the store, and memory is
 * bounded from the start: capacity samples of a fixed number of values. */
#ifndef PB_CORE_HISTORY_H
#define PB_CORE_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PB_HISTORY_INTERVAL_MS 5000
#define PB_HISTORY_CAPACITY 720 /* an hour at the interval */
/* Sub-outputs (webhook endpoints) get series as they appear, up to this many. */
#define PB_HISTORY_SUBS_MAX 32
/* A value not sampled (a series that did not exist yet). */
#define PB_HISTORY_NONE INT64_MIN

/* ---- the ring: pure, any thread (one mutex) ---------------------------------------------- */

struct pb_history;

/* width values per sample. NULL on ENOMEM. */
struct pb_history *pb_history_create(size_t width, size_t capacity);
void pb_history_destroy(struct pb_history *h);
size_t pb_history_width(const struct pb_history *h);
/* Append a sample taken at `at` (unix ms): values[0..width) copied. */
void pb_history_push(struct pb_history *h, int64_t at, const int64_t *values);
/* The samples taken at or after since, oldest first, preceded by the one
 * just before them when there is one (*with_prev set): what the first
 * rate is computed from. At most max samples (the newest) are copied,
 * times[i] and values[i * width + k]. Returns how many. */
size_t pb_history_read(struct pb_history *h, int64_t since, size_t max, int64_t *times,
                       int64_t *values, bool *with_prev);
/* Per-second rate of a counter between two samples; -1 when either value
 * is PB_HISTORY_NONE or the interval is empty. A counter never goes back
 * within a process: a lower second value counts as 0. */
double pb_history_rate(int64_t v0, int64_t t0, int64_t v1, int64_t t1);

/* ---- the engine's series ------------------------------------------------------------------ */

/* Per pipeline: counters. */
enum pb_hm_pipeline {
    PB_HM_RECEIVED = 0,
    PB_HM_ACCEPTED,
    PB_HM_DUPLICATES,
    PB_HM_DEAD_ON_ARRIVAL,
    PB_HM_PL_COUNT,
};
/* Per output: counters (delivered, failed = attempts retried or
 * dead-lettered, dead), then gauges (backlog, in flight). */
enum pb_hm_output {
    PB_HM_DELIVERED = 0,
    PB_HM_FAILED,
    PB_HM_DEAD,
    PB_HM_BACKLOG,
    PB_HM_INFLIGHT,
    PB_HM_OUT_COUNT,
};
extern const char *const pb_hm_pipeline_names[PB_HM_PL_COUNT];
extern const char *const pb_hm_output_names[PB_HM_OUT_COUNT];
static inline bool pb_hm_output_is_gauge(int m)
{
    return m >= PB_HM_BACKLOG;
}

struct pb_engine;
struct pb_engine_history;

struct pb_engine_history *pb_engine_history_create(struct pb_engine *e);
void pb_engine_history_destroy(struct pb_engine_history *eh);
/* Main thread: take a sample when one is due at now (unix ms). */
void pb_engine_history_tick(struct pb_engine_history *eh, int64_t now);

/* What the admin API reads: one group of series per pipeline and output. */
struct pb_history_group {
    const char *pipeline; /* borrowed for the engine's life */
    const char *output;   /* NULL for the pipeline itself; "out/sub" for a sub-output
                           * (borrowed for the engine's life too) */
    size_t base;          /* index of its first value in a sample */
};
struct pb_history_snapshot {
    size_t width, n;
    bool with_prev;
    int64_t *times;  /* n */
    int64_t *values; /* n * width */
    struct pb_history_group *groups;
    size_t ngroups;
    int64_t interval_ms;
    size_t capacity;
};
/* Any thread: the samples at or after since. 0 or PB_ENOMEM. */
int pb_engine_history_read(struct pb_engine_history *eh, int64_t since,
                           struct pb_history_snapshot *s);
void pb_history_snapshot_cleanup(struct pb_history_snapshot *s);

#endif
