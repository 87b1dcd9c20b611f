/* workers.c - the pool of threads for blocking work (workers.h): one queue
 * under a mutex, threads waiting on a condition variable. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/workers.h"

#define THREADS_MAX 64

struct pb_workers {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct pb_job *head, *tail;
    bool stopping;
    _Atomic size_t busy;
    size_t n;
    pthread_t threads[THREADS_MAX];
};

static void *worker_main(void *arg)
{
    struct pb_workers *w = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to the main thread */
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while (!w->head && !w->stopping)
            pthread_cond_wait(&w->wake, &w->lock);
        struct pb_job *j = w->head;
        if (!j) {
            pthread_mutex_unlock(&w->lock);
            return NULL;
        }
        w->head = j->next;
        if (!w->head)
            w->tail = NULL;
        pthread_mutex_unlock(&w->lock);
        j->fn(j, 0);
        atomic_fetch_sub(&w->busy, 1);
    }
}

struct pb_workers *pb_workers_create(const char *name, size_t nthreads, struct pb_err *err)
{
    struct pb_workers *w = calloc(1, sizeof(*w));
    if (!w) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    if (nthreads == 0)
        nthreads = 1;
    if (nthreads > THREADS_MAX)
        nthreads = THREADS_MAX;
    for (size_t i = 0; i < nthreads; i++) {
        if (pthread_create(&w->threads[i], NULL, worker_main, w) != 0) {
            pb_err_set(err, PB_ENOMEM, "cannot start worker threads");
            pb_workers_destroy(w);
            return NULL;
        }
        w->n++;
        char tn[16];
        snprintf(tn, sizeof(tn), "%.10s-%u", name, (unsigned)(i % 1000));
        pthread_setname_np(w->threads[i], tn);
    }
    return w;
}

int pb_workers_post(struct pb_workers *w, struct pb_job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&w->lock);
    if (w->stopping) {
        pthread_mutex_unlock(&w->lock);
        return PB_ESHUTDOWN;
    }
    if (w->tail)
        w->tail->next = job;
    else
        w->head = job;
    w->tail = job;
    atomic_fetch_add(&w->busy, 1);
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    return 0;
}

size_t pb_workers_busy(const struct pb_workers *w)
{
    return w ? atomic_load(&w->busy) : 0;
}

void pb_workers_destroy(struct pb_workers *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    struct pb_job *queued = NULL;
    /* Threads still take what is queued until empty; then they return. */
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    for (size_t i = 0; i < w->n; i++)
        pthread_join(w->threads[i], NULL);
    queued = w->head;
    while (queued) {
        struct pb_job *n = queued->next;
        queued->fn(queued, 1);
        queued = n;
    }
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
