/* cdc_stream.c - the `postgres_cdc` input's replication stream: CopyData
 * read from the walsender, decoded (pgoutput.c), turned into messages, and
 * committed a transaction (or several) at a time (cdc_int.h).
 *
 * What is read is buffered until the socket has nothing more for now, or
 * the buffer holds PB_SUBMIT_MAX messages or MAX_BYTES; then every complete
 * transaction in it is committed in one submit whose checkpoint is the end
 * of the last one. A transaction alone larger than that is committed in
 * parts without a checkpoint. While a submit is in flight reading goes on
 * until the buffer is full; then the socket is left alone (the walsender
 * waits) until the commit calls back.
 *
 * Thread model: the input's own loop thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cdc_int.h"
#include "patchbay/pb_log.h"
#include "patchbay/pb_loop.h"

#define MAX_BYTES (16u << 20)
#define READ_BURST 5000 /* messages read per turn of the loop at most */

static void watch_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg);

static void watch_on(struct in_cdc *c)
{
    if (c->watch || !c->repl || c->paused || c->stopped)
        return;
    c->watch = pb_loop_watch_add(c->loop, PQsocket(c->repl->pg), PB_LOOP_READ, watch_cb, c);
    if (!c->watch)
        cdc_fail(c, "stream", "out of memory");
}

static void watch_off(struct in_cdc *c)
{
    pb_loop_watch_remove(c->watch);
    c->watch = NULL;
}

static int mark_add(struct in_cdc *c, uint64_t lsn)
{
    if (c->nmarks && c->marks[c->nmarks - 1].upto == c->nitems) {
        /* the same place: the later end covers both */
        if (lsn > c->marks[c->nmarks - 1].lsn)
            c->marks[c->nmarks - 1].lsn = lsn;
        return 0;
    }
    if (c->nmarks == c->mcap) {
        size_t nc = c->mcap ? c->mcap * 2 : 64;
        struct cdc_mark *v = realloc(c->marks, nc * sizeof(*v));
        if (!v)
            return PB_ENOMEM;
        c->marks = v;
        c->mcap = nc;
    }
    c->marks[c->nmarks++] = (struct cdc_mark){.upto = c->nitems, .lsn = lsn};
    return 0;
}

/* $meta of a change */
static void change_meta(struct in_cdc *c, char *buf, size_t len, const struct pgo_rel *rel,
                        const char *op, uint64_t lsn, uint64_t commit_lsn, int64_t xid)
{
    char l1[32], l2[32];
    struct sql_buf b = {0};
    pgo_lsn_text(lsn, l1, sizeof(l1));
    pgo_lsn_text(commit_lsn, l2, sizeof(l2));
    sqlb_printf(&b, "{\"slot\":\"%s\",\"op\":\"%s\",\"schema\":", c->slot, op);
    sqlb_json_str(&b, rel->schema, strlen(rel->schema));
    sqlb_adds(&b, ",\"table\":");
    sqlb_json_str(&b, rel->table, strlen(rel->table));
    sqlb_printf(&b, ",\"lsn\":\"%s\",\"commit_lsn\":\"%s\"", l1, l2);
    if (xid >= 0)
        sqlb_printf(&b, ",\"xid\":%lld}", (long long)xid);
    else
        sqlb_adds(&b, ",\"xid\":null}");
    const char *t = sqlb_text(&b);
    snprintf(buf, len, "%s", t && b.len < len ? t : "{}");
    sqlb_free(&b);
}

/* One change (m NULL: a truncate of rel) of the current transaction. */
static int add_change(struct in_cdc *c, const struct pgo_msg *m, const struct pgo_rel *rel,
                      uint64_t lsn)
{
    struct sql_buf b = {0};
    const char *why = NULL;
    struct pgo_change_ctx cx = {.lsn = lsn,
                                .commit_lsn = c->txn_final,
                                .commit_time = c->txn_time,
                                .xid = c->txn_xid,
                                .fmt = &c->fmt};
    int bad = pgo_change_json(&b, m, rel, &cx, &why);
    if (b.oom || !sqlb_text(&b)) {
        sqlb_free(&b);
        return PB_ENOMEM;
    }
    const char *op = !m               ? "truncate"
                     : m->kind == 'I' ? "insert"
                     : m->kind == 'U' ? "update"
                                      : "delete";
    char key[CDC_KEY_MAX], l[32], meta[1024], dead[256];
    pgo_lsn_text(c->txn_final, l, sizeof(l));
    snprintf(key, sizeof(key), "pg:%s:%u", l, ++c->txn_seq);
    change_meta(c, meta, sizeof(meta), rel, op, lsn, c->txn_final, c->txn_xid);
    if (bad)
        snprintf(dead, sizeof(dead), "%s.%s: %s (written base64 here)", rel->schema, rel->table,
                 why ? why : "a value cannot be carried");
    int rc = cdc_item_add(c, b.p, b.len, bad ? dead : NULL, key, meta);
    if (rc)
        sqlb_free(&b);
    return rc;
}

/* One logical message at WAL position lsn. 0, or -1 after cdc_fail. */
static int logical(struct in_cdc *c, const uint8_t *data, size_t len, uint64_t lsn)
{
    struct pgo_msg m;
    char err[256];
    if (pgo_decode(&c->dec, data, len, &m, err, sizeof(err)) != 0) {
        cdc_fail(c, "stream", err);
        return -1;
    }
    int rc = 0;
    switch (m.kind) {
    case 'B':
        c->in_txn = true;
        c->txn_final = m.final_lsn;
        c->txn_time = m.commit_time;
        c->txn_xid = m.xid;
        c->txn_seq = 0;
        /* committed before: its changes are in the store already */
        c->skip_txn = m.final_lsn < c->committed;
        break;
    case 'C':
        if (c->in_txn && !c->skip_txn)
            rc = mark_add(c, m.end_lsn);
        c->in_txn = c->skip_txn = false;
        break;
    case 'R':
        /* a FULL or NOTHING identity flags no useful key: the primary key */
        if (m.rel && (m.rel->ident == 'f' || m.rel->ident == 'n') &&
            cdc_rel_keys(c, m.rel->id) != 0) {
            cdc_fail(c, "primary key lookup", c->sqlc ? c->sqlc->msg : "no session");
            return -1;
        }
        break;
    case 'I':
    case 'U':
    case 'D':
        if (!c->in_txn) {
            cdc_fail(c, "stream", "a change outside a transaction");
            return -1;
        }
        if (!c->skip_txn)
            rc = add_change(c, &m, m.rel, lsn);
        break;
    case 'T':
        if (!c->in_txn) {
            cdc_fail(c, "stream", "a truncate outside a transaction");
            return -1;
        }
        for (size_t i = 0; i < m.nrels && !c->skip_txn && rc == 0; i++) {
            const struct pgo_rel *rel = pgo_rel_find(&c->dec.rels, m.relids[i]);
            if (!rel) {
                cdc_fail(c, "stream", "a truncate of a relation never described");
                return -1;
            }
            rc = add_change(c, NULL, rel, lsn);
        }
        break;
    default:
        /* M (heartbeats: their transaction's end is what counts), O, Y */
        break;
    }
    if (rc) {
        cdc_fail(c, "stream", pb_strerror(rc));
        return -1;
    }
    return 0;
}

/* One CopyData message. 0, or -1 after cdc_fail. */
static int copy_message(struct in_cdc *c, const uint8_t *p, size_t n)
{
    struct pgo_copy cm;
    char err[256];
    if (pgo_copy_parse(p, n, &cm, err, sizeof(err)) != 0) {
        cdc_fail(c, "stream", err);
        return -1;
    }
    if (cm.wal_end > c->received)
        c->received = cm.wal_end;
    if (cm.kind == 'k') {
        /* Idle: nothing half-read, nothing waiting. The server has sent all
         * up to wal_end, so that position may be committed (then confirmed)
         * too; at most once per status_interval. */
        int64_t now = pb_loop_now(c->loop);
        if (!c->in_txn && c->nitems == 0 && c->nmarks == 0 && !c->submitting &&
            cm.wal_end > c->committed && now - c->last_idle_ckpt >= c->status_interval_ms) {
            c->last_idle_ckpt = now;
            if (mark_add(c, cm.wal_end) != 0) {
                cdc_fail(c, "stream", "out of memory");
                return -1;
            }
        }
        if (cm.reply)
            cdc_send_status(c, false);
        return c->phase == CDC_STREAM ? 0 : -1;
    }
    return logical(c, cm.data, cm.len, cm.wal_start);
}

void cdc_stream_flush(struct in_cdc *c, bool drained)
{
    if (c->submitting || c->paused || c->stopped || c->phase != CDC_STREAM)
        return;
    size_t cap = c->nitems < PB_SUBMIT_MAX ? c->nitems : PB_SUBMIT_MAX;
    bool full = c->nitems >= PB_SUBMIT_MAX || c->bytes >= MAX_BYTES;
    /* the last transaction end within the first PB_SUBMIT_MAX messages */
    const struct cdc_mark *m = NULL;
    for (size_t i = 0; i < c->nmarks && c->marks[i].upto <= cap; i++)
        m = &c->marks[i];
    size_t n;
    uint64_t lsn = 0;
    if (m && (drained || full)) {
        n = m->upto;
        lsn = m->lsn;
    } else if (!m && full) {
        n = cap ? cap : 1; /* a part of a transaction larger than one submit */
        if (n > c->nitems)
            return;
    } else {
        return;
    }
    int rc = cdc_submit(c, n, lsn, lsn ? "stream" : NULL);
    if (rc == 0 || rc == PB_EFULL || rc == PB_EAGAIN)
        return; /* PB_EFULL: paused; resume reads and submits again */
    if (rc != PB_ESHUTDOWN)
        cdc_fail(c, "submit", pb_strerror(rc));
}

void cdc_stream_read(struct in_cdc *c)
{
    if (c->phase != CDC_STREAM || !c->repl || c->paused || c->stopped)
        return;
    if (!PQconsumeInput(c->repl->pg)) {
        cdc_fail(c, "stream", PQerrorMessage(c->repl->pg));
        return;
    }
    bool drained = false;
    for (int i = 0; i < READ_BURST; i++) {
        if (c->nitems >= 2 * PB_SUBMIT_MAX || c->bytes >= 2 * MAX_BYTES)
            break; /* full: the commit in flight makes room */
        char *buf = NULL;
        int n = PQgetCopyData(c->repl->pg, &buf, 1);
        if (n == 0) {
            drained = true;
            break;
        }
        if (n == -1) {
            PGresult *r = PQgetResult(c->repl->pg);
            char why[600];
            snprintf(why, sizeof(why), "the server ended the stream: %s",
                     r ? PQresultErrorMessage(r) : PQerrorMessage(c->repl->pg));
            PQclear(r);
            cdc_fail(c, "stream", why);
            return;
        }
        if (n < 0) {
            cdc_fail(c, "stream", PQerrorMessage(c->repl->pg));
            return;
        }
        int rc = copy_message(c, (const uint8_t *)buf, (size_t)n);
        PQfreemem(buf);
        if (rc)
            return;
    }
    cdc_stream_flush(c, drained);
    if (c->phase != CDC_STREAM)
        return;
    if (drained) {
        c->blocked = false;
        watch_on(c);
    } else {
        /* more is buffered: go on after other work, unless full */
        bool full = c->nitems >= 2 * PB_SUBMIT_MAX || c->bytes >= 2 * MAX_BYTES;
        c->blocked = full;
        watch_off(c);
        if (!full)
            cdc_arm(c, 0);
    }
}

static void watch_cb(struct pb_loop_watch *w, int fd, unsigned events, void *arg)
{
    (void)w;
    (void)fd;
    (void)events;
    cdc_stream_read(arg);
}
