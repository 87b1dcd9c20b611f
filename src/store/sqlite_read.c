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
    R_DEAD_LIST, /* + 0..3: bit 0 pipeline, bit 1 output */
    R_COUNT_ALL = R_DEAD_LIST + 4,
};

#define DEAD_COLS                                                                                  \
    "SELECT d.id, m.id, d.pipeline, d.output || coalesce('/' || d.sub, ''), d.attempts,"           \
    " d.created_at, d.updated_at,"                                                                 \
    " d.last_status, d.last_error, m.content_type, m.body"                                         \
    " FROM deliveries d JOIN messages m ON m.seq = d.msg_seq"
#define DEAD_LIST(w) DEAD_COLS " WHERE d.state = 2 AND d.id > ?3" w " ORDER BY d.id LIMIT ?4"

static const char *const rsql[R_COUNT_ALL] = {
    /* The route stage reads the body as received; outputs the routed one. */
    [R_COUNT_PENDING] = "SELECT pipeline, output, sub, 0, count(*) FROM deliveries"
                        " WHERE state = 0 GROUP BY pipeline, output, sub",
    [R_COUNT] = "SELECT pipeline, output, sub, state, count(*) FROM deliveries"
                " GROUP BY pipeline, output, sub, state",
    [R_MSG] =
        "SELECT m.seq, m.id, m.pipeline, m.received_at, m.content_type, m.body, m.body_crc,"
        " m.meta, (SELECT p.id FROM messages p WHERE p.seq = m.parent_seq), r.body, r.body_crc"
        " FROM messages m LEFT JOIN routed r ON r.seq = m.seq WHERE m.id = ?1",
    [R_MSG_CHILDREN] = "SELECT id FROM messages WHERE parent_seq = ?1 ORDER BY seq LIMIT 1000",
    [R_MSG_DELIVERIES] = "SELECT id, output || coalesce('/' || sub, ''), state, attempts, next_at,"
                         " created_at, updated_at,"
                         " last_status, last_error, replay_of FROM deliveries"
                         " WHERE msg_seq = ?1 ORDER BY id",
    [R_ATTEMPTS] = "SELECT n, started_at, latency_ms, status, state, error FROM attempts"
                   " WHERE delivery_id = ?1 ORDER BY n",
    [R_DEAD_ONE] = DEAD_COLS " WHERE d.id = ?1 AND d.state = 2",
    [R_KV] = "SELECT key, value FROM kv WHERE scope = ?1 ORDER BY key",
    [R_DEAD_LIST + 0] = DEAD_LIST(""),
    [R_DEAD_LIST + 1] = DEAD_LIST(" AND d.pipeline = ?1"),
    /* An output filter takes the output with its sub-outputs, or one of them ("out/sub"). */
    [R_DEAD_LIST + 2] = DEAD_LIST(" AND (d.output = ?2 OR d.output || '/' || d.sub = ?2)"),
    [R_DEAD_LIST + 3] = DEAD_LIST(" AND d.pipeline = ?1 AND (d.output = ?2"
                                  " OR d.output || '/' || d.sub = ?2)"),
};

struct rconn {
    sqlite3 *db;
    sqlite3_stmt *st[R_COUNT_ALL];
};

static int read_fail(sqlite3 *db, int rc, struct pb_err *err, const char *what)
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

static struct rconn *rconn_get(struct sq *q, struct pb_err *err)
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

static void rconn_put(struct sq *q, struct rconn *r)
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
            read_fail(r->db, rc, err, "prepare");
            return NULL;
        }
    }
    return r->st[i];
}

int pb__sqlite_count(void *ctx, bool pending_only, pb_count_cb cb, void *arg, struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = rconn_get(q, err);
    sqlite3_stmt *st;
    int rc, ret = 0;

    if (!r)
        return err ? err->code : PB_ESTORE;
    if (!(st = rstmt(r, pending_only ? R_COUNT_PENDING : R_COUNT, err))) {
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
        ret = read_fail(r->db, rc, err, "count");
out:
    if (st)
        sqlite3_reset(st);
    rconn_put(q, r);
    return ret;
}

int pb__sqlite_kv_load(void *ctx, const char *scope, pb_kv_cb cb, void *arg, struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = rconn_get(q, err);
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
        ret = read_fail(r->db, rc, err, "key-value read");
out:
    if (st)
        sqlite3_reset(st);
    rconn_put(q, r);
    return ret;
}

/* ---- JSON views ---------------------------------------------------------------------------- */

/* Column i as a JSON value: integer, string or null. NULL on ENOMEM. */
static json_t *col_json(sqlite3_stmt *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        return json_integer(sqlite3_column_int64(st, i));
    case SQLITE_NULL:
        return json_null();
    default: {
        const char *t = (const char *)sqlite3_column_text(st, i);
        /* Error excerpts and content types come from partners and clients. */
        return t ? pb__store_text_json(t, (size_t)sqlite3_column_bytes(st, i)) : NULL;
    }
    }
}

static json_t *state_json(sqlite3_stmt *st, int i)
{
    return json_string(pb_dstate_name((enum pb_dstate)sqlite3_column_int(st, i)));
}

/* Set key on obj, stealing v; -1 when v is NULL or the set fails. */
static int jset(json_t *obj, const char *key, json_t *v)
{
    return (v && json_object_set_new(obj, key, v) == 0) ? 0 : -1;
}

/* attempt_log of delivery id, as a new array; NULL + err on failure. */
static json_t *attempt_log(struct rconn *r, int64_t id, struct pb_err *err)
{
    sqlite3_stmt *st = rstmt(r, R_ATTEMPTS, err);
    json_t *arr = NULL;
    int rc, bad = 0;

    if (!st)
        return NULL;
    if (!(arr = json_array()))
        goto nomem;
    sqlite3_bind_int64(st, 1, id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *a = json_object();
        if (!a || json_array_append_new(arr, a) != 0)
            goto nomem;
        bad |= jset(a, "n", col_json(st, 0));
        bad |= jset(a, "started_at", col_json(st, 1));
        bad |= jset(a, "latency_ms", col_json(st, 2));
        bad |= jset(a, "status", col_json(st, 3));
        bad |= jset(a, "state", state_json(st, 4));
        bad |= jset(a, "error", col_json(st, 5));
        if (bad)
            goto nomem;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        read_fail(r->db, rc, err, "attempts");
        json_decref(arr);
        return NULL;
    }
    return arr;
nomem:
    sqlite3_reset(st);
    json_decref(arr);
    pb_err_set(err, PB_ENOMEM, "out of memory building a state store view");
    return NULL;
}

static int begin_read(struct rconn *r, struct pb_err *err)
{
    int rc = sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : read_fail(r->db, rc, err, "begin");
}

json_t *pb__sqlite_message_json(void *ctx, const char *msg_id, struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = rconn_get(q, err);
    sqlite3_stmt *st = NULL, *dst = NULL;
    json_t *m = NULL, *dl = NULL;
    int64_t seq;
    int rc, bad = 0;

    if (!r)
        return NULL;
    if (begin_read(r, err) < 0 || !(st = rstmt(r, R_MSG, err)) ||
        !(dst = rstmt(r, R_MSG_DELIVERIES, err)))
        goto fail;
    sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        pb_err_set(err, PB_ENOTFOUND, "no message %s", msg_id);
        goto fail;
    }
    if (rc != SQLITE_ROW) {
        read_fail(r->db, rc, err, "message");
        goto fail;
    }
    seq = sqlite3_column_int64(st, 0);
    if (!(m = json_object()))
        goto nomem;
    bad |= jset(m, "id", col_json(st, 1));
    bad |= jset(m, "pipeline", col_json(st, 2));
    bad |= jset(m, "received_at", col_json(st, 3));
    bad |= jset(m, "content_type", col_json(st, 4));
    const void *body = sqlite3_column_blob(st, 5);
    size_t blen = (size_t)sqlite3_column_bytes(st, 5);
    if (!pb__sqlite_body_intact(st, 6, body, blen))
        bad |= jset(m, "body_damaged", json_true());
    if (bad || pb__store_set_body(m, body, blen) < 0)
        goto nomem;
    if (sqlite3_column_type(st, 7) != SQLITE_NULL) {
        json_t *meta = json_loadb((const char *)sqlite3_column_text(st, 7),
                                  (size_t)sqlite3_column_bytes(st, 7), 0, NULL);
        if (meta && json_object_set_new(m, "meta", meta) != 0)
            goto nomem;
    }
    if (sqlite3_column_type(st, 8) != SQLITE_NULL)
        bad |= jset(m, "parent", col_json(st, 8));
    if (sqlite3_column_type(st, 9) != SQLITE_NULL) {
        /* The body the route stage made; shown like the body as received. */
        const void *rb = sqlite3_column_blob(st, 9);
        size_t rlen = (size_t)sqlite3_column_bytes(st, 9);
        json_t *routed = json_object();
        if (!routed || json_object_set_new(m, "routed", routed) != 0 ||
            pb__store_set_body(routed, rb ? rb : "", rlen) < 0)
            goto nomem;
        if (!pb__sqlite_body_intact(st, 10, rb ? rb : "", rlen))
            bad |= jset(routed, "body_damaged", json_true());
    }
    if (bad)
        goto nomem;
    {
        sqlite3_stmt *cst = rstmt(r, R_MSG_CHILDREN, err);
        json_t *children = NULL;
        if (!cst)
            goto fail;
        sqlite3_bind_int64(cst, 1, seq);
        while ((rc = sqlite3_step(cst)) == SQLITE_ROW) {
            if (!children &&
                (!(children = json_array()) || json_object_set_new(m, "children", children) != 0)) {
                sqlite3_reset(cst);
                goto nomem;
            }
            if (json_array_append_new(children, col_json(cst, 0)) != 0) {
                sqlite3_reset(cst);
                goto nomem;
            }
        }
        sqlite3_reset(cst);
        if (rc != SQLITE_DONE) {
            read_fail(r->db, rc, err, "children");
            goto fail;
        }
    }
    if (!(dl = json_array()) || json_object_set_new(m, "deliveries", dl) != 0)
        goto nomem;

    sqlite3_bind_int64(dst, 1, seq);
    while ((rc = sqlite3_step(dst)) == SQLITE_ROW) {
        json_t *d = json_object(), *log;
        if (!d || json_array_append_new(dl, d) != 0)
            goto nomem;
        bad |= jset(d, "id", col_json(dst, 0));
        bad |= jset(d, "output", col_json(dst, 1));
        bad |= jset(d, "state", state_json(dst, 2));
        bad |= jset(d, "attempts", col_json(dst, 3));
        bad |= jset(d, "next_at", col_json(dst, 4));
        bad |= jset(d, "created_at", col_json(dst, 5));
        bad |= jset(d, "updated_at", col_json(dst, 6));
        bad |= jset(d, "last_status", col_json(dst, 7));
        bad |= jset(d, "last_error", col_json(dst, 8));
        bad |= jset(d, "replay_of", col_json(dst, 9));
        if (bad)
            goto nomem;
        if (!(log = attempt_log(r, sqlite3_column_int64(dst, 0), err)))
            goto fail;
        if (json_object_set_new(d, "attempt_log", log) != 0)
            goto nomem;
    }
    if (rc != SQLITE_DONE) {
        read_fail(r->db, rc, err, "deliveries");
        goto fail;
    }
    sqlite3_reset(st);
    sqlite3_reset(dst);
    rconn_put(q, r);
    return m;

nomem:
    pb_err_set(err, PB_ENOMEM, "out of memory building a state store view");
fail:
    if (st)
        sqlite3_reset(st);
    if (dst)
        sqlite3_reset(dst);
    json_decref(m);
    rconn_put(q, r);
    return NULL;
}

/* One dead-letter item from a DEAD_COLS row; with_body adds the body. */
static json_t *dead_item(sqlite3_stmt *st, bool with_body)
{
    json_t *d = json_object();
    int bad = 0;

    if (!d)
        return NULL;
    bad |= jset(d, "id", col_json(st, 0));
    bad |= jset(d, "message_id", col_json(st, 1));
    bad |= jset(d, "pipeline", col_json(st, 2));
    bad |= jset(d, "output", col_json(st, 3));
    bad |= jset(d, "attempts", col_json(st, 4));
    bad |= jset(d, "created_at", col_json(st, 5));
    bad |= jset(d, "dead_at", col_json(st, 6));
    bad |= jset(d, "last_status", col_json(st, 7));
    bad |= jset(d, "last_error", col_json(st, 8));
    if (with_body) {
        bad |= jset(d, "content_type", col_json(st, 9));
        if (!bad && pb__store_set_body(d, sqlite3_column_blob(st, 10),
                                       (size_t)sqlite3_column_bytes(st, 10)) < 0)
            bad = -1;
    }
    if (bad) {
        json_decref(d);
        return NULL;
    }
    return d;
}

json_t *pb__sqlite_dead_letters_json(void *ctx, const char *pipeline, const char *output,
                                     int64_t after_id, int limit, struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = rconn_get(q, err);
    sqlite3_stmt *st = NULL;
    json_t *res = NULL, *items = NULL;
    int64_t last = 0;
    int n = 0, rc;

    if (!r)
        return NULL;
    if (!(st = rstmt(r, R_DEAD_LIST + (pipeline ? 1 : 0) + (output ? 2 : 0), err)))
        goto fail;
    if (!(res = json_object()) || !(items = json_array()) ||
        json_object_set_new(res, "items", items) != 0)
        goto nomem;
    if (pipeline)
        sqlite3_bind_text(st, 1, pipeline, -1, SQLITE_STATIC);
    if (output)
        sqlite3_bind_text(st, 2, output, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, after_id);
    sqlite3_bind_int(st, 4, limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *d = dead_item(st, false);
        if (!d || json_array_append_new(items, d) != 0)
            goto nomem;
        last = sqlite3_column_int64(st, 0);
        n++;
    }
    if (rc != SQLITE_DONE) {
        read_fail(r->db, rc, err, "dead letters");
        goto fail;
    }
    if (jset(res, "next_after", n == limit ? json_integer(last) : json_null()) < 0)
        goto nomem;
    sqlite3_reset(st);
    rconn_put(q, r);
    return res;

nomem:
    pb_err_set(err, PB_ENOMEM, "out of memory building a state store view");
fail:
    if (st)
        sqlite3_reset(st);
    json_decref(res);
    rconn_put(q, r);
    return NULL;
}

json_t *pb__sqlite_dead_letter_json(void *ctx, int64_t delivery_id, struct pb_err *err)
{
    struct sq *q = ctx;
    struct rconn *r = rconn_get(q, err);
    sqlite3_stmt *st = NULL;
    json_t *d = NULL, *log;
    int rc;

    if (!r)
        return NULL;
    if (begin_read(r, err) < 0 || !(st = rstmt(r, R_DEAD_ONE, err)))
        goto fail;
    sqlite3_bind_int64(st, 1, delivery_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        pb_err_set(err, PB_ENOTFOUND, "no dead letter %" PRId64, delivery_id);
        goto fail;
    }
    if (rc != SQLITE_ROW) {
        read_fail(r->db, rc, err, "dead letter");
        goto fail;
    }
    if (!(d = dead_item(st, true)))
        goto nomem;
    if (!(log = attempt_log(r, delivery_id, err)))
        goto fail;
    if (json_object_set_new(d, "attempt_log", log) != 0)
        goto nomem;
    sqlite3_reset(st);
    rconn_put(q, r);
    return d;

nomem:
    pb_err_set(err, PB_ENOMEM, "out of memory building a state store view");
fail:
    if (st)
        sqlite3_reset(st);
    json_decref(d);
    rconn_put(q, r);
    return NULL;
}
