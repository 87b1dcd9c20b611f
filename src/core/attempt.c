/* attempt.c - attempts and their results, on the dispatcher thread.
 *
 * Flow control (flow.c) sees every outcome and sets the output's gates
 * before attempts start: a hold, a pace, an open breaker (nothing starts;
 * after open_for one probe), an adaptive concurrency. An attempt the
 * partner never saw (not_sent: no token) is neither counted nor recorded;
 * one refused for rate (429) is recorded but does not count toward
 * max_attempts.
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

#include "core/answer.h"
#include "core/dispatch_int.h"
#include "core/stage.h"
#include "core/tail.h"
#include "core/trace.h"
#include "core/template.h"
#include "patchbay/pb_log.h"

_Static_assert(PB_ANSWER_EXCERPT_MAX <= PB_STORE_ANSWER_MAX, "the store keeps a whole excerpt");

#define REDO_DELAY_MIN_MS 50
#define REDO_DELAY_MAX_MS 2000

struct result_op {
    struct pb_op op;
    struct pb_dispatcher *d;
    struct pb_output *out;
    struct result_op *redo_next;
    bool failed; /* counted in unrecorded */
    char error[PB_ERROR_EXCERPT_MAX + 1];
    char answer[PB_ANSWER_EXCERPT_MAX + 1];
    char msg_id[PB_MSG_ID_MAX]; /* for the live tail */
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
        pb__tail_result(d->e->tail, r->out, r->msg_id, &op->u.result);
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
                            int status, int64_t latency_ms, const char *error, const void *answer,
                            size_t answer_len)
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
    snprintf(r->msg_id, sizeof(r->msg_id), "%s", dl->msg->id);
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
    if (answer && answer_len &&
        (res->answer_len = pb_answer_excerpt(r->answer, answer, answer_len)))
        res->answer = r->answer;
    if (pb_store_submit(d->e->store, &r->op) != 0) {
        PB_WARN("delivery result not recorded delivery_id=%lld (store stopped)", (long long)dl->id);
        free(r);
    }
}

/* ---- building an attempt ----------------------------------------------------------------- */

void pb__attempt_tmpl_free(char **tmpl, size_t n)
{
    if (!tmpl)
        return;
    for (size_t i = 0; i < n; i++)
        free(tmpl[i]);
    free(tmpl);
}

void pb__attempt_dead_reason(char *buf, size_t len, const char *error, const char *why)
{
    snprintf(buf, len, "%s (gave up: %s)", error ? error : "failed", why);
}

/* What an attempt sends: the output's map run on the routed message (the
 * pipeline's steps ran once, in the route stage), and its template fields
 * rendered on it (stage.h). */
int pb__attempt_build(struct pb_output *o, const struct pb_msg *msg, char **payload, size_t *plen,
                      char ***tmpl, struct pb_err *err)
{
    *payload = NULL;
    *tmpl = NULL;
    if (!o->map_jq && !o->ntmpls)
        return 0;
    jv body, meta = jv_null();
    char **t = NULL;
    int rc = pb_jq_parse(msg->body, msg->len, &body, err);
    if (rc)
        return rc;
    if (msg->meta && o->uses_meta && pb_jq_parse(msg->meta, msg->meta_len, &meta, NULL) != 0)
        meta = jv_null();
    if (o->ntmpls) {
        t = calloc(o->ntmpls, sizeof(*t));
        if (!t) {
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < o->ntmpls; i++) {
            struct pb_err terr = {0};
            rc = pb_template_render(o->tmpls[i], body, meta, &t[i], NULL, &terr);
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
        rc = pb_jq_dump(outv[0], payload, &len, err);
        if (rc)
            goto out;
        *plen = len;
    }
out:
    jv_free(body);
    jv_free(meta);
    if (rc) {
        pb__attempt_tmpl_free(t, o->ntmpls);
        t = NULL;
    }
    *tmpl = t;
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
    int rc = pb__attempt_build(o, dl->msg, &dl->payload, &plen, &dl->tmpl, &err);
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
    /* Each attempt is a span of the message's trace. */
    char tp[PB_TRACEPARENT_LEN + 1], ts[PB_TRACESTATE_MAX + 1];
    pb_trace_of_msg(dl->msg->meta, dl->msg->meta ? dl->msg->meta_len : 0, dl->msg->id, tp, ts);
    pb_trace_child(tp, dl->traceparent);
    dl->tracestate = ts[0] ? strdup(ts) : NULL;
    if (ts[0] && !dl->tracestate)
        PB_WARN("out of memory: attempt sent without its tracestate pipeline=%s output=%s "
                "msg_id=%s",
                o->pl->name, o->name, dl->msg->id);
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
        .traceparent = dl->traceparent,
        .tracestate = dl->tracestate,
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
        dl->probe = pb_flow_started(&o->flow);
        if (dl->probe)
            pb_flow_apply(&o->flow, q, now);
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
    if (!o->is_route) {
        /* On a cluster each live node takes its part of rate_limit. */
        struct pb_rate r =
            pb_flow_rate_share(o->common.rate_limit, pb_store_live_nodes(d->e->store));
        if (r.count != o->sq.rate.count || r.period_ms != o->sq.rate.period_ms)
            o->sq.rate = r;
        pb_flow_apply(&o->flow, &o->sq, now);
    }
    if (o->plugin->deliver_batch) {
        while (start_batch(d, o, now, wait))
            ;
        return;
    }
    struct pb_sched_item *it;
    while ((it = pb_sched_take(&o->sq, now, wait))) {
        struct pb_dl *dl = pb__dl_of(it);
        d->inflight++;
        atomic_store(&o->inflight_gauge, (int64_t)o->sq.inflight);
        dl->probe = !o->is_route && pb_flow_started(&o->flow);
        if (dl->probe)
            pb_flow_apply(&o->flow, &o->sq, now); /* one probe: nothing more starts */
        start_one(d, dl, now);
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

/* ---- flow control --------------------------------------------------------------------------- */

/* A partner's hold at least this long is told to the other nodes. */
#define SHARE_HOLD_MIN_MS 1000

void pb__disp_flow_publish(struct pb_output *o, int64_t now)
{
    pb_flow_apply(&o->flow, &o->sq, now);
    atomic_store(&o->breaker_state, o->flow.state);
    atomic_store(&o->breaker_opened_total, o->flow.opened_total);
    atomic_store(&o->throttled_total, o->flow.throttled_total);
    atomic_store(&o->concurrency_gauge, (int64_t)o->sq.concurrency);
    atomic_store(&o->pace_mrps, (int64_t)(o->flow.pace_rps * 1000.0));
    atomic_store(&o->hold_until, o->flow.hold_until);
}

static void breaker_event(struct pb_dispatcher *d, struct pb_output *o, bool opened, int64_t now)
{
    uint32_t ended = 0, failed = 0;
    pb_flow_window(&o->flow, now, &ended, &failed);
    if (opened)
        PB_WARN("circuit breaker opened pipeline=%s output=%s failed=%u ended=%u open_for_ms=%lld "
                "(deliveries wait without spending attempts)",
                o->pl->name, o->name, failed, ended, (long long)o->flow.c.open_for_ms);
    else
        PB_INFO("circuit breaker closed pipeline=%s output=%s (the probe went through)",
                o->pl->name, o->name);
    const char *ev = o->common.events_pipeline;
    if (!ev)
        return;
    /* Names hold letters, digits, '-', '_', '.' and '/' only: no escaping. */
    char body[3 * PB_NAME_MAX + 256];
    if (opened)
        snprintf(body, sizeof(body),
                 "{\"type\":\"circuit_breaker.opened\",\"pipeline\":\"%s\",\"output\":\"%s\","
                 "\"at\":%lld,\"failed\":%u,\"ended\":%u,\"open_for_ms\":%lld}",
                 o->pl->name, o->name, (long long)now, failed, ended,
                 (long long)o->flow.c.open_for_ms);
    else
        snprintf(body, sizeof(body),
                 "{\"type\":\"circuit_breaker.closed\",\"pipeline\":\"%s\",\"output\":\"%s\","
                 "\"at\":%lld}",
                 o->pl->name, o->name, (long long)now);
    int rc = pb_dispatcher_emit(d, ev, body);
    if (rc)
        PB_ERROR("circuit breaker event not emitted pipeline=%s output=%s events_pipeline=%s "
                 "error=%s",
                 o->pl->name, o->name, ev, pb_strerror(rc));
}

/* The partner was not asked: the attempt does not count, nothing is
 * recorded, and the output waits as long as it was told. */
static void not_sent(struct pb_dispatcher *d, struct pb_dl *dl, const struct pb_outcome *oc,
                     int64_t now)
{
    struct pb_output *o = dl->out;
    int64_t in = oc->retry_after_ms >= 0 ? oc->retry_after_ms : 1000;
    dl->attempts--;
    atomic_fetch_sub(&o->attempts, 1);
    atomic_fetch_add(&o->not_sent_total, 1);
    if (dl->probe)
        o->flow.probe_out = false; /* the breaker's probe never went: another may */
    pb_flow_hold(&o->flow, in, now);
    pb__disp_flow_publish(o, now);
    char safe[PB_ERROR_EXCERPT_MAX];
    PB_DEBUG("not sent, will try again pipeline=%s output=%s msg_id=%s retry_in_ms=%lld "
             "reason=\"%s\"",
             o->pl->name, o->name, dl->msg->id, (long long)in,
             pb_log_value(oc->error ? oc->error : "", safe, sizeof(safe)));
    dl->si.next_at = now + in;
    pb__disp_schedule(d, dl, now);
}

static void flow_outcome(struct pb_dispatcher *d, struct pb_dl *dl, const struct pb_outcome *oc,
                         int64_t lat_us, int64_t now)
{
    struct pb_output *o = dl->out;
    struct pb_flow_sample s = {
        .kind = oc->throttled                   ? PB_FLOW_THROTTLED
                : oc->result == PB_RESULT_RETRY ? PB_FLOW_FAIL
                                                : PB_FLOW_OK,
        .probe = dl->probe,
        .latency_us = lat_us,
        .retry_after_ms = oc->retry_after_ms,
        .rate = oc->rate,
        .inflight = o->sq.inflight + 1,
    };
    unsigned ev = pb_flow_outcome(&o->flow, &s, now);
    pb__disp_flow_publish(o, now);
    /* A cluster's other nodes follow this node's breaker and the
     * partner's holds (cluster_flow.c). */
    struct pb_flow_share sh;
    if (pb_store_clustered(d->e->store) &&
        pb_flow_share_due(&o->flow, ev, SHARE_HOLD_MIN_MS, now, &sh))
        pb__cluster_flow_publish(d, o, &sh);
    if (ev & PB_FLOW_OPENED)
        breaker_event(d, o, true, now);
    if (ev & PB_FLOW_CLOSED)
        breaker_event(d, o, false, now);
    if (ev & PB_FLOW_REOPENED)
        PB_DEBUG("circuit breaker stays open pipeline=%s output=%s (the probe failed)", o->pl->name,
                 o->name);
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
    if (oc->not_sent) {
        not_sent(d, dl, oc, now);
        return;
    }
    pb_hist_observe(&o->latency, lat_us);
    flow_outcome(d, dl, oc, lat_us, now);
    struct pb_retry_decision dec;
    if (oc->throttled && oc->result == PB_RESULT_RETRY) {
        /* Refused for rate: it goes again once the output's pace lets it;
         * only max_age bounds it. */
        dl->free_attempts++;
        int64_t after = oc->retry_after_ms > 0 ? oc->retry_after_ms : 0;
        dec = (struct pb_retry_decision){.next_at = now + after};
        if (dec.next_at > dl->msg->received_at + o->policy.max_age_ms)
            dec = (struct pb_retry_decision){.give_up = true, .reason = "max_age exceeded"};
    } else {
        int counted = dl->attempts - dl->free_attempts;
        dec = pb_retry_decide(&o->policy, oc->result, counted > 0 ? counted : 1,
                              dl->msg->received_at, now, oc->retry_after_ms, pb_rand64());
    }
    char error[PB_ERROR_EXCERPT_MAX];
    const char *errtxt = oc->error;
    if (oc->result == PB_RESULT_OK) {
        pb__disp_submit_result(d, dl, PB_DSTATE_DELIVERED, oc->status, lat_us / 1000, NULL,
                               oc->answer, oc->answer_len);
        PB_DEBUG("delivered pipeline=%s output=%s msg_id=%s attempt=%d status=%d", o->pl->name,
                 o->name, dl->msg->id, dl->attempts, oc->status);
        pb__disp_finish(d, dl, now);
    } else if (dec.give_up) {
        pb__attempt_dead_reason(error, sizeof(error), errtxt, dec.reason);
        pb__disp_submit_result(d, dl, PB_DSTATE_DEAD, oc->status, lat_us / 1000, error, oc->answer,
                               oc->answer_len);
        char safe[PB_ERROR_EXCERPT_MAX];
        PB_WARN("dead-lettered pipeline=%s output=%s msg_id=%s delivery_id=%lld attempt=%d "
                "status=%d reason=\"%s\"",
                o->pl->name, o->name, dl->msg->id, (long long)dl->id, dl->attempts, oc->status,
                pb_log_value(error, safe, sizeof(safe)));
        pb__disp_finish(d, dl, now);
    } else {
        dl->si.next_at = dec.next_at;
        pb__disp_submit_result(d, dl, PB_DSTATE_PENDING, oc->status, lat_us / 1000, errtxt,
                               oc->answer, oc->answer_len);
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
    char *answer = dl->posted_answer;
    dl->posted_answer = NULL;
    oc.answer = answer;
    oc.answer_len = answer ? strlen(answer) : 0;
    delivery_done(dl, &oc);
    free(answer);
}

void pb_delivery_done(struct pb_delivery *pd, const struct pb_outcome *oc)
{
    struct pb_dl *dl = pd->core;
    struct pb_dispatcher *d = dl->disp;
    if (!pb_loop_on_thread(d->loop) && !atomic_load(&d->aborting)) {
        dl->posted = *oc;
        snprintf(dl->posted_error, sizeof(dl->posted_error), "%s", oc->error ? oc->error : "");
        /* The answer is the plugin's until it returns: its excerpt goes
         * along (allocated only when there is one). */
        char excerpt[PB_ANSWER_EXCERPT_MAX + 1];
        dl->posted_answer = NULL;
        if (oc->answer && oc->answer_len && pb_answer_excerpt(excerpt, oc->answer, oc->answer_len))
            dl->posted_answer = strdup(excerpt); /* NULL: recorded without it */
        if (pb_loop_post_node(d->loop, &dl->post_node, done_post_cb, dl) == 0)
            return;
        free(dl->posted_answer);
        dl->posted_answer = NULL;
        /* The loop is closed: the dispatcher is stopping; nothing is recorded. */
    }
    delivery_done(dl, oc);
}
