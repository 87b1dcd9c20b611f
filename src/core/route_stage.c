/* route_stage.c - the route stage: a pipeline's process steps, once per
 * message, committed before any delivery starts (DESIGN semantics 9).
 *
 * A pipeline with process steps gets one delivery per message at ingest, to
 * its route output (PB_ROUTE_OUTPUT). That delivery is scheduled like any
 * other (its own queue, in-memory bound and page-in), and its attempt, here,
 * runs the steps (route.c) on the message as received and commits what they
 * decided in one PB_OP_ROUTE: the route delivery finished, the routed body
 * when a step changed it (or one new message per value after a split), a
 * pending delivery for each chosen output and a recorded routed-away (or
 * filtered) one for each other. Once that commit is durable the new
 * deliveries go to their outputs' queues, carrying the routed message, so
 * attempts never run the steps again; an output's own map still runs per
 * attempt.
 *
 * A step that fails (a jq error, a value jq cannot carry exactly, a split
 * past its bound) dead-letters the route delivery with the step and the
 * reason; replaying it routes the message anew. A ROUTE commit that fails
 * (disk full) leaves the delivery pending: it is routed again a second
 * later without spending its attempt.
 *
 * A step may wait for I/O (enrich's lookups) without blocking the
 * dispatcher: it parks the message (pb_proc_park), and the attempt stays in
 * flight, its ordering key busy, until the step resumes; the run goes on a
 * turn later (route_att_continue). A step that resumes with PB_EAGAIN has
 * the message routed again with backoff (1 s doubling to 5 min, until the
 * route stage's max_age), each try recorded as a failed attempt.
 *
 * Threads: route_attempt on the dispatcher; route_done_cb on the store's
 * writer or syncer, which hands the new deliveries to the dispatcher's inbox
 * and posts the route delivery's end back to the dispatcher thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dispatch_int.h"
#include "core/stage.h"
#include "patchbay/pb_log.h"

#define ROUTE_RETRY_MS 1000
_Static_assert(PB_ROUTE_MAX_MSGS < 65536, "split children are numbered with an unsigned short");

struct route_op {
    struct pb__disp_post post; /* the route delivery's end, on the dispatcher */
    struct pb_op op;
    struct pb_dl *dl; /* the route delivery: in flight until post runs */
    struct pb_pipeline *pl;
    size_t nmsgs;
    struct pb_route_msg *msgs;
    struct pb_msg **carry; /* per msg: what its new deliveries carry */
    char **bodies;         /* per msg: the routed or split body (NULL: unchanged) */
    char (*child_ids)[PB_MSG_ID_MAX];
    /* Per msg, nouts slots each: pending outputs first, then final ones. */
    const char **names;
    struct pb_output **targets;
    int64_t *ids;
    char *key; /* ordering key of the message as received */
    int status;
    char note[160];
};

static void route_op_free(struct route_op *ro)
{
    for (size_t i = 0; i < ro->nmsgs; i++) {
        pb_msg_unref(ro->carry ? ro->carry[i] : NULL);
        free(ro->bodies ? ro->bodies[i] : NULL);
    }
    free(ro->msgs);
    free(ro->carry);
    free(ro->bodies);
    free(ro->child_ids);
    free(ro->names);
    free(ro->targets);
    free(ro->ids);
    free(ro->key);
    free(ro);
}

static struct route_op *route_op_create(struct pb_pipeline *pl, size_t nmsgs)
{
    struct route_op *ro = calloc(1, sizeof(*ro));
    size_t slots = (nmsgs ? nmsgs : 1) * pl->nouts;
    if (!ro)
        return NULL;
    ro->pl = pl;
    ro->nmsgs = nmsgs ? nmsgs : 1;
    ro->msgs = calloc(ro->nmsgs, sizeof(*ro->msgs));
    ro->carry = calloc(ro->nmsgs, sizeof(*ro->carry));
    ro->bodies = calloc(ro->nmsgs, sizeof(*ro->bodies));
    ro->child_ids = calloc(ro->nmsgs, sizeof(*ro->child_ids));
    ro->names = calloc(slots, sizeof(*ro->names));
    ro->targets = calloc(slots, sizeof(*ro->targets));
    ro->ids = calloc(slots, sizeof(*ro->ids));
    if (!ro->msgs || !ro->carry || !ro->bodies || !ro->child_ids || !ro->names || !ro->targets ||
        !ro->ids) {
        route_op_free(ro);
        return NULL;
    }
    return ro;
}

/* Slots of msg i: outputs in set first, in configuration order, then the
 * others with final_state. */
static void fill_outputs(struct route_op *ro, size_t i, pb_outset set, enum pb_dstate final_state,
                         const char *final_note)
{
    struct pb_pipeline *pl = ro->pl;
    struct pb_route_msg *m = &ro->msgs[i];
    const char **names = ro->names + i * pl->nouts;
    struct pb_output **targets = ro->targets + i * pl->nouts;
    size_t k = 0;
    for (size_t j = 0; j < pl->nouts; j++)
        if (set >> j & 1) {
            names[k] = pl->outs[j].name;
            targets[k++] = &pl->outs[j];
        }
    m->noutputs = k;
    m->outputs = names;
    m->delivery_ids = ro->ids + i * pl->nouts;
    for (size_t j = 0; j < pl->nouts; j++)
        if (!(set >> j & 1)) {
            names[k] = pl->outs[j].name;
            targets[k++] = &pl->outs[j];
        }
    m->unleased = 0;
    for (size_t t = 0; t < m->noutputs; t++)
        if (pb__disp_spilled(targets[t]))
            m->unleased |= (uint64_t)1 << t;
    m->nfinal = pl->nouts - m->noutputs;
    m->final_outputs = names + m->noutputs;
    m->final_state = final_state;
    m->final_note = final_note;
}

/* Dispatcher thread: the ROUTE op is done (or the dispatcher is going). */
static void route_complete(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now)
{
    struct route_op *ro = (struct route_op *)p;
    struct pb_dl *dl = ro->dl;
    struct pb_output *o = dl->out;

    pb__disp_attempt_ended(d, o);
    if (now < 0 || atomic_load(&d->aborting)) {
        o->inmem--;
        pb__disp_dl_free(dl);
    } else if (ro->status == 0 || ro->status == PB_ENOTFOUND) {
        pb__disp_finish(d, dl, now);
    } else {
        /* Still pending in the store: route it again soon. */
        dl->attempts--;
        dl->si.next_at = now + ROUTE_RETRY_MS;
        pb__disp_schedule(d, dl, now);
    }
    route_op_free(ro);
}

/* Writer or syncer thread. */
static void route_done_cb(struct pb_op *op, void *arg)
{
    struct route_op *ro = arg;
    struct pb_dispatcher *d = ro->dl->disp;
    struct pb_output *router = ro->dl->out;
    struct pb_op_route *r = &op->u.route;

    ro->status = op->status;
    if (op->status == 0) {
        struct pb_dl *head = NULL, *tail = NULL;
        atomic_fetch_add(r->state == PB_DSTATE_FILTERED ? &router->filtered : &router->delivered,
                         1);
        atomic_fetch_sub(&router->backlog, 1);
        for (size_t i = 0; i < ro->nmsgs; i++) {
            struct pb_route_msg *m = &ro->msgs[i];
            struct pb_output **targets = ro->targets + i * ro->pl->nouts;
            struct pb_msg *msg = ro->carry[i];
            if (msg)
                msg->seq = m->msg_seq;
            for (size_t k = 0; k < m->noutputs; k++) {
                struct pb_output *o = targets[k];
                struct pb_dl *nd = msg ? calloc(1, sizeof(*nd)) : NULL;
                bool leased = !(k < 64 && (m->unleased >> k & 1));
                atomic_fetch_add(&o->backlog, 1);
                if (!nd) {
                    /* committed: paged in later */
                    pb__disp_lost(d, o, leased ? m->delivery_ids[k] : 0);
                    continue;
                }
                nd->id = m->delivery_ids[k];
                nd->msg = pb_msg_ref(msg);
                nd->out = o;
                nd->disp = d;
                nd->si.next_at = r->now;
                nd->leased = leased;
                if (tail)
                    tail->next = nd;
                else
                    head = nd;
                tail = nd;
            }
            for (size_t k = m->noutputs; k < m->noutputs + m->nfinal; k++)
                atomic_fetch_add(m->final_state == PB_DSTATE_FILTERED ? &targets[k]->filtered
                                                                      : &targets[k]->routed_away,
                                 1);
        }
        pb__disp_inbox_append(d, head, tail);
    } else if (op->status != PB_ENOTFOUND) {
        PB_WARN("route decision not recorded pipeline=%s msg_id=%s error=\"%s\" (routed again "
                "in %d ms)",
                ro->pl->name, ro->dl->msg->id, pb_strerror(op->status), ROUTE_RETRY_MS);
    }
    ro->post.fn = route_complete;
    pb__disp_post(d, &ro->post);
}

/* The message a routed delivery carries: the routed one itself (same id,
 * the body a step made, or the body as received) or a split child. */
static struct pb_msg *carried(const struct pb_msg *src, const char *id, const char *body,
                              size_t len)
{
    struct pb_msg *m = pb_msg_create(body ? body : src->body, body ? len : src->len,
                                     body ? NULL : src->content_type);
    if (!m)
        return NULL;
    if (pb_msg_set_meta(m, src->meta, src->meta_len) != 0) {
        pb_msg_unref(m);
        return NULL;
    }
    m->seq = src->seq;
    m->received_at = src->received_at;
    snprintf(m->id, sizeof(m->id), "%s", id);
    return m;
}

static void route_fail(struct pb_dispatcher *d, struct pb_dl *dl, const struct pb_err *err, int rc,
                       int64_t now)
{
    char reason[PB_ERR_MSG_MAX + 16];
    snprintf(reason, sizeof(reason), "%s", err->msg[0] ? err->msg : pb_strerror(rc));
    pb__disp_attempt_ended(d, dl->out);
    pb__disp_settle(d, dl, PB_DSTATE_DEAD, reason, now);
}

/* The route output's plugin: its attempts are pb__route_attempt's, never
 * deliver's (the dispatcher checks is_route first). */
static void route_deliver(void *ctx, struct pb_delivery *pd)
{
    (void)ctx;
    struct pb_outcome oc = {
        .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "route stage missed"};
    pb_delivery_done(pd, &oc);
}

const struct pb_output_plugin pb__route_plugin = {
    .name = "route",
    .default_concurrency = 256,
    .deliver = route_deliver,
};

static jv meta_of(const struct pb_msg *m)
{
    jv meta;
    if (!m->meta || pb_jq_parse(m->meta, m->meta_len, &meta, NULL) != 0)
        return jv_null();
    return meta;
}

void pb__route_decision_cleanup(struct pb_route_decision *dec)
{
    for (size_t i = 0; dec->bodies && i < dec->res.n; i++)
        free(dec->bodies[i]);
    free(dec->bodies);
    free(dec->lens);
    free(dec->key);
    pb_route_result_cleanup(&dec->res);
    memset(dec, 0, sizeof(*dec));
}

int pb__route_input(struct pb_pipeline *pl, const struct pb_msg *msg, jv *body, jv *meta,
                    char **key, struct pb_err *err)
{
    *key = NULL;
    *meta = jv_null();
    int rc = pb_jq_parse(msg->body, msg->len, body, err);
    if (rc) {
        char why[PB_ERR_MSG_MAX];
        snprintf(why, sizeof(why), "%s", err->msg);
        return pb_err_set(err, rc, "process: the message is not JSON jq can carry exactly: %s",
                          why);
    }
    *meta = meta_of(msg);
    if (pl->key_jq) {
        /* Ordering follows the message as received, whatever the steps make. */
        rc = pb__disp_key(pl, jv_copy(*body), jv_copy(*meta), key, err);
        if (rc) {
            char why[PB_ERR_MSG_MAX];
            snprintf(why, sizeof(why), "%s", err->msg);
            pb_err_set(err, rc, "ordering key: %s", why);
            jv_free(*body);
            jv_free(*meta);
            *body = *meta = jv_invalid();
            return rc;
        }
    }
    return 0;
}

int pb__route_output(struct pb_route_decision *dec, struct pb_err *err)
{
    if (dec->res.n == 0 || !(dec->res.changed || dec->res.split))
        return 0;
    dec->bodies = calloc(dec->res.n, sizeof(*dec->bodies));
    dec->lens = calloc(dec->res.n, sizeof(*dec->lens));
    if (!dec->bodies || !dec->lens)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    for (size_t i = 0; i < dec->res.n; i++) {
        int rc = pb_jq_dump(jv_copy(dec->res.items[i].body), &dec->bodies[i], &dec->lens[i], err);
        if (rc)
            return rc;
    }
    return 0;
}

int pb__route_decide(struct pb_pipeline *pl, const struct pb_msg *msg, struct pb_route_keys *keys,
                     struct pb_route_decision *dec, struct pb_err *err)
{
    jv body, meta;
    memset(dec, 0, sizeof(*dec));
    int rc = pb__route_input(pl, msg, &body, &meta, &dec->key, err);
    if (rc)
        return rc;
    pb_outset all = pl->nouts == 64 ? ~(pb_outset)0 : (((pb_outset)1 << pl->nouts) - 1);
    struct pb_route_env env = {.pipeline = pl->name, .msg_id = msg->id, .keys = keys};
    rc = pb_route_run_env(&env, pl->procs, pl->nprocs, body, meta, all, PB_ROUTE_MAX_MSGS,
                          &dec->res, err);
    jv_free(meta);
    if (rc == 0)
        rc = pb__route_output(dec, err);
    if (rc)
        pb__route_decision_cleanup(dec);
    return rc;
}

/* ---- keys steps remember, in the store ---------------------------------------------------------
 *
 * A claim is a PB_OP_KEY committed by the writer (group commit, like any
 * other op) before the message's decision: a restart in between routes the
 * message again and finds the key its own. Its end comes back to the
 * dispatcher by a post. */

struct key_op {
    struct pb__disp_post post; /* first */
    struct pb_dispatcher *d;
    struct pb_op op;
    void (*done)(void *arg, int rc, bool first, const char *holder);
    void *arg;
    /* scope, key and owner follow */
};

static void key_complete(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now)
{
    (void)d;
    struct key_op *ko = (struct key_op *)p;
    int rc = now < 0 ? PB_ESHUTDOWN : ko->op.status;
    if (rc)
        PB_WARN("a process step's key lookup failed scope=%s error=%s", ko->op.u.key.scope,
                pb_strerror(rc));
    ko->done(ko->arg, rc, rc == 0 && ko->op.u.key.first, ko->op.u.key.holder);
    free(ko);
}

/* Writer or syncer thread. */
static void key_done_cb(struct pb_op *op, void *arg)
{
    (void)op;
    struct key_op *ko = arg;
    ko->post.fn = key_complete;
    pb__disp_post(ko->d, &ko->post);
}

static int store_key_claim(struct pb_route_keys *k, const char *scope, const char *key,
                           const char *owner, int64_t window_ms,
                           void (*done)(void *arg, int rc, bool first, const char *holder),
                           void *arg)
{
    struct pb_dispatcher *d = ((struct pb__disp_keys *)k)->d;
    size_t ls = strlen(scope) + 1, lk = strlen(key) + 1, lo = strlen(owner) + 1;
    struct key_op *ko = calloc(1, sizeof(*ko) + ls + lk + lo);
    if (!ko)
        return PB_ENOMEM;
    char *p = (char *)(ko + 1);
    memcpy(p, scope, ls);
    memcpy(p + ls, key, lk);
    memcpy(p + ls + lk, owner, lo);
    int64_t now = pb_now_ms();
    ko->d = d;
    ko->done = done;
    ko->arg = arg;
    ko->op.kind = PB_OP_KEY;
    ko->op.done_cb = key_done_cb;
    ko->op.arg = ko;
    ko->op.u.key = (struct pb_op_key){
        .scope = p, .key = p + ls, .owner = p + ls + lk, .expires_at = now + window_ms, .now = now};
    int rc = pb_store_submit(d->e->store, &ko->op);
    if (rc)
        free(ko);
    return rc;
}

void pb__disp_keys_init(struct pb_dispatcher *d)
{
    d->keys.k = (struct pb_route_keys){.claim = store_key_claim};
    d->keys.d = d;
}

/* A route attempt whose steps run: kept while a step waits for I/O. */
struct route_att {
    struct pb__disp_post post; /* its continuation, on the dispatcher */
    struct pb_dispatcher *d;
    struct pb_dl *dl;
    struct pb_route_run run;
    struct pb_route_result res;
    char *key;
    int64_t started_mono_us;
};

static void route_decided(struct pb_dispatcher *d, struct route_att *a, int rc, struct pb_err *err,
                          int64_t now);

/* Dispatcher thread, a turn after the step resumed (or the dispatcher is
 * being destroyed: now < 0). */
static void route_att_continue(struct pb_dispatcher *d, struct pb__disp_post *p, int64_t now)
{
    struct route_att *a = (struct route_att *)p;
    struct pb_err err = {0};
    if (now < 0 || atomic_load(&d->aborting)) {
        /* Still pending in the store: routed again after the restart. */
        struct pb_dl *dl = a->dl;
        pb_route_run_cleanup(&a->run);
        pb_route_result_cleanup(&a->res);
        pb__disp_attempt_ended(d, dl->out);
        dl->out->inmem--;
        pb__disp_dl_free(dl);
        free(a->key);
        free(a);
        return;
    }
    int rc = pb_route_continue(&a->run, &err);
    if (rc == PB_ROUTE_PARKED)
        return;
    route_decided(d, a, rc, &err, now);
}

/* A parked step resumed: go on from the dispatcher's loop, not from inside
 * the step's callback. */
static void route_att_resumed(void *arg)
{
    struct route_att *a = arg;
    a->post.fn = route_att_continue;
    pb__disp_post(a->d, &a->post);
}

/* A step asked for the message to be routed again later (a lookup that
 * failed): recorded as a failed attempt, retried with backoff until the
 * route stage's max_age. */
#define STEP_RETRY_INITIAL_MS 1000
#define STEP_RETRY_MAX_MS 300000

static void route_retry(struct pb_dispatcher *d, struct pb_dl *dl, const struct pb_err *err,
                        int64_t lat_us, int64_t now)
{
    struct pb_output *o = dl->out;
    struct pb_retry_policy pol = {.max_attempts = INT32_MAX,
                                  .initial_ms = STEP_RETRY_INITIAL_MS,
                                  .max_ms = STEP_RETRY_MAX_MS,
                                  .max_age_ms = o->policy.max_age_ms};
    dl->attempts++;
    dl->started_at = now;
    struct pb_retry_decision dec = pb_retry_decide(&pol, PB_RESULT_RETRY, dl->attempts,
                                                   dl->msg->received_at, now, -1, pb_rand64());
    pb__disp_attempt_ended(d, o);
    if (dec.give_up) {
        char reason[PB_ERR_MSG_MAX + 64];
        snprintf(reason, sizeof(reason), "%s (gave up: %s)", err->msg, dec.reason);
        dl->attempts--; /* settle counts the attempt */
        pb__disp_settle(d, dl, PB_DSTATE_DEAD, reason, now);
        return;
    }
    dl->si.next_at = dec.next_at;
    pb__disp_submit_result(d, dl, PB_DSTATE_PENDING, 0, lat_us / 1000, err->msg, NULL, 0);
    char safe[PB_ERROR_EXCERPT_MAX];
    PB_INFO("routing failed, will retry pipeline=%s msg_id=%s attempt=%d retry_in_ms=%lld "
            "error=\"%s\"",
            o->pl->name, dl->msg->id, dl->attempts, (long long)(dec.next_at - now),
            pb_log_value(err->msg, safe, sizeof(safe)));
    pb__disp_schedule(d, dl, now);
}

void pb__route_attempt(struct pb_dispatcher *d, struct pb_dl *dl, int64_t now)
{
    struct pb_output *o = dl->out;
    struct pb_pipeline *pl = o->pl;
    struct pb_err err = {0};
    struct route_att *a = NULL;
    jv body, meta;
    int rc;

    char *key = NULL;
    rc = pb__route_input(pl, dl->msg, &body, &meta, &key, &err);
    if (rc) {
        route_fail(d, dl, &err, rc, now);
        return;
    }
    a = calloc(1, sizeof(*a));
    if (!a) {
        free(key);
        jv_free(body);
        jv_free(meta);
        PB_WARN("cannot route now pipeline=%s msg_id=%s error=\"out of memory\" (trying again "
                "in %d ms)",
                pl->name, dl->msg->id, ROUTE_RETRY_MS);
        pb__disp_attempt_ended(d, o);
        dl->si.next_at = now + ROUTE_RETRY_MS;
        pb__disp_schedule(d, dl, now);
        return;
    }
    a->d = d;
    a->dl = dl;
    a->key = key;
    a->started_mono_us = pb_mono_us();
    pb_outset all = pl->nouts == 64 ? ~(pb_outset)0 : (((pb_outset)1 << pl->nouts) - 1);
    struct pb_route_env env = {.pipeline = pl->name, .msg_id = dl->msg->id, .keys = &d->keys.k};
    rc = pb_route_start_env(&a->run, &env, pl->procs, pl->nprocs, body, meta, all,
                            PB_ROUTE_MAX_MSGS, route_att_resumed, a, &a->res, &err);
    if (rc == PB_ROUTE_PARKED)
        return;
    route_decided(d, a, rc, &err, now);
}

/* The steps have run (rc 0) or failed: commit what they decided. Frees a. */
static void route_decided(struct pb_dispatcher *d, struct route_att *a, int rc, struct pb_err *errp,
                          int64_t now)
{
    struct pb_dl *dl = a->dl;
    struct pb_output *o = dl->out;
    struct pb_pipeline *pl = o->pl;
    struct pb_route_result res = a->res;
    char *key = a->key;
    struct pb_err err = *errp;
    struct route_op *ro = NULL;
    int64_t lat_us = pb_mono_us() - a->started_mono_us;
    free(a);
    if (rc == PB_EAGAIN) {
        free(key);
        route_retry(d, dl, &err, lat_us, now);
        return;
    }
    if (rc) {
        free(key);
        route_fail(d, dl, &err, rc, now);
        return;
    }

    struct pb_route_decision dec = {.res = res, .key = key};
    rc = pb__route_output(&dec, &err);
    if (rc) {
        pb__route_decision_cleanup(&dec);
        route_fail(d, dl, &err, rc, now);
        return;
    }
    ro = route_op_create(pl, res.n);
    if (ro) {
        ro->key = dec.key;
        dec.key = NULL;
    }
    if (!ro) {
        pb_err_set(&err, PB_ENOMEM, "out of memory");
        goto retry;
    }
    struct pb_op_route *r = &ro->op.u.route;
    if (res.n == 0) {
        snprintf(ro->note, sizeof(ro->note), "filtered by process step %zu (%s)", res.dropped_at,
                 res.dropped_by ? res.dropped_by : "?");
        fill_outputs(ro, 0, 0, PB_DSTATE_FILTERED, ro->note);
        r->state = PB_DSTATE_FILTERED;
    } else {
        size_t sent = 0;
        for (size_t i = 0; i < res.n; i++) {
            struct pb_route_msg *m = &ro->msgs[i];
            size_t len = 0;
            if (dec.bodies) {
                ro->bodies[i] = dec.bodies[i];
                dec.bodies[i] = NULL;
                len = dec.lens[i];
                m->body = ro->bodies[i];
                m->len = len;
            }
            const char *id = dl->msg->id;
            if (res.split) {
                /* i < PB_ROUTE_MAX_MSGS, so the number fits an unsigned short. */
                snprintf(ro->child_ids[i], sizeof(ro->child_ids[i]), "%.30s-%hu", dl->msg->id,
                         (unsigned short)(i + 1));
                m->msg_id = ro->child_ids[i];
                id = m->msg_id;
            }
            ro->carry[i] = carried(dl->msg, id, ro->bodies[i], len);
            if (!ro->carry[i]) {
                pb_err_set(&err, PB_ENOMEM, "out of memory");
                goto retry;
            }
            if (m->body && pl->key_jq) {
                /* Recorded with the routed body or the child, so a page-in
                 * after a restart orders it the same way. */
                m->key = ro->key;
                ro->carry[i]->okey_known = true;
                if (ro->key && !(ro->carry[i]->okey = strdup(ro->key))) {
                    pb_err_set(&err, PB_ENOMEM, "out of memory");
                    goto retry;
                }
            }
            fill_outputs(ro, i, res.items[i].outputs, PB_DSTATE_ROUTED_AWAY, "routed away");
            sent += m->noutputs;
        }
        if (res.split)
            snprintf(ro->note, sizeof(ro->note), "split into %zu messages, %zu deliveries", res.n,
                     sent);
        else
            snprintf(ro->note, sizeof(ro->note), "routed to %zu of %zu outputs", sent, pl->nouts);
        r->state = PB_DSTATE_DELIVERED;
    }
    pb__route_decision_cleanup(&dec);

    dl->attempts++;
    dl->started_at = now;
    r->delivery_id = dl->id;
    r->msg_seq = dl->msg->seq;
    r->pipeline = pl->name;
    r->attempt = dl->attempts;
    r->now = now;
    r->lease = d->lease;
    r->note = ro->note;
    r->nmsgs = ro->nmsgs;
    r->msgs = ro->msgs;
    ro->dl = dl;
    ro->op.kind = PB_OP_ROUTE;
    ro->op.done_cb = route_done_cb;
    ro->op.arg = ro;
    atomic_fetch_add(&o->attempts, 1);
    if (pb_store_submit(d->e->store, &ro->op) != 0) {
        /* Stopping: it stays pending and is routed after the restart. */
        pb__disp_attempt_ended(d, o);
        dl->attempts--;
        route_op_free(ro);
        o->inmem--;
        pb__disp_dl_free(dl);
    }
    return;

retry:
    pb__route_decision_cleanup(&dec);
    route_op_free(ro);
    PB_WARN("cannot route now pipeline=%s msg_id=%s error=\"%s\" (trying again in %d ms)", pl->name,
            dl->msg->id, err.msg, ROUTE_RETRY_MS);
    pb__disp_attempt_ended(d, o);
    dl->si.next_at = now + ROUTE_RETRY_MS;
    pb__disp_schedule(d, dl, now);
}
