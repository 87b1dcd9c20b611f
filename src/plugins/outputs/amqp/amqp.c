/* amqp.c - the `amqp` output: publish to a RabbitMQ (AMQP 0-9-1) exchange
 * with publisher confirms.
 *
 *   amqp: { url: "amqp://mq", exchange: orders, routing_key: 'order.{{ .status }}' }
 *
 * The channel is in confirm mode (confirm.select). Publishes are pipelined:
 * a batch is published back to back and its deliveries wait, with those of
 * earlier batches, in a table ordered by their sequence numbers, while the
 * next batch is published; the broker's confirms (basic.ack and
 * basic.nack, single or multiple) are matched to them by sequence number.
 * A delivery is OK only once the broker confirmed it; a nack, a lost
 * connection or no confirm by its deadline is RETRY; a message the broker
 * returned as unroutable (mandatory, basic.return, matched by its
 * message_id) is PERMANENT with the broker's reason. Messages are
 * persistent (delivery_mode 2) and mandatory by default, and carry the
 * delivery's idempotency key as their message_id, the same on every retry,
 * so consumers can drop repeats. While the broker is away a batch waits (up
 * to RECONNECT_WAIT_MS) for the connection to come back before it fails
 * with RETRY and a Retry-After of the reconnect backoff, so an outage
 * spends few attempts.
 *
 * Thread model: `workers = 1`: start, deliver_batch and stop run on the
 * output's worker thread, which publishes and returns without waiting. A
 * reader thread of the output's own waits on the socket, reads the confirms
 * and ends the deliveries (pb_delivery_done, any thread); it also keeps the
 * connection alive while idle (librabbitmq sends heartbeats only from
 * inside its calls) and reconnects after a loss. librabbitmq is not
 * thread-safe per connection: the connection and every run-time field are
 * used under `lock` only; the reader waits on the socket without it. */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../inputs/amqp/amqp_common.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define HEADERS_MAX 12 /* template fields: routing key, correlation id, headers */
#define RECONNECT_WAIT_MS 5000
#define READER_EVERY_MIN_MS 250
#define READER_EVERY_MAX_MS 5000
#define READ_BURST 4096 /* frames read in one go before the lock is let go */

/* A publish waiting for its confirm. */
struct pending {
    struct pb_delivery *d;
    uint64_t seq;
    int64_t deadline_ms; /* unix ms */
    bool returned;       /* the broker returned it: PERMANENT once confirmed */
    char reason[320];
    char reply[128]; /* returned: the broker's reply code and text (the answer) */
    struct pending *prev, *next;
};

struct out_amqp {
    /* options (read-only after init) */
    struct pb_amqp_conf conf;
    char *exchange;
    char *exchange_type;
    char *routing_key;
    bool persistent;
    bool mandatory;
    struct pb_strmap headers;
    char *content_type;
    char *correlation_id;
    char *type;
    char *app_id;
    int64_t batch;
    int64_t linger_ms;
    int64_t timeout_ms;
    /* prepared by init */
    int rk_idx;
    int corr_idx;
    int hdr_idx[HEADERS_MAX]; /* template index, or -1 for a fixed value */
    const struct pb_allowlist *allow;
    char pipeline[128];
    char name[192];
    int64_t every_ms; /* the reader's longest wait */

    /* run time: under lock (the worker thread, or the reader thread) */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool lock_ready;
    struct pb_output *out;
    amqp_connection_state_t conn;
    uint64_t gen;                /* connections made */
    uint64_t next_seq;           /* sequence number of the next publish */
    struct pending *head, *tail; /* waiting for confirms, by sequence number */
    char last_error[PB_ERR_MSG_MAX];
    int64_t backoff_ms;
    int64_t connect_after_ms; /* monotonic ms before which no connect is tried */
    /* the reader thread: started by the first start that connects, ended by stop */
    pthread_t reader;
    bool reader_running;
    bool stopping;
};

static const struct pb_field amqp_fields[] = {
    PB_AMQP_CONF_FIELDS(struct out_amqp, conf),
    {.name = "exchange",
     .type = PB_F_STR,
     .offset = offsetof(struct out_amqp, exchange),
     .def = "",
     .doc = "exchange to publish to (\"\": the default exchange, routing key = queue)"},
    {.name = "exchange_type",
     .type = PB_F_STR,
     .offset = offsetof(struct out_amqp, exchange_type),
     .doc = "when set, the exchange is declared (durable): direct, fanout, topic, headers"},
    {.name = "routing_key",
     .type = PB_F_STR,
     .offset = offsetof(struct out_amqp, routing_key),
     .def = "",
     .doc = "routing key (template: 'order.{{ .status }}')"},
    {.name = "persistent",
     .type = PB_F_BOOL,
     .offset = offsetof(struct out_amqp, persistent),
     .def = "true",
     .doc = "delivery_mode 2: the broker writes the message to disk"},
    {.name = "mandatory",
     .type = PB_F_BOOL,
     .offset = offsetof(struct out_amqp, mandatory),
     .def = "true",
     .doc = "a message no queue takes is returned: the delivery fails (permanent)"},
    {.name = "headers",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct out_amqp, headers),
     .doc = "message headers; values may be templates"},
    {.name = "content_type",
     .type = PB_F_STR,
     .offset = offsetof(struct out_amqp, content_type),
     .doc = "overrides the message's content type"},
    {.name = "correlation_id",
     .type = PB_F_STR,
     .offset = offsetof(struct out_amqp, correlation_id),
     .doc = "correlation_id property (template)"},
    {.name = "type",
     .type = PB_F_STR,
     .offset = offsetof(struct out_amqp, type),
     .doc = "type property"},
    {.name = "app_id",
     .type = PB_F_STR,
     .offset = offsetof(struct out_amqp, app_id),
     .def = "patchbay",
     .doc = "app_id property"},
    {.name = "batch",
     .type = PB_F_INT,
     .offset = offsetof(struct out_amqp, batch),
     .def = "256",
     .min = 1,
     .max = 4096,
     .doc = "deliveries handed over (and published back to back) at once"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_amqp, timeout_ms),
     .def = "30s",
     .doc = "a publish not confirmed within this is retried"},
    {.name = "linger",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_amqp, linger_ms),
     .def = "2ms",
     .doc = "how long a batch may wait to fill"},
    {0},
};

/* ---- init --------------------------------------------------------------------------------- */

static int add_template(struct pb_output_env *env, const char *text, struct pb_err *err)
{
    return env->template_add(env, text, err);
}

static int amqp_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_amqp *o = ctx;
    int rc = pb_amqp_conf_prepare(&o->conf, err);
    if (rc)
        return rc;
    if (strlen(o->exchange) > 255)
        return pb_err_set(err, PB_ECONFIG, "exchange is at most 255 bytes");
    if (o->exchange_type && strcmp(o->exchange_type, "direct") &&
        strcmp(o->exchange_type, "fanout") && strcmp(o->exchange_type, "topic") &&
        strcmp(o->exchange_type, "headers"))
        return pb_err_set(err, PB_ECONFIG,
                          "exchange_type must be direct, fanout, topic or headers");
    if (o->exchange_type && !*o->exchange)
        return pb_err_set(err, PB_ECONFIG, "exchange_type needs an exchange to declare");
    if (!*o->exchange && !*o->routing_key)
        return pb_err_set(err, PB_ECONFIG,
                          "routing_key is required with the default exchange: it names the queue");
    if (o->headers.n > HEADERS_MAX)
        return pb_err_set(err, PB_ECONFIG, "at most %d headers", HEADERS_MAX);
    if ((o->type && strlen(o->type) > 255) || strlen(o->app_id) > 255 ||
        (o->content_type && strlen(o->content_type) > 255))
        return pb_err_set(err, PB_ECONFIG, "type, app_id and content_type are at most 255 bytes");
    o->rk_idx = add_template(env, o->routing_key, err);
    if (o->rk_idx < 0)
        return o->rk_idx;
    o->corr_idx = -1;
    if (o->correlation_id && (o->corr_idx = add_template(env, o->correlation_id, err)) < 0)
        return o->corr_idx;
    for (size_t i = 0; i < o->headers.n; i++) {
        o->hdr_idx[i] = -1;
        if (strstr(o->headers.vals[i], "{{") &&
            (o->hdr_idx[i] = add_template(env, o->headers.vals[i], err)) < 0)
            return o->hdr_idx[i];
    }
    o->allow = env->allow;
    snprintf(o->pipeline, sizeof(o->pipeline), "%s", env->pipeline);
    snprintf(o->name, sizeof(o->name), "patchbay %s/%s (output)", env->pipeline, env->output);
    env->batch_max = (size_t)o->batch;
    env->batch_period_ms = o->linger_ms;
    if (o->timeout_ms < 100)
        return pb_err_set(err, PB_ECONFIG, "timeout must be at least 100ms");
    env->attempt_timeout_ms = o->timeout_ms;
    o->every_ms = o->conf.heartbeat_ms ? o->conf.heartbeat_ms / 4 : READER_EVERY_MAX_MS;
    if (o->every_ms < READER_EVERY_MIN_MS)
        o->every_ms = READER_EVERY_MIN_MS;
    if (o->every_ms > READER_EVERY_MAX_MS)
        o->every_ms = READER_EVERY_MAX_MS;
    if (pthread_mutex_init(&o->lock, NULL) != 0)
        return pb_err_set(err, PB_ENOMEM, "cannot create a mutex");
    if (pthread_cond_init(&o->wake, NULL) != 0) {
        pthread_mutex_destroy(&o->lock);
        return pb_err_set(err, PB_ENOMEM, "cannot create a condition variable");
    }
    o->lock_ready = true;
    return 0;
}

/* ---- the connection ------------------------------------------------------------------------ */

static int64_t mono_ms(void)
{
    return pb_mono_us() / 1000;
}

static int rpc_check(struct out_amqp *o, const char *what, struct pb_err *err)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(o->conn);
    char t[384];
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    return pb_err_set(err, PB_ENET, "%s: %s", what, pb_amqp_reply_text(r, t, sizeof(t)));
}

static int connect_now(struct out_amqp *o, struct pb_err *err)
{
    int rc = pb_amqp_open(&o->conf, o->allow, o->name, &o->conn, err);
    if (rc)
        return rc;
    amqp_confirm_select(o->conn, PB_AMQP_CHANNEL);
    if ((rc = rpc_check(o, "confirm.select", err)))
        goto fail;
    if (o->exchange_type) {
        amqp_exchange_declare(o->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(o->exchange),
                              amqp_cstring_bytes(o->exchange_type), 0, 1, 0, 0, amqp_empty_table);
        if ((rc = rpc_check(o, "exchange.declare", err)))
            goto fail;
    } else if (*o->exchange) {
        /* Say now that the exchange is missing, not once per delivery. */
        amqp_exchange_declare(o->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(o->exchange),
                              amqp_cstring_bytes("direct"), 1, 0, 0, 0, amqp_empty_table);
        if ((rc = rpc_check(o, "exchange.declare (passive)", err)))
            goto fail;
    }
    o->gen++;
    o->next_seq = 1;
    o->backoff_ms = 0;
    o->last_error[0] = 0;
    pb_output_set_state(o->out, PB_OUTPUT_CONNECTED, NULL);
    pthread_cond_broadcast(&o->wake);
    return 0;
fail:
    pb_amqp_close(o->conn, false);
    o->conn = NULL;
    return rc;
}

/* End a waiting publish (lock held; pb_delivery_done only posts). */
static void finish_answer(struct out_amqp *o, struct pending *p, enum pb_result r,
                          const char *error, int64_t retry_after_ms, const char *answer)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        o->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        o->tail = p->prev;
    struct pb_outcome oc = {.result = r, .retry_after_ms = retry_after_ms, .error = error};
    if (answer) {
        oc.answer = answer;
        oc.answer_len = strlen(answer);
    }
    pb_delivery_done(p->d, &oc);
    free(p);
}

static void finish(struct out_amqp *o, struct pending *p, enum pb_result r, const char *error,
                   int64_t retry_after_ms)
{
    finish_answer(o, p, r, error, retry_after_ms, NULL);
}

static void fail_all(struct out_amqp *o, const char *why)
{
    while (o->head)
        finish(o, o->head, PB_RESULT_RETRY, why, -1);
}

/* The connection is gone: what waits for a confirm is retried (the broker
 * may have taken some of it: their repeats carry the same message_id). */
static void lost(struct out_amqp *o, const char *why)
{
    if (!o->conn)
        return;
    pb_amqp_close(o->conn, false);
    o->conn = NULL;
    pb_amqp_copy(o->last_error, sizeof(o->last_error), why);
    o->connect_after_ms = 0; /* once at once, then with backoff */
    fail_all(o, why);
    pb_output_set_state(o->out, PB_OUTPUT_RECONNECTING, why);
}

/* Connected, or why not (in o->last_error). Tries at most once per backoff
 * period. */
static bool ensure_connected(struct out_amqp *o)
{
    struct pb_err err = {0};
    if (o->conn)
        return true;
    if (mono_ms() < o->connect_after_ms)
        return false;
    if (connect_now(o, &err) == 0) {
        PB_INFO("amqp output connected again pipeline=%s url=%s", o->pipeline, o->conf.shown);
        return true;
    }
    pb_amqp_copy(o->last_error, sizeof(o->last_error), err.msg);
    o->backoff_ms = pb_amqp_backoff_next(o->backoff_ms);
    o->connect_after_ms = mono_ms() + pb_amqp_backoff_jitter(o->backoff_ms);
    pb_output_set_state(o->out, PB_OUTPUT_RECONNECTING, err.msg);
    return false;
}

/* ---- confirms ----------------------------------------------------------------------------- */

/* basic.ack / basic.nack of tag (and of every one before it when multiple). */
static void confirm(struct out_amqp *o, uint64_t tag, bool multiple, bool ack)
{
    struct pending *p = o->head;
    while (p && p->seq <= tag) {
        struct pending *next = p->next;
        if (p->seq == tag || multiple) {
            /* The answer: the broker's confirm, or why it returned the message. */
            if (!ack)
                finish_answer(o, p, PB_RESULT_RETRY, "the broker nacked the publish", -1,
                              "basic.nack");
            else if (p->returned)
                finish_answer(o, p, PB_RESULT_PERMANENT, p->reason, -1, p->reply);
            else
                finish_answer(o, p, PB_RESULT_OK, NULL, -1, "basic.ack");
        }
        p = next;
    }
}

/* basic.return: the message (read from the channel) names the delivery by
 * its message_id; its confirm follows. */
static void returned(struct out_amqp *o, const amqp_frame_t *f)
{
    const amqp_basic_return_t *r = f->payload.method.decoded;
    char reason[320];
    amqp_message_t msg;
    snprintf(reason, sizeof(reason),
             "unroutable: %u %.*s (exchange \"%.*s\", routing key \"%.*s\")", r->reply_code,
             (int)r->reply_text.len, (const char *)r->reply_text.bytes, (int)r->exchange.len,
             (const char *)r->exchange.bytes, (int)r->routing_key.len,
             (const char *)r->routing_key.bytes);
    amqp_rpc_reply_t rr = amqp_read_message(o->conn, f->channel, &msg, 0);
    if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
        char t[256];
        lost(o, pb_amqp_reply_text(rr, t, sizeof(t)));
        return;
    }
    if (msg.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
        amqp_bytes_t id = msg.properties.message_id;
        for (struct pending *p = o->head; p; p = p->next) {
            const char *k = p->d->idempotency_key;
            if (!p->returned && k && strlen(k) == id.len && memcmp(k, id.bytes, id.len) == 0) {
                p->returned = true;
                pb_amqp_copy(p->reason, sizeof(p->reason), reason);
                snprintf(p->reply, sizeof(p->reply), "basic.return %u %.*s", r->reply_code,
                         (int)(r->reply_text.len < 100 ? r->reply_text.len : 100),
                         (const char *)r->reply_text.bytes);
                break;
            }
        }
    }
    amqp_destroy_message(&msg);
}

/* Read what has arrived (without waiting): confirms, returns, a close. */
static void read_frames(struct out_amqp *o)
{
    struct timeval zero = {0, 0};
    char why[384];
    for (int i = 0; i < READ_BURST && o->conn; i++) {
        amqp_frame_t f;
        amqp_maybe_release_buffers(o->conn);
        int rc = amqp_simple_wait_frame_noblock(o->conn, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT)
            return;
        if (rc != AMQP_STATUS_OK) {
            lost(o, amqp_error_string2(rc));
            return;
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (pb_amqp_close_text(&f.payload.method, why, sizeof(why))) {
            pb_amqp_close_ok(o->conn, &f);
            lost(o, why);
            return;
        }
        if (f.channel != PB_AMQP_CHANNEL)
            continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            const amqp_basic_ack_t *a = f.payload.method.decoded;
            confirm(o, a->delivery_tag, a->multiple, true);
        } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            const amqp_basic_nack_t *a = f.payload.method.decoded;
            confirm(o, a->delivery_tag, a->multiple, false);
        } else if (f.payload.method.id == AMQP_BASIC_RETURN_METHOD) {
            returned(o, &f);
        }
    }
}

/* The oldest publish is past its deadline: a late confirm must not be
 * taken for a later publish, so the connection goes. */
static void expire(struct out_amqp *o)
{
    if (o->conn && o->head && o->head->deadline_ms <= pb_now_ms())
        lost(o, "no publisher confirm in time (is the broker blocked by a resource alarm?)");
}

static void deadline_after(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

/* The reader thread: wait on the socket (without the lock), then read and
 * end what the broker confirmed. Idle, it still reads every every_ms, so
 * heartbeats flow and a lost broker is noticed; disconnected, it connects
 * again with the backoff. */
static void *reader_main(void *arg)
{
    struct out_amqp *o = arg;
    pthread_mutex_lock(&o->lock);
    while (!o->stopping) {
        if (!o->conn) {
            struct timespec ts;
            deadline_after(&ts, o->every_ms);
            pthread_cond_timedwait(&o->wake, &o->lock, &ts);
            if (!o->stopping && !o->conn)
                ensure_connected(o);
            continue;
        }
        if (!amqp_frames_enqueued(o->conn) && !amqp_data_in_buffer(o->conn)) {
            int64_t wait = o->every_ms;
            if (o->head) {
                int64_t left = o->head->deadline_ms - pb_now_ms();
                wait = left < 0 ? 0 : left < wait ? left : wait;
            }
            struct pollfd pfd = {.fd = amqp_get_sockfd(o->conn), .events = POLLIN};
            uint64_t gen = o->gen;
            pthread_mutex_unlock(&o->lock);
            poll(&pfd, 1, (int)wait);
            pthread_mutex_lock(&o->lock);
            if (o->stopping || !o->conn || o->gen != gen)
                continue;
        }
        read_frames(o);
        expire(o);
        /* Let the worker publish between bursts. */
        pthread_mutex_unlock(&o->lock);
        pthread_mutex_lock(&o->lock);
    }
    pthread_mutex_unlock(&o->lock);
    return NULL;
}

static int amqp_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct out_amqp *o = ctx;
    pthread_mutex_lock(&o->lock);
    o->out = out;
    /* Any failure, the outbound guard's refusal included, leaves the output
     * reconnecting with the reason: the core starts it again with a backoff
     * and its deliveries wait, as for every broker output. */
    int rc = connect_now(o, err);
    if (rc == 0 && !o->reader_running) {
        if (pthread_create(&o->reader, NULL, reader_main, o) == 0) {
            o->reader_running = true;
        } else {
            pb_amqp_close(o->conn, false);
            o->conn = NULL;
            rc = pb_err_set(err, PB_ENOMEM, "cannot start the confirm reader thread");
        }
    }
    pthread_mutex_unlock(&o->lock);
    if (rc == 0)
        PB_INFO("amqp output connected pipeline=%s url=%s exchange=%s", o->pipeline, o->conf.shown,
                o->exchange);
    return rc;
}

/* ---- publishing ----------------------------------------------------------------------------- */

/* Publish d; 0 with p->seq set, 1 when it can never be published (reason
 * in p->reason), or a negative librabbitmq status. */
static int publish_one(struct out_amqp *o, struct pb_delivery *d, struct pending *p,
                       amqp_pool_t *pool)
{
    amqp_basic_properties_t props = {0};
    const char *rk = d->tmpl && (size_t)o->rk_idx < d->ntmpl ? d->tmpl[o->rk_idx] : "";
    if (strlen(rk) > 255) {
        pb_amqp_copy(p->reason, sizeof(p->reason), "routing key longer than 255 bytes");
        return 1;
    }
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
                   AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_APP_ID_FLAG;
    props.delivery_mode = o->persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT;
    props.content_type = amqp_cstring_bytes(o->content_type ? o->content_type : d->content_type);
    props.timestamp = (uint64_t)(pb_now_ms() / 1000);
    props.app_id = amqp_cstring_bytes(o->app_id);
    if (d->idempotency_key && *d->idempotency_key && strlen(d->idempotency_key) <= 255) {
        props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        props.message_id = amqp_cstring_bytes(d->idempotency_key);
    }
    if (o->corr_idx >= 0 && (size_t)o->corr_idx < d->ntmpl) {
        if (strlen(d->tmpl[o->corr_idx]) > 255) {
            pb_amqp_copy(p->reason, sizeof(p->reason), "correlation_id longer than 255 bytes");
            return 1;
        }
        props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        props.correlation_id = amqp_cstring_bytes(d->tmpl[o->corr_idx]);
    }
    if (o->type) {
        props._flags |= AMQP_BASIC_TYPE_FLAG;
        props.type = amqp_cstring_bytes(o->type);
    }
    if (o->headers.n || d->traceparent) {
        amqp_table_entry_t *es = amqp_pool_alloc(pool, (o->headers.n + 2) * sizeof(*es));
        if (!es)
            return AMQP_STATUS_NO_MEMORY;
        bool own_tp = false, own_ts = false; /* configured headers win */
        for (size_t i = 0; i < o->headers.n; i++) {
            int ix = o->hdr_idx[i];
            es[i].key = amqp_cstring_bytes(o->headers.keys[i]);
            es[i].value.kind = AMQP_FIELD_KIND_UTF8;
            es[i].value.value.bytes = amqp_cstring_bytes(
                ix >= 0 && (size_t)ix < d->ntmpl ? d->tmpl[ix] : o->headers.vals[i]);
            own_tp |= strcmp(o->headers.keys[i], "traceparent") == 0;
            own_ts |= strcmp(o->headers.keys[i], "tracestate") == 0;
        }
        size_t n = o->headers.n;
        const char *trace[2][2] = {{"traceparent", own_tp ? NULL : d->traceparent},
                                   {"tracestate", own_ts ? NULL : d->tracestate}};
        for (size_t i = 0; i < 2; i++) {
            if (!trace[i][1])
                continue;
            es[n].key = amqp_cstring_bytes(trace[i][0]);
            es[n].value.kind = AMQP_FIELD_KIND_UTF8;
            es[n].value.value.bytes = amqp_cstring_bytes(trace[i][1]);
            n++;
        }
        props._flags |= AMQP_BASIC_HEADERS_FLAG;
        props.headers = (amqp_table_t){.num_entries = (int)n, .entries = es};
    }
    amqp_bytes_t body = {.len = d->len, .bytes = (void *)(d->len ? d->payload : "")};
    int rc = amqp_basic_publish(o->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(o->exchange),
                                amqp_cstring_bytes(rk), o->mandatory, 0, &props, body);
    if (rc != AMQP_STATUS_OK)
        return rc;
    p->seq = o->next_seq++;
    return 0;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Connected, or waited as long as a batch may (RECONNECT_WAIT_MS, and its
 * earliest deadline) for the broker to come back. Lock held. */
static bool wait_connected(struct out_amqp *o, struct pb_delivery **ds, size_t n)
{
    int64_t until = mono_ms() + RECONNECT_WAIT_MS;
    for (size_t i = 0; i < n; i++) {
        int64_t left = ds[i]->deadline_ms - pb_now_ms();
        if (mono_ms() + left < until)
            until = mono_ms() + left;
    }
    for (;;) {
        if (ensure_connected(o))
            return true;
        int64_t now = mono_ms();
        if (now >= until || o->connect_after_ms >= until || o->stopping)
            return false;
        pthread_mutex_unlock(&o->lock);
        sleep_ms(o->connect_after_ms > now ? o->connect_after_ms - now : 1);
        pthread_mutex_lock(&o->lock);
    }
}

static void done_now(struct pb_delivery *d, enum pb_result r, const char *error,
                     int64_t retry_after_ms)
{
    struct pb_outcome oc = {.result = r, .retry_after_ms = retry_after_ms, .error = error};
    pb_delivery_done(d, &oc);
}

/* Publish the batch and return: the reader thread ends each delivery when
 * its confirm comes. */
static void amqp_publish(void *ctx, struct pb_delivery **ds, size_t n)
{
    struct out_amqp *o = ctx;
    amqp_pool_t pool;
    char why[384];
    size_t i = 0;

    init_amqp_pool(&pool, 4096);
    pthread_mutex_lock(&o->lock);
    if (!wait_connected(o, ds, n)) {
        int64_t again = o->connect_after_ms - mono_ms();
        snprintf(why, sizeof(why), "not connected: %.360s", o->last_error);
        for (; i < n; i++)
            done_now(ds[i], PB_RESULT_RETRY, why, again > 0 ? again : -1);
        goto out;
    }
    for (; i < n && o->conn; i++) {
        struct pending *p = calloc(1, sizeof(*p));
        if (!p) {
            done_now(ds[i], PB_RESULT_RETRY, "out of memory", -1);
            continue;
        }
        p->d = ds[i];
        p->deadline_ms = ds[i]->deadline_ms;
        int rc = publish_one(o, ds[i], p, &pool);
        recycle_amqp_pool(&pool);
        if (rc == 0) {
            p->prev = o->tail;
            if (o->tail)
                o->tail->next = p;
            else
                o->head = p;
            o->tail = p;
            continue;
        }
        if (rc == 1) {
            done_now(ds[i], PB_RESULT_PERMANENT, p->reason, -1);
            free(p);
            continue;
        }
        free(p);
        done_now(ds[i], PB_RESULT_RETRY, amqp_error_string2(rc), -1);
        if (rc != AMQP_STATUS_NO_MEMORY) {
            snprintf(why, sizeof(why), "publish failed: %s", amqp_error_string2(rc));
            lost(o, why);
        }
    }
    /* The connection went while publishing: the rest waits for the next. */
    for (; i < n; i++)
        done_now(ds[i], PB_RESULT_RETRY, o->last_error[0] ? o->last_error : "connection lost", -1);
out:
    pthread_mutex_unlock(&o->lock);
    empty_amqp_pool(&pool);
}

static void reader_end(struct out_amqp *o)
{
    if (!o->lock_ready)
        return;
    pthread_mutex_lock(&o->lock);
    o->stopping = true;
    pthread_cond_broadcast(&o->wake);
    pthread_mutex_unlock(&o->lock);
    if (o->reader_running)
        pthread_join(o->reader, NULL);
    o->reader_running = false;
}

/* No more batches come: what still waits for a confirm (the dispatcher
 * gave up waiting for it) is retried after the restart. */
static void amqp_stop(void *ctx)
{
    struct out_amqp *o = ctx;
    reader_end(o);
    fail_all(o, "shutting down");
    pb_amqp_close(o->conn, true);
    o->conn = NULL;
}

static void amqp_destroy(void *ctx)
{
    struct out_amqp *o = ctx;
    reader_end(o);
    fail_all(o, "shutting down");
    pb_amqp_close(o->conn, false);
    o->conn = NULL;
    if (o->lock_ready) {
        pthread_cond_destroy(&o->wake);
        pthread_mutex_destroy(&o->lock);
        o->lock_ready = false;
    }
    pb_amqp_conf_cleanup(&o->conf);
}

const struct pb_output_plugin pb_out_amqp = {
    .name = "amqp",
    .fields = amqp_fields,
    .ctx_size = sizeof(struct out_amqp),
    .default_concurrency = 1024,
    .workers = 1,
    .init = amqp_init,
    .start = amqp_start,
    .deliver_batch = amqp_publish,
    .stop = amqp_stop,
    .destroy = amqp_destroy,
};
