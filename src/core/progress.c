/* progress.c - the progress of `patchbay run --once`: on a terminal, a line
 * redrawn in place (files, records, deliveries, dead letters, a bar); at
 * the end, one summary line whatever stderr is. The counts are the
 * engine's own counters (atomics and the inputs' progress under their
 * lock), so it runs on the main thread without touching the others. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/engine.h"
#include "core/input.h"
#include "core/progress.h"

#define REDRAW_US (200 * 1000)

struct out_sum {
    int64_t delivered, dead, pending;
};

static void add_output(struct pb_output *o, void *arg)
{
    struct out_sum *s = arg;
    s->delivered += (int64_t)atomic_load(&o->delivered);
    s->dead += (int64_t)atomic_load(&o->dead);
    int64_t b = atomic_load(&o->backlog);
    s->pending += b > 0 ? b : 0;
}

void pb__progress_gather(struct pb_engine *e, struct pb_progress_view *v)
{
    memset(v, 0, sizeof(*v));
    for (size_t i = 0; e->cfg && i < e->cfg->npipelines; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        struct pb_input *in = pl->in;
        bool files = false;
        struct pb_input_progress p = {0};
        pthread_mutex_lock(&in->lock);
        if (in->has_progress) {
            files = true;
            p = in->progress;
        }
        pthread_mutex_unlock(&in->lock);
        if (files) {
            v->files = true;
            v->files_total += p.files_total;
            v->files_done += p.files_done;
            v->files_failed += p.files_failed;
            v->records += p.records;
        } else {
            v->records += (int64_t)(atomic_load(&pl->accepted) + atomic_load(&pl->duplicates) +
                                    atomic_load(&pl->dead_on_arrival));
        }
        v->dead += (int64_t)atomic_load(&pl->dead_on_arrival);
        struct out_sum s = {0};
        pb_pipeline_each_output(pl, add_output, &s);
        if (pl->routes) {
            int64_t b = atomic_load(&pl->router.backlog);
            s.pending += b > 0 ? b : 0;
            s.dead += (int64_t)atomic_load(&pl->router.dead);
        }
        v->delivered += s.delivered;
        v->dead += s.dead;
        v->pending += s.pending;
    }
}

static void dur(int64_t ms, char *buf, size_t len)
{
    if (ms < 60000)
        snprintf(buf, len, "%lld.%llds", (long long)(ms / 1000), (long long)(ms % 1000 / 100));
    else
        snprintf(buf, len, "%lldm%02llds", (long long)(ms / 60000), (long long)(ms % 60000 / 1000));
}

void pb__progress_format(const struct pb_progress_view *v, int64_t elapsed_ms, bool summary,
                         int width, char *buf, size_t len)
{
    char t[32];
    dur(elapsed_ms, t, sizeof(t));
    if (summary) {
        if (v->files)
            snprintf(buf, len,
                     "run --once: %lld file%s (%lld failed), %lld records, %lld delivered, %lld "
                     "dead-lettered in %s",
                     (long long)v->files_done, v->files_done == 1 ? "" : "s",
                     (long long)v->files_failed, (long long)v->records, (long long)v->delivered,
                     (long long)v->dead, t);
        else
            snprintf(buf, len,
                     "run --once: %lld messages, %lld delivered, %lld dead-lettered in %s",
                     (long long)v->records, (long long)v->delivered, (long long)v->dead, t);
        return;
    }
    /* The bar follows the files when there are files, else the deliveries. */
    double frac = 0;
    if (v->files && v->files_total > 0)
        frac = (double)v->files_done / (double)v->files_total;
    else if (v->delivered + v->dead + v->pending > 0)
        frac = (double)(v->delivered + v->dead) / (double)(v->delivered + v->dead + v->pending);
    if (frac > 1)
        frac = 1;
    if (width < 0)
        width = 0;
    if (width > 60)
        width = 60;
    char bar[64];
    int fill = (int)(frac * width + 0.5);
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '-';
    bar[width] = 0;
    if (v->files)
        snprintf(buf, len,
                 "[%s] %lld/%lld files  %lld records  %lld delivered  %lld dead  %lld pending  %s",
                 bar, (long long)v->files_done, (long long)v->files_total, (long long)v->records,
                 (long long)v->delivered, (long long)v->dead, (long long)v->pending, t);
    else
        snprintf(buf, len, "[%s] %lld messages  %lld delivered  %lld dead  %lld pending  %s", bar,
                 (long long)v->records, (long long)v->delivered, (long long)v->dead,
                 (long long)v->pending, t);
}

void pb__progress_init(struct pb_progress *p)
{
    memset(p, 0, sizeof(*p));
    p->started_us = pb_mono_us();
    p->tty = isatty(STDERR_FILENO) == 1;
}

void pb__progress_tick(struct pb_progress *p, struct pb_engine *e, bool final)
{
    int64_t now = pb_mono_us();
    if (!final && (!p->tty || (p->drawn && now - p->drawn_us < REDRAW_US)))
        return;
    struct pb_progress_view v;
    char line[512];
    int64_t ms = (now - p->started_us) / 1000;
    pb__progress_gather(e, &v);
    if (p->tty) {
        pb__progress_format(&v, ms, false, 24, line, sizeof(line));
        fprintf(stderr, "\r%s\033[K%s", line, final ? "\n" : "");
        p->drawn = true;
        p->drawn_us = now;
    }
    if (final) {
        pb__progress_format(&v, ms, true, 0, line, sizeof(line));
        fprintf(stderr, "%s\n", line);
    }
    fflush(stderr);
}
