/* nats.c - the `nats` input: a JetStream pull consumer.
 *
 *   nats: { url: "nats://127.0.0.1:4222", stream: ORDERS, consumer: patchbay,
 *           subject: "orders.>" }
 *
 * A durable pull consumer (created when absent unless create_consumer is
 * false; the stream itself only with create_stream: true) is fetched in
 * batches. Each batch is submitted to the core as one commit and every
 * message is acknowledged (+ACK) only in the submit callback once the commit
 * is durable, whether it was stored, a repeat (its idempotency key was seen)
 * or dead on arrival (invalid JSON with format: json). A failed commit or
 * store back-pressure (PB_EFULL) naks the messages with a delay (-NAK
 * {"delay"}) so the server redelivers them later, and fetching pauses until
 * the core resumes it. Messages fetched but never acknowledged (kill -9) are
 * redelivered by the server after ack_wait; the idempotency key (the
 * Nats-Msg-Id header, else "<stream>:<stream sequence>") drops the repeat.
 *
 * Threads. The input runs on a loop of its own (PB_INPUT_OWN_THREAD): start
 * (the first connection, which may block), the submits, their callbacks
 * (acks and naks), pause, resume and stop run there. A fetcher thread of
 * this file owns the blocking natsSubscription_Fetch and the reconnection:
 * it fetches up to `batch` messages while fewer than max_ack_pending are
 * unacknowledged and the input is not paused, and posts each batch to the
 * loop. The two share only the fields under `mu`. A session (connection,
 * JetStream context, subscription) is reference-counted: the fetcher holds
 * the current one, every batch the one it came from, so acks of a batch
 * fetched before a reconnect still find their connection; the last reference
 * flushes and closes it. The library's own threads only report connection
 * events (nats_common.c).
 *
 * Stop: the fetcher ends after the fetch under way, takes what the server
 * still sent to its last pull request and naks it; batches the core no
 * longer takes are naked (without delay, for another consumer) once the
 * fetcher is gone; batches already submitted are acked in their callbacks,
 * which the core still runs on the loop. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "nats_common.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define META_HEADERS_MAX 100
#define META_VALUE_MAX (16 * 1024)
#define API_WAIT_MS 5000  /* JetStream API requests (stream and consumer info) */
#define FLUSH_MS 2000     /* acks still buffered when a session closes */
#define LAG_EVERY_MS 5000 /* consumer info for the lag, when idle */
#define RETRY_MIN_MS 500  /* reconnect backoff */
#define RETRY_MAX_MS 30000

static const char *const delivers[] = {"all", "new", NULL};
static const char *const formats[] = {"json", "raw", NULL};

struct in_nats;

/* One connection, its JetStream context and the pull subscription. */
struct session {
    _Atomic int refs;
    _Atomic bool broken; /* closed for good, or the consumer is gone: open another */
    struct in_nats *n;
    struct nats_conn *conn;
    jsCtx *js;
    natsSubscription *sub;
};

/* Messages fetched together, submitted together, acked together. */
struct batch {
    struct pb_loop_node node; /* the way to the loop */
    struct in_nats *n;
    struct session *s; /* a reference */
    natsMsgList list;
    int64_t fetched_us;
    uint64_t top_seq;   /* the highest stream sequence in it */
    struct batch *next; /* on the leftover list */
};

struct in_nats {
    /* options (read-only after init) */
    struct nats_conn_conf conn;
    char *stream;
    char *consumer;
    char *subject;
    int deliver;
    int64_t ack_wait_ms;
    int64_t max_ack_pending;
    int64_t batch;
    int64_t fetch_wait_ms;
    int64_t nak_delay_ms;
    int format;
    bool create_consumer;
    bool create_stream;
    int64_t idem_window_ms;
    const struct pb_allowlist *allow;
    char pipeline[128];
    char name[192]; /* client name the server shows */

    /* run time: the loop thread */
    struct pb_input *in;
    pthread_t fetcher;
    bool fetcher_running;
    uint64_t acked_seq; /* highest stream sequence acknowledged (position) */
    /* Batches the daemon would not take any more (stopping): naked once
     * the fetcher is gone, so the server cannot hand them straight back to
     * a pull request of ours that nobody reads. */
    struct batch *leftover;
    bool fetcher_done;

    /* shared by the loop, the fetcher and connection events */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool sync_ready; /* mu and cv initialised */
    bool stopping;
    bool paused;
    int64_t inflight;      /* fetched, not yet acked or naked */
    int64_t max_inflight;  /* the consumer's max_ack_pending */
    struct session *first; /* opened by start, handed to the fetcher */
};

static const struct pb_field nats_fields[] = {
    NATS_CONN_FIELDS(struct in_nats, conn),
    {.name = "stream",
     .type = PB_F_STR,
     .offset = offsetof(struct in_nats, stream),
     .flags = PB_FIELD_REQUIRED,
     .doc = "the JetStream stream"},
    {.name = "consumer",
     .type = PB_F_STR,
     .offset = offsetof(struct in_nats, consumer),
     .flags = PB_FIELD_REQUIRED,
     .doc = "durable consumer name"},
    {.name = "subject",
     .type = PB_F_STR,
     .offset = offsetof(struct in_nats, subject),
     .doc = "the consumer's filter subject (default: the whole stream)"},
    {.name = "deliver",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_nats, deliver),
     .choices = delivers,
     .def = "all",
     .doc = "where a new consumer starts: all (the stream's first message) or new"},
    {.name = "ack_wait",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_nats, ack_wait_ms),
     .def = "30s",
     .doc = "unacknowledged messages are redelivered after this"},
    {.name = "max_ack_pending",
     .type = PB_F_INT,
     .offset = offsetof(struct in_nats, max_ack_pending),
     .def = "1024",
     .min = 1,
     .max = 1000000,
     .doc = "messages fetched and not yet acknowledged, at most"},
    {.name = "batch",
     .type = PB_F_INT,
     .offset = offsetof(struct in_nats, batch),
     .def = "256",
     .min = 1,
     .max = PB_SUBMIT_MAX,
     .doc = "messages per fetch and per commit"},
    {.name = "fetch_wait",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_nats, fetch_wait_ms),
     .def = "1s",
     .doc = "how long one fetch waits for messages (and stop for a fetch)"},
    {.name = "nak_delay",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_nats, nak_delay_ms),
     .def = "2s",
     .doc = "redelivery delay of a message the store could not take"},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_nats, format),
     .choices = formats,
     .def = "json",
     .doc = "json (validated; invalid messages are dead on arrival) or raw"},
    {.name = "create_consumer",
     .type = PB_F_BOOL,
     .offset = offsetof(struct in_nats, create_consumer),
     .def = "true",
     .doc = "create the durable consumer when absent, keep its ack_wait and max_ack_pending"},
    {.name = "create_stream",
     .type = PB_F_BOOL,
     .offset = offsetof(struct in_nats, create_stream),
     .def = "false",
     .doc = "create the stream (file storage, on `subject`) when absent"},
    {.name = "idempotency_window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_nats, idem_window_ms),
     .def = "24h",
     .doc = "how long message keys are remembered, so a redelivery stores nothing new"},
    {0},
};

/* ---- init ------------------------------------------------------------------------------ */

static bool name_ok(const char *s)
{
    if (!*s || strlen(s) > 200)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f || *s == '.' || *s == '*' || *s == '>' ||
            *s == '/' || *s == '\\')
            return false;
    return true;
}

static int nats_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_nats *n = ctx;
    int rc = nats_conf_check(&n->conn, err);
    if (rc)
        return rc;
    if (!name_ok(n->stream))
        return pb_err_set(err, PB_ECONFIG,
                          "stream \"%s\" is not a stream name (no spaces, '.', '*', '>', '/')",
                          n->stream);
    if (!name_ok(n->consumer))
        return pb_err_set(err, PB_ECONFIG,
                          "consumer \"%s\" is not a durable name (no spaces, '.', '*', '>', '/')",
                          n->consumer);
    if (n->subject && !nats_subject_ok(n->subject, true))
        return pb_err_set(err, PB_ECONFIG, "subject \"%s\" is not a NATS subject", n->subject);
    if (n->create_stream && !n->subject)
        return pb_err_set(err, PB_ECONFIG, "create_stream needs subject: the stream's subjects");
    if (n->ack_wait_ms < 1000)
        return pb_err_set(err, PB_ECONFIG, "ack_wait must be at least 1s");
    if (n->fetch_wait_ms < 100 || n->fetch_wait_ms > 60000)
        return pb_err_set(err, PB_ECONFIG, "fetch_wait must be between 100ms and 1m");
    if (n->fetch_wait_ms >= n->ack_wait_ms)
        return pb_err_set(err, PB_ECONFIG, "fetch_wait must be shorter than ack_wait");
    if (n->nak_delay_ms < 0)
        return pb_err_set(err, PB_ECONFIG, "nak_delay must not be negative");
    snprintf(n->pipeline, sizeof(n->pipeline), "%s", env->pipeline);
    snprintf(n->name, sizeof(n->name), "patchbay %s", env->pipeline);
    n->allow = env->allow;
    env->raw = n->format == 1;
    env->idempotency_window_ms = n->idem_window_ms;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    n->sync_ready = true;
    return 0;
}

/* ---- sessions ------------------------------------------------------------------------- */

static void session_unref(struct session *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    natsSubscription_Destroy(s->sub); /* the durable consumer stays */
    jsCtx_Destroy(s->js);
    nats_conn_close(s->conn, FLUSH_MS);
    free(s);
}

/* Connection events, on the library's callback thread. */
static void event_cb(void *arg, enum nats_event ev, const char *detail)
{
    struct session *s = arg;
    struct in_nats *n = s->n;
    if (!n->in)
        return;
    switch (ev) {
    case NATS_EV_DISCONNECTED:
        pb_input_set_state(n->in, PB_INPUT_RECONNECTING, detail);
        break;
    case NATS_EV_RECONNECTED:
        pb_input_set_state(n->in, PB_INPUT_CONNECTED, NULL);
        break;
    case NATS_EV_CLOSED:
        atomic_store(&s->broken, true);
        pb_input_set_state(n->in, PB_INPUT_RECONNECTING, detail);
        pthread_mutex_lock(&n->mu);
        pthread_cond_broadcast(&n->cv);
        pthread_mutex_unlock(&n->mu);
        break;
    }
}

static int js_fail(struct pb_err *err, const char *what, natsStatus st, jsErrCode ec)
{
    char t[256];
    nats_status_text(st, t, sizeof(t));
    if (ec)
        return pb_err_set(err, PB_ENET, "%s: %s (JetStream error %d)", what, t, (int)ec);
    return pb_err_set(err, PB_ENET, "%s: %s", what, t);
}

static int ensure_stream(struct in_nats *n, jsCtx *js, struct pb_err *err)
{
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus st = js_GetStreamInfo(&si, js, n->stream, NULL, &ec);
    jsStreamInfo_Destroy(si);
    if (st == NATS_OK)
        return 0;
    if (ec != JSStreamNotFoundErr && st != NATS_NOT_FOUND)
        return js_fail(err, "stream info", st, ec);
    if (!n->create_stream)
        return pb_err_set(err, PB_ENOTFOUND,
                          "stream \"%s\" does not exist (create it, or set create_stream: true)",
                          n->stream);
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[1] = {n->subject};
    sc.Name = n->stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    si = NULL;
    st = js_AddStream(&si, js, &sc, NULL, &ec);
    jsStreamInfo_Destroy(si);
    if (st != NATS_OK)
        return js_fail(err, "creating the stream", st, ec);
    PB_INFO("nats: stream created pipeline=%s stream=%s subject=%s", n->pipeline, n->stream,
            n->subject);
    return 0;
}

/* The durable pull consumer as configured; its max_ack_pending bounds what
 * the fetcher takes. */
static int ensure_consumer(struct in_nats *n, jsCtx *js, int64_t *max_pending, struct pb_err *err)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode ec = 0;
    int rc = 0;
    natsStatus st = js_GetConsumerInfo(&ci, js, n->stream, n->consumer, NULL, &ec);
    if (st != NATS_OK && ec != JSConsumerNotFoundErr && st != NATS_NOT_FOUND)
        return js_fail(err, "consumer info", st, ec);
    if (st != NATS_OK) {
        if (!n->create_consumer)
            return pb_err_set(err, PB_ENOTFOUND,
                              "consumer \"%s\" of stream \"%s\" does not exist (create it, or "
                              "leave create_consumer on)",
                              n->consumer, n->stream);
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = n->consumer;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = n->ack_wait_ms * 1000000;
        cc.MaxAckPending = n->max_ack_pending;
        cc.MaxDeliver = -1;
        cc.DeliverPolicy = n->deliver == 1 ? js_DeliverNew : js_DeliverAll;
        cc.FilterSubject = n->subject;
        cc.Description = "patchbay";
        st = js_AddConsumer(&ci, js, n->stream, &cc, NULL, &ec);
        if (st != NATS_OK)
            return js_fail(err, "creating the consumer", st, ec);
        PB_INFO("nats: consumer created pipeline=%s stream=%s consumer=%s deliver=%s", n->pipeline,
                n->stream, n->consumer, delivers[n->deliver]);
    }
    jsConsumerConfig *have = ci->Config;
    if (have->DeliverSubject && *have->DeliverSubject) {
        rc = pb_err_set(err, PB_ECONFIG, "consumer \"%s\" is a push consumer; a pull one is needed",
                        n->consumer);
        goto out;
    }
    if (have->AckPolicy != js_AckExplicit) {
        rc = pb_err_set(err, PB_ECONFIG,
                        "consumer \"%s\" does not take explicit acks; each message must be "
                        "acknowledged after its commit",
                        n->consumer);
        goto out;
    }
    const char *filter = have->FilterSubject ? have->FilterSubject : "";
    if (n->subject && strcmp(filter, n->subject) != 0) {
        rc = pb_err_set(err, PB_ECONFIG,
                        "consumer \"%s\" filters subject \"%s\", not \"%s\" (use another "
                        "consumer name, or delete that consumer)",
                        n->consumer, filter, n->subject);
        goto out;
    }
    if (have->MaxDeliver > 0)
        PB_WARN("nats: the consumer gives up on a message after max_deliver deliveries "
                "pipeline=%s consumer=%s max_deliver=%lld",
                n->pipeline, n->consumer, (long long)have->MaxDeliver);
    if (n->create_consumer &&
        (have->AckWait != n->ack_wait_ms * 1000000 || have->MaxAckPending != n->max_ack_pending)) {
        jsConsumerConfig cc = *have;
        jsConsumerInfo *ci2 = NULL;
        cc.AckWait = n->ack_wait_ms * 1000000;
        cc.MaxAckPending = n->max_ack_pending;
        st = js_UpdateConsumer(&ci2, js, n->stream, &cc, NULL, &ec);
        if (st != NATS_OK) {
            rc = js_fail(err, "updating the consumer", st, ec);
            goto out;
        }
        jsConsumerInfo_Destroy(ci);
        ci = ci2;
        have = ci->Config;
        PB_INFO("nats: consumer updated pipeline=%s consumer=%s ack_wait_ms=%lld "
                "max_ack_pending=%lld",
                n->pipeline, n->consumer, (long long)n->ack_wait_ms, (long long)n->max_ack_pending);
    }
    *max_pending = n->max_ack_pending;
    if (have->MaxAckPending > 0 && have->MaxAckPending < *max_pending)
        *max_pending = have->MaxAckPending;
    if (n->in)
        pb_input_set_lag(n->in, (int64_t)ci->NumPending);
out:
    jsConsumerInfo_Destroy(ci);
    return rc;
}

/* Connect (through the outbound guard), make sure of the stream and the
 * consumer, and bind a pull subscription to it. Blocks. */
static int session_open(struct in_nats *n, struct session **out, struct pb_err *err)
{
    struct session *s = calloc(1, sizeof(*s));
    jsOptions jo;
    jsErrCode ec = 0;
    int64_t max_pending = 0;
    int rc;
    if (!s)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    atomic_init(&s->refs, 1);
    s->n = n;
    s->conn = nats_conn_open(&n->conn, n->allow, n->name, event_cb, s, err);
    if (!s->conn) {
        rc = err->code ? err->code : PB_ENET;
        goto fail;
    }
    jsOptions_Init(&jo);
    jo.Wait = API_WAIT_MS;
    natsStatus st = natsConnection_JetStream(&s->js, nats_conn_nc(s->conn), &jo);
    if (st != NATS_OK) {
        rc = js_fail(err, "JetStream", st, 0);
        goto fail;
    }
    rc = ensure_stream(n, s->js, err);
    if (rc == 0)
        rc = ensure_consumer(n, s->js, &max_pending, err);
    if (rc)
        goto fail;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = n->stream;
    so.Consumer = n->consumer;
    st = js_PullSubscribe(&s->sub, s->js, n->subject, n->consumer, NULL, &so, &ec);
    if (st != NATS_OK) {
        rc = js_fail(err, "pull subscription", st, ec);
        goto fail;
    }
    pthread_mutex_lock(&n->mu);
    n->max_inflight = max_pending;
    pthread_mutex_unlock(&n->mu);
    *out = s;
    return 0;
fail:
    session_unref(s);
    return rc;
}

/* ---- acks -------------------------------------------------------------------------------- */

/* Any thread: the batch's messages are answered; let the fetcher go on. */
static void batch_finish(struct batch *b)
{
    struct in_nats *n = b->n;
    pthread_mutex_lock(&n->mu);
    n->inflight -= b->list.Count;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    natsMsgList_Destroy(&b->list);
    session_unref(b->s);
    free(b);
}

/* Nak every message of the batch: redelivered after delay_ms. */
static void batch_nak(struct batch *b, int64_t delay_ms)
{
    for (int i = 0; i < b->list.Count; i++) {
        if (delay_ms > 0)
            natsMsg_NakWithDelay(b->list.Msgs[i], delay_ms, NULL);
        else
            natsMsg_Nak(b->list.Msgs[i], NULL);
    }
    if (b->n->in)
        pb_input_count_nacked(b->n->in, (uint64_t)b->list.Count);
}

/* The loop thread: the commit is durable (status 0) or failed. */
static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t nres)
{
    struct batch *b = arg;
    struct in_nats *n = b->n;
    (void)res;
    (void)nres;
    if (status != 0) {
        PB_WARN("nats: commit failed, messages naked for redelivery pipeline=%s count=%d "
                "delay_ms=%lld error=\"%s\"",
                n->pipeline, b->list.Count, (long long)n->nak_delay_ms, pb_strerror(status));
        batch_nak(b, n->nak_delay_ms);
        batch_finish(b);
        return;
    }
    int64_t lat = pb_mono_us() - b->fetched_us;
    for (int i = 0; i < b->list.Count; i++) {
        natsMsg_Ack(b->list.Msgs[i], NULL); /* stored, a repeat or dead: taken either way */
        pb_input_observe_latency(n->in, lat);
    }
    if (b->top_seq > n->acked_seq) {
        char pos[256];
        n->acked_seq = b->top_seq;
        snprintf(pos, sizeof(pos), "%s:%llu", n->stream, (unsigned long long)b->top_seq);
        pb_input_set_position(n->in, pos);
    }
    batch_finish(b);
}

/* The loop thread: a batch not taken because the daemon stops. Naked
 * without delay (another consumer may take them at once), but only once
 * the fetcher has ended and drained its subscription. */
static void batch_leftover(struct in_nats *n, struct batch *b)
{
    if (n->fetcher_done || !n->fetcher_running) {
        batch_nak(b, 0);
        batch_finish(b);
        return;
    }
    b->next = n->leftover;
    n->leftover = b;
}

/* ---- from messages to items --------------------------------------------------------------- */

/* $meta.headers: each name as sent, a string, or an array of strings when
 * the header is repeated. Names or values that are not UTF-8 are left out. */
static int add_headers(json_t *meta, natsMsg *m)
{
    const char **keys = NULL;
    int nk = 0;
    if (natsMsgHeader_Keys(m, &keys, &nk) != NATS_OK || nk == 0) {
        free((void *)keys);
        return 0;
    }
    json_t *h = json_object();
    int rc = -1;
    if (!h || json_object_set_new(meta, "headers", h) != 0)
        goto out;
    for (int i = 0; i < nk && i < META_HEADERS_MAX; i++) {
        const char **vals = NULL;
        int nv = 0;
        if (!pb_utf8_valid(keys[i], strlen(keys[i])) ||
            natsMsgHeader_Values(m, keys[i], &vals, &nv) != NATS_OK) {
            free((void *)vals);
            continue;
        }
        json_t *v = NULL;
        if (nv == 1) {
            if (strlen(vals[0]) <= META_VALUE_MAX && pb_utf8_valid(vals[0], strlen(vals[0])))
                v = json_string(vals[0]);
        } else if (nv > 1) {
            v = json_array();
            for (int j = 0; v && j < nv; j++)
                if (strlen(vals[j]) <= META_VALUE_MAX && pb_utf8_valid(vals[j], strlen(vals[j])))
                    json_array_append_new(v, json_string(vals[j]));
        }
        free((void *)vals);
        if (v && json_object_set_new(h, keys[i], v) != 0)
            goto out;
    }
    rc = 0;
out:
    free((void *)keys);
    return rc;
}

/* What this input knows of a message, as $meta. malloc'd JSON text. */
static char *msg_meta(const struct in_nats *n, natsMsg *m, const jsMsgMetaData *md, size_t *len)
{
    const char *subj = natsMsg_GetSubject(m);
    json_t *o = json_object();
    char *text = NULL;
    if (!o)
        return NULL;
    if (subj && pb_utf8_valid(subj, strlen(subj)))
        json_object_set_new(o, "subject", json_string(subj));
    json_object_set_new(o, "stream", json_string(md ? md->Stream : n->stream));
    json_object_set_new(o, "consumer", json_string(md ? md->Consumer : n->consumer));
    if (md) {
        json_object_set_new(o, "stream_seq", json_integer((json_int_t)md->Sequence.Stream));
        json_object_set_new(o, "consumer_seq", json_integer((json_int_t)md->Sequence.Consumer));
        json_object_set_new(o, "num_delivered", json_integer((json_int_t)md->NumDelivered));
        json_object_set_new(o, "num_pending", json_integer((json_int_t)md->NumPending));
        json_object_set_new(o, "timestamp", json_integer((json_int_t)(md->Timestamp / 1000000)));
    }
    if (add_headers(o, m) == 0)
        text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (text)
        *len = strlen(text);
    return text;
}

static bool key_ok(const char *k)
{
    size_t l = strlen(k);
    if (l == 0 || l > PB_ITEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < l; i++)
        if (k[i] <= 0x20 || k[i] >= 0x7f)
            return false;
    return true;
}

static void batch_submit(struct in_nats *n, struct batch *b)
{
    int cnt = b->list.Count;
    struct pb_item *items = calloc((size_t)cnt, sizeof(*items));
    char **metas = calloc((size_t)cnt, sizeof(*metas));
    char(*keys)[PB_ITEM_KEY_MAX + 1] = calloc((size_t)cnt, sizeof(*keys));
    char(*reasons)[160] = calloc((size_t)cnt, sizeof(*reasons));
    int rc = PB_ENOMEM;
    uint64_t pending = 0;
    bool have_pending = false;

    if (!items || !metas || !keys || !reasons)
        goto out;
    for (int i = 0; i < cnt; i++) {
        natsMsg *m = b->list.Msgs[i];
        jsMsgMetaData *md = NULL;
        const char *body = natsMsg_GetData(m);
        size_t len = (size_t)natsMsg_GetDataLength(m);
        const char *id = NULL, *ctype = NULL;
        size_t mlen = 0;
        if (natsMsg_GetMetaData(&md, m) != NATS_OK)
            md = NULL;
        metas[i] = msg_meta(n, m, md, &mlen);
        if (!metas[i]) {
            jsMsgMetaData_Destroy(md);
            goto out;
        }
        if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id && key_ok(id))
            snprintf(keys[i], sizeof(keys[i]), "%s", id);
        else if (md)
            snprintf(keys[i], sizeof(keys[i]), "%s:%llu", md->Stream,
                     (unsigned long long)md->Sequence.Stream);
        else
            keys[i][0] = 0;
        if (md) {
            pending = md->NumPending;
            have_pending = true;
            if (md->Sequence.Stream > b->top_seq)
                b->top_seq = md->Sequence.Stream;
        }
        jsMsgMetaData_Destroy(md);
        items[i] = (struct pb_item){
            .body = body,
            .len = len,
            .meta = metas[i],
            .meta_len = mlen,
            .key = keys[i][0] ? keys[i] : NULL,
        };
        if (n->format == 0) {
            struct pb_json_check chk = {0};
            if (pb_json_validate(body, len, &chk) != 0) {
                snprintf(reasons[i], sizeof(reasons[i]), "invalid JSON: %s at byte %zu",
                         chk.err_reason ? chk.err_reason : "malformed", chk.err_offset);
                items[i].dead_reason = reasons[i];
            }
        } else {
            items[i].content_type = "application/octet-stream";
            if (natsMsgHeader_Get(m, "Content-Type", &ctype) == NATS_OK && ctype && *ctype &&
                strlen(ctype) < 256)
                items[i].content_type = ctype;
        }
    }
    if (have_pending)
        pb_input_set_lag(n->in, (int64_t)pending);
    rc = pb_input_submit(n->in, items, (size_t)cnt, NULL, 0, submit_cb, b);
out:
    for (int i = 0; metas && i < cnt; i++)
        free(metas[i]);
    free(metas);
    free(items);
    free(keys);
    free(reasons);
    if (rc == 0)
        return;
    if (rc == PB_ESHUTDOWN) {
        /* The daemon is stopping: fetch no more, give these back at stop. */
        pthread_mutex_lock(&n->mu);
        n->stopping = true;
        pthread_cond_broadcast(&n->cv);
        pthread_mutex_unlock(&n->mu);
        batch_leftover(n, b);
        return;
    }
    /* Not taken: PB_EFULL (the core pauses the input) or out of memory.
     * The server redelivers them later; nothing was stored. */
    if (rc != PB_EFULL)
        PB_WARN("nats: batch not submitted, naked for redelivery pipeline=%s count=%d error=\"%s\"",
                n->pipeline, cnt, pb_strerror(rc));
    batch_nak(b, n->nak_delay_ms);
    batch_finish(b);
}

/* The loop thread: a batch from the fetcher. */
static void batch_post_cb(void *arg, int status)
{
    struct batch *b = arg;
    struct in_nats *n = b->n;
    bool stopping;
    pthread_mutex_lock(&n->mu);
    stopping = n->stopping;
    pthread_mutex_unlock(&n->mu);
    if (status != PB_LOOP_RUN || stopping) {
        batch_leftover(n, b);
        return;
    }
    batch_submit(n, b);
}

/* ---- the fetcher --------------------------------------------------------------------------- */

/* Wait on cv up to ms (the fetcher, holding mu). */
static void wait_ms(struct in_nats *n, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&n->cv, &n->mu, &ts);
}

static bool is_stopping(struct in_nats *n)
{
    pthread_mutex_lock(&n->mu);
    bool st = n->stopping;
    pthread_mutex_unlock(&n->mu);
    return st;
}

static void refresh_lag(struct in_nats *n, struct session *s)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode ec = 0;
    natsStatus st = natsSubscription_GetConsumerInfo(&ci, s->sub, NULL, &ec);
    if (st == NATS_OK) {
        pb_input_set_lag(n->in, (int64_t)ci->NumPending);
    } else if (ec == JSConsumerNotFoundErr || st == NATS_NOT_FOUND) {
        PB_WARN("nats: the consumer is gone pipeline=%s consumer=%s", n->pipeline, n->consumer);
        atomic_store(&s->broken, true);
    }
    jsConsumerInfo_Destroy(ci);
}

/* Stopping: a pull request can outlive the fetch that sent it by a moment,
 * and what the server sent to it waits in the subscription, delivered but
 * never fetched. Take it (no_wait requests end at once on the server, so
 * none is left behind) and give it back. */
static void drain(struct in_nats *n, struct session *s)
{
    for (int round = 0; round < 3; round++) {
        int msgs = 0, bytes = 0;
        if (natsSubscription_GetPending(s->sub, &msgs, &bytes) != NATS_OK || msgs <= 0)
            return;
        jsFetchRequest req;
        jsFetchRequest_Init(&req);
        req.Batch = msgs;
        req.NoWait = true;
        req.Expires = 500 * 1000000LL;
        natsMsgList list = {0};
        if (natsSubscription_FetchRequest(&list, s->sub, &req) == NATS_OK) {
            for (int i = 0; i < list.Count; i++)
                natsMsg_Nak(list.Msgs[i], NULL);
            if (list.Count)
                pb_input_count_nacked(n->in, (uint64_t)list.Count);
        }
        natsMsgList_Destroy(&list);
    }
}

static void *fetcher_main(void *arg)
{
    struct in_nats *n = arg;
    struct session *s;
    int64_t backoff = 0, lag_at = 0;
    int errors = 0;

    pthread_mutex_lock(&n->mu);
    s = n->first;
    n->first = NULL;
    pthread_mutex_unlock(&n->mu);
    for (;;) {
        if (s && atomic_load(&s->broken)) {
            session_unref(s);
            s = NULL;
        }
        if (!s) {
            struct pb_err err = {0};
            if (is_stopping(n))
                break;
            if (session_open(n, &s, &err) != 0) {
                char msg[PB_ERR_MSG_MAX + 64];
                backoff = backoff ? backoff * 2 : RETRY_MIN_MS;
                if (backoff > RETRY_MAX_MS)
                    backoff = RETRY_MAX_MS;
                snprintf(msg, sizeof(msg), "%s (again in %lld ms)", err.msg, (long long)backoff);
                pb_input_set_state(n->in, PB_INPUT_RECONNECTING, msg);
                pthread_mutex_lock(&n->mu);
                if (!n->stopping)
                    wait_ms(n, backoff);
                pthread_mutex_unlock(&n->mu);
                continue;
            }
            backoff = 0;
            PB_INFO("nats: connected again pipeline=%s stream=%s consumer=%s", n->pipeline,
                    n->stream, n->consumer);
            pb_input_set_state(n->in, PB_INPUT_CONNECTED, NULL);
        }
        pthread_mutex_lock(&n->mu);
        while (!n->stopping && !atomic_load(&s->broken) &&
               (n->paused || n->inflight >= n->max_inflight))
            pthread_cond_wait(&n->cv, &n->mu);
        bool stop = n->stopping;
        int64_t want = n->max_inflight - n->inflight;
        pthread_mutex_unlock(&n->mu);
        if (stop)
            break;
        if (atomic_load(&s->broken))
            continue;
        if (want > n->batch)
            want = n->batch;

        natsMsgList list = {0};
        jsErrCode ec = 0;
        natsStatus st = natsSubscription_Fetch(&list, s->sub, (int)want, n->fetch_wait_ms, &ec);
        if (st == NATS_OK && list.Count > 0) {
            errors = 0;
            struct batch *b = calloc(1, sizeof(*b));
            if (!b) {
                natsMsgList_Destroy(&list); /* never acked: redelivered after ack_wait */
                pthread_mutex_lock(&n->mu);
                wait_ms(n, 100);
                pthread_mutex_unlock(&n->mu);
                continue;
            }
            b->n = n;
            b->s = s;
            atomic_fetch_add(&s->refs, 1);
            b->list = list;
            b->fetched_us = pb_mono_us();
            pthread_mutex_lock(&n->mu);
            n->inflight += list.Count;
            pthread_mutex_unlock(&n->mu);
            pb_input_count_received(n->in, (uint64_t)list.Count);
            if (pb_loop_post_node(pb_input_loop(n->in), &b->node, batch_post_cb, b) != 0) {
                batch_nak(b, 0);
                batch_finish(b);
            }
            continue;
        }
        natsMsgList_Destroy(&list);
        if (st == NATS_OK || st == NATS_TIMEOUT) {
            errors = 0;
            int64_t now = pb_mono_us() / 1000;
            if (now - lag_at >= LAG_EVERY_MS) {
                lag_at = now;
                refresh_lag(n, s);
            }
            continue;
        }
        if (st == NATS_CONNECTION_CLOSED || st == NATS_INVALID_SUBSCRIPTION) {
            atomic_store(&s->broken, true);
            continue;
        }
        /* Disconnected (the library is reconnecting), or the server said
         * no: wait a little; after a few in a row, see whether the
         * consumer is still there. */
        char t[256];
        if (errors++ % 20 == 0 && st != NATS_CONNECTION_DISCONNECTED)
            PB_WARN("nats: fetch failed pipeline=%s consumer=%s error=\"%s\" js_error=%d",
                    n->pipeline, n->consumer, nats_status_text(st, t, sizeof(t)), (int)ec);
        if (errors >= 3 &&
            natsConnection_Status(nats_conn_nc(s->conn)) == NATS_CONN_STATUS_CONNECTED)
            refresh_lag(n, s);
        pthread_mutex_lock(&n->mu);
        if (!n->stopping)
            wait_ms(n, errors > 10 ? 2000 : 200);
        pthread_mutex_unlock(&n->mu);
    }
    if (s && !atomic_load(&s->broken))
        drain(n, s);
    session_unref(s);
    return NULL;
}

/* ---- the plugin ------------------------------------------------------------------------------ */

static int nats_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_nats *n = ctx;
    struct session *s = NULL;
    n->in = in;
    int rc = session_open(n, &s, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&n->mu);
    n->first = s;
    n->stopping = false;
    pthread_mutex_unlock(&n->mu);
    pb_input_set_state(in, PB_INPUT_CONNECTED, NULL);
    if (pthread_create(&n->fetcher, NULL, fetcher_main, n) != 0) {
        pthread_mutex_lock(&n->mu);
        n->first = NULL;
        pthread_mutex_unlock(&n->mu);
        session_unref(s);
        return pb_err_set(err, PB_ENOMEM, "cannot start the fetcher thread");
    }
    pthread_setname_np(n->fetcher, "pb-nats-fetch");
    n->fetcher_running = true;
    PB_INFO("nats: consuming pipeline=%s stream=%s consumer=%s", n->pipeline, n->stream,
            n->consumer);
    return 0;
}

static void nats_pause(void *ctx)
{
    struct in_nats *n = ctx;
    pthread_mutex_lock(&n->mu);
    n->paused = true;
    pthread_mutex_unlock(&n->mu);
}

static void nats_resume(void *ctx)
{
    struct in_nats *n = ctx;
    pthread_mutex_lock(&n->mu);
    n->paused = false;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* Stop fetching: the fetcher ends after the fetch under way (fetch_wait at
 * most); batches already submitted are acked in their callbacks, on the
 * loop, which keeps running until they are. */
static void nats_stop(void *ctx)
{
    struct in_nats *n = ctx;
    pthread_mutex_lock(&n->mu);
    n->stopping = true;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    if (n->fetcher_running) {
        pthread_join(n->fetcher, NULL);
        n->fetcher_running = false;
        n->fetcher_done = true;
    }
    while (n->leftover) {
        struct batch *b = n->leftover;
        n->leftover = b->next;
        batch_nak(b, 0);
        batch_finish(b);
    }
}

static void nats_destroy(void *ctx)
{
    struct in_nats *n = ctx;
    if (n->sync_ready) {
        nats_stop(ctx);
        session_unref(n->first);
        n->first = NULL;
        pthread_cond_destroy(&n->cv);
        pthread_mutex_destroy(&n->mu);
        n->sync_ready = false;
    }
}

const struct pb_input_plugin pb_in_nats = {
    .name = "nats",
    .fields = nats_fields,
    .ctx_size = sizeof(struct in_nats),
    .flags = PB_INPUT_OWN_THREAD,
    .init = nats_init,
    .start = nats_start,
    .stop = nats_stop,
    .pause = nats_pause,
    .resume = nats_resume,
    .destroy = nats_destroy,
};
