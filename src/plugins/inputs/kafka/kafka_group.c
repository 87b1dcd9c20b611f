/* kafka_group.c - the kafka input's side of the consumer group: its
 * partitions, the offsets committed to the group (only past what patchbay
 * has committed), rebalances (a revocation waits for the batches in flight,
 * commits, then gives the partitions up), and reading a partition again
 * after a batch failed to commit.
 *
 * Threads: the input's loop thread; the rebalance and offset commit
 * callbacks are served there by rd_kafka_consumer_poll. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafka_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_time.h"

/* ---- partitions ------------------------------------------------------------------------ */

struct part *kin_part_find(struct in_kafka *k, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < k->nparts; i++)
        if (k->parts[i]->partition == partition && strcmp(k->parts[i]->topic, topic) == 0)
            return k->parts[i];
    return NULL;
}

static struct part *part_get(struct in_kafka *k, const char *topic, int32_t partition)
{
    struct part *p = kin_part_find(k, topic, partition);
    if (p)
        return p;
    if (k->nparts == k->capparts) {
        size_t cap = k->capparts ? k->capparts * 2 : 16;
        struct part **ps = realloc(k->parts, cap * sizeof(*ps));
        if (!ps)
            return NULL;
        k->parts = ps;
        k->capparts = cap;
    }
    p = calloc(1, sizeof(*p));
    if (!p || !(p->topic = strdup(topic))) {
        free(p);
        return NULL;
    }
    p->partition = partition;
    k->parts[k->nparts++] = p;
    return p;
}

/* A fresh start for p: what refers to its old epoch is ignored from now on. */
void kin_part_reset(struct part *p)
{
    kt_reset(&p->t);
    p->t.commit = -1;
    p->revoked = false;
    p->rewind = false;
    p->next = -1;
    p->commit_sent = -1;
    p->committed = -1;
    p->lag = -1;
}

/* Drop what was fetched for p and not submitted. */
void kin_held_drop(struct in_kafka *k, const struct part *p)
{
    size_t w = 0;
    for (size_t i = 0; i < k->nheld; i++) {
        if (!p || k->held[i].p == p)
            rd_kafka_message_destroy(k->held[i].m);
        else
            k->held[w++] = k->held[i];
    }
    k->nheld = w;
}

static void part_name(const struct part *p, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%d", p->topic, (int)p->partition);
}

/* ---- state -------------------------------------------------------------------------------- */

void kin_set_state(struct in_kafka *k, enum pb_input_state st, const char *detail)
{
    if (!k->in || k->closing)
        return;
    if ((int)st == k->state && st == PB_INPUT_CONNECTED)
        return;
    k->state = (int)st;
    pb_input_set_state(k->in, st, detail);
}

void kin_reconnecting(struct in_kafka *k, const char *why)
{
    char refused[256], detail[600];
    if (kafka_link_refused(&k->link, 60000, refused, sizeof(refused)))
        snprintf(detail, sizeof(detail), "%s", refused);
    else
        snprintf(detail, sizeof(detail), "no broker reachable: %s", why);
    kin_set_state(k, PB_INPUT_RECONNECTING, detail);
}

/* ---- back-pressure ----------------------------------------------------------------------- */

bool kin_backing_off(const struct in_kafka *k)
{
    return k->backoff_until_ms && pb_mono_us() / 1000 < k->backoff_until_ms;
}

/* Fetching is paused while the core pushes back or commits fail. */
void kin_fetch_update(struct in_kafka *k)
{
    bool want = k->paused || kin_backing_off(k);
    rd_kafka_topic_partition_list_t *l = NULL;
    if (!k->rk || want == k->fetch_paused ||
        rd_kafka_assignment(k->rk, &l) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    if (l->cnt)
        want ? rd_kafka_pause_partitions(k->rk, l) : rd_kafka_resume_partitions(k->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    k->fetch_paused = want;
}

/* ---- commits ------------------------------------------------------------------------------- */

/* Commit, asynchronously, every partition whose commit offset moved on (or
 * whose last commit has gone unanswered for a while). */
void kin_commit_flush(struct in_kafka *k)
{
    int64_t now = pb_mono_us() / 1000;
    rd_kafka_topic_partition_list_t *l = NULL;
    for (size_t i = 0; i < k->nparts; i++) {
        struct part *p = k->parts[i];
        if (!p->assigned || p->t.commit < 0 || p->t.commit <= p->committed)
            continue;
        if (p->t.commit <= p->commit_sent && now - p->sent_at_ms < COMMIT_RESEND_MS)
            continue;
        if (!l && !(l = rd_kafka_topic_partition_list_new(8)))
            return;
        rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->t.commit;
        p->commit_sent = p->t.commit;
        p->sent_at_ms = now;
    }
    if (!l)
        return;
    rd_kafka_resp_err_t err = rd_kafka_commit(k->rk, l, 1);
    if (err) {
        /* Not even queued (no group coordinator yet...): sent again later. */
        for (int i = 0; i < l->cnt; i++) {
            struct part *p = kin_part_find(k, l->elems[i].topic, l->elems[i].partition);
            if (p)
                p->commit_sent = p->committed;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

void kin_log_error_limited(struct in_kafka *k, const char *what, const char *text)
{
    int64_t now = pb_mono_us() / 1000;
    snprintf(k->last_error, sizeof(k->last_error), "%s", text);
    if (k->error_logged_ms && now - k->error_logged_ms < ERROR_LOG_EVERY_MS)
        return;
    k->error_logged_ms = now;
    char safe[300];
    PB_WARN("kafka: %s pipeline=%s group=%s error=\"%s\"", what, k->pipeline, k->group,
            pb_log_value(text, safe, sizeof(safe)));
}

void kin_offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    struct in_kafka *k = opaque;
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET || !offsets)
        return;
    bool failed = false;
    for (int i = 0; i < offsets->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &offsets->elems[i];
        struct part *p = kin_part_find(k, e->topic, e->partition);
        if (!p)
            continue;
        if (!err && !e->err) {
            if (e->offset > p->committed)
                p->committed = e->offset;
        } else {
            failed = true;
            if (p->commit_sent <= e->offset)
                p->commit_sent = p->committed; /* sent again by the next flush */
        }
    }
    if (failed && !k->closing)
        kin_log_error_limited(k, "offset commit failed (sent again)",
                              rd_kafka_err2str(err ? err : offsets->elems[0].err));
}

/* ---- rebalances -------------------------------------------------------------------------- */

bool kin_cooperative(struct in_kafka *k)
{
    const char *proto = rd_kafka_rebalance_protocol(k->rk);
    return proto && strcmp(proto, "COOPERATIVE") == 0;
}

static void list_names(const rd_kafka_topic_partition_list_t *l, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < l->cnt && used + 1 < len; i++) {
        int n = snprintf(buf + used, len - used, "%s%s/%d", i ? "," : "", l->elems[i].topic,
                         (int)l->elems[i].partition);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static void assign_parts(struct in_kafka *k, rd_kafka_topic_partition_list_t *l)
{
    char names[512];
    for (int i = 0; i < l->cnt; i++) {
        struct part *p = part_get(k, l->elems[i].topic, l->elems[i].partition);
        if (!p) {
            /* Without a place to keep its progress nothing of the partition
             * is taken, and nothing committed, until a later assignment. */
            PB_ERROR("kafka: out of memory taking a partition pipeline=%s", k->pipeline);
            continue;
        }
        kin_part_reset(p);
        p->assigned = true;
    }
    if (kin_cooperative(k)) {
        rd_kafka_error_t *e = rd_kafka_incremental_assign(k->rk, l);
        if (e) {
            kin_log_error_limited(k, "assign failed", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
    } else {
        rd_kafka_assign(k->rk, l);
    }
    if (l->cnt && (k->fetch_paused || k->paused || kin_backing_off(k))) {
        rd_kafka_pause_partitions(k->rk, l);
        k->fetch_paused = true;
    }
    list_names(l, names, sizeof(names));
    PB_INFO("kafka: partitions assigned pipeline=%s group=%s partitions=%s", k->pipeline, k->group,
            names);
}

bool kin_revoking_busy(struct in_kafka *k)
{
    for (int i = 0; k->revoking && i < k->revoking->cnt; i++) {
        struct part *p =
            kin_part_find(k, k->revoking->elems[i].topic, k->revoking->elems[i].partition);
        if (p && kt_busy(&p->t))
            return true;
    }
    return false;
}

/* Commit l and wait for the answer, at most timeout_ms. The error, or 0. */
rd_kafka_resp_err_t kin_commit_wait(struct in_kafka *k, rd_kafka_topic_partition_list_t *l,
                                    int timeout_ms)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->rk);
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
    if (!q)
        return RD_KAFKA_RESP_ERR__FAIL;
    if ((err = rd_kafka_commit_queue(k->rk, l, q, NULL, NULL)) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms);
        err = ev ? rd_kafka_event_error(ev) : RD_KAFKA_RESP_ERR__TIMED_OUT;
        const rd_kafka_topic_partition_list_t *done =
            ev ? rd_kafka_event_topic_partition_list(ev) : NULL;
        for (int i = 0; !err && done && i < done->cnt; i++) {
            struct part *p = kin_part_find(k, done->elems[i].topic, done->elems[i].partition);
            if (done->elems[i].err)
                err = done->elems[i].err;
            else if (p && done->elems[i].offset > p->committed)
                p->committed = done->elems[i].offset;
        }
        if (ev)
            rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    return err;
}

/* The offsets reached on the assigned partitions (all, or those in only)
 * that the group has not confirmed; NULL when there are none. */
rd_kafka_topic_partition_list_t *kin_unconfirmed(struct in_kafka *k,
                                                 const rd_kafka_topic_partition_list_t *only)
{
    rd_kafka_topic_partition_list_t *c = NULL;
    for (size_t i = 0; i < k->nparts; i++) {
        struct part *p = k->parts[i];
        if (!p->assigned || p->t.commit < 0 || p->t.commit <= p->committed)
            continue;
        if (only && !rd_kafka_topic_partition_list_find(only, p->topic, p->partition))
            continue;
        if (!c && !(c = rd_kafka_topic_partition_list_new(8)))
            return NULL;
        rd_kafka_topic_partition_list_add(c, p->topic, p->partition)->offset = p->t.commit;
    }
    return c;
}

/* Commit what was reached on the partitions being revoked, then give them up. */
void kin_finish_revoke(struct in_kafka *k)
{
    rd_kafka_topic_partition_list_t *l = k->revoking;
    char names[512];
    k->revoking = NULL;
    rd_kafka_topic_partition_list_t *c =
        k->revoking_lost || k->closing ? NULL : kin_unconfirmed(k, l);
    if (c) {
        rd_kafka_resp_err_t err = kin_commit_wait(k, c, FINAL_COMMIT_WAIT_MS);
        list_names(c, names, sizeof(names));
        if (err)
            PB_WARN("kafka: commit before giving partitions up failed pipeline=%s group=%s "
                    "partitions=%s error=\"%s\" (the next owner reads from the last committed "
                    "offset; idempotency keys drop what this node already took)",
                    k->pipeline, k->group, names, rd_kafka_err2str(err));
        rd_kafka_topic_partition_list_destroy(c);
    }
    for (int i = 0; i < l->cnt; i++) {
        struct part *p = kin_part_find(k, l->elems[i].topic, l->elems[i].partition);
        if (p) {
            kin_part_reset(p);
            p->assigned = false;
        }
    }
    if (kin_cooperative(k)) {
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(k->rk, l);
        if (e)
            rd_kafka_error_destroy(e);
    } else {
        rd_kafka_assign(k->rk, NULL);
    }
    list_names(l, names, sizeof(names));
    PB_INFO("kafka: partitions given up pipeline=%s group=%s partitions=%s%s", k->pipeline,
            k->group, names, k->revoking_lost ? " (lost: the group moved on without us)" : "");
    rd_kafka_topic_partition_list_destroy(l);
}

static void revoke_parts(struct in_kafka *k, rd_kafka_topic_partition_list_t *l)
{
    if (k->revoking) /* cannot happen: the group waits for the last one */
        kin_finish_revoke(k);
    k->revoking = rd_kafka_topic_partition_list_copy(l);
    k->revoking_lost = rd_kafka_assignment_lost(k->rk) != 0;
    if (!k->revoking) {
        rd_kafka_assign(k->rk, NULL);
        return;
    }
    for (int i = 0; i < l->cnt; i++) {
        struct part *p = kin_part_find(k, l->elems[i].topic, l->elems[i].partition);
        if (!p)
            continue;
        p->revoked = true;
        kin_held_drop(k, p);
    }
    if (k->closing || k->revoking_lost || !kin_revoking_busy(k)) {
        kin_finish_revoke(k);
        return;
    }
    k->revoke_deadline_ms = pb_mono_us() / 1000 + REVOKE_WAIT_MS;
    PB_INFO("kafka: partitions revoked; waiting for the batches in flight on them pipeline=%s "
            "group=%s",
            k->pipeline, k->group);
}

void kin_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *l,
                      void *opaque)
{
    struct in_kafka *k = opaque;
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        assign_parts(k, l);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        revoke_parts(k, l);
    } else {
        kin_log_error_limited(k, "rebalance failed", rd_kafka_err2str(err));
        for (size_t i = 0; i < k->nparts; i++) {
            kin_part_reset(k->parts[i]);
            k->parts[i]->assigned = false;
        }
        kin_held_drop(k, NULL);
        rd_kafka_assign(k->rk, NULL);
    }
}

/* ---- rewinding after a failed commit ------------------------------------------------------ */

void kin_seek_back(struct in_kafka *k, struct part *p)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    char name[300];
    if (!l)
        return;
    rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->rewind_to;
    rd_kafka_error_t *e = rd_kafka_seek_partitions(k->rk, l, SEEK_WAIT_MS);
    rd_kafka_resp_err_t perr = l->elems[0].err;
    part_name(p, name, sizeof(name));
    if (!e && !perr) {
        p->rewind = false;
        p->next = p->rewind_to;
        PB_WARN("kafka: reading again after a failed commit pipeline=%s partition=%s offset=%lld",
                k->pipeline, name, (long long)p->rewind_to);
    } else {
        kin_log_error_limited(k, "seek back after a failed commit failed (tried again)",
                              e ? rd_kafka_error_string(e) : rd_kafka_err2str(perr));
    }
    if (e)
        rd_kafka_error_destroy(e);
    rd_kafka_topic_partition_list_destroy(l);
}

/* Move p's commit offset past the batches that are done, in order; at a
 * failed one, read again from there (or, given up, leave it to the next
 * owner). */
void kin_advance(struct in_kafka *k, struct part *p)
{
    int64_t from;
    if (kt_advance(&p->t, &from) != KT_REWIND)
        return;
    if (p->revoked || !p->assigned) {
        kt_reset(&p->t);
        return;
    }
    /* Never past what is not committed: read it again from there. */
    kt_rewind(&p->t, from);
    p->next = from;
    p->rewind = true;
    p->rewind_to = from;
    kin_held_drop(k, p);
    kin_seek_back(k, p);
}
