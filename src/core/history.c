/* history.c - the last hour of the engine's counters (history.h): a ring of
 * samples, and the engine's series in it.
 *
 * Threads: the main thread samples (pb_engine_history_tick, reading the
 * counters' atomics); admin workers read. One mutex guards the ring, another
 * the table of series (sub-outputs join it as they appear). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/history.h"

const char *const pb_hm_pipeline_names[PB_HM_PL_COUNT] = {"received", "accepted", "duplicates",
                                                          "dead_on_arrival"};
const char *const pb_hm_output_names[PB_HM_OUT_COUNT] = {"delivered", "failed", "dead", "backlog",
                                                         "inflight"};

/* ---- the ring ------------------------------------------------------------------------------ */

struct pb_history {
    pthread_mutex_t lock;
    size_t width, cap;
    size_t head; /* where the next sample goes */
    size_t n;    /* samples held */
    int64_t *times;
    int64_t *values;
};

struct pb_history *pb_history_create(size_t width, size_t capacity)
{
    struct pb_history *h = calloc(1, sizeof(*h));
    if (!h || width == 0 || capacity == 0 || width > SIZE_MAX / sizeof(int64_t) / capacity)
        goto fail;
    h->width = width;
    h->cap = capacity;
    h->times = calloc(capacity, sizeof(*h->times));
    h->values = calloc(capacity * width, sizeof(*h->values));
    if (!h->times || !h->values || pthread_mutex_init(&h->lock, NULL) != 0)
        goto fail;
    return h;
fail:
    if (h) {
        free(h->times);
        free(h->values);
    }
    free(h);
    return NULL;
}

void pb_history_destroy(struct pb_history *h)
{
    if (!h)
        return;
    pthread_mutex_destroy(&h->lock);
    free(h->times);
    free(h->values);
    free(h);
}

size_t pb_history_width(const struct pb_history *h)
{
    return h->width;
}

void pb_history_push(struct pb_history *h, int64_t at, const int64_t *values)
{
    pthread_mutex_lock(&h->lock);
    h->times[h->head] = at;
    memcpy(h->values + h->head * h->width, values, h->width * sizeof(*values));
    h->head = (h->head + 1) % h->cap;
    if (h->n < h->cap)
        h->n++;
    pthread_mutex_unlock(&h->lock);
}

size_t pb_history_read(struct pb_history *h, int64_t since, size_t max, int64_t *times,
                       int64_t *values, bool *with_prev)
{
    size_t got = 0;
    *with_prev = false;
    pthread_mutex_lock(&h->lock);
    size_t oldest = (h->head + h->cap - h->n) % h->cap;
    /* The first sample at or after since (times only grow). */
    size_t first = 0;
    while (first < h->n && h->times[(oldest + first) % h->cap] < since)
        first++;
    if (first > 0 && first < h->n) {
        first--;
        *with_prev = true;
    } else if (first == h->n) {
        pthread_mutex_unlock(&h->lock);
        return 0;
    }
    size_t count = h->n - first;
    if (count > max) {
        /* Only the newest max: the one before them is then in the copy. */
        first += count - max;
        count = max;
        *with_prev = count > 1;
    }
    for (size_t i = 0; i < count; i++) {
        size_t at = (oldest + first + i) % h->cap;
        times[i] = h->times[at];
        memcpy(values + i * h->width, h->values + at * h->width, h->width * sizeof(*values));
        got++;
    }
    pthread_mutex_unlock(&h->lock);
    if (got <= 1 && *with_prev)
        *with_prev = false;
    return got;
}

double pb_history_rate(int64_t v0, int64_t t0, int64_t v1, int64_t t1)
{
    if (v0 == PB_HISTORY_NONE || v1 == PB_HISTORY_NONE || t1 <= t0)
        return -1;
    if (v1 < v0)
        return 0;
    return (double)(v1 - v0) * 1000.0 / (double)(t1 - t0);
}

/* ---- the engine's series ------------------------------------------------------------------ */

struct group {
    struct pb_pipeline *pl;
    struct pb_output *o; /* a top-level output; NULL: the pipeline, or a sub-output */
    char *sub_name;      /* a sub-output ("out/sub"): found by name at each sample, since
                          * a deleted one is freed while the engine runs */
    size_t base;
    bool seen; /* main thread: sampled this turn */
};

struct pb_engine_history {
    struct pb_engine *e;
    struct pb_history *ring;
    pthread_mutex_t lock; /* groups, ngroups (appended to by the sampler) */
    struct group *groups;
    size_t ngroups, maxgroups;
    size_t next_base; /* where the next sub-output's series start */
    int64_t *row;     /* main thread: the sample being made */
    int64_t next_at;  /* main thread: when the next sample is due */
};

struct pb_engine_history *pb_engine_history_create(struct pb_engine *e)
{
    struct pb_config *c = e->cfg;
    size_t nouts = 0;
    for (size_t i = 0; i < c->npipelines; i++)
        nouts += c->pipelines[i].nouts;
    struct pb_engine_history *eh = calloc(1, sizeof(*eh));
    if (!eh)
        return NULL;
    eh->e = e;
    eh->maxgroups = c->npipelines + nouts + PB_HISTORY_SUBS_MAX;
    size_t width = c->npipelines * PB_HM_PL_COUNT + (nouts + PB_HISTORY_SUBS_MAX) * PB_HM_OUT_COUNT;
    eh->groups = calloc(eh->maxgroups, sizeof(*eh->groups));
    eh->row = calloc(width, sizeof(*eh->row));
    eh->ring = pb_history_create(width, PB_HISTORY_CAPACITY);
    if (!eh->groups || !eh->row || !eh->ring || pthread_mutex_init(&eh->lock, NULL) != 0) {
        pb_history_destroy(eh->ring);
        free(eh->groups);
        free(eh->row);
        free(eh);
        return NULL;
    }
    size_t base = 0;
    for (size_t i = 0; i < c->npipelines; i++) {
        eh->groups[eh->ngroups++] = (struct group){.pl = &c->pipelines[i], .base = base};
        base += PB_HM_PL_COUNT;
    }
    for (size_t i = 0; i < c->npipelines; i++)
        for (size_t j = 0; j < c->pipelines[i].nouts; j++) {
            eh->groups[eh->ngroups++] =
                (struct group){.pl = &c->pipelines[i], .o = &c->pipelines[i].outs[j], .base = base};
            base += PB_HM_OUT_COUNT;
        }
    eh->next_base = base;
    return eh;
}

void pb_engine_history_destroy(struct pb_engine_history *eh)
{
    if (!eh)
        return;
    for (size_t g = 0; g < eh->ngroups; g++)
        free(eh->groups[g].sub_name);
    pb_history_destroy(eh->ring);
    pthread_mutex_destroy(&eh->lock);
    free(eh->groups);
    free(eh->row);
    free(eh);
}

static void output_values(const struct pb_output *o, int64_t *v)
{
    v[PB_HM_DELIVERED] = (int64_t)atomic_load(&o->delivered);
    v[PB_HM_FAILED] = (int64_t)(atomic_load(&o->retried) + atomic_load(&o->dead));
    v[PB_HM_DEAD] = (int64_t)atomic_load(&o->dead);
    v[PB_HM_BACKLOG] = atomic_load(&o->backlog);
    v[PB_HM_INFLIGHT] = atomic_load(&o->inflight_gauge);
}

/* Each live sub-output: sampled into its group, which it gets the first
 * time it is seen while there is room. Called under its parent's lock. */
static void sub_cb(struct pb_output *o, void *arg)
{
    struct pb_engine_history *eh = arg;
    if (!o->is_virtual || o->gone)
        return;
    struct group *gr = NULL;
    for (size_t g = 0; g < eh->ngroups && !gr; g++)
        if (eh->groups[g].sub_name && eh->groups[g].pl == o->pl &&
            strcmp(eh->groups[g].sub_name, o->name) == 0)
            gr = &eh->groups[g];
    if (!gr) {
        char *name = eh->ngroups < eh->maxgroups ? strdup(o->name) : NULL;
        if (!name)
            return; /* no room (or memory): this sub-output has no history */
        pthread_mutex_lock(&eh->lock);
        gr = &eh->groups[eh->ngroups++];
        *gr = (struct group){.pl = o->pl, .sub_name = name, .base = eh->next_base};
        eh->next_base += PB_HM_OUT_COUNT;
        pthread_mutex_unlock(&eh->lock);
    }
    output_values(o, eh->row + gr->base);
}

void pb_engine_history_tick(struct pb_engine_history *eh, int64_t now)
{
    if (!eh || now < eh->next_at)
        return;
    eh->next_at = now + PB_HISTORY_INTERVAL_MS;
    struct pb_config *c = eh->e->cfg;
    size_t width = pb_history_width(eh->ring);
    for (size_t k = 0; k < width; k++)
        eh->row[k] = PB_HISTORY_NONE;
    /* Only the sampler appends groups: no lock needed to read them here. */
    for (size_t g = 0; g < eh->ngroups; g++) {
        const struct group *gr = &eh->groups[g];
        int64_t *v = eh->row + gr->base;
        if (gr->o) {
            output_values(gr->o, v);
        } else if (!gr->sub_name) {
            v[PB_HM_RECEIVED] = (int64_t)atomic_load(&gr->pl->received);
            v[PB_HM_ACCEPTED] = (int64_t)atomic_load(&gr->pl->accepted);
            v[PB_HM_DUPLICATES] = (int64_t)atomic_load(&gr->pl->duplicates);
            v[PB_HM_DEAD_ON_ARRIVAL] = (int64_t)atomic_load(&gr->pl->dead_on_arrival);
        }
    }
    /* Sub-outputs: a deleted one's series stop (no value) from here on. */
    for (size_t i = 0; i < c->npipelines; i++)
        pb_pipeline_each_output(&c->pipelines[i], sub_cb, eh);
    pb_history_push(eh->ring, now, eh->row);
}

int pb_engine_history_read(struct pb_engine_history *eh, int64_t since,
                           struct pb_history_snapshot *s)
{
    memset(s, 0, sizeof(*s));
    s->width = pb_history_width(eh->ring);
    s->interval_ms = PB_HISTORY_INTERVAL_MS;
    s->capacity = PB_HISTORY_CAPACITY;
    s->times = malloc(PB_HISTORY_CAPACITY * sizeof(*s->times));
    s->values = malloc(PB_HISTORY_CAPACITY * s->width * sizeof(*s->values));
    s->groups = calloc(eh->maxgroups, sizeof(*s->groups));
    if (!s->times || !s->values || !s->groups) {
        pb_history_snapshot_cleanup(s);
        return PB_ENOMEM;
    }
    pthread_mutex_lock(&eh->lock);
    for (size_t g = 0; g < eh->ngroups; g++)
        s->groups[g] = (struct pb_history_group){
            .pipeline = eh->groups[g].pl->name,
            .output = eh->groups[g].o ? eh->groups[g].o->name : eh->groups[g].sub_name,
            .base = eh->groups[g].base,
        };
    s->ngroups = eh->ngroups;
    pthread_mutex_unlock(&eh->lock);
    s->n =
        pb_history_read(eh->ring, since, PB_HISTORY_CAPACITY, s->times, s->values, &s->with_prev);
    return 0;
}

void pb_history_snapshot_cleanup(struct pb_history_snapshot *s)
{
    free(s->times);
    free(s->values);
    free(s->groups);
    memset(s, 0, sizeof(*s));
}
