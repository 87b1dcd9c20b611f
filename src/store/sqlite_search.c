/* sqlite_search.c - the SQLite backend's searches for the admin API: dead
 * letters by filter, and messages for the message explorer.
 *
 * Each search is built from the filters it is given (only the conditions
 * that apply, so SQLite can pick an index for them), prepared on a read
 * connection of the pool and finalized after: these run on admin worker
 * threads, a few per second at most. Keyset paging: a page never re-reads
 * what came before it, whatever the table's size. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite_int.h"

struct sql {
    char text[2048];
    size_t len;
    bool overflow;
};

static void add(struct sql *q, const char *s)
{
    size_t n = strlen(s);
    if (q->len + n >= sizeof(q->text)) {
        q->overflow = true;
        return;
    }
    memcpy(q->text + q->len, s, n + 1);
    q->len += n;
}

static int prepare(sqlite3 *db, struct sql *q, sqlite3_stmt **st, struct pb_err *err)
{
    if (q->overflow)
        return pb_err_set(err, PB_EINTERNAL, "state store search too long");
    int rc = sqlite3_prepare_v2(db, q->text, (int)q->len, st, NULL);
    return rc == SQLITE_OK ? 0 : pb__sqlite_read_fail(db, rc, err, "prepare search");
}

static int stopped(struct pb_err *err)
{
    return pb_err_set(err, PB_ENOMEM, "out of memory reading the state store");
}

/* ---- dead letters ---------------------------------------------------------------------------- */

/* Parameters, by number in the SQL. */
enum {
    D_PIPELINE = 1,
    D_OUTPUT,
    D_AFTER,
    D_BEFORE,
    D_SINCE,
    D_UNTIL,
    D_ERROR,
    D_STATUS,
    D_LIMIT,
    D_SUB
};

int pb__sqlite_read_dead_letters(void *ctx, const struct pb_dead_query *f,
                                 const struct pb_read_cbs *cb, struct pb_err *err)
{
    struct sq *q = ctx;
    struct sql s = {0};
    sqlite3_stmt *st = NULL;
    int rc, ret = 0;

    /* An output takes its sub-outputs too (they are stored with its name),
     * or names one of them ("out/sub"): plain equalities, so the dead
     * letters' index gives them in id order. */
    char out[PB_NAME_MAX_STORE];
    const char *sub = NULL;
    if (f->output) {
        const char *slash = strchr(f->output, '/');
        snprintf(out, sizeof(out), "%.*s",
                 slash ? (int)(slash - f->output) : (int)strlen(f->output), f->output);
        sub = slash ? slash + 1 : NULL;
    }
    add(&s, PB__SQLITE_DEAD_COLS " WHERE d.state = 2");
    if (f->pipeline)
        add(&s, " AND d.pipeline = ?1");
    if (f->output)
        add(&s, sub ? " AND d.output = ?2 AND d.sub = ?10" : " AND d.output = ?2");
    if (f->newest_first && f->before_id > 0)
        add(&s, " AND d.id < ?4");
    else if (!f->newest_first && f->after_id > 0)
        add(&s, " AND d.id > ?3");
    if (f->since)
        add(&s, " AND d.updated_at >= ?5");
    if (f->until)
        add(&s, " AND d.updated_at < ?6");
    if (f->error)
        add(&s, " AND instr(lower(d.last_error), lower(?7)) > 0");
    if (f->status)
        add(&s, " AND d.last_status = ?8");
    add(&s, f->newest_first ? " ORDER BY d.id DESC LIMIT ?9" : " ORDER BY d.id LIMIT ?9");

    struct rconn *r = pb__sqlite_rconn_get(q, err);
    if (!r)
        return err ? err->code : PB_ESTORE;
    sqlite3 *db = pb__sqlite_rconn_db(r);
    if ((ret = prepare(db, &s, &st, err)) != 0)
        goto out;
    if (f->pipeline)
        sqlite3_bind_text(st, D_PIPELINE, f->pipeline, -1, SQLITE_STATIC);
    if (f->output)
        sqlite3_bind_text(st, D_OUTPUT, out, -1, SQLITE_STATIC);
    if (sub)
        sqlite3_bind_text(st, D_SUB, sub, -1, SQLITE_STATIC);
    if (f->newest_first && f->before_id > 0)
        sqlite3_bind_int64(st, D_BEFORE, f->before_id);
    else if (!f->newest_first && f->after_id > 0)
        sqlite3_bind_int64(st, D_AFTER, f->after_id);
    if (f->since)
        sqlite3_bind_int64(st, D_SINCE, f->since);
    if (f->until)
        sqlite3_bind_int64(st, D_UNTIL, f->until);
    if (f->error)
        sqlite3_bind_text(st, D_ERROR, f->error, -1, SQLITE_STATIC);
    if (f->status)
        sqlite3_bind_int(st, D_STATUS, f->status);
    sqlite3_bind_int(st, D_LIMIT, f->limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct pb_delivery_row d = pb__sqlite_dead_row(st, false);
        if (!d.msg_id || !d.pipeline || !d.output || (cb->delivery && cb->delivery(cb->arg, &d))) {
            ret = stopped(err);
            goto out;
        }
    }
    if (rc != SQLITE_DONE)
        ret = pb__sqlite_read_fail(db, rc, err, "dead letters");
out:
    sqlite3_finalize(st);
    pb__sqlite_rconn_put(q, r);
    return ret;
}

/* ---- messages ------------------------------------------------------------------------------ */

enum {
    M_PIPELINE = 1,
    M_ID,
    M_KEY,
    M_SINCE,
    M_UNTIL,
    M_STATE,
    M_OUTPUT,
    M_BEFORE_AT,
    M_BEFORE_SEQ,
    M_LIMIT
};

#define MSG_COLS                                                                                   \
    "SELECT m.seq, m.id, m.pipeline, m.received_at, m.content_type, m.body, m.body_crc, m.meta,"   \
    " (SELECT p.id FROM messages p WHERE p.seq = m.parent_seq), m.idem_key,"                       \
    " (SELECT e.id FROM messages e WHERE e.seq = m.edit_of) FROM messages m"

#define DLV_COLS                                                                                   \
    "SELECT id, output, state, attempts, next_at, created_at, updated_at, last_status,"            \
    " last_error, replay_of, sub FROM deliveries WHERE msg_seq = ?1 ORDER BY id"

static int deliveries(sqlite3 *db, sqlite3_stmt *dst, const struct pb_message_row *m,
                      const struct pb_read_cbs *cb, struct pb_err *err)
{
    int rc;
    sqlite3_reset(dst);
    sqlite3_bind_int64(dst, 1, m->seq);
    while ((rc = sqlite3_step(dst)) == SQLITE_ROW) {
        struct pb_delivery_row d = {
            .id = sqlite3_column_int64(dst, 0),
            .msg_id = m->id,
            .pipeline = m->pipeline,
            .output = pb__sqlite_text_col(dst, 1),
            .sub = pb__sqlite_text_col(dst, 10),
            .state = (enum pb_dstate)sqlite3_column_int(dst, 2),
            .attempts = sqlite3_column_int(dst, 3),
            .next_at = sqlite3_column_int64(dst, 4),
            .created_at = sqlite3_column_int64(dst, 5),
            .updated_at = sqlite3_column_int64(dst, 6),
            .has_status = sqlite3_column_type(dst, 7) != SQLITE_NULL,
            .last_status = sqlite3_column_int(dst, 7),
            .last_error = pb__sqlite_text_col(dst, 8),
            .last_error_len = (size_t)sqlite3_column_bytes(dst, 8),
            .replay_of = sqlite3_column_int64(dst, 9),
        };
        if (!d.output || (cb->delivery && cb->delivery(cb->arg, &d)))
            return stopped(err);
    }
    return rc == SQLITE_DONE ? 0 : pb__sqlite_read_fail(db, rc, err, "deliveries");
}

int pb__sqlite_search_messages(void *ctx, const struct pb_msg_query *f,
                               const struct pb_read_cbs *cb, struct pb_err *err)
{
    struct sq *q = ctx;
    struct sql s = {0};
    sqlite3_stmt *st = NULL, *dst = NULL;
    int rc, ret = 0;
    bool cursor = f->before_at || f->before_seq;

    add(&s, MSG_COLS " WHERE 1");
    if (f->pipeline)
        add(&s, " AND m.pipeline = ?1");
    if (f->msg_id)
        add(&s, " AND m.id = ?2");
    if (f->idem_key)
        add(&s, " AND m.idem_key = ?3");
    if (f->since)
        add(&s, " AND m.received_at >= ?4");
    if (f->until)
        add(&s, " AND m.received_at < ?5");
    if (cursor)
        add(&s, " AND (m.received_at, m.seq) < (?8, ?9)");
    if (f->state >= 0 || f->output) {
        add(&s, " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.msg_seq = m.seq");
        if (f->state >= 0)
            add(&s, " AND d.state = ?6");
        if (f->output)
            add(&s, " AND (d.output = ?7 OR d.output || '/' || d.sub = ?7)");
        add(&s, ")");
    }
    /* messages_received holds (received_at, seq): this order is its own. */
    add(&s, " ORDER BY m.received_at DESC, m.seq DESC LIMIT ?10");

    struct rconn *r = pb__sqlite_rconn_get(q, err);
    if (!r)
        return err ? err->code : PB_ESTORE;
    sqlite3 *db = pb__sqlite_rconn_db(r);
    if ((ret = prepare(db, &s, &st, err)) != 0)
        goto out;
    struct sql ds = {0};
    add(&ds, DLV_COLS);
    if ((ret = prepare(db, &ds, &dst, err)) != 0)
        goto out;
    if (f->pipeline)
        sqlite3_bind_text(st, M_PIPELINE, f->pipeline, -1, SQLITE_STATIC);
    if (f->msg_id)
        sqlite3_bind_text(st, M_ID, f->msg_id, -1, SQLITE_STATIC);
    if (f->idem_key)
        sqlite3_bind_text(st, M_KEY, f->idem_key, -1, SQLITE_STATIC);
    if (f->since)
        sqlite3_bind_int64(st, M_SINCE, f->since);
    if (f->until)
        sqlite3_bind_int64(st, M_UNTIL, f->until);
    if (f->state >= 0)
        sqlite3_bind_int(st, M_STATE, f->state);
    if (f->output)
        sqlite3_bind_text(st, M_OUTPUT, f->output, -1, SQLITE_STATIC);
    if (cursor) {
        sqlite3_bind_int64(st, M_BEFORE_AT, f->before_at);
        sqlite3_bind_int64(st, M_BEFORE_SEQ, f->before_seq);
    }
    sqlite3_bind_int(st, M_LIMIT, f->limit);
    /* One snapshot for the messages and their deliveries. */
    if ((rc = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL)) != SQLITE_OK) {
        ret = pb__sqlite_read_fail(db, rc, err, "begin");
        goto out;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct pb_message_row m = {
            .seq = sqlite3_column_int64(st, 0),
            .id = pb__sqlite_text_col(st, 1),
            .pipeline = pb__sqlite_text_col(st, 2),
            .received_at = sqlite3_column_int64(st, 3),
            .content_type = pb__sqlite_text_col(st, 4),
            .body = sqlite3_column_blob(st, 5),
            .len = (size_t)sqlite3_column_bytes(st, 5),
            .meta = pb__sqlite_text_col(st, 7),
            .meta_len = (size_t)sqlite3_column_bytes(st, 7),
            .parent_id = pb__sqlite_text_col(st, 8),
            .idem_key = pb__sqlite_text_col(st, 9),
            .edit_of = pb__sqlite_text_col(st, 10),
        };
        if (!m.body)
            m.body = "";
        m.body_damaged = !pb__sqlite_body_intact(st, 6, m.body, m.len);
        if (!m.id || !m.pipeline) {
            ret = stopped(err);
            goto out;
        }
        int want = cb->message ? cb->message(cb->arg, &m) : 0;
        if (want == PB_READ_SKIP)
            continue;
        if (want) {
            ret = stopped(err);
            goto out;
        }
        if ((ret = deliveries(db, dst, &m, cb, err)) != 0)
            goto out;
    }
    if (rc != SQLITE_DONE)
        ret = pb__sqlite_read_fail(db, rc, err, "messages");
out:
    sqlite3_finalize(st);
    sqlite3_finalize(dst);
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    pb__sqlite_rconn_put(q, r);
    return ret;
}
