/* cluster_kv.c - shared key-value state followed across a cluster. When
 * another node writes a key of the store's key-value table (a webhook
 * endpoint, an OAuth2 token, a circuit breaker's state), the store's node
 * thread says so (pb_store_events.kv, from a NOTIFY); the key is read back
 * here and handed to whom it belongs: the output whose scope it is
 * ("output/<pipeline>/<output>": its plugin's kv_changed), the OAuth2
 * sources ("oauth2"), the dispatcher's flow control ("flow": breakers and
 * partners' holds, cluster_flow.c).
 *
 * Threads: pb__cluster_kv_event runs on the store's node thread and only
 * queues; reads and the owners' calls run on one thread of its own
 * ("pb-kv"), one change at a time, so a slow database never holds the node
 * thread. A change already queued and not yet read is not queued twice: the
 * read gets the latest value anyway. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/oauth2.h"
#include "core/workers.h"
#include "patchbay/pb_log.h"

#define QUEUED_MAX 4096

struct kv_job {
    struct pb_job job;
    struct kv_job *next_q; /* queued, not yet taken */
    char *scope, *key;     /* key NULL: any key of scope */
};

static struct {
    pthread_mutex_t lock;
    struct pb_workers *w;
    struct pb_engine *e;
    struct kv_job *queued;
    size_t nqueued;
} kv = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void job_free(struct kv_job *j)
{
    free(j->scope);
    free(j->key);
    free(j);
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

struct find_key {
    const char *key;
    void *value;
    size_t len;
    bool found, oom;
};

static int find_key_cb(void *arg, const char *key, const void *value, size_t len)
{
    struct find_key *f = arg;
    if (strcmp(key, f->key) != 0)
        return 0;
    f->value = malloc(len + 1);
    if (!f->value) {
        f->oom = true;
        return 1;
    }
    memcpy(f->value, value, len);
    ((char *)f->value)[len] = 0;
    f->len = len;
    f->found = true;
    return 1;
}

/* "output/<pipeline>/<output>": the output, if its plugin follows changes. */
static struct pb_output *output_of(struct pb_engine *e, const char *scope)
{
    const char *pl_name = scope + strlen("output/");
    const char *slash = strchr(pl_name, '/');
    if (!slash)
        return NULL;
    char name[PB_NAME_MAX * 2];
    size_t n = (size_t)(slash - pl_name);
    if (n >= sizeof(name))
        return NULL;
    memcpy(name, pl_name, n);
    name[n] = 0;
    struct pb_pipeline *pl = pb_engine_pipeline(e, name);
    struct pb_output *o = pl ? pb_pipeline_output(pl, slash + 1) : NULL;
    return o && !o->is_virtual && o->ctx_ready && o->plugin->kv_changed ? o : NULL;
}

static void output_changed(struct pb_engine *e, struct pb_output *o, const char *scope,
                           const char *key)
{
    if (!key) {
        o->plugin->kv_changed(o->ctx, o, NULL, NULL, 0);
        return;
    }
    struct find_key f = {.key = key};
    struct pb_err err = {0};
    if (pb_store_kv_load(e->store, scope, find_key_cb, &f, &err) != 0 || f.oom) {
        PB_WARN("shared state not read scope=%s key=%s error=\"%s\"", scope, key,
                f.oom ? "out of memory" : err.msg);
        free(f.value);
        return;
    }
    o->plugin->kv_changed(o->ctx, o, key, f.found ? f.value : NULL, f.len);
    free(f.value);
}

static void job_run(struct pb_job *job, int cancelled)
{
    struct kv_job *j = (struct kv_job *)job;
    pthread_mutex_lock(&kv.lock);
    for (struct kv_job **p = &kv.queued; *p; p = &(*p)->next_q)
        if (*p == j) {
            *p = j->next_q;
            kv.nqueued--;
            break;
        }
    struct pb_engine *e = kv.e;
    pthread_mutex_unlock(&kv.lock);
    if (cancelled || !e || atomic_load(&e->stopping))
        goto out;
    PB_DEBUG("shared state changed on another node scope=%s key=%s", j->scope,
             j->key ? j->key : "*");
    if (strncmp(j->scope, "output/", 7) == 0) {
        struct pb_output *o = output_of(e, j->scope);
        if (o)
            output_changed(e, o, j->scope, j->key);
    } else if (strcmp(j->scope, "oauth2") == 0) {
        pb__oauth2_kv_changed(e->store, j->key);
    } else if (strcmp(j->scope, "flow") == 0) {
        pb__cluster_flow_changed(e, j->key);
    }
out:
    job_free(j);
}

void pb__cluster_kv_event(void *arg, const char *scope, const char *key)
{
    (void)arg;
    if (!scope)
        return;
    pthread_mutex_lock(&kv.lock);
    bool skip = !kv.w || kv.nqueued >= QUEUED_MAX;
    for (struct kv_job *q = kv.queued; q && !skip; q = q->next_q)
        if (strcmp(q->scope, scope) == 0 && (!q->key || same(q->key, key)))
            skip = true;
    struct kv_job *j = skip ? NULL : calloc(1, sizeof(*j));
    if (j) {
        j->scope = strdup(scope);
        j->key = key ? strdup(key) : NULL;
        j->job.fn = job_run;
        if (!j->scope || (key && !j->key) || pb_workers_post(kv.w, &j->job) != 0) {
            job_free(j);
            j = NULL;
        } else {
            j->next_q = kv.queued;
            kv.queued = j;
            kv.nqueued++;
        }
    }
    pthread_mutex_unlock(&kv.lock);
    if (!j && !skip)
        PB_WARN("shared state change not followed scope=%s key=%s", scope, key ? key : "*");
}

int pb__cluster_kv_start(struct pb_engine *e)
{
    if (!pb_store_clustered(e->store))
        return 0;
    struct pb_err err = {0};
    struct pb_workers *w = pb_workers_create("pb-kv", 1, &err);
    if (!w)
        return err.code ? err.code : PB_ENOMEM;
    pthread_mutex_lock(&kv.lock);
    kv.w = w;
    kv.e = e;
    pthread_mutex_unlock(&kv.lock);
    return 0;
}

/* After the store's events are off: no new change comes. */
void pb__cluster_kv_stop(void)
{
    pthread_mutex_lock(&kv.lock);
    struct pb_workers *w = kv.w;
    kv.w = NULL;
    pthread_mutex_unlock(&kv.lock);
    pb_workers_destroy(w); /* the change being read ends; the queued ones are dropped */
    pthread_mutex_lock(&kv.lock);
    kv.e = NULL;
    kv.queued = NULL;
    kv.nqueued = 0;
    pthread_mutex_unlock(&kv.lock);
}
