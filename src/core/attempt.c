/* attempt.c - attempts and their results, on the dispatcher thread.
 *
 * An attempt is built from the routed message (the output's map and its
 * template fields), handed to the plugin (on one of the output's worker
 * threads when it has them, alone or in a batch), and ends in
 * pb_delivery_done on any thread. The outcome is decided by the retry
 * policy and recorded by the store's writer; counters move once it is
 * committed. A result the store could not commit is submitted again, and
 * while any waits no attempt starts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dispatch_int.h"
#include "core/template.h"
#include "patchbay/pb_log.h"

#define REDO_DELAY_MIN_MS 50
#define REDO_DELAY_MAX_MS 2000

struct result_op {
    struct pb_op op;
    struct pb_dispatcher *d;
    struct pb_output *out;
    struct result_op *redo_next;
    bool failed; /* counted in unrecorded */
    char error[PB_ERROR_EXCERPT_MAX + 1];
};

/* ---- results --------------------------------------------------------------------------- */

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

bool pb__disp_redo_results(struct pb_dispatcher *d, int64_t now, int64_t *wait)
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

void pb__disp_results_cleanup(struct pb_dispatcher *d)
{
    if (d->unrecorded)
        PB_WARN("delivery results not recorded count=%zu (those deliveries stay pending and "
                "are sent again after restart)",
                d->unrecorded);
    for (struct result_op *r = d->redo_head, *n; r; r = n) {
        n = r->redo_next;
        free(r);
    }
    d->redo_head = d->redo_tail = NULL;
}

void pb__disp_submit_result(struct pb_dispatcher *d, struct pb_dl *dl, enum pb_dstate state,
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
    res->next_at = dl->si.next_at;
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

/* ---- building an attempt ----------------------------------------------------------------- */

/* What an attempt sends: the output's map run on the routed message (the
 * pipeline's steps ran once, in the route stage), and its template fields
 * rendered on it. Returns 1 when the map produced nothing (filtered for this
 * output), 0 with dl->payload (NULL: the body as it is) and dl->tmpl set, or
 * a negative code with the reason (the delivery is dead-lettered). */
static int build_attempt(struct pb_dl *dl, size_t *plen, struct pb_err *err)
{
    struct pb_output *o = dl->out;
    if (!o->map_jq && !o->ntmpls)
        return 0;
    jv body, meta = jv_null();
    int rc = pb_jq_parse(dl->msg->body, dl->msg->len, &body, err);
    if (rc)
        return rc;
    if (dl->msg->meta && pb_jq_parse(dl->msg->meta, dl->msg->meta_len, &meta, NULL) != 0)
        meta = jv_null();
    if (o->ntmpls) {
        dl->tmpl = calloc(o->ntmpls, sizeof(*dl->tmpl));
        if (!dl->tmpl) {
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < o->ntmpls; i++) {
            struct pb_err terr = {0};
            rc = pb_template_render(o->tmpls[i], body, meta, &dl->tmpl[i], NULL, &terr);
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

/* Get dl, taken from its queue, ready for an attempt. False when it ended
 * here (filtered, dead) and is no longer in flight. */
static bool prepare_attempt(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    struct pb_output *o = dl->out;
    struct pb_err err = {0};
    pb__dl_clear_attempt(dl);
    size_t plen = 0;
    int rc = build_attempt(dl, &plen, &err);
    if (rc != 0) {
        pb__dl_clear_attempt(dl);
        pb__disp_attempt_ended(d, o);
        if (rc == 1) {
            pb__disp_settle(d, dl, PB_DSTATE_FILTERED, err.msg, now);
        } else {
            char reason[PB_ERR_MSG_MAX + 32];
            snprintf(reason, sizeof(reason), "%s", err.msg[0] ? err.msg : pb_strerror(rc));
            pb__disp_settle(d, dl, PB_DSTATE_DEAD, reason, now);
        }
        return false;
    }
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
        .deadline_ms = now + o->env.attempt_timeout_ms,
        .tmpl = (const char *const *)dl->tmpl,
        .ntmpl = dl->tmpl ? o->ntmpls : 0,
        .core = dl,
    };
    atomic_fetch_add(&o->attempts, 1);
    return true;
}

/* ---- starting attempts ------------------------------------------------------------------- */

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

static void start_one(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
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
    struct pb_sched_q *q = &o->sq;
    size_t room = q->concurrency > q->inflight ? q->concurrency - q->inflight : 0;
    size_t max = o->env.batch_max < room ? o->env.batch_max : room;
    if (max == 0 || !q->ready_head || q->paused)
        return false;
    /* Batches in flight leave less room than a batch: starting now would cut
     * what is ready into slivers (for a database, a transaction per row); the
     * end of one of them starts the next batch whole. */
    if (max < o->env.batch_max && q->inflight > 0 && q->nready > max)
        return false;
    if (o->batch_since == 0)
        o->batch_since = now;
    bool stopping = atomic_load(&d->stop);
    if (q->nready < max && now - o->batch_since < o->env.batch_period_ms && !stopping) {
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
    struct pb_sched_item *it;
    while (bj->n < max && (it = pb_sched_take(q, now, wait))) {
        struct pb_dl *dl = pb__dl_of(it);
        d->inflight++;
        if (prepare_attempt(d, dl, now))
            bj->ds[bj->n++] = &dl->d;
    }
    atomic_store(&o->inflight_gauge, (int64_t)q->inflight);
    o->batch_since = q->ready_head ? now : 0;
    if (bj->n == 0) {
        free(bj);
        return false;
    }
    if (o->workers) {
        if (pb_workers_post(o->workers, &bj->job) != 0)
            batch_job_cb(&bj->job, 1);
    } else {
        batch_job_cb(&bj->job, 0);
    }
    return true;
}

void pb__disp_start(struct pb_dispatcher *d, struct pb_output *o, int64_t now, int64_t *wait)
{
    if (o->plugin->deliver_batch) {
        while (start_batch(d, o, now, wait))
            ;
        return;
    }
    struct pb_sched_item *it;
    while ((it = pb_sched_take(&o->sq, now, wait))) {
        d->inflight++;
        atomic_store(&o->inflight_gauge, (int64_t)o->sq.inflight);
        start_one(d, pb__dl_of(it), now);
    }
}

/* ---- outcomes ---------------------------------------------------------------------------- */

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

static void delivery_done(struct pb_dl *dl, const struct pb_outcome *oc)
{
    struct pb_dispatcher *d = dl->disp;
    struct pb_output *o = dl->out;
    int64_t now = pb_now_ms();
    int64_t lat_us = pb_mono_us() - dl->started_mono_us;
    pb__disp_attempt_ended(d, o);
    pb__dl_clear_attempt(dl);

    if (atomic_load(&d->aborting)) {
        /* Shutdown cut the attempt short: record nothing, it stays pending. */
        o->inmem--;
        pb__disp_dl_free(dl);
        return;
    }
    pb_hist_observe(&o->latency, lat_us);
    struct pb_retry_decision dec =
        pb_retry_decide(&o->policy, oc->result, dl->attempts, dl->msg->received_at, now,
                        oc->retry_after_ms, pb_rand64());
    char error[PB_ERROR_EXCERPT_MAX];
    const char *errtxt = oc->error;
    if (oc->result == PB_RESULT_OK) {
        pb__disp_submit_result(d, dl, PB_DSTATE_DELIVERED, oc->status, lat_us / 1000, NULL);
        PB_DEBUG("delivered pipeline=%s output=%s msg_id=%s attempt=%d status=%d", o->pl->name,
                 o->name, dl->msg->id, dl->attempts, oc->status);
        pb__disp_finish(d, dl, now);
    } else if (dec.give_up) {
        snprintf(error, sizeof(error), "%s (gave up: %s)", errtxt ? errtxt : "failed", dec.reason);
        pb__disp_submit_result(d, dl, PB_DSTATE_DEAD, oc->status, lat_us / 1000, error);
        char safe[PB_ERROR_EXCERPT_MAX];
        PB_WARN("dead-lettered pipeline=%s output=%s msg_id=%s delivery_id=%lld attempt=%d "
                "status=%d reason=\"%s\"",
                o->pl->name, o->name, dl->msg->id, (long long)dl->id, dl->attempts, oc->status,
                pb_log_value(error, safe, sizeof(safe)));
        pb__disp_finish(d, dl, now);
    } else {
        dl->si.next_at = dec.next_at;
        pb__disp_submit_result(d, dl, PB_DSTATE_PENDING, oc->status, lat_us / 1000, errtxt);
        log_failed_attempt(o, dl, oc, dec.next_at - now, now);
        pb__disp_schedule(d, dl, now);
    }
}

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
