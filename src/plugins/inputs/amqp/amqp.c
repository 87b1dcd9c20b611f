/* amqp.c - the `amqp` input: consume a RabbitMQ (AMQP 0-9-1) queue, with
 * manual acknowledgements that follow the commit.
 *
 *   amqp: { url: "amqp://user:${PASS}@mq:5672/%2f", queue: orders, prefetch: 256 }
 *
 * basic.consume with manual acks and a prefetch window. Deliveries read
 * from the socket are submitted in batches, each with $meta (exchange,
 * routing key, delivery tag, redelivered, properties, headers) and the
 * message_id property as its idempotency key. A batch is acked
 * (basic.ack, multiple) only in its commit callback with status 0 — stored,
 * duplicate and dead-on-arrival items alike — and in delivery-tag order: a
 * batch committed before an older one waits for it, so one multiple ack
 * covers exactly the settled ones. A failed commit nacks its deliveries
 * with requeue; so does a submit refused for room (PB_EFULL), after which
 * the consumer is cancelled until the core resumes the input. A lost
 * connection drops every unacked delivery back into the queue at the
 * broker; the input reconnects with backoff and consumes again, and the
 * callbacks of batches of the old connection ack nothing (their tags mean
 * nothing on the new one).
 *
 * Thread model: PB_INPUT_OWN_THREAD. librabbitmq blocks and is not
 * thread-safe per connection, so the connection and all of this input's
 * state belong to the input's loop thread: start, stop, pause, resume, the
 * socket watch, the timers and every submit callback run there. Connecting
 * (DNS through the outbound guard, TCP/TLS, login) blocks that thread,
 * which has nothing else to do meanwhile. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "amqp_common.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define LAG_EVERY_MS 5000
#define POLL_MIN_MS 250
#define POLL_MAX_MS 5000
#define BINDINGS_MAX 64

enum { FORMAT_JSON = 0, FORMAT_RAW };
static const char *const formats[] = {"json", "raw", NULL};

struct binding_conf {
    char *exchange;
    char *routing_key;
    char *exchange_type;
    struct pb_strmap arguments;
};

struct declare_conf {
    bool durable;
    struct pb_strmap arguments;
    const struct pb_node *bindings;
};

struct outbound_conf {
    struct pb_strlist allow;
};

/* A submitted batch: deliveries first..last of one connection. */
enum batch_state { B_PENDING = 0, B_ACK, B_SETTLED };
struct batch {
    struct in_amqp *g;
    uint64_t gen; /* the connection it came on */
    uint64_t first, last;
    size_t n;
    enum batch_state state;
    int64_t arrived_us;
    struct batch *next;     /* FIFO of the current connection */
    struct batch *all_prev; /* every batch not yet called back */
    struct batch *all_next;
    uint64_t tags[]; /* n delivery tags, for nacks */
};

struct in_amqp {
    /* options (read-only after init) */
    struct pb_amqp_conf conf;
    char *queue;
    int64_t prefetch;
    const struct pb_node *declare_node;
    int format;
    int64_t idem_window_ms;
    char *consumer_tag;
    bool exclusive;
    struct outbound_conf outbound;
    /* prepared by init */
    bool declare;
    struct declare_conf decl;
    struct binding_conf binds[BINDINGS_MAX];
    size_t nbinds;
    struct pb_allowlist *allow;
    char pipeline[128];
    char name[192]; /* the connection's name at the broker */
    size_t batch_max;
    int64_t poll_ms;

    /* run time: the input's loop thread */
    struct pb_input *in;
    amqp_connection_state_t conn;
    uint64_t gen;
    struct pb_loop_watch *watch;
    struct pb_loop_timer *poll;      /* heartbeats, and draining what is buffered */
    struct pb_loop_timer *reconnect; /* after a lost connection */
    struct pb_loop_timer *lag;
    int64_t backoff_ms;
    bool consuming;
    bool paused; /* told to (back-pressure), or refused for room */
    bool stopped;
    char ctag[256];
    struct batch *head, *tail; /* FIFO, in delivery-tag order */
    struct batch *all;         /* every batch whose callback has not run */
    uint64_t acked;            /* highest tag acked on this connection */
    amqp_envelope_t *envs;     /* batch_max, being gathered */
};

static const struct pb_field binding_fields[] = {
    {.name = "exchange",
     .type = PB_F_STR,
     .offset = offsetof(struct binding_conf, exchange),
     .flags = PB_FIELD_REQUIRED,
     .doc = "exchange the queue is bound to"},
    {.name = "routing_key",
     .type = PB_F_STR,
     .offset = offsetof(struct binding_conf, routing_key),
     .def = "",
     .doc = "binding key (topic patterns for topic exchanges)"},
    {.name = "exchange_type",
     .type = PB_F_STR,
     .offset = offsetof(struct binding_conf, exchange_type),
     .doc = "when set, the exchange is declared too (durable): direct, fanout, topic, headers"},
    {.name = "arguments",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct binding_conf, arguments),
     .doc = "binding arguments (headers exchanges: x-match and the headers)"},
    {0},
};

static const struct pb_field declare_fields[] = {
    {.name = "durable",
     .type = PB_F_BOOL,
     .offset = offsetof(struct declare_conf, durable),
     .def = "true",
     .doc = "the queue survives a broker restart"},
    {.name = "arguments",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct declare_conf, arguments),
     .doc = "queue arguments (x-queue-type: quorum, x-dead-letter-exchange...)"},
    {.name = "bindings",
     .type = PB_F_NODE,
     .offset = offsetof(struct declare_conf, bindings),
     .doc = "list of {exchange, routing_key, exchange_type, arguments}"},
    {0},
};

static const struct pb_field outbound_fields[] = {
    {.name = "allow",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct outbound_conf, allow),
     .doc = "internal hosts and CIDRs this input may connect to"},
    {0},
};

static const struct pb_field amqp_fields[] = {
    PB_AMQP_CONF_FIELDS(struct in_amqp, conf),
    {.name = "queue",
     .type = PB_F_STR,
     .offset = offsetof(struct in_amqp, queue),
     .flags = PB_FIELD_REQUIRED,
     .doc = "the queue to consume"},
    {.name = "prefetch",
     .type = PB_F_INT,
     .offset = offsetof(struct in_amqp, prefetch),
     .def = "256",
     .min = 1,
     .max = 65535,
     .doc = "deliveries unacknowledged at once (basic.qos)"},
    {.name = "declare",
     .type = PB_F_NODE,
     .offset = offsetof(struct in_amqp, declare_node),
     .doc = "declare the queue and its bindings: {durable, arguments, bindings}"},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_amqp, format),
     .choices = formats,
     .def = "json",
     .doc = "json (invalid bodies go to the dead-letter queue) or raw (any bytes)"},
    {.name = "idempotency_window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_amqp, idem_window_ms),
     .def = "24h",
     .doc = "how long a message_id is remembered (0: not at all)"},
    {.name = "consumer_tag",
     .type = PB_F_STR,
     .offset = offsetof(struct in_amqp, consumer_tag),
     .doc = "consumer tag (default: the broker makes one)"},
    {.name = "exclusive",
     .type = PB_F_BOOL,
     .offset = offsetof(struct in_amqp, exclusive),
     .def = "false",
     .doc = "the only consumer of the queue"},
    {.name = "outbound",
     .type = PB_F_OBJECT,
     .offset = offsetof(struct in_amqp, outbound),
     .sub = outbound_fields,
     .doc = "allow: added to the top-level outbound.allow for this input"},
    {0},
};

/* ---- init ----------------------------------------------------------------------------------- */

static bool shortstr_ok(const char *s)
{
    return strlen(s) <= 255;
}

static int decode_declare(struct in_amqp *g, struct pb_err *err)
{
    const struct pb_node *n = g->declare_node;
    if (!n || n->type == PB_NODE_NULL)
        return 0;
    if (n->type != PB_NODE_MAP)
        return pb_err_at(err, PB_ECONFIG, n->file, n->line, n->col,
                         "declare must be a map: {durable, arguments, bindings}");
    g->declare = true;
    int rc = pb_conf_decode(n, declare_fields, &g->decl, err);
    if (rc)
        return rc;
    const struct pb_node *b = g->decl.bindings;
    if (!b || b->type == PB_NODE_NULL)
        return 0;
    if (b->type != PB_NODE_SEQ)
        return pb_err_at(err, PB_ECONFIG, b->file, b->line, b->col,
                         "declare.bindings must be a list of {exchange, routing_key}");
    if (b->n > BINDINGS_MAX)
        return pb_err_at(err, PB_ECONFIG, b->file, b->line, b->col, "declare.bindings: at most %d",
                         BINDINGS_MAX);
    for (size_t i = 0; i < b->n; i++) {
        const struct pb_node *e = b->vals[i];
        struct binding_conf *bc = &g->binds[i];
        g->nbinds = i + 1; /* freed by destroy even when half decoded */
        if (e->type != PB_NODE_MAP)
            return pb_err_at(err, PB_ECONFIG, e->file, e->line, e->col,
                             "a binding is a map: {exchange, routing_key}");
        rc = pb_conf_decode(e, binding_fields, bc, err);
        if (rc)
            return rc;
        if (!shortstr_ok(bc->exchange) || !shortstr_ok(bc->routing_key))
            return pb_err_at(err, PB_ECONFIG, e->file, e->line, e->col,
                             "exchange and routing_key are at most 255 bytes");
        if (bc->exchange_type && strcmp(bc->exchange_type, "direct") &&
            strcmp(bc->exchange_type, "fanout") && strcmp(bc->exchange_type, "topic") &&
            strcmp(bc->exchange_type, "headers"))
            return pb_err_at(err, PB_ECONFIG, e->file, e->line, e->col,
                             "exchange_type must be direct, fanout, topic or headers");
        if (bc->exchange_type && !*bc->exchange)
            return pb_err_at(err, PB_ECONFIG, e->file, e->line, e->col,
                             "the default exchange cannot be declared");
    }
    return 0;
}

static int amqp_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_amqp *g = ctx;
    int rc = pb_amqp_conf_prepare(&g->conf, err);
    if (rc)
        return rc;
    if (!*g->queue || !shortstr_ok(g->queue))
        return pb_err_set(err, PB_ECONFIG, "queue must be 1 to 255 bytes");
    if (g->consumer_tag && !shortstr_ok(g->consumer_tag))
        return pb_err_set(err, PB_ECONFIG, "consumer_tag is at most 255 bytes");
    rc = decode_declare(g, err);
    if (rc)
        return rc;
    struct pb_allowlist *own = pb_allowlist_create(&g->outbound.allow, err);
    if (!own)
        return err->code ? err->code : PB_ENOMEM;
    g->allow = pb_allowlist_merge(env->allow, own);
    pb_allowlist_destroy(own);
    if (!g->allow)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    snprintf(g->pipeline, sizeof(g->pipeline), "%s", env->pipeline);
    snprintf(g->name, sizeof(g->name), "patchbay %s (input)", env->pipeline);
    g->batch_max = (size_t)g->prefetch < PB_SUBMIT_MAX ? (size_t)g->prefetch : PB_SUBMIT_MAX;
    g->envs = calloc(g->batch_max, sizeof(*g->envs));
    if (!g->envs)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    g->poll_ms = g->conf.heartbeat_ms ? g->conf.heartbeat_ms / 4 : POLL_MAX_MS;
    if (g->poll_ms < POLL_MIN_MS)
        g->poll_ms = POLL_MIN_MS;
    if (g->poll_ms > POLL_MAX_MS)
        g->poll_ms = POLL_MAX_MS;
    env->raw = g->format == FORMAT_RAW;
    env->idempotency_window_ms = g->idem_window_ms;
    return 0;
}

/* ---- the connection ------------------------------------------------------------------------- */

static void drain(struct in_amqp *g);
static void lost(struct in_amqp *g, const char *why);

static void readable_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    (void)w;
    (void)fd;
    (void)events;
    drain(arg);
}

static void poll_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_amqp *g = arg;
    drain(g);
    if (g->conn && !g->stopped && !pb_loop_timer_armed(t))
        pb_loop_timer_start(t, g->poll_ms);
}

/* RPCs leave deliveries that arrived meanwhile in librabbitmq's queue,
 * where no socket event will announce them: drain on the next turn. */
static void drain_soon(struct in_amqp *g)
{
    if (g->poll && g->conn)
        pb_loop_timer_start(g->poll, 0);
}

static int rpc_check(struct in_amqp *g, const char *what, char *why, size_t len)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(g->conn);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    char t[256];
    snprintf(why, len, "%s: %s", what, pb_amqp_reply_text(r, t, sizeof(t)));
    return PB_ENET;
}

static int consume(struct in_amqp *g, char *why, size_t len)
{
    amqp_basic_consume_ok_t *ok =
        amqp_basic_consume(g->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(g->queue),
                           g->consumer_tag ? amqp_cstring_bytes(g->consumer_tag) : amqp_empty_bytes,
                           0, 0, g->exclusive, amqp_empty_table);
    if (!ok || rpc_check(g, "basic.consume", why, len))
        return PB_ENET;
    snprintf(g->ctag, sizeof(g->ctag), "%.*s", (int)ok->consumer_tag.len,
             (const char *)ok->consumer_tag.bytes);
    g->consuming = true;
    drain_soon(g);
    return 0;
}

static int cancel(struct in_amqp *g, char *why, size_t len)
{
    if (!g->consuming)
        return 0;
    g->consuming = false;
    amqp_basic_cancel(g->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(g->ctag));
    if (rpc_check(g, "basic.cancel", why, len))
        return PB_ENET;
    drain_soon(g);
    return 0;
}

static int declare(struct in_amqp *g, char *why, size_t len)
{
    amqp_pool_t pool;
    amqp_table_t args;
    int rc = 0;
    init_amqp_pool(&pool, 1024);
    for (size_t i = 0; i < g->nbinds; i++) {
        const struct binding_conf *b = &g->binds[i];
        if (!b->exchange_type)
            continue;
        amqp_exchange_declare(g->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(b->exchange),
                              amqp_cstring_bytes(b->exchange_type), 0, 1, 0, 0, amqp_empty_table);
        if ((rc = rpc_check(g, "exchange.declare", why, len)))
            goto out;
    }
    if (pb_amqp_table_from_map(&g->decl.arguments, &pool, &args)) {
        rc = PB_ENOMEM;
        snprintf(why, len, "out of memory");
        goto out;
    }
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(
        g->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(g->queue), 0, g->decl.durable, 0, 0, args);
    if (!ok || (rc = rpc_check(g, "queue.declare", why, len)))
        goto out;
    pb_input_set_lag(g->in, ok->message_count);
    for (size_t i = 0; i < g->nbinds; i++) {
        const struct binding_conf *b = &g->binds[i];
        if (pb_amqp_table_from_map(&b->arguments, &pool, &args)) {
            rc = PB_ENOMEM;
            snprintf(why, len, "out of memory");
            goto out;
        }
        amqp_queue_bind(g->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(g->queue),
                        amqp_cstring_bytes(b->exchange), amqp_cstring_bytes(b->routing_key), args);
        if ((rc = rpc_check(g, "queue.bind", why, len)))
            goto out;
    }
out:
    empty_amqp_pool(&pool);
    return rc;
}

/* The queue's ready messages: the lag. */
static int measure_lag(struct in_amqp *g, char *why, size_t len)
{
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(
        g->conn, PB_AMQP_CHANNEL, amqp_cstring_bytes(g->queue), 1, 0, 0, 0, amqp_empty_table);
    if (!ok || rpc_check(g, "queue.declare (passive)", why, len))
        return PB_ENET;
    pb_input_set_lag(g->in, ok->message_count);
    return 0;
}

/* Connect, set the prefetch, declare (or check) the queue, consume. */
static int connect_now(struct in_amqp *g, struct pb_err *err)
{
    char why[384];
    int rc = pb_amqp_open(&g->conf, g->allow, g->name, &g->conn, err);
    if (rc)
        return rc;
    amqp_basic_qos(g->conn, PB_AMQP_CHANNEL, 0, (uint16_t)g->prefetch, 0);
    if ((rc = rpc_check(g, "basic.qos", why, sizeof(why))))
        goto fail;
    rc = g->declare ? declare(g, why, sizeof(why)) : measure_lag(g, why, sizeof(why));
    if (rc)
        goto fail;
    g->gen++;
    g->acked = 0;
    g->watch = pb_loop_watch_add(pb_input_loop(g->in), amqp_get_sockfd(g->conn), PB_LOOP_READ,
                                 readable_cb, g);
    if (!g->watch) {
        snprintf(why, sizeof(why), "out of memory");
        rc = PB_ENOMEM;
        goto fail;
    }
    if (!g->paused && (rc = consume(g, why, sizeof(why))))
        goto fail;
    g->backoff_ms = 0;
    pb_loop_timer_start(g->poll, g->poll_ms);
    pb_loop_timer_start(g->lag, LAG_EVERY_MS);
    pb_input_set_state(g->in, PB_INPUT_CONNECTED, NULL);
    PB_INFO("amqp input connected pipeline=%s url=%s queue=%s prefetch=%lld", g->pipeline,
            g->conf.shown, g->queue, (long long)g->prefetch);
    return 0;
fail:
    pb_loop_watch_remove(g->watch);
    g->watch = NULL;
    g->consuming = false;
    pb_amqp_close(g->conn, false);
    g->conn = NULL;
    return pb_err_set(err, rc, "%s", why);
}

static void batch_unlink_all(struct in_amqp *g, struct batch *b)
{
    if (b->all_prev)
        b->all_prev->all_next = b->all_next;
    else
        g->all = b->all_next;
    if (b->all_next)
        b->all_next->all_prev = b->all_prev;
}

/* The connection is gone: the broker requeues what was not acked. */
static void lost(struct in_amqp *g, const char *why)
{
    if (!g->conn)
        return;
    pb_loop_watch_remove(g->watch);
    g->watch = NULL;
    pb_amqp_close(g->conn, false);
    g->conn = NULL;
    g->consuming = false;
    g->gen++; /* callbacks of batches of that connection ack nothing */
    g->head = g->tail = NULL;
    pb_loop_timer_stop(g->poll);
    pb_loop_timer_stop(g->lag);
    if (g->stopped)
        return;
    char detail[512];
    g->backoff_ms = pb_amqp_backoff_next(g->backoff_ms);
    snprintf(detail, sizeof(detail), "%s (connecting again)", why);
    pb_input_set_state(g->in, PB_INPUT_RECONNECTING, detail);
    pb_loop_timer_start(g->reconnect, pb_amqp_backoff_jitter(g->backoff_ms));
}

static void reconnect_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_amqp *g = arg;
    struct pb_err err = {0};
    if (g->stopped || g->conn)
        return;
    if (connect_now(g, &err) == 0)
        return;
    char detail[PB_ERR_MSG_MAX + 64];
    g->backoff_ms = pb_amqp_backoff_next(g->backoff_ms);
    snprintf(detail, sizeof(detail), "%s (connecting again)", err.msg);
    pb_input_set_state(g->in, PB_INPUT_RECONNECTING, detail);
    pb_loop_timer_start(t, pb_amqp_backoff_jitter(g->backoff_ms));
}

static void lag_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_amqp *g = arg;
    char why[384];
    if (!g->conn || g->stopped)
        return;
    if (measure_lag(g, why, sizeof(why))) {
        lost(g, why);
        return;
    }
    drain_soon(g);
    pb_loop_timer_start(t, LAG_EVERY_MS);
}

/* ---- acknowledgements ------------------------------------------------------------------------ */

static void nack_tags(struct in_amqp *g, const uint64_t *tags, size_t n)
{
    for (size_t i = 0; i < n && g->conn; i++) {
        int rc = amqp_basic_nack(g->conn, PB_AMQP_CHANNEL, tags[i], 0, 1);
        if (rc != AMQP_STATUS_OK) {
            lost(g, amqp_error_string2(rc));
            return;
        }
    }
    pb_input_count_nacked(g->in, n);
}

/* Ack what is settled at the head of the FIFO with one multiple ack: every
 * batch before the first still waiting is acked or was nacked one by one,
 * so no tag of a waiting batch is covered. */
static void settle(struct in_amqp *g)
{
    uint64_t upto = 0;
    while (g->head && g->head->state != B_PENDING) {
        struct batch *b = g->head;
        g->head = b->next;
        if (!g->head)
            g->tail = NULL;
        if (b->state == B_ACK)
            upto = b->last;
        batch_unlink_all(g, b);
        free(b);
    }
    if (!upto || upto <= g->acked || !g->conn)
        return;
    int rc = amqp_basic_ack(g->conn, PB_AMQP_CHANNEL, upto, 1);
    if (rc != AMQP_STATUS_OK) {
        lost(g, amqp_error_string2(rc));
        return;
    }
    g->acked = upto;
    char pos[320];
    snprintf(pos, sizeof(pos), "queue=%s consumer=%s delivery_tag=%llu", g->queue, g->ctag,
             (unsigned long long)upto);
    pb_input_set_position(g->in, pos);
}

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct batch *b = arg;
    struct in_amqp *g = b->g;
    (void)res;
    (void)n;
    pb_input_observe_latency(g->in, pb_mono_us() - b->arrived_us);
    if (b->gen != g->gen || !g->conn) {
        /* Its connection is gone: the broker has requeued it already. */
        batch_unlink_all(g, b);
        free(b);
        return;
    }
    if (status == 0) {
        b->state = B_ACK;
    } else {
        PB_WARN("amqp: batch not committed, requeued pipeline=%s count=%zu error=\"%s\"",
                g->pipeline, b->n, pb_strerror(status));
        b->state = B_SETTLED;
        nack_tags(g, b->tags, b->n);
    }
    settle(g);
}

/* ---- deliveries --------------------------------------------------------------------------- */

static int meta_str(json_t *m, const char *k, amqp_bytes_t v)
{
    json_t *j = pb_amqp_bytes_json(v);
    return j ? json_object_set_new(m, k, j) : -1;
}

/* $meta of one delivery: malloc'd JSON text, NULL on ENOMEM. */
static char *delivery_meta(struct in_amqp *g, const amqp_envelope_t *e)
{
    const amqp_basic_properties_t *p = &e->message.properties;
    json_t *m = json_object();
    char *text = NULL;
    int bad = !m;
    if (bad)
        return NULL;
    bad |= json_object_set_new(m, "queue", json_string(g->queue));
    bad |= meta_str(m, "exchange", e->exchange);
    bad |= meta_str(m, "routing_key", e->routing_key);
    bad |= json_object_set_new(m, "delivery_tag", json_integer((json_int_t)e->delivery_tag));
    bad |= json_object_set_new(m, "redelivered", json_boolean(e->redelivered));
    bad |= meta_str(m, "consumer_tag", e->consumer_tag);
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
        bad |= meta_str(m, "message_id", p->message_id);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
        bad |= meta_str(m, "correlation_id", p->correlation_id);
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
        bad |= meta_str(m, "content_type", p->content_type);
    if (p->_flags & AMQP_BASIC_CONTENT_ENCODING_FLAG)
        bad |= meta_str(m, "content_encoding", p->content_encoding);
    if (p->_flags & AMQP_BASIC_TYPE_FLAG)
        bad |= meta_str(m, "type", p->type);
    if (p->_flags & AMQP_BASIC_APP_ID_FLAG)
        bad |= meta_str(m, "app_id", p->app_id);
    if (p->_flags & AMQP_BASIC_USER_ID_FLAG)
        bad |= meta_str(m, "user_id", p->user_id);
    if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
        bad |= meta_str(m, "reply_to", p->reply_to);
    if (p->_flags & AMQP_BASIC_EXPIRATION_FLAG)
        bad |= meta_str(m, "expiration", p->expiration);
    if (p->_flags & AMQP_BASIC_PRIORITY_FLAG)
        bad |= json_object_set_new(m, "priority", json_integer(p->priority));
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
        bad |= json_object_set_new(m, "delivery_mode", json_integer(p->delivery_mode));
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG)
        bad |= json_object_set_new(m, "timestamp", json_integer((json_int_t)p->timestamp));
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        json_t *h = pb_amqp_table_json(&p->headers);
        bad |= !h || json_object_set_new(m, "headers", h);
        /* Quorum queues count deliveries: the redelivery count. */
        json_t *dc = h ? json_object_get(h, "x-delivery-count") : NULL;
        if (dc && json_is_integer(dc))
            bad |= json_object_set(m, "delivery_count", dc);
    }
    if (!bad)
        text = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    return text;
}

/* The message_id property as the idempotency key, when it can be one. */
static const char *delivery_key(const amqp_envelope_t *e, char *buf, size_t len)
{
    const amqp_basic_properties_t *p = &e->message.properties;
    if (!(p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) || p->message_id.len == 0 ||
        p->message_id.len > PB_ITEM_KEY_MAX || p->message_id.len >= len ||
        memchr(p->message_id.bytes, 0, p->message_id.len))
        return NULL;
    memcpy(buf, p->message_id.bytes, p->message_id.len);
    buf[p->message_id.len] = 0;
    return buf;
}

/* Submit the n gathered deliveries as one batch; nack them if refused. */
static void submit_gathered(struct in_amqp *g, size_t n, int64_t arrived_us)
{
    struct pb_item *items = calloc(n, sizeof(*items));
    char **metas = calloc(n, sizeof(*metas));
    char(*keys)[PB_ITEM_KEY_MAX + 1] = calloc(n, sizeof(*keys));
    char(*reasons)[160] = calloc(n, sizeof(*reasons));
    char(*ctypes)[256] = calloc(n, sizeof(*ctypes));
    struct batch *b = malloc(sizeof(*b) + n * sizeof(b->tags[0]));
    int rc = PB_ENOMEM;

    if (!items || !metas || !keys || !reasons || !ctypes || !b)
        goto out;
    *b = (struct batch){.g = g, .gen = g->gen, .n = n, .arrived_us = arrived_us};
    for (size_t i = 0; i < n; i++) {
        const amqp_envelope_t *e = &g->envs[i];
        const amqp_basic_properties_t *p = &e->message.properties;
        b->tags[i] = e->delivery_tag;
        metas[i] = delivery_meta(g, e);
        if (!metas[i])
            goto out;
        items[i] = (struct pb_item){
            .body = e->message.body.len ? e->message.body.bytes : "",
            .len = e->message.body.len,
            .meta = metas[i],
            .meta_len = strlen(metas[i]),
            .key = delivery_key(e, keys[i], sizeof(keys[i])),
        };
        if (g->format == FORMAT_JSON) {
            struct pb_json_check chk = {0};
            if (pb_json_validate(items[i].body, items[i].len, &chk) != 0) {
                snprintf(reasons[i], sizeof(reasons[i]), "invalid JSON: %s at byte %zu",
                         chk.err_reason ? chk.err_reason : "malformed", chk.err_offset);
                items[i].dead_reason = reasons[i];
            }
            items[i].content_type = "application/json";
        } else if ((p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) && p->content_type.len &&
                   p->content_type.len < sizeof(ctypes[i]) &&
                   !memchr(p->content_type.bytes, 0, p->content_type.len)) {
            memcpy(ctypes[i], p->content_type.bytes, p->content_type.len);
            items[i].content_type = ctypes[i];
        } else {
            items[i].content_type = "application/octet-stream";
        }
    }
    b->first = b->tags[0];
    b->last = b->tags[n - 1];
    pb_input_count_received(g->in, n);
    rc = pb_input_submit(g->in, items, n, NULL, 0, submit_cb, b);
    if (rc == 0) {
        if (g->tail)
            g->tail->next = b;
        else
            g->head = b;
        g->tail = b;
        b->all_next = g->all;
        if (g->all)
            g->all->all_prev = b;
        g->all = b;
        b = NULL;
    }
out:
    if (rc != 0) {
        uint64_t *tags = malloc(n * sizeof(*tags));
        if (tags) {
            for (size_t i = 0; i < n; i++)
                tags[i] = g->envs[i].delivery_tag;
            nack_tags(g, tags, n);
            free(tags);
        } else if (g->conn) {
            lost(g, "out of memory"); /* the broker requeues them */
        }
        if (rc == PB_EFULL || rc == PB_ENOMEM) {
            /* The core pauses the input (EFULL) and resumes it once there is
             * room; until then nothing more is taken. */
            char why[384];
            g->paused = true;
            if (g->conn && cancel(g, why, sizeof(why)))
                lost(g, why);
            if (rc == PB_ENOMEM)
                PB_WARN("amqp: out of memory, deliveries requeued pipeline=%s count=%zu",
                        g->pipeline, n);
        }
        free(b);
    }
    for (size_t i = 0; i < n; i++) {
        if (metas)
            free(metas[i]);
        amqp_destroy_envelope(&g->envs[i]);
    }
    free(items);
    free(metas);
    free(keys);
    free(reasons);
    free(ctypes);
}

/* A frame other than a delivery: the broker closing something, or a
 * consumer it cancelled. Returns false when the connection is lost. */
static bool other_frame(struct in_amqp *g)
{
    amqp_frame_t f;
    struct timeval zero = {0, 0};
    char why[384];
    int rc = amqp_simple_wait_frame_noblock(g->conn, &f, &zero);
    if (rc == AMQP_STATUS_TIMEOUT)
        return true;
    if (rc != AMQP_STATUS_OK) {
        lost(g, amqp_error_string2(rc));
        return false;
    }
    if (f.frame_type != AMQP_FRAME_METHOD)
        return true;
    if (pb_amqp_close_text(&f.payload.method, why, sizeof(why))) {
        pb_amqp_close_ok(g->conn, &f);
        lost(g, why);
        return false;
    }
    if (f.payload.method.id == AMQP_BASIC_CANCEL_METHOD) {
        lost(g, "the broker cancelled the consumer (queue deleted?)");
        return false;
    }
    return true; /* a late reply: nothing to do */
}

/* Read what the socket and librabbitmq hold: deliveries are gathered and
 * submitted (or nacked while paused), other frames handled. */
static void drain(struct in_amqp *g)
{
    struct timeval zero = {0, 0};
    size_t n = 0;
    int64_t arrived = pb_mono_us();

    while (g->conn && !g->stopped) {
        amqp_maybe_release_buffers(g->conn);
        amqp_envelope_t *e = &g->envs[n];
        amqp_rpc_reply_t r = amqp_consume_message(g->conn, e, &zero, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            if (g->paused || !g->consuming) {
                /* Sent before the cancel took effect: back to the queue. */
                nack_tags(g, &e->delivery_tag, 1);
                amqp_destroy_envelope(e);
                continue;
            }
            if (++n == g->batch_max)
                break;
            continue;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            break;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (!other_frame(g))
                break;
            continue;
        }
        char why[384];
        lost(g, pb_amqp_reply_text(r, why, sizeof(why)));
    }
    if (n && !g->conn) {
        for (size_t i = 0; i < n; i++)
            amqp_destroy_envelope(&g->envs[i]);
        return;
    }
    if (n)
        submit_gathered(g, n, arrived);
    /* A full batch may leave more in librabbitmq's buffer: go on next turn,
     * after the callbacks waiting on the loop. */
    if (g->conn && n == g->batch_max)
        drain_soon(g);
}

/* ---- life cycle ----------------------------------------------------------------------------- */

static int amqp_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_amqp *g = ctx;
    struct pb_loop *loop = pb_input_loop(in);
    g->in = in;
    if (!g->poll)
        g->poll = pb_loop_timer_create(loop, poll_cb, g);
    if (!g->reconnect)
        g->reconnect = pb_loop_timer_create(loop, reconnect_cb, g);
    if (!g->lag)
        g->lag = pb_loop_timer_create(loop, lag_cb, g);
    if (!g->poll || !g->reconnect || !g->lag)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    return connect_now(g, err);
}

static void amqp_pause(void *ctx)
{
    struct in_amqp *g = ctx;
    char why[384];
    g->paused = true;
    if (g->conn && cancel(g, why, sizeof(why)))
        lost(g, why);
}

static void amqp_resume(void *ctx)
{
    struct in_amqp *g = ctx;
    char why[384];
    g->paused = false;
    if (g->conn && !g->consuming && !g->stopped && consume(g, why, sizeof(why)))
        lost(g, why);
}

/* Stop taking deliveries; the connection stays for the acks of what was
 * submitted, and is closed by destroy (the broker requeues the rest). */
static void amqp_stop(void *ctx)
{
    struct in_amqp *g = ctx;
    char why[384];
    g->stopped = true;
    if (g->conn && cancel(g, why, sizeof(why)))
        lost(g, why);
    pb_loop_watch_remove(g->watch);
    g->watch = NULL;
    pb_loop_timer_destroy(g->poll);
    pb_loop_timer_destroy(g->reconnect);
    pb_loop_timer_destroy(g->lag);
    g->poll = g->reconnect = g->lag = NULL;
}

static void amqp_destroy(void *ctx)
{
    struct in_amqp *g = ctx;
    pb_loop_watch_remove(g->watch);
    g->watch = NULL;
    pb_loop_timer_destroy(g->poll);
    pb_loop_timer_destroy(g->reconnect);
    pb_loop_timer_destroy(g->lag);
    g->poll = g->reconnect = g->lag = NULL;
    pb_amqp_close(g->conn, true);
    g->conn = NULL;
    while (g->all) {
        struct batch *b = g->all;
        g->all = b->all_next;
        free(b);
    }
    free(g->envs);
    g->envs = NULL;
    for (size_t i = 0; i < g->nbinds; i++)
        pb_conf_free(binding_fields, &g->binds[i]);
    g->nbinds = 0;
    pb_conf_free(declare_fields, &g->decl);
    pb_allowlist_destroy(g->allow);
    g->allow = NULL;
    pb_amqp_conf_cleanup(&g->conf);
}

const struct pb_input_plugin pb_in_amqp = {
    .name = "amqp",
    .fields = amqp_fields,
    .ctx_size = sizeof(struct in_amqp),
    .flags = PB_INPUT_OWN_THREAD,
    .init = amqp_init,
    .start = amqp_start,
    .stop = amqp_stop,
    .pause = amqp_pause,
    .resume = amqp_resume,
    .destroy = amqp_destroy,
};
