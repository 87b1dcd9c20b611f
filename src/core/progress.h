/* progress.h - what `patchbay run --once` shows while it runs (a progress
 * line on a terminal) and the summary it prints when it ends (progress.c). */
#ifndef PB_CORE_PROGRESS_H
#define PB_CORE_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pb_engine;

/* Totals over every pipeline. */
struct pb_progress_view {
    bool files; /* some input reports files */
    int64_t files_total, files_done, files_failed;
    int64_t records;   /* records committed (file inputs) or messages taken (others) */
    int64_t delivered; /* deliveries delivered */
    int64_t dead;      /* deliveries and messages dead-lettered */
    int64_t pending;   /* deliveries not yet done */
};

/* Read the engine's counters (any thread). */
void pb__progress_gather(struct pb_engine *e, struct pb_progress_view *v);
/* The progress line (a bar of width cells and the counts) or, with
 * summary, the closing line; into buf, NUL-terminated. Pure. */
void pb__progress_format(const struct pb_progress_view *v, int64_t elapsed_ms, bool summary,
                         int width, char *buf, size_t len);

/* Called by the engine about every 100 ms under --once (final: once, at
 * the end). Draws the line on stderr when it is a terminal, at most five
 * times a second; the summary goes to stderr either way. */
struct pb_progress {
    int64_t started_us, drawn_us;
    bool tty, drawn;
};
void pb__progress_init(struct pb_progress *p);
void pb__progress_tick(struct pb_progress *p, struct pb_engine *e, bool final);

#endif
