/* sqlite_write.c - the SQLite backend's writer ops: each pb_op applied with
 * the write connection's prepared statements, inside the transaction the
 * writer thread (store.c) opened. Writer thread only. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "patchbay/pb_log.h"
#include "store/sqlite_int.h"

/* ?4 is since: 0 (or less) takes every dead delivery. An output filter is
 * exact: the output itself (?5 NULL) or one of its sub-outputs. */
#define RALL_DEAD "SELECT id FROM deliveries WHERE state = 2 AND (?4 <= 0 OR created_at >= ?4)"
#define RALL_OUT " AND output = ?2 AND sub IS ?5"
#define RALL_END " ORDER BY id LIMIT ?6"

const char *const pb__sqlite_wsql[W_COUNT] = {
    [W_IDEM_GET] = "SELECT msg_id FROM idempotency"
                   " WHERE pipeline = ?1 AND key = ?2 AND expires_at > ?3",
    [W_IDEM_PUT] = "INSERT OR REPLACE INTO idempotency(pipeline, key, msg_id, expires_at)"
                   " VALUES (?1, ?2, ?3, ?4)",
    [W_MSG_INS] = "INSERT INTO messages(id, pipeline, received_at, content_type, body, body_crc,"
                  " meta, idem_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [W_DLV_INS] = "INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
                  " created_at, updated_at, lease) VALUES (?1, ?2, ?3, 0, 0, ?4, ?5, ?5, ?6)",
    /* A result counts only while its lease holds: a lease lost (claimed by
     * another process) must not overwrite a newer attempt. */
    [W_DLV_RESULT] = "UPDATE deliveries SET state = ?2, attempts = ?3, next_at = ?4,"
                     " updated_at = ?5, last_status = ?6, last_error = ?7,"
                     " lease = CASE WHEN ?2 = 0 THEN lease END, last_latency_ms = ?9,"
                     " last_answer = ?10 WHERE id = ?1 AND state = 0 AND lease IS ?8",
    [W_ATT_INS] = "INSERT OR REPLACE INTO attempts(delivery_id, n, started_at, latency_ms, status,"
                  " state, error, answer) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [W_DEAD_GET] = "SELECT msg_seq, pipeline, output, sub FROM deliveries WHERE id = ?1"
                   " AND state = 2",
    [W_DLV_MARK_REPLAYED] = "UPDATE deliveries SET state = 4, updated_at = ?2 WHERE id = ?1",
    [W_DLV_REPLAY] =
        "INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts, next_at,"
        " created_at, updated_at, replay_of) VALUES (?1, ?2, ?3, ?6, 0, 0, ?4, ?4, ?4, ?5)",
    [W_DLV_DEL] = "DELETE FROM deliveries WHERE id = ?1",
    [W_MSG_DEL_UNUSED] = "DELETE FROM messages WHERE seq = ?1"
                         " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE msg_seq = ?1)",
    [W_IDEM_EXPIRE] = "DELETE FROM idempotency WHERE (pipeline, key) IN"
                      " (SELECT pipeline, key FROM idempotency WHERE expires_at <= ?1 LIMIT ?2)",
    /* Finished: no delivery still pending (0) or dead (2). Deliveries and
     * attempts go with the message (ON DELETE CASCADE). */
    [W_MSG_EXPIRE] = "DELETE FROM messages WHERE seq IN (SELECT m.seq FROM messages m"
                     " WHERE m.received_at < ?1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
                     " WHERE d.msg_seq = m.seq AND d.state IN (0, 2))"
                     " ORDER BY m.received_at LIMIT ?2)",
    [W_FAN_PARENT] = "UPDATE deliveries SET state = 1, attempts = ?2, updated_at = ?3,"
                     " last_status = 0, last_error = ?5, last_latency_ms = 0, lease = NULL"
                     " WHERE id = ?1 AND state = 0 AND lease IS ?4",
    [W_FAN_CHILD] = "INSERT INTO deliveries(msg_seq, pipeline, output, sub, state, attempts,"
                    " next_at, created_at, updated_at, lease) SELECT msg_seq, pipeline, output,"
                    " ?2, 0, 0, ?3, ?3, ?3, ?4 FROM deliveries WHERE id = ?1",
    [W_ROUTE_FINISH] = "UPDATE deliveries SET state = ?2, attempts = ?3, updated_at = ?4,"
                       " last_status = 0, last_error = ?5, last_latency_ms = 0, lease = NULL"
                       " WHERE id = ?1 AND state = 0 AND lease IS ?6",
    [W_ROUTED_PUT] = "INSERT OR REPLACE INTO routed(seq, body, body_crc, okey)"
                     " VALUES (?1, ?2, ?3, ?4)",
    [W_CHILD_INS] = "INSERT INTO messages(id, pipeline, received_at, content_type, body, body_crc,"
                    " meta, parent_seq, okey) SELECT ?1, pipeline, received_at, NULL, ?2, ?3, meta,"
                    " seq, ?5 FROM messages WHERE seq = ?4",
    [W_DLV_FINAL] =
        "INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
        " created_at, updated_at, last_error) VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, ?5, ?6)",
    [W_CLAIM] = "SELECT d.id, d.msg_seq, m.id, d.attempts, d.next_at, m.received_at,"
                " m.content_type, coalesce(r.body, m.body),"
                " CASE WHEN r.seq IS NULL THEN m.body_crc ELSE r.body_crc END, m.meta,"
                " CASE WHEN r.seq IS NULL THEN m.okey ELSE r.okey END,"
                " r.seq IS NOT NULL OR m.parent_seq IS NOT NULL"
                " FROM deliveries d JOIN messages m ON m.seq = d.msg_seq"
                " LEFT JOIN routed r ON r.seq = d.msg_seq AND d.output <> '" PB_ROUTE_OUTPUT "'"
                " WHERE d.state = 0 AND d.pipeline = ?1 AND d.output = ?2 AND d.sub IS ?3"
                " AND (d.lease IS NULL OR d.lease <> ?4) ORDER BY d.id LIMIT ?5",
    [W_SUB_KILL_ATT] = "INSERT OR REPLACE INTO attempts(delivery_id, n, started_at, latency_ms,"
                       " status, state, error) SELECT id, attempts + 1, ?4, 0, 0, 2, ?5"
                       " FROM deliveries WHERE state = 0 AND pipeline = ?1 AND output = ?2"
                       " AND sub = ?3",
    [W_SUB_KILL_DLV] = "UPDATE deliveries SET state = 2, attempts = attempts + 1, updated_at = ?4,"
                       " last_error = ?5, lease = NULL WHERE state = 0 AND pipeline = ?1"
                       " AND output = ?2 AND sub = ?3",
    [W_LEASE_SET] = "UPDATE deliveries SET lease = ?2 WHERE id = ?1",
    [W_LEASE_DROP] = "UPDATE deliveries SET lease = NULL WHERE id = ?1 AND lease = ?2",
    [W_KV_PUT] = "INSERT OR REPLACE INTO kv(scope, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)",
    [W_KV_DEL] = "DELETE FROM kv WHERE scope = ?1 AND key = ?2",
    [W_DEAD_IN_DLV] = "INSERT INTO deliveries(msg_seq, pipeline, output, state, attempts, next_at,"
                      " created_at, updated_at, last_status, last_error)"
                      " VALUES (?1, ?2, '" PB_INPUT_OUTPUT "', 2, 1, 0, ?3, ?3, 0, ?4)",
    [W_DEAD_IN_ATT] = "INSERT INTO attempts(delivery_id, n, started_at, latency_ms, status, state,"
                      " error) VALUES (?1, 1, ?2, 0, 0, 2, ?3)",
    [W_ORPHAN_ATT] = "INSERT OR REPLACE INTO attempts(delivery_id, n, started_at, latency_ms,"
                     " status, state, error) SELECT id, attempts + 1, ?3, 0, 0, 2, 'output removed'"
                     " FROM deliveries WHERE state = 0 AND pipeline = ?1 AND output = ?2",
    [W_ORPHAN_DLV] = "UPDATE deliveries SET state = 2, attempts = attempts + 1, updated_at = ?3,"
                     " last_error = 'output removed' WHERE state = 0 AND pipeline = ?1"
                     " AND output = ?2",
    [W_INJ_OLD] = "SELECT m.pipeline, m.meta, r.seq IS NOT NULL OR m.parent_seq IS NOT NULL,"
                  " CASE WHEN r.seq IS NULL THEN m.okey ELSE r.okey END"
                  " FROM messages m LEFT JOIN routed r ON r.seq = m.seq WHERE m.seq = ?1",
    [W_INJ_MSG] = "INSERT INTO messages(id, pipeline, received_at, content_type, body, body_crc,"
                  " meta, edit_of) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [W_RALL + 0] = RALL_DEAD RALL_END,
    [W_RALL + 1] = RALL_DEAD " AND pipeline = ?1" RALL_END,
    [W_RALL + 2] = RALL_DEAD RALL_OUT RALL_END,
    [W_RALL + 3] = RALL_DEAD " AND pipeline = ?1" RALL_OUT RALL_END,
};

/* ---- applying ops ---------------------------------------------------------------------- */

/* Step a write statement to completion and reset it. */
int pb__sqlite_step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

void pb__sqlite_bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* The lease column: this process's epoch, or NULL for a delivery made unleased. */
static void bind_lease(sqlite3_stmt *st, int i, int64_t lease, bool unleased)
{
    if (lease && !unleased)
        sqlite3_bind_int64(st, i, lease);
    else
        sqlite3_bind_null(st, i);
}

static int apply_ingest(struct sq *q, struct pb_op *op)
{
    struct pb_op_ingest *in = &op->u.ingest;
    sqlite3_stmt *st;
    int rc;

    in->duplicate = false;
    in->dup_msg_id[0] = '\0';
    in->msg_seq = 0;
    if (!in->pipeline || !in->msg_id || (in->noutputs && !in->outputs) || (!in->body && in->len)) {
        op->status = PB_EINVAL;
        return 0;
    }

    if (in->idem_key) {
        st = q->ws[W_IDEM_GET];
        sqlite3_bind_text(st, 1, in->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, in->idem_key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, in->received_at);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(in->dup_msg_id, sizeof(in->dup_msg_id), "%s", t ? (const char *)t : "");
            in->duplicate = true;
            sqlite3_reset(st);
            return 0;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return pb__sqlite_write_fail(q, rc, "idempotency lookup");
    }

    /* The message first: a duplicate msg_id fails here, before any write. */
    st = q->ws[W_MSG_INS];
    sqlite3_bind_text(st, 1, in->msg_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, in->pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, in->received_at);
    pb__sqlite_bind_text_or_null(st, 4, in->content_type);
    sqlite3_bind_blob64(st, 5, in->body ? in->body : "", in->len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, pb__store_body_crc(in->body, in->len));
    if (in->meta)
        sqlite3_bind_text(st, 7, in->meta, (int)in->meta_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    pb__sqlite_bind_text_or_null(st, 8, in->idem_key);
    rc = pb__sqlite_step_done(st);
    if (rc != SQLITE_OK) {
        if ((rc & 0xff) == SQLITE_CONSTRAINT || (rc & 0xff) == SQLITE_TOOBIG) {
            op->status = pb__sqlite_map_rc(q->db, rc);
            return 0;
        }
        return pb__sqlite_write_fail(q, rc, "insert message");
    }
    in->msg_seq = sqlite3_last_insert_rowid(q->db);

    if (in->idem_key) {
        st = q->ws[W_IDEM_PUT];
        sqlite3_bind_text(st, 1, in->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, in->idem_key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, in->msg_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, in->idem_expires_at);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert idempotency key");
    }

    if (in->dead_reason) {
        size_t rl = pb__store_utf8_cut(in->dead_reason, PB_ERROR_EXCERPT_MAX);
        st = q->ws[W_DEAD_IN_DLV];
        sqlite3_bind_int64(st, 1, in->msg_seq);
        sqlite3_bind_text(st, 2, in->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, in->received_at);
        sqlite3_bind_text(st, 4, in->dead_reason, (int)rl, SQLITE_STATIC);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert dead delivery");
        int64_t id = sqlite3_last_insert_rowid(q->db);
        st = q->ws[W_DEAD_IN_ATT];
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, in->received_at);
        sqlite3_bind_text(st, 3, in->dead_reason, (int)rl, SQLITE_STATIC);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert dead attempt");
        return 0;
    }

    st = q->ws[W_DLV_INS];
    sqlite3_bind_int64(st, 1, in->msg_seq);
    sqlite3_bind_text(st, 2, in->pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, in->first_due_at);
    sqlite3_bind_int64(st, 5, in->received_at);
    for (size_t i = 0; i < in->noutputs; i++) {
        sqlite3_bind_text(st, 3, in->outputs[i], -1, SQLITE_STATIC);
        bind_lease(st, 6, in->lease, i < 64 && (in->unleased >> i & 1));
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert delivery");
        if (in->delivery_ids)
            in->delivery_ids[i] = sqlite3_last_insert_rowid(q->db);
    }
    return 0;
}

static int kv_write(struct sq *q, const struct pb_kv_put *kv, size_t n, int64_t now)
{
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *st = q->ws[kv[i].value ? W_KV_PUT : W_KV_DEL];
        sqlite3_bind_text(st, 1, kv[i].scope, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, kv[i].key, -1, SQLITE_STATIC);
        if (kv[i].value) {
            sqlite3_bind_blob64(st, 3, kv[i].value, kv[i].len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 4, now);
        }
        int rc = pb__sqlite_step_done(st);
        if (rc != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "key-value write");
    }
    return 0;
}

static bool kv_ok(const struct pb_kv_put *kv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!kv[i].scope || !kv[i].key || (kv[i].len && !kv[i].value))
            return false;
    return true;
}

/* Every item is checked before anything is written, so an invalid one
 * leaves nothing of the op behind. */
static int apply_submit(struct sq *q, struct pb_op *op)
{
    struct pb_op_submit *sb = &op->u.submit;
    if ((sb->n && !sb->items) || (sb->nkv && !kv_ok(sb->kv, sb->nkv))) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < sb->n; i++) {
        const struct pb_op_ingest *in = &sb->items[i];
        if (!in->pipeline || !in->msg_id || (in->noutputs && !in->outputs) ||
            (!in->body && in->len)) {
            op->status = PB_EINVAL;
            return 0;
        }
    }
    for (size_t i = 0; i < sb->n; i++) {
        struct pb_op item = {.kind = PB_OP_INGEST};
        item.u.ingest = sb->items[i];
        int rc = apply_ingest(q, &item);
        if (rc)
            return rc;
        if (item.status)
            return pb__sqlite_write_fail(q, SQLITE_CONSTRAINT, "insert message of a batch");
        sb->items[i] = item.u.ingest;
    }
    return kv_write(q, sb->kv, sb->nkv, sb->now);
}

static int apply_claim(struct sq *q, struct pb_op *op)
{
    struct pb_op_claim *c = &op->u.claim;
    sqlite3_stmt *st = q->ws[W_CLAIM], *set = q->ws[W_LEASE_SET];
    int rc;

    c->n = 0;
    if (!c->pipeline || !c->output || !c->cb || !c->lease) {
        op->status = PB_EINVAL;
        return 0;
    }
    sqlite3_bind_text(st, 1, c->pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->output, -1, SQLITE_STATIC);
    if (c->sub)
        sqlite3_bind_text(st, 3, c->sub, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, c->lease);
    sqlite3_bind_int64(st, 5, c->limit > INT64_MAX ? INT64_MAX : (int64_t)c->limit);
    /* Rows first (the statement reads while the leases are written after). */
    int64_t *ids = c->limit ? malloc(c->limit * sizeof(*ids)) : NULL;
    if (c->limit && !ids) {
        sqlite3_reset(st);
        op->status = PB_ENOMEM;
        return 0;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct pb_pending row = {
            .delivery_id = sqlite3_column_int64(st, 0),
            .msg_seq = sqlite3_column_int64(st, 1),
            .msg_id = (const char *)sqlite3_column_text(st, 2),
            .attempts = sqlite3_column_int(st, 3),
            .next_at = sqlite3_column_int64(st, 4),
            .received_at = sqlite3_column_int64(st, 5),
            .content_type = (const char *)sqlite3_column_text(st, 6),
        };
        row.body = sqlite3_column_blob(st, 7);
        row.len = (size_t)sqlite3_column_bytes(st, 7);
        if (!row.body)
            row.body = "";
        row.body_damaged = !pb__sqlite_body_intact(st, 8, row.body, row.len);
        row.meta = (const char *)sqlite3_column_text(st, 9);
        row.meta_len = row.meta ? (size_t)sqlite3_column_bytes(st, 9) : 0;
        row.key = (const char *)sqlite3_column_text(st, 10);
        row.key_known = sqlite3_column_int(st, 11) != 0;
        if (!row.msg_id || c->n >= c->limit)
            break;
        if (c->cb(c->arg, &row) != 0)
            break;
        ids[c->n++] = row.delivery_id;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        free(ids);
        return pb__sqlite_write_fail(q, rc, "claim");
    }
    for (size_t i = 0; i < c->n; i++) {
        sqlite3_bind_int64(set, 1, ids[i]);
        sqlite3_bind_int64(set, 2, c->lease);
        if ((rc = pb__sqlite_step_done(set)) != SQLITE_OK) {
            free(ids);
            return pb__sqlite_write_fail(q, rc, "lease");
        }
    }
    free(ids);
    return 0;
}

static int apply_sub_kill(struct sq *q, struct pb_op *op)
{
    struct pb_op_sub_kill *k = &op->u.sub_kill;
    k->dead = 0;
    if (!k->pipeline || !k->output || !k->sub || !k->reason) {
        op->status = PB_EINVAL;
        return 0;
    }
    size_t rl = pb__store_utf8_cut(k->reason, PB_ERROR_EXCERPT_MAX);
    for (int w = W_SUB_KILL_ATT; w <= W_SUB_KILL_DLV; w++) {
        sqlite3_stmt *st = q->ws[w];
        sqlite3_bind_text(st, 1, k->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, k->output, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, k->sub, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, k->now);
        sqlite3_bind_text(st, 5, k->reason, (int)rl, SQLITE_STATIC);
        int rc = pb__sqlite_step_done(st);
        if (rc != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "kill sub-output deliveries");
        if (w == W_SUB_KILL_DLV)
            k->dead = sqlite3_changes64(q->db);
    }
    return 0;
}

static int apply_release(struct sq *q, struct pb_op *op)
{
    struct pb_op_release *r = &op->u.release;
    sqlite3_stmt *st = q->ws[W_LEASE_DROP];
    if (r->n && !r->ids) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < r->n; i++) {
        sqlite3_bind_int64(st, 1, r->ids[i]);
        sqlite3_bind_int64(st, 2, r->lease);
        int rc = pb__sqlite_step_done(st);
        if (rc != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "release");
    }
    return 0;
}

static int apply_kv(struct sq *q, struct pb_op *op)
{
    if (!kv_ok(op->u.kv.kv, op->u.kv.n)) {
        op->status = PB_EINVAL;
        return 0;
    }
    return kv_write(q, op->u.kv.kv, op->u.kv.n, op->u.kv.now);
}

/* A process step's key: claimed for its owner unless another holds it
 * unexpired (the same table as the idempotency keys, scope for pipeline). */
static int apply_key(struct sq *q, struct pb_op *op)
{
    struct pb_op_key *k = &op->u.key;
    k->first = false;
    k->holder[0] = '\0';
    if (!k->scope || !k->key || !k->owner || strlen(k->owner) >= sizeof(k->holder)) {
        op->status = PB_EINVAL;
        return 0;
    }
    sqlite3_stmt *st = q->ws[W_IDEM_GET];
    sqlite3_bind_text(st, 1, k->scope, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, k->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, k->now);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(k->holder, sizeof(k->holder), "%s", t ? (const char *)t : "");
        k->first = strcmp(k->holder, k->owner) == 0;
        sqlite3_reset(st);
        return 0;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return pb__sqlite_write_fail(q, rc, "key lookup");
    st = q->ws[W_IDEM_PUT];
    sqlite3_bind_text(st, 1, k->scope, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, k->key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, k->owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, k->expires_at);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "insert key");
    snprintf(k->holder, sizeof(k->holder), "%s", k->owner);
    k->first = true;
    return 0;
}

/* An attempt that ends its delivery at the first try is not written to
 * attempts: the delivery's row (last_status, last_error, updated_at,
 * last_latency_ms) holds it, and readers show it from there. */
static bool final_at_first(int attempt, enum pb_dstate state)
{
    return attempt == 1 && state != PB_DSTATE_PENDING;
}

static int insert_attempt(struct sq *q, int64_t delivery_id, int n, int64_t started_at,
                          int64_t latency_ms, int status, enum pb_dstate state, const char *error,
                          size_t elen, const char *answer, size_t alen)
{
    sqlite3_stmt *st = q->ws[W_ATT_INS];
    sqlite3_bind_int64(st, 1, delivery_id);
    sqlite3_bind_int(st, 2, n);
    sqlite3_bind_int64(st, 3, started_at);
    sqlite3_bind_int64(st, 4, latency_ms);
    sqlite3_bind_int(st, 5, status);
    sqlite3_bind_int(st, 6, (int)state);
    if (error)
        sqlite3_bind_text(st, 7, error, (int)elen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    if (alen)
        sqlite3_bind_text(st, 8, answer, (int)alen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 8);
    int rc = pb__sqlite_step_done(st);
    return rc == SQLITE_OK ? 0 : pb__sqlite_write_fail(q, rc, "insert attempt");
}

static int apply_result(struct sq *q, struct pb_op *op)
{
    struct pb_op_result *r = &op->u.result;
    sqlite3_stmt *st;
    size_t elen = r->error ? pb__store_utf8_cut(r->error, PB_ERROR_EXCERPT_MAX) : 0;
    size_t alen = r->answer ? pb__store_utf8_cut(r->answer, PB_STORE_ANSWER_MAX) : 0;
    bool first = final_at_first(r->attempt, r->state);
    int rc;

    if (r->attempt < 1 || (r->state != PB_DSTATE_PENDING && r->state != PB_DSTATE_DELIVERED &&
                           r->state != PB_DSTATE_DEAD && r->state != PB_DSTATE_FILTERED)) {
        op->status = PB_EINVAL;
        return 0;
    }

    /* Only a pending delivery takes a result: final states stay final. */
    st = q->ws[W_DLV_RESULT];
    sqlite3_bind_int64(st, 1, r->delivery_id);
    sqlite3_bind_int(st, 2, (int)r->state);
    sqlite3_bind_int(st, 3, r->attempt);
    sqlite3_bind_int64(st, 4, r->next_at);
    sqlite3_bind_int64(st, 5, r->started_at + r->latency_ms);
    sqlite3_bind_int(st, 6, r->status);
    if (r->error)
        sqlite3_bind_text(st, 7, r->error, (int)elen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    bind_lease(st, 8, r->lease, false);
    sqlite3_bind_int64(st, 9, r->latency_ms);
    /* The answer is kept once: in the delivery's row only when no attempt
     * row is written. */
    if (first && alen)
        sqlite3_bind_text(st, 10, r->answer, (int)alen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 10);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "update delivery");
    if (sqlite3_changes(q->db) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }
    if (first)
        return 0; /* the delivery's row holds it */
    rc = insert_attempt(q, r->delivery_id, r->attempt, r->started_at, r->latency_ms, r->status,
                        r->state, r->error, elen, r->answer, alen);
    return rc < 0 ? rc : 0;
}

/* Look up a DEAD delivery: 1 found, 0 not, < 0 error. */
int pb__sqlite_find_dead(struct sq *q, int64_t id, int64_t *msg_seq, char *pipeline, size_t plen,
                         char *output, size_t olen, char *sub, size_t slen)
{
    sqlite3_stmt *st = q->ws[W_DEAD_GET];
    int rc;

    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *msg_seq = sqlite3_column_int64(st, 0);
        if (pipeline)
            snprintf(pipeline, plen, "%s", (const char *)sqlite3_column_text(st, 1));
        if (output)
            snprintf(output, olen, "%s", (const char *)sqlite3_column_text(st, 2));
        if (sub) {
            const char *t = (const char *)sqlite3_column_text(st, 3);
            snprintf(sub, slen, "%s", t ? t : "");
        }
        sqlite3_reset(st);
        return 1;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : pb__sqlite_write_fail(q, rc, "find dead delivery");
}

/* Dead delivery id becomes REPLAYED and a new pending one (unleased) takes
 * its place. 0 (*new_id set), PB_ENOTFOUND (op-local), or a broken
 * transaction. */
static int replay_one(struct sq *q, int64_t id, int64_t now, char *pipeline, size_t plen,
                      char *output, size_t olen, int64_t *new_id)
{
    sqlite3_stmt *st;
    int64_t msg_seq = 0;
    char sub[PB_SUB_ID_MAX + 8];
    int rc = pb__sqlite_find_dead(q, id, &msg_seq, pipeline, plen, output, olen, sub, sizeof(sub));
    if (rc <= 0)
        return rc == 0 ? PB_ENOTFOUND : rc;
    st = q->ws[W_DLV_MARK_REPLAYED];
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, now);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "mark replayed");
    st = q->ws[W_DLV_REPLAY];
    sqlite3_bind_int64(st, 1, msg_seq);
    sqlite3_bind_text(st, 2, pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, output, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now);
    sqlite3_bind_int64(st, 5, id);
    if (sub[0])
        sqlite3_bind_text(st, 6, sub, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 6);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "insert replay");
    *new_id = sqlite3_last_insert_rowid(q->db);
    if (sub[0]) {
        /* The caller sees the sub-output it goes to, as the admin API names it. */
        size_t ol = strlen(output);
        snprintf(output + ol, olen - ol, "/%s", sub);
    }
    return 0;
}

static int apply_replay(struct sq *q, struct pb_op *op)
{
    struct pb_op_replay *r = &op->u.replay;
    r->new_delivery_id = 0;
    int rc = replay_one(q, r->delivery_id, r->now, r->pipeline, sizeof(r->pipeline), r->output,
                        sizeof(r->output), &r->new_delivery_id);
    if (rc == PB_ENOTFOUND) {
        op->status = rc;
        return 0;
    }
    return rc;
}

/* At most limit at a time, in id order (so new ids keep the old order): a
 * large replay is many short transactions, never one long one that holds
 * up every other commit. */
static int apply_replay_all(struct sq *q, struct pb_op *op)
{
    struct pb_op_replay_all *r = &op->u.replay_all;
    if (r->ids) {
        r->count = 0;
        r->more = false;
        for (size_t i = 0; i < r->nids; i++) {
            char pipeline[PB_NAME_MAX_STORE], output[2 * PB_NAME_MAX_STORE];
            int64_t nid = 0;
            int rc = replay_one(q, r->ids[i], r->now, pipeline, sizeof(pipeline), output,
                                sizeof(output), &nid);
            if (rc && rc != PB_ENOTFOUND)
                return rc;
            r->count += rc == 0;
        }
        return 0;
    }
    int variant = (r->pipeline ? 1 : 0) | (r->output ? 2 : 0);
    sqlite3_stmt *st = q->ws[W_RALL + variant];
    size_t limit = r->limit ? r->limit : PB_REPLAY_ALL_BATCH;
    int64_t *ids = malloc(limit * sizeof(*ids));
    size_t n = 0;
    int rc;

    r->count = 0;
    if (!ids) {
        op->status = PB_ENOMEM;
        return 0;
    }
    if (r->pipeline)
        sqlite3_bind_text(st, 1, r->pipeline, -1, SQLITE_STATIC);
    if (r->output) {
        sqlite3_bind_text(st, 2, r->output, -1, SQLITE_STATIC);
        if (r->sub)
            sqlite3_bind_text(st, 5, r->sub, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 5);
    }
    sqlite3_bind_int64(st, 4, r->since);
    sqlite3_bind_int64(st, 6, (int64_t)limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < limit)
        ids[n++] = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        free(ids);
        return pb__sqlite_write_fail(q, rc, "replay all");
    }
    for (size_t i = 0; i < n; i++) {
        char pipeline[PB_NAME_MAX_STORE], output[2 * PB_NAME_MAX_STORE];
        int64_t nid = 0;
        rc =
            replay_one(q, ids[i], r->now, pipeline, sizeof(pipeline), output, sizeof(output), &nid);
        if (rc && rc != PB_ENOTFOUND) {
            free(ids);
            return rc;
        }
        if (rc == 0)
            r->count++;
    }
    r->more = n == limit;
    free(ids);
    return 0;
}

/* Delete dead delivery id (and its message when unused): 1 done, 0 not
 * dead, < 0 a broken transaction. */
static int purge_one(struct sq *q, int64_t id)
{
    int64_t msg_seq = 0;
    sqlite3_stmt *st;
    int rc = pb__sqlite_find_dead(q, id, &msg_seq, NULL, 0, NULL, 0, NULL, 0);

    if (rc <= 0)
        return rc;
    st = q->ws[W_DLV_DEL]; /* attempts go with it (ON DELETE CASCADE) */
    sqlite3_bind_int64(st, 1, id);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "delete delivery");
    st = q->ws[W_MSG_DEL_UNUSED];
    sqlite3_bind_int64(st, 1, msg_seq);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "delete message");
    return 1;
}

static int apply_purge(struct sq *q, struct pb_op *op)
{
    struct pb_op_purge *p = &op->u.purge;
    int rc;
    p->count = 0;
    if (!p->ids) {
        rc = purge_one(q, p->delivery_id);
        if (rc == 0)
            op->status = PB_ENOTFOUND;
        p->count = rc > 0;
        return rc < 0 ? rc : 0;
    }
    for (size_t i = 0; i < p->nids; i++) {
        if ((rc = purge_one(q, p->ids[i])) < 0)
            return rc;
        p->count += rc;
    }
    return 0;
}

static int apply_expire(struct sq *q, struct pb_op *op)
{
    struct pb_op_expire *e = &op->u.expire;
    sqlite3_stmt *st;
    int rc;

    e->deleted = 0;
    st = q->ws[W_IDEM_EXPIRE];
    sqlite3_bind_int64(st, 1, e->now);
    sqlite3_bind_int64(st, 2, PB_STORE_EXPIRE_BATCH);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "expire idempotency keys");
    if (e->retention_ms < 0)
        return 0;
    st = q->ws[W_MSG_EXPIRE];
    sqlite3_bind_int64(st, 1, e->now - e->retention_ms);
    sqlite3_bind_int64(st, 2, PB_STORE_EXPIRE_BATCH);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "expire messages");
    e->deleted = sqlite3_changes64(q->db);
    return 0;
}

/* Validation comes first in each of these: an op-local outcome must leave
 * nothing written, since the transaction goes on with the other ops. */

static int apply_fanout(struct sq *q, struct pb_op *op)
{
    struct pb_op_fanout *f = &op->u.fanout;
    size_t nlen = f->note ? pb__store_utf8_cut(f->note, PB_ERROR_EXCERPT_MAX) : 0;
    sqlite3_stmt *st;
    int rc;

    if (f->attempt < 1 || (f->n && !f->subs)) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < f->n; i++) {
        if (!f->subs[i]) {
            op->status = PB_EINVAL;
            return 0;
        }
    }

    st = q->ws[W_FAN_PARENT];
    sqlite3_bind_int64(st, 1, f->delivery_id);
    sqlite3_bind_int(st, 2, f->attempt);
    sqlite3_bind_int64(st, 3, f->now);
    bind_lease(st, 4, f->lease, false);
    if (f->note)
        sqlite3_bind_text(st, 5, f->note, (int)nlen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "finish fanned-out delivery");
    if (sqlite3_changes(q->db) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }

    if (!final_at_first(f->attempt, PB_DSTATE_DELIVERED) &&
        (rc = insert_attempt(q, f->delivery_id, f->attempt, f->now, 0, 0, PB_DSTATE_DELIVERED,
                             f->note, nlen, NULL, 0)) < 0)
        return rc;

    /* One insert per child, in order: AUTOINCREMENT ids grow with i. */
    st = q->ws[W_FAN_CHILD];
    sqlite3_bind_int64(st, 1, f->delivery_id);
    sqlite3_bind_int64(st, 3, f->now);
    for (size_t i = 0; i < f->n; i++) {
        sqlite3_bind_text(st, 2, f->subs[i], -1, SQLITE_STATIC);
        bind_lease(st, 4, f->lease, f->unleased && f->unleased[i]);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert fan-out delivery");
        if (f->child_ids)
            f->child_ids[i] = sqlite3_last_insert_rowid(q->db);
    }
    return 0;
}

/* Insert one delivery per name: pending (state 0) or final with note. */
static int insert_deliveries(struct sq *q, int64_t msg_seq, const char *pipeline, int64_t now,
                             size_t n, const char *const *outputs, enum pb_dstate state,
                             const char *note, int64_t lease, uint64_t unleased, int64_t *ids)
{
    sqlite3_stmt *st = q->ws[state == PB_DSTATE_PENDING ? W_DLV_INS : W_DLV_FINAL];
    int rc;

    sqlite3_bind_int64(st, 1, msg_seq);
    sqlite3_bind_text(st, 2, pipeline, -1, SQLITE_STATIC);
    if (state == PB_DSTATE_PENDING) {
        sqlite3_bind_int64(st, 4, now);
        sqlite3_bind_int64(st, 5, now);
    } else {
        sqlite3_bind_int(st, 4, (int)state);
        sqlite3_bind_int64(st, 5, now);
        pb__sqlite_bind_text_or_null(st, 6, note);
    }
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(st, 3, outputs[i], -1, SQLITE_STATIC);
        if (state == PB_DSTATE_PENDING)
            bind_lease(st, 6, lease, i < 64 && (unleased >> i & 1));
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "insert delivery");
        if (ids)
            ids[i] = sqlite3_last_insert_rowid(q->db);
    }
    return 0;
}

static int apply_route(struct sq *q, struct pb_op *op)
{
    struct pb_op_route *r = &op->u.route;
    size_t nlen = r->note ? pb__store_utf8_cut(r->note, PB_ERROR_EXCERPT_MAX) : 0;
    sqlite3_stmt *st;
    int rc;

    if (r->attempt < 1 || !r->pipeline || (r->nmsgs && !r->msgs) ||
        (r->state != PB_DSTATE_DELIVERED && r->state != PB_DSTATE_FILTERED)) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (size_t i = 0; i < r->nmsgs; i++) {
        const struct pb_route_msg *m = &r->msgs[i];
        if ((m->noutputs && !m->outputs) || (m->nfinal && !m->final_outputs) ||
            (m->msg_id && !m->body)) {
            op->status = PB_EINVAL;
            return 0;
        }
    }

    st = q->ws[W_ROUTE_FINISH];
    sqlite3_bind_int64(st, 1, r->delivery_id);
    sqlite3_bind_int(st, 2, (int)r->state);
    sqlite3_bind_int(st, 3, r->attempt);
    sqlite3_bind_int64(st, 4, r->now);
    if (r->note)
        sqlite3_bind_text(st, 5, r->note, (int)nlen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    bind_lease(st, 6, r->lease, false);
    if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "finish route delivery");
    if (sqlite3_changes(q->db) == 0) {
        op->status = PB_ENOTFOUND;
        return 0;
    }
    if (!final_at_first(r->attempt, r->state) &&
        (rc = insert_attempt(q, r->delivery_id, r->attempt, r->now, 0, 0, r->state, r->note, nlen,
                             NULL, 0)) < 0)
        return rc;

    for (size_t i = 0; i < r->nmsgs; i++) {
        struct pb_route_msg *m = &r->msgs[i];
        m->msg_seq = r->msg_seq;
        if (m->msg_id) {
            st = q->ws[W_CHILD_INS];
            sqlite3_bind_text(st, 1, m->msg_id, -1, SQLITE_STATIC);
            sqlite3_bind_blob64(st, 2, m->body, m->len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, pb__store_body_crc(m->body, m->len));
            sqlite3_bind_int64(st, 4, r->msg_seq);
            pb__sqlite_bind_text_or_null(st, 5, m->key);
            if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
                return pb__sqlite_write_fail(q, rc, "insert split message");
            m->msg_seq = sqlite3_last_insert_rowid(q->db);
        } else if (m->body) {
            st = q->ws[W_ROUTED_PUT];
            sqlite3_bind_int64(st, 1, r->msg_seq);
            sqlite3_bind_blob64(st, 2, m->body, m->len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, pb__store_body_crc(m->body, m->len));
            pb__sqlite_bind_text_or_null(st, 4, m->key);
            if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
                return pb__sqlite_write_fail(q, rc, "insert routed body");
        }
        rc = insert_deliveries(q, m->msg_seq, r->pipeline, r->now, m->noutputs, m->outputs,
                               PB_DSTATE_PENDING, NULL, r->lease, m->unleased, m->delivery_ids);
        if (rc == 0)
            rc = insert_deliveries(q, m->msg_seq, r->pipeline, r->now, m->nfinal, m->final_outputs,
                                   m->final_state, m->final_note, 0, 0, NULL);
        if (rc)
            return rc;
    }
    return 0;
}

static int apply_orphans(struct sq *q, struct pb_op *op)
{
    struct pb_op_orphans *o = &op->u.orphans;
    int rc;

    o->dead = 0;
    if (!o->pipeline || !o->output) {
        op->status = PB_EINVAL;
        return 0;
    }
    for (int w = W_ORPHAN_ATT; w <= W_ORPHAN_DLV; w++) {
        sqlite3_stmt *st = q->ws[w];
        sqlite3_bind_text(st, 1, o->pipeline, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, o->output, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, o->now);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK)
            return pb__sqlite_write_fail(q, rc, "dead-letter a removed output's deliveries");
    }
    o->dead = sqlite3_changes64(q->db);
    return 0;
}

int pb__sqlite_apply(void *ctx, struct pb_op *op)
{
    struct sq *q = ctx;

    switch (op->kind) {
    case PB_OP_INGEST:
        return apply_ingest(q, op);
    case PB_OP_RESULT:
        return apply_result(q, op);
    case PB_OP_REPLAY:
        return apply_replay(q, op);
    case PB_OP_REPLAY_ALL:
        return apply_replay_all(q, op);
    case PB_OP_PURGE:
        return apply_purge(q, op);
    case PB_OP_EXPIRE:
        return apply_expire(q, op);
    case PB_OP_FANOUT:
        return apply_fanout(q, op);
    case PB_OP_ROUTE:
        return apply_route(q, op);
    case PB_OP_ORPHANS:
        return apply_orphans(q, op);
    case PB_OP_SUBMIT:
        return apply_submit(q, op);
    case PB_OP_KV:
        return apply_kv(q, op);
    case PB_OP_CLAIM:
        return apply_claim(q, op);
    case PB_OP_RELEASE:
        return apply_release(q, op);
    case PB_OP_SUB_KILL:
        return apply_sub_kill(q, op);
    case PB_OP_KEY:
        return apply_key(q, op);
    case PB_OP_INJECT:
        return pb__sqlite_apply_inject(q, op);
    }
    op->status = PB_EINVAL;
    return 0;
}
