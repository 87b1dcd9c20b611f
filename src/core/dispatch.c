/* dispatch.c - the dispatcher thread: from committed deliveries to attempts.
 *
 * One thread owns every output's queues, the retry timer heap, the jq
 * programs and the async HTTP client. It never blocks on a partner: attempts
 * run concurrently in curl multi, bounded per output by `concurrency` and
 * `rate_limit`, and each output progresses on its own.
 *
 * Memory is bounded: an output holds at most limits.in_memory deliveries.
 * Past that it is "spilled": new deliveries stay in the store only, unleased,
 * and are claimed back, in id order, as room frees up (see "paging in").
 * Every delivery in memory is leased to this process, and its results are
 * recorded only while that lease holds.
 *
 * With ordering.key, deliveries sharing a key go out one at a time per output,
 * in acceptance order, retries included: a key is busy from admission of its
 * head until that delivery is finished (delivered, dead or filtered). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dispatch_int.h"
#include "core/template.h"
#include "patchbay/pb_log.h"

#define LOAD_BATCH_MAX 2048
#define POLL_MAX_MS 500

struct result_op {
    struct pb_op op;
    struct pb_dispatcher *d;
    struct pb_output *out;
    struct result_op *redo_next;
    bool failed; /* counted in unrecorded */
    char error[PB_ERROR_EXCERPT_MAX + 1];
};

#define REDO_DELAY_MIN_MS 50
#define REDO_DELAY_MAX_MS 2000

/* ---- timer heap ------------------------------------------------------------------ */

static void heap_swap(struct pb_dispatcher *d, size_t a, size_t b)
{
    struct pb_dl *t = d->heap[a];
    d->heap[a] = d->heap[b];
    d->heap[b] = t;
    d->heap[a]->heap_idx = a;
    d->heap[b]->heap_idx = b;
}

static int heap_push(struct pb_dispatcher *d, struct pb_dl *dl)
{
    if (d->nheap == d->heapcap) {
        size_t cap = d->heapcap ? d->heapcap * 2 : 256;
        struct pb_dl **h = realloc(d->heap, cap * sizeof(*h));
        if (!h)
            return PB_ENOMEM;
        d->heap = h;
        d->heapcap = cap;
    }
    size_t i = d->nheap++;
    d->heap[i] = dl;
    dl->heap_idx = i;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (d->heap[p]->next_at <= d->heap[i]->next_at)
            break;
        heap_swap(d, p, i);
        i = p;
    }
    return 0;
}

static void heap_down(struct pb_dispatcher *d, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < d->nheap && d->heap[l]->next_at < d->heap[m]->next_at)
            m = l;
        if (r < d->nheap && d->heap[r]->next_at < d->heap[m]->next_at)
            m = r;
        if (m == i)
            break;
        heap_swap(d, i, m);
        i = m;
    }
}

static struct pb_dl *heap_pop(struct pb_dispatcher *d)
{
    struct pb_dl *top = d->heap[0];
    d->nheap--;
    if (d->nheap) {
        d->heap[0] = d->heap[d->nheap];
        d->heap[0]->heap_idx = 0;
        heap_down(d, 0);
    }
    return top;
}

/* ---- per-key queues -------------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static struct pb_keyq *keyq_find(struct pb_output *o, const char *key, uint64_t h)
{
    if (!o->keycap)
        return NULL;
    for (struct pb_keyq *k = o->keys[h & (o->keycap - 1)]; k; k = k->next)
        if (k->hash == h && strcmp(k->key, key) == 0)
            return k;
    return NULL;
}

static int keyq_grow(struct pb_output *o)
{
    size_t cap = o->keycap ? o->keycap * 2 : 64;
    struct pb_keyq **t = calloc(cap, sizeof(*t));
    if (!t)
        return PB_ENOMEM;
    for (size_t i = 0; i < o->keycap; i++) {
        for (struct pb_keyq *k = o->keys[i], *n; k; k = n) {
            n = k->next;
            k->next = t[k->hash & (cap - 1)];
            t[k->hash & (cap - 1)] = k;
        }
    }
    free(o->keys);
    o->keys = t;
    o->keycap = cap;
    return 0;
}

static struct pb_keyq *keyq_add(struct pb_output *o, const char *key, uint64_t h)
{
    if (o->nkeys + 1 > o->keycap && keyq_grow(o))
        return NULL;
    struct pb_keyq *k = calloc(1, sizeof(*k));
    if (!k || !(k->key = strdup(key))) {
        free(k);
        return NULL;
    }
    k->hash = h;
    k->next = o->keys[h & (o->keycap - 1)];
    o->keys[h & (o->keycap - 1)] = k;
    o->nkeys++;
    return k;
}

static void keyq_remove(struct pb_output *o, struct pb_keyq *kq)
{
    struct pb_keyq **pp = &o->keys[kq->hash & (o->keycap - 1)];
    while (*pp && *pp != kq)
        pp = &(*pp)->next;
    if (*pp)
        *pp = kq->next;
    o->nkeys--;
    free(kq->key);
    free(kq);
}

/* ---- delivery life cycle ------------------------------------------------------------- */

static void tmpl_free(struct pb_dl *dl)
{
    if (!dl->tmpl)
        return;
    for (size_t i = 0; i < dl->out->ntmpls; i++)
        free(dl->tmpl[i]);
    free(dl->tmpl);
    dl->tmpl = NULL;
}

static void dl_free(struct pb_dl *dl)
{
    tmpl_free(dl);
    pb_msg_unref(dl->msg);
    free(dl->payload);
    free(dl);
}

static void ready_push(struct pb_output *o, struct pb_dl *dl)
{
    dl->next = NULL;
    if (o->ready_tail)
        o->ready_tail->next = dl;
    else
        o->ready_head = dl;
    o->ready_tail = dl;
    o->nready++;
}

static struct pb_dl *ready_pop(struct pb_output *o)
{
    struct pb_dl *dl = o->ready_head;
    if (dl) {
        o->ready_head = dl->next;
        if (!o->ready_head)
            o->ready_tail = NULL;
        o->nready--;
        dl->next = NULL;
    }
    return dl;
}

/* Put dl where it waits for its next attempt. */
static void schedule(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    if (dl->next_at <= now || heap_push(d, dl) != 0)
        ready_push(dl->out, dl);
}

/* Counters follow the store: they move once a result is committed, so
 * /metrics never shows what the admin API cannot. */
static void count_committed(struct pb_output *o, enum pb_dstate state)
{
    switch (state) {
    case PB_DSTATE_DELIVERED:
        atomic_fetch_add(&o->delivered, 1);
        break;
    case PB_DSTATE_DEAD:
        atomic_fetch_add(&o->dead, 1);
        break;
    case PB_DSTATE_FILTERED:
        atomic_fetch_add(&o->filtered, 1);
        break;
    case PB_DSTATE_PENDING:
        atomic_fetch_add(&o->retried, 1);
        return; /* still in the backlog */
    default:
        return;
    }
    atomic_fetch_sub(&o->backlog, 1);
}

/* Writer or syncer thread. A result whose commit failed goes back to the
 * dispatcher to be submitted again: recording it twice is harmless (the
 * attempt row is replaced, a final state stays final). */
static void result_done_cb(struct pb_op *op, void *arg)
{
    struct result_op *r = arg;
    struct pb_dispatcher *d = r->d;
    switch (op->status) {
    case 0:
        count_committed(r->out, op->u.result.state);
        break;
    case PB_ENOTFOUND:
        /* No longer pending: purged, or recorded by an earlier submission. */
        break;
    case PB_EINVAL:
        PB_ERROR("delivery result refused by the state store delivery_id=%lld",
                 (long long)op->u.result.delivery_id);
        break;
    default:
        pthread_mutex_lock(&d->lock);
        bool first = !d->redo_head;
        r->redo_next = NULL;
        if (d->redo_tail)
            d->redo_tail->redo_next = r;
        else
            d->redo_head = r;
        d->redo_tail = r;
        if (!r->failed) {
            r->failed = true;
            if (d->unrecorded++ == 0)
                PB_WARN("delivery results not recorded error=\"%s\": new attempts paused, "
                        "submitting the results again until the state store takes them",
                        pb_strerror(op->status));
        }
        pthread_mutex_unlock(&d->lock);
        if (first)
            pb_loop_wake(d->loop);
        return;
    }
    if (r->failed) {
        pthread_mutex_lock(&d->lock);
        if (--d->unrecorded == 0)
            PB_INFO("delivery results recorded again: attempts resume");
        pthread_mutex_unlock(&d->lock);
    }
    free(r);
}

/* Dispatcher thread: true while failed results wait to be recorded; submits
 * them again once their backoff is over (now < 0: at once, on the way out). */
static bool redo_results(struct pb_dispatcher *d, int64_t now, int64_t *wait)
{
    pthread_mutex_lock(&d->lock);
    if (!d->unrecorded) {
        d->redo_delay = 0;
        pthread_mutex_unlock(&d->lock);
        return false;
    }
    struct result_op *list = NULL;
    if (d->redo_head && (now < 0 || now >= d->redo_at)) {
        list = d->redo_head;
        d->redo_head = d->redo_tail = NULL;
        d->redo_delay = d->redo_delay ? d->redo_delay * 2 : REDO_DELAY_MIN_MS;
        if (d->redo_delay > REDO_DELAY_MAX_MS)
            d->redo_delay = REDO_DELAY_MAX_MS;
        d->redo_at = (now < 0 ? pb_now_ms() : now) + d->redo_delay;
    } else if (d->redo_head && d->redo_at - now < *wait) {
        *wait = d->redo_at - now;
    }
    pthread_mutex_unlock(&d->lock);
    for (struct result_op *r = list, *next; r; r = next) {
        next = r->redo_next;
        if (pb_store_submit(d->e->store, &r->op) != 0) {
            PB_WARN("delivery result not recorded delivery_id=%lld (store stopped; it stays "
                    "pending and is sent again after restart)",
                    (long long)r->op.u.result.delivery_id);
            pthread_mutex_lock(&d->lock);
            d->unrecorded--;
            pthread_mutex_unlock(&d->lock);
            free(r);
        }
    }
    return true;
}

static void submit_result(struct pb_dispatcher *d, struct pb_dl *dl, enum pb_dstate state,
                          int status, int64_t latency_ms, const char *error)
{
    struct result_op *r = calloc(1, sizeof(*r));
    if (!r) {
        PB_ERROR("out of memory recording a result delivery_id=%lld (it stays pending)",
                 (long long)dl->id);
        return;
    }
    r->op.kind = PB_OP_RESULT;
    r->op.done_cb = result_done_cb;
    r->op.arg = r;
    r->d = d;
    r->out = dl->out;
    struct pb_op_result *res = &r->op.u.result;
    res->delivery_id = dl->id;
    res->attempt = dl->attempts;
    res->started_at = dl->started_at;
    res->latency_ms = latency_ms;
    res->status = status;
    res->state = state;
    res->next_at = dl->next_at;
    res->lease = d->lease;
    if (error) {
        snprintf(r->error, sizeof(r->error), "%s", error);
        res->error = r->error;
    }
    if (pb_store_submit(d->e->store, &r->op) != 0) {
        PB_WARN("delivery result not recorded delivery_id=%lld (store stopped)", (long long)dl->id);
        free(r);
    }
}

/* dl is finished for good: release its key and its memory. */
static void finish(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    struct pb_output *o = dl->out;
    o->inmem--;
    struct pb_keyq *kq = dl->kq;
    if (kq) {
        struct pb_dl *nx = kq->head;
        if (nx) {
            kq->head = nx->next;
            if (!kq->head)
                kq->tail = NULL;
            nx->next = NULL;
            nx->kq = kq;
            schedule(d, nx, now);
        } else {
            keyq_remove(o, kq);
        }
    }
    dl_free(dl);
}

/* End a delivery without a partner attempt: processing failed or filtered. */
static void settle_locally(struct pb_dispatcher *d, struct pb_dl *dl, enum pb_dstate state,
                           const char *reason, int64_t now)
{
    struct pb_output *o = dl->out;
    dl->attempts++;
    dl->started_at = now;
    submit_result(d, dl, state, 0, 0, reason);
    if (state == PB_DSTATE_DEAD) {
        char safe[PB_ERROR_EXCERPT_MAX];
        PB_WARN("dead-lettered pipeline=%s output=%s msg_id=%s delivery_id=%lld reason=\"%s\"",
                o->pl->name, o->name, dl->msg->id, (long long)dl->id,
                pb_log_value(reason, safe, sizeof(safe)));
    }
    finish(d, dl, now);
}

/* Compute the ordering key of dl's message. *key NULL: unordered. */
/* $meta of m as a jv (null when it has none). Dispatcher thread. */
static jv msg_meta(const struct pb_msg *m)
{
    jv meta;
    if (!m->meta || pb_jq_parse(m->meta, m->meta_len, &meta, NULL) != 0)
        return jv_null();
    return meta;
}

int pb__disp_key(struct pb_pipeline *pl, jv body, jv meta, char **key, struct pb_err *err)
{
    jv outv[1];
    size_t n = 0;
    *key = NULL;
    int rc = pb_jq_run_meta(pl->key_jq, body, meta, outv, 1, &n, err);
    if (rc)
        return rc;
    if (n == 0)
        return 0;
    jv v = outv[0];
    if (jv_get_kind(v) == JV_KIND_NULL) {
        jv_free(v);
        return 0;
    }
    if (jv_get_kind(v) == JV_KIND_STRING) {
        *key = strdup(jv_string_value(v));
        jv_free(v);
    } else {
        size_t len;
        rc = pb_jq_dump(v, key, &len, err);
        if (rc)
            return rc;
    }
    return *key ? 0 : pb_err_set(err, PB_ENOMEM, "out of memory");
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
    return pb__disp_key(pl, in, msg_meta(m), key, err);
}

static void release_later(struct pb_dispatcher *d, struct pb_dl *dl);

/* Take dl into memory (from the inbox or a page-in). */
static void admit(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    struct pb_output *o = dl->out;
    struct pb_pipeline *pl = o->pl;
    o->inmem++;
    snprintf(dl->idem, sizeof(dl->idem), "%s.%s", dl->msg->id, o->name);
    if (dl->msg->damaged) {
        /* Sending it would hand the partner something we never received. */
        settle_locally(d, dl, PB_DSTATE_DEAD,
                       "stored body damaged: it no longer matches the checksum taken at "
                       "ingest (the state store's file was changed on disk)",
                       now);
        return;
    }
    if (pl->key_jq) {
        char *key = NULL;
        struct pb_err err = {0};
        if (compute_key(pl, dl->msg, &key, &err) != 0) {
            char reason[PB_ERR_MSG_MAX + 32];
            snprintf(reason, sizeof(reason), "ordering key: %s", err.msg);
            settle_locally(d, dl, PB_DSTATE_DEAD, reason, now);
            return;
        }
        if (key) {
            uint64_t h = hash_str(key);
            struct pb_keyq *kq = keyq_find(o, key, h);
            if (kq) {
                free(key);
                dl->next = NULL;
                if (kq->tail)
                    kq->tail->next = dl;
                else
                    kq->head = dl;
                kq->tail = dl;
                return;
            }
            kq = keyq_add(o, key, h);
            free(key);
            if (!kq) {
                /* Without memory to order it, leave it for a later page-in. */
                o->inmem--;
                release_later(d, dl);
                return;
            }
            dl->kq = kq;
        }
    }
    schedule(d, dl, now);
}

/* What an attempt sends: the output's map run on the routed message (the
 * pipeline's steps ran once, in the route stage), and its template fields
 * rendered on it. Returns 1 when the map produced nothing (filtered for this
 * output), 0 with dl->payload (NULL: the body as it is) and dl->tmpl set, or
 * a negative code with the reason (the delivery is dead-lettered). */
static int build_attempt(struct pb_dl *dl, size_t *plen, struct pb_err *err)
{
    struct pb_output *o = dl->out;
    /* Template fields are rendered for the output's own deliveries only. */
    struct pb_output *tmpl_of = o;
    if (!o->map_jq && !tmpl_of->ntmpls)
        return 0;
    jv body, meta = jv_null();
    int rc = pb_jq_parse(dl->msg->body, dl->msg->len, &body, err);
    if (rc)
        return rc;
    if (dl->msg->meta && pb_jq_parse(dl->msg->meta, dl->msg->meta_len, &meta, NULL) != 0)
        meta = jv_null();
    if (tmpl_of->ntmpls) {
        dl->tmpl = calloc(tmpl_of->ntmpls, sizeof(*dl->tmpl));
        if (!dl->tmpl) {
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < tmpl_of->ntmpls; i++) {
            struct pb_err terr = {0};
            rc = pb_template_render(tmpl_of->tmpls[i], body, meta, &dl->tmpl[i], NULL, &terr);
            if (rc) {
                pb_err_set(err, rc, "template field %zu of output %s: %s", i + 1, o->name,
                           terr.msg);
                goto out;
            }
        }
    }
    if (o->map_jq) {
        jv outv[1];
        size_t n = 0;
        rc = pb_jq_run_meta(o->map_jq, jv_copy(body), jv_copy(meta), outv, 1, &n, err);
        if (rc)
            goto out;
        if (n == 0) {
            pb_err_set(err, 0, "filtered by the map of output %s (no value)", o->name);
            rc = 1;
            goto out;
        }
        size_t len = 0;
        rc = pb_jq_dump(outv[0], &dl->payload, &len, err);
        if (rc)
            goto out;
        *plen = len;
    }
out:
    jv_free(body);
    jv_free(meta);
    return rc;
}

static void attempt_job_cb(struct pb_job *job, int cancelled);
static bool take_token(struct pb_output *o, int64_t now, int64_t *wait_ms);

/* Get dl ready for an attempt. False when it ended here (filtered, dead). */
static bool prepare_attempt(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    struct pb_output *o = dl->out;
    struct pb_err err = {0};
    free(dl->payload);
    dl->payload = NULL;
    tmpl_free(dl);
    size_t plen = 0;
    int rc = build_attempt(dl, &plen, &err);
    if (rc != 0) {
        tmpl_free(dl);
        if (rc == 1) {
            settle_locally(d, dl, PB_DSTATE_FILTERED, err.msg, now);
        } else {
            char reason[PB_ERR_MSG_MAX + 32];
            snprintf(reason, sizeof(reason), "%s", err.msg[0] ? err.msg : pb_strerror(rc));
            settle_locally(d, dl, PB_DSTATE_DEAD, reason, now);
        }
        return false;
    }
    struct pb_output *tmpl_of = o;
    dl->attempts++;
    dl->started_at = now;
    dl->started_mono_us = pb_mono_us();
    dl->d = (struct pb_delivery){
        .id = dl->id,
        .msg_id = dl->msg->id,
        .idempotency_key = dl->idem,
        .attempt = dl->attempts,
        .payload = dl->payload ? dl->payload : dl->msg->body,
        .len = dl->payload ? plen : dl->msg->len,
        .content_type = dl->msg->content_type ? dl->msg->content_type : "application/json",
        .meta = dl->msg->meta ? dl->msg->meta : "{}",
        .meta_len = dl->msg->meta ? dl->msg->meta_len : 2,
        .sub = o->sub,
        .deadline_ms = now + tmpl_of->env.attempt_timeout_ms,
        .tmpl = (const char *const *)dl->tmpl,
        .ntmpl = dl->tmpl ? tmpl_of->ntmpls : 0,
        .core = dl,
    };
    o->inflight++;
    d->inflight++;
    atomic_store(&o->inflight_gauge, (int64_t)o->inflight);
    atomic_fetch_add(&o->attempts, 1);
    return true;
}

static void attempt_job_cb(struct pb_job *job, int cancelled)
{
    struct pb_dl *dl = (struct pb_dl *)((char *)job - offsetof(struct pb_dl, job));
    if (cancelled) {
        struct pb_outcome oc = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "shutting down"};
        pb_delivery_done(&dl->d, &oc);
        return;
    }
    dl->out->plugin->deliver(dl->out->ctx, &dl->d);
}

static void start_attempt(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    struct pb_output *o = dl->out;
    if (o->is_route) {
        pb__route_attempt(d, dl, now);
        return;
    }
    if (!prepare_attempt(d, dl, now))
        return;
    if (o->workers) {
        dl->job.fn = attempt_job_cb;
        if (pb_workers_post(o->workers, &dl->job) != 0)
            attempt_job_cb(&dl->job, 1);
        return;
    }
    /* dl may be gone when deliver returns (synchronous outputs). */
    o->plugin->deliver(o->ctx, &dl->d);
}

/* A batch for an output with deliver_batch, on a worker or here. */
struct batch_job {
    struct pb_job job;
    struct pb_output *o;
    size_t n;
    struct pb_delivery *ds[];
};

static void batch_job_cb(struct pb_job *job, int cancelled)
{
    struct batch_job *bj = (struct batch_job *)job;
    if (cancelled) {
        struct pb_outcome oc = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "shutting down"};
        for (size_t i = 0; i < bj->n; i++)
            pb_delivery_done(bj->ds[i], &oc);
    } else {
        bj->o->plugin->deliver_batch(bj->o->ctx, bj->ds, bj->n);
    }
    free(bj);
}

/* Start a batch of o's ready deliveries when it is full, or has waited its
 * period. Returns true when it started one. */
static bool start_batch(struct pb_dispatcher *d, struct pb_output *o, int64_t now, int64_t *wait)
{
    size_t room = o->concurrency > o->inflight ? o->concurrency - o->inflight : 0;
    size_t max = o->env.batch_max < room ? o->env.batch_max : room;
    if (max == 0 || !o->ready_head)
        return false;
    if (o->batch_since == 0)
        o->batch_since = now;
    bool stopping = atomic_load(&d->stop);
    if (o->nready < max && now - o->batch_since < o->env.batch_period_ms && !stopping) {
        int64_t left = o->env.batch_period_ms - (now - o->batch_since);
        if (left < *wait)
            *wait = left;
        return false;
    }
    struct batch_job *bj = malloc(sizeof(*bj) + max * sizeof(bj->ds[0]));
    if (!bj)
        return false;
    bj->job.fn = batch_job_cb;
    bj->o = o;
    bj->n = 0;
    while (bj->n < max && o->ready_head && take_token(o, now, wait)) {
        struct pb_dl *dl = ready_pop(o);
        if (prepare_attempt(d, dl, now))
            bj->ds[bj->n++] = &dl->d;
    }
    o->batch_since = o->ready_head ? now : 0;
    if (bj->n == 0) {
        free(bj);
        return o->ready_head != NULL;
    }
    if (o->workers) {
        if (pb_workers_post(o->workers, &bj->job) != 0)
            batch_job_cb(&bj->job, 1);
    } else {
        batch_job_cb(&bj->job, 0);
    }
    return true;
}

/* A failed attempt that will be retried, at info with its cause: at most
 * FAIL_LOG_BURST lines per output per FAIL_LOG_WINDOW_MS, then one line
 * saying how many were left out. */
#define FAIL_LOG_BURST 10
#define FAIL_LOG_WINDOW_MS 10000

static void log_failed_attempt(struct pb_output *o, struct pb_dl *dl, const struct pb_outcome *oc,
                               int64_t in_ms, int64_t now)
{
    if (pb_log_level_min > PB_LOG_INFO)
        return;
    if (now - o->faillog_since >= FAIL_LOG_WINDOW_MS) {
        if (o->faillog_dropped)
            PB_INFO("attempts failed pipeline=%s output=%s left_out=%llu (at most %d lines per "
                    "%d s are logged per output)",
                    o->pl->name, o->name, (unsigned long long)o->faillog_dropped, FAIL_LOG_BURST,
                    FAIL_LOG_WINDOW_MS / 1000);
        o->faillog_since = now;
        o->faillog_n = 0;
        o->faillog_dropped = 0;
    }
    if (o->faillog_n >= FAIL_LOG_BURST) {
        o->faillog_dropped++;
        return;
    }
    o->faillog_n++;
    char safe[PB_ERROR_EXCERPT_MAX];
    PB_INFO("attempt failed, will retry pipeline=%s output=%s msg_id=%s attempt=%d status=%d "
            "retry_in_ms=%lld error=\"%s\"",
            o->pl->name, o->name, dl->msg->id, dl->attempts, oc->status, (long long)in_ms,
            pb_log_value(oc->error ? oc->error : "failed", safe, sizeof(safe)));
}

static void delivery_done(struct pb_dl *dl, const struct pb_outcome *oc);

/* An outcome reported on another thread, carried to the dispatcher's. */
static void done_post_cb(void *arg, int status)
{
    struct pb_dl *dl = arg;
    (void)status; /* cancelled: the dispatcher is going away; aborting is set */
    struct pb_outcome oc = dl->posted;
    oc.error = dl->posted_error[0] ? dl->posted_error : NULL;
    delivery_done(dl, &oc);
}

void pb_delivery_done(struct pb_delivery *pd, const struct pb_outcome *oc)
{
    struct pb_dl *dl = pd->core;
    struct pb_dispatcher *d = dl->disp;
    if (!pb_loop_on_thread(d->loop) && !atomic_load(&d->aborting)) {
        dl->posted = *oc;
        snprintf(dl->posted_error, sizeof(dl->posted_error), "%s", oc->error ? oc->error : "");
        if (pb_loop_post_node(d->loop, &dl->post_node, done_post_cb, dl) == 0)
            return;
        /* The loop is closed: the dispatcher is stopping; nothing is recorded. */
    }
    delivery_done(dl, oc);
}

static void delivery_done(struct pb_dl *dl, const struct pb_outcome *oc)
{
    struct pb_dispatcher *d = dl->disp;
    struct pb_output *o = dl->out;
    int64_t now = pb_now_ms();
    int64_t lat_us = pb_mono_us() - dl->started_mono_us;
    o->inflight--;
    d->inflight--;
    atomic_store(&o->inflight_gauge, (int64_t)o->inflight);
    free(dl->payload);
    dl->payload = NULL;

    if (atomic_load(&d->aborting)) {
        /* Shutdown cut the attempt short: record nothing, it stays pending. */
        o->inmem--;
        dl_free(dl);
        return;
    }
    pb_hist_observe(&o->latency, lat_us);
    struct pb_retry_decision dec =
        pb_retry_decide(&o->policy, oc->result, dl->attempts, dl->msg->received_at, now,
                        oc->retry_after_ms, pb_rand64());
    char error[PB_ERROR_EXCERPT_MAX];
    const char *errtxt = oc->error;
    if (oc->result == PB_RESULT_OK) {
        submit_result(d, dl, PB_DSTATE_DELIVERED, oc->status, lat_us / 1000, NULL);
        PB_DEBUG("delivered pipeline=%s output=%s msg_id=%s attempt=%d status=%d", o->pl->name,
                 o->name, dl->msg->id, dl->attempts, oc->status);
        finish(d, dl, now);
    } else if (dec.give_up) {
        snprintf(error, sizeof(error), "%s (gave up: %s)", errtxt ? errtxt : "failed", dec.reason);
        submit_result(d, dl, PB_DSTATE_DEAD, oc->status, lat_us / 1000, error);
        char safe[PB_ERROR_EXCERPT_MAX];
        PB_WARN("dead-lettered pipeline=%s output=%s msg_id=%s delivery_id=%lld attempt=%d "
                "status=%d reason=\"%s\"",
                o->pl->name, o->name, dl->msg->id, (long long)dl->id, dl->attempts, oc->status,
                pb_log_value(error, safe, sizeof(safe)));
        finish(d, dl, now);
    } else {
        dl->next_at = dec.next_at;
        submit_result(d, dl, PB_DSTATE_PENDING, oc->status, lat_us / 1000, errtxt);
        log_failed_attempt(o, dl, oc, dec.next_at - now, now);
        schedule(d, dl, now);
    }
}

/* ---- paging in from the store ------------------------------------------------------------
 *
 * An output whose deliveries do not all fit in memory is spilled: what is
 * made for it meanwhile is made unleased and left in the store, and the
 * dispatcher claims pending deliveries back, a batch at a time, as room
 * frees up (CLAIM: unleased ones, and those of an earlier process, leased to
 * this one). Claims run on the store's writer; their rows come back here by
 * a post. A delivery the dispatcher cannot keep is released (its lease
 * dropped) so a later claim finds it. */

struct claim_op {
    struct pb__disp_post post;
    struct pb_op op;
    struct pb_dispatcher *d;
    struct pb_output *o;
    struct pb_dl *head, *tail; /* made from the rows on the writer thread */
    size_t limit;
};

/* Writer thread: one claimed row becomes a delivery in memory (not yet
 * admitted). */
static int claim_row_cb(void *arg, const struct pb_pending *row)
{
    struct claim_op *co = arg;
    struct pb_dl *dl = calloc(1, sizeof(*dl));
    struct pb_msg *m = dl ? pb_msg_create(row->body, row->len, row->content_type) : NULL;
    if (!m) {
        free(dl);
        return 1; /* stop; the rest stays in the store, unleased */
    }
    m->okey_known = row->key_known;
    if ((row->key && !(m->okey = strdup(row->key))) ||
        pb_msg_set_meta(m, row->meta, row->meta_len) != 0) {
        pb_msg_unref(m);
        free(dl);
        return 1;
    }
    m->seq = row->msg_seq;
    m->received_at = row->received_at;
    m->damaged = row->body_damaged;
    snprintf(m->id, sizeof(m->id), "%s", row->msg_id);
    dl->id = row->delivery_id;
    dl->msg = m;
    dl->out = co->o;
    dl->disp = co->d;
    dl->attempts = row->attempts;
    dl->next_at = row->next_at;
    dl->leased = true;
    if (co->tail)
        co->tail->next = dl;
    else
        co->head = dl;
    co->tail = dl;
    return 0;
}

static void claim_complete(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now)
{
    struct claim_op *co = (struct claim_op *)p;
    struct pb_output *o = co->o;
    o->claiming = false;
    bool ok = co->op.status == 0 && now >= 0 && !atomic_load(&d->aborting);
    if (co->op.status != 0 && now >= 0) {
        PB_ERROR("claiming pending deliveries failed pipeline=%s output=%s error=%s", o->pl->name,
                 o->name, pb_strerror(co->op.status));
        o->load_after = now + 1000;
    }
    size_t n = 0;
    for (struct pb_dl *dl = co->head, *next; dl; dl = next) {
        next = dl->next;
        dl->next = NULL;
        if (ok) {
            admit(d, dl, now);
            n++;
        } else {
            dl_free(dl); /* the claim did not commit, or the dispatcher is going */
        }
    }
    if (ok && n < co->limit && !atomic_exchange(&o->notify, false))
        atomic_store(&o->spilled, false);
    free(co);
}

/* Writer or syncer thread. */
static void claim_done_cb(struct pb_op *op, void *arg)
{
    struct claim_op *co = arg;
    (void)op;
    co->post.fn = claim_complete;
    pb__disp_post(co->d, &co->post);
}

static void page_in(struct pb_dispatcher *d, struct pb_output *o, int64_t now)
{
    size_t cap = (size_t)d->e->cfg->limits.in_memory;
    if (atomic_exchange(&o->notify, false))
        atomic_store(&o->spilled, true);
    if (!atomic_load(&o->spilled) || o->claiming || o->inmem >= cap || now < o->load_after)
        return;
    size_t want = cap - o->inmem;
    if (want > LOAD_BATCH_MAX)
        want = LOAD_BATCH_MAX;
    if (want < 64 && o->inmem > 0)
        return; /* wait for more room: page in in batches */
    struct claim_op *co = calloc(1, sizeof(*co));
    if (!co) {
        o->load_after = now + 1000;
        return;
    }
    co->d = d;
    co->o = o;
    co->limit = want;
    co->op.kind = PB_OP_CLAIM;
    co->op.done_cb = claim_done_cb;
    co->op.arg = co;
    co->op.u.claim = (struct pb_op_claim){
        .pipeline = o->pl->name,
        .output = o->is_virtual ? o->parent->name : o->name,
        .sub = o->sub,
        .limit = want,
        .lease = d->lease,
        .cb = claim_row_cb,
        .arg = co,
    };
    if (pb_store_submit(d->e->store, &co->op) != 0) {
        free(co);
        o->load_after = now + 1000;
        return;
    }
    o->claiming = true;
}

/* A leased delivery this process will not keep in memory: its lease is
 * dropped at the end of the turn, and the output is paged in again later. */
static void release_later(struct pb_dispatcher *d, struct pb_dl *dl)
{
    atomic_store(&dl->out->spilled, true);
    if (dl->leased) {
        if (d->nrelease == d->releasecap) {
            size_t cap = d->releasecap ? d->releasecap * 2 : 256;
            int64_t *r = realloc(d->release, cap * sizeof(*r));
            if (r) {
                d->release = r;
                d->releasecap = cap;
            }
        }
        if (d->nrelease < d->releasecap)
            d->release[d->nrelease++] = dl->id;
        /* else: it stays leased to this process until the next start */
    }
    dl_free(dl);
}

struct release_op {
    struct pb_op op;
    int64_t ids[];
};

static void release_done_cb(struct pb_op *op, void *arg)
{
    (void)op;
    free(arg);
}

static void flush_releases(struct pb_dispatcher *d)
{
    if (!d->nrelease)
        return;
    struct release_op *r = malloc(sizeof(*r) + d->nrelease * sizeof(int64_t));
    if (r) {
        memcpy(r->ids, d->release, d->nrelease * sizeof(int64_t));
        r->op = (struct pb_op){.kind = PB_OP_RELEASE, .done_cb = release_done_cb, .arg = r};
        r->op.u.release =
            (struct pb_op_release){.n = d->nrelease, .ids = r->ids, .lease = d->lease};
        if (pb_store_submit(d->e->store, &r->op) != 0)
            free(r);
    }
    d->nrelease = 0;
}

void pb__disp_lost(struct pb_dispatcher *d, struct pb_output *out, int64_t id)
{
    atomic_store(&out->spilled, true);
    atomic_store(&out->notify, true);
    if (!id)
        return;
    struct release_op *r = malloc(sizeof(*r) + sizeof(int64_t));
    if (r) {
        r->ids[0] = id;
        r->op = (struct pb_op){.kind = PB_OP_RELEASE, .done_cb = release_done_cb, .arg = r};
        r->op.u.release = (struct pb_op_release){.n = 1, .ids = r->ids, .lease = d->lease};
        if (pb_store_submit(d->e->store, &r->op) == 0)
            return;
        free(r);
    }
    PB_ERROR("out of memory: delivery_id=%lld stays held until the next start", (long long)id);
}

bool pb__disp_spilled(const struct pb_output *out)
{
    return atomic_load(&out->spilled);
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
        if (atomic_exchange(&o->notify, false))
            atomic_store(&o->spilled, true);
        if (o->gone) {
            /* Made for a sub-output removed meanwhile: it ends here, visibly. */
            o->inmem++;
            settle_locally(d, dl, PB_DSTATE_DEAD, "sub-output removed", now);
        } else if (!dl->leased) {
            /* Made while the output was spilled: a claim takes it. */
            atomic_store(&o->spilled, true);
            dl_free(dl);
        } else if (atomic_load(&o->spilled) || o->inmem >= cap) {
            release_later(d, dl);
        } else {
            admit(d, dl, now);
        }
    }
}

static bool take_token(struct pb_output *o, int64_t now, int64_t *wait_ms)
{
    const struct pb_rate *r = &o->common.rate_limit;
    if (r->count == 0)
        return true;
    double cap = (double)r->count;
    double per_ms = (double)r->count / (double)r->period_ms;
    if (o->tokens_at == 0) {
        o->tokens = cap;
        o->tokens_at = now;
    }
    o->tokens += (double)(now - o->tokens_at) * per_ms;
    o->tokens_at = now;
    if (o->tokens > cap)
        o->tokens = cap;
    if (o->tokens >= 1.0) {
        o->tokens -= 1.0;
        return true;
    }
    int64_t w = (int64_t)((1.0 - o->tokens) / per_ms) + 1;
    if (w < *wait_ms)
        *wait_ms = w;
    return false;
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

void pb__dispatcher_outputs_changed(struct pb_dispatcher *d);
void pb__dispatcher_outputs_changed(struct pb_dispatcher *d)
{
    d->all_dirty = true;
}

struct pb_engine *pb__dispatcher_engine(struct pb_dispatcher *d);
struct pb_engine *pb__dispatcher_engine(struct pb_dispatcher *d)
{
    return d->e;
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

static void run_posts(struct pb_dispatcher *d, int64_t now);

static void *disp_main(void *arg)
{
    struct pb_dispatcher *d = arg;
    struct pb_config *cfg = d->e->cfg;
    d->next_expire_at = pb_now_ms() + 5000;
    for (;;) {
        int64_t now = pb_now_ms();
        bool stopping = atomic_load(&d->stop);
        if (stopping && (d->inflight == 0 || pb_mono_us() >= d->stop_deadline_mono_us))
            break;
        run_posts(d, now);
        if (!stopping) {
            reap_subs(d, now);
            if (d->all_dirty)
                rebuild_all(d);
            take_inbox(d, now);
            for (size_t i = 0; i < d->nall; i++)
                page_in(d, d->all[i], now);
            while (d->nheap && d->heap[0]->next_at <= now) {
                struct pb_dl *dl = heap_pop(d);
                ready_push(dl->out, dl);
            }
            maybe_expire(d, now);
        }
        int64_t wait = POLL_MAX_MS;
        if (!stopping) {
            bool unrecorded = redo_results(d, now, &wait);
            for (size_t i = 0; i < d->nall; i++) {
                struct pb_output *o = d->all[i];
                pb__output_maybe_start(d, o, now, &wait);
                if (unrecorded || o->paused || !o->started)
                    continue;
                if (o->plugin->deliver_batch) {
                    while (start_batch(d, o, now, &wait))
                        ;
                } else {
                    while (o->ready_head && o->inflight < o->concurrency &&
                           take_token(o, now, &wait))
                        start_attempt(d, ready_pop(o), now);
                }
                if (atomic_load(&o->spilled) && o->inmem < (size_t)cfg->limits.in_memory)
                    wait = wait > 50 ? 50 : wait;
            }
            if (d->nheap) {
                int64_t t = d->heap[0]->next_at - pb_now_ms();
                if (t < wait)
                    wait = t < 0 ? 0 : t;
            }
        }
        flush_releases(d);
        pb_loop_run_once(d->loop, (int)wait);
    }
    int64_t ignored = 0;
    redo_results(d, -1, &ignored); /* the store commits them before it stops */
    return NULL;
}

/* ---- public --------------------------------------------------------------------------------- */

struct pb_dispatcher *pb_dispatcher_create(struct pb_engine *e, struct pb_err *err)
{
    struct pb_dispatcher *d = calloc(1, sizeof(*d));
    if (!d) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    d->e = e;
    d->lease = pb_store_epoch(e->store);
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
    for (size_t i = 0; i < d->nheap; i++)
        dl_free(d->heap[i]);
    free(d->heap);
    rebuild_all(d);
    for (size_t i = 0; i < d->nall; i++) {
        struct pb_output *o = d->all[i];
        {
            struct pb_dl *dl;
            while ((dl = ready_pop(o)))
                dl_free(dl);
            for (size_t k = 0; k < o->keycap; k++) {
                for (struct pb_keyq *kq = o->keys[k], *nk; kq; kq = nk) {
                    nk = kq->next;
                    for (struct pb_dl *w = kq->head, *nw; w; w = nw) {
                        nw = w->next;
                        dl_free(w);
                    }
                    free(kq->key);
                    free(kq);
                }
            }
            free(o->keys);
            o->keys = NULL;
            o->keycap = o->nkeys = 0;
        }
    }
    for (struct pb_dl *dl = d->inbox_head, *n; dl; dl = n) {
        n = dl->next;
        dl_free(dl);
    }
    run_posts(d, -1); /* aborting is set: each frees what it carries */
    if (d->unrecorded)
        PB_WARN("delivery results not recorded count=%zu (those deliveries stay pending and "
                "are sent again after restart)",
                d->unrecorded);
    for (struct result_op *r = d->redo_head, *n; r; r = n) {
        n = r->redo_next;
        free(r);
    }
    free(d->all);
    free(d->release);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

static void inbox_append(struct pb_dispatcher *d, struct pb_dl *head, struct pb_dl *tail);

void pb_dispatcher_post_new(struct pb_dispatcher *d, struct pb_pipeline *pl, struct pb_msg *msg,
                            const int64_t *delivery_ids, uint64_t unleased)
{
    struct pb_dl *head = NULL, *tail = NULL;
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
        dl->next_at = msg->received_at;
        dl->leased = !(i < 64 && (unleased >> i & 1));
        if (tail)
            tail->next = dl;
        else
            head = dl;
        tail = dl;
    }
    inbox_append(d, head, tail);
}

/* Append a list of new deliveries to the inbox (any thread). The dispatcher
 * takes the whole inbox at once: only the first post after it did wakes it. */
static void inbox_append(struct pb_dispatcher *d, struct pb_dl *head, struct pb_dl *tail)
{
    pthread_mutex_lock(&d->lock);
    if (d->closed) {
        pthread_mutex_unlock(&d->lock);
        for (struct pb_dl *dl = head, *n; dl; dl = n) {
            n = dl->next;
            dl_free(dl);
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
        dl->next_at = now;
        dl->leased = !(unleased && unleased[i]);
        if (tail)
            tail->next = dl;
        else
            head = dl;
        tail = dl;
    }
    inbox_append(d, head, tail);
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
    atomic_store(&out->notify, true);
    if (d && d->loop)
        pb_loop_wake(d->loop);
}

/* ---- for route_stage.c -------------------------------------------------------------------- */

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

void pb__disp_drop_all(struct pb_dispatcher *d, struct pb_output *out, int64_t now)
{
    (void)now;
    struct pb_dl *dl;
    while ((dl = ready_pop(out))) {
        out->inmem--;
        dl_free(dl);
    }
    for (size_t k = 0; k < out->keycap; k++) {
        for (struct pb_keyq *kq = out->keys[k], *nk; kq; kq = nk) {
            nk = kq->next;
            for (struct pb_dl *w = kq->head, *nw; w; w = nw) {
                nw = w->next;
                out->inmem--;
                dl_free(w);
            }
            kq->head = kq->tail = NULL;
        }
    }
    /* Waiting for a retry: take them out of the heap. */
    size_t kept = 0;
    for (size_t i = 0; i < d->nheap; i++) {
        if (d->heap[i]->out == out) {
            out->inmem--;
            dl_free(d->heap[i]);
            continue;
        }
        d->heap[kept] = d->heap[i];
        d->heap[kept]->heap_idx = kept;
        kept++;
    }
    if (kept != d->nheap) {
        d->nheap = kept;
        for (size_t i = d->nheap / 2 + 1; i-- > 0;)
            heap_down(d, i);
    }
}

void pb__disp_end_attempt(struct pb_dispatcher *d, struct pb_dl *dl)
{
    struct pb_output *o = dl->out;
    o->inflight--;
    d->inflight--;
    atomic_store(&o->inflight_gauge, (int64_t)o->inflight);
    finish(d, dl, pb_now_ms());
}

void pb__disp_inbox_append(struct pb_dispatcher *d, struct pb_dl *head, struct pb_dl *tail)
{
    inbox_append(d, head, tail);
}

void pb__disp_finish(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    finish(d, dl, now);
}

void pb__disp_schedule(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    schedule(d, dl, now);
}

void pb__disp_settle(struct pb_dispatcher *d, struct pb_dl *dl, enum pb_dstate state,
                     const char *reason, int64_t now)
{
    settle_locally(d, dl, state, reason, now);
}

void pb__disp_dl_free(struct pb_dl *dl)
{
    dl_free(dl);
}
