/* mqtt.c - the `mqtt` output: one PUBLISH per delivery, delivered when the
 * broker's PUBACK arrives (QoS 1).
 *
 * It speaks MQTT 3.1.1 (or 5) over the client of the `mqtt` input
 * (../../inputs/mqtt/: codec and connection), not libmosquitto, for three
 * reasons: the outbound guard makes us connect to the literal address it
 * allowed, and libmosquitto would then send that address as the TLS SNI and
 * check the certificate against it instead of the broker's name; after a
 * reconnect libmosquitto sends unacknowledged publishes again on its own
 * while the core retries them too; and its blocking connect has no
 * timeout.
 *
 * A delivery is OK on its PUBACK (MQTT 5: a reason code below 0x80);
 * RETRY when the connection is lost before it, on a timeout, or on a
 * reason code that may pass (quota exceeded, server busy...); PERMANENT
 * for what never will (a topic that is not a topic name, not authorized,
 * larger than the broker's maximum packet size, retain where the broker
 * has none). MQTT has no deduplication: a retry after a lost PUBACK
 * publishes the message again (with MQTT 5 each message carries its
 * idempotency key as the user property Idempotency-Key, so subscribers
 * can drop repeats). With MQTT 3.1.1 a broker that refuses a publish (an
 * ACL) still answers PUBACK: use protocol: 5 to see such refusals.
 *
 * Thread model: a thread and pb_loop of the output's own own the
 * connection: reads, writes, PUBACKs, keep-alive, timeouts and reconnects
 * all happen there, without locks. The core's worker thread (workers = 1)
 * runs start (which waits for the first connection), deliver_batch (which
 * posts the deliveries to the loop) and stop (which ends the loop and
 * joins its thread). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../inputs/mqtt/mqtt_common.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define TICK_MS 250
#define STABLE_MS 5000
#define STOP_FLUSH_MS 2000
#define READ_MAX (1024 * 1024)

struct out_mqtt {
    /* options */
    struct pb_mqtt_conf conf;
    char *topic;
    int64_t qos;
    bool retain;
    char *client_id;
    /* prepared by init */
    int tmpl_topic;
    const struct pb_allowlist *allow;
    char pipeline[128];
    char output[128];
    char default_id[96];
    const char *id; /* client_id or default_id */
    /* the worker thread (start, deliver_batch, stop, destroy) */
    struct pb_output *out;
    struct pb_loop *loop;
    pthread_t thread;
    bool thread_running;
    pthread_mutex_t lock; /* start's wait for the first connection */
    pthread_cond_t cond;
    bool sync_ready;
    bool start_done;
    int start_rc;
    struct pb_err start_err;
    /* the loop thread */
    SSL_CTX *ssl_ctx;
    struct pb_mqtt_conn conn;
    bool connected;
    bool quitting;
    struct pb_loop_watch *watch;
    struct pb_loop_timer *t_reconnect, *t_tick;
    struct pb_mqtt_idmap inflight; /* packet id -> delivery (NULL: timed out, id still taken) */
    struct pb_delivery **wq;       /* waiting to be sent, oldest first (a ring) */
    size_t wq_head, wq_len, wq_cap;
    uint16_t next_pid;
    uint32_t quota;      /* QoS 1 publishes the broker takes unacknowledged */
    uint32_t max_packet; /* 0: no limit given */
    bool retain_ok;
    int max_qos;
    int64_t backoff_ms;
    int64_t up_since_ms, last_write_ms, ping_sent_ms, keepalive_ms;
    bool ping_out;
    char last_error[PB_ERR_MSG_MAX];
    struct pb_loop_node quit_node; /* end_thread's post, which cannot fail for memory */
};

static const struct pb_field mqtt_fields[] = {
    PB_MQTT_CONF_FIELDS(struct out_mqtt, conf),
    {.name = "topic",
     .type = PB_F_STR,
     .offset = offsetof(struct out_mqtt, topic),
     .flags = PB_FIELD_REQUIRED,
     .doc = "topic name, a template: 'orders/{{ .region }}'"},
    {.name = "qos",
     .type = PB_F_INT,
     .offset = offsetof(struct out_mqtt, qos),
     .def = "1",
     .min = 0,
     .max = 1,
     .doc = "1: delivered on PUBACK; 0: delivered once written (at most once)"},
    {.name = "retain",
     .type = PB_F_BOOL,
     .offset = offsetof(struct out_mqtt, retain),
     .def = "false",
     .doc = "publish as the topic's retained message"},
    {.name = "client_id",
     .type = PB_F_STR,
     .offset = offsetof(struct out_mqtt, client_id),
     .doc = "client id (default patchbay-<pipeline>-<output>-<random>: unique per process)"},
    {0},
};

/* ---- init ----------------------------------------------------------------------------- */

static int mqtt_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_mqtt *m = ctx;
    int rc = pb_mqtt_conf_prepare(&m->conf, err);
    if (rc)
        return rc;
    /* A literal topic is checked now; a template when it is rendered. */
    if (!strstr(m->topic, "{{") && !pb_mqtt_topic_name_ok(m->topic, strlen(m->topic)))
        return pb_err_set(err, PB_ECONFIG,
                          "topic \"%s\" is not a topic name (no + or #, 1-65535 bytes)", m->topic);
    rc = env->template_add(env, m->topic, err);
    if (rc < 0)
        return rc;
    m->tmpl_topic = rc;
    snprintf(m->pipeline, sizeof(m->pipeline), "%s", env->pipeline);
    snprintf(m->output, sizeof(m->output), "%s", env->output);
    snprintf(m->default_id, sizeof(m->default_id), "patchbay-%.32s-%.32s-%08x", env->pipeline,
             env->output, (unsigned)(pb_rand64() & 0xffffffffu));
    m->id = m->client_id ? m->client_id : m->default_id;
    size_t idl = strlen(m->id);
    if (idl == 0 || idl > 65535)
        return pb_err_set(err, PB_ECONFIG, "client_id must be 1-65535 bytes");
    m->allow = env->allow;
    pb_mqtt_conn_init(&m->conn);
    return 0;
}

/* ---- ending deliveries (the loop thread) ------------------------------------------------ */

static void done(struct pb_delivery *d, enum pb_result r, const char *error)
{
    struct pb_outcome o = {.result = r, .retry_after_ms = -1, .error = error};
    pb_delivery_done(d, &o);
}

static bool wq_push(struct out_mqtt *m, struct pb_delivery *d)
{
    if (m->wq_len == m->wq_cap) {
        size_t cap = m->wq_cap ? m->wq_cap * 2 : 256;
        struct pb_delivery **q = malloc(cap * sizeof(*q));
        if (!q)
            return false;
        for (size_t i = 0; i < m->wq_len; i++)
            q[i] = m->wq[(m->wq_head + i) % m->wq_cap];
        free(m->wq);
        m->wq = q;
        m->wq_cap = cap;
        m->wq_head = 0;
    }
    m->wq[(m->wq_head + m->wq_len) % m->wq_cap] = d;
    m->wq_len++;
    return true;
}

static struct pb_delivery *wq_pop(struct out_mqtt *m)
{
    struct pb_delivery *d = m->wq[m->wq_head];
    m->wq_head = (m->wq_head + 1) % m->wq_cap;
    m->wq_len--;
    return d;
}

/* End every delivery in flight (and, when all, every waiting one) with RETRY. */
static void fail_all(struct out_mqtt *m, bool waiting_too, const char *why)
{
    for (size_t i = 0; i < m->inflight.cap; i++) {
        struct pb_mqtt_slot *s = &m->inflight.s[i];
        if (s->used && s->ptr)
            done(s->ptr, PB_RESULT_RETRY, why);
    }
    pb_mqtt_idmap_free(&m->inflight);
    while (waiting_too && m->wq_len)
        done(wq_pop(m), PB_RESULT_RETRY, why);
}

/* ---- the connection --------------------------------------------------------------------- */

static void conn_lost(struct out_mqtt *m, const char *why);

static void update_watch(struct out_mqtt *m)
{
    if (m->watch)
        pb_loop_watch_modify(m->watch, pb_mqtt_conn_events(&m->conn, true));
}

static int flush(struct out_mqtt *m)
{
    if (!m->connected)
        return PB_ENET;
    if (m->conn.out.len == 0)
        return 0;
    m->last_write_ms = pb_mono_us() / 1000;
    if (pb_mqtt_conn_flush(&m->conn) < 0) {
        char why[300];
        snprintf(why, sizeof(why), "writing to the broker: %s", m->conn.err);
        conn_lost(m, why);
        return PB_ENET;
    }
    update_watch(m);
    return 0;
}

static uint16_t alloc_pid(struct out_mqtt *m)
{
    for (int tries = 0; tries < 65535; tries++) {
        if (++m->next_pid == 0)
            m->next_pid = 1;
        if (!pb_mqtt_idmap_get(&m->inflight, m->next_pid))
            return m->next_pid;
    }
    return 0;
}

/* Send one delivery, or end it when it can never be sent. */
static void publish_one(struct out_mqtt *m, struct pb_delivery *d)
{
    char why[400];
    const char *topic = d->ntmpl > (size_t)m->tmpl_topic ? d->tmpl[m->tmpl_topic] : NULL;
    size_t tl = topic ? strlen(topic) : 0;
    if (!topic || !pb_mqtt_topic_name_ok(topic, tl)) {
        snprintf(why, sizeof(why),
                 "topic \"%.200s\" is not an MQTT topic name (1-65535 bytes of UTF-8, no + or #)",
                 topic ? topic : "");
        done(d, PB_RESULT_PERMANENT, why);
        return;
    }
    if (topic[0] == '$') {
        snprintf(why, sizeof(why), "topic \"%.200s\": topics starting with $ are the broker's",
                 topic);
        done(d, PB_RESULT_PERMANENT, why);
        return;
    }
    if (m->retain && !m->retain_ok) {
        done(d, PB_RESULT_PERMANENT, "the broker does not keep retained messages (retain: true)");
        return;
    }
    int qos = (int)m->qos;
    if (qos > m->max_qos) {
        done(d, PB_RESULT_PERMANENT, "the broker does not take QoS 1 (set qos: 0)");
        return;
    }
    /* MQTT 5 user properties (3.1.1 has none: the encoder leaves them out). */
    struct pb_mqtt_user_prop props[3];
    size_t nprops = 0;
    if (d->idempotency_key && *d->idempotency_key)
        props[nprops++] = (struct pb_mqtt_user_prop){"Idempotency-Key", d->idempotency_key};
    if (d->traceparent)
        props[nprops++] = (struct pb_mqtt_user_prop){"traceparent", d->traceparent};
    if (d->tracestate)
        props[nprops++] = (struct pb_mqtt_user_prop){"tracestate", d->tracestate};
    struct pb_mqtt_publish_out p = {
        .topic = topic,
        .payload = d->payload,
        .len = d->len,
        .qos = qos,
        .retain = m->retain,
        .content_type = d->content_type,
        .props = props,
        .nprops = nprops,
    };
    size_t size = pb_mqtt_publish_size(m->conf.version, &p);
    if (size > PB_MQTT_MAX_REMAINING || (m->max_packet && size > m->max_packet)) {
        snprintf(why, sizeof(why), "the message (%zu bytes) is larger than the broker takes (%u)",
                 size, m->max_packet ? m->max_packet : PB_MQTT_MAX_REMAINING);
        done(d, PB_RESULT_PERMANENT, why);
        return;
    }
    if (qos == 1) {
        p.packet_id = alloc_pid(m);
        struct pb_mqtt_slot *s = p.packet_id ? pb_mqtt_idmap_put(&m->inflight, p.packet_id) : NULL;
        if (!s) {
            done(d, PB_RESULT_RETRY, "out of memory (or packet ids)");
            return;
        }
        if (pb_mqtt_put_publish(&m->conn.out, m->conf.version, &p) != 0) {
            pb_mqtt_idmap_del(&m->inflight, s);
            done(d, PB_RESULT_RETRY, "out of memory");
            return;
        }
        s->ptr = d;
        return;
    }
    if (pb_mqtt_put_publish(&m->conn.out, m->conf.version, &p) != 0) {
        done(d, PB_RESULT_RETRY, "out of memory");
        return;
    }
    done(d, PB_RESULT_OK, NULL); /* QoS 0: at most once, nothing to wait for */
}

static void pump(struct out_mqtt *m)
{
    while (m->connected && m->wq_len && (m->qos == 0 || m->inflight.n < m->quota))
        publish_one(m, wq_pop(m));
    flush(m);
}

/* A PUBACK reason code (MQTT 5) as an outcome. */
static void acked(struct pb_delivery *d, int version, uint8_t reason)
{
    char why[160];
    if (reason < 0x80) {
        done(d, PB_RESULT_OK, NULL);
        return;
    }
    snprintf(why, sizeof(why), "the broker refused the message: %s (0x%02x)",
             pb_mqtt_reason_text(version, reason), reason);
    switch (reason) {
    case 0x87: /* not authorized */
    case 0x90: /* topic name invalid */
    case 0x95: /* packet too large */
    case 0x99: /* payload format invalid */
    case 0x9A: /* retain not supported */
    case 0x9B: /* QoS not supported */
        done(d, PB_RESULT_PERMANENT, why);
        return;
    default:
        done(d, PB_RESULT_RETRY, why);
    }
}

static void process_input(struct out_mqtt *m)
{
    size_t off = 0;
    char why[200];
    const char *lost = NULL;
    while (m->connected) {
        struct pb_mqtt_packet pk;
        long size = pb_mqtt_frame(m->conn.in + off, m->conn.in_len - off, READ_MAX, &pk);
        if (size == 0)
            break;
        if (size < 0) {
            lost = "the broker sent a malformed packet";
            break;
        }
        off += (size_t)size;
        uint16_t pid;
        uint8_t reason;
        struct pb_mqtt_slot *s;
        struct pb_mqtt_publish pub;
        switch (pk.type) {
        case PB_MQTT_PUBACK:
            if (pb_mqtt_parse_ack(&pk, m->conf.version, &pid, &reason) != 0) {
                lost = "the broker sent a malformed PUBACK";
                break;
            }
            s = pb_mqtt_idmap_get(&m->inflight, pid);
            if (s) {
                struct pb_delivery *d = s->ptr;
                pb_mqtt_idmap_del(&m->inflight, s);
                if (d)
                    acked(d, m->conf.version, reason);
            }
            break;
        case PB_MQTT_PINGRESP:
            m->ping_out = false;
            break;
        case PB_MQTT_PUBLISH:
            /* Nothing is subscribed; acknowledge what comes anyway. */
            if (pb_mqtt_parse_publish(&pk, m->conf.version, &pub) == 0 && pub.qos == 1)
                pb_mqtt_put_puback(&m->conn.out, m->conf.version, pub.packet_id);
            break;
        case PB_MQTT_DISCONNECT:
            pb_mqtt_parse_disconnect(&pk, m->conf.version, &reason);
            snprintf(why, sizeof(why), "the broker disconnected: %s",
                     pb_mqtt_reason_text(m->conf.version, reason));
            lost = why;
            break;
        default:
            snprintf(why, sizeof(why), "the broker sent an unexpected packet (type %d)", pk.type);
            lost = why;
        }
        if (lost)
            break;
    }
    if (lost) {
        conn_lost(m, lost);
        return;
    }
    pb_mqtt_conn_consume(&m->conn, off);
    pump(m);
}

static void io_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    struct out_mqtt *m = arg;
    (void)w;
    (void)fd;
    if (events & PB_LOOP_WRITE || (events & PB_LOOP_READ && m->conn.write_wants_read)) {
        if (flush(m) != 0)
            return;
    }
    if (!(events & (PB_LOOP_READ | PB_LOOP_ERROR)))
        return;
    long n;
    do {
        n = pb_mqtt_conn_read(&m->conn, READ_MAX);
        if (n < 0) {
            char why[300];
            snprintf(why, sizeof(why), "%s", m->conn.err);
            process_input(m);
            conn_lost(m, why);
            return;
        }
        process_input(m);
    } while (m->connected && pb_mqtt_conn_read_pending(&m->conn));
}

static int connect_now(struct out_mqtt *m, struct pb_err *err)
{
    if (m->conf.use_tls && !m->ssl_ctx) {
        m->ssl_ctx = pb_mqtt_tls_ctx(&m->conf, err);
        if (!m->ssl_ctx)
            return err->code ? err->code : PB_ECONFIG;
    }
    struct pb_mqtt_connect cp = {
        .version = m->conf.version,
        .client_id = m->id,
        .clean = true,
        .keepalive = (uint16_t)((m->conf.keepalive_ms + 999) / 1000),
        .user = m->conf.user,
        .password = m->conf.password,
    };
    struct pb_mqtt_connack ack;
    int rc = pb_mqtt_conn_open(&m->conn, &m->conf, m->ssl_ctx, m->allow, &cp, &ack, err);
    if (rc)
        return rc;
    m->watch = pb_loop_watch_add(m->loop, m->conn.fd, PB_LOOP_READ, io_cb, m);
    if (!m->watch) {
        pb_mqtt_conn_close(&m->conn);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    m->connected = true;
    m->quota = m->conf.version == PB_MQTT_V5 ? ack.receive_max : 65535;
    m->max_packet = m->conf.version == PB_MQTT_V5 ? ack.max_packet_size : 0;
    m->retain_ok = ack.retain_available;
    m->max_qos = ack.max_qos;
    m->keepalive_ms =
        ack.server_keepalive ? (int64_t)ack.server_keepalive * 1000 : (int64_t)cp.keepalive * 1000;
    m->ping_out = false;
    m->up_since_ms = m->last_write_ms = pb_mono_us() / 1000;
    m->last_error[0] = 0;
    PB_INFO("mqtt: connected pipeline=%s output=%s url=%s client_id=\"%s\"", m->pipeline, m->output,
            m->conf.shown, m->id);
    pb_output_set_state(m->out, PB_OUTPUT_CONNECTED, NULL);
    process_input(m); /* bytes after the CONNACK, then what waits */
    return 0;
}

static void conn_lost(struct out_mqtt *m, const char *why)
{
    if (!m->connected)
        return;
    char text[400];
    snprintf(text, sizeof(text), "connection to %s lost: %s", m->conf.shown, why);
    pb_loop_watch_remove(m->watch);
    m->watch = NULL;
    pb_mqtt_conn_close(&m->conn);
    m->connected = false;
    /* Deliveries in flight may or may not have arrived: the core retries. */
    fail_all(m, false, text);
    snprintf(m->last_error, sizeof(m->last_error), "%s", text);
    if (m->quitting)
        return;
    int64_t now = pb_mono_us() / 1000;
    if (now - m->up_since_ms >= STABLE_MS)
        m->backoff_ms = 0;
    m->backoff_ms = pb_mqtt_backoff_next(m->backoff_ms);
    pb_output_set_state(m->out, PB_OUTPUT_RECONNECTING, text);
    pb_loop_timer_start(m->t_reconnect, pb_mqtt_backoff_jitter(m->backoff_ms));
}

static void reconnect_cb(struct pb_loop_timer *t, void *arg)
{
    struct out_mqtt *m = arg;
    struct pb_err err = {0};
    if (m->quitting || m->connected)
        return;
    if (connect_now(m, &err) == 0)
        return;
    snprintf(m->last_error, sizeof(m->last_error), "%s", err.msg);
    m->backoff_ms = pb_mqtt_backoff_next(m->backoff_ms);
    pb_output_set_state(m->out, PB_OUTPUT_RECONNECTING, err.msg);
    pb_loop_timer_start(t, pb_mqtt_backoff_jitter(m->backoff_ms));
}

/* Deadlines of waiting and unacknowledged deliveries, and the keep-alive. */
static void tick_cb(struct pb_loop_timer *t, void *arg)
{
    struct out_mqtt *m = arg;
    int64_t now = pb_now_ms();
    char why[400];
    for (size_t i = 0; i < m->inflight.cap; i++) {
        struct pb_mqtt_slot *s = &m->inflight.s[i];
        if (!s->used || !s->ptr)
            continue;
        struct pb_delivery *d = s->ptr;
        if (d->deadline_ms > 0 && now >= d->deadline_ms) {
            /* Its id stays taken until a PUBACK or a new connection, so a late
             * PUBACK cannot be taken for another message's. */
            s->ptr = NULL;
            done(d, PB_RESULT_RETRY, "no PUBACK within the attempt timeout");
        }
    }
    for (size_t k = m->wq_len; k > 0; k--) {
        struct pb_delivery *d = wq_pop(m);
        if (d->deadline_ms > 0 && now >= d->deadline_ms) {
            snprintf(why, sizeof(why), "not sent within the attempt timeout: %.300s",
                     m->connected       ? "the broker's receive maximum is reached"
                     : m->last_error[0] ? m->last_error
                                        : "not connected");
            done(d, PB_RESULT_RETRY, why);
        } else {
            wq_push(m, d); /* room exists: it was just popped */
        }
    }
    if (m->connected && m->keepalive_ms > 0) {
        int64_t mono = pb_mono_us() / 1000;
        if (m->ping_out && mono - m->ping_sent_ms > m->keepalive_ms) {
            conn_lost(m, "no answer to PINGREQ within the keep-alive");
        } else if (mono - m->last_write_ms >= m->keepalive_ms / 2 && !m->ping_out) {
            m->ping_out = true;
            m->ping_sent_ms = mono;
            if (pb_mqtt_put_pingreq(&m->conn.out) == 0)
                flush(m);
        }
    }
    pb_loop_timer_start(t, TICK_MS);
}

/* ---- posts from the worker thread ------------------------------------------------------ */

struct job {
    struct pb_loop_node node;
    struct out_mqtt *m;
    size_t n;
    struct pb_delivery *d[];
};

static void deliver_cb(void *arg, int status)
{
    struct job *j = arg;
    struct out_mqtt *m = j->m;
    for (size_t i = 0; i < j->n; i++) {
        if (status != PB_LOOP_RUN || m->quitting)
            done(j->d[i], PB_RESULT_RETRY, "the output is stopping");
        else if (!wq_push(m, j->d[i]))
            done(j->d[i], PB_RESULT_RETRY, "out of memory");
    }
    free(j);
    if (status == PB_LOOP_RUN && !m->quitting)
        pump(m);
}

static void first_connect_cb(void *arg, int status)
{
    struct out_mqtt *m = arg;
    struct pb_err err = {0};
    int rc = PB_ESHUTDOWN;
    if (status == PB_LOOP_RUN) {
        if (!m->t_reconnect)
            m->t_reconnect = pb_loop_timer_create(m->loop, reconnect_cb, m);
        if (!m->t_tick)
            m->t_tick = pb_loop_timer_create(m->loop, tick_cb, m);
        if (!m->t_reconnect || !m->t_tick)
            rc = pb_err_set(&err, PB_ENOMEM, "out of memory");
        else
            rc = m->connected ? 0 : connect_now(m, &err);
        if (rc == 0)
            pb_loop_timer_start(m->t_tick, TICK_MS);
    }
    pthread_mutex_lock(&m->lock);
    m->start_rc = rc;
    m->start_err = err;
    m->start_done = true;
    pthread_cond_signal(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

static void quit_cb(void *arg, int status)
{
    struct out_mqtt *m = arg;
    (void)status;
    m->quitting = true;
    fail_all(m, true, "the output is stopping");
    if (m->connected && pb_mqtt_put_disconnect(&m->conn.out, m->conf.version) == 0)
        pb_mqtt_conn_flush_wait(&m->conn, STOP_FLUSH_MS);
    pb_loop_watch_remove(m->watch);
    m->watch = NULL;
    pb_mqtt_conn_close(&m->conn);
    m->connected = false;
    pb_loop_timer_destroy(m->t_reconnect);
    pb_loop_timer_destroy(m->t_tick);
    m->t_reconnect = m->t_tick = NULL;
    pb_loop_stop(m->loop);
}

static void *loop_thread(void *arg)
{
    struct out_mqtt *m = arg;
    pb_loop_run(m->loop);
    return NULL;
}

/* End the loop thread (any deliveries it holds end with RETRY). */
static void end_thread(struct out_mqtt *m)
{
    if (!m->thread_running)
        return;
    if (pb_loop_post_node(m->loop, &m->quit_node, quit_cb, m) != 0)
        pb_loop_stop(m->loop);
    pthread_join(m->thread, NULL);
    m->thread_running = false;
    pb_loop_close(m->loop);
    pb_loop_destroy(m->loop); /* posts still queued run cancelled */
    m->loop = NULL;
    if (m->t_reconnect || m->t_tick || m->watch) {
        /* quit_cb never ran: nothing of the loop is left to free but memory. */
        m->t_reconnect = m->t_tick = NULL;
        m->watch = NULL;
        pb_mqtt_conn_close(&m->conn);
        m->connected = false;
    }
}

/* ---- the plugin (the worker thread) ----------------------------------------------------- */

static int mqtt_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct out_mqtt *m = ctx;
    m->out = out;
    if (!m->sync_ready) {
        if (pthread_mutex_init(&m->lock, NULL) != 0)
            return pb_err_set(err, PB_ENOMEM, "cannot create a mutex");
        if (pthread_cond_init(&m->cond, NULL) != 0) {
            pthread_mutex_destroy(&m->lock);
            return pb_err_set(err, PB_ENOMEM, "cannot create a condition variable");
        }
        m->sync_ready = true;
    }
    if (!m->thread_running) {
        m->loop = pb_loop_create(err);
        if (!m->loop)
            return err->code ? err->code : PB_ENOMEM;
        if (pthread_create(&m->thread, NULL, loop_thread, m) != 0) {
            pb_loop_destroy(m->loop);
            m->loop = NULL;
            return pb_err_set(err, PB_ENOMEM, "cannot start a thread for output %s", m->output);
        }
        char name[16];
        snprintf(name, sizeof(name), "pb-mq-%.9s", m->output);
        pthread_setname_np(m->thread, name);
        m->thread_running = true;
    }
    m->start_done = false;
    if (pb_loop_post(m->loop, first_connect_cb, m) != 0)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    pthread_mutex_lock(&m->lock);
    while (!m->start_done)
        pthread_cond_wait(&m->cond, &m->lock);
    int rc = m->start_rc;
    if (rc && err)
        *err = m->start_err;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

static void mqtt_deliver_batch(void *ctx, struct pb_delivery **d, size_t n)
{
    struct out_mqtt *m = ctx;
    struct job *j = malloc(sizeof(*j) + n * sizeof(j->d[0]));
    if (!j) {
        for (size_t i = 0; i < n; i++)
            done(d[i], PB_RESULT_RETRY, "out of memory");
        return;
    }
    j->m = m;
    j->n = n;
    memcpy(j->d, d, n * sizeof(j->d[0]));
    if (!m->loop || pb_loop_post_node(m->loop, &j->node, deliver_cb, j) != 0) {
        for (size_t i = 0; i < n; i++)
            done(d[i], PB_RESULT_RETRY, "the output is stopping");
        free(j);
    }
}

static void mqtt_stop(void *ctx)
{
    end_thread(ctx);
}

static void mqtt_destroy(void *ctx)
{
    struct out_mqtt *m = ctx;
    end_thread(m);
    pb_mqtt_conn_close(&m->conn);
    if (m->ssl_ctx)
        SSL_CTX_free(m->ssl_ctx);
    m->ssl_ctx = NULL;
    pb_mqtt_idmap_free(&m->inflight);
    free(m->wq);
    m->wq = NULL;
    if (m->sync_ready) {
        pthread_cond_destroy(&m->cond);
        pthread_mutex_destroy(&m->lock);
        m->sync_ready = false;
    }
}

const struct pb_output_plugin pb_out_mqtt = {
    .name = "mqtt",
    .fields = mqtt_fields,
    .ctx_size = sizeof(struct out_mqtt),
    .default_concurrency = 128,
    .workers = 1,
    .init = mqtt_init,
    .start = mqtt_start,
    .deliver_batch = mqtt_deliver_batch,
    .stop = mqtt_stop,
    .destroy = mqtt_destroy,
};
