/* kafka.c - the `kafka` input: a member of a consumer group that commits its
 * offsets only after patchbay has committed what it read.
 *
 *   kafka: { brokers: [kafka-1:9092], topics: [orders], group: patchbay-orders }
 *
 * Offsets are neither stored nor committed by librdkafka on its own
 * (enable.auto.commit and enable.auto.offset.store are off). Messages are
 * taken off the consumer queue in order and submitted in batches; each
 * partition keeps the batches it has in flight in offset order, and once a
 * batch is committed in patchbay the partition's commit offset moves on past
 * every batch before it that is committed too - never past one that is not -
 * and is committed to the group asynchronously. A batch whose commit failed
 * rewinds its partition: a seek back to its first offset, so it is read and
 * submitted again (what followed it and was stored comes back as
 * duplicates of its idempotency key, `<topic>:<partition>:<offset>`).
 *
 * Rebalances: partitions being revoked take nothing more (what was fetched
 * and not yet submitted is dropped); the revocation waits, bounded, for the
 * batches in flight on them, commits the offsets reached, and only then
 * gives them up. Back-pressure (PB_EFULL, pause) pauses fetching on every
 * assigned partition; what was already fetched waits in order until resume.
 *
 * This file takes and submits messages and runs the consumer's life cycle;
 * kafka_group.c keeps the partitions, the commits and the rebalances
 * (kafka_int.h: the state both share).
 *
 * Threads: the input has its own loop thread (PB_INPUT_OWN_THREAD). The
 * consumer queue signals a pipe the loop watches (rd_kafka_queue_io_event_
 * enable), and a tick polls it too; every librdkafka callback that matters
 * (rebalance, offset commit, error, statistics) is served by
 * rd_kafka_consumer_poll on the loop thread, so all state here is that
 * thread's. destroy runs after the loop is gone: it commits the final offsets
 * and leaves the group, each with a deadline. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "kafka_int.h"
#include "kafka_meta.h"
#include "patchbay/pb_json.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_plugin.h"
#include "patchbay/pb_time.h"

static const char *const starts[] = {"earliest", "latest", NULL};
static const char *const formats[] = {"json", "raw", NULL};

static const struct pb_field kafka_fields[] = {
    KAFKA_COMMON_FIELDS(struct in_kafka),
    {.name = "topics",
     .type = PB_F_STRLIST,
     .offset = offsetof(struct in_kafka, topics),
     .flags = PB_FIELD_REQUIRED,
     .doc = "topics to consume (a name starting with ^ is a regular expression)"},
    {.name = "group",
     .type = PB_F_STR,
     .offset = offsetof(struct in_kafka, group),
     .flags = PB_FIELD_REQUIRED,
     .doc = "consumer group id"},
    {.name = "start",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_kafka, start),
     .choices = starts,
     .def = "earliest",
     .doc = "where a group without a committed offset starts"},
    {.name = "format",
     .type = PB_F_ENUM,
     .offset = offsetof(struct in_kafka, format),
     .choices = formats,
     .def = "json",
     .doc = "json (invalid JSON is dead-lettered) or raw (any bytes)"},
    {.name = "batch",
     .type = PB_F_INT,
     .offset = offsetof(struct in_kafka, batch),
     .def = "500",
     .min = 1,
     .max = PB_SUBMIT_MAX,
     .doc = "messages per commit in patchbay"},
    {.name = "session_timeout",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_kafka, session_timeout_ms),
     .def = "45s",
     .doc = "a member silent this long leaves the group (its partitions move)"},
    {.name = "idempotency_window",
     .type = PB_F_DURATION,
     .offset = offsetof(struct in_kafka, idem_window_ms),
     .def = "7d",
     .doc = "how long <topic>:<partition>:<offset> keys are remembered"},
    {.name = "idempotency_header",
     .type = PB_F_STR,
     .offset = offsetof(struct in_kafka, idem_header),
     .doc = "a message header whose value is the idempotency key when present "
            "(idempotency-key: what the kafka output writes)"},
    {0},
};

/* Set by patchbay whatever properties says (name, reason pairs). */
static const char *const reserved[] = {
    "group.id",
    "set it with group",
    "enable.auto.commit",
    "patchbay commits offsets after its own commit",
    "auto.commit.enable",
    "patchbay commits offsets after its own commit",
    "enable.auto.offset.store",
    "patchbay stores offsets after its own commit",
    "auto.offset.reset",
    "set it with start",
    "session.timeout.ms",
    "set it with session_timeout",
    "enable.partition.eof",
    "patchbay does not read partition ends",
    NULL,
};

/* librdkafka defaults patchbay changes; properties may set them. */
static const char *const defaults[] = {
    "queued.max.messages.kbytes", "16384", /* fetched and not yet taken: 16 MiB */
    "queued.min.messages",        "10000", NULL,
};

static void pump(struct in_kafka *k);
static void kafka_pause(void *ctx);

/* ---- submitting ------------------------------------------------------------------------- */

static void submit_cb(void *arg, int status, const struct pb_item_result *res, size_t n)
{
    struct batch *b = arg;
    struct in_kafka *k = b->k;
    (void)res;
    k->inflight--;
    if (status != 0) {
        /* Read again, after a pause that grows while commits keep failing. */
        pb_input_count_nacked(k->in, b->nitems);
        int64_t wait = BACKOFF_MIN_MS << (k->failures < 6 ? k->failures : 6);
        k->failures++;
        k->backoff_until_ms = pb_mono_us() / 1000 + (wait < BACKOFF_MAX_MS ? wait : BACKOFF_MAX_MS);
        kin_fetch_update(k);
        kin_log_error_limited(k, "batch not committed in patchbay (read again)",
                              pb_strerror(status));
    } else {
        k->failures = 0;
        pb_input_observe_latency(k->in, pb_mono_us() - b->oldest_us);
    }
    for (size_t i = 0; i < b->nrefs; i++)
        kt_end(&b->refs[i].p->t, b->refs[i].epoch, b->refs[i].seg, status == 0);
    for (size_t i = 0; i < b->nrefs; i++)
        if (b->refs[i].p->t.epoch == b->refs[i].epoch)
            kin_advance(k, b->refs[i].p);
    free(b);
    if (!k->rk)
        return;
    kin_commit_flush(k);
    if (k->revoking && !kin_revoking_busy(k))
        kin_finish_revoke(k);
}

/* Submit the first n held messages as one batch. 0, or the submit's error
 * (the messages stay held). */
static int submit_some(struct in_kafka *k, size_t n)
{
    struct pb_item *items = calloc(n, sizeof(*items));
    char **metas = calloc(n, sizeof(*metas));
    char(*keys)[PB_ITEM_KEY_MAX + 1] = malloc(n * sizeof(*keys));
    char(*reasons)[KAFKA_REASON_MAX] = malloc(n * sizeof(*reasons));
    struct batch *b = calloc(1, sizeof(*b) + n * sizeof(struct batch_ref));
    int rc = PB_ENOMEM;
    size_t i;

    if (!items || !metas || !keys || !reasons || !b)
        goto out;
    b->k = k;
    b->nitems = n;
    b->oldest_us = k->held[0].at_us;
    for (i = 0; i < n; i++) {
        const struct held *h = &k->held[i];
        const rd_kafka_message_t *m = h->m;
        size_t mlen = 0;
        metas[i] = kafka_message_meta(m, &mlen);
        if (!metas[i])
            goto out;
        kafka_message_key(m, k->idem_header, keys[i], sizeof(keys[0]));
        items[i] = (struct pb_item){
            .body = m->payload ? m->payload : "",
            .len = m->payload ? m->len : 0,
            .content_type = k->format == 1 ? "application/octet-stream" : NULL,
            .meta = metas[i],
            .meta_len = mlen,
            .key = keys[i],
        };
        if (k->format == 0 && kafka_json_invalid(m, reasons[i], sizeof(reasons[0])))
            items[i].dead_reason = reasons[i];
        struct batch_ref *r = NULL;
        for (size_t j = 0; j < b->nrefs && !r; j++)
            if (b->refs[j].p == h->p)
                r = &b->refs[j];
        if (r) {
            r->seg->last = m->offset;
            continue;
        }
        struct kt_seg *s = kt_seg_new(m->offset);
        if (!s)
            goto out;
        b->refs[b->nrefs++] = (struct batch_ref){.p = h->p, .epoch = h->p->t.epoch, .seg = s};
    }
    rc = pb_input_submit(k->in, items, n, NULL, 0, submit_cb, b);
out:
    for (i = 0; metas && i < n; i++)
        free(metas[i]);
    free(metas);
    free(keys);
    free(reasons);
    free(items);
    if (rc != 0) {
        for (i = 0; b && i < b->nrefs; i++)
            free(b->refs[i].seg);
        free(b);
        return rc;
    }
    for (i = 0; i < b->nrefs; i++)
        kt_append(&b->refs[i].p->t, b->refs[i].seg);
    for (i = 0; i < n; i++)
        rd_kafka_message_destroy(k->held[i].m);
    memmove(k->held, k->held + n, (k->nheld - n) * sizeof(*k->held));
    k->nheld -= n;
    k->inflight++;
    return 0;
}

static void submit_held(struct in_kafka *k)
{
    while (k->nheld > 0 && !k->paused && !k->stopped && !kin_backing_off(k)) {
        size_t n = k->nheld < (size_t)k->batch ? k->nheld : (size_t)k->batch;
        int rc = submit_some(k, n);
        if (rc == 0)
            continue;
        if (rc == PB_EFULL) {
            /* The core pauses us too and resumes us once there is room. */
            kafka_pause(k);
        } else if (rc != PB_ESHUTDOWN) {
            kin_log_error_limited(k, "submit failed (tried again)", pb_strerror(rc));
        }
        return;
    }
}

/* ---- taking messages -------------------------------------------------------------------- */

static void consumer_error(struct in_kafka *k, const rd_kafka_message_t *m)
{
    char text[300];
    const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : NULL;
    snprintf(text, sizeof(text), "%s%s%s", rd_kafka_message_errstr(m), topic ? " topic=" : "",
             topic ? topic : "");
    kin_log_error_limited(k, "consumer error", text);
}

/* Hold m for the next batch (true), or say why not: its partition is not
 * ours, being given up or rewinding, or it was seen already (false, and m
 * is the caller's to destroy). */
static bool take(struct in_kafka *k, rd_kafka_message_t *m)
{
    struct part *p = m->rkt ? kin_part_find(k, rd_kafka_topic_name(m->rkt), m->partition) : NULL;
    if (!p || !p->assigned || p->revoked || p->rewind || (p->next >= 0 && m->offset < p->next))
        return false;
    if (k->nheld == k->capheld) {
        size_t cap = k->capheld ? k->capheld * 2 : 1024;
        struct held *hs = realloc(k->held, cap * sizeof(*hs));
        if (!hs) {
            /* Out of memory: read it again from here once there is room. */
            p->rewind = true;
            p->rewind_to = m->offset;
            return false;
        }
        k->held = hs;
        k->capheld = cap;
    }
    k->held[k->nheld++] = (struct held){.m = m, .p = p, .at_us = pb_mono_us()};
    p->next = m->offset + 1;
    return true;
}

static void pump(struct in_kafka *k)
{
    size_t max = (size_t)k->batch * 2, got = 0, polled = 0;
    if (!k->rk || k->stopped)
        return;
    for (; polled < max; polled++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k->rk, 0);
        if (!m)
            break;
        if (m->err) {
            consumer_error(k, m);
            rd_kafka_message_destroy(m);
            continue;
        }
        if (take(k, m))
            got++;
        else
            rd_kafka_message_destroy(m);
        if (k->stopped || !k->rk)
            return;
    }
    if (got)
        pb_input_count_received(k->in, got);
    submit_held(k);
    /* More may be queued with no new wake-up coming: go on at once. */
    if (polled == max && k->tick)
        pb_loop_timer_start(k->tick, 0);
}

static void pipe_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    struct in_kafka *k = arg;
    char buf[64];
    (void)w;
    (void)events;
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    pump(k);
}

/* ---- statistics and errors ------------------------------------------------------------ */

static void update_position(struct in_kafka *k)
{
    char buf[1024];
    size_t used = 0;
    int64_t lag = 0;
    bool any = false, cut = false, assigned = false;
    buf[0] = 0;
    for (size_t i = 0; i < k->nparts; i++) {
        const struct part *p = k->parts[i];
        if (!p->assigned)
            continue;
        assigned = true;
        if (p->lag >= 0) {
            lag += p->lag;
            any = true;
        }
        int n = snprintf(buf + used, sizeof(buf) - used, "%s%s/%d@%lld", used ? " " : "", p->topic,
                         (int)p->partition, (long long)p->committed);
        if (!cut && n > 0 && (size_t)n < sizeof(buf) - used - 8) {
            used += (size_t)n;
        } else if (!cut) {
            buf[used] = 0;
            cut = true;
            snprintf(buf + used, sizeof(buf) - used, " ...");
        }
    }
    /* Nothing assigned (other members hold every partition): nothing waits for us. */
    pb_input_set_lag(k->in, any || !assigned ? lag : -1);
    if (!k->position || strcmp(k->position, buf) != 0) {
        free(k->position);
        k->position = strdup(buf);
        pb_input_set_position(k->in, buf);
    }
}

static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    struct in_kafka *k = opaque;
    (void)rk;
    if (k->closing || !k->in)
        return 0;
    json_t *st = json_loadb(json, len, 0, NULL);
    if (!st)
        return 0;
    int up, total;
    kafka_stats_brokers(st, &up, &total);
    if (up > 0) {
        k->down_reports = 0;
        kin_set_state(k, PB_INPUT_CONNECTED, NULL);
    } else if (total > 0 && ++k->down_reports >= 3) {
        kin_reconnecting(k, k->last_error[0] ? k->last_error : "connecting");
    }
    json_t *topics = json_object_get(st, "topics");
    for (size_t i = 0; i < k->nparts; i++) {
        struct part *p = k->parts[i];
        char pk[16];
        snprintf(pk, sizeof(pk), "%d", (int)p->partition);
        json_t *e =
            json_object_get(json_object_get(json_object_get(topics, p->topic), "partitions"), pk);
        if (!p->assigned || !e)
            continue;
        json_t *hv = json_object_get(e, "hi_offset"), *lv = json_object_get(e, "ls_offset");
        json_int_t hi = hv ? json_integer_value(hv) : -1, ls = lv ? json_integer_value(lv) : -1;
        json_int_t end = ls >= 0 ? ls : hi; /* read_committed: the last stable offset */
        int64_t pos = p->next >= 0 ? p->next : p->committed;
        if (pos < 0) {
            json_t *cv = json_object_get(e, "committed_offset");
            json_t *lov = json_object_get(e, "lo_offset");
            json_int_t co = cv ? json_integer_value(cv) : -1;
            json_int_t lo = lov ? json_integer_value(lov) : -1;
            pos = co >= 0 ? co : (lo >= 0 && lo == end ? lo : -1); /* empty: nothing waits */
        }
        p->lag = end >= 0 && pos >= 0 ? (end > pos ? end - pos : 0) : -1;
    }
    json_decref(st);
    update_position(k);
    return 0;
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct in_kafka *k = opaque;
    snprintf(k->last_error, sizeof(k->last_error), "%s", reason);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char fatal[256];
        rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
        snprintf(k->last_error, sizeof(k->last_error), "%s", fatal);
        PB_ERROR("kafka: the consumer failed and is made anew pipeline=%s group=%s error=\"%s\"",
                 k->pipeline, k->group, fatal);
        k->fatal = true;
        kin_reconnecting(k, fatal);
    } else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        kin_reconnecting(k, reason);
    }
}

/* ---- back-pressure ----------------------------------------------------------------------- */

static void kafka_pause(void *ctx)
{
    struct in_kafka *k = ctx;
    if (k->paused || k->stopped)
        return;
    k->paused = true;
    kin_fetch_update(k);
    int64_t now = pb_mono_us() / 1000;
    if (!k->pause_logged_ms || now - k->pause_logged_ms >= ERROR_LOG_EVERY_MS) {
        k->pause_logged_ms = now;
        PB_INFO("kafka: fetching paused until patchbay has room (ingest bounds) pipeline=%s "
                "group=%s held=%zu",
                k->pipeline, k->group, k->nheld);
    }
}

static void kafka_resume(void *ctx)
{
    struct in_kafka *k = ctx;
    if (!k->paused || k->stopped)
        return;
    k->paused = false;
    kin_fetch_update(k);
    pump(k);
}

/* ---- life cycle ------------------------------------------------------------------------- */

static int kafka_init(void *ctx, struct pb_input_env *env, struct pb_err *err)
{
    struct in_kafka *k = ctx;
    char what[192];
    snprintf(k->pipeline, sizeof(k->pipeline), "%s", env->pipeline);
    snprintf(what, sizeof(what), "pipeline=%s input=kafka", env->pipeline);
    if (kafka_link_init(&k->link, env->allow, what))
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    int rc = kafka_common_check(&k->common, err);
    if (rc)
        return rc;
    if (k->topics.n == 0)
        return pb_err_set(err, PB_ECONFIG, "topics needs at least one topic");
    for (size_t i = 0; i < k->topics.n; i++)
        if (k->topics.items[i][0] != '^' && !kafka_topic_name_ok(k->topics.items[i]))
            return pb_err_set(err, PB_ECONFIG,
                              "topic \"%s\" is not a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)",
                              k->topics.items[i]);
    if (!*k->group || strlen(k->group) > 255)
        return pb_err_set(err, PB_ECONFIG, "group must be 1-255 characters");
    if (k->idem_header && (!*k->idem_header || strlen(k->idem_header) > 255))
        return pb_err_set(err, PB_ECONFIG, "idempotency_header must be 1-255 characters");
    if (k->session_timeout_ms < 1000 || k->session_timeout_ms > 3600000)
        return pb_err_set(err, PB_ECONFIG, "session_timeout must be between 1s and 1h");
    /* The properties must be ones librdkafka takes: checked without I/O. */
    rd_kafka_conf_t *c = kafka_conf_new(&k->common, defaults, reserved, NULL, k, err);
    if (!c)
        return err->code ? err->code : PB_ECONFIG;
    rd_kafka_conf_destroy(c);
    env->raw = k->format == 1;
    env->idempotency_window_ms = k->idem_window_ms;
    k->state = PB_INPUT_STARTING;
    return 0;
}

/* The consumer, apart from the loop's watch and timer. close: commit the
 * offsets reached and leave the group first, each with a deadline. */
static void consumer_destroy(struct in_kafka *k, bool close)
{
    if (!k->rk)
        return;
    kin_held_drop(k, NULL);
    if (close) {
        rd_kafka_topic_partition_list_t *c = kin_unconfirmed(k, NULL);
        if (c) {
            rd_kafka_resp_err_t err = kin_commit_wait(k, c, FINAL_COMMIT_WAIT_MS);
            if (err)
                PB_WARN("kafka: last offset commit failed pipeline=%s group=%s error=\"%s\" "
                        "(what follows the last committed offset is read again; idempotency "
                        "keys drop it)",
                        k->pipeline, k->group, rd_kafka_err2str(err));
            rd_kafka_topic_partition_list_destroy(c);
        }
    }
    k->closing = true;
    if (k->revoking)
        kin_finish_revoke(k);
    if (close) {
        rd_kafka_queue_t *cq = rd_kafka_queue_new(k->rk);
        rd_kafka_error_t *e = cq ? rd_kafka_consumer_close_queue(k->rk, cq) : NULL;
        int64_t deadline = pb_mono_us() / 1000 + CLOSE_WAIT_MS;
        while (cq && !e && !rd_kafka_consumer_closed(k->rk) && pb_mono_us() / 1000 < deadline) {
            rd_kafka_event_t *ev = rd_kafka_queue_poll(cq, 100);
            if (ev && rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
                if (kin_cooperative(k))
                    rd_kafka_error_destroy(rd_kafka_incremental_unassign(
                        k->rk, rd_kafka_event_topic_partition_list(ev)));
                else
                    rd_kafka_assign(k->rk, NULL);
            }
            if (ev)
                rd_kafka_event_destroy(ev);
        }
        close = cq && !e && rd_kafka_consumer_closed(k->rk);
        if (!close)
            PB_WARN("kafka: leaving the group did not finish in time pipeline=%s group=%s (its "
                    "partitions move once the session times out)",
                    k->pipeline, k->group);
        if (e)
            rd_kafka_error_destroy(e);
        if (cq)
            rd_kafka_queue_destroy(cq);
    }
    if (k->q) {
        rd_kafka_queue_io_event_enable(k->q, -1, NULL, 0);
        rd_kafka_queue_destroy(k->q);
        k->q = NULL;
    }
    rd_kafka_destroy_flags(k->rk, close ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    k->rk = NULL;
    k->fetch_paused = false;
    for (size_t i = 0; i < k->nparts; i++) {
        kin_part_reset(k->parts[i]);
        k->parts[i]->assigned = false;
    }
    k->closing = false;
}

/* Create the consumer and join the group (blocks on DNS: the input's own thread). */
static int consumer_create(struct in_kafka *k, struct pb_err *err)
{
    char bootstrap[4096], errstr[512], ms[24];
    rd_kafka_topic_partition_list_t *topics = NULL;
    bool tls = kafka_tls_on(&k->common);
    int rc =
        kafka_resolve_brokers(&k->link, &k->common.brokers, tls, bootstrap, sizeof(bootstrap), err);
    if (rc)
        return rc;
    rd_kafka_conf_t *c = kafka_conf_new(&k->common, defaults, reserved, bootstrap, k, err);
    if (!c)
        return err->code ? err->code : PB_ECONFIG;
    snprintf(ms, sizeof(ms), "%lld", (long long)k->session_timeout_ms);
    if (kafka_conf_set(c, "group.id", k->group, err) ||
        kafka_conf_set(c, "enable.auto.commit", "false", err) ||
        kafka_conf_set(c, "enable.auto.offset.store", "false", err) ||
        kafka_conf_set(c, "enable.partition.eof", "false", err) ||
        kafka_conf_set(c, "auto.offset.reset", starts[k->start], err) ||
        kafka_conf_set(c, "session.timeout.ms", ms, err)) {
        rd_kafka_conf_destroy(c);
        return err->code;
    }
    rd_kafka_conf_set_rebalance_cb(c, kin_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(c, kin_offset_commit_cb);
    rd_kafka_conf_set_error_cb(c, error_cb);
    rd_kafka_conf_set_stats_cb(c, stats_cb);
    k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, errstr, sizeof(errstr));
    if (!k->rk) {
        rd_kafka_conf_destroy(c);
        return pb_err_set(err, PB_ECONFIG, "kafka consumer: %s", errstr);
    }
    rd_kafka_poll_set_consumer(k->rk);
    k->q = rd_kafka_queue_get_consumer(k->rk);
    topics = rd_kafka_topic_partition_list_new((int)k->topics.n);
    if (!k->q || !topics) {
        rc = pb_err_set(err, PB_ENOMEM, "out of memory");
        goto fail;
    }
    rd_kafka_queue_io_event_enable(k->q, k->pipe_fd[1], "1", 1);
    for (size_t i = 0; i < k->topics.n; i++)
        rd_kafka_topic_partition_list_add(topics, k->topics.items[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t kerr = rd_kafka_subscribe(k->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (kerr) {
        rc = pb_err_set(err, PB_ECONFIG, "kafka subscribe: %s", rd_kafka_err2str(kerr));
        goto fail;
    }
    return 0;
fail:
    consumer_destroy(k, false);
    return rc;
}

static void tick_cb(struct pb_loop_timer *t, void *arg)
{
    struct in_kafka *k = arg;
    if (k->stopped)
        return;
    if (k->fatal && (k->rk || k->ticks % HOUSEKEEPING_TICKS == 0)) {
        struct pb_err err = {0};
        k->fatal = false;
        consumer_destroy(k, false);
        if (consumer_create(k, &err) != 0) {
            k->fatal = true; /* tried again on a housekeeping tick */
            kin_reconnecting(k, err.msg);
        }
    }
    if (k->fetch_paused && !k->paused && !kin_backing_off(k))
        kin_fetch_update(k);
    pump(k);
    if (++k->ticks % HOUSEKEEPING_TICKS == 0 && k->rk) {
        kin_commit_flush(k);
        for (size_t i = 0; i < k->nparts; i++)
            if (k->parts[i]->assigned && k->parts[i]->rewind)
                kin_seek_back(k, k->parts[i]);
        if (k->revoking && pb_mono_us() / 1000 >= k->revoke_deadline_ms) {
            PB_WARN("kafka: batches still in flight when giving partitions up pipeline=%s "
                    "group=%s (the next owner reads them again; idempotency keys drop repeats)",
                    k->pipeline, k->group);
            kin_finish_revoke(k);
        }
    }
    pb_loop_timer_start(t, TICK_MS);
}

static int kafka_start(void *ctx, struct pb_input *in, struct pb_err *err)
{
    struct in_kafka *k = ctx;
    struct pb_loop *loop = pb_input_loop(in);
    k->in = in;
    if (!k->have_pipe) {
        if (pipe2(k->pipe_fd, O_NONBLOCK | O_CLOEXEC) != 0)
            return pb_err_set(err, PB_EIO, "pipe: %s", strerror(errno));
        k->have_pipe = true;
    }
    int rc = consumer_create(k, err);
    if (rc)
        return rc;
    k->watch = pb_loop_watch_add(loop, k->pipe_fd[0], PB_LOOP_READ, pipe_cb, k);
    k->tick = pb_loop_timer_create(loop, tick_cb, k);
    if (!k->watch || !k->tick) {
        pb_loop_watch_remove(k->watch);
        pb_loop_timer_destroy(k->tick);
        k->watch = NULL;
        k->tick = NULL;
        consumer_destroy(k, false);
        return pb_err_set(err, PB_ENOMEM, "out of memory");
    }
    pb_loop_timer_start(k->tick, TICK_MS);
    PB_INFO("kafka: consumer started pipeline=%s group=%s", k->pipeline, k->group);
    return 0;
}

static void kafka_stop(void *ctx)
{
    struct in_kafka *k = ctx;
    k->stopped = true;
    pb_loop_watch_remove(k->watch);
    pb_loop_timer_destroy(k->tick);
    k->watch = NULL;
    k->tick = NULL;
    /* Fetched and not submitted: read again by whoever reads next. */
    kin_held_drop(k, NULL);
}

static void kafka_destroy(void *ctx)
{
    struct in_kafka *k = ctx;
    consumer_destroy(k, true);
    for (size_t i = 0; i < k->nparts; i++) {
        kt_reset(&k->parts[i]->t);
        free(k->parts[i]->topic);
        free(k->parts[i]);
    }
    free(k->parts);
    k->parts = NULL;
    k->nparts = 0;
    free(k->held);
    k->held = NULL;
    free(k->position);
    k->position = NULL;
    if (k->have_pipe) {
        close(k->pipe_fd[0]);
        close(k->pipe_fd[1]);
        k->have_pipe = false;
    }
    kafka_link_cleanup(&k->link);
}

const struct pb_input_plugin pb_in_kafka = {
    .name = "kafka",
    .fields = kafka_fields,
    .ctx_size = sizeof(struct in_kafka),
    .flags = PB_INPUT_OWN_THREAD,
    .init = kafka_init,
    .start = kafka_start,
    .stop = kafka_stop,
    .pause = kafka_pause,
    .resume = kafka_resume,
    .destroy = kafka_destroy,
};
