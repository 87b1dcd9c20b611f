/* suboutput.c - what an output plugin may use beyond deliver: sub-outputs
 * (named parts of an output with queues, retries, rate limits, pauses and
 * dead letters of their own, such as webhook endpoints), fanning a delivery
 * out to them, state kept in the store, and events into other pipelines.
 *
 * A sub-output is a virtual struct pb_output owned by its parent (named
 * "<output>/<id>" in metrics and the admin API, kept apart as (output, sub)
 * in the store). The dispatcher thread creates, changes and frees them;
 * other threads post what they want done. A removed one is "gone": nothing
 * new reaches it, what it holds in memory is dropped (the store has made
 * those deliveries dead), and it is freed once no attempt of it is in
 * flight. Readers off the dispatcher walk a parent's list under its vlock. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/dispatch_int.h"
#include "core/input.h"
#include "patchbay/pb_log.h"

static bool sub_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n >= PB_SUB_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* Dispatcher thread, or any thread under parent->vlock. */
static struct pb_output *sub_find(struct pb_output *parent, const char *id)
{
    for (size_t i = 0; i < parent->nvouts; i++)
        if (strcmp(parent->vouts[i]->sub, id) == 0)
            return parent->vouts[i];
    return NULL;
}

/* Dispatcher thread. */
static struct pb_output *sub_create(struct pb_dispatcher *d, struct pb_output *parent,
                                    const char *id)
{
    struct pb_output *v = calloc(1, sizeof(*v));
    size_t nl = strlen(parent->name) + strlen(id) + 2;
    char *name = malloc(nl);
    if (!v || !name)
        goto fail;
    snprintf(name, nl, "%s/%s", parent->name, id);
    if (parent->nvouts == parent->vcap) {
        size_t cap = parent->vcap ? parent->vcap * 2 : 8;
        struct pb_output **grown = malloc(cap * sizeof(*grown));
        if (!grown)
            goto fail;
        if (parent->nvouts)
            memcpy(grown, parent->vouts, parent->nvouts * sizeof(*grown));
        pthread_mutex_lock(&parent->vlock);
        struct pb_output **old = parent->vouts;
        parent->vouts = grown;
        parent->vcap = cap;
        pthread_mutex_unlock(&parent->vlock);
        free(old);
    }
    v->name = name;
    v->sub = name + strlen(parent->name) + 1;
    v->pl = parent->pl;
    v->plugin = parent->plugin;
    v->ctx = parent->ctx;
    v->ctx_ready = true;
    v->common = parent->common; /* shallow: shared, never freed through v */
    v->common.rate_limit = (struct pb_rate){0};
    v->policy = parent->policy;
    v->allow = parent->allow;
    v->map_jq = parent->map_jq;
    v->uses_meta = parent->uses_meta;
    v->env = parent->env;
    v->sq.concurrency = parent->sq.concurrency;
    v->rate_key_jq = NULL;
    pb_flow_init(&v->flow, &parent->common.flow, v->sq.concurrency, pb_now_ms());
    v->is_virtual = true;
    v->parent = parent;
    v->disp = d;
    atomic_store(&v->spilled, true); /* page in whatever the store holds for it */
    atomic_store(&v->state, PB_OUTPUT_CONNECTED);
    pthread_mutex_init(&v->vlock, NULL);
    pthread_mutex_init(&v->slock, NULL);
    pthread_mutex_lock(&parent->vlock);
    parent->vouts[parent->nvouts++] = v;
    pthread_mutex_unlock(&parent->vlock);
    d->all_dirty = true;
    return v;
fail:
    free(v);
    free(name);
    return NULL;
}

void pb__sub_free(struct pb_output *v)
{
    /* Keys left by dropped deliveries; nothing is in flight. */
    pb_sched_q_cleanup(&v->sq);
    pthread_mutex_destroy(&v->vlock);
    pthread_mutex_destroy(&v->slock);
    free(v->name);
    free(v);
}

enum sub_change { SUB_SET = 0, SUB_GONE };

struct sub_post {
    struct pb__disp_post post;
    struct pb_output *parent;
    enum sub_change change;
    struct pb_sub_opts opts;
    char id[PB_SUB_ID_MAX];
};

static void sub_apply(struct pb_dispatcher *d, struct sub_post *sp)
{
    struct pb_output *v = sub_find(sp->parent, sp->id);
    if (sp->change == SUB_GONE) {
        if (v && !v->gone) {
            v->gone = true;
            v->sq.paused = true;
        }
        return;
    }
    if (!v && !(v = sub_create(d, sp->parent, sp->id))) {
        PB_ERROR("out of memory adding sub-output pipeline=%s output=%s sub=%s",
                 sp->parent->pl->name, sp->parent->name, sp->id);
        return;
    }
    v->gone = false;
    v->sq.paused = sp->opts.paused;
    v->common.rate_limit = sp->opts.rate_limit;
    v->sq.rate = sp->opts.rate_limit;
    v->sq.tokens_at = 0;
}

static void sub_post_cb(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now)
{
    struct sub_post *sp = (struct sub_post *)p;
    if (now >= 0)
        sub_apply(d, sp);
    free(sp);
}

static int sub_change(struct pb_output *o, const char *id, enum sub_change change,
                      const struct pb_sub_opts *opts)
{
    if (o->is_virtual || o->is_route || !sub_id_ok(id))
        return PB_EINVAL;
    struct sub_post *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return PB_ENOMEM;
    sp->parent = o;
    sp->change = change;
    if (opts)
        sp->opts = *opts;
    snprintf(sp->id, sizeof(sp->id), "%s", id);
    struct pb_dispatcher *d = o->disp;
    if (!d) {
        free(sp);
        return PB_ESHUTDOWN;
    }
    if (pb_loop_on_thread(d->loop)) {
        sub_apply(d, sp);
        free(sp);
        return 0;
    }
    sp->post.fn = sub_post_cb;
    pb__disp_post(d, &sp->post);
    return 0;
}

int pb_output_sub_set(struct pb_output *o, const char *id, const struct pb_sub_opts *opts)
{
    return sub_change(o, id, SUB_SET, opts);
}

int pb_output_sub_remove(struct pb_output *o, const char *id, const char *reason, int64_t *dead)
{
    if (o->disp && pb_loop_on_thread(o->disp->loop))
        return PB_EINVAL; /* it waits for the store */
    int rc = sub_change(o, id, SUB_GONE, NULL);
    if (rc)
        return rc;
    struct pb_op op = {.kind = PB_OP_SUB_KILL};
    op.u.sub_kill = (struct pb_op_sub_kill){.pipeline = o->pl->name,
                                            .output = o->name,
                                            .sub = id,
                                            .reason = reason ? reason : "sub-output removed",
                                            .now = pb_now_ms()};
    rc = pb_store_exec(o->disp->e->store, &op);
    if (rc == 0) {
        pthread_mutex_lock(&o->vlock);
        struct pb_output *v = sub_find(o, id);
        if (v)
            atomic_fetch_sub(&v->backlog, op.u.sub_kill.dead);
        pthread_mutex_unlock(&o->vlock);
        if (dead)
            *dead = op.u.sub_kill.dead;
    }
    return rc;
}

bool pb_output_sub_exists(struct pb_output *o, const char *id)
{
    pthread_mutex_lock(&o->vlock);
    struct pb_output *v = sub_find(o, id);
    bool yes = v && !v->gone;
    pthread_mutex_unlock(&o->vlock);
    return yes;
}

int pb_output_sub_recover(struct pb_output *o, const char *id, int64_t since, int64_t *count)
{
    if (!sub_id_ok(id))
        return PB_EINVAL;
    struct pb_op op = {.kind = PB_OP_REPLAY_ALL};
    int64_t total = 0;
    do {
        op.u.replay_all = (struct pb_op_replay_all){.pipeline = o->pl->name,
                                                    .output = o->name,
                                                    .sub = id,
                                                    .since = since,
                                                    .now = pb_now_ms()};
        int rc = pb_store_exec(o->disp->e->store, &op);
        if (rc)
            return rc;
        total += op.u.replay_all.count;
    } while (op.u.replay_all.more);
    pthread_mutex_lock(&o->vlock);
    struct pb_output *v = sub_find(o, id);
    if (v) {
        atomic_fetch_add(&v->backlog, total);
        pb_dispatcher_notify_store(o->disp, v);
    }
    pthread_mutex_unlock(&o->vlock);
    if (count)
        *count = total;
    return 0;
}

/* Dispatcher thread, each turn: drop what gone sub-outputs hold and free
 * those with nothing left in flight. */
void pb__subs_reap(struct pb_dispatcher *d, struct pb_output *parent, int64_t now)
{
    for (size_t i = 0; i < parent->nvouts;) {
        struct pb_output *v = parent->vouts[i];
        if (!v->gone) {
            i++;
            continue;
        }
        pb__disp_drop_all(d, v, now);
        if (v->inmem || v->sq.inflight || v->claiming) {
            i++;
            continue;
        }
        pthread_mutex_lock(&parent->vlock);
        parent->vouts[i] = parent->vouts[--parent->nvouts];
        pthread_mutex_unlock(&parent->vlock);
        d->all_dirty = true;
        pb__sub_free(v);
    }
}

/* ---- fan-out ------------------------------------------------------------------------- */

struct fanout_op {
    struct pb_op op;
    struct pb_output *parent;
    struct pb_dispatcher *d;
    struct pb_msg *msg;
    int64_t parent_id;
    size_t n;
    struct pb_output **outs;
    const char **subs;
    unsigned char *unleased;
    int64_t *ids;
    char note[PB_ERROR_EXCERPT_MAX];
};

static void fanout_free(struct fanout_op *f)
{
    pb_msg_unref(f->msg);
    free(f->outs);
    free(f->subs);
    free(f->unleased);
    free(f->ids);
    free(f);
}

/* Writer or syncer thread. */
static void fanout_done_cb(struct pb_op *op, void *arg)
{
    struct fanout_op *f = arg;
    if (op->status == 0) {
        atomic_fetch_add(&f->parent->delivered, 1);
        atomic_fetch_sub(&f->parent->backlog, 1);
        if (f->n)
            pb_dispatcher_post_children(f->d, f->msg, f->outs, f->ids, f->unleased, f->n);
    } else if (op->status != PB_ENOTFOUND) {
        PB_WARN("fan-out not recorded pipeline=%s output=%s msg_id=%s error=%s (fanned out "
                "again)",
                f->parent->pl->name, f->parent->name, f->msg->id, pb_strerror(op->status));
        pb__disp_lost(f->d, f->parent, f->parent_id);
    }
    fanout_free(f);
}

struct fanout_post {
    struct pb__disp_post post;
    struct pb_delivery *d;
    size_t n;
    char note[PB_ERROR_EXCERPT_MAX];
    char subs[][PB_SUB_ID_MAX];
};

static void fanout_now(struct pb_dispatcher *d, struct pb_dl *dl, const char *const *subs, size_t n,
                       const char *note)
{
    struct pb_output *o = dl->out;
    struct fanout_op *f = calloc(1, sizeof(*f));
    size_t cap = n ? n : 1;
    if (!f || !(f->outs = calloc(cap, sizeof(*f->outs))) ||
        !(f->subs = calloc(cap, sizeof(*f->subs))) || !(f->ids = calloc(cap, sizeof(*f->ids))) ||
        !(f->unleased = calloc(cap, 1))) {
        if (f)
            fanout_free(f);
        struct pb_outcome oc = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "out of memory"};
        pb_delivery_done(&dl->d, &oc);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct pb_output *v = sub_find(o, subs[i]);
        if (!v || v->gone)
            continue; /* removed meanwhile */
        f->outs[f->n] = v;
        f->subs[f->n] = v->sub;
        f->unleased[f->n] = atomic_load(&v->spilled);
        f->n++;
    }
    snprintf(f->note, sizeof(f->note), "%s", note ? note : "fanned out");
    f->d = d;
    f->parent = o;
    f->parent_id = dl->id;
    f->msg = pb_msg_ref(dl->msg);
    f->op.kind = PB_OP_FANOUT;
    f->op.done_cb = fanout_done_cb;
    f->op.arg = f;
    f->op.u.fanout = (struct pb_op_fanout){
        .delivery_id = dl->id,
        .attempt = dl->attempts,
        .now = pb_now_ms(),
        .lease = d->lease,
        .n = f->n,
        .subs = f->subs,
        .unleased = f->unleased,
        .note = f->note,
        .child_ids = f->ids,
    };
    if (pb_store_submit(d->e->store, &f->op) != 0) {
        fanout_free(f);
        struct pb_outcome oc = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "shutting down"};
        pb_delivery_done(&dl->d, &oc);
        return;
    }
    pb__disp_end_attempt(d, dl); /* finished; counted when the fan-out is committed */
}

static void fanout_post_cb(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now)
{
    struct fanout_post *fp = (struct fanout_post *)p;
    struct pb_dl *dl = fp->d->core;
    if (now < 0) {
        struct pb_outcome oc = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "shutting down"};
        pb_delivery_done(fp->d, &oc);
    } else {
        const char **subs = calloc(fp->n ? fp->n : 1, sizeof(*subs));
        if (!subs) {
            struct pb_outcome oc = {
                .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "out of memory"};
            pb_delivery_done(fp->d, &oc);
            free(fp);
            return;
        }
        for (size_t i = 0; i < fp->n; i++)
            subs[i] = fp->subs[i];
        fanout_now(d, dl, subs, fp->n, fp->note);
        free(subs);
    }
    free(fp);
}

void pb_delivery_fanout(struct pb_delivery *pd, const char *const *subs, size_t n, const char *note)
{
    struct pb_dl *dl = pd->core;
    struct pb_dispatcher *d = dl->disp;
    if (pb_loop_on_thread(d->loop)) {
        fanout_now(d, dl, subs, n, note);
        return;
    }
    struct fanout_post *fp = malloc(sizeof(*fp) + n * sizeof(fp->subs[0]));
    if (!fp) {
        struct pb_outcome oc = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "out of memory"};
        pb_delivery_done(pd, &oc);
        return;
    }
    fp->d = pd;
    fp->n = n;
    snprintf(fp->note, sizeof(fp->note), "%s", note ? note : "fanned out");
    for (size_t i = 0; i < n; i++)
        snprintf(fp->subs[i], sizeof(fp->subs[i]), "%s", subs[i]);
    fp->post.fn = fanout_post_cb;
    pb__disp_post(d, &fp->post);
}

/* ---- state in the store ------------------------------------------------------------------ */

static void kv_scope(const struct pb_output *o, char *buf, size_t len)
{
    snprintf(buf, len, "output/%s/%s", o->pl->name, o->name);
}

static int kv_cache_cb(void *arg, const char *key, const void *value, size_t len)
{
    struct pb_output *o = arg;
    struct pb_kv_entry *e = malloc(sizeof(*e) + strlen(key) + 1 + len + 1);
    if (!e)
        return 1;
    e->key = (char *)(e + 1);
    strcpy(e->key, key);
    e->value = e->key + strlen(key) + 1;
    memcpy(e->value, value, len);
    e->value[len] = 0;
    e->len = len;
    e->next = o->kv;
    o->kv = e;
    return 0;
}

int pb__output_kv_load(struct pb_output *o, struct pb_store *store, struct pb_err *err)
{
    char scope[2 * PB_NAME_MAX + 16];
    kv_scope(o, scope, sizeof(scope));
    return pb_store_kv_load(store, scope, kv_cache_cb, o, err);
}

void pb__output_kv_drop(struct pb_output *o)
{
    for (struct pb_kv_entry *e = o->kv, *n; e; e = n) {
        n = e->next;
        free(e);
    }
    o->kv = NULL;
}

int pb_output_kv_each(struct pb_output *o, pb_kv_fn fn, void *arg)
{
    for (struct pb_kv_entry *e = o->kv; e; e = e->next)
        if (fn(arg, e->key, e->value, e->len))
            break;
    return 0;
}

int pb_output_kv_get_all(struct pb_output *o, pb_kv_fn fn, void *arg)
{
    char scope[2 * PB_NAME_MAX + 16];
    struct pb_err err = {0};
    if (!o->disp || pb_loop_on_thread(o->disp->loop))
        return PB_EINVAL;
    kv_scope(o, scope, sizeof(scope));
    return pb_store_kv_load(o->disp->e->store, scope, fn, arg, &err);
}

int pb_output_kv_put_wait(struct pb_output *o, const char *key, const void *value, size_t len)
{
    char scope[2 * PB_NAME_MAX + 16];
    if (!key || (o->disp && pb_loop_on_thread(o->disp->loop)))
        return PB_EINVAL;
    kv_scope(o, scope, sizeof(scope));
    struct pb_kv_put kv = {.scope = scope, .key = key, .value = value, .len = len};
    struct pb_op op = {.kind = PB_OP_KV};
    op.u.kv = (struct pb_op_kv){.n = 1, .kv = &kv, .now = pb_now_ms()};
    return pb_store_exec(o->disp->e->store, &op);
}

struct kv_async {
    struct pb_op op;
    struct pb_kv_put kv;
    void (*done)(void *arg, int status);
    void *arg;
    int status;
    struct pb_loop *loop; /* where done runs */
    struct pb_loop_node node;
    char data[]; /* scope, key and value */
};

static void kv_async_post(void *arg, int status)
{
    struct kv_async *ka = arg;
    (void)status; /* cancelled: done runs all the same, so it can free what it holds */
    ka->done(ka->arg, ka->status);
    free(ka);
}

/* Writer or syncer thread. */
static void kv_async_done(struct pb_op *op, void *arg)
{
    struct kv_async *ka = arg;
    ka->status = op->status;
    if (!ka->done) {
        if (op->status)
            PB_WARN("output state not recorded key=%s error=%s", ka->kv.key,
                    pb_strerror(op->status));
        free(ka);
        return;
    }
    if (pb_loop_post_node(ka->loop, &ka->node, kv_async_post, ka) != 0)
        free(ka);
}

int pb_output_kv_put(struct pb_output *o, const char *key, const void *value, size_t len,
                     void (*done)(void *arg, int status), void *arg)
{
    char scope[2 * PB_NAME_MAX + 16];
    if (!key || !o->disp)
        return PB_EINVAL;
    kv_scope(o, scope, sizeof(scope));
    size_t sl = strlen(scope) + 1, kl = strlen(key) + 1;
    struct kv_async *ka = malloc(sizeof(*ka) + sl + kl + len);
    if (!ka)
        return PB_ENOMEM;
    memset(ka, 0, sizeof(*ka));
    memcpy(ka->data, scope, sl);
    memcpy(ka->data + sl, key, kl);
    if (value && len)
        memcpy(ka->data + sl + kl, value, len);
    ka->kv = (struct pb_kv_put){.scope = ka->data,
                                .key = ka->data + sl,
                                .value = value ? ka->data + sl + kl : NULL,
                                .len = len};
    ka->done = done;
    ka->arg = arg;
    ka->loop = o->disp->loop;
    ka->op = (struct pb_op){.kind = PB_OP_KV, .done_cb = kv_async_done, .arg = ka};
    ka->op.u.kv = (struct pb_op_kv){.n = 1, .kv = &ka->kv, .now = pb_now_ms()};
    int rc = pb_store_submit(o->disp->e->store, &ka->op);
    if (rc)
        free(ka);
    return rc;
}

/* ---- events -------------------------------------------------------------------------------- */

static void emit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    char *pipeline = arg;
    (void)res;
    (void)n;
    if (status)
        PB_ERROR("event not recorded pipeline=%s error=%s", pipeline, pb_strerror(status));
    free(pipeline);
}

int pb_output_emit(struct pb_output *o, const char *pipeline, const char *json, size_t len)
{
    struct pb_pipeline *pl = o->disp ? pb_engine_pipeline(o->disp->e, pipeline) : NULL;
    if (!pl || !pl->in)
        return PB_ENOTFOUND;
    char *arg = strdup(pipeline);
    json_t *m =
        json_pack("{s:{s:s, s:s}}", "event_from", "pipeline", o->pl->name, "output", o->name);
    char *meta = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    int rc = PB_ENOMEM;
    if (arg && meta) {
        struct pb_item item = {.body = json, .len = len, .meta = meta, .meta_len = strlen(meta)};
        rc = pb_input_submit(pl->in, &item, 1, NULL, 0, emit_cb, arg);
    }
    free(meta);
    if (rc)
        free(arg);
    return rc;
}

void *pb_output_ctx(struct pb_output *o)
{
    return o->ctx;
}

const struct pb_allowlist *pb_output_allow(const struct pb_output *o)
{
    return o->allow;
}
