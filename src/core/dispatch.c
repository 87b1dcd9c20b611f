/* dispatch.c - the dispatcher thread: from committed deliveries to attempts.
 *
 * One thread owns every output's queues, the retry timers, the jq programs
 * and the async HTTP client; it runs the engine's loop (pb_loop). It never
 * blocks on a partner: attempts run concurrently (curl multi, or the
 * output's worker threads), bounded per output by `concurrency` and
 * `rate_limit`, and each output progresses on its own.
 *
 * A delivery reaches memory from the inbox (committed by an ingest, a
 * route or a fan-out) or from a claim (pagein.c), is scheduled by sched.c
 * (keys, timers, rate, concurrency), attempted by attempt.c, and finished
 * when its result is final. Every delivery in memory is leased to this
 * process, and its results are recorded only while that lease holds.
 *
 * With ordering.key, deliveries sharing a key go out one at a time per output,
 * in acceptance order, retries included: a key is busy from admission of its
 * head until that delivery is finished (delivered, dead or filtered). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dispatch_int.h"
#include "core/tail.h"
#include "patchbay/pb_log.h"

#define POLL_MAX_MS 500
#define RETENTION_HOLD "retention"

/* ---- a delivery's life ------------------------------------------------------------------ */

void pb__dl_clear_attempt(struct pb_dl *dl)
{
    free(dl->payload);
    dl->payload = NULL;
    free(dl->tracestate);
    dl->tracestate = NULL;
    if (!dl->tmpl)
        return;
    for (size_t i = 0; i < dl->out->ntmpls; i++)
        free(dl->tmpl[i]);
    free(dl->tmpl);
    dl->tmpl = NULL;
}

void pb__disp_dl_free(struct pb_dl *dl)
{
    pb__dl_clear_attempt(dl);
    free(dl->si.rkey);
    pb_msg_unref(dl->msg);
    free(dl);
}

void pb__disp_schedule(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    pb_sched_later(&d->sched, &dl->si, now);
}

void pb__disp_finish(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    dl->out->inmem--;
    pb_sched_finish(&d->sched, &dl->si, now);
    pb__disp_dl_free(dl);
}

void pb__disp_settle(struct pb_dispatcher *d, struct pb_dl *dl, enum pb_dstate state,
                     const char *reason, int64_t now)
{
    struct pb_output *o = dl->out;
    dl->attempts++;
    dl->started_at = now;
    pb__disp_submit_result(d, dl, state, 0, 0, reason, NULL, 0);
    if (state == PB_DSTATE_DEAD) {
        char safe[PB_ERROR_EXCERPT_MAX];
        PB_WARN("dead-lettered pipeline=%s output=%s msg_id=%s delivery_id=%lld reason=\"%s\"",
                o->pl->name, o->name, dl->msg->id, (long long)dl->id,
                pb_log_value(reason, safe, sizeof(safe)));
    }
    pb__disp_finish(d, dl, now);
}

void pb__disp_attempt_ended(struct pb_dispatcher *d, struct pb_output *o)
{
    pb_sched_ended(&o->sq);
    d->inflight--;
    atomic_store(&o->inflight_gauge, (int64_t)o->sq.inflight);
}

void pb__disp_end_attempt(struct pb_dispatcher *d, struct pb_dl *dl)
{
    pb__disp_attempt_ended(d, dl->out);
    pb__disp_finish(d, dl, pb_now_ms());
}

/* $meta of m as a jv (null when it has none, or q does not read it).
 * Dispatcher thread. */
static jv msg_meta(const struct pb_msg *m, const struct pb_jq *q)
{
    jv meta;
    if (!m->meta || !pb_jq_uses_meta(q) || pb_jq_parse(m->meta, m->meta_len, &meta, NULL) != 0)
        return jv_null();
    return meta;
}

/* A key program's value on body with $meta (both taken): *key malloc'd,
 * NULL when it gives null or nothing. */
static int run_key(struct pb_jq *q, jv body, jv meta, char **key, struct pb_err *err)
{
    return pb_jq_key(q, body, meta, key, NULL, err);
}

int pb__disp_key(struct pb_pipeline *pl, jv body, jv meta, char **key, struct pb_err *err)
{
    return run_key(pl->key_jq, body, meta, key, err);
}

/* The rate_limit key of the message as it reaches o. */
static int rate_key(struct pb_output *o, struct pb_msg *m, char **key, struct pb_err *err)
{
    jv in;
    int rc = pb_jq_parse(m->body, m->len, &in, err);
    if (rc)
        return rc;
    return run_key(o->rate_key_jq, in, msg_meta(m, o->rate_key_jq), key, err);
}

/* The ordering key of m: the one the route stage took from the message as
 * received, or, when it left the body as it was, the body's. */
static int compute_key(struct pb_pipeline *pl, struct pb_msg *m, char **key, struct pb_err *err)
{
    jv in;
    *key = NULL;
    if (m->okey_known) {
        *key = m->okey ? strdup(m->okey) : NULL;
        return m->okey && !*key ? pb_err_set(err, PB_ENOMEM, "out of memory") : 0;
    }
    int rc = pb_jq_parse(m->body, m->len, &in, err);
    if (rc)
        return rc;
    return pb__disp_key(pl, in, msg_meta(m, pl->key_jq), key, err);
}

void pb__disp_admit(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    struct pb_output *o = dl->out;
    struct pb_pipeline *pl = o->pl;
    o->inmem++;
    snprintf(dl->idem, sizeof(dl->idem), "%s.%s", dl->msg->id, o->name);
    dl->si.q = &o->sq;
    if (dl->msg->damaged) {
        /* Sending it would hand the partner something we never received. */
        pb__disp_settle(d, dl, PB_DSTATE_DEAD,
                        "stored body damaged: it no longer matches the checksum taken at "
                        "ingest (the state store's file was changed on disk)",
                        now);
        return;
    }
    char *key = NULL;
    if (pl->key_jq) {
        struct pb_err err = {0};
        if (compute_key(pl, dl->msg, &key, &err) != 0) {
            char reason[PB_ERR_MSG_MAX + 32];
            snprintf(reason, sizeof(reason), "ordering key: %s", err.msg);
            pb__disp_settle(d, dl, PB_DSTATE_DEAD, reason, now);
            return;
        }
    }
    if (o->rate_key_jq && !dl->si.rkey) {
        struct pb_err err = {0};
        if (rate_key(o, dl->msg, &dl->si.rkey, &err) != 0) {
            free(key);
            char reason[PB_ERR_MSG_MAX + 32];
            snprintf(reason, sizeof(reason), "rate_limit.key: %s", err.msg);
            pb__disp_settle(d, dl, PB_DSTATE_DEAD, reason, now);
            return;
        }
    }
    int rc = pb_sched_admit(&d->sched, &o->sq, &dl->si, key, now);
    free(key);
    if (rc) {
        /* Without memory to order it, leave it for a later page-in. */
        o->inmem--;
        pb__disp_release_later(d, dl);
    }
}

static void drop_item(struct pb_sched_item *it, void *arg)
{
    struct pb_output *o = arg;
    o->inmem--;
    pb__disp_dl_free(pb__dl_of(it));
}

void pb__disp_drop_all(struct pb_dispatcher *d, struct pb_output *out, int64_t now)
{
    (void)now;
    pb_sched_drain(&d->sched, &out->sq, drop_item, out);
}

/* ---- the loop ------------------------------------------------------------------------------- */

static void take_inbox(struct pb_dispatcher *d, int64_t now)
{
    pthread_mutex_lock(&d->lock);
    struct pb_dl *list = d->inbox_head;
    d->inbox_head = d->inbox_tail = NULL;
    pthread_mutex_unlock(&d->lock);
    size_t cap = (size_t)d->e->cfg->limits.in_memory;
    while (list) {
        struct pb_dl *dl = list;
        list = list->next;
        dl->next = NULL;
        struct pb_output *o = dl->out;
        if (o->gone) {
            /* Made for a sub-output removed meanwhile: it ends here, visibly. */
            o->inmem++;
            dl->si.q = &o->sq; /* holds no key, waits nowhere */
            pb__disp_settle(d, dl, PB_DSTATE_DEAD, "sub-output removed", now);
        } else if (!dl->leased) {
            /* Made while the output was spilled: a claim takes it. */
            pb__disp_store_has_more(o);
            pb__disp_dl_free(dl);
        } else if (atomic_load(&o->spilled) || o->inmem >= cap) {
            pb__disp_release_later(d, dl);
        } else {
            pb__disp_admit(d, dl, now);
        }
    }
}

static void expire_done_cb(struct pb_op *op, void *arg)
{
    struct pb_dispatcher *d = arg;
    if (op->status)
        PB_WARN("retention clean-up failed error=\"%s\"", pb_strerror(op->status));
    else if (op->u.expire.deleted)
        PB_INFO("retention clean-up deleted=%lld", (long long)op->u.expire.deleted);
    /* A full pass means more is due: go again soon instead of in a minute. */
    if (op->status == 0 && op->u.expire.deleted >= PB_STORE_EXPIRE_BATCH)
        atomic_store(&d->expire_again, true);
    free(op);
}

static void maybe_expire(struct pb_dispatcher *d, int64_t now)
{
    if (atomic_exchange(&d->expire_again, false))
        d->next_expire_at = now + 1000;
    if (now < d->next_expire_at)
        return;
    d->next_expire_at = now + 60 * 1000;
    /* In a cluster, one node cleans up: the one holding "retention". */
    if (pb_store_clustered(d->e->store) && !pb_store_holds(d->e->store, RETENTION_HOLD))
        return;
    struct pb_op *op = calloc(1, sizeof(*op));
    if (!op)
        return;
    op->kind = PB_OP_EXPIRE;
    op->u.expire.now = now;
    op->u.expire.retention_ms = d->e->cfg->retention_ms;
    op->done_cb = expire_done_cb;
    op->arg = d;
    if (pb_store_submit(d->e->store, op))
        free(op);
}

static void rebuild_all(struct pb_dispatcher *d)
{
    struct pb_config *cfg = d->e->cfg;
    size_t n = 0;
    for (size_t i = 0; i < cfg->npipelines; i++) {
        n += cfg->pipelines[i].routes;
        for (size_t j = 0; j < cfg->pipelines[i].nouts; j++)
            n += 1 + cfg->pipelines[i].outs[j].nvouts;
    }
    struct pb_output **all = malloc((n ? n : 1) * sizeof(*all));
    if (!all)
        return; /* keep the old list; try again next turn */
    n = 0;
    for (size_t i = 0; i < cfg->npipelines; i++) {
        if (cfg->pipelines[i].routes)
            all[n++] = &cfg->pipelines[i].router;
        for (size_t j = 0; j < cfg->pipelines[i].nouts; j++) {
            struct pb_output *o = &cfg->pipelines[i].outs[j];
            all[n++] = o;
            for (size_t k = 0; k < o->nvouts; k++)
                all[n++] = o->vouts[k];
        }
    }
    free(d->all);
    d->all = all;
    d->nall = n;
    d->all_dirty = false;
}

/* Gone sub-outputs: what they hold is dropped, and they are freed. */
static void reap_subs(struct pb_dispatcher *d, int64_t now)
{
    struct pb_config *cfg = d->e->cfg;
    for (size_t i = 0; i < cfg->npipelines; i++)
        for (size_t j = 0; j < cfg->pipelines[i].nouts; j++)
            if (cfg->pipelines[i].outs[j].nvouts)
                pb__subs_reap(d, &cfg->pipelines[i].outs[j], now);
}

/* Run what other threads posted (now < 0: the dispatcher is going away). */
static void run_posts(struct pb_dispatcher *d, int64_t now)
{
    pthread_mutex_lock(&d->lock);
    struct pb__disp_post *p = d->posts_head;
    d->posts_head = d->posts_tail = NULL;
    pthread_mutex_unlock(&d->lock);
    while (p) {
        struct pb__disp_post *next = p->next;
        p->fn(d, p, now);
        p = next;
    }
}

/* One turn: take what came in, page in, start what may start; returns how
 * long the loop may sleep. */
static int64_t turn(struct pb_dispatcher *d, int64_t now)
{
    int64_t wait = POLL_MAX_MS;
    reap_subs(d, now);
    if (d->all_dirty)
        rebuild_all(d);
    take_inbox(d, now);
    pb__disp_flush_releases(d);
    for (size_t i = 0; i < d->nall; i++)
        pb__disp_page_in(d, d->all[i], now, &wait);
    pb_sched_due(&d->sched, now);
    maybe_expire(d, now);
    bool unrecorded = pb__disp_redo_results(d, now, &wait);
    /* A node of a shared store whose heartbeats have not got through for
     * nearly a lease (frozen, cut off) may have lost what it holds to the
     * others: it starts nothing until a heartbeat gets through again. */
    bool lease_ok = pb_store_lease_valid(d->e->store);
    if (lease_ok != d->lease_ok) {
        d->lease_ok = lease_ok;
        if (lease_ok)
            PB_INFO("cluster heartbeat through again: attempts resume");
        else
            PB_WARN("cluster heartbeat overdue: new attempts paused until it gets through");
    }
    for (size_t i = 0; i < d->nall; i++) {
        struct pb_output *o = d->all[i];
        pb__output_maybe_start(d, o, now, &wait);
        if (!unrecorded && lease_ok && o->started)
            pb__disp_start(d, o, now, &wait);
    }
    int64_t due = pb_sched_next_due(&d->sched, pb_now_ms());
    if (due >= 0 && due < wait)
        wait = due;
    pb__disp_flush_releases(d);
    return wait;
}

static void *disp_main(void *arg)
{
    struct pb_dispatcher *d = arg;
    d->next_expire_at = pb_now_ms() + 5000;
    for (;;) {
        int64_t now = pb_now_ms();
        bool stopping = atomic_load(&d->stop);
        if (stopping && (d->inflight == 0 || pb_mono_us() >= d->stop_deadline_mono_us))
            break;
        run_posts(d, now);
        int64_t wait = stopping ? POLL_MAX_MS : turn(d, now);
        pb_loop_run_once(d->loop, (int)wait);
    }
    int64_t ignored = 0;
    pb__disp_redo_results(d, -1, &ignored); /* the store commits them before it stops */
    return NULL;
}

/* ---- public --------------------------------------------------------------------------------- */

/* What one node of a cluster does for all: the retention clean-up and the
 * keys of each ordered pipeline (pagein.c). */
static int want_holds(struct pb_engine *e, struct pb_err *err)
{
    if (!pb_store_clustered(e->store))
        return 0;
    int rc = pb_store_hold_want(e->store, RETENTION_HOLD);
    for (size_t i = 0; rc == 0 && i < e->cfg->npipelines; i++) {
        struct pb_pipeline *pl = &e->cfg->pipelines[i];
        if (!pl->ordering_key)
            continue;
        snprintf(pl->order_hold, sizeof(pl->order_hold), "ordered/%s", pl->name);
        rc = pb_store_hold_want(e->store, pl->order_hold);
    }
    return rc ? pb_err_set(err, rc, "cannot ask the cluster for what one node does") : 0;
}

struct pb_dispatcher *pb_dispatcher_create(struct pb_engine *e, struct pb_err *err)
{
    struct pb_dispatcher *d = calloc(1, sizeof(*d));
    if (!d) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    d->e = e;
    pb__disp_keys_init(d);
    d->lease_ok = true;
    d->lease = pb_store_epoch(e->store);
    if (want_holds(e, err) != 0) {
        free(d);
        return NULL;
    }
    pthread_mutex_init(&d->lock, NULL);
    for (size_t i = 0; i < e->cfg->npipelines; i++) {
        atomic_store(&e->cfg->pipelines[i].router.spilled, true);
        e->cfg->pipelines[i].router.disp = d;
        for (size_t j = 0; j < e->cfg->pipelines[i].nouts; j++) {
            struct pb_output *o = &e->cfg->pipelines[i].outs[j];
            o->disp = d;
            atomic_store(&o->spilled, true); /* resume whatever the store holds */
        }
    }
    rebuild_all(d);
    if (!d->all) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        pthread_mutex_destroy(&d->lock);
        free(d);
        return NULL;
    }
    return d;
}

/* The dispatcher drives the client; the engine created it before the
 * configuration so outputs could be initialised with it. */
void pb_dispatcher_set_http(struct pb_dispatcher *d, struct pb_loop *loop,
                            struct pb_http_client *http);
void pb_dispatcher_set_http(struct pb_dispatcher *d, struct pb_loop *loop,
                            struct pb_http_client *http)
{
    d->loop = loop;
    d->http = http;
}

int pb_dispatcher_start(struct pb_dispatcher *d)
{
    if (pthread_create(&d->thread, NULL, disp_main, d) != 0)
        return PB_EINTERNAL;
    pthread_setname_np(d->thread, "pb-dispatch");
    d->started = true;
    return 0;
}

bool pb_dispatcher_running(const struct pb_dispatcher *d)
{
    return d && d->started && !atomic_load(&d->stop);
}

void pb_dispatcher_stop(struct pb_dispatcher *d, int64_t timeout_ms)
{
    if (!d || !d->started)
        return;
    pthread_mutex_lock(&d->lock);
    d->closed = true;
    pthread_mutex_unlock(&d->lock);
    d->stop_deadline_mono_us = pb_mono_us() + timeout_ms * 1000;
    atomic_store(&d->stop, true);
    pb_loop_wake(d->loop);
    pthread_join(d->thread, NULL);
    d->started = false;
    /* Outputs stop after their attempts have ended (or the timeout): the
     * plugins' stop runs with nothing more to come. */
    for (size_t i = 0; i < d->nall; i++)
        pb__output_stop(d->all[i]);
    if (d->inflight)
        PB_WARN("shutdown timeout reached attempts_in_flight=%zu (they stay pending and resume "
                "after restart)",
                d->inflight);
}

void pb_dispatcher_destroy(struct pb_dispatcher *d)
{
    if (!d)
        return;
    /* Attempts still in flight end through their callbacks, recording nothing. */
    atomic_store(&d->aborting, true);
    pb_http_client_destroy(d->http);
    d->http = NULL;
    /* Outcomes posted from other threads that the loop has not run yet. */
    if (d->loop)
        pb_loop_run_once(d->loop, 0);
    rebuild_all(d);
    for (size_t i = 0; i < d->nall; i++) {
        pb__disp_drop_all(d, d->all[i], 0);
        pb_sched_q_cleanup(&d->all[i]->sq);
    }
    pb_sched_cleanup(&d->sched);
    for (struct pb_dl *dl = d->inbox_head, *n; dl; dl = n) {
        n = dl->next;
        pb__disp_dl_free(dl);
    }
    run_posts(d, -1); /* aborting is set: each frees what it carries */
    pb__disp_results_cleanup(d);
    free(d->all);
    free(d->release);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

void pb_dispatcher_post_new(struct pb_dispatcher *d, struct pb_pipeline *pl, struct pb_msg *msg,
                            const int64_t *delivery_ids, uint64_t unleased)
{
    struct pb_dl *head = NULL, *tail = NULL;
    pb__tail_received(d->e->tail, pl, msg);
    for (size_t i = 0; i < pl->ningest; i++) {
        struct pb_output *o = pl->ingest_outs[i];
        atomic_fetch_add(&o->backlog, 1);
        struct pb_dl *dl = calloc(1, sizeof(*dl));
        if (!dl) {
            /* Committed: it will be paged in from the store. */
            pb__disp_lost(d, o, (i < 64 && (unleased >> i & 1)) ? 0 : delivery_ids[i]);
            continue;
        }
        dl->id = delivery_ids[i];
        dl->msg = pb_msg_ref(msg);
        dl->out = o;
        dl->disp = d;
        dl->si.next_at = msg->received_at;
        dl->leased = !(i < 64 && (unleased >> i & 1));
        if (tail)
            tail->next = dl;
        else
            head = dl;
        tail = dl;
    }
    pb__disp_inbox_append(d, head, tail);
}

/* The dispatcher takes the whole inbox at once: only the first append
 * after it did wakes it. */
void pb__disp_inbox_append(struct pb_dispatcher *d, struct pb_dl *head, struct pb_dl *tail)
{
    pthread_mutex_lock(&d->lock);
    if (d->closed) {
        pthread_mutex_unlock(&d->lock);
        for (struct pb_dl *dl = head, *n; dl; dl = n) {
            n = dl->next;
            pb__disp_dl_free(dl);
        }
        return;
    }
    bool wake = !d->inbox_head;
    if (head) {
        if (d->inbox_tail)
            d->inbox_tail->next = head;
        else
            d->inbox_head = head;
        d->inbox_tail = tail;
    }
    pthread_mutex_unlock(&d->lock);
    if (wake && d->loop)
        pb_loop_wake(d->loop);
}

void pb_dispatcher_post_children(struct pb_dispatcher *d, struct pb_msg *msg,
                                 struct pb_output *const *outs, const int64_t *ids,
                                 const unsigned char *unleased, size_t n)
{
    struct pb_dl *head = NULL, *tail = NULL;
    int64_t now = pb_now_ms();
    for (size_t i = 0; i < n; i++) {
        atomic_fetch_add(&outs[i]->backlog, 1);
        struct pb_dl *dl = calloc(1, sizeof(*dl));
        if (!dl) {
            pb__disp_lost(d, outs[i], unleased && unleased[i] ? 0 : ids[i]);
            continue;
        }
        dl->id = ids[i];
        dl->msg = pb_msg_ref(msg);
        dl->out = outs[i];
        dl->disp = d;
        dl->si.next_at = now;
        dl->leased = !(unleased && unleased[i]);
        if (tail)
            tail->next = dl;
        else
            head = dl;
        tail = dl;
    }
    pb__disp_inbox_append(d, head, tail);
}

struct emit_op {
    struct pb_op op;
    struct pb_dispatcher *d;
    struct pb_pipeline *pl;
    struct pb_msg *msg;
    int64_t *ids;
};

static void emit_done_cb(struct pb_op *op, void *arg)
{
    struct emit_op *em = arg;
    if (op->status == 0) {
        em->msg->seq = op->u.ingest.msg_seq;
        atomic_fetch_add(&em->pl->accepted, 1);
        pb_dispatcher_post_new(em->d, em->pl, em->msg, em->ids, em->op.u.ingest.unleased);
    } else {
        PB_ERROR("internal event not recorded pipeline=%s error=%s", em->pl->name,
                 pb_strerror(op->status));
    }
    pb_msg_unref(em->msg);
    free(em->ids);
    free(em);
}

int pb_dispatcher_emit(struct pb_dispatcher *d, const char *pipeline, const char *body)
{
    struct pb_pipeline *pl = pb_engine_pipeline(d->e, pipeline);
    if (!pl)
        return PB_ENOTFOUND;
    struct emit_op *em = calloc(1, sizeof(*em));
    if (!em)
        return PB_ENOMEM;
    em->d = d;
    em->pl = pl;
    em->msg = pb_msg_create(body, strlen(body), NULL);
    em->ids = calloc(pl->ningest, sizeof(*em->ids));
    if (!em->msg || !em->ids) {
        pb_msg_unref(em->msg);
        free(em->ids);
        free(em);
        return PB_ENOMEM;
    }
    int64_t now = pb_now_ms();
    em->msg->received_at = now;
    pb_msg_new_id(em->msg->id, now);
    em->op.kind = PB_OP_INGEST;
    em->op.done_cb = emit_done_cb;
    em->op.arg = em;
    struct pb_op_ingest *in = &em->op.u.ingest;
    in->pipeline = pl->name;
    in->msg_id = em->msg->id;
    in->body = em->msg->body;
    in->len = em->msg->len;
    in->received_at = now;
    in->noutputs = pl->ningest;
    in->outputs = pl->ingest_names;
    in->first_due_at = now;
    in->delivery_ids = em->ids;
    in->lease = d->lease;
    for (size_t i = 0; i < pl->ningest && i < 64; i++)
        if (atomic_load(&pl->ingest_outs[i]->spilled))
            in->unleased |= (uint64_t)1 << i;
    atomic_fetch_add(&pl->received, 1);
    int rc = pb_store_submit(d->e->store, &em->op);
    if (rc) {
        pb_msg_unref(em->msg);
        free(em->ids);
        free(em);
    }
    return rc;
}

void pb_pipeline_each_output(struct pb_pipeline *pl, void (*fn)(struct pb_output *o, void *arg),
                             void *arg)
{
    for (size_t j = 0; j < pl->nouts; j++) {
        struct pb_output *o = &pl->outs[j];
        fn(o, arg);
        pthread_mutex_lock(&o->vlock);
        for (size_t k = 0; k < o->nvouts; k++)
            fn(o->vouts[k], arg);
        pthread_mutex_unlock(&o->vlock);
    }
}

void pb_dispatcher_notify_store(struct pb_dispatcher *d, struct pb_output *out)
{
    pb__disp_store_has_more(out);
    if (d && d->loop)
        pb_loop_wake(d->loop);
}

void pb__disp_post(struct pb_dispatcher *d, struct pb__disp_post *p)
{
    p->next = NULL;
    pthread_mutex_lock(&d->lock);
    bool wake = !d->posts_head;
    if (d->posts_tail)
        d->posts_tail->next = p;
    else
        d->posts_head = p;
    d->posts_tail = p;
    pthread_mutex_unlock(&d->lock);
    if (wake && d->loop)
        pb_loop_wake(d->loop);
}
