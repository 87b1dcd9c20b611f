/* kafka.c - the `kafka` output: each delivery is one message produced to a
 * topic, delivered once the broker confirmed it (acks=all, the idempotent
 * producer), as the delivery report says.
 *
 *   kafka: { brokers: [kafka-1:9092], topic: 'orders.{{ .region }}', key: '{{ .id }}' }
 *
 * Every message carries the headers idempotency-key (the delivery's key, the
 * same on every retry and after restarts) and patchbay-message-id. The
 * idempotent producer drops a repeat only within one producer session (its
 * own retries of one send); a delivery that is retried after a timeout or
 * a restart is a new send, so consumers that must see a message once drop
 * repeats by the idempotency-key header.
 *
 * Results: a delivery report without error is OK; a message too large, a
 * topic that does not exist (and is not created), an invalid topic name or
 * a topic the client may not write to is PERMANENT; everything else
 * (timeouts, brokers away, purged on stop) is RETRY.
 *
 * Threads: start, deliver_batch and stop run on the output's one worker
 * thread (workers = 1); produce never blocks there. A poller thread of our
 * own serves librdkafka's callbacks with rd_kafka_poll: delivery reports end
 * each delivery (pb_delivery_done may be called from any thread), error and
 * statistics callbacks report the connection state. The producer handle
 * belongs to the worker thread, which stops the poller before it replaces
 * or destroys it. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../inputs/kafka/kafka_common.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define POLL_MS 100
#define STOP_FLUSH_MS 1000 /* the dispatcher has waited for attempts already */
#define MAX_HEADERS 64

struct out_kafka {
    struct kafka_link link; /* first: librdkafka's opaque is the context */
    struct kafka_common common;
    /* options */
    char *topic;
    char *key;
    int acks; /* 0 all, 1 leader */
    int compression;
    struct pb_strmap headers;
    int64_t timeout_ms;
    int64_t linger_ms;
    int topic_idx, key_idx;
    char pipeline[128], output[128];

    /* run time */
    struct pb_output *out;
    rd_kafka_t *rk; /* the worker thread's; the poller reads it while it runs */
    pthread_t poller;
    bool poller_running;
    atomic_bool poller_stop;
    atomic_bool fatal; /* the producer is unusable: made anew by the next deliver */
    atomic_int state;  /* last reported enum pb_output_state */
    int down_reports;  /* poller thread */
};

static const char *const acks_choices[] = {"all", "1", NULL};
static const char *const codecs[] = {"none", "gzip", "snappy", "lz4", "zstd", NULL};

static const struct pb_field kafka_fields[] = {
    KAFKA_COMMON_FIELDS(struct out_kafka),
    {.name = "topic",
     .type = PB_F_STR,
     .offset = offsetof(struct out_kafka, topic),
     .flags = PB_FIELD_REQUIRED,
     .doc = "topic (a template)"},
    {.name = "key",
     .type = PB_F_STR,
     .offset = offsetof(struct out_kafka, key),
     .doc = "message key (a template); none by default"},
    {.name = "acks",
     .type = PB_F_ENUM,
     .offset = offsetof(struct out_kafka, acks),
     .choices = acks_choices,
     .def = "all",
     .doc = "all: every in-sync replica, idempotent producer; 1: the leader only"},
    {.name = "compression",
     .type = PB_F_ENUM,
     .offset = offsetof(struct out_kafka, compression),
     .choices = codecs,
     .def = "none"},
    {.name = "headers",
     .type = PB_F_STRMAP,
     .offset = offsetof(struct out_kafka, headers),
     .doc = "static message headers"},
    {.name = "timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_kafka, timeout_ms),
     .def = "30s",
     .doc = "a message not confirmed by then is retried"},
    {.name = "linger",
     .type = PB_F_DURATION,
     .offset = offsetof(struct out_kafka, linger_ms),
     .def = "5ms",
     .doc = "how long messages wait to fill a batch to the broker"},
    {0},
};

static const char *const reserved[] = {
    "enable.idempotence",
    "set by acks (all: idempotent)",
    "acks",
    "set it with acks",
    "request.required.acks",
    "set it with acks",
    "message.timeout.ms",
    "set it with timeout",
    "delivery.timeout.ms",
    "set it with timeout",
    "compression.codec",
    "set it with compression",
    "compression.type",
    "set it with compression",
    "linger.ms",
    "set it with linger",
    "queue.buffering.max.ms",
    "set it with linger",
    "transactional.id",
    "the kafka output does not produce in transactions",
    NULL,
};

/* ---- results ---------------------------------------------------------------------------- */

/* What can never work whatever the retries. */
static bool permanent(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return true;
    default:
        return false;
    }
}

/* m: the delivery report (NULL when the message never left): the answer
 * is where the broker stored it (partition and offset), or its error. */
static void done(struct pb_delivery *d, rd_kafka_resp_err_t err, const char *topic,
                 const rd_kafka_message_t *m)
{
    char text[320], ack[PB_ANSWER_EXCERPT_MAX];
    struct pb_outcome o = {.result = PB_RESULT_OK, .retry_after_ms = -1};
    if (m && !err && m->offset >= 0) {
        snprintf(ack, sizeof(ack), "topic %s partition %d offset %lld", topic ? topic : "?",
                 (int)m->partition, (long long)m->offset);
        o.answer = ack;
        o.answer_len = strlen(ack);
    } else if (m && err > 0) { /* the broker's refusal, not a local error */
        snprintf(ack, sizeof(ack), "%s", rd_kafka_err2name(err));
        o.answer = ack;
        o.answer_len = strlen(ack);
    }
    if (err) {
        o.result = permanent(err) ? PB_RESULT_PERMANENT : PB_RESULT_RETRY;
        snprintf(text, sizeof(text), "kafka: %s (%s) topic=%s", rd_kafka_err2str(err),
                 rd_kafka_err2name(err), topic ? topic : "?");
        o.error = text;
    }
    pb_delivery_done(d, &o);
}

static void set_state(struct out_kafka *k, enum pb_output_state st, const char *detail)
{
    if (!k->out)
        return;
    if (atomic_exchange(&k->state, (int)st) == (int)st && st == PB_OUTPUT_CONNECTED)
        return;
    pb_output_set_state(k->out, st, detail);
}

static void reconnecting(struct out_kafka *k, const char *why)
{
    char refused[256], detail[600];
    if (kafka_link_refused(&k->link, 60000, refused, sizeof(refused)))
        snprintf(detail, sizeof(detail), "%s", refused);
    else
        snprintf(detail, sizeof(detail), "no broker reachable: %s", why);
    set_state(k, PB_OUTPUT_RECONNECTING, detail);
}

/* ---- librdkafka's callbacks (poller thread, or the worker while it flushes) --------------- */

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct out_kafka *k = opaque;
    (void)rk;
    if (!m->err)
        set_state(k, PB_OUTPUT_CONNECTED, NULL);
    done(m->_private, m->err, m->rkt ? rd_kafka_topic_name(m->rkt) : NULL, m);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct out_kafka *k = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char fatal[256];
        rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
        PB_ERROR("kafka: the producer failed and is made anew pipeline=%s output=%s error=\"%s\"",
                 k->pipeline, k->output, fatal);
        atomic_store(&k->fatal, true);
        reconnecting(k, fatal);
    } else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        reconnecting(k, reason);
    }
}

static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    struct out_kafka *k = opaque;
    (void)rk;
    json_t *st = json_loadb(json, len, 0, NULL);
    if (!st)
        return 0;
    int up, total;
    kafka_stats_brokers(st, &up, &total);
    json_decref(st);
    if (up > 0) {
        k->down_reports = 0;
        set_state(k, PB_OUTPUT_CONNECTED, NULL);
    } else if (total > 0 && ++k->down_reports >= 3) {
        reconnecting(k, "connecting");
    }
    return 0;
}

static void *poller_main(void *arg)
{
    struct out_kafka *k = arg;
    while (!atomic_load(&k->poller_stop))
        rd_kafka_poll(k->rk, POLL_MS);
    return NULL;
}

/* ---- the producer (worker thread) ------------------------------------------------------- */

static void poller_stop(struct out_kafka *k)
{
    if (!k->poller_running)
        return;
    atomic_store(&k->poller_stop, true);
    pthread_join(k->poller, NULL);
    k->poller_running = false;
}

/* Flush (up to wait_ms), fail what is left (RETRY: purged), destroy. */
static void producer_destroy(struct out_kafka *k, int wait_ms)
{
    if (!k->rk)
        return;
    poller_stop(k);
    if (wait_ms > 0)
        rd_kafka_flush(k->rk, wait_ms);
    rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    for (int i = 0; i < 50 && rd_kafka_outq_len(k->rk) > 0; i++)
        rd_kafka_poll(k->rk, 20);
    rd_kafka_poll(k->rk, 0);
    rd_kafka_destroy(k->rk);
    k->rk = NULL;
}

static int producer_create(struct out_kafka *k, struct pb_err *err)
{
    char bootstrap[4096], errstr[512], ms[24], linger[24];
    bool tls = kafka_tls_on(&k->common);
    int rc =
        kafka_resolve_brokers(&k->link, &k->common.brokers, tls, bootstrap, sizeof(bootstrap), err);
    if (rc)
        return rc;
    rd_kafka_conf_t *c = kafka_conf_new(&k->common, NULL, reserved, bootstrap, k, err);
    if (!c)
        return err->code ? err->code : PB_ECONFIG;
    snprintf(ms, sizeof(ms), "%lld", (long long)k->timeout_ms);
    snprintf(linger, sizeof(linger), "%lld", (long long)k->linger_ms);
    if (kafka_conf_set(c, "enable.idempotence", k->acks == 0 ? "true" : "false", err) ||
        kafka_conf_set(c, "acks", k->acks == 0 ? "all" : "1", err) ||
        kafka_conf_set(c, "message.timeout.ms", ms, err) ||
        kafka_conf_set(c, "linger.ms", linger, err) ||
        kafka_conf_set(c, "compression.codec", codecs[k->compression], err)) {
        rd_kafka_conf_destroy(c);
        return err->code;
    }
    rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
    rd_kafka_conf_set_error_cb(c, error_cb);
    rd_kafka_conf_set_stats_cb(c, stats_cb);
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, errstr, sizeof(errstr));
    if (!k->rk) {
        rd_kafka_conf_destroy(c);
        return pb_err_set(err, PB_ECONFIG, "kafka producer: %s", errstr);
    }
    atomic_store(&k->poller_stop, false);
    if (pthread_create(&k->poller, NULL, poller_main, k) != 0) {
        producer_destroy(k, 0);
        return pb_err_set(err, PB_ENOMEM, "cannot start the kafka poller thread");
    }
    k->poller_running = true;
    char name[16];
    snprintf(name, sizeof(name), "pb-kp-%.9s", k->output);
    pthread_setname_np(k->poller, name);
    return 0;
}

/* ---- the plugin ------------------------------------------------------------------------ */

static int kafka_init(void *ctx, struct pb_output_env *env, struct pb_err *err)
{
    struct out_kafka *k = ctx;
    char what[192];
    snprintf(k->pipeline, sizeof(k->pipeline), "%s", env->pipeline);
    snprintf(k->output, sizeof(k->output), "%s", env->output);
    snprintf(what, sizeof(what), "pipeline=%s output=%s", env->pipeline, env->output);
    k->key_idx = -1;
    if (kafka_link_init(&k->link, env->allow, what))
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    int rc = kafka_common_check(&k->common, err);
    if (rc)
        return rc;
    if (k->timeout_ms < 1000 || k->timeout_ms > 3600000)
        return pb_err_set(err, PB_ECONFIG, "timeout must be between 1s and 1h");
    if (k->linger_ms < 0 || k->linger_ms > 60000)
        return pb_err_set(err, PB_ECONFIG, "linger must be between 0 and 1m");
    if (k->headers.n > MAX_HEADERS)
        return pb_err_set(err, PB_ECONFIG, "headers: at most %d", MAX_HEADERS);
    for (size_t i = 0; i < k->headers.n; i++)
        if (!k->headers.keys[i][0] || strcasecmp(k->headers.keys[i], "idempotency-key") == 0 ||
            strcasecmp(k->headers.keys[i], "patchbay-message-id") == 0)
            return pb_err_set(err, PB_ECONFIG,
                              "header \"%s\": empty, or one patchbay sets on every message",
                              k->headers.keys[i]);
    if (!strstr(k->topic, "{{") && !kafka_topic_name_ok(k->topic))
        return pb_err_set(err, PB_ECONFIG,
                          "topic \"%s\" is not a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)",
                          k->topic);
    rc = env->template_add(env, k->topic, err);
    if (rc < 0)
        return rc;
    k->topic_idx = rc;
    if (k->key) {
        rc = env->template_add(env, k->key, err);
        if (rc < 0)
            return rc;
        k->key_idx = rc;
    }
    rd_kafka_conf_t *c = kafka_conf_new(&k->common, NULL, reserved, NULL, k, err);
    if (!c)
        return err->code ? err->code : PB_ECONFIG;
    rd_kafka_conf_destroy(c);
    env->batch_max = 500;
    env->batch_period_ms = 0;
    env->attempt_timeout_ms = k->timeout_ms + 1000;
    return 0;
}

static int kafka_start(void *ctx, struct pb_output *out, struct pb_err *err)
{
    struct out_kafka *k = ctx;
    k->out = out;
    int rc = producer_create(k, err);
    if (rc)
        return rc;
    PB_INFO("kafka: producer started pipeline=%s output=%s", k->pipeline, k->output);
    return 0;
}

static void produce(struct out_kafka *k, struct pb_delivery *d)
{
    const char *topic = d->tmpl[k->topic_idx];
    const char *key = k->key_idx >= 0 ? d->tmpl[k->key_idx] : NULL;
    char text[400];

    if (!k->rk) {
        struct pb_outcome o = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "kafka: not connected"};
        pb_delivery_done(d, &o);
        return;
    }
    if (!kafka_topic_name_ok(topic)) {
        snprintf(text, sizeof(text), "kafka: \"%.249s\" is not a Kafka topic name", topic);
        struct pb_outcome o = {.result = PB_RESULT_PERMANENT, .retry_after_ms = -1, .error = text};
        pb_delivery_done(d, &o);
        return;
    }
    rd_kafka_headers_t *h = rd_kafka_headers_new(k->headers.n + 4);
    if (!h) {
        struct pb_outcome o = {
            .result = PB_RESULT_RETRY, .retry_after_ms = -1, .error = "out of memory"};
        pb_delivery_done(d, &o);
        return;
    }
    rd_kafka_header_add(h, "idempotency-key", -1, d->idempotency_key, -1);
    rd_kafka_header_add(h, "patchbay-message-id", -1, d->msg_id, -1);
    bool own_tp = false, own_ts = false; /* configured headers win */
    for (size_t i = 0; i < k->headers.n; i++) {
        rd_kafka_header_add(h, k->headers.keys[i], -1, k->headers.vals[i], -1);
        own_tp |= strcasecmp(k->headers.keys[i], "traceparent") == 0;
        own_ts |= strcasecmp(k->headers.keys[i], "tracestate") == 0;
    }
    if (d->traceparent && !own_tp)
        rd_kafka_header_add(h, "traceparent", -1, d->traceparent, -1);
    if (d->tracestate && !own_ts)
        rd_kafka_header_add(h, "tracestate", -1, d->tracestate, -1);
    /* The payload is the delivery's until it ends, in the delivery report:
     * librdkafka need not copy it. */
    rd_kafka_resp_err_t err = rd_kafka_producev(
        k->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(0),
        RD_KAFKA_V_VALUE((void *)d->payload, d->len), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
    if (err) {
        rd_kafka_headers_destroy(h); /* not taken on failure */
        done(d, err, topic, NULL);
    }
}

static void kafka_deliver_batch(void *ctx, struct pb_delivery **ds, size_t n)
{
    struct out_kafka *k = ctx;
    if (atomic_exchange(&k->fatal, false)) {
        struct pb_err err = {0};
        producer_destroy(k, 0);
        if (producer_create(k, &err) != 0) {
            atomic_store(&k->fatal, true); /* tried again with the next batch */
            reconnecting(k, err.msg);
        }
    }
    for (size_t i = 0; i < n; i++)
        produce(k, ds[i]);
}

static void kafka_stop(void *ctx)
{
    struct out_kafka *k = ctx;
    producer_destroy(k, STOP_FLUSH_MS);
}

static void kafka_destroy(void *ctx)
{
    struct out_kafka *k = ctx;
    producer_destroy(k, 0);
    kafka_link_cleanup(&k->link);
}

const struct pb_output_plugin pb_out_kafka = {
    .name = "kafka",
    .fields = kafka_fields,
    .ctx_size = sizeof(struct out_kafka),
    .default_concurrency = 1000,
    .workers = 1,
    .init = kafka_init,
    .start = kafka_start,
    .deliver_batch = kafka_deliver_batch,
    .stop = kafka_stop,
    .destroy = kafka_destroy,
};
