/* nats.c - the `nats` output: JetStream publish, delivered on the PubAck.
 *
 *   nats: { url: "nats://127.0.0.1:4222", subject: 'orders.{{ .region }}',
 *           headers: { Source: patchbay } }
 *
 * Every message carries Nats-Msg-Id = the delivery's idempotency key (the
 * same on every retry and after restarts), so the stream drops a repeat
 * within its duplicate window and the attempt still counts as delivered. A
 * delivery is OK only once the stream's PubAck came back; no PubAck before
 * the attempt's deadline, a lost connection or a stream error that may
 * clear (a full stream) is RETRY; no stream listening on the subject ("no
 * responders"), a subject the template rendered badly, a message larger
 * than the server takes or a stream other than the expected one is
 * PERMANENT.
 *
 * Why asynchronous publishing: a blocking publish waits a round trip per
 * message, so throughput would be workers / RTT. Here deliver hands the
 * message to js_PublishMsgAsync and returns; the PubAck (or the error, or
 * the per-message MaxWait timeout) arrives on the library's reply thread,
 * which ends the delivery. As many publishes are in flight as the output's
 * concurrency allows, over one connection, and the server acks them in a
 * stream.
 *
 * Threads. One worker thread of the output (workers = 1) runs start,
 * deliver and stop: connecting may block, and a publish may wait for room
 * in the connection's buffer. The library's reply thread runs ack_cb. The
 * table of publishes in flight (message -> delivery) is under `mu`:
 * whichever side takes an entry out (the ack, or the worker failing what
 * is left on a closed connection) ends that delivery, exactly once. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../../inputs/nats/nats_common.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define MAX_HEADERS 32
#define RETRY_MIN_MS 500
#define RETRY_MAX_MS 30000
#define STOP_WAIT_MS 5000
#define SWEEP_MS 250
#define GRACE_MS 2000

/* JetStream API errors that no retry can fix. */
#define JS_ERR_EXPECTED_STREAM 10060
#define JS_ERR_MSG_TOO_BIG 10054

/* A publish in flight. */
struct pending {
    natsMsg *msg;
    struct pb_delivery *d;
    int64_t deadline_ms; /* its PubAck is given up on after this (plus a grace) */
    struct pending *next;
};

struct out_nats {
    /* options (read-only after init) */
    struct nats_conn_conf conn;
    char *subject;
    struct pb_strmap headers;
    char *stream;
    const struct pb_allowlist *allow;
    int subject_tmpl;             /* index in d->tmpl */
    int stream_tmpl;              /* index in d->tmpl, or -1: static (or none) */
    int header_tmpl[MAX_HEADERS]; /* -1: a static value */
    char pipeline[128];
    char output[128];
    char name[300];

    /* run time: the worker thread (conn, js, retry) */
    struct pb_output *out;
    struct nats_conn *nc;
    jsCtx *js;
    struct route *route; /* the reply thread's way to this output */
    int64_t retry_at_ms; /* connect again no sooner */
    int64_t retry_ms;

    /* publishes in flight, by message (worker, reply and sweeper threads) */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* wakes the sweeper */
    bool mu_ready;
    struct pending **table;
    size_t nbuckets;
    size_t npending;
    bool closed;       /* the connection is closed for good: no PubAck will come */
    bool sweeper_stop; /* under mu */
    pthread_t sweeper; /* ends what the library no longer will */
    bool sweeper_running;
};

static const struct pb_field nats_fields[] = {
    NATS_CONN_FIELDS(struct out_nats, conn),
    {.name = "subject",
     .type = PB_F_STR,
     .offset = offsetof(struct out_nats, subject),
     .flags = PB_FIELD_REQUIRED,
     .doc = "subject to publish to (a template: 'orders.{{ .region }}')"},
    {.name = "headers",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct out_nats, headers),
     .doc = "headers on every message; values may be templates"},
    {.name = "stream",
     .type = PB_F_STR,
     .offset = offsetof(struct out_nats, stream),
     .doc = "the stream that must store the message (Nats-Expected-Stream); a template"},
    {0},
};

/* ---- publishes in flight ------------------------------------------------------------------ */

static size_t bucket(const struct out_nats *o, const natsMsg *m)
{
    uintptr_t p = (uintptr_t)m;
    p ^= p >> 17;
    p *= 0x9E3779B97F4A7C15ull;
    return (size_t)(p >> 32) % o->nbuckets;
}

static void pending_put(struct out_nats *o, struct pending *p)
{
    pthread_mutex_lock(&o->mu);
    size_t b = bucket(o, p->msg);
    p->next = o->table[b];
    o->table[b] = p;
    o->npending++;
    pthread_mutex_unlock(&o->mu);
}

/* The entry for m, taken out; NULL when another thread took it. */
static struct pending *pending_take(struct out_nats *o, const natsMsg *m)
{
    pthread_mutex_lock(&o->mu);
    struct pending **pp = &o->table[bucket(o, m)], *p;
    while ((p = *pp) && p->msg != m)
        pp = &p->next;
    if (p) {
        *pp = p->next;
        o->npending--;
    }
    pthread_mutex_unlock(&o->mu);
    return p;
}

/* answer: what the stream said (its PubAck or its error), or NULL. */
static void end_answer(struct pb_delivery *d, enum pb_result r, const char *error,
                       const char *answer)
{
    struct pb_outcome oc = {.result = r, .retry_after_ms = -1, .error = error};
    if (answer) {
        oc.answer = answer;
        oc.answer_len = strlen(answer);
    }
    pb_delivery_done(d, &oc);
}

static void end(struct pb_delivery *d, enum pb_result r, const char *error)
{
    end_answer(d, r, error, NULL);
}

/* The library reports a PubAck, an error or the MaxWait timeout for every
 * publish while its connection lives; one made just before the connection
 * closed for good gets none of them. The sweeper ends such publishes with
 * RETRY: all of them once the connection is closed, any other once its
 * deadline is well past. The message itself stays the library's until
 * disconnect() takes it back. */
static void *sweeper_main(void *arg)
{
    struct out_nats *o = arg;
    pthread_mutex_lock(&o->mu);
    while (!o->sweeper_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SWEEP_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&o->cv, &o->mu, &ts);
        if (o->npending == 0)
            continue;
        int64_t now = pb_now_ms();
        bool closed = o->closed;
        struct pending *due = NULL;
        for (size_t b = 0; b < o->nbuckets; b++) {
            struct pending **pp = &o->table[b], *p;
            while ((p = *pp)) {
                if (closed || now > p->deadline_ms + GRACE_MS) {
                    *pp = p->next;
                    o->npending--;
                    p->next = due;
                    due = p;
                } else {
                    pp = &p->next;
                }
            }
        }
        pthread_mutex_unlock(&o->mu);
        while (due) {
            struct pending *p = due;
            due = p->next;
            end(p->d, PB_RESULT_RETRY,
                closed ? "connection closed before the PubAck"
                       : "no PubAck before the attempt's deadline");
            free(p);
        }
        pthread_mutex_lock(&o->mu);
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

/* ---- the PubAck ---------------------------------------------------------------------------- */

static enum pb_result classify(const jsPubAckErr *pae, char *buf, size_t len)
{
    switch (pae->Err) {
    case NATS_NO_RESPONDERS:
        snprintf(buf, len, "no stream takes this subject (no responders)");
        return PB_RESULT_PERMANENT;
    case NATS_TIMEOUT:
        snprintf(buf, len, "no PubAck before the attempt's deadline");
        return PB_RESULT_RETRY;
    case NATS_MAX_PAYLOAD:
        snprintf(buf, len, "message larger than the server's max_payload");
        return PB_RESULT_PERMANENT;
    case NATS_ERR:
        snprintf(buf, len, "JetStream error %d: %s", (int)pae->ErrCode,
                 pae->ErrText ? pae->ErrText : "");
        if (pae->ErrCode == JS_ERR_EXPECTED_STREAM || pae->ErrCode == JS_ERR_MSG_TOO_BIG)
            return PB_RESULT_PERMANENT;
        return PB_RESULT_RETRY; /* a full stream, storage, a leader election... */
    default:
        snprintf(buf, len, "%s", pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
        return PB_RESULT_RETRY;
    }
}

/* How the library's reply thread finds the output. The library does not
 * wait for a callback under way when its context and connection are
 * destroyed, so the callback's closure is this small route, not the
 * output: disconnect() detaches it (under its lock, so no callback is
 * inside afterwards) and it is freed a minute later, when no callback of
 * that connection can still be running. */
struct route {
    pthread_mutex_t mu;
    struct out_nats *o; /* NULL once detached */
    int64_t detached_at;
    struct route *next;
};
#define ROUTE_KEEP_MS 60000
static pthread_mutex_t routes_mu = PTHREAD_MUTEX_INITIALIZER;
static struct route *detached_routes;

static struct route *route_create(struct out_nats *o)
{
    int64_t now = pb_mono_us() / 1000;
    struct route *old = NULL;
    pthread_mutex_lock(&routes_mu);
    for (struct route **pp = &detached_routes; *pp;) {
        struct route *r = *pp;
        if (now - r->detached_at > ROUTE_KEEP_MS) {
            *pp = r->next;
            r->next = old;
            old = r;
        } else {
            pp = &r->next;
        }
    }
    pthread_mutex_unlock(&routes_mu);
    while (old) {
        struct route *r = old;
        old = r->next;
        pthread_mutex_destroy(&r->mu);
        free(r);
    }
    struct route *r = calloc(1, sizeof(*r));
    if (r) {
        pthread_mutex_init(&r->mu, NULL);
        r->o = o;
    }
    return r;
}

static void route_detach(struct route *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->o = NULL;
    pthread_mutex_unlock(&r->mu);
    r->detached_at = pb_mono_us() / 1000;
    pthread_mutex_lock(&routes_mu);
    r->next = detached_routes;
    detached_routes = r;
    pthread_mutex_unlock(&routes_mu);
}

/* The library's reply thread: a PubAck, an error, or a timeout. */
static void ack_cb(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    struct route *r = closure;
    (void)js;
    pthread_mutex_lock(&r->mu);
    struct pending *p = r->o ? pending_take(r->o, msg) : NULL;
    if (p) {
        if (pa) {
            /* The PubAck: the stream and the sequence it stored the message at. */
            char ack[PB_ANSWER_EXCERPT_MAX];
            snprintf(
                ack, sizeof(ack), "stream %s seq %" PRIu64 "%s%s%s", pa->Stream ? pa->Stream : "?",
                pa->Sequence, pa->Domain && pa->Domain[0] ? " domain " : "",
                pa->Domain && pa->Domain[0] ? pa->Domain : "", pa->Duplicate ? " duplicate" : "");
            end_answer(p->d, PB_RESULT_OK,
                       pa->Duplicate ? "duplicate: the stream had it already" : NULL, ack);
        } else {
            char t[320];
            enum pb_result res = pae ? classify(pae, t, sizeof(t)) : PB_RESULT_RETRY;
            end_answer(p->d, res, pae ? t : "no PubAck",
                       pae && pae->Err == NATS_ERR && pae->ErrText ? pae->ErrText : NULL);
        }
        free(p);
    }
    pthread_mutex_unlock(&r->mu);
    natsMsg_Destroy(msg);
}

/* ---- the connection (worker thread) ------------------------------------------------------- */

static void event_cb(void *arg, enum nats_event ev, const char *detail)
{
    struct out_nats *o = arg;
    if (ev == NATS_EV_CLOSED) {
        pthread_mutex_lock(&o->mu);
        o->closed = true;
        pthread_cond_broadcast(&o->cv);
        pthread_mutex_unlock(&o->mu);
    }
    if (!o->out)
        return;
    if (ev == NATS_EV_RECONNECTED)
        pb_output_set_state(o->out, PB_OUTPUT_CONNECTED, NULL);
    else
        pb_output_set_state(o->out, PB_OUTPUT_RECONNECTING, detail);
}

/* Let the connection go: what is still in flight on it ends with RETRY
 * (its PubAck can no longer come; the retry carries the same Nats-Msg-Id,
 * so a message the stream did store is not stored twice). */
static void disconnect(struct out_nats *o, const char *why)
{
    if (o->js) {
        natsMsgList left = {0};
        if (js_PublishAsyncGetPendingList(&left, o->js) == NATS_OK) {
            for (int i = 0; i < left.Count; i++) {
                struct pending *p = pending_take(o, left.Msgs[i]);
                if (p) {
                    end(p->d, PB_RESULT_RETRY, why);
                    free(p);
                }
            }
            natsMsgList_Destroy(&left);
        }
        jsCtx_Destroy(o->js);
        o->js = NULL;
    }
    nats_conn_close(o->nc, 0);
    o->nc = NULL;
    route_detach(o->route);
    o->route = NULL;
    /* Whatever the library did not hand back (it never will now). */
    struct pending *left = NULL;
    pthread_mutex_lock(&o->mu);
    for (size_t b = 0; b < o->nbuckets; b++) {
        while (o->table[b]) {
            struct pending *p = o->table[b];
            o->table[b] = p->next;
            p->next = left;
            left = p;
        }
    }
    o->npending = 0;
    pthread_mutex_unlock(&o->mu);
    while (left) {
        struct pending *p = left;
        left = p->next;
        end(p->d, PB_RESULT_RETRY, why);
        free(p);
    }
}

static int connect_now(struct out_nats *o, struct pb_err *err)
{
    pthread_mutex_lock(&o->mu);
    o->closed = false;
    pthread_mutex_unlock(&o->mu);
    o->route = route_create(o);
    if (!o->route)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    o->nc = nats_conn_open(&o->conn, o->allow, o->name, event_cb, o, err);
    if (!o->nc) {
        route_detach(o->route);
        o->route = NULL;
        return err->code ? err->code : PB_ENET;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.AckHandler = ack_cb;
    jo.PublishAsync.AckHandlerClosure = o->route;
    jo.PublishAsync.MaxPending = 0; /* the output's concurrency bounds what is in flight */
    natsStatus st = natsConnection_JetStream(&o->js, nats_conn_nc(o->nc), &jo);
    if (st != NATS_OK) {
        char t[256];
        pb_err_set(err, PB_ENET, "JetStream: %s", nats_status_text(st, t, sizeof(t)));
        disconnect(o, "JetStream context failed");
        return PB_ENET;
    }
    return 0;
}

static int nats_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct out_nats *o = ctx;
    o->out = out;
    if (!o->sweeper_running) {
        pthread_mutex_lock(&o->mu);
        o->sweeper_stop = false;
        pthread_mutex_unlock(&o->mu);
        if (pthread_create(&o->sweeper, NULL, sweeper_main, o) != 0)
            return pb_err_set(err, PB_ENOMEM, "cannot start a thread");
        pthread_setname_np(o->sweeper, "pb-nats-sweep");
        o->sweeper_running = true;
    }
    int rc = connect_now(o, err);
    if (rc == 0)
        PB_INFO("nats: output connected pipeline=%s output=%s", o->pipeline, o->output);
    return rc;
}

/* Deliver time: a connection that is there, or RETRY while it is not. */
static bool ensure_connected(struct out_nats *o, const char **why)
{
    if (o->nc && natsConnection_Status(nats_conn_nc(o->nc)) != NATS_CONN_STATUS_CLOSED)
        return true;
    if (o->nc) {
        disconnect(o, "connection closed");
        o->retry_at_ms = 0;
    }
    int64_t now = pb_now_ms();
    if (now < o->retry_at_ms) {
        *why = "not connected (connecting again soon)";
        return false;
    }
    struct pb_err err = {0};
    if (connect_now(o, &err) == 0) {
        o->retry_ms = 0;
        pb_output_set_state(o->out, PB_OUTPUT_CONNECTED, NULL);
        PB_INFO("nats: output connected again pipeline=%s output=%s", o->pipeline, o->output);
        return true;
    }
    o->retry_ms = o->retry_ms ? o->retry_ms * 2 : RETRY_MIN_MS;
    if (o->retry_ms > RETRY_MAX_MS)
        o->retry_ms = RETRY_MAX_MS;
    o->retry_at_ms = now + o->retry_ms;
    pb_output_set_state(o->out, PB_OUTPUT_RECONNECTING, err.msg);
    *why = "not connected";
    return false;
}

/* ---- deliver (worker thread) --------------------------------------------------------------- */

static void nats_deliver(void *ctx, struct pb_delivery *d)
{
    struct out_nats *o = ctx;
    const char *why = NULL;
    const char *subject = d->tmpl[o->subject_tmpl];
    natsMsg *msg = NULL;
    char t[256];

    if (!nats_subject_ok(subject, false)) {
        end(d, PB_RESULT_PERMANENT, "the subject is not one a message can be published to");
        return;
    }
    if (!ensure_connected(o, &why)) {
        end(d, PB_RESULT_RETRY, why);
        return;
    }
    int64_t max_payload = natsConnection_GetMaxPayload(nats_conn_nc(o->nc));
    if (max_payload > 0 && d->len > (size_t)max_payload) {
        end(d, PB_RESULT_PERMANENT, "message larger than the server's max_payload");
        return;
    }
    natsStatus st = natsMsg_Create(&msg, subject, NULL, d->payload, (int)d->len);
    for (size_t i = 0; st == NATS_OK && i < o->headers.n; i++) {
        const char *v = o->header_tmpl[i] >= 0 ? d->tmpl[o->header_tmpl[i]] : o->headers.vals[i];
        if (!nats_header_value_ok(v)) {
            natsMsg_Destroy(msg);
            end(d, PB_RESULT_PERMANENT, "a header value holds a line break");
            return;
        }
        st = natsMsgHeader_Set(msg, o->headers.keys[i], v);
    }
    /* The attempt's trace context, unless the configuration sets its own. */
    const char *own = NULL;
    if (st == NATS_OK && d->traceparent &&
        natsMsgHeader_Get(msg, "traceparent", &own) == NATS_NOT_FOUND)
        st = natsMsgHeader_Set(msg, "traceparent", d->traceparent);
    if (st == NATS_OK && d->tracestate &&
        natsMsgHeader_Get(msg, "tracestate", &own) == NATS_NOT_FOUND)
        st = natsMsgHeader_Set(msg, "tracestate", d->tracestate);
    struct pending *p = st == NATS_OK ? malloc(sizeof(*p)) : NULL;
    if (!p) {
        natsMsg_Destroy(msg);
        end(d, PB_RESULT_RETRY,
            st == NATS_OK ? "out of memory" : nats_status_text(st, t, sizeof(t)));
        return;
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = d->idempotency_key;
    po.ExpectStream = o->stream_tmpl >= 0 ? d->tmpl[o->stream_tmpl] : o->stream;
    if (po.ExpectStream && !*po.ExpectStream)
        po.ExpectStream = NULL; /* a template that rendered empty: no expectation */
    po.MaxWait = d->deadline_ms - pb_now_ms();
    if (po.MaxWait < 100)
        po.MaxWait = 100;
    p->msg = msg;
    p->d = d;
    p->deadline_ms = d->deadline_ms;
    pending_put(o, p); /* before the publish: the PubAck may come before it returns */
    natsMsg *m = msg;
    st = js_PublishMsgAsync(o->js, &m, &po);
    if (st == NATS_OK)
        return;
    /* Not sent: the library kept nothing and calls nothing back. */
    struct pending *q = pending_take(o, msg);
    natsMsg_Destroy(msg);
    if (!q)
        return; /* cannot happen: only a sent message gets an ack */
    free(q);
    nats_status_text(st, t, sizeof(t));
    end(d, st == NATS_MAX_PAYLOAD ? PB_RESULT_PERMANENT : PB_RESULT_RETRY, t);
}

/* ---- init, stop, destroy ----------------------------------------------------------------- */

static int nats_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_nats *o = ctx;
    int rc = nats_conf_check(&o->conn, err);
    if (rc)
        return rc;
    if (!strstr(o->subject, "{{") && !nats_subject_ok(o->subject, false))
        return pb_err_set(err, PB_ECONFIG,
                          "subject \"%s\" is not one a message can be published to (no "
                          "spaces, empty tokens or wildcards)",
                          o->subject);
    rc = env->template_add(env, o->subject, err);
    if (rc < 0)
        return rc;
    o->subject_tmpl = rc;
    if (o->headers.n > MAX_HEADERS)
        return pb_err_set(err, PB_ECONFIG, "headers: at most %d", MAX_HEADERS);
    for (size_t i = 0; i < o->headers.n; i++) {
        const char *k = o->headers.keys[i], *v = o->headers.vals[i];
        if (!nats_header_name_ok(k))
            return pb_err_set(err, PB_ECONFIG, "header \"%s\" is not a header name", k);
        if (strcasecmp(k, "Nats-Msg-Id") == 0 || strncasecmp(k, "Nats-Expected-", 14) == 0)
            return pb_err_set(err, PB_ECONFIG,
                              "header \"%s\" is set by the output (Nats-Msg-Id is the "
                              "delivery's idempotency key; use stream for the expected stream)",
                              k);
        if (!nats_header_value_ok(v))
            return pb_err_set(err, PB_ECONFIG, "header \"%s\": a value holds a line break", k);
        o->header_tmpl[i] = -1;
        if (strstr(v, "{{")) {
            rc = env->template_add(env, v, err);
            if (rc < 0)
                return rc;
            o->header_tmpl[i] = rc;
        }
    }
    if (o->stream && !*o->stream)
        return pb_err_set(err, PB_ECONFIG, "stream must not be empty");
    o->stream_tmpl = -1;
    if (o->stream && strstr(o->stream, "{{")) {
        rc = env->template_add(env, o->stream, err);
        if (rc < 0)
            return rc;
        o->stream_tmpl = rc;
    }
    o->allow = env->allow;
    snprintf(o->pipeline, sizeof(o->pipeline), "%s", env->pipeline);
    snprintf(o->output, sizeof(o->output), "%s", env->output);
    snprintf(o->name, sizeof(o->name), "patchbay %s/%s", env->pipeline, env->output);
    o->nbuckets = 1024;
    o->table = calloc(o->nbuckets, sizeof(*o->table));
    if (!o->table)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    o->mu_ready = true;
    return 0;
}

/* No more deliveries come: wait a little for the PubAcks still due, then
 * end what is left with RETRY and close. */
static void sweeper_end(struct out_nats *o)
{
    if (!o->sweeper_running)
        return;
    pthread_mutex_lock(&o->mu);
    o->sweeper_stop = true;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
    pthread_join(o->sweeper, NULL);
    o->sweeper_running = false;
}

static void nats_stop(void *ctx)
{
    struct out_nats *o = ctx;
    if (o->js && natsConnection_Status(nats_conn_nc(o->nc)) == NATS_CONN_STATUS_CONNECTED) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = STOP_WAIT_MS;
        js_PublishAsyncComplete(o->js, &po);
    }
    disconnect(o, "shutting down");
    sweeper_end(o);
}

static void nats_destroy(void *ctx)
{
    struct out_nats *o = ctx;
    if (o->mu_ready) {
        disconnect(o, "shutting down");
        sweeper_end(o);
        pthread_cond_destroy(&o->cv);
        pthread_mutex_destroy(&o->mu);
        o->mu_ready = false;
    }
    free(o->table);
    o->table = NULL;
}

const struct pb_output_plugin pb_out_nats = {
    .name = "nats",
    .fields = nats_fields,
    .ctx_size = sizeof(struct out_nats),
    .default_concurrency = 256,
    .workers = 1,
    .init = nats_init,
    .start = nats_start,
    .deliver = nats_deliver,
    .stop = nats_stop,
    .destroy = nats_destroy,
};
