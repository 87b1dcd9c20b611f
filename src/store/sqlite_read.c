/* sqlite_read.c - reads of the SQLite state store: a small pool of read
 * connections (WAL readers, usable from any thread while the writer
 * commits), pending deliveries for the dispatcher, counts for metrics,
 * managed webhook endpoints, and the JSON views of the admin API.
 *
 * Each pooled connection caches its prepared statements. A statement is
 * always reset before its connection goes back to the pool, so no reader
 * pins an old snapshot and blocks WAL checkpoints. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite_int.h"

/* Read statements, prepared on first use per read connection. */
enum {
    R_COUNT,
    R_MSG,
    R_MSG_DELIVERIES,
    R_ATTEMPTS,
    R_DEAD_ONE,
    R_COUNT_PENDING,
    R_MSG_CHILDREN,
    R_KV,
    R_MSG_EDITS,
    R_COUNT_DEAD,
    R_COUNT_ALL,
};

static const char *const rsql[R_COUNT_ALL] = {
    /* The route stage reads the body as received; outputs the routed one. */
    [R_COUNT_PENDING] = "SELECT pipeline, output, sub, 0, count(*) FROM deliveries"
                        " WHERE state = 0 GROUP BY pipeline, output, sub",
    [R_COUNT] = "SELECT pipeline, output, sub, state, count(*) FROM deliveries"
                " GROUP BY pipeline, output, sub, state",
    [R_MSG] =
        "SELECT m.seq, m.id, m.pipeline, m.received_at, m.content_type, m.body, m.body_crc,"
        " m.meta, (SELECT p.id FROM messages p WHERE p.seq = m.parent_seq), r.body, r.body_crc,"
        " m.idem_key, (SELECT e.id FROM messages e WHERE e.seq = m.edit_of)"
        " FROM messages m LEFT JOIN routed r ON r.seq = m.seq WHERE m.id = ?1",
    [R_MSG_CHILDREN] = "SELECT id FROM messages WHERE parent_seq = ?1 ORDER BY seq LIMIT 1000",
    [R_MSG_DELIVERIES] = "SELECT id, output, state, attempts, next_at, created_at, updated_at,"
                         " last_status, last_error, replay_of, sub, last_latency_ms, last_answer"
                         " FROM deliveries"
                         " WHERE msg_seq = ?1 ORDER BY id",
    [R_ATTEMPTS] = "SELECT n, started_at, latency_ms, status, state, error, answer FROM attempts"
                   " WHERE delivery_id = ?1 ORDER BY n",
    [R_DEAD_ONE] = PB__SQLITE_DEAD_COLS " WHERE d.id = ?1 AND d.state = 2",
    [R_KV] = "SELECT key, value FROM kv WHERE scope = ?1 ORDER BY key",
    [R_COUNT_DEAD] = "SELECT pipeline, output, sub, 2, count(*) FROM deliveries"
                     " WHERE state = 2 GROUP BY pipeline, output, sub",
    [R_MSG_EDITS] = "SELECT id FROM messages WHERE edit_of = ?1 ORDER BY seq LIMIT 1000",
};

struct rconn {
    sqlite3 *db;
    sqlite3_stmt *st[R_COUNT_ALL];
};

int pb__sqlite_read_fail(sqlite3 *db, int rc, struct pb_err *err, const char *what)
{
    return pb_err_set(err, pb__sqlite_map_rc(db, rc), "state store read failed (%s): %s", what,
                      db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

static void rconn_close(struct rconn *r)
{
    if (!r)
        return;
    for (int i = 0; i < R_COUNT_ALL; i++)
        sqlite3_finalize(r->st[i]);
    sqlite3_close(r->db);
    free(r);
}

void pb__sqlite_readers_close(struct sq *q)
{
    for (int i = 0; i < q->nidle; i++)
        rconn_close(q->idle[i]);
    q->nidle = 0;
}

struct rconn *pb__sqlite_rconn_get(struct sq *q, struct pb_err *err)
{
    struct rconn *r = NULL;

    pthread_mutex_lock(&q->pool_lock);
    if (q->nidle > 0)
        r = q->idle[--q->nidle];
    pthread_mutex_unlock(&q->pool_lock);
    if (r)
        return r;

    r = calloc(1, sizeof(*r));
    if (!r) {
        pb_err_set(err, PB_ENOMEM, "out of memory");
        return NULL;
    }
    if (pb__sqlite_open_conn(q, false, &r->db, err) < 0) {
        free(r);
        return NULL;
    }
    sqlite3_exec(r->db, "PRAGMA query_only=ON", NULL, NULL, NULL);
    return r;
}

void pb__sqlite_rconn_put(struct sq *q, struct rconn *r)
{
    if (!r)
        return;
    if (!sqlite3_get_autocommit(r->db))
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    pthread_mutex_lock(&q->pool_lock);
    if (q->nidle < READ_POOL_MAX) {
        q->idle[q->nidle++] = r;
        r = NULL;
    }
    pthread_mutex_unlock(&q->pool_lock);
    rconn_close(r);
}

/* Does the body match the checksum in column col (NULL: stored before
 * checksums were kept, taken as intact)? */
bool pb__sqlite_body_intact(sqlite3_stmt *st, int col, const void *body, size_t len)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ||
           sqlite3_column_int64(st, col) == pb__store_body_crc(body, len);
}

/* The cached statement i of r, prepared on first use. */
static sqlite3_stmt *rstmt(struct rconn *r, int i, struct pb_err *err)
{
    if (!r->st[i]) {
        int rc = sqlite3_prepare_v3(r->db, rsql[i], -1, SQLITE_PREPARE_PERSISTENT, &r->st[i], NULL);
        if (rc != SQLITE_OK) {
            pb__sqlite_read_fail(r->db, rc, err, "prepare");
            return NULL;
        }
    }
    return r->st[i];
}

int pb__sqlite_count(void *ctx, int which, pb_count_cb cb, void *arg, struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = pb__sqlite_rconn_get(q, err);
    sqlite3_stmt *st;
    int rc, ret = 0;

    if (!r)
        return err ? err->code : PB_ESTORE;
    int stmt = which == PB_DSTATE_PENDING ? R_COUNT_PENDING
               : which == PB_DSTATE_DEAD  ? R_COUNT_DEAD
                                          : R_COUNT;
    if (!(st = rstmt(r, stmt, err))) {
        ret = err ? err->code : PB_ESTORE;
        goto out;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *p = (const char *)sqlite3_column_text(st, 0);
        const char *o = (const char *)sqlite3_column_text(st, 1);
        if (!p || !o) {
            ret = pb_err_set(err, PB_ENOMEM, "out of memory reading the state store");
            goto out;
        }
        cb(arg, p, o, (const char *)sqlite3_column_text(st, 2),
           (enum pb_dstate)sqlite3_column_int(st, 3), sqlite3_column_int64(st, 4));
    }
    if (rc != SQLITE_DONE)
        ret = pb__sqlite_read_fail(r->db, rc, err, "count");
out:
    if (st)
        sqlite3_reset(st);
    pb__sqlite_rconn_put(q, r);
    return ret;
}

int pb__sqlite_kv_load(void *ctx, const char *scope, pb_kv_cb cb, void *arg, struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = pb__sqlite_rconn_get(q, err);
    sqlite3_stmt *st;
    int rc, ret = 0;

    if (!r)
        return err ? err->code : PB_ESTORE;
    if (!(st = rstmt(r, R_KV, err))) {
        ret = err ? err->code : PB_ESTORE;
        goto out;
    }
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        const void *v = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        if (!k) {
            ret = pb_err_set(err, PB_ENOMEM, "out of memory reading the state store");
            goto out;
        }
        if (cb(arg, k, v ? v : "", len))
            break;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        ret = pb__sqlite_read_fail(r->db, rc, err, "key-value read");
out:
    if (st)
        sqlite3_reset(st);
    pb__sqlite_rconn_put(q, r);
    return ret;
}

sqlite3 *pb__sqlite_rconn_db(struct rconn *r)
{
    return r->db;
}

/* ---- rows for the admin API ---------------------------------------------------------------- */

const char *pb__sqlite_text_col(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* Every attempt of delivery id to cb->attempt. */
/* d's attempts, in order. The attempt that ended d at its first try has no
 * row of its own (sqlite_write.c): it is made from d's row, latency being
 * the column that says the row holds it (NULL for rows written before). */
static int attempts(struct rconn *r, const struct pb_delivery_row *d, int64_t latency,
                    bool has_latency, const struct pb_read_cbs *cb, struct pb_err *err)
{
    sqlite3_stmt *st = rstmt(r, R_ATTEMPTS, err);
    int rc, last = 0;
    if (!st)
        return err ? err->code : PB_ESTORE;
    sqlite3_bind_int64(st, 1, d->id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        last = sqlite3_column_int(st, 0);
        struct pb_attempt_row a = {
            .n = sqlite3_column_int(st, 0),
            .started_at = sqlite3_column_int64(st, 1),
            .latency_ms = sqlite3_column_int64(st, 2),
            .status = sqlite3_column_int(st, 3),
            .state = (enum pb_dstate)sqlite3_column_int(st, 4),
            .error = pb__sqlite_text_col(st, 5),
            .error_len = (size_t)sqlite3_column_bytes(st, 5),
            .answer = pb__sqlite_text_col(st, 6),
            .answer_len = (size_t)sqlite3_column_bytes(st, 6),
        };
        if (cb->attempt && cb->attempt(cb->arg, &a)) {
            sqlite3_reset(st);
            return PB_ENOMEM;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return pb__sqlite_read_fail(r->db, rc, err, "attempts");
    if (last == 0 && d->attempts == 1 && has_latency && d->state != PB_DSTATE_PENDING) {
        struct pb_attempt_row a = {
            .n = 1,
            .started_at = d->updated_at - latency,
            .latency_ms = latency,
            .status = d->last_status,
            /* A replayed delivery was dead when its attempt ended. */
            .state = d->state == PB_DSTATE_REPLAYED ? PB_DSTATE_DEAD : d->state,
            .error = d->last_error,
            .error_len = d->last_error_len,
            .answer = d->last_answer,
            .answer_len = d->last_answer_len,
        };
        if (cb->attempt && cb->attempt(cb->arg, &a))
            return PB_ENOMEM;
    }
    return 0;
}

static int begin_read(struct rconn *r, struct pb_err *err)
{
    int rc = sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : pb__sqlite_read_fail(r->db, rc, err, "begin");
}

static void end_read(struct rconn *r)
{
    sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
}

static int stopped(struct pb_err *err)
{
    return pb_err_set(err, PB_ENOMEM, "out of memory reading the state store");
}

int pb__sqlite_read_message(void *ctx, const char *msg_id, const struct pb_read_cbs *cb,
                            struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = pb__sqlite_rconn_get(q, err);
    sqlite3_stmt *st = NULL, *dst = NULL, *cst = NULL, *est = NULL;
    int rc, ret = 0;

    if (!r)
        return err ? err->code : PB_ESTORE;
    if ((ret = begin_read(r, err)) < 0)
        goto out_put;
    if (!(st = rstmt(r, R_MSG, err)) || !(dst = rstmt(r, R_MSG_DELIVERIES, err)) ||
        !(cst = rstmt(r, R_MSG_CHILDREN, err)) || !(est = rstmt(r, R_MSG_EDITS, err))) {
        ret = err ? err->code : PB_ESTORE;
        goto out;
    }
    sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        ret = pb_err_set(err, PB_ENOTFOUND, "no message %s", msg_id);
        goto out;
    }
    if (rc != SQLITE_ROW) {
        ret = pb__sqlite_read_fail(r->db, rc, err, "message");
        goto out;
    }
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
        .routed = sqlite3_column_type(st, 9) != SQLITE_NULL,
        .idem_key = pb__sqlite_text_col(st, 11),
        .edit_of = pb__sqlite_text_col(st, 12),
    };
    if (!m.body)
        m.body = "";
    m.body_damaged = !pb__sqlite_body_intact(st, 6, m.body, m.len);
    if (m.routed) {
        m.routed_body = sqlite3_column_blob(st, 9);
        m.routed_len = (size_t)sqlite3_column_bytes(st, 9);
        if (!m.routed_body)
            m.routed_body = "";
        m.routed_damaged = !pb__sqlite_body_intact(st, 10, m.routed_body, m.routed_len);
    }
    if (!m.id || !m.pipeline) {
        ret = stopped(err);
        goto out;
    }
    if (cb->message && cb->message(cb->arg, &m)) {
        ret = stopped(err);
        goto out;
    }
    sqlite3_bind_int64(cst, 1, m.seq);
    while ((rc = sqlite3_step(cst)) == SQLITE_ROW)
        if (cb->child && pb__sqlite_text_col(cst, 0) &&
            cb->child(cb->arg, pb__sqlite_text_col(cst, 0))) {
            ret = stopped(err);
            goto out;
        }
    if (rc != SQLITE_DONE) {
        ret = pb__sqlite_read_fail(r->db, rc, err, "children");
        goto out;
    }
    sqlite3_bind_int64(est, 1, m.seq);
    while ((rc = sqlite3_step(est)) == SQLITE_ROW)
        if (cb->edit && pb__sqlite_text_col(est, 0) &&
            cb->edit(cb->arg, pb__sqlite_text_col(est, 0))) {
            ret = stopped(err);
            goto out;
        }
    if (rc != SQLITE_DONE) {
        ret = pb__sqlite_read_fail(r->db, rc, err, "edits");
        goto out;
    }
    sqlite3_bind_int64(dst, 1, m.seq);
    while ((rc = sqlite3_step(dst)) == SQLITE_ROW) {
        struct pb_delivery_row d = {
            .id = sqlite3_column_int64(dst, 0),
            .msg_id = m.id,
            .pipeline = m.pipeline,
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
            .last_answer = pb__sqlite_text_col(dst, 12),
            .last_answer_len = (size_t)sqlite3_column_bytes(dst, 12),
            .replay_of = sqlite3_column_int64(dst, 9),
        };
        if (!d.output || (cb->delivery && cb->delivery(cb->arg, &d))) {
            ret = stopped(err);
            goto out;
        }
        if ((ret = attempts(r, &d, sqlite3_column_int64(dst, 11),
                            sqlite3_column_type(dst, 11) != SQLITE_NULL, cb, err)) != 0)
            goto out;
    }
    if (rc != SQLITE_DONE)
        ret = pb__sqlite_read_fail(r->db, rc, err, "deliveries");
out:
    if (st)
        sqlite3_reset(st);
    if (dst)
        sqlite3_reset(dst);
    if (cst)
        sqlite3_reset(cst);
    if (est)
        sqlite3_reset(est);
    end_read(r);
out_put:
    pb__sqlite_rconn_put(q, r);
    return ret;
}

/* A dead letter from a PB__SQLITE_DEAD_COLS row; with_body adds the body. */
struct pb_delivery_row pb__sqlite_dead_row(sqlite3_stmt *st, bool with_body)
{
    struct pb_delivery_row d = {
        .id = sqlite3_column_int64(st, 0),
        .msg_id = pb__sqlite_text_col(st, 1),
        .pipeline = pb__sqlite_text_col(st, 2),
        .output = pb__sqlite_text_col(st, 3),
        .sub = pb__sqlite_text_col(st, 11),
        .state = PB_DSTATE_DEAD,
        .attempts = sqlite3_column_int(st, 4),
        .created_at = sqlite3_column_int64(st, 5),
        .updated_at = sqlite3_column_int64(st, 6),
        .has_status = sqlite3_column_type(st, 7) != SQLITE_NULL,
        .last_status = sqlite3_column_int(st, 7),
        .last_error = pb__sqlite_text_col(st, 8),
        .last_error_len = (size_t)sqlite3_column_bytes(st, 8),
        .last_answer = pb__sqlite_text_col(st, 13),
        .last_answer_len = (size_t)sqlite3_column_bytes(st, 13),
    };
    if (with_body) {
        d.content_type = pb__sqlite_text_col(st, 9);
        d.body = sqlite3_column_blob(st, 10);
        d.len = (size_t)sqlite3_column_bytes(st, 10);
        if (!d.body)
            d.body = "";
    }
    return d;
}

int pb__sqlite_read_dead_letter(void *ctx, int64_t delivery_id, const struct pb_read_cbs *cb,
                                struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = pb__sqlite_rconn_get(q, err);
    sqlite3_stmt *st = NULL;
    int rc, ret = 0;

    if (!r)
        return err ? err->code : PB_ESTORE;
    if ((ret = begin_read(r, err)) < 0)
        goto out_put;
    if (!(st = rstmt(r, R_DEAD_ONE, err))) {
        ret = err ? err->code : PB_ESTORE;
        goto out;
    }
    sqlite3_bind_int64(st, 1, delivery_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        ret = pb_err_set(err, PB_ENOTFOUND, "no dead letter %" PRId64, delivery_id);
        goto out;
    }
    if (rc != SQLITE_ROW) {
        ret = pb__sqlite_read_fail(r->db, rc, err, "dead letter");
        goto out;
    }
    struct pb_delivery_row d = pb__sqlite_dead_row(st, true);
    if (!d.msg_id || !d.pipeline || !d.output || (cb->delivery && cb->delivery(cb->arg, &d))) {
        ret = stopped(err);
        goto out;
    }
    ret = attempts(r, &d, sqlite3_column_int64(st, 12), sqlite3_column_type(st, 12) != SQLITE_NULL,
                   cb, err);
out:
    if (st)
        sqlite3_reset(st);
    end_read(r);
out_put:
    pb__sqlite_rconn_put(q, r);
    return ret;
}
