/* mqtt.c - the `mqtt` input: a subscriber with QoS 1 on a persistent
 * session, acknowledging each message (PUBACK) only after it is committed.
 *
 * Why a client of our own and not libmosquitto: libmosquitto 2.0 sends the
 * PUBACK of a QoS 1 message itself, from its read path, as soon as the
 * on_message callback returns, and has no way to hold it back (no manual
 * acknowledgement in mosquitto.h). Our commit is asynchronous, so the PUBACK
 * would precede it and a crash in between would lose the message. This
 * input speaks MQTT 3.1.1 (or 5) over a socket on its own loop: CONNECT
 * with clean session 0, SUBSCRIBE, PUBLISH in, PUBACK written from the
 * submit callback, PINGREQ keep-alive, reconnect with backoff, TLS through
 * OpenSSL. The codec is mqtt_codec.c, the connection mqtt_common.c.
 *
 * Why one file: what is left is one session's state machine - what was
 * read, submitted and acknowledged, the packet ids the broker may resend,
 * the subscriptions the session holds, the reconnect - and every part reads
 * and changes that state on the input's one thread; split, the same struct
 * would be shared by several files with no boundary between them.
 *
 * Delivery: at least once. A message is acknowledged after its commit
 * (stored, duplicate or dead alike); a failed commit acknowledges nothing
 * and reconnects, so the broker sends the unacknowledged messages again.
 * MQTT 3.1.1 gives a message no identity that outlives its acknowledgement
 * (packet ids are reused), so there is no idempotency key by default:
 *  - a message committed while the connection was lost (so never
 *    acknowledged) is recognised when the broker resends it on the same
 *    session (DUP set, same packet id, same topic and payload: the broker
 *    cannot reuse a packet id we never acknowledged) and is acknowledged
 *    without being stored again - within this process's life;
 *  - after a crash between a commit and its PUBACK the resent message is
 *    stored again ($meta.dup is true): a repeat, never a loss;
 *  - `key: JQ` takes an idempotency key from the message (an event id the
 *    publisher puts in the payload), which drops such repeats too.
 *
 * Subscriptions live in the broker's session. They are sent again after a
 * reconnect only when the session is new or the topics changed (the set
 * last subscribed is a checkpoint), because a SUBSCRIBE repeated in MQTT
 * 3.1.1 makes the broker resend every retained message; topics removed from
 * the configuration are unsubscribed.
 *
 * Thread model: PB_INPUT_OWN_THREAD. Everything runs on the input's loop
 * thread: start, stop, pause, resume, the watch on the socket, the timers
 * and the submit callbacks. Connecting blocks that thread (DNS, TCP, TLS,
 * CONNACK within connect_timeout), which is why it has one of its own. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/sha.h>

#include "mqtt_common.h"
#include "patchbay/pb_jq.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

#define SUBS_MAX 64                /* topic filters per input */
#define READ_MAX (8 * 1024 * 1024) /* bytes read ahead of parsing */
#define STABLE_MS 5000             /* a connection up this long resets the backoff */
#define STOP_FLUSH_MS 2000         /* writing PUBACKs and DISCONNECT once stopping */
#define SUBS_CKPT "subscriptions"

/* What a packet id in m->ids stands for. */
enum {
    SLOT_SUBMITTED = 1, /* its message is being committed (ptr: the batch) */
    SLOT_COMMITTED,     /* committed, never acknowledged: the connection went away */
};

/* Messages parsed from conn.in and not yet submitted. */
struct pending {
    size_t n;
    struct pb_item items[PB_SUBMIT_MAX];
    uint16_t pids[PB_SUBMIT_MAX];
    uint64_t hashes[PB_SUBMIT_MAX];
    size_t off[PB_SUBMIT_MAX], size[PB_SUBMIT_MAX]; /* its packet's bytes in conn.in */
    char *meta[PB_SUBMIT_MAX];
    char keys[PB_SUBMIT_MAX][PB_ITEM_KEY_MAX + 1];
    char why[PB_SUBMIT_MAX][200];
};

struct in_mqtt;

/* One submit: the packet ids to acknowledge once it is committed. */
struct batch {
    struct in_mqtt *m;
    size_t n;
    int64_t read_us; /* when its first message was read */
    uint16_t pids[]; /* 0 for QoS 0 messages */
};

struct in_mqtt {
    /* options */
    struct pb_mqtt_conf conf;
    struct pb_strlist topics;
    int64_t qos;
    char *client_id;
    bool clean_session;
    int format; /* 0 json, 1 raw */
    char *key;
    int64_t key_window_ms;
    int64_t max_inflight;
    uint64_t max_message;
    /* prepared by init */
    struct pb_jq *keyq;
    char *subs_key; /* what SUBS_CKPT holds when these topics are subscribed */
    char pipeline[128];
    const struct pb_allowlist *allow;
    /* run time: the input's loop thread */
    struct pb_input *in;
    SSL_CTX *ssl_ctx;
    struct pb_mqtt_conn conn;
    struct pb_loop_watch *watch;
    struct pb_loop_timer *t_reconnect, *t_keepalive, *t_retry;
    bool connected;
    bool paused; /* back-pressure from the core */
    bool held;   /* conn.in holds messages a full submit refused */
    bool stopping;
    uint32_t gen; /* connection generation (never 0) */
    size_t outstanding;
    struct pb_mqtt_idmap ids;
    struct pending *pd; /* messages parsed and not yet submitted */
    int64_t backoff_ms;
    int64_t up_since_ms, last_write_ms, ping_sent_ms;
    bool ping_out;
    int64_t keepalive_ms;     /* as agreed with the broker */
    uint16_t next_pid;        /* for SUBSCRIBE and UNSUBSCRIBE */
    uint16_t sub_pid;         /* the SUBSCRIBE waiting for its SUBACK, 0: none */
    uint16_t unsub_pid;       /* the UNSUBSCRIBE waiting for its UNSUBACK, 0: none */
    size_t sub_idx[SUBS_MAX]; /* the topics that SUBSCRIBE carries */
    size_t nsub;
    bool subs_dirty;  /* the checkpoint is written once both are answered */
    size_t skip_left; /* bytes of a message larger than max_message still to discard */
    char why[300];    /* why a connection is given up */
};

static const char *const formats[] = {"json", "raw", NULL};

static const struct pb_field mqtt_fields[] = {
    PB_MQTT_CONF_FIELDS(struct in_mqtt, conf),
    {.name = "topics",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct in_mqtt, topics),
     .flags = PB_FIELD_REQUIRED,
     .doc = "topic filters to subscribe to (+ and # wildcards)"},
    {.name = "qos",
     .type = PB_F_INT,
     .offset = offsetof(struct in_mqtt, qos),
     .def = "1",
     .min = 0,
     .max = 1,
     .doc = "1: at least once (acknowledged after commit); 0: at most once"},
    {.name = "client_id",
     .type = PB_F_STR,
     .offset = offsetof(struct in_mqtt, client_id),
     .doc = "the session's client id (default patchbay-<pipeline>); keep it stable"},
    {.name = "clean_session",
     .type = PB_F_BOOL,
     .offset = offsetof(struct in_mqtt, clean_session),
     .def = "false",
     .doc = "true: the broker forgets the session (and what is unacknowledged) on disconnect"},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_mqtt, format),
     .choices = formats,
     .def = "json",
     .doc = "json (invalid JSON is dead-lettered) or raw (any bytes)"},
    {.name = "key",
     .type = PB_F_STR,
     .offset = offsetof(struct in_mqtt, key),
     .doc = "jq: the message's idempotency key (e.g. .event_id); none by default"},
    {.name = "key_window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_mqtt, key_window_ms),
     .def = "24h",
     .doc = "how long a key is remembered"},
    {.name = "max_inflight",
     .type = PB_F_INT,
     .offset = offsetof(struct in_mqtt, max_inflight),
     .def = "1000",
     .min = 1,
     .max = 65535,
     .doc = "MQTT 5: unacknowledged messages the broker may send (Receive Maximum)"},
    {.name = "max_message",
     .type = PB_F_SIZE,
     .offset = offsetof(struct in_mqtt, max_message),
     .def = "16MiB",
     .doc = "largest message taken; a larger one breaks the connection"},
    {0},
};

/* ---- init --------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "<client id>\n<qos>\n<filter>\n..." with the filters sorted. */
static char *make_subs_key(const struct in_mqtt *m)
{
    const char *sorted[SUBS_MAX];
    size_t len = strlen(m->client_id) + 8;
    for (size_t i = 0; i < m->topics.n; i++) {
        sorted[i] = m->topics.items[i];
        len += strlen(sorted[i]) + 1;
    }
    qsort(sorted, m->topics.n, sizeof(sorted[0]), cmp_str);
    char *k = malloc(len);
    if (!k)
        return NULL;
    size_t o = (size_t)snprintf(k, len, "%s\n%d\n", m->client_id, (int)m->qos);
    for (size_t i = 0; i < m->topics.n; i++)
        o += (size_t)snprintf(k + o, len - o, "%s\n", sorted[i]);
    return k;
}

static int mqtt_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_mqtt *m = ctx;
    int rc = pb_mqtt_conf_prepare(&m->conf, err);
    if (rc)
        return rc;
    if (m->topics.n == 0 || m->topics.n > SUBS_MAX)
        return pb_err_set(err, PB_ECONFIG, "topics: 1 to %d topic filters", SUBS_MAX);
    for (size_t i = 0; i < m->topics.n; i++) {
        if (!pb_mqtt_topic_filter_ok(m->topics.items[i]))
            return pb_err_set(err, PB_ECONFIG,
                              "topics: \"%s\" is not a topic filter (+ fills a whole level, "
                              "# only the last one)",
                              m->topics.items[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(m->topics.items[i], m->topics.items[j]) == 0)
                return pb_err_set(err, PB_ECONFIG, "topics: \"%s\" is listed twice",
                                  m->topics.items[i]);
    }
    if (!m->client_id) {
        size_t n = strlen(env->pipeline) + 10;
        m->client_id = malloc(n); /* freed by pb_conf_free with the other fields */
        if (!m->client_id)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
        snprintf(m->client_id, n, "patchbay-%s", env->pipeline);
    }
    size_t idl = strlen(m->client_id);
    if (idl == 0 || idl > 65535 || !pb_utf8_valid(m->client_id, idl) ||
        memchr(m->client_id, 0, idl))
        return pb_err_set(err, PB_ECONFIG, "client_id must be 1-65535 bytes of UTF-8");
    if (m->max_message < 1024 || m->max_message > PB_MQTT_MAX_REMAINING)
        return pb_err_set(err, PB_ECONFIG, "max_message must be between 1KiB and 256MiB");
    if (m->key) {
        m->keyq = pb_jq_compile(m->key, err);
        if (!m->keyq)
            return err->code ? err->code : PB_EJQ;
    }
    m->subs_key = make_subs_key(m);
    if (!m->subs_key)
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    snprintf(m->pipeline, sizeof(m->pipeline), "%s", env->pipeline);
    m->allow = env->allow;
    env->raw = m->format == 1;
    env->idempotency_window_ms = m->keyq ? m->key_window_ms : 0;
    pb_mqtt_conn_init(&m->conn);
    return 0;
}

/* ---- writing ------------------------------------------------------------------------ */

static void conn_lost(struct in_mqtt *m, const char *why);

static void update_watch(struct in_mqtt *m)
{
    if (m->watch)
        pb_loop_watch_modify(m->watch,
                             pb_mqtt_conn_events(&m->conn, !m->paused && !m->held && !m->stopping));
}

/* Write what is queued; 0, or the connection is lost. Once stopping (no
 * watch any more) wait for the socket a little. */
static int flush(struct in_mqtt *m)
{
    if (!m->connected)
        return PB_ENET;
    m->last_write_ms = pb_mono_us() / 1000;
    int rc = m->stopping ? pb_mqtt_conn_flush_wait(&m->conn, STOP_FLUSH_MS)
                         : pb_mqtt_conn_flush(&m->conn);
    if (rc < 0) {
        char why[300];
        snprintf(why, sizeof(why), "writing to the broker: %s", m->conn.err);
        conn_lost(m, why);
        return rc;
    }
    update_watch(m);
    return 0;
}

static void close_politely(struct in_mqtt *m)
{
    if (m->connected && pb_mqtt_put_disconnect(&m->conn.out, m->conf.version) == 0)
        pb_mqtt_conn_flush_wait(&m->conn, STOP_FLUSH_MS);
    pb_mqtt_conn_close(&m->conn);
    m->connected = false;
}

/* ---- committed: acknowledge --------------------------------------------------------- */

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct batch *b = arg;
    struct in_mqtt *m = b->m;
    size_t acks = 0;
    (void)res;
    (void)n;
    m->outstanding--;
    for (size_t i = 0; i < b->n; i++) {
        if (!b->pids[i])
            continue;
        struct pb_mqtt_slot *s = pb_mqtt_idmap_get(&m->ids, b->pids[i]);
        if (!s || s->state != SLOT_SUBMITTED || s->ptr != b)
            continue; /* the broker gave this packet id to another message since */
        if (status != 0 || s->gen == 0) {
            /* Not committed: the broker sends it again after we reconnect.
             * Or its session is gone: nothing to acknowledge any more. */
            pb_mqtt_idmap_del(&m->ids, s);
        } else if (s->gen == m->gen && m->connected) {
            uint16_t pid = s->id;
            pb_mqtt_idmap_del(&m->ids, s);
            if (pb_mqtt_put_puback(&m->conn.out, m->conf.version, pid) == 0)
                acks++;
        } else {
            s->state = SLOT_COMMITTED;
            s->ptr = NULL;
        }
    }
    if (status == 0) {
        pb_input_observe_latency(m->in, pb_mono_us() - b->read_us);
    } else {
        pb_input_count_nacked(m->in, b->n);
        PB_WARN("mqtt: commit failed, reconnecting so the broker sends the messages again "
                "pipeline=%s count=%zu error=\"%s\"",
                m->pipeline, b->n, pb_strerror(status));
    }
    free(b);
    if (acks && m->connected)
        flush(m);
    if (status != 0 && m->connected && !m->stopping)
        conn_lost(m, "a commit failed");
    if (m->stopping && m->outstanding == 0)
        close_politely(m);
}

/* ---- reading ------------------------------------------------------------------------ */

/* A growable text buffer for $meta. */
struct sb {
    char *p;
    size_t len, cap;
    bool failed;
};

static void sb_put(struct sb *s, const void *p, size_t n)
{
    if (s->failed)
        return;
    if (s->cap - s->len < n + 1) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap - s->len < n + 1)
            cap *= 2;
        char *np = realloc(s->p, cap);
        if (!np) {
            s->failed = true;
            return;
        }
        s->p = np;
        s->cap = cap;
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = 0;
}

static void sb_str(struct sb *s, const char *t)
{
    sb_put(s, t, strlen(t));
}

/* A JSON string of UTF-8 bytes. */
static void sb_json(struct sb *s, const uint8_t *t, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    sb_put(s, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = t[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_put(s, t + run, i - run);
        run = i + 1;
        char esc[7] = {'\\', (char)c, 0};
        if (c < 0x20) {
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            esc[6] = 0;
        }
        sb_str(s, esc);
    }
    sb_put(s, t + run, n - run);
    sb_put(s, "\"", 1);
}

static bool utf8_ok(const uint8_t *t, size_t n)
{
    return pb_utf8_valid((const char *)t, n) && !memchr(t, 0, n);
}

/* MQTT 5 properties worth routing on: content type, response topic and the
 * user properties as headers (a name given more than once: an array). */
static void meta_props(struct sb *s, const struct pb_mqtt_publish *p)
{
    struct pb_mqtt_prop prop, other;
    size_t pos = 0;
    bool any_user = false;
    while (pb_mqtt_prop_next(p->props, p->props_len, &pos, &prop) == 1) {
        if (prop.id == PB_MQTT_PROP_CONTENT_TYPE && utf8_ok(prop.s, prop.slen)) {
            sb_str(s, ",\"content_type\":");
            sb_json(s, prop.s, prop.slen);
        } else if (prop.id == PB_MQTT_PROP_RESPONSE_TOPIC && utf8_ok(prop.s, prop.slen)) {
            sb_str(s, ",\"response_topic\":");
            sb_json(s, prop.s, prop.slen);
        } else if (prop.id == PB_MQTT_PROP_MESSAGE_EXPIRY) {
            char num[32];
            snprintf(num, sizeof(num), ",\"message_expiry\":%u", (unsigned)prop.num);
            sb_str(s, num);
        } else if (prop.id == PB_MQTT_PROP_USER) {
            any_user = true;
        }
    }
    if (!any_user)
        return;
    sb_str(s, ",\"headers\":{");
    bool first = true;
    pos = 0;
    size_t at = 0;
    while (pb_mqtt_prop_next(p->props, p->props_len, &pos, &prop) == 1) {
        size_t this_at = at;
        at = pos;
        if (prop.id != PB_MQTT_PROP_USER || !utf8_ok(prop.s, prop.slen) ||
            !utf8_ok(prop.s2, prop.s2len))
            continue;
        /* Only at a name's first occurrence: count its values. */
        size_t q = 0, count = 0;
        bool seen_before = false;
        while (pb_mqtt_prop_next(p->props, p->props_len, &q, &other) == 1) {
            if (other.id != PB_MQTT_PROP_USER || other.slen != prop.slen ||
                memcmp(other.s, prop.s, prop.slen) != 0 || !utf8_ok(other.s2, other.s2len))
                continue;
            if (q <= this_at)
                seen_before = true;
            count++;
        }
        if (seen_before)
            continue;
        if (!first)
            sb_put(s, ",", 1);
        first = false;
        sb_json(s, prop.s, prop.slen);
        sb_put(s, ":", 1);
        if (count == 1) {
            sb_json(s, prop.s2, prop.s2len);
            continue;
        }
        sb_put(s, "[", 1);
        q = 0;
        bool f2 = true;
        while (pb_mqtt_prop_next(p->props, p->props_len, &q, &other) == 1) {
            if (other.id != PB_MQTT_PROP_USER || other.slen != prop.slen ||
                memcmp(other.s, prop.s, prop.slen) != 0 || !utf8_ok(other.s2, other.s2len))
                continue;
            if (!f2)
                sb_put(s, ",", 1);
            f2 = false;
            sb_json(s, other.s2, other.s2len);
        }
        sb_put(s, "]", 1);
    }
    sb_put(s, "}", 1);
}

/* $meta of one message: {"topic":..,"qos":..,"retain":..,"dup":..,"packet_id":..}. */
static void build_meta(struct sb *s, const struct pb_mqtt_publish *p, bool topic_ok, int version)
{
    char num[96];
    sb_put(s, "{", 1);
    if (topic_ok) {
        sb_str(s, "\"topic\":");
        sb_json(s, p->topic, p->topic_len);
        sb_put(s, ",", 1);
    }
    snprintf(num, sizeof(num), "\"qos\":%d,\"retain\":%s,\"dup\":%s,\"packet_id\":%u", p->qos,
             p->retain ? "true" : "false", p->dup ? "true" : "false", (unsigned)p->packet_id);
    sb_str(s, num);
    if (version == PB_MQTT_V5)
        meta_props(s, p);
    sb_put(s, "}", 1);
}

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t message_hash(const struct pb_mqtt_publish *p)
{
    uint64_t h = fnv1a(0xcbf29ce484222325ULL, p->topic, p->topic_len);
    h = fnv1a(h, (const uint8_t *)"\0", 1);
    return fnv1a(h, p->payload, p->payload_len);
}

/* The key program on one message: 0 with key[] set (or empty: no key), or
 * a reason to dead-letter it in why[]. */
static void run_key(struct in_mqtt *m, const struct pb_mqtt_publish *p, const char *meta,
                    size_t meta_len, char *key, size_t keylen, char *why, size_t whylen)
{
    struct pb_err err = {0};
    jv in, mv, out[1];
    size_t nout = 0;
    key[0] = 0;
    if (m->format == 0) {
        if (pb_jq_parse((const char *)p->payload, p->payload_len, &in, &err) != 0) {
            snprintf(why, whylen, "key: %.180s", err.msg);
            return;
        }
    } else {
        in = jv_string_sized((const char *)p->payload, (int)p->payload_len);
    }
    mv = jv_parse_sized(meta, (int)meta_len);
    if (!jv_is_valid(mv)) {
        jv_free(mv);
        mv = jv_null();
    }
    if (pb_jq_run_meta(m->keyq, in, mv, out, 1, &nout, &err) != 0) {
        snprintf(why, whylen, "key: %.180s", err.msg);
        return;
    }
    if (nout == 0)
        return;
    jv v = out[0];
    jv_kind k = jv_get_kind(v);
    if (k == JV_KIND_NULL) {
        jv_free(v);
        return;
    }
    jv text = k == JV_KIND_STRING ? v : k == JV_KIND_NUMBER ? jv_dump_string(v, 0) : jv_invalid();
    if (!jv_is_valid(text)) {
        if (k != JV_KIND_NUMBER)
            jv_free(v);
        jv_free(text);
        snprintf(why, whylen, "key: the program must yield a string or a number, not %s",
                 jv_kind_name(k));
        return;
    }
    const char *t = jv_string_value(text);
    size_t tl = (size_t)jv_string_length_bytes(jv_copy(text));
    bool visible = tl > 0;
    for (size_t i = 0; visible && i < tl; i++)
        visible = (unsigned char)t[i] > 0x20 && t[i] != 0x7f;
    if (tl > 0 && tl < keylen && visible) {
        memcpy(key, t, tl);
        key[tl] = 0;
    } else if (tl > 0) {
        /* Long or with spaces: its digest is the key. */
        unsigned char md[SHA256_DIGEST_LENGTH];
        SHA256((const unsigned char *)t, tl, md);
        size_t o = (size_t)snprintf(key, keylen, "sha256:");
        for (int i = 0; i < SHA256_DIGEST_LENGTH && o + 2 < keylen; i++)
            o += (size_t)snprintf(key + o, keylen - o, "%02x", md[i]);
    }
    jv_free(text);
}

static void pending_clear(struct pending *pd)
{
    for (size_t i = 0; i < pd->n; i++)
        free(pd->meta[i]);
    pd->n = 0;
}

/* Submit what is pending: 0 (taken or nothing to take), or PB_EFULL /
 * PB_ENOMEM (kept: the caller holds the bytes), or PB_ESHUTDOWN. */
static int submit_pending(struct in_mqtt *m, struct pending *pd, int64_t read_us)
{
    if (pd->n == 0)
        return 0;
    struct batch *b = malloc(sizeof(*b) + pd->n * sizeof(b->pids[0]));
    if (!b)
        return PB_ENOMEM;
    b->m = m;
    b->n = pd->n;
    b->read_us = read_us;
    memcpy(b->pids, pd->pids, pd->n * sizeof(b->pids[0]));
    int rc = pb_input_submit(m->in, pd->items, pd->n, NULL, 0, submit_cb, b);
    if (rc != 0) {
        free(b);
        return rc;
    }
    m->outstanding++;
    for (size_t i = 0; i < pd->n; i++) {
        if (!pd->pids[i])
            continue;
        struct pb_mqtt_slot *s = pb_mqtt_idmap_put(&m->ids, pd->pids[i]);
        if (!s)
            continue; /* not tracked: acknowledged never; the broker resends it later */
        s->state = SLOT_SUBMITTED;
        s->gen = m->gen;
        s->tag = pd->hashes[i];
        s->ptr = b;
    }
    return 0;
}

/* One PUBLISH: acknowledged at once (a resend of a committed one), or
 * added to pd. 0, or PB_ENOMEM. */
static int take_publish(struct in_mqtt *m, struct pending *pd, const struct pb_mqtt_publish *p,
                        size_t off, size_t size)
{
    uint64_t h = message_hash(p);
    if (p->qos == 1) {
        struct pb_mqtt_slot *s = pb_mqtt_idmap_get(&m->ids, p->packet_id);
        if (s && p->dup && s->tag == h) {
            if (s->state == SLOT_COMMITTED) {
                /* Committed on a connection that went away: acknowledge now. */
                uint16_t pid = s->id;
                pb_mqtt_idmap_del(&m->ids, s);
                return pb_mqtt_put_puback(&m->conn.out, m->conf.version, pid);
            }
            s->gen = m->gen; /* being committed: acknowledged on this connection */
            return 0;
        }
        if (s) {
            /* The broker reused the id: what it stood for was acknowledged. */
            pb_mqtt_idmap_del(&m->ids, s);
        }
    }
    size_t i = pd->n;
    bool topic_ok = p->topic_len > 0 && pb_mqtt_topic_name_ok((const char *)p->topic, p->topic_len);
    struct sb meta = {0};
    build_meta(&meta, p, topic_ok, m->conf.version);
    if (meta.failed) {
        free(meta.p);
        return PB_ENOMEM;
    }
    pd->meta[i] = meta.p;
    pd->keys[i][0] = 0;
    pd->why[i][0] = 0;
    pd->items[i] = (struct pb_item){
        .body = p->payload,
        .len = p->payload_len,
        .content_type = m->format == 0 ? "application/json" : "application/octet-stream",
        .meta = meta.p,
        .meta_len = meta.len,
    };
    if (!topic_ok) {
        snprintf(pd->why[i], sizeof(pd->why[i]),
                 "the topic is not a valid MQTT topic name (%zu bytes, not UTF-8 or with a "
                 "wildcard)",
                 p->topic_len);
    } else if (m->format == 0) {
        struct pb_json_check chk = {0};
        if (pb_json_validate((const char *)p->payload, p->payload_len, &chk) != 0)
            snprintf(pd->why[i], sizeof(pd->why[i]), "invalid JSON: %s at byte %zu",
                     chk.err_reason ? chk.err_reason : "malformed", chk.err_offset);
    }
    if (!pd->why[i][0] && m->keyq)
        run_key(m, p, meta.p, meta.len, pd->keys[i], sizeof(pd->keys[i]), pd->why[i],
                sizeof(pd->why[i]));
    if (pd->why[i][0])
        pd->items[i].dead_reason = pd->why[i];
    if (pd->keys[i][0])
        pd->items[i].key = pd->keys[i];
    pd->pids[i] = p->qos == 1 ? p->packet_id : 0;
    pd->hashes[i] = h;
    pd->off[i] = off;
    pd->size[i] = size;
    pd->n++;
    return 0;
}

/* The head of a PUBLISH larger than max_message: flags, topic and packet
 * id into p, its whole size into *total. 1, 0 when the head has not all
 * arrived, PB_EPARSE. */
static int oversize_head(const uint8_t *b, size_t len, struct pb_mqtt_publish *p, size_t *total)
{
    size_t rem = 0, mult = 1, i = 1;
    for (;;) {
        if (i >= len)
            return 0;
        uint8_t c = b[i++];
        rem += (size_t)(c & 127) * mult;
        if (!(c & 128))
            break;
        if (i == 5)
            return PB_EPARSE;
        mult *= 128;
    }
    *p = (struct pb_mqtt_publish){.qos = (b[0] >> 1) & 3, .dup = b[0] & 8, .retain = b[0] & 1};
    *total = i + rem;
    if ((b[0] >> 4) != PB_MQTT_PUBLISH || p->qos > 1)
        return PB_EPARSE;
    if (len - i < 2)
        return 0;
    size_t tl = (size_t)(b[i] << 8 | b[i + 1]);
    size_t head = 2 + tl + (p->qos ? 2 : 0);
    if (head > rem)
        return PB_EPARSE;
    if (len - i < head)
        return 0;
    p->topic = b + i + 2;
    p->topic_len = tl;
    if (p->qos && (p->packet_id = (uint16_t)(b[i + 2 + tl] << 8 | b[i + 3 + tl])) == 0)
        return PB_EPARSE;
    p->payload_len = rem - head;
    return 1;
}

/* A message larger than max_message: into the dead-letter queue (its
 * $meta, no body) and acknowledged once committed, so the broker does not
 * send it for ever. Submitted alone; 0 or the submit's error. */
static int take_oversize(struct in_mqtt *m, struct pending *pd, const struct pb_mqtt_publish *p,
                         size_t total, int64_t read_us)
{
    bool topic_ok = p->topic_len > 0 && pb_mqtt_topic_name_ok((const char *)p->topic, p->topic_len);
    struct sb meta = {0};
    build_meta(&meta, p, topic_ok, PB_MQTT_V311); /* its properties did not all arrive */
    if (meta.failed) {
        free(meta.p);
        return PB_ENOMEM;
    }
    if (p->qos == 1) {
        struct pb_mqtt_slot *s = pb_mqtt_idmap_get(&m->ids, p->packet_id);
        if (s)
            pb_mqtt_idmap_del(&m->ids, s);
    }
    snprintf(pd->why[0], sizeof(pd->why[0]),
             "the message (%zu bytes) is larger than max_message (%llu bytes)", total,
             (unsigned long long)m->max_message);
    pd->meta[0] = meta.p;
    pd->items[0] = (struct pb_item){
        .body = "", .len = 0, .meta = meta.p, .meta_len = meta.len, .dead_reason = pd->why[0]};
    struct pb_mqtt_publish head = *p; /* the payload is not here: the topic alone */
    head.payload = NULL;
    head.payload_len = 0;
    pd->pids[0] = p->qos == 1 ? p->packet_id : 0;
    pd->hashes[0] = message_hash(&head);
    pd->n = 1;
    int rc = submit_pending(m, pd, read_us);
    pending_clear(pd);
    if (rc == 0)
        PB_WARN("mqtt: message larger than max_message dead-lettered pipeline=%s bytes=%zu",
                m->pipeline, total);
    return rc;
}

static const char *subscribed(struct in_mqtt *m, const uint8_t *codes, size_t n);
static void subs_settled(struct in_mqtt *m);

/* Parse what conn.in holds and act on it. Stops at a partial packet, at a
 * full submit (holding the messages it refused) or at a lost connection. */
static void process_input(struct in_mqtt *m)
{
    struct pending *pd = m->pd;
    int64_t read_us = pb_mono_us();
    size_t off = 0; /* bytes parsed */
    size_t received = 0;
    const char *lost = NULL;
    char why[200];
    int rc = 0;
    pd->n = 0;
    if (m->skip_left && m->conn.in_len) {
        size_t d = m->skip_left < m->conn.in_len ? m->skip_left : m->conn.in_len;
        pb_mqtt_conn_consume(&m->conn, d);
        m->skip_left -= d;
    }
    while (m->connected && !m->stopping && !m->skip_left) {
        struct pb_mqtt_packet pk;
        long size = pb_mqtt_frame(m->conn.in + off, m->conn.in_len - off, m->max_message + 64, &pk);
        if (size == 0)
            break;
        if (size == PB_ETOOBIG) {
            /* What came before goes first; then the message, dead, alone. */
            struct pb_mqtt_publish p;
            size_t total;
            int r = oversize_head(m->conn.in + off, m->conn.in_len - off, &p, &total);
            if (r == 0)
                break; /* its head has not arrived whole yet */
            if (r < 0) {
                lost = "the broker sent a malformed packet";
                break;
            }
            rc = submit_pending(m, pd, read_us);
            if (rc)
                break;
            pending_clear(pd);
            received++;
            rc = take_oversize(m, pd, &p, total, read_us);
            if (rc)
                break;
            size_t have = m->conn.in_len - off;
            if (total <= have) {
                off += total;
            } else {
                m->skip_left = total - have;
                off = m->conn.in_len;
            }
            continue;
        }
        if (size < 0) {
            lost = "the broker sent a malformed packet";
            break;
        }
        if (pk.type == PB_MQTT_PUBLISH) {
            struct pb_mqtt_publish p;
            if (pb_mqtt_parse_publish(&pk, m->conf.version, &p) != 0 || p.qos > 1 ||
                p.topic_alias) {
                lost = p.qos > 1 ? "the broker sent QoS 2, which was not subscribed"
                                 : "the broker sent a malformed PUBLISH";
                break;
            }
            received++;
            rc = take_publish(m, pd, &p, off, (size_t)size);
            if (rc)
                break;
            off += (size_t)size;
            if (pd->n == PB_SUBMIT_MAX) {
                rc = submit_pending(m, pd, read_us);
                if (rc)
                    break;
                pending_clear(pd);
            }
            continue;
        }
        uint16_t pid;
        uint8_t reason, codes[SUBS_MAX];
        size_t ncodes;
        switch (pk.type) {
        case PB_MQTT_PINGRESP:
            m->ping_out = false;
            break;
        case PB_MQTT_SUBACK:
            if (pb_mqtt_parse_suback(&pk, m->conf.version, &pid, codes, SUBS_MAX, &ncodes)) {
                lost = "the broker sent a malformed SUBACK";
            } else if (pid == m->sub_pid) {
                m->sub_pid = 0;
                lost = subscribed(m, codes, ncodes < SUBS_MAX ? ncodes : SUBS_MAX);
            }
            break;
        case PB_MQTT_UNSUBACK:
            if (pb_mqtt_parse_suback(&pk, m->conf.version, &pid, codes, SUBS_MAX, &ncodes)) {
                lost = "the broker sent a malformed UNSUBACK";
            } else if (pid == m->unsub_pid) {
                m->unsub_pid = 0;
                subs_settled(m);
            }
            break;
        case PB_MQTT_DISCONNECT:
            pb_mqtt_parse_disconnect(&pk, m->conf.version, &reason);
            snprintf(why, sizeof(why), "the broker disconnected: %s",
                     pb_mqtt_reason_text(m->conf.version, reason));
            lost = why;
            break;
        case PB_MQTT_PUBACK:
        case PB_MQTT_PUBREC:
        case PB_MQTT_PUBCOMP:
            break; /* acknowledgements of nothing we sent: ignored */
        default:
            snprintf(why, sizeof(why), "the broker sent an unexpected packet (type %d)", pk.type);
            lost = why;
        }
        if (lost || !m->connected)
            break;
        off += (size_t)size;
    }
    if (received)
        pb_input_count_received(m->in, received);
    /* What came before a broken packet is taken all the same. */
    if (!rc && m->connected)
        rc = submit_pending(m, pd, read_us);
    if (rc == 0 || rc == PB_ESHUTDOWN || lost) {
        pending_clear(pd);
        if (m->connected && !lost)
            pb_mqtt_conn_consume(&m->conn, off);
    } else {
        /* Keep the refused messages' packets, then what is not parsed yet;
         * the control packets between them were handled. */
        size_t w = 0;
        for (size_t i = 0; i < pd->n; i++) {
            memmove(m->conn.in + w, m->conn.in + pd->off[i], pd->size[i]);
            w += pd->size[i];
        }
        memmove(m->conn.in + w, m->conn.in + off, m->conn.in_len - off);
        m->conn.in_len = w + m->conn.in_len - off;
        PB_DEBUG("mqtt: the core is full, holding messages and reading no more pipeline=%s "
                 "count=%zu error=\"%s\"",
                 m->pipeline, pd->n, pb_strerror(rc));
        pending_clear(pd);
        m->held = true;
        if (rc != PB_EFULL && m->t_retry)
            pb_loop_timer_start(m->t_retry, 1000); /* PB_EFULL: resume comes from the core */
    }
    if (lost) {
        conn_lost(m, lost);
        return;
    }
    if (m->connected && m->conn.out.len)
        flush(m);
    else
        update_watch(m);
}

static void io_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    struct in_mqtt *m = arg;
    (void)w;
    if (events & PB_LOOP_ERROR && (m->paused || m->held)) {
        /* Not reading now, so no read would tell: ask the socket. */
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        char why[200];
        snprintf(why, sizeof(why), "%s", soerr ? strerror(soerr) : "connection closed");
        conn_lost(m, why);
        return;
    }
    if (events & PB_LOOP_WRITE || (events & PB_LOOP_READ && m->conn.write_wants_read)) {
        if (flush(m) != 0)
            return;
    }
    if (!(events & (PB_LOOP_READ | PB_LOOP_ERROR)) || m->paused || m->held || m->stopping)
        return;
    long n = pb_mqtt_conn_read(&m->conn, READ_MAX);
    if (n < 0) {
        char why[300];
        snprintf(why, sizeof(why), "%s", m->conn.err);
        process_input(m); /* what arrived before the end still counts */
        if (m->connected)
            conn_lost(m, why);
        return;
    }
    process_input(m);
    if (m->connected && !m->held && pb_mqtt_conn_read_pending(&m->conn))
        pb_loop_timer_start(m->t_retry, 0); /* TLS holds bytes the socket will not signal */
}

/* ---- the connection ------------------------------------------------------------------ */

static bool listed(char *const *items, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(items[i], s) == 0)
            return true;
    return false;
}

static void subs_ckpt_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct in_mqtt *m = arg;
    (void)status;
    (void)res;
    (void)n;
    m->outstanding--;
    if (m->stopping && m->outstanding == 0)
        close_politely(m);
}

/* Once the broker confirmed every SUBSCRIBE and UNSUBSCRIBE: the session
 * holds these topics. */
static void subs_settled(struct in_mqtt *m)
{
    if (!m->subs_dirty || m->sub_pid || m->unsub_pid)
        return;
    struct pb_checkpoint cp = {.name = SUBS_CKPT, .value = m->subs_key, .len = strlen(m->subs_key)};
    if (pb_input_submit(m->in, NULL, 0, &cp, 1, subs_ckpt_cb, m) == 0) {
        m->subs_dirty = false;
        m->outstanding++;
    } /* else written when the input resumes */
}

static uint16_t take_pid(struct in_mqtt *m)
{
    if (++m->next_pid == 0)
        m->next_pid = 1;
    return m->next_pid;
}

/* After CONNACK: make the session's subscriptions the configured ones,
 * sending only what changed when the session is the one we left. */
static void subscribe(struct in_mqtt *m, bool session_present)
{
    const void *v = NULL;
    size_t len = 0;
    bool have = session_present && pb_input_checkpoint(m->in, SUBS_CKPT, &v, &len) == 0;
    if (have && len == strlen(m->subs_key) && memcmp(v, m->subs_key, len) == 0)
        return; /* the session has exactly these subscriptions */
    char *old[SUBS_MAX];
    size_t nold = 0;
    bool same_qos = false;
    char *copy = have ? strndup(v, len) : NULL;
    if (copy) {
        char *save = NULL, *line = strtok_r(copy, "\n", &save);
        if (line && strcmp(line, m->client_id) == 0) {
            line = strtok_r(NULL, "\n", &save);
            same_qos = line && strtol(line, NULL, 10) == m->qos;
            while ((line = strtok_r(NULL, "\n", &save)) && nold < SUBS_MAX)
                if (pb_mqtt_topic_filter_ok(line))
                    old[nold++] = line;
        }
    }
    /* Topics subscribed before and gone from the configuration: the
     * session would keep them for ever. */
    const char *gone[SUBS_MAX];
    size_t ngone = 0;
    for (size_t i = 0; i < nold; i++)
        if (!listed(m->topics.items, m->topics.n, old[i]))
            gone[ngone++] = old[i];
    if (ngone) {
        m->unsub_pid = take_pid(m);
        if (pb_mqtt_put_unsubscribe(&m->conn.out, m->conf.version, m->unsub_pid, gone, ngone))
            m->unsub_pid = 0;
        else
            PB_INFO("mqtt: unsubscribing from topics no longer configured pipeline=%s count=%zu",
                    m->pipeline, ngone);
    }
    /* Only the new ones: a SUBSCRIBE repeated makes the broker resend
     * retained messages (MQTT 3.1.1; with 5, retain handling 1 says so). */
    m->nsub = 0;
    for (size_t i = 0; i < m->topics.n; i++)
        if (!same_qos || !listed(old, nold, m->topics.items[i]))
            m->sub_idx[m->nsub++] = i;
    if (m->nsub) {
        const char *filters[SUBS_MAX];
        for (size_t i = 0; i < m->nsub; i++)
            filters[i] = m->topics.items[m->sub_idx[i]];
        m->sub_pid = take_pid(m);
        /* MQTT 5: retained messages only for a subscription the session lacked. */
        if (pb_mqtt_put_subscribe(&m->conn.out, m->conf.version, m->sub_pid, filters, m->nsub,
                                  (int)m->qos, 1) != 0)
            m->sub_pid = 0;
    }
    free(copy);
    m->subs_dirty = true;
    subs_settled(m);
}

/* The SUBACK's codes: NULL, or why the connection is given up. */
static const char *subscribed(struct in_mqtt *m, const uint8_t *codes, size_t n)
{
    for (size_t i = 0; i < m->nsub; i++) {
        const char *topic = m->topics.items[m->sub_idx[i]];
        uint8_t c = i < n ? codes[i] : 0x80;
        if (c >= 0x80) {
            char why[400];
            snprintf(why, sizeof(why), "the broker refused the subscription to \"%s\": %s", topic,
                     pb_mqtt_reason_text(m->conf.version, c));
            PB_ERROR("mqtt: subscription refused pipeline=%s topic=\"%s\" reason=\"%s\"",
                     m->pipeline, topic, pb_mqtt_reason_text(m->conf.version, c));
            m->subs_dirty = false;
            return m->why;
        }
        if (c < m->qos)
            PB_WARN("mqtt: the broker granted a lower QoS pipeline=%s topic=\"%s\" qos=%d "
                    "(messages on it are not acknowledged after commit)",
                    m->pipeline, topic, c);
    }
    subs_settled(m);
    return NULL;
}

static void keepalive_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_mqtt *m = arg;
    if (!m->connected || m->stopping || m->keepalive_ms <= 0)
        return;
    int64_t now = pb_mono_us() / 1000;
    bool reading = !m->paused && !m->held;
    if (m->ping_out && reading && now - m->ping_sent_ms > m->keepalive_ms) {
        conn_lost(m, "no answer to PINGREQ within the keep-alive");
        return;
    }
    if (now - m->last_write_ms >= m->keepalive_ms / 2) {
        if (!m->ping_out) {
            m->ping_out = true;
            m->ping_sent_ms = now;
        }
        if (pb_mqtt_put_pingreq(&m->conn.out) == 0 && flush(m) != 0)
            return;
    }
    pb_loop_timer_start(t, m->keepalive_ms / 4 > 250 ? m->keepalive_ms / 4 : 250);
}

/* Block until the broker answered the SUBSCRIBE and UNSUBSCRIBE just
 * queued, within the connect timeout, so that the input says connected only
 * once it is sure to receive. Messages that come first stay in conn.in, in
 * order, for process_input (which meets the SUBACK again there). */
static int await_subscriptions(struct in_mqtt *m, struct pb_err *err)
{
    int64_t deadline = pb_mono_us() / 1000 + m->conf.connect_timeout_ms;
    if (m->conn.out.len && pb_mqtt_conn_flush_wait(&m->conn, m->conf.connect_timeout_ms) != 0)
        return pb_err_set(err, PB_ENET, "%s: sending SUBSCRIBE: %s", m->conf.shown, m->conn.err);
    bool sub_done = !m->sub_pid, unsub_done = !m->unsub_pid;
    size_t off = 0;
    while (!sub_done || !unsub_done) {
        struct pb_mqtt_packet pk;
        long size = pb_mqtt_frame(m->conn.in + off, m->conn.in_len - off, m->max_message + 64, &pk);
        if (size < 0)
            return pb_err_set(err, PB_ENET, "%s sent a malformed packet", m->conf.shown);
        if (size > 0) {
            uint16_t pid;
            uint8_t codes[SUBS_MAX];
            size_t n;
            bool ack = (pk.type == PB_MQTT_SUBACK || pk.type == PB_MQTT_UNSUBACK) &&
                       pb_mqtt_parse_suback(&pk, m->conf.version, &pid, codes, SUBS_MAX, &n) == 0;
            if (ack && pk.type == PB_MQTT_SUBACK && pid == m->sub_pid) {
                sub_done = true;
                for (size_t i = 0; i < m->nsub; i++) {
                    uint8_t c = i < n ? codes[i] : 0x80;
                    if (c >= 0x80)
                        return pb_err_set(err, PB_EDENIED,
                                          "%s refused the subscription to \"%.200s\": %s",
                                          m->conf.shown, m->topics.items[m->sub_idx[i]],
                                          pb_mqtt_reason_text(m->conf.version, c));
                }
            } else if (ack && pk.type == PB_MQTT_UNSUBACK && pid == m->unsub_pid) {
                unsub_done = true;
            }
            off += (size_t)size;
            continue;
        }
        if (m->conn.in_len >= READ_MAX)
            return pb_err_set(err, PB_ENET, "%s: no SUBACK among %d bytes of messages",
                              m->conf.shown, READ_MAX);
        long r = pb_mqtt_conn_read(&m->conn, READ_MAX);
        if (r < 0)
            return pb_err_set(err, PB_ENET, "%s: waiting for SUBACK: %s", m->conf.shown,
                              m->conn.err);
        if (r == 0 && pb_mqtt_conn_wait(&m->conn, true, deadline) != 0)
            return pb_err_set(err, PB_ETIMEOUT, "%s: no SUBACK within %lld ms", m->conf.shown,
                              (long long)m->conf.connect_timeout_ms);
    }
    return 0;
}

static int connect_now(struct in_mqtt *m, struct pb_err *err)
{
    struct pb_mqtt_connect cp = {
        .version = m->conf.version,
        .client_id = m->client_id,
        .clean = m->clean_session,
        .keepalive = (uint16_t)((m->conf.keepalive_ms + 999) / 1000),
        .user = m->conf.user,
        .password = m->conf.password,
        .session_expiry = m->clean_session ? 0 : 0xFFFFFFFFu,
        .receive_max = (uint16_t)m->max_inflight,
        .max_packet_size = 0,
    };
    struct pb_mqtt_connack ack;
    int rc = pb_mqtt_conn_open(&m->conn, &m->conf, m->ssl_ctx, m->allow, &cp, &ack, err);
    if (rc)
        return rc;
    if (++m->gen == 0)
        m->gen = 1;
    m->held = false;
    m->ping_out = false;
    m->sub_pid = m->unsub_pid = 0;
    m->subs_dirty = false;
    m->keepalive_ms =
        ack.server_keepalive ? (int64_t)ack.server_keepalive * 1000 : (int64_t)cp.keepalive * 1000;
    if (!ack.session_present) {
        /* A new session: the broker resends nothing of an old one. */
        for (size_t i = 0; i < m->ids.cap; i++) {
            struct pb_mqtt_slot *s = &m->ids.s[i];
            if (s->used && s->state == SLOT_SUBMITTED)
                s->gen = 0;
        }
        /* Deleting moves entries about: collect the ids first. */
        uint16_t *gone = m->ids.n ? malloc(m->ids.n * sizeof(*gone)) : NULL;
        size_t ngone = 0;
        for (size_t i = 0; gone && i < m->ids.cap; i++)
            if (m->ids.s[i].used && m->ids.s[i].state == SLOT_COMMITTED)
                gone[ngone++] = m->ids.s[i].id;
        for (size_t i = 0; i < ngone; i++)
            pb_mqtt_idmap_del(&m->ids, pb_mqtt_idmap_get(&m->ids, gone[i]));
        free(gone);
        if (m->ids.n && !gone)
            pb_mqtt_idmap_free(&m->ids); /* out of memory: forget them all, safely */
    }
    subscribe(m, ack.session_present);
    rc = await_subscriptions(m, err);
    if (rc == 0) {
        m->watch = pb_loop_watch_add(pb_input_loop(m->in), m->conn.fd, PB_LOOP_READ, io_cb, m);
        if (!m->watch)
            rc = pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    if (rc) {
        pb_mqtt_conn_close(&m->conn);
        return rc;
    }
    m->connected = true;
    m->up_since_ms = m->last_write_ms = pb_mono_us() / 1000;
    PB_INFO("mqtt: connected pipeline=%s url=%s client_id=\"%s\" session_present=%s", m->pipeline,
            m->conf.shown, m->client_id, ack.session_present ? "true" : "false");
    pb_input_set_state(m->in, PB_INPUT_CONNECTED, NULL);
    if (m->keepalive_ms > 0)
        pb_loop_timer_start(m->t_keepalive, m->keepalive_ms / 4 > 250 ? m->keepalive_ms / 4 : 250);
    /* Messages that came with the CONNACK and the SUBACK. */
    process_input(m);
    return 0;
}

static void conn_lost(struct in_mqtt *m, const char *why)
{
    if (!m->connected)
        return;
    pb_loop_watch_remove(m->watch);
    m->watch = NULL;
    pb_mqtt_conn_close(&m->conn);
    m->connected = false;
    m->held = false;
    m->skip_left = 0;
    pb_loop_timer_stop(m->t_keepalive);
    pb_loop_timer_stop(m->t_retry);
    if (m->stopping)
        return;
    int64_t now = pb_mono_us() / 1000;
    if (now - m->up_since_ms >= STABLE_MS)
        m->backoff_ms = 0;
    m->backoff_ms = pb_mqtt_backoff_next(m->backoff_ms);
    char detail[400];
    snprintf(detail, sizeof(detail), "%.150s: %.240s", m->conf.shown, why);
    pb_input_set_state(m->in, PB_INPUT_RECONNECTING, detail);
    pb_loop_timer_start(m->t_reconnect, pb_mqtt_backoff_jitter(m->backoff_ms));
}

static void reconnect_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_mqtt *m = arg;
    struct pb_err err = {0};
    if (m->stopping || m->connected)
        return;
    if (connect_now(m, &err) == 0)
        return;
    m->backoff_ms = pb_mqtt_backoff_next(m->backoff_ms);
    pb_input_set_state(m->in, PB_INPUT_RECONNECTING, err.msg);
    pb_loop_timer_start(t, pb_mqtt_backoff_jitter(m->backoff_ms));
}

static void retry_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_mqtt *m = arg;
    (void)t;
    if (!m->connected || m->stopping || m->paused)
        return;
    m->held = false;
    m->ping_out = false; /* a PINGRESP may wait unread since reading stopped */
    process_input(m);
    update_watch(m);
}

/* ---- the plugin ---------------------------------------------------------------------- */

static void release_loop_things(struct in_mqtt *m)
{
    pb_loop_watch_remove(m->watch);
    m->watch = NULL;
    pb_loop_timer_destroy(m->t_reconnect);
    pb_loop_timer_destroy(m->t_keepalive);
    pb_loop_timer_destroy(m->t_retry);
    m->t_reconnect = m->t_keepalive = m->t_retry = NULL;
}

static int mqtt_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_mqtt *m = ctx;
    m->in = in;
    if (m->conf.use_tls && !m->ssl_ctx) {
        m->ssl_ctx = pb_mqtt_tls_ctx(&m->conf, err);
        if (!m->ssl_ctx)
            return err->code ? err->code : PB_ECONFIG;
    }
    if (!m->pd) {
        m->pd = calloc(1, sizeof(*m->pd));
        if (!m->pd)
            return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    struct pb_loop *l = pb_input_loop(in);
    m->t_reconnect = pb_loop_timer_create(l, reconnect_cb, m);
    m->t_keepalive = pb_loop_timer_create(l, keepalive_cb, m);
    m->t_retry = pb_loop_timer_create(l, retry_cb, m);
    int rc = PB_ENOMEM;
    if (!m->t_reconnect || !m->t_keepalive || !m->t_retry) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        goto fail;
    }
    rc = connect_now(m, err);
    if (rc)
        goto fail;
    return 0;
fail:
    /* start is tried again later: nothing of the loop's may stay behind. */
    if (m->connected) {
        pb_mqtt_conn_close(&m->conn);
        m->connected = false;
    }
    release_loop_things(m);
    return rc;
}

static void mqtt_pause(void *ctx)
{
    struct in_mqtt *m = ctx;
    m->paused = true;
    update_watch(m);
}

static void mqtt_resume(void *ctx)
{
    struct in_mqtt *m = ctx;
    m->paused = false;
    if (!m->connected || m->stopping)
        return;
    subs_settled(m);
    m->ping_out = false; /* a PINGRESP may wait unread since reading stopped */
    if (m->held) {
        m->held = false;
        process_input(m);
    }
    update_watch(m);
}

static void mqtt_stop(void *ctx)
{
    struct in_mqtt *m = ctx;
    m->stopping = true;
    /* The loop goes away after the callbacks of what was submitted: they
     * write their PUBACKs without a watch (flush waits a little). */
    release_loop_things(m);
    if (m->outstanding == 0)
        close_politely(m);
}

static void mqtt_destroy(void *ctx)
{
    struct in_mqtt *m = ctx;
    /* The loop is gone by now: only what is ours is freed. */
    pb_mqtt_conn_close(&m->conn);
    if (m->ssl_ctx)
        SSL_CTX_free(m->ssl_ctx);
    m->ssl_ctx = NULL;
    pb_jq_destroy(m->keyq);
    m->keyq = NULL;
    free(m->subs_key);
    m->subs_key = NULL;
    pb_mqtt_idmap_free(&m->ids);
    free(m->pd);
    m->pd = NULL;
}

const struct pb_input_plugin pb_in_mqtt = {
    .name = "mqtt",
    .fields = mqtt_fields,
    .ctx_size = sizeof(struct in_mqtt),
    .flags = PB_INPUT_OWN_THREAD | PB_INPUT_SINGLETON,
    .init = mqtt_init,
    .start = mqtt_start,
    .stop = mqtt_stop,
    .pause = mqtt_pause,
    .resume = mqtt_resume,
    .destroy = mqtt_destroy,
};
