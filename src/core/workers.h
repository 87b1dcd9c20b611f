/* workers.h - a small pool of threads for work that blocks (store reads for
 * the admin API, client libraries without an event loop), so that event
 * loop threads never wait on it. */
#ifndef PB_CORE_WORKERS_H
#define PB_CORE_WORKERS_H

#include <stddef.h>

#include "patchbay/pb_err.h"

struct pb_workers;

/* A job the caller embeds in what it posts; fn runs on a worker thread, or
 * with cancelled set when the pool is destroyed before a thread took it. */
struct pb_job {
    void (*fn)(struct pb_job *job, int cancelled);
    struct pb_job *next;
};

/* nthreads threads named "<name>-N". NULL + err on failure. */
struct pb_workers *pb_workers_create(const char *name, size_t nthreads, struct pb_err *err);
/* Any thread. PB_ESHUTDOWN once destroying (fn never runs). */
int pb_workers_post(struct pb_workers *w, struct pb_job *job);
/* Jobs waiting or running. */
size_t pb_workers_busy(const struct pb_workers *w);
/* Let running jobs finish, run queued ones cancelled, join. Accepts NULL. */
void pb_workers_destroy(struct pb_workers *w);

#endif
