/* sqlite_inject.c - PB_OP_INJECT on SQLite: a message made by the admin side
 * (a dead letter's corrected body, a webhook endpoint's test event) and its
 * deliveries, in the writer's transaction (writer thread only).
 *
 * Validation and the lookups come first, so that an op-local outcome
 * (PB_ENOTFOUND, PB_EINVAL, a duplicate id) leaves nothing written: the
 * transaction goes on with the other ops. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite_int.h"

struct old {
    int64_t seq;
    char pipeline[PB_NAME_MAX_STORE], output[PB_NAME_MAX_STORE], sub[PB_SUB_ID_MAX + 8];
    char *meta;
    size_t meta_len;
    bool key_known;
    char *okey;
};

static char *dup_col(sqlite3_stmt *st, int i, size_t *len, bool *oom)
{
    const char *t = pb__sqlite_text_col(st, i);
    if (!t)
        return NULL;
    size_t n = (size_t)sqlite3_column_bytes(st, i);
    char *c = malloc(n + 1);
    if (!c) {
        *oom = true;
        return NULL;
    }
    memcpy(c, t, n + 1);
    if (len)
        *len = n;
    return c;
}

/* The dead delivery and what its message carries: 1 found, 0 not, < 0 a
 * broken transaction, PB_ENOMEM (op-local) when out of memory. */
static int load_old(struct sq *q, int64_t id, struct old *o)
{
    int rc = pb__sqlite_find_dead(q, id, &o->seq, o->pipeline, sizeof(o->pipeline), o->output,
                                  sizeof(o->output), o->sub, sizeof(o->sub));
    if (rc <= 0)
        return rc;
    sqlite3_stmt *st = q->ws[W_INJ_OLD];
    sqlite3_bind_int64(st, 1, o->seq);
    rc = sqlite3_step(st);
    bool oom = false;
    if (rc == SQLITE_ROW) {
        o->meta = dup_col(st, 1, &o->meta_len, &oom);
        o->key_known = sqlite3_column_int(st, 2) != 0;
        o->okey = dup_col(st, 3, NULL, &oom);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? 0 : pb__sqlite_write_fail(q, rc, "read dead letter's message");
    return oom ? PB_ENOMEM : 1;
}

static int insert_message(struct sq *q, struct pb_op *op, const char *pipeline, const char *meta,
                          size_t meta_len, int64_t edit_of)
{
    struct pb_op_inject *in = &op->u.inject;
    sqlite3_stmt *st = q->ws[W_INJ_MSG];
    sqlite3_bind_text(st, 1, in->msg_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, in->now);
    pb__sqlite_bind_text_or_null(st, 4, in->content_type);
    sqlite3_bind_blob64(st, 5, in->body ? in->body : "", in->len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, pb__store_body_crc(in->body, in->len));
    if (meta)
        sqlite3_bind_text(st, 7, meta, (int)meta_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    if (edit_of)
        sqlite3_bind_int64(st, 8, edit_of);
    else
        sqlite3_bind_null(st, 8);
    int rc = pb__sqlite_step_done(st);
    if (rc != SQLITE_OK) {
        if ((rc & 0xff) == SQLITE_CONSTRAINT || (rc & 0xff) == SQLITE_TOOBIG) {
            op->status = pb__sqlite_map_rc(q->db, rc);
            return 1;
        }
        return pb__sqlite_write_fail(q, rc, "insert message");
    }
    in->msg_seq = sqlite3_last_insert_rowid(q->db);
    return 0;
}

static int insert_delivery(struct sq *q, int64_t msg_seq, const char *pipeline, const char *output,
                           const char *sub, int64_t now, int64_t replay_of, int64_t *id)
{
    sqlite3_stmt *st = q->ws[W_DLV_REPLAY];
    sqlite3_bind_int64(st, 1, msg_seq);
    sqlite3_bind_text(st, 2, pipeline, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, output, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now);
    if (replay_of)
        sqlite3_bind_int64(st, 5, replay_of);
    else
        sqlite3_bind_null(st, 5);
    pb__sqlite_bind_text_or_null(st, 6, sub && *sub ? sub : NULL);
    int rc = pb__sqlite_step_done(st);
    if (rc != SQLITE_OK)
        return pb__sqlite_write_fail(q, rc, "insert delivery");
    *id = sqlite3_last_insert_rowid(q->db);
    return 0;
}

int pb__sqlite_apply_inject(struct sq *q, struct pb_op *op)
{
    struct pb_op_inject *in = &op->u.inject;
    struct old old = {0};
    int rc = 0;

    in->msg_seq = 0;
    in->pipeline_out[0] = in->output_out[0] = '\0';
    if (!in->msg_id || !in->delivery_ids || (!in->body && in->len) ||
        (in->ntargets && !in->outputs) || (!in->replaces && (!in->pipeline || in->ntargets == 0))) {
        op->status = PB_EINVAL;
        return 0;
    }
    const char *pipeline = in->pipeline, *meta = in->meta;
    size_t meta_len = in->meta_len;
    if (in->replaces) {
        rc = load_old(q, in->replaces, &old);
        if (rc <= 0) {
            if (rc == 0 || rc == PB_ENOMEM)
                op->status = rc == 0 ? PB_ENOTFOUND : PB_ENOMEM;
            rc = rc == PB_ENOMEM ? 0 : rc;
            goto out;
        }
        pipeline = old.pipeline;
        meta = old.meta;
        meta_len = old.meta_len;
    }
    if ((rc = insert_message(q, op, pipeline, meta, meta_len, old.seq)) != 0) {
        rc = rc > 0 ? 0 : rc;
        goto out;
    }
    size_t n = in->ntargets ? in->ntargets : 1;
    for (size_t i = 0; i < n; i++) {
        const char *output = in->ntargets ? in->outputs[i] : old.output;
        const char *sub = in->ntargets ? (in->subs ? in->subs[i] : NULL) : old.sub;
        /* The output gets the routed body and the key the route stage
         * recorded for the old message: the corrected body is the routed
         * one here. */
        if (i == 0 && old.key_known && strcmp(output, PB_ROUTE_OUTPUT) != 0) {
            sqlite3_stmt *st = q->ws[W_ROUTED_PUT];
            sqlite3_bind_int64(st, 1, in->msg_seq);
            sqlite3_bind_blob64(st, 2, in->body ? in->body : "", in->len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, pb__store_body_crc(in->body, in->len));
            pb__sqlite_bind_text_or_null(st, 4, old.okey);
            if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK) {
                rc = pb__sqlite_write_fail(q, rc, "insert routed body");
                goto out;
            }
        }
        rc = insert_delivery(q, in->msg_seq, pipeline, output, sub, in->now, in->replaces,
                             &in->delivery_ids[i]);
        if (rc)
            goto out;
    }
    if (in->replaces) {
        sqlite3_stmt *st = q->ws[W_DLV_MARK_REPLAYED];
        sqlite3_bind_int64(st, 1, in->replaces);
        sqlite3_bind_int64(st, 2, in->now);
        if ((rc = pb__sqlite_step_done(st)) != SQLITE_OK) {
            rc = pb__sqlite_write_fail(q, rc, "mark replayed");
            goto out;
        }
        snprintf(in->pipeline_out, sizeof(in->pipeline_out), "%s", old.pipeline);
        if (old.sub[0])
            snprintf(in->output_out, sizeof(in->output_out), "%s/%s", old.output, old.sub);
        else
            snprintf(in->output_out, sizeof(in->output_out), "%s", old.output);
    }
out:
    free(old.meta);
    free(old.okey);
    return rc;
}
